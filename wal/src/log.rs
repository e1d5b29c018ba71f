//! The [`Wal`]: opening a directory, replaying it, appending batches, rotating segments, keeping a
//! spare segment reserved, and compacting behind snapshots.
//!
//! Single writer by construction: every mutating method takes `&mut self`, and the directory lock
//! keeps other processes out. Group commit (many callers, one fsync) is the caller's job: it hands
//! [`Wal::append_batch`] everything that queued up while the previous batch was syncing.
//!
//! Invariants while not poisoned:
//! - `segments` mirrors the segment files on disk, in LSN order, and the last one is `active`'s.
//! - Everything before `active.end` is valid records; from there to the end of the file is zeros.
//! - `last_lsn` is the LSN of the last record written (or the replay point for an empty log).
//! - Records of every segment but the active one are durable (`dirty` is only ever true mid-batch).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::{self, frame_len, SEGMENT_HEADER_LEN};
use crate::fs::{SteppedSync, SYNC_STEP};
use crate::layout::{self, segment_name, snapshot_name, Segment, LOCK, SPARE};
use crate::recovery::{self, BadSpot, WalkEnd};
use crate::snapshot::{PreparedSnapshot, SnapshotBytes, SnapshotWriter};
use crate::{
    Discard, Error, Fs, FsFile, Lsn, Options, Recovery, ReplayReport, StdFs, Stranded, Truncation,
};

/// Batches larger than this do not keep their encode buffer around afterwards.
const KEEP_BUFFER: usize = 4 << 20;

/// The write-ahead log of one directory.
pub struct Wal {
    /// Every disk operation goes through here, so tests can swap the disk.
    fs: Arc<dyn Fs>,
    /// The log directory.
    dir: PathBuf,
    /// Sizes and policies, fixed at open.
    opts: Options,
    /// Guard of the flock on `DIR/LOCK`; held, never read, released on drop.
    _lock: Box<dyn Any + Send + Sync>,
    /// Segment files in LSN order; the last is the one appends go to.
    segments: Vec<Segment>,
    /// The open last segment; `None` until the first append of an empty log creates one.
    active: Option<Active>,
    /// The preallocated `next.spare`, ready to become the next segment.
    spare: Option<Box<dyn FsFile>>,
    /// The thread making `next.spare` under [`Options::background_spare`]. While it runs nothing
    /// else touches that path: whoever needs the spare joins it first.
    spare_job: Option<SpareJob>,
    /// The thread deleting what the last snapshot made unnecessary, under
    /// [`Options::background_retire`]; it returns the paths it could not delete, which the next
    /// snapshot's deletion tries again.
    retire_job: Option<std::thread::JoinHandle<Vec<PathBuf>>>,
    /// Whether space is being preallocated: `opts.preallocate`, switched off when the filesystem
    /// cannot do it, so [`Wal::space_reserved`] does not wait forever for a spare.
    prealloc: bool,
    /// LSN of the last record in the log.
    last_lsn: Lsn,
    /// Set by the one call to [`Wal::replay`]; writing before it would skip recovery.
    replayed: bool,
    /// Set by a failed write, sync or rename: the on-disk state is unknown until replay.
    poisoned: bool,
    /// Frame bytes of each batch not yet covered by a snapshot, as `(last lsn, bytes)`, so a
    /// snapshot of an older state than `last_lsn` still leaves the newer batches counted.
    unsnapshotted: VecDeque<(Lsn, u64)>,
    /// Sum of the bytes in `unsnapshotted`.
    unsnapshotted_bytes: u64,
    /// Reused encode buffer, so steady small batches do not allocate.
    buf: Vec<u8>,
}

/// A spare segment being made on a thread of its own: the file, and whether the filesystem
/// could preallocate it.
type SpareJob = std::thread::JoinHandle<Result<(Box<dyn FsFile>, bool), Error>>;

/// The segment being appended to.
struct Active {
    /// Open for positioned writes.
    file: Box<dyn FsFile>,
    /// Its path, for error messages.
    path: PathBuf,
    /// Offset just past the last record: where the next one goes.
    end: u64,
    /// Written since the last `sync_data`.
    dirty: bool,
}

/// What a failed rotation means for the log.
enum RotateError {
    /// Nothing the log relies on changed (the new segment was being prepared, or its rename was
    /// refused, or its directory could not even be opened for the sync): retry later.
    Retry(Error),
    /// Records or the directory may be in an unknown state: poison.
    Fatal(Error),
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real filesystem and locks it.
    pub fn open(dir: &Path, opts: Options) -> Result<Wal, Error> {
        Self::open_with(Arc::new(StdFs), dir, opts)
    }

    /// Opens the log in `dir` through `fs`. Removes leftover `*.tmp` files; reads nothing else yet.
    pub fn open_with(fs: Arc<dyn Fs>, dir: &Path, opts: Options) -> Result<Wal, Error> {
        if opts.max_record == 0 || opts.segment_size <= SEGMENT_HEADER_LEN as u64 {
            let msg = "max_record must be at least 1 and segment_size more than 32 bytes";
            let source = io::Error::new(io::ErrorKind::InvalidInput, msg);
            return Err(Error::io("open", dir, source));
        }
        fs.create_dir_all(dir)
            .map_err(|e| Error::io("create_dir", dir, e))?;
        // The directory entry itself must survive a crash for anything inside it to.
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs.sync_dir(parent)
            .map_err(|e| Error::io("sync_dir", parent, e))?;
        let lock_path = dir.join(LOCK);
        let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => Error::Locked(dir.to_path_buf()),
            _ => Error::io("lock", &lock_path, e),
        })?;
        let listing = layout::list(&*fs, dir)?;
        for tmp in &listing.tmp {
            fs.remove(tmp).map_err(|e| Error::io("remove", tmp, e))?;
        }
        Ok(Wal {
            fs,
            dir: dir.to_path_buf(),
            prealloc: opts.preallocate,
            opts,
            _lock: lock,
            segments: listing.segments,
            active: None,
            spare: None,
            spare_job: None,
            retire_job: None,
            last_lsn: 0,
            replayed: false,
            poisoned: false,
            unsnapshotted: VecDeque::new(),
            unsnapshotted_bytes: 0,
            buf: Vec::new(),
        })
    }

    /// The newest snapshot, if any: its LSN and payload, mapped from its file where the
    /// filesystem can ([`Fs::map`]), else read. A damaged newest snapshot is
    /// [`Error::Corrupt`]: falling back to an older one would silently need segments that
    /// were deleted when the newer one was made.
    pub fn load_snapshot(&self) -> Result<Option<(Lsn, SnapshotBytes)>, Error> {
        let listing = layout::list(&*self.fs, &self.dir)?;
        let Some(&lsn) = listing.snapshots.last() else {
            return Ok(None);
        };
        let path = self.dir.join(snapshot_name(lsn));
        let read = |e| Error::io("read", &path, e);
        // Mapped where it can be: a snapshot of a million jobs is hundreds of MiB, which
        // copying out of the page cache takes longer than decoding much of it.
        // SAFETY: a snapshot file is written, synced and only then renamed to its name;
        // nothing writes it again (it is only ever deleted, which leaves a mapping intact),
        // and the data directory's lock keeps other servers out.
        let bytes = match unsafe { self.fs.map(&path) }.map_err(read)? {
            Some(file) => SnapshotBytes::mapped(file),
            None => SnapshotBytes::read(self.fs.read(&path).map_err(read)?),
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let checked = frame::decode_snapshot_by(bytes.file(), |payload| {
            crate::snapshot::crc32c_on(payload, threads)
        });
        let reason = match checked {
            Ok((found, _)) if found == lsn => None,
            Ok((found, _)) => Some(format!("snapshot header says lsn {found}")),
            Err(reason) => Some(reason.to_owned()),
        };
        if let Some(reason) = reason {
            return Err(Error::Corrupt {
                segment: path,
                offset: 0,
                reason,
                discard: None,
            });
        }
        Ok(Some((lsn, bytes)))
    }

    /// Feeds `f` every record with `lsn > after`, in order, recovers the log, and readies it for
    /// appends. Call exactly once, before anything else that writes.
    ///
    /// A torn tail is truncated and reported; other damage is [`Error::Corrupt`] (or cut, under
    /// [`Recovery::TruncateCorruption`]). If `f` fails, replay stops with [`Error::Apply`] and
    /// leaves the disk untouched. Any error leaves the `Wal` poisoned.
    ///
    /// # Panics
    /// If called twice.
    pub fn replay<E: fmt::Display>(
        &mut self,
        after: Lsn,
        mut f: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
    ) -> Result<ReplayReport, Error> {
        assert!(!self.replayed, "Wal::replay must be called exactly once");
        self.replayed = true;
        // Until replay succeeds the log must not be written.
        self.poisoned = true;
        self.retire_covered(after)?;

        let mut records = 0;
        let mut bytes = 0;
        let too_late = (self.segments.first()).filter(|s| s.first_lsn > after.saturating_add(1));
        let (walked, bad) = if let Some(first) = too_late {
            let reason = format!(
                "the log starts at lsn {}, but replay needs every record after {after}",
                first.first_lsn
            );
            (WalkEnd::default(), Some(whole_log(reason)))
        } else {
            let mut walked = recovery::walk(
                &*self.fs,
                &self.segments,
                self.opts.max_record,
                &mut |seg, offset, lsn, payload| {
                    if lsn <= after {
                        return Ok(());
                    }
                    f(lsn, payload).map_err(|e| Error::Apply {
                        segment: seg.path.clone(),
                        offset,
                        lsn,
                        message: e.to_string(),
                    })?;
                    records += 1;
                    bytes += frame_len(payload.len());
                    Ok(())
                },
            )?;
            let bad = walked.bad.take();
            (walked, bad)
        };
        let truncate_all = self.opts.recovery == Recovery::TruncateCorruption;
        // The last record the walk accepted, from which records past a bad spot are counted.
        let accepted = walked.last_lsn.unwrap_or(after).max(after);
        let mut cut = match bad {
            Some(b) if b.torn_tail || truncate_all => Some(b),
            Some(b) => return Err(self.corrupt(b, accepted)),
            None => None,
        };
        let mut kept = match &cut {
            None => self.segments.len(),
            Some(c) => kept_before(c),
        };
        let mut last_lsn = if kept == 0 {
            after
        } else {
            walked.last_lsn.unwrap_or(after)
        };
        if kept > 0 && last_lsn < after {
            // The caller's state is ahead of the log: appending from here would reuse LSNs the
            // caller has already applied.
            let reason = format!("the log ends at lsn {last_lsn}, before the replay point {after}");
            if !truncate_all {
                return Err(self.corrupt(whole_log(reason), accepted));
            }
            cut = Some(whole_log(reason));
            kept = 0;
            last_lsn = after;
        }

        let truncated = match cut {
            Some(c) => {
                // Counted before the cut deletes them. A torn tail has none by definition (no
                // valid record follows it).
                let discarded = if c.torn_tail {
                    Stranded::default()
                } else {
                    self.stranded(&c, accepted)?
                };
                Some(self.cut(c, kept, discarded)?)
            }
            None => None,
        };
        if let Some(seg) = self.segments.last() {
            let end = match &truncated {
                Some(t) if t.offset >= SEGMENT_HEADER_LEN as u64 => t.offset,
                _ => walked.ends[kept - 1],
            };
            let file = self
                .fs
                .open(&seg.path)
                .map_err(|e| Error::io("open", &seg.path, e))?;
            self.active = Some(Active {
                file,
                path: seg.path.clone(),
                end,
                dirty: false,
            });
        }
        self.last_lsn = last_lsn;
        if bytes > 0 {
            self.unsnapshotted.push_back((last_lsn, bytes));
            self.unsnapshotted_bytes = bytes;
        }
        self.prepare_spare()?;
        self.poisoned = false;
        Ok(ReplayReport {
            records,
            last_lsn,
            truncated,
        })
    }

    /// Appends `payloads` as consecutive records and makes them durable; returns their LSNs.
    ///
    /// One write per segment touched, then one `sync_data`. Returns [`Error::TooLarge`] (writing
    /// nothing) for an empty or oversized payload. When a new segment is needed and cannot be made
    /// now, returns [`Error::NoSpace`] (disk full, nothing written) or [`Error::Deferred`] (any
    /// other passing cause, or a disk that filled mid-batch: the first `written` payloads are
    /// durable), without poisoning: retry the rest later. Any other failure poisons the log.
    ///
    /// # Panics
    /// If [`Wal::replay`] has not been called.
    pub fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<Lsn>, Error> {
        self.check_writable()?;
        let max = self.opts.max_record;
        if let Some(p) = payloads
            .iter()
            .find(|p| p.is_empty() || p.len() > max as usize)
        {
            return Err(Error::TooLarge { len: p.len(), max });
        }
        let first = self.last_lsn + 1;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let written = self.write_batch(first, payloads, &mut buf);
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        let (last, outcome) = match written {
            Ok(last) => (last, Ok(first..=last)),
            Err(e @ Error::Deferred { written, .. }) => (first + written as u64 - 1, Err(e)),
            Err(e) => return Err(e),
        };
        if last >= first {
            let bytes = payloads[..(last + 1 - first) as usize]
                .iter()
                .map(|p| frame_len(p.len()))
                .sum();
            self.unsnapshotted.push_back((last, bytes));
            self.unsnapshotted_bytes += bytes;
        }
        self.last_lsn = last;
        outcome
    }

    /// True when the next rotation cannot run out of space: a spare segment is preallocated, or
    /// preallocation is off or unsupported. The server refuses new work while this is false.
    /// A spare still being made counts: the rotation that needs it waits for it, and a failure
    /// shows once [`Wal::try_reserve`] has collected it.
    pub fn space_reserved(&self) -> bool {
        !self.prealloc || self.spare.is_some() || self.spare_job.is_some()
    }

    /// Tries to preallocate the spare segment again; `Ok(false)` if the disk is still full, an
    /// error (without poisoning: the spare holds no records) for any other cause, such as running
    /// out of file descriptors. First collects a spare made in the background if it is done (a
    /// failed one is made again here, which reports its cause): call it periodically.
    pub fn try_reserve(&mut self) -> Result<bool, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if self.spare_job.as_ref().is_some_and(|job| job.is_finished()) {
            self.join_spare();
        }
        if self.space_reserved() {
            return Ok(true);
        }
        match self.create_spare() {
            Ok(file) => {
                self.spare = Some(file);
                Ok(true)
            }
            Err(e) if e.is_no_space() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes a snapshot of the state after `lsn` and deletes what it covers: the two steps
    /// of [`SnapshotWriter::prepare`] and [`Wal::install_snapshot`] in one call.
    pub fn write_snapshot(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), Error> {
        self.check_writable()?;
        self.check_snapshot_lsn(lsn)?;
        let prepared = self.snapshot_writer().prepare(lsn, payload)?;
        self.install_snapshot(prepared)
    }

    /// A handle that writes snapshot files for this log from any thread, so a large
    /// snapshot's write and fsync need not hold up appends.
    pub fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Makes a prepared snapshot the newest (rename, directory fsync), then deletes older
    /// snapshots and the segments it covers. On failure the temporary file is removed and
    /// the log itself is untouched (not poisoned).
    pub fn install_snapshot(&mut self, prepared: PreparedSnapshot) -> Result<(), Error> {
        let installed = self
            .check_writable()
            .and_then(|()| self.check_snapshot_lsn(prepared.lsn))
            .and_then(|()| {
                self.fs
                    .rename(&prepared.tmp, &prepared.path)
                    .map_err(|e| Error::io("rename", &prepared.tmp, e))
            })
            .and_then(|()| {
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| Error::io("sync_dir", &self.dir, e))
            });
        if let Err(e) = installed {
            // Best effort: open() removes leftovers anyway.
            let _ = self.fs.remove(&prepared.tmp);
            return Err(e);
        }
        self.retire(prepared.lsn)
    }

    fn check_snapshot_lsn(&self, lsn: Lsn) -> Result<(), Error> {
        if lsn > self.last_lsn {
            let msg = format!(
                "snapshot lsn {lsn} is beyond the log's last lsn {}",
                self.last_lsn
            );
            let source = io::Error::new(io::ErrorKind::InvalidInput, msg);
            return Err(Error::io("write_snapshot", &self.dir, source));
        }
        Ok(())
    }

    /// LSN of the last record (0 for an empty log, the replay point before any append).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Frame bytes replayed or appended after the newest snapshot, counted per batch; the server
    /// triggers snapshots on it.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.unsnapshotted_bytes
    }

    fn check_writable(&self) -> Result<(), Error> {
        assert!(
            self.replayed,
            "Wal::replay must run before the log is written"
        );
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn poison(&mut self, e: Error) -> Error {
        self.poisoned = true;
        e
    }

    /// The refusal of the damage at `bad`, with what cutting the log there would discard (see
    /// [`Wal::stranded`] for `accepted`); the count is left out if the segments cannot be read
    /// again.
    fn corrupt(&self, bad: BadSpot, accepted: Lsn) -> Error {
        let discard = self.stranded(&bad, accepted).ok().map(|records| Discard {
            bytes: self.cut_bytes(&bad, kept_before(&bad)),
            records,
        });
        Error::Corrupt {
            segment: self
                .segments
                .get(bad.seg)
                .map_or_else(|| self.dir.clone(), |s| s.path.clone()),
            offset: bad.offset,
            reason: bad.reason,
            discard,
        }
    }

    /// The checksum-valid records a cut at `bad` discards: those past it with an LSN above
    /// `accepted` (the last record replay accepted, or the snapshot's LSN if higher: records
    /// it covers are not lost).
    fn stranded(&self, bad: &BadSpot, accepted: Lsn) -> Result<Stranded, Error> {
        recovery::salvage(
            &*self.fs,
            &self.segments,
            bad,
            accepted,
            self.opts.max_record,
            &mut |_, _, _, _| Ok(()),
        )
    }

    /// Bytes a cut at `bad` keeping the first `kept` segments discards: the non-zero bytes after
    /// it in its segment (unless that segment goes whole) plus the size of every later segment.
    fn cut_bytes(&self, bad: &BadSpot, kept: usize) -> u64 {
        let in_segment = if kept > bad.seg { bad.dropped } else { 0 };
        let later: u64 = (self.segments.iter().skip(kept))
            // Only for the report: a size we cannot read is not worth failing recovery over.
            .map(|seg| self.fs.open(&seg.path).and_then(|f| f.size()).unwrap_or(0))
            .sum();
        in_segment + later
    }

    /// Cuts the log at `bad`, keeping the first `kept` segments: later segments are deleted (last
    /// first, so a crash midway still leaves a prefix of the log), then the cut segment is
    /// truncated and its preallocated space re-zeroed.
    fn cut(&mut self, bad: BadSpot, kept: usize, discarded: Stranded) -> Result<Truncation, Error> {
        let segment = self
            .segments
            .get(bad.seg)
            .map_or_else(|| self.dir.clone(), |s| s.path.clone());
        // A cut inside the header deletes the segment, and its size is counted with the others.
        let dropped = self.cut_bytes(&bad, kept);
        while self.segments.len() > kept {
            let seg = self.segments.pop().expect("more segments than kept");
            self.fs
                .remove(&seg.path)
                .map_err(|e| Error::io("remove", &seg.path, e))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("sync_dir", &self.dir, e))?;
        if kept == bad.seg + 1 {
            let mut file = self
                .fs
                .open(&segment)
                .map_err(|e| Error::io("open", &segment, e))?;
            file.set_len(bad.offset)
                .map_err(|e| Error::io("set_len", &segment, e))?;
            if self.prealloc {
                // So the cut-off tail reads as zeros (end of data) and the space stays reserved.
                file.allocate(self.opts.segment_size)
                    .map_err(|e| Error::io("allocate", &segment, e))?;
            }
            file.sync_all()
                .map_err(|e| Error::io("sync_all", &segment, e))?;
        }
        Ok(Truncation {
            segment,
            offset: bad.offset,
            bytes_dropped: dropped,
            reason: bad.reason,
            torn_tail: bad.torn_tail,
            discarded,
        })
    }

    /// Reuses a leftover spare of the right size or preallocates one; a full disk is not an error
    /// here, only a reason for [`Wal::space_reserved`] to say false.
    fn prepare_spare(&mut self) -> Result<(), Error> {
        let path = self.dir.join(SPARE);
        if !self.prealloc {
            // Not needed; give its space back.
            return match self.fs.remove(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", &path, e)),
                _ => Ok(()),
            };
        }
        if let Ok(file) = self.fs.open(&path) {
            if file.size().is_ok_and(|n| n >= self.opts.segment_size) {
                self.spare = Some(file);
                return Ok(());
            }
        }
        match self.create_spare() {
            Ok(file) => self.spare = Some(file),
            Err(e) if e.is_no_space() => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Creates `next.spare`, preallocated when enabled. On failure the file is removed, so a
    /// half-allocated spare never holds space or passes for a ready one.
    fn create_spare(&mut self) -> Result<Box<dyn FsFile>, Error> {
        // Never two makers of one path at once.
        self.join_spare();
        let (file, preallocated) = make_spare(
            &*self.fs,
            &self.dir.join(SPARE),
            self.prealloc.then_some(self.opts.segment_size),
            self.opts.zero_spare,
        )?;
        if !preallocated {
            // The filesystem cannot reserve space: run without a reserve.
            self.prealloc = false;
        }
        Ok(file)
    }

    /// Starts making the next spare on a thread of its own (see [`Options::background_spare`]);
    /// makes it here if no thread can be started.
    fn start_spare(&mut self) {
        self.join_spare();
        let fs = self.fs.clone();
        let path = self.dir.join(SPARE);
        let size = self.opts.segment_size;
        let zero = self.opts.zero_spare;
        let job = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || make_spare(&*fs, &path, Some(size), zero));
        match job {
            Ok(job) => self.spare_job = Some(job),
            Err(_) => {
                if let Ok(spare) = self.create_spare() {
                    self.spare = Some(spare);
                }
            }
        }
    }

    /// Waits for the spare being made in the background, if any, and keeps it. A failure is
    /// dropped: it holds no records, and the next rotation or [`Wal::try_reserve`] makes the
    /// spare again, which reports the cause.
    fn join_spare(&mut self) {
        let Some(job) = self.spare_job.take() else {
            return;
        };
        match job.join() {
            Ok(Ok((file, preallocated))) => {
                if !preallocated {
                    self.prealloc = false;
                }
                self.spare = Some(file);
            }
            Ok(Err(_)) => {}
            // A panic inside the filesystem layer: surface it where it belongs.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Encodes and writes `payloads` from `first` on, rotating as segments fill; returns the last
    /// LSN written. Everything is durable when it returns `Ok`.
    fn write_batch(
        &mut self,
        first: Lsn,
        payloads: &[&[u8]],
        buf: &mut Vec<u8>,
    ) -> Result<Lsn, Error> {
        // A batch that does not fit goes whole into a fresh segment, so a full disk is met before
        // anything is written. Only a batch larger than a segment is split across segments.
        let total = payloads.iter().map(|p| frame_len(p.len())).sum();
        if !payloads.is_empty() && self.must_rotate(0, total) {
            self.rotate(first, 0)?;
        }
        let mut lsn = first;
        for payload in payloads {
            if self.must_rotate(buf.len() as u64, frame_len(payload.len())) {
                self.flush(buf)?;
                self.rotate(lsn, (lsn - first) as usize)?;
            }
            frame::encode(lsn, payload, buf);
            lsn += 1;
        }
        self.flush(buf)?;
        if let Some(active) = self.active.as_mut().filter(|a| a.dirty) {
            if let Err(e) = active.file.sync_data() {
                let e = Error::io("sync_data", &active.path, e);
                return Err(self.poison(e));
            }
            active.dirty = false;
        }
        Ok(lsn - 1)
    }

    /// Whether a record of `frame` bytes, after `pending` unwritten bytes, needs a new segment. A
    /// segment without records takes any record, so an oversized one still finds a home.
    fn must_rotate(&self, pending: u64, frame: u64) -> bool {
        match &self.active {
            None => true,
            Some(a) => {
                let used = a.end + pending;
                used > SEGMENT_HEADER_LEN as u64 && used + frame > self.opts.segment_size
            }
        }
    }

    /// Writes the encoded records in `buf` to the active segment.
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let active = self
            .active
            .as_mut()
            .expect("records are only encoded for a segment");
        if let Err(e) = active.file.write_at(active.end, buf) {
            let e = Error::io("write", &active.path, e);
            return Err(self.poison(e));
        }
        active.end += buf.len() as u64;
        active.dirty = true;
        buf.clear();
        Ok(())
    }

    /// Makes a new segment starting at `first_lsn` the active one, `written` records into the
    /// batch (all of them durable: the old segment is synced before anything else). A failure
    /// that changed nothing the log relies on is [`Error::NoSpace`] (a full disk before anything
    /// of the batch was written) or [`Error::Deferred`]; any other failure poisons.
    fn rotate(&mut self, first_lsn: Lsn, written: usize) -> Result<(), Error> {
        match self.try_rotate(first_lsn) {
            Ok(()) => Ok(()),
            Err(RotateError::Retry(e)) if written == 0 && e.is_no_space() => Err(Error::NoSpace),
            Err(RotateError::Retry(e)) => Err(Error::Deferred {
                written,
                source: Box::new(e),
            }),
            Err(RotateError::Fatal(e)) => Err(self.poison(e)),
        }
    }

    fn try_rotate(&mut self, first_lsn: Lsn) -> Result<(), RotateError> {
        use RotateError::{Fatal, Retry};
        // Once a newer segment exists, damage in this one is corruption, not a torn tail: its
        // records must be durable first. This sync is of records: its failure is fatal.
        if let Some(active) = self.active.as_mut().filter(|a| a.dirty) {
            active
                .file
                .sync_data()
                .map_err(|e| Fatal(Error::io("sync_data", &active.path, e)))?;
            active.dirty = false;
        }
        // Until the rename the new file is only `next.spare`, which replay ignores: a refusal
        // preparing it (no descriptor, no permission, no space) loses nothing, so the spare
        // is discarded and the rotation retried later. An I/O error (EIO) says the device
        // itself is failing: like a failed sync of records, that is not retried.
        let retry_unless_device = |e: Error| {
            if e.is_transient() {
                Retry(e)
            } else {
                Fatal(e)
            }
        };
        let spare_path = self.dir.join(SPARE);
        self.join_spare();
        let mut file = match self.spare.take() {
            Some(file) => file,
            None => self.create_spare().map_err(retry_unless_device)?,
        };
        // The header is durable before the name appears, so a named segment always has one.
        let header = frame::encode_header(first_lsn);
        let prepared = file
            .write_at(0, &header)
            .map_err(|e| Error::io("write", &spare_path, e))
            .and_then(|()| {
                file.sync_data()
                    .map_err(|e| Error::io("sync_data", &spare_path, e))
            });
        if let Err(e) = prepared {
            drop(file);
            let _ = self.fs.remove(&spare_path);
            return Err(retry_unless_device(e));
        }
        let path = self.dir.join(segment_name(first_lsn));
        if let Err(e) = self.fs.rename(&spare_path, &path) {
            let e = Error::io("rename", &spare_path, e);
            if !e.is_transient() {
                // An I/O error may leave the rename done or not: only replay can tell.
                return Err(Fatal(e));
            }
            // Refused (read-only directory, permissions...): nothing moved; keep the spare.
            self.spare = Some(file);
            return Err(Retry(e));
        }
        // A directory that could not be opened was never synced: the segment is named but
        // empty, and the retry renames a fresh spare over it. A sync that ran and failed may
        // have lost the entry: fatal.
        self.fs.sync_dir(&self.dir).map_err(|e| {
            let e = Error::io("sync_dir", &self.dir, e);
            if e.is_open_refused() {
                // Best effort: if the retry finds the old segment roomy after all, no empty
                // segment may sit after it.
                let _ = self.fs.remove(&path);
                Retry(e)
            } else {
                Fatal(e)
            }
        })?;
        self.segments.push(Segment {
            first_lsn,
            path: path.clone(),
        });
        self.active = Some(Active {
            file,
            path,
            end: SEGMENT_HEADER_LEN as u64,
            dirty: false,
        });
        // Reserve the next rotation's space now, while a full disk can still be reported calmly.
        // Failing to is never fatal: the next rotation (or `try_reserve`) makes one.
        if self.prealloc && self.opts.background_spare {
            self.start_spare();
        } else if self.prealloc {
            if let Ok(spare) = self.create_spare() {
                self.spare = Some(spare);
            }
        }
        Ok(())
    }

    /// Before replay from `after`: deletes the segments a snapshot at `after` covers whole,
    /// without reading them. Their deletion by [`Wal::retire`] may have been cut short by a
    /// crash, and a crash keeps any subset of unsynced deletions, not only a prefix: walking
    /// them would report the gaps the lost deletions left as corruption, though no record
    /// after `after` is missing.
    fn retire_covered(&mut self, after: Lsn) -> Result<(), Error> {
        let covered = (self.segments.iter().skip(1))
            .take_while(|s| s.first_lsn <= after.saturating_add(1))
            .count();
        if covered == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..covered) {
            remove_if_present(&*self.fs, &seg.path)?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("sync_dir", &self.dir, e))
    }

    /// Deletes what the durable snapshot at `lsn` makes unnecessary (on a thread of its own under
    /// [`Options::background_retire`]).
    fn retire(&mut self, lsn: Lsn) -> Result<(), Error> {
        // Paths the previous deletion could not remove come first.
        let mut doomed = match self.retire_job.take() {
            Some(job) => job.join().unwrap_or_default(),
            None => Vec::new(),
        };
        let listing = layout::list(&*self.fs, &self.dir)?;
        for &old in listing.snapshots.iter().filter(|&&s| s < lsn) {
            doomed.push(self.dir.join(snapshot_name(old)));
        }
        // Segment 0 is covered when the next one starts at or before lsn + 1.
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn + 1 {
            doomed.push(self.segments.remove(0).path);
        }
        let job = if self.opts.background_retire {
            let (fs, dir) = (self.fs.clone(), self.dir.clone());
            let work = doomed.clone();
            std::thread::Builder::new()
                .name("wal-retire".into())
                .spawn(move || delete_all(&*fs, &dir, work))
                // No thread: delete them here.
                .ok()
        } else {
            None
        };
        match job {
            Some(job) => self.retire_job = Some(job),
            None => {
                for path in &doomed {
                    remove_if_present(&*self.fs, path)?;
                }
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| Error::io("sync_dir", &self.dir, e))?;
            }
        }
        while let Some(&(batch_last, bytes)) = self.unsnapshotted.front() {
            if batch_last > lsn {
                break;
            }
            self.unsnapshotted.pop_front();
            self.unsnapshotted_bytes -= bytes;
        }
        Ok(())
    }
}

/// Creates the spare `path`, preallocated to `size` when given, its zeros written when `zero`
/// (see [`crate::Options::zero_spare`]); returns it and whether it was preallocated (`false` also
/// when the filesystem cannot). On failure the file is removed, so a half-allocated spare never
/// holds space or passes for a ready one.
fn make_spare(
    fs: &dyn Fs,
    path: &Path,
    size: Option<u64>,
    zero: bool,
) -> Result<(Box<dyn FsFile>, bool), Error> {
    let mut file = fs.create(path).map_err(|e| Error::io("create", path, e))?;
    let Some(size) = size else {
        return Ok((file, false));
    };
    // Blocks are reserved first, so a full disk is met at once rather than after writing.
    let allocated = match file.allocate(size) {
        Ok(true) => {
            let written = match zero {
                true => write_zeros(&mut *file, path, size),
                false => Ok(()),
            };
            written
                .and_then(|()| file.sync_all().map_err(|e| Error::io("sync_all", path, e)))
                .map(|()| true)
        }
        Ok(false) => Ok(false),
        Err(e) => Err(Error::io("allocate", path, e)),
    };
    match allocated {
        Ok(preallocated) => Ok((file, preallocated)),
        Err(e) => {
            drop(file);
            let _ = fs.remove(path);
            Err(e)
        }
    }
}

/// Writes zeros over `0..len` of `file`, a MiB at a time, synced in steps
/// ([`SteppedSync`]).
fn write_zeros(file: &mut dyn FsFile, path: &Path, len: u64) -> Result<(), Error> {
    let zeros = vec![0u8; SYNC_STEP as usize];
    let mut steps = SteppedSync::default();
    let mut at = 0;
    while at < len {
        let n = SYNC_STEP.min(len - at);
        steps.write_at(file, path, at, &zeros[..n as usize])?;
        at += n;
    }
    Ok(())
}

/// How many segments a cut at `bad` keeps: those before it, and its own unless the cut is
/// inside its header.
fn kept_before(bad: &BadSpot) -> usize {
    if bad.offset < SEGMENT_HEADER_LEN as u64 {
        bad.seg
    } else {
        bad.seg + 1
    }
}

/// A bad spot that invalidates the whole log (a cut at the first segment's header).
fn whole_log(reason: String) -> BadSpot {
    BadSpot {
        seg: 0,
        offset: 0,
        reason,
        torn_tail: false,
        dropped: 0,
    }
}

/// Deletes `paths` (a background retire): returns those it could not delete. The directory
/// fsync is best effort: a deletion lost to a crash is redone by the next open.
fn delete_all(fs: &dyn Fs, dir: &Path, paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let failed: Vec<PathBuf> = (paths.into_iter())
        .filter(|path| remove_if_present(fs, path).is_err())
        .collect();
    let _ = fs.sync_dir(dir);
    failed
}

fn remove_if_present(fs: &dyn Fs, path: &Path) -> Result<(), Error> {
    match fs.remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

impl Drop for Wal {
    /// Waits for a spare still being made and for deletions still running: the directory lock
    /// goes with the `Wal`, and the next opener must not find another thread still writing
    /// `next.spare` or deleting files.
    fn drop(&mut self) {
        if let Some(job) = self.spare_job.take() {
            let _ = job.join();
        }
        if let Some(job) = self.retire_job.take() {
            let _ = job.join();
        }
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("last_lsn", &self.last_lsn)
            .field("space_reserved", &self.space_reserved())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}
