//! Log answers streamed: a JSON (or server-sent events) body whose strings are the log's
//! fragments, escaped a bounded piece at a time straight from the stored buffers.
//!
//! A job's log may hold up to `--max-job-data-bytes` (1 GiB). Built whole, one answer
//! held the joined text, its UTF-8-checked copy and its escaped JSON at once, about three
//! times the log, per request; a client repeating the GET on many large logs multiplied
//! that. Here an answer holds handles to the fragments (no text) and at most [`CHUNK`]
//! bytes of escaped output, produced only when hyper asks for the next frame (so a slow
//! reader holds one chunk, not the log). The bytes are exactly serde_json's for the same
//! document: text is decoded as `String::from_utf8_lossy` decodes the whole concatenation
//! (a character split across fragments stays whole; invalid bytes become U+FFFD), and
//! escaped as serde_json escapes a string. The length is counted first by the same code,
//! so the answer keeps its `Content-Length`.
//!
//! Small answers (texts under [`WHOLE_BELOW`] bytes) are built whole by [`whole`] instead:
//! one pass over the text, where a streamed answer needs two (its length, then its bytes).
//!
//! It knows nothing of the answers' shapes: handlers lay out [`Part`]s.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Bytes of output produced per frame, at most (plus one escaped input step).
pub const CHUNK: usize = 64 << 10;
/// Input bytes escaped per step: at most 6× this in output (`\u00XX`).
const STEP: usize = 8 << 10;

/// One part of an answer.
pub enum Part {
    /// Bytes sent as they are (JSON punctuation, keys, numbers).
    Raw(Bytes),
    /// Texts, concatenated, sent as the contents of a JSON string (without the quotes).
    Text(Vec<Bytes>),
}

/// Where escaped output goes: a buffer, or a count of it.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
struct Count(u64);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// UTF-8 of U+FFFD, what invalid input becomes.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Decodes text given in pieces (as `String::from_utf8_lossy` decodes their
/// concatenation) and writes it escaped as serde_json writes a string's contents.
#[derive(Default)]
struct Escaper {
    /// The start of a character the previous piece ended in the middle of.
    carry: Vec<u8>,
}

impl Escaper {
    /// Escapes `input`, keeping an incomplete character at its end for the next call.
    fn push(&mut self, input: &[u8], out: &mut impl Sink) {
        let joined;
        let mut rest: &[u8] = if self.carry.is_empty() {
            input
        } else {
            // At most 3 carried bytes and one step of input.
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(input);
            joined = buf;
            &joined
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    escape(text, out);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    escape(std::str::from_utf8(valid).expect("checked up to here"), out);
                    match e.error_len() {
                        None => {
                            // Possibly completed by the next piece.
                            self.carry = after.to_vec();
                            return;
                        }
                        Some(bad) => {
                            out.put(REPLACEMENT);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
    }

    /// The text ended: an incomplete character left is one U+FFFD.
    fn finish(&mut self, out: &mut impl Sink) {
        if !self.carry.is_empty() {
            self.carry.clear();
            out.put(REPLACEMENT);
        }
    }
}

/// Writes `text` escaped as serde_json escapes a string's contents: `"` and `\` with a
/// backslash, the control characters below 0x20 as `\b \t \n \f \r` or `\u00xx`,
/// everything else as it is.
fn escape(text: &str, out: &mut impl Sink) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.put(&bytes[start..i]);
        if short.is_empty() {
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.put(short);
        }
        start = i + 1;
    }
    out.put(&bytes[start..]);
}

/// The answer's length in bytes.
pub fn length(parts: &[Part]) -> u64 {
    let mut count = Count(0);
    for part in parts {
        match part {
            Part::Raw(bytes) => count.put(bytes),
            Part::Text(pieces) => {
                let mut escaper = Escaper::default();
                for piece in pieces {
                    escaper.push(piece, &mut count);
                }
                escaper.finish(&mut count);
            }
        }
    }
    count.0
}

/// Produces an answer's bytes a chunk at a time.
struct Writer {
    /// Parts not started.
    parts: VecDeque<Part>,
    /// The text part being written: its pieces left, and how far into the first.
    text: VecDeque<Bytes>,
    offset: usize,
    /// Whether a text part is being written.
    in_text: bool,
    escaper: Escaper,
    /// Bytes reserved for each chunk: the input's size and an eighth for escapes, at most
    /// about a chunk (growing a buffer from empty copied a small answer's bytes ten times).
    capacity: usize,
}

impl Writer {
    fn new(parts: Vec<Part>) -> Writer {
        let input: usize = parts
            .iter()
            .map(|part| match part {
                Part::Raw(bytes) => bytes.len(),
                Part::Text(pieces) => pieces.iter().map(Bytes::len).sum(),
            })
            .sum();
        Writer {
            parts: parts.into(),
            text: VecDeque::new(),
            offset: 0,
            in_text: false,
            escaper: Escaper::default(),
            capacity: (input + input / 8 + 16).min(CHUNK + 1024),
        }
    }

    /// The next chunk (at most about [`CHUNK`] bytes), `None` at the end.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out: Vec<u8> = Vec::with_capacity(self.capacity);
        while out.len() < CHUNK {
            if self.in_text {
                match self.text.front() {
                    Some(piece) => {
                        let end = (self.offset + STEP).min(piece.len());
                        self.escaper.push(&piece[self.offset..end], &mut out);
                        if end == piece.len() {
                            self.text.pop_front();
                            self.offset = 0;
                        } else {
                            self.offset = end;
                        }
                    }
                    None => {
                        self.escaper.finish(&mut out);
                        self.in_text = false;
                    }
                }
                continue;
            }
            match self.parts.pop_front() {
                // A large raw part (a stored result member) is sent as it is, not copied.
                Some(Part::Raw(bytes)) if bytes.len() >= CHUNK => {
                    if out.is_empty() {
                        return Some(bytes);
                    }
                    self.parts.push_front(Part::Raw(bytes));
                    break;
                }
                Some(Part::Raw(bytes)) => out.extend_from_slice(&bytes),
                Some(Part::Text(pieces)) => {
                    self.text = pieces.into();
                    self.offset = 0;
                    self.in_text = true;
                }
                None => break,
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// A streamed answer of known length.
struct Streamed {
    writer: Writer,
    /// Bytes not yet produced.
    left: u64,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let chunk = self.writer.next_chunk();
        if let Some(chunk) = &chunk {
            self.left = self.left.saturating_sub(chunk.len() as u64);
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A body of `parts` whose length (`length(&parts)`, counted by the caller, possibly off
/// the runtime) is `len`.
pub fn body(parts: Vec<Part>, len: u64) -> Body {
    Body::new(Streamed {
        writer: Writer::new(parts),
        left: len,
    })
}

/// Bytes of text (and stored members) under which an answer is built whole by [`whole`]:
/// at most six times this escaped, a few hundred KiB held for one request.
pub const WHOLE_BELOW: usize = 32 << 10;

/// The bytes of `parts` in one buffer (one pass over the texts; [`body`] needs two, one to
/// count). For answers whose texts hold less than [`WHOLE_BELOW`] bytes.
pub fn whole(parts: Vec<Part>) -> Bytes {
    let mut chunks = chunks(parts);
    let Some(first) = chunks.next() else {
        return Bytes::new();
    };
    match chunks.next() {
        None => first,
        Some(second) => {
            let mut all = first.to_vec();
            all.extend_from_slice(&second);
            chunks.for_each(|chunk| all.extend_from_slice(&chunk));
            Bytes::from(all)
        }
    }
}

/// The bytes of `parts`, produced chunk by chunk (what [`body`] sends), for callers that
/// frame each chunk themselves (server-sent events).
pub fn chunks(parts: Vec<Part>) -> impl Iterator<Item = Bytes> {
    let mut writer = Writer::new(parts);
    std::iter::from_fn(move || writer.next_chunk())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no proptest: its regression files would land here).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Text full of what is hard: multi-byte characters, control characters, quotes,
    /// backslashes, invalid and truncated sequences.
    fn nasty(rng: &mut Rng, len: usize) -> Vec<u8> {
        const ATOMS: &[&[u8]] = &[
            b"a",
            b"\"",
            b"\\",
            b"\n",
            b"\r",
            b"\t",
            b"\x08",
            b"\x0c",
            b"\x00",
            b"\x1f",
            b"\x7f",
            "é".as_bytes(),
            "€".as_bytes(),
            "😀".as_bytes(),
            b"\xe2\x82",
            b"\xf0\x9f",
            b"\xff",
            b"\xc3",
            b"\x80",
            b"\xed\xa0\x80",
            b"/",
            b"<",
        ];
        let mut text = Vec::new();
        while text.len() < len {
            text.extend_from_slice(ATOMS[rng.below(ATOMS.len())]);
        }
        text
    }

    #[test]
    fn a_large_raw_part_is_sent_as_its_own_chunk_after_what_came_before() {
        let large = Bytes::from(vec![b'7'; CHUNK + 1]);
        let parts = vec![
            Part::Raw(Bytes::from_static(b"{\"a\":")),
            Part::Raw(large.clone()),
            Part::Raw(Bytes::from_static(b",\"b\":\"")),
            Part::Text(vec![Bytes::from_static(b"x\n")]),
            Part::Raw(Bytes::from_static(b"\"}")),
        ];
        assert_eq!(length(&parts), CHUNK as u64 + 1 + 16);
        let got: Vec<Bytes> = chunks(parts).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0][..], b"{\"a\":");
        assert_eq!(
            got[1].as_ptr(),
            large.as_ptr(),
            "sent as stored, not copied"
        );
        assert_eq!(&got[2][..], b",\"b\":\"x\\n\"}");
    }

    #[test]
    fn streamed_json_is_serde_jsons_bytes_for_any_text_cut_anywhere() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..2_000 {
            let len = rng.below(if round % 100 == 0 { 200_000 } else { 64 });
            let text = nasty(&mut rng, len);
            // Cut into pieces at random places (inside characters too).
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let end = (at + 1 + rng.below(12)).min(text.len());
                let end = if round % 7 == 0 { text.len() } else { end };
                pieces.push(Bytes::copy_from_slice(&text[at..end]));
                at = end;
            }
            let lossy = String::from_utf8_lossy(&text).into_owned();
            let want = serde_json::to_vec(&serde_json::json!({"log_data": lossy})).unwrap();
            let parts = vec![
                Part::Raw(Bytes::from_static(b"{\"log_data\":\"")),
                Part::Text(pieces),
                Part::Raw(Bytes::from_static(b"\"}")),
            ];
            assert_eq!(length(&parts), want.len() as u64, "round {round}");
            let got: Vec<Bytes> = chunks(parts).collect();
            assert!(got.iter().all(|c| c.len() <= CHUNK + 6 * STEP + 16));
            assert_eq!(got.concat(), want, "round {round}: {text:?}");
        }
    }
}
