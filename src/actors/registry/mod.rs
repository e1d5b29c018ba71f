//! The registry actor: owns the [`Registry`] partition, decides and records every job
//! lifecycle change, and keeps each queue actor's index in step.
//!
//! Every change follows one path: decide (pure) → journal append (refused when the log
//! cannot take it, before anything changes) → apply (pure) → forward the index change to
//! the queue's actor → reply with the LSN the handler must see durable.
//!
//! Reads do not come here: the partition is [`Shared`] with handlers, which read it
//! through [`Jobs`] (lookups, listings and searches over the registry's indexes, in
//! bounded steps), so no read waits in this actor's mailbox and no read holds up a write.
//!
//! Handlers' requests and queue actors' claims arrive through an inbox beside the
//! mailbox ([`super::Post`], [`super::inbox`]), which every turn takes whole first: the
//! requests that arrive together cost one turn.
//!
//! It also stops queue actors that stayed without waiting jobs for the configured idle
//! time (a new job starts a fresh one), so queue names used once cost nothing later.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

use std::sync::Arc;

use super::inbox::{Inbox, Receiver};
use super::purges::{Purge, Purges};
use super::queue::{Change, Feed, Reserved};
use super::watch::Watch;
use super::{gone, now, reply, PendingSnapshot, QueueDirectory, Recorder, Shared};
use crate::dispatch::Waiters;
use crate::error::{Error, Result};
use crate::journal::{Journal, Ticket};
use crate::model::lost;
use crate::model::queue::QueueIndex;
use crate::model::registry::{IndexChange, Registry, Submission, Submitted, Submitter};
use crate::model::{Event, FastMap, JobId, Name};

mod reads;
use reads::view;
pub use reads::{is_finished, JobDetail, JobView, Jobs, LiveJobs, QueueSummary};

/// The stop reason of a queue actor stopped for being idle (the supervisor expects it).
pub const IDLE_STOP: &str = "idle";
/// Queue names the line about stopped idle queue actors names (the rest are counted).
const IDLE_NAMES_LOGGED: usize = 5;

/// Jobs removed by retention, the LSN of their removal, and the removal from the other
/// partitions, under way until dropped (see `actors::purges`).
pub type Expired = (Vec<JobId>, Ticket, Purge);

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claimed {
    /// The job is the agent's now; answer once the ticket is durable.
    Dispatched(JobView, Ticket),
    /// The agent retried: here is the job it already holds (the candidate stays queued).
    Held(JobView),
    /// The job is no longer dispatchable (cancelled, or taken meanwhile).
    Gone,
    /// Only from a queue actor's visit of a [`Pop`](super::queue::Pop): nothing there
    /// this agent may receive (no claim was made).
    Nothing,
}

/// A claim of a reserved waiting job (see [`RegistryMsg::Claim`]).
pub struct Claim {
    /// The reserved job.
    pub id: JobId,
    /// The popping agent's name (its `agent_name` cookie), if it gave one.
    pub agent: Option<Name>,
    /// The queues it pops from (a job it already holds in one of them is its answer).
    pub queues: Vec<Name>,
    /// The agent's credential (access control on).
    pub client: Option<Name>,
    /// The reservation of the job in its queue, from the queue actor that forwarded the
    /// pop ([`Pop`](super::queue::Pop)): kept (the job left its queue) only when the job
    /// is dispatched; dropping it otherwise gives the job back (claimed, then answered
    /// `Held` or `Gone`, the pop went away, or the claim itself was dropped unhandled).
    pub reserved: Reserved,
    /// The answer.
    pub port: RpcReplyPort<Result<Claimed>>,
}

/// The answer to [`RegistryMsg::Lose`]: the ticket of the recorded `JobLost` and the
/// agent that had the job, `None` when nothing was recorded.
pub type LoseReply = Result<Option<(Ticket, Option<Name>)>>;

/// Messages to the registry.
pub enum RegistryMsg {
    /// Submit (or resubmit) a job; replies with the LSN to await.
    Submit(Submission, RpcReplyPort<Result<Ticket>>),
    /// Submit on behalf of a caller (ownership of resubmissions is checked).
    SubmitBy(Submission, Submitter, RpcReplyPort<Result<Ticket>>),
    /// Dispatch a reserved waiting job to an agent (cookie name, credential) popping from
    /// these queues — unless that agent still holds a job of these queues it has not
    /// reported on (its pop is a retry). The jobs that agent left unfinished are lost in
    /// the same turn, before the answer (see [`Registry::abandoned_by`]).
    Claim(Claim),
    /// Cancel a job.
    Cancel(JobId, RpcReplyPort<Result<Ticket>>),
    /// Delete a job whatever its state (an operator's request): the ticket, `None` when
    /// there is no such job, and the removal of the id's data from the other partitions,
    /// under way until dropped (begun even without a job: the id may have data there).
    Delete(JobId, RpcReplyPort<Result<(Option<Ticket>, Purge)>>),
    /// A `job_state` was posted: whether the job is known, and the ticket of the change
    /// when it changed the lifecycle.
    Report(JobId, Name, RpcReplyPort<Result<(bool, Option<Ticket>)>>),
    /// The job's attachments were stored.
    AttachmentsArrived(JobId, RpcReplyPort<Result<Option<Ticket>>>),
    /// Remove finished jobs that finished before `cutoff`, at most `limit`.
    Expire(u64, usize, RpcReplyPort<Result<Option<Expired>>>),
    /// Stop queue actors that have had no waiting job for at least this long.
    StopIdleQueues(Duration),
    /// A queue actor died: start a new one from the current waiting jobs.
    RespawnQueue(Name),
    /// The job's agent was silent past its allowance: record the decision (`phase` it
    /// was made on, last heard, requeue or end; see `model::lost`). Replies with the
    /// ticket and the agent that had the job, `None` when a report came first.
    Lose {
        /// The job.
        id: JobId,
        /// Its state when decided.
        phase: Name,
        /// Unix seconds the agent was last heard.
        last_heard: u64,
        /// Requeue (else end).
        requeue: bool,
        /// The answer.
        port: RpcReplyPort<LoseReply>,
    },
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
    /// Messages were put in the registry's inbox (handlers' requests, queue actors'
    /// claims: see [`super::Post`]); every turn takes them first, so this message only
    /// wakes the actor.
    Inbox,
}

/// The registry actor (no configuration).
pub struct RegistryActor;

/// Start-up inputs.
pub struct RegistryArgs {
    /// The recovered partition, shared with readers.
    pub registry: Shared<Registry>,
    /// Where events go.
    pub journal: Journal,
    /// Queue actors, shared with handlers.
    pub queues: QueueDirectory,
    /// Parent of the queue actors this actor creates.
    pub supervisor: ActorCell,
    /// Dispatched jobs' last contact: this actor starts watching each job it dispatches.
    pub watch: Arc<Watch>,
    /// Agents waiting for jobs: told whenever a job becomes dispatchable.
    pub waiters: Arc<Waiters>,
    /// Removals under way: begun here, in the turn that records a job's removal, and
    /// checked here by submissions (see `actors::purges`).
    pub purges: Arc<Purges>,
    /// `--max-jobs-bytes`: most job document bytes kept at once (see
    /// `model::index::job_weight`).
    pub max_jobs_bytes: u64,
    /// Most of those one submitter's jobs may take (`--max-jobs-share-percent`, with
    /// access control on; `None`: no share).
    pub max_jobs_share: Option<u64>,
    /// The lost-agent settings: a job whose agent takes another is lost in this turn,
    /// requeued or ended as the rule says (see `model::lost::abandoned`).
    pub lost_rule: lost::Rule,
    /// Where handlers' requests and queue actors' claims wait for the actor's turn
    /// (see [`super::Post`]), beside its mailbox.
    pub inbox: Arc<Inbox<RegistryMsg>>,
}

/// The registry actor's state.
pub struct RegistryState {
    /// The partition this actor owns (the only writer), shared with readers.
    registry: Shared<Registry>,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// Queue actors by queue, for request handlers; this actor is the only writer.
    queues: QueueDirectory,
    /// The same queue actors' feeds, through which this actor tells each of the changes
    /// to its waiting jobs.
    feeds: FastMap<Name, Feed>,
    /// Parent for new queue actors.
    supervisor: ActorCell,
    /// Waiting jobs per queue actor, as told to it (to see which actors are idle).
    waiting: FastMap<Name, usize>,
    /// Queues found without waiting jobs, and since when.
    idle_since: FastMap<Name, Instant>,
    /// See [`RegistryArgs::watch`].
    watch: Arc<Watch>,
    /// See [`RegistryArgs::waiters`].
    waiters: Arc<Waiters>,
    /// See [`RegistryArgs::purges`].
    purges: Arc<Purges>,
    /// See [`RegistryArgs::max_jobs_bytes`].
    max_jobs_bytes: u64,
    /// See [`RegistryArgs::max_jobs_share`].
    max_jobs_share: Option<u64>,
    /// See [`RegistryArgs::lost_rule`].
    lost_rule: lost::Rule,
    /// See [`RegistryArgs::inbox`]. Closed when the actor stops (shutdown, or a failure
    /// the server stops on): what waits in it is dropped, and its askers see the server
    /// shutting down.
    inbox: Receiver<RegistryMsg>,
}

impl RegistryState {
    /// Records and applies `event`, updating the queue index; returns its ticket.
    async fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        let lsn = ticket.lsn();
        let change = self.registry.write().apply(lsn, &event);
        self.unwatch_if_stopped(&event);
        if let Some(change) = change {
            self.route(change).await;
        }
        Ok(ticket)
    }

    /// Records the loss of the jobs the agent of `took` (just dispatched, as `job`) left
    /// unfinished (see [`Registry::abandoned_by`]): the same `JobLost` the watch records,
    /// naming `took`. Returns the last ticket, `None` when there was none. The agent is
    /// not marked offline, as the watch does not for an agent that said it left its job:
    /// it is plainly in service, taking jobs.
    async fn lose_abandoned(&mut self, took: JobId, job: &JobView) -> Result<Option<Ticket>> {
        let Some(agent) = self.registry.read().get(took).and_then(|j| j.agent.clone()) else {
            return Ok(None);
        };
        let decided = self.registry.read().abandoned_by(
            &agent,
            job.client.as_ref(),
            took,
            &self.lost_rule,
            |id| self.watch.last_heard(id),
            now(),
        );
        let mut last = None;
        for event in decided {
            let Event::JobLost {
                id,
                ref phase,
                requeued,
                last_heard,
                ..
            } = event
            else {
                continue;
            };
            let phase = phase.clone();
            last = Some(self.record(event).await?);
            let outcome = if requeued {
                "agent took another job: its unfinished job put back into its queue"
            } else {
                "agent took another job: its unfinished job cancelled"
            };
            // As the watch's line for a lost agent (`server`): names as quoted strings.
            let last_heard = crate::http::wire::iso_z(last_heard);
            tracing::warn!(job = %id, agent = &*agent, state = &*phase, last_heard = %last_heard, took = %took, "{outcome}");
        }
        Ok(last)
    }

    /// 507 when the submission `event` would take the job documents kept past
    /// `--max-jobs-bytes` (a resubmission counts what its new document adds over the one
    /// it replaces; a job to a queue without jobs counts the queue's cost too): waiting
    /// jobs never expire, and one client submitting without end would otherwise exhaust
    /// the memory they are held in.
    fn room_for(&self, event: &Event) -> Result<()> {
        let Event::JobSubmitted {
            id,
            body,
            queue,
            owner,
            ..
        } = event
        else {
            return Ok(());
        };
        use crate::model::index::{job_weight, QUEUE_OVERHEAD};
        let registry = self.registry.read();
        let held = registry.index().weight();
        let replaced = registry.get(*id).map_or(0, |job| job_weight(&job.body));
        let new_queue = if registry.index().has_queue(queue) {
            0
        } else {
            QUEUE_OVERHEAD
        };
        let after = held.saturating_sub(replaced) + job_weight(body) + new_queue;
        if after > self.max_jobs_bytes && after > held {
            return Err(Error::NoSpace(format!(
                "The server holds as many jobs as it may: their documents take {held} bytes, \
                 and this one would take them past the limit of {} (--max-jobs-bytes); \
                 finished jobs make room as retention removes them",
                self.max_jobs_bytes
            )));
        }
        if let Some(share) = self.max_jobs_share {
            let index = registry.index();
            let theirs = index.owner_weight(owner.as_ref());
            let replaced = registry
                .get(*id)
                .filter(|job| job.owner == *owner)
                .map_or(0, |job| job_weight(&job.body));
            // A queue it has no job in yet is charged to it too, as to the server.
            let their_new_queue = if index.owner_in_queue(owner.as_ref(), queue) {
                0
            } else {
                QUEUE_OVERHEAD
            };
            let after = theirs.saturating_sub(replaced) + job_weight(body) + their_new_queue;
            if after > share && after > theirs {
                let whose = crate::model::shares::whose(
                    owner.as_ref(),
                    "jobs",
                    "the jobs submitted without a token",
                );
                return Err(Error::NoSpace(format!(
                    "{whose} take {theirs} bytes (their documents, and {QUEUE_OVERHEAD} for \
                     each queue they are in), and this one would take them past their \
                     share of the server's room for jobs: {share} bytes \
                     (--max-jobs-share-percent of --max-jobs-bytes); finished jobs make room \
                     as retention removes them{}",
                    crate::model::shares::elsewhere(owner.as_ref())
                )));
            }
        }
        Ok(())
    }

    /// 503 when `id`'s removal from the other partitions is under way: a job made with it
    /// now would share the id with what is left of the removed one. The submit handler
    /// waits for the removal first, so only a submission that raced it sees this.
    fn not_under_removal(&self, id: JobId) -> Result<()> {
        if self.purges.contains(id) {
            return Err(Error::Unavailable(format!(
                "job {id} is being removed (deleted or expired): submit it again in a moment"
            )));
        }
        Ok(())
    }

    /// Stops watching the jobs `event` took out of the running states (finished, back in
    /// a queue, deleted), here in the registry's turn: before a requeued job can be handed
    /// out again, so no later dispatch's watch is undone, and at once, so the watch holds
    /// only running jobs.
    fn unwatch_if_stopped(&self, event: &Event) {
        // Nothing watched (no job running, as while only submits arrive): nothing to
        // stop, and no lookup of the job. Only this turn adds to the watch, so it cannot
        // gain a job between this check and the event.
        if self.watch.is_empty() {
            return;
        }
        let id = match event {
            // A submitted job waits (a resubmitted one ran before): no lookup needed.
            Event::JobSubmitted { id, .. } => {
                self.watch.forget(*id);
                return;
            }
            Event::JobCancelled { id, .. }
            | Event::JobStateReported { id, .. }
            | Event::JobDeleted { id, .. }
            | Event::JobLost { id, .. } => *id,
            Event::JobsExpired { ids, .. } => {
                ids.iter().for_each(|id| self.watch.forget(*id));
                return;
            }
            _ => return,
        };
        let active = self
            .registry
            .read()
            .get(id)
            .is_some_and(|job| job.state.is_active());
        if !active {
            self.watch.forget(id);
        }
    }

    async fn route(&mut self, change: IndexChange) {
        match change {
            IndexChange::Insert(queue, entry) => {
                *self.waiting.entry(queue.clone()).or_default() += 1;
                let ready = entry.ready;
                match self.feeds.get(&queue) {
                    Some(feed) => feed.send(Change::Insert(entry)),
                    None => {
                        self.spawn_queue(queue.clone(), QueueIndex::from_entries(vec![entry]))
                            .await
                    }
                }
                // After the queue actor has it: what the woken agent's pop finds there.
                if ready {
                    self.waiters.arrived(&queue);
                }
            }
            IndexChange::Remove(queue, id) => {
                if let Some(n) = self.waiting.get_mut(&queue) {
                    *n = n.saturating_sub(1);
                }
                if let Some(feed) = self.feeds.get(&queue) {
                    feed.send(Change::Remove(id));
                }
            }
            IndexChange::Ready(queue, id) => {
                if let Some(feed) = self.feeds.get(&queue) {
                    feed.send(Change::Ready(id));
                }
                self.waiters.arrived(&queue);
            }
        }
    }

    async fn spawn_queue(&mut self, queue: Name, index: QueueIndex) {
        self.waiting.insert(queue.clone(), index.len());
        match Feed::spawn(index, self.supervisor.clone()).await {
            Ok(feed) => {
                self.queues.insert(queue.clone(), feed.clone());
                self.feeds.insert(queue, feed);
            }
            // Only fails when the actor system is shutting down.
            Err(e) => {
                if let Some(suppressed) = crate::throttle::allow("cannot start queue actor", 0) {
                    tracing::error!(%queue, error = %e, suppressed, "cannot start queue actor");
                }
            }
        }
    }

    /// Stops the queue actors without waiting jobs since at least `idle` ago. Inserts
    /// come only from this actor, so none can reach a stopped actor: the next job of
    /// that queue starts a new one.
    fn stop_idle_queues(&mut self, idle: Duration) {
        let now = Instant::now();
        let mut stop = Vec::new();
        for (queue, &count) in &self.waiting {
            if count > 0 {
                self.idle_since.remove(queue);
                continue;
            }
            let since = *self.idle_since.entry(queue.clone()).or_insert(now);
            if now.duration_since(since) >= idle {
                stop.push(queue.clone());
            }
        }
        // One line per pass, naming a few: a client makes a queue with every job to a new
        // name, so a line per queue would be a line per request it made.
        let mut stopped: Vec<Name> = Vec::new();
        for queue in stop {
            self.waiting.remove(&queue);
            self.idle_since.remove(&queue);
            self.feeds.remove(&queue);
            if let Some(feed) = self.queues.remove(&queue) {
                feed.actor().stop(Some(IDLE_STOP.into()));
                stopped.push(queue);
            }
        }
        if !stopped.is_empty() {
            let mut names = stopped
                .iter()
                .take(IDLE_NAMES_LOGGED)
                .map(|q| format!("{q:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if stopped.len() > IDLE_NAMES_LOGGED {
                names.push_str(&format!(" and {} more", stopped.len() - IDLE_NAMES_LOGGED));
            }
            tracing::debug!(count = stopped.len(), queues = %names, "stopped the actors of idle queues");
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
            feeds: FastMap::default(),
            supervisor: args.supervisor,
            waiting: FastMap::default(),
            idle_since: FastMap::default(),
            watch: args.watch,
            waiters: args.waiters,
            purges: args.purges,
            max_jobs_bytes: args.max_jobs_bytes,
            max_jobs_share: args.max_jobs_share,
            lost_rule: args.lost_rule,
            inbox: Receiver::new(args.inbox),
        };
        // Jobs out with agents when the server stopped: heard now, so each agent has a
        // whole allowance to be heard again (see `model::lost`).
        {
            let registry = state.registry.read();
            let started = now();
            for (id, job) in registry.iter() {
                if matches!(job.state, crate::model::job::JobState::Active(_)) {
                    state.watch.dispatched(id, &job.body, started);
                }
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let waiting = state.registry.read().waiting_indexes(threads);
        for (queue, index) in waiting {
            state.spawn_queue(queue, index).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        // What waits in the inbox came before this message (see `actors::inbox`).
        let mut taken = state.inbox.take();
        for waiting in taken.drain(..) {
            handle_message(state, waiting).await;
        }
        state.inbox.reuse(taken);
        handle_message(state, msg).await;
        Ok(())
    }
}

/// One message's handling, from the mailbox or the inbox.
async fn handle_message(state: &mut RegistryState, msg: RegistryMsg) {
    match msg {
        RegistryMsg::Submit(sub, port) => {
            if gone(&port) {
                return;
            }
            if let Err(e) = state.not_under_removal(sub.id) {
                return reply(port, Err(e));
            }
            let decided = state.registry.read().submit(sub, now());
            let result = match decided {
                Submitted::Duplicate { lsn } => Ok(state.recorder.journal().ticket_for(lsn)),
                Submitted::Record(event) => match state.room_for(&event) {
                    Ok(()) => state.record(event).await,
                    Err(e) => Err(e),
                },
            };
            reply(port, result);
        }
        RegistryMsg::SubmitBy(sub, by, port) => {
            if gone(&port) {
                return;
            }
            if let Err(e) = state.not_under_removal(sub.id) {
                return reply(port, Err(e));
            }
            let decided = state.registry.read().submit_by(sub, &by, now());
            let result = match decided {
                Ok(Submitted::Duplicate { lsn }) => Ok(state.recorder.journal().ticket_for(lsn)),
                Ok(Submitted::Record(event)) => match state.room_for(&event) {
                    Ok(()) => state.record(event).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            reply(port, result);
        }
        RegistryMsg::Claim(Claim {
            id,
            agent,
            queues,
            client,
            reserved,
            port,
        }) => {
            if gone(&port) {
                // Dropping `reserved` gives the job back.
                return;
            }
            let (held, claim) = {
                let registry = state.registry.read();
                let held = agent
                    .as_deref()
                    .and_then(|a| registry.held_by(a))
                    .filter(|(_, job)| queues.contains(&job.queue) && job.client == client)
                    .map(|(_, job)| view(job));
                let claim = registry.claim_by(id, reserved.queue(), agent, client, now());
                (held, claim)
            };
            let result = match (held, claim) {
                (Some(held), _) => Ok(Claimed::Held(held)),
                (None, None) => Ok(Claimed::Gone),
                (None, Some(event)) => {
                    let dispatched = state.record(event).await.map(|ticket| {
                        match state.registry.read().get(id) {
                            Some(job) => {
                                state.watch.dispatched(id, &job.body, now());
                                Claimed::Dispatched(view(job), ticket)
                            }
                            None => Claimed::Gone,
                        }
                    });
                    match dispatched {
                        Ok(Claimed::Dispatched(job, ticket)) => {
                            match state.lose_abandoned(id, &job).await {
                                // The answer waits for the losses too: once the agent has
                                // its new job, its old one reads as lost.
                                Ok(Some(last)) => Ok(Claimed::Dispatched(job, last)),
                                Ok(None) => Ok(Claimed::Dispatched(job, ticket)),
                                Err(e) => Err(e),
                            }
                        }
                        other => other,
                    }
                }
            };
            // A dispatched job left its queue's index (and so its reservation) with
            // the recorded change; any other outcome gives the job back, before the
            // answer, so a pop that follows it finds the job.
            if matches!(result, Ok(Claimed::Dispatched(..))) {
                reserved.keep();
            } else {
                drop(reserved);
            }
            reply(port, result);
        }
        RegistryMsg::Cancel(id, port) => {
            if gone(&port) {
                return;
            }
            let decided = state.registry.read().cancel(id, now());
            let result = match decided {
                Ok(event) => state.record(event).await,
                Err(e) => Err(e),
            };
            reply(port, result);
        }
        RegistryMsg::Delete(id, port) => {
            if gone(&port) {
                return;
            }
            let decided = state.registry.read().delete(id);
            // Begun before the removal is recorded, in this turn: no submission of the
            // id comes between.
            let purge = state.purges.begin(vec![id]);
            let result = match decided {
                Some(event) => state.record(event).await.map(Some),
                None => Ok(None),
            };
            reply(port, result.map(|ticket| (ticket, purge)));
        }
        RegistryMsg::Report(id, label, port) => {
            if gone(&port) {
                return;
            }
            let (known, decided) = {
                let registry = state.registry.read();
                (
                    registry.get(id).is_some(),
                    registry.report(id, &label, now()),
                )
            };
            let result = match decided {
                None => Ok((known, None)),
                Some(event) => state.record(event).await.map(|t| (known, Some(t))),
            };
            reply(port, result);
        }
        RegistryMsg::AttachmentsArrived(id, port) => {
            if gone(&port) {
                return;
            }
            let decided = state.registry.read().attachments_arrived(id);
            let result = match decided {
                Ok(None) => Ok(None),
                Ok(Some(event)) => state.record(event).await.map(Some),
                Err(e) => Err(e),
            };
            reply(port, result);
        }
        RegistryMsg::Expire(cutoff, limit, port) => {
            let ids = state.registry.read().expired(cutoff, limit);
            let result = if ids.is_empty() {
                Ok(None)
            } else {
                let purge = state.purges.begin(ids.clone());
                let event = Event::JobsExpired { ids: ids.clone() };
                state.record(event).await.map(|lsn| Some((ids, lsn, purge)))
            };
            reply(port, result);
        }
        RegistryMsg::StopIdleQueues(idle) => state.stop_idle_queues(idle),
        RegistryMsg::RespawnQueue(queue) => {
            let entries = state
                .registry
                .read()
                .waiting_entries()
                .remove(&queue)
                .unwrap_or_default();
            tracing::warn!(%queue, waiting = entries.len(), "restarting queue actor from the registry");
            let ready = entries.iter().filter(|e| e.ready).count();
            state
                .spawn_queue(queue.clone(), QueueIndex::from_entries(entries))
                .await;
            // Agents that waited while the actor was dead: one wake per ready job.
            for _ in 0..ready.min(state.waiters.len()) {
                state.waiters.arrived(&queue);
            }
        }
        RegistryMsg::Lose {
            id,
            phase,
            last_heard,
            requeue,
            port,
        } => {
            let (decided, agent) = {
                let registry = state.registry.read();
                let agent = registry.get(id).and_then(|j| j.agent.clone());
                (registry.lose(id, &phase, last_heard, requeue, now()), agent)
            };
            let result = match decided {
                None => Ok(None),
                Some(event) => state.record(event).await.map(|t| Some((t, agent))),
            };
            reply(port, result);
        }
        RegistryMsg::Snapshot(port) => {
            let copy = state.registry.read().snapshot_copy();
            reply(port, state.recorder.snapshot_owned(copy));
        }
        // Only wakes the actor: the turn took the inbox first.
        RegistryMsg::Inbox => {}
    }
}
