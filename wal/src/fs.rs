//! The filesystem seam: the few operations the log performs, behind a trait, and the real thing.
//!
//! Everything the log does to disk goes through [`Fs`] and [`FsFile`], so tests can run the same
//! code on an in-memory disk or inject errors at any step ([`crate::fault`]). The trait is shaped
//! by the log's needs (positioned writes, `fdatasync`, `fallocate`, directory fsync), not by
//! `std::fs`'s breadth. It does not buffer: every call reaches the OS.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Directory-level operations. Implementations must be usable from any thread.
pub trait Fs: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive, non-blocking lock on `path` (created if missing), held until the
    /// returned guard drops. Fails with [`io::ErrorKind::WouldBlock`] when someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Names of the entries in `dir` (names that are not UTF-8 are skipped: none of ours are).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates `path` empty (truncating an existing file), open for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing `path` for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and deletions inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

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

/// The real filesystem (Linux / Unix).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl Fs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
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

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
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
