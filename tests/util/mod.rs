//! Test harness: runs the real `flinger` binary on 127.0.0.1 and talks to it over real HTTP.
//!
//! Owns: spawning/stopping/restarting the server process ([`TestServer`]). Beside it, `http`
//! has a small hyper client ([`Http`], reached from a `TestServer` through `Deref`), the
//! response type ([`Resp`]) and helpers shared by every area module; `raw` has hand-built
//! bytes (multipart bodies, [`RawConn`]). It deliberately knows nothing of the server's internals:
//! everything a test asserts is something an agent or the CLI could observe on the wire.
//! The one exception, [`serve_on`], serves a server core started in the test's own process
//! (for tests that inject disk faults or drive an actor directly).
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

pub mod agent;
mod http;
pub mod pg;
mod raw;
pub mod upstream;

pub use http::*;
pub use raw::*;

/// The journal a test binary's servers run on; each binary's root declares
/// `const JOURNAL: util::Journal` (`tests/tests.rs`: the file log; `tests/on_postgres.rs`:
/// PostgreSQL), so one harness serves both and no test is skipped at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    /// The embedded write-ahead log in the data directory (the default).
    File,
    /// A fresh database per [`TestServer`] on the throwaway cluster of [`pg`].
    Postgres,
}

/// How long a server may take to print its `listening` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM/SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one HTTP exchange; a hung server fails the test instead of hanging the suite.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The least `--snapshot-bytes` the server takes (1 MiB; smaller is refused): a server
/// started with it takes a snapshot after [`Http::log_for_a_snapshot`].
pub const SNAPSHOT_SOON: &[&str] = &["--snapshot-bytes", "1MiB"];

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

    /// A new server over this one's state (its data directory, or its database) with its
    /// own arguments; this one must be stopped first.
    pub fn successor(&self, args: &[&str]) -> TestServer {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--data-dir".into());
        all.push(self.data_dir().display().to_string());
        if let Some(url) = &self.journal {
            all.push("--journal".into());
            all.push(url.clone());
        }
        TestServer::start_opts(Opts {
            args: all,
            omit_data_dir: true,
            ..Opts::default()
        })
    }

    /// The names of the files the server stores (uploads, orphan data): the data
    /// directory's `files/` on the file log, the `flinger_files` table on PostgreSQL.
    pub fn stored_files(&self) -> Vec<String> {
        match &self.journal {
            Some(url) => pg::sql(url, "SELECT name FROM flinger_files ORDER BY name")
                .lines()
                .map(str::to_owned)
                .collect(),
            None => std::fs::read_dir(self.data_dir().join("files"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        }
    }

    /// The data directory passed with `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `http://127.0.0.1:PORT` of the current incarnation.
    pub fn base_url(&self) -> String {
        self.http.base().to_owned()
    }

    /// A cheap, cloneable client for the current incarnation (for spawned tasks).
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// All stderr lines captured so far, across restarts, without ANSI colour codes.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// [`stderr_lines`](Self::stderr_lines) once a line satisfies `logged`, or after 10 s
    /// without one (the caller's assertion then reports it). A line the server wrote
    /// while answering a request reaches the capture through a reader thread, so reading
    /// the capture as soon as the answer arrives may miss it on a busy machine.
    pub async fn stderr_lines_once(&self, logged: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.stderr_lines();
            if lines.iter().any(|l| logged(l)) || Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server has logged a snapshot taken (20 s at most, then panics).
    pub async fn snapshot_taken(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .stderr_lines()
            .iter()
            .any(|l| l.contains("snapshot taken"))
        {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The OS process id of the current incarnation.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let data_dir = self.data_dir();
        let mut cmd = flinger_command(self.dir.path());
        // A test may choose its own (the flag may be given once).
        if !self.args.iter().any(|a| a == "--bind") {
            cmd.arg("--bind").arg("127.0.0.1:0");
        }
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

    /// Sets environment variable `key` to `value` for every (re)start from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
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

#[test]
fn listening_addr_parses_when_line_is_the_startup_line() {
    let line = "2026-11-24T19:00:00Z  INFO flinger::server: listening addr=127.0.0.1:41234 data_dir=/tmp/x/data config_file=none";
    assert_eq!(listening_addr(line).as_deref(), Some("127.0.0.1:41234"));
    assert_eq!(listening_addr("INFO other addr=1.2.3.4:5"), None);
    assert_eq!(
        strip_ansi("\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:9"),
        " INFO listening addr=127.0.0.1:9"
    );
}

/// Serves an in-process server core on 127.0.0.1:0: its client, the switch that stops it,
/// and the task that ends when it has stopped.
pub async fn serve_on(
    running: flinger::server::Running,
) -> (
    Http,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<flinger::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flinger::server::serve(listener, running, async {
        let _ = stopped.await;
    }));
    (Http::new(format!("http://{addr}")), stop, server)
}

/// A server core with default settings on a fresh temporary data dir, in this process and
/// served on 127.0.0.1:0: for tests that drive its actors or read its state directly.
pub struct InProcess {
    /// Its HTTP client.
    pub http: Http,
    /// Its actors and shared state.
    pub services: flinger::actors::Services,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<flinger::Result<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts it.
    pub async fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = flinger::config::Config {
            data_dir: dir.path().join("data"),
            ..flinger::config::Config::default()
        };
        let running = flinger::server::start(config).await.unwrap();
        let services = running.services.clone();
        let (http, stop, server) = serve_on(running).await;
        InProcess {
            http,
            services,
            stop,
            server,
            _dir: dir,
        }
    }

    /// Stops it and waits until it has stopped cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}
