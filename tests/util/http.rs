//! The test client: [`Http`] (a small hyper client with a timeout on every exchange), the
//! response type [`Resp`] with its assertions, and helpers for ids and pop paths.

#![allow(dead_code)] // Not every test module uses every helper.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{multipart, raw_exchange, raw_post, Part, REQUEST_TIMEOUT};

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with status and body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}); status {}, body: {:?}",
                self.status,
                self.text_preview()
            )
        })
    }

    /// The `message` of a JSON error body; panics when the body is not such an object.
    pub fn message(&self) -> String {
        match self.json().get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => panic!(
                "expected a JSON body with a string `message`; status {}, body: {:?}",
                self.status,
                self.text_preview()
            ),
        }
    }

    /// The Content-Type header, if any.
    pub fn content_type(&self) -> Option<String> {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Asserts the response is `status` with a JSON error body (`application/json`, string
    /// `message`) and returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> String {
        self.expect_status(status).expect_json_error()
    }

    /// Asserts the response carries a JSON error body, whatever its status; returns the message.
    #[track_caller]
    pub fn expect_json_error(&self) -> String {
        let ct = self.content_type().unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "error response {} should be application/json, got {ct:?}; body: {:?}",
            self.status,
            self.text_preview()
        );
        self.message()
    }

    /// Asserts status 200 and returns the JSON body.
    #[track_caller]
    pub fn expect_json(&self) -> Value {
        self.expect_status(200);
        self.json()
    }

    /// Asserts the status, showing the body on failure.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status,
            status,
            "expected status {status}, got {}; body: {:?}",
            self.status,
            self.text_preview()
        );
        self
    }

    /// Asserts 204 with an empty body.
    #[track_caller]
    pub fn expect_no_content(&self) {
        self.expect_status(204);
        assert!(
            self.body.is_empty(),
            "204 with a body: {:?}",
            self.text_preview()
        );
    }

    /// At most 500 characters of the body, for failure messages.
    pub fn text_preview(&self) -> String {
        let t = self.text();
        if t.len() > 500 {
            let mut end = 500;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}... ({} bytes)", &t[..end], self.body.len())
        } else {
            t
        }
    }
}

/// A small HTTP/1 client bound to one server address. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: String) -> Http {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Http { base, client }
    }

    /// A client for the same server that opens a new connection for every request, so one
    /// response after which the server drops the connection cannot affect the next request.
    pub fn unpooled(&self) -> Http {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Http {
            base: self.base.clone(),
            client,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; panics (with the request line) on a transport error or timeout.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        match self.try_request(method, path, headers, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {}: {e}", preview(path)),
        }
    }

    /// Like [`Http::request`] but returns transport errors instead of panicking.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building request: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("transport error: {e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading body: {e:?}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))?
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], Vec::new()).await
    }

    pub async fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, Vec::new()).await
    }

    pub async fn post_json(&self, path: &str, value: &Value) -> Resp {
        let body = serde_json::to_vec(value).expect("serialise JSON");
        self.request("POST", path, &[("content-type", "application/json")], body)
            .await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        match content_type {
            Some(ct) => {
                self.request("POST", path, &[("content-type", ct)], body)
                    .await
            }
            None => self.request("POST", path, &[], body).await,
        }
    }

    /// POSTs a `multipart/form-data` body with one file field.
    pub async fn post_multipart(
        &self,
        path: &str,
        field_name: &str,
        filename: &str,
        bytes: impl AsRef<[u8]>,
    ) -> Resp {
        let (ct, body) = multipart(&[Part::file(field_name, filename, bytes.as_ref())]);
        self.post_raw(path, Some(&ct), body).await
    }

    /// POSTs a body the server is expected to refuse early (413), on its own connection with
    /// `Connection: close`, reading the answer even if the server stops reading the body
    /// (which a pooled hyper client cannot surface: it reports the failed write instead).
    pub async fn post_oversized(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        match raw_exchange(&self.base, &raw_post(path, content_type, body, true)).await {
            Some(r) => r,
            None => panic!(
                "POST {path} ({} bytes): connection closed without a response",
                body.len()
            ),
        }
    }

    // ---- Testflinger helpers -------------------------------------------------------------

    /// Submits a job and returns its id (asserting 200 and a `job_id` string).
    pub async fn submit(&self, job: &Value) -> String {
        let r = self.post_json("/v1/job", job).await;
        let v = r.expect_json();
        match v.get("job_id") {
            Some(Value::String(id)) => id.clone(),
            _ => panic!("submit response without a string job_id: {v}"),
        }
    }

    /// Submits 18 waiting jobs of 60 KB each to queue `fill` (more than 1 MiB of log, each
    /// under [`super::SMALL_SEGMENTS`]' body limit) and returns their ids: with
    /// [`super::SNAPSHOT_SOON`], enough for the server to take a snapshot.
    pub async fn log_for_a_snapshot(&self) -> Vec<String> {
        let padding = "x".repeat(60_000);
        let mut ids = Vec::new();
        for n in 0..18 {
            let job = serde_json::json!({"job_queue": "fill", "n": n, "padding": padding});
            ids.push(self.submit(&job).await);
        }
        ids
    }

    /// Submits `{"job_queue": queue}` and returns the id.
    pub async fn submit_to(&self, queue: &str) -> String {
        self.submit(&serde_json::json!({ "job_queue": queue }))
            .await
    }

    /// Pops one job from the named queues: `Some(job)` on 200, `None` on 204 (asserting an
    /// empty body). Panics on any other status.
    pub async fn pop(&self, queues: &[&str]) -> Option<Value> {
        let r = self.get(&pop_path(queues)).await;
        match r.status {
            200 => Some(r.json()),
            204 => {
                r.expect_no_content();
                None
            }
            s => panic!(
                "pop {queues:?}: unexpected status {s}; body {:?}",
                r.text_preview()
            ),
        }
    }

    /// Pops and returns the popped job's id, or `None` when nothing is waiting.
    pub async fn pop_id(&self, queues: &[&str]) -> Option<String> {
        self.pop(queues).await.map(|job| job_id_of(&job))
    }

    /// `GET /v1/result/<id>` asserting 200; the result object.
    pub async fn result(&self, id: &str) -> Value {
        self.get(&format!("/v1/result/{id}")).await.expect_json()
    }

    /// The `job_state` of a job's result.
    pub async fn job_state(&self, id: &str) -> String {
        let v = self.result(id).await;
        v.get("job_state")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("result of {id} without a string job_state: {v}"))
            .to_string()
    }

    /// `POST /v1/result/<id>` asserting 200.
    pub async fn post_result(&self, id: &str, value: &Value) {
        self.post_json(&format!("/v1/result/{id}"), value)
            .await
            .expect_status(200);
    }

    /// `POST /v1/job/<id>/action` with `{"action": "cancel"}`.
    pub async fn cancel(&self, id: &str) -> Resp {
        self.post_json(
            &format!("/v1/job/{id}/action"),
            &serde_json::json!({ "action": "cancel" }),
        )
        .await
    }

    /// `GET /v1/job/<id>/position`.
    pub async fn position(&self, id: &str) -> Resp {
        self.get(&format!("/v1/job/{id}/position")).await
    }
}

/// `/v1/job?queue=a&queue=b`.
pub fn pop_path(queues: &[&str]) -> String {
    let q: Vec<String> = queues
        .iter()
        .map(|q| format!("queue={}", query_escape(q)))
        .collect();
    format!("/v1/job?{}", q.join("&"))
}

/// `text` percent-encoded for a query string: every byte but RFC 3986's unreserved ones.
pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `job_id` string of a job object.
#[track_caller]
pub fn job_id_of(job: &Value) -> String {
    job.get("job_id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("job without a string job_id: {job}"))
        .to_string()
}

/// A fresh random lower-case hyphenated UUID.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Asserts `actual` equals `expected` as JSON values AND has the same key order in every
/// object, recursively.
#[track_caller]
pub fn assert_json_same_order(actual: &Value, expected: &Value) {
    assert_eq!(actual, expected, "JSON values differ");
    fn walk(a: &Value, e: &Value, at: &str) {
        match (a, e) {
            (Value::Object(a), Value::Object(e)) => {
                let ak: Vec<&String> = a.keys().collect();
                let ek: Vec<&String> = e.keys().collect();
                assert_eq!(ak, ek, "key order differs at {at}");
                for (k, v) in a {
                    walk(v, &e[k], &format!("{at}.{k}"));
                }
            }
            (Value::Array(a), Value::Array(e)) => {
                for (i, (x, y)) in a.iter().zip(e).enumerate() {
                    walk(x, y, &format!("{at}[{i}]"));
                }
            }
            _ => {}
        }
    }
    walk(actual, expected, "$");
}

fn preview(s: &str) -> String {
    if s.len() > 120 {
        format!(
            "{}...({} chars)",
            &s[..s.char_indices().nth(120).map_or(s.len(), |(i, _)| i)],
            s.len()
        )
    } else {
        s.to_string()
    }
}
