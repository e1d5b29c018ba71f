//! Several flinger nodes on one PostgreSQL journal: one leader, warm standbys, failover.
//!
//! Every node listens from the start and accepts any request. The node holding the lease
//! (`journal::postgres::lease`) runs the actors and answers; the others follow the journal
//! (`journal::Standby`) and forward each request to the leader's advertised URL, streamed
//! both ways with its method, headers and body, so a plain round-robin load balancer can
//! sit in front. While no node leads (a dead leader's lease has not expired yet), requests
//! get 503 naming the cause; clients retry.
//!
//! The role loop (`lead_or_follow`): follow as a standby until the lease expires, take
//! it (a new term), read the tail the old leader committed and start the actors from that
//! state through the same path as start-up (`server::start_recovered`); lead until the
//! tenure ends (a newer term found at renewal, an append fenced, the journal failed),
//! then stop the actors and follow again. Requests in flight on a deposed leader get no
//! 2xx for changes the journal did not commit under its term (503), and a leader whose
//! lease is not confirmed by its own clock (a renewal late, the process paused) answers
//! nothing as leader until it is.
//!
//! `GET /v1/ready` answers on every node, without forwarding: the node's role, the
//! leader's URL, the term and the last LSN in the node's state (equal on every node once
//! writes stop: the same fold over the same events gives the same state); 200 when the node can serve (it leads, or it knows a
//! leader to forward to), 503 otherwise.
//!
//! A forwarded request reaches the leader's routes from the client's address, which the
//! standby vouches for with the key the nodes share (`peers`), so per-address limits and
//! security logs tell a standby's clients apart; but never as from the leader's own
//! host: operator routes that are only allowed from there (deleting a job with access
//! control off) must be called on the leader itself.
//!
//! Every node checks a request's `Host` on its own settings first (`access::check_host`,
//! `--allowed-hosts`), readiness included. A standby passes the client's `Host` on, as the
//! leader's browser checks read it, except a name it admitted only as its own advertised
//! host: the leader does not know that name, so the request goes on naming the leader.
//!
//! Uploaded files live in the database too (`journal::postgres::files`): a node that
//! takes over serves every artifact and attachment with nothing on its local disk.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::RwLock;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;
use tower_http::normalize_path::NormalizePath;

use crate::actors::Services;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{LeaseView, Standby, Tenure};

mod forward;
mod peers;
use forward::{forward, FORWARDED};

/// The readiness endpoint's path.
pub const READY_PATH: &str = "/v1/ready";

/// How often a request waiting for a leader looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// What this node is doing now.
#[derive(Clone)]
enum Role {
    /// Following the journal; `lease` as last read (`None` before the first read, or when
    /// the database cannot be reached), the state folded up to `lsn`.
    Standby { lease: Option<LeaseView>, lsn: u64 },
    /// Serving as leader while `tenure` is valid.
    Leader {
        services: Services,
        app: crate::http::App,
        tenure: Arc<Tenure>,
    },
}

/// One node: its identity and its role.
pub struct Node {
    /// Unique per process (a restarted node is a new holder and waits out the old lease).
    id: String,
    /// Where other nodes reach this one.
    url: String,
    config: Arc<Config>,
    role: RwLock<Role>,
    /// Bumped on every role change, so requests waiting for a leader wake.
    changed: watch::Sender<u64>,
    /// Open HTTP connections: kept by the accept loop, shown by each term's metrics.
    connections: Gauge,
    /// The key nodes of this database share (`peers`), as last read from it.
    peer_key: RwLock<Option<Arc<[u8]>>>,
}

impl Node {
    fn set(&self, role: Role) {
        *self.role.write() = role;
        self.changed.send_modify(|n| *n += 1);
    }

    /// The readiness document and its status.
    fn readiness(&self) -> Response {
        let role = self.role.read().clone();
        let (status, body) = match &role {
            Role::Leader {
                tenure, services, ..
            } if tenure.valid() => (
                StatusCode::OK,
                json!({"node": self.url, "role": "leader", "leader": self.url, "term": tenure.term(),
                       "lsn": services.journal.last_assigned()}),
            ),
            Role::Leader {
                tenure, services, ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"node": self.url, "role": "leader", "leader": null, "term": tenure.term(),
                       "lsn": services.journal.last_assigned(),
                       "message": "this node's lease is not confirmed; it serves nothing until it is"}),
            ),
            Role::Standby {
                lease: Some(lease),
                lsn,
            } if self.leads_elsewhere(lease) => (
                StatusCode::OK,
                json!({"node": self.url, "role": "standby", "leader": lease.url, "term": lease.term,
                       "lsn": lsn}),
            ),
            Role::Standby { lease, lsn } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"node": self.url, "role": "standby", "leader": null,
                       "term": lease.as_ref().map_or(0, |l| l.term), "lsn": lsn,
                       "message": "no node leads at the moment (a failover is under way, or the database is unreachable)"}),
            ),
        };
        crate::http::respond::json_value(status, &body)
    }

    /// Whether `lease` names a live leader other than this node.
    fn leads_elsewhere(&self, lease: &LeaseView) -> bool {
        // Its own URL too: two nodes given the same `--advertise-url` must not forward to
        // themselves.
        !lease.expired && lease.holder != self.id && !lease.url.is_empty() && lease.url != self.url
    }
}

/// Runs a node of the PostgreSQL journal at `url` on `listener` until `shutdown`
/// resolves (graceful, like `server::serve`) or the actors fail fatally.
pub async fn run(
    listener: TcpListener,
    config: Config,
    url: String,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let config = Arc::new(config);
    let local = listener.local_addr().map_err(Error::from)?;
    let advertised = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let node = Arc::new(Node {
        id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
        url: advertised.trim_end_matches('/').to_owned(),
        config: config.clone(),
        role: RwLock::new(Role::Standby {
            lease: None,
            lsn: 0,
        }),
        changed: watch::channel(0).0,
        connections: Gauge::default(),
        peer_key: RwLock::new(None),
    });
    tracing::info!(node = %node.id, url = %node.url, lease_ms = config.lease.as_millis() as u64, "PostgreSQL journal: starting as a standby");
    // The first connection and load must work: a wrong connection string or an
    // unreadable journal stops start-up with its reason (later failures are retried).
    let first = Standby::connect(&url, config.lease).await?;
    *node.peer_key.write() = Some(first.peer_key());
    // The signing key every leader will use (kept in the database, generated by the first
    // node to get there): one refused (too short) is the operator's to fix, so start-up
    // stops here with that reason, as on the file journal, instead of every node taking
    // the lease and failing to lead in turn.
    let files = crate::journal::files::open(&config, Arc::new(wal::StdFs), None).await?;
    crate::access::token::signing_key(&*files).await?;
    drop(files);
    node.set(Role::Standby {
        lease: Some(first.lease().await?),
        lsn: first.last_lsn(),
    });
    let (fatal_tx, mut fatal) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let roles = tokio::spawn(lead_or_follow(node.clone(), url, first, stop, fatal_tx));
    let app = NormalizePath::trim_trailing_slash(
        Router::new().fallback(dispatch).with_state(node.clone()),
    );
    let draining = node.clone();
    let outcome = crate::server::accept(
        listener,
        app,
        &config,
        node.connections.clone(),
        &mut fatal,
        shutdown,
        move || {
            if let Role::Leader { services, .. } = &*draining.role.read() {
                services.dispatch.close();
            }
        },
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = roles.await;
    tracing::info!("stopped");
    outcome
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(drop);
}

/// Sleeps `d` unless `stop` turns true first; returns whether it did.
async fn stopped_within(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop_requested(stop) => {}
    }
    *stop.borrow()
}

/// The role loop (see the module docs).
async fn lead_or_follow(
    node: Arc<Node>,
    url: String,
    first: Standby,
    mut stop: watch::Receiver<bool>,
    fatal: mpsc::UnboundedSender<String>,
) {
    let mut first = Some(first);
    let config = node.config.clone();
    // The lease is looked at five times per length: a dead leader is replaced within
    // 1.2 lease lengths of its last renewal.
    let tick = (config.lease / 5).max(Duration::from_millis(50));
    'follow: loop {
        if *stop.borrow() {
            return;
        }
        let connected = match first.take() {
            Some(standby) => Ok(standby),
            None => Standby::connect(&url, config.lease).await,
        };
        let mut standby = match connected {
            Ok(standby) => standby,
            Err(e) => {
                if let Some(suppressed) = crate::throttle::allow("standby cannot start", 0) {
                    tracing::warn!(error = %e, suppressed, "standby cannot load the journal; retrying");
                }
                node.set(Role::Standby {
                    lease: None,
                    lsn: 0,
                });
                if stopped_within(&mut stop, tick).await {
                    return;
                }
                continue;
            }
        };
        *node.peer_key.write() = Some(standby.peer_key());
        tracing::info!(lsn = standby.last_lsn(), "standby: state loaded; following");
        let promoted = loop {
            if *stop.borrow() {
                return;
            }
            let lease = match standby.lease().await {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(error = %e, "standby lost the database; reconnecting");
                    continue 'follow;
                }
            };
            let free = lease.expired || lease.holder == node.id;
            node.set(Role::Standby {
                lease: Some(lease),
                lsn: standby.last_lsn(),
            });
            if free {
                standby = match standby.promote(&config, &node.id, &node.url).await {
                    Ok(Ok(promoted)) => break promoted,
                    Ok(Err(standby)) => standby,
                    Err(e) => {
                        // Taking the lease, reading the log's tail or starting the
                        // writer: each bounded, so this comes instead of a silent wait.
                        tracing::warn!(error = %e, "cannot lead; following again and retrying");
                        continue 'follow;
                    }
                };
            }
            let followed = tokio::select! {
                followed = async {
                    standby.catch_up().await?;
                    standby.wait(tick).await
                } => followed,
                _ = stop_requested(&mut stop) => return,
            };
            if let Err(e) = followed {
                tracing::warn!(error = %e, "standby lost the database; reconnecting");
                continue 'follow;
            }
        };
        let (state, journal, snapshots, recovery, tenure) = promoted;
        let started =
            match crate::journal::files::open(&config, Arc::new(wal::StdFs), Some(tenure.term()))
                .await
            {
                Ok(files) => {
                    crate::server::start_recovered(
                        config.clone(),
                        files,
                        (state, journal.clone(), snapshots, recovery),
                        node.connections.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
        let mut running = match started {
            Ok(running) => running,
            Err(e) => {
                if let Some(suppressed) = crate::throttle::allow("leader cannot start", 0) {
                    tracing::error!(error = %e, suppressed, "cannot start the actors after taking the lease; stepping down");
                }
                journal.close().await;
                // Let a healthy standby take the lease first, instead of reloading and
                // bumping the term in a tight loop for as long as the fault lasts.
                if stopped_within(&mut stop, config.lease).await {
                    return;
                }
                continue;
            }
        };
        let services = running.services.clone();
        node.set(Role::Leader {
            app: crate::http::app(services.clone()),
            services: services.clone(),
            tenure: tenure.clone(),
        });
        let why = tokio::select! {
            why = tenure.deposed() => why,
            _ = stop_requested(&mut stop) => {
                running.stop().await;
                return;
            }
            why = running.fatal() => {
                let _ = fatal.send(why);
                node.set(Role::Standby { lease: None, lsn: 0 });
                running.stop().await;
                return;
            }
        };
        tracing::warn!(term = tenure.term(), reason = %why, "no longer the leader: stopping the actors and following again");
        node.set(Role::Standby {
            lease: None,
            lsn: 0,
        });
        services.dispatch.close();
        running.stop().await;
    }
}

/// Every request: answered here (readiness), by the leader's routes, or forwarded. While
/// no node leads, a request waits for one up to two lease lengths (a failover takes about
/// one), then gets 503.
async fn dispatch(State(node): State<Arc<Node>>, request: Request) -> Response {
    // HEAD too (a load balancer's health check may use it): forwarded, it would be the
    // leader's answer (or a wait for one), not this node's.
    // The `Host` first, on this node's settings (the node the client named): a standby
    // refuses what it does not allow itself, as the leader's routes do.
    let admitted = match crate::access::check_host(&node.config, &request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let method = request.method();
    if request.uri().path() == READY_PATH
        && (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
    {
        return node.readiness();
    }
    let deadline = tokio::time::Instant::now() + node.config.lease * 2;
    let mut changed = node.changed.subscribe();
    let mut request = request;
    let mut unreachable: String;
    loop {
        let role = node.role.read().clone();
        let why = match role {
            Role::Leader { app, tenure, .. } if tenure.valid() => {
                if request.headers().contains_key(&FORWARDED) {
                    // The peer is the forwarding node, not the client: the client's
                    // address is the one the node vouched for, if its proof holds (else
                    // the peer's, whoever sent it); and never this host's own (routes
                    // only allowed from the server's own host).
                    let key = node.peer_key.read().clone();
                    let vouched = peers::vouched(key.as_deref(), request.headers_mut());
                    let requester = crate::access::Requester::of(request.extensions_mut());
                    requester.forwarded = true;
                    if let Some(client) = vouched {
                        requester.peer = Some(std::net::SocketAddr::new(client, 0));
                    }
                } else {
                    peers::forget(request.headers_mut());
                }
                return match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
            Role::Leader { .. } => {
                "this node's lease as leader is not confirmed (it may have passed to another node)"
            }
            _ if request.headers().contains_key(&FORWARDED) => {
                // The forwarder waits; this node answers at once.
                return Error::Unavailable(
                    "a forwarded request reached a node that does not lead (the lease changed hands); retry"
                        .into(),
                )
                .into_response();
            }
            Role::Standby {
                lease: Some(lease),
                ..
            } if node.leads_elsewhere(&lease) => {
                match forward(&node, &lease, request, admitted).await {
                    Ok(response) => return response,
                    Err((back, why)) => {
                        request = back;
                        unreachable = why;
                        &unreachable
                    }
                }
            }
            Role::Standby { .. } => {
                "no node leads at the moment (a failover is under way, or the database is unreachable)"
            }
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Error::Unavailable(format!("{why}; retry")).into_response();
        }
        // A role change wakes it; a leader's renewal does not, hence the recheck.
        let _ = tokio::time::timeout((deadline - now).min(RECHECK), changed.changed()).await;
    }
}

/// `GET /v1/ready` on a server with the embedded journal: it is the only node and leads.
pub async fn ready_single() -> Response {
    crate::http::respond::json_value(
        StatusCode::OK,
        &json!({"node": null, "role": "leader", "leader": null, "term": 0, "lsn": null}),
    )
}
