//! The supervisor: starts every actor from the recovered state, links them to itself and
//! decides what a failure means.
//!
//! A queue actor holds only derived state, so when one dies the registry starts a new one
//! from its waiting jobs and service goes on. The registry, result, artifact and agents
//! actors hold the authoritative in-memory state; if one dies (a bug: their handlers do
//! not fail on bad input), its state is no longer trustworthy, so the supervisor reports
//! a fatal error and the server shuts down: on restart, replay rebuilds it from the log.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc::UnboundedSender;

use super::agents::{AgentActor, AgentArgs, AgentMsg};

use super::files::{FileActor, FileArgs, FileMsg};
use super::inbox::Inbox;
use super::registry::{Jobs, RegistryActor, RegistryArgs, RegistryMsg};
use super::results::{ResultActor, ResultArgs, ResultMsg};
use super::webhooks::{Hooks, WebhookActor, WebhookArgs, WebhookMsg};
use super::{reply, OrphanQuota, Post, QueueDirectory, Shared};
use crate::journal::Journal;
use crate::model::registry::Registry;
use crate::model::results::Results;
use crate::model::State;

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// The actor references handlers need.
    Refs(RpcReplyPort<Refs>),
    /// Stop the children (shutdown has begun: their exits are expected).
    Shutdown,
}

/// The partition actors.
#[derive(Clone)]
pub struct Refs {
    /// Jobs, and the inbox beside the registry's mailbox (see [`super::Post`]).
    pub registry: Post<RegistryMsg>,
    /// Results, and the inbox beside the result actor's mailbox.
    pub results: Post<ResultMsg>,
    /// Files.
    pub files: ActorRef<FileMsg>,
    /// Agents.
    pub agents: ActorRef<AgentMsg>,
    /// Job event outboxes.
    pub webhooks: ActorRef<WebhookMsg>,
}

/// Start-up inputs.
pub struct SupervisorArgs {
    /// The recovered state (its registry, results and agents partitions are moved into the
    /// shared handles below).
    pub state: State,
    /// The registry partition, shared with readers.
    pub registry: Shared<Registry>,
    /// The results partition, shared with readers.
    pub results: Shared<Results>,
    /// The agents partition, shared with readers.
    pub agents: Shared<crate::model::agents::Agents>,
    /// Room for data of ids no job has.
    pub orphans: Arc<OrphanQuota>,
    /// Room for attachments (counted by the artifact actor at its start).
    pub attachments: Arc<super::files::AttachmentQuota>,
    /// The journal.
    pub journal: Journal,
    /// The queue directory to fill.
    pub queues: QueueDirectory,
    /// Where uploaded files live.
    pub files: Arc<dyn crate::journal::files::FileStore>,
    /// Where to report a fatal failure (the server shuts down on it).
    pub fatal: UnboundedSender<String>,
    /// Dispatched jobs' last contact (for the registry).
    pub watch: Arc<super::watch::Watch>,
    /// Removals under way (for the registry, which begins them).
    pub purges: Arc<super::purges::Purges>,
    /// The orphan store's files (for the result actor).
    pub store: Arc<super::orphans::Store>,
    /// Agents waiting for jobs (for the registry).
    pub waiters: Arc<crate::dispatch::Waiters>,
    /// The webhooks partition and its worker's state.
    pub hooks: Arc<Hooks>,
    /// Settings (the webhooks worker's limits and receiver credentials).
    pub config: Arc<crate::config::Config>,
}

/// The supervisor actor (no configuration).
pub struct Supervisor;

/// The supervisor's state.
pub struct SupervisorState {
    /// Its children.
    refs: Refs,
    /// The queue directory, to tell which queue a dead queue actor served.
    queues: QueueDirectory,
    /// Fatal failures go here.
    fatal: UnboundedSender<String>,
    /// Set once shutdown began: children stopping is then expected.
    stopping: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let cell = myself.get_cell();
        let State { files, .. } = args.state;
        let agents = args.agents;
        let (registry, results) = (args.registry, args.results);
        let jobs = Jobs::new(registry.clone());
        let inbox = Arc::new(Inbox::default());
        let (registry, _) = Actor::spawn_linked(
            None,
            RegistryActor,
            RegistryArgs {
                registry,
                journal: args.journal.clone(),
                queues: args.queues.clone(),
                supervisor: cell.clone(),
                watch: args.watch.clone(),
                waiters: args.waiters.clone(),
                purges: args.purges.clone(),
                max_jobs_bytes: args.config.max_jobs_bytes,
                max_jobs_share: args.config.share_of(args.config.max_jobs_bytes),
                lost_rule: crate::model::lost::Rule {
                    grace: args.config.lost_agent_grace.as_secs(),
                    requeue: args.config.lost_agent_requeue,
                },
                inbox: inbox.clone(),
            },
            cell.clone(),
        )
        .await?;
        let registry = Post::with_inbox(registry, inbox, || RegistryMsg::Inbox);
        let inbox = Arc::new(Inbox::default());
        let (results, _) = Actor::spawn_linked(
            None,
            ResultActor,
            ResultArgs {
                results,
                journal: args.journal.clone(),
                jobs: jobs.clone(),
                orphans: args.orphans.clone(),
                store: args.store,
                max_job_data: args.config.max_job_data_bytes,
                max_results: args.config.max_results_bytes,
                retention_secs: args.config.retention.as_secs(),
                inbox: inbox.clone(),
            },
            cell.clone(),
        )
        .await?;
        let results = Post::with_inbox(results, inbox, || ResultMsg::Inbox);
        let (files, _) = Actor::spawn_linked(
            None,
            FileActor,
            FileArgs {
                files,
                journal: args.journal.clone(),
                jobs: jobs.clone(),
                orphans: args.orphans,
                store: args.files,
                attachments: args.attachments,
            },
            cell.clone(),
        )
        .await?;
        let (agents, _) = Actor::spawn_linked(
            None,
            AgentActor,
            AgentArgs {
                agents,
                journal: args.journal.clone(),
                per_client: args.config.max_agents_per_client,
            },
            cell.clone(),
        )
        .await?;
        let (webhooks, _) = Actor::spawn_linked(
            None,
            WebhookActor,
            WebhookArgs {
                hooks: args.hooks,
                journal: args.journal.clone(),
                config: args.config,
                jobs,
            },
            cell,
        )
        .await?;
        Ok(SupervisorState {
            refs: Refs {
                registry,
                results,
                files,
                agents,
                webhooks,
            },
            queues: args.queues,
            fatal: args.fatal,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Refs(port) => reply(port, state.refs.clone()),
            SupervisorMsg::Shutdown => state.stopping = true,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            // The registry stops idle queue actors (and has already forgotten them).
            SupervisionEvent::ActorTerminated(_, _, Some(reason))
                if reason == super::registry::IDLE_STOP =>
            {
                return Ok(())
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        if let Some(queue) = state.queues.name_of(id) {
            tracing::error!(%queue, %why, "queue actor died; rebuilding it from the registry");
            let _ = state
                .refs
                .registry
                .actor()
                .cast(RegistryMsg::RespawnQueue(queue));
            return Ok(());
        }
        // Actors are unnamed (ractor names are process-global, and tests run several
        // servers in one process), so say which one it was from the references we hold.
        let refs = &state.refs;
        let name = [
            (refs.registry.actor().get_id(), "registry"),
            (refs.results.actor().get_id(), "results"),
            (refs.files.get_id(), "artifact"),
            (refs.agents.get_id(), "agents"),
            (refs.webhooks.get_id(), "webhooks"),
        ]
        .into_iter()
        .find(|(known, _)| *known == id)
        .map_or_else(|| id.to_string(), |(_, role)| role.to_owned());
        let message = format!("actor {name} {why}; its state cannot be trusted, shutting down (restart recovers from the log)");
        tracing::error!("{message}");
        state.stopping = true;
        let _ = state.fatal.send(message);
        Ok(())
    }
}
