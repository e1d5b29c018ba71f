//! Fuzz target `job_json`: the properties are in `checks/job_json.rs`, shared with the stable seed
//! replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/job_json.rs"]
mod job_json;

fuzz_target!(|data: &[u8]| job_json::check(data));
