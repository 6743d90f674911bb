//! The on-disk format: segment file names and headers, record framing, and the scanner that
//! finds valid records in a segment (and skips or cuts off damage).
//!
//! ```text
//! segment  seg-<first seq, 20 digits>.log
//! header   "GWOUTBOX" | version u32 LE (1) | reserved u32 (0)                 16 bytes
//! record   len u32 LE | crc u32 LE | seq u64 LE | kind u8 | body (len bytes)  17 + len bytes
//!          crc = CRC-32 (IEEE) of len | seq | kind | body
//! kind 1   data: body = postcard(Telemetry), seq = the record's sequence number; a body
//!          written before `Telemetry::command_wait` existed lacks that last field and
//!          decodes with `command_wait = None` (see `decode_telemetry`)
//! kind 2   acks: body = n x (first u64 LE, end u64 LE) half-open ranges of acknowledged seqs,
//!          seq = the highest data seq written before it
//! ```

use std::ops::Range;

use serde::Serialize;

/// Decodes a data record's body: the current `Telemetry` layout, or the layout before
/// `command_wait` was added (the same fields without it), so outbox files written by an older
/// gatewayd are still drained after an upgrade. `None` when neither decodes.
pub(crate) fn decode_telemetry(body: &[u8]) -> Option<gw_model::Telemetry> {
    if let Ok(t) = postcard::from_bytes::<gw_model::Telemetry>(body) {
        return Some(t);
    }
    let (old, rest) = postcard::take_from_bytes::<TelemetryV1>(body).ok()?;
    if !rest.is_empty() {
        return None;
    }
    Some(gw_model::Telemetry {
        app: old.app,
        device: old.device,
        channel: old.channel,
        suffix: old.suffix,
        content_type: old.content_type,
        data_schema: old.data_schema,
        received_at: old.received_at,
        payload: old.payload.into(),
        command_wait: None,
    })
}

/// `Telemetry` as gatewayd 0.1 wrote it, field for field.
#[derive(serde::Deserialize)]
struct TelemetryV1 {
    app: gw_model::AppId,
    device: gw_model::DeviceId,
    channel: gw_model::Channel,
    suffix: Option<String>,
    content_type: Option<String>,
    data_schema: Option<String>,
    received_at: gw_model::Timestamp,
    /// postcard writes `Bytes` as a length and the raw bytes, as it writes a `Vec<u8>`.
    payload: Vec<u8>,
}

/// Magic bytes at the start of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"GWOUTBOX";
pub(crate) const VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
pub(crate) const RECORD_HEADER_LEN: usize = 17;
/// No body is larger than this; a larger length field is damage.
pub(crate) const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

pub(crate) const KIND_DATA: u8 = 1;
pub(crate) const KIND_ACKS: u8 = 2;

/// The header every segment file starts with.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// `seg-00000000000000000001.log` for base seq 1.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("seg-{base:020}.log")
}

/// The base seq of a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn record_crc(len: u32, seq: u64, kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

/// Appends a record to `buf` whose body is `value` encoded with postcard, straight into `buf`
/// (no intermediate allocation). On error `buf` is left as it was. Returns the record's length
/// including its header.
pub(crate) fn append_data_record<T: Serialize>(
    buf: &mut Vec<u8>,
    seq: u64,
    value: &T,
) -> Result<usize, postcard::Error> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    if let Err(e) = postcard::serialize_with_flavor(value, AppendTo(&mut *buf)) {
        buf.truncate(start);
        return Err(e);
    }
    let body_len = buf.len() - start - RECORD_HEADER_LEN;
    finish_header(buf, start, body_len, seq, KIND_DATA);
    Ok(buf.len() - start)
}

/// Appends an ack record listing `ranges` (half-open, ascending).
pub(crate) fn append_ack_record(buf: &mut Vec<u8>, seq: u64, ranges: &[Range<u64>]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    for r in ranges {
        buf.extend_from_slice(&r.start.to_le_bytes());
        buf.extend_from_slice(&r.end.to_le_bytes());
    }
    finish_header(buf, start, ranges.len() * 16, seq, KIND_ACKS);
}

/// Appends ack records listing `ranges`, as many as keep each body within [`MAX_BODY_LEN`];
/// at least one (an empty one still marks `seq` as written).
pub(crate) fn append_ack_records(buf: &mut Vec<u8>, seq: u64, ranges: &[Range<u64>]) {
    if ranges.is_empty() {
        append_ack_record(buf, seq, &[]);
    }
    for chunk in ranges.chunks(MAX_BODY_LEN / 16) {
        append_ack_record(buf, seq, chunk);
    }
}

fn finish_header(buf: &mut [u8], start: usize, body_len: usize, seq: u64, kind: u8) {
    // body_len is bounded by MAX_BODY_LEN by the callers' size checks; saturate rather than wrap
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    let crc = record_crc(len, seq, kind, &buf[start + RECORD_HEADER_LEN..]);
    let h = &mut buf[start..start + RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16] = kind;
}

/// A postcard flavor that appends to a borrowed `Vec`.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// One valid record found by [`scan`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub offset: usize,
    pub seq: u64,
    pub kind: u8,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// Record length including its header.
    pub fn len(&self) -> usize {
        RECORD_HEADER_LEN + self.body.len()
    }
}

/// Parses the record at `offset` if it is whole, has a known kind, a plausible seq
/// (data: above `last_seq`; acks: at least `last_seq`) and a matching checksum.
pub(crate) fn parse_at(buf: &[u8], offset: usize, last_seq: u64) -> Option<Frame<'_>> {
    let header = buf.get(offset..offset.checked_add(RECORD_HEADER_LEN)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let kind = header[16];
    let body_len = usize::try_from(len).ok()?;
    let plausible = match kind {
        KIND_DATA => seq > last_seq && body_len > 0,
        KIND_ACKS => seq >= last_seq && body_len.is_multiple_of(16),
        _ => false,
    };
    if !plausible || body_len > MAX_BODY_LEN {
        return None;
    }
    let body_start = offset + RECORD_HEADER_LEN;
    let body = buf.get(body_start..body_start.checked_add(body_len)?)?;
    (record_crc(len, seq, kind, body) == crc).then_some(Frame { offset, seq, kind, body })
}

/// What [`scan`] found besides the records.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// End of the last valid record: where appending may continue.
    pub valid_end: usize,
    /// Damaged regions that were skipped because valid records follow them.
    pub skipped_regions: u32,
    /// Bytes after `valid_end` that hold no valid record (a torn or corrupt tail).
    pub torn_tail: usize,
}

/// Walks the records of a segment whose bytes are `buf` (header included), calling `visit`
/// for each valid one in order. A damaged record is skipped if a valid record can be found
/// after it (searching byte by byte); damage with nothing valid after it is the torn tail.
/// `last_seq` is the highest data seq seen in earlier segments.
pub(crate) fn scan(buf: &[u8], mut last_seq: u64, mut visit: impl FnMut(&Frame<'_>)) -> ScanEnd {
    let mut end = ScanEnd { valid_end: SEGMENT_HEADER_LEN.min(buf.len()), ..ScanEnd::default() };
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < buf.len() {
        let frame = parse_at(buf, offset, last_seq).or_else(|| {
            let found = (offset + 1..buf.len()).find_map(|o| parse_at(buf, o, last_seq));
            if found.is_some() {
                end.skipped_regions += 1;
            }
            found
        });
        let Some(frame) = frame else { break };
        visit(&frame);
        if frame.kind == KIND_DATA {
            last_seq = frame.seq;
        }
        offset = frame.offset + frame.len();
        end.valid_end = offset;
    }
    end.torn_tail = buf.len().saturating_sub(end.valid_end);
    end
}

/// Whether the first bytes of a segment are a header this version understands.
pub(crate) fn header_ok(buf: &[u8]) -> bool {
    buf.get(..SEGMENT_HEADER_LEN).is_some_and(|h| h == segment_header())
}

/// The ranges in an ack record's body.
pub(crate) fn ack_ranges(body: &[u8]) -> impl Iterator<Item = Range<u64>> + '_ {
    body.chunks_exact(16).filter_map(|c| {
        let start = u64::from_le_bytes(c[0..8].try_into().ok()?);
        let end = u64::from_le_bytes(c[8..16].try_into().ok()?);
        (start < end).then_some(start..end)
    })
}

/// Turns seqs (any order) into sorted, merged half-open ranges. Sorts `seqs` in place.
pub(crate) fn to_ranges(seqs: &mut [u64], out: &mut Vec<Range<u64>>) {
    out.clear();
    seqs.sort_unstable();
    for &s in seqs.iter() {
        match out.last_mut() {
            Some(r) if r.end == s => r.end = s + 1,
            Some(r) if r.end > s => {}
            _ => out.push(s..s + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(records: &[(u64, &[u8])]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = segment_header().to_vec();
        let mut offsets = Vec::new();
        for (seq, payload) in records {
            offsets.push(buf.len());
            append_data_record(&mut buf, *seq, payload).unwrap();
        }
        (buf, offsets)
    }

    fn seqs(buf: &[u8]) -> (Vec<u64>, ScanEnd) {
        let mut out = Vec::new();
        let end = scan(buf, 0, |f| out.push(f.seq));
        (out, end)
    }

    #[test]
    fn scans_what_was_appended() {
        let (buf, _) = segment_with(&[(1, b"one"), (2, b"two"), (5, b"five")]);
        let (found, end) = seqs(&buf);
        assert_eq!(found, [1, 2, 5]);
        assert_eq!(end, ScanEnd { valid_end: buf.len(), skipped_regions: 0, torn_tail: 0 });
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_whole_record() {
        let (buf, offsets) = segment_with(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        for cut in offsets[2] + 1..buf.len() {
            let (found, end) = seqs(&buf[..cut]);
            assert_eq!(found, [1, 2], "cut at {cut}");
            assert_eq!(end.valid_end, offsets[2]);
            assert_eq!(end.torn_tail, cut - offsets[2]);
        }
    }

    #[test]
    fn flipped_byte_in_the_last_record_drops_only_it() {
        let (buf, offsets) = segment_with(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        for at in offsets[2]..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x55;
            let (found, end) = seqs(&bad);
            assert_eq!(found, [1, 2], "flip at {at}");
            assert_eq!(end.valid_end, offsets[2]);
        }
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_counted() {
        let (buf, offsets) = segment_with(&[(1, b"one"), (2, b"two"), (3, b"three"), (4, b"four")]);
        for at in offsets[1]..offsets[2] {
            let mut bad = buf.clone();
            bad[at] ^= 0xff;
            let (found, end) = seqs(&bad);
            assert_eq!(found, [1, 3, 4], "flip at {at}");
            assert_eq!(end.skipped_regions, 1);
            assert_eq!(end.valid_end, buf.len());
        }
    }

    #[test]
    fn garbage_never_panics_and_respects_seq_order() {
        let (buf, _) = segment_with(&[(3, b"x")]);
        let mut out = Vec::new();
        scan(&buf, 3, |f| out.push(f.seq));
        assert!(out.is_empty(), "a data seq at or below last_seq is not plausible");
        for len in 0..40 {
            let noise: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = seqs(&noise);
        }
    }

    #[test]
    fn ack_records_round_trip_ranges() {
        let mut buf = segment_header().to_vec();
        append_data_record(&mut buf, 1, &b"a".as_slice()).unwrap();
        append_ack_record(&mut buf, 1, &[1..2, 5..9]);
        let mut ranges = Vec::new();
        scan(&buf, 0, |f| {
            if f.kind == KIND_ACKS {
                ranges.extend(ack_ranges(f.body));
            }
        });
        assert_eq!(ranges, [1..2, 5..9]);
    }

    #[test]
    fn to_ranges_merges_and_dedups() {
        let mut seqs = vec![7, 3, 4, 5, 9, 4, 10];
        let mut out = Vec::new();
        to_ranges(&mut seqs, &mut out);
        assert_eq!(out, [3..6, 7..8, 9..11]);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("seg-1.log"), None);
        assert_eq!(parse_segment_file_name("other.txt"), None);
    }
}
