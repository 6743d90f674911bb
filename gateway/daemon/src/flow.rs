//! Flow control towards the sensors (`[store] max_lag`): a controller, fed every tick with
//! what waits in the outbox, what the uplink has forwarded and whether the cloud is
//! reachable, decides whether the southbound drivers slow their senders
//! ([`gw_model::Pressure`]).
//!
//! It turns pressure on when the cloud is reachable, more records wait than the uplink
//! forwards in `max_lag` (at its recent rate, and at least [`gw_store::MIN_LAG_RECORDS`]) and
//! the backlog grew since the last tick: ingest is outrunning the uplink. It turns it off
//! once the backlog is back within that bound, or the cloud is unreachable (store-and-forward
//! then takes everything up to the quota). A backlog that drains after an outage is never
//! pressed: it shrinks.

use std::time::Duration;

/// How often the controller looks.
pub const TICK: Duration = Duration::from_millis(50);
/// Weight of the newest tick in the forwarding rate (an exponential moving average).
const RATE_WEIGHT: f64 = 0.3;

/// The controller's state between ticks.
#[derive(Debug)]
pub struct LagControl {
    max_lag: Duration,
    /// Records forwarded per second, smoothed.
    rate: f64,
    last: Option<(u64, u64)>,
    on: bool,
}

impl LagControl {
    pub fn new(max_lag: Duration) -> Self {
        Self { max_lag, rate: 0.0, last: None, on: false }
    }

    /// The bound on what may wait, in records, at the current rate.
    pub fn bound(&self) -> u64 {
        let records = self.rate * self.max_lag.as_secs_f64();
        (records as u64).max(gw_store::MIN_LAG_RECORDS)
    }

    /// One tick, `dt` after the last: `queued` records wait, the uplink has forwarded `sent`
    /// since start, the cloud is `connected` or not. Returns whether pressure is on now.
    pub fn observe(&mut self, dt: Duration, queued: u64, sent: u64, connected: bool) -> bool {
        let (grew, forwarded) = match self.last {
            Some((q, s)) => (queued > q, sent.saturating_sub(s)),
            None => (false, 0),
        };
        self.last = Some((queued, sent));
        if !dt.is_zero() {
            let now = forwarded as f64 / dt.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                now
            } else {
                RATE_WEIGHT * now + (1.0 - RATE_WEIGHT) * self.rate
            };
        }
        let over = queued > self.bound();
        self.on = if !connected || self.max_lag.is_zero() {
            false
        } else if self.on {
            over
        } else {
            over && grew
        };
        self.on
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn presses_a_growing_backlog_beyond_the_lag_until_it_is_back_within_it() {
        let mut c = LagControl::new(Duration::from_secs(2));
        // forwarding 10,000/s: the bound is 20,000 records
        let (mut queued, mut sent) = (0u64, 0u64);
        for _ in 0..20 {
            sent += 1000;
            assert!(!c.observe(T, queued, sent, true));
        }
        assert!((9_000.0..11_000.0).contains(&c.rate()), "{}", c.rate());
        // ingest outruns it: the backlog grows past 20,000
        let mut pressed_at = None;
        for tick in 0..100 {
            queued += 2000;
            sent += 1000;
            if c.observe(T, queued, sent, true) {
                pressed_at = Some(tick);
                break;
            }
        }
        let tick = pressed_at.expect("pressed");
        assert!(queued > 20_000 && queued <= 24_000, "pressed at {queued} (tick {tick})");
        // pressed, the senders stop: the backlog shrinks as it is forwarded
        queued -= 1000;
        sent += 1000;
        assert!(c.observe(T, queued, sent, true), "still over the bound");
        while queued > 20_000 {
            queued -= 1000;
            sent += 1000;
            c.observe(T, queued, sent, true);
        }
        assert!(!c.observe(T, queued, sent + 1000, true), "back within it: released");
    }

    #[test]
    fn a_draining_backlog_or_an_unreachable_cloud_is_never_pressed() {
        let mut c = LagControl::new(Duration::from_secs(2));
        // a million records after an outage, shrinking as they are forwarded
        let (mut queued, mut sent) = (1_000_000u64, 0u64);
        for _ in 0..50 {
            queued -= 900;
            sent += 1000;
            assert!(!c.observe(T, queued, sent, true));
        }
        // the cloud is away: everything is taken, however much grows
        let mut c = LagControl::new(Duration::from_secs(2));
        for i in 0..50 {
            assert!(!c.observe(T, 10_000 * i, 0, false));
        }
        // and with max_lag = 0s never
        let mut c = LagControl::new(Duration::ZERO);
        for i in 0..50 {
            assert!(!c.observe(T, 10_000 * i, 0, true));
        }
    }

    #[test]
    fn a_small_backlog_is_never_pressed_however_slow_the_uplink() {
        let mut c = LagControl::new(Duration::from_secs(2));
        for i in 0..=gw_store::MIN_LAG_RECORDS / 10 {
            assert!(!c.observe(T, i * 10, 0, true), "at {}", i * 10);
        }
        assert!(c.observe(T, gw_store::MIN_LAG_RECORDS + 20, 0, true));
    }
}
