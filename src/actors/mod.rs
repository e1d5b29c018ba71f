//! The actors: thin adapters that own one partition of the model each and talk to the
//! journal, plus the directory of per-queue actors and the RPC helper handlers use.
//!
//! - `supervisor`: spawns and links every other actor, decides what a failure means.
//! - `registry`: jobs and their lifecycle; creates queue actors on first use.
//! - `queue`: one per queue; the waiting order (derived, rebuilt from the registry).
//! - `results`: result documents and logs; `reads`: reading them without the actor.
//! - `files`: artifact and attachment files.
//! - `orphans`: the files holding results and logs of ids no job has (no actor: the
//!   result actor decides, handlers move the bytes).
//! - `agents`: advertised queues, images and agent records.
//! - `watch`: when each dispatched job's agent was last heard (lost-agent recovery).
//! - `purges`: ids whose removal from the partitions is under way (deletion, retention);
//!   a submission of one waits until it is done.
//! - `webhooks`: job events posted by agents and their delivery to the job's webhook.

pub mod agents;
pub mod files;
pub mod inbox;
pub mod orphans;
pub mod purges;
pub mod queue;
pub mod reads;
pub mod registry;
pub mod results;
pub mod supervisor;
pub mod watch;
pub mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{Journal, Ticket};
use crate::model::Event;
use crate::model::{FastMap, Name};
use inbox::{Inbox, Put};

/// A partition shared with readers: its actor is the only writer and holds the write
/// lock only while it applies an event; handlers read it directly, holding the read lock
/// only for bounded steps, so a read never queues behind writes in a mailbox and a long
/// read never holds up a write.
pub type Shared<T> = Arc<RwLock<T>>;

/// Something [`ask`] can send to: an actor, or an actor behind a [`Door`].
pub trait Callee<M: ractor::Message> {
    /// The actor.
    fn actor(&self) -> &ActorRef<M>;
    /// Admission: a pass held while the request is in flight, or a refusal.
    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>>;
    /// Sends `msg` (to the mailbox, or the inbox beside it: see [`Post`]); a message to
    /// an actor that has stopped is dropped, and with it any reply port in it.
    fn send(&self, msg: M) {
        let _ = self.actor().cast(msg);
    }
}

impl<M: ractor::Message> Callee<M> for ActorRef<M> {
    fn actor(&self) -> &ActorRef<M> {
        self
    }
    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>> {
        Ok(None)
    }
}

/// Where messages to an actor go: its ractor mailbox, or an [`Inbox`] beside it that
/// every turn of the actor takes first, woken by the message `wake` makes (see
/// [`inbox`]). The registry takes handlers' requests and queue actors' claims this
/// way: those that arrive together cost it one turn.
pub struct Post<M: ractor::Message> {
    actor: ActorRef<M>,
    inbox: Option<Beside<M>>,
}

/// An inbox beside an actor's mailbox, and the message that wakes the actor.
type Beside<M> = (Arc<Inbox<M>>, fn() -> M);

impl<M: ractor::Message> Clone for Post<M> {
    fn clone(&self) -> Self {
        Post {
            actor: self.actor.clone(),
            inbox: self.inbox.clone(),
        }
    }
}

impl<M: ractor::Message> From<ActorRef<M>> for Post<M> {
    /// Messages go to the mailbox.
    fn from(actor: ActorRef<M>) -> Self {
        Post { actor, inbox: None }
    }
}

impl<M: ractor::Message> Post<M> {
    /// Messages go to `inbox`, which `actor` takes at the start of every turn; `wake`
    /// makes the message that wakes it when no wake-up is on its way.
    pub fn with_inbox(actor: ActorRef<M>, inbox: Arc<Inbox<M>>, wake: fn() -> M) -> Self {
        Post {
            actor,
            inbox: Some((inbox, wake)),
        }
    }

    /// The actor (messages sent to it directly go to its mailbox, and are handled after
    /// what waits in the inbox).
    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// Sends `msg`; see [`Callee::send`].
    pub fn send(&self, msg: M) {
        match &self.inbox {
            None => {
                let _ = self.actor.cast(msg);
            }
            Some((inbox, wake)) => {
                if let Put::Wake = inbox.put(msg, true, usize::MAX) {
                    let _ = self.actor.cast(wake());
                }
            }
        }
    }
}

impl<M: ractor::Message> Callee<M> for Post<M> {
    fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }
    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>> {
        Ok(None)
    }
    fn send(&self, msg: M) {
        Post::send(self, msg)
    }
}

/// An actor with a bounded number of requests from handlers in flight (waiting in its
/// mailbox or inbox, or being handled): beyond it a request is refused at the door with 503
/// *before* it is sent, so a 503 always means "not done". A request that was let in is
/// waited for without a timeout: it either completes and is answered, or (when its
/// client went away first) is skipped by the actor unapplied.
pub struct Door<M: ractor::Message> {
    /// The actor, and where messages to it go.
    post: Post<M>,
    /// One permit per request in flight.
    room: Arc<Semaphore>,
    /// Its role, for the refusal message.
    name: &'static str,
}

impl<M: ractor::Message> Door<M> {
    /// `actor` (or its [`Post`]), letting at most `capacity` handler requests in at once.
    pub fn new(actor: impl Into<Post<M>>, capacity: usize, name: &'static str) -> Door<M> {
        Door {
            post: actor.into(),
            room: Arc::new(Semaphore::new(capacity.max(1))),
            name,
        }
    }
}

impl<M: ractor::Message> Door<M> {
    /// Where messages to the actor go, for those who send it requests on a handler's
    /// behalf (a queue actor forwarding a pop's claim).
    pub fn post(&self) -> &Post<M> {
        &self.post
    }
}

impl<M: ractor::Message> std::ops::Deref for Door<M> {
    type Target = ActorRef<M>;
    fn deref(&self) -> &ActorRef<M> {
        &self.post.actor
    }
}

impl<M: ractor::Message> Callee<M> for Door<M> {
    fn actor(&self) -> &ActorRef<M> {
        &self.post.actor
    }
    fn send(&self, msg: M) {
        self.post.send(msg)
    }
    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>> {
        match self.room.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(Error::Unavailable(format!(
                "the server is busy: the {} has its maximum of pending requests (--max-pending); nothing was done, try again",
                self.name
            ))),
        }
    }
}

/// Sends `msg` to `actor` and waits for the reply: refused (503, nothing sent) when the
/// actor's door is full; never timed out once sent (see [`Door`]).
pub async fn ask<M, T>(actor: &impl Callee<M>, msg: impl FnOnce(RpcReplyPort<T>) -> M) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let pass = actor.admit()?;
    ask_admitted(actor, pass, msg).await
}

/// [`ask`] for a request already let in (`pass` from [`Callee::admit`]): a handler
/// that changes two partitions takes both passes first, so a refusal leaves both
/// untouched.
pub async fn ask_admitted<M, T>(
    actor: &impl Callee<M>,
    pass: Option<OwnedSemaphorePermit>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let _pass = pass;
    let (port, answer) = ractor::concurrency::oneshot();
    actor.send(msg(port.into()));
    // A message dropped unhandled (its actor stopped) drops its port.
    answer
        .await
        .map_err(|_| Error::Unavailable("the server is shutting down".into()))
}

/// Replies if the caller still listens (a dropped HTTP request closes the port).
///
/// Mutations check [`gone`] *before* deciding, so a request whose client went away
/// while it waited in the mailbox is never applied.
pub fn reply<T: Send + 'static>(port: RpcReplyPort<T>, value: T) {
    if !port.is_closed() {
        let _ = port.send(value);
    }
}

/// Whether the request's client stopped waiting (then the request is skipped, unapplied).
pub fn gone<T>(port: &RpcReplyPort<T>) -> bool {
    port.is_closed()
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
    /// longer for millions of jobs, happens later on the snapshot thread (see
    /// `journal::SnapshotParts`).
    pub fn snapshot<T>(&self, partition: &T) -> PendingSnapshot
    where
        T: serde::Serialize + Clone + Send + 'static,
    {
        self.snapshot_owned(partition.clone())
    }

    /// [`Recorder::snapshot`] of a copy the caller made (leaving out derived parts).
    pub fn snapshot_owned<T>(&self, copy: T) -> PendingSnapshot
    where
        T: serde::Serialize + Send + 'static,
    {
        // Only this actor appends this partition's events, and it applies each one in the
        // same turn: so the copy holds every one of them up to the last LSN assigned by
        // anyone so far (an idle partition is thus never behind the log).
        PendingSnapshot {
            lsn: self.journal.last_assigned(),
            encode: Box::new(move |sink| sink.encode(&copy)),
        }
    }
}

pub use crate::journal::PendingSnapshot;

pub use crate::model::orphans::OrphanQuota;

pub use crate::journal::files::delete_when_durable;

/// Queue name → its actor's feed (the actor, and the inbox pops go through). Written only
/// by the registry actor (which creates queue actors), read by handlers that pop or ask
/// positions.
#[derive(Clone, Default)]
pub struct QueueDirectory(Arc<RwLock<FastMap<Name, queue::Feed>>>);

impl QueueDirectory {
    /// The feed of `queue`'s actor, if the queue has one (it had a job, and was not
    /// stopped as idle since).
    pub fn get(&self, queue: &str) -> Option<queue::Feed> {
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

    fn insert(&self, queue: Name, feed: queue::Feed) {
        self.0.write().insert(queue, feed);
    }

    fn remove(&self, queue: &str) -> Option<queue::Feed> {
        self.0.write().remove(queue)
    }

    fn name_of(&self, id: ractor::ActorId) -> Option<Name> {
        self.0
            .read()
            .iter()
            .find(|(_, f)| f.actor().get_id() == id)
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
    pub registry: Door<registry::RegistryMsg>,
    /// Jobs, read without the registry actor (lookups, listings, searches).
    pub jobs: registry::Jobs,
    /// Results and logs.
    pub results: Door<results::ResultMsg>,
    /// Result documents and logs, read without the result actor.
    pub result_docs: reads::ResultDocs,
    /// Artifact and attachment files.
    pub files: Door<files::FileMsg>,
    /// Agent-reported data.
    pub agents: Door<agents::AgentMsg>,
    /// The agents partition, read without the agents actor (`http::agents::read_agents`).
    pub agent_data: Shared<crate::model::agents::Agents>,
    /// Per-queue actors.
    pub queues: QueueDirectory,
    /// To wait for durability before acknowledging.
    pub journal: Journal,
    /// Room for data of ids no job has.
    pub orphans: Arc<OrphanQuota>,
    /// Room for attachments (`--max-attachments-bytes`, per submitter a share of it).
    pub attachments: Arc<files::AttachmentQuota>,
    /// Turns for searches and queue listings (`--max-searches`), fair between clients.
    pub searches: Arc<crate::turns::Turns>,
    /// Log follow streams that may open (`--max-follows`): each holds one while open.
    pub follows: Arc<Semaphore>,
    /// Limits and paths.
    pub config: Arc<Config>,
    /// Where uploaded files live: the data dir's `files/` (through the log's filesystem
    /// seam, so tests can run the server on a simulated disk) or the journal's database.
    pub store: Arc<dyn crate::journal::files::FileStore>,
    /// When each dispatched job's agent was last heard (lost-agent recovery).
    pub watch: Arc<watch::Watch>,
    /// Ids whose removal from the partitions is under way (a submission of one waits).
    pub purges: Arc<purges::Purges>,
    /// Agents waiting for jobs (long-poll dispatch).
    pub dispatch: Arc<crate::dispatch::Waiters>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Access control: mode, token signer, the access partition.
    pub access: Arc<crate::access::Gate>,
    /// Job event outboxes (the webhooks actor records, its worker delivers).
    pub webhooks: Door<webhooks::WebhookMsg>,
    /// The outboxes and the worker's progress, read by the delivery view.
    pub hooks: Arc<webhooks::Hooks>,
}
