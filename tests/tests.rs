//! flinger's integration tests: one binary, every test over real HTTP against the real `flinger`
//! process (see `util::TestServer`). Run with `cargo test`; to test a binary built elsewhere,
//! build this suite outside the package and set `FLINGER_BIN`.
//!
//! Tests are named `behaviour_when_condition`. Each test starts its own server on a free port
//! over its own temporary data directory, so tests run in parallel and share nothing.

mod util;

/// The journal of every `util::TestServer` here that does not name one: the file log.
/// `tests/on_postgres.rs` runs the same modules on PostgreSQL.
const JOURNAL: util::Journal = util::Journal::File;

// Submitting jobs, reading them back, ids and their spellings, resubmission, size limits.
mod jobs;
// Handing jobs to agents: pop ordering (FIFO, oldest across queues), concurrency, position.
mod pop;
// Cancel action: waiting and running jobs, terminal states, error cases.
mod cancel;
// Result objects: merge, terminal states, validation, limits.
mod results;
// Live output stream: append, read-once, limits.
mod output;
// Artifacts: multipart upload, byte-identical download, replacement, limits.
mod artifacts;
// Agents' advertised queues and images.
mod agents;
// Routing errors, JSON error bodies, and a table of odd requests that must never give 5xx.
mod errors;
// Process level: startup line, --help, SIGTERM, configuration file and precedence.
mod startup;
// Durability: clean restart, SIGKILL, snapshots, and a crash loop under concurrent load.
mod durability;
// Properties: the core against a reference model (fairness, cancel, replay), HTTP, fuzz seeds.
mod props;
// Recovery edge cases: torn tails, corruption, wal dump, disk full, retention, the data-dir lock.
mod recovery;
// Current upstream CLI and agent request sequences replayed end to end (issue 4).
mod clients;
// A disk failing under a running server (fsync and write errors through the WAL's seam).
mod faults;
// Power loss at any instant on a simulated page cache: nothing acknowledged is lost.
mod power;
// Conformance with upstream's clients and tests: trailing slashes, large and per-run logs,
// image data, upstream's submit-time schema, error messages; the real agent and CLI (issue 13).
mod conformance;
// Conformance differences settled: upstream's answer where it is right, through the real
// clients where they are involved.
mod settled;
// Hostile clients: slow bodies, unread responses, endless multipart, odd queue names.
mod hostile;
// Reads beside writes (a search flood), and 503 meaning "not done" (bounded actor doors).
mod isolation;
// Everything kept has a bound or an expiry: orphan data quota and expiry, deleting a job,
// idle queue actors.
mod expiry;
// Lost-agent recovery: silent agents' jobs ended or requeued, the CLI's poll ends (issue 12).
mod lost;
// Long-poll dispatch: waiting agents get jobs the moment they arrive, fairly (issue 12).
mod longpoll;
// Job event webhooks: recorded at once, delivered in order with retries, across restarts,
// bounded (issue 12).
mod webhooks;
// Seeing the server: /metrics after known actions, /openapi.json against the router and
// upstream's document.
mod observe;
// The web dashboard over HTTP and in headless Chromium; the log follow stream.
mod dashboard;
// Access control: roles per endpoint, submission checks, ownership, tokens, real clients.
mod auth;
// The journal on PostgreSQL (`--journal postgres://`): restart, kill -9, snapshots and
// compaction (issue 10).
mod journal_pg;
// Several nodes on one PostgreSQL journal: forwarding, readiness, takeover after kill -9 and
// pauses, nothing acknowledged lost under repeated failovers (issue 10).
mod failover;
// The edges of several nodes: hop-by-hop headers through the forwarder, bounded waits on the
// database (snapshot upload, lease renewal, file store), lease terms that only grow.
mod failover_edges;
