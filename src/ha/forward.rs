//! Forwarding a request from a standby to the leader: the request streamed on with its
//! method, headers and body, the answer streamed back, less the headers of one hop in
//! either direction; a leader that cannot be reached sends the request back to wait for
//! the next one.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Node, Role};
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

/// Sends `request` on to the leader at `leader` and streams its answer back. The body
/// streams through without being collected: its size and pace are bounded by this node's
/// connection limits and by the leader's own. When the leader cannot be reached (it just
/// died), the request comes back untouched with the reason, to wait for the next leader.
pub(super) async fn forward(
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
