//! Fuzz target `snapshot_registry`: the properties are in `checks/snapshot_registry.rs`, shared
//! with the stable seed replay in `tests/props/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/snapshot_registry.rs"]
mod snapshot_registry;

fuzz_target!(|data: &[u8]| snapshot_registry::check(data));
