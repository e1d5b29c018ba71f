//! The PostgreSQL backend of the journal (`--journal postgres://…`): events in the table
//! `flinger_events` (one row per record, keyed by LSN, the payload exactly as the file log
//! would hold it) and snapshots in `flinger_snapshots` + `flinger_snapshot_chunks`.
//!
//! One writer thread appends in group-committed batches: every record queued while the
//! previous batch was committing goes into one `INSERT … SELECT unnest(…)` statement, one
//! transaction, and its requests are acknowledged only after the commit returns (durable
//! under the server's `synchronous_commit`: on the primary's disk, and on a synchronous
//! standby when one is configured).
//!
//! One flinger process writes a database at a time: the writer's session holds an
//! advisory lock for as long as it lives, the analogue of the file log's directory lock,
//! and a second process refuses to start. When the writer's connection fails, the lock
//! goes with it, so the journal is poisoned exactly like a failed fsync: every pending
//! and later change gets 503 (whether the last batch committed is unknown) until the
//! operator restarts, and start-up recovers what the database holds.
//!
//! Snapshots are uploaded on their own connection under a provisional row
//! (`installed = false`); the writer installs one, in LSN order after every record before
//! it committed, in one transaction that also deletes the events it covers and the older
//! snapshots (compaction). Start-up loads the newest installed snapshot and streams the
//! events after it through the same fold as the file log ([`Replay`]).
//!
//! Not here (yet): uploaded files stay in the data directory; leases, standbys and
//! failover between several flinger processes.

pub(super) mod files;
pub(super) mod tls;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::{
    gather, Inner, Journal, Prepared, Recovery, Replay, SnapshotPace, SnapshotRequests, Snapshots,
    WriterMsg, SNAPSHOT_RETRY, WRITER_TICK,
};
use crate::config::{redact, Config, FsyncPolicy};
use crate::error::{Error, Result};
use crate::model::State;

/// The tables, created on first start. A snapshot's bytes are split into chunks so that
/// none comes near PostgreSQL's 1 GiB field limit.
const SCHEMA: &str = "
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS flinger_events (
    lsn bigint PRIMARY KEY,
    payload bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS flinger_snapshots (
    lsn bigint PRIMARY KEY,
    installed boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS flinger_snapshot_chunks (
    lsn bigint NOT NULL REFERENCES flinger_snapshots ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (lsn, seq)
);
";

/// The advisory lock key the writer's session holds ("flinger" in ASCII).
const LOCK_KEY: i64 = 0x0066_6c69_6e67_6572;

/// How long start-up waits for the writer's lock: a predecessor killed a moment ago holds
/// it until the database notices its session is gone.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Snapshot bytes per row of `flinger_snapshot_chunks`.
const SNAPSHOT_CHUNK: usize = 16 << 20;

fn pg_error(what: &str, e: tokio_postgres::Error) -> Error {
    // `Display` of a server error is only "db error"; the detail is in its source.
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            // The cause (a refused certificate, a reset connection) is in the source chain.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    };
    Error::Unavailable(format!("PostgreSQL journal: {what}: {detail}"))
}

/// Connects to `url` (over TLS under `sslmode=require`, see [`tls`]), driving the
/// connection on the current runtime.
async fn connect(url: &str) -> Result<Client> {
    let target = tls::target(url)?;
    let failed = |e| pg_error(&format!("cannot connect to {}", redact(url)), e);
    let ended = |e: tokio_postgres::Error| {
        tracing::warn!(error = %e, "PostgreSQL journal connection ended");
    };
    let client = match target.tls {
        None => {
            let (client, connection) = target.config.connect(NoTls).await.map_err(failed)?;
            tokio::spawn(async move { connection.await.map_err(ended) });
            client
        }
        Some(tls) => {
            let (client, connection) = target.config.connect(tls).await.map_err(failed)?;
            tokio::spawn(async move { connection.await.map_err(ended) });
            client
        }
    };
    Ok(client)
}

/// What start-up found in the database.
struct Recovered {
    client: Client,
    /// LSN of the last event (or of the snapshot, if no event follows it).
    last_lsn: u64,
    /// Payload bytes of the events after the snapshot (the snapshot trigger counts on).
    bytes: u64,
    /// Size of the loaded snapshot (0 without one), for [`SnapshotPace`].
    snapshot_bytes: u64,
}

/// Connects to the database at `url`, takes the writer's lock, creates the tables if
/// missing, loads the newest snapshot, replays the events after it into a fresh
/// [`State`], and starts the writer thread.
pub fn open(config: &Config, url: &str) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    let started = Instant::now();
    // The writer's own runtime: the connection is driven only while the writer awaits
    // the database, so no other thread ever waits on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the journal's runtime: {e}")))?;
    let mut replay = Replay::new(started);
    let recovered = runtime.block_on(recover(url, &mut replay))?;
    let insert = runtime
        .block_on(recovered.client.prepare(
            "INSERT INTO flinger_events (lsn, payload) SELECT * FROM unnest($1::int8[], $2::bytea[])",
        ))
        .map_err(|e| pg_error("cannot prepare the append statement", e))?;
    let (inner, rx) = Inner::start(
        config,
        recovered.last_lsn,
        true,
        Snapshots::Postgres(url.to_owned()),
    );
    let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer {
        runtime,
        client: recovered.client,
        insert,
        rx,
        inner: inner.clone(),
        pace: SnapshotPace::new(config, recovered.snapshot_bytes),
        bytes_since_snapshot: recovered.bytes,
        snapshot_requested: None,
        snap_tx,
        interval: match config.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval(d) => Some(d),
        },
    };
    std::thread::Builder::new()
        .name("pg-journal-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| Error::Internal(format!("cannot start the journal writer: {e}")))?;
    let (state, recovery) = replay.finish();
    Ok((state, Journal { inner }, snap_rx, recovery))
}

async fn recover(url: &str, replay: &mut Replay) -> Result<Recovered> {
    let client = connect(url).await?;
    let asked = Instant::now();
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|e| pg_error("cannot take the writer's lock", e))?
            .get(0);
        if locked {
            break;
        }
        if asked.elapsed() >= LOCK_WAIT {
            return Err(Error::Unavailable(format!(
                "PostgreSQL journal {}: another flinger process is writing this database (waited {} s for it to go)",
                redact(url),
                LOCK_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(|e| pg_error("cannot create the journal's tables", e))?;
    let snapshot = client
        .query_opt(
            "SELECT lsn FROM flinger_snapshots WHERE installed ORDER BY lsn DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| pg_error("cannot read the snapshot list", e))?;
    let mut after: i64 = 0;
    let mut snapshot_bytes = 0;
    if let Some(row) = snapshot {
        after = row.get(0);
        let mut bytes = Vec::new();
        let chunks = client
            .query_raw(
                "SELECT data FROM flinger_snapshot_chunks WHERE lsn = $1 ORDER BY seq",
                [&after as &(dyn ToSql + Sync)],
            )
            .await
            .map_err(|e| pg_error("cannot read the snapshot", e))?;
        pin_mut!(chunks);
        while let Some(row) = chunks
            .try_next()
            .await
            .map_err(|e| pg_error("cannot read the snapshot", e))?
        {
            bytes.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        snapshot_bytes = bytes.len() as u64;
        replay.snapshot(after as u64, &bytes)?;
    }
    let events = client
        .query_raw(
            "SELECT lsn, payload FROM flinger_events WHERE lsn > $1 ORDER BY lsn",
            [&after as &(dyn ToSql + Sync)],
        )
        .await
        .map_err(|e| pg_error("cannot read the events", e))?;
    pin_mut!(events);
    let mut last = after as u64;
    let mut bytes = 0u64;
    while let Some(row) = events
        .try_next()
        .await
        .map_err(|e| pg_error("cannot read the events", e))?
    {
        let lsn = row.get::<_, i64>(0) as u64;
        let payload: &[u8] = row.get(1);
        // Batches commit whole and in order, and compaction only removes what a snapshot
        // covers: a hole means the table was edited by hand.
        if lsn != last + 1 {
            return Err(Error::Internal(format!(
                "PostgreSQL journal: event {lsn} follows {last}: events {}..{lsn} are missing",
                last + 1
            )));
        }
        replay
            .record(lsn, payload)
            .map_err(|e| Error::Internal(format!("PostgreSQL journal: event {lsn}: {e}")))?;
        last = lsn;
        bytes += payload.len() as u64;
    }
    Ok(Recovered {
        client,
        last_lsn: last,
        bytes,
        snapshot_bytes,
    })
}

/// Uploads the snapshot `bytes` at `lsn` as a provisional row on a connection of its
/// own (the writer keeps appending meanwhile). Durable when this returns; installed by
/// the writer later.
pub(super) async fn prepare(url: &str, lsn: u64, bytes: Vec<u8>) -> Result<Prepared> {
    let mut client = connect(url).await?;
    let lsn_i = lsn as i64;
    let failed = |e| pg_error("cannot write the snapshot", e);
    let tx = client.transaction().await.map_err(failed)?;
    // A provisional one left by a crash is replaced; an installed one at the same LSN
    // (nothing happened since) is kept as it is.
    tx.execute(
        "DELETE FROM flinger_snapshots WHERE lsn = $1 AND NOT installed",
        &[&lsn_i],
    )
    .await
    .map_err(failed)?;
    let inserted = tx
        .execute(
            "INSERT INTO flinger_snapshots (lsn) VALUES ($1) ON CONFLICT (lsn) DO NOTHING",
            &[&lsn_i],
        )
        .await
        .map_err(failed)?;
    if inserted == 1 {
        let insert = tx
            .prepare("INSERT INTO flinger_snapshot_chunks (lsn, seq, data) VALUES ($1, $2, $3)")
            .await
            .map_err(failed)?;
        for (seq, chunk) in bytes.chunks(SNAPSHOT_CHUNK).enumerate() {
            tx.execute(&insert, &[&lsn_i, &(seq as i32), &chunk])
                .await
                .map_err(failed)?;
        }
    }
    tx.commit().await.map_err(failed)?;
    Ok(Prepared::Postgres {
        lsn,
        bytes: bytes.len() as u64,
    })
}

/// The one thread that appends to the database.
struct Writer {
    /// Drives `client`'s connection while the writer awaits it.
    runtime: tokio::runtime::Runtime,
    /// The session holding the writer's lock.
    client: Client,
    /// The batch append statement, prepared once.
    insert: Statement,
    /// Records and snapshot requests, in LSN order.
    rx: mpsc::Receiver<WriterMsg>,
    /// Shared with the journal handles: durability mark.
    inner: std::sync::Arc<Inner>,
    /// When to ask for the next snapshot (counting payload bytes appended since the last).
    pace: SnapshotPace,
    /// Payload bytes appended since the last snapshot.
    bytes_since_snapshot: u64,
    /// When a snapshot was last requested and not yet installed.
    snapshot_requested: Option<Instant>,
    /// Where snapshot requests go (the server's snapshot task).
    snap_tx: tokio::sync::mpsc::UnboundedSender<()>,
    /// `Some` under `interval` fsync: gather records this long before writing.
    interval: Option<Duration>,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut waiters: Vec<Option<oneshot::Sender<bool>>> = Vec::new();
        loop {
            let pending = match self.rx.recv_timeout(WRITER_TICK) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.chores();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let end = gather(pending, &self.rx, self.interval, &mut batch, &mut waiters);
            if !batch.is_empty() {
                self.write(&mut batch, &mut waiters);
            }
            if let Some((prepared, done)) = end.snapshot {
                let result = self.snapshot(prepared);
                let _ = done.send(result);
            }
            if let Some(done) = end.closing {
                // Dropping the client ends the session and releases the writer's lock.
                drop(self);
                let _ = done.send(());
                return;
            }
            self.chores();
        }
    }

    fn failed(&self) -> bool {
        self.inner.mark.borrow().failed
    }

    /// Appends `batch` in one statement and tells each waiter whether it committed.
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
        if self.failed() {
            tell(waiters.drain(..), false);
            batch.clear();
            return;
        }
        let first = self.inner.mark.borrow().durable + 1;
        let lsns: Vec<i64> = (0..batch.len())
            .map(|i| (first + i as u64) as i64)
            .collect();
        let payloads: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        let result = self
            .runtime
            .block_on(self.client.execute(&self.insert, &[&lsns, &payloads]));
        match result {
            Ok(_) => {
                self.inner.stats.batch(batch.len(), started.elapsed());
                self.bytes_since_snapshot += payloads.iter().map(|p| p.len() as u64).sum::<u64>();
                let last = first + batch.len() as u64 - 1;
                self.inner.mark.send_modify(|m| m.durable = last);
                tell(waiters.drain(..), true);
                batch.clear();
            }
            Err(e) => {
                // Whether the statement committed is unknown (the connection may have died
                // after the commit): never retried, and no request is told it succeeded.
                let e = pg_error("append failed", e);
                tracing::error!(error = %e, records = batch.len(), "journal failed; refusing all changes until restart");
                self.poison();
                tell(waiters.drain(..), false);
                batch.clear();
            }
        }
    }

    fn poison(&self) {
        self.inner.mark.send_modify(|m| m.failed = true);
    }

    /// Installs a provisional snapshot and deletes what it covers, in one transaction.
    fn snapshot(&mut self, prepared: Prepared) -> Result<()> {
        self.snapshot_requested = None;
        let Prepared::Postgres { lsn, bytes: size } = prepared else {
            return Err(Error::Internal(
                "a snapshot file reached the PostgreSQL journal".into(),
            ));
        };
        if self.failed() {
            return Err(Error::Unavailable("the journal failed".into()));
        }
        let started = Instant::now();
        let lsn = lsn as i64;
        let client = &mut self.client;
        self.runtime
            .block_on(async {
                let tx = client.transaction().await?;
                tx.execute(
                    "UPDATE flinger_snapshots SET installed = true WHERE lsn = $1",
                    &[&lsn],
                )
                .await?;
                tx.execute("DELETE FROM flinger_snapshots WHERE lsn < $1", &[&lsn])
                    .await?;
                tx.execute("DELETE FROM flinger_events WHERE lsn <= $1", &[&lsn])
                    .await?;
                tx.commit().await
            })
            .map_err(|e| pg_error("cannot install the snapshot", e))?;
        self.bytes_since_snapshot = 0;
        self.pace.last_snapshot_bytes = size;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            lsn,
            "snapshot written; covered events deleted"
        );
        Ok(())
    }

    fn chores(&mut self) {
        if self.failed() {
            return;
        }
        if self.client.is_closed() {
            // The lock went with the session: another process may be writing now.
            tracing::error!(
                "journal connection to PostgreSQL lost; refusing all changes until restart"
            );
            self.poison();
            return;
        }
        let waiting = self
            .snapshot_requested
            .is_some_and(|at| at.elapsed() < SNAPSHOT_RETRY);
        if !waiting && self.pace.due(self.bytes_since_snapshot) && self.snap_tx.send(()).is_ok() {
            self.snapshot_requested = Some(Instant::now());
        }
    }
}
