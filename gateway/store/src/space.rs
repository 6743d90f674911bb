//! How much the filesystem under the outbox can hold: `max_bytes` is clamped at open to the
//! free space plus what the outbox's segments already use, so that segments roll (and are
//! reclaimed) at a size the disk can actually hold.

use std::path::Path;

use tracing::warn;

use crate::config::MIN_MAX_BYTES;

/// Bytes an unprivileged writer may still allocate on the filesystem holding `dir`, or
/// `None` if the filesystem cannot say.
pub(crate) fn available(dir: &Path) -> Option<u64> {
    match rustix::fs::statvfs(dir) {
        Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(e) => {
            warn!(dir = %dir.display(), cause = %e, "cannot read the free space of the outbox filesystem");
            None
        }
    }
}

/// The quota the outbox runs with: `configured`, or less if the filesystem cannot hold that
/// (`available` free, `used` by the segments already, `reserve` still to be set aside).
pub(crate) fn clamp(dir: &Path, configured: u64, used: u64, reserve: u64) -> u64 {
    let Some(free) = available(dir) else { return configured };
    let can_hold = free.saturating_add(used).saturating_sub(reserve);
    if can_hold >= configured {
        return configured;
    }
    let clamped = can_hold.max(MIN_MAX_BYTES);
    warn!(
        dir = %dir.display(),
        configured_max_bytes = configured,
        filesystem_holds = can_hold,
        max_bytes = clamped,
        "[store] max_bytes is more than the filesystem can hold: the outbox uses the smaller figure"
    );
    clamped
}
