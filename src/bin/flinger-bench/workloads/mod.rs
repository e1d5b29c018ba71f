//! The run: [`Bench`] holds the settings and the bookkeeping between
//! workloads, starts the servers, measures each cell and fills the report.
//!
//! - this file: the cell workloads (submit, pop, lifecycle, result-poll) at
//!   each concurrency against flinger and the in-run baseline, and the
//!   untimed pre-fills they need;
//! - `cells`: what one cell's workers do;
//! - `scale`: the opt-in runs with a million jobs waiting, and the restart;
//! - `metrics_cost`: submit and pop cells unscraped and with `/metrics` scraped
//!   every second, alternating on the same server;
//! - `mix`: a measured submit + pop phase with per-second windows, shared by
//!   the soak (`soak`) and the adversarial workload (`adversarial`, whose
//!   attackers are in `attack`). Those two run on servers of their own;
//! - `longpoll`: 1,000 agents long-polling on a server of its own: idle CPU and
//!   dispatch latency.

mod adversarial;
mod attack;
mod cells;
mod longpoll;
mod metrics_cost;
mod mix;
mod scale;
mod soak;

pub use longpoll::LongpollReport;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::client::{
    expect_job_id, expect_ok, job_id_of, pop_path, resolve_url, submit_body, Conn, Target, JSON_CT,
};
use crate::progress::Progress;
use crate::report::{fmt_kinds, fmt_us, Cell, Report};
use crate::server::{proc_cpu, read_rss, self_cpu, ServerProc, ServerSpec};
use crate::stats::{count_kind, merge_kinds, Latency, Pct};
use crate::{quote_arg, Abort, Cli, Workload, MAX_CONCURRENCY};
use cells::{
    worker, CellCtx, Op, FINAL_RESULT, LIFECYCLE_GETS, LIFECYCLE_POSTS, LIFECYCLE_REQUESTS,
    POLL_QUEUE, POP_QUEUES, SUBMIT_QUEUE,
};

/// RUST_LOG for a spawned server: per-request info logging would measure
/// the logger, not the server.
const QUIET_LOG: &str = "warn";

/// Which baseline a row compares to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Post,
    Get,
    /// Lifecycle: 10 POSTs and 2 GETs per job.
    Mix,
}

/// The whole run: settings, bookkeeping between cells, and the report.
pub struct Bench {
    pub args: Cli,
    pub conc: Vec<usize>,
    pub seconds: f64,
    pub warmup: f64,
    timeout: Duration,
    deadline: Instant,
    pub stop: Arc<AtomicBool>,
    log_fallback: Arc<AtomicBool>,
    /// Jobs we know are waiting in bench-a/b/c (our pre-fills and submits
    /// minus our pops), so pop cells top up only what they lack.
    waiting_abc: u64,
    poll_paths: Option<Arc<Vec<String>>>,
    base_post: BTreeMap<usize, f64>,
    base_get: BTreeMap<usize, f64>,
    /// RLIMIT_NOFILE soft limit before and after the bench raised it.
    pub nofile: Option<(u64, u64)>,
    pub rep: Report,
}

struct Prefill {
    ok: u64,
    errors: u64,
    secs: f64,
    tracked: Option<String>,
    kinds: BTreeMap<String, u64>,
}

impl Bench {
    pub fn new(args: Cli) -> Result<Bench, String> {
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
        if args.workloads.contains(&Workload::Soak) {
            soak::check_args(&args)?;
        }
        if args.workloads.contains(&Workload::Adversarial) {
            adversarial::check_args(&args)?;
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
            nofile: None,
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
            rust_log: QUIET_LOG,
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
            rust_log: QUIET_LOG,
        })
    }

    /// Starts a server from `spec` and says so in the report's header.
    async fn start_server(&mut self, spec: ServerSpec, role: &str) -> Result<ServerProc, Abort> {
        eprintln!("starting {} ({})", spec.label, spec.program.display());
        let (sp, took) = ServerProc::start(spec, self.startup_limit(), self.deadline).await?;
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| sp.spec.rust_log.into());
        let extras = if sp.spec.extra_args.is_empty() {
            String::new()
        } else {
            format!(" `{}`", sp.spec.extra_args.join(" "))
        };
        // What ran, for A/B runs of several builds (`flinger --version` names the commit).
        let version = std::process::Command::new(&sp.spec.program)
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout);
                text.lines().next().map(|l| format!(" ({})", l.trim()))
            })
            .unwrap_or_default();
        self.rep.header.push(format!(
            "{role}: {} `{}`{version}{extras} spawned on {} (pid {}), fresh data dir, RUST_LOG={log}; \
             answered GET /v1 after {:.3} s",
            sp.spec.label,
            sp.spec.program.display(),
            sp.addr,
            sp.pid().unwrap_or(0),
            took.as_secs_f64()
        ));
        Ok(sp)
    }

    /// Stops a server we spawned, noting how long SIGTERM took.
    async fn stop_server(&mut self, mut sp: ServerProc) {
        if let Some((took, killed)) = sp.terminate(Duration::from_secs(10)).await {
            self.rep.notes.push(format!(
                "{} stopped {} {:.3} s after SIGTERM",
                sp.spec.label,
                if killed { "(SIGKILLed)" } else { "cleanly" },
                took.as_secs_f64()
            ));
        }
    }

    pub async fn run_all(&mut self) -> Result<(), Abort> {
        // Check --url before spending any time on the baseline.
        let url_target = match &self.args.url {
            Some(url) => Some(resolve_url(url).await.map_err(Abort::Setup)?),
            None => None,
        };
        if let Some((before, after)) = self.nofile {
            if after > before {
                self.rep.header.push(format!(
                    "client: RLIMIT_NOFILE soft limit raised from {before} to {after}; \
                     spawned servers run with {before}"
                ));
            }
        }
        if url_target.is_some() {
            self.rep.header.push(format!(
                "target: {} (--url; no RSS/CPU figures)",
                self.args.url.as_deref().unwrap_or_default()
            ));
        }
        let workloads = self.args.workloads.clone();
        let cell_workloads: Vec<Workload> =
            workloads.iter().copied().filter(|w| w.is_cell()).collect();
        if !cell_workloads.is_empty() || self.args.scale {
            self.run_cells(&cell_workloads, url_target.clone()).await?;
        }
        for w in workloads {
            match w {
                Workload::Soak => {
                    self.check()?;
                    soak::run(self, url_target.clone()).await?;
                }
                Workload::Adversarial => {
                    self.check()?;
                    adversarial::run(self, url_target.clone()).await?;
                }
                Workload::Longpoll => {
                    self.check()?;
                    if url_target.is_some() {
                        return Err(Abort::Setup(
                            "the longpoll workload spawns its own server (no --url)".into(),
                        ));
                    }
                    longpoll::run(self).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The cell workloads at every concurrency, then the scale runs, on one
    /// flinger (or --url) beside one baseline server.
    async fn run_cells(
        &mut self,
        workloads: &[Workload],
        url_target: Option<Target>,
    ) -> Result<(), Abort> {
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
            Some(t) => t,
            None => {
                let spec = self.flinger_spec()?;
                let sp = self.start_server(spec, "target").await?;
                let t = sp.target();
                server = Some(sp);
                t
            }
        };
        self.check()?;

        self.rep.order = workloads.iter().map(|w| w.name()).collect();
        for c in self.conc.clone() {
            if workloads.is_empty() {
                break;
            }
            if let Some(b) = &baseline {
                let bt = b.target();
                self.baseline_cells(&bt, c).await?;
            }
            for &w in workloads {
                if w == Workload::MetricsCost {
                    let cells = self.metrics_cost_cells(&target, c).await?;
                    self.rep.cells.extend(cells);
                    self.check()?;
                    continue;
                }
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
                    Workload::Soak
                    | Workload::Adversarial
                    | Workload::MetricsCost
                    | Workload::Longpoll => continue,
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
        if let Some(sp) = server {
            self.stop_server(sp).await;
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
        let done = Arc::new(AtomicU64::new(0));
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
            done: done.clone(),
        });
        let progress = Progress::start(
            format!("{} c={c}", ctx.op.what()),
            Some(planned_end - start),
            done,
            "requests",
        );
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
        progress.finish();
        let mut lat = Latency::default();
        let mut job_lat = Latency::default();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let (mut errors, mut warm_errors, mut ok_all) = (0, 0, 0);
        let mut last_end: Option<Instant> = None;
        let mut sample = None;
        for s in stats {
            lat.add(&s.lat);
            job_lat.add(&s.job_lat);
            errors += s.errors;
            warm_errors += s.warm_errors;
            ok_all += s.ok_all;
            if let Some(e) = s.last_end {
                last_end = Some(last_end.map_or(e, |l| l.max(e)));
            }
            merge_kinds(&mut kinds, s.kinds);
            if sample.is_none() {
                sample = s.sample;
            }
        }
        let secs = last_end.map_or(0.0, |e| e.saturating_duration_since(warm_end).as_secs_f64());
        let requests = lat.len();
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
            jobs: is_life.then(|| (job_lat.len(), per_sec(job_lat.len()))),
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

    /// Submits `n` jobs round-robin over `bodies` at concurrency `c`, untimed
    /// and as fast as the server takes them. `track` names a job index whose
    /// id is kept (the scale position check needs one deep job).
    async fn prefill_bodies(
        &self,
        target: &Target,
        bodies: Vec<Bytes>,
        n: u64,
        c: usize,
        track: Option<u64>,
    ) -> Prefill {
        let bodies = Arc::new(bodies);
        // A small top-up gains nothing from 64 connections.
        let c = c
            .min(usize::try_from(n.div_ceil(32)).unwrap_or(usize::MAX))
            .max(1);
        let next = Arc::new(AtomicU64::new(0));
        let errs = Arc::new(AtomicU64::new(0));
        // Stop early on a broken server rather than push n errors through it.
        let max_errors = (n / 100).max(100);
        let t0 = Instant::now();
        let progress = (n >= 50_000)
            .then(|| Progress::start(format!("pre-fill of {n} jobs"), None, next.clone(), "jobs"));
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
                                count_kind(&mut kinds, e);
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
                merge_kinds(&mut out.kinds, kinds);
            }
        }
        drop(progress);
        out.errors = errs.load(Ordering::Relaxed);
        out.secs = t0.elapsed().as_secs_f64();
        out
    }

    /// [`Bench::prefill_bodies`] with one small job per queue, round-robin.
    async fn prefill(
        &self,
        target: &Target,
        queues: &[String],
        n: u64,
        c: usize,
        track: Option<u64>,
    ) -> Prefill {
        let bodies = queues.iter().map(|q| submit_body(q)).collect();
        self.prefill_bodies(target, bodies, n, c, track).await
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
}

#[cfg(test)]
mod tests {
    //! Unit tests of the orchestration's pure parts.

    use clap::Parser;

    use super::*;

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
}
