//! Fuzz target `http_router`: the properties are in `checks/http_router.rs`, shared with the stable seed
//! replay in `tests/props/fuzz_seeds.rs`. One server core per process, started on first use,
//! its data under `fuzz/target/fuzz-data/` (ignored, removed by `cargo clean`).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../checks/http_router.rs"]
mod http_router;
#[path = "../checks/server.rs"]
mod server;

fn server() -> &'static server::Server {
    static SERVER: OnceLock<server::Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-data");
        server::Server::start(Some(&base))
    })
}

fuzz_target!(|data: &[u8]| http_router::check(server(), data));
