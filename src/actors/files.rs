//! The artifact actor: owns the [`Files`] partition, i.e. which file on disk holds each
//! job's artifact and attachments.
//!
//! Uploads are streamed to disk by the handler (never through this actor, never whole in
//! memory) and made durable there (temp file, fsync, rename, directory fsync); this actor
//! then records the new reference. A replaced or expired file is deleted only after the
//! event that dropped it is durable, so a crash never leaves a reference to a deleted file.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use std::sync::Arc;

use super::registry::Jobs;
use super::{gone, now, reply, OrphanQuota, PendingSnapshot, Recorder};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::files::{Files, StoredFile};
use crate::model::{Event, FastMap, FileKind, JobId};

/// Messages to the artifact actor.
pub enum FileMsg {
    /// A durable file `name` of `size` bytes now holds the job's `kind`. Refused (507)
    /// when no job has that id and the orphan quota has no room for it: the caller then
    /// deletes the file.
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

/// The artifact actor (no configuration).
pub struct FileActor;

/// The artifact actor's state.
pub struct FileState {
    /// The partition.
    files: Files,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// The folder holding the files.
    dir: PathBuf,
    /// To tell whether an id has a job.
    jobs: Jobs,
    /// Room for data of ids without a job.
    quota: Arc<OrphanQuota>,
    /// Ids without a job that have files here, and the bytes charged for them.
    orphans: FastMap<JobId, u64>,
}

/// Start-up inputs.
pub struct FileArgs {
    /// The recovered partition.
    pub files: Files,
    /// Where events go.
    pub journal: Journal,
    /// The folder holding the files.
    pub dir: PathBuf,
    /// To tell whether an id has a job.
    pub jobs: Jobs,
    /// Room for data of ids without a job.
    pub orphans: Arc<OrphanQuota>,
}

impl FileState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        let lsn = ticket.lsn();
        let unreferenced = self.files.apply(&event);
        if !unreferenced.is_empty() {
            let journal = self.recorder.journal().clone();
            let dir = self.dir.clone();
            // The handler holds the ticket; this task waits on the log position instead.
            tokio::spawn(async move {
                if journal.durable(journal.ticket_for(lsn)).await.is_ok() {
                    for name in unreferenced {
                        let path = dir.join(&*name);
                        if let Err(e) = tokio::fs::remove_file(&path).await {
                            tracing::warn!(path = %path.display(), error = %e, "cannot delete replaced file");
                        }
                    }
                }
            });
        }
        Ok(ticket)
    }

    /// Gives back the quota of `id` (its files are gone, or a job owns them now).
    fn discharge(&mut self, id: JobId) {
        if let Some(bytes) = self.orphans.remove(&id) {
            self.quota.release(bytes);
        }
    }

    /// Orphans that a job has taken since stop counting.
    fn adopt(&mut self) {
        let adopted: Vec<JobId> = self
            .orphans
            .keys()
            .copied()
            .filter(|id| self.jobs.get(*id).is_some())
            .collect();
        for id in adopted {
            self.discharge(id);
        }
    }

    /// Removes `ids`' files (deleted once the removal is durable).
    fn remove(&mut self, ids: Vec<JobId>) -> Result<Ticket> {
        let ticket = self.record(Event::FilesExpired { ids: ids.clone() })?;
        for id in ids {
            self.discharge(id);
        }
        Ok(ticket)
    }

    /// Records a stored file, charging an orphan's quota (a replaced file gives back its
    /// size once the replacement is recorded).
    fn stored(&mut self, id: JobId, kind: FileKind, file: Box<str>, size: u64) -> Result<Ticket> {
        let orphan = self.jobs.get(id).is_none();
        let replaced = self.files.get(id, kind).map_or(0, |f| f.size);
        if orphan && self.quota.reserve(size).is_err() {
            self.adopt();
            self.quota.reserve(size)?;
        }
        let result = self.record(Event::FileStored {
            id,
            kind,
            file,
            size,
            at: now(),
        });
        if orphan {
            match &result {
                Ok(_) => {
                    let charged = self.orphans.entry(id).or_default();
                    let give_back = replaced.min(*charged);
                    *charged = *charged - give_back + size;
                    self.quota.release(give_back);
                }
                Err(_) => self.quota.release(size),
            }
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
        let mut orphans = FastMap::default();
        for (id, (bytes, _)) in args.files.by_id() {
            if args.jobs.get(id).is_none() {
                args.orphans.charge(bytes);
                orphans.insert(id, bytes);
            }
        }
        Ok(FileState {
            files: args.files,
            recorder: Recorder::new(args.journal),
            dir: args.dir,
            jobs: args.jobs,
            quota: args.orphans,
            orphans,
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
                state.adopt();
                let by_id = state.files.by_id();
                let expired: Vec<JobId> = state
                    .orphans
                    .keys()
                    .copied()
                    .filter(|id| by_id.get(id).is_none_or(|(_, at)| *at < cutoff))
                    .collect();
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
