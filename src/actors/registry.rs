//! The registry actor: owns the [`Registry`] partition, decides and records every job
//! lifecycle change, and keeps each queue actor's index in step.
//!
//! Every change follows one path: decide (pure) → journal append (refused when the log
//! cannot take it, before anything changes) → apply (pure) → forward the index change to
//! the queue's actor → reply with the LSN the handler must see durable.

use bytes::Bytes;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::queue::{QueueActor, QueueMsg};
use super::{now, reply, PendingSnapshot, QueueDirectory, Recorder};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::queue::Entry;
use crate::model::registry::{
    Attachments, IndexChange, Registry, Submission, Submitted, Submitter,
};
use crate::model::{Event, JobId, Name};

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
    /// The submitting client (access control on).
    pub owner: Option<Name>,
    /// The credential of the agent it was dispatched to (access control on).
    pub client: Option<Name>,
}

/// Jobs removed by retention and the LSN of their removal.
pub type Expired = (Vec<JobId>, Ticket);

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claimed {
    /// The job is the agent's now; answer once the ticket is durable.
    Dispatched(JobView, Ticket),
    /// The agent retried: here is the job it already holds (the candidate stays queued).
    Held(JobView),
    /// The job is no longer dispatchable (cancelled, or taken meanwhile).
    Gone,
}

/// Messages to the registry.
pub enum RegistryMsg {
    /// Submit (or resubmit) a job; replies with the LSN to await.
    Submit(Submission, RpcReplyPort<Result<Ticket>>),
    /// Submit on behalf of a caller (ownership of resubmissions is checked).
    SubmitBy(Submission, Submitter, RpcReplyPort<Result<Ticket>>),
    /// Dispatch a reserved waiting job to an agent (cookie name, credential) popping from
    /// these queues — unless that agent still holds a job of these queues it has not
    /// reported on (its pop is a retry).
    Claim(
        JobId,
        Option<Name>,
        Vec<Name>,
        RpcReplyPort<Result<Claimed>>,
        Option<Name>,
    ),
    /// The job this agent holds without having reported on it.
    Held(Name, RpcReplyPort<Option<(JobId, JobView)>>),
    /// Cancel a job.
    Cancel(JobId, RpcReplyPort<Result<Ticket>>),
    /// A `job_state` was posted: whether the job is known, and the ticket of the change
    /// when it changed the lifecycle.
    Report(JobId, Name, RpcReplyPort<Result<(bool, Option<Ticket>)>>),
    /// The job's attachments were stored.
    AttachmentsArrived(JobId, RpcReplyPort<Result<Option<Ticket>>>),
    /// Look a job up.
    Get(JobId, RpcReplyPort<Option<JobView>>),
    /// Jobs of a queue (any state), at most `limit`.
    ListQueue(Name, usize, RpcReplyPort<Vec<(JobId, JobView)>>),
    /// Every job matching a predicate, at most `limit`.
    Search(
        Box<dyn Fn(&JobView) -> bool + Send>,
        usize,
        RpcReplyPort<Vec<(JobId, JobView)>>,
    ),
    /// Remove finished jobs that finished before `cutoff`, at most `limit`.
    Expire(u64, usize, RpcReplyPort<Result<Option<Expired>>>),
    /// Recent wait times of the named queues (all queues with data when empty).
    WaitTimes(Vec<String>, RpcReplyPort<Vec<(Name, Vec<u64>)>>),
    /// A queue actor died: start a new one from the current waiting jobs.
    RespawnQueue(Name),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// The registry actor (no configuration).
pub struct RegistryActor;

/// Start-up inputs.
pub struct RegistryArgs {
    /// The recovered partition.
    pub registry: Registry,
    /// Where events go.
    pub journal: Journal,
    /// Queue actors, shared with handlers.
    pub queues: QueueDirectory,
    /// Parent of the queue actors this actor creates.
    pub supervisor: ActorCell,
}

/// The registry actor's state.
pub struct RegistryState {
    /// The partition this actor owns.
    registry: Registry,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// Queue actors; this actor is the only writer.
    queues: QueueDirectory,
    /// Parent for new queue actors.
    supervisor: ActorCell,
}

fn view(job: &crate::model::registry::Job) -> JobView {
    JobView {
        queue: job.queue.clone(),
        body: job.body.clone(),
        state: job.state.label().to_owned(),
        waiting: job.state.is_waiting(),
        seq: job.seq,
        created_at: job.created_at,
        attachments: job.attachments,
        owner: job.owner.clone(),
        client: job.client.clone(),
    }
}

impl RegistryState {
    /// Records and applies `event`, updating the queue index; returns its ticket.
    async fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        let lsn = ticket.lsn();
        if let Some(change) = self.registry.apply(lsn, &event) {
            self.route(change).await;
        }
        Ok(ticket)
    }

    async fn route(&mut self, change: IndexChange) {
        let (queue, msg) = match change {
            IndexChange::Insert(queue, entry) => {
                if self.queues.get(&queue).is_none() {
                    self.spawn_queue(queue, vec![entry]).await;
                    return;
                }
                (queue, QueueMsg::Insert(entry))
            }
            IndexChange::Remove(queue, id) => (queue, QueueMsg::Remove(id)),
            IndexChange::Ready(queue, id) => (queue, QueueMsg::Ready(id)),
        };
        if let Some(actor) = self.queues.get(&queue) {
            let _ = actor.cast(msg);
        }
    }

    async fn spawn_queue(&mut self, queue: Name, entries: Vec<Entry>) {
        match Actor::spawn_linked(None, QueueActor, entries, self.supervisor.clone()).await {
            Ok((actor, _)) => self.queues.insert(queue, actor),
            // Only fails when the actor system is shutting down.
            Err(e) => tracing::error!(%queue, error = %e, "cannot start queue actor"),
        }
    }
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _: ActorRef<RegistryMsg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let mut state = RegistryState {
            registry: args.registry,
            recorder: Recorder::new(args.journal),
            queues: args.queues,
            supervisor: args.supervisor,
        };
        for (queue, entries) in state.registry.waiting_entries() {
            state.spawn_queue(queue, entries).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Submit(sub, port) => {
                let result = match state.registry.submit(sub, now()) {
                    Submitted::Duplicate { lsn } => Ok(state.recorder.journal().ticket_for(lsn)),
                    Submitted::Record(event) => state.record(event).await,
                };
                reply(port, result);
            }
            RegistryMsg::SubmitBy(sub, by, port) => {
                let result = match state.registry.submit_by(sub, &by, now()) {
                    Ok(Submitted::Duplicate { lsn }) => {
                        Ok(state.recorder.journal().ticket_for(lsn))
                    }
                    Ok(Submitted::Record(event)) => state.record(event).await,
                    Err(e) => Err(e),
                };
                reply(port, result);
            }
            RegistryMsg::Claim(id, agent, queues, port, client) => {
                let held = agent
                    .as_deref()
                    .and_then(|a| state.registry.held_by(a))
                    .filter(|(_, job)| queues.contains(&job.queue) && job.client == client)
                    .map(|(_, job)| view(job));
                let result =
                    match (held, state.registry.claim_by(id, agent, client, now())) {
                        (Some(held), _) => Ok(Claimed::Held(held)),
                        (None, None) => Ok(Claimed::Gone),
                        (None, Some(event)) => state.record(event).await.map(|ticket| match state
                            .registry
                            .get(id)
                        {
                            Some(job) => Claimed::Dispatched(view(job), ticket),
                            None => Claimed::Gone,
                        }),
                    };
                reply(port, result);
            }
            RegistryMsg::Held(agent, port) => {
                reply(
                    port,
                    state
                        .registry
                        .held_by(&agent)
                        .map(|(id, job)| (id, view(job))),
                );
            }
            RegistryMsg::Cancel(id, port) => {
                let result = match state.registry.cancel(id, now()) {
                    Ok(event) => state.record(event).await,
                    Err(e) => Err(e),
                };
                reply(port, result);
            }
            RegistryMsg::Report(id, label, port) => {
                let known = state.registry.get(id).is_some();
                let result = match state.registry.report(id, &label, now()) {
                    None => Ok((known, None)),
                    Some(event) => state.record(event).await.map(|t| (known, Some(t))),
                };
                reply(port, result);
            }
            RegistryMsg::AttachmentsArrived(id, port) => {
                let result = match state.registry.attachments_arrived(id) {
                    Ok(None) => Ok(None),
                    Ok(Some(event)) => state.record(event).await.map(Some),
                    Err(e) => Err(e),
                };
                reply(port, result);
            }
            RegistryMsg::Get(id, port) => reply(port, state.registry.get(id).map(view)),
            RegistryMsg::ListQueue(queue, limit, port) => {
                let mut jobs: Vec<(JobId, JobView)> = state
                    .registry
                    .iter()
                    .filter(|(_, j)| j.queue == queue)
                    .map(|(id, j)| (id, view(j)))
                    .collect();
                jobs.sort_by_key(|(_, v)| v.seq);
                jobs.truncate(limit);
                reply(port, jobs);
            }
            RegistryMsg::Search(predicate, limit, port) => {
                let jobs = state
                    .registry
                    .iter()
                    .map(|(id, j)| (id, view(j)))
                    .filter(|(_, v)| predicate(v))
                    .take(limit)
                    .collect();
                reply(port, jobs);
            }
            RegistryMsg::Expire(cutoff, limit, port) => {
                let ids = state.registry.expired(cutoff, limit);
                let result = if ids.is_empty() {
                    Ok(None)
                } else {
                    let event = Event::JobsExpired { ids: ids.clone() };
                    state.record(event).await.map(|lsn| Some((ids, lsn)))
                };
                reply(port, result);
            }
            RegistryMsg::WaitTimes(queues, port) => {
                let samples = if queues.is_empty() {
                    state
                        .registry
                        .waits_all()
                        .map(|(q, w)| (q.clone(), w.iter().copied().collect()))
                        .collect()
                } else {
                    queues
                        .iter()
                        .filter_map(|q| {
                            state
                                .registry
                                .waits(q)
                                .map(|w| (Name::from(q.as_str()), w.iter().copied().collect()))
                        })
                        .collect()
                };
                reply(port, samples);
            }
            RegistryMsg::RespawnQueue(queue) => {
                let entries = state
                    .registry
                    .waiting_entries()
                    .remove(&queue)
                    .unwrap_or_default();
                tracing::warn!(%queue, waiting = entries.len(), "restarting queue actor from the registry");
                state.spawn_queue(queue, entries).await;
            }
            RegistryMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&state.registry));
            }
        }
        Ok(())
    }
}

/// Whether a job has finished (complete, completed or cancelled), for listings.
pub fn is_finished(view: &JobView) -> bool {
    crate::model::job::is_terminal_label(&view.state)
}
