//! The records of the latest commits, kept in memory for the uplink (`[store] read_cache`).
//!
//! The committer hands over a copy of each committed batch's record bytes (the batch buffer
//! itself is reused for the next batch); the reader decodes a record from it instead of
//! reading its segment back (a blocking read off the runtime). What is not here any more (a backlog larger than the budget, a record sent
//! again after a nack, everything after a restart) is read from its segment as before.
//! A batch leaves once every one of its records has been handed out, or when newer batches
//! need its room.

use std::{collections::VecDeque, sync::Arc};

/// One committed batch: its bytes as written and where each record starts.
struct Chunk {
    first_seq: u64,
    buf: Arc<Vec<u8>>,
    /// (start, len) in `buf` of the records `first_seq..first_seq + records.len()`.
    records: Vec<(u32, u32)>,
    /// Records not handed out yet.
    untaken: usize,
    taken: Vec<bool>,
}

/// A record's bytes: its buffer and its place in it.
pub(crate) struct Hot {
    pub buf: Arc<Vec<u8>>,
    pub start: usize,
    pub len: usize,
}

pub(crate) struct Recent {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    budget: usize,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("batches", &self.chunks.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Recent {
    pub fn new(budget: usize) -> Self {
        Self { chunks: VecDeque::new(), bytes: 0, budget }
    }

    /// Keeps a committed batch: `records` are (seq, start, len), seqs consecutive from the
    /// first. Older batches go when the budget is exceeded; a batch larger than the budget is
    /// not kept.
    pub fn insert(&mut self, buf: Vec<u8>, records: impl Iterator<Item = (u64, u32, u32)>) {
        if self.budget == 0 || buf.capacity() > self.budget {
            return;
        }
        let mut first_seq = None;
        let mut places = Vec::new();
        for (seq, start, len) in records {
            let first = *first_seq.get_or_insert(seq);
            if seq != first + places.len() as u64 {
                // not consecutive (cannot happen for one batch): keep nothing of it
                return;
            }
            places.push((start, len));
        }
        let Some(first_seq) = first_seq else { return };
        self.bytes += buf.capacity();
        let n = places.len();
        self.chunks.push_back(Chunk {
            first_seq,
            buf: Arc::new(buf),
            records: places,
            untaken: n,
            taken: vec![false; n],
        });
        while self.bytes > self.budget {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(c) = self.chunks.pop_front() {
            self.bytes -= c.buf.capacity();
        }
    }

    /// The bytes of `seq` if they are still here; marks it handed out.
    pub fn take(&mut self, seq: u64) -> Option<Hot> {
        let front = self.chunks.front()?.first_seq;
        if seq < front {
            return None;
        }
        // chunks hold increasing, non-overlapping seq ranges
        let i = self.chunks.partition_point(|c| c.first_seq <= seq).checked_sub(1)?;
        let chunk = &mut self.chunks[i];
        let k = usize::try_from(seq - chunk.first_seq).ok()?;
        let &(start, len) = chunk.records.get(k)?;
        let hot = Hot { buf: Arc::clone(&chunk.buf), start: start as usize, len: len as usize };
        if !chunk.taken[k] {
            chunk.taken[k] = true;
            chunk.untaken -= 1;
        }
        // batches every record of which was handed out are done with, oldest first (a nacked
        // record is read back from its segment)
        while self.chunks.front().is_some_and(|c| c.untaken == 0) {
            self.pop_front();
        }
        Some(hot)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, n: u64, rec: u32) -> (Vec<u8>, Vec<(u64, u32, u32)>) {
        let buf = vec![7u8; (n as u32 * rec) as usize];
        let places = (0..n).map(|i| (first + i, i as u32 * rec, rec)).collect();
        (buf, places)
    }

    #[test]
    fn records_are_found_until_taken_or_pushed_out() {
        let mut r = Recent::new(1000);
        let (b, p) = batch(1, 4, 100);
        r.insert(b, p.into_iter());
        let (b, p) = batch(5, 4, 100);
        r.insert(b, p.into_iter());
        let h = r.take(6).unwrap();
        assert_eq!((h.start, h.len), (100, 100));
        assert!(r.take(9).is_none() && r.take(0).is_none());
        for s in 1..=4 {
            assert!(r.take(s).is_some());
        }
        assert_eq!(r.len(), 1, "the first batch went once all of it was handed out");
        // a third batch exceeds the budget: the oldest goes
        let (b, p) = batch(9, 4, 100);
        r.insert(b, p.into_iter());
        let (b, p) = batch(13, 4, 100);
        r.insert(b, p.into_iter());
        assert!(r.take(5).is_none(), "pushed out by newer batches");
        assert!(r.take(16).is_some());
    }

    #[test]
    fn a_batch_larger_than_the_budget_or_a_zero_budget_keeps_nothing() {
        let mut r = Recent::new(100);
        let (b, p) = batch(1, 4, 100);
        r.insert(b, p.into_iter());
        assert!(r.take(1).is_none());
        let mut r = Recent::new(0);
        let (b, p) = batch(1, 1, 10);
        r.insert(b, p.into_iter());
        assert!(r.take(1).is_none());
    }
}
