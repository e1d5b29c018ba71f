//! A measured submit + pop phase: `c` workers, each submitting a job to one
//! queue and then popping one from it, in turn, for a warm-up and a measured
//! time. Latencies go into per-second [`Windows`], so the report can show
//! each second of the run as well as the whole.
//!
//! Submitting before popping keeps the queue from running dry (a worker pops
//! only after its own submit was acknowledged, so acknowledged submits never
//! trail pops) and keeps its depth near zero, while every job popped stays
//! `running` in the server: the state grows as a busy lab's would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;

use super::Bench;
use crate::client::{expect_job_id, expect_popped, pop_path, submit_body, Conn, Target, JSON_CT};
use crate::progress::Progress;
use crate::report::{Phase, WindowRow};
use crate::server::{proc_cpu, self_cpu, RssSampler};
use crate::stats::{count_kind, merge_kinds, Latency, MixOp, Pct, Window, Windows};

/// One worker's bookkeeping besides the shared windows.
#[derive(Default)]
struct MixStats {
    warm_errors: u64,
    last_end: Option<Instant>,
    kinds: BTreeMap<String, u64>,
}

impl Bench {
    /// Runs one submit + pop phase against `target` on `queue` and returns
    /// its figures (server RSS and CPU when the target is a spawned server).
    /// The peak RSS is `rss`'s, when the caller started sampling earlier.
    pub(super) async fn mix_phase(
        &self,
        label: &str,
        target: &Target,
        queue: &str,
        c: usize,
        seconds: f64,
        rss: Option<RssSampler>,
    ) -> Phase {
        let cpu0 = target.pid.and_then(proc_cpu);
        let ccpu0 = self_cpu();
        let rss = rss.or_else(|| target.pid.map(RssSampler::start));
        let start = Instant::now();
        let warm_end = start + Duration::from_secs_f64(self.warmup);
        let planned_end = warm_end + Duration::from_secs_f64(seconds);
        let end = planned_end.min(self.deadline);
        let windows = Arc::new(Windows::new(warm_end, seconds.ceil().max(1.0) as usize));
        let done = Arc::new(AtomicU64::new(0));
        let progress = Progress::start(
            format!("{label} c={c}"),
            Some(planned_end - start),
            done.clone(),
            "requests",
        );
        let submit = submit_body(queue);
        let pop = Arc::new(pop_path(&[queue.to_string()]));
        let handles: Vec<_> = (0..c)
            .map(|_| {
                let (windows, done, stop, pop, submit) = (
                    windows.clone(),
                    done.clone(),
                    self.stop.clone(),
                    pop.clone(),
                    submit.clone(),
                );
                let mut conn = Conn::new(target, self.timeout);
                tokio::spawn(async move {
                    let mut st = MixStats::default();
                    let record = |st: &mut MixStats, op, t0: Instant, r: Result<(), String>| {
                        let t1 = Instant::now();
                        done.fetch_add(1, Ordering::Relaxed);
                        let ok = r.is_ok();
                        if t0 >= warm_end {
                            windows.record(t1, op, t1 - t0, ok);
                            st.last_end = Some(st.last_end.map_or(t1, |e| e.max(t1)));
                        } else if !ok {
                            st.warm_errors += 1;
                        }
                        if let Err(kind) = r {
                            count_kind(&mut st.kinds, kind);
                        }
                        ok
                    };
                    let running = || Instant::now() < end && !stop.load(Ordering::Relaxed);
                    while running() {
                        let t0 = Instant::now();
                        let r = conn
                            .call(
                                Method::POST,
                                "/v1/job",
                                Some((JSON_CT, submit.clone())),
                                None,
                            )
                            .await
                            .and_then(|(s, b)| expect_job_id(s, &b));
                        if !record(&mut st, MixOp::Submit, t0, r) || !running() {
                            continue;
                        }
                        let t0 = Instant::now();
                        let r = conn
                            .call(Method::GET, &pop, None, None)
                            .await
                            .and_then(|(s, b)| expect_popped(s, &b));
                        record(&mut st, MixOp::Pop, t0, r);
                    }
                    st
                })
            })
            .collect();
        let mut kinds = BTreeMap::new();
        let (mut warm_errors, mut last_end) = (0, None::<Instant>);
        for h in handles {
            if let Ok(st) = h.await {
                warm_errors += st.warm_errors;
                if let Some(e) = st.last_end {
                    last_end = Some(last_end.map_or(e, |l| l.max(e)));
                }
                merge_kinds(&mut kinds, st.kinds);
            }
        }
        progress.finish();
        let (peak_rss_kb, rss_how) = match rss {
            Some(s) => s.finish(),
            None => (None, "the server was not spawned by the bench"),
        };
        let secs = last_end.map_or(0.0, |e| e.saturating_duration_since(warm_end).as_secs_f64());
        let windows = Arc::try_unwrap(windows)
            .map(Windows::into_inner)
            .unwrap_or_default();
        let (rows, all, submit, pop) = summarise(windows, secs);
        let requests = all.len();
        let errors = rows.iter().map(|w| w.errors).sum();
        Phase {
            label: label.to_string(),
            c,
            secs,
            requests,
            errors,
            warm_errors,
            rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            all: Pct::of(&all),
            submit: Pct::of(&submit),
            pop: Pct::of(&pop),
            windows: rows,
            kinds,
            peak_rss_kb,
            rss_how,
            server_cpu_s: match (cpu0, target.pid.and_then(proc_cpu)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            client_cpu_s: self_cpu() - ccpu0,
            cut: end < planned_end || self.stop.load(Ordering::SeqCst),
        }
    }
}

/// Per-second rows and the whole phase's histograms (all, submit, pop) from
/// the windows of a phase whose measurement lasted `secs`.
fn summarise(windows: Vec<Window>, secs: f64) -> (Vec<WindowRow>, Latency, Latency, Latency) {
    let (mut all, mut submit, mut pop) =
        (Latency::default(), Latency::default(), Latency::default());
    let mut rows = Vec::with_capacity(windows.len());
    for (i, w) in windows.into_iter().enumerate() {
        let mut both = Latency::default();
        both.add(&w.submit);
        both.add(&w.pop);
        // The last window may be cut short by the phase's end.
        let len = (secs - i as f64).clamp(0.0, 1.0);
        let requests = both.len();
        rows.push(WindowRow {
            second: i as u64,
            secs: len,
            requests,
            errors: w.errors,
            rps: if len > 0.0 {
                requests as f64 / len
            } else {
                0.0
            },
            all: Pct::of(&both),
            submit: Pct::of(&w.submit),
            pop: Pct::of(&w.pop),
            events: Vec::new(),
        });
        all.add(&both);
        submit.add(&w.submit);
        pop.add(&w.pop);
    }
    (rows, all, submit, pop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sum_to_the_whole_and_the_last_one_may_be_short() {
        let t0 = Instant::now();
        let w = Windows::new(t0, 3);
        let (ms, us) = (Duration::from_millis, Duration::from_micros);
        w.record(t0 + ms(100), MixOp::Submit, us(1), true);
        w.record(t0 + ms(200), MixOp::Pop, us(3), true);
        w.record(t0 + ms(2200), MixOp::Pop, us(5), false);
        let (rows, all, submit, pop) = summarise(w.into_inner(), 2.5);
        assert_eq!(rows.len(), 3);
        assert_eq!((all.len(), submit.len(), pop.len()), (3, 1, 2));
        assert_eq!((rows[0].requests, rows[0].rps), (2, 2.0));
        assert_eq!((rows[1].requests, rows[1].rps), (0, 0.0));
        assert_eq!((rows[2].requests, rows[2].errors, rows[2].rps), (1, 1, 2.0));
        assert_eq!(rows[0].all.max, 3);
    }
}
