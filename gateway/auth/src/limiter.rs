//! The brute-force limiter, pure: time is an argument. Failed logins are counted against three
//! keys: the identifier (`device@app` as presented) from one source address, the identifier
//! from anywhere, and the source address. The narrow key locks from its `max_failures`th
//! failure on; the two wide keys take [`WIDE_FACTOR`] times as many, so a guesser rotating
//! addresses, or a NAT full of sensors with one broken neighbour, needs many more failures to
//! lock anybody out. A locked key is refused for `lockout_min`, doubling with each further
//! failure up to `lockout_max`; a key quiet for [`DECAY_FACTOR`] × `lockout_max` starts from
//! zero again.
//!
//! A lockout cannot be turned against the owner: a credential that passed before is *trusted*
//! (its keyed attempt fingerprint, never the secret, is remembered) and is let through to the
//! check while its identifier or address is locked. Only the narrow key is cleared by a
//! success: the wide identifier key goes on counting a guesser's tries, and an address is
//! never washed clean by one valid account. At most `cap` keys and `cap` trusted attempts are
//! remembered; when full, expired keys go first, then the one touched longest ago.

use std::{collections::HashMap, net::IpAddr, time::Duration, time::Instant};

/// How many times `max_failures` the wide keys (identifier from anywhere, address) take.
pub const WIDE_FACTOR: u32 = 4;

/// A key quiet (and unlocked) for this many times `lockout_max` forgets its failures.
pub const DECAY_FACTOR: u32 = 2;

/// What failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimiterKey {
    /// An identifier from anywhere (wide).
    Identifier(String),
    /// An identifier from one source address (narrow).
    IdentifierFrom(String, IpAddr),
    /// A source address, whatever identifiers it tries (wide).
    Address(IpAddr),
}

impl LimiterKey {
    fn is_wide(&self) -> bool {
        !matches!(self, Self::IdentifierFrom(..))
    }
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
    /// Attempt fingerprints that passed, with when they last did.
    trusted: HashMap<[u8; 32], Instant>,
}

impl Limiter {
    pub fn new(max_failures: u32, min: Duration, max: Duration, cap: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            min,
            max: max.max(min),
            cap: cap.max(1),
            entries: HashMap::new(),
            trusted: HashMap::new(),
        }
    }

    fn threshold(&self, key: &LimiterKey) -> u32 {
        if key.is_wide() {
            self.max_failures.saturating_mul(WIDE_FACTOR)
        } else {
            self.max_failures
        }
    }

    fn decay(&self) -> Duration {
        self.max.saturating_mul(DECAY_FACTOR)
    }

    /// How much longer `key` is refused at `now`, if it is.
    pub fn blocked_for(&self, key: &LimiterKey, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// The failures counted against `key` (after decay at `now`).
    pub fn failures(&self, key: &LimiterKey, now: Instant) -> u32 {
        self.entries.get(key).map_or(0, |e| if self.decayed(e, now) { 0 } else { e.failures })
    }

    fn decayed(&self, e: &Entry, now: Instant) -> bool {
        let unlocked = e.blocked_until.is_none_or(|u| u <= now);
        unlocked && now.saturating_duration_since(e.last) >= self.decay()
    }

    /// Counts a failed attempt of `key` at `now`.
    pub fn failed(&mut self, key: LimiterKey, now: Instant) {
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let threshold = self.threshold(&key);
        let decay = self.decay();
        let (min, max) = (self.min, self.max);
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        let unlocked = e.blocked_until.is_none_or(|u| u <= now);
        if unlocked && now.saturating_duration_since(e.last) >= decay {
            e.failures = 0;
            e.blocked_until = None;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= threshold {
            let doublings = (e.failures - threshold).min(31);
            let delay = min.saturating_mul(1u32 << doublings).min(max);
            e.blocked_until = Some(now + delay);
        }
    }

    /// Clears `key` after a successful login.
    pub fn succeeded(&mut self, key: &LimiterKey) {
        self.entries.remove(key);
    }

    /// Remembers that the attempt with fingerprint `attempt` passed at `now`.
    pub fn trust(&mut self, attempt: [u8; 32], now: Instant) {
        if !self.trusted.contains_key(&attempt) && self.trusted.len() >= self.cap {
            let oldest = self.trusted.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.trusted.remove(&k);
            }
        }
        self.trusted.insert(attempt, now);
    }

    /// Forgets a trusted attempt (it failed: the credential changed).
    pub fn distrust(&mut self, attempt: &[u8; 32]) {
        self.trusted.remove(attempt);
    }

    /// Whether the attempt with fingerprint `attempt` passed before.
    pub fn is_trusted(&self, attempt: &[u8; 32]) -> bool {
        self.trusted.contains_key(attempt)
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

    fn from(s: &str, addr: &str) -> LimiterKey {
        LimiterKey::IdentifierFrom(s.into(), addr.parse().unwrap())
    }

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
        let k = from("d@a", "10.0.0.1");
        for _ in 0..4 {
            l.failed(k.clone(), t0);
        }
        assert_eq!(l.blocked_for(&k, t0), None, "4 failures are allowed");
        l.failed(k.clone(), t0);
        assert_eq!(l.blocked_for(&k, t0), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.blocked_for(&k, t1), None, "the lockout ends");
        l.failed(k.clone(), t1);
        assert_eq!(l.blocked_for(&k, t1), Some(Duration::from_secs(2)));
        // one failure every 5 minutes (below the decay of 600 s) keeps doubling to the cap
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_secs(300);
            l.failed(k.clone(), t);
        }
        assert_eq!(l.blocked_for(&k, t), Some(Duration::from_secs(300)), "capped");
        assert_eq!(l.blocked_for(&from("other@a", "10.0.0.1"), t), None, "keys are independent");
    }

    #[test]
    fn wide_keys_take_four_times_as_many_failures() {
        let t0 = Instant::now();
        let mut l = limiter();
        let addr = LimiterKey::Address("10.0.0.9".parse().unwrap());
        for _ in 0..19 {
            l.failed(id("d@a"), t0);
            l.failed(addr.clone(), t0);
        }
        assert_eq!(l.blocked_for(&id("d@a"), t0), None);
        assert_eq!(l.blocked_for(&addr, t0), None);
        l.failed(id("d@a"), t0);
        l.failed(addr.clone(), t0);
        assert!(l.blocked_for(&id("d@a"), t0).is_some(), "20 failures lock the identifier");
        assert!(l.blocked_for(&addr, t0).is_some(), "and the address");
    }

    #[test]
    fn quiet_keys_decay() {
        let t0 = Instant::now();
        let mut l = limiter();
        let k = from("d@a", "10.0.0.1");
        for _ in 0..4 {
            l.failed(k.clone(), t0);
        }
        assert_eq!(l.failures(&k, t0), 4);
        let later = t0 + Duration::from_secs(600);
        assert_eq!(l.failures(&k, later), 0, "quiet for 2 × lockout_max");
        l.failed(k.clone(), later);
        assert_eq!(l.failures(&k, later), 1, "counting starts again");
        assert_eq!(l.blocked_for(&k, later), None);
    }

    #[test]
    fn success_clears_the_key_and_trust_is_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5, Duration::from_secs(1), Duration::from_secs(300), 2);
        let k = from("d@a", "10.0.0.1");
        for _ in 0..5 {
            l.failed(k.clone(), t0);
        }
        assert!(l.blocked_for(&k, t0).is_some());
        l.succeeded(&k);
        assert_eq!(l.blocked_for(&k, t0), None);
        l.trust([1; 32], t0);
        l.trust([2; 32], t0 + Duration::from_secs(1));
        l.trust([3; 32], t0 + Duration::from_secs(2));
        assert!(!l.is_trusted(&[1; 32]), "the oldest goes");
        assert!(l.is_trusted(&[2; 32]) && l.is_trusted(&[3; 32]));
        l.distrust(&[3; 32]);
        assert!(!l.is_trusted(&[3; 32]));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5, Duration::from_secs(1), Duration::from_secs(300), 3);
        for i in 0..10u64 {
            l.failed(from(&format!("k{i}"), "10.0.0.1"), t0 + Duration::from_millis(i));
        }
        assert_eq!(l.len(), 3);
        // the newest three survive
        for _ in 0..4 {
            l.failed(from("k9", "10.0.0.1"), t0 + Duration::from_millis(20));
        }
        assert!(l.blocked_for(&from("k9", "10.0.0.1"), t0 + Duration::from_millis(20)).is_some());
        assert!(!l.entries.contains_key(&from("k0", "10.0.0.1")));
    }
}
