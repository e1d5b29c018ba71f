//! `wal_replay`: replay of a log whose last segment was damaged by arbitrary bytes, on the
//! in-memory filesystem `wal::fault::MemFs`. Shared by the fuzz target and the stable seed replay.
//!
//! Input: byte 0 = how many records to write (1..=12), byte 1 = preallocation (bit 0) and how
//! to damage the last segment (append after its end, overwrite at an offset, or cut at an
//! offset then append), bytes 2..4 = the offset (little-endian), the rest = the bytes to write.
//! Properties:
//! - replay never panics and ends either with records or with `Error::Corrupt`, nothing else;
//! - the records it returns are the written ones, in order, as a prefix; other records can
//!   only come back when the damage itself holds valid frames (checksum and all) with the
//!   right LSNs, and then every record returned is one of those frames or a written one;
//! - records of segments that were not touched are never lost;
//! - a recovered log accepts a new record, and the next replay returns exactly the recovered
//!   records plus that one (so truncation left a clean, appendable tail).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wal::fault::MemFs;
use wal::{Error, Fs, Lsn, Options, Recovery, Wal};

const DIR: &str = "/log";
/// Small segments so that a dozen records span several of them.
const SEGMENT_SIZE: u64 = 256;
const MAX_RECORD: u32 = 96;

type Records = Vec<(Lsn, Vec<u8>)>;

fn open(fs: &MemFs, preallocate: bool) -> Result<Wal, Error> {
    let options = Options {
        segment_size: SEGMENT_SIZE,
        max_record: MAX_RECORD,
        recovery: Recovery::Strict,
        preallocate,
        background_spare: false,
        zero_spare: preallocate,
        background_retire: false,
    };
    Wal::open_with(Arc::new(fs.clone()), Path::new(DIR), options)
}

fn replay(wal: &mut Wal) -> Result<Records, Error> {
    let mut records = Vec::new();
    wal.replay(0, |lsn, payload| {
        records.push((lsn, payload.to_vec()));
        Ok::<(), String>(())
    })?;
    Ok(records)
}

/// Record `lsn`'s payload: 1..=90 bytes, distinct per record.
fn payload(lsn: Lsn) -> Vec<u8> {
    let len = 1 + (lsn as usize * 37) % 90;
    (0..len)
        .map(|k| (lsn as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

/// Segment files, oldest first, with their first LSN (from the `{first_lsn:020}.wal` name).
fn segments(fs: &MemFs) -> Vec<(Lsn, PathBuf)> {
    let mut segments: Vec<(Lsn, PathBuf)> = fs
        .read_dir(Path::new(DIR))
        .expect("list the log")
        .into_iter()
        .filter_map(|name| {
            let first = name.strip_suffix(".wal")?.parse().ok()?;
            Some((first, Path::new(DIR).join(name)))
        })
        .collect();
    segments.sort();
    segments
}

/// Valid frames anywhere in `segment` that are not the written record of their LSN.
fn forged_frames(segment: &[u8], written: &Records) -> Records {
    (0..segment.len())
        .filter_map(|at| match wal::frame::decode(&segment[at..], MAX_RECORD) {
            wal::frame::Decoded::Record { lsn, payload, .. } => Some((lsn, payload.to_vec())),
            _ => None,
        })
        .filter(|record| written.get((record.0 as usize).wrapping_sub(1)) != Some(record))
        .collect()
}

pub fn check(data: &[u8]) {
    let [count, mode, lo, hi, damage @ ..] = data else {
        return;
    };
    let count = 1 + Lsn::from(*count % 12);
    let preallocate = mode & 1 == 1;
    let offset = usize::from(u16::from_le_bytes([*lo, *hi]));

    let fs = MemFs::new();
    let written: Records = (1..=count).map(|lsn| (lsn, payload(lsn))).collect();
    {
        let mut wal = open(&fs, preallocate).expect("open a new log");
        replay(&mut wal).expect("an empty log replays");
        for (_, p) in &written {
            wal.append_batch(&[p.as_slice()]).expect("append");
        }
    }
    let (first_of_last, last) = segments(&fs).pop().expect("the log has a segment");
    let untouched = first_of_last - 1;

    let mut bytes = fs.read(&last).expect("read the last segment");
    match (mode >> 1) % 3 {
        0 => bytes.extend_from_slice(damage),
        1 => {
            let at = offset % (bytes.len() + 1);
            let end = (at + damage.len()).max(bytes.len());
            bytes.resize(end, 0);
            bytes[at..at + damage.len()].copy_from_slice(damage);
        }
        _ => {
            bytes.truncate(offset % (bytes.len() + 1));
            bytes.extend_from_slice(damage);
        }
    }
    fs.put(&last, bytes.clone());

    let mut wal = open(&fs, preallocate).expect("reopen");
    let got = match replay(&mut wal) {
        Ok(got) => got,
        Err(Error::Corrupt { .. }) => return,
        Err(other) => panic!("replay ended with {other}; expected records or Error::Corrupt"),
    };
    assert!(
        got.len() as u64 >= untouched,
        "records of untouched segments were lost"
    );
    for (i, (lsn, _)) in got.iter().enumerate() {
        assert_eq!(*lsn, i as Lsn + 1, "LSNs are consecutive from 1");
    }
    // Replay cannot tell a record the fuzzer forged (a valid frame, checksum and all) from one
    // the log wrote; without forged frames in the segment, only a prefix may come back.
    let forged = forged_frames(&bytes, &written);
    if forged.is_empty() {
        let common = got.len().min(written.len());
        assert_eq!(
            got.len(),
            common,
            "replay returned records that were never written"
        );
        assert_eq!(
            got,
            written[..common],
            "replay returned other data than was written"
        );
    } else {
        for record in &got {
            let written_here = written.get(record.0 as usize - 1) == Some(record);
            assert!(
                written_here || forged.contains(record),
                "record {} came from nowhere",
                record.0
            );
        }
    }

    let next = got.len() as Lsn + 1;
    let lsns = wal
        .append_batch(&[b"after recovery".as_slice()])
        .expect("a recovered log takes appends");
    assert_eq!(lsns, next..=next);
    drop(wal);
    let mut wal = open(&fs, preallocate).expect("reopen after recovery");
    let again = replay(&mut wal).expect("a recovered log replays cleanly");
    let mut expected = got;
    expected.push((next, b"after recovery".to_vec()));
    assert_eq!(again, expected, "the recovered log lost or changed records");
}
