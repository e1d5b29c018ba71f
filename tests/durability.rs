//! Durability over the real binary: a clean restart and a SIGKILL leave every observable
//! thing as it was; snapshots change nothing observable; and a crash loop under concurrent
//! submitters, poppers and cancellers never loses an acknowledged change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{
    job_id_of, new_id, pop_path, pseudo_random_bytes, Http, TestServer, SMALL_SEGMENTS,
    SNAPSHOT_SOON,
};

/// Small segments and the smallest snapshot threshold: a MiB of traffic rotates segments
/// and triggers a snapshot.
fn small_log() -> Vec<&'static str> {
    [SMALL_SEGMENTS, SNAPSHOT_SOON].concat()
}

/// Builds a state touching every partition and returns the ids it used.
async fn build_rich_state(http: &Http) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, queue) in ["alpha", "beta", "alpha", "gamma", "beta", "alpha"]
        .iter()
        .enumerate()
    {
        let id = http.submit(&json!({"job_queue": queue, "n": i, "job_priority": (i % 2), "nested": {"z": 1, "a": [1, 2]}})).await;
        ids.push(id);
    }
    // One dispatched and reporting, one cancelled while waiting, one finished.
    let running = http.pop_id(&["alpha"]).await.unwrap();
    http.post_result(
        &running,
        &json!({"job_state": "provision", "device_info": {"ip": "10.0.0.1"}}),
    )
    .await;
    http.post_json(&format!("/v1/result/{running}/log/output"), &json!({"fragment_number": 0, "timestamp": "2026-01-01T00:00:00+00:00", "phase": "provision", "log_data": "booting\n"})).await.expect_status(200);
    http.cancel(&ids[4]).await.expect_status(200);
    let done = http.pop_id(&["gamma"]).await.unwrap();
    http.post_result(
        &done,
        &json!({"job_state": "complete", "status": {"test": 0}}),
    )
    .await;
    http.post_raw(
        &format!("/v1/result/{done}/output"),
        None,
        b"first chunk\n".to_vec(),
    )
    .await
    .expect_status(200);
    http.get(&format!("/v1/result/{done}/output"))
        .await
        .expect_status(200);
    http.post_raw(
        &format!("/v1/result/{done}/output"),
        None,
        b"unread chunk\n".to_vec(),
    )
    .await
    .expect_status(200);
    http.post_multipart(
        &format!("/v1/result/{done}/artifact"),
        "file",
        "a.tgz",
        pseudo_random_bytes(300_000, 7),
    )
    .await
    .expect_status(200);
    http.post_json(
        "/v1/agents/queues",
        &json!({"alpha": "first queue", "beta": "second"}),
    )
    .await
    .expect_status(200);
    http.post_json(
        "/v1/agents/images",
        &json!({"alpha": {"jammy": "url: http://x/jammy"}}),
    )
    .await
    .expect_status(200);
    http.post_json(
        "/v1/agents/data/agent-1",
        &json!({"state": "waiting", "queues": ["alpha", "beta"]}),
    )
    .await
    .expect_status(200);
    ids.push(new_id());
    http.post_result(ids.last().unwrap(), &json!({"orphan": true}))
        .await;
    ids
}

/// Everything a client can observe about `ids` and the advertised data, without changing
/// anything (no pops, no destructive reads).
async fn observe(http: &Http, ids: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for id in ids {
        let get = |p: String| async move {
            let r = http.get(&p).await;
            json!({"status": r.status, "body": String::from_utf8_lossy(&r.body)})
        };
        out.insert(
            id.clone(),
            json!({
                "job": get(format!("/v1/job/{id}")).await,
                "result": get(format!("/v1/result/{id}")).await,
                "position": get(format!("/v1/job/{id}/position")).await,
                "log": get(format!("/v1/result/{id}/log/output")).await,
                "artifact": get(format!("/v1/result/{id}/artifact")).await["status"],
                "artifact_len": http.get(&format!("/v1/result/{id}/artifact")).await.body.len(),
            }),
        );
    }
    for path in [
        "/v1/agents/queues",
        "/v1/agents/images/alpha",
        "/v1/queues/alpha/jobs",
        "/v1/queues/beta/agents",
    ] {
        out.insert(
            path.into(),
            json!(String::from_utf8_lossy(&http.get(path).await.body)),
        );
    }
    let mut agent = http.get("/v1/agents/data/agent-1").await.json();
    agent.as_object_mut().unwrap().remove("updated_at");
    out.insert("agent".into(), agent);
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_restart_preserves_everything_observable() {
    let mut srv = TestServer::start();
    let ids = build_rich_state(&srv.http()).await;
    let before = observe(&srv.http(), &ids).await;
    assert!(srv.restart().success());
    let after = observe(&srv.http(), &ids).await;
    assert_eq!(before, after);
    // The queue order survived too: pops come in the same order as before the restart.
    // ids[1] (beta, priority 1) outranks the waiting alpha jobs of priority 0.
    assert_eq!(
        srv.pop_id(&["alpha", "beta"]).await.as_deref(),
        Some(ids[1].as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_preserves_everything_acknowledged() {
    let mut srv = TestServer::start();
    let ids = build_rich_state(&srv.http()).await;
    let before = observe(&srv.http(), &ids).await;
    srv.kill9();
    srv.start_again();
    assert_eq!(before, observe(&srv.http(), &ids).await);
    // The unread output chunk is still unread, exactly once.
    let done = &ids[3];
    let r = srv.get(&format!("/v1/result/{done}/output")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"unread chunk\n");
}

/// Lowering a size limit keeps what was accepted under the old one: a 4 MB result merged
/// under the default 16 MiB limit, and a job submitted after it, are still there once the
/// server restarts with every body limit at 1 MiB. (The log's record bound followed the
/// limits, so replay took the large record for a torn tail and cut the log there,
/// dropping it and everything after it, with no more than a warning.)
#[tokio::test(flavor = "multi_thread")]
async fn lowering_body_limits_keeps_what_was_logged_under_larger_ones() {
    let mut srv = TestServer::start();
    let big = srv.submit_to("limits").await;
    let field = "r".repeat(4_000_000);
    srv.post_result(&big, &json!({"big": field})).await;
    let later = srv.submit_to("limits").await;
    let before = (srv.result(&big).await, srv.result(&later).await);
    srv.kill9();
    let one_mib = (1 << 20).to_string();
    let lowered = srv.successor(&[
        "--max-job-bytes",
        &one_mib,
        "--max-result-bytes",
        &one_mib,
        "--max-output-bytes",
        &one_mib,
    ]);
    let after = (lowered.result(&big).await, lowered.result(&later).await);
    assert!(after.0["big"] == before.0["big"], "the 4 MB field was lost");
    assert_eq!(after.1, before.1);
    assert_eq!(lowered.job_state(&later).await, "waiting");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_and_segment_rotation_change_nothing_observable() {
    let mut srv = TestServer::start_with(&small_log());
    let ids = build_rich_state(&srv.http()).await;
    // Enough traffic to rotate 1.2 MB segments and take several snapshots.
    let filler: Vec<String> = (0..80).map(|_| "x".repeat(30_000)).collect();
    for (i, text) in filler.iter().enumerate() {
        srv.post_result(&ids[0], &json!({ format!("blob{}", i % 3): text }))
            .await;
    }
    let before = observe(&srv.http(), &ids).await;
    // Wait for a snapshot past the first 40 records to be installed: the one the filler
    // started may still be being written (a busy machine), and an earlier one covers less.
    let lsn_of = |line: &str| -> Option<u64> {
        let rest = &line[line.find(" lsn=")? + 5..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !srv
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("snapshot written"))
        .any(|l| lsn_of(l).is_some_and(|lsn| lsn > 40))
    {
        assert!(
            Instant::now() < deadline,
            "no snapshot past LSN 40 was taken: {:?}",
            srv.stderr_lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.kill9();
    srv.start_again();
    assert_eq!(before, observe(&srv.http(), &ids).await);
    // The restart loaded a snapshot that covers most of the log (an idle partition must
    // not pin it at the start of the log).
    let recovered = srv
        .stderr_lines()
        .into_iter()
        .rfind(|l| l.contains("recovered"))
        .unwrap();
    let field = |name: &str| -> u64 {
        let at = recovered
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {recovered}"));
        let rest = &recovered[at + name.len() + 1..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(
        field("snapshot_lsn") > 40,
        "snapshot covers too little: {recovered}"
    );
    assert!(
        field("replayed") < field("snapshot_lsn"),
        "replay did not start from the snapshot: {recovered}"
    );
    match srv.journal() {
        // The PostgreSQL journal deletes the events a snapshot covers (those after it stay:
        // up to a MiB of them, --snapshot-bytes).
        Some(url) => {
            let covered = crate::util::pg::sql(
                url,
                "SELECT count(*) FROM flinger_events e, flinger_snapshots s \
                 WHERE s.installed AND e.lsn <= s.lsn",
            );
            assert_eq!(covered, "0", "covered events were not removed");
        }
        None => {
            let wal = std::fs::read_dir(srv.data_dir().join("wal"))
                .unwrap()
                .count();
            assert!(wal < 10, "covered segments were not removed: {wal} files");
        }
    }
}

/// Queue listings, searches by tag and state, and the positions and results of a sample
/// of `ids` and the first `popped`.
async fn observe_listings(http: &Http, ids: &[String], popped: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/v1/queues/q0/jobs",
        "/v1/queues/q1/jobs",
        "/v1/queues/q2/jobs",
        "/v1/job/search?tags=all-tagged&limit=2000",
        "/v1/job/search?tags=t3&state=waiting",
        "/v1/job/search?state=cancelled&limit=2000",
        "/v1/job/search?state=active",
    ] {
        let r = http.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text_preview());
        out.insert(path.into(), json!(String::from_utf8_lossy(&r.body)));
    }
    for id in ids.iter().step_by(97).chain(&popped[..3]) {
        let position = http.position(id).await;
        let result = http.get(&format!("/v1/result/{id}")).await;
        out.insert(
            id.clone(),
            json!([
                position.status,
                position.text(),
                result.status,
                result.text()
            ]),
        );
    }
    Value::Object(out)
}

/// A snapshot of more jobs than one thread decodes (`Registry::decode` splits a table of
/// 2 × 4,096 jobs or more across the cores, filing the read indexes as each part decodes)
/// restores the same queues, listings, searches and positions after a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_of_thousands_of_jobs_restores_the_same_queues_and_listings() {
    const JOBS: usize = 9_000;
    let mut srv = TestServer::start_with(&["--snapshot-bytes", "2000000"]);
    let http = srv.http();
    let mut submitters = Vec::new();
    for worker in 0..16 {
        let http = http.clone();
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (worker..JOBS).step_by(16) {
                let mut job = json!({"job_queue": format!("q{}", i % 3), "job_priority": i % 4});
                if i % 10 == 0 {
                    job["tags"] = json!([format!("t{}", i % 7), "all-tagged"]);
                }
                ids.push((i, http.submit(&job).await));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for submitter in submitters {
        ids.extend(submitter.await.unwrap());
    }
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let mut popped = Vec::new();
    for _ in 0..60 {
        popped.push(http.pop_id(&["q0"]).await.unwrap());
    }
    for id in ids.iter().skip(1).step_by(45) {
        http.cancel(id).await;
    }
    http.post_result(&popped[0], &json!({"job_state": "provision"}))
        .await;
    // Every job and change is logged by now; results past the threshold start a snapshot
    // that holds them all.
    let logged = JOBS as u64 + 60 + 200 + 1;
    let before = observe_listings(&http, &ids, &popped).await;
    // q0's next job: of its highest priority (job i has priority i % 4, queue i % 3),
    // the one at the front of the queue.
    let mut head = None;
    for id in ids.iter().skip(3).step_by(12) {
        let position = http.position(id).await;
        if position.status == 200 && position.text().trim() == "0" {
            head = Some(id.clone());
        }
    }
    let head = head.expect("q0 has a job at position 0");
    let lsn_of = |line: &str| -> Option<u64> {
        let rest = &line[line.find(" lsn=")? + 5..];
        rest.split_whitespace().next()?.parse().ok()
    };
    // Into a job none of the observations reads.
    let sampled: Vec<&String> = ids.iter().step_by(97).chain(&popped[..3]).collect();
    let filled = popped
        .iter()
        .rev()
        .find(|id| !sampled.contains(id))
        .unwrap();
    let blob = "x".repeat(200_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !srv
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("snapshot written"))
        .any(|l| lsn_of(l).is_some_and(|lsn| lsn >= logged))
    {
        assert!(
            Instant::now() < deadline,
            "no snapshot of every job was taken"
        );
        http.post_result(filled, &json!({ "blob": blob })).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.kill9();
    srv.start_again();
    let recovered = srv
        .stderr_lines_once(|l| l.contains("recovered") && l.contains("snapshot_lsn="))
        .await
        .into_iter()
        .rfind(|l| l.contains("recovered"))
        .unwrap();
    let snapshot_lsn = lsn_of(&recovered.replace("snapshot_lsn=", " lsn="));
    assert!(
        snapshot_lsn.is_some_and(|lsn| lsn >= logged),
        "the restart did not load the snapshot of every job: {recovered}"
    );
    let http = srv.http();
    let after = observe_listings(&http, &ids, &popped).await;
    for (what, seen) in before.as_object().unwrap() {
        assert!(after[what] == *seen, "{what} differs after the restart");
    }
    // The queues still hand out their best job first.
    assert_eq!(http.pop_id(&["q0"]).await, Some(head));
}

/// An agent's page lists the jobs last dispatched to it the same live as after a restart
/// from a snapshot: a job resubmitted and dispatched to another agent leaves the first
/// agent's list at once. (Live it stayed there, while the list rebuilt from a snapshot's
/// jobs, which know only their current agent, dropped it.)
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_recent_jobs_are_the_same_after_a_restart_from_a_snapshot() {
    let mut srv =
        TestServer::start_with(&[SNAPSHOT_SOON, &["--snapshot-growth-percent", "0"]].concat());
    let http = srv.http();
    for agent in ["dut-a", "dut-b"] {
        http.post_json(
            &format!("/v1/agents/data/{agent}"),
            &json!({"queues": ["recent-q"], "state": "waiting"}),
        )
        .await
        .expect_status(200);
    }
    let pop_as = |agent: &'static str| {
        let http = http.clone();
        async move {
            let cookie = format!("agent_name={agent}");
            let r = http
                .get_with_headers(&pop_path(&["recent-q"]), &[("Cookie", &cookie)])
                .await;
            job_id_of(&r.expect_json())
        }
    };
    let id = http.submit_to("recent-q").await;
    assert_eq!(pop_as("dut-a").await, id);
    http.post_result(&id, &json!({"job_state": "complete"}))
        .await;
    http.submit(&json!({"job_queue": "recent-q", "job_id": id}))
        .await;
    assert_eq!(pop_as("dut-b").await, id);
    let listed = |page: String| page.contains(&id);
    let live = (
        listed(http.get("/agents/dut-a").await.text()),
        listed(http.get("/agents/dut-b").await.text()),
    );
    assert!(live.1, "the job is on its current agent's page");

    // A snapshot that holds all of it, then a restart from it.
    let logged = 7;
    let lsn_of = |line: &str| -> Option<u64> {
        let rest = &line[line.find(" lsn=")? + 5..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let filler = json!({"job_queue": "fill", "pad": "x".repeat(60_000)});
    let deadline = Instant::now() + Duration::from_secs(60);
    while !srv
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("snapshot written"))
        .any(|l| lsn_of(l).is_some_and(|lsn| lsn > logged))
    {
        assert!(Instant::now() < deadline, "no snapshot was taken");
        http.submit(&filler).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.kill9();
    srv.start_again();
    let http = srv.http();
    let recovered = (
        listed(http.get("/agents/dut-a").await.text()),
        listed(http.get("/agents/dut-b").await.text()),
    );
    assert_eq!(
        live, recovered,
        "(dut-a lists it, dut-b lists it): live, then recovered"
    );
}

/// What the crash loop's clients saw acknowledged.
#[derive(Default)]
struct Acked {
    /// Job ids whose submit got 200.
    submitted: HashSet<String>,
    /// Job ids a pop returned, with when the pop was sent.
    popped: Vec<(String, Instant)>,
    /// Job ids whose cancel got 200, with when the answer arrived.
    cancelled: HashMap<String, Instant>,
    /// Acknowledged jobs the canceller has not tried yet, newest last.
    to_cancel: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_never_loses_or_duplicates_acknowledged_work() {
    let mut srv = TestServer::start_with(&small_log());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let queues = ["a", "b", "c"];
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cycles = 20;
    for cycle in 0..cycles {
        let http = srv.http();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let pad = "x".repeat(16_000);
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = new_id();
                    // Padded so a cycle or two log --snapshot-bytes: kills land while
                    // snapshots are written too.
                    let job = json!({"job_id": id, "job_queue": queues[(n + w) % 3], "pad": pad});
                    n += 1;
                    if let Ok(r) = http
                        .try_request("POST", "/v1/job", &[], job.to_string().into_bytes())
                        .await
                    {
                        if r.status == 200 {
                            let mut acked = acked.lock().unwrap();
                            // Every third job is also a cancel target (waiting or not).
                            if n % 3 == 0 {
                                acked.to_cancel.push(id.clone());
                            }
                            acked.submitted.insert(id);
                        }
                    }
                }
            }));
        }
        for a in 0..2 {
            let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let cookie = format!("agent_name=agent-{a}-{cycle}");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let headers = [("cookie", cookie.as_str())];
                    match http
                        .try_request("GET", &pop_path(&["c", "a", "b"]), &headers, Vec::new())
                        .await
                    {
                        Ok(r) if r.status == 200 => {
                            let id = job_id_of(&r.json());
                            // Report on it so this agent's next pop gets a new job
                            // (a retried pop gets the job it has not reported on). In
                            // `test`: taking the next job then ends this one (its agent
                            // left it), where one left in `setup` would be requeued and
                            // handed out again, which this test counts as a duplicate.
                            let _ = http
                                .try_request(
                                    "POST",
                                    &format!("/v1/result/{id}"),
                                    &[],
                                    br#"{"job_state":"test"}"#.to_vec(),
                                )
                                .await;
                            acked.lock().unwrap().popped.push((id, sent));
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                        Err(_) => {}
                    }
                }
            }));
        }
        {
            let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let target = acked.lock().unwrap().to_cancel.pop();
                    let Some(id) = target else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let body = br#"{"action":"cancel"}"#.to_vec();
                    if let Ok(r) = http
                        .try_request("POST", &format!("/v1/job/{id}/action"), &[], body)
                        .await
                    {
                        if r.status == 200 {
                            acked.lock().unwrap().cancelled.insert(id, Instant::now());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        // Kill at a random moment once this incarnation acknowledges work: right after a
        // restart on PostgreSQL it first waits out the dead process's lease, and on a
        // loaded machine the first commits can take longer than the random window.
        let before = acked.lock().unwrap().submitted.len();
        let going = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().submitted.len() < before + 4 && Instant::now() < going {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50 + rand() % 350)).await;
        srv.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        srv.start_again();
        check_acknowledged(&srv.http(), &acked).await;
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.submitted.len() > 100 && acked.popped.len() > 20 && acked.cancelled.len() > 20,
        "the load was too small to mean anything: {} submitted, {} popped, {} cancelled",
        acked.submitted.len(),
        acked.popped.len(),
        acked.cancelled.len()
    );
    eprintln!("crash loop: {cycles} kills; {} acked submits, {} acked pops, {} acked cancels; 0 lost, 0 duplicated",
        acked.submitted.len(), acked.popped.len(), acked.cancelled.len());
}

async fn check_acknowledged(http: &Http, acked: &Mutex<Acked>) {
    let (submitted, popped, cancelled) = {
        let a = acked.lock().unwrap();
        (a.submitted.clone(), a.popped.clone(), a.cancelled.clone())
    };
    let mut seen = HashSet::new();
    for (id, sent) in &popped {
        assert!(seen.insert(id.clone()), "job {id} was handed out twice");
        if let Some(at) = cancelled.get(id) {
            assert!(
                at > sent,
                "job {id} was handed out after its cancel was acknowledged"
            );
        }
    }
    for id in &submitted {
        let r = http.get(&format!("/v1/job/{id}")).await;
        assert_eq!(
            r.status, 200,
            "acknowledged job {id} is missing after a crash"
        );
    }
    for id in cancelled.keys() {
        assert_eq!(
            http.job_state(id).await,
            "cancelled",
            "acknowledged cancel of {id} was undone"
        );
    }
    for (id, _) in &popped {
        let state = http.job_state(id).await;
        assert!(
            state != "waiting",
            "acknowledged pop of {id} was undone (state {state})"
        );
    }
}
