//! The server: recovery, actor start-up, the accept loop, background chores and graceful
//! shutdown. [`run`] is what `main` calls and what tests could call on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ractor::Actor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::actors::agents::AgentMsg;
use crate::actors::files::FileMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::results::ResultMsg;
use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::{ask, now, Handles, QueueDirectory, Services};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{self, SnapshotDoc};

/// A client has this long to send a request's headers (slowloris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight requests get this long to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Retention looks for expired jobs this often at most (and at least every minute), so
/// short retention settings take effect promptly without busy passes for long ones.
const RETENTION_MIN_EVERY: Duration = Duration::from_secs(1);
/// See [`RETENTION_MIN_EVERY`].
const RETENTION_MAX_EVERY: Duration = Duration::from_secs(60);
/// Most jobs one retention pass removes (keeps each event and pause small).
const RETENTION_BATCH: usize = 10_000;

/// A started server core: recovered state, running actors and background chores, not
/// yet listening. [`run`] serves it over TCP; tests and fuzz targets can drive
/// `http::router(running.services.clone())` directly.
pub struct Running {
    /// What handlers need.
    pub services: Services,
    /// The supervisor, stopped on shutdown.
    supervisor: ractor::ActorRef<SupervisorMsg>,
    /// Resolves when the supervisor (and so every actor) has stopped.
    supervisor_handle: tokio::task::JoinHandle<()>,
    /// Snapshot and retention task.
    chores: tokio::task::JoinHandle<()>,
    /// Fatal actor failures.
    fatal: mpsc::UnboundedReceiver<String>,
}

/// Recovers the state in `config.data_dir` and starts the actors and chores.
pub async fn start(config: Config) -> Result<Running> {
    start_with_fs(config, Arc::new(wal::StdFs)).await
}

/// [`start`] with the write-ahead log on a given filesystem (tests inject failures).
pub async fn start_with_fs(config: Config, fs: Arc<dyn wal::Fs>) -> Result<Running> {
    let config = Arc::new(config);
    let files_dir = config.data_dir.join("files");
    std::fs::create_dir_all(&files_dir)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", files_dir.display())))?;
    let recovery_config = config.clone();
    let (mut state, journal, snapshot_requests, recovery) =
        tokio::task::spawn_blocking(move || journal::open_with(&recovery_config, fs))
            .await
            .map_err(|e| Error::Internal(format!("recovery task failed: {e}")))??;
    tracing::info!(
        jobs = state.registry.len(),
        snapshot_lsn = recovery.snapshot_lsn,
        replayed = recovery.replayed,
        snapshot_ms = recovery.snapshot_time.as_millis() as u64,
        ms = recovery.elapsed.as_millis() as u64,
        "recovered state from the write-ahead log"
    );
    sweep_unreferenced_files(&files_dir, &state.files);
    let access =
        crate::access::store::AccessStore::new(std::mem::take(&mut state.access), journal.clone());
    let access = Arc::new(crate::access::Gate::new(&config, access)?);
    tracing::info!(mode = ?config.access, clients = access.store.read(|a| a.clients.len()), "access control");

    let queues = QueueDirectory::default();
    let (fatal_tx, fatal) = mpsc::unbounded_channel();
    let (supervisor, supervisor_handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            state,
            journal: journal.clone(),
            queues: queues.clone(),
            files_dir: files_dir.clone(),
            fatal: fatal_tx,
        },
    )
    .await
    .map_err(|e| Error::Internal(format!("cannot start actors: {e}")))?;
    let refs = ask(&supervisor, SupervisorMsg::Refs).await?;
    tracing::info!(queues = queues.len(), "actors started");
    let services = Services::new(Handles {
        registry: refs.registry,
        results: refs.results,
        files: refs.files,
        agents: refs.agents,
        queues,
        journal,
        config,
        files_dir,
        access,
    });
    let chores = tokio::spawn(background_chores(services.clone(), snapshot_requests));
    Ok(Running {
        services,
        supervisor,
        supervisor_handle,
        chores,
        fatal,
    })
}

impl Running {
    /// Stops the actors and chores; every acknowledged change is already durable.
    pub async fn stop(self) {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
        self.supervisor.stop(None);
        let _ = self.supervisor_handle.await;
        self.chores.abort();
        self.services.journal.close().await;
    }
}

/// Runs the server on `listener` until `shutdown` resolves (graceful: stop accepting,
/// finish in-flight requests) or an actor fails fatally (an error).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve(listener, start(config).await?, shutdown).await
}

/// Serves a started core on `listener` until `shutdown` resolves or an actor fails
/// fatally; then stops it.
pub async fn serve(
    listener: TcpListener,
    mut running: Running,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let services = running.services.clone();
    let config = services.config.clone();
    let local = listener.local_addr().map_err(Error::from)?;
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), config = %config.source, fsync = ?config.fsync, "listening");

    let app = crate::http::router(services);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let outcome = loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break Ok(()),
            Some(why) = running.fatal.recv() => break Err(Error::Internal(why)),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break Ok(()),
            Some(why) = running.fatal.recv() => break Err(Error::Internal(why)),
        };
        let _ = stream.set_nodelay(true);
        // The peer address, for security logs and the failed-login limiter.
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    };
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests did not finish within {DRAIN_TIMEOUT:?}");
    }
    running.stop().await;
    tracing::info!("stopped");
    outcome
}

/// Writes snapshots when the WAL writer asks, and expires old jobs periodically, until
/// the writer stops.
async fn background_chores(services: Services, mut snapshot_requests: mpsc::UnboundedReceiver<()>) {
    let every = (services.config.retention / 4).clamp(RETENTION_MIN_EVERY, RETENTION_MAX_EVERY);
    let mut retention = tokio::time::interval(every);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = snapshot_requests.recv() => {
                if request.is_none() {
                    return;
                }
                if let Err(e) = snapshot(&services).await {
                    tracing::warn!(error = %e, "snapshot failed; the log keeps growing until the next attempt");
                }
            }
            _ = retention.tick() => match expire(&services).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "expired finished jobs past retention"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed"),
            },
        }
    }
}

/// Collects a copy of every partition, encodes them off the runtime and writes a snapshot
/// covering the smallest LSN among them.
pub async fn snapshot(services: &Services) -> Result<()> {
    let started = std::time::Instant::now();
    let (registry, results, files, agents) = tokio::join!(
        ask(&services.registry, RegistryMsg::Snapshot),
        ask(&services.results, ResultMsg::Snapshot),
        ask(&services.files, FileMsg::Snapshot),
        ask(&services.agents, AgentMsg::Snapshot),
    );
    let (registry, results, files, agents) = (registry?, results?, files?, agents?);
    let access = services.access.store.snapshot();
    let lsn = [registry.lsn, results.lsn, files.lsn, agents.lsn, access.lsn]
        .into_iter()
        .min()
        .unwrap_or(0);
    let copied = started.elapsed();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let doc = SnapshotDoc {
            version: journal::SNAPSHOT_VERSION,
            registry: registry.finish()?,
            results: results.finish()?,
            files: files.finish()?,
            agents: agents.finish()?,
            access: Some(access.finish()?),
        };
        journal::encode_partition(&doc)
    })
    .await
    .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))??;
    let encoded = started.elapsed();
    services.journal.write_snapshot(lsn, bytes).await?;
    tracing::info!(
        lsn,
        copy_ms = copied.as_millis() as u64,
        encode_ms = (encoded - copied).as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "snapshot taken"
    );
    Ok(())
}

/// Removes finished jobs past retention, with their results, logs and files.
pub async fn expire(services: &Services) -> Result<usize> {
    let cutoff = now().saturating_sub(services.config.retention.as_secs());
    let Some((ids, expired)) = ask(&services.registry, |p| {
        RegistryMsg::Expire(cutoff, RETENTION_BATCH, p)
    })
    .await??
    else {
        return Ok(0);
    };
    let count = ids.len();
    let results = ask(&services.results, |p| ResultMsg::Expire(ids.clone(), p)).await??;
    let files = ask(&services.files, |p| FileMsg::Expire(ids, p)).await??;
    for ticket in [expired, results, files] {
        services.journal.durable(ticket).await?;
    }
    Ok(count)
}

/// Deletes files in `dir` that no recorded event references (uploads interrupted by a
/// crash, replaced files whose deletion did not happen).
fn sweep_unreferenced_files(dir: &std::path::Path, files: &crate::model::files::Files) {
    let referenced: std::collections::HashSet<&str> = files.names().collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !referenced.contains(name) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = name, "removed unreferenced upload"),
                Err(e) => {
                    tracing::warn!(file = name, error = %e, "cannot remove unreferenced upload")
                }
            }
        }
    }
}
