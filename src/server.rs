//! The server: recovery, actor start-up, the accept loop, background chores and graceful
//! shutdown. [`run`] is what `main` calls and what tests could call on port 0.

use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::RwLock;
use ractor::Actor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::actors::agents::{AgentMsg, Unmarked};
use crate::actors::files::FileMsg;
use crate::actors::reads::ResultDocs;
use crate::actors::registry::{Jobs, RegistryMsg};
use crate::actors::results::ResultMsg;
use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::watch::Watch;
use crate::actors::webhooks::WebhookMsg;
use crate::actors::{ask, now, Door, Handles, OrphanQuota, QueueDirectory, Services};
use crate::config::Config;
use crate::dispatch::Waiters;
use crate::error::{Error, Result};
use crate::http::transfer::{MinRate, Watched};
use crate::journal;
use crate::model::lost;

/// Descriptors a connection may hold at once: its socket, and a file it uploads to or
/// streams from (or the directory it syncs).
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept beyond the connections' share: the log (segment, spare, directory,
/// lock), snapshots, the runtime (epoll, eventfds), stdio, and the listener.
const FDS_RESERVE: u64 = 256;
/// Retention looks for expired jobs this often at most (and at least every minute), so
/// short retention settings take effect promptly without busy passes for long ones.
const RETENTION_MIN_EVERY: Duration = Duration::from_secs(1);
/// See [`RETENTION_MIN_EVERY`].
const RETENTION_MAX_EVERY: Duration = Duration::from_secs(60);
/// Most jobs one retention pass removes (keeps each event and pause small).
const RETENTION_BATCH: usize = 10_000;

/// A started server core: recovered state, running actors and background chores, not
/// yet listening. [`run`] serves it over TCP; tests and fuzz targets can drive
/// `http::app(running.services.clone())` directly.
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

/// [`start`] with the whole data dir (log, snapshots, uploaded files) on a given
/// filesystem: tests inject failures or cut the power through it.
pub async fn start_with_fs(config: Config, fs: Arc<dyn wal::Fs>) -> Result<Running> {
    let config = Arc::new(config);
    // First: on the file log, this creates the data directory durably.
    let files = journal::files::open(&config, fs.clone(), None).await?;
    // The signing key is checked before the log is replayed: a kept key that is refused
    // (too short) costs no replay. `start_recovered` reads it again to use it.
    crate::access::token::signing_key(&*files).await?;
    let recovery_config = config.clone();
    let recovery_fs = fs.clone();
    let recovered =
        tokio::task::spawn_blocking(move || journal::open_with(&recovery_config, recovery_fs))
            .await
            .map_err(|e| Error::Internal(format!("recovery task failed: {e}")))??;
    start_recovered(config, files, recovered, Gauge::default()).await
}

/// Starts the actors and chores from a recovered state and its journal, over the store
/// of uploaded files: what start-up does after recovery, and what a standby that took
/// the lease does (`crate::ha`). `connections` is the gauge of open HTTP connections the
/// accept loop keeps (see [`crate::metrics::Metrics::new`]).
pub async fn start_recovered(
    config: Arc<Config>,
    files: Arc<dyn journal::files::FileStore>,
    recovered: (
        crate::model::State,
        journal::Journal,
        journal::SnapshotRequests,
        journal::Recovery,
    ),
    connections: Gauge,
) -> Result<Running> {
    let (mut state, journal, snapshot_requests, recovery) = recovered;
    tracing::info!(
        jobs = state.registry.len(),
        snapshot_lsn = recovery.snapshot_lsn,
        replayed = recovery.replayed,
        snapshot_ms = recovery.snapshot_time.as_millis() as u64,
        ms = recovery.elapsed.as_millis() as u64,
        "recovered state from the write-ahead log"
    );
    sweep_unreferenced_files(
        &*files,
        &state.files,
        &state.results,
        recovery.cut_at_corruption,
    )
    .await?;
    let access =
        crate::access::store::AccessStore::new(std::mem::take(&mut state.access), journal.clone());
    let key = crate::access::token::signing_key(&*files).await?;
    let access = Arc::new(crate::access::Gate::new(&config, &key, access)?);
    crate::access::check_stored_secrets(&access);
    tracing::info!(mode = ?config.access, clients = access.store.read(|a| a.clients.len()), "access control");

    let queues = QueueDirectory::default();
    let (fatal_tx, fatal) = mpsc::unbounded_channel();
    let registry = Arc::new(RwLock::new(std::mem::take(&mut state.registry)));
    let results = Arc::new(RwLock::new(std::mem::take(&mut state.results)));
    let agent_data = Arc::new(RwLock::new(std::mem::take(&mut state.agents)));
    let orphans = Arc::new(OrphanQuota::new(
        config.orphan_quota_bytes,
        config.retention.as_secs(),
    ));
    let attachments = Arc::new(crate::actors::files::AttachmentQuota::new(
        crate::model::files::AttachmentRoom::new(
            config.max_attachments_bytes,
            config.share_of(config.max_attachments_bytes),
            config.retention.as_secs(),
        ),
    ));
    let watch = Arc::new(Watch::default());
    let purges = Arc::new(crate::actors::purges::Purges::default());
    let hooks = Arc::new(crate::actors::webhooks::Hooks::new(std::mem::take(
        &mut state.webhooks,
    )));
    let waiters = Arc::new(Waiters::new(config.max_waiters));
    let store = Arc::new(crate::actors::orphans::Store::new(files.clone()));
    let (supervisor, supervisor_handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            state,
            registry: registry.clone(),
            results: results.clone(),
            agents: agent_data.clone(),
            orphans: orphans.clone(),
            attachments: attachments.clone(),
            journal: journal.clone(),
            queues: queues.clone(),
            files: files.clone(),
            fatal: fatal_tx,
            watch: watch.clone(),
            purges: purges.clone(),
            waiters: waiters.clone(),
            store: store.clone(),
            hooks: hooks.clone(),
            config: config.clone(),
        },
    )
    .await
    .map_err(|e| Error::Internal(format!("cannot start actors: {e}")))?;
    let refs = ask(&supervisor, SupervisorMsg::Refs).await?;
    tracing::info!(queues = queues.len(), "actors started");
    let pending = config.max_pending;
    let jobs = Jobs::new(registry);
    let metrics = Arc::new(crate::metrics::Metrics::new(
        jobs.clone(),
        agent_data.clone(),
        journal.wal_stats().clone(),
        config.metrics_queues,
        connections,
    ));
    let services = Services::new(Handles {
        registry: Door::new(refs.registry, pending, "job registry"),
        jobs,
        results: Door::new(refs.results, pending, "result store"),
        result_docs: ResultDocs::new(results, store),
        files: Door::new(refs.files, pending, "artifact store"),
        agents: Door::new(refs.agents, pending, "agent store"),
        agent_data,
        orphans,
        attachments,
        searches: Arc::new(crate::turns::Turns::new(config.max_searches)),
        follows: Arc::new(tokio::sync::Semaphore::new(config.max_follows)),
        queues,
        journal,
        config,
        store: files,
        watch,
        purges,
        dispatch: waiters,
        metrics,
        access,
        webhooks: Door::new(refs.webhooks, pending, "webhook outbox"),
        hooks,
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
    /// Resolves with the reason when an actor failed fatally.
    pub(crate) async fn fatal(&mut self) -> String {
        match self.fatal.recv().await {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Stops the actors and chores; every acknowledged change is already durable.
    pub async fn stop(self) {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
        self.supervisor.stop(None);
        let _ = self.supervisor_handle.await;
        self.chores.abort();
        self.services.journal.close().await;
    }
}

/// Whether this process's server got as far as serving (logged `listening`): an error
/// before that is one of starting, not of running.
pub static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs the server on `listener` until `shutdown` resolves (graceful: stop accepting,
/// finish in-flight requests) or an actor fails fatally (an error).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    if let crate::config::JournalTarget::Postgres(url) = &config.journal {
        // Any number of nodes on one database: leader, standbys, failover.
        let url = url.clone();
        return crate::ha::run(listener, config, url, shutdown).await;
    }
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
    let connections = services.metrics.open_connections();
    let app = crate::http::app(services);
    let dispatch = running.services.dispatch.clone();
    let outcome = accept(
        listener,
        app,
        &config,
        connections,
        &mut running.fatal,
        shutdown,
        // Long-polling agents are answered 204 now instead of holding the drain.
        move || dispatch.close(),
    )
    .await;
    running.stop().await;
    tracing::info!("stopped");
    outcome
}

/// The accept loop: serves `app` on `listener` until `shutdown` resolves (then stops
/// accepting, calls `before_drain` and lets requests in progress finish within
/// `--drain-secs`) or a message arrives on `fatal` (an error).
pub(crate) async fn accept(
    listener: TcpListener,
    app: crate::http::App,
    config: &Config,
    connections: Gauge,
    fatal: &mut mpsc::UnboundedReceiver<String>,
    shutdown: impl Future<Output = ()>,
    before_drain: impl FnOnce(),
) -> Result<()> {
    let local = listener.local_addr().map_err(Error::from)?;
    SERVING.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), config_file = %config.source, fsync = ?config.fsync, "listening");

    let rate = MinRate {
        bytes: config.min_transfer_bytes,
        window: config.transfer_window,
    };
    // Tells every connection that shutdown began.
    let stop = Arc::new(Stop::default());
    let mut accepted: u64 = 0;
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        // The read buffer bounds the request head, and so what a connection that never
        // finishes its headers pins (hyper's default is ~400 KiB).
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let outcome = loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break Ok(()),
            Some(why) = fatal.recv() => break Err(Error::Internal(why)),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if let Some(suppressed) = crate::throttle::allow("accept failed", 0) {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break Ok(()),
            Some(why) = fatal.recv() => break Err(Error::Internal(why)),
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(Busy::default());
        let service = TowerToHyperService::new(Tracked {
            app: app.clone(),
            busy: busy.clone(),
            peer,
        });
        let io = Watched::new(TokioIo::new(stream), rate);
        let connection = builder.serve_connection(io, service);
        accepted += 1;
        let stop_seen = stop.watch(accepted);
        let open = crate::metrics::ConnectionGuard::open(&connections);
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop_seen.stopped() => {
                    // Finish the request in progress, if any; a connection with none
                    // (idle, or still sending its head) is closed at once.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = connection.as_mut() => ended,
                        () = busy.idle() => Ok(()),
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    };
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    before_drain();
    stop.stop();
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "some requests did not finish within {:?}; closing them",
            config.drain
        );
    }
    outcome
}

/// Tells every connection that shutdown began. A connection's task checks it on every
/// wake-up (about three per request), so the check is an atomic load and a waker
/// registration of the connection's own; a `watch` channel's took a lock on each (~460
/// instructions per lifecycle request under callgrind).
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    /// Each open connection's waker, by the connection's number.
    waiting: parking_lot::Mutex<crate::model::FastMap<u64, Arc<AtomicWaker>>>,
}

impl Stop {
    /// Watches for the stop on behalf of connection `n` until the watch is dropped.
    fn watch(self: &Arc<Self>, n: u64) -> StopWatch {
        let waker = Arc::new(AtomicWaker::new());
        self.waiting.lock().insert(n, waker.clone());
        StopWatch {
            stop: self.clone(),
            n,
            waker,
        }
    }

    /// Shutdown began: every connection's watch resolves.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for waker in self.waiting.lock().values() {
            waker.wake();
        }
    }
}

/// One connection's watch on [`Stop`].
struct StopWatch {
    stop: Arc<Stop>,
    n: u64,
    waker: Arc<AtomicWaker>,
}

impl StopWatch {
    /// Resolves once shutdown began.
    fn stopped(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.stop.stopped.load(Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A stop between the load and the registration woke nobody: look again.
            if self.stop.stopped.load(Ordering::SeqCst) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.stop.waiting.lock().remove(&self.n);
    }
}

/// The router with a count of the connection's requests in progress (from the request's
/// arrival until its response body is dropped), so shutdown can tell an idle connection
/// from a busy one.
#[derive(Clone)]
struct Tracked {
    app: crate::http::App,
    busy: Arc<Busy>,
    /// The client's address, for handlers that are for the operator only (deleting a job).
    peer: std::net::SocketAddr,
}

/// A connection's requests in progress. Counted on every request but waited on only while
/// the server drains: a request's end wakes nobody unless a drain waits (a watch channel
/// here woke its eight notifiers, each behind a lock, twice per request).
#[derive(Default)]
struct Busy {
    requests: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

impl Busy {
    /// Resolves once no request is in progress; from then on every request's end is
    /// signalled.
    async fn idle(&self) {
        // Sequentially consistent on both sides: either this sees the last request's end,
        // or that request's end sees `draining` and notifies.
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.requests.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Ends a request in the connection's count when its response body is done with.
struct BusyGuard(Arc<Busy>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.draining.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that holds a [`BusyGuard`].
struct GuardedBody {
    inner: axum::body::Body,
    _guard: BusyGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, axum::Error>>>
    {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl tower::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt;
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(crate::access::Requester {
            peer: Some(self.peer),
            forwarded: false,
            caller: None,
        });
        self.busy.requests.fetch_add(1, Ordering::SeqCst);
        let guard = BusyGuard(self.busy.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|inner| {
                axum::body::Body::new(GuardedBody {
                    inner,
                    _guard: guard,
                })
            }))
        })
    }
}

/// Raises the soft limit on open file descriptors to what `config.max_connections` needs
/// (2 per connection and a reserve for the log and the runtime), so sockets cannot starve
/// the write-ahead log of descriptors. When the hard limit is too low, a default
/// `max_connections` is lowered to fit (returned as a note to log at info level: the
/// operator asked for nothing that cannot be met, so there is nothing to warn about); a
/// chosen one is an error for the operator. Returns the limit in force and the note, if any.
pub fn fit_descriptor_limit(
    config: &mut Config,
) -> std::result::Result<(u64, Option<String>), String> {
    let need = |connections: usize| {
        (connections as u64)
            .saturating_mul(FDS_PER_CONNECTION)
            .saturating_add(FDS_RESERVE)
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is involved.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read the descriptor limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut note = None;
    if limit.rlim_max < need(config.max_connections) {
        let most = (limit.rlim_max.saturating_sub(FDS_RESERVE) / FDS_PER_CONNECTION) as usize;
        let why = format!(
            "{} connections need {} file descriptors ({FDS_PER_CONNECTION} per connection + {FDS_RESERVE} for the log and runtime), but the hard limit (RLIMIT_NOFILE) is {}",
            config.max_connections,
            need(config.max_connections),
            limit.rlim_max
        );
        if config.max_connections_chosen || most == 0 {
            return Err(format!(
                "--max-connections: {why}: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or set --max-connections to at most {most}"
            ));
        }
        note = Some(format!(
            "--max-connections defaults to {most} here, not {}: {why} (a larger value needs a higher hard limit)",
            config.max_connections
        ));
        config.max_connections = most;
    }
    let need = need(config.max_connections);
    if limit.rlim_cur >= need {
        return Ok((limit.rlim_cur, note));
    }
    limit.rlim_cur = need;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(format!(
            "cannot raise the descriptor limit to {need}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((need, note))
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`, Linux
/// 3.15 and later): memory faulted in afterwards comes in 4 KiB pages, so the first touch
/// of new memory zeroes 4 KiB instead of 2 MiB while the worker waits. Pages already huge
/// stay so. Errors: the kernel refused (an older kernel, or a seccomp filter).
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only (the unused ones must be
        // zero) and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Writes snapshots when the WAL writer asks, and expires old jobs periodically, until
/// the writer stops.
async fn background_chores(services: Services, mut snapshot_requests: mpsc::UnboundedReceiver<()>) {
    let every = (services.config.retention.min(services.config.agent_expiry) / 4)
        .clamp(RETENTION_MIN_EVERY, RETENTION_MAX_EVERY);
    let mut retention = tokio::time::interval(every);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Idle queues are checked twice per idle period, so one stops within 1.5 of it.
    let every = (services.config.queue_idle / 2).clamp(RETENTION_MIN_EVERY, RETENTION_MAX_EVERY);
    let mut idle_queues = tokio::time::interval(every);
    idle_queues.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Lost agents are looked for four times per grace period (at least every second, at
    // most every minute), so a job ends within its allowance plus 1.25 grace periods.
    let every =
        (services.config.lost_agent_grace / 4).clamp(RETENTION_MIN_EVERY, RETENTION_MAX_EVERY);
    let mut lost_agents = tokio::time::interval(every);
    lost_agents.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = snapshot_requests.recv() => {
                if request.is_none() {
                    return;
                }
                if let Err(e) = snapshot(&services).await {
                    if let Some(suppressed) = crate::throttle::allow("snapshot failed", 0) {
                        tracing::warn!(error = %e, suppressed, "snapshot failed; the log keeps growing until the next attempt");
                    }
                }
            }
            _ = retention.tick() => {
                match expire(&services).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "expired finished jobs past retention"),
                    Err(e) => {
                        if let Some(suppressed) = crate::throttle::allow("retention pass failed", 0) {
                            tracing::warn!(error = %e, suppressed, "retention pass failed");
                        }
                    }
                }
                if let Err(e) = sweep_outboxes(&services).await {
                    if let Some(suppressed) = crate::throttle::allow("outbox sweep failed", 0) {
                        tracing::warn!(error = %e, suppressed, "sweeping the event outboxes of gone jobs failed");
                    }
                }
                match expire_orphans(&services).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(ids = n, "expired data of ids without a job"),
                    Err(e) => {
                        if let Some(suppressed) = crate::throttle::allow("orphan expiry pass failed", 0) {
                            tracing::warn!(error = %e, suppressed, "orphan expiry pass failed");
                        }
                    }
                }
                match expire_agents(&services).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(agents = n, "expired records of silent agents"),
                    Err(e) => {
                        if let Some(suppressed) = crate::throttle::allow("agent expiry pass failed", 0) {
                            tracing::warn!(error = %e, suppressed, "agent expiry pass failed");
                        }
                    }
                }
            }
            _ = lost_agents.tick() => {
                match end_lost_jobs(&services).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "ended or requeued jobs of lost agents"),
                    Err(e) => {
                        if let Some(suppressed) = crate::throttle::allow("lost-agent pass failed", 0) {
                            tracing::warn!(error = %e, suppressed, "lost-agent pass failed");
                        }
                    }
                }
            }
            _ = idle_queues.tick() => {
                let _ = services
                    .registry
                    .cast(RegistryMsg::StopIdleQueues(services.config.queue_idle));
            }
        }
    }
}

/// Collects a copy of every partition, encodes them off the runtime and writes a snapshot
/// covering the smallest LSN among them.
pub async fn snapshot(services: &Services) -> Result<()> {
    let started = std::time::Instant::now();
    let (registry, results, files, agents, hooks) = tokio::join!(
        ask(&*services.registry, RegistryMsg::Snapshot),
        ask(&*services.results, ResultMsg::Snapshot),
        ask(&*services.files, FileMsg::Snapshot),
        ask(&*services.agents, AgentMsg::Snapshot),
        ask(&*services.webhooks, WebhookMsg::Snapshot),
    );
    let (registry, results, files, agents, hooks) = (registry?, results?, files?, agents?, hooks?);
    let parts = journal::SnapshotParts {
        registry,
        results,
        files,
        agents,
        access: services.access.store.snapshot(),
        webhooks: hooks,
    };
    let lsn = parts.lsn();
    let copied = started.elapsed();
    let size = services.journal.write_snapshot(parts).await? as usize;
    services.metrics.snapshot(started.elapsed(), size);
    // encode_ms: encoding, writing and fsyncing the file (one streamed pass) and its
    // installation by the log writer.
    tracing::info!(
        lsn,
        copy_ms = copied.as_millis() as u64,
        encode_ms = (started.elapsed() - copied).as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "snapshot taken"
    );
    Ok(())
}

/// Removes finished jobs past retention, with their results, logs and files.
pub async fn expire(services: &Services) -> Result<usize> {
    let cutoff = now().saturating_sub(services.config.retention.as_secs());
    // `_purge`: submissions of these ids wait until the partitions below are done.
    let Some((ids, expired, _purge)) = ask(&*services.registry, |p| {
        RegistryMsg::Expire(cutoff, RETENTION_BATCH, p)
    })
    .await??
    else {
        return Ok(0);
    };
    let count = ids.len();
    let results = ask(&*services.results, |p| ResultMsg::Expire(ids.clone(), p)).await??;
    let hooks = ask(&*services.webhooks, |p| WebhookMsg::Expire(ids.clone(), p)).await??;
    let files = ask(&*services.files, |p| FileMsg::Expire(ids, p)).await??;
    for ticket in [Some(expired), Some(results), Some(files), hooks]
        .into_iter()
        .flatten()
    {
        services.journal.durable(ticket).await?;
    }
    Ok(count)
}

/// Drops the event outboxes of jobs the registry no longer has: what a retention pass
/// that failed after the registry's expiry left, or what older builds recorded for an
/// event post that raced its job's deletion.
pub async fn sweep_outboxes(services: &Services) -> Result<()> {
    if let Some(ticket) = ask(&*services.webhooks, WebhookMsg::Sweep).await?? {
        services.journal.durable(ticket).await?;
    }
    Ok(())
}

/// Finds running jobs whose agent was silent past its allowance (`model::lost`) and has
/// the registry end or requeue them (a logged `JobLost`, which also stops the watch on
/// them); marks each such agent's record `offline`, unless the agent said since that it
/// left the job (restarted mid-job: it is back in service). Returns how many jobs it ended or
/// requeued.
pub async fn end_lost_jobs(services: &Services) -> Result<usize> {
    let rule = lost::Rule {
        grace: services.config.lost_agent_grace.as_secs(),
        requeue: services.config.lost_agent_requeue,
    };
    let now = now();
    let mut count = 0;
    // A slice of the watch at a time, judged under one read of the registry, yielding
    // between slices: a pass over a million running jobs took ~1.5 s of CPU, which in
    // one go stalled every request on its worker (the soak's 1.5-s max, once a minute).
    for part in 0..crate::actors::watch::PARTS {
        tokio::task::yield_now().await;
        let slice = services.watch.part(part);
        if slice.is_empty() {
            continue;
        }
        // Only lost jobs come back: the registry itself stops watching a job when it leaves
        // the running states (in its own turn: a forget here, after the awaits below,
        // could undo a new dispatch).
        for (id, watched, phase, requeue) in services.jobs.judge_lost(slice, &rule, now) {
            let Some((ticket, agent)) = ask(&*services.registry, |port| RegistryMsg::Lose {
                id,
                phase: crate::model::Name::from(phase.as_str()),
                last_heard: watched.last_heard,
                requeue,
                port,
            })
            .await??
            else {
                continue;
            };
            services.journal.durable(ticket).await?;
            count += 1;
            let last_heard = crate::http::wire::iso_z(watched.last_heard);
            let outcome = if requeue {
                "agent lost: job put back into its queue"
            } else {
                "agent lost: job cancelled"
            };
            tracing::warn!(job = %id, agent = agent.as_deref().unwrap_or("-"), state = &*phase, last_heard = %last_heard, "{outcome}");
            if let Some(agent) = agent {
                // The stock agent reads `offline` on its next check and stops taking jobs
                // until someone puts it back: a device that went silent mid-job is looked
                // at before it runs another. The comment says how: the CLI's admin
                // command logs in, which a server without access control answers only
                // for a client someone made (any role will do there).
                let cli = format!(
                    "`testflinger-cli admin set agent-status --status online --agents {agent}`"
                );
                let how = if services.access.mode == crate::config::AccessMode::Off {
                    format!(
                        "post {{\"state\": \"waiting\", \"comment\": \"\"}} to \
                         /v1/agents/data/{agent}, or run {cli} with the id and secret of a \
                         client made with `flinger client add`"
                    )
                } else {
                    format!("run {cli} as a manager or admin client")
                };
                let fields = serde_json::json!({
                    "state": "offline",
                    "comment": format!(
                        "lost: not heard about job {id} since {last_heard}; once the device is \
                         checked, put it back in service: {how}"
                    ),
                });
                let body =
                    bytes::Bytes::from(serde_json::to_vec(&fields).expect("JSON serialises"));
                let marked = ask(&*services.agents, |port| AgentMsg::MarkLost {
                    name: agent.clone(),
                    job: id,
                    last_heard: watched.last_heard,
                    fields: body,
                    port,
                })
                .await??;
                match marked {
                    Ok(ticket) => services.journal.durable(ticket).await?,
                    // Restarted: it abandoned the job and is back in service.
                    Err(Unmarked::LeftJob) => {
                        tracing::info!(job = %id, agent = &*agent, "lost job's agent has left it since and stays in service")
                    }
                    // Deleted by an operator (or expired): marking it would make it again.
                    Err(Unmarked::NoRecord) => {
                        tracing::info!(job = %id, agent = &*agent, "lost job's agent has no record: none is made to mark it offline")
                    }
                }
            }
        }
    }
    Ok(count)
}

/// Removes the records of agents that have not posted for `--agent-expiry-secs`.
pub async fn expire_agents(services: &Services) -> Result<usize> {
    let cutoff = now().saturating_sub(services.config.agent_expiry.as_secs());
    match ask(&*services.agents, |p| AgentMsg::Expire(cutoff, p)).await?? {
        Some((count, ticket)) => {
            services.journal.durable(ticket).await?;
            Ok(count)
        }
        None => Ok(0),
    }
}

/// Removes results, logs and files of ids no job has, a retention period after their
/// last write. Returns how many ids' data went (counted once per partition).
pub async fn expire_orphans(services: &Services) -> Result<usize> {
    let cutoff = now().saturating_sub(services.config.retention.as_secs());
    let results = ask(&*services.results, |p| ResultMsg::ExpireOrphans(cutoff, p)).await??;
    let files = ask(&*services.files, |p| FileMsg::ExpireOrphans(cutoff, p)).await??;
    let mut count = 0;
    for (n, ticket) in results.into_iter().chain(files) {
        count += n;
        services.journal.durable(ticket).await?;
    }
    Ok(count)
}

/// Deletes stored files that no recorded event references (uploads interrupted by a
/// crash, replaced files whose deletion did not happen, orphan files whose first append
/// was not logged).
async fn sweep_unreferenced_files(
    store: &dyn crate::journal::files::FileStore,
    files: &crate::model::files::Files,
    results: &crate::model::results::Results,
    keep: bool,
) -> Result<()> {
    let referenced: std::collections::HashSet<&str> = files
        .names()
        .chain(results.orphans().map(|(_, e)| &*e.file))
        .collect();
    store.sweep(&referenced, keep).await.map(drop)
}
