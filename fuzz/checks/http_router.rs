//! `http_router`: arbitrary requests through `flinger::http::router` (via `super::server`).
//! Shared by the fuzz target and the stable seed replay.
//!
//! Input: byte 0 picks the method, byte 1 the route, byte 2 the id written into it (a job that
//! exists, in one of many spellings, or fuzz text); the rest, split at 0x00, is the free path
//! segment, the query, the headers (`name: value` lines) and the body.
//! Properties:
//! - no request gets a 5xx (a panic in a handler would be a 500) or breaks the response body;
//! - every error answer is JSON with a string `message`, as Testflinger clients expect.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use serde_json::Value;

use super::server::{spell, Server};

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW",
];

/// Every route of the API; `{id}` is replaced by the id pick, `{seg}` by the free segment.
const ROUTES: &[&str] = &[
    "/",
    "/v1",
    "/v1/",
    "/v1/job",
    "/v1/job/search",
    "/v1/job/{id}",
    "/v1/job/{id}/attachments",
    "/v1/job/{id}/position",
    "/v1/job/{id}/action",
    "/v1/result/{id}",
    "/v1/result/{id}/output",
    "/v1/result/{id}/artifact",
    "/v1/result/{id}/log/{seg}",
    "/v1/agents/queues",
    "/v1/agents/images",
    "/v1/agents/images/{seg}",
    "/v1/agents/data",
    "/v1/agents/data/{seg}",
    "/v1/agents/provision_logs/{seg}",
    "/v1/queues/wait_times",
    "/v1/queues/{seg}/agents",
    "/v1/queues/{seg}/jobs",
    "/{seg}",
];

/// Percent-encodes what cannot appear raw in a URI; `keep` are extra bytes kept as they are.
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        let plain =
            b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b) || keep.contains(&b);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn request(server: &Server, data: &[u8]) -> Option<Request<Body>> {
    let [method, route, pick, rest @ ..] = data else {
        return None;
    };
    let mut fields = rest.splitn(4, |&b| b == 0);
    let segment = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let headers = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default().to_vec();

    let method = Method::from_bytes(METHODS[*method as usize % METHODS.len()].as_bytes()).ok()?;
    let pick = *pick as usize;
    let id = match pick % 8 {
        0..=3 => spell(server.jobs[pick % server.jobs.len()], pick / 8),
        4 => spell(flinger::model::JobId::random(), pick / 8),
        _ => encode(segment, b""),
    };
    let segment = encode(segment, b"/");
    let mut uri = ROUTES[*route as usize % ROUTES.len()]
        .replace("{id}", &id)
        .replace("{seg}", &segment);
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&encode(query, b"/?"));
    }
    let uri: Uri = uri.parse().ok()?;

    let mut builder = Request::builder().method(method).uri(uri);
    for line in headers.split(|&b| b == b'\n').take(16) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        // hyper would have framed the body by these; in-process, the body is what it is.
        if name == "content-length" || name == "transfer-encoding" {
            continue;
        }
        builder = builder.header(name, value);
    }
    builder = builder.header("content-length", body.len());
    builder.body(Body::from(body)).ok()
}

pub fn check(server: &Server, data: &[u8]) {
    let Some(request) = request(server, data) else {
        return;
    };
    let what = format!("{} {}", request.method(), request.uri());
    let head = request.method() == Method::HEAD;
    let answer = server.send(request);
    let preview = String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).into_owned();
    assert!(
        answer.status.as_u16() < 500,
        "{what}: {} {preview}",
        answer.status
    );
    if answer.status.as_u16() >= 400 && !head {
        let json = answer
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        assert!(
            json,
            "{what}: {} error is not JSON: {preview}",
            answer.status
        );
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("message").cloned());
        assert!(
            matches!(message, Some(Value::String(_))),
            "{what}: {} error without a message: {preview}",
            answer.status
        );
    }
}
