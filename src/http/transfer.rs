//! Minimum transfer rate: a request body must arrive, and a response be taken by the
//! client, at `min_transfer_bytes` per `transfer_window` at least (see `config.rs`).
//!
//! Only time spent *waiting on the client* counts: a handler that is busy elsewhere (an
//! fsync, an actor) and a connection idle between requests use up nothing. So a slow but
//! honest upload of any size goes through at the minimum rate, while a client that
//! trickles a body one byte at a time, or stops reading a response, loses its connection
//! within one window instead of holding a slot (and the memory of the response) forever.
//!
//! - [`hold_to_rate`]: wraps every request body (called by `http::front`); a body too
//!   slow ends in 408 with `Connection: close`.
//! - [`Watched`]: wraps a connection's socket; a write blocked for a window with too
//!   little taken fails, which closes the connection.
//!
//! Request heads are bounded by hyper's `header_read_timeout` and `max_buf_size`, set in
//! `server.rs`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::Error;

/// The minimum rate, as configured.
#[derive(Clone, Copy, Debug)]
pub struct MinRate {
    /// Bytes that must move...
    pub bytes: u64,
    /// ...per this much time spent waiting on the client.
    pub window: Duration,
}

/// Progress of one transfer direction against a [`MinRate`].
struct RateWindow {
    rate: MinRate,
    /// Bytes moved since the window began.
    moved: u64,
    /// Time spent waiting on the client since the window began, not counting the current
    /// wait.
    waited: Duration,
    /// When the current wait began (the transfer is pending).
    waiting_since: Option<Instant>,
    /// Wakes the task when the window would run out; made on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl RateWindow {
    fn new(rate: MinRate) -> Self {
        RateWindow {
            rate,
            moved: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// `n` bytes moved: the current wait (if any) ends; a full quota starts a new window.
    fn moved(&mut self, n: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.moved += n as u64;
        if self.moved >= self.rate.bytes {
            self.moved = 0;
            self.waited = Duration::ZERO;
        }
    }

    /// The transfer is pending on the client: true once this window's time is spent
    /// waiting with too few bytes moved. Otherwise arranges a wake-up for that moment.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let Some(left) = self.rate.window.checked_sub(self.waited) else {
            return true;
        };
        let deadline = since + left;
        if deadline <= now {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The error a too-slow body ends with (the handler sees a body error).
#[derive(Debug)]
struct TooSlow(MinRate);

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body arrived slower than {} bytes per {} s",
            self.0.bytes,
            self.0.window.as_secs()
        )
    }
}

impl std::error::Error for TooSlow {}

/// A request body held to the minimum rate.
struct RateLimitedBody {
    inner: Body,
    window: RateWindow,
    /// Set when the body timed out, so the middleware answers 408 whatever the handler
    /// made of the error.
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for RateLimitedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.window.moved(frame.data_ref().map_or(0, Bytes::len));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if this.window.poll_expired(cx) => {
                this.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(TooSlow(this.window.rate)))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds a request's body to the minimum rate (done by `front` for every request). A body
/// already known to be empty cannot be slow and is left as it is (no allocation); for any
/// other, the returned [`SlowBody`] tells afterwards whether it fell below the rate.
pub fn hold_to_rate(rate: MinRate, request: Request) -> (Request, Option<SlowBody>) {
    if request.body().is_end_stream() {
        return (request, None);
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let request = request.map(|inner| {
        Body::new(RateLimitedBody {
            inner,
            window: RateWindow::new(rate),
            timed_out: flag,
        })
    });
    (request, Some(SlowBody { rate, timed_out }))
}

/// Whether a body held by [`hold_to_rate`] fell below the rate, and the answer then.
pub struct SlowBody {
    rate: MinRate,
    timed_out: Arc<AtomicBool>,
}

impl SlowBody {
    /// True once the body arrived too slowly (the handler saw an error instead of it).
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// The answer to a request whose body was too slow, whatever the handler answered:
    /// 408, and `Connection: close` since the rest of the body was not read.
    pub fn response(&self) -> Response {
        let mut response = Error::Timeout(format!(
            "Request Timeout: {}; see --min-transfer-bytes and --transfer-window-secs",
            TooSlow(self.rate)
        ))
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// A connection's socket with a write-stall guard: a response the client does not take
/// at the minimum rate fails the connection (hyper then drops it and what it buffered).
pub struct Watched<T> {
    inner: T,
    writes: RateWindow,
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, rate: MinRate) -> Self {
        Watched {
            inner,
            writes: RateWindow::new(rate),
        }
    }

    fn stalled(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took less than {} bytes of the response in {} s",
                self.writes.rate.bytes,
                self.writes.rate.window.as_secs()
            ),
        )
    }

    fn account(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(n)) => {
                self.writes.moved(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.writes.poll_expired(cx) => Poll::Ready(Err(self.stalled())),
            other => other,
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.account(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.account(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
