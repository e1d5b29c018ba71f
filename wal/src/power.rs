//! A power-loss double for the [`Fs`] seam: an in-memory disk behind a page cache.
//!
//! Public, like [`crate::fault`], so the server's tests can run a whole server on it. Unlike
//! [`crate::fault::MemFs`], what a program writes is not on "disk" until it is synced:
//!
//! - a file's writes, truncations and allocations are volatile until that file's
//!   [`FsFile::sync_data`] / [`FsFile::sync_all`];
//! - creating, renaming or removing a file and creating a directory are volatile until the
//!   directory holding the name is synced with [`Fs::sync_dir`] (a rename belongs to both of its
//!   directories; syncing either makes it durable). Syncing a file does not make its name durable:
//!   that is the POSIX rule, stricter than ext4's habit.
//!
//! [`PowerFs::cut`] (or an armed [`PowerFs::cut_after`]) cuts the power at that instant: it
//! returns a new disk holding what was durable plus one crash-consistent choice, drawn from a
//! seeded [`Rng`], of what was volatile:
//! - for each file, a prefix of its unsynced changes in order, the first change left out possibly
//!   torn at a 512-byte or 4-KiB boundary (a torn write that grew the file may also leave the
//!   grown size with zeros past the tear, as XFS could); files choose independently, so writes
//!   reach the disk in any order across files;
//! - each unsynced directory change either happened or not, independently (a rename is atomic:
//!   the new name points at the file and the old one is gone, or nothing changed); a name whose
//!   directory did not survive is gone with it.
//!
//! After the cut the old disk is dead: every call on it fails with `EIO`, as a machine without
//! power answers nothing, so the program that was running cannot acknowledge anything more.
//!
//! Not modelled: sectors of one write reaching the disk out of order (each file keeps a prefix),
//! disks that acknowledge a flush they did not do, and bit rot. See the README's durability
//! section.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, FsFile, FsRead};

/// A small seeded pseudo-random generator (SplitMix64): the crash choices and the trials that
/// drive them must replay from one printed seed, without a dependency for it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence follows from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not cascade into others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a name points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A file: an index into [`Disk::inodes`].
    File(u64),
    /// A directory; its entries are the names below its path.
    Dir,
}

/// An unsynced change to one file's content.
#[derive(Debug, Clone)]
enum FileOp {
    /// `write_at(offset, data)`.
    Write { offset: u64, data: Vec<u8> },
    /// `set_len(len)`.
    SetLen(u64),
    /// `allocate(len)`: grows with zeros, never shrinks.
    Allocate(u64),
}

impl FileOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, data } => write_into(content, *offset, data),
            FileOp::SetLen(len) => content.resize(*len as usize, 0),
            FileOp::Allocate(len) => {
                if content.len() < *len as usize {
                    content.resize(*len as usize, 0);
                }
            }
        }
    }
}

fn write_into(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

/// One file's content: what reads see, what the disk holds, and the changes in between.
#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see (the page cache).
    current: Vec<u8>,
    /// What survives a power cut for certain.
    durable: Vec<u8>,
    /// Changes since the last sync, oldest first; applied to `durable` they give `current`.
    pending: Vec<FileOp>,
}

/// An unsynced change to a directory.
#[derive(Debug, Clone)]
enum DirOp {
    /// A new file or directory at `path`.
    Create { path: PathBuf, node: Node },
    /// The file `node` moved from `from` to `to` (replacing whatever `to` named).
    Rename {
        from: PathBuf,
        to: PathBuf,
        node: Node,
    },
    /// The name `path` of `node` was removed.
    Remove { path: PathBuf, node: Node },
}

impl DirOp {
    /// Applies the change to a namespace, as the disk would if it reached it.
    fn apply(&self, names: &mut BTreeMap<PathBuf, Node>) {
        match self {
            DirOp::Create { path, node } => {
                names.insert(path.clone(), *node);
            }
            DirOp::Rename { from, to, node } => {
                if names.get(from) == Some(node) {
                    names.remove(from);
                }
                names.insert(to.clone(), *node);
            }
            DirOp::Remove { path, node } => {
                if names.get(path) == Some(node) {
                    names.remove(path);
                }
            }
        }
    }

    /// Whether syncing `dir` makes this change durable.
    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            DirOp::Create { path, .. } | DirOp::Remove { path, .. } => path.parent() == Some(dir),
            DirOp::Rename { from, to, .. } => {
                from.parent() == Some(dir) || to.parent() == Some(dir)
            }
        }
    }
}

/// The kind of the last mutating call, for [`Cut::last_op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// [`FsFile::write_at`].
    Write,
    /// [`FsFile::sync_data`] or [`FsFile::sync_all`].
    SyncFile,
    /// [`FsFile::set_len`].
    SetLen,
    /// [`FsFile::allocate`].
    Allocate,
    /// [`Fs::create`].
    Create,
    /// [`Fs::rename`] (the path is the destination).
    Rename,
    /// [`Fs::remove`].
    Remove,
    /// [`Fs::create_dir`] or [`Fs::create_dir_all`].
    CreateDir,
    /// [`Fs::sync_dir`].
    SyncDir,
}

/// What the disk was doing when the power went: for a trial to tell which moments it covered.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The last mutating call before the cut (the one that was cut off, for an armed cut) and
    /// the path it was about (for file calls, the path the file was opened under).
    pub last_op: Option<(OpKind, PathBuf)>,
    /// Files whose names existed when the power went, with unsynced changes.
    pub dirty_files: Vec<PathBuf>,
    /// Unsynced directory changes, described.
    pub pending_dir_ops: Vec<String>,
    /// The mutating calls made before the cut.
    pub ops: u64,
}

/// The whole disk.
#[derive(Default)]
struct Disk {
    /// Names as the running program sees them.
    live: BTreeMap<PathBuf, Node>,
    /// Names as the disk holds them for certain.
    durable: BTreeMap<PathBuf, Node>,
    /// Directory changes not yet durable, in the order they were made.
    dir_ops: Vec<DirOp>,
    /// File contents by inode number.
    inodes: HashMap<u64, Inode>,
    /// The next inode number.
    next_inode: u64,
    /// Paths locked through [`Fs::lock`].
    locks: BTreeSet<PathBuf>,
    /// Mutating calls so far.
    ops: u64,
    /// An armed cut: when `ops` reaches this, the power goes, with crash choices from the seed.
    cut_at: Option<(u64, u64)>,
    /// The last mutating call, for [`Cut`], with the inode of a file call (whose name may
    /// have changed since it was opened).
    last_op: Option<(OpKind, PathBuf, Option<u64>)>,
    /// Set by the cut: the disk image that survived and what was going on.
    image: Option<(PowerFs, Cut)>,
}

/// Shared by a [`PowerFs`] and every file opened from it.
#[derive(Default)]
struct Shared {
    /// The disk.
    disk: Mutex<Disk>,
    /// Set once the power is cut; checked without the lock by [`PowerFs::is_cut`].
    dead: AtomicBool,
}

/// An in-memory disk with a page cache that a test can cut the power of. Clones share the disk.
#[derive(Clone, Default)]
pub struct PowerFs {
    /// The disk, shared with open files.
    shared: Arc<Shared>,
}

impl fmt::Debug for PowerFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = lock(&self.shared.disk);
        f.debug_struct("PowerFs")
            .field("names", &disk.live.len())
            .field("ops", &disk.ops)
            .field("cut", &disk.image.is_some())
            .finish()
    }
}

fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", path.display()),
    )
}

impl Disk {
    /// Counts a mutating call and cuts the power if an armed cut is due. `Err` once cut.
    fn step(
        &mut self,
        shared: &Shared,
        kind: OpKind,
        path: &Path,
        ino: Option<u64>,
    ) -> io::Result<()> {
        if self.image.is_some() {
            return Err(dead());
        }
        self.last_op = Some((kind, path.to_path_buf(), ino));
        if let Some((at, seed)) = self.cut_at {
            if self.ops >= at {
                self.power_cut(shared, seed);
                return Err(dead());
            }
        }
        self.ops += 1;
        Ok(())
    }

    /// The last call for [`Cut`]: a file call names the file's current name, if it has one.
    fn describe_last_op(&self) -> Option<(OpKind, PathBuf)> {
        let (kind, path, ino) = self.last_op.clone()?;
        let current = ino.and_then(|ino| {
            self.live
                .iter()
                .find(|(_, n)| **n == Node::File(ino))
                .map(|(p, _)| p.clone())
        });
        Some((kind, current.unwrap_or(path)))
    }

    /// Fails once the power is cut (for reads and other non-mutating calls).
    fn alive(&self) -> io::Result<()> {
        if self.image.is_some() {
            Err(dead())
        } else {
            Ok(())
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.parent().is_none() || self.live.get(path) == Some(&Node::Dir)
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.live.get(path) {
            Some(Node::File(ino)) => Ok(*ino),
            Some(Node::Dir) => Err(invalid(path, "is a directory")),
            None => Err(not_found(path)),
        }
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if self.is_dir(parent) => Ok(()),
            _ => Err(not_found(path)),
        }
    }

    fn new_inode(&mut self) -> u64 {
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    fn file_op(&mut self, ino: u64, op: FileOp) {
        let inode = self
            .inodes
            .get_mut(&ino)
            .expect("open files keep their inode");
        op.apply(&mut inode.current);
        inode.pending.push(op);
    }

    fn sync_file(&mut self, ino: u64) {
        let inode = self
            .inodes
            .get_mut(&ino)
            .expect("open files keep their inode");
        for op in inode.pending.drain(..) {
            op.apply(&mut inode.durable);
        }
    }

    fn mkdir(&mut self, dir: &Path) {
        self.live.insert(dir.to_path_buf(), Node::Dir);
        self.dir_ops.push(DirOp::Create {
            path: dir.to_path_buf(),
            node: Node::Dir,
        });
    }

    /// Cuts the power now: computes the surviving image from `seed` and kills this disk.
    fn power_cut(&mut self, shared: &Shared, seed: u64) {
        if self.image.is_some() {
            return;
        }
        let mut rng = Rng::new(seed);
        // How likely each unsynced directory change is to have reached the disk: sometimes none,
        // sometimes all, often a mix.
        let dir_odds = [0, 1, 2, 3, 4][rng.below(5) as usize];
        let mut names = self.durable.clone();
        for op in &self.dir_ops {
            if rng.chance(dir_odds, 4) {
                op.apply(&mut names);
            }
        }
        // A name survives only with every directory above it.
        let dirs: BTreeSet<PathBuf> = names
            .iter()
            .filter(|(_, n)| **n == Node::Dir)
            .map(|(p, _)| p.clone())
            .collect();
        names.retain(|path, _| {
            path.ancestors()
                .skip(1)
                .all(|a| a.parent().is_none() || dirs.contains(a))
        });
        let sector = if rng.chance(1, 2) { 512 } else { 4096 };
        let mut inodes = HashMap::new();
        for node in names.values() {
            let Node::File(ino) = *node else { continue };
            if inodes.contains_key(&ino) {
                continue;
            }
            let inode = &self.inodes[&ino];
            inodes.insert(ino, survivor(inode, sector, &mut rng));
        }
        let cut = Cut {
            last_op: self.describe_last_op(),
            dirty_files: self
                .live
                .iter()
                .filter_map(|(p, n)| match n {
                    Node::File(ino) if !self.inodes[ino].pending.is_empty() => Some(p.clone()),
                    _ => None,
                })
                .collect(),
            pending_dir_ops: self.dir_ops.iter().map(|op| format!("{op:?}")).collect(),
            ops: self.ops,
        };
        let image = Disk {
            durable: names.clone(),
            live: names,
            next_inode: self.next_inode,
            inodes: inodes
                .into_iter()
                .map(|(ino, content)| {
                    let inode = Inode {
                        current: content.clone(),
                        durable: content,
                        pending: Vec::new(),
                    };
                    (ino, inode)
                })
                .collect(),
            ..Disk::default()
        };
        let image = PowerFs {
            shared: Arc::new(Shared {
                disk: Mutex::new(image),
                dead: AtomicBool::new(false),
            }),
        };
        self.image = Some((image, cut));
        shared.dead.store(true, Ordering::SeqCst);
    }
}

/// What of `inode` reaches the disk: its durable content plus a prefix of its unsynced changes,
/// the first change left out possibly torn at a `sector` boundary.
fn survivor(inode: &Inode, sector: u64, rng: &mut Rng) -> Vec<u8> {
    let mut content = inode.durable.clone();
    let kept = rng.below(inode.pending.len() as u64 + 1) as usize;
    for op in &inode.pending[..kept] {
        op.apply(&mut content);
    }
    if let Some(FileOp::Write { offset, data }) = inode.pending.get(kept) {
        let (start, end) = (*offset, *offset + data.len() as u64);
        // Sector boundaries strictly inside the write: where it can tear.
        let first = start / sector + 1;
        let last = end.div_ceil(sector) - 1;
        if first <= last && rng.chance(1, 2) {
            let tear = (first + rng.below(last - first + 1)) * sector;
            let grew = end > content.len() as u64;
            write_into(&mut content, start, &data[..(tear - start) as usize]);
            if grew && rng.chance(1, 4) {
                // The size reached the disk before the data: the rest reads as zeros.
                content.resize(end as usize, 0);
            }
        }
    }
    content
}

impl PowerFs {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms a power cut: once `ops` more mutating calls (writes, syncs, creates, renames,
    /// removals, allocations, truncations) have completed, the next one is cut off, with crash
    /// choices drawn from `seed`. The image is then in [`PowerFs::image`].
    pub fn cut_after(&self, ops: u64, seed: u64) {
        let mut disk = lock(&self.shared.disk);
        let at = disk.ops + ops;
        disk.cut_at = Some((at, seed));
    }

    /// Disarms a cut armed with [`PowerFs::cut_after`] that has not fired.
    pub fn disarm(&self) {
        lock(&self.shared.disk).cut_at = None;
    }

    /// Cuts the power now (if not already cut) and returns what survived, with crash choices
    /// drawn from `seed`.
    pub fn cut(&self, seed: u64) -> (PowerFs, Cut) {
        let mut disk = lock(&self.shared.disk);
        disk.power_cut(&self.shared, seed);
        disk.image.clone().expect("the power was just cut")
    }

    /// The disk that survived, once the power was cut.
    pub fn image(&self) -> Option<(PowerFs, Cut)> {
        lock(&self.shared.disk).image.clone()
    }

    /// Whether the power was cut (cheap: no lock).
    pub fn is_cut(&self) -> bool {
        self.shared.dead.load(Ordering::SeqCst)
    }

    /// Mutating calls made so far.
    pub fn ops(&self) -> u64 {
        lock(&self.shared.disk).ops
    }

    /// Every file name and its current content, sorted (directories are left out).
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let disk = lock(&self.shared.disk);
        disk.live
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(ino) => Some((p.clone(), disk.inodes[ino].current.clone())),
                Node::Dir => None,
            })
            .collect()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.shared.disk)
    }

    fn open_file(&self, ino: u64, path: &Path) -> Box<dyn FsFile> {
        Box::new(PowerFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
        })
    }
}

/// Releases a [`PowerFs`] lock when dropped.
struct PowerLock {
    /// The disk whose lock table holds `path`.
    fs: PowerFs,
    /// The locked path.
    path: PathBuf,
}

impl Drop for PowerLock {
    fn drop(&mut self) {
        self.fs.disk().locks.remove(&self.path);
    }
}

impl Fs for PowerFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.alive()?;
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|a| !disk.is_dir(a)).collect();
        missing.reverse();
        for d in missing {
            if disk.live.contains_key(d) {
                return Err(invalid(d, "is a file"));
            }
            disk.step(&self.shared, OpKind::CreateDir, d, None)?;
            disk.mkdir(d);
        }
        Ok(())
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.alive()?;
        if disk.live.contains_key(dir) || dir.parent().is_none() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        disk.parent_exists(dir)?;
        disk.step(&self.shared, OpKind::CreateDir, dir, None)?;
        disk.mkdir(dir);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut disk = self.disk();
        disk.alive()?;
        disk.parent_exists(path)?;
        if !disk.live.contains_key(path) {
            disk.step(&self.shared, OpKind::Create, path, None)?;
            let ino = disk.new_inode();
            disk.live.insert(path.to_path_buf(), Node::File(ino));
            disk.dir_ops.push(DirOp::Create {
                path: path.to_path_buf(),
                node: Node::File(ino),
            });
        }
        if !disk.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(PowerLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk();
        disk.alive()?;
        if !disk.is_dir(dir) {
            return Err(not_found(dir));
        }
        Ok(disk
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let disk = self.disk();
        disk.alive()?;
        let ino = disk.file(path)?;
        Ok(disk.inodes[&ino].current.clone())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        let disk = self.disk();
        disk.alive()?;
        let ino = disk.file(path)?;
        Ok(Box::new(PowerFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut disk = self.disk();
        disk.alive()?;
        disk.parent_exists(path)?;
        match disk.live.get(path).copied() {
            Some(Node::Dir) => Err(invalid(path, "is a directory")),
            Some(Node::File(ino)) => {
                // O_TRUNC on an existing file: same inode, its content goes.
                disk.step(&self.shared, OpKind::Create, path, None)?;
                disk.file_op(ino, FileOp::SetLen(0));
                drop(disk);
                Ok(self.open_file(ino, path))
            }
            None => {
                disk.step(&self.shared, OpKind::Create, path, None)?;
                let ino = disk.new_inode();
                disk.live.insert(path.to_path_buf(), Node::File(ino));
                disk.dir_ops.push(DirOp::Create {
                    path: path.to_path_buf(),
                    node: Node::File(ino),
                });
                drop(disk);
                Ok(self.open_file(ino, path))
            }
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let disk = self.disk();
        disk.alive()?;
        let ino = disk.file(path)?;
        drop(disk);
        Ok(self.open_file(ino, path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.alive()?;
        let ino = disk.file(from)?;
        disk.parent_exists(to)?;
        if disk.live.get(to) == Some(&Node::Dir) {
            return Err(invalid(to, "is a directory"));
        }
        disk.step(&self.shared, OpKind::Rename, to, None)?;
        disk.live.remove(from);
        disk.live.insert(to.to_path_buf(), Node::File(ino));
        disk.dir_ops.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            node: Node::File(ino),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.alive()?;
        let ino = disk.file(path)?;
        disk.step(&self.shared, OpKind::Remove, path, None)?;
        disk.live.remove(path);
        disk.dir_ops.push(DirOp::Remove {
            path: path.to_path_buf(),
            node: Node::File(ino),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.alive()?;
        if !disk.is_dir(dir) {
            return Err(not_found(dir));
        }
        disk.step(&self.shared, OpKind::SyncDir, dir, None)?;
        let ops = std::mem::take(&mut disk.dir_ops);
        let (synced, rest): (Vec<_>, Vec<_>) = ops.into_iter().partition(|op| op.in_dir(dir));
        for op in &synced {
            op.apply(&mut disk.durable);
        }
        disk.dir_ops = rest;
        Ok(())
    }
}

/// An open [`PowerFs`] file; like an unlinked-but-open file, it outlives its name.
struct PowerFile {
    /// The disk.
    fs: PowerFs,
    /// Its inode.
    ino: u64,
    /// The path it was opened under, for [`Cut::last_op`].
    path: PathBuf,
}

impl PowerFile {
    fn change(&self, kind: OpKind, op: FileOp) -> io::Result<()> {
        let mut disk = self.fs.disk();
        disk.step(&self.fs.shared, kind, &self.path, Some(self.ino))?;
        disk.file_op(self.ino, op);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut disk = self.fs.disk();
        disk.step(
            &self.fs.shared,
            OpKind::SyncFile,
            &self.path,
            Some(self.ino),
        )?;
        disk.sync_file(self.ino);
        Ok(())
    }
}

impl FsFile for PowerFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let data = buf.to_vec();
        self.change(OpKind::Write, FileOp::Write { offset, data })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.change(OpKind::SetLen, FileOp::SetLen(len))
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        self.change(OpKind::Allocate, FileOp::Allocate(len))?;
        Ok(true)
    }

    fn size(&self) -> io::Result<u64> {
        let disk = self.fs.disk();
        disk.alive()?;
        Ok(disk.inodes[&self.ino].current.len() as u64)
    }
}

impl FsRead for PowerFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let disk = self.fs.disk();
        disk.alive()?;
        let content = &disk.inodes[&self.ino].current;
        let start = (offset as usize).min(content.len());
        let n = buf.len().min(content.len() - start);
        buf[..n].copy_from_slice(&content[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        FsFile::size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn synced_data_and_names_survive_every_cut() {
        for seed in 0..200 {
            let fs = PowerFs::new();
            fs.create_dir_all(p("/d")).unwrap();
            fs.sync_dir(p("/")).unwrap();
            let mut f = fs.create(p("/d/a")).unwrap();
            f.write_at(0, &[7; 5000]).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(p("/d")).unwrap();
            f.write_at(5000, &[8; 3000]).unwrap();
            let mut g = fs.create(p("/d/b")).unwrap();
            g.write_at(0, b"volatile").unwrap();
            g.sync_all().unwrap();
            let (image, _) = fs.cut(seed);
            let a = image.read(p("/d/a")).unwrap();
            assert!(a.len() >= 5000 && a[..5000] == [7; 5000], "seed {seed}");
            // The unsynced tail is a prefix of the write (maybe torn at a sector, maybe zeros).
            assert!(a[5000..].iter().all(|&b| b == 8 || b == 0), "seed {seed}");
            // b's data was synced but its name was not: either way is possible.
            if let Ok(b) = image.read(p("/d/b")) {
                assert_eq!(b, b"volatile");
            }
            assert_eq!(
                f.write_at(0, b"x").unwrap_err().raw_os_error(),
                Some(libc::EIO)
            );
        }
    }

    #[test]
    fn unsynced_changes_are_sometimes_lost_and_sometimes_kept() {
        let (mut lost_name, mut kept_name, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let fs = PowerFs::new();
            fs.create_dir_all(p("/d")).unwrap();
            fs.sync_dir(p("/")).unwrap();
            let mut f = fs.create(p("/d/a")).unwrap();
            f.write_at(0, &[1; 8192]).unwrap();
            let (image, cut) = fs.cut(seed);
            assert_eq!(cut.dirty_files, [PathBuf::from("/d/a")]);
            match image.read(p("/d/a")) {
                Err(_) => lost_name += 1,
                Ok(content) => {
                    kept_name += 1;
                    if !content.is_empty() && content.len() < 8192 || content.contains(&0) {
                        torn += 1;
                    }
                }
            }
        }
        assert!(lost_name > 0 && kept_name > 0 && torn > 0);
    }

    #[test]
    fn a_rename_is_atomic_and_durable_after_its_directory_is_synced() {
        for seed in 0..100 {
            let fs = PowerFs::new();
            fs.create_dir_all(p("/d")).unwrap();
            fs.sync_dir(p("/")).unwrap();
            let mut old = fs.create(p("/d/x")).unwrap();
            old.write_at(0, b"old").unwrap();
            old.sync_all().unwrap();
            fs.sync_dir(p("/d")).unwrap();
            let mut new = fs.create(p("/d/x.tmp")).unwrap();
            new.write_at(0, b"new").unwrap();
            new.sync_all().unwrap();
            fs.rename(p("/d/x.tmp"), p("/d/x")).unwrap();
            let (before, _) = fs.clone().cut_copy(seed);
            let x = before.read(p("/d/x")).unwrap();
            assert!(x == b"old" || x == b"new", "seed {seed}");
            fs.sync_dir(p("/d")).unwrap();
            let (after, _) = fs.cut(seed);
            assert_eq!(after.read(p("/d/x")).unwrap(), b"new");
            assert!(after.read(p("/d/x.tmp")).is_err());
        }
    }

    #[test]
    fn a_directory_not_synced_into_its_parent_can_take_everything_with_it() {
        let mut lost = 0;
        for seed in 0..50 {
            let fs = PowerFs::new();
            fs.create_dir_all(p("/data/wal")).unwrap();
            fs.sync_dir(p("/data")).unwrap();
            let mut f = fs.create(p("/data/wal/seg")).unwrap();
            f.write_at(0, b"x").unwrap();
            f.sync_all().unwrap();
            fs.sync_dir(p("/data/wal")).unwrap();
            let (image, _) = fs.cut(seed);
            if image.read(p("/data/wal/seg")).is_err() {
                lost += 1;
                assert!(image.read_dir(p("/data")).is_err());
            }
        }
        assert!(lost > 0);
    }

    #[test]
    fn an_armed_cut_fires_at_the_chosen_call_and_kills_the_disk() {
        let fs = PowerFs::new();
        fs.create_dir_all(p("/d")).unwrap();
        fs.cut_after(2, 1);
        let mut f = fs.create(p("/d/a")).unwrap();
        f.write_at(0, b"1").unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.is_cut());
        let (_, cut) = fs.image().unwrap();
        assert_eq!(cut.last_op, Some((OpKind::SyncFile, PathBuf::from("/d/a"))));
        assert!(fs.read_dir(p("/d")).is_err());
    }

    impl PowerFs {
        /// A cut of an independent copy, leaving this disk running (tests only).
        fn cut_copy(self, seed: u64) -> (PowerFs, Cut) {
            let disk = lock(&self.shared.disk);
            let mut copy = Disk {
                live: disk.live.clone(),
                durable: disk.durable.clone(),
                dir_ops: disk.dir_ops.clone(),
                inodes: disk.inodes.clone(),
                next_inode: disk.next_inode,
                ..Disk::default()
            };
            let shared = Shared::default();
            copy.power_cut(&shared, seed);
            copy.image.expect("just cut")
        }
    }
}
