//! Test doubles for the [`Fs`] seam: an in-memory disk and an error injector.
//!
//! Public so the server crate's tests can use them too. [`MemFs`] makes exhaustive recovery tests
//! (every byte, every bit) fast and lets a test copy a whole "disk image" cheaply. [`FaultyFs`]
//! wraps any [`Fs`] and fails the nth write, sync, rename, create or allocate, which is how the
//! poisoning and no-space rules are tested. Neither simulates a page cache: data written is data
//! on "disk", so they test error handling, not power loss; [`crate::power::PowerFs`] does that.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, FsFile, FsRead};

/// Locks a mutex, ignoring poisoning: a panicking test thread must not cascade into others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Content of one in-memory file, shared by the directory entry and every open handle.
type Content = Arc<Mutex<Vec<u8>>>;

/// An in-memory filesystem. Clones share the same disk; [`MemFs::deep_copy`] makes a new one.
#[derive(Clone, Default)]
pub struct MemFs {
    /// The disk, shared between clones so a test can inspect what a [`crate::Wal`] wrote.
    state: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    /// Files by full path; directories exist implicitly.
    files: BTreeMap<PathBuf, Content>,
    /// Paths currently locked through [`Fs::lock`], so a second opener sees `WouldBlock`.
    locks: BTreeSet<PathBuf>,
}

impl MemFs {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of every file (locks are not copied), like imaging a disk.
    pub fn deep_copy(&self) -> MemFs {
        let state = lock(&self.state);
        let files = state
            .files
            .iter()
            .map(|(p, c)| (p.clone(), Arc::new(Mutex::new(lock(c).clone()))))
            .collect();
        MemFs {
            state: Arc::new(Mutex::new(MemState {
                files,
                locks: BTreeSet::new(),
            })),
        }
    }

    /// Replaces (or creates) the content of `path`; for tests that tamper with the disk.
    pub fn put(&self, path: &Path, bytes: Vec<u8>) {
        lock(&self.state)
            .files
            .insert(path.to_path_buf(), Arc::new(Mutex::new(bytes)));
    }

    fn content(&self, path: &Path) -> io::Result<Content> {
        lock(&self.state)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

/// Releases a [`MemFs`] lock when dropped, like closing a flock'd descriptor.
struct MemLock {
    /// The disk whose lock table holds `path`.
    state: Arc<Mutex<MemState>>,
    /// The locked path.
    path: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        lock(&self.state).locks.remove(&self.path);
    }
}

impl Fs for MemFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut state = lock(&self.state);
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        state.files.entry(path.to_path_buf()).or_default();
        Ok(Box::new(MemLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(lock(&self.state)
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let content = self.content(path)?;
        let bytes = lock(&content).clone();
        Ok(bytes)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let content = Content::default();
        lock(&self.state)
            .files
            .insert(path.to_path_buf(), content.clone());
        Ok(Box::new(MemFile(content)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(MemFile(self.content(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let content = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), content);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        lock(&self.state)
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// An open [`MemFs`] file; like an unlinked-but-open file, it outlives its directory entry.
struct MemFile(Content);

impl FsFile for MemFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut data = lock(&self.0);
        let start = offset as usize;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        lock(&self.0).resize(len as usize, 0);
        Ok(())
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        let mut data = lock(&self.0);
        if (data.len() as u64) < len {
            data.resize(len as usize, 0);
        }
        Ok(true)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.0).len() as u64)
    }
}

/// An operation [`FaultyFs`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// [`FsFile::write_at`]. A failing write first writes half its buffer: a torn write.
    Write,
    /// [`FsFile::sync_data`], [`FsFile::sync_all`] and [`Fs::sync_dir`].
    Sync,
    /// [`Fs::rename`].
    Rename,
    /// [`Fs::create`].
    Create,
    /// [`FsFile::allocate`].
    Allocate,
}

const OPS: usize = 5;

/// The error a fault produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `EIO`: the device failed.
    Io,
    /// `ENOSPC`: the disk is full.
    NoSpace,
    /// `EMFILE`: the process is out of file descriptors.
    TooManyFiles,
    /// `EACCES`: permission denied (a read-only data directory).
    Denied,
}

impl Fault {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::Io => libc::EIO,
            Fault::NoSpace => libc::ENOSPC,
            Fault::TooManyFiles => libc::EMFILE,
            Fault::Denied => libc::EACCES,
        })
    }
}

/// One armed failure.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Which operation it watches.
    op: Op,
    /// Calls of `op` still to let through before failing.
    skip: u64,
    /// The error to return.
    fault: Fault,
    /// Keep failing every later call too (a full disk stays full) until [`FaultyFs::clear`].
    sticky: bool,
}

/// Shared between a [`FaultyFs`] and the files it opened, so rules armed later reach open files.
#[derive(Default)]
struct Plan {
    /// Armed failures.
    rules: Mutex<Vec<Rule>>,
    /// Calls seen per operation, so a test can sweep "fail the nth call" over a whole workload.
    calls: [AtomicU64; OPS],
}

impl Plan {
    /// Counts a call of `op` and says whether it must fail.
    fn check(&self, op: Op) -> Option<io::Error> {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        let mut rules = lock(&self.rules);
        let mut failure = None;
        // Every rule counts every call; when two are due at once the first one's error is used.
        rules.retain_mut(|rule| {
            if rule.op != op {
                return true;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                return true;
            }
            failure.get_or_insert_with(|| rule.fault.error());
            rule.sticky
        });
        failure
    }
}

/// Wraps an [`Fs`] and fails chosen calls.
#[derive(Clone)]
pub struct FaultyFs {
    /// The filesystem that does the real work when no fault fires.
    inner: Arc<dyn Fs>,
    /// What to fail, shared with open files.
    plan: Arc<Plan>,
}

impl FaultyFs {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: Arc<dyn Fs>) -> Self {
        FaultyFs {
            inner,
            plan: Arc::default(),
        }
    }

    /// Fails the `nth` call of `op` from now on (1 = the next call), once.
    pub fn fail_nth(&self, op: Op, nth: u64, fault: Fault) {
        self.arm(op, nth, fault, false);
    }

    /// Fails every call of `op` from now on until [`FaultyFs::clear`].
    pub fn fail_always(&self, op: Op, fault: Fault) {
        self.arm(op, 1, fault, true);
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        lock(&self.plan.rules).clear();
    }

    /// How many calls of `op` were made so far (failed ones included).
    pub fn calls(&self, op: Op) -> u64 {
        self.plan.calls[op as usize].load(Ordering::Relaxed)
    }

    fn arm(&self, op: Op, nth: u64, fault: Fault, sticky: bool) {
        assert!(nth >= 1, "calls are counted from 1");
        lock(&self.plan.rules).push(Rule {
            op,
            skip: nth - 1,
            fault,
            sticky,
        });
    }

    fn check(&self, op: Op) -> io::Result<()> {
        self.plan.check(op).map_or(Ok(()), Err)
    }

    fn wrap(&self, file: Box<dyn FsFile>) -> Box<dyn FsFile> {
        Box::new(FaultyFile {
            inner: file,
            plan: self.plan.clone(),
        })
    }
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        self.inner.open_read(path)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.check(Op::Create)?;
        Ok(self.wrap(self.inner.create(path)?))
    }

    fn create_private(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.check(Op::Create)?;
        Ok(self.wrap(self.inner.create_private(path)?))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(self.wrap(self.inner.open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::Sync)?;
        self.inner.sync_dir(dir)
    }
}

/// A file opened through [`FaultyFs`].
struct FaultyFile {
    /// The real file.
    inner: Box<dyn FsFile>,
    /// The owning [`FaultyFs`]'s rules and counters.
    plan: Arc<Plan>,
}

impl FsFile for FaultyFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if let Some(err) = self.plan.check(Op::Write) {
            // Real failures are often partial: leave a torn write behind for recovery to find.
            self.inner.write_at(offset, &buf[..buf.len() / 2])?;
            return Err(err);
        }
        self.inner.write_at(offset, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.plan.check(Op::Sync).map_or(Ok(()), Err)?;
        self.inner.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.plan.check(Op::Sync).map_or(Ok(()), Err)?;
        self.inner.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        self.plan.check(Op::Allocate).map_or(Ok(()), Err)?;
        self.inner.allocate(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}
