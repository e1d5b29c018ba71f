//! `wal`: flinger's write-ahead log. Bytes in, bytes out.
//!
//! The crate owns the on-disk log: framing, segment files, fsync discipline, torn-tail recovery and
//! snapshot-based compaction. It deliberately knows nothing about jobs, serde or async runtimes: the
//! server hands it opaque payloads and gets them back, in order, on replay.
//!
//! # On-disk format, version 1
//!
//! All integers are little-endian; every checksum is CRC-32C (Castagnoli).
//!
//! 1. **Directory.** The server passes `DATA_DIR/wal`. It holds:
//!    - `{first_lsn:020}.wal`: segments, named by the LSN of their first record;
//!    - `snapshot-{lsn:020}.snap`: snapshots;
//!    - `next.spare`: a preallocated file that becomes the next segment (not a segment until renamed);
//!    - `LOCK`: held with `flock(LOCK_EX)` while a [`Wal`] is open;
//!    - `*.tmp`: half-written files, ignored and removed on open.
//!
//!    Anything else is ignored.
//! 2. **Segment header**, 32 bytes:
//!    `b"FLNGRWAL"` (8) | version `u32` = 1 | reserved `u32` = 0 | `first_lsn` `u64` |
//!    `crc32c(bytes 0..24)` `u32` | 4 zero bytes. `first_lsn` must match the file name.
//! 3. **Record**, 16-byte header then payload:
//!    `len u32 | crc u32 | lsn u64 | payload[len]`, where `crc = crc32c(len ‖ lsn ‖ payload)`.
//!    `len` is `1..=max_record` and is checked before anything is sized by it.
//! 4. **End of data.** Records follow the segment header back to back. Data ends at end of file or at
//!    a 16-byte all-zero record header, which is what preallocated space reads as. A real record can
//!    never look like that: its `len` is at least 1.
//! 5. **LSNs** start at 1 and are consecutive across the whole log: a segment's first record has its
//!    header's `first_lsn`, every later record has `prev + 1`, and the next segment starts at
//!    `last + 1`. Because the LSN is inside the CRC, stale bytes beyond the tail (an older record, a
//!    record of another segment) never pass as the next record.
//! 6. **Snapshot**, 36-byte header then payload:
//!    `b"FLNGSNAP"` (8) | version `u32` = 1 | reserved `u32` = 0 | `lsn u64` | `len u64` |
//!    `crc32c(lsn ‖ len ‖ payload)` `u32` | `payload[len]`. The snapshot at `S` is the state after
//!    applying every record with `lsn <= S`.
//!
//! # Durability protocol
//!
//! - A batch is written with one write per segment it touches, then one `fdatasync`; it is
//!   acknowledged only after that returns. A batch that does not fit in the current segment goes
//!   whole into a new one; only a batch larger than a segment is split.
//! - Rotation: sync the old segment, take `next.spare` (or create one), write and sync the header,
//!   rename it to `{first_lsn:020}.wal`, fsync the directory, then preallocate the next spare (on a
//!   thread of its own under [`Options::background_spare`], collected by the next rotation). Keeping
//!   a spare means the log can always grow by one segment, so the server can refuse *new* work while
//!   space is short and still record cancels and results.
//! - A failed write or sync of records, a rename that failed with an I/O error (done or not?) and a
//!   directory fsync that ran and failed poison the [`Wal`]: a failed fsync may have dropped dirty
//!   pages, so retrying it could report success for lost data ("fsyncgate"). Restart and replay
//!   recover.
//! - Failing to *make* a new segment is not fatal: until its rename the spare is a file replay
//!   ignores, so a failed create, allocate, header write or sync of it, a refused rename (`EACCES`,
//!   `EROFS`, `EMFILE`...) or a directory that cannot be opened for its fsync leave the log as it
//!   was. [`Wal::append_batch`] answers [`Error::NoSpace`] or [`Error::Deferred`] and the caller
//!   retries the rest of the batch later.
//! - Snapshot: write `….snap.tmp` and fsync it (from any thread, see [`SnapshotWriter`]), then
//!   rename, fsync the directory; only then delete older
//!   snapshots and the segments the snapshot covers (on a thread of its own under
//!   [`Options::background_retire`]).
//!
//! # Recovery
//!
//! Replay walks the segments in LSN order and stops at the end of valid data.
//! - A bad spot (incomplete, wrong CRC, wrong LSN, junk after the end marker) at the end of the
//!   **last** segment, with no valid later record in that segment, is a torn tail: it is truncated,
//!   the space re-zeroed, and reported.
//! - Anything else (valid records after the bad spot, damage that loses records of an older segment,
//!   a bad segment header, a gap in LSNs) is [`Error::Corrupt`] under [`Recovery::Strict`]; under
//!   [`Recovery::TruncateCorruption`] the log is cut there and the cut is reported.
//! - Either way the checksum-valid records past the damage are counted ([`Stranded`]): the
//!   refusal says what a cut would discard ([`Discard`]), the cut what it discarded. They are
//!   found by resynchronising: from the bad spot, the next offset holding a valid record whose
//!   LSN could follow (see `recovery::next_valid_record`), again after each later bad spot, and
//!   every later segment from its first record. [`scan_with`] visits them on request.
//!
//! # Code map
//!
//! - [`frame`]: pure codec for headers, records and snapshots.
//! - [`fs`]: the filesystem seam ([`Fs`], [`FsFile`]) and [`StdFs`].
//! - [`fault`]: test doubles for the seam: in-memory [`fault::MemFs`], error-injecting
//!   [`fault::FaultyFs`].
//! - [`power`]: [`power::PowerFs`], an in-memory disk with a page cache whose power can be cut.
//! - `layout`: file names and directory listing.
//! - `recovery`: the segment walk shared by replay and [`scan`].
//! - `log`: the [`Wal`] itself: open, replay, append, rotation, snapshots.
//! - `error`: [`Error`].

mod error;
pub mod fault;
pub mod frame;
pub mod fs;
mod layout;
mod log;
pub mod power;
mod recovery;
mod snapshot;

use std::path::PathBuf;

pub use error::Error;
pub use fs::{
    create_dir_all_durably, write_file_durably, write_private_file_durably, Fs, FsFile, FsRead,
    Mapped, StdFs,
};
pub use log::Wal;
pub use recovery::{scan, scan_with};
pub use snapshot::{PreparedSnapshot, SnapshotBytes, SnapshotFile, SnapshotWriter};

/// Log sequence number: 1 for the first record ever written, +1 per record.
pub type Lsn = u64;

/// How a [`Wal`] is shaped and how forgiving its recovery is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes per segment; segments are preallocated to this size and rotated when a record would
    /// not fit. A record larger than a whole segment gets a segment of its own that overflows.
    pub segment_size: u64,
    /// Largest payload accepted; also the bound that stops a garbage length from being trusted.
    pub max_record: u32,
    /// What replay does with damage that is not a torn tail.
    pub recovery: Recovery,
    /// Preallocate segments and keep one spare, so running out of disk is noticed before it bites.
    pub preallocate: bool,
    /// Make the spare that replaces the one a rotation used on a thread of its own, so the batch
    /// that rotated is acknowledged without waiting for it. On a filesystem without `fallocate`,
    /// glibc's `posix_fallocate` writes the whole segment (seconds on some network and FUSE file
    /// systems). A rotation that comes before the spare is ready waits for it. Off by default so
    /// the crate's fault tests see every disk operation in one deterministic order; the server
    /// turns it on.
    pub background_spare: bool,
    /// Also write each spare's zeros after reserving its blocks, synced a MiB at a time so the
    /// log's own syncs never wait behind the whole segment (70-150 ms for 64 MiB here; on the
    /// spare thread under `background_spare`, and once at start-up when there is no spare).
    /// Preallocated blocks are *unwritten* extents: the first `fdatasync` after appending into one
    /// must also convert it, which on ext4 is a journal commit with a cache flush of its own.
    /// Written zeros make each sync a data write and one flush (on this project's ext4 box:
    /// `fdatasync` p50 ~145 µs instead of ~215 µs, with less CPU), at the price of writing each
    /// segment twice, off the append path. Off by default (see `background_spare`); the server
    /// turns it on.
    pub zero_spare: bool,
    /// Delete what a snapshot makes unnecessary (covered segments, older snapshots) on a thread of
    /// its own, so installing a snapshot does not hold up the next batch: unlinking a large
    /// segment on a disk mounted with `discard` takes tens of milliseconds. Safe to lose: a crash
    /// keeps any subset of the deletions, which the next open completes, and a deletion that
    /// failed is retried by the next snapshot. Off by default for the same reason as
    /// `background_spare`; the server turns it on.
    pub background_retire: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            max_record: 32 << 20,
            recovery: Recovery::Strict,
            preallocate: true,
            background_spare: false,
            zero_spare: false,
            background_retire: false,
        }
    }
}

/// Replay's policy for damage other than a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Refuse to open: acknowledged data may be lost, an operator must look.
    Strict,
    /// Cut the log at the damage (deleting later segments) and carry on; the operator's opt-in.
    TruncateCorruption,
}

/// What [`Wal::replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records handed to the callback (those with `lsn > after`).
    pub records: u64,
    /// LSN of the last record in the log after recovery (or `after` when the log holds none).
    pub last_lsn: Lsn,
    /// Set when replay cut the log; the server logs it as a warning.
    pub truncated: Option<Truncation>,
}

/// A cut made by replay: a torn tail, or corruption under [`Recovery::TruncateCorruption`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Segment the cut was made in; an offset inside its header means the file was deleted.
    pub segment: PathBuf,
    /// Byte offset of the cut.
    pub offset: u64,
    /// Bytes discarded: non-zero bytes after the cut plus whole later segments.
    pub bytes_dropped: u64,
    /// Why the data there was not accepted, for the operator's log.
    pub reason: String,
    /// True for a torn tail (an interrupted write: nothing acknowledged was lost); false for a
    /// cut at corruption under [`Recovery::TruncateCorruption`].
    pub torn_tail: bool,
    /// Checksum-valid records the cut discarded (found past the damage by resynchronising, as
    /// [`scan_with`] does; those already in the snapshot replay started from are not counted).
    /// Always empty for a torn tail.
    pub discarded: Stranded,
}

/// What cutting the log at a bad spot would discard; carried by [`Error::Corrupt`] so the
/// operator can weigh [`Recovery::TruncateCorruption`] before using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// Non-zero bytes after the bad spot in its segment plus the size of every later segment.
    pub bytes: u64,
    /// The checksum-valid records among them.
    pub records: Stranded,
}

/// Checksum-valid records past a bad spot, found by resynchronising at the next record that
/// could belong there (and again after each later bad spot, and in later segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stranded {
    /// How many.
    pub records: u64,
    /// LSN of the first of them.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last of them.
    pub last_lsn: Option<Lsn>,
}

impl std::fmt::Display for Stranded {
    /// "198 valid records (lsn 10..=207)", "1 valid record (lsn 9)" or "no valid records".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.records, self.first_lsn, self.last_lsn) {
            (0, ..) => write!(f, "no valid records"),
            (1, Some(lsn), _) => write!(f, "1 valid record (lsn {lsn})"),
            (n, Some(a), Some(b)) => write!(f, "{n} valid records (lsn {a}..={b})"),
            (n, ..) => write!(f, "{n} valid records"),
        }
    }
}

/// Where [`scan`] found a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Segment file holding the record.
    pub segment: PathBuf,
    /// Offset of the record header inside that file.
    pub offset: u64,
    /// The record's LSN.
    pub lsn: Lsn,
    /// True for a record after the first bad spot (only [`scan_with`] with `past_damage` visits
    /// those): checksum-valid, but records before it were lost, so replay never reaches it.
    pub past_damage: bool,
}

/// What [`scan`] saw; it reports damage instead of fixing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Segment files found.
    pub segments: usize,
    /// Valid records visited.
    pub records: u64,
    /// LSN of the last valid record (0 when there is none).
    pub last_lsn: Lsn,
    /// The first bad spot, if any.
    pub damage: Option<Damage>,
}

/// A bad spot found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment holding the bad spot.
    pub segment: PathBuf,
    /// Byte offset of the bad spot.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// True when replay would treat it as a torn tail and truncate it silently (with a warning).
    pub torn_tail: bool,
    /// The checksum-valid records after it, which replay does not reach and
    /// [`Recovery::TruncateCorruption`] would discard.
    pub after: Stranded,
}

#[cfg(test)]
mod tests {
    /// The server moves the log onto its writer thread.
    #[test]
    fn wal_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Wal>();
    }
}
