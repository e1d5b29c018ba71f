//! Where the files the state refers to are kept: uploaded artifacts and attachments
//! (`model::files`), the append-only files of ids no job has (`model::orphans`), and small
//! private values such as the access-token signing key. [`FileStore`] is the seam;
//! [`DiskFiles`] keeps them in the data directory through the log's filesystem seam
//! (`wal::Fs`, so the power-loss model sees them), and the PostgreSQL journal keeps them in
//! its database (`postgres::files`), so that a node with an empty data directory serves
//! everything. [`open`] picks the one that goes with `--journal`.
//!
//! Every implementation keeps the promises the fold relies on:
//! - a file is durable under its name when [`NewFile::finish`] or [`FileStore::append`]
//!   returns, and callers append the event that refers to it only after that;
//! - a file is deleted only once the event that stopped referring to it is durable
//!   ([`delete_when_durable`]), so a crash never leaves a reference to a missing file;
//! - what a crash leaves unreferenced (an interrupted upload, a deletion that did not
//!   happen) is removed by [`FileStore::sweep`] at start-up.
//!
//! Bytes are streamed both ways, never whole in memory: an upload is written as it
//! arrives, in chunks of at most [`NewFile`]'s buffer; a download reads chunk by chunk.
//! The orphan files are the exception by design: they are read whole (or, by a log
//! follow, what was appended since its last read), bounded by `--orphan-quota-bytes`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::{postgres, Journal};
use crate::config::{Config, JournalTarget};
use crate::error::{Error, Result};

/// A download: the stored bytes, chunk by chunk.
pub type Download = BoxStream<'static, Result<Bytes>>;

/// The store of every file the state refers to (see the module docs for its promises).
/// Names are the server's own (never from a client) and unique per file.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// Starts the new file `name`; it holds nothing under that name until
    /// [`NewFile::finish`].
    async fn create(&self, name: &str) -> Result<Box<dyn NewFile>>;

    /// Streams the first `size` bytes of `name` (the size its event recorded);
    /// [`Error::Gone`] (with a message naming no file) when there is no such file: it was
    /// replaced and deleted since the caller looked it up, or it is missing (see
    /// [`report_missing`]). The stream fails if the file holds fewer bytes.
    async fn open(&self, name: &str, size: u64) -> Result<Download>;

    /// Writes `bytes` at `offset` of the append-only file `name` (made first when `new`)
    /// and makes them durable; whatever lay at or past `offset` (an append a crash left
    /// unrecorded) is overwritten.
    async fn append(&self, name: &str, offset: u64, new: bool, bytes: Vec<u8>) -> Result<()>;

    /// The bytes of `name` from `from` up to `to`, whole (the orphan files, bounded by
    /// their quota; a log follow reads only what was appended since it last read);
    /// [`Error::Gone`] as [`FileStore::open`] when there is no such file.
    async fn read(&self, name: &str, from: u64, to: u64) -> Result<Vec<u8>>;

    /// Where `name` is (or should be) kept, for the operator's log: a path, a table row.
    fn location(&self, name: &str) -> String;

    /// Deletes `names`, which nothing refers to any more, off the caller's path. A failure
    /// is logged (rate-limited) and left to start-up's [`FileStore::sweep`].
    fn delete(&self, names: Vec<Box<str>>);

    /// At start-up, before anything else writes: deletes every file whose name is not in
    /// `referenced` (how many went), or with `keep` moves the finished ones aside where an
    /// operator can recover them (the log was cut at corruption: the records that referred
    /// to them may be among those discarded). Logs one warning naming the first few files
    /// of `referenced` that are missing.
    async fn sweep(&self, referenced: &HashSet<&str>, keep: bool) -> Result<usize>;

    /// The private value `name` (a secret key): the stored one, or `fresh`, stored
    /// durably, when there is none yet. A stored value is returned as it is, even empty:
    /// the caller judges it (a key too short is refused, not silently replaced).
    async fn private(&self, name: &str, fresh: Vec<u8>) -> Result<Vec<u8>>;

    /// Where the private value `name` is kept and how an operator removes it (so that the
    /// next start generates a new one), for an error that refuses the stored value.
    fn private_place(&self, name: &str) -> PrivatePlace;
}

/// Where a private value is kept, in an operator's words.
pub struct PrivatePlace {
    /// What holds it, e.g. "the file /srv/flinger/jwt-signing-key".
    pub what: String,
    /// How to remove it, e.g. "rm /srv/flinger/jwt-signing-key".
    pub remove: String,
}

/// A file being written: bytes are appended as they arrive, then the file is made durable
/// under its name, or dropped.
#[async_trait]
pub trait NewFile: Send {
    /// Appends `bytes` (buffered up to the store's chunk size, then written).
    async fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Writes what is buffered and makes the whole file durable under its name.
    async fn finish(self: Box<Self>) -> Result<()>;
    /// Drops what was written (an upload refused or broken off).
    async fn abandon(self: Box<Self>);
}

/// The store that goes with `config.journal`: the data directory's `files/` folder on
/// `fs` for the file log, the database for the PostgreSQL journal. `lease_term` is the
/// term of the lease a PostgreSQL leader holds (`crate::ha`): its writes to existing
/// files (orphan appends) are fenced by it; `None` where one process runs alone.
pub async fn open(
    config: &Config,
    fs: Arc<dyn wal::Fs>,
    lease_term: Option<i64>,
) -> Result<Arc<dyn FileStore>> {
    match &config.journal {
        JournalTarget::File => Ok(Arc::new(
            DiskFiles::open(fs, config.data_dir.clone()).await?,
        )),
        JournalTarget::Postgres(url) => Ok(Arc::new(
            postgres::files::PgFiles::open(url, lease_term, config.lease * 2).await?,
        )),
    }
}

/// Deletes `names` from `store` once the record at `lsn` (the event that stopped
/// referring to them) is durable, so a crash never leaves a reference to a deleted file.
/// The caller holds the ticket; this waits on the log position instead. A deletion lost
/// in a crash leaves an unreferenced file, which start-up sweeps.
pub fn delete_when_durable(
    journal: &Journal,
    lsn: u64,
    store: Arc<dyn FileStore>,
    names: Vec<Box<str>>,
) {
    if names.is_empty() {
        return;
    }
    let journal = journal.clone();
    tokio::spawn(async move {
        if journal.durable(journal.ticket_for(lsn)).await.is_ok() {
            store.delete(names);
        }
    });
}

/// Logs a failed deletion, at most once per throttle period.
pub(crate) fn deletion_failed(name: &str, error: &dyn std::fmt::Display) {
    if let Some(suppressed) = crate::throttle::allow("cannot delete replaced file", 0) {
        tracing::warn!(file = name, error = %error, suppressed, "cannot delete replaced file");
    }
}

/// The error a read of a missing stored file answers: names no file (clients must not
/// learn the server's layout); callers that know which job's file it was say so.
pub(crate) fn gone() -> Error {
    Error::Gone("a file the server recorded is missing from its storage".into())
}

/// Logs that the stored file `name`, which the state refers to, is missing: an error an
/// operator must act on (restore it from a backup), at most once per throttle period per
/// file however often it is asked for.
pub fn report_missing(store: &dyn FileStore, name: &str) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    if let Some(suppressed) = crate::throttle::allow("stored file missing", hasher.finish()) {
        tracing::error!(
            file = %store.location(name),
            suppressed,
            "a stored file the state refers to is missing: its downloads answer 410 until it is restored"
        );
    }
}

/// Logs, once at start-up, that files the state refers to are missing from `place`.
pub(crate) fn warn_missing(missing: &[&str], place: &str) {
    if missing.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let mut first = missing[..missing.len().min(SHOWN)].join(", ");
    if missing.len() > SHOWN {
        first.push_str(", ...");
    }
    tracing::warn!(
        count = missing.len(),
        first = %first,
        "{} stored files the state refers to are missing from {place}: their downloads answer 410 until they are restored",
        missing.len()
    );
}

/// Runs a filesystem call (the `wal::Fs` seam is blocking) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("file task failed: {e}")))?
        .map_err(Error::from)
}

/// Bytes gathered from an upload before one write: fewer, larger blocking calls, and
/// never more than this in memory per upload.
const WRITE_CHUNK: usize = 256 << 10;
/// Bytes read from disk per chunk of a download.
const READ_CHUNK: usize = 256 << 10;

/// Files in the data directory: uploads and orphan files in `DATA_DIR/files/`, private
/// values in `DATA_DIR` itself (mode 0600), all through the filesystem seam.
pub struct DiskFiles {
    /// The filesystem seam.
    fs: Arc<dyn wal::Fs>,
    /// `DATA_DIR/files`.
    dir: PathBuf,
    /// `DATA_DIR`.
    data_dir: PathBuf,
}

impl DiskFiles {
    /// The store under `data_dir`, creating its `files/` folder durably (a data dir whose
    /// entry a crash loses takes everything with it).
    pub async fn open(fs: Arc<dyn wal::Fs>, data_dir: PathBuf) -> Result<DiskFiles> {
        let (seam, at) = (fs.clone(), data_dir.clone());
        tokio::task::spawn_blocking(move || create_data_dir(&*seam, &at))
            .await
            .map_err(|e| Error::Internal(format!("data directory task failed: {e}")))??;
        let dir = data_dir.join("files");
        let (seam, at) = (fs.clone(), dir.clone());
        blocking(move || wal::create_dir_all_durably(&*seam, &at))
            .await
            // A data directory flinger cannot write is the operator's to change.
            .map_err(|e| {
                Error::Misconfigured(format!(
                    "cannot create {} in {}: {e}",
                    dir.display(),
                    data_dir_setting(&data_dir)
                ))
            })?;
        Ok(DiskFiles { fs, dir, data_dir })
    }
}

/// How an error names the data directory: the setting and its value, so the operator
/// knows what to change (not only the path of something inside it).
pub fn data_dir_setting(data_dir: &Path) -> String {
    format!(
        "--data-dir {} (FLINGER_DATA_DIR, config key DATA_PATH)",
        data_dir.display()
    )
}

/// Creates the data directory durably (with its missing parents), or refuses it naming
/// `--data-dir` and what is wrong: a path that is not a directory, or one that cannot be
/// created (a parent not writable). Everything the file journal keeps goes through this
/// first (the server's file store, `flinger client`); a directory that exists but cannot
/// be written is named with `--data-dir` by what fails to be created in it.
pub fn create_data_dir(fs: &dyn wal::Fs, data_dir: &Path) -> Result<()> {
    let fail = |problem: String| {
        Error::Misconfigured(format!(
            "{}: {problem}; name a directory flinger may create and write",
            data_dir_setting(data_dir)
        ))
    };
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(fail("it exists and is not a directory".into()));
    }
    wal::create_dir_all_durably(fs, data_dir).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotADirectory => {
                format!("cannot create it: a part of its path is not a directory ({e})")
            }
            _ => format!("cannot create it: {e}"),
        })
    })
}

#[async_trait]
impl FileStore for DiskFiles {
    async fn create(&self, name: &str) -> Result<Box<dyn NewFile>> {
        let tmp = self.dir.join(format!("tmp-{name}"));
        let (fs, at) = (self.fs.clone(), tmp.clone());
        let file = blocking(move || fs.create(&at)).await?;
        Ok(Box::new(DiskNewFile {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            tmp,
            path: self.dir.join(name),
            file: Some(file),
            buf: Vec::new(),
            written: 0,
        }))
    }

    async fn open(&self, name: &str, size: u64) -> Result<Download> {
        let (fs, path) = (self.fs.clone(), self.dir.join(name));
        let opened = tokio::task::spawn_blocking(move || fs.open_read(&path))
            .await
            .map_err(|e| Error::Internal(format!("file task failed: {e}")))?;
        let file = match opened {
            Ok(file) => file,
            Err(e) => return Err(self.unreadable(name, e)),
        };
        let file: Arc<dyn wal::FsRead> = file.into();
        // The recorded size bounds the stream: the file holds exactly that many bytes.
        let stream = futures_util::stream::try_unfold(0u64, move |offset| {
            let file = file.clone();
            async move {
                if offset >= size {
                    return Ok(None);
                }
                let want = (size - offset).min(READ_CHUNK as u64) as usize;
                let buf = blocking(move || {
                    let mut buf = vec![0u8; want];
                    let n = file.read_at(offset, &mut buf)?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the stored file is shorter than recorded",
                        ));
                    }
                    buf.truncate(n);
                    Ok(buf)
                })
                .await?;
                let next = offset + buf.len() as u64;
                Ok(Some((Bytes::from(buf), next)))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn append(&self, name: &str, offset: u64, new: bool, bytes: Vec<u8>) -> Result<()> {
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let path = dir.join(name);
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

    async fn read(&self, name: &str, from: u64, to: u64) -> Result<Vec<u8>> {
        let (fs, path) = (self.fs.clone(), self.dir.join(name));
        let opened = tokio::task::spawn_blocking(move || fs.open_read(&path))
            .await
            .map_err(|e| Error::Internal(format!("file task failed: {e}")))?;
        let file = opened.map_err(|e| self.unreadable(name, e))?;
        blocking(move || {
            let mut bytes = vec![0u8; to.saturating_sub(from) as usize];
            let mut filled = 0;
            while filled < bytes.len() {
                let n = file.read_at(from + filled as u64, &mut bytes[filled..])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a stored file is shorter than recorded",
                    ));
                }
                filled += n;
            }
            Ok(bytes)
        })
        .await
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn delete(&self, names: Vec<Box<str>>) {
        if names.is_empty() {
            return;
        }
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        // No directory fsync: a deletion lost in a crash leaves a file start-up sweeps.
        tokio::task::spawn_blocking(move || {
            for name in names {
                if let Err(e) = fs.remove(&dir.join(&*name)) {
                    deletion_failed(&name, &e);
                }
            }
        });
    }

    async fn sweep(&self, referenced: &HashSet<&str>, keep: bool) -> Result<usize> {
        let (fs, marker) = (self.fs.clone(), self.data_dir.join(CUT_PENDING));
        let pending = blocking(move || match fs.read(&marker) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await?;
        let keep = keep || pending;
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let names = blocking(move || fs.read_dir(&dir)).await?;
        let present: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut missing: Vec<&str> = (referenced.iter().copied())
            .filter(|name| !present.contains(name))
            .collect();
        missing.sort_unstable();
        warn_missing(&missing, &self.dir.display().to_string());
        let mut removed = 0;
        let mut kept = Vec::new();
        for name in names {
            if referenced.contains(name.as_str()) {
                continue;
            }
            // An interrupted upload (`tmp-`) was never referenced by any record.
            if keep && !name.starts_with("tmp-") {
                kept.push(name);
                continue;
            }
            let (fs, path) = (self.fs.clone(), self.dir.join(&name));
            match blocking(move || fs.remove(&path)).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(file = name, "removed unreferenced upload");
                }
                Err(e) => {
                    tracing::warn!(file = name, error = %e, "cannot remove unreferenced upload")
                }
            }
        }
        if !kept.is_empty() {
            self.keep_aside(kept).await?;
        }
        if pending {
            let (fs, data_dir) = (self.fs.clone(), self.data_dir.clone());
            blocking(move || {
                fs.remove(&data_dir.join(CUT_PENDING))?;
                fs.sync_dir(&data_dir)
            })
            .await?;
        }
        Ok(removed)
    }

    async fn private(&self, name: &str, fresh: Vec<u8>) -> Result<Vec<u8>> {
        let (fs, path) = (self.fs.clone(), self.data_dir.join(name));
        let shown = path.display().to_string();
        let (value, made) = blocking(move || match fs.read(&path) {
            Ok(value) => Ok((value, false)),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Err(_) => {
                wal::write_private_file_durably(&*fs, &path, &fresh)?;
                Ok((fresh, true))
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("cannot keep {shown}: {}", e.message())))?;
        if made {
            tracing::info!(path = shown, "generated {name}");
        }
        Ok(value)
    }

    fn private_place(&self, name: &str) -> PrivatePlace {
        let path = self.data_dir.join(name);
        PrivatePlace {
            what: format!("the file {}", path.display()),
            remove: format!("rm {}", path.display()),
        }
    }
}

/// A marker in the data directory, written durably before a replay allowed to cut the log
/// at corruption and removed only once the sweep after such a cut has moved the
/// unreferenced files aside: a crash between the cut and that sweep leaves it, so the next
/// start (with the flag or not) keeps those files too instead of deleting them.
pub const CUT_PENDING: &str = "lost+found.pending";

/// Where `DiskFiles::keep_aside` moves files: inside the data directory (same
/// filesystem, so a rename), outside `files/` (so no later sweep deletes them).
pub const LOST_AND_FOUND: &str = "lost+found";

impl DiskFiles {
    /// The error for `name` that could not be opened: [`gone`] when it does not exist,
    /// else an internal error naming no path; the path is logged (throttled).
    fn unreadable(&self, name: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            return gone();
        }
        if let Some(suppressed) = crate::throttle::allow("cannot open a stored file", 0) {
            tracing::error!(file = %self.location(name), error = %e, suppressed, "cannot open a stored file");
        }
        Error::Internal(format!("cannot open a stored file: {e}"))
    }

    /// Moves `names` from `files/` to `DATA_DIR/lost+found/` durably and logs where they
    /// went and which they are, so an operator can tell what to restore.
    async fn keep_aside(&self, names: Vec<String>) -> Result<()> {
        let to = self.data_dir.join(LOST_AND_FOUND);
        let (fs, from, dest) = (self.fs.clone(), self.dir.clone(), to.clone());
        let moving = names.clone();
        blocking(move || {
            wal::create_dir_all_durably(&*fs, &dest)?;
            for name in &moving {
                fs.rename(&from.join(name), &dest.join(name))?;
            }
            fs.sync_dir(&dest)?;
            fs.sync_dir(&from)
        })
        .await
        .map_err(|e| {
            Error::Internal(format!(
                "cannot move unreferenced files to {}: {e}",
                to.display()
            ))
        })?;
        tracing::warn!(
            count = names.len(),
            dir = %to.display(),
            files = %names.join(", "),
            "the log was cut at corruption: kept the stored files no remaining record refers to (the discarded records may have); restore what you need, then delete them"
        );
        Ok(())
    }
}

/// An upload in progress on disk: a temporary file, renamed to its name once synced.
struct DiskNewFile {
    fs: Arc<dyn wal::Fs>,
    /// The folder (synced after the rename).
    dir: PathBuf,
    /// Where the bytes go until [`NewFile::finish`].
    tmp: PathBuf,
    /// The file's name once finished.
    path: PathBuf,
    /// The open temporary file (`None` only while a blocking call holds it).
    file: Option<Box<dyn wal::FsFile>>,
    /// Bytes not written yet (below [`WRITE_CHUNK`]).
    buf: Vec<u8>,
    /// Bytes written to the file so far.
    written: u64,
}

impl DiskNewFile {
    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        let offset = self.written;
        self.written += data.len() as u64;
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::Internal("an upload's file was lost".into()))?;
        self.file = Some(blocking(move || file.write_at(offset, &data).map(|()| file)).await?);
        Ok(())
    }
}

#[async_trait]
impl NewFile for DiskNewFile {
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let result = async {
            self.flush().await?;
            let file = self.file.take();
            let (fs, dir, tmp, path) = (
                self.fs.clone(),
                self.dir.clone(),
                self.tmp.clone(),
                self.path.clone(),
            );
            blocking(move || {
                if let Some(mut file) = file {
                    file.sync_all()?;
                }
                fs.rename(&tmp, &path)?;
                fs.sync_dir(&dir)
            })
            .await
        }
        .await;
        if result.is_err() {
            let (fs, tmp) = (self.fs.clone(), self.tmp.clone());
            let _ = blocking(move || fs.remove(&tmp)).await;
        }
        result
    }

    async fn abandon(mut self: Box<Self>) {
        self.file.take();
        let (fs, tmp) = (self.fs.clone(), self.tmp.clone());
        let _ = blocking(move || fs.remove(&tmp)).await;
    }
}
