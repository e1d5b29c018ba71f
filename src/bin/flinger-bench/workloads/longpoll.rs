//! The `longpoll` workload: what long-poll dispatch (`GET /v1/job?queue=..&wait=`)
//! costs and buys with many agents waiting. On a server of its own, `--longpoll-agents`
//! agents (default 1,000) each long-poll their own queue (`bench-lp-<i>`, as a lab has
//! one queue per device) on a connection of their own, re-polling as soon as an answer
//! comes. Two measurements:
//!
//! - idle: the server's CPU (utime + stime from /proc) over `--longpoll-idle-seconds`
//!   while every agent waits and nothing is submitted;
//! - dispatch latency: jobs submitted one at a time (every 20 ms) to queues whose agent
//!   waits; latency is from just before the submit request to the waiting agent's
//!   receipt of the job (p50/p99 over `--longpoll-jobs` jobs).
//!
//! The stock agent polls every `polling_interval` (10 s by default): a job arriving at
//! a uniformly random moment on a queue served by one such agent waits U(0, 10 s) for
//! the next poll, so p50 5 s, p99 9.9 s (computed, not measured: measuring it takes
//! ten seconds per sample).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::Bench;
use crate::client::{job_id_of, submit_body, Conn, Target};
use crate::report::fmt_us;
use crate::server::proc_cpu;
use crate::stats::{Latency, Pct};
use crate::Abort;

/// The long poll's `wait` (seconds): the server's maximum.
const WAIT: u64 = 60;
/// Time between submits in the latency phase.
const SUBMIT_EVERY: Duration = Duration::from_millis(20);
/// The stock agent's default polling interval.
const STOCK_POLL: Duration = Duration::from_secs(10);

/// What the workload measured.
pub struct LongpollReport {
    agents: usize,
    waiting: usize,
    idle_seconds: f64,
    idle_cpu_s: Option<f64>,
    jobs: usize,
    delivered: usize,
    latency: Pct,
    errors: usize,
}

impl LongpollReport {
    /// The Markdown section.
    pub fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "\n### Long-poll dispatch ({} agents waiting, one queue each)\n\n",
            self.agents
        ));
        out.push_str("| measure | long-poll (`wait=60`) | stock agent, 10 s polling (computed) |\n|---|---|---|\n");
        out.push_str(&format!(
            "| dispatch latency p50 (submit → agent holds the job) | {} | {} |\n",
            fmt_us(self.latency.p50),
            fmt_us(STOCK_POLL.as_micros() as u64 / 2)
        ));
        out.push_str(&format!(
            "| dispatch latency p99 | {} | {} |\n",
            fmt_us(self.latency.p99),
            fmt_us(STOCK_POLL.as_micros() as u64 * 99 / 100)
        ));
        out.push_str(&format!(
            "| dispatch latency max | {} | {} |\n",
            fmt_us(self.latency.max),
            fmt_us(STOCK_POLL.as_micros() as u64)
        ));
        let cpu = self.idle_cpu_s.map_or("n/a".into(), |s| {
            format!(
                "{:.3} s CPU in {:.0} s ({:.2}% of one core)",
                s,
                self.idle_seconds,
                100.0 * s / self.idle_seconds
            )
        });
        out.push_str(&format!(
            "| server CPU while {} agents wait idle | {cpu} | — |\n",
            self.waiting
        ));
        out.push_str(&format!(
            "\n{} of {} jobs reached their waiting agent; {} request errors.\n",
            self.delivered, self.jobs, self.errors
        ));
    }

    /// The JSON figures.
    pub fn json(&self) -> Value {
        json!({
            "agents": self.agents,
            "waiting_at_idle": self.waiting,
            "idle_seconds": self.idle_seconds,
            "idle_cpu_seconds": self.idle_cpu_s,
            "jobs": self.jobs,
            "delivered": self.delivered,
            "latency": self.latency.json(),
            "stock_poll_seconds": STOCK_POLL.as_secs(),
            "errors": self.errors,
        })
    }
}

/// Shared between the agents and the submitter.
#[derive(Default)]
struct Board {
    /// Agents whose request is in flight now.
    waiting: AtomicUsize,
    /// Job id → when its agent got it.
    got: Mutex<HashMap<String, Instant>>,
    /// Transport or status errors.
    errors: AtomicUsize,
    /// Set to end the agents' loops.
    stop: AtomicBool,
}

/// One agent: long-polls its queue until `stop`, noting each job it gets.
async fn agent(target: Target, queue: String, board: Arc<Board>) {
    // Longer than the wait, so a held request is never cut by the client.
    let mut conn = Conn::new(&target, Duration::from_secs(WAIT + 15));
    let path = format!("/v1/job?queue={queue}&wait={WAIT}");
    while !board.stop.load(Ordering::SeqCst) {
        board.waiting.fetch_add(1, Ordering::SeqCst);
        let answer = conn.call(Method::GET, &path, None, None).await;
        let at = Instant::now();
        board.waiting.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok((status, body)) if status.as_u16() == 200 => match job_id_of(status, &body) {
                Ok(id) => {
                    board.got.lock().insert(id, at);
                }
                Err(_) => {
                    board.errors.fetch_add(1, Ordering::SeqCst);
                }
            },
            Ok((status, _)) if status.as_u16() == 204 => {}
            _ => {
                board.errors.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub async fn run(bench: &mut Bench) -> Result<(), Abort> {
    let n = bench.args.longpoll_agents;
    let jobs = bench.args.longpoll_jobs;
    let idle = bench.args.longpoll_idle_seconds;
    if !(1..=10_000).contains(&n) || jobs == 0 || !(1.0..=3600.0).contains(&idle) {
        return Err(Abort::Setup(
            "--longpoll-agents must be 1..=10000, --longpoll-jobs at least 1, \
             --longpoll-idle-seconds 1..=3600"
                .into(),
        ));
    }
    let mut spec = bench.flinger_spec()?;
    spec.label = format!("{} for long-poll dispatch", spec.label);
    let sp = bench.start_server(spec, "longpoll").await?;
    let target = sp.target();
    eprintln!("longpoll: {n} agents waiting; {idle:.0} s idle; {jobs} jobs");
    let board = Arc::new(Board::default());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(agent(
            target.clone(),
            format!("bench-lp-{i}"),
            board.clone(),
        )));
    }
    // Until every agent's request is in (at most 30 s), and a moment for the server to
    // park them all.
    let settle = Instant::now();
    while board.waiting.load(Ordering::SeqCst) < n && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    bench.check()?;
    let waiting = board.waiting.load(Ordering::SeqCst);
    let pid = target.pid;
    let before = pid.and_then(proc_cpu);
    tokio::time::sleep(Duration::from_secs_f64(idle)).await;
    let idle_cpu_s = match (before, pid.and_then(proc_cpu)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // Dispatch latency: one job at a time to a queue whose agent waits.
    let mut submit = Conn::new(&target, bench.timeout);
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(jobs);
    for k in 0..jobs {
        bench.check()?;
        let queue = format!("bench-lp-{}", (k * 7919) % n);
        let start = Instant::now();
        match submit
            .call(
                Method::POST,
                "/v1/job",
                Some(("application/json", submit_body(&queue))),
                None,
            )
            .await
        {
            Ok((status, body)) => match job_id_of(status, &body) {
                Ok(id) => sent.push((id, start)),
                Err(_) => {
                    board.errors.fetch_add(1, Ordering::SeqCst);
                }
            },
            Err(_) => {
                board.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(SUBMIT_EVERY).await;
    }
    // The last jobs' agents answer within the wait at most.
    let drain = Instant::now();
    while board.got.lock().len() < sent.len() && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    board.stop.store(true, Ordering::SeqCst);
    let mut latency = Latency::default();
    let mut delivered = 0;
    {
        let got = board.got.lock();
        for (id, start) in &sent {
            if let Some(at) = got.get(id) {
                latency.record(at.saturating_duration_since(*start));
                delivered += 1;
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    bench.stop_server(sp).await;
    bench.rep.longpoll = Some(LongpollReport {
        agents: n,
        waiting,
        idle_seconds: idle,
        idle_cpu_s,
        jobs,
        delivered,
        latency: Pct::of(&latency),
        errors: board.errors.load(Ordering::SeqCst),
    });
    Ok(())
}
