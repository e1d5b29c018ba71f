//! What the workers of one measured cell do: the request each iteration
//! sends ([`Op`]), the context they share ([`CellCtx`]: the clock, the
//! request cap, the stop flag), and the raw figures each keeps ([`WStats`]),
//! merged into a report row once the cell ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};

use crate::client::{expect_job_id, expect_ok, expect_popped, job_id_of, pop_path, submit_body};
use crate::client::{Conn, Target, JSON_CT};
use crate::stats::{count_kind, Latency};

pub const SUBMIT_QUEUE: &str = "bench-a";
pub const POP_QUEUES: [&str; 3] = ["bench-a", "bench-b", "bench-c"];
pub const LIFE_QUEUE: &str = "bench-life";
pub const POLL_QUEUE: &str = "bench-poll";
const STATES: [&str; 3] = ["setup", "provision", "test"];
pub const FINAL_RESULT: &[u8] = br#"{"status":{"test":0},"job_state":"complete"}"#;
const LOG_FRAGMENTS: u64 = 5;
/// submit + pop + 3 states + 5 fragments + final + poll.
pub const LIFECYCLE_REQUESTS: u64 = 12;
/// Of which POSTs: submit, 3 states, 5 fragments, final. The 2 others are GETs.
pub const LIFECYCLE_POSTS: f64 = 10.0;
pub const LIFECYCLE_GETS: f64 = 2.0;

/// What each worker of a cell does per iteration.
pub enum Op {
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
    /// The request it sends, for the progress line.
    pub fn what(&self) -> &'static str {
        match self {
            Op::Submit { .. } => "POST /v1/job",
            Op::Pop { .. } => "GET /v1/job",
            Op::Get { .. } => "GET",
            Op::Lifecycle { .. } => "lifecycle",
        }
    }

    pub fn lifecycle() -> Op {
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
pub struct CellCtx {
    pub op: Op,
    pub target: Target,
    pub timeout: Duration,
    pub concurrency: usize,
    pub warm_end: Instant,
    pub end: Instant,
    pub cap: u64,
    pub tickets: AtomicU64,
    pub stop: Arc<AtomicBool>,
    /// Set once the log-fragment endpoint answered 404: lifecycle then posts
    /// raw text to `/v1/result/<id>/output` instead (server not there yet).
    pub log_fallback: Arc<AtomicBool>,
    /// Requests done, warm-up included: the progress line reads it.
    pub done: Arc<AtomicU64>,
}

/// One worker's raw figures; merged after the cell.
#[derive(Default)]
pub struct WStats {
    /// Latency of every measured request.
    pub lat: Latency,
    /// Lifecycle: latency of every measured, completed job.
    pub job_lat: Latency,
    pub errors: u64,
    pub warm_errors: u64,
    /// Successful requests in any phase (warm-up included): for submit and pop
    /// this is the number of jobs created or taken, which the pop pre-fill
    /// bookkeeping needs.
    pub ok_all: u64,
    pub last_end: Option<Instant>,
    pub kinds: BTreeMap<String, u64>,
    /// First successful body (shown for the scale position check).
    pub sample: Option<Bytes>,
}

impl WStats {
    /// Records one request that started at `start` and ends now.
    fn record(&mut self, ctx: &CellCtx, start: Instant, outcome: Result<(), String>) -> bool {
        let end = Instant::now();
        ctx.done.fetch_add(1, Ordering::Relaxed);
        let measured = start >= ctx.warm_end;
        let ok = outcome.is_ok();
        if ok {
            self.ok_all += 1;
        }
        if measured {
            self.lat.record(end - start);
            self.last_end = Some(self.last_end.map_or(end, |e| e.max(end)));
        }
        if let Err(kind) = outcome {
            if measured {
                self.errors += 1;
            } else {
                self.warm_errors += 1;
            }
            count_kind(&mut self.kinds, kind);
        }
        ok
    }
}

pub async fn worker(ctx: Arc<CellCtx>, wid: usize) -> WStats {
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
                st.record(&ctx, start, r.and_then(|(s, b)| expect_popped(s, &b)));
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
        st.job_lat.record(it_start.elapsed());
    }
}
