//! Fuzz target `wal_replay`: the properties are in `checks/wal_replay.rs`, shared with the stable seed
//! replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/wal_replay.rs"]
mod wal_replay;

fuzz_target!(|data: &[u8]| wal_replay::check(data));
