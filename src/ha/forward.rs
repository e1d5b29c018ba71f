//! Forwarding a request from a standby to the leader: the request streamed on with its
//! method, headers and body, the answer streamed back, less the headers of one hop in
//! either direction; a leader that cannot be reached sends the request back to wait for
//! the next one.
//!
//! A leader that still renews its lease can still stop answering one request (a stuck
//! handler, a peer half gone): no wait on it is longer than `--forward-idle-secs` without
//! progress. Progress is the leader taking more of the request body, sending its answer's
//! head, or sending the next piece of the answer's body; time spent waiting on the client
//! (a slow upload, a client not reading) does not count. Before the head the client gets
//! 504 naming the leader; after it, the connection to the client is cut (the status is
//! gone) and a line is logged. The connection to the leader goes with either.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::{Node, Role};
use crate::access::origin::HostAdmitted;
use crate::error::Error;
use crate::journal::LeaseView;

/// Marks a request a standby forwarded (its value: the forwarding node's URL). A node
/// that does not lead answers such a request 503 instead of forwarding it again, so a
/// lease changing hands cannot make requests bounce between nodes.
pub(super) const FORWARDED: HeaderName = HeaderName::from_static("x-flinger-forwarded-by");

/// How long a standby waits to connect to the leader before answering 503.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// How far one forwarded exchange got before the leader's answer began: shared by the
/// request body on its way to the leader ([`ToLeader`]) and the wait for the answer's head.
struct Progress {
    /// When the leader last took a piece of the request body (or the exchange began).
    last: Mutex<Instant>,
    /// Whether the request body waits on the client: the leader is not the one silent.
    client_turn: AtomicBool,
}

impl Progress {
    fn touch(&self) {
        *self.last.lock() = Instant::now();
    }

    /// Resolves once the leader made no progress for `idle` while the forwarder waited on
    /// it (time waiting on the client starts the count again).
    async fn silent_for(&self, idle: Duration) {
        loop {
            let deadline = *self.last.lock() + idle;
            tokio::time::sleep_until(deadline).await;
            if self.client_turn.load(Ordering::Acquire) {
                self.touch();
            } else if *self.last.lock() + idle <= Instant::now() {
                return;
            }
        }
    }
}

/// The request body on its way to the leader: hyper takes a piece only when the
/// connection to the leader can carry it, so a piece taken is the leader's progress.
struct ToLeader {
    inner: Body,
    progress: Arc<Progress>,
}

impl HttpBody for ToLeader {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let waiting_on_client = polled.is_pending();
        self.progress
            .client_turn
            .store(waiting_on_client, Ordering::Release);
        if !waiting_on_client {
            self.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The task driving the connection to the leader, aborted when dropped: a leader that
/// stopped answering would otherwise keep it (and its socket) for as long as TCP lets it.
struct LeaderConnection(tokio::task::JoinHandle<()>);

impl Drop for LeaderConnection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The leader's answer body on its way to the client, cut (an error, which makes hyper
/// close the client's connection) once the leader sent nothing for `idle` while the
/// client waited for more. Time the client takes to read does not count: this body is
/// polled only when the client's connection can take more.
struct FromLeader {
    inner: hyper::body::Incoming,
    idle: Duration,
    /// Runs out `idle` after the wait on the leader began.
    timer: Pin<Box<Sleep>>,
    /// Whether the last poll found nothing (the timer is armed).
    waiting: bool,
    leader: Box<str>,
    /// Ends with the body: also when the client goes away half-way.
    _connection: LeaderConnection,
}

impl HttpBody for FromLeader {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some(suppressed) = crate::throttle::allow("forwarded answer stalled", 0) {
                    tracing::warn!(leader = %this.leader, idle_secs = this.idle.as_secs_f64(), suppressed,
                        "forwarded request: the leader stopped sending its answer; the connection to the client is cut");
                }
                Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the leader at {} sent nothing more of its answer for {} s",
                        this.leader,
                        this.idle.as_secs_f64()
                    ),
                )))))
            }
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `request` on to the leader at `leader` and streams its answer back. The body
/// streams through without being collected: its size and pace are bounded by this node's
/// connection limits and by the leader's own, and the leader's silence by
/// `--forward-idle-secs` (module docs). When the leader cannot be reached (it just
/// died), the request comes back untouched with the reason, to wait for the next leader.
/// `admitted` is how this node admitted its `Host` (`access::check_host`).
pub(super) async fn forward(
    node: &Node,
    lease: &LeaseView,
    mut request: Request,
    admitted: HostAdmitted,
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
    let client = crate::access::peer(request.extensions());
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
    // Except a name this node admitted only as its own (its `--advertise-url` host),
    // which the leader does not know and would refuse: it is the leader's own then, and
    // the leader decides on the rest as this node would have (`origin::readdress`).
    if admitted == HostAdmitted::Advertised {
        if let Ok(leader) = HeaderValue::from_str(&authority) {
            crate::access::origin::readdress(headers, leader);
        }
    }
    if let Ok(from) = HeaderValue::from_str(&node.url) {
        headers.insert(FORWARDED, from);
    }
    // The leader sees this node as the peer: tell it whom this node sees (`peers`).
    match (node.peer_key.read().clone(), client) {
        (Some(key), Some(client)) => super::peers::vouch(&key, headers, client.ip()),
        _ => super::peers::forget(headers),
    }
    *request.uri_mut() =
        Uri::from_maybe_shared(bytes::Bytes::from(path)).unwrap_or_else(|_| Uri::from_static("/"));
    let idle = node.config.forward_idle;
    let progress = Arc::new(Progress {
        last: Mutex::new(Instant::now()),
        client_turn: AtomicBool::new(false),
    });
    let request = request.map(|inner| {
        Body::new(ToLeader {
            inner,
            progress: progress.clone(),
        })
    });
    // The connection's task is aborted on every way out but an answer, which keeps it.
    let answered = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
        let driver = LeaderConnection(tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "forwarded connection ended with an error");
            }
        }));
        Ok::<_, hyper::Error>((sender.send_request(request).await?, driver))
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
        // It still holds its lease, so `moved` never comes.
        _ = progress.silent_for(idle) => {
            return Ok(Error::UpstreamTimeout(format!(
                "the leader at {leader} sent no answer for {} s (--forward-idle-secs) though it \
                 holds its lease; the request may or may not have been done there",
                idle.as_secs_f64()
            ))
            .into_response())
        }
    };
    Ok(match answered {
        Ok((response, connection)) => {
            let mut response = response.map(|inner| {
                Body::new(FromLeader {
                    inner,
                    idle,
                    timer: Box::pin(tokio::time::sleep(idle)),
                    waiting: false,
                    leader: leader.into(),
                    _connection: connection,
                })
            });
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(e) => Error::Unavailable(format!(
            "the leader at {leader} did not answer ({e}); a failover may be under way: retry"
        ))
        .into_response(),
    })
}
