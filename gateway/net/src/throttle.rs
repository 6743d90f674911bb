//! Rate-limited warnings. A refused connection or datagram is worth a log line, but a flood of
//! them must not fill the SD card the outbox lives on. A [`Throttle`] lets the first
//! [`Throttle::BURST`] events of every [`Throttle::INTERVAL`] be logged one by one; the rest are
//! counted with their sources, and one summary line per interval says how many there were and
//! who sent the most. [`flush_throttles`] (run periodically by the daemon) writes the summary of
//! an interval that has ended even when no further event comes.

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// How many different sources a summary keeps count of.
const MAX_SOURCES: usize = 64;
/// How many sources a summary names.
const TOP_SOURCES: usize = 3;

/// One kind of event whose log lines are rate-limited. Declare as a `static`.
pub struct Throttle {
    what: &'static str,
    registered: AtomicBool,
    state: Mutex<State>,
}

struct State {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
    sources: Vec<(IpAddr, u64)>,
    other_sources: u64,
}

static ALL: Mutex<Vec<&'static Throttle>> = Mutex::new(Vec::new());

impl Throttle {
    /// Events logged one by one per interval.
    pub const BURST: u32 = 5;
    /// The interval a summary covers.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// `what` names the event in summaries ("MQTT login refused").
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            registered: AtomicBool::new(false),
            state: Mutex::new(State {
                window: None,
                logged: 0,
                suppressed: 0,
                sources: Vec::new(),
                other_sources: 0,
            }),
        }
    }

    /// Whether this event should be logged by the caller; if not, it is counted for the
    /// interval's summary under `source`.
    pub fn allow(&'static self, source: Option<IpAddr>) -> bool {
        self.allow_at(source, Instant::now())
    }

    fn allow_at(&'static self, source: Option<IpAddr>, now: Instant) -> bool {
        if !self.registered.swap(true, Ordering::Relaxed) {
            lock(&ALL).push(self);
        }
        let mut state = lock(&self.state);
        if state.window.is_none_or(|w| now.saturating_duration_since(w) >= Self::INTERVAL) {
            self.summarize(&mut state, now);
            state.window = Some(now);
        }
        if state.logged < Self::BURST {
            state.logged += 1;
            return true;
        }
        state.suppressed += 1;
        let state = &mut *state;
        match source {
            Some(ip) => match state.sources.iter().position(|(s, _)| *s == ip) {
                Some(at) => state.sources[at].1 += 1,
                None if state.sources.len() < MAX_SOURCES => state.sources.push((ip, 1)),
                None => state.other_sources += 1,
            },
            None => state.other_sources += 1,
        }
        false
    }

    /// Writes the summary of the interval that began at `state.window` (if anything was held
    /// back) and starts counting afresh.
    fn summarize(&self, state: &mut State, now: Instant) {
        if state.suppressed > 0 {
            let seconds = state
                .window
                .map_or(Self::INTERVAL, |w| now.saturating_duration_since(w))
                .as_secs()
                .max(1);
            let mut top = std::mem::take(&mut state.sources);
            top.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
            let mut sources = String::new();
            for (ip, n) in top.iter().take(TOP_SOURCES) {
                if !sources.is_empty() {
                    sources.push_str(", ");
                }
                let _ = write!(sources, "{ip} ({n})");
            }
            let rest: u64 =
                top.iter().skip(TOP_SOURCES).map(|(_, n)| n).sum::<u64>() + state.other_sources;
            if rest > 0 {
                let _ = write!(
                    sources,
                    "{}others ({rest})",
                    if sources.is_empty() { "" } else { ", " }
                );
            }
            tracing::warn!(
                event = self.what,
                count = state.suppressed,
                seconds,
                top_sources = %sources,
                "{}: {} more in the last {} s, not logged one by one",
                self.what,
                state.suppressed,
                seconds
            );
        }
        state.logged = 0;
        state.suppressed = 0;
        state.sources.clear();
        state.other_sources = 0;
        state.window = None;
    }

    fn flush_at(&self, now: Instant) {
        let mut state = lock(&self.state);
        if state.window.is_some_and(|w| now.saturating_duration_since(w) >= Self::INTERVAL) {
            self.summarize(&mut state, now);
        }
    }

    /// Events held back in the current interval.
    pub fn suppressed(&self) -> u64 {
        lock(&self.state).suppressed
    }
}

/// Writes the summary of every throttle whose interval has ended. The daemon runs it every
/// [`Throttle::INTERVAL`].
pub fn flush_throttles() {
    let now = Instant::now();
    let all: Vec<&'static Throttle> = lock(&ALL).clone();
    for t in all {
        t.flush_at(now);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_as_a_burst_and_then_counted_per_source() {
        static T: Throttle = Throttle::new("test event");
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed =
            (0..1000).filter(|i| T.allow_at(Some(if i % 10 == 0 { b } else { a }), start)).count();
        assert_eq!(allowed, Throttle::BURST as usize);
        assert_eq!(T.suppressed(), 1000 - u64::from(Throttle::BURST));
        {
            let state = lock(&T.state);
            let count = |ip| state.sources.iter().find(|(s, _)| *s == ip).map(|(_, n)| *n);
            assert_eq!(count(a), Some(896));
            assert_eq!(count(b), Some(99));
        }
        // the interval ends: the summary is written and counting starts again
        T.flush_at(start + Throttle::INTERVAL);
        assert_eq!(T.suppressed(), 0);
        assert!(T.allow_at(Some(a), start + Throttle::INTERVAL * 2));
        assert!(lock(&ALL).iter().any(|t| std::ptr::eq(*t, &T)));
    }

    #[test]
    fn sources_beyond_the_cap_are_counted_as_others() {
        static T: Throttle = Throttle::new("another event");
        let now = Instant::now();
        for i in 0..(Throttle::BURST as usize + MAX_SOURCES + 10) {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            T.allow_at(Some(ip), now);
        }
        let state = lock(&T.state);
        assert_eq!(state.sources.len(), MAX_SOURCES);
        assert_eq!(state.other_sources, 10);
    }
}
