//! The PostgreSQL backend of the journal (`--journal postgres://…`): events in the table
//! `flinger_events` (one row per record, keyed by LSN, the payload exactly as the file log
//! would hold it), snapshots in `flinger_snapshots` + `flinger_snapshot_chunks`, and the
//! leader's lease in `flinger_lease` (and the highest term given out in the sequence
//! `flinger_lease_terms`).
//!
//! One writer thread appends in group-committed batches: every record queued while the
//! previous batch was committing goes into one `INSERT … SELECT unnest(…)` statement, one
//! transaction, and its requests are acknowledged only after the commit returns (durable
//! under the server's `synchronous_commit`: on the primary's disk, and on a synchronous
//! standby when one is configured).
//!
//! One flinger process writes a database at a time: the one holding the lease (`lease`).
//! Every append and snapshot install checks the writer's term in the same statement, so a
//! writer whose lease another node took commits nothing more. When an append fails or is
//! fenced, or the writer's connection drops, the journal is poisoned exactly like a failed
//! fsync (every pending and later change gets 503; whether the last batch committed is
//! unknown) and the tenure ends: the node steps down (`crate::ha`), and a node that takes
//! over recovers what the database holds. Nodes without the lease follow the table as warm
//! standbys (`standby`).
//!
//! Snapshots are uploaded on their own connection under a provisional row
//! (`installed = false`); the writer installs one, in LSN order after every record before
//! it committed, in one statement that also deletes the events it covers and the older
//! snapshots (compaction). Start-up loads the newest installed snapshot and streams the
//! events after it through the same fold as the file log ([`Replay`]).
//!
//! Uploaded files are kept in the database too, by `files` (their own tables and pool).

mod lease;
mod standby;

pub use lease::{LeaseView, Tenure};
pub use standby::{Promoted, Standby};

pub(super) mod files;
pub(super) mod tls;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls, Statement};

use super::{
    gather, Inner, Journal, Prepared, Recovery, SnapshotPace, SnapshotRequests, Snapshots,
    WriterMsg, SNAPSHOT_RETRY, WRITER_TICK,
};
use crate::config::{redact, Config, FsyncPolicy};
use crate::error::{Error, Result};
use crate::model::State;

/// The tables, created on first start. A snapshot's bytes are split into chunks so that
/// none comes near PostgreSQL's 1 GiB field limit. `flinger_private` is the file store's
/// table of private values (`files`, which creates it the same way): a standby keeps the
/// nodes' peer key there ([`PEER_KEY`]) before any leader opened the file store.
///
/// `flinger_lease_terms` remembers the highest term ever taken apart from the lease row
/// (`lease::take` raises it), so a row deleted by hand comes back here with that term, not
/// 0: fencing compares terms, and a term given out twice would let a deposed leader that
/// held it write again. A sequence, because `setval` is not undone by a rollback: the mark
/// can only run ahead of the terms committed. The last statement raises it to the row's
/// term in a database made before it existed, under the row's lock so that a concurrent
/// take cannot be overtaken by a stale value.
///
/// The statements run as one transaction (one simple query) under [`SCHEMA_LOCK`]: nodes
/// starting together on a new database would otherwise race on `CREATE TABLE IF NOT
/// EXISTS` (which checks, then inserts into the catalog) and all but one stop with
/// `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`.
const SCHEMA: &str = "
SET client_min_messages = warning;
SELECT pg_advisory_xact_lock(28829634735662451);
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
CREATE TABLE IF NOT EXISTS flinger_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    term bigint NOT NULL,
    holder text NOT NULL,
    url text NOT NULL,
    expires timestamptz NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS flinger_lease_terms;
INSERT INTO flinger_lease
    SELECT 1, CASE WHEN is_called THEN last_value ELSE 0 END, '', '', '-infinity'
    FROM flinger_lease_terms
    ON CONFLICT (id) DO NOTHING;
SELECT setval('flinger_lease_terms', l.term)
    FROM (SELECT term FROM flinger_lease WHERE id = 1 FOR UPDATE) l, flinger_lease_terms s
    WHERE l.term > CASE WHEN s.is_called THEN s.last_value ELSE 0 END;
CREATE TABLE IF NOT EXISTS flinger_private (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
";

/// The transaction-scoped advisory lock taken while creating tables (the journal's
/// [`SCHEMA`], the file store's), written out in `SCHEMA`'s text.
pub(super) const SCHEMA_LOCK: i64 = 0x0066_6c66_696c_6573;

/// The append: one statement (so one transaction that no pause of this process can hold
/// open) that locks the lease row, inserts the batch only if the row still carries this
/// writer's term, and wakes the standbys. A takeover's `UPDATE` of the row waits for it,
/// or it waits for the takeover and then sees the new term.
const APPEND: &str = "
WITH lease AS (SELECT 1 FROM flinger_lease WHERE id = 1 AND term = $3 FOR SHARE),
ins AS (
    INSERT INTO flinger_events (lsn, payload)
    SELECT * FROM unnest($1::int8[], $2::bytea[]) WHERE EXISTS (SELECT 1 FROM lease)
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), pg_notify('flinger_events', '')";

/// The snapshot install, fenced like [`APPEND`]: marks the provisional snapshot at `$1`
/// installed and deletes the older snapshots and the events it covers.
const INSTALL: &str = "
WITH lease AS (SELECT 1 FROM flinger_lease WHERE id = 1 AND term = $2 FOR SHARE),
inst AS (
    UPDATE flinger_snapshots SET installed = true
    WHERE lsn = $1 AND EXISTS (SELECT 1 FROM lease) RETURNING 1
),
old AS (DELETE FROM flinger_snapshots WHERE lsn < $1 AND EXISTS (SELECT 1 FROM inst)),
covered AS (DELETE FROM flinger_events WHERE lsn <= $1 AND EXISTS (SELECT 1 FROM inst))
SELECT count(*) FROM inst";

/// The row of `flinger_private` holding the key nodes vouch for a forwarded request's
/// client address with (`crate::ha`): every node reads it from the database it shares,
/// so a node proves itself a peer by knowing it.
pub(super) const PEER_KEY: &str = "peer-key";

/// How long a process that runs alone (`flinger client`) waits for the lease: a
/// predecessor killed a moment ago holds it until it expires.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// How long an idle writer lets its connection run per tick (see `Writer::run`).
const IDLE_DRIVE: Duration = Duration::from_millis(1);

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

/// How long establishing a connection (TCP, TLS, start-up, authentication) may take when
/// the URL sets no `connect_timeout`.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a connection with `config` and `tls`, bounded as a whole by the URL's
/// `connect_timeout` (else [`ESTABLISH_TIMEOUT`]), as libpq bounds it, and by `most`:
/// tokio-postgres applies `connect_timeout` to the TCP connect alone, so a peer that
/// accepts and never answers (not a PostgreSQL server, a hung one) would hold start-up
/// forever; and a `connect_timeout` longer than the caller's own wait for the database
/// (a lease renewal, a promoted node's writer) would hold the caller past the point where
/// waiting helps. `url` names the server in errors (password hidden).
async fn establish<T>(
    url: &str,
    config: &tokio_postgres::Config,
    tls: T,
    most: Duration,
) -> Result<(
    Client,
    tokio_postgres::Connection<tokio_postgres::Socket, T::Stream>,
)>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    let configured = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(ESTABLISH_TIMEOUT);
    let bound = configured.min(most);
    let why = if bound < configured {
        "the longest flinger waits for one answer of the database here".to_owned()
    } else {
        format!(
            "connect_timeout in the URL, else {} s",
            ESTABLISH_TIMEOUT.as_secs()
        )
    };
    match tokio::time::timeout(bound, config.connect(tls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(pg_error(&format!("cannot connect to {}", redact(url)), e)),
        Err(_) => Err(Error::Unavailable(format!(
            "PostgreSQL journal: cannot connect to {}: no PostgreSQL answer within {} s ({why})",
            redact(url),
            bound.as_secs_f64(),
        ))),
    }
}

/// Connects to `url` (over TLS under `sslmode=require`, see [`tls`]) within `most` (see
/// [`establish`]), driving the connection on the current runtime.
async fn connect(url: &str, most: Duration) -> Result<Client> {
    Ok(connect_driven(url, most).await?.0)
}

/// [`connect`], and the task that drives the connection. Dropping the client ends that
/// task only once it has said goodbye to the server, which never happens while the server
/// reads nothing (paused, or a full socket buffer in front of it): a caller that gives up
/// on such a server aborts the task, so the socket and what it buffered go with it.
async fn connect_driven(
    url: &str,
    most: Duration,
) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let target = tls::target(url)?;
    let ended = |e: tokio_postgres::Error| {
        tracing::warn!(error = %e, "PostgreSQL journal connection ended");
    };
    Ok(match target.tls {
        None => {
            let (client, connection) = establish(url, &target.config, NoTls, most).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await.map_err(ended);
            });
            (client, task)
        }
        Some(tls) => {
            let (client, connection) = establish(url, &target.config, tls, most).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await.map_err(ended);
            });
            (client, task)
        }
    })
}

/// `answer`, unless the database gave none within `bound`.
pub(super) async fn within<T>(
    bound: Duration,
    what: &str,
    answer: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(bound, answer).await {
        Ok(answered) => answered.map_err(|e| pg_error(what, e)),
        Err(_) => Err(Error::Unavailable(format!(
            "PostgreSQL journal: {what}: no answer within {} s",
            bound.as_secs_f64()
        ))),
    }
}

/// Connects to the database at `url`, creates the tables if missing, waits for the
/// lease, loads the newest snapshot and replays the events after it into a fresh
/// [`State`], and starts the writer thread: the journal of a process that runs alone
/// (`flinger client`). The server runs several nodes through [`Standby`] (`crate::ha`).
pub fn open(config: &Config, url: &str) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::Internal("the PostgreSQL journal is opened from within the runtime".into())
    })?;
    let (state, journal, snapshots, recovery, _tenure) =
        runtime.block_on(standby::open_as_leader(config, url, LEASE_WAIT))?;
    Ok((state, journal, snapshots, recovery))
}

/// Checked last in a transaction that writes for a leader (a snapshot upload, an orphan
/// append), just before its commit: the lease row still carries the writer's `$1` term,
/// locked until the commit so a takeover waits for it. Checked last so that a long upload
/// does not hold up the lease's own renewals.
pub(super) const FENCE: &str = "SELECT 1 FROM flinger_lease WHERE id = 1 AND term = $1 FOR SHARE";

/// Runs [`FENCE`] for `term` in `tx`: `Unavailable` when another node took the lease
/// (the transaction then rolls back when dropped).
pub(super) async fn fence(tx: &tokio_postgres::Transaction<'_>, term: i64) -> Result<()> {
    let held = tx
        .query_opt(FENCE, &[&term])
        .await
        .map_err(|e| pg_error("cannot check the lease", e))?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::Unavailable(format!(
            "PostgreSQL journal: lease term {term} was taken over by another node; nothing written"
        ))),
    }
}

/// Uploads the snapshot `bytes` at `lsn` as a provisional row on a connection of its
/// own (the writer keeps appending meanwhile), fenced by the lease's `term`: a deposed
/// leader's snapshot (which may hold records its successor never saw) cannot replace a
/// successor's provisional row at the same LSN. Durable when this returns; installed by
/// the writer later.
///
/// Bounded by progress, not as a whole (a large snapshot may take long): no statement,
/// each chunk's insert included, waits longer than [`statement_bound`] of `lease` for its
/// answer, nor a lease for a lock (set on the server too, which also ends the session when
/// this process pauses inside the transaction for as long). A database that stops
/// answering or a lock held elsewhere fails the upload (its connection is closed, and
/// with it the transaction, so nothing of it stays); the journal is untouched: its events
/// stay until a snapshot is installed, the writer asks again after `SNAPSHOT_RETRY`, and
/// a provisional row that did commit unseen is replaced or deleted by a later snapshot.
pub(super) async fn prepare(
    url: &str,
    term: i64,
    lease: Duration,
    lsn: u64,
    bytes: Vec<u8>,
) -> Result<Prepared> {
    /// Aborts the connection's task unless disarmed: also when the upload's future is
    /// dropped (the snapshot task stopped with the actors).
    struct Abort(Option<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            if let Some(task) = self.0.take() {
                task.abort();
            }
        }
    }
    let bound = statement_bound(lease);
    let what = "cannot write the snapshot";
    // Connecting too: the URL's `connect_timeout` may be longer.
    let (mut client, task) = connect_driven(url, bound)
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    let mut task = Abort(Some(task));
    // Named, so that an operator (and a test) finds the upload in `pg_stat_activity`.
    within(
        bound,
        what,
        client.batch_execute(&format!(
            "SET application_name = 'flinger snapshot upload'; \
             SET statement_timeout = {bound}; SET lock_timeout = {lease}; \
             SET idle_in_transaction_session_timeout = {bound}",
            bound = bound.as_millis(),
            lease = lease.as_millis()
        )),
    )
    .await?;
    let lsn_i = lsn as i64;
    let tx = within(bound, what, client.transaction()).await?;
    // A provisional one left by a crash is replaced; an installed one at the same LSN
    // (nothing happened since) is kept as it is.
    within(
        bound,
        what,
        tx.execute(
            "DELETE FROM flinger_snapshots WHERE lsn = $1 AND NOT installed",
            &[&lsn_i],
        ),
    )
    .await?;
    let inserted = within(
        bound,
        what,
        tx.execute(
            "INSERT INTO flinger_snapshots (lsn) VALUES ($1) ON CONFLICT (lsn) DO NOTHING",
            &[&lsn_i],
        ),
    )
    .await?;
    if inserted == 1 {
        let insert = within(
            bound,
            what,
            tx.prepare("INSERT INTO flinger_snapshot_chunks (lsn, seq, data) VALUES ($1, $2, $3)"),
        )
        .await?;
        for (seq, chunk) in bytes.chunks(SNAPSHOT_CHUNK).enumerate() {
            within(
                bound,
                what,
                tx.execute(&insert, &[&lsn_i, &(seq as i32), &chunk]),
            )
            .await?;
        }
    }
    match tokio::time::timeout(bound, fence(&tx, term)).await {
        Ok(fenced) => fenced?,
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "PostgreSQL journal: cannot check the lease: no answer within {} s",
                bound.as_secs_f64()
            )))
        }
    }
    within(bound, what, tx.commit()).await?;
    drop(client);
    // Committed: the connection task says goodbye to the server and ends by itself.
    task.0 = None;
    Ok(Prepared::Postgres {
        lsn,
        bytes: bytes.len() as u64,
    })
}

/// The one thread that appends to the database.
struct Writer {
    /// Drives `client`'s connection while the writer awaits it.
    runtime: tokio::runtime::Runtime,
    /// The writer's session.
    client: Client,
    /// The batch append statement ([`APPEND`]), prepared once.
    insert: Statement,
    /// The lease this writer appends under: its term fences every statement, and it ends
    /// when an append fails or is fenced.
    tenure: Arc<Tenure>,
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
    /// Longest wait for one statement ([`statement_bound`]).
    bound: Duration,
}

/// How long the writer waits for one statement before giving it up as failed (outcome
/// unknown: 503, the node steps down): four lease lengths, at least 10 s. A database that
/// stopped answering without closing the connection (paused, or gone behind a network
/// that drops packets) would otherwise hold every pending request, and a shutdown, until
/// TCP gives up, many minutes later.
pub fn statement_bound(lease: Duration) -> Duration {
    (lease * 4).max(Duration::from_secs(10))
}

impl Writer {
    /// Starts the writer of `tenure` on its own thread and runtime (the connection is
    /// driven only while the writer awaits the database, so no other thread ever waits on
    /// it), appending after `last_lsn`. `snapshot_bytes` and `bytes` (logged since that
    /// snapshot) pace the next snapshot.
    async fn start(
        config: &Config,
        url: &str,
        last_lsn: u64,
        snapshot_bytes: u64,
        bytes: u64,
        tenure: Arc<Tenure>,
    ) -> Result<(Journal, SnapshotRequests)> {
        let (inner, rx) = Inner::start(
            config,
            last_lsn,
            true,
            Snapshots::Postgres {
                url: url.to_owned(),
                term: tenure.term(),
                lease: config.lease,
            },
        );
        let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let url = url.to_owned();
        let pace = SnapshotPace::new(config, snapshot_bytes);
        let interval = match config.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval(d) => Some(d),
        };
        // A statement left waiting (a pause of this process inside a transaction, a lock
        // held elsewhere) must not outlive the lease: the server ends it.
        let session = format!(
            "SET idle_in_transaction_session_timeout = {ms}; SET lock_timeout = {ms}",
            ms = config.lease.as_millis()
        );
        let writer_inner = inner.clone();
        let bound = statement_bound(config.lease);
        std::thread::Builder::new()
            .name("pg-journal-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Internal(format!(
                            "cannot start the journal's runtime: {e}"
                        ))));
                        return;
                    }
                };
                // Bounded as a whole (connecting, TLS, the session's settings, preparing
                // the append) by the wait for one answer, whatever the URL's
                // `connect_timeout`: a promoted node whose database stops answering here
                // would otherwise wait (no renewal runs yet, the lease passes on)
                // instead of following again and retrying.
                let prepared = runtime.block_on(async {
                    let mut step = "connecting";
                    let setup = async {
                        // The URL's `connect_timeout`, when shorter, ends it first.
                        let client = connect(&url, Duration::MAX).await?;
                        step = "setting up the session";
                        client
                            .batch_execute(&session)
                            .await
                            .map_err(|e| pg_error("cannot set up the writer's session", e))?;
                        step = "preparing the append statement";
                        let insert = client
                            .prepare(APPEND)
                            .await
                            .map_err(|e| pg_error("cannot prepare the append statement", e))?;
                        Ok((client, insert))
                    };
                    match tokio::time::timeout(bound, setup).await {
                        Ok(done) => done,
                        Err(_) => Err(Error::Unavailable(format!(
                            "PostgreSQL journal: no PostgreSQL answer within {} s while {step} \
                             for the journal writer",
                            bound.as_secs_f64()
                        ))),
                    }
                });
                let (client, insert) = match prepared {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let writer = Writer {
                    runtime,
                    client,
                    insert,
                    tenure,
                    rx,
                    inner: writer_inner,
                    pace,
                    bytes_since_snapshot: bytes,
                    snapshot_requested: None,
                    snap_tx,
                    interval,
                    bound,
                };
                let _ = ready_tx.send(Ok(()));
                writer.run();
            })
            .map_err(|e| Error::Internal(format!("cannot start the journal writer: {e}")))?;
        ready
            .await
            .map_err(|_| Error::Internal("the journal writer did not start".into()))??;
        Ok((Journal { inner }, snap_rx))
    }

    fn run(mut self) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut waiters: Vec<Option<oneshot::Sender<bool>>> = Vec::new();
        loop {
            let pending = match self.rx.recv_timeout(WRITER_TICK) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The connection is driven only inside `block_on`: idle, it would never
                    // read what the server sent meanwhile (a restart's "terminating
                    // connection", an EOF), `chores` would never find it closed, and the
                    // first change after the database came back would be refused. Let it
                    // read now, while nothing is pending.
                    self.runtime
                        .block_on(async { tokio::time::sleep(IDLE_DRIVE).await });
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
                self.release();
                drop(self);
                let _ = done.send(());
                return;
            }
            self.chores();
        }
    }

    /// Runs `statement` on the writer's runtime for at most `bound`.
    fn run_bounded<T>(
        &self,
        what: &str,
        statement: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let bound = self.bound;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(bound, statement).await })
        {
            Ok(done) => done.map_err(|e| pg_error(what, e)),
            Err(_) => Err(Error::Unavailable(format!(
                "PostgreSQL journal: {what}: no answer within {} s",
                bound.as_secs_f64()
            ))),
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
        let inner = self.inner.clone();
        let tell = |waiters, durable| inner.teller.tell(waiters, durable);
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
        let term = self.tenure.term();
        let result = self
            .run_bounded(
                "append failed",
                self.client
                    .query_one(&self.insert, &[&lsns, &payloads, &term]),
            )
            .map(|row| row.get::<_, i64>(0));
        match result {
            Ok(0) => {
                // The row carries another term: a successor took over. Nothing of this
                // batch committed, and nothing of this writer ever will.
                tracing::error!(
                    term,
                    records = batch.len(),
                    "append fenced: another node took the lease"
                );
                self.poison("another node took the lease");
                tell(waiters.drain(..), false);
                batch.clear();
            }
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
                // after the commit, or it may commit after the wait was given up): never
                // retried, and no request is told it succeeded.
                tracing::error!(error = %e, records = batch.len(), "journal failed; refusing all changes as leader");
                self.poison("an append failed");
                tell(waiters.drain(..), false);
                batch.clear();
            }
        }
    }

    /// Fails the journal for good and ends the tenure (the node steps down).
    fn poison(&self, why: &str) {
        self.inner.mark.send_modify(|m| m.failed = true);
        self.tenure.depose(format!("journal: {why}"));
    }

    /// On an orderly close: lets the lease expire at once, so a standby takes over
    /// without waiting out its length.
    fn release(&mut self) {
        self.tenure.close();
        if self.failed() || self.client.is_closed() {
            return;
        }
        let term = self.tenure.term();
        let released = self.run_bounded(
            "cannot release the lease",
            self.client.execute(
                "UPDATE flinger_lease SET expires = '-infinity' WHERE id = 1 AND term = $1",
                &[&term],
            ),
        );
        if let Err(e) = released {
            tracing::warn!(error = %e, "lease left to expire");
        }
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
        let term = self.tenure.term();
        let installed: i64 = self
            .run_bounded(
                "cannot install the snapshot",
                self.client.query_one(INSTALL, &[&lsn, &term]),
            )?
            .get(0);
        if installed == 0 {
            return Err(Error::Unavailable(
                "PostgreSQL journal: snapshot not installed: another node took the lease".into(),
            ));
        }
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
            // Whether the last append committed is unknown, and the lease may pass on.
            tracing::error!(
                "journal connection to PostgreSQL lost; refusing all changes as leader"
            );
            self.poison("the connection to PostgreSQL was lost");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_created_under_the_schema_lock() {
        let first = SCHEMA.find("CREATE").unwrap();
        let lock = SCHEMA
            .find(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK});"))
            .expect("the lock, written out");
        assert!(lock < first, "taken before the first CREATE");
    }
}
