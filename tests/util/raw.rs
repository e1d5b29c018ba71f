//! Bytes on the wire: multipart bodies, deterministic payloads, and [`RawConn`], a TCP
//! connection that sends exactly what a test writes (slow, partial or malformed requests).

#![allow(dead_code)] // Not every test module uses every helper.

use std::time::Duration;

use bytes::Bytes;
use hyper::HeaderMap;

use super::Resp;

/// Deterministic pseudo-random bytes (xorshift64*), for artifacts and output.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One part of a hand-built multipart body.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub name: &'a str,
    pub filename: Option<&'a str>,
    pub bytes: &'a [u8],
}

impl<'a> Part<'a> {
    pub fn file(name: &'a str, filename: &'a str, bytes: &'a [u8]) -> Part<'a> {
        Part {
            name,
            filename: Some(filename),
            bytes,
        }
    }
    pub fn field(name: &'a str, bytes: &'a [u8]) -> Part<'a> {
        Part {
            name,
            filename: None,
            bytes,
        }
    }
}

/// Builds a `multipart/form-data` body; returns `(content_type, body)`.
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    // Long and random enough never to occur inside the (pseudo-random) payloads we send.
    let boundary = format!("----flinger-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.filename {
            Some(f) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n",
                        p.name, f
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
            }
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{}\"\r\n", p.name).as_bytes(),
            ),
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(p.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A raw TCP connection to the server, for requests a well-behaved client library will not send
/// (malformed HTTP) or whose early answer it cannot surface (a 413 sent before the body was read:
/// like urllib3, we ignore the failed write and read the answer anyway).
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(base: &str) -> RawConn {
        let addr = base.trim_start_matches("http://");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// [`RawConn::connect`] from the local address `source` (any of 127.0.0.0/8 reaches a
    /// server on 127.0.0.1): the server sees the request come from `source`, as it would
    /// a client on another host (its per-address limits and logs).
    pub async fn connect_from(base: &str, source: std::net::IpAddr) -> RawConn {
        let addr: std::net::SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("a base URL of an IP address and port");
        let socket = if source.is_ipv6() {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .expect("socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(addr).await.expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`, ignoring errors: the server may answer and close before reading them all.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one response (status line, headers, `Content-Length` body or body up to EOF).
    /// `None` when the connection closes (or resets) before a status line arrives.
    pub async fn read_response(&mut self) -> Option<Resp> {
        tokio::time::timeout(Duration::from_secs(15), self.read_response_inner())
            .await
            .expect("raw request: no answer and no close within 15 s")
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn read_response_inner(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                // Closed mid-head: report the status line if there is one.
                return parse_head(&self.buf).map(|(status, headers)| Resp {
                    status,
                    headers,
                    body: Bytes::new(),
                });
            }
        };
        let (status, headers) = parse_head(&self.buf[..head_end])?;
        let length = headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body = match length {
            Some(n) => {
                while self.buf.len() < head_end + n {
                    if !self.fill().await {
                        break;
                    }
                }
                let end = (head_end + n).min(self.buf.len());
                let body = self.buf[head_end..end].to_vec();
                self.buf.drain(..end);
                body
            }
            None if status == 204 || status == 304 || (100..200).contains(&status) => {
                self.buf.drain(..head_end);
                Vec::new()
            }
            None => {
                while self.fill().await {}
                let body = self.buf[head_end..].to_vec();
                self.buf.clear();
                body
            }
        };
        Some(Resp {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// Parses `HTTP/1.1 NNN reason` and headers; `None` without a status line.
fn parse_head(head: &[u8]) -> Option<(u16, HeaderMap)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (version, code) = (first.next()?, first.next()?);
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status = code.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(k.trim().as_bytes()),
                hyper::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    Some((status, headers))
}

/// Sends raw bytes on a fresh connection and reads one response (`None` if none came).
pub async fn raw_exchange(base: &str, request: &[u8]) -> Option<Resp> {
    let mut conn = RawConn::connect(base).await;
    conn.send(request).await;
    conn.read_response().await
}

/// A `POST` request as raw bytes.
pub fn raw_post(path: &str, content_type: Option<&str>, body: &[u8], close: bool) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}
