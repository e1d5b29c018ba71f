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

/// Every kind of event the log can hold is in some `journal_replay` seed, so the fuzzer
/// starts from a valid record of each and mutates it, instead of having to find a kind's
/// layout by chance (an expiry or a webhook event had none: its fold went unfuzzed).
/// The kinds are `Event`'s own variant names, read from its `Deserialize`: a new kind
/// fails this until a seed holds one.
#[test]
fn every_event_kind_is_in_a_journal_replay_seed() {
    let dir = fuzz_dir().join("seeds").join("journal_replay");
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("the seeds") {
        let data = std::fs::read(entry.expect("an entry").path()).expect("a seed");
        let Some((&flags, mut rest)) = data.split_first() else {
            continue;
        };
        if flags & 1 == 1 {
            continue; // a snapshot and its tail: the record seeds cover every kind
        }
        // Counted only when recovery applies it (and every record before it): a seed whose
        // record is refused stops replay there, and its fold is never reached.
        let mut replay = flinger::journal::Replay::new(std::time::Instant::now());
        let mut lsn = 0;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let len = len.min(rest.len() - 2);
            let chunk = &rest[2..2 + len];
            rest = &rest[2 + len..];
            lsn += 1;
            let Ok(event) = flinger::journal::decode(chunk) else {
                break;
            };
            if replay.record(lsn, chunk).is_err() {
                break;
            }
            seen.insert(event_kind(&event));
        }
    }
    let missing: Vec<_> = event_kinds()
        .into_iter()
        .filter(|kind| !seen.contains(*kind))
        .collect();
    assert!(
        missing.is_empty(),
        "no journal_replay seed holds {missing:?}"
    );
}

/// An event's kind: its variant's name (the single key of its serialised form).
fn event_kind(event: &flinger::model::Event) -> String {
    match serde_json::to_value(event).expect("an event serialises") {
        serde_json::Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
        serde_json::Value::String(unit) => unit,
        other => panic!("an event serialised as {other}"),
    }
}

/// Every variant name of `Event`, as its derived `Deserialize` declares them: a
/// deserializer that answers `deserialize_enum` by keeping the list and failing.
fn event_kinds() -> Vec<&'static str> {
    use serde::de::{self, Visitor};
    #[derive(Debug)]
    struct Listed(&'static [&'static str]);
    impl std::fmt::Display for Listed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Listed {}
    impl de::Error for Listed {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Listed(&[])
        }
    }
    struct Lister;
    impl<'de> de::Deserializer<'de> for Lister {
        type Error = Listed;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Listed> {
            Err(Listed(&[]))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Listed> {
            Err(Listed(variants))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let Err(Listed(kinds)) = <flinger::model::Event as serde::Deserialize>::deserialize(Lister)
    else {
        unreachable!("the lister never yields a value")
    };
    assert!(kinds.len() > 20, "Event's variants: {kinds:?}");
    kinds.to_vec()
}
