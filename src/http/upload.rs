//! Bounds on a multipart upload's framing, checked in one linear pass over the body before
//! the multipart parser sees it.
//!
//! The parser (`multer`) bounds field and stream sizes ([`multer::Constraints`], set by
//! the upload handler) but not a part's header block or the preamble: it looks for their
//! end by rescanning everything buffered so far, so a header that never ends costs memory
//! up to the whole upload limit and time quadratic in it. [`Framing`] watches the same
//! bytes for the boundary and the end of each header block, keeping only a pattern's
//! length of them, and fails the stream as soon as a preamble or a header block grows past
//! `--max-part-header-bytes` or a part beyond `--max-upload-parts` begins.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::error::Error;

/// The limits [`Framing`] enforces.
#[derive(Clone, Copy, Debug)]
pub struct FramingLimits {
    /// Largest preamble, and largest header block of one part (delimiter line included).
    pub header_bytes: usize,
    /// Most parts.
    pub parts: usize,
}

/// Why [`Framing`] stopped the stream; the handler turns it back into the [`Error`].
#[derive(Debug)]
pub struct Refused(pub Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// Where in the multipart body the scan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` (the close delimiter) or a part's headers follow.
    Delimited,
    /// Inside a part's header block.
    Headers,
    /// Inside a part's content.
    Content,
    /// After the close delimiter: ignored.
    Epilogue,
}

/// A stream of body chunks checked against [`FramingLimits`]. Passes every chunk through
/// unchanged; fails with [`Refused`] (boxed) at the first chunk that breaks a limit.
pub struct Framing<S> {
    inner: S,
    limits: FramingLimits,
    /// `--boundary`: opens the first part.
    first: Vec<u8>,
    /// `\r\n--boundary`: every later delimiter.
    delimiter: Vec<u8>,
    phase: Phase,
    /// Bytes not yet classified: at most a pattern's length (or a header block) of them.
    pending: Vec<u8>,
    /// Bytes of the current preamble or header block already classified.
    seen: usize,
    /// Parts begun.
    parts: usize,
    /// Set once a limit was broken: the stream ends.
    failed: bool,
}

impl<S> Framing<S> {
    /// Watches `inner`, a multipart body with `boundary`.
    pub fn new(inner: S, boundary: &str, limits: FramingLimits) -> Self {
        let first = format!("--{boundary}").into_bytes();
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        Framing {
            inner,
            limits,
            first,
            delimiter,
            phase: Phase::Preamble,
            pending: Vec::new(),
            seen: 0,
            parts: 0,
            failed: false,
        }
    }

    /// Classifies `chunk`; an error names the broken limit.
    fn scan(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.pending.extend_from_slice(chunk);
        loop {
            match self.phase {
                Phase::Preamble => {
                    if let Some(i) = memchr::memmem::find(&self.pending, &self.first) {
                        self.check_header(i, "the preamble")?;
                        self.pending.drain(..i + self.first.len());
                        self.phase = Phase::Delimited;
                    } else {
                        self.keep_tail(self.first.len() - 1, "the preamble")?;
                        return Ok(());
                    }
                }
                Phase::Delimited => {
                    if self.pending.len() < 2 {
                        return Ok(());
                    }
                    if self.pending.starts_with(b"--") {
                        self.phase = Phase::Epilogue;
                        continue;
                    }
                    self.parts += 1;
                    if self.parts > self.limits.parts {
                        return Err(Error::TooLarge(format!(
                            "Payload too large: an upload may have at most {} parts (--max-upload-parts)",
                            self.limits.parts
                        )));
                    }
                    self.seen = 0;
                    self.phase = Phase::Headers;
                }
                Phase::Headers => {
                    if let Some(i) = memchr::memmem::find(&self.pending, b"\r\n\r\n") {
                        self.check_header(i, "a part's headers")?;
                        self.pending.drain(..i + 4);
                        self.phase = Phase::Content;
                    } else {
                        self.keep_tail(3, "a part's headers")?;
                        return Ok(());
                    }
                }
                Phase::Content => {
                    if let Some(i) = memchr::memmem::find(&self.pending, &self.delimiter) {
                        self.pending.drain(..i + self.delimiter.len());
                        self.phase = Phase::Delimited;
                    } else {
                        let keep = self.delimiter.len() - 1;
                        let drop = self.pending.len().saturating_sub(keep);
                        self.pending.drain(..drop);
                        return Ok(());
                    }
                }
                Phase::Epilogue => {
                    self.pending.clear();
                    return Ok(());
                }
            }
        }
    }

    /// Fails when `more` bytes on top of those seen exceed the header limit.
    fn check_header(&self, more: usize, what: &str) -> Result<(), Error> {
        if self.seen + more > self.limits.header_bytes {
            return Err(Error::TooLarge(format!(
                "Payload too large: {what} of the multipart upload exceed {} bytes (--max-part-header-bytes)",
                self.limits.header_bytes
            )));
        }
        Ok(())
    }

    /// Counts all but the last `keep` pending bytes as seen (they cannot start the pattern
    /// looked for) and checks the header limit.
    fn keep_tail(&mut self, keep: usize, what: &str) -> Result<(), Error> {
        let counted = self.pending.len().saturating_sub(keep);
        self.check_header(counted, what)?;
        self.seen += counted;
        self.pending.drain(..counted);
        Ok(())
    }
}

impl<S, E> Stream for Framing<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.scan(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(e) => {
                    self.failed = true;
                    Poll::Ready(Some(Err(Box::new(Refused(e)))))
                }
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &[u8], chunk: usize, limits: FramingLimits) -> Result<usize, Error> {
        let mut framing = Framing::new(
            futures_util::stream::empty::<Result<Bytes, Error>>(),
            "BB",
            limits,
        );
        for piece in body.chunks(chunk) {
            framing.scan(piece)?;
        }
        Ok(framing.parts)
    }

    const LIMITS: FramingLimits = FramingLimits {
        header_bytes: 64,
        parts: 2,
    };

    #[test]
    fn parts_are_counted_whatever_the_chunking() {
        let body = b"--BB\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--B\r\nx\r\n--BB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--BB--\r\n";
        for chunk in 1..body.len() {
            assert_eq!(scan(body, chunk, LIMITS).unwrap(), 2, "chunk {chunk}");
        }
    }

    #[test]
    fn long_headers_preamble_and_many_parts_are_refused() {
        let long = format!("--BB\r\nX: {}\r\n\r\n", "A".repeat(100));
        let preamble = format!("{}--BB\r\n\r\n", "P".repeat(100));
        let many = "--BB\r\n\r\nx\r\n".repeat(3);
        for body in [long, preamble, many] {
            for chunk in [1, 7, 1000] {
                assert!(
                    scan(body.as_bytes(), chunk, LIMITS).is_err(),
                    "{body:?} {chunk}"
                );
            }
        }
    }
}
