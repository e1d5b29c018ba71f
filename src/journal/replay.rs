//! Recovery, whatever the backend: the snapshot document as it is read back
//! ([`SnapshotDoc`]), and the fold of a snapshot and the records after it into a fresh
//! [`State`] ([`Replay`]), the same fold live changes take.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{decode, SNAPSHOTS_READ};
use crate::error::{Error, Result};
use crate::model::{Partition, State};

/// One partition in a snapshot: its state and the last LSN folded into it. Read in place
/// from the snapshot's bytes (a million-job partition is not copied before it is decoded).
#[derive(Deserialize)]
pub struct PartSnapshot<'a> {
    /// Every event of the partition up to this LSN is in `state`.
    pub lsn: u64,
    /// The partition, msgpack-encoded.
    #[serde(borrow)]
    pub state: &'a [u8],
}

/// The whole snapshot file payload (written by [`super::SnapshotParts`]'s encoding).
#[derive(Deserialize)]
pub struct SnapshotDoc<'a> {
    /// [`super::SNAPSHOT_VERSION`] when written.
    pub version: u32,
    /// Registry partition.
    #[serde(borrow)]
    pub registry: PartSnapshot<'a>,
    /// Results partition.
    #[serde(borrow)]
    pub results: PartSnapshot<'a>,
    /// Files partition.
    #[serde(borrow)]
    pub files: PartSnapshot<'a>,
    /// Agents partition.
    #[serde(borrow)]
    pub agents: PartSnapshot<'a>,
    /// Access partition (absent in snapshots written before access control existed).
    #[serde(default, borrow)]
    pub access: Option<PartSnapshot<'a>>,
    /// Webhooks partition (absent in snapshots written before webhooks existed).
    #[serde(default, borrow)]
    pub webhooks: Option<PartSnapshot<'a>>,
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
    /// Set when the log was cut at corruption (`--wal-truncate-corruption`): records that
    /// referred to stored files may be among those discarded, so start-up keeps the files
    /// nothing refers to any more instead of deleting them.
    pub cut_at_corruption: bool,
}

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
    /// Webhooks.
    pub webhooks: u64,
}

impl Applied {
    fn get(&self, p: Partition) -> u64 {
        match p {
            Partition::Registry => self.registry,
            Partition::Results => self.results,
            Partition::Artifacts => self.files,
            Partition::Agents => self.agents,
            Partition::Access => self.access,
            Partition::Webhooks => self.webhooks,
        }
    }

    fn set(&mut self, p: Partition, lsn: u64) {
        match p {
            Partition::Registry => self.registry = lsn,
            Partition::Results => self.results = lsn,
            Partition::Artifacts => self.files = lsn,
            Partition::Agents => self.agents = lsn,
            Partition::Access => self.access = lsn,
            Partition::Webhooks => self.webhooks = lsn,
        }
    }
}

/// Recovery in progress, whatever the backend: the state rebuilt from a snapshot and
/// the records after it, through the same fold live changes take.
///
/// Used as: [`Replay::new`], at most one [`Replay::snapshot`], then [`Replay::record`] for
/// each record after it in LSN order, then [`Replay::finish`]. An error from either means
/// the log cannot be recovered as it is (the backend reports it and does not start).
pub struct Replay {
    state: State,
    /// Per partition, the last LSN already in `state` (records up to it are skipped).
    applied: Applied,
    recovery: Recovery,
    started: Instant,
}

impl Replay {
    pub fn new(started: Instant) -> Replay {
        Replay {
            state: State::default(),
            applied: Applied::default(),
            recovery: Recovery::default(),
            started,
        }
    }

    /// Loads the snapshot `bytes` taken at `lsn` (a [`SnapshotDoc`]). Refuses a layout
    /// this build does not read.
    pub fn snapshot(&mut self, lsn: u64, bytes: &[u8]) -> Result<()> {
        let state = &mut self.state;
        let doc: SnapshotDoc = rmp_serde::from_slice(bytes)
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
        // The registry (the largest partition, which decodes on every core and builds its
        // read indexes as it goes: `Registry::decode`) on a thread of its own while this
        // one decodes the others: start-up with a million jobs is mostly this.
        let registry = std::thread::scope(|scope| {
            let registry = std::thread::Builder::new()
                .name("snapshot-registry".into())
                .spawn_scoped(scope, || {
                    crate::model::registry::Registry::decode(doc.registry.state)
                        .map_err(|e| bad("registry", e))
                })
                .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
            let others = (|| {
                state.results =
                    rmp_serde::from_slice(doc.results.state).map_err(|e| bad("results", e))?;
                state.files =
                    rmp_serde::from_slice(doc.files.state).map_err(|e| bad("files", e))?;
                state.agents =
                    rmp_serde::from_slice(doc.agents.state).map_err(|e| bad("agents", e))?;
                if let Some(access) = &doc.access {
                    state.access =
                        rmp_serde::from_slice(access.state).map_err(|e| bad("access", e))?;
                }
                if let Some(hooks) = &doc.webhooks {
                    state.webhooks =
                        rmp_serde::from_slice(hooks.state).map_err(|e| bad("webhooks", e))?;
                }
                Ok::<_, Error>(())
            })();
            // Joined before any error is returned: a scope left with a panicked thread
            // unjoined would panic instead of reporting the error.
            let registry = registry
                .join()
                .map_err(|_| Error::Internal("decoding the registry partition panicked".into()))
                .and_then(|decoded| decoded);
            others.and(registry)
        })?;
        state.registry = registry;
        self.applied = Applied {
            registry: doc.registry.lsn,
            results: doc.results.lsn,
            files: doc.files.lsn,
            agents: doc.agents.lsn,
            access: doc.access.as_ref().map_or(0, |a| a.lsn),
            webhooks: doc.webhooks.as_ref().map_or(0, |a| a.lsn),
        };
        self.recovery.snapshot_lsn = Some(lsn);
        self.recovery.snapshot_time = self.started.elapsed();
        Ok(())
    }

    /// Folds one recovered record, unless its partition's snapshot already holds it.
    pub fn record(&mut self, lsn: u64, payload: &[u8]) -> std::result::Result<(), String> {
        let event = decode(payload).map_err(|e| format!("record does not decode: {e}"))?;
        let partition = event.partition();
        if lsn > self.applied.get(partition) {
            self.state.apply(lsn, &event);
            self.applied.set(partition, lsn);
        }
        self.recovery.replayed += 1;
        Ok(())
    }

    /// The rebuilt state and what recovery did.
    pub fn finish(mut self) -> (State, Recovery) {
        self.recovery.elapsed = self.started.elapsed();
        (self.state, self.recovery)
    }
}
