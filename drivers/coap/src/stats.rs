//! The endpoint's counters: written by the protocol core, read by anyone holding [`Stats`]
//! (the daemon's `/api/v1/status`). Counters only grow; gauges are the current value.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The shared atomic counters.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub(crate) $name: AtomicU64,)*
        }

        /// A copy of every counter and gauge at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Datagrams received.
    datagrams,
    /// New requests (not duplicates) past the rate limit.
    requests,
    /// Messages the outbox made durable (answered 2.04 or 2.05).
    stored,
    /// Commands handed to sensors in a 2.05.
    commands,
    /// Duplicate CON/NON requests answered from the exchange table.
    duplicates,
    /// Datagrams that do not parse (dropped; a CON gets a Reset).
    malformed,
    /// Requests answered 4.00, 4.02, 4.04, 4.05, 4.06 or 4.08.
    bad_requests,
    /// Requests refused for missing or wrong credentials (4.01, 4.03).
    auth_refused,
    /// Requests refused by the per-peer rate limit or the login limiter (4.29).
    rate_limited,
    /// Requests refused because the exchange, peer or in-flight tables were full (5.03).
    busy,
    /// Uploads above `max_message_size` or the block memory (4.13).
    too_large,
    /// Messages refused because the outbox was full (5.03).
    quota_exceeded,
    /// Messages refused while forwarding lagged behind (flow control, `[store] max_lag`: 5.03
    /// with Max-Age).
    slowed,
    /// Messages the outbox could not take for another reason (5.03).
    unavailable,
    /// Answers sent as separate responses after an empty ACK.
    separate_responses,
    /// Retransmissions of separate CON responses.
    retransmissions,
    /// Separate responses never acknowledged after `max_retransmit` tries.
    gave_up,
    /// Resets received from sensors.
    resets,
    /// Block1 blocks received (RFC 7959).
    blocks_in,
    /// Block2 blocks sent.
    blocks_out,
    /// Gauge: exchanges in the table (in flight and remembered).
    exchanges,
    /// Gauge: requests being processed.
    in_flight,
    /// Gauge: peers with state.
    peers,
    /// Gauge: bytes held for block-wise transfers.
    block_bytes,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(u64::try_from(value).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A handle to the endpoint's counters.
#[derive(Debug, Clone)]
pub struct Stats(pub(crate) Arc<Counters>);

impl Stats {
    /// The handle to counters a [`Core`](crate::Core) was built with.
    pub fn new(counters: Arc<Counters>) -> Self {
        Self(counters)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.0.snapshot()
    }
}
