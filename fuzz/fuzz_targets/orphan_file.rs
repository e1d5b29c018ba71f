//! Fuzz target `orphan_file`: the properties are in `checks/orphan_file.rs`, shared with the
//! stable seed replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/orphan_file.rs"]
mod orphan_file;

fuzz_target!(|data: &[u8]| orphan_file::check(data));
