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
//!
//! One job's record is in `record`; how jobs decode from a snapshot (shared names) in
//! `decoding`.

use std::collections::VecDeque;

use super::cowmap::CowMap;
use super::{FastMap, FastSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{JobId, Name};
use super::index::{JobIndex, PartIndex};
use super::job::{label, JobState};
use super::lost;
use super::queue::{Entry, QueueIndex};
use crate::error::{Error, Result};

mod decoding;
mod record;
#[cfg(test)]
mod tests;

use decoding::intern;
pub use decoding::no_names;
pub use record::{first_run, Attachments, Job, Lost, MAX_PHASES};

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
    /// wait-time percentiles; bounded so a busy queue cannot grow the state, and kept
    /// only while the queue has jobs, so used-up queue names cannot either.
    waits: FastMap<Name, VecDeque<u64>>,
    /// Jobs by queue, tag and state, for listings and searches (derived: rebuilt by
    /// [`Registry::decode`] when a snapshot is loaded, never in a snapshot).
    #[serde(skip)]
    index: JobIndex,
}

/// Registries are equal when they record the same: the derived indexes are not compared.
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.jobs == other.jobs
            && self.next_seq == other.next_seq
            && self.holding == other.holding
            && self.names == other.names
            && self.finishing == other.finishing
            && self.waits == other.waits
    }
}

/// The threads there are cores for, at most [`DECODE_THREADS`].
fn cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(DECODE_THREADS)
}

/// Into how many parts `jobs` split on at most `threads` threads, each part at least
/// `share` jobs (0 or 1: one thread).
fn split(jobs: usize, threads: usize, share: usize) -> usize {
    threads.min(jobs / share.max(1))
}

/// Most threads a snapshot's job table decodes on ([`Registry::decode`]).
pub const DECODE_THREADS: usize = 8;

/// Fewest jobs a thread decoding a snapshot's job table is given: below twice this the
/// table decodes on one thread, where a thread's start would cost more than it saves.
pub const DECODE_SHARE: usize = 4096;

/// How many recent wait times each queue keeps.
pub const WAIT_SAMPLES: usize = 1000;

/// Testflinger's text for cancelling a finished job.
pub const ALREADY_FINISHED: &str = "The job is already completed or cancelled";

/// The start of the text for cancelling a job no one submitted (OLD's words, with the id).
pub const NOT_FOUND_TO_CANCEL: &str = "Job is not found and cannot be cancelled";

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

    /// Decides a cancellation. An unknown job is a bad request (400), not a 404: both
    /// upstream servers answer 400 (OLD's README said 404, its code did not), and the
    /// real `testflinger-cli cancel` turns only a 400 into a message (any other error
    /// status escapes as a Python traceback).
    pub fn cancel(&self, id: JobId, now: u64) -> Result<Event> {
        let job = self.jobs.get(&id).ok_or_else(|| {
            Error::InvalidInput(format!("{NOT_FOUND_TO_CANCEL}: no job has the id {id}"))
        })?;
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
            took: None,
        })
    }

    /// Decides what happens to the jobs `agent` left unfinished now that it took `took`
    /// (just dispatched to it, with credential `client`): each job still active, handed
    /// to that agent name with that same credential (access control on: another
    /// credential naming the agent in its cookie does not end its jobs), is lost at once,
    /// requeued or ended as [`lost::outcome`] says for its phase under `rule` (see
    /// [`lost::abandoned`]). `last_heard` gives when the agent was last heard about a job
    /// (the watch), else its dispatch counts. An event to record and fold for such a job;
    /// none for a finished, waiting or requeued job, or one of another agent.
    ///
    /// Looks only at the agent's dispatch before `took` with that credential (newest first
    /// in [`crate::model::index::AGENT_RECENT`]): every dispatch to it ends the others it
    /// holds, so it holds at most that one besides, and a pop costs one lookup, not one
    /// per recent dispatch (a lifecycle request cost ~640 instructions more with the scan
    /// of all of them). Jobs an older build left active beside it go to the watch.
    pub fn abandoned_by(
        &self,
        agent: &str,
        client: Option<&Name>,
        took: JobId,
        rule: &lost::Rule,
        last_heard: impl Fn(JobId) -> Option<u64>,
        now: u64,
    ) -> Vec<Event> {
        let held = |id: &JobId| {
            *id != took
                && self.jobs.get(id).is_some_and(|job| {
                    job.agent.as_deref() == Some(agent) && job.client.as_ref() == client
                })
        };
        self.index
            .agent_jobs(agent)
            .find(held)
            .and_then(|id| {
                let job = self.jobs.get(&id)?;
                let requeued_before = job.lost.as_ref().is_some_and(|l| l.requeued);
                let judged = lost::abandoned(
                    Some((job.state.label(), job.state.is_active(), requeued_before)),
                    rule,
                );
                let lost::Judged::Lose { phase, requeue } = judged else {
                    return None;
                };
                Some(Event::JobLost {
                    id,
                    phase: phase.as_str().into(),
                    last_heard: last_heard(id).or(job.started_at).unwrap_or(now),
                    requeued: requeue,
                    at: now,
                    took: Some(took),
                })
            })
            .into_iter()
            .collect()
    }

    /// Takes job `id` (removed: expired or deleted) out of everything that names it: its
    /// agent's hold and lists, its losses' lists, the read indexes, and its queue's
    /// name once no job has it.
    fn unfile(&mut self, id: JobId, job: &Job) {
        if let Some(agent) = &job.agent {
            self.release_holder(agent, id);
            self.index.undispatched(agent, id);
        }
        if let Some(lost) = &job.lost {
            self.index.forget_lost(lost, id);
        }
        self.index.remove(
            job.seq,
            &job.queue,
            job.state.label(),
            &job.body,
            job.owner.as_ref(),
        );
        self.forget_queue_if_unused(&job.queue);
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

    /// The registry of a snapshot (its msgpack partition), its read indexes built. Each
    /// queue name is made once and shared by all its jobs as they decode, and jobs
    /// without `exclude_agents` share one empty list: no allocation per job for either.
    ///
    /// A table of at least 2 × [`DECODE_SHARE`] jobs decodes in parts on up to
    /// [`DECODE_THREADS`] threads (as many as there are cores), each filing its jobs in the
    /// read indexes while they are fresh in its cache, then fills its map on as many (see
    /// [`decode_on`](Self::decode_on)).
    pub fn decode(bytes: &[u8]) -> std::result::Result<Registry, rmp_serde::decode::Error> {
        Self::decode_on(bytes, cores(), DECODE_SHARE)
    }

    /// [`decode`](Self::decode) on at most `threads` threads, each given at least `share`
    /// jobs of the table: the same registry, or an error where the whole would fail (the
    /// text may differ), whichever the split. A queue name is shared by the jobs each
    /// thread decoded (one copy per thread, not per job). A partition that is not the
    /// positional form `rmp_serde::to_vec` writes decodes whole, on this thread.
    pub fn decode_on(
        bytes: &[u8],
        threads: usize,
        share: usize,
    ) -> std::result::Result<Registry, rmp_serde::decode::Error> {
        let in_parts = decoding::table(bytes).and_then(|table| {
            let parts = split(table.len, threads, share);
            (parts >= 2).then_some((table, parts))
        });
        let Some((table, parts)) = in_parts else {
            let names = decoding::Gathering::start();
            let mut registry = rmp_serde::from_slice::<Registry>(bytes)?;
            registry.names = names.finish();
            registry.rebuild_index(threads, share);
            registry.forget_unused_waits();
            return Ok(registry);
        };
        // Sized as the whole table's decode sizes it (`CowMap`'s `Deserialize`).
        let mut jobs = CowMap::with_capacity(table.len.min(1 << 24));
        let runs = jobs.runs(parts);
        let bounds: Vec<(usize, usize)> = (0..parts)
            .map(|p| (table.len * p / parts, table.len * (p + 1) / parts))
            .collect();
        let decoded =
            super::on_threads(bounds, |bounds| decoding::part(bytes, table, bounds, &runs));
        let mut lists = vec![Vec::new(); parts];
        let (mut names, mut indexes, mut end) = (FastSet::default(), Vec::new(), 0);
        for part in decoded {
            let part = part?;
            for (run, entries) in part.runs.into_iter().enumerate() {
                lists[run].push(entries);
            }
            names.extend(part.names);
            indexes.push(part.index);
            end = part.end;
        }
        jobs.fill_runs(
            &runs,
            lists.into_iter().map(|l| l.into_iter().flatten()).collect(),
        );
        // The other fields: the same array with an empty table in place of the jobs.
        let mut rest = Vec::with_capacity(table.header + 1 + (bytes.len() - end));
        rest.extend_from_slice(&bytes[..table.header]);
        rest.push(0x80);
        rest.extend_from_slice(&bytes[end..]);
        let mut registry = rmp_serde::from_slice::<Registry>(&rest)?;
        registry.jobs = jobs;
        registry.names = names;
        if registry.jobs.len() == table.len {
            registry.index = JobIndex::from_parts(indexes);
        } else {
            // A job id twice in the table (never written): the parts filed both jobs, the
            // map kept the later.
            registry.rebuild_index(threads, share);
        }
        registry.forget_unused_waits();
        Ok(registry)
    }

    /// Drops the wait samples of queues without jobs, as earlier builds kept them for
    /// good (once the index is built).
    fn forget_unused_waits(&mut self) {
        let index = &self.index;
        self.waits.retain(|queue, _| index.has_queue(queue));
    }

    /// The read indexes (by queue, tag and state).
    pub fn index(&self) -> &JobIndex {
        &self.index
    }

    /// Rebuilds the read indexes from the jobs, on at most `threads` threads, each given
    /// at least `share` jobs.
    fn rebuild_index(&mut self, threads: usize, share: usize) {
        let parts = split(self.jobs.len(), threads, share).max(1);
        let jobs = &self.jobs;
        self.index = JobIndex::from_parts(super::on_threads((0..parts).collect(), |part| {
            let mut index = PartIndex::default();
            for (id, job) in jobs.iter_part(part, parts) {
                job.file(&mut index, *id);
            }
            index
        }));
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
                        previous.owner.as_ref(),
                    );
                    if previous.queue != *queue {
                        self.forget_queue_if_unused(&previous.queue);
                    }
                }
                // The new run has no agent yet: the earlier run's leaves that agent's recent
                // jobs, as a rebuild from the jobs (which know only their current agent)
                // has it.
                if let Some(lost) = previous.as_ref().and_then(|j| j.lost.as_ref()) {
                    self.index.forget_lost(lost, *id);
                }
                if let Some(agent) = previous.and_then(|j| j.agent.clone()) {
                    self.release_holder(&agent, *id);
                    self.index.undispatched(&agent, *id);
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
                self.index.insert(
                    *id,
                    seq,
                    queue,
                    job.state.label(),
                    &job.body,
                    owner.as_ref(),
                );
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
                took,
            } => {
                let job = Arc::make_mut(self.jobs.get_mut(id)?);
                if !matches!(&job.state, JobState::Active(label) if **label == **phase) {
                    return None;
                }
                let agent = job.agent.take();
                // A requeued job lost again keeps the loss that requeued it (one level:
                // it is requeued once per submission).
                let earlier = match job.lost.take() {
                    Some(mut previous) if previous.requeued => {
                        previous.earlier = None;
                        Some(Box::new(previous))
                    }
                    Some(previous) => {
                        self.index.forget_lost(&previous, *id);
                        None
                    }
                    None => None,
                };
                let phases = if *requeued {
                    std::mem::take(&mut job.phases)
                } else {
                    Vec::new()
                };
                job.lost = Some(Lost {
                    phase: phase.clone(),
                    last_heard: *last_heard,
                    at: *at,
                    agent: agent.clone(),
                    requeued: *requeued,
                    took: *took,
                    dispatched_at: job.started_at,
                    phases,
                    earlier,
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
                    // Dispatched to no one until the next agent takes it: the lost one's
                    // credential may not report on it meanwhile (a late state report
                    // would take it out of the queue without a dispatch).
                    job.client = None;
                    Some(IndexChange::Insert(job.queue.clone(), job.entry(*id)))
                } else {
                    job.finished_at = Some(*at);
                    self.finishing.push_back((*at, *id));
                    None
                };
                if let Some(agent) = agent {
                    self.release_holder(&agent, *id);
                    // The job no longer names it: as for a resubmission. It is listed
                    // among the jobs the agent was lost on instead.
                    self.index.undispatched(&agent, *id);
                    self.index.lost(&agent, *id);
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
                    if self.jobs.get(id).is_some_and(|j| j.state.is_terminal()) {
                        if let Some(job) = self.jobs.remove(id) {
                            self.unfile(*id, &job);
                        }
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
                self.unfile(*id, &job);
                job.state
                    .is_waiting()
                    .then(|| IndexChange::Remove(job.queue.clone(), *id))
            }
            _ => None,
        }
    }

    /// Once no job is filed under `queue` (its last job expired, was deleted or
    /// resubmitted elsewhere), its wait samples and shared name go too: queue names are
    /// the clients' to choose, so what is kept per queue must go with the queue's jobs.
    fn forget_queue_if_unused(&mut self, queue: &Name) {
        if !self.index.has_queue(queue) {
            self.waits.remove(queue);
            self.names.remove(queue);
        }
    }

    fn release_holder(&mut self, agent: &Name, id: JobId) {
        if self.holding.get(agent) == Some(&id) {
            self.holding.remove(agent);
        }
    }
}
