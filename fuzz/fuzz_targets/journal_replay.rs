//! Fuzz target `journal_replay`: the properties are in `checks/journal_replay.rs`, shared
//! with the stable seed replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/journal_replay.rs"]
mod journal_replay;

fuzz_target!(|data: &[u8]| journal_replay::check(data));
