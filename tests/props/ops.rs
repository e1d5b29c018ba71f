//! Operations, their random generation, and the runner that applies each one to the real core
//! ([`Real`]) and to the reference model ([`Model`]) side by side.
//!
//! Operations name queues, agents and jobs by small indexes so that shrinking keeps sequences
//! meaningful: "the 3rd job" is whichever job was submitted 3rd (modulo how many exist).
//! Each property is a [`Property`]: it sees the harness before and after every step and asserts
//! its own invariant, so a broken core is reported by the property it breaks.

use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::test_runner::{Config, FileFailurePersistence};

use flinger::model::JobId;

use super::driver::{Race, RaceOutcome, Real};
use super::model::{Cancelled, Model, Popped, Submitted};

pub const QUEUES: &[&str] = &["a", "b", "c"];
pub const AGENTS: &[&str] = &["x", "y", "z"];
/// States agents report, including ones that must be ignored (`waiting`) or are final.
pub const STATES: &[&str] = &[
    "setup",
    "provision",
    "test",
    "complete",
    "completed",
    "waiting",
];
/// Ids clients choose themselves; several submissions may pick the same one.
pub const CLIENT_IDS: &[&str] = &[
    "0123abcd-4567-89ab-cdef-0123456789ab",
    "deadbeef-0000-4000-8000-000000000001",
    "ffffffff-ffff-4fff-bfff-ffffffffffff",
];
/// An id no operation ever submits.
pub const UNKNOWN_ID: &str = "00000000-0000-4000-8000-00000000dead";

/// Where a submission's id comes from.
#[derive(Clone, Debug)]
pub enum IdChoice {
    /// A new id (the server's random one).
    Fresh,
    /// One of [`CLIENT_IDS`].
    Client(usize),
    /// The id of an earlier job (the k-th, modulo), waiting or not.
    Reuse(usize),
}

#[derive(Clone, Debug)]
pub enum Op {
    Submit {
        id: IdChoice,
        queue: usize,
        priority: i64,
        exclude: Vec<usize>,
    },
    /// Many jobs into one queue, to see that volume elsewhere starves nobody.
    Flood {
        queue: usize,
        priority: i64,
        count: usize,
    },
    /// `queues` is a non-empty set in random order.
    Pop {
        queues: Vec<usize>,
        agent: Option<usize>,
    },
    /// `None`: an id nobody submitted.
    Cancel {
        job: Option<usize>,
    },
    /// Submit again a job that left its queue (the k-th such job, modulo); none: skipped.
    Resubmit {
        job: usize,
        queue: usize,
        priority: i64,
    },
    Report {
        job: usize,
        state: usize,
    },
    Position {
        job: Option<usize>,
    },
    /// Serialise the registry and carry on from the copy.
    Snapshot,
    /// Rebuild everything from the log (after the latest snapshot, when asked).
    Restart {
        from_snapshot: bool,
    },
    /// A pop whose chosen job is cancelled concurrently.
    Race {
        queues: Vec<usize>,
        agent: Option<usize>,
        race: Race,
    },
}

/// What one step answered, on both sides.
#[derive(Clone, Debug)]
pub enum Outcome {
    Submit {
        id: JobId,
        real: Option<u64>,
        model: Submitted,
    },
    Flood {
        ids: Vec<JobId>,
    },
    Pop {
        queues: Vec<String>,
        agent: Option<String>,
        real: Popped,
        model: Popped,
    },
    Cancel {
        id: JobId,
        real: Cancelled,
        model: Cancelled,
    },
    Report {
        id: JobId,
        state: String,
        real: bool,
        model: bool,
    },
    Position {
        id: JobId,
        real: Option<usize>,
        model: Option<usize>,
    },
    Race {
        real: RaceOutcome,
        model: Popped,
        model_target: Option<JobId>,
    },
    /// Snapshot, restart, or an operation with nothing to act on.
    Other,
}

/// An invariant checked around every step.
pub trait Property {
    fn before(&mut self, _h: &Harness, _op: &Op) {}
    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome);
}

/// The real core and the model, in step.
#[derive(Clone, Debug, Default)]
pub struct Harness {
    pub real: Real,
    pub model: Model,
    fresh: u64,
}

pub fn id(text: &str) -> JobId {
    JobId::parse(text).expect("a valid id")
}

pub fn names(indexes: &[usize], from: &[&str]) -> Vec<String> {
    indexes
        .iter()
        .map(|&i| from[i % from.len()].to_owned())
        .collect()
}

impl Harness {
    /// The k-th known job (modulo), or the unknown id when there is none.
    pub fn job(&self, k: Option<usize>) -> JobId {
        match k {
            Some(k) if !self.model.known.is_empty() => self.model.known[k % self.model.known.len()],
            _ => id(UNKNOWN_ID),
        }
    }

    fn fresh_id(&mut self) -> JobId {
        self.fresh += 1;
        JobId::parse(&format!("{:032x}", self.fresh)).unwrap()
    }

    fn submit(&mut self, id: JobId, queue: &str, priority: i64, exclude: &[String]) -> Outcome {
        let real = self.real.submit(id, queue, priority, exclude);
        let model = self.model.submit(id, queue, priority, exclude);
        Outcome::Submit { id, real, model }
    }

    pub fn step(&mut self, op: &Op) -> Outcome {
        self.real.now += 1;
        match op {
            Op::Submit {
                id,
                queue,
                priority,
                exclude,
            } => {
                let id = match id {
                    IdChoice::Fresh => self.fresh_id(),
                    IdChoice::Client(k) => self::id(CLIENT_IDS[k % CLIENT_IDS.len()]),
                    IdChoice::Reuse(k) => match self.model.known.len() {
                        0 => self.fresh_id(),
                        n => self.model.known[k % n],
                    },
                };
                self.submit(
                    id,
                    QUEUES[queue % QUEUES.len()],
                    *priority,
                    &names(exclude, AGENTS),
                )
            }
            Op::Flood {
                queue,
                priority,
                count,
            } => {
                let ids: Vec<JobId> = (0..*count).map(|_| self.fresh_id()).collect();
                for id in &ids {
                    self.submit(*id, QUEUES[queue % QUEUES.len()], *priority, &[]);
                }
                Outcome::Flood { ids }
            }
            Op::Pop { queues, agent } => {
                let queues = names(queues, QUEUES);
                let agent = agent.map(|a| AGENTS[a % AGENTS.len()].to_owned());
                let real = self.real.pop(&queues, agent.as_deref());
                let model = self.model.pop(&queues, agent.as_deref());
                Outcome::Pop {
                    queues,
                    agent,
                    real,
                    model,
                }
            }
            Op::Cancel { job } => {
                let id = self.job(*job);
                Outcome::Cancel {
                    id,
                    real: self.real.cancel(id),
                    model: self.model.cancel(id),
                }
            }
            Op::Resubmit {
                job,
                queue,
                priority,
            } => {
                let gone: Vec<JobId> = self
                    .model
                    .known
                    .iter()
                    .copied()
                    .filter(|id| !self.model.jobs[id].waiting())
                    .collect();
                if gone.is_empty() {
                    return Outcome::Other;
                }
                let id = gone[job % gone.len()];
                let exclude = self.model.jobs[&id].exclude.clone();
                self.submit(id, QUEUES[queue % QUEUES.len()], *priority, &exclude)
            }
            Op::Report { job, state } => {
                let id = self.job(Some(*job));
                let state = STATES[state % STATES.len()].to_owned();
                let real = self.real.report(id, &state);
                let model = self.model.report(id, &state);
                Outcome::Report {
                    id,
                    state,
                    real,
                    model,
                }
            }
            Op::Position { job } => {
                let id = self.job(*job);
                Outcome::Position {
                    id,
                    real: self.real.position(id),
                    model: self.model.position(id),
                }
            }
            Op::Snapshot => {
                self.real.snapshot();
                Outcome::Other
            }
            Op::Restart { from_snapshot } => {
                self.real.restart(*from_snapshot);
                Outcome::Other
            }
            Op::Race {
                queues,
                agent,
                race,
            } => {
                let queues = names(queues, QUEUES);
                let agent = agent.map(|a| AGENTS[a % AGENTS.len()].to_owned());
                let real = self.real.pop_racing(&queues, agent.as_deref(), Some(*race));
                let (model, model_target) = self.model_race(&queues, agent.as_deref(), *race);
                Outcome::Race {
                    real,
                    model,
                    model_target,
                }
            }
        }
    }

    /// The model's view of a race: the two operations in the order they took effect.
    fn model_race(
        &mut self,
        queues: &[String],
        agent: Option<&str>,
        race: Race,
    ) -> (Popped, Option<JobId>) {
        if let Some(held) = self.model.held(queues, agent) {
            return (Popped::Held(held), None);
        }
        match race {
            Race::CancelBeforeClaim | Race::StaleCancelApplyFirst => {
                let target = self.model.best(queues, agent);
                if let Some(target) = target {
                    self.model.cancel(target);
                }
                (self.model.pop(queues, agent), target)
            }
            Race::ClaimBeforeCancel | Race::StaleDispatchApplyFirst => {
                let popped = self.model.pop(queues, agent);
                if let Popped::Dispatched(target) = popped {
                    self.model.cancel(target);
                }
                (popped, popped.id())
            }
        }
    }
}

/// Runs `ops` from an empty server, checking `property` around every step.
pub fn run(ops: &[Op], property: &mut impl Property) -> Harness {
    let mut h = Harness::default();
    for op in ops {
        property.before(&h, op);
        let outcome = h.step(op);
        property.after(&h, op, &outcome);
        h.real.take_changes();
    }
    h
}

/// proptest settings: `cases` per property, regressions kept under `tests/`.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/props.txt",
        ))),
        ..Config::default()
    }
}

fn queue_set() -> impl Strategy<Value = Vec<usize>> {
    subsequence((0..QUEUES.len()).collect::<Vec<_>>(), 1..=QUEUES.len()).prop_shuffle()
}

fn agent() -> impl Strategy<Value = Option<usize>> {
    proptest::option::of(0..AGENTS.len())
}

fn race() -> impl Strategy<Value = Race> {
    prop_oneof![
        Just(Race::CancelBeforeClaim),
        Just(Race::ClaimBeforeCancel),
        Just(Race::StaleCancelApplyFirst),
        Just(Race::StaleDispatchApplyFirst),
    ]
}

/// One operation; `race_weight` tunes how often pops race cancels.
pub fn op(race_weight: u32) -> impl Strategy<Value = Op> {
    let id = prop_oneof![
        4 => Just(IdChoice::Fresh),
        1 => (0..CLIENT_IDS.len()).prop_map(IdChoice::Client),
        1 => any::<usize>().prop_map(IdChoice::Reuse),
    ];
    let exclude = proptest::collection::vec(0..AGENTS.len(), 0..=2);
    prop_oneof![
        30 => (id, 0..QUEUES.len(), -2i64..=2, exclude)
            .prop_map(|(id, queue, priority, exclude)| Op::Submit { id, queue, priority, exclude }),
        2 => (0..QUEUES.len(), -2i64..=2, 3usize..12)
            .prop_map(|(queue, priority, count)| Op::Flood { queue, priority, count }),
        25 => (queue_set(), agent()).prop_map(|(queues, agent)| Op::Pop { queues, agent }),
        8 => proptest::option::weighted(0.9, any::<usize>()).prop_map(|job| Op::Cancel { job }),
        5 => (any::<usize>(), 0..QUEUES.len(), -2i64..=2)
            .prop_map(|(job, queue, priority)| Op::Resubmit { job, queue, priority }),
        10 => (any::<usize>(), 0..STATES.len()).prop_map(|(job, state)| Op::Report { job, state }),
        8 => proptest::option::weighted(0.9, any::<usize>()).prop_map(|job| Op::Position { job }),
        2 => Just(Op::Snapshot),
        2 => any::<bool>().prop_map(|from_snapshot| Op::Restart { from_snapshot }),
        race_weight => (queue_set(), agent(), race()).prop_map(|(queues, agent, race)| Op::Race { queues, agent, race }),
    ]
}

pub fn ops(race_weight: u32, max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(race_weight), 1..max_len)
}
