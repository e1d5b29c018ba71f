//! The job registry: every job's document and lifecycle, the authority on whether a job
//! may be dispatched or cancelled.
//!
//! Decisions (`submit`, `claim`, `cancel`, `report`) read the state and return the event
//! to record, or an error; [`Registry::apply`] folds an event in and returns the change the
//! owning queue's index must make. Queue indexes are derived from this state and never
//! consulted here, so concurrent pops and cancels are settled by this one fold: a job
//! leaves `waiting` exactly once.
//!
//! Invariants:
//! - a job is dispatchable iff its state is `Waiting` and it is not awaiting attachments;
//! - `seq` grows with every (re)submission, so equal priorities are served oldest first;
//! - `holding` names only dispatched, unreported, unfinished jobs.

use std::collections::VecDeque;

use super::cowmap::CowMap;
use super::{FastMap, FastSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{JobId, Name};
use super::index::JobIndex;
use super::job::{label, JobState};
use super::queue::{Entry, QueueIndex};
use crate::error::{Error, Result};

/// Whether a job waits for input files before it may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attachments {
    /// The job has none.
    None,
    /// Declared, not uploaded yet: the job keeps its place but is not dispatched.
    Waiting,
    /// Uploaded.
    Complete,
}

/// One job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The queue it was submitted to.
    #[serde(deserialize_with = "decoding::queue")]
    pub queue: Name,
    /// The job document handed to agents verbatim (JSON object text, `job_id` included).
    pub body: Bytes,
    /// `job_priority`: higher is dispatched first.
    pub priority: i64,
    /// Submission order, for FIFO among equal priorities and position.
    pub seq: u64,
    /// `exclude_agents`: agents that must not receive it.
    #[serde(deserialize_with = "decoding::exclude")]
    pub exclude: Arc<[Name]>,
    /// Lifecycle.
    #[serde(with = "state_serde")]
    pub state: JobState,
    /// Input files status.
    pub attachments: Attachments,
    /// Unix seconds of the (last) submission.
    pub created_at: u64,
    /// Unix seconds of the dispatch, once dispatched.
    pub started_at: Option<u64>,
    /// Unix seconds it became terminal, for retention.
    pub finished_at: Option<u64>,
    /// The agent that received it, when it identified itself.
    pub agent: Option<Name>,
    /// Log position of the latest event about this job: a duplicate submission waits for
    /// it to be durable before it is acknowledged.
    pub lsn: u64,
    /// Which run of the job this is: 1 for its first submission, one more for each
    /// resubmission after it left its queue. Log fragments are kept per run, so a re-run's
    /// log does not mix with (or get dropped as a retry of) the earlier run's. After the
    /// fields older snapshots have, with a default, so those still decode.
    #[serde(default = "first_run")]
    pub run: u32,
    /// The latest time the server found this job's agent lost (see `model::lost`): shown
    /// as the result's `lost_agent` field. Cleared by resubmission.
    #[serde(default)]
    pub lost: Option<Lost>,
    /// The client that submitted it, when access control is on and it authenticated.
    #[serde(default)]
    pub owner: Option<Name>,
    /// The credential (client id) of the agent it was dispatched to, when access control
    /// is on: only that agent may post its results, logs and artifacts.
    #[serde(default)]
    pub client: Option<Name>,
    /// The states the agent reported in this run, each with the unix seconds it arrived
    /// (the dashboard's timeline), at most [`MAX_PHASES`]. Last, with a default, so older
    /// snapshots still decode.
    #[serde(default)]
    pub phases: Vec<(Name, u64)>,
}

/// Most reported states kept per run of a job (a stock agent reports about ten).
pub const MAX_PHASES: usize = 32;

/// The run number of a job's first submission.
pub fn first_run() -> u32 {
    1
}

/// How the server found a job's agent lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// The job's state (phase) at the time.
    pub phase: Name,
    /// Unix seconds the agent was last heard about the job.
    pub last_heard: u64,
    /// Unix seconds the server decided.
    pub at: u64,
    /// The agent that had the job, if it identified itself.
    pub agent: Option<Name>,
    /// Whether the job was put back into its queue (else ended as `cancelled`).
    pub requeued: bool,
}

impl Job {
    /// The queue index entry for this job while it waits.
    pub fn entry(&self, id: JobId) -> Entry {
        Entry {
            id,
            priority: self.priority,
            seq: self.seq,
            exclude: self.exclude.clone(),
            ready: self.attachments != Attachments::Waiting,
        }
    }
}

mod state_serde {
    use super::JobState;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Repr {
        Waiting(bool),
        Active(Box<str>),
        Finished(Box<str>),
    }

    pub fn serialize<S: Serializer>(state: &JobState, s: S) -> Result<S::Ok, S::Error> {
        match state {
            JobState::Waiting { resubmitted } => Repr::Waiting(*resubmitted),
            JobState::Active(l) => Repr::Active((**l).into()),
            JobState::Finished(l) => Repr::Finished((**l).into()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobState, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Waiting(resubmitted) => JobState::Waiting { resubmitted },
            Repr::Active(l) => JobState::Active(l.into()),
            Repr::Finished(l) => JobState::Finished(l.into()),
        })
    }
}

/// What a submission needs, already validated by the HTTP layer.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The (normalised) id, client-supplied or fresh.
    pub id: JobId,
    /// `job_queue`.
    pub queue: Name,
    /// The job document to store (JSON object text, `job_id` included).
    pub body: Bytes,
    /// `job_priority`.
    pub priority: i64,
    /// `exclude_agents`.
    pub exclude: Arc<[Name]>,
    /// Whether any `*_data` declares attachments.
    pub awaits_attachments: bool,
}

/// Who submits, for the ownership rule of resubmissions.
#[derive(Clone, Debug, Default)]
pub struct Submitter {
    /// The authenticated client, recorded as the job's owner.
    pub owner: Option<Name>,
    /// May resubmit jobs of other owners (access control off, or a manager or admin).
    pub privileged: bool,
}

/// Testflinger-style refusal of a resubmission by someone else.
pub const NOT_OWNER: &str =
    "Only the client that submitted this job, a manager or an admin may change it";

/// The outcome of a submission decision.
#[derive(Debug)]
pub enum Submitted {
    /// The id is already waiting: nothing to record; acknowledge once `lsn` is durable.
    Duplicate {
        /// Log position of the job's latest event.
        lsn: u64,
    },
    /// Record this event.
    Record(Event),
}

/// A change a queue index must make after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexChange {
    /// Put the job into `queue`.
    Insert(Name, Entry),
    /// Take the job out of `queue`.
    Remove(Name, JobId),
    /// The job in `queue` may now be dispatched.
    Ready(Name, JobId),
}

/// All jobs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    /// Every known job. Behind an `Arc`: a hash table keeps spare slots (up to twice the
    /// jobs) and a spare slot then costs a pointer instead of a whole job (~150 MB per
    /// million jobs); and a job changed while a snapshot copy is being encoded is copied
    /// alone. In a [`CowMap`], so the snapshot copy of the table itself is a clone of its
    /// shards' pointers, and a shard is copied only when first written after it.
    jobs: CowMap<JobId, Arc<Job>>,
    /// Next submission sequence number.
    next_seq: u64,
    /// Agent → the job it was last handed and has not reported on yet: a retried pop from
    /// that agent gets the same job back instead of orphaning a second one.
    holding: FastMap<Name, JobId>,
    /// One shared copy of each queue name, so a million jobs of one queue hold one name
    /// (gathered while a snapshot decodes: [`Registry::decode`]).
    #[serde(skip)]
    names: FastSet<Name>,
    /// Finished jobs in the order they finished, with when: retention takes expired jobs
    /// from the front instead of scanning every job. An entry whose job was resubmitted
    /// or removed since is stale and skipped.
    #[serde(default)]
    finishing: VecDeque<(u64, JobId)>,
    /// Per queue, the newest waits (seconds from submission to dispatch), for the
    /// wait-time percentiles; bounded so a busy queue cannot grow the state.
    waits: FastMap<Name, VecDeque<u64>>,
    /// Jobs by queue, tag and state, for listings and searches (derived: rebuilt by
    /// [`Registry::rebuild_index`] after a snapshot is loaded, never in a snapshot).
    #[serde(skip)]
    index: JobIndex,
}

/// How many recent wait times each queue keeps.
pub const WAIT_SAMPLES: usize = 1000;

/// The shared copy of `name` in `names` (added when new).
fn intern(names: &mut FastSet<Name>, name: &str) -> Name {
    match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared = Name::from(name);
            names.insert(shared.clone());
            shared
        }
    }
}

/// How a job's shared fields decode (see [`Registry::decode`]).
mod decoding {
    use std::cell::RefCell;
    use std::fmt;
    use std::sync::Arc;

    use serde::de::{Deserializer, Error, Visitor};
    use serde::Deserialize;

    use super::{no_names, FastSet, Name};

    thread_local! {
        /// While a registry decodes on this thread: the queue names made so far.
        static NAMES: RefCell<Option<FastSet<Name>>> = const { RefCell::new(None) };
    }

    /// Names are gathered on this thread from `start` until `finish` or the drop (an error
    /// or a panic while decoding), so no decode sees another's names.
    pub(super) struct Gathering;

    impl Gathering {
        pub(super) fn start() -> Gathering {
            NAMES.with(|names| *names.borrow_mut() = Some(FastSet::default()));
            Gathering
        }

        pub(super) fn finish(self) -> FastSet<Name> {
            NAMES.with(|names| names.borrow_mut().take().unwrap_or_default())
        }
    }

    impl Drop for Gathering {
        fn drop(&mut self) {
            NAMES.with(|names| names.borrow_mut().take());
        }
    }

    /// A queue name: the one already made for it while a registry decodes, else new.
    pub(super) fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct Queue;
        impl Visitor<'_> for Queue {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a queue name")
            }
            fn visit_str<E: Error>(self, name: &str) -> Result<Name, E> {
                Ok(NAMES.with(|names| match names.borrow_mut().as_mut() {
                    Some(names) => super::intern(names, name),
                    None => Name::from(name),
                }))
            }
        }
        d.deserialize_str(Queue)
    }

    /// `exclude_agents`: when empty, the list all such jobs share.
    pub(super) fn exclude<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Name]>, D::Error> {
        let names = Vec::<Name>::deserialize(d)?;
        Ok(if names.is_empty() {
            no_names()
        } else {
            names.into()
        })
    }
}

/// The one empty exclusion list all jobs without `exclude_agents` share.
pub fn no_names() -> Arc<[Name]> {
    static EMPTY: std::sync::LazyLock<Arc<[Name]>> = std::sync::LazyLock::new(|| Arc::new([]));
    EMPTY.clone()
}

/// Testflinger's text for cancelling a finished job.
pub const ALREADY_FINISHED: &str = "The job is already completed or cancelled";

impl Registry {
    /// The job, if known.
    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|job| &**job)
    }

    /// Number of known jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is known.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Every job, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (JobId, &Job)> {
        self.jobs.iter().map(|(id, job)| (*id, &**job))
    }

    /// Decides a submission: a duplicate of a waiting job is acknowledged as is; anything
    /// else (new, or a job that left its queue) is recorded and queued.
    pub fn submit(&self, sub: Submission, now: u64) -> Submitted {
        let open = Submitter {
            owner: None,
            privileged: true,
        };
        match self.submit_by(sub, &open, now) {
            Ok(decided) => decided,
            Err(_) => unreachable!("a privileged submitter is never refused"),
        }
    }

    /// [`Registry::submit`] on behalf of `by`: an existing job owned by another client may
    /// only be resubmitted by a privileged submitter (403 otherwise).
    pub fn submit_by(&self, sub: Submission, by: &Submitter, now: u64) -> Result<Submitted> {
        if let Some(job) = self.jobs.get(&sub.id) {
            if !by.privileged && job.owner.is_some() && job.owner != by.owner {
                return Err(Error::Forbidden(NOT_OWNER.into()));
            }
            if job.state.is_waiting() {
                return Ok(Submitted::Duplicate { lsn: job.lsn });
            }
        }
        Ok(Submitted::Record(Event::JobSubmitted {
            id: sub.id,
            queue: sub.queue,
            body: sub.body,
            priority: sub.priority,
            exclude: sub.exclude,
            awaits_attachments: sub.awaits_attachments,
            at: now,
            owner: by.owner.clone(),
        }))
    }

    /// Decides a dispatch of `id`, reserved in `queue`, to `agent`: only a job still
    /// waiting in that queue, ready, and not excluding the agent may go. The queue is
    /// checked because between the reservation and the claim the job may have been
    /// cancelled and resubmitted (same id) to another queue, which the agent did not name.
    pub fn claim(&self, id: JobId, queue: &str, agent: Option<Name>, now: u64) -> Option<Event> {
        self.claim_by(id, queue, agent, None, now)
    }

    /// [`Registry::claim`] by an agent holding credential `client` (access control on).
    pub fn claim_by(
        &self,
        id: JobId,
        queue: &str,
        agent: Option<Name>,
        client: Option<Name>,
        now: u64,
    ) -> Option<Event> {
        let job = self.jobs.get(&id)?;
        let ready = job.attachments != Attachments::Waiting;
        let allowed = agent
            .as_deref()
            .is_none_or(|a| !job.exclude.iter().any(|x| &**x == a));
        (job.state.is_waiting() && *job.queue == *queue && ready && allowed).then_some(
            Event::JobDispatched {
                id,
                agent,
                at: now,
                client,
            },
        )
    }

    /// The job `agent` holds without having reported on it, if any (see `holding`).
    pub fn held_by(&self, agent: &str) -> Option<(JobId, &Job)> {
        let id = *self.holding.get(agent)?;
        self.jobs.get(&id).map(|job| (id, &**job))
    }

    /// Decides a cancellation.
    pub fn cancel(&self, id: JobId, now: u64) -> Result<Event> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| Error::NotFound("Job not found".into()))?;
        if job.state.is_terminal() {
            return Err(Error::Conflict(ALREADY_FINISHED.into()));
        }
        Ok(Event::JobCancelled { id, at: now })
    }

    /// Decides what to do about a job whose agent was silent past its allowance: `phase`
    /// is the state the decision was made on (a report since then voids it); `requeue`
    /// is the caller's verdict (see `model::lost::verdict`). `None`: nothing to do.
    pub fn lose(
        &self,
        id: JobId,
        phase: &str,
        last_heard: u64,
        requeue: bool,
        now: u64,
    ) -> Option<Event> {
        let job = self.jobs.get(&id)?;
        let active = matches!(&job.state, JobState::Active(label) if **label == *phase);
        active.then(|| Event::JobLost {
            id,
            phase: phase.into(),
            last_heard,
            requeued: requeue,
            at: now,
        })
    }

    /// Whether a lost agent already made this job go back to its queue once.
    pub fn was_requeued(&self, id: JobId) -> bool {
        self.jobs
            .get(&id)
            .is_some_and(|j| j.lost.as_ref().is_some_and(|l| l.requeued))
    }

    /// Decides an operator's deletion of a job (`None`: no such job).
    pub fn delete(&self, id: JobId) -> Option<Event> {
        self.jobs
            .contains_key(&id)
            .then_some(Event::JobDeleted { id })
    }

    /// Decides whether a reported `job_state` changes the lifecycle.
    pub fn report(&self, id: JobId, state: &str, now: u64) -> Option<Event> {
        let job = self.jobs.get(&id)?;
        job.state.after_report(state)?;
        Some(Event::JobStateReported {
            id,
            state: state.into(),
            at: now,
        })
    }

    /// Decides that a job's attachments arrived. Errors say why the upload is refused.
    pub fn attachments_arrived(&self, id: JobId) -> Result<Option<Event>> {
        let job = self
            .jobs
            .get(&id)
            .filter(|j| j.state.is_waiting())
            .ok_or_else(|| Error::Validation {
                message: format!("Job {id} is not valid"),
                field: "job_id".into(),
                reason: "not a waiting job".into(),
            })?;
        match job.attachments {
            Attachments::None => Err(Error::Validation {
                message: format!("Job {id} not awaiting attachments"),
                field: "job_id".into(),
                reason: "no attachments declared".into(),
            }),
            Attachments::Complete => Ok(None),
            Attachments::Waiting => Ok(Some(Event::AttachmentsArrived { id })),
        }
    }

    /// Finished jobs older than `cutoff` (unix seconds), at most `limit` of them.
    pub fn expired(&self, cutoff: u64, limit: usize) -> Vec<JobId> {
        self.finishing
            .iter()
            .take_while(|(t, _)| *t < cutoff)
            .filter(|&&(t, id)| !self.is_stale(t, id))
            .map(|(_, id)| *id)
            .take(limit)
            .collect()
    }

    fn is_stale(&self, finished_at: u64, id: JobId) -> bool {
        self.jobs
            .get(&id)
            .is_none_or(|j| j.finished_at != Some(finished_at))
    }

    /// Recent wait times (seconds) of `queue`, oldest first.
    pub fn waits(&self, queue: &str) -> Option<&VecDeque<u64>> {
        self.waits.get(queue)
    }

    /// Queues with wait-time samples.
    pub fn waits_all(&self) -> impl Iterator<Item = (&Name, &VecDeque<u64>)> {
        self.waits.iter()
    }

    /// The registry of a snapshot (its msgpack partition). Each queue name is made once
    /// and shared by all its jobs as they decode, and jobs without `exclude_agents` share
    /// one empty list: no allocation per job for either, and no pass over the jobs after.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Registry, rmp_serde::decode::Error> {
        let names = decoding::Gathering::start();
        let mut registry = rmp_serde::from_slice::<Registry>(bytes)?;
        registry.names = names.finish();
        Ok(registry)
    }

    /// The read indexes (by queue, tag and state).
    pub fn index(&self) -> &JobIndex {
        &self.index
    }

    /// Rebuilds the read indexes from the jobs (after a snapshot is loaded).
    pub fn rebuild_index(&mut self) {
        let mut index = JobIndex::build(|| {
            (self.jobs.iter())
                .map(|(id, job)| (*id, job.seq, &job.queue, job.state.label(), &job.body[..]))
        });
        let mut dispatched = Vec::new();
        for (id, job) in self.jobs.iter() {
            if let (Some(agent), Some(at)) = (&job.agent, job.started_at) {
                dispatched.push((at, job.seq, agent, *id));
            }
        }
        // Oldest dispatch first, so each agent's list ends newest first.
        dispatched.sort_unstable_by_key(|&(at, seq, _, _)| (at, seq));
        for (_, _, agent, id) in dispatched {
            index.dispatched(agent, id);
        }
        self.index = index;
    }

    /// A copy for a snapshot: everything that is recorded, without the derived indexes.
    pub fn snapshot_copy(&self) -> Registry {
        Registry {
            jobs: self.jobs.clone(),
            next_seq: self.next_seq,
            holding: self.holding.clone(),
            names: FastSet::default(),
            finishing: self.finishing.clone(),
            waits: self.waits.clone(),
            index: JobIndex::default(),
        }
    }

    /// Every waiting job as queue index entries, grouped by queue (to rebuild indexes).
    pub fn waiting_entries(&self) -> FastMap<Name, Vec<Entry>> {
        self.waiting_part(0, 1)
    }

    /// [`waiting_entries`](Self::waiting_entries) of the jobs in one part of the table
    /// (see [`CowMap::iter_part`]).
    fn waiting_part(&self, part: usize, parts: usize) -> FastMap<Name, Vec<Entry>> {
        let mut by_queue: FastMap<Name, Vec<Entry>> = FastMap::default();
        for (id, job) in self.jobs.iter_part(part, parts) {
            if job.state.is_waiting() {
                // Looked up before cloning the name: a clone per job would bump one
                // shared count a million times, from every thread at once.
                match by_queue.get_mut(&job.queue) {
                    Some(entries) => entries.push(job.entry(*id)),
                    None => {
                        by_queue.insert(job.queue.clone(), vec![job.entry(*id)]);
                    }
                }
            }
        }
        by_queue
    }

    /// Each queue with waiting jobs and its waiting order, built on `threads` threads
    /// (the start of the queue actors: a million waiting jobs take ~0.7 s on one).
    pub fn waiting_indexes(&self, threads: usize) -> Vec<(Name, QueueIndex)> {
        let threads = threads.clamp(1, 64);
        let parts = super::on_threads((0..threads).collect(), |part| {
            self.waiting_part(part, threads)
        });
        let mut by_queue: FastMap<Name, Vec<Entry>> = FastMap::default();
        for part in parts {
            for (queue, mut entries) in part {
                by_queue.entry(queue).or_default().append(&mut entries);
            }
        }
        let groups_len = threads.min(by_queue.len()).max(1);
        let mut groups: Vec<Vec<(Name, Vec<Entry>)>> =
            (0..groups_len).map(|_| Vec::new()).collect();
        for (i, queue) in by_queue.into_iter().enumerate() {
            groups[i % groups_len].push(queue);
        }
        super::on_threads(groups, |group| {
            group
                .into_iter()
                .map(|(queue, entries)| (queue, QueueIndex::from_entries(entries)))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Folds one registry event in; returns what the queue index must do.
    pub fn apply(&mut self, lsn: u64, event: &Event) -> Option<IndexChange> {
        match event {
            Event::JobSubmitted {
                id,
                queue,
                body,
                priority,
                exclude,
                awaits_attachments,
                at,
                owner,
            } => {
                let queue = &intern(&mut self.names, queue);
                let exclude = if exclude.is_empty() {
                    no_names()
                } else {
                    exclude.clone()
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let previous = self.jobs.get(id).cloned();
                let resubmitted = previous.is_some();
                let run = previous
                    .as_ref()
                    .map_or(first_run(), |j| j.run.saturating_add(1));
                if let Some(previous) = &previous {
                    self.index.remove(
                        previous.seq,
                        &previous.queue,
                        previous.state.label(),
                        &previous.body,
                    );
                }
                if let Some(agent) = previous.and_then(|j| j.agent.clone()) {
                    self.release_holder(&agent, *id);
                }
                let job = Job {
                    queue: queue.clone(),
                    body: body.clone(),
                    priority: *priority,
                    seq,
                    exclude,
                    state: JobState::Waiting { resubmitted },
                    attachments: if *awaits_attachments {
                        Attachments::Waiting
                    } else {
                        Attachments::None
                    },
                    created_at: *at,
                    started_at: None,
                    finished_at: None,
                    agent: None,
                    lsn,
                    run,
                    lost: None,
                    owner: owner.clone(),
                    client: None,
                    phases: Vec::new(),
                };
                let entry = job.entry(*id);
                self.index
                    .insert(*id, seq, queue, job.state.label(), &job.body);
                self.jobs.insert(*id, Arc::new(job));
                Some(IndexChange::Insert(queue.clone(), entry))
            }
            Event::JobDispatched {
                id,
                agent,
                at,
                client,
            } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                if !job.state.is_waiting() {
                    return None;
                }
                self.index
                    .restate(*id, job.seq, &job.queue, job.state.label(), label::RUNNING);
                job.state = JobState::Active(label::RUNNING.into());
                job.started_at = Some(*at);
                let samples = self.waits.entry(job.queue.clone()).or_default();
                if samples.len() == WAIT_SAMPLES {
                    samples.pop_front();
                }
                samples.push_back(at.saturating_sub(job.created_at));
                job.agent = agent.clone();
                job.client = client.clone();
                job.lsn = lsn;
                let queue = job.queue.clone();
                if let Some(agent) = agent {
                    self.holding.insert(agent.clone(), *id);
                    self.index.dispatched(agent, *id);
                }
                Some(IndexChange::Remove(queue, *id))
            }
            Event::JobCancelled { id, at } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                if job.state.is_terminal() {
                    return None;
                }
                let was_waiting = job.state.is_waiting();
                self.index.restate(
                    *id,
                    job.seq,
                    &job.queue,
                    job.state.label(),
                    label::CANCELLED,
                );
                job.state = JobState::Finished(label::CANCELLED.into());
                job.finished_at = Some(*at);
                job.lsn = lsn;
                let queue = job.queue.clone();
                if let Some(agent) = job.agent.clone() {
                    self.release_holder(&agent, *id);
                }
                self.finishing.push_back((*at, *id));
                was_waiting.then_some(IndexChange::Remove(queue, *id))
            }
            Event::JobStateReported { id, state, at } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                let next = job.state.after_report(state)?;
                let was_waiting = job.state.is_waiting();
                let finished = next.is_terminal();
                if finished {
                    job.finished_at = Some(*at);
                }
                if job.phases.len() < MAX_PHASES {
                    job.phases.push((state.clone(), *at));
                }
                self.index
                    .restate(*id, job.seq, &job.queue, job.state.label(), next.label());
                job.state = next;
                job.lsn = lsn;
                let queue = job.queue.clone();
                if let Some(agent) = job.agent.clone() {
                    self.release_holder(&agent, *id);
                }
                if finished {
                    self.finishing.push_back((*at, *id));
                }
                was_waiting.then_some(IndexChange::Remove(queue, *id))
            }
            Event::JobLost {
                id,
                phase,
                last_heard,
                requeued,
                at,
            } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                if !matches!(&job.state, JobState::Active(label) if **label == **phase) {
                    return None;
                }
                let agent = job.agent.take();
                job.lost = Some(Lost {
                    phase: phase.clone(),
                    last_heard: *last_heard,
                    at: *at,
                    agent: agent.clone(),
                    requeued: *requeued,
                });
                job.lsn = lsn;
                let next = if *requeued {
                    JobState::Waiting { resubmitted: true }
                } else {
                    JobState::Finished(label::CANCELLED.into())
                };
                self.index
                    .restate(*id, job.seq, &job.queue, job.state.label(), next.label());
                job.state = next;
                let change = if *requeued {
                    // Back in its old place (its `seq`): it was first in line before. The
                    // next agent numbers its fragments from 0 again: a new run, so they
                    // are not taken for retries of the lost run's.
                    job.started_at = None;
                    job.run = job.run.saturating_add(1);
                    Some(IndexChange::Insert(job.queue.clone(), job.entry(*id)))
                } else {
                    job.finished_at = Some(*at);
                    self.finishing.push_back((*at, *id));
                    None
                };
                if let Some(agent) = agent {
                    self.release_holder(&agent, *id);
                }
                change
            }
            Event::AttachmentsArrived { id } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                if job.attachments != Attachments::Waiting {
                    return None;
                }
                job.attachments = Attachments::Complete;
                job.lsn = lsn;
                job.state
                    .is_waiting()
                    .then(|| IndexChange::Ready(job.queue.clone(), *id))
            }
            Event::JobsExpired { ids } => {
                for id in ids {
                    if let Some(job) = self.jobs.get(id).filter(|j| j.state.is_terminal()) {
                        let job = job.clone();
                        if let Some(agent) = job.agent.clone() {
                            self.release_holder(&agent, *id);
                            self.index.undispatched(&agent, *id);
                        }
                        self.index
                            .remove(job.seq, &job.queue, job.state.label(), &job.body);
                        self.jobs.remove(id);
                    }
                }
                while let Some(&(t, id)) = self.finishing.front() {
                    if !self.is_stale(t, id) {
                        break;
                    }
                    self.finishing.pop_front();
                }
                None
            }
            Event::JobDeleted { id } => {
                let job = self.jobs.remove(id)?;
                if let Some(agent) = job.agent.clone() {
                    self.release_holder(&agent, *id);
                    self.index.undispatched(&agent, *id);
                }
                self.index
                    .remove(job.seq, &job.queue, job.state.label(), &job.body);
                job.state
                    .is_waiting()
                    .then(|| IndexChange::Remove(job.queue.clone(), *id))
            }
            _ => None,
        }
    }

    fn release_holder(&mut self, agent: &Name, id: JobId) {
        if self.holding.get(agent) == Some(&id) {
            self.holding.remove(agent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(registry: &mut Registry, lsn: &mut u64, id: JobId, at: u64) {
        submit_to(registry, lsn, id, at, "q");
    }

    fn submit_to(registry: &mut Registry, lsn: &mut u64, id: JobId, at: u64, queue: &str) {
        *lsn += 1;
        let sub = Submission {
            id,
            queue: queue.into(),
            body: Bytes::from_static(b"{}"),
            priority: 0,
            exclude: no_names(),
            awaits_attachments: false,
        };
        let Submitted::Record(event) = registry.submit(sub, at) else {
            panic!("duplicate")
        };
        registry.apply(*lsn, &event);
    }

    #[test]
    fn retention_takes_jobs_in_finishing_order_and_skips_resubmitted_ones() {
        let mut registry = Registry::default();
        let mut lsn = 0;
        let ids: Vec<JobId> = (0..3).map(|_| JobId::random()).collect();
        for (t, id) in ids.iter().enumerate() {
            submit(&mut registry, &mut lsn, *id, 0);
            lsn += 1;
            registry.apply(lsn, &registry.cancel(*id, t as u64 + 1).unwrap());
        }
        // The first job is queued again: it is no longer finished, so not expired.
        submit(&mut registry, &mut lsn, ids[0], 5);
        assert_eq!(registry.expired(3, 10), vec![ids[1]]);
        assert_eq!(registry.expired(10, 10), vec![ids[1], ids[2]]);
        lsn += 1;
        registry.apply(lsn, &Event::JobsExpired { ids: vec![ids[1]] });
        assert_eq!(registry.expired(10, 10), vec![ids[2]]);
        assert!(registry.get(ids[0]).is_some_and(|j| j.state.is_waiting()));
        assert_eq!(
            registry.finishing.len(),
            1,
            "stale entries at the front are dropped"
        );
    }

    /// A claim names the queue the job was reserved in: a job cancelled and resubmitted
    /// (same id) to another queue meanwhile is not dispatched to an agent that did not
    /// name that queue.
    #[test]
    fn a_claim_is_refused_when_the_job_now_waits_in_another_queue() {
        let mut registry = Registry::default();
        let mut lsn = 0;
        let id = JobId::random();
        submit_to(&mut registry, &mut lsn, id, 0, "wa");
        assert!(registry.claim(id, "wa", None, 1).is_some());
        lsn += 1;
        registry.apply(lsn, &registry.cancel(id, 1).unwrap());
        submit_to(&mut registry, &mut lsn, id, 2, "wb");
        assert_eq!(registry.claim(id, "wa", Some("dut".into()), 3), None);
        assert!(registry.claim(id, "wb", Some("dut".into()), 3).is_some());
    }

    /// The queue actors' start on several threads gives each queue the index one thread
    /// builds from every waiting job, whatever the number of threads.
    #[test]
    fn waiting_indexes_on_any_number_of_threads_match_one_built_alone() {
        let mut registry = Registry::default();
        let mut lsn = 0;
        for i in 0..3000u64 {
            let id = JobId::random();
            submit_to(&mut registry, &mut lsn, id, i, &format!("q{}", i % 7));
            if i % 5 == 0 {
                lsn += 1;
                registry.apply(lsn, &registry.cancel(id, i).unwrap());
            }
        }
        let order = |index: &QueueIndex| index.entries().map(|e| e.id).collect::<Vec<_>>();
        let mut alone: Vec<(Name, Vec<JobId>)> = (registry.waiting_entries().into_iter())
            .map(|(queue, entries)| (queue, order(&QueueIndex::from_entries(entries))))
            .collect();
        alone.sort();
        assert_eq!(alone.len(), 7);
        assert_eq!(alone.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 2400);
        for threads in [1, 2, 3, 8] {
            let mut built: Vec<(Name, Vec<JobId>)> = (registry.waiting_indexes(threads))
                .iter()
                .map(|(queue, index)| (queue.clone(), order(index)))
                .collect();
            built.sort();
            assert_eq!(built, alone, "{threads} threads");
        }
    }

    /// A decoded registry gives the jobs of a queue one shared name, and the jobs
    /// without exclusions one shared empty list, as live submissions do.
    #[test]
    fn decoded_jobs_share_their_queue_name_and_empty_exclusions() {
        let mut registry = Registry::default();
        let mut lsn = 0;
        for i in 0..40u64 {
            submit_to(
                &mut registry,
                &mut lsn,
                JobId::random(),
                i,
                ["a", "b"][i as usize % 2],
            );
        }
        let bytes = rmp_serde::to_vec(&registry).unwrap();
        let decoded = Registry::decode(&bytes).unwrap();
        assert_eq!(decoded.len(), 40);
        for queue in ["a", "b"] {
            let shared = decoded.names.get(queue).expect("the name was kept");
            let jobs: Vec<&Job> = (decoded.jobs.values())
                .map(|job| &**job)
                .filter(|job| &*job.queue == queue)
                .collect();
            assert_eq!(jobs.len(), 20);
            assert!(jobs.iter().all(|job| Arc::ptr_eq(&job.queue, shared)));
            assert!(jobs
                .iter()
                .all(|job| Arc::ptr_eq(&job.exclude, &no_names())));
        }
        // Outside a registry's decoding, names are made as usual, also after one failed.
        assert!(Registry::decode(&bytes[..bytes.len() / 2]).is_err());
        let job: Job = rmp_serde::from_slice(
            &rmp_serde::to_vec(&**decoded.jobs.values().next().unwrap()).unwrap(),
        )
        .unwrap();
        assert!(!decoded.names.iter().any(|n| Arc::ptr_eq(n, &job.queue)));
    }
}
