//! Injectable filesystem faults, for tests: a [`FaultPlan`] handed to
//! [`Outbox::open_with_faults`](crate::Outbox::open_with_faults) is asked before every write,
//! fdatasync, truncation, segment creation and recovery read of the outbox whether that call
//! should fail, and how. Production opens the outbox without a plan: every I/O call then costs
//! one branch on an `Option`.

use std::{fmt, fs::File, io, os::unix::fs::FileExt, path::Path, sync::Arc};

/// Where in the outbox an I/O call happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Writing a batch of data records (with the acknowledgements riding along) to the head.
    Append,
    /// fdatasync of a segment.
    Sync,
    /// Writing acknowledgements alone (no data) or an ack checkpoint to the head segment.
    AckWrite,
    /// Creating a new segment file (a roll, or a fresh head at open).
    Roll,
    /// Cutting a segment back (a refused batch, a reclaimed head).
    Truncate,
    /// Writing to (or creating) the preallocated acknowledgement reserve.
    ReserveWrite,
    /// Reading a segment file at open.
    RecoveryRead,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with `ENOSPC` and writes nothing.
    NoSpace,
    /// A write stores the first half of its bytes, then fails with `ENOSPC` (other calls fail
    /// as with [`Fault::NoSpace`]).
    ShortWrite,
    /// The call fails with `EIO`.
    Io,
}

type Decide = dyn Fn(FaultPoint) -> Option<Fault> + Send + Sync;

/// Decides, call by call, which I/O calls of an outbox fail. Cheap to clone (shared).
#[derive(Clone)]
pub struct FaultPlan(Arc<Decide>);

impl FaultPlan {
    /// A plan that asks `decide` before each I/O call; `None` lets the call through.
    pub fn new(decide: impl Fn(FaultPoint) -> Option<Fault> + Send + Sync + 'static) -> Self {
        Self(Arc::new(decide))
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan").finish_non_exhaustive()
    }
}

/// The crate's view of an optional plan.
pub(crate) type Faults = Option<FaultPlan>;

#[inline]
fn check(faults: &Faults, point: FaultPoint) -> Option<Fault> {
    match faults {
        None => None,
        Some(plan) => (plan.0)(point),
    }
}

fn error(fault: Fault) -> io::Error {
    match fault {
        Fault::NoSpace | Fault::ShortWrite => io::Error::from(io::ErrorKind::StorageFull),
        Fault::Io => io::Error::from_raw_os_error(5), // EIO
    }
}

/// `write_all_at`, unless the plan says otherwise.
pub(crate) fn write_at(
    faults: &Faults,
    point: FaultPoint,
    file: &File,
    bytes: &[u8],
    offset: u64,
) -> io::Result<()> {
    if let Some(fault) = check(faults, point) {
        if fault == Fault::ShortWrite {
            file.write_all_at(&bytes[..bytes.len() / 2], offset)?;
        }
        return Err(error(fault));
    }
    file.write_all_at(bytes, offset)
}

/// `sync_data` (fdatasync), unless the plan says otherwise.
pub(crate) fn sync_data(faults: &Faults, point: FaultPoint, file: &File) -> io::Result<()> {
    match check(faults, point) {
        Some(fault) => Err(error(fault)),
        None => file.sync_data(),
    }
}

/// `set_len`, unless the plan says otherwise.
pub(crate) fn set_len(faults: &Faults, file: &File, len: u64) -> io::Result<()> {
    match check(faults, FaultPoint::Truncate) {
        Some(fault) => Err(error(fault)),
        None => file.set_len(len),
    }
}

/// A check before an operation that is not one call (creating a segment).
pub(crate) fn before(faults: &Faults, point: FaultPoint) -> io::Result<()> {
    match check(faults, point) {
        Some(fault) => Err(error(fault)),
        None => Ok(()),
    }
}

/// `fs::read`, unless the plan says otherwise.
pub(crate) fn read(faults: &Faults, path: &Path) -> io::Result<Vec<u8>> {
    match check(faults, FaultPoint::RecoveryRead) {
        Some(fault) => Err(error(fault)),
        None => std::fs::read(path),
    }
}

/// Whether an I/O error means the disk (or a quota, or the file size limit) has no room.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}
