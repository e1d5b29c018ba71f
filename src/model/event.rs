//! Events: the past-tense facts the write-ahead log records and replay folds.
//!
//! Each event belongs to exactly one partition of [`super::State`] (the registry,
//! results, artifacts or agents), so each actor can apply its own events alone and the
//! replay of the whole log in log order gives every partition the same sequence it saw
//! live. Events carry every input apply needs (times included): apply never reads a
//! clock or a random source.
//!
//! This is the WAL's schema: encoded with named fields (msgpack maps) so fields can be
//! added without breaking old logs. Never reorder or repurpose a variant.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::access::Client;
use super::ids::{JobId, Name};
use super::webhooks::JobEvent;

/// Which kind of file a job carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum FileKind {
    /// Results tarball uploaded by the agent (`/v1/result/<id>/artifact`).
    Artifact,
    /// Input files uploaded by the client (`/v1/job/<id>/attachments`).
    Attachments,
}

/// Which log stream a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum LogKind {
    /// The device's console output (`/log/output`, and the legacy `/output`).
    Output,
    /// The serial console (`/log/serial`).
    Serial,
}

/// The partition an event belongs to (and the actor that owns it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Partition {
    /// Jobs and their lifecycle: the registry actor.
    Registry,
    /// Result documents and logs: the result actor.
    Results,
    /// Artifact and attachment files: the artifact actor.
    Artifacts,
    /// Advertised queues, images and agent records: the agents actor.
    Agents,
    /// Clients, refresh tokens, restricted queues and secrets: `access::store`.
    Access,
    /// Job event outboxes and their delivery progress: the webhooks actor.
    Webhooks,
}

/// One recorded mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A job was submitted (or resubmitted) to `queue`.
    JobSubmitted {
        /// The job.
        id: JobId,
        /// Its queue.
        queue: Name,
        /// The stored job document (JSON object text, `job_id` included).
        body: Bytes,
        /// `job_priority` (0 when absent).
        priority: i64,
        /// `exclude_agents`.
        exclude: Arc<[Name]>,
        /// Whether it must wait for attachments before dispatch.
        awaits_attachments: bool,
        /// Unix seconds.
        at: u64,
        /// The client that submitted it (access control on, authenticated submitter):
        /// only it or a manager/admin may cancel or resubmit it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Name>,
    },
    /// A pop handed the job to an agent (`None`: the agent did not identify itself).
    JobDispatched {
        /// The job.
        id: JobId,
        /// The agent that received it.
        agent: Option<Name>,
        /// Unix seconds.
        at: u64,
        /// The agent's credential (client id) when access control is on: only it may post
        /// the job's results, logs and artifacts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<Name>,
    },
    /// A client cancelled the job.
    JobCancelled {
        /// The job.
        id: JobId,
        /// Unix seconds.
        at: u64,
    },
    /// Someone (normally the agent) posted a `job_state` that changes the lifecycle.
    JobStateReported {
        /// The job.
        id: JobId,
        /// The reported label.
        state: Name,
        /// Unix seconds.
        at: u64,
    },
    /// The job's attachments were stored: it may now be dispatched.
    AttachmentsArrived {
        /// The job.
        id: JobId,
    },
    /// Retention removed finished jobs.
    JobsExpired {
        /// The jobs.
        ids: Vec<JobId>,
    },
    /// Top-level result fields were merged into the job's result document.
    ResultMerged {
        /// The job (need not exist).
        id: JobId,
        /// A JSON object, as text.
        fields: Bytes,
        /// Unix seconds.
        at: u64,
    },
    /// A log fragment arrived.
    LogAppended {
        /// The job.
        id: JobId,
        /// Output or serial.
        kind: LogKind,
        /// The phase it belongs to.
        phase: Name,
        /// The agent's fragment number (the server's own for legacy `/output` posts).
        number: u64,
        /// Unix microseconds.
        timestamp: i64,
        /// The text (bytes as posted).
        data: Bytes,
        /// The job's run the fragment belongs to (1 for its first submission, one more per
        /// resubmission). Records written before runs were kept apart have none and decode
        /// as run 1: most jobs run once, and a job running across the upgrade keeps one log.
        #[serde(default = "super::registry::first_run")]
        run: u32,
        /// Unix seconds it arrived (0 in logs written before it was recorded).
        #[serde(default)]
        at: u64,
    },
    /// A legacy `/output` read consumed the output fragments that had arrived so far.
    OutputRead {
        /// The job.
        id: JobId,
        /// How many fragments (in arrival order) have now been read.
        upto: u64,
    },
    /// Retention removed these jobs' results and logs.
    ResultsExpired {
        /// The jobs.
        ids: Vec<JobId>,
    },
    /// A file was stored for a job (replacing any earlier one of that kind).
    FileStored {
        /// The job.
        id: JobId,
        /// Artifact or attachments.
        kind: FileKind,
        /// The file's name inside the data dir's `files/` folder (chosen by the server).
        file: Box<str>,
        /// Its size in bytes.
        size: u64,
        /// Unix seconds.
        at: u64,
    },
    /// Retention removed these jobs' files.
    FilesExpired {
        /// The jobs.
        ids: Vec<JobId>,
    },
    /// An agent advertised queues: `{name: description}` merged.
    QueuesAdvertised {
        /// Name and description pairs.
        queues: Vec<(Name, Box<str>)>,
        /// Unix seconds.
        at: u64,
    },
    /// An agent advertised the images of a queue, replacing the earlier set.
    ImagesAdvertised {
        /// The queue.
        queue: Name,
        /// JSON object text `{image: provision data}`.
        images: Bytes,
    },
    /// An agent's record was updated (`POST /v1/agents/data/<name>`).
    AgentUpdated {
        /// The agent.
        name: Name,
        /// JSON object text of the fields posted.
        fields: Bytes,
        /// Unix seconds.
        at: u64,
        /// The agent credential (client id) that posted, with access control on; `None`
        /// for managers, admins and with access control off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Name>,
    },
    /// An agent reported a provisioning outcome.
    ProvisionLogged {
        /// The agent.
        name: Name,
        /// JSON object text `{job_id, exit_code, detail}`.
        entry: Bytes,
        /// Unix seconds.
        at: u64,
    },
    /// An operator deleted the job, whatever its state (its results and files go by
    /// their own events).
    JobDeleted {
        /// The job.
        id: JobId,
    },
    /// Agent records without contact for the expiry period were removed.
    AgentsExpired {
        /// The agents.
        names: Vec<Name>,
    },
    /// The server found the job's agent lost (silent past its allowance, or it took
    /// another job: see `model::lost`): the job was ended as `cancelled`, or put back
    /// into its queue.
    JobLost {
        /// The job.
        id: JobId,
        /// The job's state (phase) when the agent was found lost.
        phase: Name,
        /// Unix seconds the agent was last heard about the job.
        last_heard: u64,
        /// Whether the job was requeued (else ended).
        requeued: bool,
        /// Unix seconds.
        at: u64,
        /// The job the agent took instead, when that is how it was found lost (it left
        /// this one unfinished); `None` for silence past the allowance, and in records
        /// written before this was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        took: Option<JobId>,
    },
    /// A client was created or its permissions changed (the whole record; the secret only
    /// as its bcrypt hash).
    ClientSaved {
        /// The client id.
        id: Name,
        /// Its record.
        client: Box<Client>,
    },
    /// A client was deleted, with its refresh tokens and secrets.
    ClientDeleted {
        /// The client id.
        id: Name,
    },
    /// A refresh token was issued (recorded by its SHA-256 only).
    RefreshTokenIssued {
        /// Hex SHA-256 of the token.
        hash: Box<str>,
        /// Whose it is.
        client_id: Name,
        /// Unix seconds.
        issued_at: u64,
        /// Unix seconds.
        expires_at: u64,
    },
    /// An admin revoked a refresh token.
    RefreshTokenRevoked {
        /// Hex SHA-256 of the token.
        hash: Box<str>,
    },
    /// A queue became restricted, `client_id` allowed on it.
    QueueRestricted {
        /// The queue.
        queue: Name,
        /// The owner added.
        client_id: Name,
    },
    /// A queue's restriction was lifted (and `client_id` no longer lists it).
    QueueUnrestricted {
        /// The queue.
        queue: Name,
        /// The owner removed.
        client_id: Name,
    },
    /// A job secret was stored, sealed (AEAD ciphertext; never the value).
    SecretStored {
        /// Owner.
        client_id: Name,
        /// Path.
        path: Box<str>,
        /// Nonce and ciphertext.
        sealed: Bytes,
        /// Unix seconds after which it is gone.
        expires_at: Option<u64>,
        /// Deleted after its first dispatch.
        ephemeral: bool,
    },
    /// A job secret was deleted.
    SecretDeleted {
        /// Owner.
        client_id: Name,
        /// Path.
        path: Box<str>,
    },
    /// `client_id`'s secrets that had expired by `at` were removed (recorded when a new
    /// secret would pass the per-client limit, so expired ones never block a live one).
    SecretsExpired {
        /// Owner.
        client_id: Name,
        /// Unix seconds: every secret with `expires_at <= at` went.
        at: u64,
    },
    /// Results or log fragments of an id were appended to its file in the orphan store
    /// (see `model::orphans`): the file now holds `offset + len` valid bytes. The content
    /// is in the file, fsynced before this was logged, never in the log.
    OrphanAppended {
        /// The id (no job had it when its first data arrived).
        id: JobId,
        /// The file's name inside the data dir's `files/` folder (chosen by the server).
        file: Box<str>,
        /// Where the appended bytes start: the valid length before.
        offset: u64,
        /// How many bytes were appended.
        len: u64,
        /// Unix seconds.
        at: u64,
    },
    /// The agent posted job events (`POST /v1/job/<id>/events`): only the ones not
    /// recorded before (the agent re-sends its cumulative list), in posted order.
    JobEventsPosted {
        /// The job.
        id: JobId,
        /// The post's `job_status_webhook` (already checked against `WEBHOOK_URL`).
        url: Box<str>,
        /// The post's `agent_id`.
        agent_id: Option<Name>,
        /// The post's `job_queue`.
        job_queue: Option<Name>,
        /// The new events.
        events: Vec<JobEvent>,
        /// Unix seconds.
        at: u64,
    },
    /// The job's webhook acknowledged (2xx) a PUT carrying its first `upto` events.
    JobEventsDelivered {
        /// The job.
        id: JobId,
        /// How many events that PUT carried.
        upto: u32,
    },
    /// The delivery worker gave up on the job's first `upto` events (retried past
    /// `--webhook-give-up-secs`).
    JobEventsAbandoned {
        /// The job.
        id: JobId,
        /// How many events it gave up on.
        upto: u32,
        /// Attempts, time spent and the last error.
        reason: Box<str>,
        /// Unix seconds.
        at: u64,
    },
    /// These jobs' outboxes went with their jobs (expiry or deletion).
    WebhooksExpired {
        /// The jobs.
        ids: Vec<JobId>,
    },
    /// An operator deleted an agent's record (`DELETE /v1/agents/data/<name>`); a job
    /// the agent holds is left to the lost-agent watch.
    AgentDeleted {
        /// The agent.
        name: Name,
    },
}

impl Event {
    /// The partition (and actor) that applies this event.
    pub fn partition(&self) -> Partition {
        use Event::*;
        match self {
            JobSubmitted { .. }
            | JobDispatched { .. }
            | JobCancelled { .. }
            | JobStateReported { .. }
            | AttachmentsArrived { .. }
            | JobsExpired { .. }
            | JobDeleted { .. }
            | JobLost { .. } => Partition::Registry,
            ResultMerged { .. }
            | LogAppended { .. }
            | OutputRead { .. }
            | ResultsExpired { .. }
            | OrphanAppended { .. } => Partition::Results,
            FileStored { .. } | FilesExpired { .. } => Partition::Artifacts,
            QueuesAdvertised { .. }
            | ImagesAdvertised { .. }
            | AgentUpdated { .. }
            | ProvisionLogged { .. }
            | AgentsExpired { .. }
            | AgentDeleted { .. } => Partition::Agents,
            ClientSaved { .. }
            | ClientDeleted { .. }
            | RefreshTokenIssued { .. }
            | RefreshTokenRevoked { .. }
            | QueueRestricted { .. }
            | QueueUnrestricted { .. }
            | SecretStored { .. }
            | SecretDeleted { .. }
            | SecretsExpired { .. } => Partition::Access,
            JobEventsPosted { .. }
            | JobEventsDelivered { .. }
            | JobEventsAbandoned { .. }
            | WebhooksExpired { .. } => Partition::Webhooks,
        }
    }
}
