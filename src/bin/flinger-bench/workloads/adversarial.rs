//! The adversarial workload: a normal submit + pop load measured quiet, then
//! measured again beside attackers (`attack`): slow bodies, never-ending
//! multipart uploads, unread large answers and search floods. The report
//! gives both phases' latency and rate, the ratio of their p99s (the target
//! is at most 2×) and the server's peak RSS in each phase.
//!
//! Before the quiet phase, so both phases see the same state, the server is
//! given what the attackers need: agents with large records (so that
//! `GET /v1/agents/data` is big) and tagged jobs for the searches to scan.
//! Every attacker is bounded in count (flags, modest defaults) and in time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use super::attack::{Attack, AttackPlan};
use super::Bench;
use crate::client::{expect_ok, Conn, Target, JSON_CT};
use crate::report::{fmt_kinds, fmt_us, AdversarialReport};
use crate::server::{nofile_soft, RssSampler, ServerProc};
use crate::stats::{count_kind, merge_kinds};
use crate::{Abort, Cli, MAX_CONCURRENCY};

/// The normal load's queue.
const NORMAL_QUEUE: &str = "bench-adv";
/// The searched jobs' queue (nobody pops it).
const SEARCH_QUEUE: &str = "bench-adv-search";
/// Distinct tags over the searched jobs; each job has [`TAGS_PER_JOB`] of them.
const TAG_POOL: usize = 50;
const TAGS_PER_JOB: usize = 5;
/// Descriptors kept free for everything else (listeners, set-up, files).
const FD_MARGIN: u64 = 64;

pub fn check_args(args: &Cli) -> Result<(), String> {
    let bad = |what: &str| Err(format!("--{what}"));
    if args.adversarial_concurrency == 0 || args.adversarial_concurrency > MAX_CONCURRENCY {
        return bad("adversarial-concurrency must be 1..=1024");
    }
    if args.adversarial_seconds == 0 || args.adversarial_seconds > 3600 {
        return bad("adversarial-seconds must be 1..=3600");
    }
    if !(0.0..=60.0).contains(&args.attack_ramp) {
        return bad("attack-ramp must be in [0, 60]");
    }
    if args.slow_bodies > 20_000 {
        return bad("slow-bodies must be at most 20000");
    }
    if !(1..=60_000).contains(&args.slow_body_interval_ms) {
        return bad("slow-body-interval-ms must be 1..=60000");
    }
    if args.multipart_uploads > 64 || !(1..=4096).contains(&args.multipart_mib) {
        return bad("multipart-uploads must be at most 64 and --multipart-mib 1..=4096");
    }
    if args.unread_readers > 1000
        || args.unread_agents > 10_000
        || !(1..=1000).contains(&args.unread_agent_kib)
    {
        return bad(
            "unread-readers must be at most 1000, --unread-agents at most 10000, \
             --unread-agent-kib 1..=1000",
        );
    }
    // The query must stay under the 64 KiB a URI may have.
    if args.search_floods > 64 || !(1..=5000).contains(&args.search_tags) {
        return bad("search-floods must be at most 64 and --search-tags 1..=5000");
    }
    if args.search_interval_ms > 60_000 {
        return bad("search-interval-ms must be at most 60000");
    }
    if args.search_jobs > 1_000_000 {
        return bad("search-jobs must be at most 1000000");
    }
    let conns = (args.slow_bodies
        + args.multipart_uploads
        + args.unread_readers
        + args.search_floods
        + args.adversarial_concurrency) as u64;
    let limit = nofile_soft();
    if conns + FD_MARGIN > limit {
        return Err(format!(
            "the adversarial workload needs {conns} connections + {FD_MARGIN} spare descriptors, \
             over this process's limit of {limit} (ulimit -n): lower --slow-bodies"
        ));
    }
    Ok(())
}

/// The search query: one tag the jobs have, then tags nobody has, so each
/// search scans every job against every tag but returns few.
fn search_path(tags: usize) -> String {
    let mut p = String::from("/v1/job/search?tags=t0");
    for i in 1..tags {
        p.push_str(&format!("&tags=u{i}"));
    }
    p
}

/// The searched jobs' bodies: each with [`TAGS_PER_JOB`] consecutive tags of the pool.
fn tagged_bodies() -> Vec<Bytes> {
    (0..TAG_POOL)
        .map(|i| {
            let tags: Vec<String> = (0..TAGS_PER_JOB)
                .map(|k| format!("\"t{}\"", (i + k) % TAG_POOL))
                .collect();
            Bytes::from(format!(
                r#"{{"job_queue":"{SEARCH_QUEUE}","tags":[{}],"test_data":{{"test_cmds":"echo hi"}}}}"#,
                tags.join(",")
            ))
        })
        .collect()
}

/// Registers `n` agents with `kib` KiB of comment each, over 8 connections.
async fn register_agents(
    target: &Target,
    timeout: Duration,
    n: usize,
    kib: usize,
) -> (usize, BTreeMap<String, u64>) {
    let body = Bytes::from(format!(
        r#"{{"state":"waiting","comment":"{}"}}"#,
        "x".repeat(kib * 1024)
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8.min(n))
        .map(|_| {
            let (next, body) = (next.clone(), body.clone());
            let mut conn = Conn::new(target, timeout);
            tokio::spawn(async move {
                let (mut ok, mut kinds) = (0, BTreeMap::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let path = format!("/v1/agents/data/bench-adv-agent-{i}");
                    let r = conn
                        .call(Method::POST, &path, Some((JSON_CT, body.clone())), None)
                        .await
                        .and_then(|(s, b)| expect_ok(s, &b));
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => count_kind(&mut kinds, e),
                    }
                }
                (ok, kinds)
            })
        })
        .collect();
    let (mut ok, mut kinds) = (0, BTreeMap::new());
    for t in tasks {
        if let Ok((n, k)) = t.await {
            ok += n;
            merge_kinds(&mut kinds, k);
        }
    }
    (ok, kinds)
}

pub async fn run(bench: &mut Bench, url: Option<Target>) -> Result<(), Abort> {
    let c = bench.args.adversarial_concurrency;
    let secs = bench.args.adversarial_seconds as f64;
    let ramp = bench.args.attack_ramp;
    let (server, target) = match url {
        Some(t) => (None, t),
        None => {
            let mut spec = bench.flinger_spec()?;
            spec.label = format!("{} for the adversarial workload", spec.label);
            let sp = bench.start_server(spec, "adversarial").await?;
            let t = sp.target();
            (Some(sp), t)
        }
    };
    let mut rep = AdversarialReport {
        ramp_s: ramp,
        ..AdversarialReport::default()
    };
    let outcome = phases(bench, &target, c, secs, ramp, &mut rep, server).await;
    bench.rep.adversarial = Some(rep);
    outcome
}

/// Set-up, quiet phase, attacked phase; `rep` holds whatever was measured
/// when an interruption or the deadline cuts it short.
async fn phases(
    bench: &mut Bench,
    target: &Target,
    c: usize,
    secs: f64,
    ramp: f64,
    rep: &mut AdversarialReport,
    mut server: Option<ServerProc>,
) -> Result<(), Abort> {
    let a = &bench.args;
    eprintln!(
        "adversarial: set-up ({} agents of {} KiB, {} tagged jobs)",
        a.unread_agents, a.unread_agent_kib, a.search_jobs
    );
    if a.unread_agents > 0 {
        let (ok, kinds) =
            register_agents(target, bench.timeout, a.unread_agents, a.unread_agent_kib).await;
        rep.notes.push(format!(
            "set-up: {ok} of {} agents registered with {} KiB each{}",
            a.unread_agents,
            a.unread_agent_kib,
            if kinds.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", fmt_kinds(&kinds))
            }
        ));
    }
    if a.search_jobs > 0 {
        let p = bench
            .prefill_bodies(target, tagged_bodies(), a.search_jobs, 16, None)
            .await;
        rep.notes.push(format!(
            "set-up: {} of {} jobs with {TAGS_PER_JOB} of {TAG_POOL} tags submitted to {SEARCH_QUEUE}{}",
            p.ok,
            a.search_jobs,
            if p.kinds.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", fmt_kinds(&p.kinds))
            }
        ));
    }
    bench.check()?;

    eprintln!("adversarial: quiet phase, submit + pop at c={c} for {secs:.0} s");
    let quiet = bench
        .mix_phase("quiet", target, NORMAL_QUEUE, c, secs, None)
        .await;
    log_phase(&quiet);
    rep.quiet = Some(quiet);
    bench.check()?;

    let a = &bench.args;
    let plan = AttackPlan {
        target: target.clone(),
        slow_bodies: a.slow_bodies,
        slow_interval: Duration::from_millis(a.slow_body_interval_ms),
        multipart: a.multipart_uploads,
        multipart_bytes: a.multipart_mib << 20,
        unread: a.unread_readers,
        searches: a.search_floods,
        search_path: Arc::new(search_path(a.search_tags)),
        search_interval: Duration::from_millis(a.search_interval_ms),
        search_timeout: Duration::from_secs_f64(ramp + bench.warmup + secs + 5.0),
        hard_end: Instant::now() + Duration::from_secs_f64(ramp + bench.warmup + secs + 30.0),
    };
    rep.notes.push(format!(
        "search: `GET /v1/job/search` with {} tags ({} bytes of query), one matching",
        a.search_tags,
        plan.search_path.len()
    ));
    // The attacked phase's peak RSS includes the ramp.
    let rss = target.pid.map(RssSampler::start);
    eprintln!(
        "adversarial: attackers: {} slow bodies, {} multipart, {} unread, {} search floods; \
         {ramp} s ramp",
        plan.slow_bodies, plan.multipart, plan.unread, plan.searches
    );
    let attack = Attack::start(plan).map_err(Abort::Setup)?;
    let ramp_end = Instant::now() + Duration::from_secs_f64(ramp);
    while Instant::now() < ramp_end && bench.check().is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("adversarial: attacked phase, submit + pop at c={c} for {secs:.0} s");
    let attacked = bench
        .mix_phase("attacked", target, NORMAL_QUEUE, c, secs, rss)
        .await;
    log_phase(&attacked);
    rep.attacked = Some(attacked);
    rep.attackers = attack.finish().await;
    if let Some(r) = rep.p99_ratio() {
        eprintln!("adversarial: p99 attacked ÷ quiet = {r:.2}× (target ≤ 2×)");
    }
    if let Some(mut sp) = server.take() {
        if !sp.alive() {
            rep.notes.push(format!(
                "the server EXITED during the attack; its log ends: {}",
                sp.log_tail(10).replace('\n', " / ")
            ));
        }
        bench.stop_server(sp).await;
    }
    bench.check()
}

fn log_phase(p: &crate::report::Phase) {
    eprintln!(
        "{:<28} c={:<4} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  p999 {:>9}  errors {}",
        format!("adversarial {}", p.label),
        p.c,
        p.rps,
        fmt_us(p.all.p50),
        fmt_us(p.all.p99),
        fmt_us(p.all.p999),
        p.errors
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_queries_fit_a_uri() {
        let p = search_path(5000);
        assert!(p.len() < 65_534, "{}", p.len());
        assert_eq!(p.matches("tags=").count(), 5000);
        assert!(p.parse::<hyper::Uri>().is_ok());
    }

    #[test]
    fn tagged_jobs_are_json_with_their_tags() {
        let bodies = tagged_bodies();
        assert_eq!(bodies.len(), TAG_POOL);
        let v: serde_json::Value = serde_json::from_slice(&bodies[TAG_POOL - 1]).unwrap();
        assert_eq!(v["tags"].as_array().unwrap().len(), TAGS_PER_JOB);
        assert_eq!(v["tags"][1], "t0");
    }
}
