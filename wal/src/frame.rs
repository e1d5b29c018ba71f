//! The byte codec: segment headers, records and snapshot files (format items 2-6 in the crate docs).
//!
//! Pure functions over slices: no IO, no allocation while decoding, no panics on any input. Decoders
//! borrow from the buffer they are given and check every length against it before use, so a fuzzer
//! can feed them anything. Deciding what a bad frame *means* (torn tail or corruption) is not done
//! here but in `recovery`, which knows where in the log the bytes came from.

use crate::Lsn;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLNGRWAL";
/// First 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FLNGSNAP";
/// The one format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Size of a segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record header (`len | crc | lsn`).
pub const RECORD_HEADER_LEN: usize = 16;
/// Size of a snapshot header; the payload starts here.
pub const SNAPSHOT_HEADER_LEN: usize = 36;

/// Appends the record `lsn`/`payload` to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX`; callers enforce `max_record` first.
pub fn encode(lsn: Lsn, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payload length is bounded by max_record");
    let len_bytes = len.to_le_bytes();
    let lsn_bytes = lsn.to_le_bytes();
    let crc = record_crc(&len_bytes, &lsn_bytes, payload);
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
}

/// Bytes a record with a payload of `payload_len` bytes occupies on disk.
pub fn frame_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len) as u64
}

/// The result of decoding the bytes at one position of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checksum-valid record. Whether its LSN is the expected one is the caller's check.
    Record {
        /// The record's LSN.
        lsn: Lsn,
        /// The payload, borrowed from the input.
        payload: &'a [u8],
        /// Header plus payload: how far to advance to the next record.
        len_total: usize,
    },
    /// The buffer ends inside a record (or is empty): a torn write, if it is the end of the log.
    Incomplete,
    /// An all-zero header, or a short all-zero remainder: the end-of-data marker.
    Zero,
    /// Not a record: bad length or checksum.
    Corrupt(&'static str),
}

/// Decodes the record at the start of `buf`, trusting a length only up to `max_record`.
pub fn decode(buf: &[u8], max_record: u32) -> Decoded<'_> {
    if buf.is_empty() {
        return Decoded::Incomplete;
    }
    let Some(header) = buf.get(..RECORD_HEADER_LEN) else {
        // Preallocated space need not end on a record boundary.
        return if all_zero(buf) {
            Decoded::Zero
        } else {
            Decoded::Incomplete
        };
    };
    if all_zero(header) {
        return Decoded::Zero;
    }
    let len = u32_at(header, 0);
    let crc = u32_at(header, 4);
    let lsn = u64_at(header, 8);
    if len == 0 {
        return Decoded::Corrupt("zero record length");
    }
    if len > max_record {
        return Decoded::Corrupt("record length exceeds max_record");
    }
    // `checked_add` keeps a 32-bit target from wrapping on a huge (but permitted) length.
    let Some(len_total) = (len as usize).checked_add(RECORD_HEADER_LEN) else {
        return Decoded::Corrupt("record length overflows");
    };
    let Some(payload) = buf.get(RECORD_HEADER_LEN..len_total) else {
        return Decoded::Incomplete;
    };
    if record_crc(&header[0..4], &header[8..16], payload) != crc {
        return Decoded::Corrupt("record checksum mismatch");
    }
    Decoded::Record {
        lsn,
        payload,
        len_total,
    }
}

/// The 32-byte header of the segment whose first record is `first_lsn`.
pub fn encode_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 32 bytes: the segment was never fully created.
    Incomplete,
    /// 32 bytes that are not a valid version-1 header.
    Corrupt(&'static str),
}

/// Checks the segment header at the start of `buf` and returns its `first_lsn`.
pub fn decode_header(buf: &[u8]) -> Result<Lsn, HeaderError> {
    let h = buf
        .get(..SEGMENT_HEADER_LEN)
        .ok_or(HeaderError::Incomplete)?;
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Corrupt("bad segment magic"));
    }
    if u32_at(h, 24) != crc32c::crc32c(&h[0..24]) {
        return Err(HeaderError::Corrupt("segment header checksum mismatch"));
    }
    if u32_at(h, 8) != VERSION {
        return Err(HeaderError::Corrupt("unsupported segment version"));
    }
    if u32_at(h, 12) != 0 || u32_at(h, 28) != 0 {
        return Err(HeaderError::Corrupt(
            "non-zero reserved bytes in segment header",
        ));
    }
    Ok(u64_at(h, 16))
}

/// The 36-byte header of a snapshot at `lsn` holding `payload`; the payload follows it on disk.
pub fn encode_snapshot_header(lsn: Lsn, payload: &[u8]) -> [u8; SNAPSHOT_HEADER_LEN] {
    snapshot_header(lsn, payload.len() as u64, crc32c::crc32c(payload))
}

/// The header of a snapshot at `lsn` whose payload is `len` bytes with CRC32C
/// `payload_crc`: for a payload written in pieces, whose CRC was combined as it went.
pub fn snapshot_header(lsn: Lsn, len: u64, payload_crc: u32) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&lsn.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    // The checksum covers lsn, length and payload, in that order.
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&h[16..32]), payload_crc, len as usize);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a whole snapshot file and returns its LSN and payload.
pub fn decode_snapshot(buf: &[u8]) -> Result<(Lsn, &[u8]), &'static str> {
    decode_snapshot_by(buf, crc32c::crc32c)
}

/// [`decode_snapshot`] with the payload's CRC32C (unseeded) computed by `crc`, so that a
/// caller can spread a large payload's over threads.
pub fn decode_snapshot_by(
    buf: &[u8],
    crc: impl FnOnce(&[u8]) -> u32,
) -> Result<(Lsn, &[u8]), &'static str> {
    let h = buf
        .get(..SNAPSHOT_HEADER_LEN)
        .ok_or("snapshot shorter than its header")?;
    if h[0..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic");
    }
    if u32_at(h, 8) != VERSION || u32_at(h, 12) != 0 {
        return Err("unsupported snapshot version");
    }
    let lsn = u64_at(h, 16);
    let len = u64_at(h, 24);
    let payload = &buf[SNAPSHOT_HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err("snapshot length does not match file size");
    }
    let whole = crc32c::crc32c_combine(crc32c::crc32c(&h[16..32]), crc(payload), payload.len());
    if whole != u32_at(h, 32) {
        return Err("snapshot checksum mismatch");
    }
    Ok((lsn, payload))
}

/// True when `buf` starting at `offset` holds a CRC-valid record whose LSN lies in `lsns`.
///
/// Recovery uses it to look past a bad spot: a later valid record means the damage is not a torn
/// tail. Cheap on zeros and garbage: the length and LSN range are checked before any checksum.
pub fn valid_record_at(
    buf: &[u8],
    offset: usize,
    max_record: u32,
    lsns: std::ops::RangeInclusive<Lsn>,
) -> bool {
    let Some(header) = buf.get(offset..).and_then(|b| b.get(..RECORD_HEADER_LEN)) else {
        return false;
    };
    let len = u32_at(header, 0);
    if len == 0 || len > max_record || !lsns.contains(&u64_at(header, 8)) {
        return false;
    }
    matches!(decode(&buf[offset..], max_record), Decoded::Record { .. })
}

fn record_crc(len_bytes: &[u8], lsn_bytes: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(len_bytes);
    let crc = crc32c::crc32c_append(crc, lsn_bytes);
    crc32c::crc32c_append(crc, payload)
}

fn all_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

// Callers pass slices whose length they have already checked.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: Lsn, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(lsn, payload, &mut out);
        out
    }

    #[test]
    fn decode_returns_the_encoded_record() {
        let buf = record(7, b"hello");
        assert_eq!(
            decode(&buf, 100),
            Decoded::Record {
                lsn: 7,
                payload: b"hello",
                len_total: 21
            }
        );
    }

    #[test]
    fn decode_reports_incomplete_for_every_strict_prefix() {
        let buf = record(1, b"payload");
        for cut in 1..buf.len() {
            assert_eq!(decode(&buf[..cut], 100), Decoded::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn decode_sees_zeros_as_end_of_data() {
        assert_eq!(decode(&[0; 16], 100), Decoded::Zero);
        assert_eq!(decode(&[0; 5], 100), Decoded::Zero);
        assert_eq!(decode(&[0; 4096], 100), Decoded::Zero);
    }

    #[test]
    fn decode_rejects_a_length_above_max_record_before_reading_it() {
        let buf = record(1, &[9; 50]);
        assert_eq!(
            decode(&buf, 49),
            Decoded::Corrupt("record length exceeds max_record")
        );
        let mut huge = [0u8; 16];
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[8] = 1;
        assert!(matches!(decode(&huge, u32::MAX), Decoded::Incomplete));
    }

    #[test]
    fn decode_rejects_a_flipped_lsn() {
        let mut buf = record(3, b"x");
        buf[8] ^= 1;
        assert_eq!(
            decode(&buf, 100),
            Decoded::Corrupt("record checksum mismatch")
        );
    }

    #[test]
    fn header_roundtrips_and_rejects_damage() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h), Ok(42));
        assert_eq!(decode_header(&h[..31]), Err(HeaderError::Incomplete));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(decode_header(&bad), Err(HeaderError::Corrupt(_))),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn snapshot_roundtrips_and_rejects_damage() {
        let mut file = encode_snapshot_header(9, b"state").to_vec();
        file.extend_from_slice(b"state");
        assert_eq!(decode_snapshot(&file), Ok((9, &b"state"[..])));
        for bit in 0..file.len() * 8 {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_snapshot(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_snapshot(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn valid_record_at_respects_the_lsn_window() {
        let mut buf = vec![0xff; 3];
        encode(5, b"abc", &mut buf);
        assert!(valid_record_at(&buf, 3, 100, 5..=5));
        assert!(!valid_record_at(&buf, 3, 100, 6..=9));
        assert!(!valid_record_at(&buf, 2, 100, 0..=u64::MAX));
        assert!(!valid_record_at(&buf, 400, 100, 0..=u64::MAX));
    }
}
