//! The actors: thin adapters that own one partition of the model each and talk to the
//! journal, plus the directory of per-queue actors and the RPC helper handlers use.
//!
//! - `supervisor`: spawns and links every other actor, decides what a failure means.
//! - `registry`: jobs and their lifecycle; creates queue actors on first use.
//! - `queue`: one per queue; the waiting order (derived, rebuilt from the registry).
//! - `results`: result documents and logs.
//! - `files`: artifact and attachment files.
//! - `agents`: advertised queues, images and agent records.

pub mod agents;
pub mod files;
pub mod queue;
pub mod registry;
pub mod results;
pub mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{self, Journal, PartSnapshot, Ticket};
use crate::model::Event;
use crate::model::Name;

/// How long a handler waits for an actor's reply before answering 503. Generous: only a
/// wedged actor takes this long (snapshots of millions of jobs take well under it).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `msg` to `actor` and waits for the reply.
pub async fn ask<M, T>(actor: &ActorRef<M>, msg: impl FnOnce(RpcReplyPort<T>) -> M) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(RPC_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(Error::Unavailable(
            "the server is overloaded; try again".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => {
            Err(Error::Unavailable("the server is shutting down".into()))
        }
    }
}

/// Replies if the caller still listens (a dropped HTTP request closes the port).
pub fn reply<T: Send + 'static>(port: RpcReplyPort<T>, value: T) {
    if !port.is_closed() {
        let _ = port.send(value);
    }
}

/// Unix seconds now: the only clock events see (recorded in them, never read in apply).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix microseconds now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What every partition actor uses to record its events and snapshot its partition.
pub struct Recorder {
    /// Where events go.
    journal: Journal,
}

impl Recorder {
    /// A recorder appending to `journal`.
    pub fn new(journal: Journal) -> Recorder {
        Recorder { journal }
    }

    /// Appends `event` to the journal; the caller applies it next. Refused, before
    /// anything changes, when the log cannot take it.
    pub fn append(&mut self, event: &Event) -> Result<Ticket> {
        self.journal.append(event)
    }

    /// The journal (for tickets of earlier records).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// A copy of the partition for a snapshot. Only the copy happens inside the actor's
    /// turn (reference-count bumps and table copies); encoding it, which takes far
    /// longer for millions of jobs, happens later on a blocking thread.
    pub fn snapshot<T>(&self, partition: &T) -> PendingSnapshot
    where
        T: serde::Serialize + Clone + Send + 'static,
    {
        let copy = partition.clone();
        // Only this actor appends this partition's events, and it applies each one in the
        // same turn: so the copy holds every one of them up to the last LSN assigned by
        // anyone so far (an idle partition is thus never behind the log).
        PendingSnapshot {
            lsn: self.journal.last_assigned(),
            encode: Box::new(move || journal::encode_partition(&copy)),
        }
    }
}

/// A partition copied for a snapshot, not encoded yet.
pub struct PendingSnapshot {
    /// Last LSN folded into the copy.
    pub lsn: u64,
    /// Encodes the copy (run it off the async runtime).
    pub encode: Box<dyn FnOnce() -> Result<Vec<u8>> + Send>,
}

impl PendingSnapshot {
    /// Encodes the copy.
    pub fn finish(self) -> Result<PartSnapshot> {
        Ok(PartSnapshot {
            lsn: self.lsn,
            state: (self.encode)()?,
        })
    }
}

/// Queue name → its actor. Written only by the registry actor (which creates queue
/// actors), read by handlers that pop or ask positions.
#[derive(Clone, Default)]
pub struct QueueDirectory(Arc<RwLock<HashMap<Name, ActorRef<queue::QueueMsg>>>>);

impl QueueDirectory {
    /// The actor of `queue`, if it ever had a job.
    pub fn get(&self, queue: &str) -> Option<ActorRef<queue::QueueMsg>> {
        self.0.read().get(queue).cloned()
    }

    /// Number of queue actors.
    pub fn len(&self) -> usize {
        self.0.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }

    fn insert(&self, queue: Name, actor: ActorRef<queue::QueueMsg>) {
        self.0.write().insert(queue, actor);
    }

    fn name_of(&self, id: ractor::ActorId) -> Option<Name> {
        self.0
            .read()
            .iter()
            .find(|(_, a)| a.get_id() == id)
            .map(|(n, _)| n.clone())
    }
}

/// Everything a request handler needs: one shared allocation, so the per-request clone
/// axum makes of its state is a single reference-count increment.
#[derive(Clone)]
pub struct Services(Arc<Handles>);

impl Services {
    /// Shares `handles` with every request.
    pub fn new(handles: Handles) -> Services {
        Services(Arc::new(handles))
    }
}

impl std::ops::Deref for Services {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// The actor references and settings behind [`Services`].
pub struct Handles {
    /// Jobs and lifecycle.
    pub registry: ActorRef<registry::RegistryMsg>,
    /// Results and logs.
    pub results: ActorRef<results::ResultMsg>,
    /// Artifact and attachment files.
    pub files: ActorRef<files::FileMsg>,
    /// Agent-reported data.
    pub agents: ActorRef<agents::AgentMsg>,
    /// Per-queue actors.
    pub queues: QueueDirectory,
    /// To wait for durability before acknowledging.
    pub journal: Journal,
    /// Limits and paths.
    pub config: Arc<Config>,
    /// Where uploaded files live.
    pub files_dir: PathBuf,
    /// Access control: mode, token signer, the access partition.
    pub access: Arc<crate::access::Gate>,
}
