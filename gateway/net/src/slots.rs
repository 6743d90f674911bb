//! Connection slots bounded globally and per source address.
//!
//! A connection takes a [`Slot`] when it is accepted and gives it back when it ends (the slot
//! is dropped). When its address already holds `per_address` slots, that address's oldest
//! connection is evicted; when the pool holds `max`, the oldest connection of the address that
//! holds the most is. Eviction never refuses the newcomer: a stranger who opens connections
//! and sends nothing only ever pushes out its own, and a sensor that connects during the flood
//! gets in. An evicted connection learns it through [`Slot::evicted`] and closes.
//!
//! IPv6 sources count per /64 (one host usually owns a whole prefix); IPv4-mapped IPv6
//! addresses count as their IPv4 address.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio_util::sync::CancellationToken;

/// A pool of connection slots. Cheap to clone (all clones share the pool).
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    max: usize,
    per_address: usize,
    total: usize,
    next: u64,
    evictions: u64,
    by_source: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
}

/// One connection's place in a [`Slots`] pool; dropping it frees the place.
pub struct Slot {
    inner: Arc<Mutex<Inner>>,
    source: IpAddr,
    id: u64,
    token: CancellationToken,
}

impl Slots {
    /// A pool of at most `max` slots, at most `per_address` of them per source (both at least 1).
    pub fn new(max: usize, per_address: usize) -> Self {
        let max = max.max(1);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                max,
                per_address: per_address.clamp(1, max),
                total: 0,
                next: 0,
                evictions: 0,
                by_source: HashMap::new(),
            })),
        }
    }

    /// A slot for a connection from `addr`, evicting an older connection when the pool or the
    /// address is full (see the module docs).
    pub fn admit(&self, addr: IpAddr) -> Slot {
        let source = source_of(addr);
        let mut inner = lock(&self.inner);
        let held = inner.by_source.get(&source).map_or(0, VecDeque::len);
        if held >= inner.per_address {
            inner.evict_oldest(source);
        } else if inner.total >= inner.max {
            let largest = inner
                .by_source
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(s, _)| *s)
                .unwrap_or(source);
            inner.evict_oldest(largest);
        }
        let id = inner.next;
        inner.next += 1;
        let token = CancellationToken::new();
        inner.by_source.entry(source).or_default().push_back((id, token.clone()));
        inner.total += 1;
        Slot { inner: Arc::clone(&self.inner), source, id, token }
    }

    /// Slots held now.
    pub fn len(&self) -> usize {
        lock(&self.inner).total
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted since the pool was made.
    pub fn evictions(&self) -> u64 {
        lock(&self.inner).evictions
    }

    /// The pool's size and per-address share.
    pub fn limits(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.max, inner.per_address)
    }
}

impl Inner {
    fn evict_oldest(&mut self, source: IpAddr) {
        let Some(queue) = self.by_source.get_mut(&source) else { return };
        if let Some((_, token)) = queue.pop_front() {
            token.cancel();
            self.total -= 1;
            self.evictions += 1;
        }
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
    }
}

impl Slot {
    /// Completes when the connection was evicted to make room: it should close now.
    pub async fn evicted(&self) {
        self.token.cancelled().await;
    }

    /// Whether the connection was evicted.
    pub fn is_evicted(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.token.is_cancelled() {
            // evicted: its place was taken back then
            return;
        }
        let mut inner = lock(&self.inner);
        let Some(queue) = inner.by_source.get_mut(&self.source) else { return };
        if let Some(at) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(at);
            let empty = queue.is_empty();
            inner.total -= 1;
            if empty {
                inner.by_source.remove(&self.source);
            }
        }
    }
}

/// The key a source address counts under: IPv4 as is, IPv6 by its /64.
fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_only_ever_evicts_its_own_oldest() {
        let slots = Slots::new(10, 3);
        let sensor = slots.admit(ip("10.0.0.9"));
        let flood: Vec<Slot> = (0..50).map(|_| slots.admit(ip("10.0.0.66"))).collect();
        assert!(!sensor.is_evicted());
        assert_eq!(flood.iter().filter(|s| !s.is_evicted()).count(), 3);
        // the three kept are the newest
        assert!(flood[47..].iter().all(|s| !s.is_evicted()));
        assert_eq!(slots.len(), 4);
        assert_eq!(slots.evictions(), 47);
    }

    #[test]
    fn a_full_pool_evicts_from_the_address_holding_the_most() {
        let slots = Slots::new(6, 4);
        let a: Vec<Slot> = (0..4).map(|_| slots.admit(ip("192.0.2.1"))).collect();
        let b: Vec<Slot> = (0..2).map(|_| slots.admit(ip("192.0.2.2"))).collect();
        assert_eq!(slots.len(), 6);
        let c = slots.admit(ip("192.0.2.3"));
        assert!(a[0].is_evicted(), "the oldest of the largest address goes");
        assert!(a[1..].iter().chain(&b).all(|s| !s.is_evicted()));
        assert!(!c.is_evicted());
        assert_eq!(slots.len(), 6);
    }

    #[test]
    fn dropping_a_slot_frees_it_and_an_evicted_one_is_not_counted_twice() {
        let slots = Slots::new(2, 2);
        let first = slots.admit(ip("::1"));
        let second = slots.admit(ip("::1"));
        let third = slots.admit(ip("::1"));
        assert!(first.is_evicted());
        drop(first);
        assert_eq!(slots.len(), 2);
        drop(second);
        assert_eq!(slots.len(), 1);
        drop(third);
        assert!(slots.is_empty());
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let slots = Slots::new(100, 2);
        let a = slots.admit(ip("2001:db8:1:2::1"));
        let _b = slots.admit(ip("2001:db8:1:2::2"));
        let _c = slots.admit(ip("2001:db8:1:2:ffff::3"));
        assert!(a.is_evicted(), "one /64 is one source");
        let d = slots.admit(ip("::ffff:192.0.2.7"));
        let _e = slots.admit(ip("192.0.2.7"));
        let _f = slots.admit(ip("192.0.2.7"));
        assert!(d.is_evicted());
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told() {
        let slots = Slots::new(1, 1);
        let old = slots.admit(ip("127.0.0.1"));
        let _new = slots.admit(ip("127.0.0.2"));
        tokio::time::timeout(std::time::Duration::from_secs(1), old.evicted()).await.unwrap();
    }
}
