//! `journal_replay`: recovery on arbitrary bytes: a snapshot document and WAL record payloads
//! through `flinger::journal::Replay`, the decoding and fold both journal backends recover
//! with. Shared by the fuzz target and the stable seed replay.
//!
//! Input: byte 0 bit 0 = the first chunk is a snapshot document; then chunks, each a 2-byte
//! little-endian length and that many bytes (the last takes what is left). A record's LSN is
//! its place after the snapshot's.
//! Properties:
//! - no bytes make recovery panic: a snapshot or a record that does not decode (or a
//!   snapshot of a layout this build does not read) is an error, and recovery stops there,
//!   as the server does;
//! - whatever state recovery reaches, its snapshot (each partition encoded as its actor
//!   encodes its copy) reads back, and the state read back encodes to a snapshot of the
//!   same size (its maps may list their entries in another order, so not byte for byte).

use std::time::Instant;

use flinger::journal::{Replay, SnapshotParts};

/// The LSN the snapshot chunk is loaded at; records follow it.
const SNAPSHOT_LSN: u64 = 1_000;

pub fn check(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let (len, body) = match rest {
            [lo, hi, body @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), body),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(body.len());
        chunks.push(&body[..len]);
        rest = &body[len..];
    }
    let mut chunks = chunks.into_iter();
    let mut replay = Replay::new(Instant::now());
    let mut lsn = 0;
    if flags & 1 == 1 {
        let Some(snapshot) = chunks.next() else {
            return;
        };
        if replay.snapshot(SNAPSHOT_LSN, snapshot).is_err() {
            return;
        }
        lsn = SNAPSHOT_LSN;
    }
    for record in chunks {
        lsn += 1;
        if replay.record(lsn, record).is_err() {
            break;
        }
    }
    let (state, _) = replay.finish();

    let first = SnapshotParts::of_state(&state, lsn)
        .encode_in_memory()
        .expect("a recovered state encodes");
    let mut again = Replay::new(Instant::now());
    if let Err(e) = again.snapshot(lsn, &first) {
        panic!("the snapshot of a recovered state does not read back: {e}");
    }
    let (read_back, _) = again.finish();
    let second = SnapshotParts::of_state(&read_back, lsn)
        .encode_in_memory()
        .expect("a state read back encodes");
    assert_eq!(
        first.len(),
        second.len(),
        "a recovered state's snapshot, read back and encoded again, changed size"
    );
}
