//! The orphan store's files: results and log fragments of ids no job has, one
//! append-only file per id in the data dir's `files/` folder, written and read through
//! the log's filesystem seam (`wal::Fs`). The byte format and the index are the pure
//! core's (`model::orphans`); the result actor decides who may append where and logs
//! each append's new length; this module only moves bytes.
//!
//! Appends to one id's file take turns ([`Store::turn`]): the request holding the turn
//! asks the result actor for a slot (the file and the offset its valid data ends at),
//! writes there, fsyncs, and only then has the actor log the new length. So the actor
//! never waits on the disk, a crash before the length is logged leaves the bytes past
//! the recorded length to be overwritten, and a reader never sees bytes not yet durable.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use super::blocking;
use crate::error::{Error, Result};
use crate::model::orphans::{read_doc, OrphanEntry};
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

/// The orphan store: the folder and filesystem, and the turns of appenders per id.
pub struct Store {
    /// The filesystem seam.
    fs: Arc<dyn wal::Fs>,
    /// The `files/` folder.
    dir: PathBuf,
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
    /// A store over `dir` on `fs`.
    pub fn new(fs: Arc<dyn wal::Fs>, dir: PathBuf) -> Store {
        Store {
            fs,
            dir,
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
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let (path, offset, new) = (dir.join(&*slot.file), slot.offset, slot.new);
        blocking(move || {
            let mut file = if new {
                fs.create(&path)?
            } else {
                fs.open(&path)?
            };
            file.write_at(offset, &bytes)?;
            file.sync_data()?;
            if new {
                fs.sync_dir(&dir)?;
            }
            Ok(())
        })
        .await
    }

    /// The document an id's file holds (its valid prefix, as `entry` records it).
    pub async fn read(&self, entry: OrphanEntry) -> Result<ResultDoc> {
        let (fs, path) = (self.fs.clone(), self.dir.join(&*entry.file));
        let bytes = blocking(move || {
            let file = fs.open_read(&path)?;
            let mut bytes = vec![0u8; entry.len as usize];
            let mut filled = 0;
            while filled < bytes.len() {
                let n = file.read_at(filled as u64, &mut bytes[filled..])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "an orphan data file is shorter than recorded",
                    ));
                }
                filled += n;
            }
            Ok((bytes, entry))
        })
        .await?;
        tokio::task::spawn_blocking(move || read_doc(&bytes.0, &bytes.1))
            .await
            .map_err(|e| Error::Internal(format!("orphan read task failed: {e}")))?
    }

    /// Deletes files nothing refers to (an append abandoned before its first record was
    /// logged), off the caller's path; a failure leaves them to start-up's sweep.
    pub fn discard(&self, names: Vec<Box<str>>) {
        super::delete_files(self.fs.clone(), self.dir.clone(), names);
    }

    /// The filesystem and folder (for deletions once a removal is durable).
    pub fn place(&self) -> (Arc<dyn wal::Fs>, PathBuf) {
        (self.fs.clone(), self.dir.clone())
    }
}
