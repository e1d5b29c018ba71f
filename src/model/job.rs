//! A job's lifecycle: the states it can be in and which changes are allowed.
//!
//! Testflinger keeps the state as a free string (`job_state`) that the server sets for
//! `waiting`, `running` and `cancelled` and the agent sets for everything else. We keep
//! that string, plus the two facts scheduling needs: is the job waiting in its queue, and
//! is the state terminal (sticky).

use std::sync::Arc;

/// The state labels the server itself sets.
pub mod label {
    /// Submitted and waiting in its queue.
    pub const WAITING: &str = "waiting";
    /// Re-submitted after it had left its queue; waiting again (Testflinger's OLD server).
    pub const RESUBMITTED: &str = "resubmitted";
    /// Handed to an agent by a pop.
    pub const RUNNING: &str = "running";
    /// Cancelled by a client. Terminal.
    pub const CANCELLED: &str = "cancelled";
    /// Finished, as agents report it. Terminal.
    pub const COMPLETE: &str = "complete";
    /// Finished, the spelling some tools use. Terminal, treated like `complete`.
    pub const COMPLETED: &str = "completed";
}

/// The phases of a Testflinger job, in the order an agent runs them (upstream's
/// `TestPhase`, `testflinger_common/enums.py`). Log fragments belong to one of them, and
/// log and result responses are keyed by them.
pub const PHASES: &[&str] = &[
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "reserve",
    "cleanup",
];

/// Where a job is in its life. The label is what clients see as `job_state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// In its queue, dispatchable. `resubmitted` only changes the label.
    Waiting {
        /// Whether it was queued again after leaving the queue once.
        resubmitted: bool,
    },
    /// Out of the queue and not finished: `running`, or a phase the agent reported.
    Active(Arc<str>),
    /// `complete`/`completed` (label kept as reported) or `cancelled`. Never changes
    /// again, except by resubmission.
    Finished(Arc<str>),
}

impl JobState {
    /// The `job_state` string clients see.
    pub fn label(&self) -> &str {
        match self {
            JobState::Waiting { resubmitted: false } => label::WAITING,
            JobState::Waiting { resubmitted: true } => label::RESUBMITTED,
            JobState::Active(s) | JobState::Finished(s) => s,
        }
    }

    /// Whether the job sits in its queue.
    pub fn is_waiting(&self) -> bool {
        matches!(self, JobState::Waiting { .. })
    }

    /// Whether the job is out of its queue and not finished: handed to an agent (the
    /// lost-agent watch covers exactly these).
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Active(_))
    }

    /// Whether the state can no longer change (cancelled, complete, completed).
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Finished(_))
    }

    /// Whether `reported` is a phase (not an end) for a job still in its queue: a report
    /// only the agent that took the job can make, which [`JobState::after_report`] ignores.
    pub fn is_phase_before_dispatch(&self, reported: &str) -> bool {
        self.is_waiting()
            && !is_terminal_label(reported)
            && reported != label::WAITING
            && reported != label::RESUBMITTED
    }

    /// The state after an agent (or anyone posting results) reports `reported`; `None`
    /// when the report does not change it.
    ///
    /// Invariant: terminal states are sticky; a report never puts a job back into its
    /// queue (only resubmission does); reporting `waiting` on a job that is not waiting
    /// is ignored rather than pretending it is queued; a waiting job leaves its queue by
    /// a report only to end (a phase would take it out of the queue with no agent to run
    /// it and none to be found lost: stranded for good, as upstream's HEAD leaves it).
    pub fn after_report(&self, reported: &str) -> Option<JobState> {
        if self.is_terminal() || reported == self.label() {
            return None;
        }
        if is_terminal_label(reported) {
            return Some(JobState::Finished(reported.into()));
        }
        if reported == label::WAITING
            || reported == label::RESUBMITTED
            || self.is_phase_before_dispatch(reported)
        {
            return None;
        }
        Some(JobState::Active(reported.into()))
    }
}

/// Whether a reported label ends the job.
pub fn is_terminal_label(reported: &str) -> bool {
    matches!(
        reported,
        label::COMPLETE | label::COMPLETED | label::CANCELLED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting() -> JobState {
        JobState::Waiting { resubmitted: false }
    }

    #[test]
    fn reports_move_a_job_forward_but_never_out_of_a_terminal_state() {
        let running = JobState::Active(label::RUNNING.into());
        assert_eq!(
            running.after_report("provision").unwrap().label(),
            "provision"
        );
        let done = running.after_report("complete").unwrap();
        assert!(done.is_terminal());
        assert_eq!(done.after_report("test"), None);
        assert_eq!(
            JobState::Finished(label::CANCELLED.into()).after_report("complete"),
            None
        );
    }

    #[test]
    fn reporting_waiting_never_requeues() {
        let running = JobState::Active(label::RUNNING.into());
        assert_eq!(running.after_report(label::WAITING), None);
        assert_eq!(waiting().after_report(label::RESUBMITTED), None);
        // Only an end takes a waiting job out of its queue.
        assert_eq!(waiting().after_report("setup"), None);
        assert!(waiting().after_report("cancelled").unwrap().is_terminal());
    }
}
