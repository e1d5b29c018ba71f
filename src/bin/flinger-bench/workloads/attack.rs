//! The attackers of the adversarial workload, each a kind of cheap request a
//! hostile or broken client can make:
//! - slow bodies: `POST /v1/job` announcing a body, then one byte every few
//!   seconds (reconnecting when the server drops the connection);
//! - never-ending multipart: an artifact upload whose part headers never
//!   end, sent as fast as the server reads, up to a byte cap, then held open;
//! - unread answers: `GET /v1/agents/data` (made large beforehand) on a
//!   socket with a small receive buffer that is never read;
//! - search floods: `GET /v1/job/search` with thousands of tags, one after
//!   the other on each connection (at most one start per interval).
//!
//! They write raw bytes (no well-behaved client library sends these), run on
//! a runtime and thread of their own so the measured load's tasks are not
//! queued behind them, stop when told or at a hard end time, and only ever
//! connect to the target's loopback address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::client::{is_loopback_ip, status_error, Conn, Target};
use crate::report::AttackerRow;
use crate::stats::{count_kind, micros};

/// Pause before an attacker reconnects after the server dropped it: the
/// attack keeps its pressure without becoming a connect flood.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Declared length of a slow body: under the default 1 MiB job limit, so
/// the server has no reason to refuse it before reading it.
const SLOW_BODY_LEN: usize = 65_536;
/// Bytes per chunk of the never-ending multipart upload.
const CHUNK: usize = 64 * 1024;
/// Receive buffer of an unread connection: the answer stays on the server.
const UNREAD_RCVBUF: u32 = 4096;

/// What to run, how many of each, and until when at the latest.
#[derive(Clone)]
pub struct AttackPlan {
    pub target: Target,
    pub slow_bodies: usize,
    pub slow_interval: Duration,
    pub multipart: usize,
    pub multipart_bytes: u64,
    pub unread: usize,
    pub searches: usize,
    /// The search request's path and query.
    pub search_path: Arc<String>,
    /// Least time between the starts of two searches on one connection.
    pub search_interval: Duration,
    pub search_timeout: Duration,
    /// Every attacker stops by then even if never told.
    pub hard_end: Instant,
}

/// Running attackers; [`Attack::finish`] stops them and returns their figures.
pub struct Attack {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Vec<AttackerRow>>,
}

impl Attack {
    pub fn start(plan: AttackPlan) -> Result<Attack, String> {
        if !is_loopback_ip(plan.target.addr.ip()) {
            return Err(format!(
                "refusing to attack {}: not loopback",
                plan.target.addr
            ));
        }
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("bench-attackers".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let mut row = AttackerRow {
                            kind: "setup",
                            what: "attacker runtime".into(),
                            ..AttackerRow::default()
                        };
                        count_kind(&mut row.answers, format!("cannot start: {e}"));
                        return vec![row];
                    }
                };
                rt.block_on(run(plan, rx))
            })
            .map_err(|e| format!("cannot start the attackers' thread: {e}"))?;
        Ok(Attack { stop, thread })
    }

    /// Stops every attacker (they drop their connections) and collects the figures.
    pub async fn finish(self) -> Vec<AttackerRow> {
        let _ = self.stop.send(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}

/// Resolves when told to stop or at the hard end, whichever comes first.
async fn halt(stop: &mut watch::Receiver<bool>, hard_end: Instant) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = tokio::time::sleep_until(hard_end.into()) => {}
    }
}

async fn run(plan: AttackPlan, stop: watch::Receiver<bool>) -> Vec<AttackerRow> {
    let p = &plan;
    let mut tasks = Vec::new();
    for _ in 0..p.slow_bodies {
        tasks.push(tokio::spawn(slow_body(plan.clone(), stop.clone())));
    }
    for _ in 0..p.multipart {
        tasks.push(tokio::spawn(multipart(plan.clone(), stop.clone())));
    }
    for _ in 0..p.unread {
        tasks.push(tokio::spawn(unread(plan.clone(), stop.clone())));
    }
    for _ in 0..p.searches {
        tasks.push(tokio::spawn(search(plan.clone(), stop.clone())));
    }
    let mut rows: Vec<AttackerRow> = vec![
        AttackerRow {
            kind: "slow-body",
            what: format!(
                "slow `POST /v1/job` bodies (1 byte / {} ms)",
                p.slow_interval.as_millis()
            ),
            count: p.slow_bodies,
            ..AttackerRow::default()
        },
        AttackerRow {
            kind: "multipart",
            what: format!(
                "never-ending multipart part headers (up to {} MiB each)",
                p.multipart_bytes >> 20
            ),
            count: p.multipart,
            ..AttackerRow::default()
        },
        AttackerRow {
            kind: "unread",
            what: "`GET /v1/agents/data`, answer never read".into(),
            count: p.unread,
            ..AttackerRow::default()
        },
        AttackerRow {
            kind: "search",
            what: format!(
                "`GET /v1/job/search` floods (at most 1 per {} ms each)",
                p.search_interval.as_millis()
            ),
            count: p.searches,
            ..AttackerRow::default()
        },
    ];
    for t in tasks {
        let Ok(r) = t.await else { continue };
        let Some(row) = rows.iter_mut().find(|x| x.kind == r.kind) else {
            continue;
        };
        row.opened += r.opened;
        row.closed_by_server += r.closed_by_server;
        row.bytes_sent += r.bytes_sent;
        row.requests += r.requests;
        row.max_latency_us = row.max_latency_us.max(r.max_latency_us);
        crate::stats::merge_kinds(&mut row.answers, r.answers);
    }
    rows.retain(|r| r.count > 0);
    rows
}

/// "HTTP 408" from the start of an answer, or what the bytes look like.
fn answer_of(buf: &[u8]) -> String {
    match buf.strip_prefix(b"HTTP/1.") {
        Some(rest) if rest.len() >= 5 => {
            format!("HTTP {}", String::from_utf8_lossy(&rest[2..5]))
        }
        _ if buf.is_empty() => "closed".into(),
        _ => "garbage".into(),
    }
}

async fn connect(addr: SocketAddr, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

fn host(plan: &AttackPlan) -> String {
    plan.target
        .host
        .to_str()
        .map(str::to_string)
        .unwrap_or_else(|_| plan.target.addr.to_string())
}

/// Waits [`RECONNECT_PAUSE`]; false if told to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, hard_end: Instant) -> bool {
    tokio::select! {
        _ = halt(stop, hard_end) => false,
        _ = tokio::time::sleep(RECONNECT_PAUSE) => true,
    }
}

async fn slow_body(plan: AttackPlan, mut stop: watch::Receiver<bool>) -> AttackerRow {
    let mut row = AttackerRow {
        kind: "slow-body",
        ..AttackerRow::default()
    };
    let head = format!(
        "POST /v1/job HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {SLOW_BODY_LEN}\r\n\r\n",
        host(&plan)
    );
    'connections: loop {
        if *stop.borrow() || Instant::now() >= plan.hard_end {
            break;
        }
        let mut s = match connect(plan.target.addr, None).await {
            Ok(s) => s,
            Err(e) => {
                count_kind(&mut row.answers, format!("connect: {}", e.kind()));
                if pause(&mut stop, plan.hard_end).await {
                    continue;
                }
                break;
            }
        };
        row.opened += 1;
        if s.write_all(head.as_bytes()).await.is_err() {
            row.closed_by_server += 1;
            continue;
        }
        row.bytes_sent += head.len() as u64;
        let (mut rd, mut wr) = s.split();
        let mut buf = [0u8; 256];
        let mut sent = 0;
        let mut next = tokio::time::Instant::now() + plan.slow_interval;
        loop {
            tokio::select! {
                _ = halt(&mut stop, plan.hard_end) => break 'connections,
                r = rd.read(&mut buf) => {
                    row.closed_by_server += 1;
                    let answer = match r {
                        Ok(n) => answer_of(&buf[..n]),
                        Err(e) => format!("read: {}", e.kind()),
                    };
                    count_kind(&mut row.answers, answer);
                    break;
                }
                _ = tokio::time::sleep_until(next) => {
                    if sent + 1 >= SLOW_BODY_LEN || wr.write_all(b" ").await.is_err() {
                        // The body would be complete (never, at any sane
                        // interval) or the server is gone: start over.
                        row.closed_by_server += u64::from(sent + 1 < SLOW_BODY_LEN);
                        break;
                    }
                    sent += 1;
                    row.bytes_sent += 1;
                    next += plan.slow_interval;
                }
            }
        }
        if !pause(&mut stop, plan.hard_end).await {
            break;
        }
    }
    row
}

async fn multipart(plan: AttackPlan, mut stop: watch::Receiver<bool>) -> AttackerRow {
    let mut row = AttackerRow {
        kind: "multipart",
        ..AttackerRow::default()
    };
    // A chunk of the header that never ends, framed for chunked encoding.
    let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
    chunk.extend(std::iter::repeat_n(b'A', CHUNK));
    chunk.extend_from_slice(b"\r\n");
    let chunk = Bytes::from(chunk);
    'connections: loop {
        if *stop.borrow() || Instant::now() >= plan.hard_end {
            break;
        }
        let mut s = match connect(plan.target.addr, None).await {
            Ok(s) => s,
            Err(e) => {
                count_kind(&mut row.answers, format!("connect: {}", e.kind()));
                if pause(&mut stop, plan.hard_end).await {
                    continue;
                }
                break;
            }
        };
        row.opened += 1;
        let part =
            "--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nX-Long: ";
        let head = format!(
            "POST /v1/result/{}/artifact HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{part}\r\n",
            uuid::Uuid::new_v4(),
            host(&plan),
            part.len()
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            row.closed_by_server += 1;
            continue;
        }
        row.bytes_sent += head.len() as u64;
        let (mut rd, mut wr) = s.split();
        let mut buf = [0u8; 256];
        let mut sent: u64 = 0;
        loop {
            let more = sent < plan.multipart_bytes;
            tokio::select! {
                _ = halt(&mut stop, plan.hard_end) => break 'connections,
                r = rd.read(&mut buf) => {
                    row.closed_by_server += 1;
                    let answer = match r {
                        Ok(n) => answer_of(&buf[..n]),
                        Err(e) => format!("read: {}", e.kind()),
                    };
                    count_kind(&mut row.answers, answer);
                    break;
                }
                w = wr.write_all(&chunk), if more => {
                    if w.is_err() {
                        row.closed_by_server += 1;
                        count_kind(&mut row.answers, "closed while sending".into());
                        break;
                    }
                    sent += CHUNK as u64;
                    row.bytes_sent += chunk.len() as u64;
                }
            }
        }
        if !pause(&mut stop, plan.hard_end).await {
            break;
        }
    }
    row
}

async fn unread(plan: AttackPlan, mut stop: watch::Receiver<bool>) -> AttackerRow {
    let mut row = AttackerRow {
        kind: "unread",
        ..AttackerRow::default()
    };
    let mut s = match connect(plan.target.addr, Some(UNREAD_RCVBUF)).await {
        Ok(s) => s,
        Err(e) => {
            count_kind(&mut row.answers, format!("connect: {}", e.kind()));
            return row;
        }
    };
    row.opened += 1;
    let req = format!(
        "GET /v1/agents/data HTTP/1.1\r\nHost: {}\r\n\r\n",
        host(&plan)
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        row.closed_by_server += 1;
        return row;
    }
    row.bytes_sent += req.len() as u64;
    halt(&mut stop, plan.hard_end).await;
    // Only now look at what arrived: the status line, or that the server
    // gave up on us.
    let mut buf = [0u8; 256];
    let answer = match s.try_read(&mut buf) {
        Ok(0) => {
            row.closed_by_server += 1;
            "closed".to_string()
        }
        Ok(n) => answer_of(&buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "nothing yet".into(),
        Err(e) => {
            row.closed_by_server += 1;
            format!("read: {}", e.kind())
        }
    };
    count_kind(&mut row.answers, answer);
    row
}

async fn search(plan: AttackPlan, mut stop: watch::Receiver<bool>) -> AttackerRow {
    let mut row = AttackerRow {
        kind: "search",
        opened: 1,
        ..AttackerRow::default()
    };
    let mut conn = Conn::new(&plan.target, plan.search_timeout);
    loop {
        if *stop.borrow() || Instant::now() >= plan.hard_end {
            break;
        }
        let t0 = Instant::now();
        let paced = tokio::time::sleep_until((t0 + plan.search_interval).into());
        tokio::select! {
            _ = halt(&mut stop, plan.hard_end) => break,
            r = conn.call(Method::GET, &plan.search_path, None, None) => {
                row.bytes_sent += plan.search_path.len() as u64;
                match r {
                    Ok((status, body)) => {
                        row.requests += 1;
                        row.max_latency_us = row.max_latency_us.max(micros(t0.elapsed()));
                        let answer = if status.is_success() {
                            format!("HTTP {}", status.as_u16())
                        } else {
                            status_error(status, &body)
                        };
                        count_kind(&mut row.answers, answer);
                    }
                    Err(e) => {
                        count_kind(&mut row.answers, e);
                        if !pause(&mut stop, plan.hard_end).await {
                            break;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = halt(&mut stop, plan.hard_end) => break,
            _ = paced => {}
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_named_by_status() {
        assert_eq!(answer_of(b"HTTP/1.1 408 Request Timeout\r\n"), "HTTP 408");
        assert_eq!(answer_of(b""), "closed");
        assert_eq!(answer_of(b"xyz"), "garbage");
    }
}
