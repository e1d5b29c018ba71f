//! The one per-request middleware in front of every route: [`front`].
//!
//! It does, in this order from the outside in, what used to be six layers of their own
//! (five `middleware::from_fn` plus tower-http's `CatchPanic`), each of which boxed a
//! future and cloned the route's boxed service on every request:
//!
//! 1. the debug log line (method, path, status, time taken; skipped unless enabled);
//! 2. the panic guard: a handler that panics is answered 500 `{"message"}` (the line
//!    above still logs it; nothing inside sees the panic's response);
//! 3. the minimum body rate (`transfer`): a body that falls below it is answered 408
//!    with `Connection: close`, whatever the handler answered;
//! 4. error bodies made JSON (`respond::json_errors`), and for a browser's request of a
//!    dashboard page (`dash::PAGES`, accepting `text/html`) an HTML page (`dash::error_page`);
//! 5. request metrics: count and time by route template and method (`Metrics::request`),
//!    from the status the handler (or access control) answered;
//! 6. the `Host` check (`access::check_host`: `--allowed-hosts`, DNS rebinding) for every
//!    request, `OPTIONS` and unrouted paths too; then access control (`access::authorize`)
//!    for requests the router routes (its table has a row for every routed method, so a
//!    404 or 405 is answered without resolving the caller);
//! 7. agent contact for lost-agent recovery (`actors::watch`), only for requests access
//!    control lets through;
//! 8. a handler's own 401 or 403 (a client edit above the caller's role, a priority over
//!    its maximum) logged as a security event, as access control logs its refusals
//!    (`access::handler_refusal`, throttled the same way).
//!
//! It also answers `OPTIONS` on every routed path itself (200, no body, `Allow`), as
//! upstream's Flask does before any view or authentication runs, and gives every 405 of a
//! routed path the same `Allow` (axum's would omit `OPTIONS`). Both come from the route ×
//! role table, which has a row for every routed method (`access::table::allowed`).
//!
//! Access control used to be a `route_layer` of its own, and the OpenAPI document and the
//! body-limit setting two more layers: each layer is one more boxed service cloned and
//! one more future polled on every request and every wake-up of it.
//!
//! What it deliberately does not own: routing, trailing-slash normalisation (`app`),
//! body size limits (each handler's own).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::meta::UNMATCHED;
use super::{respond, transfer, wire};
use crate::access::Requester;
use crate::actors::Services;
use crate::error::Error;
use crate::model::FastSet;

/// What [`front`] needs besides the request: the services, the minimum body rate, and the
/// router's route templates (the only values the `route` label may take).
#[derive(Clone)]
pub struct Front {
    /// The server's actors and metrics.
    pub services: Services,
    /// `--min-transfer-bytes` per `--transfer-window-secs`.
    pub rate: transfer::MinRate,
    /// Every template given to the router, so a request's label is a `&'static str`
    /// (no allocation per request) and can only be one of them or [`UNMATCHED`].
    pub routes: Arc<FastSet<&'static str>>,
}

impl Front {
    /// The `route` label of a request: its matched template, or [`UNMATCHED`] (also for a
    /// template the router was not given through `Routes`, which cannot happen today).
    fn route_label(&self, matched: Option<&MatchedPath>) -> &'static str {
        matched
            .and_then(|m| self.routes.get(m.as_str()).copied())
            .unwrap_or(UNMATCHED)
    }
}

/// The `method` label: a standard method's name, `other` for any extension method (hyper
/// accepts any token as a method, so labelling by the raw method would let a client
/// create series without bound).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => crate::metrics::OTHER,
    }
}

/// The middleware (see the module docs for what it does, in which order).
pub async fn front(State(front): State<Front>, request: Request, next: Next) -> Response {
    let log = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            Instant::now(),
        )
    });
    let response = match AssertUnwindSafe(guarded(&front, request, next))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => Error::Internal("internal error (a bug): the request was not completed".into())
            .into_response(),
    };
    if let Some((method, uri, started)) = log {
        tracing::debug!(%method, %uri, status = response.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    }
    response
}

/// Everything inside the panic guard.
async fn guarded(front: &Front, request: Request, next: Next) -> Response {
    let (request, slow) = transfer::hold_to_rate(front.rate, request);
    let started = Instant::now();
    let route = front.route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let limit = front.services.config.max_header_bytes;
    let head = head_bytes(&request);
    // A browser's request for a page gets its refusals and errors as a page too.
    let page = super::dash::PAGES.contains(&route) && super::dash::wants_html(request.headers());
    // Built only for an OPTIONS or a 405: a walk of the table and a sort is no cost for
    // every request to carry.
    let allow = || {
        (route != UNMATCHED)
            .then(|| crate::access::table::allowed(route))
            .flatten()
    };
    let mut response = if head > limit {
        Error::HeadTooLarge(format!(
            "Request head too large: its request line and headers are {head} bytes, over \
             the limit of {limit} (--max-header-bytes)"
        ))
        .into_response()
    } else if let Err(refused) = crate::access::check_host(&front.services.config, &request) {
        // Before anything answers: a rebinding page may not even learn what is routed.
        refused.into_response()
    } else if let Some(allow) = (request.method() == Method::OPTIONS).then(allow).flatten() {
        options_answer(&allow)
    } else {
        match crate::access::authorize(&front.services, route, request).await {
            Ok(request) => {
                // Only a request access control lets through and its handler accepts
                // counts: a refused one (another credential, no credential) must not keep a
                // lost agent's job alive, nor one its handler refuses: the stock agent
                // retries a refused artifact upload (over --max-artifact-bytes) forever and
                // never reports the job complete, so it is stuck, and its job must end.
                let contact = agent_contact(&front.services, &request);
                // Who and where, for a refusal the handler makes (a client edit above the
                // caller's role, a priority over its maximum): logged as access control
                // logs its own. A reference count and the URI's shared bytes, not copies.
                let asked = (
                    request.uri().clone(),
                    request.extensions().get::<Requester>().cloned(),
                );
                let response = next.run(request).await;
                if let Some(id) = contact.filter(|_| response.status().is_success()) {
                    front.services.watch.heard(id, crate::actors::now());
                }
                if let Some(respond::Refusal(why)) = response.extensions().get() {
                    let (uri, requester) = asked;
                    let requester = requester.unwrap_or_default();
                    crate::access::handler_refusal(
                        requester.caller.as_ref(),
                        method,
                        uri.path(),
                        requester.peer,
                        response.status().as_u16(),
                        why,
                    );
                }
                response
            }
            Err(refused) => refused,
        }
    };
    if let Some(allow) = (response.status() == StatusCode::METHOD_NOT_ALLOWED)
        .then(allow)
        .flatten()
    {
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    front
        .services
        .metrics
        .request(route, method, response.status().as_u16(), started.elapsed());
    let mut response = respond::json_errors(response).await;
    if page {
        response = super::dash::error_page(response).await;
    }
    match slow {
        Some(slow) if slow.timed_out() => slow.response(),
        _ => response,
    }
}

/// The answer to `OPTIONS` on a routed path: 200, no body, and the methods it allows.
fn options_answer(allow: &str) -> Response {
    let mut response = StatusCode::OK.into_response();
    if let Ok(allow) = HeaderValue::from_str(allow) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// The request's head as HTTP/1.1 sends it: `METHOD target HTTP/1.1` (the target as
/// routed: a trailing slash is trimmed before this layer), each `name: value`, each
/// line's CRLF and the blank line. hyper's read buffer (`max_buf_size`) bounds what a
/// connection holds, but only roughly: a head that arrives in one read completes before
/// the buffer is checked, so one well over the limit could pass; this makes
/// `--max-header-bytes` exact.
fn head_bytes(request: &Request) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let line = request.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// The job `request` is agent contact about, for lost-agent recovery (`actors::watch`;
/// noted once the request is answered with a 2xx): any POST about a job's result (state,
/// result fields, log fragments, output, artifact), a download of its attachments, and
/// any request about a job that carries an agent's `agent_name` cookie (the stock agent
/// checks `GET /v1/result/<id>` every 10 s while a command runs), from the job's agent
/// credential when access control is on. Clients without the cookie reading a result
/// (the CLI's `poll`) do not count.
fn agent_contact(svc: &Services, request: &Request) -> Option<crate::model::JobId> {
    let path = request.uri().path();
    let about = path
        .strip_prefix("/v1/result/")
        .map(|rest| (rest, true))
        .or_else(|| path.strip_prefix("/v1/job/").map(|rest| (rest, false)));
    if let Some((rest, result)) = about {
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let contact = (result && request.method() == Method::POST)
            || (tail == "attachments" && request.method() == Method::GET)
            || wire::agent_cookie(request.headers()).is_some();
        if contact {
            if let Ok(id) = wire::path_id(id) {
                if from_its_agent(svc, request, id) {
                    return Some(id);
                }
            }
        }
    }
    None
}

/// Whether `request` may count as contact from job `id`'s agent: from its agent
/// credential when access control is on (`access::is_job_agent`; anyone may read a result
/// with an `agent_name` cookie, and must not keep a dead agent's job alive that way).
fn from_its_agent(svc: &Services, request: &Request, id: crate::model::JobId) -> bool {
    request
        .extensions()
        .get::<crate::access::Requester>()
        .and_then(|r| r.caller.as_ref())
        .is_some_and(|caller| crate::access::is_job_agent(svc, caller, id))
}
