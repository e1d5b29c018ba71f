//! Property tests: the scheduler, the job lifecycle and the event log checked against a
//! reference model on random operation sequences, plus the committed fuzz seeds replayed on
//! stable Rust.
//!
//! - `model`: the reference model, plain and obviously correct.
//! - `driver`: the real pure core (`Registry` + one `QueueIndex` per queue) driven like the actors.
//! - `ops`: operations, their generation, and the runner comparing both sides step by step.
//! - `core`: one proptest per property, over the pure core (thousands of operations, no I/O).
//! - `http`: the same model against a real server process over HTTP (a few hundred operations).
//! - `fuzz_seeds`: every file under `fuzz/seeds/<target>/` through that target's check.
//!
//! Regressions are stored under `tests/proptest-regressions/` (see `ops::config`).

mod core;
mod driver;
mod fuzz_seeds;
mod http;
mod model;
mod ops;
