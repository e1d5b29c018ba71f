//! `flinger-bench`: a bounded, loopback-only load generator for flinger, the
//! Testflinger-compatible test-job server.
//!
//! This file owns everything the benchmark needs and nothing of the server:
//! - starting the server under test (the `flinger` binary beside this one, on a
//!   free loopback port and a fresh temporary data dir) or targeting `--url`;
//! - an in-run baseline: a bare hyper 1 server, run as a separate process by
//!   re-executing this binary as the hidden `baseline-server` subcommand, so the
//!   report can say how far flinger is from "HTTP and nothing else" on the same
//!   box, in the same run;
//! - the client: one keep-alive HTTP/1 connection per worker on a 2-thread
//!   tokio runtime (the server processes get the rest of the machine);
//! - the workloads (submit, pop, lifecycle, result-poll, and the opt-in scale
//!   runs), the latency statistics, and the Markdown and JSON reports.
//!
//! Every loop is bounded by a request count, a per-cell time and a hard
//! overall deadline; every target is on the loopback interface.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- constants

const JSON_CT: &str = "application/json";
const SUBMIT_QUEUE: &str = "bench-a";
const POP_QUEUES: [&str; 3] = ["bench-a", "bench-b", "bench-c"];
const LIFE_QUEUE: &str = "bench-life";
const POLL_QUEUE: &str = "bench-poll";
const BASELINE_BODY: &[u8] = br#"{"job_id":"00000000-0000-0000-0000-000000000000"}"#;
const STATES: [&str; 3] = ["setup", "provision", "test"];
const FINAL_RESULT: &[u8] = br#"{"status":{"test":0},"job_state":"complete"}"#;
const LOG_FRAGMENTS: u64 = 5;
/// submit + pop + 3 states + 5 fragments + final + poll.
const LIFECYCLE_REQUESTS: u64 = 12;
/// Of which POSTs: submit, 3 states, 5 fragments, final. The 2 others are GETs.
const LIFECYCLE_POSTS: f64 = 10.0;
const LIFECYCLE_GETS: f64 = 2.0;
/// Distinct error kinds kept per worker; more are lumped into "other" so a
/// misbehaving server cannot grow the map without bound.
const MAX_ERROR_KINDS: usize = 8;
/// Ceiling on concurrency: each worker is a connection and a task.
const MAX_CONCURRENCY: usize = 1024;

// ---------------------------------------------------------------- CLI

/// Bounded, loopback-only load generator for the flinger test-job server.
///
/// Starts `flinger` (next to this executable) on a free 127.0.0.1 port with a
/// fresh temporary data dir, or targets --url; measures each workload at each
/// concurrency against it and against an in-run bare-hyper baseline server,
/// prints a Markdown table and optionally writes the raw figures as JSON.
#[derive(Parser, Debug)]
#[command(
    name = "flinger-bench",
    version,
    after_help = "Exit status: 0 on success; 1 if any cell had more than 1% errors; \
                  2 if --max-seconds cut the run short; 3 if setup failed \
                  (server did not start, bad --url); 130 if interrupted."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,

    /// Target an already running server at this base URL instead of spawning
    /// flinger (http only; the host must be in 127.0.0.0/8, localhost or [::1]).
    /// RSS, CPU and the restart measurement are then unavailable.
    #[arg(long, value_name = "URL", conflicts_with_all = ["server_bin", "server_args", "against_baseline"])]
    url: Option<String>,

    /// flinger binary to spawn [default: `flinger` next to this executable].
    /// It is run as `PATH --bind 127.0.0.1:PORT --data-dir DIR [--server-arg ...]`.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Extra argument appended to the spawned server's command line
    /// (repeatable, e.g. --server-arg=--some-flag).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Extra request header `NAME: VALUE` sent with every request (repeatable), e.g.
    /// `--header "Authorization: Bearer TOKEN"` to measure access control's cost.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,

    /// Harness self-test: spawn a second baseline server as the target instead
    /// of flinger, so every code path (spawn, RSS, restart) runs without flinger.
    #[arg(long)]
    against_baseline: bool,

    /// Skip the in-run baseline measurements (the ratio column stays empty).
    #[arg(long)]
    no_baseline: bool,

    /// Workloads to run, comma separated, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "W,...",
        default_value = "submit,pop,lifecycle,result-poll"
    )]
    workloads: Vec<Workload>,

    /// Concurrency levels (one keep-alive connection per worker), comma
    /// separated [default: 1,16,64; 1,16 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    concurrency: Option<Vec<usize>>,

    /// Measured seconds per (workload, concurrency) cell [default: 5; 1 with --quick].
    #[arg(long, value_name = "SECS")]
    seconds: Option<f64>,

    /// Warm-up seconds before each cell's measurement, excluded from the
    /// statistics [default: 0.5; 0.25 with --quick].
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,

    /// Maximum measured requests per cell; a cell ends at this count or after
    /// --seconds, whichever comes first.
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    requests: u64,

    /// Smoke run: 1 s cells at concurrency 1,16 (explicit --seconds,
    /// --concurrency or --warmup still win).
    #[arg(long)]
    quick: bool,

    /// Jobs to have waiting in bench-a/b/c before each pop cell (untimed).
    /// Default: estimated from a short pop probe at that concurrency, with 2x margin.
    #[arg(long, value_name = "N")]
    prefill: Option<u64>,

    /// Jobs with results to pre-create for the result-poll workload.
    #[arg(long, value_name = "N", default_value_t = 100)]
    poll_jobs: usize,

    /// Also run the scale runs: pre-fill --scale-jobs waiting jobs, then measure
    /// submit, pop and job position at depth, and the server's restart time.
    #[arg(long)]
    scale: bool,

    /// Waiting jobs to pre-fill for the scale runs.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    scale_jobs: u64,

    /// Queues the scale pre-fill is spread over (round-robin).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    scale_queues: usize,

    /// Concurrency of the scale submit/pop cells, and of every untimed
    /// pre-fill (the scale one and the pop top-ups).
    #[arg(long, value_name = "N", default_value_t = 64)]
    scale_concurrency: usize,

    /// Hard overall deadline in seconds: past it the run stops, prints what it
    /// has and exits with status 2.
    #[arg(long, value_name = "SECS", default_value_t = 900.0)]
    max_seconds: f64,

    /// Seconds to wait for a spawned server to answer `GET /v1` (the restart in
    /// the scale runs waits at least 300 s, as replaying a big log can be slow).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    startup_timeout: f64,

    /// Per-request timeout in milliseconds; a request over it counts as an
    /// error and its connection is replaced.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,

    /// Also write the raw figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: the bare hyper baseline server this binary re-executes itself as.
    #[command(hide = true)]
    BaselineServer {
        /// Loopback address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Accepted and ignored, so the baseline takes flinger's command line.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// POST /v1/job to bench-a.
    Submit,
    /// GET /v1/job over bench-a, bench-b, bench-c (pre-filled, untimed).
    Pop,
    /// submit, pop, 3 states, 5 log fragments, final result, poll.
    Lifecycle,
    /// GET /v1/result/<id> round-robin over pre-created jobs.
    ResultPoll,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Submit => "submit",
            Workload::Pop => "pop",
            Workload::Lifecycle => "lifecycle",
            Workload::ResultPoll => "result-poll",
        }
    }
}

// ---------------------------------------------------------------- entry

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut extra = Vec::new();
    for h in &cli.headers {
        let parsed = h.split_once(':').and_then(|(n, v)| {
            Some((
                hyper::header::HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        });
        match parsed {
            Some(pair) => extra.push(pair),
            None => {
                eprintln!("flinger-bench: --header expects `NAME: VALUE`, got {h:?}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let _ = EXTRA_HEADERS.set(extra);
    if let Some(Cmd::BaselineServer { bind, .. }) = cli.cmd {
        return baseline_server(bind);
    }
    // Two client threads, as the brief fixes: the servers get the rest of the
    // box, and the figures stay comparable from one machine to the next.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flinger-bench: cannot build the tokio runtime: {e}");
            return ExitCode::from(3);
        }
    };
    // block_on runs the orchestration on this (main) thread; child servers
    // are forked from it, which matters for PR_SET_PDEATHSIG (see spawn).
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let mut bench = match Bench::new(cli) {
        Ok(b) => b,
        Err(msg) => {
            eprintln!("flinger-bench: {msg}");
            return ExitCode::from(3);
        }
    };
    println!("command: `{}`\n", bench.rep.cmdline);
    let stop = bench.stop.clone();
    // First Ctrl-C: stop gracefully (cells end, children are killed, the
    // partial report is printed). Second: leave at once.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("flinger-bench: interrupted, finishing up (Ctrl-C again to quit now)");
            stop.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let outcome = bench.run_all().await;
    let code = match &outcome {
        Ok(()) => 0u8,
        Err(Abort::Setup(msg)) => {
            bench.rep.aborted = Some(format!("setup failed: {msg}"));
            3
        }
        Err(Abort::Deadline) => {
            bench.rep.aborted = Some(format!(
                "stopped at the --max-seconds deadline ({} s); the figures above are partial",
                bench.args.max_seconds
            ));
            2
        }
        Err(Abort::Interrupted) => {
            bench.rep.aborted = Some("interrupted; the figures above are partial".into());
            130
        }
    };
    print!("{}", bench.rep.render());
    if let Some(path) = &bench.args.json {
        let text = serde_json::to_string_pretty(&bench.rep.to_json(
            &bench.args,
            &bench.conc,
            bench.seconds,
            bench.warmup,
        ))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("flinger-bench: cannot write {}: {e}", path.display());
        }
    }
    let failing = bench.rep.failing_cells();
    if let Some(msg) = &bench.rep.aborted {
        eprintln!("flinger-bench: {msg}");
    }
    if !failing.is_empty() {
        eprintln!(
            "flinger-bench: FAILED: more than 1% errors in: {}",
            failing.join(", ")
        );
    }
    match code {
        0 if !failing.is_empty() => ExitCode::from(1),
        c => ExitCode::from(c),
    }
}

/// Why a run ended early.
enum Abort {
    Setup(String),
    Deadline,
    Interrupted,
}

// ---------------------------------------------------------------- target & client

/// Where the workers connect. Resolved once, so every connection goes to the
/// same loopback socket address that was checked.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    /// Server process, when we spawned it: RSS and CPU come from /proc.
    pid: Option<u32>,
}

impl Target {
    fn local(addr: SocketAddr, pid: Option<u32>) -> Target {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Target { addr, host, pid }
    }
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses and checks --url: http, loopback host, no path. Names are resolved
/// and only loopback addresses kept, so /etc/hosts cannot redirect the load.
async fn resolve_url(url: &str) -> Result<Target, String> {
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
static EXTRA_HEADERS: std::sync::OnceLock<Vec<(hyper::header::HeaderName, HeaderValue)>> =
    std::sync::OnceLock::new();

/// One worker's keep-alive HTTP/1 connection, re-made after any error (the
/// server may have closed it, or it may be stuck behind a timed-out request).
struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: &Target, timeout: Duration) -> Conn {
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
    async fn call(
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
        .map_err(|e| format!("bad request {path}: {e}"))?;
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

fn status_error(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let short: String = text.chars().take(60).collect();
    format!("status {}: {}", status.as_u16(), short.trim())
}

/// A submit answer: 200 with a job id. A byte search is enough here and keeps
/// the 2 client threads for sending.
fn expect_job_id(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::OK && body.windows(8).any(|w| w == b"\"job_id\"") {
        Ok(())
    } else if status == StatusCode::OK {
        Err("200 without job_id".into())
    } else {
        Err(status_error(status, body))
    }
}

/// A pop (or submit) answer whose job id we need: parsed and re-rendered as a
/// UUID, so only a well-formed id ever goes into a URL path.
fn job_id_of(status: StatusCode, body: &[u8]) -> Result<String, String> {
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

fn expect_ok(status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(status_error(status, body))
    }
}

fn submit_body(queue: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"job_queue":"{queue}","test_data":{{"test_cmds":"echo hi"}}}}"#
    ))
}

fn pop_path(queues: &[String]) -> String {
    let q: Vec<String> = queues.iter().map(|q| format!("queue={q}")).collect();
    format!("/v1/job?{}", q.join("&"))
}

// ---------------------------------------------------------------- cells

/// What each worker of a cell does per iteration.
enum Op {
    /// POST /v1/job, bodies round-robin (one per queue).
    Submit { bodies: Vec<Bytes> },
    /// GET a pop path; 200 with a job is success, 204 is "ran dry".
    Pop { path: String },
    /// GET paths round-robin; 200 is success.
    Get { paths: Arc<Vec<String>> },
    /// A whole job's life, 12 requests.
    Lifecycle {
        submit: Bytes,
        pop_path: String,
        states: Vec<Bytes>,
        fragments: Vec<Bytes>,
    },
}

impl Op {
    fn lifecycle() -> Op {
        Op::Lifecycle {
            submit: submit_body(LIFE_QUEUE),
            pop_path: pop_path(&[LIFE_QUEUE.to_string()]),
            states: STATES
                .iter()
                .map(|s| Bytes::from(format!(r#"{{"job_state":"{s}"}}"#)))
                .collect(),
            fragments: (0..LOG_FRAGMENTS)
                .map(|i| {
                    Bytes::from(format!(
                        r#"{{"fragment_number":{i},"timestamp":"2026-01-01T00:00:00+00:00","phase":"test","log_data":"line\n"}}"#
                    ))
                })
                .collect(),
        }
    }
}

/// Shared by the workers of one cell.
struct CellCtx {
    op: Op,
    target: Target,
    timeout: Duration,
    concurrency: usize,
    warm_end: Instant,
    end: Instant,
    cap: u64,
    tickets: AtomicU64,
    stop: Arc<AtomicBool>,
    /// Set once the log-fragment endpoint answered 404: lifecycle then posts
    /// raw text to /v1/result/<id>/output instead (server not there yet).
    log_fallback: Arc<AtomicBool>,
}

/// One worker's raw figures; merged after the cell.
#[derive(Default)]
struct WStats {
    /// Latency of every measured request, microseconds.
    lat: Vec<u32>,
    /// Lifecycle: latency of every measured, completed job, microseconds.
    job_lat: Vec<u32>,
    errors: u64,
    warm_errors: u64,
    /// Successful requests in any phase (warm-up included): for submit and pop
    /// this is the number of jobs created or taken, which the pop pre-fill
    /// bookkeeping needs.
    ok_all: u64,
    last_end: Option<Instant>,
    kinds: BTreeMap<String, u64>,
    /// First successful body (shown for the scale position check).
    sample: Option<Bytes>,
}

impl WStats {
    /// Records one request that started at `start` and ends now.
    fn record(&mut self, ctx: &CellCtx, start: Instant, outcome: Result<(), String>) -> bool {
        let end = Instant::now();
        let measured = start >= ctx.warm_end;
        let ok = outcome.is_ok();
        if ok {
            self.ok_all += 1;
        }
        if measured {
            self.lat.push(micros(end - start));
            self.last_end = Some(self.last_end.map_or(end, |e| e.max(end)));
        }
        if let Err(kind) = outcome {
            if measured {
                self.errors += 1;
            } else {
                self.warm_errors += 1;
            }
            let key = if self.kinds.len() < MAX_ERROR_KINDS || self.kinds.contains_key(&kind) {
                kind
            } else {
                "other".to_string()
            };
            *self.kinds.entry(key).or_default() += 1;
        }
        ok
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn worker(ctx: Arc<CellCtx>, wid: usize) -> WStats {
    let mut conn = Conn::new(&ctx.target, ctx.timeout);
    let mut st = WStats::default();
    let cookie = HeaderValue::from_str(&format!("agent_name=bench-agent-{wid}"))
        .unwrap_or_else(|_| HeaderValue::from_static("agent_name=bench-agent"));
    let per_iter = match ctx.op {
        Op::Lifecycle { .. } => LIFECYCLE_REQUESTS,
        _ => 1,
    };
    // Workers start at their own index and stride by the concurrency, so they
    // spread over queues and ids instead of all hitting the same one.
    let mut i = wid;
    loop {
        let now = Instant::now();
        if now >= ctx.end || ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        if now >= ctx.warm_end && ctx.tickets.fetch_add(per_iter, Ordering::Relaxed) >= ctx.cap {
            break;
        }
        match &ctx.op {
            Op::Submit { bodies } => {
                let body = bodies[i % bodies.len()].clone();
                let start = Instant::now();
                let r = conn
                    .call(Method::POST, "/v1/job", Some((JSON_CT, body)), None)
                    .await;
                st.record(&ctx, start, r.and_then(|(s, b)| expect_job_id(s, &b)));
            }
            Op::Pop { path } => {
                let start = Instant::now();
                let r = conn.call(Method::GET, path, None, None).await;
                let outcome = r.and_then(|(s, b)| {
                    if s == StatusCode::NO_CONTENT {
                        Err("ran dry (204 no job)".to_string())
                    } else {
                        expect_job_id(s, &b)
                    }
                });
                st.record(&ctx, start, outcome);
            }
            Op::Get { paths } => {
                let path = &paths[i % paths.len()];
                let start = Instant::now();
                let r = conn.call(Method::GET, path, None, None).await;
                let outcome = r.and_then(|(s, b)| {
                    expect_ok(s, &b)?;
                    if st.sample.is_none() {
                        st.sample = Some(b);
                    }
                    Ok(())
                });
                st.record(&ctx, start, outcome);
            }
            Op::Lifecycle { .. } => lifecycle_iteration(&ctx, &mut conn, &mut st, &cookie).await,
        }
        i = i.wrapping_add(ctx.concurrency);
    }
    st
}

/// One job's life. Any failed step is recorded and ends the iteration: the
/// next one starts afresh with a new job.
async fn lifecycle_iteration(
    ctx: &CellCtx,
    conn: &mut Conn,
    st: &mut WStats,
    cookie: &HeaderValue,
) {
    let Op::Lifecycle {
        submit,
        pop_path,
        states,
        fragments,
    } = &ctx.op
    else {
        return;
    };
    let it_start = Instant::now();

    let s = Instant::now();
    let r = conn
        .call(
            Method::POST,
            "/v1/job",
            Some((JSON_CT, submit.clone())),
            None,
        )
        .await;
    if !st.record(ctx, s, r.and_then(|(c, b)| expect_job_id(c, &b))) {
        return;
    }

    // The popped job may be another worker's: use whatever id comes back.
    let s = Instant::now();
    let r = conn.call(Method::GET, pop_path, None, Some(cookie)).await;
    let id = match r.and_then(|(c, b)| job_id_of(c, &b)) {
        Ok(id) => {
            st.record(ctx, s, Ok(()));
            id
        }
        Err(e) => {
            st.record(ctx, s, Err(e));
            return;
        }
    };
    let result_path = format!("/v1/result/{id}");

    for state in states {
        let s = Instant::now();
        let r = conn
            .call(
                Method::POST,
                &result_path,
                Some((JSON_CT, state.clone())),
                None,
            )
            .await;
        if !st.record(ctx, s, r.and_then(|(c, b)| expect_ok(c, &b))) {
            return;
        }
    }

    let log_path = format!("/v1/result/{id}/log/output");
    let output_path = format!("/v1/result/{id}/output");
    for fragment in fragments {
        if !ctx.log_fallback.load(Ordering::Relaxed) {
            let s = Instant::now();
            let r = conn
                .call(
                    Method::POST,
                    &log_path,
                    Some((JSON_CT, fragment.clone())),
                    None,
                )
                .await;
            match r {
                // The route is missing, not the job (we just popped it): switch
                // every worker to the legacy raw-output endpoint. This probe
                // itself is not counted.
                Ok((StatusCode::NOT_FOUND, _)) => ctx.log_fallback.store(true, Ordering::Relaxed),
                other => {
                    if !st.record(ctx, s, other.and_then(|(c, b)| expect_ok(c, &b))) {
                        return;
                    }
                    continue;
                }
            }
        }
        let s = Instant::now();
        let r = conn
            .call(
                Method::POST,
                &output_path,
                Some(("text/plain", Bytes::from_static(b"line\n"))),
                None,
            )
            .await;
        if !st.record(ctx, s, r.and_then(|(c, b)| expect_ok(c, &b))) {
            return;
        }
    }

    let s = Instant::now();
    let r = conn
        .call(
            Method::POST,
            &result_path,
            Some((JSON_CT, Bytes::from_static(FINAL_RESULT))),
            None,
        )
        .await;
    if !st.record(ctx, s, r.and_then(|(c, b)| expect_ok(c, &b))) {
        return;
    }

    let s = Instant::now();
    let r = conn.call(Method::GET, &result_path, None, None).await;
    if !st.record(ctx, s, r.and_then(|(c, b)| expect_ok(c, &b))) {
        return;
    }

    if it_start >= ctx.warm_end {
        st.job_lat.push(micros(it_start.elapsed()));
    }
}

// ---------------------------------------------------------------- results

#[derive(Clone, Copy, Default)]
struct Pct {
    p50: u32,
    p99: u32,
    p999: u32,
    max: u32,
    mean: f64,
}

impl Pct {
    /// `v` must be sorted ascending.
    fn of(v: &[u32]) -> Pct {
        if v.is_empty() {
            return Pct::default();
        }
        let at = |q: f64| {
            let rank = (q * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Pct {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
            mean: v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64,
        }
    }

    fn json(&self) -> Value {
        json!({"p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999,
               "max_us": self.max, "mean_us": self.mean})
    }
}

#[derive(Clone, Copy)]
struct Rss {
    hwm_kb: u64,
    rss_kb: u64,
}

/// Which baseline a row compares to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Post,
    Get,
    /// Lifecycle: 10 POSTs and 2 GETs per job.
    Mix,
}

/// One (workload, concurrency) measurement.
struct Cell {
    label: String,
    kind: &'static str,
    c: usize,
    requests: u64,
    errors: u64,
    warm_errors: u64,
    ok_all: u64,
    secs: f64,
    rps: f64,
    /// Lifecycle: completed measured jobs and jobs/s.
    jobs: Option<(u64, f64)>,
    lat: Pct,
    job_lat: Option<Pct>,
    kinds: BTreeMap<String, u64>,
    rss: Option<Rss>,
    server_cpu_s: Option<f64>,
    client_cpu_s: f64,
    ratio: Option<(f64, &'static str)>,
    vs_empty: Option<f64>,
    sample: Option<String>,
    notes: Vec<String>,
    cut: bool,
}

impl Cell {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn json(&self) -> Value {
        json!({
            "label": self.label,
            "workload": self.kind,
            "concurrency": self.c,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "warmup_errors": self.warm_errors,
            "ok_including_warmup": self.ok_all,
            "measured_seconds": self.secs,
            "requests_per_second": self.rps,
            "jobs": self.jobs.map(|j| j.0),
            "jobs_per_second": self.jobs.map(|j| j.1),
            "latency": self.lat.json(),
            "job_latency": self.job_lat.map(|p| p.json()),
            "error_kinds": self.kinds,
            "server_vm_hwm_kb": self.rss.map(|r| r.hwm_kb),
            "server_vm_rss_kb": self.rss.map(|r| r.rss_kb),
            "server_cpu_seconds": self.server_cpu_s,
            "client_cpu_seconds": self.client_cpu_s,
            "ratio_vs_baseline": self.ratio.map(|r| r.0),
            "baseline_compared": self.ratio.map(|r| r.1),
            "ratio_vs_empty_queue": self.vs_empty,
            "sample_body": self.sample,
            "notes": self.notes,
            "cut_short": self.cut,
        })
    }
}

// ---------------------------------------------------------------- /proc

fn read_rss(pid: u32) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Rss {
        hwm_kb: field("VmHWM:")?,
        rss_kb: field("VmRSS:")?,
    })
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
fn proc_cpu(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// This process's user + system CPU seconds (the client's share of the box).
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---------------------------------------------------------------- server processes

/// How to start a server: program, arguments before `--bind`, and extras after.
#[derive(Clone)]
struct ServerSpec {
    label: String,
    program: PathBuf,
    pre_args: Vec<String>,
    extra_args: Vec<String>,
}

/// A spawned server with its own temporary directory (data dir + log). Drop
/// kills it and removes the directory, so no error path leaves either behind.
struct ServerProc {
    spec: ServerSpec,
    temp: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
}

fn free_port() -> std::io::Result<u16> {
    // Bind-and-drop: racy in principle, fine on a machine we share only with
    // our own servers.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl ServerProc {
    async fn start(
        spec: ServerSpec,
        limit: Duration,
        deadline: Instant,
    ) -> Result<(ServerProc, Duration), Abort> {
        if !spec.program.is_file() {
            return Err(Abort::Setup(format!(
                "{} binary not found at {} (build it, e.g. `cargo build --release --bin flinger`, \
                 or pass --server-bin PATH or --url URL)",
                spec.label,
                spec.program.display()
            )));
        }
        let temp = std::env::temp_dir().join(format!(
            "flinger-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let data_dir = temp.join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| Abort::Setup(format!("cannot create {}: {e}", data_dir.display())))?;
        let mut sp = ServerProc {
            spec,
            log: temp.join("server.log"),
            temp,
            data_dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let took = sp.spawn_and_wait(limit, deadline).await?;
        Ok((sp, took))
    }

    fn target(&self) -> Target {
        Target::local(self.addr, self.pid())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Spawns on a fresh free port and waits until `GET /v1` answers; returns
    /// the time from spawn to the first answer.
    async fn spawn_and_wait(
        &mut self,
        limit: Duration,
        deadline: Instant,
    ) -> Result<Duration, Abort> {
        let port = free_port().map_err(|e| Abort::Setup(format!("no free port: {e}")))?;
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Abort::Setup(format!("cannot open {}: {e}", self.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Abort::Setup(format!("log: {e}")))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.pre_args)
            .arg("--bind")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        {
            use std::os::unix::process::CommandExt;
            // Own process group: signals reach a wrapper script's children
            // too, and a terminal Ctrl-C goes to us only (we then stop it).
            cmd.process_group(0);
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe, as pre_exec requires. Why:
            // if the bench dies without running Drop (SIGKILL, second Ctrl-C),
            // the kernel kills the server too. The signal fires when the
            // forking *thread* exits: we fork from the main thread, which
            // lives as long as the process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        // Per-request info logging would measure the logger, not the server;
        // an explicit RUST_LOG in our environment still wins.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            Abort::Setup(format!("cannot start {}: {e}", self.spec.program.display()))
        })?;
        self.child = Some(child);
        let target = self.target();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(Abort::Setup(format!(
                    "{} exited ({status}) before answering GET /v1; log tail:\n{}",
                    self.spec.label,
                    self.log_tail(20)
                )));
            }
            if Instant::now() >= deadline {
                return Err(Abort::Deadline);
            }
            if t0.elapsed() > limit {
                return Err(Abort::Setup(format!(
                    "{} did not answer GET /v1 within {:.0} s; log tail:\n{}",
                    self.spec.label,
                    limit.as_secs_f64(),
                    self.log_tail(20)
                )));
            }
            let mut conn = Conn::new(&target, Duration::from_millis(500));
            // Any HTTP answer means it is serving; the status is not judged.
            if conn.call(Method::GET, "/v1", None, None).await.is_ok() {
                return Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns the time to
    /// exit and whether it had to be killed.
    async fn terminate(&mut self, grace: Duration) -> Option<(Duration, bool)> {
        let child = self.child.as_mut()?;
        if let Ok(Some(_)) = child.try_wait() {
            self.child = None;
            return None;
        }
        signal_group(child, libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Some((t0.elapsed(), false));
            }
            if t0.elapsed() > grace {
                signal_group(child, libc::SIGKILL);
                let _ = child.wait();
                self.child = None;
                return Some((t0.elapsed(), true));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Signals the child's whole process group (it leads one, see spawn).
fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on the group our own, not yet reaped, child
        // leads; the pid cannot have been reused while we hold the Child.
        unsafe { libc::kill(-pid, sig) };
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

// ---------------------------------------------------------------- orchestration

/// The whole run: settings, bookkeeping between cells, and the report.
struct Bench {
    args: Cli,
    conc: Vec<usize>,
    seconds: f64,
    warmup: f64,
    timeout: Duration,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    log_fallback: Arc<AtomicBool>,
    /// Jobs we know are waiting in bench-a/b/c (our pre-fills and submits
    /// minus our pops), so pop cells top up only what they lack.
    waiting_abc: u64,
    poll_paths: Option<Arc<Vec<String>>>,
    base_post: BTreeMap<usize, f64>,
    base_get: BTreeMap<usize, f64>,
    rep: Report,
}

struct Prefill {
    ok: u64,
    errors: u64,
    secs: f64,
    tracked: Option<String>,
    kinds: BTreeMap<String, u64>,
}

fn quote_arg(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

impl Bench {
    fn new(args: Cli) -> Result<Bench, String> {
        let conc = args.concurrency.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1, 16]
            } else {
                vec![1, 16, 64]
            }
        });
        if conc.is_empty() || conc.iter().any(|&c| c == 0 || c > MAX_CONCURRENCY) {
            return Err(format!(
                "--concurrency values must be 1..={MAX_CONCURRENCY}"
            ));
        }
        let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });
        let warmup = args.warmup.unwrap_or(if args.quick { 0.25 } else { 0.5 });
        if !(seconds > 0.0 && seconds <= 3600.0) {
            return Err("--seconds must be in (0, 3600]".into());
        }
        if !(0.0..=60.0).contains(&warmup) {
            return Err("--warmup must be in [0, 60]".into());
        }
        if !(args.max_seconds > 0.0 && args.max_seconds <= 86_400.0) {
            return Err("--max-seconds must be in (0, 86400]".into());
        }
        if !(args.startup_timeout > 0.0 && args.startup_timeout <= 3600.0) {
            return Err("--startup-timeout must be in (0, 3600]".into());
        }
        if args.timeout_ms == 0 {
            return Err("--timeout-ms must be positive".into());
        }
        if args.scale
            && (args.scale_jobs == 0
                || args.scale_jobs > 50_000_000
                || args.scale_queues == 0
                || args.scale_queues > 1_000_000
                || args.scale_concurrency == 0
                || args.scale_concurrency > MAX_CONCURRENCY)
        {
            return Err(
                "--scale-jobs must be 1..=50000000, --scale-queues 1..=1000000, \
                        --scale-concurrency 1..=1024"
                    .into(),
            );
        }
        if args.poll_jobs == 0 || args.poll_jobs > 100_000 {
            return Err("--poll-jobs must be 1..=100000".into());
        }
        let cmdline = std::env::args()
            .map(|a| quote_arg(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
        Ok(Bench {
            conc,
            seconds,
            warmup,
            timeout: Duration::from_millis(args.timeout_ms),
            deadline,
            stop: Arc::new(AtomicBool::new(false)),
            log_fallback: Arc::new(AtomicBool::new(false)),
            waiting_abc: 0,
            poll_paths: None,
            base_post: BTreeMap::new(),
            base_get: BTreeMap::new(),
            rep: Report {
                cmdline,
                ..Report::default()
            },
            args,
        })
    }

    fn check(&self) -> Result<(), Abort> {
        if self.stop.load(Ordering::SeqCst) {
            Err(Abort::Interrupted)
        } else if Instant::now() >= self.deadline {
            Err(Abort::Deadline)
        } else {
            Ok(())
        }
    }

    fn startup_limit(&self) -> Duration {
        Duration::from_secs_f64(self.args.startup_timeout)
    }

    fn baseline_spec(&self) -> Result<ServerSpec, Abort> {
        let me = std::env::current_exe()
            .map_err(|e| Abort::Setup(format!("cannot find own executable: {e}")))?;
        Ok(ServerSpec {
            label: "baseline server".into(),
            program: me,
            pre_args: vec!["baseline-server".into()],
            extra_args: vec![],
        })
    }

    fn flinger_spec(&self) -> Result<ServerSpec, Abort> {
        if self.args.against_baseline {
            let mut spec = self.baseline_spec()?;
            spec.label = "baseline server (as target, --against-baseline)".into();
            return Ok(spec);
        }
        let program = match &self.args.server_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| Abort::Setup(format!("cannot find own executable: {e}")))?
                .with_file_name("flinger"),
        };
        Ok(ServerSpec {
            label: "flinger".into(),
            program,
            pre_args: vec![],
            extra_args: self.args.server_args.clone(),
        })
    }

    async fn run_all(&mut self) -> Result<(), Abort> {
        // Check --url before spending any time on the baseline.
        let url_target = match &self.args.url {
            Some(url) => Some(resolve_url(url).await.map_err(Abort::Setup)?),
            None => None,
        };
        self.rep.header.push(format!(
            "cells: {} s measured after {} s warm-up, at most {} measured requests; \
             concurrency {:?}; client: tokio multi-thread runtime with 2 worker threads, \
             one keep-alive HTTP/1 connection per worker",
            self.seconds, self.warmup, self.args.requests, self.conc
        ));
        // Both servers stay up for the whole run: each concurrency measures
        // the baseline right before flinger, so a load change on the box
        // (other builds) skews the ratios less than one baseline pass first.
        let mut baseline = if self.args.no_baseline {
            None
        } else {
            Some(self.start_baseline().await?)
        };

        let mut server: Option<ServerProc> = None;
        let mut target = match url_target {
            Some(t) => {
                self.rep.header.push(format!(
                    "target: {} (--url; no RSS/CPU figures)",
                    self.args.url.as_deref().unwrap_or_default()
                ));
                t
            }
            None => {
                let spec = self.flinger_spec()?;
                eprintln!("starting {} ({})", spec.label, spec.program.display());
                let (sp, took) =
                    ServerProc::start(spec, self.startup_limit(), self.deadline).await?;
                self.rep.header.push(format!(
                    "target: {} `{}` spawned on {} (pid {}), fresh data dir, RUST_LOG={}; \
                     answered GET /v1 after {:.3} s",
                    sp.spec.label,
                    sp.spec.program.display(),
                    sp.addr,
                    sp.pid().unwrap_or(0),
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                    took.as_secs_f64()
                ));
                let t = sp.target();
                server = Some(sp);
                t
            }
        };
        self.check()?;

        let workloads = self.args.workloads.clone();
        self.rep.order = workloads.iter().map(|w| w.name()).collect();
        for c in self.conc.clone() {
            if let Some(b) = &baseline {
                let bt = b.target();
                self.baseline_cells(&bt, c).await?;
            }
            for &w in &workloads {
                let cell = match w {
                    Workload::Submit => self.submit_cell(&target, c, "submit", None).await,
                    Workload::Pop => {
                        let queues: Vec<String> =
                            POP_QUEUES.iter().map(|q| q.to_string()).collect();
                        let mut waiting = self.waiting_abc;
                        let cell = self
                            .pop_cell(&target, &queues, &mut waiting, c, "pop")
                            .await;
                        self.waiting_abc = waiting;
                        cell
                    }
                    Workload::Lifecycle => self.lifecycle_cell(&target, c).await,
                    Workload::ResultPoll => self.result_poll_cell(&target, c).await,
                }?;
                self.rep.cells.push(cell);
                self.check()?;
            }
        }
        if self.log_fallback.load(Ordering::Relaxed) {
            self.rep.notes.push(
                "lifecycle: POST /v1/result/<id>/log/output answered 404, so the log lines were \
                 posted as raw text to POST /v1/result/<id>/output instead"
                    .into(),
            );
        }

        if self.args.scale {
            let sc = self.args.scale_concurrency;
            if let Some(b) = &baseline {
                if !self.base_post.contains_key(&sc) {
                    let bt = b.target();
                    self.baseline_cells(&bt, sc).await?;
                }
            }
            self.run_scale(&mut server, &mut target).await?;
        }
        if let Some(mut b) = baseline.take() {
            b.terminate(Duration::from_secs(5)).await;
        }

        if let Some(mut sp) = server {
            if let Some((took, killed)) = sp.terminate(Duration::from_secs(10)).await {
                self.rep.notes.push(format!(
                    "{} stopped {} {:.3} s after SIGTERM",
                    sp.spec.label,
                    if killed { "(SIGKILLed)" } else { "cleanly" },
                    took.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// Runs one measured cell: `c` workers for warm-up + seconds or `cap`
    /// measured requests, whichever ends first (and never past the deadline).
    async fn measure(
        &self,
        target: &Target,
        op: Op,
        c: usize,
        warmup: f64,
        seconds: f64,
        cap: u64,
    ) -> Cell {
        let cpu0 = target.pid.and_then(proc_cpu);
        let ccpu0 = self_cpu();
        let start = Instant::now();
        let warm_end = start + Duration::from_secs_f64(warmup);
        let planned_end = warm_end + Duration::from_secs_f64(seconds);
        let end = planned_end.min(self.deadline);
        let ctx = Arc::new(CellCtx {
            op,
            target: target.clone(),
            timeout: self.timeout,
            concurrency: c,
            warm_end,
            end,
            cap,
            tickets: AtomicU64::new(0),
            stop: self.stop.clone(),
            log_fallback: self.log_fallback.clone(),
        });
        let handles: Vec<_> = (0..c)
            .map(|w| tokio::spawn(worker(ctx.clone(), w)))
            .collect();
        let mut stats = Vec::with_capacity(c);
        let mut notes = Vec::new();
        for h in handles {
            match h.await {
                Ok(s) => stats.push(s),
                Err(e) => notes.push(format!("a worker failed: {e}")),
            }
        }
        let mut lat: Vec<u32> = Vec::with_capacity(stats.iter().map(|s| s.lat.len()).sum());
        let mut job_lat: Vec<u32> = Vec::new();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let (mut errors, mut warm_errors, mut ok_all) = (0, 0, 0);
        let mut last_end: Option<Instant> = None;
        let mut sample = None;
        for s in stats {
            lat.extend_from_slice(&s.lat);
            job_lat.extend_from_slice(&s.job_lat);
            errors += s.errors;
            warm_errors += s.warm_errors;
            ok_all += s.ok_all;
            if let Some(e) = s.last_end {
                last_end = Some(last_end.map_or(e, |l| l.max(e)));
            }
            for (k, n) in s.kinds {
                *kinds.entry(k).or_default() += n;
            }
            if sample.is_none() {
                sample = s.sample;
            }
        }
        lat.sort_unstable();
        job_lat.sort_unstable();
        let secs = last_end.map_or(0.0, |e| e.saturating_duration_since(warm_end).as_secs_f64());
        let requests = lat.len() as u64;
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let is_life = matches!(ctx.op, Op::Lifecycle { .. });
        Cell {
            label: String::new(),
            kind: "",
            c,
            requests,
            errors,
            warm_errors,
            ok_all,
            secs,
            rps: per_sec(requests),
            jobs: is_life.then(|| (job_lat.len() as u64, per_sec(job_lat.len() as u64))),
            lat: Pct::of(&lat),
            job_lat: is_life.then(|| Pct::of(&job_lat)),
            kinds,
            rss: target.pid.and_then(read_rss),
            server_cpu_s: match (cpu0, target.pid.and_then(proc_cpu)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            client_cpu_s: self_cpu() - ccpu0,
            ratio: None,
            vs_empty: None,
            sample: sample.map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()),
            notes,
            cut: end < planned_end || self.stop.load(Ordering::SeqCst),
        }
    }

    /// A standard measured cell, labelled, compared to the baseline and logged.
    async fn cell(
        &self,
        target: &Target,
        op: Op,
        c: usize,
        kind: &'static str,
        label: String,
        shape: Shape,
    ) -> Cell {
        let cap = match op {
            Op::Lifecycle { .. } => self.args.requests.max(LIFECYCLE_REQUESTS),
            _ => self.args.requests,
        };
        let mut cell = self
            .measure(target, op, c, self.warmup, self.seconds, cap)
            .await;
        cell.kind = kind;
        cell.label = match cell.jobs {
            Some((_, jps)) => format!("{label} ({jps:.0} jobs/s)"),
            None => label,
        };
        cell.ratio = self.ratio(shape, c, cell.rps);
        eprintln!(
            "{:<28} c={:<4} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  errors {}",
            cell.label,
            c,
            cell.rps,
            fmt_us(cell.lat.p50),
            fmt_us(cell.lat.p99),
            cell.errors
        );
        cell
    }

    fn ratio(&self, shape: Shape, c: usize, rps: f64) -> Option<(f64, &'static str)> {
        let post = self.base_post.get(&c).copied().filter(|&r| r > 0.0);
        let get = self.base_get.get(&c).copied().filter(|&r| r > 0.0);
        match shape {
            Shape::Post => post.map(|b| (rps / b, "POST")),
            Shape::Get => get.map(|b| (rps / b, "GET")),
            // The baseline rate of the same request mix: 12 requests take
            // 10/post + 2/get seconds at the baseline's rates.
            Shape::Mix => match (post, get) {
                (Some(p), Some(g)) => {
                    let mix = (LIFECYCLE_POSTS + LIFECYCLE_GETS)
                        / (LIFECYCLE_POSTS / p + LIFECYCLE_GETS / g);
                    Some((rps / mix, "mix"))
                }
                _ => None,
            },
        }
    }

    async fn start_baseline(&mut self) -> Result<ServerProc, Abort> {
        let spec = self.baseline_spec()?;
        eprintln!("starting baseline server");
        let (sp, took) = ServerProc::start(spec, self.startup_limit(), self.deadline).await?;
        self.rep.header.push(format!(
            "baseline: bare hyper 1 server (this binary's hidden `baseline-server`), multi-thread \
             tokio, http1 keep-alive, fixed JSON answer after reading the body; up after {:.3} s; \
             idle while flinger is measured",
            took.as_secs_f64()
        ));
        Ok(sp)
    }

    /// The baseline's POST and GET cells at concurrency `c`.
    async fn baseline_cells(&mut self, target: &Target, c: usize) -> Result<(), Abort> {
        let op = Op::Submit {
            bodies: vec![submit_body(SUBMIT_QUEUE)],
        };
        let cell = self
            .cell(
                target,
                op,
                c,
                "baseline-post",
                "baseline POST".into(),
                Shape::Post,
            )
            .await;
        self.base_post.insert(c, cell.rps);
        self.rep.baseline.push(cell);
        self.check()?;
        let queues: Vec<String> = POP_QUEUES.iter().map(|q| q.to_string()).collect();
        let op = Op::Get {
            paths: Arc::new(vec![pop_path(&queues)]),
        };
        let cell = self
            .cell(
                target,
                op,
                c,
                "baseline-get",
                "baseline GET".into(),
                Shape::Get,
            )
            .await;
        self.base_get.insert(c, cell.rps);
        self.rep.baseline.push(cell);
        self.check()
    }

    async fn submit_cell(
        &mut self,
        target: &Target,
        c: usize,
        kind: &'static str,
        queues: Option<&[String]>,
    ) -> Result<Cell, Abort> {
        let bodies = match queues {
            Some(qs) => qs.iter().map(|q| submit_body(q)).collect(),
            None => vec![submit_body(SUBMIT_QUEUE)],
        };
        let label = kind.to_string();
        let cell = self
            .cell(target, Op::Submit { bodies }, c, kind, label, Shape::Post)
            .await;
        if queues.is_none() {
            // These jobs wait in bench-a, one of the pop queues.
            self.waiting_abc += cell.ok_all;
        }
        Ok(cell)
    }

    /// Submits `n` jobs round-robin over `queues` at concurrency `c`, untimed
    /// and as fast as the server takes them. `track` names a job index whose
    /// id is kept (the scale position check needs one deep job).
    async fn prefill(
        &self,
        target: &Target,
        queues: &[String],
        n: u64,
        c: usize,
        track: Option<u64>,
    ) -> Prefill {
        let bodies: Arc<Vec<Bytes>> = Arc::new(queues.iter().map(|q| submit_body(q)).collect());
        // A small top-up gains nothing from 64 connections.
        let c = c
            .min(usize::try_from(n.div_ceil(32)).unwrap_or(usize::MAX))
            .max(1);
        let next = Arc::new(AtomicU64::new(0));
        let errs = Arc::new(AtomicU64::new(0));
        // Stop early on a broken server rather than push n errors through it.
        let max_errors = (n / 100).max(100);
        let t0 = Instant::now();
        let progress = (n >= 50_000).then(|| {
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let done = next.load(Ordering::Relaxed).min(n);
                    eprintln!(
                        "  pre-fill: {done}/{n} jobs submitted ({:.0}/s)",
                        done as f64 / t0.elapsed().as_secs_f64()
                    );
                }
            })
        });
        let handles: Vec<_> = (0..c)
            .map(|_| {
                let (bodies, next, errs, stop) = (
                    bodies.clone(),
                    next.clone(),
                    errs.clone(),
                    self.stop.clone(),
                );
                let mut conn = Conn::new(target, self.timeout);
                let deadline = self.deadline;
                tokio::spawn(async move {
                    let (mut ok, mut tracked) = (0u64, None);
                    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
                    loop {
                        if stop.load(Ordering::Relaxed)
                            || Instant::now() >= deadline
                            || errs.load(Ordering::Relaxed) >= max_errors
                        {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let body = bodies[(i % bodies.len() as u64) as usize].clone();
                        let r = conn
                            .call(Method::POST, "/v1/job", Some((JSON_CT, body)), None)
                            .await;
                        let outcome = r.and_then(|(s, b)| {
                            if track == Some(i) {
                                job_id_of(s, &b).map(Some)
                            } else {
                                expect_job_id(s, &b).map(|()| None)
                            }
                        });
                        match outcome {
                            Ok(id) => {
                                ok += 1;
                                tracked = tracked.or(id);
                            }
                            Err(e) => {
                                errs.fetch_add(1, Ordering::Relaxed);
                                if kinds.len() < MAX_ERROR_KINDS || kinds.contains_key(&e) {
                                    *kinds.entry(e).or_default() += 1;
                                }
                            }
                        }
                    }
                    (ok, tracked, kinds)
                })
            })
            .collect();
        let mut out = Prefill {
            ok: 0,
            errors: 0,
            secs: 0.0,
            tracked: None,
            kinds: BTreeMap::new(),
        };
        for h in handles {
            if let Ok((ok, tracked, kinds)) = h.await {
                out.ok += ok;
                out.tracked = out.tracked.or(tracked);
                for (k, v) in kinds {
                    *out.kinds.entry(k).or_default() += v;
                }
            }
        }
        if let Some(p) = progress {
            p.abort();
        }
        out.errors = errs.load(Ordering::Relaxed);
        out.secs = t0.elapsed().as_secs_f64();
        out
    }

    /// Makes sure at least `want` jobs wait in `queues` (by our count).
    async fn top_up(
        &mut self,
        target: &Target,
        queues: &[String],
        waiting: &mut u64,
        want: u64,
        c: usize,
    ) -> Result<(), Abort> {
        if *waiting >= want {
            return Ok(());
        }
        let p = self.prefill(target, queues, want - *waiting, c, None).await;
        *waiting += p.ok;
        if p.errors > 0 {
            self.rep.notes.push(format!(
                "pre-fill of {} ({} jobs): {} errors: {}",
                queues.join(","),
                want,
                p.errors,
                fmt_kinds(&p.kinds)
            ));
        }
        self.check()
    }

    /// A pop cell over `queues`. Unless --prefill fixes the number, a short
    /// probe at the same concurrency estimates the pop rate and the queues
    /// are topped up to twice what the cell could take.
    async fn pop_cell(
        &mut self,
        target: &Target,
        queues: &[String],
        waiting: &mut u64,
        c: usize,
        kind: &'static str,
    ) -> Result<Cell, Abort> {
        let path = pop_path(queues);
        let fill_c = self.args.scale_concurrency.max(c);
        let (want, how) = match self.args.prefill {
            Some(n) => (n, format!("--prefill {n}")),
            None => {
                let probe_n = 500 + 50 * c as u64;
                self.top_up(target, queues, waiting, probe_n, fill_c)
                    .await?;
                let probe = self
                    .measure(target, Op::Pop { path: path.clone() }, c, 0.0, 3.0, probe_n)
                    .await;
                *waiting = waiting.saturating_sub(probe.ok_all);
                let good = probe.requests.saturating_sub(probe.errors);
                let rate = if probe.secs > 0.0 {
                    good as f64 / probe.secs
                } else {
                    0.0
                }
                .max(100.0);
                let window = self.warmup + self.seconds;
                let est = (rate * window * 2.0).ceil() as u64 + 8 * c as u64;
                // Never more than the request cap could pop (plus warm-up).
                let cap = self.args.requests + (rate * self.warmup * 2.0).ceil() as u64;
                (est.min(cap), format!("probe {rate:.0} pops/s"))
            }
        };
        self.check()?;
        self.top_up(target, queues, waiting, want, fill_c).await?;
        let before = *waiting;
        let op = Op::Pop { path };
        let mut cell = self
            .cell(target, op, c, kind, kind.to_string(), Shape::Get)
            .await;
        *waiting = waiting.saturating_sub(cell.ok_all);
        cell.notes
            .push(format!("{before} jobs waiting before the cell ({how})"));
        Ok(cell)
    }

    async fn lifecycle_cell(&mut self, target: &Target, c: usize) -> Result<Cell, Abort> {
        let mut cell = self
            .cell(
                target,
                Op::lifecycle(),
                c,
                "lifecycle",
                "lifecycle".into(),
                Shape::Mix,
            )
            .await;
        if let Some(p) = cell.job_lat {
            cell.notes.push(format!(
                "per job: p50 {}, p99 {}, p999 {}",
                fmt_us(p.p50),
                fmt_us(p.p99),
                fmt_us(p.p999)
            ));
        }
        Ok(cell)
    }

    /// Creates --poll-jobs finished jobs once (submit, pop, final result) and
    /// keeps their result paths for every result-poll cell.
    async fn poll_paths(&mut self, target: &Target) -> Result<Arc<Vec<String>>, Abort> {
        if let Some(p) = &self.poll_paths {
            return Ok(p.clone());
        }
        let mut conn = Conn::new(target, self.timeout);
        let pop = pop_path(&[POLL_QUEUE.to_string()]);
        let mut paths = Vec::with_capacity(self.args.poll_jobs);
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..self.args.poll_jobs {
            self.check()?;
            let step = async {
                let (s, b) = conn
                    .call(
                        Method::POST,
                        "/v1/job",
                        Some((JSON_CT, submit_body(POLL_QUEUE))),
                        None,
                    )
                    .await?;
                expect_job_id(s, &b)?;
                let (s, b) = conn.call(Method::GET, &pop, None, None).await?;
                let id = job_id_of(s, &b)?;
                let path = format!("/v1/result/{id}");
                let (s, b) = conn
                    .call(
                        Method::POST,
                        &path,
                        Some((JSON_CT, Bytes::from_static(FINAL_RESULT))),
                        None,
                    )
                    .await?;
                expect_ok(s, &b)?;
                Ok::<String, String>(path)
            };
            match step.await {
                Ok(p) => paths.push(p),
                Err(e) => *failures.entry(e).or_default() += 1,
            }
        }
        if !failures.is_empty() {
            self.rep.notes.push(format!(
                "result-poll set-up: {} of {} jobs failed: {}",
                failures.values().sum::<u64>(),
                self.args.poll_jobs,
                fmt_kinds(&failures)
            ));
        }
        let paths = Arc::new(paths);
        self.poll_paths = Some(paths.clone());
        Ok(paths)
    }

    async fn result_poll_cell(&mut self, target: &Target, c: usize) -> Result<Cell, Abort> {
        let paths = self.poll_paths(target).await?;
        if paths.is_empty() {
            return Err(Abort::Setup(
                "result-poll: could not create a single job with a result".into(),
            ));
        }
        let n = paths.len();
        let mut cell = self
            .cell(
                target,
                Op::Get { paths },
                c,
                "result-poll",
                "result-poll".into(),
                Shape::Get,
            )
            .await;
        cell.notes
            .push(format!("{n} distinct jobs polled round-robin"));
        Ok(cell)
    }

    async fn run_scale(
        &mut self,
        server: &mut Option<ServerProc>,
        target: &mut Target,
    ) -> Result<(), Abort> {
        let n = self.args.scale_jobs;
        let q = self.args.scale_queues;
        let sc = self.args.scale_concurrency;
        let queues: Vec<String> = (0..q).map(|i| format!("bench-scale-{i}")).collect();
        eprintln!("scale: pre-filling {n} jobs over {q} queues at c={sc}");
        // Job n-1 goes to queue (n-1) % q, the last queue to get its extra
        // job, so it sits at the deepest queue's tail: depth ceil(n/q).
        let depth = n.div_ceil(q as u64);
        let p = self.prefill(target, &queues, n, sc, Some(n - 1)).await;
        let mut info = ScaleInfo {
            jobs: n,
            queues: q,
            prefill_ok: p.ok,
            prefill_errors: p.errors,
            prefill_secs: p.secs,
            depth,
            ..ScaleInfo::default()
        };
        if p.errors > 0 {
            self.rep.notes.push(format!(
                "scale pre-fill: {} errors: {}",
                p.errors,
                fmt_kinds(&p.kinds)
            ));
        }
        info.rss_after_prefill = target.pid.and_then(read_rss);
        self.rep.scale = Some(info);
        self.check()?;

        let empty = |kind: &str, cells: &[Cell]| {
            cells
                .iter()
                .find(|x| x.kind == kind && x.c == sc)
                .map(|x| x.rps)
        };

        if let Some(id) = &p.tracked {
            let paths = Arc::new(vec![format!("/v1/job/{id}/position")]);
            let mut cs = vec![1, sc];
            cs.dedup();
            for c in cs {
                let op = Op::Get {
                    paths: paths.clone(),
                };
                let label = format!("position @depth {depth}");
                let cell = self
                    .cell(target, op, c, "position", label, Shape::Get)
                    .await;
                self.rep.scale_cells.push(cell);
                self.check()?;
            }
        } else {
            self.rep
                .notes
                .push("scale: the deep job's id was not captured; position not measured".into());
        }

        let mut cell = self
            .submit_cell(target, sc, "submit", Some(&queues))
            .await?;
        cell.label = format!("submit @{n} waiting");
        cell.vs_empty = empty("submit", &self.rep.cells).map(|e| cell.rps / e);
        self.rep.scale_cells.push(cell);
        self.check()?;

        let pop_queues: Vec<String> = queues.iter().take(3).cloned().collect();
        // Jobs waiting in those queues, by the round-robin of the pre-fill.
        let mut waiting = p.ok * pop_queues.len() as u64 / q as u64;
        let mut cell = self
            .pop_cell(target, &pop_queues, &mut waiting, sc, "pop")
            .await?;
        cell.label = format!("pop @{n} waiting");
        cell.vs_empty = empty("pop", &self.rep.cells).map(|e| cell.rps / e);
        self.rep.scale_cells.push(cell);
        self.check()?;

        let rss_before = target.pid.and_then(read_rss);
        if let Some(sp) = server.as_mut() {
            eprintln!("scale: restarting {}", sp.spec.label);
            let stopped = sp.terminate(Duration::from_secs(60)).await;
            let limit = self.startup_limit().max(Duration::from_secs(300));
            let took = sp.spawn_and_wait(limit, self.deadline).await?;
            *target = sp.target();
            // Does the deep job survive the restart, and where is it now?
            let after = match &p.tracked {
                Some(id) => {
                    let mut conn = Conn::new(target, self.timeout);
                    match conn
                        .call(Method::GET, &format!("/v1/job/{id}/position"), None, None)
                        .await
                    {
                        Ok((s, b)) => Some(format!(
                            "{} {}",
                            s.as_u16(),
                            String::from_utf8_lossy(&b[..b.len().min(100)]).trim()
                        )),
                        Err(e) => Some(e),
                    }
                }
                None => None,
            };
            if let Some(info) = self.rep.scale.as_mut() {
                info.rss_before_restart = rss_before;
                info.stop = stopped;
                info.restart_secs = Some(took.as_secs_f64());
                info.rss_after_restart = target.pid.and_then(read_rss);
                info.position_after_restart = after;
            }
        } else {
            self.rep
                .notes
                .push("scale: server not spawned by us (--url), restart not measured".into());
            if let Some(info) = self.rep.scale.as_mut() {
                info.rss_before_restart = rss_before;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- report

#[derive(Default)]
struct ScaleInfo {
    jobs: u64,
    queues: usize,
    prefill_ok: u64,
    prefill_errors: u64,
    prefill_secs: f64,
    depth: u64,
    rss_after_prefill: Option<Rss>,
    rss_before_restart: Option<Rss>,
    stop: Option<(Duration, bool)>,
    restart_secs: Option<f64>,
    rss_after_restart: Option<Rss>,
    position_after_restart: Option<String>,
}

#[derive(Default)]
struct Report {
    cmdline: String,
    header: Vec<String>,
    baseline: Vec<Cell>,
    cells: Vec<Cell>,
    scale_cells: Vec<Cell>,
    scale: Option<ScaleInfo>,
    notes: Vec<String>,
    aborted: Option<String>,
    /// Workload names in --workloads order: the table groups rows by them.
    order: Vec<&'static str>,
}

fn fmt_us(us: u32) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", f64::from(us) / 1000.0)
    } else {
        format!("{:.2} s", f64::from(us) / 1e6)
    }
}

fn fmt_mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn fmt_rss(r: Option<Rss>) -> String {
    r.map_or("n/a".into(), |r| {
        format!("{} ({})", fmt_mib(r.hwm_kb), fmt_mib(r.rss_kb))
    })
}

fn fmt_kinds(kinds: &BTreeMap<String, u64>) -> String {
    kinds
        .iter()
        .map(|(k, n)| format!("{n}× `{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss_json(r: Option<Rss>) -> Value {
    r.map_or(
        Value::Null,
        |r| json!({"vm_hwm_kb": r.hwm_kb, "vm_rss_kb": r.rss_kb}),
    )
}

impl Report {
    fn row(out: &mut String, cell: &Cell, extra: Option<String>) {
        let errors = if cell.errors == 0 {
            "0".to_string()
        } else {
            format!("{} ({:.2}%)", cell.errors, cell.error_rate() * 100.0)
        };
        let ratio = cell
            .ratio
            .map_or("—".into(), |(r, what)| format!("{r:.2}× {what}"));
        let cut = if cell.cut { " (cut short)" } else { "" };
        let _ = write!(
            out,
            "| {}{} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            cell.label,
            cut,
            cell.c,
            cell.rps,
            fmt_us(cell.lat.p50),
            fmt_us(cell.lat.p99),
            fmt_us(cell.lat.p999),
            errors,
            ratio,
            fmt_rss(cell.rss)
        );
        if let Some(e) = extra {
            let _ = write!(out, " {e} |");
        }
        out.push('\n');
    }

    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# flinger-bench\n\n");
        for h in &self.header {
            let _ = writeln!(out, "- {h}");
        }
        if !self.baseline.is_empty() || !self.cells.is_empty() {
            out.push_str(
                "\n| workload | c | req/s | p50 | p99 | p999 | errors | ratio vs baseline | server peak RSS (now) |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            // Measured concurrency-major; shown grouped by workload.
            let mut rows: Vec<&Cell> = self.cells.iter().collect();
            rows.sort_by_key(|c| {
                let w = self
                    .order
                    .iter()
                    .position(|&k| k == c.kind)
                    .unwrap_or(usize::MAX);
                (w, c.c)
            });
            let mut base: Vec<&Cell> = self.baseline.iter().collect();
            base.sort_by_key(|c| (c.kind == "baseline-get", c.c));
            for cell in base.into_iter().chain(rows) {
                Self::row(&mut out, cell, None);
            }
        }
        if !self.scale_cells.is_empty() || self.scale.is_some() {
            out.push_str("\n## Scale\n\n");
            if let Some(s) = &self.scale {
                let _ = writeln!(
                    out,
                    "- pre-fill: {} of {} jobs over {} queues in {:.1} s ({:.0} jobs/s), {} errors; deepest queue {} jobs",
                    s.prefill_ok,
                    s.jobs,
                    s.queues,
                    s.prefill_secs,
                    s.prefill_ok as f64 / s.prefill_secs.max(1e-9),
                    s.prefill_errors,
                    s.depth
                );
                let _ = writeln!(
                    out,
                    "- server RSS after pre-fill: {}",
                    fmt_rss(s.rss_after_prefill)
                );
                let _ = writeln!(
                    out,
                    "- server RSS before restart: {}",
                    fmt_rss(s.rss_before_restart)
                );
                if let Some((d, killed)) = s.stop {
                    let _ = writeln!(
                        out,
                        "- SIGTERM to exit: {:.3} s{}",
                        d.as_secs_f64(),
                        if killed {
                            " (did not exit; SIGKILLed)"
                        } else {
                            ""
                        }
                    );
                }
                if let Some(t) = s.restart_secs {
                    let _ = writeln!(
                        out,
                        "- restart on the same data dir, start-up until GET /v1 answers: {t:.3} s; RSS after: {}",
                        fmt_rss(s.rss_after_restart)
                    );
                }
                if let Some(p) = &s.position_after_restart {
                    let _ = writeln!(out, "- deep job's position after restart: `{p}`");
                }
            }
            if !self.scale_cells.is_empty() {
                out.push_str(
                    "\n| workload | c | req/s | p50 | p99 | p999 | errors | ratio vs baseline | server peak RSS (now) | vs empty queue |\n\
                     |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                );
                for cell in &self.scale_cells {
                    let vs = cell.vs_empty.map_or("—".into(), |v| format!("{v:.2}×"));
                    Self::row(&mut out, cell, Some(vs));
                }
            }
        }
        let mut notes: Vec<String> = Vec::new();
        for cell in self
            .baseline
            .iter()
            .chain(&self.cells)
            .chain(&self.scale_cells)
        {
            for n in &cell.notes {
                notes.push(format!("{} c={}: {n}", cell.label, cell.c));
            }
            if !cell.kinds.is_empty() {
                notes.push(format!(
                    "{} c={} errors (incl. {} in warm-up): {}",
                    cell.label,
                    cell.c,
                    cell.warm_errors,
                    fmt_kinds(&cell.kinds)
                ));
            }
            if cell.kind == "position" {
                if let Some(s) = &cell.sample {
                    notes.push(format!(
                        "{} c={}: answer `{}`",
                        cell.label,
                        cell.c,
                        s.trim()
                    ));
                }
            }
        }
        notes.extend(self.notes.iter().cloned());
        notes.push(
            "ratio = flinger req/s ÷ baseline req/s at the same c (POST rows vs baseline POST, \
             GET rows vs baseline GET, lifecycle vs the same 10 POST + 2 GET mix); latencies are \
             per request; RSS is the spawned server's VmHWM (VmRSS now) after the cell"
                .into(),
        );
        out.push_str("\nNotes:\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
        if let Some(a) = &self.aborted {
            let _ = writeln!(out, "\n**Run incomplete:** {a}");
        }
        out
    }

    fn failing_cells(&self) -> Vec<String> {
        self.baseline
            .iter()
            .chain(&self.cells)
            .chain(&self.scale_cells)
            .filter(|c| c.error_rate() > 0.01)
            .map(|c| format!("{} c={} ({:.2}%)", c.label, c.c, c.error_rate() * 100.0))
            .collect()
    }

    fn to_json(&self, args: &Cli, conc: &[usize], seconds: f64, warmup: f64) -> Value {
        let cells = |v: &[Cell]| v.iter().map(Cell::json).collect::<Vec<_>>();
        json!({
            "command": self.cmdline,
            "header": self.header,
            "settings": {
                "url": args.url,
                "server_bin": args.server_bin,
                "workloads": args.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
                "concurrency": conc,
                "seconds": seconds,
                "warmup_seconds": warmup,
                "requests_cap": args.requests,
                "max_seconds": args.max_seconds,
                "scale": args.scale,
            },
            "baseline": cells(&self.baseline),
            "cells": cells(&self.cells),
            "scale_cells": cells(&self.scale_cells),
            "scale": self.scale.as_ref().map(|s| json!({
                "jobs": s.jobs,
                "queues": s.queues,
                "prefill_ok": s.prefill_ok,
                "prefill_errors": s.prefill_errors,
                "prefill_seconds": s.prefill_secs,
                "deepest_queue": s.depth,
                "rss_after_prefill": rss_json(s.rss_after_prefill),
                "rss_before_restart": rss_json(s.rss_before_restart),
                "sigterm_to_exit_seconds": s.stop.map(|x| x.0.as_secs_f64()),
                "sigkilled": s.stop.map(|x| x.1),
                "restart_to_ready_seconds": s.restart_secs,
                "rss_after_restart": rss_json(s.rss_after_restart),
                "position_after_restart": s.position_after_restart,
            })),
            "notes": self.notes,
            "failing_cells": self.failing_cells(),
            "aborted": self.aborted,
        })
    }
}

// ---------------------------------------------------------------- baseline server

/// The bare hyper 1 server the report compares against: every request gets
/// the same small JSON after its body has been read whole (as any real
/// handler must), on a default multi-thread runtime with keep-alive.
fn baseline_server(bind: SocketAddr) -> ExitCode {
    if !is_loopback_ip(bind.ip()) {
        eprintln!("baseline-server: refusing non-loopback bind {bind}");
        return ExitCode::from(3);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline-server: {e}");
            return ExitCode::from(3);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("baseline-server: cannot bind {bind}: {e}");
                return ExitCode::from(3);
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    // Transient (e.g. out of descriptors): back off, go on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(BASELINE_BODY)));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CT));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    //! Unit tests of the harness's pure parts: percentiles, the loopback
    //! guard, response parsing and command-line quoting.

    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=1000).collect();
        let p = Pct::of(&v);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        assert_eq!(Pct::of(&[]).p99, 0);
        assert_eq!(Pct::of(&[7]).p999, 7);
    }

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
    }

    #[test]
    fn mixed_baseline_rate_is_harmonic() {
        let mut b = Bench::new(Cli::parse_from(["flinger-bench", "--quick"])).unwrap();
        b.base_post.insert(1, 1000.0);
        b.base_get.insert(1, 2000.0);
        // 12 requests in 10/1000 + 2/2000 s = 0.011 s.
        let (r, what) = b.ratio(Shape::Mix, 1, 12.0 / 0.011).unwrap();
        assert!((r - 1.0).abs() < 1e-9 && what == "mix");
        assert!(b.ratio(Shape::Get, 16, 1.0).is_none());
    }

    #[test]
    fn arguments_are_shell_quoted() {
        assert_eq!(
            quote_arg("--url=http://127.0.0.1:80"),
            "--url=http://127.0.0.1:80"
        );
        assert_eq!(quote_arg("a b"), "'a b'");
        assert_eq!(quote_arg("it's"), r"'it'\''s'");
        assert_eq!(quote_arg(""), "''");
    }
}
