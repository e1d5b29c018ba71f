//! The journal: model events to WAL records and back, the group-commit writer thread,
//! snapshots, and start-up recovery.
//!
//! Actors call [`Journal::append`] inside their handler, right after deciding an event
//! and before applying it: it encodes the event, assigns its log sequence number (LSN)
//! and queues it for the writer, without waiting. The HTTP handler then awaits
//! [`Journal::durable`] for that LSN before it answers 2xx, so actors never block on disk
//! and one `fdatasync` acknowledges every request that arrived while the previous one
//! ran (group commit).
//!
//! Failure policy: a failed write or sync of records poisons the log for good (fsync is
//! never retried); every pending and later mutation gets 503 and reads keep working until
//! the operator restarts, when replay recovers what is on disk. When the log cannot reserve
//! space for its next segment, new mutations are refused with 507 *before* they are
//! applied, and accepted again once space is free. When it cannot *make* its next segment
//! for another passing reason (out of file descriptors, a read-only directory), nothing is
//! lost: records already queued stay queued and are retried every `WRITER_TICK` (their
//! requests wait), new mutations are refused with 503 naming the cause, and writing resumes
//! by itself once the cause is gone.
//!
//! Snapshots are per partition: each records the LSN of the last event its actor had
//! applied, and replay skips a partition's events up to that LSN, so the actors never
//! need to stop together to take a consistent cut.
//!
//! This module is the seam between the actors and a backend: the [`Journal`] handle,
//! tickets and the durability mark, the event and snapshot encodings, and the fold of
//! recovered records (`replay`). A backend is a writer thread that takes
//! `WriterMsg`s in LSN order, makes them durable and advances the mark, plus its
//! recovery; `file` is the embedded write-ahead log, `postgres` a PostgreSQL database
//! (`--journal`). The fold and the actors never know which backend runs.

mod file;
pub mod files;
mod postgres;
mod replay;

pub use file::{dump, Dumped};
pub use postgres::tls::{parse as parse_postgres_url, Tls as PostgresTls};
pub use postgres::{statement_bound, LeaseView, Promoted, Standby, Tenure};
pub use replay::{PartSnapshot, Recovery, Replay, SnapshotDoc};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::config::{Config, FsyncPolicy, JournalTarget};
use crate::error::{Error, Result};
use crate::metrics::WalStats;
use crate::model::{Event, State};

/// How long the writer waits for records before doing its periodic chores (space
/// reservation retries, snapshot triggers).
const WRITER_TICK: Duration = Duration::from_millis(250);
/// A snapshot request not answered within this long is repeated.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);
/// At most this many records go into one batch, so one huge burst cannot delay every
/// acknowledgement in it by a very long write.
const MAX_BATCH_RECORDS: usize = 8192;
/// At most this many bytes go into one batch (a batch may exceed it by one record).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Durability progress, published by the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    /// Every record with an LSN up to this one is on disk.
    durable: u64,
    /// The log failed: records after `durable` will never be.
    failed: bool,
}

enum WriterMsg {
    /// A record, and whom to tell when it is durable (`None` under `interval` fsync).
    Record(Vec<u8>, Option<oneshot::Sender<bool>>),
    /// A snapshot already written and fsynced under its temporary name: install it once
    /// every record before it is durable.
    Snapshot {
        prepared: Prepared,
        done: oneshot::Sender<Result<()>>,
    },
    /// Write what is queued, close the log (releasing its directory lock), then answer.
    Close(oneshot::Sender<()>),
}

/// What ended a batch other than its size: a snapshot to install or a close, each due
/// once the batch before it is written.
struct BatchEnd {
    snapshot: Option<(Prepared, oneshot::Sender<Result<()>>)>,
    closing: Option<oneshot::Sender<()>>,
}

/// Group commit, shared by every backend's writer: moves `first` and whatever else is
/// already queued (or arrives within `interval` under `interval` fsync) into `batch` and
/// `waiters`, up to [`MAX_BATCH_RECORDS`] records or [`MAX_BATCH_BYTES`] bytes, stopping
/// at a snapshot or a close so that everything queued before it is written first.
fn gather(
    first: Option<WriterMsg>,
    rx: &mpsc::Receiver<WriterMsg>,
    interval: Option<Duration>,
    batch: &mut Vec<Vec<u8>>,
    waiters: &mut Vec<Option<oneshot::Sender<bool>>>,
) -> BatchEnd {
    let deadline = interval.map(|d| Instant::now() + d);
    let mut bytes = 0usize;
    let mut end = BatchEnd {
        snapshot: None,
        closing: None,
    };
    let mut pending = first;
    while let Some(msg) = pending.take() {
        match msg {
            WriterMsg::Record(payload, waiter) => {
                bytes += payload.len();
                batch.push(payload);
                waiters.push(waiter);
            }
            WriterMsg::Snapshot { prepared, done } => {
                end.snapshot = Some((prepared, done));
                break;
            }
            WriterMsg::Close(done) => {
                end.closing = Some(done);
                break;
            }
        }
        if batch.len() >= MAX_BATCH_RECORDS || bytes >= MAX_BATCH_BYTES {
            break;
        }
        pending = match deadline {
            None => rx.try_recv().ok(),
            Some(deadline) => rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok(),
        };
    }
    end
}

struct Sender {
    /// The LSN the next record gets; equals the WAL's own numbering because records reach
    /// the writer in this order and it appends them in order.
    next_lsn: u64,
    tx: mpsc::Sender<WriterMsg>,
}

struct Inner {
    /// Assigns LSNs and enqueues under one short lock, so LSN order is channel order.
    sender: Mutex<Sender>,
    /// Durability progress; handlers wait on it.
    mark: watch::Sender<Mark>,
    /// False while the WAL has no reserved space: new mutations are refused (507).
    space: AtomicBool,
    /// True while the WAL cannot make its next segment for a passing reason (see
    /// `stall_reason`): new mutations are refused.
    stalled: AtomicBool,
    /// Why the log is stalled, as the error new mutations get (503, or 507 for a full disk).
    stall_reason: Mutex<Option<Error>>,
    /// Under `interval` fsync, appends are acknowledged without waiting for the disk.
    wait_for_disk: bool,
    /// Writes snapshots off the writer thread.
    snapshots: Snapshots,
    /// The writer's batch size and sync time (exported by `metrics`).
    stats: WalStats,
    /// Tells each record's waiter whether it became durable.
    teller: Teller,
}

/// A batch's waiters and whether their records are durable.
type Told = (Vec<oneshot::Sender<bool>>, bool);

/// Tells waiting requests whether their records are durable, for every backend's writer.
///
/// Completing a waiter from the writer's thread schedules the waiting task from outside
/// its runtime: one write to the runtime's wake-up descriptor per request (measured with
/// `strace`: ~6 a batch at c = 64, a syscall each on the writer's core). So the writer
/// hands each batch's waiters to one task on the runtime, woken once, which completes
/// them there. Without a runtime at start (a journal opened outside one) the writer
/// completes them itself, as it does every batch it hands over after the runtime has shut
/// down; a batch the relay had not completed when the runtime stopped is dropped with it
/// (its requests, gone with the runtime, are told nothing: never a success).
struct Teller {
    relay: Option<tokio::sync::mpsc::UnboundedSender<Told>>,
}

impl Teller {
    /// Starts the relay task on the current runtime, if there is one.
    fn start() -> Teller {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Teller { relay: None };
        };
        let (relay, mut told) = tokio::sync::mpsc::unbounded_channel::<Told>();
        runtime.spawn(async move {
            while let Some((waiters, durable)) = told.recv().await {
                for waiter in waiters {
                    let _ = waiter.send(durable);
                }
            }
        });
        Teller { relay: Some(relay) }
    }

    /// Tells `waiters` (`None` under `interval` fsync: nobody waits) whether their records
    /// are `durable`.
    fn tell(&self, waiters: std::vec::Drain<'_, Option<oneshot::Sender<bool>>>, durable: bool) {
        let waiters: Vec<oneshot::Sender<bool>> = waiters.flatten().collect();
        if waiters.is_empty() {
            return;
        }
        let unsent = match &self.relay {
            Some(relay) => match relay.send((waiters, durable)) {
                Ok(()) => return,
                Err(tokio::sync::mpsc::error::SendError(told)) => told.0,
            },
            None => waiters,
        };
        for waiter in unsent {
            let _ = waiter.send(durable);
        }
    }
}

/// Where a backend writes a snapshot before its writer installs it in LSN order.
enum Snapshots {
    /// Snapshot files in the log's directory.
    File(wal::SnapshotWriter),
    /// Rows in the database at `url`, written under the lease's `term` (fenced, see
    /// `postgres::prepare`), each statement bounded by the `lease`'s length.
    Postgres {
        url: String,
        term: i64,
        lease: Duration,
    },
}

/// A snapshot written (and durable) under a provisional name, waiting to be installed by
/// the writer once every record before it is durable.
enum Prepared {
    /// A snapshot file under its temporary name.
    File(wal::PreparedSnapshot),
    /// A provisional snapshot row at `lsn`, of `bytes` bytes.
    Postgres { lsn: u64, bytes: u64 },
}

/// When a backend's writer asks for the next snapshot: once the log since the last one
/// holds `--snapshot-bytes` and also `--snapshot-growth-percent` of the last snapshot's
/// size, so snapshot work stays proportional to the work logged instead of re-encoding a
/// large state every few MiB (Redis's auto-aof-rewrite-percentage).
struct SnapshotPace {
    /// `--snapshot-bytes`.
    min_bytes: u64,
    /// `--snapshot-growth-percent` (0: `min_bytes` alone decides).
    growth_percent: u64,
    /// Size of the newest snapshot in bytes (0 before the first).
    last_snapshot_bytes: u64,
}

impl SnapshotPace {
    fn new(config: &Config, last_snapshot_bytes: u64) -> SnapshotPace {
        SnapshotPace {
            min_bytes: config.snapshot_bytes,
            growth_percent: config.snapshot_growth_percent,
            last_snapshot_bytes,
        }
    }

    /// Whether `logged` bytes since the last snapshot call for the next one.
    fn due(&self, logged: u64) -> bool {
        let grown = self.last_snapshot_bytes.saturating_mul(self.growth_percent) / 100;
        logged >= self.min_bytes.max(grown)
    }
}

impl Snapshots {
    /// Encodes `parts` as the provisional snapshot at `lsn` on a low-priority thread of
    /// its own (see [`SNAPSHOT_NICE`]): for the file backend straight into the snapshot
    /// file, for PostgreSQL into memory and then into rows. Returns it and its size.
    async fn prepare(&self, lsn: u64, parts: SnapshotParts) -> Result<(Prepared, u64)> {
        match self {
            Snapshots::File(writer) => {
                let writer = writer.clone();
                let prepared = on_snapshot_thread(move || {
                    let file = writer.create(lsn).map_err(file::wal_error)?;
                    let mut sink = SnapshotSink::new(SinkTarget::File(file));
                    parts.encode(&mut sink)?;
                    match sink.finish()? {
                        SinkTarget::File(file) => file.finish().map_err(file::wal_error),
                        SinkTarget::Memory(_) => unreachable!("the sink keeps its target"),
                    }
                })
                .await?;
                let size = prepared.bytes();
                Ok((Prepared::File(prepared), size))
            }
            Snapshots::Postgres { url, term, lease } => {
                let bytes = on_snapshot_thread(move || parts.encode_in_memory()).await?;
                let size = bytes.len() as u64;
                Ok((
                    postgres::prepare(url, *term, *lease, lsn, bytes).await?,
                    size,
                ))
            }
        }
    }
}

/// The nice value of the thread that encodes and writes a snapshot. On a busy box the
/// encoder competes with the request path for the cores; at nice 10 the scheduler gives
/// it about a tenth of the share of a normal thread while others want the CPU (so the
/// requests' tail latency barely moves), and all of an idle core otherwise. Not lower:
/// at 19 a snapshot under sustained load could take minutes, and the log it compacts
/// keeps growing meanwhile.
const SNAPSHOT_NICE: i32 = 10;

/// Runs `work` on a thread of its own at [`SNAPSHOT_NICE`] (a thread, not the blocking
/// pool: a lowered priority cannot be raised back by an unprivileged process, so a pool
/// thread would keep it for whatever it runs next).
async fn on_snapshot_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("flinger-snapshot".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| Error::Unavailable(format!("cannot start the snapshot thread: {e}")))?;
    rx.await
        .map_err(|_| Error::Internal("the snapshot thread panicked".into()))?
}

/// Lowers the calling thread's priority to [`SNAPSHOT_NICE`] (Linux keeps a nice value
/// per thread). Best effort: a failure only leaves the snapshot at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's id, no memory involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, SNAPSHOT_NICE);
    }
}

/// The partitions of one snapshot, copied in their actors' turns and not encoded yet,
/// in the order of the [`SnapshotDoc`] layout.
pub struct SnapshotParts {
    /// Registry partition.
    pub registry: PendingSnapshot,
    /// Results partition.
    pub results: PendingSnapshot,
    /// Files partition.
    pub files: PendingSnapshot,
    /// Agents partition.
    pub agents: PendingSnapshot,
    /// Access partition.
    pub access: PendingSnapshot,
    /// Webhooks partition.
    pub webhooks: PendingSnapshot,
}

impl SnapshotParts {
    /// The LSN the snapshot covers: the smallest any partition reaches.
    pub fn lsn(&self) -> u64 {
        [
            &self.registry,
            &self.results,
            &self.files,
            &self.agents,
            &self.access,
            &self.webhooks,
        ]
        .iter()
        .map(|p| p.lsn)
        .min()
        .unwrap_or(0)
    }

    /// The parts of a whole `state`, each as its actor copies it for a snapshot (the
    /// registry without its derived indexes: [`crate::model::registry::Registry::snapshot_copy`]),
    /// every partition at `lsn`. For code that holds a [`State`] rather than actors (the
    /// recovery fuzz check); the server's snapshots are the actors' copies.
    pub fn of_state(state: &State, lsn: u64) -> SnapshotParts {
        fn part<T: Serialize + Send + 'static>(lsn: u64, copy: T) -> PendingSnapshot {
            PendingSnapshot {
                lsn,
                encode: Box::new(move |sink| sink.encode(&copy)),
            }
        }
        SnapshotParts {
            registry: part(lsn, state.registry.snapshot_copy()),
            results: part(lsn, state.results.clone()),
            files: part(lsn, state.files.clone()),
            agents: part(lsn, state.agents.clone()),
            access: part(lsn, state.access.clone()),
            webhooks: part(lsn, state.webhooks.clone()),
        }
    }

    /// The snapshot document of the parts, in memory (as the PostgreSQL journal uploads
    /// it; the file journal streams it into its file instead).
    pub fn encode_in_memory(self) -> Result<Vec<u8>> {
        let mut sink = SnapshotSink::new(SinkTarget::Memory(Vec::new()));
        self.encode(&mut sink)?;
        match sink.finish()? {
            SinkTarget::Memory(bytes) => Ok(bytes),
            SinkTarget::File(_) => unreachable!("the sink keeps its target"),
        }
    }

    /// Encodes the parts as a [`SnapshotDoc`] in one pass into `sink`: the document's
    /// framing written by hand, each partition encoded straight after its length prefix,
    /// which is reserved first and filled in once the partition's size is known. The bytes
    /// are those `rmp_serde::to_vec(&SnapshotDoc)` gives, except that every partition's
    /// length prefix is the 4-byte form (`bin 32`), which every msgpack reader accepts.
    fn encode(self, sink: &mut SnapshotSink) -> Result<()> {
        let failed = |e: std::io::Error| Error::Internal(format!("snapshot encoding: {e}"));
        // A struct is an array of its fields, an `Option` that is `Some` the value itself.
        sink.put(&[0x90 | 7]).map_err(failed)?;
        put_value(sink, &SNAPSHOT_VERSION)?;
        let parts = [
            self.registry,
            self.results,
            self.files,
            self.agents,
            self.access,
            self.webhooks,
        ];
        for part in parts {
            // PartSnapshot: [lsn, bin].
            sink.put(&[0x90 | 2]).map_err(failed)?;
            put_value(sink, &part.lsn)?;
            let hole = sink.hole(5)?;
            let start = sink.position();
            (part.encode)(sink)?;
            let len = u32::try_from(sink.position() - start).map_err(|_| {
                Error::Internal("snapshot encoding: a partition exceeds 4 GiB".into())
            })?;
            let mut prefix = [0xc6, 0, 0, 0, 0];
            prefix[1..].copy_from_slice(&len.to_be_bytes());
            sink.fill(hole, &prefix)?;
        }
        Ok(())
    }
}

/// Encodes a partition's copy into the sink (run on the snapshot thread).
pub type EncodePart = Box<dyn FnOnce(&mut SnapshotSink) -> Result<()> + Send>;

/// One partition copied for a snapshot, not encoded yet.
pub struct PendingSnapshot {
    /// Last LSN folded into the copy.
    pub lsn: u64,
    /// Encodes the copy.
    pub encode: EncodePart,
}

/// Encodes `value` as compact msgpack into `sink`.
fn put_value<T: Serialize + ?Sized>(sink: &mut SnapshotSink, value: &T) -> Result<()> {
    rmp_serde::encode::write(sink, value)
        .map_err(|e| Error::Internal(format!("snapshot encoding: {e}")))
}

/// Bytes buffered by a [`SnapshotSink`] before they go to its target: large enough that
/// a write costs little per byte, small enough to stay in cache and never grow.
const SINK_BUFFER: usize = 1 << 20;

/// Where a snapshot's bytes go as they are encoded: a fixed buffer in front of the
/// snapshot file (or of a growing `Vec` for PostgreSQL), so encoding a large state
/// neither builds it in memory first nor copies it twice.
pub struct SnapshotSink {
    /// Encoded bytes not yet handed to `target`; never grows past [`SINK_BUFFER`].
    buf: Vec<u8>,
    /// Where they go.
    target: SinkTarget,
    /// The first write error of the file, kept whole (an `io::Error` through the encoder
    /// would lose whether the disk was full).
    failed: Option<wal::Error>,
}

/// A [`SnapshotSink`]'s destination.
enum SinkTarget {
    /// A snapshot file being written.
    File(wal::SnapshotFile),
    /// Memory (the PostgreSQL backend uploads it in rows afterwards).
    Memory(Vec<u8>),
}

impl SnapshotSink {
    fn new(target: SinkTarget) -> SnapshotSink {
        SnapshotSink {
            buf: Vec::with_capacity(SINK_BUFFER),
            target,
            failed: None,
        }
    }

    /// Encodes `value` as a partition (compact msgpack, see [`encode_partition`]).
    pub fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let written = rmp_serde::encode::write(self, value);
        match (written, self.failed.take()) {
            (_, Some(e)) => Err(file::wal_error(e)),
            (Err(e), None) => Err(Error::Internal(format!("snapshot encoding: {e}"))),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Bytes encoded so far.
    fn position(&self) -> u64 {
        let out = match &self.target {
            SinkTarget::File(file) => file.len(),
            SinkTarget::Memory(bytes) => bytes.len() as u64,
        };
        out + self.buf.len() as u64
    }

    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > SINK_BUFFER {
            self.drain()?;
        }
        if bytes.len() >= SINK_BUFFER {
            return self.emit(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Hands the buffer to the target.
    fn drain(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let emitted = self.emit(&buf);
        self.buf = buf;
        self.buf.clear();
        emitted
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.target {
            SinkTarget::File(file) => file.append(bytes).map_err(|e| {
                let io = std::io::Error::other(e.to_string());
                self.failed.get_or_insert(e);
                io
            }),
            SinkTarget::Memory(out) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Reserves the next `len` bytes, to be written by [`SnapshotSink::fill`]; returns
    /// their position.
    fn hole(&mut self, len: usize) -> Result<u64> {
        self.drain().map_err(|e| self.error(e))?;
        Ok(match &mut self.target {
            SinkTarget::File(file) => file.reserve(len as u64),
            SinkTarget::Memory(out) => {
                out.resize(out.len() + len, 0);
                (out.len() - len) as u64
            }
        })
    }

    /// Writes the bytes of the hole reserved at `at`.
    fn fill(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        match &mut self.target {
            SinkTarget::File(file) => file.fill(at, bytes).map_err(file::wal_error),
            SinkTarget::Memory(out) => {
                out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Hands what is buffered to the target and returns it.
    fn finish(mut self) -> Result<SinkTarget> {
        self.drain().map_err(|e| self.error(e))?;
        Ok(self.target)
    }

    /// The error to report for a failed write: the file's own when there is one.
    fn error(&mut self, e: std::io::Error) -> Error {
        match self.failed.take() {
            Some(e) => file::wal_error(e),
            None => Error::Internal(format!("snapshot write: {e}")),
        }
    }
}

impl std::io::Write for SnapshotSink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // The encoder's writes are a few bytes each: the common case is one copy.
        if self.buf.len() + bytes.len() <= SINK_BUFFER {
            self.buf.extend_from_slice(bytes);
        } else {
            self.put(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Inner {
    /// The shared half of a backend that recovered up to `last_lsn`: the next record gets
    /// `last_lsn + 1`. Returns it and the receiving end of the writer's channel.
    fn start(
        config: &Config,
        last_lsn: u64,
        space: bool,
        snapshots: Snapshots,
    ) -> (Arc<Inner>, mpsc::Receiver<WriterMsg>) {
        let (tx, rx) = mpsc::channel();
        let (mark, _) = watch::channel(Mark {
            durable: last_lsn,
            failed: false,
        });
        let inner = Arc::new(Inner {
            sender: Mutex::new(Sender {
                next_lsn: last_lsn + 1,
                tx,
            }),
            mark,
            space: AtomicBool::new(space),
            stalled: AtomicBool::new(false),
            stall_reason: Mutex::new(None),
            wait_for_disk: matches!(config.fsync, FsyncPolicy::Always),
            snapshots,
            stats: WalStats::default(),
            teller: Teller::start(),
        });
        (inner, rx)
    }
}

/// A record's place in the log and the means to wait for its durability.
#[derive(Debug)]
pub struct Ticket {
    /// The record's log sequence number.
    lsn: u64,
    /// Resolved by the writer with `true` once durable, `false` if the log failed.
    done: Option<oneshot::Receiver<bool>>,
}

impl Ticket {
    /// The record's log sequence number.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }
}

/// The handle actors and handlers share.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// The writer's requests for a snapshot (sent when the log has grown past the threshold).
pub type SnapshotRequests = tokio::sync::mpsc::UnboundedReceiver<()>;

/// Opens the journal `config.journal` names, loads the newest snapshot, replays the
/// records after it into a fresh [`State`], and starts the backend's writer thread.
///
/// Returns the state, the journal, the writer's snapshot requests and what recovery did.
pub fn open(config: &Config) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    open_with(config, Arc::new(wal::StdFs))
}

/// [`open`] with the file log on a given filesystem (tests inject write and sync
/// failures through it); the PostgreSQL journal does not use `fs`.
pub fn open_with(
    config: &Config,
    fs: Arc<dyn wal::Fs>,
) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    match &config.journal {
        JournalTarget::File => file::open_with(config, fs),
        JournalTarget::Postgres(url) => postgres::open(config, url),
    }
}

/// Encodes a partition for a snapshot: compact (positional) msgpack, which encodes and
/// decodes several times faster than named fields for millions of jobs. Snapshots are
/// rewritten from live state, so a layout change only needs `SNAPSHOT_VERSION` bumped.
/// (A snapshot streams its partitions through [`SnapshotSink::encode`], the same
/// encoding; this is for one partition on its own.)
pub fn encode_partition<T: Serialize>(partition: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec(partition).map_err(|e| Error::Internal(format!("snapshot encoding: {e}")))
}

/// The snapshot layout version written; a snapshot of a version outside
/// [`SNAPSHOTS_READ`] is refused at start-up.
///
/// 3: result fields as (key, JSON text) members, `updated_at` of result documents and
/// `at` of stored files. Version 2 (fields as one JSON text, no times) still decodes.
pub const SNAPSHOT_VERSION: u32 = 3;
/// The snapshot layout versions this build reads.
pub const SNAPSHOTS_READ: std::ops::RangeInclusive<u32> = 2..=SNAPSHOT_VERSION;

/// Encodes an event as a WAL record payload.
pub fn encode(event: &Event) -> Vec<u8> {
    thread_local! {
        // Encoding into a fresh vector grew it ~6 times per submitted job; a reused
        // buffer and one exact copy is one allocation.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        rmp_serde::encode::write_named(scratch, event).expect("events always encode");
        let payload = scratch.to_vec();
        // A rare huge event (a large result) must not pin its size for the thread's life.
        if scratch.capacity() > 1 << 20 {
            *scratch = Vec::new();
        }
        payload
    })
}

/// Decodes a WAL record payload.
pub fn decode(payload: &[u8]) -> std::result::Result<Event, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
}

impl Journal {
    /// Queues `event` for the log and returns its ticket (LSN, and a way to wait until it
    /// is durable). Refuses (without queuing) when the log failed or has no reserved
    /// space, so the caller must not apply the event then.
    pub fn append(&self, event: &Event) -> Result<Ticket> {
        self.writable()?;
        let payload = encode(event);
        // One waiter per record, woken once: cheaper than waking every waiting request on
        // every batch.
        let (tx, done) = if self.inner.wait_for_disk {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut sender = self.inner.sender.lock();
        let lsn = sender.next_lsn;
        sender
            .tx
            .send(WriterMsg::Record(payload, tx))
            .map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))?;
        sender.next_lsn += 1;
        Ok(Ticket { lsn, done })
    }

    /// The log writer's batch-size and sync-time histograms.
    pub fn wal_stats(&self) -> &WalStats {
        &self.inner.stats
    }

    /// The LSN of the last record appended (0 when none ever was).
    pub fn last_assigned(&self) -> u64 {
        self.inner.sender.lock().next_lsn - 1
    }

    /// A ticket for every record appended so far. A request that changes nothing because
    /// an earlier one already did (a retried log fragment, a repeated state report,
    /// attachments already stored) waits on it before it acknowledges: the change it
    /// confirms may not be durable yet, and its 2xx must not promise more than the
    /// original's.
    pub fn settled(&self) -> Ticket {
        self.ticket_for(self.last_assigned())
    }

    /// A ticket for a record appended earlier (by LSN): waits on the durability mark.
    pub fn ticket_for(&self, lsn: u64) -> Ticket {
        Ticket { lsn, done: None }
    }

    /// Resolves once the ticket's record is durable (at once under `interval` fsync).
    pub async fn durable(&self, ticket: Ticket) -> Result<()> {
        match ticket.done {
            Some(done) => match done.await {
                Ok(true) => Ok(()),
                _ => Err(Error::Unavailable(
                    "the write-ahead log failed; the change was not saved".into(),
                )),
            },
            None => self.durable_lsn(ticket.lsn).await,
        }
    }

    /// Whether a mutation may be recorded now.
    pub fn writable(&self) -> Result<()> {
        if self.inner.mark.borrow().failed {
            return Err(Error::Unavailable(
                "the write-ahead log failed; the server must be restarted to accept changes".into(),
            ));
        }
        if !self.inner.space.load(Ordering::Acquire) {
            return Err(Error::NoSpace(
                "no disk space reserved for the write-ahead log".into(),
            ));
        }
        if self.inner.stalled.load(Ordering::Acquire) {
            if let Some(e) = self.inner.stall_reason.lock().clone() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Resolves once the record `lsn` is durable (immediately under `interval` fsync).
    async fn durable_lsn(&self, lsn: u64) -> Result<()> {
        if !self.inner.wait_for_disk {
            return if self.inner.mark.borrow().failed && lsn > self.inner.mark.borrow().durable {
                Err(Error::Unavailable("the write-ahead log failed".into()))
            } else {
                Ok(())
            };
        }
        let settled = |m: &Mark| m.durable >= lsn || m.failed;
        let mark = {
            let current = *self.inner.mark.borrow();
            if settled(&current) {
                current
            } else {
                let mut rx = self.inner.mark.subscribe();
                let result = rx.wait_for(settled).await.map(|m| *m);
                result.map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))?
            }
        };
        if mark.durable >= lsn {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the write-ahead log failed; the change was not saved".into(),
            ))
        }
    }

    /// Writes what is queued and closes the log, releasing its directory; later appends
    /// are refused. For an orderly stop (the process exiting releases it anyway).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        let sent = self.inner.sender.lock().tx.send(WriterMsg::Close(done));
        if sent.is_ok() {
            let _ = wait.await;
        }
    }

    /// Writes a snapshot of `parts`, covering every record up to the smallest LSN any of
    /// them reaches, and drops the log segments it covers; returns its size in bytes. The
    /// parts are encoded straight into the file and fsynced on a low-priority thread; the
    /// writer thread only installs it (rename, directory fsync), so appends are not held
    /// up by a large snapshot.
    pub async fn write_snapshot(&self, parts: SnapshotParts) -> Result<u64> {
        let lsn = parts.lsn();
        let (prepared, size) = self.inner.snapshots.prepare(lsn, parts).await?;
        let (done, wait) = oneshot::channel();
        self.inner
            .sender
            .lock()
            .tx
            .send(WriterMsg::Snapshot { prepared, done })
            .map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))??;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part<T: Serialize + Send + 'static>(lsn: u64, value: T) -> PendingSnapshot {
        PendingSnapshot {
            lsn,
            encode: Box::new(move |sink| sink.encode(&value)),
        }
    }

    /// The streamed document decodes as the `SnapshotDoc` the replay reads, partition by
    /// partition equal to `encode_partition`'s bytes, also for a partition larger than the
    /// sink's buffer.
    #[test]
    fn a_streamed_snapshot_decodes_as_the_document_layout() {
        let big: Vec<u64> = (0..(SINK_BUFFER as u64 / 4)).collect();
        let parts = SnapshotParts {
            registry: part(7, big.clone()),
            results: part(5, "results".to_owned()),
            files: part(9, vec![1u8, 2, 3]),
            agents: part(6, ()),
            access: part(8, Some(42u32)),
            webhooks: part(4, ("hook", 1u64 << 40)),
        };
        assert_eq!(parts.lsn(), 4);
        let bytes = parts.encode_in_memory().unwrap();
        let doc: SnapshotDoc = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(doc.version, SNAPSHOT_VERSION);
        let got = [
            Some(&doc.registry),
            Some(&doc.results),
            Some(&doc.files),
            Some(&doc.agents),
            doc.access.as_ref(),
            doc.webhooks.as_ref(),
        ]
        .map(|p| p.map(|p| (p.lsn, p.state.to_vec())));
        let want = [
            (7, encode_partition(&big).unwrap()),
            (5, encode_partition(&"results").unwrap()),
            (9, encode_partition(&vec![1u8, 2, 3]).unwrap()),
            (6, encode_partition(&()).unwrap()),
            (8, encode_partition(&Some(42u32)).unwrap()),
            (4, encode_partition(&("hook", 1u64 << 40)).unwrap()),
        ]
        .map(Some);
        assert_eq!(got, want);
    }
}
