//! Response building and request body reading: the one place errors become HTTP.
//!
//! Every error leaves as JSON `{"message": ...}` (422s add `detail`), including the
//! ones axum produces itself (bad path encoding, missing multipart boundary...):
//! [`json_errors`] rewrites any non-JSON error response.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::error::Error;

/// The largest error body [`json_errors`] will read to reuse as a message.
const MAX_ERROR_TEXT: usize = 4096;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            if let Some(suppressed) =
                crate::throttle::allow("request failed", status.as_u16().into())
            {
                tracing::warn!(status = status.as_u16(), error = %self, suppressed, "request failed");
            }
        }
        let body = match &self {
            Error::Validation {
                message,
                field,
                reason,
            } => {
                json!({"message": message, "detail": {"json": {field: [reason]}}})
            }
            other => json!({"message": other.message()}),
        };
        let mut response = json_value(status, &body);
        if matches!(self, Error::Unauthorized(_) | Error::Forbidden(_)) {
            // For `http::front`, which logs a handler's refusal as a security event as
            // access control logs its own: the handler knows why, the front who and where.
            response
                .extensions_mut()
                .insert(Refusal(self.message().into()));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read: the connection cannot carry another
            // request, so say so instead of letting the client write into a closed socket.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Why a response is a 401 or 403 (its `message`), attached by [`Error`]'s
/// `into_response` for the security log (`access::handler_refusal`).
#[derive(Clone, Debug)]
pub struct Refusal(pub Box<str>);

/// `error`'s response, without the [`Refusal`] that would have the front log it: for a
/// handler that logged it itself with more than the front knows (the client id of a
/// token request's Basic header), so one refusal is one line, and throttled as one.
pub fn already_logged(error: Error) -> Response {
    let mut response = error.into_response();
    response.extensions_mut().remove::<Refusal>();
    response
}

/// A JSON response from a value.
pub fn json_value(status: StatusCode, value: &serde_json::Value) -> Response {
    json_bytes(
        status,
        Bytes::from(serde_json::to_vec(value).expect("JSON values serialise")),
    )
}

/// A JSON response from JSON text we already hold (stored documents).
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text 200 (Testflinger answers mutations with `OK`).
pub fn text(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `200 OK` with body `OK`.
pub fn ok() -> Response {
    text("OK")
}

/// `204 No Content` with an empty body (clients test for the empty body).
pub fn no_content() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Reads a whole request body of at most `limit` bytes into its own allocation (so a
/// stored body never pins the connection's read buffer).
///
/// Frame by frame into one buffer sized from `Content-Length` (at most
/// `PRESIZE_LIMIT` up front, so a client that declares much and sends little holds
/// little): one copy of the usual single-frame body, without the list of frames and the
/// trailers map a generic collector builds.
///
/// Past `limit`: 413 `Payload too large: {what} is at most {limit} bytes`, so `what` names
/// the body and where its limit comes from (`"a job document (--max-job-bytes)"`).
pub async fn read_body(request: Request, limit: usize, what: &str) -> Result<Bytes, Error> {
    let too_large = || {
        Error::TooLarge(format!(
            "Payload too large: {what} is at most {limit} bytes"
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let presize = declared.map_or(0, |n| n as usize).min(PRESIZE_LIMIT);
    let mut bytes = Vec::with_capacity(presize);
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| Error::InvalidInput(format!("could not read the request body: {e}")))?;
        // Trailers (a chunked body's) carry no body bytes.
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    // A chunked body grew by doubling: a stored body must not keep the spare room.
    if bytes.capacity() - bytes.len() > SPARE_LIMIT {
        bytes.shrink_to_fit();
    }
    Ok(Bytes::from(bytes))
}

/// The most spare room [`read_body`]'s answer may keep.
const SPARE_LIMIT: usize = 1 << 10;

/// The most [`read_body`] reserves before the bytes arrive, whatever `Content-Length` says.
const PRESIZE_LIMIT: usize = 64 << 10;

/// Any error response that is not JSON (axum's own rejections, 404/405 from routing)
/// becomes `{"message": ...}` with the same status (done by `http::front` for every
/// request).
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match Limited::new(body, MAX_ERROR_TEXT).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text
    };
    let mut rebuilt = json_value(status, &json!({ "message": message }));
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}
