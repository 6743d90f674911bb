//! The brute-force limiter, pure: time is an argument. Each identifier (`device@app` as
//! presented) and each source address counts its failed attempts; from the `max_failures`th
//! failure on it is refused for `lockout_min`, doubling with each further failure up to
//! `lockout_max`. A success clears the identifier (not the address: an attacker with one valid
//! account cannot wash an address clean). At most `cap` keys are remembered; when full, expired
//! keys go first, then the one touched longest ago.

use std::{collections::HashMap, net::IpAddr, time::Duration, time::Instant};

/// What failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimiterKey {
    Identifier(String),
    Address(IpAddr),
}

#[derive(Clone, Debug)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Exponential lockout per key, bounded in memory.
#[derive(Debug)]
pub struct Limiter {
    max_failures: u32,
    min: Duration,
    max: Duration,
    cap: usize,
    entries: HashMap<LimiterKey, Entry>,
}

impl Limiter {
    pub fn new(max_failures: u32, min: Duration, max: Duration, cap: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            min,
            max: max.max(min),
            cap: cap.max(1),
            entries: HashMap::new(),
        }
    }

    /// How much longer `key` is refused at `now`, if it is.
    pub fn blocked_for(&self, key: &LimiterKey, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed attempt of `key` at `now`.
    pub fn failed(&mut self, key: LimiterKey, now: Instant) {
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.max_failures {
            let doublings = (e.failures - self.max_failures).min(31);
            let delay = self.min.saturating_mul(1u32 << doublings).min(self.max);
            e.blocked_until = Some(now + delay);
        }
    }

    /// Clears `key` after a successful login.
    pub fn succeeded(&mut self, key: &LimiterKey) {
        self.entries.remove(key);
    }

    /// The number of keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.cap {
            return;
        }
        // Keys whose lockout ended and that were quiet for lockout_max are forgotten first.
        let max = self.max;
        self.entries.retain(|_, e| {
            e.blocked_until.is_some_and(|u| u > now) || now.saturating_duration_since(e.last) < max
        });
        while self.entries.len() >= self.cap {
            let Some(oldest) =
                self.entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> LimiterKey {
        LimiterKey::Identifier(s.into())
    }

    fn limiter() -> Limiter {
        Limiter::new(5, Duration::from_secs(1), Duration::from_secs(300), 100)
    }

    #[test]
    fn locks_after_max_failures_and_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let mut l = limiter();
        for _ in 0..4 {
            l.failed(id("d@a"), t0);
        }
        assert_eq!(l.blocked_for(&id("d@a"), t0), None, "4 failures are allowed");
        l.failed(id("d@a"), t0);
        assert_eq!(l.blocked_for(&id("d@a"), t0), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.blocked_for(&id("d@a"), t1), None, "the lockout ends");
        l.failed(id("d@a"), t1);
        assert_eq!(l.blocked_for(&id("d@a"), t1), Some(Duration::from_secs(2)));
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_secs(1000);
            l.failed(id("d@a"), t);
        }
        assert_eq!(l.blocked_for(&id("d@a"), t), Some(Duration::from_secs(300)), "capped");
        assert_eq!(l.blocked_for(&id("other@a"), t), None, "keys are independent");
    }

    #[test]
    fn success_clears_the_identifier() {
        let t0 = Instant::now();
        let mut l = limiter();
        for _ in 0..5 {
            l.failed(id("d@a"), t0);
        }
        assert!(l.blocked_for(&id("d@a"), t0).is_some());
        l.succeeded(&id("d@a"));
        assert_eq!(l.blocked_for(&id("d@a"), t0), None);
    }

    #[test]
    fn addresses_are_limited_too() {
        let t0 = Instant::now();
        let mut l = limiter();
        let addr = LimiterKey::Address("10.0.0.9".parse().unwrap());
        for i in 0..5 {
            l.failed(id(&format!("d{i}@a")), t0);
            l.failed(addr.clone(), t0);
        }
        assert!(l.blocked_for(&addr, t0).is_some(), "5 identifiers, one address");
        assert!(l.blocked_for(&id("d0@a"), t0).is_none());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5, Duration::from_secs(1), Duration::from_secs(300), 3);
        for i in 0..10u64 {
            l.failed(id(&format!("k{i}")), t0 + Duration::from_millis(i));
        }
        assert_eq!(l.len(), 3);
        // the newest three survive
        for _ in 0..4 {
            l.failed(id("k9"), t0 + Duration::from_millis(20));
        }
        assert!(l.blocked_for(&id("k9"), t0 + Duration::from_millis(20)).is_some());
        assert!(!l.entries.contains_key(&id("k0")));
    }
}
