//! Reads of the registry partition for handlers, without the registry actor ([`Jobs`]),
//! and the views of a job they answer with ([`JobView`], [`JobDetail`]): lookups,
//! listings and searches over the registry's indexes, each holding the read lock for one
//! bounded step and yielding between steps, so no read waits in the actor's mailbox and
//! no read holds up a write.

use bytes::Bytes;

use super::super::Shared;
use crate::error::Result;
use crate::model::index::Search;
use crate::model::lost;
use crate::model::registry::{Attachments, Registry};
use crate::model::{JobId, Name};

/// How many index entries a reader visits per step before it lets writers in.
const READ_STEP: usize = 1024;

/// A job as handlers see it.
#[derive(Clone, Debug)]
pub struct JobView {
    /// Its queue.
    pub queue: Name,
    /// The stored job document.
    pub body: Bytes,
    /// `job_state`.
    pub state: String,
    /// Whether it is waiting in its queue.
    pub waiting: bool,
    /// Submission order (listings sort by it: timestamps tie within a second).
    pub seq: u64,
    /// Unix seconds of submission.
    pub created_at: u64,
    /// Input files status.
    pub attachments: Attachments,
    /// Which run of the job this is (1, then one more per resubmission).
    pub run: u32,
    /// Unix seconds of its latest dispatch (the pop answer's `started_at`), if any.
    pub started_at: Option<u64>,
    /// When the server found its agent lost, if it did.
    pub lost: Option<crate::model::registry::Lost>,
    /// The submitting client (access control on).
    pub owner: Option<Name>,
    /// The credential of the agent it was dispatched to (access control on).
    pub client: Option<Name>,
}

/// A job with what the dashboard shows beyond [`JobView`].
#[derive(Clone, Debug)]
pub struct JobDetail {
    /// The job as handlers see it.
    pub view: JobView,
    /// `job_priority`.
    pub priority: i64,
    /// Unix seconds it finished.
    pub finished_at: Option<u64>,
    /// The agent it was handed to.
    pub agent: Option<Name>,
    /// The states reported in this run, with unix seconds.
    pub phases: Vec<(Name, u64)>,
}

fn detail(job: &crate::model::registry::Job) -> JobDetail {
    JobDetail {
        view: view(job),
        priority: job.priority,
        finished_at: job.finished_at,
        agent: job.agent.clone(),
        phases: job.phases.clone(),
    }
}

/// A queue's unfinished jobs (see [`Jobs::live_jobs`]).
#[derive(Clone, Debug, Default)]
pub struct LiveJobs {
    /// Waiting jobs, in dispatch order.
    pub waiting: Vec<(JobId, JobDetail)>,
    /// Running jobs, oldest first.
    pub running: Vec<(JobId, JobDetail)>,
    /// All waiting jobs of the queue.
    pub waiting_total: usize,
    /// All running jobs of the queue.
    pub running_total: usize,
}

/// A queue's unfinished jobs at a glance.
#[derive(Clone, Debug)]
pub struct QueueSummary {
    /// The queue.
    pub queue: Name,
    /// Jobs waiting in it.
    pub waiting: usize,
    /// Jobs dispatched from it and not finished.
    pub running: usize,
    /// Unix seconds of submission of its oldest waiting job (by submission order).
    pub oldest_waiting_since: Option<u64>,
}

pub(super) fn view(job: &crate::model::registry::Job) -> JobView {
    JobView {
        queue: job.queue.clone(),
        body: job.body.clone(),
        state: job.state.label().to_owned(),
        waiting: job.state.is_waiting(),
        seq: job.seq,
        created_at: job.created_at,
        attachments: job.attachments,
        run: job.run,
        started_at: job.started_at,
        lost: job.lost.clone(),
        owner: job.owner.clone(),
        client: job.client.clone(),
    }
}

/// Reads of the registry partition for handlers, without the registry actor. Each
/// holds the read lock for one bounded step (a lookup, or `READ_STEP` index entries)
/// and yields between steps.
#[derive(Clone)]
pub struct Jobs(Shared<Registry>);

impl Jobs {
    /// Reads of `registry`.
    pub fn new(registry: Shared<Registry>) -> Jobs {
        Jobs(registry)
    }

    /// The job, if known.
    pub fn get(&self, id: JobId) -> Option<JobView> {
        self.0.read().get(id).map(view)
    }

    /// The queue job `id` waits in, if it waits and `reported` is a phase: a state report
    /// no one may make before an agent takes the job
    /// ([`JobState::is_phase_before_dispatch`](crate::model::job::JobState::is_phase_before_dispatch)).
    pub fn waiting_for_phase(&self, id: JobId, reported: &str) -> Option<Name> {
        let registry = self.0.read();
        let job = registry.get(id)?;
        job.state
            .is_phase_before_dispatch(reported)
            .then(|| job.queue.clone())
    }

    /// The job's submitter (`Some(None)`: submitted without a token), if the job is known.
    pub fn owner(&self, id: JobId) -> Option<Option<Name>> {
        self.0.read().get(id).map(|job| job.owner.clone())
    }

    /// The job's current run ([`JobView::run`]), if the job is known: what a log
    /// fragment's post needs, without copying the rest of the job.
    pub fn run(&self, id: JobId) -> Option<u32> {
        self.0.read().get(id).map(|job| job.run)
    }

    /// The jobs of `watched` (jobs and when their agents were last heard) whose agent the
    /// lost-agent rule finds lost, each with its phase and whether to requeue it, under
    /// one read lock and without copying the jobs. Jobs heard within
    /// [`lost::surely_alive`] are not looked up at all.
    pub fn judge_lost(
        &self,
        watched: Vec<(JobId, lost::Watched)>,
        rule: &lost::Rule,
        now: u64,
    ) -> Vec<(JobId, lost::Watched, String, bool)> {
        let registry = self.0.read();
        watched
            .into_iter()
            .filter(|(_, w)| !lost::surely_alive(w, rule, now))
            .filter_map(|(id, w)| {
                let job = registry.get(id).map(|job| {
                    let requeued = job.lost.as_ref().is_some_and(|l| l.requeued);
                    (job.state.label(), job.state.is_active(), requeued)
                });
                match lost::judge(job, &w, rule, now) {
                    lost::Judged::Lose { phase, requeue } => Some((id, w, phase, requeue)),
                    lost::Judged::Alive | lost::Judged::NotRunning => None,
                }
            })
            .collect()
    }

    /// Whether a job has this id.
    pub fn contains(&self, id: JobId) -> bool {
        self.0.read().get(id).is_some()
    }

    /// Whether the job's attachments may still be stored: `Ok(Some(seq))` while it waits
    /// for them, with the submission waiting (its `seq`: a resubmission waits for new
    /// ones), `Ok(None)` once they are (the job may be dispatched: they are never
    /// replaced), the registry's refusal otherwise (the same decision as
    /// [`super::RegistryMsg::AttachmentsArrived`]).
    pub fn awaits_attachments(&self, id: JobId) -> Result<Option<u64>> {
        let registry = self.0.read();
        let awaits = registry.attachments_arrived(id)?.is_some();
        Ok(registry.get(id).filter(|_| awaits).map(|job| job.seq))
    }

    /// The job this agent holds without having reported on it.
    pub fn held_by(&self, agent: &str) -> Option<(JobId, JobView)> {
        self.0
            .read()
            .held_by(agent)
            .map(|(id, job)| (id, view(job)))
    }

    /// The jobs last dispatched to `agent`, newest dispatch first, at most `limit`
    /// (bounded by the index's [`crate::model::index::AGENT_RECENT`]), under one read lock.
    pub fn agent_jobs(&self, agent: &str, limit: usize) -> Vec<(JobId, JobView)> {
        let registry = self.0.read();
        registry
            .index()
            .agent_jobs(agent)
            .filter_map(|id| registry.get(id).map(|job| (id, view(job))))
            .take(limit)
            .collect()
    }

    /// The jobs the server found `agent` lost on, newest loss first, at most `limit`
    /// (bounded by the index's [`crate::model::index::AGENT_RECENT`]), each with that
    /// loss (the job's latest, or the one that requeued it before), under one read lock.
    pub fn lost_on(
        &self,
        agent: &str,
        limit: usize,
    ) -> Vec<(JobId, JobView, crate::model::registry::Lost)> {
        let registry = self.0.read();
        registry
            .index()
            .lost_jobs(agent)
            .filter_map(|id| {
                let job = registry.get(id)?;
                let lost = job.lost.as_ref()?;
                let losses = [Some(lost), lost.earlier.as_deref()];
                let loss = losses
                    .into_iter()
                    .flatten()
                    .find(|l| l.agent.as_deref() == Some(agent))?;
                Some((id, view(job), loss.clone()))
            })
            .take(limit)
            .collect()
    }

    /// Recent wait times of the named queues (all queues with data when empty).
    pub fn wait_times(&self, queues: &[String]) -> Vec<(Name, Vec<u64>)> {
        let registry = self.0.read();
        if queues.is_empty() {
            registry
                .waits_all()
                .map(|(q, w)| (q.clone(), w.iter().copied().collect()))
                .collect()
        } else {
            queues
                .iter()
                .filter_map(|q| {
                    registry
                        .waits(q)
                        .map(|w| (Name::from(q.as_str()), w.iter().copied().collect()))
                })
                .collect()
        }
    }

    /// Per queue with unfinished jobs: how many wait, how many run, and when the oldest
    /// waiting job was submitted. Visits the queues with unfinished jobs, never their
    /// finished jobs, under one read lock.
    pub fn queue_summaries(&self) -> Vec<QueueSummary> {
        let registry = self.0.read();
        registry
            .index()
            .live()
            .map(|(queue, live)| QueueSummary {
                queue: queue.clone(),
                waiting: live.waiting.len(),
                running: live.active.len(),
                oldest_waiting_since: live
                    .waiting
                    .values()
                    .next()
                    .and_then(|id| registry.get(*id))
                    .map(|job| job.created_at),
            })
            .collect()
    }

    /// The job with its dispatch details (the dashboard's job page).
    pub fn detail(&self, id: JobId) -> Option<JobDetail> {
        self.0.read().get(id).map(detail)
    }

    /// The unfinished jobs of `queue`, at most `limit` of each kind: waiting ones in
    /// dispatch order (priority, then submission; exact when the queue holds at most
    /// `limit` waiting jobs, else the order of the `limit` oldest: the queue's actor,
    /// `QueueMsg::Head`, has the exact first page), then running ones
    /// oldest first. Visits at most `2 * limit` jobs under one read lock.
    pub fn live_jobs(&self, queue: &str, limit: usize) -> LiveJobs {
        let registry = self.0.read();
        let Some(live) = registry.index().live_of(queue) else {
            return LiveJobs::default();
        };
        let pick = |list: &crate::model::index::SeqList| -> Vec<(JobId, JobDetail)> {
            list.values()
                .take(limit)
                .filter_map(|id| registry.get(*id).map(|job| (*id, detail(job))))
                .collect()
        };
        let mut waiting = pick(&live.waiting);
        waiting.sort_by_key(|(_, d)| (std::cmp::Reverse(d.priority), d.view.seq));
        LiveJobs {
            waiting_total: live.waiting.len(),
            running_total: live.active.len(),
            waiting,
            running: pick(&live.active),
        }
    }

    /// The newest `limit` jobs of `queue` (any state), newest first, under one read lock.
    pub fn newest_of_queue(&self, queue: &str, limit: usize) -> Vec<(JobId, JobView)> {
        let registry = self.0.read();
        let Some(list) = registry.index().queue(queue) else {
            return Vec::new();
        };
        list.values()
            .rev()
            .take(limit)
            .filter_map(|id| registry.get(*id).map(|job| (*id, view(job))))
            .collect()
    }

    /// Number of jobs per `job_state` label.
    pub fn state_counts(&self) -> Vec<(Name, usize)> {
        let registry = self.0.read();
        registry
            .index()
            .state_counts()
            .map(|(label, n)| (label.clone(), n))
            .collect()
    }

    /// Jobs of `queue` (any state), oldest first, at most `limit`: visits only those.
    pub async fn list_queue(&self, queue: &str, limit: usize) -> Vec<(JobId, JobView)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let exhausted = {
                let registry = self.0.read();
                let Some(list) = registry.index().queue(queue) else {
                    break;
                };
                let from = match after {
                    None => std::ops::Bound::Unbounded,
                    Some(seq) => std::ops::Bound::Excluded(seq),
                };
                let want = READ_STEP.min(limit - out.len());
                let mut taken = 0;
                for (&seq, &id) in list.range((from, std::ops::Bound::Unbounded)).take(want) {
                    taken += 1;
                    after = Some(seq);
                    if let Some(job) = registry.get(id) {
                        out.push((id, view(job)));
                    }
                }
                taken < want || out.len() >= limit
            };
            if exhausted {
                break;
            }
            tokio::task::yield_now().await;
        }
        out
    }

    /// Jobs matching `search`, newest first, at most `limit`: visits candidates from the
    /// most selective index only, and stops at `limit`.
    pub async fn search(&self, search: &Search, limit: usize) -> Vec<(JobId, JobView)> {
        let mut out = Vec::new();
        let mut before = u64::MAX;
        loop {
            let next = {
                let registry = self.0.read();
                search.step(
                    registry.index(),
                    before,
                    READ_STEP,
                    |id| registry.get(id).map(|j| j.state.label()),
                    |id, _| {
                        if let Some(job) = registry.get(id) {
                            out.push((id, view(job)));
                        }
                        out.len() < limit
                    },
                )
            };
            match next {
                Some(resume) => before = resume,
                None => break,
            }
            tokio::task::yield_now().await;
        }
        out
    }
}

/// Whether a job has finished (complete, completed or cancelled), for listings.
pub fn is_finished(view: &JobView) -> bool {
    crate::model::job::is_terminal_label(&view.state)
}
