//! A node that does not hold the lease: it loads the newest snapshot and the events after
//! it, then follows `flinger_events` by LSN (woken by `NOTIFY flinger_events` from every
//! append, polled as a fallback) through the same fold as start-up ([`Replay`]), so its
//! state is warm when it takes over. When the leader compacts past what a standby has
//! read, the standby reloads from the newer snapshot.
//!
//! [`Standby::promote`] is the takeover: once the node holds the lease (a new term) it
//! reads the tail the old leader committed and starts the writer at the next LSN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt, TryStreamExt};
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::lease::{self, LeaseView, Tenure};
use super::{establish, within, Writer, SCHEMA};
use crate::config::{redact, Config};
use crate::error::{Error, Result};
use crate::journal::{Journal, Recovery, Replay, SnapshotRequests};
use crate::model::State;

/// Most events read in one query while following.
const FOLLOW_BATCH: i64 = 8192;

/// A warm standby: the state folded up to `last` and a connection that hears appends.
pub struct Standby {
    /// The database.
    url: String,
    /// Reads events and the lease; becomes the lease renewal's connection on promotion.
    client: Client,
    /// Woken by `NOTIFY flinger_events`.
    wake: Arc<Notify>,
    /// The state so far.
    replay: Replay,
    /// The last LSN folded (or the snapshot's, when no event follows it).
    last: u64,
    /// Payload bytes of the events after the snapshot (the leader's snapshot pace counts
    /// on from them).
    bytes: u64,
    /// Size of the loaded snapshot.
    snapshot_bytes: u64,
    /// LSN of the loaded snapshot (0: none).
    snapshot_lsn: u64,
    /// The nodes' shared key (`super::PEER_KEY`), made by the first node to connect.
    peer_key: Arc<[u8]>,
    /// Longest wait for one answer of the database (`super::statement_bound`): a
    /// connection to a server that vanished without closing it never answers, and a
    /// standby waiting on it would never take over.
    bound: Duration,
}

/// What a promoted standby hands the server: the same as start-up recovery, plus the
/// lease it holds.
pub type Promoted = (State, Journal, SnapshotRequests, Recovery, Arc<Tenure>);

impl Standby {
    /// Connects to `url`, creates the tables if missing, listens for appends and loads the
    /// newest snapshot and every event after it; no wait for one answer of the database,
    /// connecting included, is longer than `super::statement_bound(lease)`.
    pub async fn connect(url: &str, lease: Duration) -> Result<Standby> {
        let bound = super::statement_bound(lease);
        let target = super::tls::target(url)?;
        let wake = Arc::new(Notify::new());
        let client = match target.tls {
            None => {
                let (client, connection) = establish(url, &target.config, NoTls, bound).await?;
                tokio::spawn(wake_on_notifications(connection, wake.clone()));
                client
            }
            Some(tls) => {
                let (client, connection) = establish(url, &target.config, tls, bound).await?;
                tokio::spawn(wake_on_notifications(connection, wake.clone()));
                client
            }
        };
        within(
            bound,
            "cannot create the journal's tables",
            client.batch_execute(SCHEMA),
        )
        .await?;
        within(
            bound,
            "cannot listen for appends",
            client.batch_execute("LISTEN flinger_events"),
        )
        .await?;
        // Whoever inserts first wins; everyone reads the winner, in a statement of its own:
        // an insert that waited for another node's to commit sees nothing of it in the
        // same statement (its snapshot was taken before), so one statement doing both
        // found no row when nodes started together.
        let fresh = crate::access::token::random_text(64).into_bytes();
        within(
            bound,
            "cannot keep the nodes' peer key",
            client.execute(
                "INSERT INTO flinger_private (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
                &[&super::PEER_KEY, &fresh],
            ),
        )
        .await?;
        let peer_key: Vec<u8> = within(
            bound,
            "cannot read the nodes' peer key",
            client.query_one(
                "SELECT value FROM flinger_private WHERE name = $1",
                &[&super::PEER_KEY],
            ),
        )
        .await?
        .get(0);
        let mut standby = Standby {
            url: url.to_owned(),
            client,
            wake,
            replay: Replay::new(Instant::now()),
            last: 0,
            bytes: 0,
            snapshot_bytes: 0,
            snapshot_lsn: 0,
            peer_key: peer_key.into(),
            bound,
        };
        standby.load_snapshot().await?;
        standby.catch_up().await?;
        Ok(standby)
    }

    /// The last LSN folded into the state.
    pub fn last_lsn(&self) -> u64 {
        self.last
    }

    /// The key nodes of this database share (`super::PEER_KEY`).
    pub fn peer_key(&self) -> Arc<[u8]> {
        self.peer_key.clone()
    }

    /// Replaces the state by the newest installed snapshot, if it is newer than what was
    /// folded. Returns whether it did.
    async fn load_snapshot(&mut self) -> Result<bool> {
        let newest = within(
            self.bound,
            "cannot read the snapshot list",
            self.client.query_opt(
                "SELECT lsn FROM flinger_snapshots WHERE installed ORDER BY lsn DESC LIMIT 1",
                &[],
            ),
        )
        .await?;
        let Some(lsn) = newest.map(|r| r.get::<_, i64>(0)) else {
            return Ok(false);
        };
        if lsn as u64 <= self.last {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        let chunks = within(
            self.bound,
            "cannot read the snapshot",
            self.client.query_raw(
                "SELECT data FROM flinger_snapshot_chunks WHERE lsn = $1 ORDER BY seq",
                [&lsn as &(dyn ToSql + Sync)],
            ),
        )
        .await?;
        pin_mut!(chunks);
        while let Some(row) =
            within(self.bound, "cannot read the snapshot", chunks.try_next()).await?
        {
            bytes.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        let mut replay = Replay::new(Instant::now());
        replay.snapshot(lsn as u64, &bytes)?;
        self.replay = replay;
        self.snapshot_bytes = bytes.len() as u64;
        self.snapshot_lsn = lsn as u64;
        self.last = lsn as u64;
        self.bytes = 0;
        Ok(true)
    }

    /// Folds every event committed after `last`. When the leader compacted events this
    /// node had not read yet, reloads from the newer snapshot first.
    pub async fn catch_up(&mut self) -> Result<()> {
        loop {
            let (read, gap) = self.fold_next_batch().await?;
            let from = self.last;
            if let Some(lsn) = gap {
                // Compacted past us: a newer snapshot covers the gap.
                if read == 0 && self.load_snapshot().await? {
                    self.log_reload(from);
                    continue;
                }
                return Err(Error::Internal(format!(
                    "PostgreSQL journal: event {lsn} follows {}: events {}..{lsn} are missing",
                    self.last,
                    self.last + 1
                )));
            }
            if read == 0 {
                // Nothing after `last`: still, a snapshot past it means events were
                // compacted before this node read them.
                if self.load_snapshot().await? {
                    self.log_reload(from);
                    continue;
                }
                return Ok(());
            }
            if read < FOLLOW_BATCH {
                return Ok(());
            }
        }
    }

    fn log_reload(&self, from: u64) {
        tracing::info!(
            from,
            snapshot_lsn = self.snapshot_lsn,
            "standby: the leader compacted events not yet read; reloaded from its snapshot"
        );
    }

    /// Folds up to [`FOLLOW_BATCH`] events after `last`: how many, and the LSN that does
    /// not follow `last` when the batch stopped at a gap. The rows stream is dropped
    /// before this returns: the connection delivers one query's answers in order, so a
    /// second query sent while rows of the first are unread would wait for ever.
    async fn fold_next_batch(&mut self) -> Result<(i64, Option<u64>)> {
        let after = self.last as i64;
        let events = within(
            self.bound,
            "cannot read the events",
            self.client.query_raw(
                "SELECT lsn, payload FROM flinger_events WHERE lsn > $1 ORDER BY lsn LIMIT $2",
                [
                    &after as &(dyn ToSql + Sync),
                    &FOLLOW_BATCH as &(dyn ToSql + Sync),
                ],
            ),
        )
        .await?;
        pin_mut!(events);
        let mut read = 0i64;
        let bound = self.bound;
        while let Some(row) = within(bound, "cannot read the events", events.try_next()).await? {
            let lsn = row.get::<_, i64>(0) as u64;
            if lsn != self.last + 1 {
                return Ok((read, Some(lsn)));
            }
            let payload: &[u8] = row.get(1);
            self.replay
                .record(lsn, payload)
                .map_err(|e| Error::Internal(format!("PostgreSQL journal: event {lsn}: {e}")))?;
            self.last = lsn;
            self.bytes += payload.len() as u64;
            read += 1;
        }
        Ok((read, None))
    }

    /// Reads the lease.
    pub async fn lease(&self) -> Result<LeaseView> {
        match tokio::time::timeout(self.bound, lease::read(&self.client)).await {
            Ok(read) => read,
            Err(_) => Err(Error::Unavailable(format!(
                "PostgreSQL journal: cannot read the lease: no answer within {} s",
                self.bound.as_secs_f64()
            ))),
        }
    }

    /// Waits for an append notification or `most`, whichever comes first; errs when the
    /// connection is gone.
    pub async fn wait(&self, most: Duration) -> Result<()> {
        let _ = tokio::time::timeout(most, self.wake.notified()).await;
        if self.client.is_closed() {
            return Err(Error::Unavailable(
                "PostgreSQL journal: the standby's connection closed".into(),
            ));
        }
        Ok(())
    }

    /// Takes the lease if it expired (or names `holder`), reads the tail the previous
    /// leader committed and starts the writer after it; `None` when another node holds
    /// the lease. The node must start serving from the returned state (the same path as
    /// start-up) and stop when the tenure ends.
    pub async fn promote(
        mut self,
        config: &Config,
        holder: &str,
        advertised: &str,
    ) -> Result<std::result::Result<Promoted, Standby>> {
        let sent = Instant::now();
        // Bounded: a database that cannot commit (a primary waiting for a synchronous
        // standby it lost) must not hold the node here; it retries on a new connection.
        let taken = tokio::time::timeout(
            config.lease,
            lease::take(&self.client, holder, advertised, config.lease),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "PostgreSQL journal: taking the lease took longer than {:?}",
                config.lease
            ))
        })??;
        let Some(term) = taken else {
            return Ok(Err(self));
        };
        let tenure = Tenure::new(term, config.lease, sent);
        // Every append of an older term committed before our UPDATE did (they lock the
        // row it changed): what is in the table now is the whole log.
        if let Err(e) = self.catch_up().await {
            tenure.depose("cannot read the tail of the log");
            return Err(e);
        }
        let journal = Writer::start(
            config,
            &self.url,
            self.last,
            self.snapshot_bytes,
            self.bytes,
            tenure.clone(),
        )
        .await;
        let (journal, snapshots) = match journal {
            Ok(started) => started,
            Err(e) => {
                tenure.depose("cannot start the journal writer");
                return Err(Error::Unavailable(format!(
                    "cannot start the journal writer after taking the lease (term {term}): {e}"
                )));
            }
        };
        tokio::spawn(lease::renew(
            tenure.clone(),
            self.client,
            self.url,
            holder.to_owned(),
        ));
        let (state, mut recovery) = self.replay.finish();
        if self.snapshot_lsn != 0 {
            recovery.snapshot_lsn = Some(self.snapshot_lsn);
        }
        tracing::info!(term, lsn = self.last, "took the lease: leading");
        Ok(Ok((state, journal, snapshots, recovery, tenure)))
    }
}

/// Connects to `url`, creates the tables, waits up to `wait` for the lease, and becomes
/// the writer: the single-process path (`flinger client`, and a server's own start when
/// it is the only node).
pub(super) async fn open_as_leader(config: &Config, url: &str, wait: Duration) -> Result<Promoted> {
    let asked = Instant::now();
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
    let mut standby = Standby::connect(url, config.lease).await?;
    loop {
        standby = match standby.promote(config, &holder, "").await? {
            Ok(promoted) => return Ok(promoted),
            Err(standby) => standby,
        };
        if asked.elapsed() >= wait {
            return Err(Error::Unavailable(format!(
                "PostgreSQL journal {}: another flinger process is writing this database (waited {} s for its lease to expire)",
                redact(url),
                wait.as_secs()
            )));
        }
        standby.wait(Duration::from_millis(100)).await?;
        standby.catch_up().await?;
    }
}

/// Drives a standby's connection, waking `wake` on every `NOTIFY` (an append) and once
/// more when the connection ends, so whoever waits finds it closed.
async fn wake_on_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wake: Arc<Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    pin_mut!(messages);
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL standby connection ended");
                break;
            }
        }
    }
    wake.notify_one();
}
