//! Test harness: runs the real `flinger` binary on 127.0.0.1 and talks to it over real HTTP.
//!
//! Owns: spawning/stopping/restarting the server process ([`TestServer`]), a small hyper client
//! ([`Http`], reached from a `TestServer` through `Deref`), the response type ([`Resp`]) and a few
//! helpers shared by every area module. It deliberately knows nothing of the server's internals:
//! everything a test asserts is something an agent or the CLI could observe on the wire.
//!
//! The binary comes from `CARGO_BIN_EXE_flinger` (set by cargo when this file is compiled as the
//! package's integration test), else from the `FLINGER_BIN` environment variable at run time.

#![allow(dead_code)] // Not every test module uses every helper.

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub mod agent;
pub mod pg;
pub mod upstream;

/// How long a server may take to print its `listening` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM/SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one HTTP exchange; a hung server fails the test instead of hanging the suite.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the `flinger` binary under test.
pub fn flinger_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_flinger") {
        return PathBuf::from(p);
    }
    match std::env::var_os("FLINGER_BIN") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "cannot find the flinger binary: CARGO_BIN_EXE_flinger was not set at compile time \
             and FLINGER_BIN is not set"
        ),
    }
}

/// A `Command` for the binary with a clean, deterministic environment: no inherited config file
/// or `FLINGER_*` variables, no colours, working directory `cwd` (so no stray `testflinger.conf`
/// or `./data`).
pub fn flinger_command(cwd: &Path) -> Command {
    let mut cmd = Command::new(flinger_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLINGER_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env_remove("TESTFLINGER_CONFIG")
        .env_remove("DATA_PATH")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion (e.g. `--help`, a bad config), killing it after `timeout`.
pub fn run_to_exit(cwd: &Path, args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = flinger_command(cwd);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn flinger");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "flinger {args:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) so log assertions see plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Extracts `HOST:PORT` from a startup line such as
/// `... INFO flinger::server: listening addr=127.0.0.1:41234 data_dir=...`.
fn listening_addr(line: &str) -> Option<String> {
    if !line.contains(" listening ") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    let addr: String = rest
        .split_whitespace()
        .next()?
        .trim_matches('"')
        .to_string();
    (!addr.is_empty()).then_some(addr)
}

/// Limits small enough that a few KiB of traffic fills a ~1 MiB WAL segment (the
/// default segment is 64 MiB).
pub const SMALL_SEGMENTS: &[&str] = &[
    "--max-job-bytes",
    "65536",
    "--max-result-bytes",
    "65536",
    "--max-output-bytes",
    "65536",
    "--segment-bytes",
    "1200000",
];

/// How to start a [`TestServer`] beyond the defaults.
#[derive(Default)]
pub struct Opts {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables; `{dir}` in a value is replaced by the temporary directory.
    pub envs: Vec<(String, String)>,
    /// Do not pass `--data-dir` (to test where the data directory comes from otherwise).
    pub omit_data_dir: bool,
    /// Files `(name, contents)` written into the temporary directory (the process's working
    /// directory) before the first start, e.g. a `testflinger.conf`; `{dir}` in the contents is
    /// replaced by the temporary directory.
    pub files: Vec<(String, String)>,
}

/// One running (or stopped) `flinger` process over a private temporary directory.
///
/// `Deref`s to [`Http`], so `srv.get("/v1/")` sends a request to the current incarnation.
pub struct TestServer {
    /// Owns the temporary directory; it outlives every incarnation of the process.
    dir: tempfile::TempDir,
    /// Extra command-line arguments, repeated on every (re)start.
    args: Vec<String>,
    /// Extra environment variables, repeated on every (re)start.
    envs: Vec<(String, String)>,
    /// Whether to pass `--data-dir <tmp>/data` (off only for configuration tests).
    pass_data_dir: bool,
    /// The running process, `None` between a stop and the next start.
    child: Option<Child>,
    /// Every stderr line of every incarnation, ANSI-stripped, in order.
    stderr: Arc<Mutex<Vec<String>>>,
    /// Client bound to the current incarnation's address.
    http: Http,
    /// The PostgreSQL journal (`--journal`) every incarnation uses, when the harness runs on
    /// PostgreSQL (`FLINGER_TEST_JOURNAL=postgres`, see [`pg`]) and the test chose no journal.
    journal: Option<String>,
}

impl TestServer {
    /// Starts a server with default options.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `["--max-job-bytes", "1000"]`).
    pub fn start_with(args: &[&str]) -> TestServer {
        Self::start_with_env(args, &[])
    }

    /// Starts a server with extra arguments and environment variables.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> TestServer {
        Self::start_opts(Opts {
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Opts::default()
        })
    }

    /// Starts a server with full control over its command line, environment and files.
    pub fn start_opts(opts: Opts) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("flinger-test-")
            .tempdir()
            .expect("create tempdir");
        let dir_text = dir.path().display().to_string();
        for (name, contents) in &opts.files {
            std::fs::write(dir.path().join(name), contents.replace("{dir}", &dir_text))
                .expect("write test file");
        }
        let envs = opts
            .envs
            .into_iter()
            .map(|(k, v)| (k, v.replace("{dir}", &dir_text)))
            .collect();
        let journal = (pg::switched_on() && !opts.args.iter().any(|a| a.starts_with("--journal")))
            .then(pg::fresh_database);
        let mut srv = TestServer {
            journal,
            dir,
            args: opts.args,
            envs,
            pass_data_dir: !opts.omit_data_dir,
            child: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            http: Http::new("http://127.0.0.1:1".to_string()),
        };
        srv.spawn();
        srv
    }

    /// The temporary directory (working directory of the process; holds `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL journal the harness gave this server, if any (see [`pg`]).
    pub fn journal(&self) -> Option<&str> {
        self.journal.as_deref()
    }

    /// The data directory passed with `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `http://127.0.0.1:PORT` of the current incarnation.
    pub fn base_url(&self) -> String {
        self.http.base.clone()
    }

    /// A cheap, cloneable client for the current incarnation (for spawned tasks).
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// All stderr lines captured so far, across restarts, without ANSI colour codes.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The OS process id of the current incarnation.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let data_dir = self.data_dir();
        let mut cmd = flinger_command(self.dir.path());
        cmd.arg("--bind").arg("127.0.0.1:0");
        if self.pass_data_dir {
            cmd.arg("--data-dir").arg(&data_dir);
        }
        if let Some(url) = &self.journal {
            cmd.arg("--journal").arg(url);
        }
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", flinger_bin().display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&self.stderr);
        let (tx, rx) = mpsc::channel::<String>();
        // Keeps draining stderr for the whole life of the process so the pipe never fills.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = strip_ansi(&String::from_utf8_lossy(&line));
                let addr = listening_addr(&line);
                // Store before announcing, so `stderr_lines()` always holds the startup line.
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => {
                self.http = Http::new(format!("http://{addr}"));
                self.child = Some(child);
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                // Give the reader thread a moment to store the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "flinger did not report a listening address ({e:?}; exit: {status:?}); args {:?}; stderr:\n{}",
                    self.args,
                    self.stderr_lines().join("\n")
                );
            }
        }
    }

    /// Sends `signal` to the running process without waiting.
    pub fn send_signal(&self, signal: libc::c_int) {
        let pid = self.pid();
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits (bounded) for the running process to exit and returns its status.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "flinger did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        self.send_signal(signal);
        self.wait_for_exit()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Graceful restart: SIGTERM, wait, start again on the same data dir (new port).
    /// Returns the exit status of the stopped incarnation.
    pub fn restart(&mut self) -> ExitStatus {
        let status = self.stop();
        self.spawn();
        status
    }

    /// Crash: SIGKILL and wait. Follow with [`TestServer::start_again`].
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGKILL)
    }

    /// Starts a stopped server again on the same data dir and arguments (new port).
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Deref for TestServer {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
        assert_eq!(
            self.status,
            status,
            "expected status {status}, got {}; body: {:?}",
            self.status,
            self.text_preview()
        );
        self.expect_json_error()
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
    let q: Vec<String> = queues.iter().map(|q| format!("queue={q}")).collect();
    format!("/v1/job?{}", q.join("&"))
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

#[test]
fn listening_addr_parses_when_line_is_the_startup_line() {
    let line = "2026-11-24T19:00:00Z  INFO flinger::server: listening addr=127.0.0.1:41234 data_dir=/tmp/x/data config=defaults";
    assert_eq!(listening_addr(line).as_deref(), Some("127.0.0.1:41234"));
    assert_eq!(listening_addr("INFO other addr=1.2.3.4:5"), None);
    assert_eq!(
        strip_ansi("\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:9"),
        " INFO listening addr=127.0.0.1:9"
    );
}
