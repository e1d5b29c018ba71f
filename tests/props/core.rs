//! State-machine properties of the pure core (`flinger::model`), no HTTP: random sequences of
//! submit, pop, cancel, resubmit, report, position, snapshot, restart and pop/cancel races run
//! against the real registry and queue indexes (see `driver`) and the reference model, and each
//! test asserts one invariant after every step.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use flinger::model::registry::IndexChange;
use flinger::model::JobId;

use super::driver::{
    canon, first_difference, index_entries, index_orders, rebuild_indexes, Race, Real,
};
use super::model::{Cancelled, Popped, Submitted};
use super::ops::{self, config, run, Harness, Op, Outcome, Property, AGENTS};

/// Cases per property; with 1..80 operations each (about 40 on average), every property
/// runs some 20 000 operations per `cargo test`.
const CASES: u32 = 512;
/// The replay property refolds the whole log after every step (quadratic): fewer cases.
const REPLAY_CASES: u32 = 256;
const MAX_OPS: usize = 80;

/// A waiting job as the registry has it, for checks that must not trust the queue index.
#[derive(Clone, Debug)]
struct Waiting {
    id: JobId,
    queue: String,
    priority: i64,
    /// When it was (re)submitted, counted by the harness: the ground truth of "older", not
    /// the registry's own `seq`.
    order: u64,
    exclude: Vec<String>,
}

impl Waiting {
    fn eligible(&self, queues: &[String], agent: Option<&str>) -> bool {
        queues.contains(&self.queue) && agent.is_none_or(|a| !self.exclude.iter().any(|x| x == a))
    }

    /// Whether `self` is dispatched before `other`: higher priority, then older.
    fn before(&self, other: &Waiting) -> bool {
        (self.priority, std::cmp::Reverse(self.order))
            > (other.priority, std::cmp::Reverse(other.order))
    }
}

fn waiting(h: &Harness) -> Vec<Waiting> {
    h.real
        .registry
        .iter()
        .filter(|(_, j)| j.state.is_waiting())
        .map(|(id, j)| Waiting {
            id,
            queue: j.queue.to_string(),
            priority: j.priority,
            order: h.model.jobs.get(&id).map_or(u64::MAX, |m| m.order),
            exclude: j.exclude.iter().map(|a| a.to_string()).collect(),
        })
        .collect()
}

fn label(real: &Real, id: JobId) -> Option<String> {
    real.registry.get(id).map(|j| j.state.label().to_owned())
}

/// Ids the step (re)submitted, i.e. gave a new life.
fn submitted(outcome: &Outcome) -> Vec<JobId> {
    match outcome {
        Outcome::Submit {
            id, real: Some(_), ..
        } => vec![*id],
        Outcome::Flood { ids } => ids.clone(),
        _ => Vec::new(),
    }
}

/// Jobs the step newly handed to an agent (a held job returned again is not new).
fn dispatched(outcome: &Outcome) -> Option<JobId> {
    match outcome {
        Outcome::Pop {
            real: Popped::Dispatched(id),
            ..
        } => Some(*id),
        Outcome::Race { real, .. } => match real.popped {
            Popped::Dispatched(id) => Some(id),
            _ => None,
        },
        _ => None,
    }
}

fn in_any_index(h: &Harness, id: JobId) -> bool {
    h.real.index_orders().values().any(|ids| ids.contains(&id))
}

// ---- the model and the core agree ---------------------------------------------------------------

struct Agreement;

impl Property for Agreement {
    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        match outcome {
            Outcome::Submit { id, real, model } => {
                assert_eq!(
                    real.is_some(),
                    *model != Submitted::Duplicate,
                    "submit of {id}: {op:?}"
                )
            }
            Outcome::Pop { real, model, .. } => assert_eq!(real, model, "{op:?}"),
            Outcome::Cancel { real, model, .. } => assert_eq!(real, model, "{op:?}"),
            Outcome::Report {
                id,
                state,
                real,
                model,
            } => assert_eq!(real, model, "report {state} on {id}: {op:?}"),
            Outcome::Position { real, model, .. } => assert_eq!(real, model, "{op:?}"),
            Outcome::Race {
                real,
                model,
                model_target,
                ..
            } => {
                assert_eq!(real.popped, *model, "{op:?}");
                assert_eq!(real.target, *model_target, "{op:?}");
            }
            Outcome::Flood { .. } | Outcome::Other => {}
        }
        for id in &h.model.known {
            assert_eq!(
                label(&h.real, *id).as_deref(),
                h.model.state(*id),
                "state of {id} after {op:?}"
            );
        }
        let model_orders: BTreeMap<String, Vec<JobId>> = h
            .model
            .queues
            .keys()
            .map(|q| (q.clone(), h.model.dispatch_order(q)))
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        assert_eq!(
            h.real.index_orders(),
            model_orders,
            "queue orders after {op:?}"
        );
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Every answer and every job state of the core equals the reference model's, after every
    /// step.
    #[test]
    fn the_core_agrees_with_the_reference_model(ops in ops::ops(4, MAX_OPS)) {
        run(&ops, &mut Agreement);
    }
}

// ---- at most once --------------------------------------------------------------------------------

#[derive(Default)]
struct AtMostOnce {
    /// Handed out in its current life.
    handed: HashSet<JobId>,
    waiting_before: HashSet<JobId>,
}

impl Property for AtMostOnce {
    fn before(&mut self, h: &Harness, _: &Op) {
        self.waiting_before = waiting(h).into_iter().map(|w| w.id).collect();
    }

    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        if let Some(id) = dispatched(outcome) {
            assert!(
                self.waiting_before.contains(&id),
                "{id} was handed out but was not waiting: {op:?}"
            );
            assert!(
                self.handed.insert(id),
                "{id} was handed out twice in one life: {op:?}"
            );
        }
        let dispatches = h
            .real
            .changes
            .iter()
            .filter(|c| matches!(c, IndexChange::Remove(..)))
            .count();
        assert!(
            dispatches <= 1 || matches!(op, Op::Race { .. }),
            "one step removed {dispatches} jobs: {op:?}"
        );
        for id in submitted(outcome) {
            self.handed.remove(&id);
        }
        // A job put back into its queue because its agent took another starts a new life.
        self.handed.retain(|id| {
            h.real
                .registry
                .get(*id)
                .is_none_or(|j| !j.state.is_waiting())
        });
        // A held job comes back only to the agent that has it, and only while it runs.
        if let Outcome::Pop {
            real: Popped::Held(id),
            ..
        } = outcome
        {
            assert!(
                self.handed.contains(id),
                "{id} returned as held but never handed out: {op:?}"
            );
            assert_eq!(
                label(&h.real, *id).as_deref(),
                Some("running"),
                "held {id}: {op:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// A job is handed to an agent at most once per (re)submission, and only while it waits;
    /// a retried pop of the same agent gets the job it already holds, never a second one.
    #[test]
    fn a_job_is_handed_out_at_most_once(ops in ops::ops(4, MAX_OPS)) {
        run(&ops, &mut AtMostOnce::default());
    }
}

// ---- cancellation --------------------------------------------------------------------------------

#[derive(Default)]
struct NeverAfterCancel {
    cancelled: HashSet<JobId>,
    was_waiting: HashSet<JobId>,
}

impl Property for NeverAfterCancel {
    fn before(&mut self, h: &Harness, _: &Op) {
        self.was_waiting = waiting(h).into_iter().map(|w| w.id).collect();
    }

    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        let handed = match outcome {
            Outcome::Pop { real, .. } => real.id(),
            Outcome::Race { real, .. } => real.popped.id(),
            _ => None,
        };
        if let Some(id) = handed {
            assert!(
                !self.cancelled.contains(&id),
                "cancelled job {id} handed out: {op:?}"
            );
        }
        let mut newly = Vec::new();
        match outcome {
            Outcome::Cancel { id, real, model } => {
                assert_eq!(real, model, "cancel of {id}");
                if *real == Cancelled::Ok {
                    newly.push(*id);
                }
            }
            Outcome::Race { real, .. } if real.cancelled == Some(Cancelled::Ok) => {
                newly.extend(real.target)
            }
            _ => {}
        }
        for id in newly {
            assert_eq!(label(&h.real, id).as_deref(), Some("cancelled"), "{op:?}");
            assert!(!in_any_index(h, id), "cancelled {id} still queued: {op:?}");
            assert_eq!(
                h.real.position(id),
                None,
                "cancelled {id} has a position: {op:?}"
            );
            if self.was_waiting.contains(&id) {
                let removed = h.real.changes.iter().any(|c| {
                    *c == IndexChange::Remove(h.real.registry.get(id).unwrap().queue.clone(), id)
                });
                assert!(
                    removed,
                    "cancelling waiting {id} did not remove it from its queue: {op:?}"
                );
            }
            self.cancelled.insert(id);
        }
        for id in submitted(outcome) {
            self.cancelled.remove(&id);
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// A cancelled job is never handed out (until resubmitted); cancelling a waiting job takes
    /// it out of its queue.
    #[test]
    fn cancelled_jobs_are_never_handed_out(ops in ops::ops(8, MAX_OPS)) {
        run(&ops, &mut NeverAfterCancel::default());
    }
}

// ---- terminal states -----------------------------------------------------------------------------

#[derive(Default)]
struct Sticky {
    finished: HashMap<JobId, (String, Option<u64>)>,
}

impl Property for Sticky {
    fn before(&mut self, h: &Harness, _: &Op) {
        self.finished = h
            .real
            .registry
            .iter()
            .filter(|(_, j)| j.state.is_terminal())
            .map(|(id, j)| (id, (j.state.label().to_owned(), j.finished_at)))
            .collect();
    }

    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        let renewed = submitted(outcome);
        for (id, (label, finished_at)) in &self.finished {
            let job = h
                .real
                .registry
                .get(*id)
                .unwrap_or_else(|| panic!("finished {id} vanished: {op:?}"));
            if renewed.contains(id) {
                assert!(
                    job.state.is_waiting(),
                    "resubmitted {id} is not waiting: {op:?}"
                );
                continue;
            }
            assert_eq!(
                job.state.label(),
                label,
                "finished {id} changed state: {op:?}"
            );
            assert_eq!(
                job.finished_at, *finished_at,
                "finished {id} changed finish time: {op:?}"
            );
        }
        match outcome {
            Outcome::Report { id, real, .. } if self.finished.contains_key(id) => {
                assert!(!real, "a report changed finished {id}: {op:?}")
            }
            Outcome::Cancel { id, real, .. } if self.finished.contains_key(id) => {
                assert_eq!(
                    *real,
                    Cancelled::AlreadyFinished,
                    "cancel of finished {id}: {op:?}"
                )
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// `cancelled`, `complete` and `completed` never change (reports and cancels are refused)
    /// until the job is resubmitted.
    #[test]
    fn terminal_states_never_change(ops in ops::ops(4, MAX_OPS)) {
        run(&ops, &mut Sticky::default());
    }
}

// ---- the best eligible job -----------------------------------------------------------------------

#[derive(Default)]
struct Best {
    waiting: Vec<Waiting>,
}

impl Property for Best {
    fn before(&mut self, h: &Harness, _: &Op) {
        self.waiting = waiting(h);
    }

    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        let Outcome::Pop {
            queues,
            agent,
            real,
            model,
        } = outcome
        else {
            return;
        };
        let eligible: Vec<&Waiting> = self
            .waiting
            .iter()
            .filter(|w| w.eligible(queues, agent.as_deref()))
            .collect();
        let best = eligible
            .iter()
            .copied()
            .reduce(|a, b| if b.before(a) { b } else { a });
        match real {
            Popped::Dispatched(id) => {
                let job = h.real.registry.get(*id).unwrap();
                assert!(
                    queues.iter().any(|q| **q == *job.queue),
                    "{id} is from another queue: {op:?}"
                );
                if let Some(agent) = agent {
                    assert!(
                        !job.exclude.iter().any(|x| **x == **agent),
                        "{id} excludes {agent}: {op:?}"
                    );
                }
                assert_eq!(
                    Some(*id),
                    best.map(|w| w.id),
                    "not the best eligible job: {op:?}"
                );
            }
            Popped::Empty => assert!(
                best.is_none(),
                "204 while {:?} waits: {op:?}",
                best.map(|w| w.id)
            ),
            Popped::Held(_) => {}
        }
        assert_eq!(real, model, "{op:?}");
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// A pop returns the best eligible job across the named queues (highest priority, then
    /// oldest), never one whose `exclude_agents` names the agent, and never 204 while an
    /// eligible job waits.
    #[test]
    fn pop_returns_the_best_eligible_job(ops in ops::ops(1, MAX_OPS)) {
        run(&ops, &mut Best::default());
    }
}

// ---- fairness ------------------------------------------------------------------------------------

#[derive(Default)]
struct Fair {
    waiting: Vec<Waiting>,
    /// Pops of the same queues against copies of the state before the step: other orders of
    /// the `queue` parameters, and a flood of low-priority jobs.
    alternatives: Vec<(String, Popped)>,
}

impl Property for Fair {
    fn before(&mut self, h: &Harness, op: &Op) {
        self.waiting = waiting(h);
        self.alternatives.clear();
        let Op::Pop { queues, agent } = op else {
            return;
        };
        let queues = ops::names(queues, ops::QUEUES);
        let agent = agent.map(|a| AGENTS[a % AGENTS.len()]);
        let mut orders = vec![queues.iter().rev().cloned().collect::<Vec<_>>()];
        for shift in 1..queues.len() {
            let mut rotated = queues.clone();
            rotated.rotate_left(shift);
            orders.push(rotated);
        }
        for order in orders {
            let mut copy = h.real.clone();
            self.alternatives.push((
                format!("queues in order {order:?}"),
                copy.pop(&order, agent),
            ));
        }
        // Later jobs of the lowest priority, in every queue, must not change the choice
        // (unless nothing was eligible: then one of them is the answer).
        let mut copy = h.real.clone();
        for (n, queue) in ops::QUEUES.iter().cycle().take(30).enumerate() {
            let id = JobId::parse(&format!("f1000d{n:026x}")).unwrap();
            copy.submit(id, queue, -3, &[]);
        }
        let flooded = copy.pop(&queues, agent);
        self.alternatives
            .push(("after a flood of later low-priority jobs".into(), flooded));
    }

    fn after(&mut self, _: &Harness, op: &Op, outcome: &Outcome) {
        let Outcome::Pop {
            queues,
            agent,
            real,
            ..
        } = outcome
        else {
            return;
        };
        let agent = agent.as_deref();
        if let Popped::Dispatched(id) = real {
            let chosen = self
                .waiting
                .iter()
                .find(|w| w.id == *id)
                .expect("dispatched job was waiting");
            for w in self.waiting.iter().filter(|w| w.eligible(queues, agent)) {
                assert!(
                    !w.before(chosen),
                    "{} (priority {}, order {}) passed over for {id} (priority {}, order {}): {op:?}",
                    w.id,
                    w.priority,
                    w.order,
                    chosen.priority,
                    chosen.order
                );
            }
        }
        if *real == Popped::Empty {
            let starved: Vec<JobId> = self
                .waiting
                .iter()
                .filter(|w| w.eligible(queues, agent))
                .map(|w| w.id)
                .collect();
            assert!(starved.is_empty(), "204 while {starved:?} wait: {op:?}");
        }
        for (what, alternative) in &self.alternatives {
            match (real, alternative) {
                (Popped::Empty, Popped::Dispatched(_)) if what.contains("flood") => {}
                _ => assert_eq!(
                    alternative, real,
                    "{what} the pop answered differently: {op:?}"
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Fairness: no waiting job is passed over, by a pop it is eligible for, in favour of a
    /// job of lower priority or of equal priority submitted later; neither the order of the
    /// `queue` parameters nor volume on other queues changes what a pop returns.
    #[test]
    fn no_eligible_job_is_passed_over(ops in ops::ops(1, MAX_OPS)) {
        run(&ops, &mut Fair::default());
    }
}

// ---- position ------------------------------------------------------------------------------------

struct Position;

impl Property for Position {
    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        if let Outcome::Position { id, real, model } = outcome {
            assert_eq!(real, model, "position of {id}: {op:?}");
        }
        let all = waiting(h);
        for w in &all {
            let ahead = all
                .iter()
                .filter(|o| o.queue == w.queue && o.before(w))
                .count();
            assert_eq!(
                h.real.position(w.id),
                Some(ahead),
                "position of {} after {op:?}",
                w.id
            );
            assert_eq!(
                h.model.position(w.id),
                Some(ahead),
                "model position of {} after {op:?}",
                w.id
            );
        }
        for id in &h.model.known {
            if !all.iter().any(|w| w.id == *id) {
                assert_eq!(
                    h.real.position(*id),
                    None,
                    "{id} is not waiting but has a position: {op:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// A waiting job's position is the number of waiting jobs of its queue that a pop would
    /// hand out before it; a job that does not wait has none.
    #[test]
    fn position_counts_the_jobs_ahead(ops in ops::ops(2, MAX_OPS)) {
        run(&ops, &mut Position);
    }
}

// ---- replay --------------------------------------------------------------------------------------

struct Replay;

#[track_caller]
fn assert_same(
    live: &BTreeMap<String, String>,
    other: &BTreeMap<String, String>,
    what: &str,
    op: &Op,
) {
    if let Some((key, live, other)) = first_difference(live, other) {
        panic!("{what} diverged after {op:?} at {key}:\n  live:   {live:?}\n  replay: {other:?}");
    }
}

impl Property for Replay {
    fn after(&mut self, h: &Harness, op: &Op, _: &Outcome) {
        let live = canon(&h.real.registry, AGENTS);
        assert_same(
            &live,
            &canon(&h.real.folded.registry, AGENTS),
            "State::apply",
            op,
        );
        assert_same(
            &live,
            &canon(&h.real.replay(false).registry, AGENTS),
            "replay of the whole log",
            op,
        );
        if h.real.snapshot.is_some() {
            assert_same(
                &live,
                &canon(&h.real.replay(true).registry, AGENTS),
                "snapshot + tail",
                op,
            );
        }
        let rebuilt = rebuild_indexes(&h.real.registry);
        assert_eq!(
            index_orders(&rebuilt),
            h.real.index_orders(),
            "rebuilt queue order differs after {op:?}"
        );
        assert_eq!(
            index_entries(&rebuilt),
            index_entries(&h.real.queues),
            "rebuilt entries differ after {op:?}"
        );
    }
}

proptest! {
    #![proptest_config(config(REPLAY_CASES))]

    /// Replaying the event log from scratch, or from the latest snapshot plus the events after
    /// it, rebuilds exactly the live registry, and queue indexes rebuilt from it match the live
    /// ones slot for slot; a restart from either carries on identically.
    #[test]
    fn replay_rebuilds_the_live_state(ops in ops::ops(4, MAX_OPS)) {
        run(&ops, &mut Replay);
    }
}

// ---- pop against cancel --------------------------------------------------------------------------

struct OneWinner;

impl Property for OneWinner {
    fn after(&mut self, h: &Harness, op: &Op, outcome: &Outcome) {
        let Outcome::Race {
            real,
            model,
            model_target,
            ..
        } = outcome
        else {
            return;
        };
        let Op::Race { race, .. } = op else {
            unreachable!()
        };
        assert_eq!(real.target, *model_target, "{op:?}");
        assert_eq!(real.popped, *model, "{op:?}");
        let Some(target) = real.target else {
            return;
        };
        let job = h.real.registry.get(target).unwrap();
        let removals = h
            .real
            .changes
            .iter()
            .filter(|c| matches!(c, IndexChange::Remove(_, id) if *id == target))
            .count();
        assert_eq!(
            removals, 1,
            "{target} left its queue {removals} times: {op:?}"
        );
        assert!(!in_any_index(h, target), "{target} still queued: {op:?}");
        assert_eq!(job.state.label(), "cancelled", "{op:?}");
        match race {
            Race::CancelBeforeClaim | Race::StaleCancelApplyFirst => {
                assert_eq!(
                    real.cancelled,
                    Some(Cancelled::Ok),
                    "the cancel must win: {op:?}"
                );
                assert_ne!(
                    real.popped,
                    Popped::Dispatched(target),
                    "cancelled {target} was handed out: {op:?}"
                );
                assert_eq!(
                    job.started_at, None,
                    "cancelled {target} was dispatched too: {op:?}"
                );
            }
            Race::ClaimBeforeCancel | Race::StaleDispatchApplyFirst => {
                assert_eq!(
                    real.popped,
                    Popped::Dispatched(target),
                    "the pop must win: {op:?}"
                );
                assert!(job.started_at.is_some(), "{op:?}");
                // The cancel of a running job stands, but it was no longer a waiting job.
                assert_eq!(real.cancelled, Some(Cancelled::Ok), "{op:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// A pop and a cancel of the same waiting job: exactly one takes it out of the queue. A
    /// cancel between the pop's reservation and its claim makes the claim fail (the pop moves
    /// on to the next job); a claim first hands the job out and the cancel then ends it; a
    /// dispatch decided before a cancel but applied after it changes nothing.
    #[test]
    fn concurrent_cancel_and_pop_have_one_winner(ops in ops::ops(25, MAX_OPS)) {
        run(&ops, &mut OneWinner);
    }
}
