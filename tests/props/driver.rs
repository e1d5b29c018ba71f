//! The real pure core, driven the way the actors drive it: one `Registry` deciding and folding
//! events, one `QueueIndex` per queue kept in step by the `IndexChange`s the fold returns
//! (`actors/registry.rs` `record`/`route`), and pops following `dispatch::pop` and
//! `actors/queue.rs` `visit`: held job first, then `take` on each named queue in turn,
//! keeping the better of it and the best so far and `release`-ing the other, `claim` the
//! best at the registry, record, and let the fold's `Remove` settle the reservation.
//!
//! Every recorded event also goes into a log and is folded into a separate `State` through
//! `State::apply`, so replay can be compared with the live state at any time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use flinger::model::event::Event;
use flinger::model::queue::{Candidate, QueueIndex};
use flinger::model::registry::{IndexChange, Registry, Submission, Submitted};
use flinger::model::{JobId, Name, State};

use super::model::{Cancelled, Popped};

/// Same bound as `http/jobs.rs`: a pop retries when a cancel took its choice in between.
const MAX_POP_ATTEMPTS: usize = 16;

/// How a pop races a cancel of the job it chose (see `concurrent_cancel_and_pop_have_one_winner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Race {
    /// The cancel is decided and applied between `take` and `claim`: the claim must fail.
    CancelBeforeClaim,
    /// The claim is recorded first, then the cancel (of a running job) is decided.
    ClaimBeforeCancel,
    /// Both are decided while the job waits, then applied cancel first (stale dispatch).
    StaleCancelApplyFirst,
    /// Both are decided while the job waits, then applied dispatch first (stale cancel).
    StaleDispatchApplyFirst,
}

/// What a race did to the job the pop chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaceOutcome {
    /// The job the pop reserved first and the cancel aimed at.
    pub target: Option<JobId>,
    /// What the pop finally answered.
    pub popped: Popped,
    /// What the cancel answered.
    pub cancelled: Option<Cancelled>,
}

#[derive(Clone, Debug, Default)]
pub struct Real {
    pub registry: Registry,
    pub queues: BTreeMap<Name, QueueIndex>,
    /// Every event recorded, with its LSN.
    pub log: Vec<(u64, Event)>,
    /// The same events folded through `State::apply` as they were recorded.
    pub folded: State,
    /// Latest snapshot: LSN and the registry as the server writes it (`rmp_serde::to_vec`).
    pub snapshot: Option<(u64, Vec<u8>)>,
    pub lsn: u64,
    /// The clock events carry (advanced by the harness, never read from the system).
    pub now: u64,
    /// Index changes routed since the last `take_changes`, for properties that count them.
    pub changes: Vec<IndexChange>,
}

impl Real {
    /// Records `event`: log it, fold it into the registry and route the index change.
    pub fn record(&mut self, event: Event) -> u64 {
        self.lsn += 1;
        let lsn = self.lsn;
        self.log.push((lsn, event.clone()));
        let change = self.registry.apply(lsn, &event);
        let folded = self.folded.apply(lsn, &event).index;
        assert_eq!(
            change, folded,
            "the registry and State::apply disagree on {event:?}"
        );
        if let Some(change) = change {
            self.route(change);
        }
        lsn
    }

    /// Records a claim's dispatch of `id`, then, as the registry actor does in the same
    /// turn, the loss of the jobs its agent left unfinished (`Registry::abandoned_by`,
    /// with the server's default rule: requeue once before provisioning).
    fn record_dispatch(&mut self, dispatch: Event, id: JobId) {
        self.record(dispatch);
        let Some(job) = self.registry.get(id) else {
            return;
        };
        let (Some(agent), client) = (job.agent.clone(), job.client.clone()) else {
            return;
        };
        if !job.state.is_active() {
            return;
        }
        let rule = flinger::model::lost::Rule {
            grace: 0,
            requeue: true,
        };
        let lost =
            self.registry
                .abandoned_by(&agent, client.as_ref(), id, &rule, |_| None, self.now);
        for event in lost {
            self.record(event);
        }
    }

    fn route(&mut self, change: IndexChange) {
        self.changes.push(change.clone());
        match change {
            IndexChange::Insert(queue, entry) => {
                self.queues.entry(queue).or_default().insert(entry)
            }
            IndexChange::Remove(queue, id) => {
                if let Some(index) = self.queues.get_mut(&queue) {
                    index.remove(id);
                }
            }
            IndexChange::Ready(queue, id) => {
                if let Some(index) = self.queues.get_mut(&queue) {
                    index.set_ready(id);
                }
            }
        }
    }

    pub fn take_changes(&mut self) -> Vec<IndexChange> {
        std::mem::take(&mut self.changes)
    }

    /// `RegistryMsg::Submit`: `None` for a duplicate, else the recorded LSN.
    pub fn submit(
        &mut self,
        id: JobId,
        queue: &str,
        priority: i64,
        exclude: &[String],
    ) -> Option<u64> {
        let body = serde_json::json!({ "job_id": id.to_string(), "job_queue": queue, "job_priority": priority });
        let exclude: Arc<[Name]> = exclude.iter().map(|a| Name::from(a.as_str())).collect();
        let sub = Submission {
            id,
            queue: queue.into(),
            body: Bytes::from(body.to_string()),
            priority,
            exclude,
            awaits_attachments: false,
        };
        match self.registry.submit(sub, self.now) {
            Submitted::Duplicate { .. } => None,
            Submitted::Record(event) => Some(self.record(event)),
        }
    }

    pub fn cancel(&mut self, id: JobId) -> Cancelled {
        match self.registry.cancel(id, self.now) {
            Ok(event) => {
                self.record(event);
                Cancelled::Ok
            }
            Err(flinger::Error::InvalidInput(_)) => Cancelled::NotFound,
            Err(flinger::Error::Conflict(_)) => Cancelled::AlreadyFinished,
            Err(other) => panic!("cancel of {id}: unexpected error {other:?}"),
        }
    }

    /// A posted `job_state`; true when it changed the lifecycle.
    pub fn report(&mut self, id: JobId, state: &str) -> bool {
        match self.registry.report(id, state, self.now) {
            Some(event) => {
                self.record(event);
                true
            }
            None => false,
        }
    }

    /// `GET /v1/job/<id>/position`: the registry says whether it waits, its queue says where.
    pub fn position(&self, id: JobId) -> Option<usize> {
        let job = self.registry.get(id).filter(|j| j.state.is_waiting())?;
        self.queues.get(&job.queue)?.position(id)
    }

    pub fn pop(&mut self, queues: &[String], agent: Option<&str>) -> Popped {
        self.pop_racing(queues, agent, None).popped
    }

    /// A pop, optionally racing a cancel of the job it chooses first.
    pub fn pop_racing(
        &mut self,
        queues: &[String],
        agent: Option<&str>,
        race: Option<Race>,
    ) -> RaceOutcome {
        let mut outcome = RaceOutcome {
            target: None,
            popped: Popped::Empty,
            cancelled: None,
        };
        if let Some(agent) = agent {
            if let Some((id, job)) = self.registry.held_by(agent) {
                if queues.iter().any(|q| **q == *job.queue) {
                    outcome.popped = Popped::Held(id);
                    return outcome;
                }
            }
        }
        let agent_name: Option<Name> = agent.map(Name::from);
        let mut race = race;
        for _ in 0..MAX_POP_ATTEMPTS {
            // As `actors::queue::visit`: the queues in turn, each keeping the better of its
            // best job for the agent and the best so far reserved, releasing the other.
            let mut kept: Option<(Name, Candidate)> = None;
            for queue in queues {
                let Some(index) = self.queues.get_mut(queue.as_str()) else {
                    continue;
                };
                let Some(mine) = index.take(agent) else {
                    continue;
                };
                match &kept {
                    Some((_, best)) if best.key() < mine.key() => index.release(mine.id),
                    _ => {
                        if let Some((queue, replaced)) = kept.take() {
                            self.queues.get_mut(&queue).unwrap().release(replaced.id);
                        }
                        kept = Some((Name::from(queue.as_str()), mine));
                    }
                }
            }
            let Some((chosen_queue, chosen)) = kept else {
                return outcome;
            };
            let chosen = chosen.id;
            match race.take() {
                None => {}
                Some(Race::CancelBeforeClaim) => {
                    outcome.target = Some(chosen);
                    outcome.cancelled = Some(self.cancel(chosen));
                }
                Some(Race::ClaimBeforeCancel) => {
                    outcome.target = Some(chosen);
                    let claim =
                        self.registry
                            .claim(chosen, &chosen_queue, agent_name.clone(), self.now);
                    let claim =
                        claim.expect("the index reserved a job the registry refuses to dispatch");
                    self.record_dispatch(claim, chosen);
                    outcome.popped = Popped::Dispatched(chosen);
                    outcome.cancelled = Some(self.cancel(chosen));
                    return outcome;
                }
                Some(stale @ (Race::StaleCancelApplyFirst | Race::StaleDispatchApplyFirst)) => {
                    outcome.target = Some(chosen);
                    let claim =
                        self.registry
                            .claim(chosen, &chosen_queue, agent_name.clone(), self.now);
                    let claim =
                        claim.expect("the index reserved a job the registry refuses to dispatch");
                    let cancel = self
                        .registry
                        .cancel(chosen, self.now)
                        .expect("a waiting job can be cancelled");
                    outcome.cancelled = Some(Cancelled::Ok);
                    if stale == Race::StaleDispatchApplyFirst {
                        self.record_dispatch(claim, chosen);
                        self.record(cancel);
                        outcome.popped = Popped::Dispatched(chosen);
                        return outcome;
                    }
                    // The dispatch lands on a cancelled job: the fold must ignore it, and the
                    // pop (which would not have seen it succeed) tries again.
                    self.record(cancel);
                    self.record(claim);
                    self.queues.get_mut(&chosen_queue).unwrap().release(chosen);
                    continue;
                }
            }
            match self
                .registry
                .claim(chosen, &chosen_queue, agent_name.clone(), self.now)
            {
                Some(event) => {
                    // The fold's `Remove` clears the reservation; nothing to release.
                    self.record_dispatch(event, chosen);
                    outcome.popped = Popped::Dispatched(chosen);
                    return outcome;
                }
                // Gone meanwhile: the dropped reservation releases it (a no-op once removed).
                None => self.queues.get_mut(&chosen_queue).unwrap().release(chosen),
            }
        }
        outcome
    }

    /// Serialises the registry and carries on from the deserialised copy.
    pub fn snapshot(&mut self) {
        let bytes = rmp_serde::to_vec(&self.registry).expect("the registry serialises");
        // As the server loads a snapshot: its derived indexes rebuilt.
        self.registry = Registry::decode(&bytes).expect("a snapshot deserialises");
        self.snapshot = Some((self.lsn, bytes));
    }

    /// Start-up: a fresh `State` from the snapshot (if asked and taken) plus the log after it,
    /// queue indexes rebuilt from its waiting jobs.
    pub fn restart(&mut self, from_snapshot: bool) {
        let state = self.replay(from_snapshot);
        self.registry = state.registry.clone();
        self.folded = state;
        self.queues = rebuild_indexes(&self.registry);
    }

    /// Folds the log (after the snapshot, when asked and there is one) into a new `State`.
    pub fn replay(&self, from_snapshot: bool) -> State {
        let mut state = State::default();
        let mut after = 0;
        if let (true, Some((lsn, bytes))) = (from_snapshot, &self.snapshot) {
            state.registry = Registry::decode(bytes).expect("a snapshot deserialises");
            after = *lsn;
        }
        for (lsn, event) in self.log.iter().filter(|(lsn, _)| *lsn > after) {
            state.apply(*lsn, event);
        }
        state
    }

    /// The waiting jobs of every queue, in dispatch order (empty queues left out).
    pub fn index_orders(&self) -> BTreeMap<String, Vec<JobId>> {
        index_orders(&self.queues)
    }
}

pub fn rebuild_indexes(registry: &Registry) -> BTreeMap<Name, QueueIndex> {
    registry
        .waiting_entries()
        .into_iter()
        .map(|(queue, entries)| (queue, QueueIndex::from_entries(entries)))
        .collect()
}

pub fn index_orders(queues: &BTreeMap<Name, QueueIndex>) -> BTreeMap<String, Vec<JobId>> {
    queues
        .iter()
        .map(|(q, index)| {
            (
                q.to_string(),
                index.entries().map(|e| e.id).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

/// Everything observable about a registry, in a form that compares (its maps iterate in
/// random order, so their serialised bytes do not): one line per job, holder, wait sample
/// list and queue of waiting jobs.
pub fn canon(registry: &Registry, agents: &[&str]) -> BTreeMap<String, String> {
    let mut lines = BTreeMap::new();
    for (id, job) in registry.iter() {
        lines.insert(format!("job {id}"), format!("{job:?}"));
    }
    for agent in agents {
        lines.insert(
            format!("held by {agent}"),
            format!("{:?}", registry.held_by(agent).map(|(id, _)| id)),
        );
    }
    for (queue, waits) in registry.waits_all() {
        lines.insert(format!("waits of {queue}"), format!("{waits:?}"));
    }
    for (queue, entries) in registry.waiting_entries() {
        let mut ids: Vec<JobId> = entries.iter().map(|e| e.id).collect();
        ids.sort();
        lines.insert(format!("waiting in {queue}"), format!("{ids:?}"));
    }
    lines
}

/// The first line where two `canon`s differ, as `(key, left, right)`.
pub fn first_difference(
    left: &BTreeMap<String, String>,
    right: &BTreeMap<String, String>,
) -> Option<(String, Option<String>, Option<String>)> {
    left.keys()
        .chain(right.keys())
        .find(|k| left.get(*k) != right.get(*k))
        .map(|k| (k.clone(), left.get(k).cloned(), right.get(k).cloned()))
}

/// Index contents by id, to compare a live index with a rebuilt one slot for slot.
pub fn index_entries(queues: &BTreeMap<Name, QueueIndex>) -> HashMap<JobId, String> {
    queues
        .values()
        .flat_map(|index| index.entries().map(|e| (e.id, format!("{e:?}"))))
        .collect()
}
