//! Helpers shared by the `wal` crate's test binaries (`crash`, `snapshots`): a log on the
//! in-memory `MemFs` under `/log`, small segments, and records whose payload names their LSN.
// Each test binary uses a subset of these.
#![allow(dead_code)]

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wal::fault::{FaultyFs, MemFs};
use wal::frame;
use wal::{Error, Fs, Lsn, Options, ReplayReport, Wal};

pub const DIR: &str = "/log";
pub type Records = Vec<(Lsn, Vec<u8>)>;

pub fn dir() -> &'static Path {
    Path::new(DIR)
}

/// 4 KiB segments so a few dozen records span several of them.
pub fn small() -> Options {
    Options {
        segment_size: 4096,
        max_record: 1024,
        ..Options::default()
    }
}

/// The payload of record `lsn`: 1..=600 bytes, content unique to the LSN.
pub fn payload(lsn: Lsn) -> Vec<u8> {
    let len = 1 + (lsn.wrapping_mul(2_654_435_761) % 600) as usize;
    (0..len)
        .map(|j| (lsn as usize * 31 + j * 7) as u8)
        .collect()
}

pub fn expected(lsns: RangeInclusive<Lsn>) -> Records {
    lsns.map(|lsn| (lsn, payload(lsn))).collect()
}

pub fn open_mem(fs: &MemFs, opts: Options) -> Wal {
    Wal::open_with(Arc::new(fs.clone()), dir(), opts).expect("open")
}

pub fn replay(wal: &mut Wal, after: Lsn) -> Result<(Records, ReplayReport), Error> {
    let mut records = Vec::new();
    let report = wal.replay(after, |lsn, p| {
        records.push((lsn, p.to_vec()));
        Ok::<(), String>(())
    })?;
    Ok((records, report))
}

/// Appends `lsns` in batches of 1 to 3 records and checks the LSNs handed back.
pub fn append(wal: &mut Wal, lsns: RangeInclusive<Lsn>) {
    let (mut next, last) = lsns.into_inner();
    while next <= last {
        let end = (next + next % 3).min(last);
        let batch: Vec<Vec<u8>> = (next..=end).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert_eq!(wal.append_batch(&refs).expect("append"), next..=end);
        next = end + 1;
    }
}

/// A fresh in-memory log holding records `1..=n`.
pub fn mem_log(n: Lsn, opts: Options) -> MemFs {
    let fs = MemFs::new();
    let mut wal = open_mem(&fs, opts);
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=n);
    fs
}

/// Segment files under [`DIR`] as `(first_lsn, path)`, in order.
pub fn segments(fs: &dyn Fs) -> Vec<(Lsn, PathBuf)> {
    segments_in(fs, dir())
}

/// Segment files under `dir` (on any filesystem) as `(first_lsn, path)`, in order.
pub fn segments_in(fs: &dyn Fs, dir: &Path) -> Vec<(Lsn, PathBuf)> {
    let mut segs: Vec<_> = fs
        .read_dir(dir)
        .unwrap()
        .into_iter()
        .filter_map(|name| {
            let lsn = name.strip_suffix(".wal")?.parse().ok()?;
            Some((lsn, dir.join(name)))
        })
        .collect();
    segs.sort();
    segs
}

/// Offsets where each record of the segment starting at `first` ends, up to record `last`.
pub fn record_ends(first: Lsn, last: Lsn) -> Vec<(Lsn, u64)> {
    let mut off = frame::SEGMENT_HEADER_LEN as u64;
    (first..=last)
        .map(|lsn| {
            off += frame::frame_len(payload(lsn).len());
            (lsn, off)
        })
        .collect()
}

pub fn set_len(fs: &dyn Fs, path: &Path, len: u64) {
    fs.open(path).unwrap().set_len(len).unwrap();
}

pub fn flip_bit(fs: &MemFs, path: &Path, bit: u64) {
    let mut bytes = fs.read(path).unwrap();
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    fs.put(path, bytes);
}

/// A log with records 1..=n on a `FaultyFs` over `MemFs`.
pub fn faulty_log(n: Lsn) -> (MemFs, Arc<FaultyFs>, Wal) {
    let mem = MemFs::new();
    let faulty = Arc::new(FaultyFs::new(Arc::new(mem.clone())));
    let mut wal = Wal::open_with(faulty.clone(), dir(), small()).unwrap();
    replay(&mut wal, 0).unwrap();
    append(&mut wal, 1..=n);
    (mem, faulty, wal)
}

pub fn reopened(mem: &MemFs) -> Records {
    replay(&mut open_mem(mem, small()), 0).unwrap().0
}

/// The newest snapshot as `wal.load_snapshot` gives it, its payload copied out, for
/// comparing with an expected `(lsn, bytes)`.
pub fn loaded_snapshot(wal: &Wal) -> Option<(Lsn, Vec<u8>)> {
    wal.load_snapshot()
        .unwrap()
        .map(|(lsn, bytes)| (lsn, bytes.to_vec()))
}
