//! Everything kept has a bound or an expiry: data posted for ids no job has (orphans)
//! counts against `--orphan-quota-bytes` (507 beyond it) and expires `--retention-secs`
//! after its last write; `DELETE /v1/job/<id>` removes a job and all it owns, durably;
//! a queue's actor stops after `--queue-idle-secs` without waiting jobs; retention removes
//! finished jobs for good.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{new_id, pseudo_random_bytes, TestServer};

/// Polls `check` every 100 ms until it holds, for at most 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn files_of(srv: &TestServer, id: &str) -> Vec<String> {
    srv.stored_files()
        .into_iter()
        .filter(|n| n.contains(id))
        .collect()
}

fn log_fragment(text: &str, number: u64) -> serde_json::Value {
    json!({"fragment_number": number, "timestamp": "2025-01-01T00:00:00+00:00", "phase": "test", "log_data": text})
}

#[tokio::test]
async fn orphan_posts_are_507_when_the_orphan_quota_is_full() {
    let srv = TestServer::start_with(&["--orphan-quota-bytes", "10000"]);
    let (a, b, c) = (new_id(), new_id(), new_id());
    let big = "x".repeat(6000);
    srv.post_result(&a, &json!({"data": big})).await;
    // A second orphan does not fit: refused, and nothing of it kept.
    let r = srv
        .post_json(&format!("/v1/result/{b}"), &json!({"data": big}))
        .await;
    let message = r.expect_error(507);
    assert!(message.contains("--orphan-quota-bytes"), "{message}");
    // What is left is named: the quota is not used up, this post is larger than the rest.
    assert!(
        message.contains("it is larger than the") && message.contains("bytes left"),
        "{message}"
    );
    srv.get(&format!("/v1/result/{b}"))
        .await
        .expect_no_content();
    let r = srv
        .post_json(
            &format!("/v1/result/{b}/log/output"),
            &log_fragment(&big, 0),
        )
        .await;
    r.expect_error(507);
    // An artifact for an orphan is refused too, and leaves no file behind.
    let r = srv
        .post_multipart(
            &format!("/v1/result/{c}/artifact"),
            "file",
            "a.tar.gz",
            vec![7u8; 5000],
        )
        .await;
    let message = r.expect_error(507);
    assert!(message.contains("bytes left"), "{message}");
    srv.get(&format!("/v1/result/{c}/artifact"))
        .await
        .expect_no_content();
    assert!(files_of(&srv, &c).is_empty());
    // Data of real jobs does not count.
    let job = srv.submit_to("q").await;
    srv.post_result(&job, &json!({"data": "y".repeat(20000)}))
        .await;
    // The operator frees the room by deleting the orphan; then the refused post fits.
    srv.request("DELETE", &format!("/v1/job/{a}"), &[], Vec::new())
        .await
        .expect_status(200);
    srv.post_result(&b, &json!({"data": big})).await;
    assert_eq!(srv.result(&b).await, json!({"data": big}));
}

#[tokio::test]
async fn orphan_data_expires_after_retention_since_its_last_write() {
    let mut srv = TestServer::start_with(&["--retention-secs", "3"]);
    let orphan = "00000000-0000-0000-0000-000000000000";
    let waiting = srv.submit_to("stays").await;
    srv.post_multipart(
        &format!("/v1/result/{orphan}/artifact"),
        "file",
        "a.tar.gz",
        b"artifact bytes",
    )
    .await
    .expect_status(200);
    // Written every half second for longer than the retention: kept all along.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        srv.post_result(orphan, &json!({"n": n})).await;
        srv.post_json(
            &format!("/v1/result/{orphan}/log/output"),
            &log_fragment("line\n", n),
        )
        .await
        .expect_status(200);
        assert_eq!(srv.result(orphan).await["n"], json!(n));
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Left alone, it goes: results, logs and the artifact file.
    eventually("the orphan's result expires", || async {
        srv.get(&format!("/v1/result/{orphan}")).await.status == 204
    })
    .await;
    eventually("the orphan's artifact expires", || async {
        srv.get(&format!("/v1/result/{orphan}/artifact"))
            .await
            .status
            == 204
    })
    .await;
    eventually("the artifact file is deleted", || async {
        files_of(&srv, orphan).is_empty()
    })
    .await;
    let log = srv
        .get(&format!("/v1/result/{orphan}/log/output"))
        .await
        .expect_json();
    assert_eq!(log["output"]["test"]["last_fragment_number"], json!(-1));
    // A waiting job never expires; the removal survives a restart.
    srv.restart();
    srv.get(&format!("/v1/job/{waiting}"))
        .await
        .expect_status(200);
    srv.get(&format!("/v1/result/{orphan}"))
        .await
        .expect_no_content();
}

#[tokio::test]
async fn deleting_a_job_removes_everything_it_owns_and_survives_restart() {
    let mut srv = TestServer::start();
    let keep = srv
        .submit(&json!({"job_queue": "del", "tags": ["t"]}))
        .await;
    let running = srv
        .submit(&json!({"job_queue": "del", "tags": ["t"]}))
        .await;
    assert_eq!(srv.pop_id(&["del"]).await.as_deref(), Some(keep.as_str()));
    let gone = srv
        .submit(&json!({"job_queue": "del", "tags": ["t"]}))
        .await;
    for id in [&gone, &running] {
        srv.post_result(id, &json!({"k": "v"})).await;
        srv.post_json(
            &format!("/v1/result/{id}/log/serial"),
            &log_fragment("s", 0),
        )
        .await
        .expect_status(200);
        srv.post_multipart(
            &format!("/v1/result/{id}/artifact"),
            "file",
            "a.tar.gz",
            b"bytes",
        )
        .await
        .expect_status(200);
        assert_eq!(files_of(&srv, id).len(), 1);
    }
    let _ = running;
    for id in [&gone, &keep] {
        srv.request("DELETE", &format!("/v1/job/{id}"), &[], Vec::new())
            .await
            .expect_status(200);
    }
    let check = |srv: &TestServer| {
        let http = srv.http();
        let (gone, keep, running) = (gone.clone(), keep.clone(), running.clone());
        async move {
            for id in [&gone, &keep] {
                http.get(&format!("/v1/job/{id}")).await.expect_no_content();
                http.get(&format!("/v1/result/{id}"))
                    .await
                    .expect_no_content();
                http.get(&format!("/v1/result/{id}/artifact"))
                    .await
                    .expect_no_content();
            }
            // The waiting job left its queue too: only the other one is listed or popped.
            let listed = http.get("/v1/queues/del/jobs").await.expect_json();
            assert_eq!(listed.as_array().unwrap().len(), 1);
            assert_eq!(listed[0]["job_id"], json!(running));
            let found = http.get("/v1/job/search?tags=t").await.expect_json();
            assert_eq!(found.as_array().unwrap().len(), 1);
        }
    };
    check(&srv).await;
    // The file goes once the deletion is durable, off the request's path.
    eventually("the artifact file is deleted", || async {
        files_of(&srv, &gone).is_empty()
    })
    .await;
    srv.restart();
    check(&srv).await;
    assert!(files_of(&srv, &gone).is_empty());
    assert_eq!(files_of(&srv, &running).len(), 1, "other jobs' files stay");
    assert_eq!(
        srv.pop_id(&["del"]).await.as_deref(),
        Some(running.as_str())
    );
    // Nothing left by that id.
    srv.request("DELETE", &format!("/v1/job/{gone}"), &[], Vec::new())
        .await
        .expect_error(404);
}

#[tokio::test]
async fn idle_queue_actors_stop_and_the_next_job_starts_a_new_one() {
    // The stop is logged at debug level: a lab's queues go idle all day.
    let srv = TestServer::start_with_env(
        &["--queue-idle-secs", "1"],
        &[("RUST_LOG", "info,flinger::actors::registry=debug")],
    );
    let busy = srv.submit_to("busy").await;
    srv.submit_to("once").await;
    assert!(srv.pop_id(&["once"]).await.is_some());
    eventually("the idle queue's actor stops", || async {
        srv.stderr_lines()
            .iter()
            .any(|l| l.contains("stopped the actors of idle queues") && l.contains("once"))
    })
    .await;
    // A queue with a waiting job keeps its actor.
    assert!(!srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("idle queue") && l.contains("busy")));
    assert_eq!(srv.position(&busy).await.text(), "0");
    // The queue works again as soon as it has a job.
    let again = srv.submit_to("once").await;
    assert_eq!(srv.position(&again).await.text(), "0");
    assert_eq!(srv.pop_id(&["once"]).await.as_deref(), Some(again.as_str()));
}

#[tokio::test]
async fn many_idle_queues_stopping_at_once_log_one_line_per_pass_not_one_per_queue() {
    // The stops are logged at debug level.
    let srv = TestServer::start_with_env(
        &["--queue-idle-secs", "1"],
        &[("RUST_LOG", "info,flinger::actors::registry=debug")],
    );
    // A client makes a queue (and its actor) with every job to a new name.
    for n in 0..60 {
        let id = srv.submit_to(&format!("burst-{n}")).await;
        srv.cancel(&id).await.expect_status(200);
    }
    eventually("the idle queues' actors stop", || async {
        srv.stderr_lines()
            .iter()
            .any(|l| l.contains("idle queue") && l.contains("burst-"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines: Vec<String> = srv
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("idle queue"))
        .collect();
    assert!(
        lines.len() <= 5,
        "{} log lines for 60 idle queues: {lines:#?}",
        lines.len()
    );
}

#[tokio::test]
async fn agent_records_expire_when_the_agent_stays_silent() {
    let mut srv = TestServer::start_with(&["--agent-expiry-secs", "3"]);
    srv.post_json("/v1/agents/data/silent", &json!({"state": "waiting"}))
        .await
        .expect_status(200);
    // An agent that keeps posting keeps its record.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        srv.post_json("/v1/agents/data/chatty", &json!({"state": "waiting"}))
            .await
            .expect_status(200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("the silent agent's record expires", || async {
        srv.get("/v1/agents/data/silent").await.status == 404
    })
    .await;
    srv.get("/v1/agents/data/chatty").await.expect_status(200);
    srv.restart();
    srv.get("/v1/agents/data/silent").await.expect_error(404);
}

/// The server's resident memory (VmRSS), KiB.
fn rss_kib(srv: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The text posted for orphan `i`'s `part` (distinct per id and part, 256 KiB).
fn orphan_text(i: usize, part: &str) -> String {
    format!("{part}{i:04}-").repeat((256 << 10) / (part.len() + 5))
}

#[tokio::test]
async fn orphan_results_and_logs_stay_on_disk_live_and_after_restarts() {
    // Snapshots every 1 MiB of log: a restart then loads a snapshot taken after the
    // orphans were written, besides replaying the log. Small segments (recovery reads a
    // segment whole), which smaller body limits allow.
    let mut srv = TestServer::start_with(&[
        "--snapshot-bytes",
        "1048576",
        "--segment-bytes",
        "10485760",
        "--max-result-bytes",
        "1048576",
    ]);
    let ids: Vec<String> = (0..40).map(|_| new_id()).collect();
    // Warm up the paths first (allocator arenas, thread pools), then take the baseline.
    let warm = new_id();
    srv.post_result(&warm, &json!({"warm": orphan_text(0, "w")}))
        .await;
    srv.result(&warm).await;
    let base = rss_kib(&srv);
    // 40 ids × (two 256 KiB merges, two 256 KiB log fragments) = 40 MiB of orphan data.
    for (i, id) in ids.iter().enumerate() {
        srv.post_result(id, &json!({"a": orphan_text(i, "a")}))
            .await;
        srv.post_result(id, &json!({"b": orphan_text(i, "b")}))
            .await;
        for (n, kind) in [(0, "output"), (1, "serial")] {
            srv.post_json(
                &format!("/v1/result/{id}/log/{kind}"),
                &log_fragment(&orphan_text(i, kind), n),
            )
            .await
            .expect_status(200);
        }
    }
    let live = rss_kib(&srv);
    eprintln!("RSS: baseline {base} KiB, after 40 MiB of orphan data {live} KiB");
    assert!(
        live < base + (16 << 10),
        "RSS grew from {base} KiB to {live} KiB with 40 MiB of orphan data"
    );
    // Enough job traffic for a snapshot to be taken over the orphans' index.
    for _ in 0..24 {
        srv.submit(&json!({"job_queue": "pad", "pad": "p".repeat(64 << 10)}))
            .await;
    }
    eventually("a snapshot is taken", || async {
        srv.stderr_lines()
            .iter()
            .any(|l| l.contains("snapshot taken"))
    })
    .await;
    let check = |srv: &TestServer| {
        let (http, ids) = (srv.http(), ids.clone());
        async move {
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(
                    http.get(&format!("/v1/result/{id}")).await.expect_json(),
                    json!({"a": orphan_text(i, "a"), "b": orphan_text(i, "b"),
                           "test_output": orphan_text(i, "output"),
                           "test_serial": orphan_text(i, "serial")}),
                );
                for kind in ["output", "serial"] {
                    let log = http
                        .get(&format!("/v1/result/{id}/log/{kind}"))
                        .await
                        .expect_json();
                    assert_eq!(log[kind]["test"]["log_data"], json!(orphan_text(i, kind)));
                }
            }
        }
    };
    check(&srv).await;
    for how in ["kill -9", "clean stop"] {
        if how == "kill -9" {
            srv.kill9();
            srv.start_again();
        } else {
            srv.restart();
        }
        let restarted = rss_kib(&srv);
        eprintln!("RSS after a {how} and restart: {restarted} KiB");
        assert!(
            restarted < base + (16 << 10),
            "after a {how} and restart RSS is {restarted} KiB (baseline: {base} KiB)"
        );
        check(&srv).await;
    }
}

#[tokio::test]
async fn a_job_that_takes_an_orphan_id_owns_its_data_which_then_stops_counting_and_goes_with_it() {
    let mut srv = TestServer::start_with(&["--orphan-quota-bytes", "15000"]);
    let id = new_id();
    let big = "x".repeat(9000);
    srv.post_result(&id, &json!({"early": big})).await;
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &log_fragment("before the job\n", 0),
    )
    .await
    .expect_status(200);
    // The quota has no room for a second such orphan.
    srv.post_json(&format!("/v1/result/{}", new_id()), &json!({"d": big}))
        .await
        .expect_error(507);
    // A submission naming the id takes it: the data is the job's now.
    let job = srv
        .submit(&json!({"job_queue": "adopt", "job_id": id}))
        .await;
    assert_eq!(job, id);
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &log_fragment("after\n", 1),
    )
    .await
    .expect_status(200);
    srv.post_result(&id, &json!({"late": 1})).await;
    let expected = json!({"job_state": "waiting", "early": big, "late": 1,
                          "test_output": "before the job\nafter\n"});
    assert_eq!(srv.result(&id).await, expected);
    // It no longer counts against the orphan quota: another orphan fits.
    srv.post_result(&new_id(), &json!({"d": big})).await;
    srv.restart();
    assert_eq!(srv.result(&id).await, expected);
    // Deleting the job removes the data with it, file included.
    srv.request("DELETE", &format!("/v1/job/{id}"), &[], Vec::new())
        .await
        .expect_status(200);
    srv.get(&format!("/v1/result/{id}"))
        .await
        .expect_no_content();
    eventually("the id's file is deleted", || async {
        files_of(&srv, &id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_vanish_for_good_and_waiting_ones_stay_when_retention_expires() {
    let mut srv = TestServer::start_with(&["--retention-secs", "2"]);
    let done = srv.submit_to("ret-done").await;
    let cancelled = srv.submit_to("ret-cancel").await;
    let waiting = srv.submit_to("ret-wait").await;
    assert_eq!(
        srv.pop_id(&["ret-done"]).await.as_deref(),
        Some(done.as_str())
    );
    srv.post_result(&done, &json!({"job_state": "complete"}))
        .await;
    srv.post_multipart(
        &format!("/v1/result/{done}/artifact"),
        "file",
        "a.tgz",
        pseudo_random_bytes(10_000, 3),
    )
    .await
    .expect_status(200);
    srv.cancel(&cancelled).await.expect_status(200);
    // All there before retention runs out.
    for id in [&done, &cancelled, &waiting] {
        srv.get(&format!("/v1/job/{id}")).await.expect_status(200);
    }
    srv.get(&format!("/v1/result/{done}"))
        .await
        .expect_status(200);
    srv.get(&format!("/v1/result/{done}/artifact"))
        .await
        .expect_status(200);

    let finished = [done.clone(), cancelled.clone()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut gone = true;
        for id in &finished {
            gone &= srv.get(&format!("/v1/job/{id}")).await.status == 204;
        }
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "finished jobs not expired within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let check = |srv: &TestServer, when: &'static str| {
        let http = srv.http();
        let (done, cancelled, waiting) = (done.clone(), cancelled.clone(), waiting.clone());
        async move {
            for id in [&done, &cancelled] {
                for path in [
                    format!("/v1/job/{id}"),
                    format!("/v1/result/{id}"),
                    format!("/v1/result/{id}/artifact"),
                ] {
                    let r = http.get(&path).await;
                    assert!(
                        r.status == 204 && r.body.is_empty(),
                        "{when}: GET {path} should be an empty 204, got {}: {:?}",
                        r.status,
                        r.text_preview()
                    );
                }
            }
            let r = http.get(&format!("/v1/job/{waiting}")).await;
            assert_eq!(r.status, 200, "{when}: the waiting job must never expire");
        }
    };
    check(&srv, "after expiry").await;
    // The pass logs what it removed once the removal is durable, which may be a moment
    // after reads stopped seeing the jobs.
    let expired_in = |lines: &[String]| -> u64 {
        lines
            .iter()
            .filter(|l| l.to_lowercase().contains("expired"))
            .flat_map(|l| {
                l.split_whitespace()
                    .filter_map(|t| t.strip_prefix("jobs=")?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while expired_in(&srv.stderr_lines()) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = srv.stderr_lines();
    let expired = expired_in(&lines);
    assert_eq!(
        expired,
        2,
        "the log should say it expired the 2 finished jobs:\n{}",
        lines.join("\n")
    );

    // The removal is durable: a server with a long retention (which would expire nothing
    // itself) still does not have them.
    assert!(srv.stop().success());
    let again = srv.successor(&["--retention-secs", "604800"]);
    check(&again, "after restart").await;
    assert_eq!(
        again.pop_id(&["ret-wait"]).await.as_deref(),
        Some(waiting.as_str())
    );
}

/// What is kept per queue goes with the queue's last job: once every job of a queue has
/// expired, its wait samples are gone from `/v1/queues/wait_times` (live and after a
/// restart), while a queue that still has a job keeps its own. (Queue names are the
/// clients' to choose: a wait-sample list per name ever dispatched from grew the state,
/// and every snapshot, for good.)
#[tokio::test]
async fn a_queues_wait_samples_go_when_its_last_job_expires() {
    let mut srv = TestServer::start_with(&["--retention-secs", "2"]);
    let used_up: Vec<String> = (0..5).map(|i| format!("used-up-{i}")).collect();
    for queue in &used_up {
        let id = srv.submit_to(queue).await;
        assert_eq!(srv.pop_id(&[queue]).await.as_deref(), Some(id.as_str()));
        srv.post_result(&id, &json!({"job_state": "complete"}))
            .await;
    }
    let kept = srv.submit_to("still-used").await;
    assert_eq!(
        srv.pop_id(&["still-used"]).await.as_deref(),
        Some(kept.as_str())
    );
    srv.submit_to("still-used").await;
    let queues_with_samples = |times: serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = times.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    let times = srv.get("/v1/queues/wait_times").await.expect_json();
    assert_eq!(queues_with_samples(times).len(), 6);
    for queue in &used_up {
        eventually("the used-up queues' jobs expire", || async {
            srv.get(&format!("/v1/queues/{queue}/jobs")).await.status == 204
        })
        .await;
    }
    let times = srv.get("/v1/queues/wait_times").await.expect_json();
    assert_eq!(queues_with_samples(times), ["still-used"], "live");
    srv.restart();
    let times = srv.get("/v1/queues/wait_times").await.expect_json();
    assert_eq!(
        queues_with_samples(times),
        ["still-used"],
        "after a restart"
    );
}

/// A job deleted while a client resubmits its `job_id` (a job of the same id made anew):
/// the new job's data is its own. Neither the old job's results leak into it nor does the
/// deletion of the old one remove what the new one was given after it was made. Each
/// round deletes a few finished jobs while their ids are submitted again and given a
/// result, under a load of log posts that keeps the result actor's inbox full (the
/// deletion reaches the partitions one after another, the race's window).
#[tokio::test]
async fn a_job_made_again_while_its_old_self_is_deleted_keeps_only_its_own_data() {
    let srv = TestServer::start();
    let http = srv.http();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = srv.submit(&json!({"job_queue": "race-load"})).await;
    let mut loaders = Vec::new();
    for worker in 0..6u64 {
        let (http, stop, load) = (srv.http(), stop.clone(), load.clone());
        loaders.push(tokio::spawn(async move {
            let mut n = worker << 32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = format!("/v1/result/{load}/log/output");
                http.post_json(&path, &log_fragment("x", n)).await;
                n += 1;
            }
        }));
    }
    let mut made_again = 0;
    for _ in 0..40 {
        let ids: Vec<String> = (0..6).map(|_| new_id()).collect();
        for id in &ids {
            srv.submit(&json!({"job_id": id, "job_queue": "race"}))
                .await;
            srv.post_result(id, &json!({"generation": "old"})).await;
            http.post_json(
                &format!("/v1/job/{id}/action"),
                &json!({"action": "cancel"}),
            )
            .await
            .expect_status(200);
        }
        let races = ids.iter().enumerate().map(|(n, id)| {
            let http = http.clone();
            let id = id.clone();
            async move {
                let path = format!("/v1/job/{id}");
                let delete = http.request("DELETE", &path, &[], Vec::new());
                let again = async {
                    // Every other resubmission a little after the deletion began: on a
                    // loaded machine the two otherwise went the same way in every round
                    // (the job deleted after it was made again: nothing left to check).
                    if n % 2 == 1 {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    let job = json!({"job_id": id, "job_queue": "race"});
                    http.post_json("/v1/job", &job).await.expect_status(200);
                    let new = json!({"generation": "new"});
                    http.post_json(&format!("/v1/result/{id}"), &new)
                        .await
                        .status
                };
                let (deleted, posted) = tokio::join!(delete, again);
                (id, deleted.status, posted)
            }
        });
        for (id, deleted, posted) in futures_util::future::join_all(races).await {
            assert_eq!(deleted, 200, "{id}");
            assert_eq!(posted, 200, "{id}");
            // The job exists: the deletion took the old one, and this is the new one,
            // made after it: its result is the one posted to it, nothing else.
            if http.get(&format!("/v1/job/{id}")).await.status != 200 {
                continue;
            }
            made_again += 1;
            let result = http.get(&format!("/v1/result/{id}")).await.expect_json();
            assert_eq!(result["generation"], "new", "{id}: {result}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for loader in loaders {
        loader.await.unwrap();
    }
    assert!(
        made_again > 0,
        "no round made a job anew after its deletion"
    );
}

/// Log fragments posted for an id before any job had it, then the fragments of the job
/// made with that id: one log, ordered by fragment number whichever arrived first, each
/// (phase, number) once (the first stored wins, as a retry's does: the orphan's #1 and #5
/// are kept over the job's), nothing lost; a fragment of another phase with a number
/// already used is its own. The same after a restart, and from a `start_fragment`.
#[tokio::test]
async fn orphan_fragments_and_the_later_jobs_own_merge_by_number_without_duplicates() {
    let mut srv = TestServer::start();
    let id = new_id();
    let post = |srv: &TestServer, number: u64, phase: &str, text: &str| {
        let http = srv.http();
        let path = format!("/v1/result/{id}/log/output");
        let body = json!({"fragment_number": number, "timestamp": "2026-01-01T00:00:00+00:00",
                          "phase": phase, "log_data": text});
        async move {
            http.post_json(&path, &body).await.expect_status(200);
        }
    };
    for (n, text) in [(0, "o0 "), (1, "o1 "), (5, "o5 "), (1, "o1-retry ")] {
        post(&srv, n, "setup", text).await;
    }
    srv.submit(&json!({"job_queue": "adopt-log", "job_id": id}))
        .await;
    assert_eq!(
        srv.pop_id(&["adopt-log"]).await.as_deref(),
        Some(id.as_str())
    );
    for (n, text) in [(2, "j2 "), (1, "j1 "), (5, "j5 "), (6, "j6 "), (3, "j3 ")] {
        post(&srv, n, "setup", text).await;
    }
    post(&srv, 1, "provision", "p1 ").await;
    let check = |srv: &TestServer| {
        let http = srv.http();
        let id = id.clone();
        async move {
            let log = http
                .get(&format!("/v1/result/{id}/log/output?phase=setup"))
                .await
                .expect_json();
            assert_eq!(
                log["output"]["setup"]["log_data"], "o0 o1 j2 j3 o5 j6 ",
                "{log}"
            );
            assert_eq!(log["output"]["setup"]["last_fragment_number"], 6, "{log}");
            let from = http
                .get(&format!(
                    "/v1/result/{id}/log/output?phase=setup&start_fragment=3"
                ))
                .await
                .expect_json();
            assert_eq!(from["output"]["setup"]["log_data"], "j3 o5 j6 ", "{from}");
            let result = http.get(&format!("/v1/result/{id}")).await.expect_json();
            assert_eq!(result["setup_output"], "o0 o1 j2 j3 o5 j6 ", "{result}");
            assert_eq!(result["provision_output"], "p1 ", "{result}");
        }
    };
    check(&srv).await;
    srv.restart();
    check(&srv).await;
}

/// The job documents kept are bounded (`--max-jobs-bytes`): a submission past the bound
/// is 507 naming the setting and keeps nothing, each job counts 1 KiB beside its document
/// and each queue with jobs 16 KiB (so neither tiny jobs nor a queue per job get around
/// it), a removed job makes room, and the count is the same after a restart.
#[tokio::test]
async fn submissions_past_the_job_store_bound_are_507_until_a_job_goes() {
    let mut srv = TestServer::start_with(&["--max-job-bytes", "4096", "--max-jobs-bytes", "30000"]);
    let pad = "x".repeat(3000);
    let mut kept = Vec::new();
    // The queue counts 16 KiB, each job ~4.1 KiB: three fit, a fourth does not.
    for _ in 0..3 {
        kept.push(srv.submit(&json!({"job_queue": "bound", "pad": pad})).await);
    }
    let refused = srv
        .post_json("/v1/job", &json!({"job_queue": "bound", "pad": pad}))
        .await
        .expect_error(507);
    assert!(refused.contains("--max-jobs-bytes"), "{refused}");
    // Many tiny ones are no way around it: each counts its 1 KiB too.
    let mut tiny = 0;
    while srv
        .post_json("/v1/job", &json!({"job_queue": "bound"}))
        .await
        .status
        == 200
    {
        tiny += 1;
        assert!(tiny < 10, "tiny jobs are not counted");
    }
    // A waiting job resubmitted as it is adds nothing: still accepted.
    srv.post_json(
        "/v1/job",
        &json!({"job_id": kept[0], "job_queue": "bound", "pad": pad}),
    )
    .await
    .expect_status(200);
    srv.restart();
    srv.post_json("/v1/job", &json!({"job_queue": "bound", "pad": pad}))
        .await
        .expect_error(507);
    srv.request("DELETE", &format!("/v1/job/{}", kept[1]), &[], Vec::new())
        .await
        .expect_status(200);
    // The room it made takes a job of its queue, not a tiny one opening a new queue.
    srv.post_json("/v1/job", &json!({"job_queue": "elsewhere"}))
        .await
        .expect_error(507);
    srv.submit(&json!({"job_queue": "bound", "pad": pad})).await;
}

/// Data of an id no job has lives in the orphan store; a job submitted with that id takes
/// it over (it stops counting against the orphan quota), and what its agent posts after
/// is appended there: held to the job's own `--max-job-data-bytes` (it was held to
/// nothing, so the disk could fill through one job).
#[tokio::test]
async fn a_job_that_takes_over_orphan_data_is_held_to_its_own_bound() {
    let srv = TestServer::start_with(&[
        "--max-job-data-bytes",
        "8192",
        "--max-result-bytes",
        "1024",
        "--max-output-bytes",
        "2048",
    ]);
    let id = new_id();
    let text = "x".repeat(1000);
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &log_fragment(&text, 0),
    )
    .await
    .expect_status(200);
    srv.post_json("/v1/job", &json!({"job_id": id, "job_queue": "taken-over"}))
        .await
        .expect_status(200);
    let mut refused = None;
    for n in 1..20 {
        let r = srv
            .post_json(
                &format!("/v1/result/{id}/log/output"),
                &log_fragment(&text, n),
            )
            .await;
        if r.status != 200 {
            refused = Some((n, r.expect_error(413)));
            break;
        }
    }
    let (n, message) = refused.expect("the job's bound was never reached");
    assert!(n >= 5, "refused after only {n} fragments: {message}");
    assert!(message.contains("--max-job-data-bytes"), "{message}");
}
