//! The reference model: what the scheduler and the job lifecycle should do, written as plainly as
//! possible (a list per queue in submission order, a set of cancelled jobs, a map of states) so it
//! can be trusted by reading it. Nothing here is fast and nothing is shared with `flinger`
//! except the `JobId` type.
//!
//! Rules, from Testflinger and the issue:
//! - a submission of an id that is waiting is a duplicate and changes nothing; any other
//!   submission (new, or a job that left its queue) puts the job at the back of its queue;
//! - a pop hands out the best waiting job of the named queues that does not exclude the agent:
//!   highest priority first, then the one submitted (or resubmitted) first; an agent that pops
//!   again while it holds an unreported job it got from one of those queues gets that job again;
//! - cancel: unknown is refused (400, naming it), finished is refused, anything else becomes `cancelled`;
//! - a report moves an unfinished job to the reported phase, never back into its queue;
//!   `complete`/`completed`/`cancelled` are final until the job is resubmitted; a waiting
//!   job leaves its queue by a report only to end (a phase is refused: no agent has it);
//! - position: how many waiting jobs of the same queue would be handed out before it;
//! - an agent that takes a job while another job handed to it is unfinished (out of its
//!   queue, not ended) has left that one: it is lost at once, put back into its queue in
//!   its old place (as `resubmitted`) when it was in `running` or `setup` and not put back
//!   so before (since its last submission), else ended as `cancelled`.

use std::collections::{BTreeMap, HashMap, HashSet};

use flinger::model::JobId;

/// One job as the model sees it.
#[derive(Clone, Debug)]
pub struct MJob {
    pub queue: String,
    pub priority: i64,
    /// Order of the latest (re)submission, global across queues.
    pub order: u64,
    pub exclude: Vec<String>,
    /// The `job_state` label clients see.
    pub state: String,
    /// The agent it was handed to in its current life (`None`: waiting, or popped
    /// without a name).
    pub agent: Option<String>,
    /// Whether an agent that left it made it go back to its queue since its submission.
    pub requeued: bool,
}

impl MJob {
    pub fn waiting(&self) -> bool {
        self.state == "waiting" || self.state == "resubmitted"
    }

    pub fn finished(&self) -> bool {
        ["cancelled", "complete", "completed"].contains(&self.state.as_str())
    }

    pub fn allows(&self, agent: Option<&str>) -> bool {
        agent.is_none_or(|a| !self.exclude.iter().any(|x| x == a))
    }

    /// True when `self` must be handed out before `other`.
    pub fn goes_before(&self, other: &MJob) -> bool {
        self.priority > other.priority
            || (self.priority == other.priority && self.order < other.order)
    }
}

/// What a submission did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// The id was waiting: nothing changed.
    Duplicate,
    /// A new job.
    New,
    /// A known job that had left its queue, queued again.
    Resubmitted,
}

/// What a pop answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Popped {
    /// Nothing for this agent (204).
    Empty,
    /// A waiting job, now running.
    Dispatched(JobId),
    /// The job the agent already holds, again.
    Held(JobId),
}

impl Popped {
    pub fn id(self) -> Option<JobId> {
        match self {
            Popped::Empty => None,
            Popped::Dispatched(id) | Popped::Held(id) => Some(id),
        }
    }
}

/// What a cancel answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    Ok,
    NotFound,
    AlreadyFinished,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Every job ever submitted.
    pub jobs: HashMap<JobId, MJob>,
    /// Ids in order of first submission, so tests can name "the k-th job" deterministically.
    pub known: Vec<JobId>,
    /// Per queue, the waiting jobs in (re)submission order.
    pub queues: BTreeMap<String, Vec<JobId>>,
    /// Jobs whose latest life ended by a cancel.
    pub cancelled: HashSet<JobId>,
    /// Agent -> job it was handed and has not reported on.
    pub holding: HashMap<String, JobId>,
    next_order: u64,
}

impl Model {
    pub fn submit(
        &mut self,
        id: JobId,
        queue: &str,
        priority: i64,
        exclude: &[String],
    ) -> Submitted {
        let outcome = match self.jobs.get(&id) {
            Some(job) if job.waiting() => return Submitted::Duplicate,
            Some(_) => Submitted::Resubmitted,
            None => Submitted::New,
        };
        if outcome == Submitted::New {
            self.known.push(id);
        }
        self.release(id);
        self.cancelled.remove(&id);
        self.jobs.insert(
            id,
            MJob {
                queue: queue.to_owned(),
                priority,
                order: self.next_order,
                exclude: exclude.to_vec(),
                state: if outcome == Submitted::New {
                    "waiting"
                } else {
                    "resubmitted"
                }
                .to_owned(),
                agent: None,
                requeued: false,
            },
        );
        self.next_order += 1;
        self.queues.entry(queue.to_owned()).or_default().push(id);
        outcome
    }

    /// The job a pop of `queues` by `agent` should hand out, ignoring held jobs.
    pub fn best(&self, queues: &[String], agent: Option<&str>) -> Option<JobId> {
        let mut best: Option<JobId> = None;
        for queue in queues {
            for id in self.queues.get(queue).into_iter().flatten() {
                let job = &self.jobs[id];
                if !job.allows(agent) {
                    continue;
                }
                if best.is_none_or(|b| job.goes_before(&self.jobs[&b])) {
                    best = Some(*id);
                }
            }
        }
        best
    }

    /// The job `agent` holds, if it came from one of `queues`.
    pub fn held(&self, queues: &[String], agent: Option<&str>) -> Option<JobId> {
        let id = *self.holding.get(agent?)?;
        queues.contains(&self.jobs[&id].queue).then_some(id)
    }

    pub fn pop(&mut self, queues: &[String], agent: Option<&str>) -> Popped {
        if let Some(id) = self.held(queues, agent) {
            return Popped::Held(id);
        }
        match self.best(queues, agent) {
            Some(id) => {
                self.dispatch(id, agent);
                Popped::Dispatched(id)
            }
            None => Popped::Empty,
        }
    }

    /// Hands `id` (waiting) to `agent`.
    pub fn dispatch(&mut self, id: JobId, agent: Option<&str>) {
        self.unqueue(id);
        let job = self.jobs.get_mut(&id).unwrap();
        job.state = "running".to_owned();
        job.agent = agent.map(str::to_owned);
        let Some(agent) = agent else {
            return;
        };
        self.holding.insert(agent.to_owned(), id);
        let left: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(other, job)| {
                **other != id
                    && job.agent.as_deref() == Some(agent)
                    && !job.waiting()
                    && !job.finished()
            })
            .map(|(other, _)| *other)
            .collect();
        for other in left {
            self.release(other);
            let job = self.jobs.get_mut(&other).unwrap();
            job.agent = None;
            if ["running", "setup"].contains(&job.state.as_str()) && !job.requeued {
                job.state = "resubmitted".to_owned();
                job.requeued = true;
                let queue = job.queue.clone();
                self.queues.entry(queue).or_default().push(other);
            } else {
                job.state = "cancelled".to_owned();
            }
        }
    }

    pub fn cancel(&mut self, id: JobId) -> Cancelled {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Cancelled::NotFound;
        };
        if job.finished() {
            return Cancelled::AlreadyFinished;
        }
        job.state = "cancelled".to_owned();
        self.unqueue(id);
        self.release(id);
        self.cancelled.insert(id);
        Cancelled::Ok
    }

    /// Whether posting `state` for `id` is refused: a phase for a job still waiting.
    pub fn refuses_report(&self, id: JobId, state: &str) -> bool {
        let final_state = ["cancelled", "complete", "completed"].contains(&state);
        self.jobs.get(&id).is_some_and(|job| {
            job.waiting() && !final_state && state != "waiting" && state != "resubmitted"
        })
    }

    /// A posted `job_state`; true when it changed the job.
    pub fn report(&mut self, id: JobId, state: &str) -> bool {
        if self.refuses_report(id, state) {
            return false;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        if job.finished() || job.state == state || state == "waiting" || state == "resubmitted" {
            return false;
        }
        job.state = state.to_owned();
        self.unqueue(id);
        self.release(id);
        true
    }

    /// Jobs ahead of `id` in its queue, or `None` when it is not waiting.
    pub fn position(&self, id: JobId) -> Option<usize> {
        let job = self.jobs.get(&id).filter(|j| j.waiting())?;
        let ahead = self.queues[&job.queue]
            .iter()
            .filter(|other| self.jobs[*other].goes_before(job))
            .count();
        Some(ahead)
    }

    /// The waiting jobs of `queue` in the order they will be handed out.
    pub fn dispatch_order(&self, queue: &str) -> Vec<JobId> {
        let mut ids = self.queues.get(queue).cloned().unwrap_or_default();
        ids.sort_by(|a, b| {
            let (a, b) = (&self.jobs[a], &self.jobs[b]);
            b.priority.cmp(&a.priority).then(a.order.cmp(&b.order))
        });
        ids
    }

    pub fn state(&self, id: JobId) -> Option<&str> {
        self.jobs.get(&id).map(|j| j.state.as_str())
    }

    fn unqueue(&mut self, id: JobId) {
        for ids in self.queues.values_mut() {
            ids.retain(|x| *x != id);
        }
    }

    fn release(&mut self, id: JobId) {
        self.holding.retain(|_, held| *held != id);
    }
}
