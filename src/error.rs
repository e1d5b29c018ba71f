//! The crate's one error type, and its one mapping to HTTP.
//!
//! Domain code (model, actors, journal) returns these semantic variants; only
//! [`Error::status`] knows which HTTP status each one becomes, and only
//! `http::respond` turns one into a response body. Handlers never build error bodies.

use std::fmt;

/// Every failure the server reports to a client or to `main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed (bad id, bad JSON, missing field): 400.
    InvalidInput(String),
    /// A known field has the wrong type or value: 422 with a `detail` naming the field.
    Validation {
        /// Human summary, e.g. "Validation error".
        message: String,
        /// The offending field (top-level key of the submitted object).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request needs credentials it does not carry (or they expired): 401.
    Unauthorized(String),
    /// The caller may not do this (its credentials do not allow it, or an operator-only
    /// request from elsewhere): 403.
    Forbidden(String),
    /// Too many failed attempts from this client or address: 429.
    TooManyRequests(String),
    /// The route exists but not with this method: 405.
    MethodNotAllowed(String),
    /// The addressed thing does not exist: 404.
    NotFound(String),
    /// The request conflicts with the thing's state (cancel of a finished job): 400,
    /// because that is what Testflinger clients expect.
    Conflict(String),
    /// The thing existed but is gone for this purpose (position of a started job): 410.
    Gone(String),
    /// A body or field is over its configured limit: 413.
    TooLarge(String),
    /// The request line and headers together are over `--max-header-bytes`: 431.
    HeadTooLarge(String),
    /// The client sent its request slower than the configured minimum rate: 408.
    Timeout(String),
    /// The write-ahead log cannot make the mutation durable right now (disk full): 507.
    NoSpace(String),
    /// The server cannot serve the request now (log failed, actor gone, shutting down): 503.
    Unavailable(String),
    /// The node this one forwarded the request to (the leader) stopped answering it: 504.
    /// Unlike a 503, the request may have been done there.
    UpstreamTimeout(String),
    /// A bug or an I/O failure on our side: 500. Never caused by client input.
    Internal(String),
    /// A setting, or what is kept for one (the signing key's file, the data directory),
    /// cannot be used: only the operator can fix it. Found at start-up, `main` exits with
    /// status 2 as for every configuration error; should one ever answer a request, it
    /// is the server's fault: 500.
    Misconfigured(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status for this error: the single place that decides it.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) | Error::Conflict(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::TooManyRequests(_) => 429,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::Gone(_) => 410,
            Error::Timeout(_) => 408,
            Error::TooLarge(_) => 413,
            Error::HeadTooLarge(_) => 431,
            Error::Validation { .. } => 422,
            Error::Internal(_) | Error::Misconfigured(_) => 500,
            Error::Unavailable(_) => 503,
            Error::UpstreamTimeout(_) => 504,
            Error::NoSpace(_) => 507,
        }
    }

    /// The human-readable message (the `message` of the JSON error body).
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidInput(m)
            | Error::NotFound(m)
            | Error::MethodNotAllowed(m)
            | Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::TooManyRequests(m)
            | Error::Conflict(m)
            | Error::Gone(m)
            | Error::TooLarge(m)
            | Error::HeadTooLarge(m)
            | Error::Timeout(m)
            | Error::NoSpace(m)
            | Error::Unavailable(m)
            | Error::UpstreamTimeout(m)
            | Error::Internal(m)
            | Error::Misconfigured(m) => m,
            Error::Validation { message, .. } => message,
        }
    }

    /// A 422 for `field`, in the shape Testflinger's marshmallow errors have.
    pub fn validation(field: &str, reason: impl Into<String>) -> Error {
        Error::Validation {
            message: "Validation error".into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A 422 for a key the body's schema does not declare: marshmallow's `Unknown
    /// field.` under the key (as upstream's `detail`), and a message that names it, so a
    /// client reading only `message` knows which key to drop. `path` is the key, with the
    /// keys and indexes above it for a nested one (`events.0.colour`).
    pub fn unknown_field(path: &str) -> Error {
        Error::Validation {
            message: format!("Validation error: unknown field {path:?}"),
            field: path.into(),
            reason: "Unknown field.".into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Validation { field, reason, .. } => write!(f, "{field}: {reason}"),
            other => f.write_str(other.message()),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            // Not "no space left on device: No space left on device (os error 28)".
            Error::NoSpace(format!("the disk is full: {e}"))
        } else {
            Error::Internal(format!("I/O error: {e}"))
        }
    }
}

impl<T> From<ractor::RactorErr<T>> for Error {
    fn from(e: ractor::RactorErr<T>) -> Self {
        Error::Unavailable(format!("service unavailable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error's message says each thing once: the wrapper adds what the inner error does
    /// not already say.
    #[test]
    fn a_full_disk_is_said_once() {
        let e = Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let text = e.to_string().to_lowercase();
        assert_eq!(text.matches("no space left").count(), 1, "{text}");
    }
}
