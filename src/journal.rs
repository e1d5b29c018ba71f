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
//! lost: records already queued stay queued and are retried every [`WRITER_TICK`] (their
//! requests wait), new mutations are refused with 503 naming the cause, and writing resumes
//! by itself once the cause is gone.
//!
//! Snapshots are per partition: each records the LSN of the last event its actor had
//! applied, and replay skips a partition's events up to that LSN, so the actors never
//! need to stop together to take a consistent cut.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::config::{Config, FsyncPolicy};
use crate::error::{Error, Result};
use crate::metrics::WalStats;
use crate::model::{Event, Partition, State};

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
        prepared: wal::PreparedSnapshot,
        done: oneshot::Sender<Result<()>>,
    },
    /// Write what is queued, close the log (releasing its directory lock), then answer.
    Close(oneshot::Sender<()>),
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
    /// Writes snapshot files off the writer thread.
    snapshots: wal::SnapshotWriter,
    /// The writer's batch size and sync time (exported by `metrics`).
    stats: WalStats,
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

/// One partition in a snapshot: its state and the last LSN folded into it.
#[derive(Serialize, Deserialize)]
pub struct PartSnapshot {
    /// Every event of the partition up to this LSN is in `state`.
    pub lsn: u64,
    /// The partition, msgpack-encoded.
    #[serde(with = "serde_bytes_compat")]
    pub state: Vec<u8>,
}

mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(bytes::Bytes::deserialize(d)?.to_vec())
    }
}

/// The whole snapshot file payload.
#[derive(Serialize, Deserialize)]
pub struct SnapshotDoc {
    /// [`SNAPSHOT_VERSION`] when written.
    pub version: u32,
    /// Registry partition.
    pub registry: PartSnapshot,
    /// Results partition.
    pub results: PartSnapshot,
    /// Files partition.
    pub files: PartSnapshot,
    /// Agents partition.
    pub agents: PartSnapshot,
    /// Access partition (absent in snapshots written before access control existed).
    #[serde(default)]
    pub access: Option<PartSnapshot>,
}

/// What recovery found, for the start-up log line.
#[derive(Debug, Default)]
pub struct Recovery {
    /// LSN of the snapshot loaded, if any.
    pub snapshot_lsn: Option<u64>,
    /// Records replayed after it.
    pub replayed: u64,
    /// How long loading the snapshot took.
    pub snapshot_time: Duration,
    /// How long it took in all.
    pub elapsed: Duration,
}

/// The writer's requests for a snapshot (sent when the log has grown past the threshold).
pub type SnapshotRequests = tokio::sync::mpsc::UnboundedReceiver<()>;

/// During recovery: up to which LSN each partition's snapshot already holds its events.
#[derive(Clone, Copy, Debug, Default)]
struct Applied {
    /// Registry.
    pub registry: u64,
    /// Results.
    pub results: u64,
    /// Files.
    pub files: u64,
    /// Agents.
    pub agents: u64,
    /// Access.
    pub access: u64,
}

impl Applied {
    fn get(&self, p: Partition) -> u64 {
        match p {
            Partition::Registry => self.registry,
            Partition::Results => self.results,
            Partition::Artifacts => self.files,
            Partition::Agents => self.agents,
            Partition::Access => self.access,
        }
    }

    fn set(&mut self, p: Partition, lsn: u64) {
        match p {
            Partition::Registry => self.registry = lsn,
            Partition::Results => self.results = lsn,
            Partition::Artifacts => self.files = lsn,
            Partition::Agents => self.agents = lsn,
            Partition::Access => self.access = lsn,
        }
    }
}

/// Encodes a partition for a snapshot: compact (positional) msgpack, which encodes and
/// decodes several times faster than named fields for millions of jobs. Snapshots are
/// rewritten from live state, so a layout change only needs `SNAPSHOT_VERSION` bumped.
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
    rmp_serde::to_vec_named(event).expect("events always encode")
}

/// Decodes a WAL record payload.
pub fn decode(payload: &[u8]) -> std::result::Result<Event, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
}

fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

fn wal_options(config: &Config) -> wal::Options {
    wal::Options {
        segment_size: config.segment_bytes,
        max_record: u32::try_from(
            config
                .max_result_bytes
                .max(config.max_job_bytes)
                .max(config.max_output_bytes)
                * 2
                + (1 << 20),
        )
        .unwrap_or(u32::MAX),
        recovery: if config.wal_truncate_corruption {
            wal::Recovery::TruncateCorruption
        } else {
            wal::Recovery::Strict
        },
        // A slow preallocation (no fallocate: glibc writes the segment) must not hold up the
        // acknowledgements of the batch that rotated.
        background_spare: true,
        ..wal::Options::default()
    }
}

fn wal_error(e: wal::Error) -> Error {
    match e {
        wal::Error::NoSpace => Error::NoSpace("no space left for the write-ahead log".into()),
        other => Error::Internal(format!("write-ahead log: {other}")),
    }
}

/// Opens the log under `config.data_dir`, loads the newest snapshot, replays the records
/// after it into a fresh [`State`], and starts the writer thread.
///
/// Returns the state, the journal, the writer's snapshot requests and what recovery did.
pub fn open(config: &Config) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    open_with(config, Arc::new(wal::StdFs))
}

/// [`open`] over a given filesystem (tests inject write and sync failures through it).
pub fn open_with(
    config: &Config,
    fs: Arc<dyn wal::Fs>,
) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    let started = Instant::now();
    let mut wal = wal::Wal::open_with(fs, &wal_dir(&config.data_dir), wal_options(config))
        .map_err(wal_error)?;
    let mut state = State::default();
    let mut applied = Applied::default();
    let mut recovery = Recovery::default();
    let mut after = 0;
    let mut snapshot_size = 0;
    if let Some((lsn, bytes)) = wal.load_snapshot().map_err(wal_error)? {
        snapshot_size = bytes.len() as u64;
        let doc: SnapshotDoc = rmp_serde::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("snapshot at lsn {lsn} does not decode: {e}")))?;
        if !SNAPSHOTS_READ.contains(&doc.version) {
            return Err(Error::Internal(format!(
                "snapshot at lsn {lsn} has layout version {}, this build reads {SNAPSHOTS_READ:?}",
                doc.version
            )));
        }
        let bad = |what: &str, e: rmp_serde::decode::Error| {
            Error::Internal(format!("snapshot {what} partition does not decode: {e}"))
        };
        state.registry =
            rmp_serde::from_slice(&doc.registry.state).map_err(|e| bad("registry", e))?;
        state.registry.intern_names();
        state.registry.rebuild_index();
        state.results = rmp_serde::from_slice(&doc.results.state).map_err(|e| bad("results", e))?;
        state.files = rmp_serde::from_slice(&doc.files.state).map_err(|e| bad("files", e))?;
        state.agents = rmp_serde::from_slice(&doc.agents.state).map_err(|e| bad("agents", e))?;
        if let Some(access) = &doc.access {
            state.access = rmp_serde::from_slice(&access.state).map_err(|e| bad("access", e))?;
        }
        applied = Applied {
            registry: doc.registry.lsn,
            results: doc.results.lsn,
            files: doc.files.lsn,
            agents: doc.agents.lsn,
            access: doc.access.as_ref().map_or(0, |a| a.lsn),
        };
        after = lsn;
        recovery.snapshot_lsn = Some(lsn);
        recovery.snapshot_time = started.elapsed();
    }
    let report = wal
        .replay(after, |lsn, payload| -> std::result::Result<(), String> {
            let event = decode(payload).map_err(|e| format!("record does not decode: {e}"))?;
            let partition = event.partition();
            if lsn > applied.get(partition) {
                state.apply(lsn, &event);
                applied.set(partition, lsn);
            }
            Ok(())
        })
        .map_err(wal_error)?;
    recovery.replayed = report.records;
    if let Some(t) = &report.truncated {
        tracing::warn!(
            segment = %t.segment.display(),
            offset = t.offset,
            bytes = t.bytes_dropped,
            "write-ahead log had a torn tail; truncated it"
        );
    }
    let (tx, rx) = mpsc::channel();
    let first = wal.last_lsn() + 1;
    let (mark, _) = watch::channel(Mark {
        durable: wal.last_lsn(),
        failed: false,
    });
    let inner = Arc::new(Inner {
        sender: Mutex::new(Sender {
            next_lsn: first,
            tx,
        }),
        mark,
        space: AtomicBool::new(wal.space_reserved()),
        stalled: AtomicBool::new(false),
        stall_reason: Mutex::new(None),
        wait_for_disk: matches!(config.fsync, FsyncPolicy::Always),
        snapshots: wal.snapshot_writer(),
        stats: WalStats::default(),
    });
    let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer {
        wal,
        rx,
        inner: inner.clone(),
        snapshot_bytes: config.snapshot_bytes,
        growth_percent: config.snapshot_growth_percent,
        last_snapshot_bytes: snapshot_size,
        snapshot_requested: None,
        snap_tx,
        interval: match config.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval(d) => Some(d),
        },
        deferred: None,
        unreserved: None,
    };
    std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| Error::Internal(format!("cannot start the WAL writer: {e}")))?;
    recovery.elapsed = started.elapsed();
    Ok((state, Journal { inner }, snap_rx, recovery))
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

    /// Writes a snapshot covering every record up to `lsn` (the smallest LSN any
    /// partition in `bytes` reaches) and drops the log segments it covers. The file is
    /// written and fsynced on a blocking thread; the writer thread only installs it
    /// (rename, directory fsync), so appends are not held up by a large snapshot.
    pub async fn write_snapshot(&self, lsn: u64, bytes: Vec<u8>) -> Result<()> {
        let writer = self.inner.snapshots.clone();
        let prepared = tokio::task::spawn_blocking(move || writer.prepare(lsn, &bytes))
            .await
            .map_err(|e| Error::Internal(format!("snapshot write task failed: {e}")))?
            .map_err(wal_error)?;
        let (done, wait) = oneshot::channel();
        self.inner
            .sender
            .lock()
            .tx
            .send(WriterMsg::Snapshot { prepared, done })
            .map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Unavailable("the write-ahead log has stopped".into()))?
    }
}

/// The one thread that writes and syncs the log.
struct Writer {
    /// The log itself; only this thread touches it.
    wal: wal::Wal,
    /// Records and snapshot requests, in LSN order.
    rx: mpsc::Receiver<WriterMsg>,
    /// Shared with the journal handles: durability mark and space flag.
    inner: Arc<Inner>,
    /// Ask for a snapshot once this many bytes were logged since the last one...
    snapshot_bytes: u64,
    /// ... and this percentage of the last snapshot's size: snapshot work then stays
    /// proportional to the work logged instead of growing with the state.
    growth_percent: u64,
    /// Size of the newest snapshot (0 before the first).
    last_snapshot_bytes: u64,
    /// When a snapshot was last requested and not yet written: ask again only if the
    /// request seems lost (the collecting task failed).
    snapshot_requested: Option<Instant>,
    /// Where snapshot requests go (the server's snapshot task).
    snap_tx: tokio::sync::mpsc::UnboundedSender<()>,
    /// `Some` under `interval` fsync: gather records this long before writing.
    interval: Option<Duration>,
    /// Set while a batch could not be written because no new segment could be made: the
    /// cause, until a retry succeeds.
    deferred: Option<wal::Error>,
    /// Set while the spare segment cannot be made for a reason other than a full disk.
    unreserved: Option<wal::Error>,
}

impl Writer {
    fn run(mut self) {
        // Records not yet durable, in LSN order, with whom to tell (`None` under `interval`
        // fsync). Left non-empty only while the log is stalled (see `deferred`).
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut waiters: Vec<Option<oneshot::Sender<bool>>> = Vec::new();
        loop {
            let first = match self.rx.recv_timeout(WRITER_TICK) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) if batch.is_empty() => {
                    self.chores();
                    continue;
                }
                // Stalled: retry the held records.
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut pending = first;
            let deadline = self.interval.map(|d| Instant::now() + d);
            let mut bytes = 0usize;
            let mut snapshot = None;
            let mut closing = None;
            while let Some(msg) = pending.take() {
                match msg {
                    WriterMsg::Record(payload, waiter) => {
                        bytes += payload.len();
                        batch.push(payload);
                        waiters.push(waiter);
                    }
                    WriterMsg::Snapshot { prepared, done } => {
                        // Everything queued before it goes to disk first.
                        snapshot = Some((prepared, done));
                        break;
                    }
                    WriterMsg::Close(done) => {
                        closing = Some(done);
                        break;
                    }
                }
                if batch.len() >= MAX_BATCH_RECORDS || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                pending = match deadline {
                    None => self.rx.try_recv().ok(),
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        self.rx.recv_timeout(left).ok()
                    }
                };
            }
            if !batch.is_empty() {
                self.write(&mut batch, &mut waiters);
            }
            if let Some((prepared, done)) = snapshot {
                let result = self.snapshot(prepared);
                let _ = done.send(result);
            }
            if let Some(done) = closing {
                // Records still held (a stalled log) were never acknowledged: their
                // requests get 503 when their waiters drop.
                drop(self);
                let _ = done.send(());
                return;
            }
            self.chores();
        }
    }

    /// Appends and syncs `batch`, telling each waiter whether its record is durable. When
    /// no new segment can be made right now, the records not written stay in `batch` (and
    /// their waiters in `waiters`) for the next attempt.
    fn write(
        &mut self,
        batch: &mut Vec<Vec<u8>>,
        waiters: &mut Vec<Option<oneshot::Sender<bool>>>,
    ) {
        let tell = |waiters: std::vec::Drain<'_, Option<oneshot::Sender<bool>>>, ok: bool| {
            for waiter in waiters.flatten() {
                let _ = waiter.send(ok);
            }
        };
        if self.inner.mark.borrow().failed {
            tell(waiters.drain(..), false);
            batch.clear();
            return;
        }
        let slices: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        match self.wal.append_batch(&slices) {
            Ok(range) => {
                // Cleared before anyone is told: a client answered now may send its next
                // change at once, and must not find the stall it just waited out.
                self.set_deferred(None);
                self.inner.stats.batch(batch.len(), started.elapsed());
                self.inner.mark.send_modify(|m| m.durable = *range.end());
                tell(waiters.drain(..), true);
                batch.clear();
            }
            Err(e @ (wal::Error::NoSpace | wal::Error::Deferred { .. })) => {
                // Nothing the log holds is at risk: keep what was not written and retry.
                let written = match &e {
                    wal::Error::Deferred { written, .. } => *written,
                    _ => 0,
                };
                if written > 0 {
                    let durable = self.wal.last_lsn();
                    self.inner.mark.send_modify(|m| m.durable = durable);
                    tell(waiters.drain(..written), true);
                    batch.drain(..written);
                }
                self.set_deferred(Some(e));
            }
            Err(e) => {
                // Never retried: after a failed fsync the page cache may have dropped the
                // data while a retry reports success (fsyncgate).
                tracing::error!(error = %e, records = batch.len(), "write-ahead log failed; refusing all changes until restart");
                self.inner.mark.send_modify(|m| m.failed = true);
                tell(waiters.drain(..), false);
                batch.clear();
            }
        }
    }

    /// Records why batches are held back (or that they no longer are) and publishes it.
    fn set_deferred(&mut self, cause: Option<wal::Error>) {
        if cause.is_none() && self.deferred.is_none() {
            return;
        }
        match (&self.deferred, &cause) {
            (None, Some(e)) => {
                tracing::warn!(error = %e, "write-ahead log cannot start a new segment; holding queued changes, refusing new ones and retrying")
            }
            (Some(_), None) => tracing::info!("write-ahead log writing again"),
            _ => {}
        }
        self.deferred = cause;
        self.publish_stall();
    }

    /// Publishes the first of `deferred` and `unreserved` as the error new mutations get.
    fn publish_stall(&self) {
        let reason = self.deferred.as_ref().or(self.unreserved.as_ref()).map(|e| {
            if e.is_no_space() {
                Error::NoSpace(format!("the write-ahead log has no space for a new segment: {e}"))
            } else {
                Error::Unavailable(format!(
                    "the write-ahead log cannot start a new segment right now ({e}); nothing was changed: retry later"
                ))
            }
        });
        let stalled = reason.is_some();
        *self.inner.stall_reason.lock() = reason;
        self.inner.stalled.store(stalled, Ordering::Release);
    }

    fn snapshot(&mut self, prepared: wal::PreparedSnapshot) -> Result<()> {
        self.snapshot_requested = None;
        if self.inner.mark.borrow().failed {
            return Err(Error::Unavailable("the write-ahead log failed".into()));
        }
        let started = Instant::now();
        let size = prepared.bytes();
        self.wal.install_snapshot(prepared).map_err(wal_error)?;
        self.last_snapshot_bytes = size;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "snapshot written; covered log segments removed"
        );
        Ok(())
    }

    fn chores(&mut self) {
        if self.inner.mark.borrow().failed {
            return;
        }
        // Also collects a spare made in the background (cheap when there is nothing to do).
        let (reserved, unreserved) = match self.wal.try_reserve() {
            Ok(ok) => (ok, None),
            // Not a full disk (no descriptor, no permission): a stall, not a 507.
            Err(e) => (true, Some(e)),
        };
        if unreserved.is_some() != self.unreserved.is_some() {
            match &unreserved {
                Some(e) => {
                    tracing::warn!(error = %e, "cannot prepare the next write-ahead log segment; refusing changes (503) until it can")
                }
                None => tracing::info!("next write-ahead log segment prepared; accepting changes"),
            }
            self.unreserved = unreserved;
            self.publish_stall();
        }
        let was = self.inner.space.swap(reserved, Ordering::AcqRel);
        if was && !reserved {
            tracing::warn!("disk full: refusing changes (507) until space is free");
        } else if !was && reserved {
            tracing::info!("disk space available again: accepting changes");
        }
        let waiting = self
            .snapshot_requested
            .is_some_and(|at| at.elapsed() < SNAPSHOT_RETRY);
        let due = self
            .snapshot_bytes
            .max(self.last_snapshot_bytes.saturating_mul(self.growth_percent) / 100);
        if !waiting && self.wal.bytes_since_snapshot() >= due && self.snap_tx.send(()).is_ok() {
            self.snapshot_requested = Some(Instant::now());
        }
    }
}

/// Prints every record of the log in `data_dir` human-readably (`flinger wal dump`).
pub fn dump(data_dir: &Path, out: &mut impl std::io::Write) -> Result<()> {
    let dir = wal_dir(data_dir);
    let mut write_err = None;
    let report = wal::scan(&dir, u32::MAX >> 1, |info, payload| {
        if write_err.is_some() {
            return;
        }
        let line = match decode(payload) {
            Ok(event) => format!(
                "{:>10} {}@{} {}",
                info.lsn,
                info.segment.display(),
                info.offset,
                describe(&event)
            ),
            Err(e) => format!(
                "{:>10} {}@{} UNDECODABLE ({e})",
                info.lsn,
                info.segment.display(),
                info.offset
            ),
        };
        if let Err(e) = writeln!(out, "{line}") {
            write_err = Some(e);
        }
    })
    .map_err(wal_error)?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    writeln!(out, "# {report:?}")?;
    Ok(())
}

fn describe(event: &Event) -> String {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match event {
        Event::JobSubmitted {
            id,
            queue,
            body,
            priority,
            ..
        } => {
            format!(
                "JobSubmitted id={id} queue={queue:?} priority={priority} body={}",
                text(body)
            )
        }
        Event::ResultMerged { id, fields, .. } => {
            format!("ResultMerged id={id} fields={}", text(fields))
        }
        Event::LogAppended {
            id,
            kind,
            phase,
            number,
            data,
            run,
            ..
        } => {
            format!(
                "LogAppended id={id} kind={kind:?} run={run} phase={phase} number={number} bytes={}",
                data.len()
            )
        }
        other => format!("{other:?}"),
    }
}
