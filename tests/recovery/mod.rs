//! Recovery edge cases over the real binary, with the log damaged by hand between runs: a torn
//! tail is truncated with a warning, damage before the tail refuses to start (or is cut on the
//! operator's explicit flag), a checksum-valid record that does not decode is never truncated,
//! `flinger wal dump` reads a live log, a full disk answers 507/503 and recovers, the data
//! directory a config file names is the one created, and a second server cannot open a
//! locked data directory.
//!
//! File log only (`tests/on_postgres.rs` leaves this module out): every test here damages,
//! fills, dumps or locks the log's files in the data directory, which the PostgreSQL journal
//! does not have.
//!
//! The log is read and written here from the byte format documented in the `wal` crate
//! (segment header of 32 bytes, then records `len u32 | crc32c u32 | lsn u64 | payload`), with
//! its own CRC-32C, so these tests do not trust the server's codec to check itself.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::util::{pseudo_random_bytes, run_to_exit, Opts, TestServer, SMALL_SEGMENTS};

mod disk;

const SEGMENT_HEADER: usize = 32;
const RECORD_HEADER: usize = 16;

// ---- the on-disk format, independently -----------------------------------------------------

/// CRC-32C (Castagnoli), bitwise, reflected polynomial 0x82F63B78.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// One record found in a segment.
#[derive(Debug, Clone)]
struct Rec {
    /// Offset of its 16-byte header in the file.
    offset: usize,
    /// Payload length.
    len: usize,
    lsn: u64,
}

impl Rec {
    fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.offset + RECORD_HEADER..self.offset + RECORD_HEADER + self.len]
    }
    fn end(&self) -> usize {
        self.offset + RECORD_HEADER + self.len
    }
}

/// Walks a cleanly written segment: checks the header, every record's CRC and consecutive LSNs,
/// and returns the records and the offset where data ends (the all-zero header or EOF).
#[track_caller]
fn parse_segment(buf: &[u8]) -> (Vec<Rec>, usize) {
    assert!(
        buf.len() >= SEGMENT_HEADER,
        "segment shorter than its header"
    );
    assert_eq!(&buf[0..8], b"FLNGRWAL", "segment magic");
    assert_eq!(
        u32::from_le_bytes(buf[24..28].try_into().unwrap()),
        crc32c(&[&buf[0..24]]),
        "segment header crc (is the test's CRC-32C right?)"
    );
    let first_lsn = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    let mut recs = Vec::new();
    let mut off = SEGMENT_HEADER;
    while off + RECORD_HEADER <= buf.len() {
        let head = &buf[off..off + RECORD_HEADER];
        if head.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap());
        let lsn = u64::from_le_bytes(head[8..16].try_into().unwrap());
        assert!(
            len >= 1 && off + RECORD_HEADER + len <= buf.len(),
            "record at {off}: bad len {len}"
        );
        let payload = &buf[off + RECORD_HEADER..off + RECORD_HEADER + len];
        assert_eq!(
            crc,
            crc32c(&[&head[0..4], &head[8..16], payload]),
            "record at {off}: crc"
        );
        assert_eq!(lsn, first_lsn + recs.len() as u64, "record at {off}: lsn");
        recs.push(Rec {
            offset: off,
            len,
            lsn,
        });
        off += RECORD_HEADER + len;
    }
    (recs, off)
}

/// The segment files under `<data>/wal/`, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .expect("read wal dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    assert!(!segs.is_empty(), "no segments under {}", data_dir.display());
    segs
}

fn newest_segment(data_dir: &Path) -> PathBuf {
    segments(data_dir).pop().unwrap()
}

/// Writes `bytes` at `offset` of `path` in place (no truncation), and syncs.
fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment for writing");
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// A framed record: `len | crc32c(len ‖ lsn ‖ payload) | lsn | payload`.
fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let lsn = lsn.to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32c(&[&len, &lsn, payload]).to_le_bytes());
    out.extend_from_slice(&lsn);
    out.extend_from_slice(payload);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- process helpers ---------------------------------------------------------------------

/// Stderr lines of the server from index `from` on (lines of the current incarnation).
fn lines_since(srv: &TestServer, from: usize) -> Vec<String> {
    srv.stderr_lines().into_iter().skip(from).collect()
}

/// Runs a server on `data_dir` that is expected to refuse to start; returns its stderr.
#[track_caller]
fn refused_start(cwd: &Path, data_dir: &Path, extra: &[&str]) -> String {
    let data = data_dir.display().to_string();
    let mut args = vec!["--bind", "127.0.0.1:0", "--data-dir", data.as_str()];
    args.extend_from_slice(extra);
    let out = run_to_exit(cwd, &args, &[], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the server should refuse to start, but exited with {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains(" listening "),
        "the server reported listening although it should refuse:\n{stderr}"
    );
    stderr
}

/// A new server over an existing data directory, with its own arguments.
fn start_on(data_dir: &Path, args: &[&str]) -> TestServer {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--data-dir".into());
    all.push(data_dir.display().to_string());
    TestServer::start_opts(Opts {
        args: all,
        omit_data_dir: true,
        ..Opts::default()
    })
}

/// Every number `N` written as `offset N` or `offset=N` in `text`.
fn offsets_in(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("offset") {
        let rest = text[i + "offset".len()..].trim_start_matches([' ', '=', ':']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// The torn-tail warning among `lines`, if there is one.
fn truncation_warning(lines: &[String]) -> Option<&String> {
    lines.iter().find(|l| {
        let lower = l.to_lowercase();
        lower.contains("warn") && (lower.contains("torn") || lower.contains("truncat"))
    })
}

async fn assert_jobs(srv: &TestServer, ids: &[String], status: u16, when: &str) {
    for id in ids {
        let r = srv.get(&format!("/v1/job/{id}")).await;
        assert_eq!(
            r.status,
            status,
            "{when}: GET /v1/job/{id}: body {:?}",
            r.text_preview()
        );
    }
}

// ---- 1. torn tail ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn torn_tail_is_truncated_with_warning_when_garbage_or_partial_record_follows_last_record() {
    let mut srv = TestServer::start_with(SMALL_SEGMENTS);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(srv.submit(&json!({"job_queue": "torn", "n": i})).await);
    }
    assert!(srv.stop().success());

    // Round 1: a few garbage bytes right after the last record (last byte non-zero, so every
    // torn byte counts).
    let seg = newest_segment(&srv.data_dir());
    let (recs, end) = parse_segment(&std::fs::read(&seg).unwrap());
    assert_eq!(recs.len(), 5, "one record per submitted job");
    let garbage = b"\x5a\xa5torn!\x01";
    write_at(&seg, end, garbage);
    // `wal dump` reports it as a torn tail, with its own exit status.
    let data_text = srv.data_dir().display().to_string();
    let out = run_to_exit(
        srv.dir(),
        &["wal", "dump", &data_text],
        &[],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "a torn tail exits 3:\n{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with('#') && l.contains("torn tail")),
        "{stdout}"
    );
    let from = srv.stderr_lines().len();
    srv.start_again();
    let lines = lines_since(&srv, from);
    let warning = truncation_warning(&lines).unwrap_or_else(|| {
        panic!(
            "no torn-tail warning after garbage at the tail:\n{}",
            lines.join("\n")
        )
    });
    assert!(
        warning
            .split_whitespace()
            .any(|t| t == format!("bytes={}", garbage.len())),
        "the warning should count the {} torn bytes: {warning}",
        garbage.len()
    );
    assert_jobs(&srv, &ids, 200, "after the first torn tail").await;
    // The log goes on after the cut: new records land where the torn bytes were.
    for i in 5..8 {
        ids.push(srv.submit(&json!({"job_queue": "torn", "n": i})).await);
    }
    assert!(srv.stop().success());

    // Round 2: a partial record (a plausible header for the next LSN, half its payload).
    let seg = newest_segment(&srv.data_dir());
    let buf = std::fs::read(&seg).unwrap();
    let (recs, end) = parse_segment(&buf);
    assert_eq!(
        recs.len(),
        8,
        "the log after the first cut holds all 8 jobs"
    );
    let next = recs.last().unwrap().lsn + 1;
    let mut partial = frame(next, &[0x77; 40]);
    partial.truncate(RECORD_HEADER + 20);
    write_at(&seg, end, &partial);
    let from = srv.stderr_lines().len();
    srv.start_again();
    let lines = lines_since(&srv, from);
    let warning = truncation_warning(&lines).unwrap_or_else(|| {
        panic!(
            "no torn-tail warning after a partial record:\n{}",
            lines.join("\n")
        )
    });
    assert!(
        warning
            .split_whitespace()
            .any(|t| t == format!("bytes={}", partial.len())),
        "the warning should count the {} torn bytes: {warning}",
        partial.len()
    );
    assert_jobs(&srv, &ids, 200, "after the second torn tail").await;

    // A clean restart after that finds nothing to truncate.
    let from = srv.stderr_lines().len();
    assert!(srv.restart().success());
    let lines = lines_since(&srv, from);
    assert!(
        truncation_warning(&lines).is_none(),
        "a clean log was reported torn:\n{}",
        lines.join("\n")
    );
    assert_jobs(&srv, &ids, 200, "after a clean restart").await;
}

// ---- 2. corruption before the tail ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn start_is_refused_or_cut_on_flag_when_an_early_record_is_corrupt() {
    let mut srv = TestServer::start_with(SMALL_SEGMENTS);
    let markers: Vec<String> = (0..6)
        .map(|i| format!("marker-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    let mut ids = Vec::new();
    for m in &markers {
        ids.push(
            srv.submit(&json!({"job_queue": "corrupt", "marker": m}))
                .await,
        );
    }
    assert!(srv.stop().success());
    let data = srv.data_dir();
    let seg = newest_segment(&data);
    let seg_name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let mut buf = std::fs::read(&seg).unwrap();
    let (recs, _) = parse_segment(&buf);
    assert_eq!(recs.len(), 6, "one record per submitted job");
    // Damage the record of job 2, leaving valid records 3..5 after it.
    let victim = recs
        .iter()
        .find(|r| find(r.payload(&buf), markers[2].as_bytes()).is_some())
        .expect("a record carries job 2's marker")
        .clone();
    assert!(
        victim.end() < recs.last().unwrap().end(),
        "the damaged record is not the last"
    );
    let flip = victim.offset
        + RECORD_HEADER
        + find(victim.payload(&buf), markers[2].as_bytes()).unwrap()
        + 3;
    buf[flip] ^= 0xff;
    write_at(&seg, flip, &buf[flip..flip + 1]);

    let stderr = refused_start(srv.dir(), &data, SMALL_SEGMENTS);
    assert!(
        stderr.contains(&seg_name),
        "the error should name the segment {seg_name}:\n{stderr}"
    );
    let offsets = offsets_in(&stderr);
    assert!(
        offsets
            .iter()
            .any(|&o| o as usize >= victim.offset && o as usize <= flip),
        "the error should name the damaged offset (record at {}, byte {flip}); offsets named: {offsets:?}\n{stderr}",
        victim.offset
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        buf,
        "a refused start must leave the segment as it was"
    );

    // The operator opts in: the log is cut at the damage.
    let mut args = SMALL_SEGMENTS.to_vec();
    args.push("--wal-truncate-corruption");
    let mut cut = start_on(&data, &args);
    assert_jobs(&cut, &ids[..2], 200, "records before the damage").await;
    assert_jobs(&cut, &ids[2..], 204, "records from the damage on").await;
    for id in &ids[..2] {
        assert_eq!(cut.job_state(id).await, "waiting");
    }
    let lines = cut.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.to_lowercase().contains("warn") && l.to_lowercase().contains("truncat")),
        "the cut should be logged as a warning:\n{}",
        lines.join("\n")
    );
    // The log carries on after the cut, and the cut itself is durable: a strict server opens it.
    let after = cut
        .submit(&json!({"job_queue": "corrupt", "marker": "after the cut"}))
        .await;
    assert!(cut.stop().success());
    drop(cut);
    let strict = start_on(&data, SMALL_SEGMENTS);
    assert_jobs(&strict, &ids[..2], 200, "strict restart after the cut").await;
    assert_jobs(&strict, &ids[2..], 204, "strict restart after the cut").await;
    assert_jobs(&strict, &[after], 200, "a job submitted after the cut").await;
}

/// The record holding `marker`, in whichever segment of `data_dir` it is: the segment, its
/// bytes and the record.
fn record_with(data_dir: &Path, marker: &str) -> (PathBuf, Vec<u8>, Rec) {
    for seg in segments(data_dir) {
        let buf = std::fs::read(&seg).unwrap();
        let (recs, _) = parse_segment(&buf);
        if let Some(r) = recs
            .iter()
            .find(|r| find(r.payload(&buf), marker.as_bytes()).is_some())
        {
            let r = r.clone();
            return (seg, buf, r);
        }
    }
    panic!("no record carries {marker}");
}

/// Valid records in every segment of `data_dir` with an LSN above `lsn`.
fn records_after(data_dir: &Path, lsn: u64) -> usize {
    segments(data_dir)
        .iter()
        .map(|seg| {
            let (recs, _) = parse_segment(&std::fs::read(seg).unwrap());
            recs.iter().filter(|r| r.lsn > lsn).count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn refusal_names_the_repair_and_what_it_discards_and_the_repair_keeps_stored_files_when_valid_records_follow_corruption(
) {
    let mut srv = TestServer::start_with(SMALL_SEGMENTS);
    let markers: Vec<String> = (0..6)
        .map(|i| format!("marker-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    let mut ids = Vec::new();
    for m in &markers {
        ids.push(srv.submit(&json!({"job_queue": "cut", "marker": m})).await);
    }
    // Two artifacts, recorded after the record that will be damaged.
    for (n, id) in ids[3..5].iter().enumerate() {
        srv.post_multipart(
            &format!("/v1/result/{id}/artifact"),
            "file",
            "a.tgz",
            pseudo_random_bytes(5000, n as u64),
        )
        .await
        .expect_status(200);
    }
    let mut stored = srv.stored_files();
    stored.sort();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(srv.stop().success());
    let data = srv.data_dir();
    let data_text = data.display().to_string();
    // Damage the record of job 1: every later record is still checksum-valid.
    let (seg, mut buf, victim) = record_with(&data, &markers[1]);
    let valid_after = records_after(&data, victim.lsn);
    let flip = victim.offset
        + RECORD_HEADER
        + find(victim.payload(&buf), markers[1].as_bytes()).unwrap()
        + 3;
    buf[flip] ^= 0xff;
    write_at(&seg, flip, &buf[flip..flip + 1]);
    assert!(
        valid_after >= 6,
        "jobs 2..5 and two artifacts: {valid_after}"
    );
    let counted = format!("{valid_after} valid records");

    let stderr = refused_start(srv.dir(), &data, SMALL_SEGMENTS);
    for wanted in [
        "--wal-truncate-corruption",
        counted.as_str(),
        "--past-damage",
    ] {
        assert!(
            stderr.contains(wanted),
            "the refusal should say {wanted:?}:\n{stderr}"
        );
    }

    // `wal dump` says the same, exits 4, and lists the records past the damage on request.
    let out = run_to_exit(
        srv.dir(),
        &["wal", "dump", &data_text],
        &[],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(4), "corruption exits 4:\n{stdout}");
    assert!(
        !stdout.contains("ScanReport") && !stdout.contains("Some("),
        "{stdout}"
    );
    let summary: Vec<&str> = stdout.lines().filter(|l| l.starts_with('#')).collect();
    let summary = summary.join("\n");
    for wanted in [
        "corruption",
        counted.as_str(),
        "--past-damage",
        "refuses to start",
    ] {
        assert!(
            summary.contains(wanted),
            "the summary should say {wanted:?}:\n{summary}"
        );
    }
    let out = run_to_exit(
        srv.dir(),
        &["wal", "dump", "--past-damage", &data_text],
        &[],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    let past = stdout
        .lines()
        .filter(|l| l.contains(" past-damage "))
        .count();
    assert_eq!(
        past, valid_after,
        "every valid record past the damage:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" past-damage ") && l.contains(&ids[5])),
        "{stdout}"
    );

    let mut args = SMALL_SEGMENTS.to_vec();
    args.push("--wal-truncate-corruption");
    let cut = start_on(&data, &args);
    assert_jobs(&cut, &ids[..1], 200, "records before the damage").await;
    assert_jobs(&cut, &ids[1..], 204, "records from the damage on").await;
    let lines = cut.stderr_lines();
    let warning = truncation_warning(&lines)
        .unwrap_or_else(|| panic!("no truncation warning:\n{}", lines.join("\n")));
    assert!(
        warning.contains("corruption") && !warning.contains("torn"),
        "a cut at corruption is not a torn tail: {warning}"
    );
    assert!(
        warning
            .split_whitespace()
            .any(|t| t == format!("records={valid_after}")),
        "the warning counts the {valid_after} valid records discarded: {warning}"
    );
    // The artifacts' files are kept aside, named in the log, not deleted.
    let mut kept: Vec<String> = std::fs::read_dir(data.join("lost+found"))
        .expect("a lost+found folder in the data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, stored, "both artifact files kept");
    let left: Vec<_> = std::fs::read_dir(data.join("files"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for name in &stored {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("lost+found") && l.contains(name.as_str())),
            "the log names {name}:\n{}",
            lines.join("\n")
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("removed unreferenced") && l.contains(name.as_str())),
            "{name} removed:\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreferenced_files_are_kept_when_a_start_crashed_between_a_cut_at_corruption_and_its_sweep(
) {
    let mut srv = TestServer::start();
    let job = srv.submit_to("keep").await;
    srv.post_multipart(
        &format!("/v1/result/{job}/artifact"),
        "file",
        "a.tgz",
        pseudo_random_bytes(2000, 3),
    )
    .await
    .expect_status(200);
    assert!(srv.stop().success());
    let data = srv.data_dir();
    // What a start with --wal-truncate-corruption leaves when killed after its cut and
    // before its sweep: the marker, and a file no remaining record refers to.
    let stray = "0b1e1a4e-0000-4000-8000-000000000000.artifact.lost";
    std::fs::write(data.join("files").join(stray), b"recover me").unwrap();
    std::fs::write(data.join("lost+found.pending"), b"").unwrap();
    let from = srv.stderr_lines().len();
    srv.start_again();
    let lines = lines_since(&srv, from);
    assert_eq!(
        std::fs::read(data.join("lost+found").join(stray))
            .ok()
            .as_deref(),
        Some(&b"recover me"[..]),
        "kept, not deleted:\n{}",
        lines.join("\n")
    );
    assert!(
        !data.join("lost+found.pending").exists(),
        "the marker is gone once the files are kept"
    );
    srv.get(&format!("/v1/result/{job}/artifact"))
        .await
        .expect_status(200);
    // The next start sweeps as usual again.
    std::fs::write(data.join("files").join(stray), b"x").unwrap();
    assert!(srv.restart().success());
    assert!(!data.join("files").join(stray).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_stored_files_answer_410_naming_the_job_and_are_logged_once_and_at_start_up() {
    let mut srv = TestServer::start();
    let job = srv
        .submit(&json!({"job_queue": "gone", "test_data": {"attachments": [{"agent": "a.bin"}]}}))
        .await;
    let artifact = format!("/v1/result/{job}/artifact");
    let attachments = format!("/v1/job/{job}/attachments");
    for path in [&attachments, &artifact] {
        srv.post_multipart(path, "file", "a.tgz", pseudo_random_bytes(3000, 5))
            .await
            .expect_status(200);
    }
    let stored = srv.stored_files();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(srv.stop().success());
    std::fs::remove_dir_all(srv.data_dir().join("files")).unwrap();
    let from = srv.stderr_lines().len();
    srv.start_again();

    let lines = lines_since(&srv, from);
    let summary: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("missing"))
        .collect();
    assert_eq!(summary.len(), 1, "one start-up line:\n{}", lines.join("\n"));
    assert!(
        summary[0].contains("count=2") && stored.iter().all(|n| summary[0].contains(n.as_str())),
        "it counts and names the missing files: {}",
        summary[0]
    );

    for (path, what) in [(&artifact, "artifact"), (&attachments, "attachments")] {
        for _ in 0..5 {
            let r = srv.get(path).await;
            let message = r.expect_error(410);
            assert!(
                message.contains(&format!("{what} of job {job}")) && message.contains("missing"),
                "{path}: {message}"
            );
            assert!(
                !stored.iter().any(|n| message.contains(n.as_str()))
                    && !message.contains("files/")
                    && !message.contains("os error"),
                "no internal names: {message}"
            );
        }
    }
    let lines = lines_since(&srv, from);
    for name in &stored {
        let logged: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("ERROR") && l.contains(&format!("files/{name}")))
            .collect();
        assert_eq!(
            logged.len(),
            1,
            "one error per file, throttled:\n{}",
            lines.join("\n")
        );
    }
}

// ---- 3. a checksum-valid record that does not decode ---------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn start_is_refused_and_log_untouched_when_a_crc_valid_record_does_not_decode_at_the_tail() {
    let mut srv = TestServer::start_with(SMALL_SEGMENTS);
    for i in 0..3 {
        srv.submit(&json!({"job_queue": "undecodable", "n": i}))
            .await;
    }
    assert!(srv.stop().success());
    let data = srv.data_dir();
    let seg = newest_segment(&data);
    let seg_name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let buf = std::fs::read(&seg).unwrap();
    let (recs, end) = parse_segment(&buf);
    // 0xc1 is never used in msgpack: this cannot decode as any event.
    let record = frame(recs.last().unwrap().lsn + 1, b"\xc1\xc1 not an event \xc1");
    write_at(&seg, end, &record);
    let damaged = std::fs::read(&seg).unwrap();
    // The test's framing is right: the record parses as the next valid one.
    let (after, _) = parse_segment(&damaged);
    assert_eq!(after.len(), recs.len() + 1);

    for attempt in 0..2 {
        let stderr = refused_start(srv.dir(), &data, SMALL_SEGMENTS);
        assert!(
            stderr.contains(&seg_name),
            "attempt {attempt}: the error should name the segment {seg_name}:\n{stderr}"
        );
        assert!(
            offsets_in(&stderr).contains(&(end as u64)),
            "attempt {attempt}: the error should name offset {end}:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            damaged,
            "attempt {attempt}: a CRC-valid record must never be truncated"
        );
    }
}

// ---- 4. wal dump ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wal_dump_prints_every_record_and_exits_0_when_the_server_is_running() {
    let srv = TestServer::start_with(SMALL_SEGMENTS);
    let a = srv.submit_to("dumpq").await;
    let b = srv.submit_to("dumpq").await;
    let c = srv.submit_to("dumpq").await;
    assert_eq!(srv.pop_id(&["dumpq"]).await.as_deref(), Some(a.as_str()));
    srv.cancel(&b).await.expect_status(200);
    srv.post_result(&a, &json!({"job_state": "complete", "status": {"test": 0}}))
        .await;

    let data = srv.data_dir();
    let before: Vec<Vec<u8>> = segments(&data)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let total: usize = before.iter().map(|b| parse_segment(b).0.len()).sum();

    let data_text = data.display().to_string();
    let out = run_to_exit(
        srv.dir(),
        &["wal", "dump", &data_text],
        &[],
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wal dump exited with {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.len(), total, "one line per record on disk:\n{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let lsn: u64 = line
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("line {i} does not start with its lsn: {line}"));
        assert_eq!(lsn, i as u64 + 1, "lsns in order:\n{stdout}");
    }
    for id in [&a, &b, &c] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("JobSubmitted") && l.contains(id.as_str())),
            "no JobSubmitted line for {id}:\n{stdout}"
        );
    }
    for (name, id) in [("JobDispatched", &a), ("JobCancelled", &b)] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(name) && l.contains(id.as_str())),
            "no {name} line for {id}:\n{stdout}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("ResultMerged")), "{stdout}");
    assert!(!stdout.contains("UNDECODABLE"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with('#') && l.contains("no damage")),
        "{stdout}"
    );

    // Read-only: nothing on disk changed, and the server still takes writes.
    let now: Vec<Vec<u8>> = segments(&data)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(now == before, "wal dump changed the log");
    let d = srv.submit_to("dumpq").await;
    srv.get(&format!("/v1/job/{d}")).await.expect_status(200);
}

#[test]
fn wal_dump_says_there_is_no_log_when_the_data_dir_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nodir");
    let out = run_to_exit(
        dir.path(),
        &["wal", "dump", &missing.display().to_string()],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("no write-ahead log in") && stderr.contains("give `flinger wal dump`"),
        "the hint names what the command takes: {stderr}"
    );
}

#[test]
fn wal_dump_ends_quietly_with_status_0_when_its_reader_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("data").join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    // One segment of 2,000 small records: far more output than a pipe holds.
    let mut seg = Vec::new();
    seg.extend_from_slice(b"FLNGRWAL");
    seg.extend_from_slice(&1u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    seg.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32c(&[&seg[..24]]);
    seg.extend_from_slice(&crc.to_le_bytes());
    seg.extend_from_slice(&[0; 4]);
    for lsn in 1..=2000u64 {
        seg.extend_from_slice(&frame(lsn, b"\xc1 not an event, shown as undecodable"));
    }
    std::fs::write(wal.join(format!("{:020}.wal", 1)), &seg).unwrap();
    let mut child = crate::util::flinger_command(dir.path())
        .args([
            "wal",
            "dump",
            &dir.path().join("data").display().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe, as `| head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}
