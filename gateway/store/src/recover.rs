//! Opening the outbox directory: scan every segment, keep every valid record, skip damage in
//! the middle (counted), skip (and count) segment files that cannot be read or are not ours to
//! read, cut a torn tail off the head, apply the ack records (and those in the reserve), and
//! rebuild the index.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    ops::Range,
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use gw_model::{AppId, DeviceId};
use serde::Deserialize;
use tracing::{info, warn};

use crate::{
    StoreError,
    faults::{self, FaultPoint, Faults},
    format::{self, KIND_ACKS, KIND_DATA, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN},
    index::{DevIdx, Index, Pos},
    reserve::Reserve,
};

/// The segment appended to: the newest one.
#[derive(Debug)]
pub(crate) struct Head {
    /// The first seq this segment can hold (its index key).
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub len: u64,
}

/// What [`recover`] rebuilt.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub index: Index,
    pub head: Head,
    pub next_seq: u64,
    pub devices: HashMap<AppId, HashMap<DeviceId, DevIdx>>,
    pub disk_bytes: u64,
    /// Damaged regions skipped and undecodable records.
    pub corrupt: u64,
    /// Segment files skipped whole: unreadable, or holding nothing of the log where they sit.
    pub segments_skipped: u64,
    pub reserve: Reserve,
}

/// The first two fields of an encoded `Telemetry`: enough to file a record under its device.
#[derive(Deserialize)]
struct RecordKey {
    app: AppId,
    device: DeviceId,
}

struct DataRecord {
    seq: u64,
    dev: DevIdx,
    offset: u32,
    len: u32,
}

/// A segment file recovery keeps.
struct Kept {
    base: u64,
    path: PathBuf,
    file: File,
    len: u64,
    valid_end: u64,
}

pub(crate) fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })
}

/// Creates a segment file holding only its header, durably (file and directory synced). A
/// file left half made by a failure is removed again.
pub(crate) fn create_segment(dir: &Path, base: u64, faults: &Faults) -> Result<Head, StoreError> {
    let path = dir.join(format::segment_file_name(base));
    faults::before(faults, FaultPoint::Roll)
        .map_err(|source| StoreError::Open { path: path.clone(), source })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StoreError::Open { path: path.clone(), source })?;
    let made = file
        .set_len(0)
        .map_err(|source| StoreError::Truncate { path: path.clone(), len: 0, source })
        .and_then(|()| {
            file.write_all_at(&format::segment_header(), 0)
                .map_err(|source| StoreError::Write { path: path.clone(), source })
        })
        .and_then(|()| {
            file.sync_all().map_err(|source| StoreError::Sync { path: path.clone(), source })
        })
        .and_then(|()| sync_dir(dir));
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(Head { base, path, file: Arc::new(file), len: SEGMENT_HEADER_LEN as u64 })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Sync { path: dir.to_owned(), source })
}

/// Creates the outbox directory (mode 0700) if it is missing.
pub(crate) fn create_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let list_err = |source| StoreError::ListDir { path: dir.to_owned(), source };
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(base) = entry.file_name().to_str().and_then(format::parse_segment_file_name) {
            segments.push((base, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    Ok(segments)
}

/// Rebuilds the outbox's state from `dir` (which exists and is locked).
///
/// A segment file is skipped whole, counted and left in place when it cannot be read, or when
/// it holds no record and its name puts it inside an older segment or its header is damaged
/// (a stray file). A fresh head is then created after everything it may hold, so its seqs are
/// never reused. Opening never fails over a file's content.
pub(crate) fn recover(dir: &Path, faults: &Faults) -> Result<Recovered, StoreError> {
    let segments = list_segments(dir)?;
    let (reserve, reserved) = Reserve::open(dir, faults);
    let mut index = Index::default();
    let mut devices: HashMap<AppId, HashMap<DeviceId, DevIdx>> = HashMap::new();
    let mut records: Vec<DataRecord> = Vec::new();
    let mut acked: Vec<Range<u64>> = reserved.ranges;
    // no new record may take a seq at or below anything named on disk
    let mut seq_floor = reserved.seq_end;
    let (mut corrupt, mut skipped) = (0u64, 0u64);
    let mut last_seq = 0u64;
    let mut kept: Vec<Kept> = Vec::new();
    let mut newest_kept = false;
    let mut torn_newest = None;

    for (i, (base, path)) in segments.iter().enumerate() {
        let is_newest = i + 1 == segments.len();
        let buf = match faults::read(faults, path) {
            Ok(buf) => buf,
            Err(e) => {
                let len = fs::metadata(path).map_or(0, |m| m.len());
                let end = base + len / (RECORD_HEADER_LEN as u64 + 1) + 1;
                seq_floor = seq_floor.max(end);
                index.protect(*base..end);
                warn!(segment = %path.display(), cause = %e, "cannot read an outbox segment; skipped");
                skipped += 1;
                continue;
            }
        };
        let header_ok = format::header_ok(&buf);
        let before = last_seq;
        let mut found = 0usize;
        let (mut seg_acks, mut ack_seq) = (Vec::new(), 0u64);
        let end = format::scan(&buf, last_seq, |frame| match frame.kind {
            KIND_DATA => match postcard::from_bytes::<RecordKey>(frame.body) {
                Ok(key) => {
                    let dev = intern(&mut index, &mut devices, key.app, key.device);
                    records.push(DataRecord {
                        seq: frame.seq,
                        dev,
                        offset: u32::try_from(frame.offset).unwrap_or(u32::MAX),
                        len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
                    });
                    last_seq = frame.seq;
                    found += 1;
                }
                Err(_) => corrupt += 1,
            },
            KIND_ACKS => {
                seg_acks.extend(format::ack_ranges(frame.body));
                ack_seq = ack_seq.max(frame.seq + 1);
            }
            _ => {}
        });
        if found == 0 {
            if !header_ok && seg_acks.is_empty() && is_newest && *base > before {
                // a crash while it was being created: made again below
                torn_newest = Some(path.clone());
                continue;
            }
            if !header_ok || *base <= before {
                warn!(
                    segment = %path.display(),
                    bytes = buf.len(),
                    "stray outbox segment (no record, and inside an older segment or no header); skipped"
                );
                skipped += 1;
                continue;
            }
        } else if !header_ok {
            warn!(segment = %path.display(), "segment header damaged; kept its records anyway");
        }
        acked.extend(seg_acks);
        seq_floor = seq_floor.max(ack_seq);
        corrupt += u64::from(end.skipped_regions);
        if end.skipped_regions > 0 {
            warn!(segment = %path.display(), regions = end.skipped_regions, "skipped damaged records");
        }
        let file = open_segment(path)?;
        kept.push(Kept {
            base: (*base).max(before + 1),
            path: path.clone(),
            file,
            len: buf.len() as u64,
            valid_end: end.valid_end as u64,
        });
        newest_kept = is_newest;
    }
    seq_floor = seq_floor.max(last_seq + 1);
    for r in &acked {
        seq_floor = seq_floor.max(r.end);
    }

    // The head: the newest file if it was kept; otherwise a fresh one after everything, or,
    // if the disk has no room for it, the newest kept file.
    let mut fresh = None;
    if !newest_kept {
        match create_segment(dir, seq_floor, faults) {
            Ok(head) => {
                if let Some(torn) = torn_newest.filter(|t| *t != head.path) {
                    let _ = fs::remove_file(torn);
                }
                fresh = Some(head);
            }
            Err(e) if !kept.is_empty() && is_out_of_space(&e) => {
                warn!(cause = %e, "no room for a fresh outbox segment; appending to the newest one");
            }
            Err(e) => return Err(e),
        }
    }
    let mut disk_bytes = 0u64;
    let kept_count = kept.len();
    let mut head = None;
    for (i, mut k) in kept.into_iter().enumerate() {
        let is_head = fresh.is_none() && i + 1 == kept_count;
        if k.valid_end < k.len {
            if is_head {
                info!(segment = %k.path.display(), bytes = k.len - k.valid_end, "cutting off torn tail");
                let len = k.valid_end;
                k.file
                    .set_len(len)
                    .and_then(|()| k.file.sync_all())
                    .map_err(|source| StoreError::Truncate { path: k.path.clone(), len, source })?;
                k.len = len;
            } else {
                warn!(segment = %k.path.display(), bytes = k.len - k.valid_end, "damaged tail in an old segment");
                corrupt += 1;
            }
        }
        disk_bytes += k.len;
        let file = Arc::new(k.file);
        index.add_segment(k.base, k.path.clone(), Arc::clone(&file));
        if is_head {
            head = Some(Head { base: k.base, path: k.path, file, len: k.len });
        }
    }
    let head = match (fresh, head) {
        (Some(h), _) => {
            index.add_segment(h.base, h.path.clone(), Arc::clone(&h.file));
            disk_bytes += h.len;
            h
        }
        (None, Some(h)) => h,
        (None, None) => {
            return Err(StoreError::Open {
                path: dir.to_owned(),
                source: std::io::Error::other("no outbox segment could be opened or created"),
            });
        }
    };

    let acked = merge(acked);
    for r in &records {
        let upto = acked.partition_point(|a| a.start <= r.seq);
        let is_acked = upto > 0 && acked[upto - 1].contains(&r.seq);
        if !is_acked {
            index.push(r.dev, Pos { seq: r.seq, offset: r.offset, len: r.len });
        }
    }
    let next_seq = seq_floor.max(head.base);
    info!(
        dir = %dir.display(),
        segments = index.segment_count(),
        records = index.live_records(),
        corrupt,
        segments_skipped = skipped,
        "outbox recovered"
    );
    Ok(Recovered {
        index,
        head,
        next_seq,
        devices,
        disk_bytes,
        corrupt,
        segments_skipped: skipped,
        reserve,
    })
}

pub(crate) fn is_out_of_space(e: &StoreError) -> bool {
    match e {
        StoreError::Write { source, .. }
        | StoreError::Sync { source, .. }
        | StoreError::Open { source, .. }
        | StoreError::Truncate { source, .. } => faults::is_no_space(source),
        _ => false,
    }
}

/// Sorts and merges ranges into disjoint ascending ones.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn intern(
    index: &mut Index,
    devices: &mut HashMap<AppId, HashMap<DeviceId, DevIdx>>,
    app: AppId,
    device: DeviceId,
) -> DevIdx {
    if let Some(idx) = devices.get(app.as_str()).and_then(|m| m.get(device.as_str())) {
        return *idx;
    }
    let idx = index.add_device(app.clone(), device.clone());
    devices.entry(app).or_default().insert(device, idx);
    idx
}
