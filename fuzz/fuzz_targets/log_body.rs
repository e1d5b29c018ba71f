//! Fuzz target `log_body`: the properties are in `checks/log_body.rs`, shared with the
//! stable seed replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/log_body.rs"]
mod log_body;

fuzz_target!(|data: &[u8]| log_body::check(data));
