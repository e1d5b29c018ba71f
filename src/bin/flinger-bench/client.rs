//! The client side of every request the bench makes: where it goes (a
//! [`Target`], loopback only, checked once), the keep-alive HTTP/1 connection
//! a worker drives ([`Conn`]), and how an answer is judged.
//!
//! The attackers of the adversarial workload write raw bytes instead (they
//! must send what no well-behaved client would); they live in
//! `workloads::attack` and take only the address from here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub const JSON_CT: &str = "application/json";

/// Where the workers connect. Resolved once, so every connection goes to the
/// same loopback socket address that was checked.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// Server process, when we spawned it: RSS and CPU come from /proc.
    pub pid: Option<u32>,
}

impl Target {
    pub fn local(addr: SocketAddr, pid: Option<u32>) -> Target {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Target { addr, host, pid }
    }
}

pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses and checks --url: http, loopback host, no path. Names are resolved
/// and only loopback addresses kept, so /etc/hosts cannot redirect the load.
pub async fn resolve_url(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url:?}: only http:// is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "--url {url:?}: give the server's root (http://127.0.0.1:PORT)"
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if let Ok(ip) = bare.parse::<IpAddr>() {
        if !is_loopback_ip(ip) {
            return Err(format!(
                "refusing --url {url:?}: {ip} is not loopback (127.0.0.0/8, localhost or ::1 only)"
            ));
        }
        SocketAddr::new(ip, port)
    } else if bare.eq_ignore_ascii_case("localhost") {
        let addrs = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {bare}: {e}"))?;
        addrs
            .into_iter()
            .find(|a| is_loopback_ip(a.ip()))
            .ok_or_else(|| format!("{bare} does not resolve to a loopback address"))?
    } else {
        return Err(format!(
            "refusing --url {url:?}: host must be in 127.0.0.0/8, localhost or [::1]"
        ));
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| addr.to_string());
    let host = HeaderValue::from_str(&authority).map_err(|e| format!("bad host: {e}"))?;
    Ok(Target {
        addr,
        host,
        pid: None,
    })
}

/// Headers from `--header`, added to every request.
pub static EXTRA_HEADERS: std::sync::OnceLock<Vec<(hyper::header::HeaderName, HeaderValue)>> =
    std::sync::OnceLock::new();

/// One worker's keep-alive HTTP/1 connection, re-made after any error (the
/// server may have closed it, or it may be stuck behind a timed-out request).
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(target: &Target, timeout: Duration) -> Conn {
        Conn {
            addr: target.addr,
            host: target.host.clone(),
            timeout,
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // Small request/response pairs: Nagle would add delayed-ACK stalls.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection future does the socket I/O; it ends when the sender
        // is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let alive = match self.sender.as_mut() {
            Some(s) => !s.is_closed() && s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.sender = Some(self.connect().await?);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| "no connection".to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        // Read the whole body: the connection is reusable only after that.
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// One request with the per-request timeout; `body` is (content type, bytes).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        cookie: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(c) = cookie {
            b = b.header(COOKIE, c.clone());
        }
        for (name, value) in EXTRA_HEADERS.get().into_iter().flatten() {
            b = b.header(name, value.clone());
        }
        let req = match body {
            Some((ct, bytes)) => b.header(CONTENT_TYPE, ct).body(Full::new(bytes)),
            None => b.body(Full::new(Bytes::new())),
        }
        .map_err(|e| format!("bad request {}: {e}", short_path(path)))?;
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(format!("timeout after {} ms", self.timeout.as_millis()))
            }
        }
    }
}

/// A path cut for an error message (a search path can be 40 KB long).
fn short_path(path: &str) -> &str {
    match path.char_indices().nth(80) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

pub fn status_error(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let short: String = text.chars().take(60).collect();
    format!("status {}: {}", status.as_u16(), short.trim())
}

/// A submit answer: 200 with a job id. A byte search is enough here and keeps
/// the 2 client threads for sending.
pub fn expect_job_id(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::OK && body.windows(8).any(|w| w == b"\"job_id\"") {
        Ok(())
    } else if status == StatusCode::OK {
        Err("200 without job_id".into())
    } else {
        Err(status_error(status, body))
    }
}

/// A pop answer: 200 with a job id is success, 204 is "ran dry".
pub fn expect_popped(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::NO_CONTENT {
        Err("ran dry (204 no job)".to_string())
    } else {
        expect_job_id(status, body)
    }
}

/// A pop (or submit) answer whose job id we need: parsed and re-rendered as a
/// UUID, so only a well-formed id ever goes into a URL path.
pub fn job_id_of(status: StatusCode, body: &[u8]) -> Result<String, String> {
    if status == StatusCode::NO_CONTENT {
        return Err("ran dry (204 no job)".into());
    }
    if status != StatusCode::OK {
        return Err(status_error(status, body));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let id = v
        .get("job_id")
        .and_then(Value::as_str)
        .ok_or_else(|| "200 without job_id".to_string())?;
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| format!("job_id {id:?} is not a UUID: {e}"))
}

pub fn expect_ok(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(status_error(status, body))
    }
}

/// A small job for `queue`, as a Testflinger client submits it.
pub fn submit_body(queue: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"job_queue":"{queue}","test_data":{{"test_cmds":"echo hi"}}}}"#
    ))
}

/// `GET /v1/job` asking for a job from any of `queues`.
pub fn pop_path(queues: &[String]) -> String {
    let q: Vec<String> = queues.iter().map(|q| format!("queue={q}")).collect();
    format!("/v1/job?{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    //! Unit tests of the loopback guard and response parsing.

    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ok = |u: &str| rt.block_on(resolve_url(u)).is_ok();
        assert!(ok("http://127.0.0.1:8000"));
        assert!(ok("http://127.1.2.3:8000/"));
        assert!(ok("http://[::1]:8000"));
        assert!(!ok("http://10.0.0.1:8000"));
        assert!(!ok("http://192.168.1.1:8000"));
        assert!(!ok("http://example.com:8000"));
        assert!(!ok("https://127.0.0.1:8000"));
        assert!(!ok("http://127.0.0.1:8000/v1"));
        assert!(!is_loopback_ip("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn job_ids_are_parsed_and_checked() {
        let body = br#"{"job_id":"6F1C1E52-2A4B-4F0E-9C3B-1D2E3F4A5B6C","job_queue":"q"}"#;
        assert_eq!(
            job_id_of(StatusCode::OK, body).unwrap(),
            "6f1c1e52-2a4b-4f0e-9c3b-1d2e3f4a5b6c"
        );
        assert!(job_id_of(StatusCode::NO_CONTENT, b"")
            .unwrap_err()
            .contains("ran dry"));
        assert!(job_id_of(StatusCode::OK, br#"{"job_id":"../../x"}"#).is_err());
        assert!(expect_job_id(StatusCode::OK, br#"{"job_id": "x"}"#).is_ok());
        assert!(expect_job_id(StatusCode::INTERNAL_SERVER_ERROR, b"boom").is_err());
        assert!(expect_popped(StatusCode::NO_CONTENT, b"")
            .unwrap_err()
            .contains("ran dry"));
    }
}
