//! Opening the outbox directory: scan every segment, keep every valid record, skip damage in
//! the middle (counted), cut a torn tail off the newest segment, apply the ack records, and
//! rebuild the index.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::Write,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use gw_model::{AppId, DeviceId};
use serde::Deserialize;
use tracing::{info, warn};

use crate::{
    StoreError,
    format::{self, KIND_ACKS, KIND_DATA, SEGMENT_HEADER_LEN},
    index::{DevIdx, Index, Pos},
};

/// The segment appended to: the newest one.
#[derive(Debug)]
pub(crate) struct Head {
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

pub(crate) fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })
}

/// Creates a segment file holding only its header, durably (file and directory synced).
pub(crate) fn create_segment(dir: &Path, base: u64) -> Result<Head, StoreError> {
    let path = dir.join(format::segment_file_name(base));
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::Open { path: path.clone(), source })?;
    file.set_len(0).map_err(|source| StoreError::Truncate {
        path: path.clone(),
        len: 0,
        source,
    })?;
    (&file)
        .write_all(&format::segment_header())
        .map_err(|source| StoreError::Write { path: path.clone(), source })?;
    file.sync_all().map_err(|source| StoreError::Sync { path: path.clone(), source })?;
    sync_dir(dir)?;
    Ok(Head { base, path, file: Arc::new(file), len: SEGMENT_HEADER_LEN as u64 })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Sync { path: dir.to_owned(), source })
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

/// Opens (creating if needed) the outbox in `dir` and rebuilds its state.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    fs::create_dir_all(dir)
        .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
    let segments = list_segments(dir)?;
    let mut index = Index::default();
    let mut devices: HashMap<AppId, HashMap<DeviceId, DevIdx>> = HashMap::new();
    let mut records: Vec<DataRecord> = Vec::new();
    let mut acked: Vec<Range<u64>> = Vec::new();
    let mut corrupt = 0u64;
    let mut last_seq = 0u64;
    let mut disk_bytes = 0u64;
    let mut head = None;

    for (i, (base, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let buf =
            fs::read(path).map_err(|source| StoreError::Read { path: path.clone(), source })?;
        if !format::header_ok(&buf) {
            warn!(segment = %path.display(), "segment header damaged; scanning its records anyway");
        }
        let mut found = 0usize;
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
            KIND_ACKS => acked.extend(format::ack_ranges(frame.body)),
            _ => {}
        });
        corrupt += u64::from(end.skipped_regions);
        if end.skipped_regions > 0 {
            warn!(segment = %path.display(), regions = end.skipped_regions, "skipped damaged records");
        }
        let file = open_segment(path)?;
        let mut len = buf.len() as u64;
        if is_last {
            if !format::header_ok(&buf) && found == 0 {
                continue;
            }
            if end.torn_tail > 0 {
                info!(segment = %path.display(), bytes = end.torn_tail, "cutting off torn tail");
                len = end.valid_end as u64;
                file.set_len(len)
                    .and_then(|()| file.sync_all())
                    .map_err(|source| StoreError::Truncate { path: path.clone(), len, source })?;
            }
        } else if end.torn_tail > 0 {
            warn!(segment = %path.display(), bytes = end.torn_tail, "damaged tail in an old segment");
            corrupt += 1;
        }
        disk_bytes += len;
        let file = Arc::new(file);
        index.add_segment(*base, path.clone(), Arc::clone(&file));
        if is_last {
            head = Some(Head { base: *base, path: path.clone(), file, len });
        }
    }

    let head = match head {
        Some(head) => head,
        None => {
            // no segment yet, or the newest one was only a torn header: start it afresh
            let base = segments.last().map_or(1, |(b, _)| *b).max(last_seq + 1);
            let head = create_segment(dir, base)?;
            index.add_segment(head.base, head.path.clone(), Arc::clone(&head.file));
            disk_bytes += head.len;
            head
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
    let next_seq = last_seq.max(head.base.saturating_sub(1)) + 1;
    info!(
        dir = %dir.display(),
        segments = index.segment_count(),
        records = index.live_records(),
        corrupt,
        "outbox recovered"
    );
    Ok(Recovered { index, head, next_seq, devices, disk_bytes, corrupt })
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
