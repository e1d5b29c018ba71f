//! The orphan store's files: results and log fragments of ids no job has, one
//! append-only file per id in the file store (`journal::files`: the data dir's `files/`
//! folder, or the journal's database). The byte format and the index are the pure
//! core's (`model::orphans`); the result actor decides who may append where and logs
//! each append's new length; this module only moves bytes.
//!
//! Appends to one id's file take turns ([`Store::turn`]): the request holding the turn
//! asks the result actor for a slot (the file and the offset its valid data ends at),
//! writes there, fsyncs, and only then has the actor log the new length. So the actor
//! never waits on the disk, a crash before the length is logged leaves the bytes past
//! the recorded length to be overwritten, and a reader never sees bytes not yet durable.
//!
//! A read folds the whole file; a log follow reads only the bytes appended since its
//! last read ([`Store::follow`]).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::journal::files::FileStore;
use crate::model::orphans::{decode_from, read_doc, OrphanEntry, OrphanFollow};
use crate::model::results::ResultDoc;
use crate::model::{FastMap, JobId};

/// Where an append goes, as the result actor handed it out.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The id.
    pub id: JobId,
    /// Which slot this is (the actor matches its commit or abort to it).
    pub token: u64,
    /// The file's name in `files/`.
    pub file: Box<str>,
    /// Where to write: the end of the file's valid data.
    pub offset: u64,
    /// Whether the file is new (created, and its directory entry made durable).
    pub new: bool,
}

/// The orphan store: where the files are kept, and the turns of appenders per id.
pub struct Store {
    /// The file store.
    files: Arc<dyn FileStore>,
    /// One lock per id being appended to now (removed when nobody holds or waits for it).
    turns: Mutex<FastMap<JobId, Arc<tokio::sync::Mutex<()>>>>,
}

/// One id's turn to append; the next waiter's turn starts when it is dropped.
pub struct Turn<'a> {
    store: &'a Store,
    id: JobId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = self.store.turns.lock();
        // Only the map holds it now: nobody waits, so the entry goes.
        if turns
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.id);
        }
    }
}

impl Store {
    /// A store over `files`.
    pub fn new(files: Arc<dyn FileStore>) -> Store {
        Store {
            files,
            turns: Mutex::new(FastMap::default()),
        }
    }

    /// Waits for `id`'s turn to append (or to consume its legacy output).
    pub async fn turn(&self, id: JobId) -> Turn<'_> {
        let lock = self.turns.lock().entry(id).or_default().clone();
        let guard = lock.lock_owned().await;
        Turn {
            store: self,
            id,
            guard: Some(guard),
        }
    }

    /// Writes `bytes` at the slot and makes them durable: the file's data (and, for a new
    /// file, its directory entry) is on disk when this returns.
    pub async fn append(&self, slot: &Slot, bytes: Vec<u8>) -> Result<()> {
        self.files
            .append(&slot.file, slot.offset, slot.new, bytes)
            .await
    }

    /// The document an id's file holds (its valid prefix, as `entry` records it).
    pub async fn read(&self, entry: OrphanEntry) -> Result<ResultDoc> {
        let bytes = match self.files.read(&entry.file, 0, entry.len).await {
            Ok(bytes) => bytes,
            Err(Error::Gone(_)) => {
                crate::journal::files::report_missing(&*self.files, &entry.file);
                return Err(Error::Gone(
                    "the result data recorded for this id is missing from the server's storage; \
                     an operator must restore it (the server's log names the file)"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        tokio::task::spawn_blocking(move || read_doc(&bytes, &entry))
            .await
            .map_err(|e| Error::Internal(format!("orphan read task failed: {e}")))?
    }

    /// `follow` moved on to a reader at fragment number `from`, having read what
    /// `entry`'s file holds past what it had read (nothing, when the file did not grow:
    /// no I/O at all).
    pub async fn follow(
        &self,
        mut follow: OrphanFollow,
        entry: &OrphanEntry,
        from: u64,
    ) -> Result<OrphanFollow> {
        follow.pass(from);
        let at = follow.offset();
        if entry.len <= at {
            return Ok(follow);
        }
        let bytes = self.files.read(&entry.file, at, entry.len).await?;
        let to = entry.len;
        tokio::task::spawn_blocking(move || {
            follow.read(decode_from(&bytes, at)?, to, from);
            Ok(follow)
        })
        .await
        .map_err(|e| Error::Internal(format!("orphan read task failed: {e}")))?
    }

    /// Deletes files nothing refers to (an append abandoned before its first record was
    /// logged), off the caller's path; a failure leaves them to start-up's sweep.
    pub fn discard(&self, names: Vec<Box<str>>) {
        self.files.delete(names);
    }

    /// The file store (for deletions once a removal is durable).
    pub fn files(&self) -> Arc<dyn FileStore> {
        self.files.clone()
    }
}
