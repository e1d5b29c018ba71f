//! The integration suite again, on the PostgreSQL journal: the same test modules as
//! `tests/tests.rs`, compiled into a second binary whose `JOURNAL` makes every
//! `util::TestServer` that names no journal run with `--journal` on a fresh database of the
//! throwaway cluster `util::pg` starts (stopped, and its directory removed, when this binary
//! exits). `cargo test --workspace` runs both binaries, so every change is tested on both
//! journals by one command.
//!
//! Left out, because they are about the file log itself and have nothing to run on
//! PostgreSQL: `recovery` (torn tails, corruption, `wal dump`, a full disk, the data
//! directory's lock), `faults` and `power` (disk failures and power cuts injected through
//! the log's filesystem seam into an in-process server), and `props::core` and
//! `props::fuzz_seeds` (the pure core's properties and fuzz seeds, which touch no journal;
//! `props::http`, the reference model against a server, runs here). `journal_pg` tests the
//! PostgreSQL journal by name and runs in `tests/tests.rs`.

mod util;

/// Every `util::TestServer` here runs on PostgreSQL unless a test names its journal.
const JOURNAL: util::Journal = util::Journal::Postgres;

mod agents;
mod artifacts;
mod auth;
mod cancel;
mod clients;
mod conformance;
mod dashboard;
mod durability;
mod errors;
mod expiry;
mod hostile;
mod isolation;
mod jobs;
mod longpoll;
mod lost;
mod observe;
mod output;
mod pop;
/// The reference model against a server over HTTP (with what it is built from).
#[path = "props"]
mod props {
    // Parts of these serve `props::core`, which runs in `tests/tests.rs` only.
    #[allow(dead_code)]
    mod driver;
    mod http;
    #[allow(dead_code)]
    mod model;
    #[allow(dead_code)]
    mod ops;
}
mod results;
mod settled;
mod startup;
mod webhooks;
