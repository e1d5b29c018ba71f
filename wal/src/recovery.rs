//! The segment walk: reading the log back and finding where valid data ends.
//!
//! Shared by [`crate::Wal::replay`], which then applies the recovery policy (truncate a torn tail,
//! refuse or cut corruption), and by [`scan`], which only reports. The walk itself never writes.
//!
//! Invariants it checks, in order: each segment's header is valid and matches its file name; each
//! segment starts at the previous one's last LSN + 1; records inside a segment are consecutive. The
//! first spot that breaks them is classified:
//! - in the last segment with no valid later record there: a torn tail;
//! - in an older segment with no valid later record there: a *suspect*. If the next segment carries
//!   on with the expected LSN, nothing was lost (it was junk in unused space) and the walk goes on;
//!   otherwise the suspect is where records were lost, and is reported as corruption;
//! - anywhere with valid records after it: corruption.

use std::path::Path;

use crate::frame::{self, Decoded, HeaderError, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::layout::{self, Segment};
use crate::{Damage, Error, Fs, Lsn, RecordInfo, ScanReport, StdFs, Stranded};

/// A place where valid data stops early.
#[derive(Debug, Clone)]
pub(crate) struct BadSpot {
    /// Index of the segment (in the walked slice).
    pub seg: usize,
    /// Offset inside it; below [`SEGMENT_HEADER_LEN`] means the segment itself is unusable.
    pub offset: u64,
    /// What is wrong, for the operator.
    pub reason: String,
    /// Recoverable by truncation without losing acknowledged data.
    pub torn_tail: bool,
    /// Non-zero bytes from `offset` to the end of that segment: what a cut there discards.
    pub dropped: u64,
}

/// Where a walk ended.
#[derive(Debug, Default)]
pub(crate) struct WalkEnd {
    /// LSN of the last valid record (or the first segment's `first_lsn - 1` if it has none);
    /// `None` when no segment header was valid.
    pub last_lsn: Option<Lsn>,
    /// Offset where valid data ends, for each segment whose header was valid, in order.
    pub ends: Vec<u64>,
    /// The first bad spot, unless the log is clean.
    pub bad: Option<BadSpot>,
}

/// Called with `(segment, offset, lsn, payload)` for each valid record; an error aborts the walk.
pub(crate) type Visit<'a> = dyn FnMut(&Segment, u64, Lsn, &[u8]) -> Result<(), Error> + 'a;

/// Calls `visit(segment, offset, lsn, payload)` for every valid record, in LSN order, up to the
/// first bad spot. An error from `visit` aborts the walk.
pub(crate) fn walk(
    fs: &dyn Fs,
    segments: &[Segment],
    max_record: u32,
    visit: &mut Visit<'_>,
) -> Result<WalkEnd, Error> {
    let mut end = WalkEnd::default();
    let mut suspect: Option<BadSpot> = None;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let buf = fs
            .read(&seg.path)
            .map_err(|e| Error::io("read", &seg.path, e))?;
        let header_problem = match frame::decode_header(&buf) {
            Ok(0) => Some("segment header has first lsn 0".to_owned()),
            Ok(first) if first != seg.first_lsn => Some(format!(
                "segment header says first lsn {first}, file name says {}",
                seg.first_lsn
            )),
            Ok(_) => None,
            Err(HeaderError::Incomplete) => Some("incomplete segment header".to_owned()),
            Err(HeaderError::Corrupt(reason)) => Some(reason.to_owned()),
        };
        if let Some(reason) = header_problem {
            // A named segment always had its header synced before the rename, so only a file cut
            // short (an interrupted copy, a lost block) lacks one; tolerate that at the very end.
            let torn_tail = is_last && buf.len() < SEGMENT_HEADER_LEN;
            end.bad = Some(bad_spot(i, 0, reason, torn_tail, &buf));
            return Ok(end);
        }
        let first = seg.first_lsn;
        if let Some(prev) = end.last_lsn {
            if first != prev + 1 {
                let gap = format!("lsn gap: segment starts at {first}, expected {}", prev + 1);
                end.bad = Some(match suspect.take() {
                    Some(mut s) => {
                        s.reason = format!("{}; {gap}", s.reason);
                        s
                    }
                    None => bad_spot(i, 0, gap, false, &[]),
                });
                return Ok(end);
            }
        }
        // The next segment continues the sequence: the suspect bytes were junk, nothing was lost.
        suspect = None;
        end.last_lsn = Some(first - 1);

        let mut expected = first;
        let mut off = SEGMENT_HEADER_LEN;
        let problem = loop {
            if off == buf.len() {
                break None;
            }
            match frame::decode(&buf[off..], max_record) {
                Decoded::Record {
                    lsn,
                    payload,
                    len_total,
                } if lsn == expected => {
                    visit(seg, off as u64, lsn, payload)?;
                    end.last_lsn = Some(lsn);
                    expected += 1;
                    off += len_total;
                }
                Decoded::Record { lsn, .. } => {
                    break Some(format!("unexpected lsn {lsn}, expected {expected}"))
                }
                Decoded::Zero if nonzero_end(&buf) <= off => break None,
                Decoded::Zero => break Some("non-zero bytes after the end-of-data marker".into()),
                Decoded::Incomplete => break Some("incomplete record".into()),
                Decoded::Corrupt(reason) => break Some(reason.into()),
            }
        };
        end.ends.push(off as u64);
        let Some(reason) = problem else { continue };
        if valid_record_after(&buf, off, expected, max_record) {
            let reason = format!("{reason}; valid records follow");
            end.bad = Some(bad_spot(i, off as u64, reason, false, &buf));
            return Ok(end);
        }
        if is_last {
            end.bad = Some(bad_spot(i, off as u64, reason, true, &buf));
            return Ok(end);
        }
        suspect = Some(bad_spot(i, off as u64, reason, false, &buf));
    }
    Ok(end)
}

fn bad_spot(seg: usize, offset: u64, reason: String, torn_tail: bool, buf: &[u8]) -> BadSpot {
    BadSpot {
        seg,
        offset,
        reason,
        torn_tail,
        dropped: (nonzero_end(buf) as u64).saturating_sub(offset),
    }
}

/// Zero blocks are compared with `memcmp`, which stays fast in unoptimised builds, where the
/// server's tests open 64 MiB segments that are mostly preallocated zeros.
const ZEROS: [u8; 4096] = [0; 4096];

/// Length of `buf` without its trailing zeros.
fn nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    while end >= ZEROS.len() && buf[end - ZEROS.len()..end] == ZEROS {
        end -= ZEROS.len();
    }
    buf[..end]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
}

/// Index of the first non-zero byte at or after `from`.
fn next_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + ZEROS.len() <= buf.len() && buf[at..at + ZEROS.len()] == ZEROS {
        at += ZEROS.len();
    }
    buf.get(at..)?.iter().position(|&b| b != 0).map(|i| at + i)
}

/// Whether a checksum-valid record that could belong after the bad spot at `bad` exists later in
/// `buf` (see [`next_valid_record`]).
fn valid_record_after(buf: &[u8], bad: usize, expected: Lsn, max_record: u32) -> bool {
    next_valid_record(buf, bad, expected, max_record).is_some()
}

/// Offset of the first checksum-valid record after the bad spot at `bad` in `buf` that could
/// belong there. Each lost record took at least 17 bytes, so at byte `p` only LSNs up to
/// `expected + (p - bad) / 16` are plausible; that window keeps random bytes from passing by luck
/// and keeps the search cheap.
fn next_valid_record(buf: &[u8], bad: usize, expected: Lsn, max_record: u32) -> Option<usize> {
    let mut p = bad + 1;
    while p + RECORD_HEADER_LEN <= buf.len() {
        if buf[p..p + 4] == [0; 4] {
            // No record starts here (its length is non-zero), nor anywhere in the zero run that
            // follows, except up to 3 bytes before the next non-zero byte (a little-endian length).
            let next = next_nonzero(buf, p)?;
            p = (next - 3).max(p + 1);
            continue;
        }
        let window = ((p - bad) / RECORD_HEADER_LEN) as u64;
        if frame::valid_record_at(buf, p, max_record, expected..=expected + window) {
            return Some(p);
        }
        p += 1;
    }
    None
}

/// Visits the checksum-valid records at and after `bad` that the walk could not reach: past the
/// bad spot in its segment (resynchronising at the next record that could belong there, see
/// [`next_valid_record`], and again after each later bad spot), then in every later segment (from
/// its first record, trusting its file name's LSN). `last_lsn` is the LSN of the last record the
/// walk accepted. Only LSNs above every one visited before are visited, so nothing is counted
/// twice. This is what cutting the log at `bad` discards, and what `flinger wal dump` shows past
/// damage; records found this way are not replayed: the gap before them lost records.
pub(crate) fn salvage(
    fs: &dyn Fs,
    segments: &[Segment],
    bad: &BadSpot,
    last_lsn: Lsn,
    max_record: u32,
    visit: &mut Visit<'_>,
) -> Result<Stranded, Error> {
    let mut found = Stranded::default();
    let mut highest = last_lsn;
    for (i, seg) in segments.iter().enumerate().skip(bad.seg) {
        let buf = fs
            .read(&seg.path)
            .map_err(|e| Error::io("read", &seg.path, e))?;
        let (start, expected, resync) = if i == bad.seg && bad.offset >= SEGMENT_HEADER_LEN as u64 {
            (bad.offset as usize, last_lsn + 1, true)
        } else if buf.len() > SEGMENT_HEADER_LEN {
            (SEGMENT_HEADER_LEN, seg.first_lsn, false)
        } else {
            continue;
        };
        let data_end = nonzero_end(&buf);
        let mut at = start;
        let mut expected = expected;
        let mut gap = resync.then_some(start);
        loop {
            if let Some(from) = gap.take() {
                let Some(p) = next_valid_record(&buf, from, expected, max_record) else {
                    break;
                };
                at = p;
                expected = u64::from_le_bytes(buf[p + 8..p + 16].try_into().expect("8 bytes"));
            }
            if at >= data_end {
                break;
            }
            match frame::decode(&buf[at..], max_record) {
                Decoded::Record {
                    lsn,
                    payload,
                    len_total,
                } if lsn == expected => {
                    if lsn > highest {
                        visit(seg, at as u64, lsn, payload)?;
                        highest = lsn;
                        found.records += 1;
                        found.first_lsn.get_or_insert(lsn);
                        found.last_lsn = Some(lsn);
                    }
                    expected += 1;
                    at += len_total;
                }
                _ => gap = Some(at),
            }
        }
    }
    Ok(found)
}

/// Reads the log in `dir` without locking or changing it and calls `f` for every valid record, in
/// order; for `flinger wal dump`. Damage is reported in [`ScanReport::damage`], not fixed; with
/// `past_damage`, `f` is also called for the valid records after it (see [`ScanReport`]), with
/// [`RecordInfo::past_damage`] set.
pub fn scan_with(
    dir: &Path,
    max_record: u32,
    past_damage: bool,
    mut f: impl FnMut(RecordInfo, &[u8]),
) -> Result<ScanReport, Error> {
    let segments = layout::list(&StdFs, dir)?.segments;
    let mut records = 0;
    let mut end = walk(
        &StdFs,
        &segments,
        max_record,
        &mut |seg, offset, lsn, payload| {
            records += 1;
            let info = RecordInfo {
                segment: seg.path.clone(),
                offset,
                lsn,
                past_damage: false,
            };
            f(info, payload);
            Ok(())
        },
    )?;
    let last_lsn = end.last_lsn.unwrap_or(0);
    let damage = match end.bad.take() {
        None => None,
        Some(b) => {
            let after = salvage(
                &StdFs,
                &segments,
                &b,
                last_lsn,
                max_record,
                &mut |seg, offset, lsn, payload| {
                    if past_damage {
                        let info = RecordInfo {
                            segment: seg.path.clone(),
                            offset,
                            lsn,
                            past_damage: true,
                        };
                        f(info, payload);
                    }
                    Ok(())
                },
            )?;
            Some(Damage {
                segment: segments[b.seg].path.clone(),
                offset: b.offset,
                reason: b.reason,
                torn_tail: b.torn_tail,
                after,
            })
        }
    };
    Ok(ScanReport {
        segments: segments.len(),
        records,
        last_lsn,
        damage,
    })
}

/// [`scan_with`] up to the first bad spot: every valid record the server would replay.
pub fn scan(
    dir: &Path,
    max_record: u32,
    f: impl FnMut(RecordInfo, &[u8]),
) -> Result<ScanReport, Error> {
    scan_with(dir, max_record, false, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_past_a_bad_spot_finds_a_record_behind_long_zero_runs() {
        for zeros in [0, 3, 4095, 4096, 10_000] {
            let mut buf = vec![0xee; 5];
            buf.resize(5 + zeros, 0);
            // A length of 256 starts with a zero byte: the skip must not jump over it.
            frame::encode(7, &[1; 256], &mut buf);
            buf.resize(buf.len() + 100, 0);
            assert!(valid_record_after(&buf, 0, 7, 1000), "{zeros} zeros");
            assert!(
                !valid_record_after(&buf, 0, 8, 1000),
                "{zeros} zeros, lsn outside window"
            );
        }
    }

    #[test]
    fn nonzero_end_ignores_trailing_zero_blocks() {
        let mut buf = vec![0u8; 3 * 4096 + 17];
        assert_eq!(nonzero_end(&buf), 0);
        buf[5000] = 1;
        assert_eq!(nonzero_end(&buf), 5001);
        assert_eq!(next_nonzero(&buf, 0), Some(5000));
        assert_eq!(next_nonzero(&buf, 5001), None);
    }
}
