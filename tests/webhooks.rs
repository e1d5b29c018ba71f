//! Job event webhooks (`POST /v1/job/<id>/events`, issue 12): the agent's post is recorded
//! and answered at once; a worker PUTs each event to the job's webhook, in order, with
//! retries, across restarts, once per event however often the agent re-posts its
//! cumulative list; a receiver failing forever ends "gave up" with its last error; every
//! size is bounded. The receiver is a small HTTP server run by the test on 127.0.0.1.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use serde_json::{json, Value};

use crate::util::agent::{AgentSpec, RealAgent};
use crate::util::{new_id, run_to_exit, TestServer};

/// One PUT the receiver got.
#[derive(Clone, Debug)]
struct Got {
    /// `Idempotency-Key`.
    key: String,
    /// `Authorization`.
    auth: Option<String>,
    /// The JSON body.
    body: Value,
    /// The status the receiver answered.
    status: u16,
}

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Seen {
    got: Mutex<Vec<Got>>,
    /// Status to answer (0: 200).
    status: AtomicU16,
}

/// A webhook receiver on 127.0.0.1: records every PUT to any path.
struct Receiver {
    port: u16,
    seen: Arc<Seen>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn record(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = seen.status.load(Ordering::SeqCst);
    seen.got.lock().unwrap().push(Got {
        key: header("idempotency-key").unwrap_or_default(),
        auth: header("authorization"),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        status: if status == 0 { 200 } else { status },
    });
    match status {
        0 => (StatusCode::OK, "{}".into()),
        code => (
            StatusCode::from_u16(code).unwrap(),
            "boom from the receiver".into(),
        ),
    }
}

impl Receiver {
    /// A receiver on a free port, not listening yet (down).
    fn down() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Receiver {
            port,
            seen: Arc::default(),
            task: None,
        }
    }

    /// A receiver listening now.
    async fn up() -> Receiver {
        let mut r = Receiver::down();
        r.start().await;
        r
    }

    /// Starts listening on its port.
    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the receiver's port is free again");
        let app = axum::Router::new()
            .route("/{*path}", put(record))
            .with_state(self.seen.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.seen.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An event as the stock agent posts it.
fn event(name: &str, n: u32) -> Value {
    json!({"event_name": name, "timestamp": format!("2026-11-29T10:00:{n:02}.000001+00:00"), "detail": format!("detail {n}")})
}

/// The agent's post: the cumulative list `events` for `hook`.
fn post_body(hook: &str, events: &[Value]) -> Value {
    json!({"agent_id": "dut-1", "job_queue": "hq", "job_status_webhook": hook, "events": events})
}

/// Submits a job with a webhook and pops it: its id.
async fn running_job(srv: &TestServer, hook: &str) -> String {
    let id = srv
        .submit(&json!({"job_queue": "hq", "job_status_webhook": hook}))
        .await;
    assert_eq!(srv.pop_id(&["hq"]).await.as_deref(), Some(id.as_str()));
    id
}

/// Polls the job's delivery view until `done` holds (within 60 s).
async fn wait_view(srv: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = srv.get(&format!("/v1/job/{id}/events")).await.expect_json();
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "no {what} within 60 s: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn receiver_down_then_up_gets_every_event_once_in_order_across_a_kill_9() {
    let mut receiver = Receiver::down();
    let hook = format!("{}/v1/test-executions/7/status_update", receiver.url());
    let mut srv = TestServer::start_opts(crate::util::Opts {
        args: ["--webhook-max-backoff-secs", "1"]
            .map(String::from)
            .to_vec(),
        // Upstream's environment names.
        envs: vec![
            ("WEBHOOK_URL".into(), format!("{}/", receiver.url())),
            ("WEBHOOK_AUTH".into(), "sekrit".into()),
        ],
        ..Default::default()
    });
    let id = running_job(&srv, &hook).await;
    let events: Vec<Value> = [
        "job_start",
        "setup_start",
        "setup_success",
        "provision_start",
    ]
    .iter()
    .zip(1..)
    .map(|(name, n)| event(name, n))
    .collect();
    let path = format!("/v1/job/{id}/events");
    // The agent posts its cumulative list after each event, and repeats one post.
    for upto in [1, 2, 2, 3] {
        let view = srv
            .post_json(&path, &post_body(&hook, &events[..upto]))
            .await
            .expect_json();
        assert_eq!(view["events"], upto, "{view}");
    }
    let view = wait_view(&srv, &id, "failed attempt", |v| {
        v["attempts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(view["state"], "failing", "{view}");
    assert_eq!(view["delivered"], 0);
    assert!(
        view["last_error"].as_str().unwrap().contains("unreachable"),
        "{view}"
    );
    srv.kill9();
    srv.start_again();
    // Recorded before the crash: still there, still pending.
    let view = srv.get(&path).await.expect_json();
    assert_eq!(
        (view["events"].clone(), view["delivered"].clone()),
        (json!(3), json!(0)),
        "{view}"
    );
    srv.post_json(&path, &post_body(&hook, &events))
        .await
        .expect_status(200);
    receiver.start().await;
    let view = wait_view(&srv, &id, "delivery", |v| v["state"] == "delivered").await;
    assert_eq!(
        (view["events"].clone(), view["delivered"].clone()),
        (json!(4), json!(4)),
        "{view}"
    );
    // At least once: a delivery may repeat (with its key), but the first time each key
    // arrives is in order, and delivery k carries exactly the first k events.
    let got = receiver.got();
    let mut keys: Vec<String> = Vec::new();
    for g in &got {
        if !keys.contains(&g.key) {
            keys.push(g.key.clone());
        }
        assert_eq!(g.auth.as_deref(), Some("Bearer sekrit"));
        let k: usize = g.key.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(g.body["events"], json!(events[..k]), "{}", g.body);
        assert_eq!(g.body["agent_id"], "dut-1");
        assert_eq!(g.body["job_queue"], "hq");
        assert!(g.body.get("job_status_webhook").is_none(), "{}", g.body);
    }
    let want: Vec<String> = (1..=4).map(|k| format!("{id}/{k}")).collect();
    assert_eq!(keys, want);
    // Delivered means done: nothing more arrives.
    let count = got.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.got().len(), count);
}

#[tokio::test]
async fn receiver_answering_500_forever_ends_gave_up_with_the_last_error_in_few_log_lines() {
    let receiver = Receiver::up().await;
    receiver.seen.status.store(500, Ordering::SeqCst);
    let hook = format!("{}/hook", receiver.url());
    let srv = TestServer::start_with(&[
        "--webhook-url",
        &receiver.url(),
        "--webhook-max-backoff-secs",
        "1",
        "--webhook-give-up-secs",
        "8",
    ]);
    let id = running_job(&srv, &hook).await;
    let path = format!("/v1/job/{id}/events");
    srv.post_json(&path, &post_body(&hook, &[event("job_start", 1)]))
        .await
        .expect_status(200);
    let view = wait_view(&srv, &id, "failing", |v| v["attempts"].as_u64() >= Some(2)).await;
    assert_eq!(view["state"], "failing");
    let error = view["last_error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("boom from the receiver"),
        "{error}"
    );
    assert!(view["next_attempt_at"].is_string(), "{view}");
    let view = wait_view(&srv, &id, "give-up", |v| v["state"] == "gave up").await;
    let reason = view["gave_up"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("500") && reason.contains("--webhook-give-up-secs"),
        "{reason}"
    );
    assert_eq!(view["delivered"], 0);
    // Given up means no more attempts.
    let attempts = receiver.got().len();
    assert!(attempts >= 4, "retried every second or two: {attempts}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.got().len(), attempts, "attempts after giving up");
    // Every attempt failed, yet the log has a line per 10 s, not one per attempt.
    let lines = srv
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("webhook delivery failed"))
        .count();
    assert!(
        lines <= 2,
        "{lines} log lines for {attempts} failed attempts"
    );
    // A later event is tried again (its cumulative list carries the first one).
    receiver.seen.status.store(0, Ordering::SeqCst);
    srv.post_json(
        &path,
        &post_body(&hook, &[event("job_start", 1), event("job_end", 2)]),
    )
    .await
    .expect_status(200);
    wait_view(&srv, &id, "delivery", |v| v["state"] == "delivered").await;
    let last = receiver.got().pop().unwrap();
    assert_eq!(last.key, format!("{id}/2"));
    assert_eq!(last.body["events"].as_array().unwrap().len(), 2);
}

/// Many jobs whose receiver fails at first (each backing off on its own timer), then
/// works: the worker's schedule neither loses a job nor attempts one twice at once, so
/// every job's deliveries 1, 2, 3 are each acknowledged exactly once, in order, and no
/// job's attempt ever goes back to an earlier delivery.
#[tokio::test]
async fn many_jobs_failing_then_delivered_get_each_delivery_acknowledged_once_in_order() {
    const JOBS: usize = 200;
    let receiver = Receiver::up().await;
    receiver.seen.status.store(503, Ordering::SeqCst);
    let srv = TestServer::start_with(&[
        "--webhook-url",
        &receiver.url(),
        "--webhook-max-backoff-secs",
        "1",
    ]);
    let events: Vec<Value> = (1..=3).map(|n| event("job_start", n)).collect();
    let mut jobs: Vec<(String, String)> = Vec::new();
    for i in 0..JOBS {
        let hook = format!("{}/hook/{i}", receiver.url());
        let id = srv
            .submit(&json!({"job_queue": "hq", "job_status_webhook": hook}))
            .await;
        for upto in [1, 2] {
            srv.post_json(
                &format!("/v1/job/{id}/events"),
                &post_body(&hook, &events[..upto]),
            )
            .await
            .expect_status(200);
        }
        jobs.push((id, hook));
    }
    for (id, _) in &jobs {
        wait_view(&srv, id, "failed attempt", |v| {
            v["attempts"].as_u64() >= Some(1)
        })
        .await;
    }
    receiver.seen.status.store(0, Ordering::SeqCst);
    for (id, hook) in &jobs {
        srv.post_json(&format!("/v1/job/{id}/events"), &post_body(hook, &events))
            .await
            .expect_status(200);
    }
    for (id, _) in &jobs {
        let view = wait_view(&srv, id, "delivery", |v| v["state"] == "delivered").await;
        assert_eq!(view["delivered"], 3, "{view}");
    }
    let got = receiver.got();
    for (id, _) in &jobs {
        let mine: Vec<&Got> = got
            .iter()
            .filter(|g| g.key.starts_with(&format!("{id}/")))
            .collect();
        let k = |g: &Got| -> usize { g.key.rsplit('/').next().unwrap().parse().unwrap() };
        let acked: Vec<usize> = mine
            .iter()
            .filter(|g| g.status == 200)
            .map(|g| k(g))
            .collect();
        assert_eq!(acked, [1, 2, 3], "job {id}'s acknowledged deliveries");
        let tried: Vec<usize> = mine.iter().map(|g| k(g)).collect();
        assert!(
            tried.windows(2).all(|w| w[0] <= w[1]),
            "job {id}'s attempts went back: {tried:?}"
        );
        for g in &mine {
            assert_eq!(g.body["events"], json!(events[..k(g)]), "{}", g.body);
        }
    }
}

/// A webhook URL longer than `--max-webhook-url-bytes` is refused when the job is
/// submitted (413 naming the limit), not accepted and then refused in every event post
/// its agent makes; one at the limit is accepted.
#[tokio::test]
async fn job_with_a_webhook_url_over_the_limit_is_refused_at_submit() {
    let srv = TestServer::start_with(&["--max-webhook-url-bytes", "256"]);
    let url = |len: usize| {
        let base = "http://hooks.example:8080/";
        format!("{base}{}", "p".repeat(len - base.len()))
    };
    let r = srv
        .post_json(
            "/v1/job",
            &json!({"job_queue": "q", "job_status_webhook": url(257)}),
        )
        .await;
    let message = r.expect_error(413);
    assert!(
        message.contains("job_status_webhook") && message.contains("256"),
        "{message}"
    );
    srv.post_json(
        "/v1/job",
        &json!({"job_queue": "q", "job_status_webhook": url(256)}),
    )
    .await
    .expect_status(200);
    assert!(srv.pop_id(&["q"]).await.is_some());
    assert_eq!(
        srv.pop(&["q"]).await,
        None,
        "the refused job was not queued"
    );
}

#[tokio::test]
async fn event_post_is_refused_when_the_id_the_job_or_the_webhook_is_wrong() {
    let srv = TestServer::start_with(&["--webhook-url", "http://hooks.example:8080/base"]);
    let hook = "http://hooks.example:8080/v1/test-executions/1/status_update";
    let body = post_body(hook, &[event("job_start", 1)]);
    let r = srv.post_json("/v1/job/not-a-uuid/events", &body).await;
    assert_eq!(r.expect_error(400), "Invalid job_id specified");
    let r = srv
        .post_json(&format!("/v1/job/{}/events", new_id()), &body)
        .await;
    assert_eq!(r.expect_error(404), "Job not found");
    let id = running_job(&srv, hook).await;
    let path = format!("/v1/job/{id}/events");
    for other in [
        "http://hooks.example.fake:8080/x",
        "http://hooks.example:8081/x",
        "https://hooks.example:8080/x",
        "http://user@hooks.example:8080/x",
    ] {
        let r = srv.post_json(&path, &post_body(other, &[])).await;
        assert_eq!(
            r.expect_error(403),
            "Invalid job_status_webhook URL specified",
            "{other}"
        );
    }
    // Upstream's schema: a URL is required, fields are typed, unknown fields refused.
    for bad in [
        json!({"events": []}),
        json!({"job_status_webhook": "not a url"}),
        json!({"job_status_webhook": hook, "events": "job_start"}),
        json!({"job_status_webhook": hook, "events": [{"event_name": "x"}]}),
        json!({"job_status_webhook": hook, "surprise": 1}),
    ] {
        srv.post_json(&path, &bad).await.expect_error(422);
    }
    // Nothing was recorded by the refused posts; a good one is.
    let view = srv.get(&path).await.expect_json();
    assert_eq!(view["state"], "none");
    srv.post_json(&path, &body).await.expect_status(200);
    assert_eq!(srv.get(&path).await.expect_json()["events"], 1);
    srv.get("/v1/job/not-a-uuid/events").await.expect_error(400);
    srv.get(&format!("/v1/job/{}/events", new_id()))
        .await
        .expect_error(404);
    // Without WEBHOOK_URL no webhook is allowed: 403 saying so (upstream answers 500).
    let bare = TestServer::start();
    let id = running_job(&bare, hook).await;
    let r = bare.post_json(&format!("/v1/job/{id}/events"), &body).await;
    assert!(r.expect_error(403).contains("WEBHOOK_URL is not set"));
}

#[tokio::test]
async fn event_post_past_a_bound_is_refused_with_413_and_records_nothing() {
    let srv = TestServer::start_with(&[
        "--webhook-url",
        "http://127.0.0.1:9/",
        "--max-job-events",
        "3",
        "--max-event-detail-bytes",
        "100",
        "--max-webhook-url-bytes",
        "300",
    ]);
    let hook = "http://127.0.0.1:9/hook";
    let id = running_job(&srv, hook).await;
    let path = format!("/v1/job/{id}/events");
    let four: Vec<Value> = (1..=4).map(|n| event("e", n)).collect();
    let message = srv
        .post_json(&path, &post_body(hook, &four))
        .await
        .expect_error(413);
    assert!(message.contains("--max-job-events"), "{message}");
    srv.post_json(&path, &post_body(hook, &four[..2]))
        .await
        .expect_status(200);
    // Cumulative: two recorded, two more would make four.
    let message = srv
        .post_json(&path, &post_body(hook, &four))
        .await
        .expect_error(413);
    assert!(message.contains("at most 3"), "{message}");
    let mut long = event("e", 9);
    long["detail"] = json!("d".repeat(101));
    let message = srv
        .post_json(&path, &post_body(hook, &[long]))
        .await
        .expect_error(413);
    assert!(message.contains("--max-event-detail-bytes"), "{message}");
    let long_hook = format!("{hook}/{}", "x".repeat(300));
    let message = srv
        .post_json(&path, &post_body(&long_hook, &[]))
        .await
        .expect_error(413);
    assert!(message.contains("--max-webhook-url-bytes"), "{message}");
    assert_eq!(srv.get(&path).await.expect_json()["events"], 2);
}

#[test]
fn https_webhook_url_is_refused_at_start_up_naming_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &[
            "--data-dir",
            "data",
            "--webhook-url",
            "https://hooks.example/",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WEBHOOK_URL") && stderr.contains("https"),
        "{stderr}"
    );
}

#[tokio::test]
async fn real_agent_job_with_a_webhook_reaches_the_receiver_with_every_phase() {
    let receiver = Receiver::up().await;
    let hook = format!("{}/status", receiver.url());
    let srv = TestServer::start_with(&["--webhook-url", &receiver.url()]);
    let mut agent = RealAgent::start(
        &srv,
        AgentSpec::new("hook-dut", &["hook-q"]).command("test", "echo testing"),
    );
    let id = srv
        .submit(&json!({"job_queue": "hook-q", "job_status_webhook": hook, "test_data": {"test_cmds": "run"}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.job_state(&id).await != "complete" {
        assert!(
            Instant::now() < deadline,
            "job did not complete; agent said:\n{}",
            agent.console()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stopped first, so no event is posted after the view below.
    agent.stop();
    let view = wait_view(&srv, &id, "delivery", |v| v["state"] == "delivered").await;
    let got = receiver.got();
    let last = got
        .iter()
        .max_by_key(|g| g.body["events"].as_array().map_or(0, Vec::len))
        .unwrap();
    let names: Vec<&str> = last.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len() as u64,
        view["events"].as_u64().unwrap(),
        "{names:?}"
    );
    assert!(
        names.contains(&"test_start") && names.contains(&"test_success"),
        "{names:?}"
    );
    assert_eq!(last.body["agent_id"], "hook-dut");
    assert_eq!(last.body["job_queue"], "hook-q");
}

#[tokio::test]
async fn outbox_and_delivery_progress_survive_a_snapshot_and_kill_9() {
    let receiver = Receiver::up().await;
    let hook = format!("{}/hook", receiver.url());
    let url = receiver.url();
    let args = [
        crate::util::SMALL_SEGMENTS,
        crate::util::SNAPSHOT_SOON,
        &["--webhook-url", &url],
    ]
    .concat();
    let mut srv = TestServer::start_with(&args);
    let id = running_job(&srv, &hook).await;
    let path = format!("/v1/job/{id}/events");
    let events = [
        event("job_start", 1),
        event("setup_start", 2),
        event("job_end", 3),
    ];
    srv.post_json(&path, &post_body(&hook, &events[..2]))
        .await
        .expect_status(200);
    wait_view(&srv, &id, "delivery", |v| v["delivered"] == 2).await;
    // Enough log after it to make the server take a snapshot.
    srv.log_for_a_snapshot().await;
    srv.snapshot_taken().await;
    let sent = receiver.got().len();
    srv.kill9();
    srv.start_again();
    let view = srv.get(&path).await.expect_json();
    assert_eq!(view["state"], "delivered", "{view}");
    assert_eq!(
        (view["events"].clone(), view["delivered"].clone()),
        (json!(2), json!(2))
    );
    // Delivered before the crash: not sent again; a re-post adds only the new event.
    srv.post_json(&path, &post_body(&hook, &events))
        .await
        .expect_status(200);
    wait_view(&srv, &id, "delivery", |v| v["delivered"] == 3).await;
    let got = receiver.got();
    assert_eq!(got.len(), sent + 1, "{got:?}");
    assert_eq!(got.last().unwrap().key, format!("{id}/3"));
}

/// A receiver that answers 2xx while the log refuses every change (a failed fsync): the
/// worker cannot record the delivery, so it must retry it with its backoff, not PUT the
/// same delivery again at once, forever (a flood of the receiver and of the log).
#[tokio::test(flavor = "multi_thread")]
async fn delivery_that_cannot_be_recorded_is_retried_with_backoff_not_in_a_tight_loop() {
    use flinger::config::Config;
    use wal::fault::{Fault, FaultyFs, Op};

    let receiver = Receiver::up().await;
    // Down (500) while the events are recorded, so nothing is delivered before the fault.
    receiver.seen.status.store(500, Ordering::SeqCst);
    let hook = format!("{}/hook", receiver.url());
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        webhook_url: Some(receiver.url()),
        webhook_max_backoff: Duration::from_secs(2),
        ..Config::default()
    };
    let fs = Arc::new(FaultyFs::new(Arc::new(wal::StdFs)));
    let running = flinger::server::start_with_fs(config, fs.clone())
        .await
        .unwrap();
    let (http, stop, server) = crate::util::serve_on(running).await;
    let id = http
        .submit(&json!({"job_queue": "hq", "job_status_webhook": hook}))
        .await;
    let path = format!("/v1/job/{id}/events");
    http.post_json(&path, &post_body(&hook, &[event("job_start", 1)]))
        .await
        .expect_status(200);
    // The log fails: every later change is refused.
    fs.fail_always(Op::Sync, Fault::Io);
    let refused = http.post_json("/v1/job", &json!({"job_queue": "hq"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    // The receiver comes back: each PUT succeeds, and none can be recorded.
    receiver.seen.status.store(0, Ordering::SeqCst);
    let before = receiver.got().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let puts = receiver.got().len() - before;
    assert!(
        (1..=6).contains(&puts),
        "{puts} PUTs of one delivery in 4 s while its record was refused"
    );
    let view = http.get(&path).await.expect_json();
    assert_eq!(view["delivered"], 0, "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be recorded")),
        "{view}"
    );
    stop.send(()).unwrap();
    let _ = server.await.unwrap();
}
