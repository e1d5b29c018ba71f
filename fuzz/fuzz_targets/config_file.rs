//! Fuzz target `config_file`: the properties are in `checks/config_file.rs`, shared with the stable seed
//! replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/config_file.rs"]
mod config_file;

fuzz_target!(|data: &[u8]| config_file::check(data));
