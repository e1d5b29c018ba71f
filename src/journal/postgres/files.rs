//! The PostgreSQL journal's file store: every file the state refers to, in the database,
//! so any node serves them with nothing on its local disk.
//!
//! - `flinger_files (name, size)`: one row per file, made when its first byte is about to
//!   be written; `size` is set once an upload is finished (orphan files keep `NULL`: their
//!   recorded length is in the log).
//! - `flinger_file_chunks (file, pos, data)`: the bytes, one row per chunk of at most
//!   [`CHUNK`] bytes starting at byte `pos`, so a download fetches the row at the next
//!   position by primary key, one chunk at a time. Stored without compression
//!   (`STORAGE EXTERNAL`): artifacts are usually compressed already.
//! - `flinger_private (name, value)`: small private values (the token signing key).
//!
//! An upload inserts each chunk in its own short transaction as the body arrives (never
//! whole in memory, never a transaction open for the length of a slow upload) and its
//! rows are durable (committed under the server's `synchronous_commit`) before
//! [`NewFile::finish`] returns, so before the event that refers to the file is appended.
//! An orphan append replaces everything at or past its offset and inserts its bytes in
//! one transaction. Deletions (`ON DELETE CASCADE` to the chunks) come only after the
//! removing event is durable; start-up deletes what no event refers to.
//!
//! Connections are made like the writer's (TLS under `sslmode=require`, see `tls`).
//! Statements run on a pool of at most [`CONNECTIONS`] connections, apart from the
//! journal writer's own session: uploads and downloads take turns statement by statement,
//! so a slow client never holds a connection between its chunks. No wait for a connection
//! or for a statement's answer is longer than the store's patience, by the server's
//! `statement_timeout` and by flinger's own clock (a server that stops answering never
//! sends its error), and a connection whose statement failed or was given up is closed,
//! never reused: see [`on_connection`].

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::pg_error;
use crate::config::redact;
use crate::error::{Error, Result};
use crate::journal::files::{deletion_failed, Download, FileStore, NewFile};

/// The tables, created on first start.
const SCHEMA: &str = "
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS flinger_files (
    name text PRIMARY KEY,
    size bigint
);
CREATE TABLE IF NOT EXISTS flinger_file_chunks (
    file text NOT NULL REFERENCES flinger_files ON DELETE CASCADE,
    pos bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (file, pos)
);
ALTER TABLE flinger_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS flinger_private (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
";

/// Bytes per row of `flinger_file_chunks` (uploads; orphan appends are split likewise).
pub const CHUNK: usize = 1 << 20;
/// Connections the file store opens at most.
pub const CONNECTIONS: usize = 8;

/// The file store in the database at a connection string.
pub struct PgFiles {
    pool: Pool,
    /// The leader's lease term: orphan appends rewrite chunks of an existing file, so a
    /// deposed leader must not (`super::fence`).
    term: Option<i64>,
    /// The longest wait for a connection, and for one statement ([`on_connection`]).
    patience: Duration,
}

/// `work` on a connection from `pool`, unless getting one and running `work` take longer
/// than `patience` twice: the server's `statement_timeout` ends a statement that runs
/// too long, but a server that stops answering altogether (paused, or behind a network
/// that drops packets) never sends that error, and a request would wait until TCP gives
/// up.
///
/// A connection whose `work` failed or ran out of time is taken out of the pool and
/// closed, never handed out again: given up, its statement may still be running on the
/// server (a later statement on it would queue behind it and fail the same way, and an
/// answer still to come is not the later statement's), and after a failure its state is
/// unknown (a transaction not yet rolled back, a socket the pool's quick check finds
/// open). The pool opens a fresh one for the next statement.
async fn on_connection<T>(
    pool: &Pool,
    patience: Duration,
    what: &str,
    work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T>,
) -> Result<T> {
    let bound = patience * 2;
    let deadline = tokio::time::Instant::now() + bound;
    let given_up = || {
        Error::Unavailable(format!(
            "PostgreSQL file store: {what}: no answer within {} s",
            bound.as_secs_f64()
        ))
    };
    let mut object = match tokio::time::timeout_at(deadline, client(pool)).await {
        Ok(got) => got?,
        Err(_) => return Err(given_up()),
    };
    // `work` borrows the connection, so the connection outlives a `work` given up.
    let outcome = match tokio::time::timeout_at(deadline, work(&mut object)).await {
        Ok(done) => done,
        Err(_) => Err(given_up()),
    };
    if outcome.is_err() {
        drop(deadpool_postgres::Object::take(object));
    }
    outcome
}

fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| pg_error(what, e)
}

impl PgFiles {
    /// Connects to `url` and creates the tables if missing; `term` fences appends (see
    /// [`crate::journal::files::open`]). No request waits longer than `patience` for a
    /// connection, nor for one statement (a stalled database gives 503s, not requests
    /// held forever).
    pub async fn open(url: &str, term: Option<i64>, patience: Duration) -> Result<PgFiles> {
        let mut target = super::tls::target(url)?;
        let timeout = format!("-c statement_timeout={}", patience.as_millis());
        let options = match target.config.get_options() {
            Some(given) => format!("{given} {timeout}"),
            None => timeout,
        };
        target.config.options(&options);
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match target.tls {
            None => Manager::from_config(target.config, NoTls, recycling()),
            Some(tls) => Manager::from_config(target.config, tls, recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(CONNECTIONS)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(patience))
            .create_timeout(Some(patience))
            .build()
            .map_err(|e| Error::Internal(format!("PostgreSQL file store: {e}")))?;
        let files = PgFiles {
            pool,
            term,
            patience,
        };
        let mut client = files.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                pg_error(&format!("cannot connect to {}", redact(url)), e)
            }
            other => Error::Unavailable(format!("PostgreSQL file store: {other}")),
        })?;
        let fail = failed("cannot create the file store's tables");
        // Nodes starting together would race on `CREATE TABLE IF NOT EXISTS`. Bounded
        // here too, not only by the server's `statement_timeout`: a server that stopped
        // answering (paused, gone behind a network that drops packets) would hold a node
        // that just took the lease, instead of letting it step down and follow again.
        let created = tokio::time::timeout(patience * 2, async {
            let tx = client.transaction().await.map_err(&fail)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::SCHEMA_LOCK])
                .await
                .map_err(&fail)?;
            tx.batch_execute(SCHEMA).await.map_err(&fail)?;
            tx.commit().await.map_err(&fail)
        })
        .await;
        match created {
            Ok(done) => done?,
            Err(_) => {
                // The connection's answer may still come: not back into the pool.
                let _ = deadpool_postgres::Object::take(client);
                return Err(Error::Unavailable(format!(
                    "PostgreSQL file store: cannot create its tables: no answer within {} s",
                    (patience * 2).as_secs_f64()
                )));
            }
        }
        drop(client);
        Ok(files)
    }
}

/// A pooled connection (waits for one when all are busy).
async fn client(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error("file store", e),
        other => Error::Unavailable(format!("PostgreSQL file store: {other}")),
    })
}

#[async_trait]
impl FileStore for PgFiles {
    async fn create(&self, name: &str) -> Result<Box<dyn NewFile>> {
        let what = "cannot store a file";
        on_connection(&self.pool, self.patience, what, async |client| {
            client
                .execute("INSERT INTO flinger_files (name) VALUES ($1)", &[&name])
                .await
                .map_err(failed(what))
        })
        .await?;
        Ok(Box::new(PgNewFile {
            pool: self.pool.clone(),
            patience: self.patience,
            name: name.to_owned(),
            buf: Vec::new(),
            written: 0,
        }))
    }

    async fn open(&self, name: &str, size: u64) -> Result<Download> {
        let what = "cannot read a file";
        let found = on_connection(&self.pool, self.patience, what, async |client| {
            client
                .query_opt("SELECT 1 FROM flinger_files WHERE name = $1", &[&name])
                .await
                .map_err(failed(what))
        })
        .await?;
        if found.is_none() {
            return Err(crate::journal::files::gone());
        }
        let (pool, name, patience) = (self.pool.clone(), name.to_owned(), self.patience);
        let stream = futures_util::stream::try_unfold(0u64, move |pos| {
            let (pool, name) = (pool.clone(), name.clone());
            async move {
                if pos >= size {
                    return Ok(None);
                }
                let row = on_connection(&pool, patience, what, async |client| {
                    client
                        .query_opt(
                            "SELECT data FROM flinger_file_chunks WHERE file = $1 AND pos = $2",
                            &[&name, &(pos as i64)],
                        )
                        .await
                        .map_err(failed(what))
                })
                .await?;
                let Some(row) = row else {
                    return Err(Error::Internal(format!(
                        "stored file {name} ends at byte {pos} of {size} (deleted while read?)"
                    )));
                };
                let mut data: Vec<u8> = row.get(0);
                if data.is_empty() {
                    return Err(Error::Internal(format!(
                        "stored file {name} has an empty chunk at {pos}"
                    )));
                }
                data.truncate((size - pos).min(data.len() as u64) as usize);
                let next = pos + data.len() as u64;
                Ok(Some((Bytes::from(data), next)))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn append(&self, name: &str, offset: u64, new: bool, bytes: Vec<u8>) -> Result<()> {
        // Three statements and one per chunk (`on_connection` waits twice this at most).
        let patience = self.patience * (3 + bytes.len().div_ceil(CHUNK) as u32);
        let what = "cannot append to a file";
        on_connection(&self.pool, patience, what, async |client| {
            let fail = failed(what);
            let tx = client.transaction().await.map_err(&fail)?;
            if new {
                tx.execute(
                    "INSERT INTO flinger_files (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                    &[&name],
                )
                .await
                .map_err(&fail)?;
            }
            tx.execute(
                "DELETE FROM flinger_file_chunks WHERE file = $1 AND pos >= $2",
                &[&name, &(offset as i64)],
            )
            .await
            .map_err(&fail)?;
            let insert = tx
                .prepare("INSERT INTO flinger_file_chunks (file, pos, data) VALUES ($1, $2, $3)")
                .await
                .map_err(&fail)?;
            for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
                let pos = (offset + (i * CHUNK) as u64) as i64;
                tx.execute(&insert, &[&name, &pos, &chunk])
                    .await
                    .map_err(&fail)?;
            }
            if let Some(term) = self.term {
                super::fence(&tx, term).await?;
            }
            tx.commit().await.map_err(&fail)
        })
        .await
    }

    async fn read(&self, name: &str, from: u64, to: u64) -> Result<Vec<u8>> {
        let what = "cannot read a file";
        on_connection(&self.pool, self.patience, what, async |client| {
            // The chunks holding bytes of [from, to): the first may start before `from`.
            let rows = client
                .query(
                    "SELECT pos, data FROM flinger_file_chunks \
                     WHERE file = $1 AND pos < $3 AND pos + octet_length(data) > $2 ORDER BY pos",
                    &[&name, &(from as i64), &(to as i64)],
                )
                .await
                .map_err(failed(what))?;
            let mut bytes = Vec::with_capacity(to.saturating_sub(from) as usize);
            let mut at = from;
            for row in rows {
                let pos = row.get::<_, i64>(0) as u64;
                if pos > at {
                    return Err(Error::Internal(format!(
                        "stored file {name} has a gap at byte {at} (next chunk at {pos})"
                    )));
                }
                let data = row.get::<_, &[u8]>(1);
                let skip = ((at - pos) as usize).min(data.len());
                bytes.extend_from_slice(&data[skip..]);
                at = at.max(pos + data.len() as u64);
            }
            if at == from && to > from {
                // No chunk at all where bytes are recorded: the file is gone.
                return Err(crate::journal::files::gone());
            }
            if at < to {
                return Err(Error::Internal(format!(
                    "stored file {name} holds {at} bytes, {to} recorded"
                )));
            }
            bytes.truncate(to.saturating_sub(from) as usize);
            Ok(bytes)
        })
        .await
    }

    fn delete(&self, names: Vec<Box<str>>) {
        if names.is_empty() {
            return;
        }
        let (pool, patience) = (self.pool.clone(), self.patience);
        tokio::spawn(async move {
            let names: Vec<&str> = names.iter().map(|n| &**n).collect();
            let what = "cannot delete files";
            let result = on_connection(&pool, patience, what, async |client| {
                client
                    .execute("DELETE FROM flinger_files WHERE name = ANY($1)", &[&names])
                    .await
                    .map(drop)
                    .map_err(failed(what))
            })
            .await;
            if let Err(e) = result {
                deletion_failed(names[0], &e);
            }
        });
    }

    fn location(&self, name: &str) -> String {
        format!("PostgreSQL table flinger_files, name {name:?}")
    }

    async fn sweep(&self, referenced: &HashSet<&str>, keep: bool) -> Result<usize> {
        let what = "cannot sweep the stored files";
        on_connection(&self.pool, self.patience * 2, what, async |client| {
            let rows = client
                .query("SELECT name FROM flinger_files", &[])
                .await
                .map_err(failed("cannot list the stored files"))?;
            let names: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let present: HashSet<&str> = names.iter().map(String::as_str).collect();
            let mut missing: Vec<&str> = (referenced.iter().copied())
                .filter(|name| !present.contains(name))
                .collect();
            missing.sort_unstable();
            crate::journal::files::warn_missing(&missing, "the PostgreSQL table flinger_files");
            let gone: Vec<String> = (names.iter())
                .filter(|n| !referenced.contains(n.as_str()))
                .cloned()
                .collect();
            if keep && !gone.is_empty() {
                // The PostgreSQL journal never cuts its log, so this does not happen; if
                // it did, leaving the rows is what keeps them recoverable.
                tracing::warn!(count = gone.len(), files = %gone.join(", "), "kept unreferenced stored files in flinger_files");
                return Ok(0);
            }
            if !gone.is_empty() {
                client
                    .execute("DELETE FROM flinger_files WHERE name = ANY($1)", &[&gone])
                    .await
                    .map_err(failed("cannot delete unreferenced files"))?;
                for name in &gone {
                    tracing::info!(file = name, "removed unreferenced upload");
                }
            }
            Ok(gone.len())
        })
        .await
    }

    async fn private(&self, name: &str, fresh: Vec<u8>) -> Result<Vec<u8>> {
        let what = "cannot keep a private value";
        on_connection(&self.pool, self.patience * 2, what, async |client| {
            let fail = failed(what);
            // Whoever inserts first wins; everyone reads the winner.
            let made = client
                .execute(
                    "INSERT INTO flinger_private (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &fresh],
                )
                .await
                .map_err(&fail)?;
            if made == 1 {
                tracing::info!(name, "generated {name} (kept in the database)");
            }
            let row = client
                .query_one(
                    "SELECT value FROM flinger_private WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(&fail)?;
            Ok(row.get(0))
        })
        .await
    }

    fn private_place(&self, name: &str) -> crate::journal::files::PrivatePlace {
        crate::journal::files::PrivatePlace {
            what: format!("the row {name:?} of the database's table flinger_private"),
            remove: format!("DELETE FROM flinger_private WHERE name = '{name}'"),
        }
    }
}

/// An upload in progress: chunks are inserted as they fill.
struct PgNewFile {
    pool: Pool,
    /// As [`PgFiles::patience`].
    patience: Duration,
    name: String,
    /// Bytes not inserted yet (below [`CHUNK`]).
    buf: Vec<u8>,
    /// Bytes inserted so far (the next chunk's `pos`).
    written: u64,
}

impl PgNewFile {
    /// Inserts `buf[..n]` as the next chunk.
    async fn insert(&mut self, n: usize) -> Result<()> {
        let pos = self.written as i64;
        let what = "cannot store a file";
        on_connection(&self.pool, self.patience, what, async |client| {
            client
                .execute(
                    "INSERT INTO flinger_file_chunks (file, pos, data) VALUES ($1, $2, $3)",
                    &[&self.name, &pos, &&self.buf[..n]],
                )
                .await
                .map_err(failed(what))
        })
        .await?;
        self.buf.drain(..n);
        self.written += n as u64;
        Ok(())
    }
}

#[async_trait]
impl NewFile for PgNewFile {
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= CHUNK {
            self.insert(CHUNK).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let result = async {
            if !self.buf.is_empty() {
                self.insert(self.buf.len()).await?;
            }
            let what = "cannot store a file";
            on_connection(&self.pool, self.patience, what, async |client| {
                client
                    .execute(
                        "UPDATE flinger_files SET size = $2 WHERE name = $1",
                        &[&self.name, &(self.written as i64)],
                    )
                    .await
                    .map_err(failed(what))
            })
            .await
        }
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }

    async fn abandon(self: Box<Self>) {
        // A failure leaves the rows to start-up's sweep.
        let what = "cannot delete a file";
        let _ = on_connection(&self.pool, self.patience, what, async |client| {
            client
                .execute("DELETE FROM flinger_files WHERE name = $1", &[&self.name])
                .await
                .map_err(failed(what))
        })
        .await;
    }
}
