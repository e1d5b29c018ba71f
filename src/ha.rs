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
//! A forwarded request reaches the leader's routes as from an unknown, non-loopback
//! address: operator routes that are only allowed from the server's own host (deleting a
//! job with access control off) must be called on the leader itself.
//!
//! Uploaded files live in the database too (`journal::postgres::files`): a node that
//! takes over serves every artifact and attachment with nothing on its local disk.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;
use tower_http::normalize_path::NormalizePath;

use crate::actors::Services;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{LeaseView, Standby, Tenure};

/// The readiness endpoint's path.
pub const READY_PATH: &str = "/v1/ready";

/// Marks a request a standby forwarded (its value: the forwarding node's URL). A node
/// that does not lead answers such a request 503 instead of forwarding it again, so a
/// lease changing hands cannot make requests bounce between nodes.
const FORWARDED: HeaderName = HeaderName::from_static("x-flinger-forwarded-by");

/// How long a standby waits to connect to the leader before answering 503.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a request waiting for a leader looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// Headers of one hop only (RFC 9110 §7.6.1, and RFC 2616 §13.5.1's list), not passed on
/// by the forwarder in either direction, besides those a message's `Connection` names
/// ([`strip_hop_by_hop`]). The message framing (`Transfer-Encoding`) is each hop's own
/// too: hyper frames the streamed body for the next hop itself, and with it any trailers,
/// so a `Trailer` announcement is the hop's as well. `Upgrade` is dropped because the
/// forwarder passes no upgraded connection on: the leader answers as to a plain request.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes from `headers` what belongs to one hop: every field the `Connection` header
/// names (RFC 9110 §7.6.1: a sender lists there the fields meant for the next hop
/// only, and a proxy must remove them; passed on, the leader would act on what the client
/// meant for the standby), then [`HOP_BY_HOP`]. `Host` stays even when named: it is
/// meant for every recipient, and the leader's cross-site and DNS-rebinding checks
/// (`access::origin`) read the client's (a client that names it would otherwise get the
/// leader's address in its place, which those checks trust).
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .filter(|name| name != header::HOST)
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

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
    });
    tracing::info!(node = %node.id, url = %node.url, lease_ms = config.lease.as_millis() as u64, "PostgreSQL journal: starting as a standby");
    // The first connection and load must work: a wrong connection string or an
    // unreadable journal stops start-up with its reason (later failures are retried).
    let first = Standby::connect(&url, config.lease).await?;
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
                        tracing::warn!(error = %e, "taking the lease failed; following again");
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
                    // The peer is the forwarding node, not the client: a loopback
                    // forwarder must not make a remote client's request the operator's
                    // (routes only allowed from the server's own host).
                    crate::access::Requester::of(request.extensions_mut()).peer =
                        Some(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
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
                match forward(&node, &lease, request).await {
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

/// Sends `request` on to the leader at `leader` and streams its answer back. The body
/// streams through without being collected: its size and pace are bounded by this node's
/// connection limits and by the leader's own. When the leader cannot be reached (it just
/// died), the request comes back untouched with the reason, to wait for the next leader.
async fn forward(
    node: &Node,
    lease: &LeaseView,
    mut request: Request,
) -> std::result::Result<Response, (Request, String)> {
    let leader = lease.url.as_str();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = match format!("{leader}{path}").parse::<Uri>() {
        Ok(uri) if uri.authority().is_some() => uri,
        _ => {
            return Err((
                request,
                format!("the leader's URL {leader:?} is not usable"),
            ))
        }
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let connected =
        tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, TcpStream::connect(&authority)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err((request, format!("the leader at {leader} cannot be reached ({e})"))),
        Err(_) => {
            return Err((
                request,
                format!("the leader at {leader} did not accept a connection within {FORWARD_CONNECT_TIMEOUT:?}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    // The client's `Host` goes on as it came: the leader's cross-site and DNS-rebinding
    // checks (`access::origin`) compare it with `Origin` and look at the name the client
    // used, and the leader's address in its place would pass a rebinding page's request
    // and refuse a same-origin browser's. Only a request without one (HTTP/1.0) gets the
    // leader's, as HTTP/1.1 requires one.
    if !headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(&authority) {
            headers.insert(header::HOST, host);
        }
    }
    if let Ok(from) = HeaderValue::from_str(&node.url) {
        headers.insert(FORWARDED, from);
    }
    *request.uri_mut() =
        Uri::from_maybe_shared(bytes::Bytes::from(path)).unwrap_or_else(|_| Uri::from_static("/"));
    let answered = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "forwarded connection ended with an error");
            }
        });
        sender.send_request(request).await
    };
    // A leader that stopped answering (paused, partitioned) loses its lease: give up on
    // it when the lease moves, instead of holding the client until it resumes. What it
    // did not commit before the takeover it never will (fencing).
    let moved = async {
        let mut changed = node.changed.subscribe();
        loop {
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
            let gone = match &*node.role.read() {
                Role::Standby {
                    lease: Some(now), ..
                } => now.term != lease.term || !node.leads_elsewhere(now),
                // This node lost sight of the database (reconnecting): the leader may be
                // fine, and a 503 for a change it then commits would invite a duplicate.
                Role::Standby { lease: None, .. } => false,
                _ => true,
            };
            if gone {
                return;
            }
        }
    };
    let answered = tokio::select! {
        answered = answered => answered,
        _ = moved => {
            return Ok(Error::Unavailable(format!(
                "the leader at {leader} stopped answering and its lease moved on; retry"
            ))
            .into_response())
        }
    };
    Ok(match answered {
        Ok(response) => {
            let mut response = response.map(Body::new);
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(e) => Error::Unavailable(format!(
            "the leader at {leader} did not answer ({e}); a failover may be under way: retry"
        ))
        .into_response(),
    })
}

/// `GET /v1/ready` on a server with the embedded journal: it is the only node and leads.
pub async fn ready_single() -> Response {
    crate::http::respond::json_value(
        StatusCode::OK,
        &json!({"node": null, "role": "leader", "leader": null, "term": 0, "lsn": null}),
    )
}
