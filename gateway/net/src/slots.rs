//! Connection slots bounded globally and per source address.
//!
//! A connection takes a [`Slot`] when it is accepted and gives it back when it ends (the slot
//! is dropped). When its address already holds `per_address` slots, that address's oldest
//! connection is evicted; when the pool holds `max`, the oldest connection of the address that
//! holds the most is. Eviction never refuses the newcomer: a stranger who opens connections
//! and sends nothing only ever pushes out its own, and a sensor that connects during the flood
//! gets in. An evicted connection learns it through [`Slot::evicted`] and closes.
//!
//! Within an address, a connection that is busy ([`Slot::busy`]: its login is being checked) goes last, and
//! one that has proven itself ([`Slot::prove`]: a request answered with success, a login that
//! passed) after those that have not: a sensor's keep-alive connection outlives the sockets a
//! stranger behind the same NAT keeps opening.
//!
//! IPv6 sources count per /64 (one host usually owns a whole prefix); IPv4-mapped IPv6
//! addresses count as their IPv4 address.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU8, Ordering},
    },
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
    by_source: HashMap<IpAddr, VecDeque<Entry>>,
}

struct Entry {
    id: u64,
    token: CancellationToken,
    state: Arc<AtomicU8>,
}

const PROVEN: u8 = 1;
const BUSY: u8 = 2;

/// One connection's place in a [`Slots`] pool; dropping it frees the place.
pub struct Slot {
    inner: Arc<Mutex<Inner>>,
    source: IpAddr,
    id: u64,
    token: CancellationToken,
    state: Arc<AtomicU8>,
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
        let state = Arc::new(AtomicU8::new(0));
        let entry = Entry { id, token: token.clone(), state: Arc::clone(&state) };
        inner.by_source.entry(source).or_default().push_back(entry);
        inner.total += 1;
        Slot { inner: Arc::clone(&self.inner), source, id, token, state }
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
    /// Evicts the oldest connection of `source` that is neither busy nor proven; else the
    /// oldest that is not busy; else the oldest.
    fn evict_oldest(&mut self, source: IpAddr) {
        let Some(queue) = self.by_source.get_mut(&source) else { return };
        let state = |e: &Entry| e.state.load(Ordering::Relaxed);
        let at = queue
            .iter()
            .position(|e| state(e) == 0)
            .or_else(|| queue.iter().position(|e| state(e) & BUSY == 0))
            .unwrap_or(0);
        if let Some(entry) = queue.remove(at) {
            entry.token.cancel();
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

    /// The connection proved itself (a request answered with success, a login passed): it is
    /// evicted after its address's connections that have not.
    pub fn prove(&self) {
        self.state.fetch_or(PROVEN, Ordering::Relaxed);
    }

    /// Whether the connection is serving a request now: a busy one is evicted last.
    pub fn busy(&self, busy: bool) {
        if busy {
            self.state.fetch_or(BUSY, Ordering::Relaxed);
        } else {
            self.state.fetch_and(!BUSY, Ordering::Relaxed);
        }
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
        if let Some(at) = queue.iter().position(|e| e.id == self.id) {
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

    #[test]
    fn busy_and_proven_connections_go_last() {
        let slots = Slots::new(100, 3);
        let sensor = slots.admit(ip("192.0.2.1"));
        sensor.prove();
        let serving = slots.admit(ip("192.0.2.1"));
        serving.busy(true);
        let flood: Vec<Slot> = (0..20).map(|_| slots.admit(ip("192.0.2.1"))).collect();
        assert!(!sensor.is_evicted() && !serving.is_evicted());
        assert_eq!(flood.iter().filter(|s| !s.is_evicted()).count(), 1);
        // with only proven and busy ones left, the proven idle one goes before the busy one
        let late = slots.admit(ip("192.0.2.1"));
        late.busy(true);
        let _next = slots.admit(ip("192.0.2.1"));
        assert!(sensor.is_evicted(), "the proven idle connection goes before busy ones");
        assert!(!serving.is_evicted() && !late.is_evicted());
        serving.busy(false);
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told() {
        let slots = Slots::new(1, 1);
        let old = slots.admit(ip("127.0.0.1"));
        let _new = slots.admit(ip("127.0.0.2"));
        tokio::time::timeout(std::time::Duration::from_secs(1), old.evicted()).await.unwrap();
    }
}
