//! `wal_frame`: the record, segment-header and snapshot codecs of `wal::frame` on arbitrary
//! bytes. Shared by the fuzz target and the stable seed replay (`tests/props/fuzz_seeds.rs`).
//!
//! Input: byte 0 picks `max_record` (tiny, small, large, unbounded); the rest is the buffer.
//! Properties:
//! - `decode` never panics and never trusts a length beyond `max_record` or the buffer;
//! - a decoded record re-encodes (lsn, payload) to exactly the bytes it consumed;
//! - every other answer is the one the format defines for those bytes (incomplete, zero, corrupt);
//! - `valid_record_at` agrees with `decode`;
//! - a decoded segment header or snapshot re-encodes to the same bytes.

use wal::frame::{self, Decoded, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SNAPSHOT_HEADER_LEN};

/// `max_record` bounds worth telling apart: below, around and far above typical lengths.
const MAX_RECORDS: [u32; 6] = [1, 16, 255, 4096, 1 << 20, u32::MAX];

/// Splits the fuzz input into the `max_record` bound and the buffer to decode.
pub fn split(data: &[u8]) -> (u32, &[u8]) {
    match data.split_first() {
        Some((&pick, rest)) => (MAX_RECORDS[pick as usize % MAX_RECORDS.len()], rest),
        None => (MAX_RECORDS[0], data),
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

pub fn check(data: &[u8]) {
    let (max_record, buf) = split(data);
    let decoded = frame::decode(buf, max_record);
    match &decoded {
        Decoded::Record {
            lsn,
            payload,
            len_total,
        } => {
            assert!(
                !payload.is_empty() && payload.len() as u64 <= max_record as u64,
                "length bound"
            );
            assert_eq!(*len_total, RECORD_HEADER_LEN + payload.len());
            assert!(
                *len_total <= buf.len(),
                "a record cannot extend past its buffer"
            );
            assert_eq!(
                payload.as_ptr(),
                buf[RECORD_HEADER_LEN..].as_ptr(),
                "the payload borrows the buffer"
            );
            let mut again = Vec::new();
            frame::encode(*lsn, payload, &mut again);
            assert_eq!(
                again,
                &buf[..*len_total],
                "re-encoding a decoded record gives other bytes"
            );
            assert_eq!(frame::frame_len(payload.len()), *len_total as u64);
        }
        Decoded::Incomplete => {
            if buf.len() >= RECORD_HEADER_LEN {
                let len = u32_at(buf, 0) as usize;
                assert!(
                    len >= 1 && len <= max_record as usize,
                    "incomplete with a bad length"
                );
                assert!(
                    RECORD_HEADER_LEN + len > buf.len(),
                    "incomplete although the record fits"
                );
            } else {
                assert!(
                    buf.is_empty() || buf.iter().any(|&b| b != 0),
                    "short zeros are the end marker"
                );
            }
        }
        Decoded::Zero => {
            let header = &buf[..buf.len().min(RECORD_HEADER_LEN)];
            assert!(
                !header.is_empty() && header.iter().all(|&b| b == 0),
                "zero marker on non-zero bytes"
            );
        }
        Decoded::Corrupt(reason) => {
            assert!(!reason.is_empty());
            assert!(
                buf.len() >= RECORD_HEADER_LEN,
                "too few bytes to call corrupt"
            );
            let len = u32_at(buf, 0) as usize;
            let fits =
                len >= 1 && len <= max_record as usize && RECORD_HEADER_LEN + len <= buf.len();
            // A record that fits and is refused must have a wrong checksum: re-encode to see.
            if fits {
                let mut again = Vec::new();
                frame::encode(
                    u64_at(buf, 8),
                    &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len],
                    &mut again,
                );
                assert_ne!(
                    again,
                    &buf[..RECORD_HEADER_LEN + len],
                    "a well-formed record was refused"
                );
            }
        }
    }
    // `valid_record_at` is decode plus an LSN window; check it at a few offsets.
    for offset in [0, 1, 7, RECORD_HEADER_LEN, buf.len()] {
        let here = buf.get(offset..).unwrap_or(&[]);
        let lsn = match frame::decode(here, max_record) {
            Decoded::Record { lsn, .. } => Some(lsn),
            _ => None,
        };
        assert_eq!(
            frame::valid_record_at(buf, offset, max_record, 0..=u64::MAX),
            lsn.is_some()
        );
        if let Some(lsn) = lsn.filter(|&l| l < u64::MAX) {
            let next = lsn + 1;
            assert!(
                !frame::valid_record_at(buf, offset, max_record, next..=next),
                "LSN window ignored"
            );
        }
    }
    if let Ok(first_lsn) = frame::decode_header(buf) {
        assert_eq!(
            frame::encode_header(first_lsn),
            buf[..SEGMENT_HEADER_LEN],
            "segment header round trip"
        );
    }
    if let Ok((lsn, payload)) = frame::decode_snapshot(buf) {
        let mut again = frame::encode_snapshot_header(lsn, payload).to_vec();
        again.extend_from_slice(payload);
        assert_eq!(again, buf, "snapshot round trip");
        assert_eq!(payload.len(), buf.len() - SNAPSHOT_HEADER_LEN);
    }
}
