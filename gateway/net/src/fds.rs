//! The file-descriptor budget. Every connection costs one descriptor; the outbox, the logs and
//! the TLS files need some too. systemd gives a service a soft `RLIMIT_NOFILE` of 1,024 by
//! default, below what the listeners' connection caps add up to, and a process out of
//! descriptors accepts nothing at all: not a sensor, not `/healthz`. So the daemon raises the
//! soft limit to the hard one at start ([`raise_limit`]) and then fits the listeners' caps into
//! what it got, less a reserve ([`fit`]).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for everything that is not a connection: outbox segments, snapshots,
/// logs, the listeners themselves, the uplink and registry clients.
pub const RESERVE: u64 = 128;

/// Raises the soft descriptor limit to the hard limit; returns the limit now in force.
pub fn raise_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if let Some(hard) = limit.maximum
        && hard > soft
    {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
            Ok(()) => return hard,
            Err(e) => {
                tracing::warn!(soft, hard, cause = %e, "cannot raise the file-descriptor limit")
            }
        }
    }
    if limit.maximum.is_none() && limit.current.is_some() {
        // unlimited hard limit: ask for a large soft one
        let want = 1 << 20;
        if setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: None }).is_ok() {
            return want;
        }
    }
    soft
}

/// Scales the connection caps in `caps` (key, value) down, in proportion, so that together they
/// fit `limit` less [`RESERVE`]; returns whether anything had to shrink. No cap goes below 1.
pub fn fit(limit: u64, caps: &mut [(&'static str, &mut usize)]) -> bool {
    let room = limit.saturating_sub(RESERVE).max(caps.len() as u64);
    let wanted: u64 = caps.iter().map(|(_, v)| **v as u64).sum();
    if wanted <= room {
        return false;
    }
    for (key, value) in caps.iter_mut() {
        let scaled = ((**value as u128 * room as u128) / wanted as u128).max(1) as usize;
        tracing::warn!(
            key = *key,
            configured = **value,
            used = scaled,
            limit,
            "connection cap lowered to fit the file-descriptor limit (raise LimitNOFILE)"
        );
        **value = scaled;
    }
    true
}

/// The soft descriptor limit in force.
pub fn limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept_and_ones_that_do_not_shrink_in_proportion() {
        let (mut mqtt, mut pending, mut web) = (1024usize, 256usize, 256usize);
        assert!(!fit(10_000, &mut [("a", &mut mqtt), ("b", &mut pending), ("c", &mut web)]));
        assert_eq!((mqtt, pending, web), (1024, 256, 256));
        assert!(fit(1024, &mut [("a", &mut mqtt), ("b", &mut pending), ("c", &mut web)]));
        assert!(mqtt + pending + web <= 1024 - RESERVE as usize);
        assert_eq!((mqtt, pending, web), (597, 149, 149));
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let now = raise_limit();
        assert_eq!(limit(), now);
        if let Some(hard) = hard {
            assert_eq!(now, hard);
        }
    }
}
