//! The leader's lease: one row of `flinger_lease` (term, holder, the holder's advertised
//! URL, expiry by the database's clock), and the [`Tenure`] a leader holds while it is
//! the writer.
//!
//! A node takes the lease only when it has expired (or when it names the node itself, a
//! leader that stepped down taking it back), always with a new term, higher than every
//! term given out before, even after the row was deleted by hand (the sequence
//! `flinger_lease_terms` keeps the highest, see [`take`]); the leader renews it
//! every third of its length. Fencing does not rely on clocks: every append and snapshot
//! install locks the row `FOR SHARE` and compares the term in the same statement, and a
//! takeover's `UPDATE` of the row serialises against that lock, so once a successor's
//! term is committed no statement of an older term commits (see `Writer::write`). The
//! clocks only decide *when* a takeover may happen, and a leader's local view of its own
//! lease ends before the database's (it counts from when it *sent* the renewal), so two
//! nodes never both think they lead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::{connect, pg_error};
use crate::error::{Error, Result};
use crate::throttle::allow;

/// The lease as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The current term (0: nobody ever led).
    pub term: i64,
    /// Node id of the holder ("" before the first).
    pub holder: String,
    /// The holder's advertised URL.
    pub url: String,
    /// Whether the lease has expired by the database's clock.
    pub expired: bool,
}

/// Reads the lease row.
pub(super) async fn read(client: &Client) -> Result<LeaseView> {
    let row = client
        .query_opt(
            "SELECT term, holder, url, expires <= clock_timestamp() FROM flinger_lease WHERE id = 1",
            &[],
        )
        .await
        .map_err(|e| pg_error("cannot read the lease", e))?;
    let Some(row) = row else {
        // The standby reconnects, and connecting puts the row back (`super::SCHEMA`).
        return Err(Error::Unavailable(
            "PostgreSQL journal: the lease row is missing (deleted by hand?); it is put back, \
             with the highest term given out so far, on reconnecting"
                .into(),
        ));
    };
    Ok(LeaseView {
        term: row.get(0),
        holder: row.get(1),
        url: row.get(2),
        expired: row.get(3),
    })
}

/// Takes the lease for `holder` (advertising `url`) for `length` if it has expired or
/// already names `holder`; returns the new term, or `None` when another node holds it.
/// The new term is past both the row's and the highest ever given out
/// (`flinger_lease_terms`, see `super::SCHEMA`), which it raises in the same statement
/// (under the row's lock, so takes raise it in the order they commit).
pub(super) async fn take(
    client: &Client,
    holder: &str,
    url: &str,
    length: Duration,
) -> Result<Option<i64>> {
    let row = client
        .query_opt(
            "WITH taken AS (\
                 UPDATE flinger_lease SET term = greatest(term, \
                     (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM flinger_lease_terms)) + 1, \
                 holder = $1, url = $2, expires = clock_timestamp() + make_interval(secs => $3) \
                 WHERE id = 1 AND (expires <= clock_timestamp() OR holder = $1) RETURNING term) \
             SELECT term, setval('flinger_lease_terms', term) FROM taken",
            &[&holder, &url, &length.as_secs_f64()],
        )
        .await
        .map_err(|e| pg_error("cannot take the lease", e))?;
    Ok(row.map(|r| r.get(0)))
}

/// A leader's hold on the lease: its term, until when it may act as leader by its own
/// clock, and whether it was deposed (a newer term, or its journal failed).
pub struct Tenure {
    /// The term this node leads in.
    term: i64,
    /// Length of the lease.
    length: Duration,
    /// The node acts as leader until this instant unless renewed (local monotonic clock,
    /// counted from when the last successful renewal was sent).
    valid_until: Mutex<Instant>,
    /// Why the node stopped leading; `Some` is final.
    deposed: watch::Sender<Option<String>>,
    /// Set when the journal closes in an orderly way: the renewal task stops.
    closed: AtomicBool,
}

impl Tenure {
    /// A tenure of `term` whose lease was taken at `taken` (when the taking statement was
    /// sent).
    pub(super) fn new(term: i64, length: Duration, taken: Instant) -> Arc<Tenure> {
        Arc::new(Tenure {
            term,
            length,
            valid_until: Mutex::new(taken + length),
            deposed: watch::channel(None).0,
            closed: AtomicBool::new(false),
        })
    }

    /// The term this node leads in.
    pub fn term(&self) -> i64 {
        self.term
    }

    /// Whether this node may act as leader now: not deposed, and its lease confirmed
    /// within the last lease length by its own clock.
    pub fn valid(&self) -> bool {
        self.deposed.borrow().is_none() && Instant::now() < *self.valid_until.lock()
    }

    /// Ends the tenure for good (idempotent: the first reason stays).
    pub(super) fn depose(&self, why: impl Into<String>) {
        let why = why.into();
        self.deposed.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            tracing::warn!(term = self.term, reason = %why, "stepping down as leader");
            *d = Some(why);
            true
        });
    }

    /// Resolves with the reason once the tenure ended.
    pub async fn deposed(&self) -> String {
        let mut rx = self.deposed.subscribe();
        let why = rx.wait_for(Option::is_some).await;
        match why {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the journal stopped".into(),
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Renews `tenure`'s lease every third of its length on `client` (reconnecting to `url`
/// when that connection fails, or when a renewal on it got no answer: a connection to a
/// server that vanished without closing it would otherwise never answer again) until the
/// tenure ends or the journal closes. Each reconnect and each renewal waits at most a
/// third of the lease, so an attempt ends within two thirds of one and the next starts
/// on time. A renewal
/// that finds another term deposes the tenure; one that fails leaves the tenure valid
/// only until its local deadline (serving stops then, and resumes if a later renewal
/// still finds the term unchanged: nobody else can have written meanwhile).
pub(super) async fn renew(tenure: Arc<Tenure>, client: Client, url: String, holder: String) {
    let mut session = Some(client);
    let every = tenure.length / 3;
    let mut deposed = tenure.deposed.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = deposed.wait_for(Option::is_some) => return,
        }
        if tenure.closed.load(Ordering::Acquire) || tenure.deposed.borrow().is_some() {
            return;
        }
        let client = match &mut session {
            Some(c) if !c.is_closed() => c,
            _ => {
                // A third of a lease, as the renewal itself, not the URL's
                // `connect_timeout` (30 s unless set): a server that accepts and never
                // answers (gone behind a network that drops packets) would hold the loop
                // for many leases, and a later attempt that would get through (the network
                // back, the next host of the URL) would wait for it. A tenure that ends
                // meanwhile ends the attempt.
                let attempt = tokio::select! {
                    attempt = tokio::time::timeout(every, connect(&url, every)) => attempt,
                    _ = deposed.wait_for(Option::is_some) => return,
                };
                match attempt {
                    Ok(Ok(c)) => session.insert(c),
                    Ok(Err(e)) => {
                        if let Some(suppressed) = allow("cannot reconnect to renew the lease", 0) {
                            tracing::warn!(error = %e, suppressed, "cannot reconnect to renew the lease");
                        }
                        continue;
                    }
                    Err(_) => {
                        if let Some(suppressed) = allow("lease reconnect timed out", 0) {
                            let ms = every.as_millis() as u64;
                            tracing::warn!(ms, suppressed, "cannot reconnect to renew the lease: no answer within a third of the lease");
                        }
                        continue;
                    }
                }
            }
        };
        // The tenure may have ended while connecting: a closed journal's lease is not
        // renewed again (it was released, or is left to expire).
        if tenure.closed.load(Ordering::Acquire) || tenure.deposed.borrow().is_some() {
            return;
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            every,
            client.execute(
                "UPDATE flinger_lease SET expires = clock_timestamp() + make_interval(secs => $1) \
                 WHERE id = 1 AND term = $2 AND holder = $3",
                &[&tenure.length.as_secs_f64(), &tenure.term, &holder],
            ),
        )
        .await;
        match renewed {
            Ok(Ok(1)) => *tenure.valid_until.lock() = sent + tenure.length,
            Ok(Ok(_)) => tenure.depose(
                "the lease row no longer carries this term (another node took the lease, or the row was deleted)",
            ),
            // Every third of a lease for as long as the database is away: each kind of
            // line at most once per `throttle::EVERY`, with the count of those dropped.
            Ok(Err(e)) => {
                if let Some(suppressed) = allow("lease renewal failed", 0) {
                    let e = pg_error("cannot renew the lease", e);
                    tracing::warn!(error = %e, suppressed, "lease renewal failed");
                }
            }
            Err(_) => {
                // Its answer may never come (the server vanished without closing the
                // connection): the next renewal goes out on a new connection.
                session = None;
                if let Some(suppressed) = allow("lease renewal timed out", 0) {
                    let ms = every.as_millis() as u64;
                    tracing::warn!(ms, suppressed, "lease renewal timed out");
                }
            }
        }
    }
}
