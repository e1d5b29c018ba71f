//! `orphan_file`: the byte format of an orphan data file (results and log fragments posted
//! for ids no job has) through `flinger::model::orphans::decode` and `read_doc`, which read
//! such a file back from disk. Shared by the fuzz target and the stable seed replay.
//!
//! Input: byte 0 bit 0 = frame each chunk (give it its length and checksum, so the fuzzer
//! reaches the records' decoding) instead of taking the bytes as the file; then chunks,
//! each a 2-byte little-endian length and that many bytes (the last takes what is left).
//! Properties:
//! - no bytes make `decode` or `read_doc` panic: a damaged file is an error naming where;
//! - framed chunks are refused only when a payload is not a record;
//! - records decoded from a file encode to frames that decode to the same records, and the
//!   document `read_doc` folds from the file and from those frames is the same.

use flinger::model::orphans::{decode, encode, read_doc, OrphanEntry};

pub fn check(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let framed = flags & 1 == 1;
    let mut file = Vec::new();
    let mut payloads = Vec::new();
    while !rest.is_empty() {
        let (len, body) = match rest {
            [lo, hi, body @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), body),
            _ => (rest.len(), &[][..]),
        };
        let chunk = &body[..len.min(body.len())];
        rest = &body[chunk.len()..];
        if framed {
            file.extend(frame(chunk));
            payloads.push(chunk);
        } else {
            file.extend_from_slice(chunk);
        }
    }
    let entry = OrphanEntry {
        file: "orphan".into(),
        len: file.len() as u64,
        at: 1_700_000_000,
        output_read: u64::from(flags >> 1),
    };
    let doc = read_doc(&file, &entry);
    let records = match decode(&file) {
        Ok(records) => records,
        Err(e) => {
            assert!(doc.is_err(), "read_doc folded a file decode refuses ({e})");
            if framed {
                let undecodable = payloads.iter().any(|p| decode(&frame(p)).is_err());
                assert!(
                    undecodable,
                    "framed records refused, each decoding alone: {e}"
                );
            }
            return;
        }
    };
    let doc = doc.expect("read_doc reads a file decode reads");
    let again: Vec<u8> = records.iter().flat_map(encode).collect();
    let decoded = decode(&again).expect("encoded records decode");
    assert_eq!(
        decoded, records,
        "records changed through encode and decode"
    );
    let entry = OrphanEntry {
        len: again.len() as u64,
        ..entry
    };
    let doc_again = read_doc(&again, &entry).expect("read_doc reads encoded records");
    // Compared member by member: the document's de-duplication sets list in hash order.
    assert_eq!(
        doc_again.fields, doc.fields,
        "fields differ after re-encoding"
    );
    assert_eq!(
        doc_again.output.fragments, doc.output.fragments,
        "output fragments differ after re-encoding"
    );
    assert_eq!(
        doc_again.serial.fragments, doc.serial.fragments,
        "serial fragments differ after re-encoding"
    );
    assert_eq!(
        (doc_again.output_read, doc_again.updated_at),
        (doc.output_read, doc.updated_at)
    );
}

/// `payload` framed as the format says: length, checksum, payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}
