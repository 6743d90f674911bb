//! The reader's in-memory index: which records are live, where they are on disk, per-device
//! FIFO queues served round-robin, what is in flight, which devices are parked, and how many
//! live records each segment still holds. It stores positions, never payloads (16 bytes per
//! record), and does no I/O: every operation is a plain state change, tested synchronously.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    path::PathBuf,
    sync::Arc,
};

use gw_model::{AppId, DeviceId};

/// A device's number, assigned the first time the outbox sees it.
pub(crate) type DevIdx = u32;

/// Where one live record is: its seq and its place in its segment (found by seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub seq: u64,
    pub offset: u32,
    /// Record length including its header.
    pub len: u32,
}

/// A segment file as the index sees it.
#[derive(Debug)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Data records in it that are neither acknowledged nor dropped.
    pub live: u64,
}

/// A record handed to the reader, with the file to read it from.
#[derive(Debug)]
pub(crate) struct Picked {
    pub pos: Pos,
    pub file: Arc<File>,
}

#[derive(Debug)]
struct Device {
    app: AppId,
    device: DeviceId,
    queue: VecDeque<Pos>,
    in_flight: u32,
    parked: bool,
    /// Since when the cloud has refused the device without taking one of its records since
    /// (kept across the retries that release it for a moment).
    parked_since: Option<std::time::Instant>,
    in_ring: bool,
    dropped: u64,
    /// Records dropped because the device stayed parked longer than allowed.
    expired: u64,
    /// Records dropped because they waited longer than `[store] max_age`.
    too_old: u64,
}

/// Per-device counters for the stats snapshot.
#[derive(Debug)]
pub(crate) struct DeviceCounts<'a> {
    pub app: &'a AppId,
    pub device: &'a DeviceId,
    pub queued: usize,
    pub dropped: u64,
    pub expired: u64,
    pub too_old: u64,
    pub parked: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    devices: Vec<Device>,
    /// Devices with deliverable records, served front to back.
    ring: VecDeque<DevIdx>,
    in_flight: HashMap<u64, (DevIdx, Pos)>,
    segments: BTreeMap<u64, SegmentInfo>,
    live_records: u64,
    live_bytes: u64,
    /// Seqs an ack checkpoint must never cover: those of segment files recovery could not
    /// read (they may hold records once they can be read again).
    protected: Vec<std::ops::Range<u64>>,
}

impl Index {
    /// Keeps `seqs` out of every ack checkpoint.
    pub fn protect(&mut self, seqs: std::ops::Range<u64>) {
        self.protected.push(seqs);
    }

    /// Registers the next device; its number is the count of devices before it.
    pub fn add_device(&mut self, app: AppId, device: DeviceId) -> DevIdx {
        let idx = DevIdx::try_from(self.devices.len()).unwrap_or(DevIdx::MAX);
        self.devices.push(Device {
            app,
            device,
            queue: VecDeque::new(),
            in_flight: 0,
            parked: false,
            parked_since: None,
            in_ring: false,
            dropped: 0,
            expired: 0,
            too_old: 0,
        });
        idx
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn add_segment(&mut self, base: u64, path: PathBuf, file: Arc<File>) {
        self.segments.insert(base, SegmentInfo { path, file, live: 0 });
    }

    /// Adds a committed record at the tail of its device's queue. Returns whether the device
    /// just became deliverable.
    pub fn push(&mut self, dev: DevIdx, pos: Pos) -> bool {
        let Some(d) = self.devices.get_mut(dev as usize) else { return false };
        d.queue.push_back(pos);
        self.live_records += 1;
        self.live_bytes += u64::from(pos.len);
        if let Some((_, seg)) = self.segments.range_mut(..=pos.seq).next_back() {
            seg.live += 1;
        }
        self.enqueue_if_ready(dev)
    }

    fn enqueue_if_ready(&mut self, dev: DevIdx) -> bool {
        let Some(d) = self.devices.get_mut(dev as usize) else { return false };
        let ready = !d.in_ring && !d.parked && d.in_flight == 0 && !d.queue.is_empty();
        if ready {
            d.in_ring = true;
            self.ring.push_back(dev);
        }
        ready
    }

    /// Hands out up to `max` records, round-robin over deliverable devices: each device gives
    /// at most `ceil(max / deliverable devices)` records, oldest first, and then has one batch
    /// in flight; it is served again only once all of that batch is resolved.
    pub fn take_batch(&mut self, max: usize) -> Vec<Picked> {
        let mut out = Vec::new();
        if max == 0 || self.ring.is_empty() {
            return out;
        }
        let quantum = max.div_ceil(self.ring.len()).max(1);
        while out.len() < max {
            let Some(dev) = self.ring.pop_front() else { break };
            let Some(d) = self.devices.get_mut(dev as usize) else { continue };
            d.in_ring = false;
            if d.parked || d.in_flight > 0 {
                continue;
            }
            let take = quantum.min(max - out.len()).min(d.queue.len());
            for pos in d.queue.drain(..take) {
                d.in_flight += 1;
                self.in_flight.insert(pos.seq, (dev, pos));
                if let Some((_, seg)) = self.segments.range(..=pos.seq).next_back() {
                    out.push(Picked { pos, file: Arc::clone(&seg.file) });
                }
            }
        }
        out
    }

    /// The cloud accepted `seq`: it is gone. Returns (known, device became deliverable).
    pub fn ack(&mut self, seq: u64) -> (bool, bool) {
        let Some((dev, pos)) = self.in_flight.remove(&seq) else { return (false, false) };
        self.forget(pos);
        if let Some(d) = self.devices.get_mut(dev as usize) {
            // the cloud took one of its records: no longer refused
            d.parked_since = None;
        }
        (true, self.settle(dev))
    }

    /// A transient failure: `seq` goes back to its place in its device's queue.
    pub fn nack(&mut self, seq: u64) -> bool {
        let Some((dev, pos)) = self.in_flight.remove(&seq) else { return false };
        self.requeue(dev, pos);
        self.settle(dev)
    }

    /// Every in-flight record goes back to its place. Returns whether a device became
    /// deliverable.
    pub fn release_in_flight(&mut self) -> bool {
        let mut seqs: Vec<u64> = self.in_flight.keys().copied().collect();
        seqs.sort_unstable(); // devices become deliverable again in the order they were sent
        let mut any = false;
        for seq in seqs {
            any |= self.nack(seq);
        }
        any
    }

    /// The cloud refused `seq`'s device at `now`: the record goes back and the device is
    /// parked.
    pub fn park(&mut self, seq: u64, now: std::time::Instant) {
        if let Some((dev, pos)) = self.in_flight.remove(&seq) {
            self.requeue(dev, pos);
            if let Some(d) = self.devices.get_mut(dev as usize) {
                d.parked = true;
                d.parked_since.get_or_insert(now);
            }
            self.settle(dev);
        }
    }

    /// Drops every record of the devices parked since `max_age` before `now` (and not in
    /// flight), counting them as expired. Returns the seqs dropped per device.
    pub fn expire_parked(
        &mut self,
        max_age: std::time::Duration,
        now: std::time::Instant,
    ) -> Vec<(AppId, DeviceId, Vec<u64>)> {
        let mut expired = Vec::new();
        for dev in 0..self.devices.len() {
            let d = &mut self.devices[dev];
            let old = d.parked_since.is_some_and(|t| now.saturating_duration_since(t) >= max_age);
            if !(d.parked && old && d.in_flight == 0 && !d.queue.is_empty()) {
                continue;
            }
            let gone: Vec<Pos> = d.queue.drain(..).collect();
            d.expired += gone.len() as u64;
            d.parked_since = None;
            let (app, device) = (d.app.clone(), d.device.clone());
            let seqs = gone.iter().map(|p| p.seq).collect();
            for pos in gone {
                self.forget(pos);
            }
            expired.push((app, device, seqs));
        }
        expired
    }

    /// Releases a parked device. Returns whether it became deliverable.
    pub fn unpark(&mut self, app: &AppId, device: &DeviceId) -> bool {
        let Some(dev) = self.devices.iter().position(|d| d.app == *app && d.device == *device)
        else {
            return false;
        };
        self.devices[dev].parked = false;
        self.enqueue_if_ready(DevIdx::try_from(dev).unwrap_or(DevIdx::MAX))
    }

    /// Releases every parked device. Returns whether any became deliverable.
    pub fn unpark_all(&mut self) -> bool {
        let mut any = false;
        for dev in 0..self.devices.len() {
            self.devices[dev].parked = false;
            any |= self.enqueue_if_ready(DevIdx::try_from(dev).unwrap_or(DevIdx::MAX));
        }
        any
    }

    fn requeue(&mut self, dev: DevIdx, pos: Pos) {
        if let Some(d) = self.devices.get_mut(dev as usize) {
            let at = d.queue.partition_point(|p| p.seq < pos.seq);
            d.queue.insert(at, pos);
        }
    }

    fn settle(&mut self, dev: DevIdx) -> bool {
        if let Some(d) = self.devices.get_mut(dev as usize) {
            d.in_flight = d.in_flight.saturating_sub(1);
        }
        self.enqueue_if_ready(dev)
    }

    fn forget(&mut self, pos: Pos) {
        self.live_records = self.live_records.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(u64::from(pos.len));
        if let Some((_, seg)) = self.segments.range_mut(..=pos.seq).next_back() {
            seg.live = seg.live.saturating_sub(1);
        }
    }

    /// Drops every live record of the oldest segment (queued or in flight), counting each
    /// against its device, and removes the segment. Returns it and the number of records
    /// dropped, or `None` if `head` is the oldest segment.
    pub fn drop_oldest_segment(&mut self, head: u64) -> Option<(SegmentInfo, u64)> {
        let (&base, _) = self.segments.first_key_value()?;
        if base >= head {
            return None;
        }
        let end = self.segments.range(base + 1..).next().map_or(u64::MAX, |(&b, _)| b);
        let mut dropped = 0;
        for d in &mut self.devices {
            while d.queue.front().is_some_and(|p| p.seq < end) {
                if let Some(p) = d.queue.pop_front() {
                    self.live_bytes = self.live_bytes.saturating_sub(u64::from(p.len));
                }
                d.dropped += 1;
                dropped += 1;
            }
        }
        let gone: Vec<u64> = self.in_flight.keys().copied().filter(|s| *s < end).collect();
        for seq in gone {
            if let Some((dev, pos)) = self.in_flight.remove(&seq) {
                self.live_bytes = self.live_bytes.saturating_sub(u64::from(pos.len));
                if let Some(d) = self.devices.get_mut(dev as usize) {
                    d.dropped += 1;
                    d.in_flight = d.in_flight.saturating_sub(1);
                }
                dropped += 1;
                self.enqueue_if_ready(dev);
            }
        }
        self.live_records = self.live_records.saturating_sub(dropped);
        let seg = self.segments.remove(&base)?;
        Some((seg, dropped))
    }

    /// Removes the segments other than `head` whose records are all acknowledged. Returns
    /// them with, for each, the seqs still live in older segments that remain (which an ack
    /// checkpoint must cover before the segment's own ack records disappear).
    pub fn take_finished_segments(&mut self, head: u64) -> Vec<(u64, SegmentInfo)> {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(base, s)| **base < head && s.live == 0)
            .map(|(base, _)| *base)
            .collect();
        done.into_iter().filter_map(|b| self.segments.remove(&b).map(|s| (b, s))).collect()
    }

    /// The oldest segment's base, if any.
    pub fn oldest_segment(&self) -> Option<u64> {
        self.segments.first_key_value().map(|(b, _)| *b)
    }

    /// Seqs at or above `from` and below `to` that are live (queued or in flight), sorted.
    pub fn live_between(&self, from: u64, to: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .devices
            .iter()
            .flat_map(|d| d.queue.iter().map(|p| p.seq).take_while(move |s| *s < to))
            .chain(self.in_flight.keys().copied().filter(|s| *s < to))
            .filter(|s| *s >= from)
            .collect();
        out.sort_unstable();
        out
    }

    /// Live records (queued or in flight) of the segment keyed `base`.
    pub fn segment_live(&self, base: u64) -> u64 {
        self.segments.get(&base).map_or(0, |s| s.live)
    }

    /// What an ack checkpoint records: every seq from the oldest segment's base up to `end`
    /// (exclusive) that is not live, as ascending half-open ranges.
    pub fn checkpoint_ranges(&self, end: u64) -> Vec<std::ops::Range<u64>> {
        let Some(from) = self.oldest_segment() else { return Vec::new() };
        let live = self.live_between(from, end);
        let mut ranges = Vec::with_capacity(live.len() + 1);
        let mut start = from;
        for s in live {
            if s > start {
                ranges.push(start..s);
            }
            start = s + 1;
        }
        if start < end {
            ranges.push(start..end);
        }
        for p in &self.protected {
            ranges = ranges
                .into_iter()
                .flat_map(|r| {
                    let below = r.start..r.end.min(p.start);
                    let above = r.start.max(p.end)..r.end;
                    [below, above].into_iter().filter(|x| x.start < x.end)
                })
                .collect();
        }
        ranges
    }

    pub fn live_records(&self) -> u64 {
        self.live_records
    }

    /// The oldest record not yet acknowledged (the lowest seq, in flight or queued), to read
    /// its receive time.
    pub fn oldest(&self) -> Option<Picked> {
        let in_flight = self.in_flight.values().map(|(_, p)| *p).min_by_key(|p| p.seq);
        let queued =
            self.devices.iter().filter_map(|d| d.queue.front().copied()).min_by_key(|p| p.seq);
        let pos = match (in_flight, queued) {
            (Some(a), Some(b)) => {
                if a.seq < b.seq {
                    a
                } else {
                    b
                }
            }
            (a, b) => a.or(b)?,
        };
        let (_, seg) = self.segments.range(..=pos.seq).next_back()?;
        Some(Picked { pos, file: Arc::clone(&seg.file) })
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn devices(&self) -> impl Iterator<Item = DeviceCounts<'_>> {
        self.devices.iter().map(|d| DeviceCounts {
            app: &d.app,
            device: &d.device,
            queued: d.queue.len() + d.in_flight as usize,
            dropped: d.dropped,
            expired: d.expired,
            too_old: d.too_old,
            parked: d.parked,
        })
    }

    /// A device's application and name.
    pub fn device_name(&self, dev: DevIdx) -> Option<(AppId, DeviceId)> {
        self.devices.get(dev as usize).map(|d| (d.app.clone(), d.device.clone()))
    }

    /// The oldest queued record (not in flight) of every device that has one.
    pub fn fronts(&self) -> Vec<(DevIdx, Picked)> {
        let mut out = Vec::new();
        for (dev, d) in self.devices.iter().enumerate() {
            let Some(pos) = d.queue.front().copied() else { continue };
            let Some((_, seg)) = self.segments.range(..=pos.seq).next_back() else { continue };
            out.push((
                DevIdx::try_from(dev).unwrap_or(DevIdx::MAX),
                Picked { pos, file: Arc::clone(&seg.file) },
            ));
        }
        out
    }

    /// Drops `dev`'s oldest queued record if it is still `seq` (it waited longer than
    /// `[store] max_age`), counting it. Returns the device's next queued record.
    pub fn drop_too_old(&mut self, dev: DevIdx, seq: u64) -> Option<Picked> {
        let d = self.devices.get_mut(dev as usize)?;
        if d.queue.front().is_none_or(|p| p.seq != seq) {
            return None;
        }
        let pos = d.queue.pop_front()?;
        d.too_old += 1;
        let next = d.queue.front().copied();
        self.forget(pos);
        let next = next?;
        let (_, seg) = self.segments.range(..=next.seq).next_back()?;
        Some(Picked { pos: next, file: Arc::clone(&seg.file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(devices: &[&str]) -> Index {
        let mut idx = Index::default();
        let file = Arc::new(tempfile::tempfile().unwrap());
        idx.add_segment(1, PathBuf::from("seg"), file);
        for d in devices {
            idx.add_device(AppId::new("app").unwrap(), DeviceId::new(*d).unwrap());
        }
        idx
    }

    fn pos(seq: u64) -> Pos {
        Pos { seq, offset: 0, len: 10 }
    }

    fn seqs(batch: &[Picked]) -> Vec<u64> {
        batch.iter().map(|p| p.pos.seq).collect()
    }

    #[test]
    fn a_device_refused_for_max_age_loses_its_records_one_taken_meanwhile_does_not() {
        use std::time::{Duration, Instant};
        let mut idx = index_with(&["a", "b"]);
        for s in 1..=3 {
            idx.push(0, pos(s));
        }
        idx.push(1, pos(4));
        idx.push(1, pos(5));
        let t0 = Instant::now();
        let batch = seqs(&idx.take_batch(10));
        assert_eq!(batch, [1, 2, 3, 4, 5]);
        // a refused (all its records parked); b refused once, then one of its records taken
        for s in [1, 2, 3, 4] {
            idx.park(s, t0);
        }
        idx.ack(5);
        let age = Duration::from_secs(60);
        assert!(idx.expire_parked(age, t0 + Duration::from_secs(59)).is_empty(), "not yet");
        // the retries that release a device for a moment keep its first refusal's time
        assert!(idx.unpark_all());
        let batch = seqs(&idx.take_batch(10));
        assert_eq!(batch, [1, 2, 3, 4]);
        for s in batch {
            idx.park(s, t0 + Duration::from_secs(30));
        }
        let expired = idx.expire_parked(age, t0 + age);
        assert_eq!(expired.len(), 1, "only a: b had a record taken after its refusal");
        assert_eq!((expired[0].1.as_str(), expired[0].2.clone()), ("a", vec![1, 2, 3]));
        let counts: Vec<(u64, usize)> = idx.devices().map(|d| (d.expired, d.queued)).collect();
        assert_eq!(counts, [(3, 0), (0, 1)]);
        assert_eq!(idx.live_records(), 1);
        assert!(idx.expire_parked(age, t0 + age * 10).iter().all(|e| e.1.as_str() != "a"));
    }

    #[test]
    fn serves_devices_round_robin_with_one_batch_each() {
        let mut idx = index_with(&["a", "b"]);
        for s in 1..=100 {
            idx.push(0, pos(s));
        }
        idx.push(1, pos(101));
        idx.push(1, pos(102));
        let batch = seqs(&idx.take_batch(10));
        assert_eq!(batch, [1, 2, 3, 4, 5, 101, 102]);
        assert!(idx.take_batch(10).is_empty(), "both devices have a batch in flight");
        for s in [1, 2, 3, 4, 5] {
            idx.ack(s);
        }
        assert_eq!(seqs(&idx.take_batch(3)), [6, 7, 8]);
    }

    #[test]
    fn nack_returns_record_to_its_place() {
        let mut idx = index_with(&["a"]);
        for s in 1..=5 {
            idx.push(0, pos(s));
        }
        assert_eq!(seqs(&idx.take_batch(3)), [1, 2, 3]);
        idx.ack(3);
        idx.nack(2);
        assert!(idx.take_batch(3).is_empty(), "1 is still in flight");
        idx.nack(1);
        assert_eq!(seqs(&idx.take_batch(10)), [1, 2, 4, 5]);
        assert_eq!(idx.live_records(), 4);
    }

    #[test]
    fn parked_device_keeps_records_and_others_flow() {
        let mut idx = index_with(&["a", "b"]);
        idx.push(0, pos(1));
        idx.push(1, pos(2));
        assert_eq!(seqs(&idx.take_batch(10)), [1, 2]);
        idx.park(1, std::time::Instant::now());
        idx.ack(2);
        idx.push(0, pos(3));
        idx.push(1, pos(4));
        assert_eq!(seqs(&idx.take_batch(10)), [4]);
        assert!(idx.unpark(&AppId::new("app").unwrap(), &DeviceId::new("a").unwrap()));
        assert_eq!(seqs(&idx.take_batch(10)), [1, 3]);
    }

    #[test]
    fn released_in_flight_records_are_handed_out_again_in_order() {
        let mut idx = index_with(&["a", "b"]);
        for (dev, seq) in [(0, 1), (1, 2), (0, 3), (1, 4)] {
            idx.push(dev, pos(seq));
        }
        assert_eq!(seqs(&idx.take_batch(10)), [1, 3, 2, 4]);
        assert!(idx.take_batch(10).is_empty(), "all in flight");
        assert!(idx.release_in_flight());
        assert_eq!(idx.in_flight(), 0);
        assert_eq!(seqs(&idx.take_batch(10)), [1, 3, 2, 4]);
        assert!(!idx.ack(7).0);
    }

    #[test]
    fn drop_oldest_counts_queued_and_in_flight_per_device() {
        let mut idx = index_with(&["a", "b"]);
        idx.add_segment(4, PathBuf::from("seg2"), Arc::new(tempfile::tempfile().unwrap()));
        idx.push(0, pos(1));
        idx.push(1, pos(2));
        idx.push(0, pos(3));
        idx.push(1, pos(4));
        assert_eq!(seqs(&idx.take_batch(1)), [1]);
        let (_, dropped) = idx.drop_oldest_segment(4).unwrap();
        assert_eq!(dropped, 3);
        let drops: Vec<u64> = idx.devices().map(|d| d.dropped).collect();
        assert_eq!(drops, [2, 1]);
        assert_eq!(idx.live_records(), 1);
        assert!(idx.drop_oldest_segment(4).is_none(), "the head segment is never dropped");
        assert!(!idx.ack(1).0, "a dropped record's late ack is ignored");
        assert_eq!(seqs(&idx.take_batch(10)), [4]);
    }

    #[test]
    fn finished_segments_are_those_fully_acked() {
        let mut idx = index_with(&["a"]);
        idx.add_segment(3, PathBuf::from("seg2"), Arc::new(tempfile::tempfile().unwrap()));
        idx.add_segment(5, PathBuf::from("seg3"), Arc::new(tempfile::tempfile().unwrap()));
        for s in 1..=5 {
            idx.push(0, pos(s));
        }
        idx.take_batch(10);
        idx.ack(3);
        idx.ack(4);
        let done: Vec<u64> = idx.take_finished_segments(5).into_iter().map(|(b, _)| b).collect();
        assert_eq!(done, [3]);
        assert_eq!(idx.live_between(1, 3), [1, 2]);
        assert_eq!(idx.checkpoint_ranges(7), [3..5, 6..7], "5 is still live");
        assert_eq!(idx.segment_live(5), 1);
        assert_eq!(idx.segment_live(1), 2);
        idx.protect(3..4);
        assert_eq!(idx.checkpoint_ranges(7), [4..5, 6..7], "3 is protected");
    }
}
