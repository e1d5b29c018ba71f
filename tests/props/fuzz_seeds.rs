//! The committed fuzz seeds (`fuzz/seeds/<target>/*`) replayed through the same checks the
//! cargo-fuzz targets run (`fuzz/checks/<target>.rs`), on stable Rust and without libFuzzer, so
//! a decoder or handler regression fails `cargo test` even where nightly is not installed.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks/config_file.rs"]
mod config_file;
#[path = "../../fuzz/checks/http_router.rs"]
mod http_router;
#[path = "../../fuzz/checks/job_json.rs"]
mod job_json;
#[path = "../../fuzz/checks/journal_replay.rs"]
mod journal_replay;
#[path = "../../fuzz/checks/log_body.rs"]
mod log_body;
#[path = "../../fuzz/checks/multipart_artifact.rs"]
mod multipart_artifact;
#[path = "../../fuzz/checks/orphan_file.rs"]
mod orphan_file;
#[path = "../../fuzz/checks/server.rs"]
mod server;
#[path = "../../fuzz/checks/snapshot_registry.rs"]
mod snapshot_registry;
#[path = "../../fuzz/checks/wal_frame.rs"]
mod wal_frame;
#[path = "../../fuzz/checks/wal_replay.rs"]
mod wal_replay;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Feeds every seed of `target` to `check`, naming the file when one fails.
fn replay(target: &str, mut check: impl FnMut(&[u8])) {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("read a seed");
        eprintln!("seed {}", file.display());
        check(&data);
    }
}

#[test]
fn wal_frame_seeds_hold_the_fuzz_properties() {
    replay("wal_frame", wal_frame::check);
}

#[test]
fn wal_replay_seeds_hold_the_fuzz_properties() {
    replay("wal_replay", wal_replay::check);
}

#[test]
fn job_json_seeds_hold_the_fuzz_properties() {
    replay("job_json", job_json::check);
}

#[test]
fn journal_replay_seeds_hold_the_fuzz_properties() {
    replay("journal_replay", journal_replay::check);
}

#[test]
fn log_body_seeds_hold_the_fuzz_properties() {
    replay("log_body", log_body::check);
}

#[test]
fn orphan_file_seeds_hold_the_fuzz_properties() {
    replay("orphan_file", orphan_file::check);
}

#[test]
fn snapshot_registry_seeds_hold_the_fuzz_properties() {
    replay("snapshot_registry", snapshot_registry::check);
}

#[test]
fn config_file_seeds_hold_the_fuzz_properties() {
    replay("config_file", config_file::check);
}

/// One test for both HTTP targets: the core registers its actors by name, so a process runs
/// one core at a time.
#[test]
fn http_router_and_multipart_artifact_seeds_hold_the_fuzz_properties() {
    let server = server::Server::start(None);
    replay("http_router", |data| http_router::check(&server, data));
    replay("multipart_artifact", |data| {
        multipart_artifact::check(&server, data)
    });
}

/// Every target in `fuzz/Cargo.toml` has a check and committed seeds, so none is left out of
/// the replay above.
#[test]
fn every_fuzz_target_has_seeds_and_a_shared_check() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"'))
        })
        .collect();
    assert_eq!(targets.len(), 10, "targets: {targets:?}");
    for target in targets {
        assert!(
            fuzz_dir()
                .join("checks")
                .join(format!("{target}.rs"))
                .is_file(),
            "no check for {target}"
        );
        let seeds = fuzz_dir().join("seeds").join(target);
        assert!(
            std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some()),
            "no seeds for {target}"
        );
    }
}
