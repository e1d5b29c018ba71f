//! `log_body`: a streamed log answer (`flinger::http::logbody`) against serde_json, for
//! any text cut anywhere. Shared by the fuzz target and the stable seed replay.
//!
//! Input: byte 0 = how many cuts (low 4 bits) and whether the text is split into two text
//! parts with a raw part between (bit 4); then two bytes per cut (little-endian offsets
//! into the text, taken modulo its length, sorted); the rest is the text, any bytes
//! (invalid UTF-8 and characters split by a cut included).
//! Properties:
//! - the bytes streamed are exactly serde_json's for the same document, the text decoded
//!   as `String::from_utf8_lossy` decodes the whole concatenation of a part's pieces;
//! - `length` counts exactly the bytes streamed (the answer's `Content-Length`);
//! - no chunk is larger than [`CHUNK`] plus one escaped step of input (a slow reader holds
//!   one chunk, never the log).
//! - `whole`, the one-pass body of small answers, gives the same bytes.

use bytes::Bytes;
use flinger::http::logbody::{chunks, length, whole, Part, CHUNK};

/// Largest chunk allowed: `CHUNK`, plus one step of 8 KiB of input escaped at up to six
/// bytes a byte, plus the raw punctuation around it.
const MAX_CHUNK: usize = CHUNK + 6 * (8 << 10) + 64;

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(flags & 0x0f);
    let two_parts = flags & 0x10 != 0;
    let (cut_bytes, text) = rest.split_at((2 * cuts).min(rest.len()));
    let mut at: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (text.len() + 1))
        .collect();
    at.push(0);
    at.push(text.len());
    at.sort_unstable();
    at.dedup();
    let pieces: Vec<Bytes> = at
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&text[w[0]..w[1]]))
        .collect();

    // One text part, or the pieces shared between two (each decoded on its own, as two
    // phases' logs are).
    let (first, second) = if two_parts {
        let half = pieces.len() / 2;
        (pieces[..half].to_vec(), Some(pieces[half..].to_vec()))
    } else {
        (pieces, None)
    };
    let lossy = |pieces: &[Bytes]| String::from_utf8_lossy(&pieces.concat()).into_owned();
    let mut want = serde_json::Map::new();
    want.insert("a".into(), lossy(&first).into());
    if let Some(second) = &second {
        want.insert("b".into(), lossy(second).into());
    }
    let parts = || {
        let mut parts = vec![
            Part::Raw(Bytes::from_static(b"{\"a\":\"")),
            Part::Text(first.clone()),
        ];
        if let Some(second) = &second {
            parts.push(Part::Raw(Bytes::from_static(b"\",\"b\":\"")));
            parts.push(Part::Text(second.clone()));
        }
        parts.push(Part::Raw(Bytes::from_static(b"\"}")));
        parts
    };
    let want = serde_json::to_vec(&serde_json::Value::Object(want)).expect("a map encodes");

    assert_eq!(length(&parts()), want.len() as u64, "the counted length");
    let got: Vec<Bytes> = chunks(parts()).collect();
    for chunk in &got {
        assert!(chunk.len() <= MAX_CHUNK, "a chunk of {} bytes", chunk.len());
    }
    assert_eq!(got.concat(), want, "the streamed bytes");
    assert_eq!(whole(parts()), want, "the bytes built whole");
}
