//! The file backend of the journal: the embedded write-ahead log (the `wal` crate) in
//! `DATA_DIR/wal`, its group-commit writer thread, snapshot files and `flinger wal dump`.
//!
//! Everything backend-neutral (tickets, the durability mark, the snapshot layout, the
//! fold of replayed records) is in the parent module; this file owns only what touches
//! the log's files: segments, space reservation, torn tails, snapshot installation.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    decode, gather, Inner, Journal, Prepared, Recovery, Replay, SnapshotPace, SnapshotRequests,
    Snapshots, WriterMsg, SNAPSHOT_RETRY, WRITER_TICK,
};
use crate::config::{Config, FsyncPolicy};
use crate::error::{Error, Result};
use crate::model::{Event, State};

fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// The largest record the log accepts and, on replay, trusts a length up to: twice the
/// largest body any configuration allows plus room for the rest of the event. It must not
/// follow the current limits: a log written while they were larger holds larger records,
/// which replay would take for a torn tail (cutting every record from it on) or for
/// corruption (refusing to start) once an operator lowered a limit. Requests are bounded
/// by the current limits before anything is logged.
const MAX_RECORD: u32 = (crate::config::MAX_BODY_LIMIT as u32) * 2 + (1 << 20);

fn wal_options(config: &Config) -> wal::Options {
    wal::Options {
        segment_size: config.segment_bytes,
        max_record: MAX_RECORD,
        recovery: if config.wal_truncate_corruption {
            wal::Recovery::TruncateCorruption
        } else {
            wal::Recovery::Strict
        },
        // A slow preallocation (no fallocate: glibc writes the segment) must not hold up the
        // acknowledgements of the batch that rotated.
        background_spare: true,
        zero_spare: true,
        // Unlinking the segments a snapshot covers (tens of ms each on a disk mounted with
        // `discard`) must not hold up the batch behind the snapshot's installation.
        background_retire: true,
        ..wal::Options::default()
    }
}

pub(super) fn wal_error(e: wal::Error) -> Error {
    match e {
        wal::Error::NoSpace => Error::NoSpace("no space left for the write-ahead log".into()),
        other => Error::Internal(format!("write-ahead log: {other}")),
    }
}

/// Why the log under `config.data_dir` cannot be opened, for the operator: damage that
/// `--wal-truncate-corruption` would cut says so, with what the cut would discard and how
/// to look at it first.
fn refusal(e: wal::Error, config: &Config) -> Error {
    match &e {
        wal::Error::Corrupt {
            discard: Some(_), ..
        } => Error::Internal(format!(
            "write-ahead log: {e}. Refusing to start rather than lose acknowledged changes. \
             See them with `flinger wal dump --past-damage {dir}`; to start anyway, cutting \
             the log at the damage and discarding them, restart once with \
             --wal-truncate-corruption (FLINGER_WAL_TRUNCATE_CORRUPTION=1): stored files \
             no remaining record refers to are then kept in {dir}/{lost}",
            dir = config.data_dir.display(),
            lost = super::files::LOST_AND_FOUND,
        )),
        _ => wal_error(e),
    }
}

/// Opens the log under `config.data_dir` on `fs`, loads the newest snapshot, replays the
/// records after it and starts the writer thread (see [`super::open`]).
pub fn open_with(
    config: &Config,
    fs: Arc<dyn wal::Fs>,
) -> Result<(State, Journal, SnapshotRequests, Recovery)> {
    let started = Instant::now();
    super::files::create_data_dir(&*fs, &config.data_dir)?;
    let mut wal = wal::Wal::open_with(fs.clone(), &wal_dir(&config.data_dir), wal_options(config))
        .map_err(|e| refusal(e, config))?;
    // Before a replay that may cut the log at corruption (see `files::CUT_PENDING`); one
    // left by a start that crashed after its cut stays until a sweep has kept the files.
    let marker = config.data_dir.join(super::files::CUT_PENDING);
    let marked = config.wal_truncate_corruption && fs.read(&marker).is_err();
    if marked {
        wal::write_file_durably(&*fs, &marker, b"the log may be cut at corruption\n")
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", marker.display())))?;
    }
    let mut replay = Replay::new(started);
    let mut after = 0;
    let mut snapshot_size = 0;
    if let Some((lsn, bytes)) = wal.load_snapshot().map_err(|e| refusal(e, config))? {
        snapshot_size = bytes.len() as u64;
        replay.snapshot(lsn, &bytes)?;
        after = lsn;
    }
    let report = wal
        .replay(after, |lsn, payload| replay.record(lsn, payload))
        .map_err(|e| refusal(e, config))?;
    let cut_at_corruption = match &report.truncated {
        Some(t) if t.torn_tail => {
            tracing::warn!(
                segment = %t.segment.display(),
                offset = t.offset,
                bytes = t.bytes_dropped,
                "write-ahead log had a torn tail; truncated it"
            );
            false
        }
        Some(t) => {
            tracing::warn!(
                segment = %t.segment.display(),
                offset = t.offset,
                bytes = t.bytes_dropped,
                records = t.discarded.records,
                reason = %t.reason,
                "write-ahead log truncated after corruption (--wal-truncate-corruption): discarded {}",
                t.discarded
            );
            true
        }
        None => false,
    };
    let space = wal.space_reserved();
    if !space {
        // The writer logs only changes of this; say it at start-up, where a server on a
        // full disk otherwise looks healthy while it refuses every change.
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "disk full at start-up: no room in the data directory for the next write-ahead \
             log segment ({} bytes, --segment-bytes); refusing changes (507) until space is free",
            config.segment_bytes
        );
    }
    let (inner, rx) = Inner::start(
        config,
        wal.last_lsn(),
        space,
        Snapshots::File(wal.snapshot_writer()),
    );
    let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer {
        wal,
        rx,
        inner: inner.clone(),
        pace: SnapshotPace::new(config, snapshot_size),
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
    if marked && !cut_at_corruption {
        // Nothing was cut: the next sweep may delete what nothing refers to, as usual.
        fs.remove(&marker)
            .and_then(|()| fs.sync_dir(&config.data_dir))
            .map_err(|e| Error::Internal(format!("cannot remove {}: {e}", marker.display())))?;
    }
    let (state, mut recovery) = replay.finish();
    recovery.cut_at_corruption = cut_at_corruption;
    Ok((state, Journal { inner }, snap_rx, recovery))
}

/// The one thread that writes and syncs the log.
struct Writer {
    /// The log itself; only this thread touches it.
    wal: wal::Wal,
    /// Records and snapshot requests, in LSN order.
    rx: mpsc::Receiver<WriterMsg>,
    /// Shared with the journal handles: durability mark and space flag.
    inner: Arc<Inner>,
    /// When to ask for the next snapshot.
    pace: SnapshotPace,
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
            let pending = match self.rx.recv_timeout(WRITER_TICK) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) if batch.is_empty() => {
                    self.chores();
                    continue;
                }
                // Stalled: retry the held records.
                Err(mpsc::RecvTimeoutError::Timeout) => None,
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
        let inner = self.inner.clone();
        let tell = |waiters, durable| inner.teller.tell(waiters, durable);
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

    fn snapshot(&mut self, prepared: Prepared) -> Result<()> {
        let Prepared::File(prepared) = prepared else {
            return Err(Error::Internal(
                "a PostgreSQL snapshot reached the file log".into(),
            ));
        };
        self.snapshot_requested = None;
        if self.inner.mark.borrow().failed {
            return Err(Error::Unavailable("the write-ahead log failed".into()));
        }
        let started = Instant::now();
        let (size, lsn) = (prepared.bytes(), prepared.lsn());
        self.wal.install_snapshot(prepared).map_err(wal_error)?;
        self.pace.last_snapshot_bytes = size;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            lsn,
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
        if !waiting
            && self.pace.due(self.wal.bytes_since_snapshot())
            && self.snap_tx.send(()).is_ok()
        {
            self.snapshot_requested = Some(Instant::now());
        }
    }
}

/// What `flinger wal dump` found (`main` turns it into the exit status its help documents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dumped {
    /// Every record was printed; the log has no damage.
    Intact,
    /// The log ends in a torn tail, which the server truncates at start-up.
    TornTail,
    /// The log is damaged before its end: the server refuses to start on it.
    Corrupt,
    /// Whoever read the output stopped reading (`| head`): the dump ended there.
    ReaderGone,
}

/// Prints every record of the log in `data_dir` human-readably, then a summary
/// (`flinger wal dump`); with `past_damage`, also the valid records after the first damage.
pub fn dump(data_dir: &Path, past_damage: bool, out: &mut impl std::io::Write) -> Result<Dumped> {
    let dir = wal_dir(data_dir);
    if !dir.is_dir() {
        return Err(Error::InvalidInput(format!(
            "no write-ahead log in {}: {} is not a directory (give `flinger wal dump` the \
             server's data directory, the one its --data-dir names, which holds wal/)",
            data_dir.display(),
            dir.display()
        )));
    }
    let mut write_err = None;
    let mut marked = false;
    let report = wal::scan_with(&dir, u32::MAX >> 1, past_damage, |info, payload| {
        if write_err.is_some() {
            return;
        }
        let mut text = String::new();
        if info.past_damage && !marked {
            marked = true;
            text.push_str(
                "# past the damage: checksum-valid records the server does not replay \
                 (records before them were lost); --wal-truncate-corruption discards them\n",
            );
        }
        let tag = if info.past_damage { " past-damage" } else { "" };
        let shown = match decode(payload) {
            Ok(event) => describe(&event),
            Err(e) => format!("UNDECODABLE ({e})"),
        };
        text.push_str(&format!(
            "{:>10} {}@{}{tag} {shown}\n",
            info.lsn,
            info.segment.display(),
            info.offset,
        ));
        if let Err(e) = out.write_all(text.as_bytes()) {
            write_err = Some(e);
        }
    })
    .map_err(wal_error)?;
    let (summary, found) = summarize(&report, data_dir, past_damage);
    let written = match write_err {
        Some(e) => Err(e),
        None => out.write_all(summary.as_bytes()).and_then(|()| out.flush()),
    };
    match written {
        Ok(()) => Ok(found),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Dumped::ReaderGone),
        Err(e) => Err(e.into()),
    }
}

/// The dump's closing lines (each starting with `#`) and what they report.
fn summarize(report: &wal::ScanReport, data_dir: &Path, past_damage: bool) -> (String, Dumped) {
    let counts = format!(
        "# {} segment(s), {} record(s) replayable, last lsn {}",
        report.segments, report.records, report.last_lsn
    );
    let Some(damage) = &report.damage else {
        return (format!("{counts}; no damage\n"), Dumped::Intact);
    };
    let place = format!(
        "# damage in {} at offset {}: {}",
        damage.segment.display(),
        damage.offset,
        damage.reason
    );
    if damage.torn_tail {
        let text = format!(
            "{counts}\n{place}\n# a torn tail (an interrupted write): the server truncates it at \
             start-up with a warning; nothing acknowledged is lost\n"
        );
        return (text, Dumped::TornTail);
    }
    let after = if damage.after.records == 0 {
        "no valid records follow it".to_owned()
    } else if past_damage {
        format!(
            "{} follow it (listed above, marked past-damage)",
            damage.after
        )
    } else {
        format!(
            "{} follow it (list them with `flinger wal dump --past-damage {}`)",
            damage.after,
            data_dir.display()
        )
    };
    let text = format!(
        "{counts}\n{place}\n# corruption: {after}. The server refuses to start on this log; \
         started once with --wal-truncate-corruption it cuts the log at the damage, discarding \
         everything after it\n"
    );
    (text, Dumped::Corrupt)
}

/// One event as a dump line shows it, in one form for every kind: `Kind { field: value,
/// ... }` (Rust's `Debug`: text and bytes quoted and escaped, so a job document's newlines
/// do not break the one-record-a-line output), credential material and log text by
/// their size only.
fn describe(event: &Event) -> String {
    match event {
        // A fragment's text is shown by its size: it may be large, binary, or a terminal's
        // control sequences (its job's log shows it).
        Event::LogAppended {
            id,
            kind,
            phase,
            number,
            timestamp,
            data,
            run,
            at,
        } => format!(
            "LogAppended {{ id: {id:?}, kind: {kind:?}, phase: {phase:?}, number: {number}, \
             timestamp: {timestamp}, data: <{} bytes>, run: {run}, at: {at} }}",
            data.len()
        ),
        // Credential material is shown by its kind and size only (a dump is read by people
        // and pasted into tickets): a bcrypt hash can be attacked offline, a sealed secret
        // is one master key away from its value. A refresh token's hash shows its first 8
        // hex digits, enough to match its issue to its revocation and nothing more.
        Event::ClientSaved { id, client } => {
            let mut client = (**client).clone();
            client.secret_hash =
                format!("<bcrypt hash, {} bytes>", client.secret_hash.len()).into();
            format!("ClientSaved {{ id: {id:?}, client: {client:?} }}")
        }
        Event::RefreshTokenIssued {
            hash,
            client_id,
            issued_at,
            expires_at,
        } => format!(
            "RefreshTokenIssued {{ hash: {}, client_id: {client_id:?}, issued_at: {issued_at}, expires_at: {expires_at} }}",
            token_fingerprint(hash)
        ),
        Event::RefreshTokenRevoked { hash } => format!(
            "RefreshTokenRevoked {{ hash: {} }}",
            token_fingerprint(hash)
        ),
        Event::SecretStored {
            client_id,
            path,
            sealed,
            expires_at,
            ephemeral,
        } => format!(
            "SecretStored {{ client_id: {client_id:?}, path: {path:?}, sealed: <sealed secret, {} bytes>, expires_at: {expires_at:?}, ephemeral: {ephemeral} }}",
            sealed.len()
        ),
        other => format!("{other:?}"),
    }
}

/// A refresh token's SHA-256 as the dump shows it: its first 8 hex digits.
fn token_fingerprint(hash: &str) -> String {
    let start: String = hash.chars().take(8).collect();
    format!("<sha-256 of a refresh token, {start}...>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::access::Client;
    use bytes::Bytes;

    #[test]
    fn every_event_is_one_line_of_one_form() {
        let id = crate::model::ids::JobId::random();
        let events = [
            Event::JobSubmitted {
                id,
                queue: "q".into(),
                body: Bytes::from_static(b"{\n  \"job_queue\": \"q\"\n}"),
                priority: 0,
                exclude: Default::default(),
                awaits_attachments: false,
                at: 1,
                owner: None,
            },
            Event::LogAppended {
                id,
                kind: crate::model::event::LogKind::Output,
                phase: "test".into(),
                number: 3,
                timestamp: 4,
                data: Bytes::from_static(b"line 1\nline 2\n"),
                run: 1,
                at: 5,
            },
        ];
        for event in &events {
            let line = describe(event);
            assert!(!line.contains('\n'), "{line}");
            let (kind, rest) = line.split_once(" { ").expect("Kind { ...");
            assert!(kind.chars().all(|c| c.is_ascii_alphanumeric()), "{line}");
            assert!(rest.ends_with(" }") && rest.starts_with("id: "), "{line}");
        }
        assert!(describe(&events[1]).contains("data: <14 bytes>"));
    }

    #[test]
    fn the_dump_shows_no_credential_material() {
        let hash = "$2b$08$abcdefghijklmnopqrstuuJ7Zb8uS0yRr7bq6b0nqzQ1c1t8mW9hS";
        let token = "0123456789abcdef".repeat(4);
        let events = [
            Event::ClientSaved {
                id: "alice".into(),
                client: Box::new(Client {
                    secret_hash: hash.into(),
                    email: Some("alice@example.com".into()),
                    ..Client::default()
                }),
            },
            Event::RefreshTokenIssued {
                hash: token.as_str().into(),
                client_id: "alice".into(),
                issued_at: 1,
                expires_at: 2,
            },
            Event::RefreshTokenRevoked {
                hash: token.as_str().into(),
            },
            Event::SecretStored {
                client_id: "alice".into(),
                path: "db/pass".into(),
                sealed: Bytes::from_static(b"ciphertext-bytes"),
                expires_at: Some(9),
                ephemeral: false,
            },
        ];
        let lines: Vec<String> = events.iter().map(describe).collect();
        let all = lines.join("\n");
        assert!(!all.contains(hash) && !all.contains("$2b$"), "{all}");
        assert!(
            !all.contains(&token) && !all.contains("ciphertext"),
            "{all}"
        );
        assert!(lines[0].contains("<bcrypt hash, 60 bytes>"), "{all}");
        assert!(
            lines[0].contains("alice@example.com"),
            "the rest is kept: {all}"
        );
        assert!(lines[1].contains("<sha-256 of a refresh token, 01234567...>"));
        assert!(lines[1].contains("expires_at: 2"), "{all}");
        assert!(lines[2].contains("01234567..."), "{all}");
        assert!(lines[3].contains("<sealed secret, 16 bytes>"), "{all}");
        assert!(lines[3].contains("\"db/pass\"") && lines[3].contains("Some(9)"));
    }
}
