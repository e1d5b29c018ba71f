//! The artifact actor: owns the [`Files`] partition, i.e. which file on disk holds each
//! job's artifact and attachments.
//!
//! Uploads are streamed to disk by the handler (never through this actor, never whole in
//! memory) and made durable there (temp file, fsync, rename, directory fsync); this actor
//! then records the new reference. A replaced or expired file is deleted only after the
//! event that dropped it is durable, so a crash never leaves a reference to a deleted file.

use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{now, reply, PendingSnapshot, Recorder};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::files::{Files, StoredFile};
use crate::model::{Event, FileKind, JobId};

/// Messages to the artifact actor.
pub enum FileMsg {
    /// A durable file `name` of `size` bytes now holds the job's `kind`.
    Stored(JobId, FileKind, Box<str>, u64, RpcReplyPort<Result<Ticket>>),
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
    /// The filesystem it is on.
    fs: Arc<dyn wal::Fs>,
}

impl FileState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        let lsn = ticket.lsn();
        let unreferenced = self.files.apply(&event);
        if !unreferenced.is_empty() {
            let journal = self.recorder.journal().clone();
            let (dir, fs) = (self.dir.clone(), self.fs.clone());
            // The handler holds the ticket; this task waits on the log position instead.
            // No directory fsync: a deletion lost in a crash leaves an unreferenced file,
            // which start-up sweeps.
            tokio::spawn(async move {
                if journal.durable(journal.ticket_for(lsn)).await.is_ok() {
                    let _ = tokio::task::spawn_blocking(move || {
                        for name in unreferenced {
                            let path = dir.join(&*name);
                            if let Err(e) = fs.remove(&path) {
                                if let Some(suppressed) =
                                    crate::throttle::allow("cannot delete replaced file", 0)
                                {
                                    tracing::warn!(path = %path.display(), error = %e, suppressed, "cannot delete replaced file");
                                }
                            }
                        }
                    })
                    .await;
                }
            });
        }
        Ok(ticket)
    }
}

impl Actor for FileActor {
    type Msg = FileMsg;
    type State = FileState;
    type Arguments = (Files, Journal, PathBuf, Arc<dyn wal::Fs>);

    async fn pre_start(
        &self,
        _: ActorRef<FileMsg>,
        (files, journal, dir, fs): Self::Arguments,
    ) -> Result<FileState, ActorProcessingErr> {
        Ok(FileState {
            files,
            recorder: Recorder::new(journal),
            dir,
            fs,
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
                let result = state.record(Event::FileStored {
                    id,
                    kind,
                    file,
                    size,
                    at: now(),
                });
                reply(port, result);
            }
            FileMsg::Get(id, kind, port) => reply(port, state.files.get(id, kind).cloned()),
            FileMsg::Expire(ids, port) => {
                let result = state.record(Event::FilesExpired { ids });
                reply(port, result);
            }
            FileMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&state.files));
            }
        }
        Ok(())
    }
}
