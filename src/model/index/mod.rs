//! Read indexes over the registry's jobs: by queue, by tag and by state label, each in
//! submission order, so listings and searches visit only the jobs they may return; and
//! by agent, the jobs most recently dispatched to each (the dashboard's agent page).
//!
//! Maintained by the registry's fold ([`super::registry::Registry::apply`]) as it applies
//! each event, never logged, and rebuilt from the jobs when a snapshot is loaded. Every
//! list is keyed by the job's submission sequence number (`seq`, unique and growing), so
//! "oldest first" is forward order and "newest first" is reverse order, and a reader
//! can resume a scan after any `seq` (the HTTP layer scans in bounded steps, releasing
//! the registry between them, so a long search never holds up a write).
//!
//! Invariant: a job is in exactly one queue list and one state list, and in the list of
//! each distinct tag of its document, under its current `seq`.

use std::collections::{BinaryHeap, VecDeque};

use serde::Deserialize;

use super::distinct::Distinct;
use super::ids::{JobId, Name};
use super::job::is_terminal_label;
use super::shares::Tally;
use super::FastMap;

/// Jobs of one key, by submission sequence number.
pub use super::seqlist::SeqList;

/// How many of the jobs most recently dispatched to an agent the index keeps for it.
pub const AGENT_RECENT: usize = 50;

/// What one job costs against `--max-jobs-bytes` besides its document: about what the
/// registry and these indexes hold for it (its record, its entries in the lists by queue,
/// state and tag; ~0.9 KB measured). Without it a million `{"job_queue":"q"}`
/// submissions would be nearly free.
pub const JOB_OVERHEAD: u64 = 1024;

/// What one queue with jobs costs against `--max-jobs-bytes`: its actor, its lists and
/// metrics (~10 KB measured). Without it jobs each sent to a queue of its own would take
/// ten times what they count.
pub const QUEUE_OVERHEAD: u64 = 16 << 10;

/// What a job with document `body` counts against `--max-jobs-bytes`.
pub fn job_weight(body: &[u8]) -> u64 {
    body.len() as u64 + JOB_OVERHEAD
}

/// The indexes (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobIndex {
    /// Queue name → its jobs (any state).
    by_queue: FastMap<Name, SeqList>,
    /// Tag → jobs whose document lists it in `tags`.
    by_tag: FastMap<Name, SeqList>,
    /// `job_state` label → jobs in that state.
    by_state: FastMap<Name, SeqList>,
    /// Queue name → its unfinished jobs, waiting and active apart (queue depth, oldest
    /// wait and running counts for metrics and the dashboard without scanning a
    /// queue's finished jobs). Holds only unfinished jobs, so it stays small.
    live: FastMap<Name, Live>,
    /// Agent name → the jobs last dispatched to it, newest dispatch first, at most
    /// [`AGENT_RECENT`] (a job dispatched to it again moves to the front). A job leaves
    /// the list when it stops naming the agent (resubmitted, its agent lost) or is
    /// removed, so the list is what a rebuild from the jobs gives; readers still skip ids
    /// that have no job.
    by_agent: FastMap<Name, VecDeque<JobId>>,
    /// Agent name → the jobs the server found it lost on (`Job::lost`, and the loss that
    /// requeued the job before it), newest loss first, at most [`AGENT_RECENT`]: the
    /// dashboard's agent page shows the job that made the agent offline, which no longer
    /// names it. A job leaves the list when its losses are forgotten (resubmitted) or it
    /// is removed, so the list is what a rebuild from the jobs gives.
    lost_by_agent: FastMap<Name, VecDeque<JobId>>,
    /// The [`job_weight`]s of the jobs filed, in all (what `--max-jobs-bytes` bounds) and
    /// by owner (what `--max-jobs-share-percent` bounds). Derived like the lists (rebuilt
    /// at start-up, kept by insert and remove).
    weights: Tally,
    /// Per owner, the queues its jobs are in and how many each holds: each is charged
    /// [`QUEUE_OVERHEAD`] against the owner's share, as against `--max-jobs-bytes`, so
    /// the owners' charges together cover what the queues cost the server (each queue
    /// with jobs has an owner there), and jobs each sent to a queue of their own cannot
    /// fill the server's room from within one share. Derived like `weights`.
    owner_queues: OwnerQueues,
}

/// Owner → queue → how many of the owner's jobs the queue holds; owners and queues with
/// none have no entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OwnerQueues(FastMap<Option<Name>, FastMap<Name, u32>>);

impl OwnerQueues {
    fn add(&mut self, owner: Option<&Name>, queue: &Name, n: u32) {
        let queues = self.0.entry(owner.cloned()).or_default();
        *queues.entry(queue.clone()).or_default() += n;
    }

    fn remove(&mut self, owner: Option<&Name>, queue: &str) {
        let key = owner.cloned();
        if let Some(queues) = self.0.get_mut(&key) {
            if let Some(n) = queues.get_mut(queue) {
                *n -= 1;
                if *n == 0 {
                    queues.remove(queue);
                }
            }
            if queues.is_empty() {
                self.0.remove(&key);
            }
        }
    }

    fn merge(&mut self, other: OwnerQueues) {
        for (owner, queues) in other.0 {
            for (queue, n) in queues {
                self.add(owner.as_ref(), &queue, n);
            }
        }
    }

    /// How many queues `owner`'s jobs are in.
    fn of(&self, owner: Option<&Name>) -> usize {
        self.0.get(&owner.cloned()).map_or(0, FastMap::len)
    }

    fn has(&self, owner: Option<&Name>, queue: &str) -> bool {
        self.0
            .get(&owner.cloned())
            .is_some_and(|queues| queues.contains_key(queue))
    }
}

/// The unfinished jobs of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Waiting (or resubmitted) jobs, oldest submission first.
    pub waiting: SeqList,
    /// Dispatched, not finished jobs, oldest submission first.
    pub active: SeqList,
}

/// Where a state label files a job in [`Live`]: `Some(true)` waiting, `Some(false)`
/// active, `None` finished.
fn live_kind(label: &str) -> Option<bool> {
    if label == super::job::label::WAITING || label == super::job::label::RESUBMITTED {
        Some(true)
    } else if is_terminal_label(label) {
        None
    } else {
        Some(false)
    }
}

/// The `tags` of a job document (strings only, duplicates once). Only documents that
/// mention `"tags"` are parsed, and then only that member.
pub fn tags_of(body: &[u8]) -> Vec<Name> {
    #[derive(Deserialize)]
    struct Tagged {
        #[serde(default)]
        tags: Option<serde_json::Value>,
    }
    static TAGS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"tags\""));
    if TAGS.find(body).is_none() {
        return Vec::new();
    }
    let Ok(Tagged {
        tags: Some(serde_json::Value::Array(tags)),
    }) = serde_json::from_slice::<Tagged>(body)
    else {
        return Vec::new();
    };
    // A job may carry 1,024 tags: comparing each with every one kept before cost half a
    // million comparisons per job.
    let mut out: Distinct<Name> = Distinct::with_capacity(tags.len());
    for tag in &tags {
        if let serde_json::Value::String(tag) = tag {
            out.insert_with(tag.as_str(), || Name::from(tag.as_str()));
        }
    }
    out.into_vec()
}

/// Files `id` under `key`; `name` makes the key's shared name, only when it is new.
fn add(
    map: &mut FastMap<Name, SeqList>,
    key: &str,
    name: impl FnOnce() -> Name,
    seq: u64,
    id: JobId,
) {
    match map.get_mut(key) {
        Some(list) => {
            list.insert(seq, id);
        }
        None => {
            map.insert(name(), std::iter::once((seq, id)).collect());
        }
    }
}

fn drop_entry(map: &mut FastMap<Name, SeqList>, key: &str, seq: u64) {
    if let Some(list) = map.get_mut(key) {
        list.remove(&seq);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

/// Lists being gathered for [`JobIndex::from_parts`]: key → `(seq, id)` in any order.
type Gathered = FastMap<Name, Vec<(u64, JobId)>>;

/// Appends `(seq, id)` to `key`'s list; `name` makes the key's shared name, only when new.
fn gather(map: &mut Gathered, key: &str, name: impl FnOnce() -> Name, seq: u64, id: JobId) {
    match map.get_mut(key) {
        Some(list) => list.push((seq, id)),
        None => {
            map.insert(name(), vec![(seq, id)]);
        }
    }
}

/// Joins gathered lists of the same kind into one map, each key's lists appended.
fn join(parts: Vec<Gathered>) -> Gathered {
    let mut joined = Gathered::default();
    for part in parts {
        if joined.is_empty() {
            joined = part;
            continue;
        }
        for (key, mut list) in part {
            match joined.get_mut(&key) {
                Some(into) => into.append(&mut list),
                None => {
                    joined.insert(key, list);
                }
            }
        }
    }
    joined
}

/// Key → its jobs in `seq` order.
type Lists = FastMap<Name, SeqList>;
/// Agent → the jobs last dispatched to it, newest first.
type Agents = FastMap<Name, VecDeque<JobId>>;

/// Turns gathered lists into sequence lists, each built in bulk.
fn bulk(map: Gathered) -> FastMap<Name, SeqList> {
    (map.into_iter())
        .map(|(key, list)| (key, list.into_iter().collect()))
        .collect()
}

/// `(dispatched at, seq, agent, id)` of jobs handed to a named agent, in any order.
type Dispatched = Vec<(u64, u64, Name, JobId)>;

/// A job's ties to agents, as [`PartIndex::add`] files them.
#[derive(Clone, Copy, Default)]
pub struct AgentLinks<'a> {
    /// When (Unix seconds) and to whom it was last dispatched, if to a named agent.
    pub dispatched: Option<(u64, &'a Name)>,
    /// When and on whom each of its losses was found (`Job::lost` and the loss before).
    pub lost: &'a [(u64, &'a Name)],
}

/// The index lists of some of the jobs, gathered in any order (one per thread that walks
/// or decodes a share of the jobs), for [`JobIndex::from_parts`].
#[derive(Default)]
pub struct PartIndex {
    weights: Tally,
    owner_queues: OwnerQueues,
    queues: Gathered,
    waiting: Gathered,
    active: Gathered,
    states: Gathered,
    tags: Gathered,
    dispatched: Dispatched,
    /// `(lost at, seq, agent, id)` of each loss of a job on a named agent.
    lost: Dispatched,
}

impl PartIndex {
    /// Files a job: its id, `seq`, queue, state label, document (for its `tags`), owner,
    /// and its ties to agents: once dispatched to a named agent, when (Unix seconds) and
    /// to whom; each loss of it on a named agent, when and on whom.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: JobId,
        seq: u64,
        queue: &Name,
        state: &str,
        body: &[u8],
        owner: Option<&Name>,
        agents: AgentLinks<'_>,
    ) {
        let AgentLinks { dispatched, lost } = agents;
        self.weights.add(owner, job_weight(body));
        self.owner_queues.add(owner, queue, 1);
        gather(&mut self.queues, queue, || queue.clone(), seq, id);
        match live_kind(state) {
            Some(true) => gather(&mut self.waiting, queue, || queue.clone(), seq, id),
            Some(false) => gather(&mut self.active, queue, || queue.clone(), seq, id),
            None => {}
        }
        gather(&mut self.states, state, || Name::from(state), seq, id);
        for tag in tags_of(body) {
            gather(&mut self.tags, &tag, || tag.clone(), seq, id);
        }
        if let Some((at, agent)) = dispatched {
            self.dispatched.push((at, seq, agent.clone(), id));
        }
        for (at, agent) in lost {
            self.lost.push((*at, seq, (*agent).clone(), id));
        }
    }
}

impl JobIndex {
    /// The index of the jobs `parts` were gathered from (each job in one part), as
    /// [`JobIndex::insert`] and [`JobIndex::dispatched`] of each would make it, but built
    /// in bulk: every list is gathered into a `Vec` first and turned into its [`SeqList`]
    /// at once (`FromIterator` sorts, then cuts the runs), instead of an insert per job and
    /// list in the jobs' hash order, a cache-missing search each (most of a million-job
    /// start-up once). The lists by queue are joined and built on one thread, those by
    /// state, tag and agent on another. Agent lists get each agent's newest dispatches
    /// (by time, then `seq`).
    pub fn from_parts(parts: Vec<PartIndex>) -> JobIndex {
        let (mut queues, mut waiting, mut active) = (Vec::new(), Vec::new(), Vec::new());
        let (mut states, mut tags, mut dispatched) = (Vec::new(), Vec::new(), Vec::new());
        let mut lost = Vec::new();
        let mut weights = Tally::default();
        let mut owner_queues = OwnerQueues::default();
        for mut part in parts {
            weights.merge(std::mem::take(&mut part.weights));
            owner_queues.merge(std::mem::take(&mut part.owner_queues));
            lost.append(&mut part.lost);
            queues.push(part.queues);
            waiting.push(part.waiting);
            active.push(part.active);
            states.push(part.states);
            tags.push(part.tags);
            dispatched.append(&mut part.dispatched);
        }
        let ((by_queue, live), (by_state, by_tag, by_agent, lost_by_agent)) =
            std::thread::scope(|scope| {
                let labels = scope.spawn(|| Self::join_labels(states, tags, dispatched, lost));
                let queues = Self::join_queues(queues, waiting, active);
                let labels = labels
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (queues, labels)
            });
        JobIndex {
            by_queue,
            by_tag,
            by_state,
            live,
            by_agent,
            lost_by_agent,
            weights,
            owner_queues,
        }
    }

    /// [`JobIndex::from_parts`]'s lists by queue: all jobs, and the live ones.
    fn join_queues(
        queues: Vec<Gathered>,
        waiting: Vec<Gathered>,
        active: Vec<Gathered>,
    ) -> (FastMap<Name, SeqList>, FastMap<Name, Live>) {
        let mut live: FastMap<Name, Live> = FastMap::default();
        for (queue, list) in bulk(join(waiting)) {
            live.entry(queue).or_default().waiting = list;
        }
        for (queue, list) in bulk(join(active)) {
            live.entry(queue).or_default().active = list;
        }
        (bulk(join(queues)), live)
    }

    /// [`JobIndex::from_parts`]'s lists by state label, by tag and by agent.
    fn join_labels(
        states: Vec<Gathered>,
        tags: Vec<Gathered>,
        mut dispatched: Dispatched,
        mut lost: Dispatched,
    ) -> (Lists, Lists, Agents, Agents) {
        // Oldest dispatch first, so each agent's list ends newest first.
        dispatched.sort_unstable_by_key(|&(at, seq, _, _)| (at, seq));
        lost.sort_unstable_by_key(|&(at, seq, _, _)| (at, seq));
        let mut agents = JobIndex::default();
        for (_, _, agent, id) in &dispatched {
            agents.dispatched(agent, *id);
        }
        for (_, _, agent, id) in &lost {
            agents.lost(agent, *id);
        }
        (
            bulk(join(states)),
            bulk(join(tags)),
            agents.by_agent,
            agents.lost_by_agent,
        )
    }

    /// What `--max-jobs-bytes` bounds: the [`job_weight`]s of the jobs filed, and
    /// [`QUEUE_OVERHEAD`] for each queue that has jobs.
    pub fn weight(&self) -> u64 {
        self.weights.total() + self.by_queue.len() as u64 * QUEUE_OVERHEAD
    }

    /// What `owner`'s jobs count against its share (`None`: those submitted without a
    /// token): their [`job_weight`]s, and [`QUEUE_OVERHEAD`] for each queue they are in.
    pub fn owner_weight(&self, owner: Option<&Name>) -> u64 {
        self.weights.of(owner) + self.owner_queues.of(owner) as u64 * QUEUE_OVERHEAD
    }

    /// Whether `owner` has jobs in `queue` (a job of its there adds no
    /// [`QUEUE_OVERHEAD`] to its share).
    pub fn owner_in_queue(&self, owner: Option<&Name>, queue: &str) -> bool {
        self.owner_queues.has(owner, queue)
    }

    /// Adds a job under `seq`, submitted by `owner`.
    pub fn insert(
        &mut self,
        id: JobId,
        seq: u64,
        queue: &Name,
        state: &str,
        body: &[u8],
        owner: Option<&Name>,
    ) {
        self.weights.add(owner, job_weight(body));
        self.owner_queues.add(owner, queue, 1);
        add(&mut self.by_queue, queue, || queue.clone(), seq, id);
        add(&mut self.by_state, state, || Name::from(state), seq, id);
        for tag in tags_of(body) {
            add(&mut self.by_tag, &tag, || tag.clone(), seq, id);
        }
        self.file_live(queue, seq, id, state);
    }

    fn file_live(&mut self, queue: &Name, seq: u64, id: JobId, state: &str) {
        if let Some(waiting) = live_kind(state) {
            let live = self.live.entry(queue.clone()).or_default();
            let list = if waiting {
                &mut live.waiting
            } else {
                &mut live.active
            };
            list.insert(seq, id);
        }
    }

    fn unfile_live(&mut self, queue: &str, seq: u64, state: &str) {
        let Some(waiting) = live_kind(state) else {
            return;
        };
        if let Some(live) = self.live.get_mut(queue) {
            let list = if waiting {
                &mut live.waiting
            } else {
                &mut live.active
            };
            list.remove(&seq);
            if live.waiting.is_empty() && live.active.is_empty() {
                self.live.remove(queue);
            }
        }
    }

    /// Removes the job filed under `seq`, submitted by `owner`.
    pub fn remove(
        &mut self,
        seq: u64,
        queue: &str,
        state: &str,
        body: &[u8],
        owner: Option<&Name>,
    ) {
        self.weights.remove(owner, job_weight(body));
        self.owner_queues.remove(owner, queue);
        drop_entry(&mut self.by_queue, queue, seq);
        drop_entry(&mut self.by_state, state, seq);
        for tag in tags_of(body) {
            drop_entry(&mut self.by_tag, &tag, seq);
        }
        self.unfile_live(queue, seq, state);
    }

    /// Moves the job of `queue` filed under `seq` from state `from` to state `to`.
    pub fn restate(&mut self, id: JobId, seq: u64, queue: &Name, from: &str, to: &str) {
        if from != to {
            drop_entry(&mut self.by_state, from, seq);
            add(&mut self.by_state, to, || Name::from(to), seq, id);
            self.unfile_live(queue, seq, from);
            self.file_live(queue, seq, id, to);
        }
    }

    /// Notes that `id` was dispatched to `agent` (now: it goes to the front of the
    /// agent's list, which keeps the newest [`AGENT_RECENT`]).
    pub fn dispatched(&mut self, agent: &Name, id: JobId) {
        file_first(&mut self.by_agent, agent, id);
    }

    /// Drops `id` from `agent`'s list (the job is gone).
    pub fn undispatched(&mut self, agent: &str, id: JobId) {
        unfile(&mut self.by_agent, agent, id);
    }

    /// Files `id` first among the jobs `agent` was found lost on (the newest
    /// [`AGENT_RECENT`] are kept).
    pub fn lost(&mut self, agent: &Name, id: JobId) {
        file_first(&mut self.lost_by_agent, agent, id);
    }

    /// Drops `id` from the jobs `agent` was found lost on.
    pub fn unlost(&mut self, agent: &str, id: JobId) {
        unfile(&mut self.lost_by_agent, agent, id);
    }

    /// Drops `id` from the lists of the agents of `lost` and of the loss before it (the
    /// job's losses are forgotten: resubmitted, or removed).
    pub fn forget_lost(&mut self, lost: &crate::model::registry::Lost, id: JobId) {
        let losses = [Some(lost), lost.earlier.as_deref()];
        for agent in losses
            .into_iter()
            .flatten()
            .filter_map(|l| l.agent.as_deref())
        {
            self.unlost(agent, id);
        }
    }

    /// The jobs `agent` was found lost on, newest loss first (ids without a job, or
    /// whose loss no longer names the agent, are for the reader to skip).
    pub fn lost_jobs(&self, agent: &str) -> impl Iterator<Item = JobId> + '_ {
        self.lost_by_agent.get(agent).into_iter().flatten().copied()
    }

    /// Whether any job (of any state) is filed under `queue`.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.by_queue.contains_key(queue)
    }

    /// The jobs last dispatched to `agent`, newest first.
    pub fn agent_jobs(&self, agent: &str) -> impl Iterator<Item = JobId> + '_ {
        self.by_agent.get(agent).into_iter().flatten().copied()
    }

    /// Every queue with unfinished jobs, and those jobs.
    pub fn live(&self) -> impl Iterator<Item = (&Name, &Live)> {
        self.live.iter()
    }

    /// The unfinished jobs of `queue`.
    pub fn live_of(&self, queue: &str) -> Option<&Live> {
        self.live.get(queue)
    }

    /// Number of jobs per `job_state` label.
    pub fn state_counts(&self) -> impl Iterator<Item = (&Name, usize)> {
        self.by_state
            .iter()
            .map(|(label, list)| (label, list.len()))
    }

    /// The jobs of `queue`, oldest first.
    pub fn queue(&self, queue: &str) -> Option<&SeqList> {
        self.by_queue.get(queue)
    }

    /// Number of jobs of `queue`.
    pub fn queue_len(&self, queue: &str) -> usize {
        self.by_queue.get(queue).map_or(0, SeqList::len)
    }

    /// Whether the job under `seq` carries `tag`.
    pub fn has_tag(&self, tag: &str, seq: u64) -> bool {
        self.by_tag.get(tag).is_some_and(|l| l.contains_key(&seq))
    }

    /// Number of jobs with `tag`.
    pub fn tag_len(&self, tag: &str) -> usize {
        self.by_tag.get(tag).map_or(0, SeqList::len)
    }

    /// The lists of the state labels `wanted` names (`active`: every label that is not
    /// terminal; empty: every label).
    fn state_lists<'a>(&'a self, wanted: &[String]) -> Vec<&'a SeqList> {
        self.by_state
            .iter()
            .filter(|(label, _)| {
                wanted.is_empty()
                    || wanted.iter().any(|w| {
                        if w == "active" {
                            !is_terminal_label(label)
                        } else {
                            **w == ***label
                        }
                    })
            })
            .map(|(_, list)| list)
            .collect()
    }
}

/// What `/v1/job/search` asks for.
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// Tags (distinct); empty: any job.
    pub tags: Vec<Name>,
    /// All tags must be present (else any one).
    pub match_all: bool,
    /// Accepted state labels (`active`: not finished); empty: any state.
    pub states: Vec<String>,
}

impl Search {
    /// Whether a job in state `label` passes the state filter.
    pub fn state_ok(&self, label: &str) -> bool {
        self.states.is_empty()
            || self.states.iter().any(|s| {
                if s == "active" {
                    !is_terminal_label(label)
                } else {
                    s == label
                }
            })
    }

    /// Visits matching jobs newest first, starting below `before` (a `seq`; `u64::MAX`
    /// to start), looking at no more than `budget` candidates; `emit` gets each match
    /// with its `seq` and returns whether it wants more. Returns where to resume, or
    /// `None` when there is nothing more to visit (or `emit` had enough).
    ///
    /// Candidates come from the most selective index: the tag lists (any: their union;
    /// all: the shortest one) or the state lists, whichever holds fewer entries; the other
    /// criterion is checked per candidate against the indexes (never by parsing a job).
    pub fn step<L: AsRef<str>>(
        &self,
        index: &JobIndex,
        before: u64,
        budget: usize,
        label_of: impl Fn(JobId) -> Option<L>,
        mut emit: impl FnMut(JobId, u64) -> bool,
    ) -> Option<u64> {
        let states = index.state_lists(&self.states);
        let state_total: usize = states.iter().map(|l| l.len()).sum();
        let tag_lists: Vec<&SeqList> = if self.tags.is_empty() {
            Vec::new()
        } else if self.match_all {
            if self.tags.iter().any(|t| index.tag_len(t) == 0) {
                return None;
            }
            let shortest = self
                .tags
                .iter()
                .min_by_key(|t| index.tag_len(t))
                .and_then(|t| index.by_tag.get(&**t));
            shortest.into_iter().collect()
        } else {
            self.tags
                .iter()
                .filter_map(|t| index.by_tag.get(&**t))
                .collect()
        };
        if !self.tags.is_empty() && tag_lists.is_empty() {
            return None;
        }
        let tag_total: usize = tag_lists.iter().map(|l| l.len()).sum();
        let by_tags = !self.tags.is_empty() && tag_total <= state_total;
        let sources = if by_tags { tag_lists } else { states };
        for (visited, (seq, id)) in merged_desc(&sources, before).enumerate() {
            if visited == budget {
                return Some(seq + 1);
            }
            let tags_ok = if self.tags.is_empty() || (by_tags && !self.match_all) {
                true
            } else if self.match_all {
                self.tags.iter().all(|t| index.has_tag(t, seq))
            } else {
                self.tags.iter().any(|t| index.has_tag(t, seq))
            };
            // Driven by the state lists, the state already matches.
            let state_ok = self.states.is_empty()
                || !by_tags
                || label_of(id).is_some_and(|l| self.state_ok(l.as_ref()));
            if tags_ok && state_ok && !emit(id, seq) {
                return None;
            }
        }
        None
    }
}

/// The entries of `lists` below `before`, newest first, each `seq` once.
pub fn merged_desc<'a>(
    lists: &[&'a SeqList],
    before: u64,
) -> impl Iterator<Item = (u64, JobId)> + 'a {
    let mut iters: Vec<_> = lists.iter().map(|l| l.range(..before).rev()).collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some((&seq, &id)) = it.next() {
            heap.push((seq, i, id));
        }
    }
    let mut previous = None;
    std::iter::from_fn(move || loop {
        let (seq, i, id) = heap.pop()?;
        if let Some((&next, &next_id)) = iters[i].next() {
            heap.push((next, i, next_id));
        }
        if previous == Some(seq) {
            continue;
        }
        previous = Some(seq);
        return Some((seq, id));
    })
}

/// Files `id` first in `agent`'s list of `lists` (once; the newest [`AGENT_RECENT`]
/// are kept).
fn file_first(lists: &mut FastMap<Name, VecDeque<JobId>>, agent: &Name, id: JobId) {
    let list = lists.entry(agent.clone()).or_default();
    list.retain(|j| *j != id);
    list.push_front(id);
    list.truncate(AGENT_RECENT);
}

/// Drops `id` from `agent`'s list of `lists`, and the list once empty.
fn unfile(lists: &mut FastMap<Name, VecDeque<JobId>>, agent: &str, id: JobId) {
    if let Some(list) = lists.get_mut(agent) {
        list.retain(|j| *j != id);
        if list.is_empty() {
            lists.remove(agent);
        }
    }
}

#[cfg(test)]
mod tests;
