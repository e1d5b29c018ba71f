//! One job's record as the registry keeps and snapshots it ([`Job`]), with the parts it
//! is made of: attachments, the lost-agent finding, and the state's snapshot layout.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::ids::{JobId, Name};
use crate::model::index::{AgentLinks, PartIndex};
use crate::model::job::JobState;
use crate::model::queue::Entry;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The queue it was submitted to.
    #[serde(deserialize_with = "super::decoding::queue")]
    pub queue: Name,
    /// The job document handed to agents verbatim (JSON object text, `job_id` included).
    pub body: Bytes,
    /// `job_priority`: higher is dispatched first.
    pub priority: i64,
    /// Submission order, for FIFO among equal priorities and position.
    pub seq: u64,
    /// `exclude_agents`: agents that must not receive it.
    #[serde(deserialize_with = "super::decoding::exclude")]
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
    /// The job its agent took instead, when it was found lost that way (see
    /// `model::lost::abandoned`); `None` when it was silent past its allowance. Last, with
    /// a default, so older snapshots still decode.
    #[serde(default)]
    pub took: Option<JobId>,
    /// Unix seconds of the dispatch of the run the agent was lost in (`None` in records
    /// written before it was kept): the dashboard's timeline shows it once a requeue
    /// cleared the job's `started_at`.
    #[serde(default)]
    pub dispatched_at: Option<u64>,
    /// The states reported in the run it requeued (the job's own `phases` then start
    /// again for the next run); empty when it ended the job (they stay the job's).
    #[serde(default)]
    pub phases: Vec<(Name, u64)>,
    /// The loss that requeued the job before this one, in the same submission (at most
    /// one: a job is requeued once), so the timeline keeps its first run.
    #[serde(default)]
    pub earlier: Option<Box<Lost>>,
}

impl Lost {
    /// What the server did: `requeued` or `cancelled`.
    pub fn action(&self) -> &'static str {
        if self.requeued {
            "requeued"
        } else {
            "cancelled"
        }
    }

    /// Why, in a sentence (the result's `lost_agent.reason`, the dashboard's note).
    pub fn reason(&self) -> String {
        let action = self.action();
        match self.took {
            Some(took) => format!(
                "the agent took another job ({took}) while this one was unfinished in phase \
                 {:?}, so it had left this one; the server {action} it",
                &*self.phase
            ),
            None => format!(
                "the agent was not heard from about this job for longer than its allowance in \
                 phase {:?}; the server {action} it",
                &*self.phase
            ),
        }
    }
}

impl Job {
    /// Files the job (`id`) in a part of the read indexes being gathered.
    pub fn file(&self, index: &mut PartIndex, id: JobId) {
        let dispatched = self.started_at.zip(self.agent.as_ref());
        let label = self.state.label();
        let mut lost = Vec::new();
        let losses = self
            .lost
            .iter()
            .flat_map(|l| [Some(l), l.earlier.as_deref()]);
        for loss in losses.flatten() {
            if let Some(agent) = &loss.agent {
                lost.push((loss.at, agent));
            }
        }
        let agents = AgentLinks {
            dispatched,
            lost: &lost,
        };
        index.add(
            id,
            self.seq,
            &self.queue,
            label,
            &self.body,
            self.owner.as_ref(),
            agents,
        );
    }

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
