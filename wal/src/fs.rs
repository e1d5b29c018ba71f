//! The filesystem seam: the few operations the log performs, behind a trait, and the real thing.
//!
//! Everything the log does to disk goes through [`Fs`] and [`FsFile`], so tests can run the same
//! code on an in-memory disk or inject errors at any step ([`crate::fault`]). The trait is shaped
//! by the log's needs (positioned writes, `fdatasync`, `fallocate`, directory fsync), not by
//! `std::fs`'s breadth. It does not buffer: every call reaches the OS.
//!
//! Every file the server keeps goes through this seam (the log, snapshots, uploaded files), so the
//! power-loss double ([`crate::power`]) sees all of it. To keep a small file of your own durably
//! (a key, a marker), use [`write_file_durably`] ([`write_private_file_durably`] for a secret) and
//! read it back with [`Fs::read`]; to create a directory that must survive a crash,
//! [`create_dir_all_durably`].

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Directory-level operations. Implementations must be usable from any thread.
pub trait Fs: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates the one directory `dir` (its parent must exist); [`io::ErrorKind::AlreadyExists`]
    /// if it exists. The default makes do with [`Fs::create_dir_all`] and never reports that.
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.create_dir_all(dir)
    }
    /// Takes an exclusive, non-blocking lock on `path` (created if missing), held until the
    /// returned guard drops. Fails with [`io::ErrorKind::WouldBlock`] when someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Names of the entries in `dir` (names that are not UTF-8 are skipped: none of ours are).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for positioned reads, so a large file can be streamed; the open file stays
    /// readable after its name is removed or replaced. The default reads the whole file into
    /// memory, which is correct but only fit for small files: real filesystems override it.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        Ok(Box::new(InMemory(self.read(path)?)))
    }
    /// The whole of `path` mapped read-only, where the filesystem can; `None` (the default)
    /// asks the caller to read it instead. The mapping stays valid after the name is
    /// removed or replaced.
    ///
    /// # Safety
    /// Nothing may write to or truncate the file while the mapping lives: the bytes would
    /// change under the reader, and a page the file no longer has (or that the disk fails
    /// to read) ends the process with `SIGBUS` instead of an error. Only for files that are
    /// complete before they get their name and never change in place (snapshots).
    unsafe fn map(&self, path: &Path) -> io::Result<Option<Mapped>> {
        let _ = path;
        Ok(None)
    }
    /// Creates `path` empty (truncating an existing file), open for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// [`Fs::create`] readable and writable by the owner only (mode 0600), for secrets such
    /// as a signing key. The default is [`Fs::create`]: simulated disks have no modes.
    fn create_private(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.create(path)
    }
    /// Opens an existing `path` for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and deletions inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file mapped read-only into memory (see [`Fs::map`]).
pub type Mapped = memmap2::Mmap;

/// An open file. Writes are positioned, so nothing depends on a hidden cursor.
pub trait FsFile: Send + Sync {
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: data and the metadata needed to read it back (the size) are durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`: data and all metadata are durable.
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks for `0..len`, extending the file with zeros; never shrinks it.
    /// `Ok(false)` means the filesystem cannot preallocate, and nothing was done.
    fn allocate(&mut self, len: u64) -> io::Result<bool>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A file open for reading (see [`Fs::open_read`]).
pub trait FsRead: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at or past the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The content of a file read whole: the default [`Fs::open_read`].
struct InMemory(Vec<u8>);

impl FsRead for InMemory {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.0.len(), |o| o.min(self.0.len()));
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// Bytes written to a large file (a spare's zeros, a snapshot) between two of its
/// `fdatasync`s: see [`SteppedSync`].
pub(crate) const SYNC_STEP: u64 = 1 << 20;

/// Positioned writes to a large file that `fdatasync` it after every [`SYNC_STEP`] bytes.
/// The log's own syncs share the device with such a write, and one flush of all of it at
/// the end (tens of MiB of a spare, hundreds of a snapshot) made every acknowledgement
/// issued meanwhile wait for the whole (the soak's 16-60 ms p999 in the seconds of a
/// segment rotation or a snapshot).
#[derive(Default)]
pub(crate) struct SteppedSync {
    /// Bytes written since the file was last synced.
    unsynced: u64,
}

impl SteppedSync {
    /// Writes `bytes` at `offset` of `file` (opened as `path`, for errors).
    pub(crate) fn write_at(
        &mut self,
        file: &mut dyn FsFile,
        path: &Path,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), crate::Error> {
        let mut done = 0;
        while done < bytes.len() {
            let room = (SYNC_STEP - self.unsynced) as usize;
            let chunk = &bytes[done..bytes.len().min(done + room)];
            file.write_at(offset + done as u64, chunk)
                .map_err(|e| crate::Error::io("write", path, e))?;
            done += chunk.len();
            self.unsynced += chunk.len() as u64;
            if self.unsynced == SYNC_STEP {
                file.sync_data()
                    .map_err(|e| crate::Error::io("sync_data", path, e))?;
                self.unsynced = 0;
            }
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` so that a crash at any instant leaves either the old content or
/// the new, whole, and the new content is durable when this returns: writes `path.tmp`, fsyncs
/// it, renames it over `path`, fsyncs the directory. For small files (keys, markers) read back
/// with [`Fs::read`]; a leftover `.tmp` from a crash is the caller's to ignore or remove.
pub fn write_file_durably(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durably(fs, path, bytes, false)
}

/// [`write_file_durably`] for a secret: the file is created with [`Fs::create_private`]
/// (mode 0600 on a real disk) before any byte is written, so it is never readable by others.
pub fn write_private_file_durably(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durably(fs, path, bytes, true)
}

fn write_durably(fs: &dyn Fs, path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let written = (|| {
        let mut file = if private {
            fs.create_private(&tmp)?
        } else {
            fs.create(&tmp)?
        };
        file.write_at(0, bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs.rename(&tmp, path)) {
        let _ = fs.remove(&tmp);
        return Err(e);
    }
    fs.sync_dir(dir)
}

/// Creates `dir` and any missing parents so that they survive a crash: each directory created is
/// made durable by syncing the directory that holds it (a directory entry is only durable once its
/// parent is synced, and losing the data directory's entry would lose everything in it).
pub fn create_dir_all_durably(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || ancestor.parent().is_none() {
            break;
        }
        missing.push(ancestor.to_path_buf());
    }
    for d in missing.iter().rev() {
        match fs.create_dir(d) {
            Ok(()) => fs.sync_dir(parent_dir(d))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The real filesystem (Linux / Unix).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl Fs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own and keep open; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The lock lives as long as the descriptor: closing the file releases it.
        Ok(Box::new(file))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        Ok(Box::new(StdFile(File::open(path)?)))
    }

    unsafe fn map(&self, path: &Path) -> io::Result<Option<Mapped>> {
        let file = File::open(path)?;
        // SAFETY: the caller's promise (see `Fs::map`): nothing changes the file while the
        // mapping lives. Not populated: the file is read whole right after, by the
        // checksum's threads, which fault their pieces in on every core at once.
        let mapped = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(Some(mapped))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn create_private(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // The mode applies only to a file this call created: narrow a leftover one too.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(Box::new(StdFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A real file behind the [`FsFile`] seam.
struct StdFile(File);

impl FsFile for StdFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
        // SAFETY: posix_fallocate on a descriptor we own; it touches no memory of ours.
        let rc = unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, len) };
        match rc {
            0 => Ok(true),
            // Filesystems without fallocate: run unpreallocated rather than not at all.
            libc::EOPNOTSUPP | libc::EINVAL => Ok(false),
            // posix_fallocate returns the error number instead of setting errno.
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl FsRead for StdFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
