//! Snapshot tests for the `wal` crate: installing one deletes the segments it covers,
//! one written in pieces loads as the whole payload, covered segments are retired in the
//! background, and a corrupt or half-written snapshot never costs acknowledged records.

mod common;

use common::*;
use std::sync::Arc;
use wal::fault::{Fault, MemFs, Op};
use wal::frame;
use wal::{Error, Fs, Options, Wal};

#[test]
fn a_snapshot_deletes_covered_segments_and_reopen_replays_only_later_records() {
    let n = 40;
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, small());
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=n);
    let before = segments(&fs);
    wal.write_snapshot(25, b"state@25").unwrap();
    let after = segments(&fs);
    assert!(after.len() < before.len());
    assert!(after[0].0 <= 26, "the segment holding 26 must stay");
    assert!(
        after.get(1).is_none_or(|s| s.0 > 26),
        "covered segments are gone"
    );

    wal.write_snapshot(30, b"state@30").unwrap();
    let snaps: Vec<_> = fs
        .read_dir(dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert_eq!(snaps, ["snapshot-00000000000000000030.snap"]);
    drop(wal);

    let mut wal = open_mem(&fs, small());
    assert_eq!(loaded_snapshot(&wal), Some((30, b"state@30".to_vec())));
    let (records, report) = replay(&mut wal, 30).unwrap();
    assert_eq!(records, expected(31..=n));
    assert_eq!(report.last_lsn, n);
    assert!(wal.bytes_since_snapshot() > 0);

    // Replaying from scratch would need the deleted segments.
    let result = replay(&mut open_mem(&fs.deep_copy(), small()), 0);
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
}

#[test]
fn a_snapshot_written_in_pieces_with_a_filled_hole_loads_as_the_whole_payload() {
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, small());
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=12);
    let writer = wal.snapshot_writer();

    // A hole never filled refuses to finish and leaves no file behind.
    let mut unfilled = writer.create(11).unwrap();
    unfilled.append(b"head").unwrap();
    unfilled.reserve(3);
    assert!(matches!(unfilled.finish(), Err(Error::Io { .. })));
    // Dropped unfinished: nothing behind either.
    let mut dropped = writer.create(11).unwrap();
    dropped.append(b"partial").unwrap();
    drop(dropped);
    let leftovers: Vec<_> = (fs.read_dir(dir()).unwrap().into_iter())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut file = writer.create(12).unwrap();
    file.append(b"state").unwrap();
    let hole = file.reserve(4);
    file.append(b"@").unwrap();
    file.append(b"12").unwrap();
    assert!(
        file.fill(hole, b"toolong").is_err(),
        "a fill must match the hole"
    );
    file.fill(hole, b"-at-").unwrap();
    assert_eq!(file.len(), 12);
    let prepared = file.finish().unwrap();
    wal.install_snapshot(prepared).unwrap();
    drop(wal);

    let wal = open_mem(&fs, small());
    assert_eq!(loaded_snapshot(&wal), Some((12, b"state-at-@12".to_vec())));
}

#[test]
fn background_retire_deletes_covered_segments_by_the_time_the_log_is_dropped() {
    let opts = Options {
        background_retire: true,
        ..small()
    };
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, opts.clone());
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=40);
    let before = segments(&fs);
    wal.write_snapshot(20, b"state@20").unwrap();
    // Appends go on while the deletion may still run.
    append(&mut wal, 41..=45);
    wal.write_snapshot(30, b"state@30").unwrap();
    drop(wal);
    let after = segments(&fs);
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(after[0].0 <= 31, "the segment holding 31 must stay");
    assert!(
        after.get(1).is_none_or(|s| s.0 > 31),
        "covered segments are gone: {after:?}"
    );
    let snaps: Vec<_> = (fs.read_dir(dir()).unwrap().into_iter())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert_eq!(snaps, ["snapshot-00000000000000000030.snap"]);

    let mut wal = open_mem(&fs, opts);
    assert_eq!(loaded_snapshot(&wal), Some((30, b"state@30".to_vec())));
    let (records, _) = replay(&mut wal, 30).unwrap();
    assert_eq!(records, expected(31..=45));
}

#[test]
fn bytes_since_snapshot_counts_the_batches_after_it() {
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, small());
    replay(&mut wal, 0).unwrap();
    assert_eq!(wal.bytes_since_snapshot(), 0);
    wal.append_batch(&[b"ab", b"cde"]).unwrap();
    wal.append_batch(&[b"fghi"]).unwrap();
    assert_eq!(wal.bytes_since_snapshot(), 16 * 3 + 9);
    wal.write_snapshot(2, b"s").unwrap();
    assert_eq!(wal.bytes_since_snapshot(), 16 + 4);
    wal.write_snapshot(3, b"s").unwrap();
    assert_eq!(wal.bytes_since_snapshot(), 0);
}

#[test]
fn a_corrupt_newest_snapshot_is_an_error() {
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, small());
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=5);
    wal.write_snapshot(5, b"state@5").unwrap();
    drop(wal);
    let path = dir().join("snapshot-00000000000000000005.snap");
    let good = fs.read(&path).unwrap();

    let flipped = fs.deep_copy();
    flip_bit(&flipped, &path, 8 * 40);
    let cut = fs.deep_copy();
    cut.put(&path, good[..good.len() - 1].to_vec());
    for img in [flipped, cut] {
        let result = open_mem(&img, small()).load_snapshot();
        assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    }
}

#[test]
fn a_crash_between_snapshot_tmp_and_rename_leaves_the_old_state_usable() {
    let (mem, faulty, mut wal) = faulty_log(20);
    wal.write_snapshot(10, b"state@10").unwrap();
    faulty.fail_nth(Op::Rename, 1, Fault::Io);
    assert!(matches!(
        wal.write_snapshot(15, b"state@15"),
        Err(Error::Io { .. })
    ));
    // The log is not poisoned by a failed snapshot.
    append(&mut wal, 21..=22);
    drop(wal);
    // What a crash right before the rename leaves behind.
    let mut tmp = frame::encode_snapshot_header(18, b"state@18").to_vec();
    tmp.extend_from_slice(b"state@18");
    let tmp_path = dir().join("snapshot-00000000000000000018.snap.tmp");
    mem.put(&tmp_path, tmp);

    let mut wal = open_mem(&mem, small());
    assert!(
        mem.read(&tmp_path).is_err(),
        "leftover tmp files are removed on open"
    );
    assert_eq!(loaded_snapshot(&wal), Some((10, b"state@10".to_vec())));
    let (records, _) = replay(&mut wal, 10).unwrap();
    assert_eq!(records, expected(11..=22));
}

/// On a real filesystem the snapshot is mapped, not read: the same payload comes back,
/// and a flipped bit, a cut file or a header alone are refused as corrupt.
#[test]
fn a_mapped_snapshot_loads_its_payload_and_refuses_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let open = || Wal::open_with(Arc::new(wal::StdFs), tmp.path(), small()).unwrap();
    let mut wal = open();
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=5);
    let state: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    wal.write_snapshot(5, &state).unwrap();
    drop(wal);
    let (lsn, bytes) = open().load_snapshot().unwrap().unwrap();
    assert!(bytes.is_mapped(), "{bytes:?}");
    assert_eq!((lsn, &*bytes), (5, &state[..]));
    drop(bytes);

    let path = tmp.path().join("snapshot-00000000000000000005.snap");
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    flipped[frame::SNAPSHOT_HEADER_LEN + 1000] ^= 4;
    for damaged in [
        flipped,
        good[..good.len() - 1].to_vec(),
        good[..frame::SNAPSHOT_HEADER_LEN].to_vec(),
        good[..10].to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&path, &damaged).unwrap();
        let result = open().load_snapshot();
        assert!(
            matches!(result, Err(Error::Corrupt { .. })),
            "{} bytes: {result:?}",
            damaged.len()
        );
    }
}

/// A large write is synced in steps, so the log's own syncs never wait behind one flush of
/// all of it: a snapshot of 3.5 MiB, written whole or in pieces, is synced at least three
/// times before its final sync; a zeroed spare of 4 MiB three times before its own.
#[test]
fn large_snapshots_and_zeroed_spares_are_synced_in_steps_of_a_mebibyte() {
    let (mem, faulty, wal) = faulty_log(5);
    let writer = wal.snapshot_writer();
    let payload: Vec<u8> = (0..(7u32 << 19)).map(|i| (i % 251) as u8).collect();

    let before = faulty.calls(Op::Sync);
    let prepared = writer.prepare(3, &payload).unwrap();
    let syncs = faulty.calls(Op::Sync) - before;
    assert!(
        syncs >= 4,
        "whole: {syncs} syncs for 3.5 MiB and the final one"
    );
    drop(prepared);

    let mut file = writer.create(4).unwrap();
    let before = faulty.calls(Op::Sync);
    for piece in payload.chunks(64 << 10) {
        file.append(piece).unwrap();
    }
    let syncs = faulty.calls(Op::Sync) - before;
    assert!(
        syncs >= 3,
        "in pieces: {syncs} syncs before finish for 3.5 MiB"
    );
    drop(file);
    drop(wal);

    let before = faulty.calls(Op::Sync);
    let opts = Options {
        segment_size: 4 << 20,
        zero_spare: true,
        ..small()
    };
    let fresh = std::path::Path::new("/another-log");
    let mut wal = Wal::open_with(faulty.clone(), fresh, opts).unwrap();
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=1);
    let syncs = faulty.calls(Op::Sync) - before;
    // Opening a fresh log and appending one record syncs 6 times with spares flushed
    // whole (directory, spare, header, directory, next spare, batch); each of the two
    // 4 MiB spares adds a sync per MiB.
    assert!(syncs >= 12, "two 4 MiB zeroed spares: {syncs} syncs");
    drop(mem);
}
