//! The waiting order of one queue: who is next, and how many are ahead of a job.
//!
//! A queue is a set of priority lanes (highest priority first); inside a lane jobs are in
//! submission order. Each lane is an append-only slot array with a Fenwick tree over
//! "still waiting" flags, so position queries cost O(log n) at any depth and removals
//! (pop, cancel) are O(1) marks; dead slots are compacted away in amortised O(1).
//!
//! This index is *derived* state: it is rebuilt from the registry's waiting jobs at
//! start-up and never written to the log. It knows nothing about job bodies.
//!
//! Invariants:
//! - a job id is in at most one slot of at most one lane;
//! - within a lane, slots are in increasing `seq` order;
//! - `Lane::live` equals the number of live slots and the Fenwick tree's total.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::FastMap;
use std::sync::Arc;

use super::ids::{JobId, Name};

/// What a queue needs to know about a waiting job to schedule it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The job.
    pub id: JobId,
    /// Higher is dispatched first.
    pub priority: i64,
    /// Submission order (global, increasing); lower is dispatched first within a priority.
    pub seq: u64,
    /// Agents that must not receive this job (`exclude_agents`); empty for most jobs.
    pub exclude: Arc<[Name]>,
    /// False while the job waits for its attachments: it keeps its place but is skipped.
    pub ready: bool,
}

impl Entry {
    /// The scheduling key: smaller is better (higher priority, then older).
    pub fn key(&self) -> (Reverse<i64>, u64) {
        (Reverse(self.priority), self.seq)
    }

    /// Whether `agent` may receive this job now.
    pub fn eligible_for(&self, agent: Option<&str>) -> bool {
        self.ready && agent.is_none_or(|a| !self.exclude.iter().any(|x| &**x == a))
    }
}

/// A job picked by [`QueueIndex::take`]: reserved until released or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The job.
    pub id: JobId,
    /// Its priority, to compare with other queues' candidates.
    pub priority: i64,
    /// Its submission order, to compare with other queues' candidates.
    pub seq: u64,
}

impl Candidate {
    /// Smaller is better: the same order as [`Entry::key`].
    pub fn key(&self) -> (Reverse<i64>, u64) {
        (Reverse(self.priority), self.seq)
    }
}

/// Slot flag: still waiting (counted by position).
const LIVE: u8 = 1;
/// Slot flag: handed to a pop that has not yet claimed or released it.
const RESERVED: u8 = 2;

#[derive(Clone, Debug)]
struct Slot {
    entry: Entry,
    flags: u8,
}

/// A Fenwick (binary indexed) tree of 0/1 counts.
#[derive(Clone, Debug, Default)]
struct Fenwick {
    tree: Vec<u32>,
}

impl Fenwick {
    fn from_flags(flags: impl Iterator<Item = bool>) -> Fenwick {
        let mut tree: Vec<u32> = flags.map(u32::from).collect();
        for i in 0..tree.len() {
            let parent = i | (i + 1);
            if parent < tree.len() {
                tree[parent] += tree[i];
            }
        }
        Fenwick { tree }
    }

    fn push(&mut self, one: bool) {
        // Node i covers elements (i & (i+1)) ..= i; the earlier ones are already counted
        // by the existing nodes, so their sum is a prefix difference.
        let i = self.tree.len();
        let low = i & (i + 1);
        let value = self.prefix(i) - self.prefix(low) + u32::from(one);
        self.tree.push(value);
    }

    fn add(&mut self, mut i: usize, delta: i32) {
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i |= i + 1;
        }
    }

    /// Sum of counts at indices `< end`.
    fn prefix(&self, end: usize) -> u32 {
        let mut sum = 0;
        let mut i = end;
        while i > 0 {
            sum += self.tree[i - 1];
            i &= i - 1;
        }
        sum
    }
}

/// The jobs of one priority in one queue, in submission order.
#[derive(Clone, Debug, Default)]
struct Lane {
    /// Append-only until compaction; index = slot number.
    slots: Vec<Slot>,
    /// Counts of live slots, for O(log n) rank.
    live_tree: Fenwick,
    /// First slot that may be live: everything before it is dead.
    head: usize,
    /// Number of live slots.
    live: usize,
}

impl Lane {
    /// Appends a live slot (the caller keeps `seq` order); returns its slot number.
    fn push(&mut self, entry: Entry) -> usize {
        self.slots.push(Slot { entry, flags: LIVE });
        self.live_tree.push(true);
        self.live += 1;
        self.slots.len() - 1
    }
}

/// Compact a lane only once it has at least this many dead slots, so small queues never
/// pay for it.
const COMPACT_MIN_DEAD: usize = 1024;

/// The waiting jobs of one queue.
#[derive(Clone, Debug, Default)]
pub struct QueueIndex {
    /// Lanes by descending priority.
    lanes: BTreeMap<Reverse<i64>, Lane>,
    /// Where each waiting job's slot is: (priority, slot number).
    slots: FastMap<JobId, (i64, usize)>,
}

impl QueueIndex {
    /// Builds an index from waiting jobs in any order (one entry per job; of two for the
    /// same job, the later `seq` stays, as [`QueueIndex::insert`] of each would leave it).
    /// Built in bulk: each lane's slots and tree at once, not an insert per job (at
    /// start-up every waiting job goes through here).
    pub fn from_entries(mut entries: Vec<Entry>) -> QueueIndex {
        entries.sort_by_key(|e| e.key());
        let mut slots: FastMap<JobId, (i64, usize)> =
            FastMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut lanes: BTreeMap<Reverse<i64>, Lane> = BTreeMap::new();
        let total = entries.len();
        let mut entries = entries.into_iter().peekable();
        while let Some(first) = entries.next() {
            let priority = first.priority;
            let mut lane_slots = vec![Slot {
                entry: first,
                flags: LIVE,
            }];
            while let Some(entry) = entries.next_if(|e| e.priority == priority) {
                lane_slots.push(Slot { entry, flags: LIVE });
            }
            for (i, slot) in lane_slots.iter().enumerate() {
                slots.insert(slot.entry.id, (priority, i));
            }
            let live = lane_slots.len();
            let lane = Lane {
                live_tree: Fenwick::from_flags(lane_slots.iter().map(|_| true)),
                slots: lane_slots,
                head: 0,
                live,
            };
            lanes.insert(Reverse(priority), lane);
        }
        let index = QueueIndex { lanes, slots };
        if index.slots.len() == total {
            return index;
        }
        // A job twice: one insert each, in `seq` order, replaces the earlier slot.
        let mut entries: Vec<Entry> = (index.lanes.into_values())
            .flat_map(|lane| lane.slots.into_iter().map(|slot| slot.entry))
            .collect();
        entries.sort_by_key(|e| e.seq);
        let mut index = QueueIndex::default();
        for entry in entries {
            index.insert(entry);
        }
        index
    }

    /// Number of waiting jobs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a waiting job (a resubmitted one replaces its old slot).
    pub fn insert(&mut self, entry: Entry) {
        use std::collections::hash_map::Entry as Place;
        // A new job (nearly every insert) in submission order: one lookup of its id, not
        // a failed removal and then an insert.
        if let Place::Vacant(place) = self.slots.entry(entry.id) {
            let lane = self.lanes.entry(Reverse(entry.priority)).or_default();
            if lane.slots.last().is_none_or(|s| s.entry.seq <= entry.seq) {
                place.insert((entry.priority, lane.push(entry)));
                return;
            }
        }
        self.remove(entry.id);
        let lane = self.lanes.entry(Reverse(entry.priority)).or_default();
        if lane.slots.last().is_some_and(|s| s.entry.seq > entry.seq) {
            // Out of order (only possible when rebuilding by hand): keep the invariant.
            let mut all: Vec<Entry> = self.drain_lane(entry.priority);
            all.push(entry);
            all.sort_by_key(|e| e.seq);
            for e in all {
                self.insert(e);
            }
            return;
        }
        let (id, priority) = (entry.id, entry.priority);
        let slot = lane.push(entry);
        self.slots.insert(id, (priority, slot));
    }

    fn drain_lane(&mut self, priority: i64) -> Vec<Entry> {
        let Some(lane) = self.lanes.remove(&Reverse(priority)) else {
            return Vec::new();
        };
        let live: Vec<Entry> = lane
            .slots
            .into_iter()
            .filter(|s| s.flags & LIVE != 0)
            .map(|s| s.entry)
            .collect();
        for e in &live {
            self.slots.remove(&e.id);
        }
        live
    }

    /// Removes a job (dispatched, cancelled, expired). Unknown ids are ignored.
    pub fn remove(&mut self, id: JobId) -> bool {
        let Some((priority, slot)) = self.slots.remove(&id) else {
            return false;
        };
        let lane = self
            .lanes
            .get_mut(&Reverse(priority))
            .expect("slot map names a lane");
        lane.slots[slot].flags = 0;
        lane.live_tree.add(slot, -1);
        lane.live -= 1;
        if lane.live == 0 {
            self.lanes.remove(&Reverse(priority));
        } else {
            self.maybe_compact(priority);
        }
        true
    }

    /// Marks a waiting job ready (its attachments arrived).
    pub fn set_ready(&mut self, id: JobId) {
        if let Some(slot) = self.slot_mut(id) {
            slot.entry.ready = true;
        }
    }

    /// Reserves and returns the best job `agent` may receive, skipping reserved ones.
    pub fn take(&mut self, agent: Option<&str>) -> Option<Candidate> {
        for lane in self.lanes.values_mut() {
            while lane.head < lane.slots.len() && lane.slots[lane.head].flags & LIVE == 0 {
                lane.head += 1;
            }
            let found = lane.slots[lane.head..]
                .iter_mut()
                .find(|s| s.flags == LIVE && s.entry.eligible_for(agent));
            if let Some(slot) = found {
                slot.flags |= RESERVED;
                return Some(Candidate {
                    id: slot.entry.id,
                    priority: slot.entry.priority,
                    seq: slot.entry.seq,
                });
            }
        }
        None
    }

    /// Returns a reserved job to the pool, in its original place.
    pub fn release(&mut self, id: JobId) {
        if let Some(slot) = self.slot_mut(id) {
            slot.flags &= !RESERVED;
        }
    }

    /// How many waiting jobs of this queue are ahead of `id` (0 = next), or `None` when
    /// it is not waiting here.
    pub fn position(&self, id: JobId) -> Option<usize> {
        let &(priority, slot) = self.slots.get(&id)?;
        let ahead: usize = self
            .lanes
            .range(..Reverse(priority))
            .map(|(_, lane)| lane.live)
            .sum();
        let lane = &self.lanes[&Reverse(priority)];
        Some(ahead + lane.live_tree.prefix(slot) as usize)
    }

    /// Every waiting job in dispatch order (for tests and listings).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lanes.values().flat_map(|lane| {
            lane.slots[lane.head..]
                .iter()
                .filter(|s| s.flags & LIVE != 0)
                .map(|s| &s.entry)
        })
    }

    fn slot_mut(&mut self, id: JobId) -> Option<&mut Slot> {
        let &(priority, slot) = self.slots.get(&id)?;
        self.lanes
            .get_mut(&Reverse(priority))
            .map(|lane| &mut lane.slots[slot])
    }

    fn maybe_compact(&mut self, priority: i64) {
        let lane = self.lanes.get_mut(&Reverse(priority)).expect("lane exists");
        let dead = lane.slots.len() - lane.live;
        if dead < COMPACT_MIN_DEAD || dead < lane.live {
            return;
        }
        lane.slots.retain(|s| s.flags & LIVE != 0);
        lane.live_tree = Fenwick::from_flags(lane.slots.iter().map(|_| true));
        lane.head = 0;
        for (i, slot) in lane.slots.iter().enumerate() {
            self.slots.insert(slot.entry.id, (priority, i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u128, priority: i64, seq: u64) -> Entry {
        Entry {
            id: JobId::parse(&format!("{n:032x}")).unwrap(),
            priority,
            seq,
            exclude: Arc::new([]),
            ready: true,
        }
    }

    /// The bulk build leaves the index an insert per entry (in `seq` order) leaves: the
    /// same order, positions and lanes, also when a job comes twice.
    #[test]
    fn from_entries_matches_inserting_each_in_seq_order() {
        let mut x: u64 = 7;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for round in 0..20 {
            let n = 1 + next(300) as u128;
            let mut entries: Vec<Entry> = (0..n)
                .map(|i| entry(i, next(4) as i64 - 1, next(1_000_000)))
                .collect();
            if round % 2 == 1 {
                // The same job again under another seq and priority.
                let again = entries[next(n as u64) as usize].id;
                let mut twice = entry(0, next(4) as i64 - 1, next(1_000_000));
                twice.id = again;
                entries.push(twice);
            }
            let mut by_one = QueueIndex::default();
            let mut in_seq = entries.clone();
            in_seq.sort_by_key(|e| e.seq);
            for e in in_seq {
                by_one.insert(e);
            }
            let bulk = QueueIndex::from_entries(entries.clone());
            let order = |q: &QueueIndex| q.entries().cloned().collect::<Vec<_>>();
            assert_eq!(order(&bulk), order(&by_one), "round {round}");
            assert_eq!(bulk.len(), by_one.len());
            for e in &entries {
                assert_eq!(bulk.position(e.id), by_one.position(e.id));
            }
        }
    }

    #[test]
    fn fenwick_push_matches_rebuild() {
        let flags: Vec<bool> = (0..300).map(|i| i % 3 != 0).collect();
        let mut pushed = Fenwick::default();
        for &f in &flags {
            pushed.push(f);
        }
        let built = Fenwick::from_flags(flags.iter().copied());
        for end in 0..=flags.len() {
            let expected = flags[..end].iter().filter(|&&f| f).count() as u32;
            assert_eq!(pushed.prefix(end), expected);
            assert_eq!(built.prefix(end), expected);
        }
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = QueueIndex::default();
        q.insert(entry(1, 0, 1));
        q.insert(entry(2, 5, 2));
        q.insert(entry(3, 0, 3));
        let order: Vec<u64> = std::iter::from_fn(|| {
            let c = q.take(None)?;
            q.remove(c.id);
            Some(c.seq)
        })
        .collect();
        assert_eq!(order, [2, 1, 3]);
    }

    #[test]
    fn positions_stay_exact_through_many_removals() {
        let mut q = QueueIndex::default();
        for i in 0..5000u64 {
            q.insert(entry(i as u128 + 1, (i % 3) as i64, i));
        }
        for i in (0..5000u64).filter(|i| i % 4 != 1) {
            q.remove(JobId::parse(&format!("{:032x}", i + 1)).unwrap());
        }
        let order: Vec<JobId> = q.entries().map(|e| e.id).collect();
        for (pos, id) in order.iter().enumerate() {
            assert_eq!(q.position(*id), Some(pos));
        }
    }

    #[test]
    fn reserved_jobs_are_skipped_until_released() {
        let mut q = QueueIndex::default();
        q.insert(entry(1, 0, 1));
        q.insert(entry(2, 0, 2));
        let first = q.take(None).unwrap();
        assert_eq!(q.take(None).unwrap().seq, 2);
        q.release(first.id);
        q.release(JobId::parse(&format!("{:032x}", 2)).unwrap());
        assert_eq!(q.take(None).unwrap().seq, 1);
        assert_eq!(q.position(first.id), Some(0));
    }
}
