//! The artifact actor: owns the [`Files`] partition, i.e. which stored file holds each
//! job's artifact and attachments.
//!
//! Uploads are streamed to the file store by the handler (never through this actor, never
//! whole in memory) and made durable there (`journal::files`); this actor then records the
//! new reference. A replaced or expired file is deleted only after the
//! event that dropped it is durable, so a crash never leaves a reference to a deleted file.
//!
//! Attachments count against [`AttachmentQuota`] (`--max-attachments-bytes` and each
//! submitter's share of it) from their first byte written: the upload holds a
//! [`Reservation`] that grows as it writes, this actor charges the file's size to the
//! job's owner in the turn that records it, and gives it back when a removal or a
//! replacement drops the file.

use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::registry::Jobs;
use super::{gone, now, reply, OrphanQuota, PendingSnapshot, Recorder};
use crate::error::{Error, Result};
use crate::journal::files::FileStore;
use crate::journal::{Journal, Ticket};
use crate::model::files::{AttachmentRoom, Files, StoredFile};
use crate::model::orphans::Ledger;
use crate::model::{Event, FastMap, FileKind, JobId, Name};

/// The room for attachments ([`AttachmentRoom`]), shared by the uploads writing them
/// (each through its [`Reservation`]) and the artifact actor that records and drops them.
pub struct AttachmentQuota(Mutex<AttachmentRoom>);

impl AttachmentQuota {
    /// Shares `room`.
    pub fn new(room: AttachmentRoom) -> AttachmentQuota {
        AttachmentQuota(Mutex::new(room))
    }

    /// Whether `bytes` more for `owner` would fit now (its refusal if not), taking
    /// nothing: an upload that surely cannot fit is refused before its body is read.
    pub fn fits(&self, owner: Option<&Name>, bytes: u64) -> Result<()> {
        self.0.lock().fits(owner, bytes)
    }

    /// An empty reservation for an upload of `owner`'s attachments.
    pub fn reserve(self: &Arc<Self>, owner: Option<Name>) -> Reservation {
        Reservation {
            quota: self.clone(),
            owner,
            bytes: 0,
        }
    }

    /// Bytes held now, stored and being written.
    pub fn held(&self) -> u64 {
        self.0.lock().held().total()
    }

    /// `owner`'s bytes held now.
    pub fn held_by(&self, owner: Option<&Name>) -> u64 {
        self.0.lock().held().of(owner)
    }

    fn count(&self, owner: Option<&Name>, bytes: u64) {
        self.0.lock().count(owner, bytes);
    }

    fn give(&self, owner: Option<&Name>, bytes: u64) {
        self.0.lock().give(owner, bytes);
    }
}

/// The bytes one upload of attachments has written so far, counted against the
/// [`AttachmentQuota`] while it writes them: given back when it is dropped (the upload
/// refused, abandoned or done: once recorded, the artifact actor charges the file
/// instead, so for a moment the bytes count twice, never not at all).
pub struct Reservation {
    quota: Arc<AttachmentQuota>,
    owner: Option<Name>,
    bytes: u64,
}

impl Reservation {
    /// Takes `bytes` more before they are written, or refuses (507) taking nothing.
    pub fn grow(&mut self, bytes: u64) -> Result<()> {
        self.quota.0.lock().take(self.owner.as_ref(), bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Takes what `written` bytes need beyond what is held already (refused: 507).
    pub fn cover(&mut self, written: u64) -> Result<()> {
        match written.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }

    /// Gives back what is held beyond `size` bytes (an upload smaller than it declared).
    pub fn trim(&mut self, size: u64) {
        if self.bytes > size {
            self.quota.give(self.owner.as_ref(), self.bytes - size);
            self.bytes = size;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.quota.give(self.owner.as_ref(), self.bytes);
    }
}

/// Messages to the artifact actor.
pub enum FileMsg {
    /// A durable file `name` of `size` bytes now holds the job's `kind`. Refused (507)
    /// when no job has that id and the orphan quota has no room for it: the caller then
    /// deletes the file. Attachments are charged to the job's owner.
    Stored(JobId, FileKind, Box<str>, u64, RpcReplyPort<Result<Ticket>>),
    /// Remove one id's files (an operator's deletion); `None`: there were none.
    Delete(JobId, RpcReplyPort<Result<Option<Ticket>>>),
    /// Remove files of ids no job has stored before this (unix seconds): how many ids,
    /// and the ticket.
    ExpireOrphans(u64, RpcReplyPort<Result<Option<(usize, Ticket)>>>),
    /// The job's current file of `kind`.
    Get(JobId, FileKind, RpcReplyPort<Option<StoredFile>>),
    /// Remove these jobs' files.
    Expire(Vec<JobId>, RpcReplyPort<Result<Ticket>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// The answer to an upload that would replace a job's stored attachments, which are never
/// replaced (README's compatibility table): `why` says how it came to be refused.
pub fn attachments_not_replaced(id: JobId, why: &str) -> Error {
    Error::Conflict(format!(
        "Job {id}'s attachments were stored by another upload {why}; they are not replaced"
    ))
}

/// The artifact actor (no configuration).
pub struct FileActor;

/// The artifact actor's state.
pub struct FileState {
    /// The partition.
    files: Files,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// To tell whether an id has a job.
    jobs: Jobs,
    /// Ids without a job that have files here, charged to the orphan quota.
    ledger: Ledger,
    /// Where the files are kept.
    store: Arc<dyn FileStore>,
    /// The room for attachments, which this actor charges with what it records.
    quota: Arc<AttachmentQuota>,
    /// Each job's attachments file charged to the quota: the owner it is charged to and
    /// its size, given back when the file goes. Invariant: their sum is what this actor
    /// has counted in the quota, and it holds exactly the partition's attachments.
    charged: FastMap<JobId, (Option<Name>, u64)>,
    /// Jobs whose attachments this actor recorded since it started, with the submission
    /// (`seq`) they were recorded for: until the registry marks them arrived (a turn of
    /// another actor, after this record is durable) the job still reads as awaiting
    /// them, and a second upload finishing meanwhile must not replace them. Not logged:
    /// after a restart a job still awaiting its attachments had no upload acknowledged,
    /// so the next one may store them. Entries go with their jobs' files.
    attached: FastMap<JobId, u64>,
}

/// Start-up inputs.
pub struct FileArgs {
    /// The recovered partition.
    pub files: Files,
    /// Where events go.
    pub journal: Journal,
    /// To tell whether an id has a job.
    pub jobs: Jobs,
    /// Room for data of ids without a job.
    pub orphans: Arc<OrphanQuota>,
    /// Where the files are kept.
    pub store: Arc<dyn FileStore>,
    /// The room for attachments (empty: counted here from the partition at start).
    pub attachments: Arc<AttachmentQuota>,
}

impl FileState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        let unreferenced = self.files.apply(&event);
        super::delete_when_durable(
            self.recorder.journal(),
            ticket.lsn(),
            self.store.clone(),
            unreferenced,
        );
        Ok(ticket)
    }

    /// Removes `ids`' files (deleted once the removal is durable).
    fn remove(&mut self, ids: Vec<JobId>) -> Result<Ticket> {
        let ticket = self.record(Event::FilesExpired { ids: ids.clone() })?;
        for id in ids {
            self.ledger.discharge(id);
            self.attached.remove(&id);
            self.discharge(id);
        }
        Ok(ticket)
    }

    /// Gives back the charge of `id`'s attachments (they are gone, or replaced).
    fn discharge(&mut self, id: JobId) {
        if let Some((owner, bytes)) = self.charged.remove(&id) {
            self.quota.give(owner.as_ref(), bytes);
        }
    }

    /// Records a stored file, charging an orphan's quota (a replaced file gives back its
    /// size once the replacement is recorded).
    ///
    /// Attachments are recorded only while the job awaits them and no other upload
    /// stored them for the same submission, decided here, in the turn that records them:
    /// a concurrent upload that finished first may have stored them (its arrival perhaps
    /// not marked yet), or marked them arrived and the job been dispatched since this
    /// upload was let in (400).
    fn stored(&mut self, id: JobId, kind: FileKind, file: Box<str>, size: u64) -> Result<Ticket> {
        let submission = match kind {
            FileKind::Attachments => match self.jobs.awaits_attachments(id)? {
                Some(seq) if self.attached.get(&id) != Some(&seq) => Some(seq),
                _ => return Err(attachments_not_replaced(id, "while this one was received")),
            },
            FileKind::Artifact => None,
        };
        let replaced = self.files.get(id, kind).map_or(0, |f| f.size);
        let jobs = &self.jobs;
        let orphan = self.ledger.reserve(id, size, |id| jobs.contains(id))?;
        let result = self.record(Event::FileStored {
            id,
            kind,
            file,
            size,
            at: now(),
        });
        if orphan {
            match &result {
                Ok(_) => self.ledger.settle(id, replaced, 0),
                Err(_) => self.ledger.settle(id, size, 0),
            }
        }
        if let (Some(seq), Ok(_)) = (submission, &result) {
            self.attached.insert(id, seq);
            // Charged to the job's owner, as start-up charges it; the upload's
            // reservation is given back once it hears this answer.
            let owner = self.jobs.owner(id).flatten();
            self.discharge(id);
            self.quota.count(owner.as_ref(), size);
            self.charged.insert(id, (owner, size));
        }
        result
    }
}

impl Actor for FileActor {
    type Msg = FileMsg;
    type State = FileState;
    type Arguments = FileArgs;

    async fn pre_start(
        &self,
        _: ActorRef<FileMsg>,
        args: FileArgs,
    ) -> Result<FileState, ActorProcessingErr> {
        let mut charged = FastMap::default();
        for (id, bytes) in args.files.attachments() {
            let owner = args.jobs.owner(id).flatten();
            args.attachments.count(owner.as_ref(), bytes);
            charged.insert(id, (owner, bytes));
        }
        let mut ledger = Ledger::new(args.orphans);
        for (id, (bytes, _)) in args.files.by_id() {
            if !args.jobs.contains(id) {
                ledger.count(id, bytes);
            }
        }
        Ok(FileState {
            files: args.files,
            recorder: Recorder::new(args.journal),
            jobs: args.jobs,
            ledger,
            store: args.store,
            quota: args.attachments,
            charged,
            attached: FastMap::default(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<FileMsg>,
        msg: FileMsg,
        state: &mut FileState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FileMsg::Stored(id, kind, file, size, port) => {
                if gone(&port) {
                    return Ok(());
                }
                let result = state.stored(id, kind, file, size);
                reply(port, result);
            }
            FileMsg::Delete(id, port) => {
                let exists = [FileKind::Artifact, FileKind::Attachments]
                    .iter()
                    .any(|k| state.files.get(id, *k).is_some());
                let result = if exists {
                    state.remove(vec![id]).map(Some)
                } else {
                    Ok(None)
                };
                reply(port, result);
            }
            FileMsg::ExpireOrphans(cutoff, port) => {
                let by_id = state.files.by_id();
                let jobs = &state.jobs;
                let expired = state.ledger.stale(
                    cutoff,
                    |id| jobs.contains(id),
                    |id| by_id.get(&id).map(|(_, at)| *at),
                );
                let result = if expired.is_empty() {
                    Ok(None)
                } else {
                    let count = expired.len();
                    state.remove(expired).map(|t| Some((count, t)))
                };
                reply(port, result);
            }
            FileMsg::Get(id, kind, port) => reply(port, state.files.get(id, kind).cloned()),
            FileMsg::Expire(ids, port) => {
                let result = state.remove(ids);
                reply(port, result);
            }
            FileMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&state.files));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_holds_what_it_covers_and_gives_it_all_back_when_dropped() {
        let quota = Arc::new(AttachmentQuota::new(AttachmentRoom::new(100, None, 60)));
        let mut a = quota.reserve(None);
        a.grow(70).unwrap();
        let mut b = quota.reserve(Some(Name::from("alice")));
        assert!(b.grow(40).is_err(), "70 + 40 > 100");
        b.cover(30).unwrap();
        assert_eq!(quota.held(), 100);
        assert!(b.cover(31).is_err(), "nothing left");
        b.cover(20).unwrap();
        assert_eq!(
            quota.held_by(Some(&Name::from("alice"))),
            30,
            "covers only growth"
        );
        a.trim(50);
        assert_eq!(quota.held(), 80);
        drop(a);
        drop(b);
        assert_eq!(quota.held(), 0);
    }
}
