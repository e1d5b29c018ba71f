//! `flinger-bench`: a bounded, loopback-only load generator for flinger, the
//! Testflinger-compatible test-job server.
//!
//! This binary owns everything the benchmark needs and nothing of the server.
//! This file is the command line and the exit status; the rest, one
//! responsibility per module:
//! - `client`: the loopback-only target and the keep-alive HTTP/1 connection
//!   each worker drives (one per worker on a 2-thread tokio runtime; the
//!   server processes get the rest of the machine), and response checks;
//! - `server`: starting the server under test (the `flinger` binary beside
//!   this one, on a free loopback port and a fresh temporary data dir),
//!   reading its RSS and CPU from /proc, and watching its log and data dir
//!   for snapshots and segment rotations;
//! - `baseline`: the in-run bare hyper 1 server (this binary re-executed as
//!   the hidden `baseline-server` subcommand), so the report can say how far
//!   flinger is from "HTTP and nothing else" on the same box, in the same run;
//! - `workloads`: the cells (submit, pop, lifecycle, result-poll, metrics-cost), the opt-in
//!   scale runs, the soak (`workloads::soak`) and the adversarial workload
//!   (`workloads::adversarial`, attackers in `workloads::attack`);
//! - `stats`: latency histograms (`hdrhistogram`) and per-second windows;
//! - `progress`: the progress line on a terminal;
//! - `report`: the Markdown and JSON reports.
//!
//! Every loop is bounded by a request count or a time, and by a hard overall
//! deadline; every target is on the loopback interface.

mod baseline;
mod client;
mod progress;
mod report;
mod server;
mod stats;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand, ValueEnum};

use workloads::Bench;

/// Ceiling on concurrency: each worker is a connection and a task.
const MAX_CONCURRENCY: usize = 1024;

/// Bounded, loopback-only load generator for the flinger test-job server.
///
/// Starts `flinger` (next to this executable) on a free 127.0.0.1 port with a
/// fresh temporary data dir, or targets --url; measures each workload at each
/// concurrency against it and against an in-run bare-hyper baseline server,
/// prints a Markdown table and optionally writes the raw figures as JSON.
///
/// Two long workloads are opt-in: `soak` (submit + pop at one concurrency for
/// a minute on a server made to snapshot and rotate its log often, latency
/// per second) and `adversarial` (a normal submit + pop load, quiet and then
/// beside slow bodies, never-ending multipart, unread responses and search
/// floods). Each runs on a server of its own.
#[derive(Parser, Debug)]
#[command(
    name = "flinger-bench",
    version,
    after_help = "Examples:\n  \
                  flinger-bench --quick                          # smoke run, ~30 s\n  \
                  flinger-bench --json bench.json                # the standard cells, ~3 min\n  \
                  flinger-bench --workloads soak --json soak.json            # ~1 min\n  \
                  flinger-bench --workloads adversarial --json adv.json      # ~30 s\n  \
                  flinger-bench --workloads metrics-cost --concurrency 16    # ~1 min\n  \
                  flinger-bench --workloads longpoll                         # ~40 s\n\n\
                  Exit status: 0 on success; 1 if any cell or phase had more than 1% errors; \
                  2 if --max-seconds cut the run short; 3 if setup failed \
                  (server did not start, bad --url); 130 if interrupted."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,

    /// Target an already running server at this base URL instead of spawning
    /// flinger (http only; the host must be in 127.0.0.0/8, localhost or `[::1]`).
    /// RSS, CPU, the restart measurement and the soak's snapshot counts are
    /// then unavailable.
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

    /// Journal of the spawned server, passed as its `--journal` (`file`, or a
    /// `postgres://` connection string; the database is not emptied between the servers
    /// a run spawns, so give each run a fresh one).
    #[arg(long, value_name = "file|postgres://...", conflicts_with = "url")]
    journal: Option<String>,

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

    /// Workloads to run, comma separated, in this order (soak and adversarial
    /// run after the others, each on a fresh server).
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

    /// Warm-up seconds before each cell's or phase's measurement, excluded
    /// from the statistics [default: 0.5; 0.25 with --quick].
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

    /// Workers, each submitting a job and popping one in turn.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        help_heading = "Soak workload"
    )]
    soak_concurrency: usize,

    /// Measured seconds (after --warmup), reported per 1-s window.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        help_heading = "Soak workload"
    )]
    soak_seconds: u64,

    /// `--snapshot-bytes` for the soak's server, small so that a
    /// minute crosses several snapshots even on a slow box (the server's
    /// default is 128 MiB); 0 leaves the server's default.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20, help_heading = "Soak workload")]
    soak_snapshot_bytes: u64,

    /// `--segment-bytes` for the soak's server, small so that a minute
    /// crosses segment rotations (flinger wants at least 2x its largest body
    /// limit + 1 MiB: 33 MiB with the default 16 MiB result limit); 0 leaves
    /// the server's default.
    #[arg(long, value_name = "BYTES", default_value_t = 33 << 20, help_heading = "Soak workload")]
    soak_segment_bytes: u64,

    /// Agents long-polling at once, each on its own queue and connection.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000,
        help_heading = "Long-poll workload"
    )]
    longpoll_agents: usize,

    /// Jobs submitted (one every 20 ms) to measure dispatch latency.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 500,
        help_heading = "Long-poll workload"
    )]
    longpoll_jobs: usize,

    /// Seconds the server's CPU is measured while every agent waits idle.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10.0,
        help_heading = "Long-poll workload"
    )]
    longpoll_idle_seconds: f64,

    /// Workers of the normal load (each submits a job and pops
    /// one in turn), measured quiet and then under attack.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        help_heading = "Adversarial workload"
    )]
    adversarial_concurrency: usize,

    /// Measured seconds of each phase (quiet, attacked).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        help_heading = "Adversarial workload"
    )]
    adversarial_seconds: u64,

    /// Seconds the attackers run before the attacked phase's
    /// measurement starts (connections opened, bodies started).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 3.0,
        help_heading = "Adversarial workload"
    )]
    attack_ramp: f64,

    /// Connections each dribbling a `POST /v1/job` body one byte
    /// per --slow-body-interval-ms (reconnecting when the server drops them).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 200,
        help_heading = "Adversarial workload"
    )]
    slow_bodies: usize,

    /// Milliseconds between two bytes of a slow body.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 3_000,
        help_heading = "Adversarial workload"
    )]
    slow_body_interval_ms: u64,

    /// Connections each uploading an artifact whose multipart
    /// part headers never end (chunked, as fast as the server reads).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        help_heading = "Adversarial workload"
    )]
    multipart_uploads: usize,

    /// MiB each never-ending multipart connection sends at most
    /// (it then holds the connection open, still unfinished).
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        help_heading = "Adversarial workload"
    )]
    multipart_mib: u64,

    /// Connections that send `GET /v1/agents/data` and never
    /// read the answer (small receive buffer).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        help_heading = "Adversarial workload"
    )]
    unread_readers: usize,

    /// Agents registered before the run so that
    /// `GET /v1/agents/data` is large (each with --unread-agent-kib of comment).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        help_heading = "Adversarial workload"
    )]
    unread_agents: usize,

    /// KiB of data per registered agent.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = 64,
        help_heading = "Adversarial workload"
    )]
    unread_agent_kib: usize,

    /// Connections each sending `GET /v1/job/search` with
    /// --search-tags tags, one after the other.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        help_heading = "Adversarial workload"
    )]
    search_floods: usize,

    /// Least milliseconds between the starts of two searches on one
    /// connection (a slow search is followed at once), so that a cheap
    /// answer does not turn the flood into a CPU race on a shared box.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 100,
        help_heading = "Adversarial workload"
    )]
    search_interval_ms: u64,

    /// Tags per search request.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4_000,
        help_heading = "Adversarial workload"
    )]
    search_tags: usize,

    /// Tagged jobs submitted before the run for the searches to scan.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2_000,
        help_heading = "Adversarial workload"
    )]
    search_jobs: u64,

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
    /// `GET /v1/result/<id>` round-robin over pre-created jobs.
    ResultPoll,
    /// submit and pop cells each run twice on the same server, unscraped and
    /// with GET /metrics every second (alternating); reports the throughput ratio.
    MetricsCost,
    /// submit + pop at --soak-concurrency for --soak-seconds on a server that
    /// snapshots and rotates often; latency per second.
    Soak,
    /// submit + pop at --adversarial-concurrency, quiet and then beside
    /// attackers; p99 ratio and peak RSS per phase.
    Adversarial,
    /// --longpoll-agents agents long-polling (`wait=60`) on a server of its own:
    /// the server's CPU while they wait idle, and dispatch latency p50/p99.
    Longpoll,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Submit => "submit",
            Workload::Pop => "pop",
            Workload::Lifecycle => "lifecycle",
            Workload::ResultPoll => "result-poll",
            Workload::MetricsCost => "metrics-cost",
            Workload::Soak => "soak",
            Workload::Adversarial => "adversarial",
            Workload::Longpoll => "longpoll",
        }
    }

    /// Whether it is measured per concurrency level on the shared server.
    fn is_cell(self) -> bool {
        !matches!(
            self,
            Workload::Soak | Workload::Adversarial | Workload::Longpoll
        )
    }
}

/// Why a run ended early.
enum Abort {
    Setup(String),
    Deadline,
    Interrupted,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(journal) = cli.journal.take() {
        cli.server_args.extend(["--journal".to_owned(), journal]);
    }
    let mut extra = Vec::new();
    for h in &cli.headers {
        let parsed = h.split_once(':').and_then(|(n, v)| {
            Some((
                hyper::header::HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                hyper::header::HeaderValue::from_str(v.trim()).ok()?,
            ))
        });
        match parsed {
            Some(pair) => extra.push(pair),
            None => {
                eprintln!("flinger-bench: --header expects `NAME: VALUE`, got {h:?}");
                return ExitCode::from(2);
            }
        }
    }
    let _ = client::EXTRA_HEADERS.set(extra);
    if let Some(Cmd::BaselineServer { bind, .. }) = cli.cmd {
        return baseline::serve(bind);
    }
    // Before any thread exists: the attackers and the soak need more than
    // the common 1,024 descriptors; spawned servers get the original back.
    let nofile = server::raise_nofile();
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
    // are forked from it, which matters for PR_SET_PDEATHSIG (see server).
    rt.block_on(run(cli, nofile))
}

async fn run(cli: Cli, nofile: Option<(u64, u64)>) -> ExitCode {
    let mut bench = match Bench::new(cli) {
        Ok(b) => b,
        Err(msg) => {
            eprintln!("flinger-bench: {msg}");
            return ExitCode::from(3);
        }
    };
    bench.nofile = nofile;
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

/// The command line as typed, quoted for a POSIX shell, for the report.
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

#[cfg(test)]
mod tests {
    //! Unit tests of the command line's pure parts.

    use super::*;

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

    #[test]
    fn command_line_is_consistent() {
        // clap's own checks (duplicate flags, bad defaults) for every option.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
