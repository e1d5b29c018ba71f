//! [`SeqList`]: the read index's ordered lists of jobs by submission `seq` (the jobs of a
//! queue, of a state label, of a tag, a queue's waiting and running jobs).
//!
//! A `BTreeMap<u64, JobId>` did this job, but nearly every insert is of a new job, whose
//! `seq` is above every other: the map still descended from its root comparing the key
//! with every key of each node on the way (about 600 instructions an insert in lists of a
//! few hundred thousand jobs, three or four lists a submit). Here the entries are kept in
//! sorted runs ("chunks") of at most [`CHUNK_MAX`]: an entry above all others is pushed
//! onto the last run; any other insert or a removal finds its run by a binary search over
//! the runs' first `seq`s (one contiguous array) and then within the run, and shifts at
//! most half of one run's entries: a run is a ring buffer (`VecDeque`), so the removal a
//! dispatch makes, of a queue's oldest job, shifts none (as a `Vec` it moved the rest of
//! the run, up to 8 KB, on every pop of a long queue). Runs split when they outgrow
//! [`CHUNK_MAX`] and merge with a neighbour when they shrink below a quarter of it, so a
//! list of `n` entries has O(n / [`CHUNK_MAX`]) runs whatever the order of inserts and
//! removals.
//!
//! Same behaviour as the map it replaces (a property test drives both with the same
//! operations): `insert` replaces the job of a `seq` already present, iteration is in
//! `seq` order both ways, and `range` takes any bounds.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use super::JobId;

/// Most entries in one run; a run that grows past it splits in two.
pub const CHUNK_MAX: usize = 512;

/// Jobs by `seq`, in order (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct SeqList {
    /// Sorted runs, none empty, each run's entries below the next run's.
    chunks: Vec<Run>,
    /// `firsts[i] == chunks[i][0].0`: the runs are found without touching them.
    firsts: Vec<u64>,
    /// Entries in all runs.
    len: usize,
}

/// One sorted run of entries.
type Run = VecDeque<(u64, JobId)>;

/// A place in a [`SeqList`]: run `.0`, entry `.1`; `(runs, 0)` is the end.
type Place = (usize, usize);

/// Lists are equal when they hold the same entries, however they are cut into runs.
impl PartialEq for SeqList {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for SeqList {}

impl SeqList {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The run that holds `seq`, or would: the last whose first `seq` is at most `seq`
    /// (the first run for a `seq` below every entry). Only for a non-empty list.
    fn run_of(&self, seq: u64) -> usize {
        self.firsts.partition_point(|&f| f <= seq).saturating_sub(1)
    }

    /// Files `id` under `seq`; returns the job `seq` held before, if any (its place is kept).
    pub fn insert(&mut self, seq: u64, id: JobId) -> Option<JobId> {
        let Some(last) = self.chunks.last_mut() else {
            self.chunks.push(Run::from([(seq, id)]));
            self.firsts.push(seq);
            self.len = 1;
            return None;
        };
        // A new job: above every entry (the last run's last).
        if last.back().is_some_and(|&(top, _)| top < seq) {
            if last.len() < CHUNK_MAX {
                last.push_back((seq, id));
            } else {
                self.chunks.push(Run::from([(seq, id)]));
                self.firsts.push(seq);
            }
            self.len += 1;
            return None;
        }
        let i = self.run_of(seq);
        let run = &mut self.chunks[i];
        match run.binary_search_by_key(&seq, |&(s, _)| s) {
            Ok(p) => return Some(std::mem::replace(&mut run[p].1, id)),
            Err(p) => {
                run.insert(p, (seq, id));
                if p == 0 {
                    self.firsts[i] = seq;
                }
            }
        }
        self.len += 1;
        if run.len() > CHUNK_MAX {
            let upper = run.split_off(run.len() / 2);
            self.firsts.insert(i + 1, upper[0].0);
            self.chunks.insert(i + 1, upper);
        }
        None
    }

    /// Removes the entry of `seq`; returns its job, if it was there.
    pub fn remove(&mut self, seq: &u64) -> Option<JobId> {
        if self.len == 0 {
            return None;
        }
        let i = self.run_of(*seq);
        let run = &mut self.chunks[i];
        let p = run.binary_search_by_key(seq, |&(s, _)| s).ok()?;
        let (_, id) = run.remove(p)?;
        self.len -= 1;
        if run.is_empty() {
            self.chunks.remove(i);
            self.firsts.remove(i);
            return Some(id);
        }
        if p == 0 {
            self.firsts[i] = run[0].0;
        }
        if run.len() < CHUNK_MAX / 4 && self.merge_around(i) {
            return Some(id);
        }
        // Emptied from one end (a queue's oldest jobs leaving): give back the room, by
        // halves, so a run shrinks a few times and not on every removal.
        let run = &mut self.chunks[i];
        if run.capacity() > 4 * run.len() {
            run.shrink_to(2 * run.len());
        }
        Some(id)
    }

    /// Merges the small run `i` into a neighbour when both fit in one run; whether it did.
    fn merge_around(&mut self, i: usize) -> bool {
        let fits = |a: &Run, b: &Run| a.len() + b.len() <= CHUNK_MAX;
        if i + 1 < self.chunks.len() && fits(&self.chunks[i], &self.chunks[i + 1]) {
            let next = self.chunks.remove(i + 1);
            self.firsts.remove(i + 1);
            self.chunks[i].extend(next);
        } else if i > 0 && fits(&self.chunks[i - 1], &self.chunks[i]) {
            let run = self.chunks.remove(i);
            self.firsts.remove(i);
            self.chunks[i - 1].extend(run);
        } else {
            return false;
        }
        true
    }

    /// Whether `seq` has an entry.
    pub fn contains_key(&self, seq: &u64) -> bool {
        !self.is_empty()
            && self.chunks[self.run_of(*seq)]
                .binary_search_by_key(seq, |&(s, _)| s)
                .is_ok()
    }

    /// Every entry, by `seq` (`.rev()`: newest first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &JobId)> + '_ {
        self.chunks.iter().flatten().map(|(seq, id)| (seq, id))
    }

    /// Every `seq`, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> + '_ {
        self.iter().map(|(seq, _)| seq)
    }

    /// Every job, by `seq`.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &JobId> + '_ {
        self.iter().map(|(_, id)| id)
    }

    /// The entries whose `seq` is within `range`, by `seq` (`.rev()`: newest first).
    pub fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (&u64, &JobId)> + '_ {
        let start = match range.start_bound() {
            Bound::Unbounded => (0, 0),
            Bound::Included(&s) => self.first_at_least(s),
            Bound::Excluded(&s) => self.first_above(s),
        };
        let end = match range.end_bound() {
            Bound::Unbounded => (self.chunks.len(), 0),
            Bound::Included(&s) => self.first_above(s),
            Bound::Excluded(&s) => self.first_at_least(s),
        };
        // Runs start.0 up to the one end points into (excluded when end is its start).
        let runs = if start < end {
            start.0..end.0 + usize::from(end.1 > 0)
        } else {
            0..0
        };
        runs.flat_map(move |r| {
            let run = &self.chunks[r];
            let from = if r == start.0 { start.1 } else { 0 };
            let to = if r == end.0 { end.1 } else { run.len() };
            run.range(from..to)
        })
        .map(|(seq, id)| (seq, id))
    }

    /// The place of the first entry whose `seq` is at least `seq`.
    fn first_at_least(&self, seq: u64) -> Place {
        self.place(seq, |s| s < seq)
    }

    /// The place of the first entry whose `seq` is above `seq`.
    fn first_above(&self, seq: u64) -> Place {
        self.place(seq, |s| s <= seq)
    }

    /// The first place in `seq`'s run (or the next run's start) whose entry fails
    /// `before`, `before` being true of a prefix of the entries.
    fn place(&self, seq: u64, before: impl Fn(u64) -> bool) -> Place {
        if self.is_empty() {
            return (0, 0);
        }
        let i = self.run_of(seq);
        let p = self.chunks[i].partition_point(|&(s, _)| before(s));
        if p == self.chunks[i].len() {
            (i + 1, 0)
        } else {
            (i, p)
        }
    }
}

impl FromIterator<(u64, JobId)> for SeqList {
    /// Built in bulk from entries in any order; of two with the same `seq` the later stays
    /// (as inserting them in turn would leave it). Runs are filled to three quarters, so
    /// inserts among them do not split at once.
    fn from_iter<I: IntoIterator<Item = (u64, JobId)>>(entries: I) -> SeqList {
        let mut entries: Vec<(u64, JobId)> = entries.into_iter().collect();
        entries.sort_by_key(|&(seq, _)| seq);
        // Keep the last of equal seqs: dedup keeps the first, so walk from the back.
        entries.reverse();
        entries.dedup_by_key(|&mut (seq, _)| seq);
        entries.reverse();
        let len = entries.len();
        let chunks: Vec<Run> = entries
            .chunks(CHUNK_MAX * 3 / 4)
            .map(|run| run.iter().copied().collect())
            .collect();
        let firsts = chunks.iter().map(|run| run[0].0).collect();
        SeqList {
            chunks,
            firsts,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u8),
        Remove(u64),
        /// Insert above every entry (a new job).
        Push(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Seqs from a small range, so inserts collide and removals hit.
        prop_oneof![
            (0u64..3000, any::<u8>()).prop_map(|(s, v)| Op::Insert(s, v)),
            (0u64..3000).prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Push),
        ]
    }

    fn id(v: u8) -> JobId {
        JobId::parse(&format!("{v:032x}")).expect("32 hex digits")
    }

    fn entries<'a>(it: impl Iterator<Item = (&'a u64, &'a JobId)>) -> Vec<(u64, JobId)> {
        it.map(|(s, id)| (*s, *id)).collect()
    }

    fn check_invariants(list: &SeqList) {
        assert_eq!(list.chunks.len(), list.firsts.len());
        let mut previous = None;
        for (run, first) in list.chunks.iter().zip(&list.firsts) {
            assert!(!run.is_empty() && run.len() <= CHUNK_MAX);
            assert_eq!(run[0].0, *first);
            for &(seq, _) in run {
                assert!(previous.is_none_or(|p| p < seq));
                previous = Some(seq);
            }
        }
        assert_eq!(list.len, list.chunks.iter().map(Run::len).sum::<usize>());
    }

    proptest! {
        #[test]
        fn behaves_as_a_btree_map(
            ops in proptest::collection::vec(op(), 0..4000),
            probes in proptest::collection::vec((0u64..3200, 0u64..3200), 8),
        ) {
            let mut list = SeqList::default();
            let mut map: BTreeMap<u64, JobId> = BTreeMap::new();
            let mut next = 3000;
            for op in ops {
                match op {
                    Op::Insert(seq, v) => {
                        prop_assert_eq!(list.insert(seq, id(v)), map.insert(seq, id(v)));
                    }
                    Op::Remove(seq) => prop_assert_eq!(list.remove(&seq), map.remove(&seq)),
                    Op::Push(v) => {
                        next += 1;
                        prop_assert_eq!(list.insert(next, id(v)), map.insert(next, id(v)));
                    }
                }
            }
            check_invariants(&list);
            prop_assert_eq!(list.len(), map.len());
            prop_assert_eq!(entries(list.iter()), entries(map.iter()));
            prop_assert_eq!(entries(list.iter().rev()), entries(map.iter().rev()));
            for (a, b) in probes {
                let (lo, hi) = (a.min(b), a.max(b));
                prop_assert_eq!(list.contains_key(&a), map.contains_key(&a));
                prop_assert_eq!(entries(list.range(..a)), entries(map.range(..a)));
                prop_assert_eq!(entries(list.range(..a).rev()), entries(map.range(..a).rev()));
                prop_assert_eq!(entries(list.range(lo..hi)), entries(map.range(lo..hi)));
                prop_assert_eq!(entries(list.range(lo..=hi)), entries(map.range(lo..=hi)));
                prop_assert_eq!(entries(list.range(a..)), entries(map.range(a..)));
                let excluded = (Bound::Excluded(lo), Bound::Unbounded);
                prop_assert_eq!(entries(list.range(excluded)), entries(map.range(excluded)));
            }
            let bulk: SeqList = map.iter().rev().map(|(s, id)| (*s, *id)).collect();
            check_invariants(&bulk);
            prop_assert_eq!(entries(bulk.iter()), entries(map.iter()));
        }
    }

    #[test]
    fn bulk_keeps_the_later_of_two_entries_for_one_seq() {
        let list: SeqList = [(5, id(1)), (3, id(2)), (5, id(3))].into_iter().collect();
        assert_eq!(entries(list.iter()), vec![(3, id(2)), (5, id(3))]);
    }

    #[test]
    fn a_run_emptied_from_the_front_shrinks_by_halves() {
        let mut list = SeqList::default();
        for seq in 0..2 * CHUNK_MAX as u64 {
            list.insert(seq, id(0));
        }
        // A queue's oldest jobs leave one by one; its first run cannot merge (the next
        // is full), and must not reallocate on every removal as it empties.
        let mut shrinks = 0;
        for seq in 0..CHUNK_MAX as u64 - 1 {
            let before = list.chunks[0].capacity();
            list.remove(&seq);
            shrinks += usize::from(list.chunks[0].capacity() != before);
        }
        check_invariants(&list);
        assert!(shrinks <= 10, "{shrinks} reallocations");
        assert!(list.chunks[0].capacity() <= 4, "the room is given back");
    }

    #[test]
    fn runs_stay_few_however_the_entries_leave() {
        let mut list = SeqList::default();
        for seq in 0..20 * CHUNK_MAX as u64 {
            list.insert(seq, id(0));
        }
        // Seven of every eight entries leave: 1,280 stay, and the runs that shrink
        // merge instead of lingering nearly empty (20 runs of 64 without merging).
        for seq in (0..20 * CHUNK_MAX as u64).filter(|s| s % 8 != 0) {
            list.remove(&seq);
        }
        check_invariants(&list);
        assert_eq!(list.len(), 20 * CHUNK_MAX / 8);
        assert!(list.chunks.len() <= 8, "{} runs", list.chunks.len());
        for seq in (0..20 * CHUNK_MAX as u64).step_by(8) {
            list.remove(&seq);
        }
        assert!(list.is_empty() && list.chunks.is_empty());
    }
}
