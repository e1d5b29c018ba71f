//! flinger: a Testflinger-compatible test-job server.
//!
//! Code map (see README's Architecture section for the bird's-eye view):
//! - [`alloc`]: mimalloc as the binary's global allocator, without the aligned path for
//!   ordinary alignments.
//! - [`config`]: flags, environment and the Testflinger config file → one `Config`.
//! - [`error`]: the crate's error enum and its one mapping to HTTP status codes.
//! - [`model`]: the pure core — ids, job lifecycle, queue order, events, the fold.
//! - [`journal`]: events ↔ WAL records, group commit, snapshots, recovery.
//! - [`actors`]: the supervisor and the registry, queue, result, artifact, agents actors.
//! - [`access`]: access control as one layer: callers, the route × role table, tokens.
//! - [`dispatch`]: handing jobs to agents: the pop protocol and long-poll waiters.
//! - [`http`]: routes and handlers; `http::wire` (with `http::schema`, upstream's job schema
//!   as data) is the only place that knows the JSON.
//! - [`metrics`]: the Prometheus metrics behind `GET /metrics`.
//! - [`server`]: listener, connection handling, graceful shutdown, wiring.
//! - [`ha`]: several nodes on the PostgreSQL journal: role loop, forwarding, readiness.
//! - [`throttle`]: rate-limited log lines for what clients and faults can repeat.
//! - [`turns`]: fair turns for expensive reads (`--max-searches`), by client address.
//!
//! Architecture invariants:
//! - `model` does no I/O and reads no clock; everything it needs is in its inputs.
//! - Every mutation is an `Event`, appended to the journal before it is applied, and
//!   acknowledged to the client only once durable.
//! - Live writes and start-up replay apply events through the same fold.

pub mod access;
pub mod actors;
pub mod alloc;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod ha;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod server;
pub mod throttle;
pub mod turns;

pub use error::{Error, Result};
