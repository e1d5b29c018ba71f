//! Current upstream clients, replayed request by request: `testflinger-cli` (`submit` with an
//! attachment, `poll`, `results`, `artifacts`, `cancel`, `queue-status`, `agent-status`,
//! `list-queues`, `list-agents`) and `testflinger-agent` (register with the `agent_name`
//! cookie, advertise, pop, phases with state posts, log fragments, cancellation noticed
//! mid-phase, artifact, final outcome). Bodies, headers and status codes follow
//! `shared/reference/testflinger-api.md` §2 (what the server answers) and §3 (what the
//! clients send and read).

use serde_json::{json, Value};

use crate::util::{job_id_of, new_id, pop_path, pseudo_random_bytes, Http, Resp, TestServer};

// ---- What the clients send ----------------------------------------------------------------

/// One `testflinger-agent`: a `requests.Session` that keeps the `agent_name` cookie set by its
/// first `POST /v1/agents/data/<name>` and sends it with every later request.
struct Agent {
    http: Http,
    name: String,
    cookie: String,
}

impl Agent {
    /// The agent's first request at startup: `POST /v1/agents/data/<name>`
    /// `{"state": "waiting", "comment": ""}`, which must answer 200 and set the cookie.
    async fn start(srv: &TestServer, name: &str) -> Agent {
        let r = srv
            .post_json(
                &format!("/v1/agents/data/{name}"),
                &json!({"state": "waiting", "comment": ""}),
            )
            .await;
        r.expect_status(200);
        let set_cookie: Vec<String> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        assert_eq!(
            set_cookie,
            vec![format!(
                "agent_name={name}; HttpOnly; SameSite=Strict; Path=/"
            )],
            "POST /v1/agents/data/{name} must set the agent_name cookie"
        );
        let cookie = set_cookie[0]
            .split(';')
            .next()
            .expect("cookie pair")
            .to_string();
        Agent {
            http: srv.http(),
            name: name.to_string(),
            cookie,
        }
    }

    /// `start` plus the rest of the startup sequence: `POST /v1/agents/data/<name>` with
    /// location, queues and provision type.
    async fn register(srv: &TestServer, name: &str, queues: &[&str]) -> Agent {
        let agent = Agent::start(srv, name).await;
        agent
            .post_json(
                &format!("/v1/agents/data/{name}"),
                &json!({"location": "lab 1", "queues": queues, "provision_type": "noprovision"}),
            )
            .await
            .expect_status(200);
        agent
    }

    async fn get(&self, path: &str) -> Resp {
        self.http
            .get_with_headers(path, &[("cookie", &self.cookie)])
            .await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.http
            .request(
                "POST",
                path,
                &[
                    ("content-type", "application/json"),
                    ("cookie", &self.cookie),
                ],
                serde_json::to_vec(body).expect("serialise"),
            )
            .await
    }

    /// `GET /v1/job?queue=..` with the cookie: `Some(job)` on 200, `None` on 204 with an empty
    /// body (the agent takes any non-empty body as a job).
    async fn pop(&self, queues: &[&str]) -> Option<Value> {
        let r = self.get(&pop_path(queues)).await;
        match r.status {
            200 => {
                assert!(!r.body.is_empty(), "200 pop with an empty body");
                let job = r.json();
                assert!(job.is_object(), "a popped job is an object: {job}");
                Some(job)
            }
            204 => {
                r.expect_no_content();
                None
            }
            s => panic!(
                "pop {queues:?} as {}: status {s}, body {:?}",
                self.name,
                r.text()
            ),
        }
    }

    /// `POST /v1/agents/data/<name>` with `body`, asserting 200.
    async fn post_data(&self, body: Value) {
        self.post_json(&format!("/v1/agents/data/{}", self.name), &body)
            .await
            .expect_status(200);
    }

    /// `GET /v1/agents/data/<name>` (the agent reads `state`, `comment`, `updated_at`,
    /// `restricted_to`).
    async fn data(&self) -> Value {
        self.get(&format!("/v1/agents/data/{}", self.name))
            .await
            .expect_json()
    }

    /// `POST /v1/result/<id>`, asserting 200.
    async fn post_result(&self, id: &str, body: Value) {
        self.post_json(&format!("/v1/result/{id}"), &body)
            .await
            .expect_status(200);
    }

    /// The cancellation check: `GET /v1/result/<id>` and its `job_state`.
    async fn job_state(&self, id: &str) -> String {
        let v = self.get(&format!("/v1/result/{id}")).await.expect_json();
        v["job_state"]
            .as_str()
            .unwrap_or_else(|| panic!("result without a job_state: {v}"))
            .to_string()
    }

    /// One log fragment as the agent posts it, asserting 200.
    async fn fragment(
        &self,
        id: &str,
        kind: &str,
        number: u64,
        phase: &str,
        second: u32,
        data: &str,
    ) {
        self.post_json(
            &format!("/v1/result/{id}/log/{kind}"),
            &fragment_body(number, phase, second, data),
        )
        .await
        .expect_status(200);
    }

    /// Steps 1 and 3-4 of a phase: cancellation check, `{"job_state": phase}`, agent state.
    /// Returns false (and posts nothing) when the job was cancelled.
    async fn enter_phase(&self, id: &str, phase: &str) -> bool {
        if self.job_state(id).await == "cancelled" {
            return false;
        }
        self.data().await;
        self.post_result(id, json!({"job_state": phase})).await;
        self.post_data(json!({"state": phase, "comment": ""})).await;
        true
    }
}

/// A log fragment body: `timestamp` as Python's `isoformat()` writes it (microseconds and
/// `+00:00`), at `second` seconds past 2026-01-01T00:00:00.
fn fragment_body(number: u64, phase: &str, second: u32, data: &str) -> Value {
    json!({
        "fragment_number": number,
        "timestamp": format!("2026-01-01T00:{:02}:{:02}.123456+00:00", second / 60, second % 60),
        "phase": phase,
        "log_data": data,
    })
}

/// Every phase a log response names.
const LOG_PHASES: [&str; 7] = [
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "reserve",
    "cleanup",
];

/// The CLI's first request of every command when it has no credentials:
/// `POST /oidc/auth-init` with an empty form. A 404 means "no OIDC, go on anonymously"; any
/// other error status makes the CLI exit.
async fn cli_auth_init(srv: &TestServer) {
    let r = srv
        .post_raw(
            "/oidc/auth-init",
            Some("application/x-www-form-urlencoded"),
            Vec::new(),
        )
        .await;
    assert_eq!(
        r.status,
        404,
        "POST /oidc/auth-init must be 404 without OIDC; body {:?}",
        r.text()
    );
    assert!(
        r.body.is_empty() || serde_json::from_slice::<Value>(&r.body).is_ok(),
        "404 body must be JSON or empty: {:?}",
        r.text()
    );
}

/// A multipart upload as `requests` sends it: one field `file`, type `application/x-gzip`.
async fn post_gzip_file(http: &Http, path: &str, filename: &str, bytes: &[u8]) -> Resp {
    let boundary = format!("{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"{filename}\"\r\nContent-Type: application/x-gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    http.request(
        "POST",
        path,
        &[(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    )
    .await
}

/// Bytes that start like a gzip stream (the server stores them without unpacking).
fn fake_tar_gz(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03];
    bytes.extend(pseudo_random_bytes(len, seed));
    bytes
}

/// Asserts `text` is `YYYY-MM-DDTHH:MM:SSZ`: a `Z` with no offset before it (the agent does
/// `replace("Z", "+00:00")`).
#[track_caller]
fn assert_iso_z(text: &str) {
    let b = text.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let ok = b.len() == 20
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    assert!(ok, "expected YYYY-MM-DDTHH:MM:SSZ, got {text:?}");
}

/// The CLI's next `start_fragment`: max(last_fragment_number)+1 over the phases, when ≥ 0.
fn next_start_fragment(log: &Value, kind: &str) -> Option<i64> {
    let phases = log[kind].as_object().expect("log response per phase");
    phases
        .values()
        .map(|p| {
            p["last_fragment_number"]
                .as_i64()
                .expect("integer last_fragment_number")
        })
        .max()
        .filter(|n| *n >= 0)
        .map(|n| n + 1)
}

/// Concatenates the `log_data` of every phase in phase order, as the CLI prints it.
fn log_text(log: &Value, kind: &str) -> String {
    LOG_PHASES
        .iter()
        .filter_map(|p| log[kind].get(*p))
        .map(|p| p["log_data"].as_str().expect("string log_data"))
        .collect()
}

/// Asserts a log response has an entry for every phase, each with an integer
/// `last_fragment_number` and a string `log_data`.
#[track_caller]
fn assert_log_shape(log: &Value, kind: &str) {
    let phases = log[kind]
        .as_object()
        .unwrap_or_else(|| panic!("expected {{{kind:?}: {{phase: ..}}}}, got {log}"));
    for phase in LOG_PHASES {
        let entry = phases
            .get(phase)
            .unwrap_or_else(|| panic!("phase {phase} missing from {log}"));
        assert!(entry["last_fragment_number"].is_i64(), "{phase}: {entry}");
        assert!(entry["log_data"].is_string(), "{phase}: {entry}");
    }
    assert_eq!(
        phases.len(),
        LOG_PHASES.len(),
        "only the known phases: {log}"
    );
}

/// `GET /v1/result/<id>/log/<kind>?<query>` asserting 200.
async fn get_log(http: &Http, id: &str, kind: &str, query: &str) -> Value {
    http.get(&format!("/v1/result/{id}/log/{kind}?{query}"))
        .await
        .expect_json()
}

/// `GET /v1/job/<id>/position` as the CLI reads it: `int(text)`.
async fn position_of(srv: &TestServer, id: &str) -> i64 {
    let r = srv.position(id).await;
    r.expect_status(200);
    r.text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("position is not an integer: {:?}", r.text()))
}

// ---- CLI: submit with an attachment --------------------------------------------------------

#[tokio::test]
async fn submit_with_attachment_dispatches_only_after_upload_when_cli_sequence_is_replayed() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;

    // Pre-check: no agent lists the queue yet.
    let r = srv.get("/v1/queues/lab-q/agents").await;
    assert_eq!(r.expect_error(404), "Queue 'lab-q' does not exist.");

    // An agent serves the queue: the CLI sees a list of {name, state, ...}.
    let agent = Agent::register(&srv, "dut-1", &["lab-q"]).await;
    let agents = srv.get("/v1/queues/lab-q/agents").await.expect_json();
    let agents = agents.as_array().expect("a JSON list of agents");
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["name"], "dut-1");
    assert_eq!(agents[0]["state"], "waiting");

    // The job as the CLI rewrites it: `local` removed, `agent` the path in the archive.
    let job = json!({
        "job_queue": "lab-q",
        "provision_data": {"distro": "noble"},
        "test_data": {
            "test_cmds": "ls test/",
            "attachments": [{"agent": "scripts/run.sh"}],
        },
    });
    let id = srv.submit(&job).await;

    // Not dispatched before the attachments arrive, but waiting (position answers).
    assert_eq!(agent.pop(&["lab-q"]).await, None);
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(position_of(&srv, &id).await, 0);
    srv.get(&format!("/v1/job/{id}/attachments"))
        .await
        .expect_no_content();

    let archive = fake_tar_gz(3000, 7);
    let r = post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "tmpq1w2e3r4.tar.gz",
        &archive,
    )
    .await;
    r.expect_status(200);
    // The CLI retries uploads whose answer it lost: a second upload is still a success.
    post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "tmpq1w2e3r4.tar.gz",
        &archive,
    )
    .await
    .expect_status(200);

    let popped = agent
        .pop(&["lab-q"])
        .await
        .expect("dispatched once attached");
    assert_eq!(job_id_of(&popped), id);
    assert_eq!(popped["attachments_status"], "complete");
    assert_eq!(
        popped["test_data"]["attachments"],
        job["test_data"]["attachments"]
    );

    // The stored job, as `show` reads it, does not expose the internal status.
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert!(shown.get("attachments_status").is_none(), "{shown}");

    // The agent downloads them: the exact bytes.
    let r = agent.get(&format!("/v1/job/{id}/attachments")).await;
    r.expect_status(200);
    assert_eq!(r.body.as_ref(), archive.as_slice(), "attachments differ");

    // No longer waiting: further uploads are refused with 422.
    let r = post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "a.tar.gz",
        b"x",
    )
    .await;
    assert_eq!(
        r.status,
        422,
        "upload for a running job; body {:?}",
        r.text()
    );
}

#[tokio::test]
async fn attachments_upload_is_refused_when_job_has_none_is_unknown_or_id_is_malformed() {
    let srv = TestServer::start();
    let plain = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "true"}}))
        .await;
    let http = srv.http();
    let archive = fake_tar_gz(100, 3);

    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{plain}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(
        r.status,
        422,
        "job without declared attachments; body {:?}",
        r.text()
    );
    assert!(
        r.text().contains("not awaiting attachments"),
        "{:?}",
        r.text()
    );
    // Still dispatchable, and no attachments were stored.
    srv.get(&format!("/v1/job/{plain}/attachments"))
        .await
        .expect_no_content();

    let unknown = new_id();
    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{unknown}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 422, "unknown job; body {:?}", r.text());
    assert!(r.text().contains("is not valid"), "{:?}", r.text());

    // A cancelled job awaiting attachments is not waiting any more.
    let attached = srv
        .submit(&json!({"job_queue": "q", "provision_data": {"attachments": [{"agent": "img"}]}}))
        .await;
    srv.cancel(&attached).await.expect_status(200);
    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{attached}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 422, "cancelled job; body {:?}", r.text());

    let r = post_gzip_file(
        &http,
        "/v1/job/not-a-uuid/attachments",
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 400, "malformed id; body {:?}", r.text());
    srv.get("/v1/job/not-a-uuid/attachments")
        .await
        .expect_status(400);

    // firmware_update_data attachments also hold the job back.
    let fw = srv
        .submit(&json!({"job_queue": "fw", "firmware_update_data": {"attachments": [{"agent": "fw.bin"}]}}))
        .await;
    assert_eq!(srv.pop(&["fw"]).await, None);
    post_gzip_file(
        &http,
        &format!("/v1/job/{fw}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await
    .expect_status(200);
    assert_eq!(srv.pop_id(&["fw"]).await, Some(fw));
}

// ---- CLI: poll until complete -------------------------------------------------------------

#[tokio::test]
async fn poll_follows_state_position_and_new_fragments_when_cli_loop_runs_until_complete() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let ahead = srv.submit_to("q").await;
    let id = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "echo hi"}}))
        .await;

    // Once: the job and its result.
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(job_id_of(&shown), id);
    assert_eq!(srv.job_state(&id).await, "waiting");

    // Loop iteration 1: waiting, no output yet (every phase, -1), one job ahead.
    let log = get_log(&srv.http(), &id, "output", "start_fragment=0").await;
    assert_log_shape(&log, "output");
    for phase in LOG_PHASES {
        assert_eq!(log["output"][phase]["last_fragment_number"], -1, "{log}");
        assert_eq!(log["output"][phase]["log_data"], "", "{log}");
    }
    assert_eq!(next_start_fragment(&log, "output"), None);
    assert_eq!(position_of(&srv, &id).await, 1);

    // The job ahead goes; ours is next in line.
    assert_eq!(
        agent.pop(&["q"]).await.map(|j| job_id_of(&j)),
        Some(ahead.clone())
    );
    agent
        .post_result(&ahead, json!({"job_state": "complete"}))
        .await;
    assert_eq!(position_of(&srv, &id).await, 0);

    // The agent takes ours: position is 410 from now on.
    let job = agent.pop(&["q"]).await.expect("our job");
    assert_eq!(job_id_of(&job), id);
    assert_eq!(srv.job_state(&id).await, "running");
    let r = srv.position(&id).await;
    assert_eq!(
        r.status,
        410,
        "position of a running job; body {:?}",
        r.text()
    );

    // setup: fragment 0; provision: fragments 1, 2.
    assert!(agent.enter_phase(&id, "setup").await);
    agent
        .fragment(&id, "output", 0, "setup", 1, "setting up\n")
        .await;
    agent
        .post_result(&id, json!({"status": {"setup": 0}}))
        .await;
    assert!(agent.enter_phase(&id, "provision").await);
    agent
        .fragment(&id, "output", 1, "provision", 2, "provisioning\n")
        .await;

    // Loop iteration 2.
    assert_eq!(srv.job_state(&id).await, "provision");
    let mut start = 0;
    let log = get_log(
        &srv.http(),
        &id,
        "output",
        &format!("start_fragment={start}"),
    )
    .await;
    assert_log_shape(&log, "output");
    assert_eq!(log["output"]["setup"]["last_fragment_number"], 0);
    assert_eq!(log["output"]["provision"]["last_fragment_number"], 1);
    assert_eq!(log["output"]["test"]["last_fragment_number"], -1);
    assert_eq!(log_text(&log, "output"), "setting up\nprovisioning\n");
    start = next_start_fragment(&log, "output").expect("fragments seen");
    assert_eq!(start, 2);

    // More output, one fragment posted twice (the session retried the POST after a 5xx).
    agent
        .fragment(&id, "output", 2, "provision", 3, "provisioned\n")
        .await;
    agent
        .post_result(&id, json!({"status": {"setup": 0, "provision": 0}}))
        .await;
    assert!(agent.enter_phase(&id, "test").await);
    agent.fragment(&id, "output", 3, "test", 4, "hi\n").await;
    agent.fragment(&id, "output", 3, "test", 4, "hi\n").await;

    // Loop iteration 3: only what is new since `start`.
    assert_eq!(srv.job_state(&id).await, "test");
    let log = get_log(
        &srv.http(),
        &id,
        "output",
        &format!("start_fragment={start}"),
    )
    .await;
    assert_log_shape(&log, "output");
    assert_eq!(log["output"]["setup"]["last_fragment_number"], -1, "{log}");
    assert_eq!(log["output"]["setup"]["log_data"], "");
    assert_eq!(log["output"]["provision"]["last_fragment_number"], 2);
    assert_eq!(log["output"]["test"]["last_fragment_number"], 3);
    assert_eq!(
        log_text(&log, "output"),
        "provisioned\nhi\n",
        "duplicate stored once"
    );
    start = next_start_fragment(&log, "output").unwrap();
    assert_eq!(start, 4);

    // The agent finishes.
    agent
        .post_result(
            &id,
            json!({"status": {"setup": 0, "provision": 0, "test": 0}}),
        )
        .await;
    agent
        .post_result(
            &id,
            json!({"status": {"setup": 0, "provision": 0, "test": 0}, "job_state": "complete"}),
        )
        .await;

    // Loop iteration 4: complete ends the loop; nothing new, next start unchanged.
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "complete");
    assert_eq!(result["test_status"], 0);
    let log = get_log(
        &srv.http(),
        &id,
        "output",
        &format!("start_fragment={start}"),
    )
    .await;
    assert_log_shape(&log, "output");
    assert_eq!(log_text(&log, "output"), "");
    assert_eq!(next_start_fragment(&log, "output"), None);
    // Reads are not destructive: the whole log is still there.
    let log = get_log(&srv.http(), &id, "output", "start_fragment=0").await;
    assert_eq!(
        log_text(&log, "output"),
        "setting up\nprovisioning\nprovisioned\nhi\n"
    );
    assert_eq!(
        srv.result(&id).await["test_output"],
        "hi\n",
        "duplicate fragment stored once in the result view too"
    );
}

#[tokio::test]
async fn log_get_filters_by_fragment_timestamp_and_phase_when_cli_passes_them() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let id = srv.submit_to("q").await;
    agent.pop(&["q"]).await.expect("job");
    // Fragments 0..=5, one per second, setup/provision/test; serial separately.
    let plan = [
        (0, "setup", 10, "s0 "),
        (1, "setup", 11, "s1 "),
        (2, "provision", 12, "p2 "),
        (3, "provision", 13, "p3 "),
        (4, "test", 14, "t4 "),
        (5, "test", 15, "t5 "),
    ];
    // Posted out of order: reads are sorted by fragment number.
    for (n, phase, second, data) in plan.iter().rev() {
        agent
            .fragment(&id, "output", *n, phase, *second, data)
            .await;
    }
    agent
        .fragment(&id, "serial", 0, "test", 14, "serial-0 ")
        .await;
    agent
        .fragment(&id, "serial", 1, "test", 15, "serial-1 ")
        .await;

    let all = get_log(&srv.http(), &id, "output", "").await;
    assert_log_shape(&all, "output");
    assert_eq!(log_text(&all, "output"), "s0 s1 p2 p3 t4 t5 ");

    // start_fragment.
    let log = get_log(&srv.http(), &id, "output", "start_fragment=3").await;
    assert_log_shape(&log, "output");
    assert_eq!(log_text(&log, "output"), "p3 t4 t5 ");
    assert_eq!(log["output"]["setup"]["last_fragment_number"], -1);
    assert_eq!(log["output"]["provision"]["last_fragment_number"], 3);
    assert_eq!(log["output"]["test"]["last_fragment_number"], 5);
    let log = get_log(&srv.http(), &id, "output", "start_fragment=6").await;
    assert_eq!(next_start_fragment(&log, "output"), None);

    // start_timestamp, with an offset (encoded as `requests` does) or with Z.
    for ts in [
        "2026-01-01T00:00:13%2B00:00",
        "2026-01-01T00:00:13Z",
        "2026-01-01T00:00:13",
    ] {
        let log = get_log(&srv.http(), &id, "output", &format!("start_timestamp={ts}")).await;
        assert_log_shape(&log, "output");
        assert_eq!(
            log_text(&log, "output"),
            "p3 t4 t5 ",
            "start_timestamp={ts}"
        );
    }
    // An offset is honoured: 01:00:14+01:00 is 00:00:14 UTC.
    let log = get_log(
        &srv.http(),
        &id,
        "output",
        "start_timestamp=2026-01-01T01:00:14%2B01:00",
    )
    .await;
    assert_eq!(log_text(&log, "output"), "t4 t5 ");

    // phase: only that phase's entry.
    let log = get_log(&srv.http(), &id, "output", "phase=provision").await;
    let phases = log["output"].as_object().expect("object");
    assert_eq!(
        phases.keys().collect::<Vec<_>>(),
        vec!["provision"],
        "{log}"
    );
    assert_eq!(log["output"]["provision"]["log_data"], "p2 p3 ");
    assert_eq!(log["output"]["provision"]["last_fragment_number"], 3);
    let log = get_log(&srv.http(), &id, "output", "phase=firmware_update").await;
    assert_eq!(
        log,
        json!({"output": {"firmware_update": {"last_fragment_number": -1, "log_data": ""}}})
    );

    // All three together.
    let log = get_log(
        &srv.http(),
        &id,
        "output",
        "start_fragment=5&start_timestamp=2026-01-01T00:00:11Z&phase=test",
    )
    .await;
    assert_eq!(
        log,
        json!({"output": {"test": {"last_fragment_number": 5, "log_data": "t5 "}}})
    );

    // Serial is its own stream with its own numbering.
    let log = get_log(&srv.http(), &id, "serial", "start_fragment=1").await;
    assert_log_shape(&log, "serial");
    assert_eq!(log_text(&log, "serial"), "serial-1 ");
    assert_eq!(log["serial"]["test"]["last_fragment_number"], 1);

    // Bad values: 400 with a JSON message.
    for query in [
        "start_fragment=-1",
        "start_fragment=x",
        "start_fragment=1.5",
        "start_timestamp=yesterday",
        "start_timestamp=2026-13-01T00:00:00Z",
        "phase=bogus",
        "phase=waiting",
    ] {
        let r = srv
            .get(&format!("/v1/result/{id}/log/output?{query}"))
            .await;
        r.expect_error(400);
    }
    // Malformed id: 400.
    srv.get("/v1/result/nope/log/output")
        .await
        .expect_error(400);
    // Unknown job: 200 with every phase empty.
    let log = get_log(&srv.http(), &new_id(), "output", "start_fragment=0").await;
    assert_log_shape(&log, "output");
    assert_eq!(next_start_fragment(&log, "output"), None);
}

#[tokio::test]
async fn log_post_is_refused_with_422_when_fragment_fields_are_wrong() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let good = fragment_body(0, "test", 1, "x");
    for (field, value) in [
        ("fragment_number", json!("one")),
        ("fragment_number", json!(-1)),
        ("timestamp", json!("not a time")),
        ("phase", json!("bogus")),
        ("log_data", json!(5)),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let r = srv
            .post_json(&format!("/v1/result/{id}/log/output"), &body)
            .await;
        r.expect_error(422);
        assert!(
            r.json()["detail"].to_string().contains(field),
            "{field}={value}: detail should name the field: {}",
            r.text()
        );
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        let r = srv
            .post_json(&format!("/v1/result/{id}/log/output"), &body)
            .await;
        r.expect_error(422);
    }
    srv.post_json("/v1/result/nope/log/output", &good)
        .await
        .expect_error(400);
}

// ---- CLI: results, artifacts, cancel --------------------------------------------------------

#[tokio::test]
async fn results_show_state_phase_status_logs_and_device_info_when_agent_posted_them() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let id = srv.submit_to("q").await;
    agent.pop(&["q"]).await.expect("job");

    assert!(agent.enter_phase(&id, "setup").await);
    agent
        .post_result(
            &id,
            json!({"device_info": {"device_ip": "10.0.0.5", "serial": "abc"}}),
        )
        .await;
    agent.fragment(&id, "output", 0, "setup", 1, "one ").await;
    agent.fragment(&id, "output", 1, "setup", 2, "two").await;
    agent
        .fragment(&id, "serial", 0, "setup", 2, "console")
        .await;
    agent
        .post_result(&id, json!({"status": {"setup": 0}}))
        .await;
    assert!(agent.enter_phase(&id, "test").await);
    agent.fragment(&id, "output", 2, "test", 3, "ran").await;
    agent
        .post_result(&id, json!({"status": {"setup": 0, "test": 1}}))
        .await;

    // `results` / `status`.
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "test");
    assert_eq!(result["setup_status"], 0);
    assert_eq!(result["test_status"], 1);
    assert!(result.get("provision_status").is_none(), "{result}");
    assert_eq!(result["setup_output"], "one two");
    assert_eq!(result["setup_serial"], "console");
    assert_eq!(result["test_output"], "ran");
    assert_eq!(
        result["device_info"],
        json!({"device_ip": "10.0.0.5", "serial": "abc"})
    );

    // `status` is replaced wholesale by the cumulative post; a failed phase still ends `complete`.
    agent
        .post_result(
            &id,
            json!({"status": {"setup": 0, "test": 1, "cleanup": 0}, "job_state": "complete"}),
        )
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "complete");
    assert_eq!(result["cleanup_status"], 0);
    assert_eq!(result["test_status"], 1);

    // Unknown job: 204 "No results found"; malformed id: 400 JSON.
    srv.get(&format!("/v1/result/{}", new_id()))
        .await
        .expect_no_content();
    srv.get("/v1/result/xyz").await.expect_error(400);
}

#[tokio::test]
async fn artifacts_download_exact_bytes_when_agent_uploaded_them_and_204_before() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let id = srv.submit_to("q").await;
    agent.pop(&["q"]).await.expect("job");

    srv.get(&format!("/v1/result/{id}/artifact"))
        .await
        .expect_no_content();

    let artifact = fake_tar_gz(70_000, 11);
    let r = post_gzip_file(
        &agent.http,
        &format!("/v1/result/{id}/artifact"),
        "file",
        &artifact,
    )
    .await;
    r.expect_status(200);
    agent
        .post_result(&id, json!({"status": {"test": 0}, "job_state": "complete"}))
        .await;

    let r = srv.get(&format!("/v1/result/{id}/artifact")).await;
    r.expect_status(200);
    assert_eq!(r.body.len(), artifact.len());
    assert_eq!(
        r.body.as_ref(),
        artifact.as_slice(),
        "artifact bytes differ"
    );
    srv.get("/v1/result/bad-id/artifact")
        .await
        .expect_status(400);
}

#[tokio::test]
async fn cancel_answers_200_then_400_when_cli_cancels_twice() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    let id = srv.submit_to("q").await;
    let r = srv.cancel(&id).await;
    r.expect_status(200);
    assert_eq!(srv.job_state(&id).await, "cancelled");
    let r = srv.cancel(&id).await;
    assert_eq!(r.status, 400, "second cancel; body {:?}", r.text());
    // A cancelled waiting job is never popped.
    assert_eq!(srv.pop(&["q"]).await, None);
    // Malformed id: 400 ("invalid ID or already complete/cancelled").
    srv.cancel("not-an-id").await.expect_error(400);
    // Unknown id: upstream (OLD and HEAD) says 400; flinger documents 404 (README,
    // "supported differently"), still a JSON error the CLI prints.
    srv.cancel(&new_id()).await.expect_error(404);
    // Any other action: refused (HEAD 422, OLD 400), with a JSON message.
    let r = srv
        .post_json(
            &format!("/v1/job/{id}/action"),
            &json!({"action": "restart"}),
        )
        .await;
    assert!(
        r.status == 422 || r.status == 400,
        "bad action; got {}",
        r.status
    );
    r.expect_json_error();
}

// ---- CLI: queue-status, agent-status, list-queues, list-agents ------------------------------

#[tokio::test]
async fn queue_status_lists_agents_and_jobs_when_queue_has_both() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    let a = Agent::register(&srv, "dut-a", &["lab-q", "other"]).await;
    Agent::register(&srv, "dut-b", &["lab-q"]).await;
    Agent::register(&srv, "dut-c", &["elsewhere"]).await;

    let agents = srv.get("/v1/queues/lab-q/agents").await.expect_json();
    let mut names: Vec<(String, String)> = agents
        .as_array()
        .expect("list")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().expect("name").to_string(),
                a["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("dut-a".to_string(), "waiting".to_string()),
            ("dut-b".to_string(), "waiting".to_string())
        ]
    );

    // No jobs yet: 204.
    srv.get("/v1/queues/lab-q/jobs").await.expect_no_content();

    let j1 = srv.submit_to("lab-q").await;
    let j2 = srv.submit_to("lab-q").await;
    let j3 = srv.submit_to("lab-q").await;
    srv.submit_to("other-q").await;
    assert_eq!(
        a.pop(&["lab-q"]).await.map(|j| job_id_of(&j)),
        Some(j1.clone())
    );
    a.post_result(&j1, json!({"job_state": "test"})).await;
    a.post_data(json!({"state": "test", "comment": ""})).await;
    srv.cancel(&j3).await.expect_status(200);

    let jobs = srv.get("/v1/queues/lab-q/jobs").await.expect_json();
    let jobs = jobs.as_array().expect("list");
    assert_eq!(jobs.len(), 3, "every job of the queue, any state: {jobs:?}");
    for job in jobs {
        let keys: std::collections::BTreeSet<&str> = job
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in ["job_id", "created_at", "job_state", "job_queue"] {
            assert!(keys.contains(key), "{key} missing: {job}");
        }
        assert_iso_z(job["created_at"].as_str().expect("string created_at"));
        assert_eq!(job["job_queue"], "lab-q");
    }
    let state_of = |id: &str| {
        jobs.iter()
            .find(|j| j["job_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))["job_state"]
            .clone()
    };
    assert_eq!(state_of(&j1), "test");
    assert_eq!(state_of(&j2), "waiting");
    assert_eq!(state_of(&j3), "cancelled");

    // The agent's state as queue-status shows it.
    let agents = srv.get("/v1/queues/lab-q/agents").await.expect_json();
    let dut_a = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "dut-a")
        .expect("dut-a")
        .clone();
    assert_eq!(dut_a["state"], "test");

    // An agent that stops listing a queue no longer serves it.
    Agent::register(&srv, "dut-c", &["gone-q"]).await;
    srv.get("/v1/queues/gone-q/agents").await.expect_status(200);
    Agent::register(&srv, "dut-c", &["elsewhere"]).await;
    srv.get("/v1/queues/gone-q/agents").await.expect_error(404);

    // Unknown queue: 404 JSON with the message the CLI prints.
    let r = srv.get("/v1/queues/nope/agents").await;
    assert_eq!(r.expect_error(404), "Queue 'nope' does not exist.");
    srv.get("/v1/queues/nope/jobs").await.expect_no_content();
}

#[tokio::test]
async fn agent_status_reports_state_when_agent_is_known_and_404_when_not() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let data = srv.get("/v1/agents/data/dut-1").await.expect_json();
    assert_eq!(data["state"], "waiting");
    assert_eq!(data["name"], "dut-1");
    assert_eq!(data["queues"], json!(["q"]));
    assert_eq!(data["location"], "lab 1");
    assert!(data.get("log").is_none(), "log is not returned: {data}");
    assert_iso_z(data["updated_at"].as_str().expect("updated_at"));

    // The admin command: read state, then set maintenance with a comment.
    srv.post_json(
        "/v1/agents/data/dut-1",
        &json!({"state": "maintenance", "comment": "cable swap"}),
    )
    .await
    .expect_status(200);
    let data = agent.data().await;
    assert_eq!(data["state"], "maintenance");
    assert_eq!(data["comment"], "cable swap");
    assert_eq!(
        data["queues"],
        json!(["q"]),
        "fields are merged, not replaced"
    );

    let r = srv.get("/v1/agents/data/ghost").await;
    assert_eq!(r.status, 404, "unknown agent; body {:?}", r.text());
    // ...and it does not make the unknown agent exist.
    assert_eq!(srv.get("/v1/agents/data/ghost").await.status, 404);
}

#[tokio::test]
async fn list_queues_and_list_agents_show_what_agents_advertised_and_registered() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;
    assert_eq!(srv.get("/v1/agents/queues").await.expect_json(), json!({}));
    assert_eq!(srv.get("/v1/agents/data").await.expect_json(), json!([]));

    let agent = Agent::start(&srv, "dut-1").await;
    agent
        .post_json(
            "/v1/agents/queues",
            &json!({"lab-q": "Lab devices", "spare": "Spares"}),
        )
        .await
        .expect_status(200);
    agent
        .post_json(
            "/v1/agents/images",
            &json!({"lab-q": {"noble": "url: http://img/noble.img"}}),
        )
        .await
        .expect_status(200);
    agent
        .post_data(json!({"location": "rack 3", "queues": ["lab-q"], "provision_type": "maas"}))
        .await;
    Agent::register(&srv, "dut-2", &["spare"]).await;

    let queues = srv.get("/v1/agents/queues").await.expect_json();
    assert_eq!(queues, json!({"lab-q": "Lab devices", "spare": "Spares"}));
    let images = srv.get("/v1/agents/images/lab-q").await.expect_json();
    assert_eq!(images, json!({"noble": "url: http://img/noble.img"}));
    assert_eq!(
        srv.get("/v1/agents/images/none").await.expect_json(),
        json!({})
    );

    let all = srv.get("/v1/agents/data").await.expect_json();
    let all = all.as_array().expect("a list of agents");
    assert_eq!(all.len(), 2, "{all:?}");
    let one = all.iter().find(|a| a["name"] == "dut-1").expect("dut-1");
    assert_eq!(one["state"], "waiting");
    assert_eq!(one["location"], "rack 3");
    assert_eq!(one["provision_type"], "maas");
    assert_eq!(one["comment"], "");
    assert_eq!(one["queues"], json!(["lab-q"]));
    assert_iso_z(one["updated_at"].as_str().expect("updated_at"));
}

// ---- Agent: the whole cycle ----------------------------------------------------------------

#[tokio::test]
async fn agent_runs_full_cycle_when_sequence_of_upstream_agent_is_replayed() {
    let srv = TestServer::start();

    // Startup.
    let agent = Agent::start(&srv, "dut-7").await;
    agent
        .post_json("/v1/agents/queues", &json!({"lab-q": "Lab queue"}))
        .await
        .expect_status(200);
    agent
        .post_json(
            "/v1/agents/images",
            &json!({"lab-q": {"jammy": "distro: jammy"}}),
        )
        .await
        .expect_status(200);
    agent
        .post_data(json!({
            "location": "lab 2",
            "queues": ["lab-q", "spare-q"],
            "provision_type": "noprovision",
            "identifier": "serial-123",
        }))
        .await;

    // Main loop, idle.
    let r = agent.get("/v1").await;
    assert!(r.status < 500, "health check status {}", r.status);
    let data = agent.data().await;
    assert_eq!(data["state"], "waiting");
    assert_eq!(data["comment"], "");
    assert_iso_z(data["updated_at"].as_str().expect("updated_at"));
    assert!(
        data.get("restricted_to")
            .is_none_or(|r| r.as_object().is_some_and(|m| m.is_empty())),
        "no restricted queues: {data}"
    );
    agent
        .post_json("/v1/agents/queues", &json!({"lab-q": "Lab queue"}))
        .await
        .expect_status(200);
    let r = agent.get("/v1/job?queue=lab-q&queue=spare-q").await;
    r.expect_no_content();

    // A client submits; the agent's next poll gets it.
    let job = json!({
        "job_queue": "lab-q",
        "global_timeout": 3600,
        "output_timeout": 600,
        "provision_data": {"distro": "jammy"},
        "test_data": {"test_cmds": "echo hello", "test_username": "ubuntu"},
    });
    let id = srv.submit(&job).await;
    agent.data().await;
    let popped = agent.pop(&["lab-q", "spare-q"]).await.expect("a job");
    assert_eq!(job_id_of(&popped), id);
    assert_eq!(popped["job_queue"], "lab-q");
    assert_eq!(popped["global_timeout"], 3600);
    assert_eq!(popped["output_timeout"], 600);
    assert_eq!(popped["provision_data"], job["provision_data"]);
    assert_eq!(popped["test_data"], job["test_data"]);
    assert!(
        popped.get("attachments_status").is_none(),
        "no attachments: {popped}"
    );
    assert_eq!(srv.job_state(&id).await, "running");

    // Per job.
    agent.post_data(json!({"job_id": id})).await;
    assert_eq!(agent.data().await["job_id"], id.as_str());
    let mut fragment = 0;
    let mut status = serde_json::Map::new();
    for (n, phase) in [
        "setup",
        "provision",
        "firmware_update",
        "test",
        "allocate",
        "reserve",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            agent.enter_phase(&id, phase).await,
            "{phase}: not cancelled"
        );
        assert_eq!(
            srv.job_state(&id).await,
            phase,
            "the posted phase is the job state"
        );
        // Phases without data are skipped right after their state post.
        if !matches!(phase, "setup" | "provision" | "test") {
            continue;
        }
        for line in 0..2 {
            agent
                .fragment(
                    &id,
                    "output",
                    fragment,
                    phase,
                    (n * 10 + line) as u32,
                    &format!("{phase} line {line}\n"),
                )
                .await;
            fragment += 1;
        }
        if phase != "provision" {
            // The JobCancelledChecker's poll inside the phase.
            assert_eq!(agent.job_state(&id).await, phase);
        }
        status.insert(phase.into(), json!(0));
        agent.post_result(&id, json!({"status": status})).await;
        if phase == "provision" {
            agent
                .post_json(
                    "/v1/agents/provision_logs/dut-7",
                    &json!({"job_id": id, "exit_code": 0, "detail": "provision_end"}),
                )
                .await
                .expect_status(200);
        }
    }

    // cleanup (no state post), artifact, outcome.
    status.insert("cleanup".into(), json!(0));
    let artifact = fake_tar_gz(5000, 99);
    post_gzip_file(
        &agent.http,
        &format!("/v1/result/{id}/artifact"),
        "file",
        &artifact,
    )
    .await
    .expect_status(200);
    agent
        .post_result(&id, json!({"status": status, "job_state": "complete"}))
        .await;

    // After the job.
    assert!(agent.get("/v1").await.status < 500);
    agent.post_data(json!({"job_id": ""})).await;
    agent.data().await;
    agent
        .post_data(json!({"state": "waiting", "comment": ""}))
        .await;
    assert_eq!(agent.pop(&["lab-q", "spare-q"]).await, None);

    // What everyone sees afterwards.
    let data = agent.data().await;
    assert_eq!(data["state"], "waiting");
    assert_eq!(data["job_id"], "");
    assert_eq!(data["identifier"], "serial-123");
    assert_eq!(data["provision_streak_type"], "pass");
    assert_eq!(data["provision_streak_count"], 1);
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "complete");
    for phase in ["setup", "provision", "test", "cleanup"] {
        assert_eq!(result[format!("{phase}_status")], 0, "{result}");
    }
    assert_eq!(result["test_output"], "test line 0\ntest line 1\n");
    assert_eq!(
        result["provision_output"],
        "provision line 0\nprovision line 1\n"
    );
    let r = srv.get(&format!("/v1/result/{id}/artifact")).await;
    r.expect_status(200);
    assert_eq!(r.body.as_ref(), artifact.as_slice());
    let r = srv.cancel(&id).await;
    assert_eq!(r.status, 400, "a complete job cannot be cancelled");
    let jobs = srv.get("/v1/queues/lab-q/jobs").await.expect_json();
    assert_eq!(jobs[0]["job_state"], "complete");

    // Provision logs of an unknown agent: 404.
    let r = srv
        .post_json(
            "/v1/agents/provision_logs/ghost",
            &json!({"job_id": id, "exit_code": 1, "detail": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "unknown agent; body {:?}", r.text());
}

#[tokio::test]
async fn pop_never_gives_job_to_agent_when_exclude_agents_names_it() {
    let srv = TestServer::start();
    let a = Agent::register(&srv, "dut-a", &["q"]).await;
    let b = Agent::register(&srv, "dut-b", &["q"]).await;
    let excluded = srv
        .submit(&json!({"job_queue": "q", "exclude_agents": ["dut-a"]}))
        .await;
    assert_eq!(a.pop(&["q"]).await, None, "dut-a is excluded");
    assert_eq!(a.pop(&["q"]).await, None, "still excluded");
    // A later job for anyone goes to dut-a meanwhile.
    let open = srv.submit_to("q").await;
    assert_eq!(
        a.pop(&["q"]).await.map(|j| job_id_of(&j)),
        Some(open.clone())
    );
    a.post_result(&open, json!({"job_state": "setup"})).await;
    assert_eq!(a.pop(&["q"]).await, None);
    let job = b.pop(&["q"]).await.expect("dut-b may run it");
    assert_eq!(job_id_of(&job), excluded);
    assert_eq!(job["exclude_agents"], json!(["dut-a"]));
}

// ---- Cancellation noticed mid-phase --------------------------------------------------------

#[tokio::test]
async fn job_stays_cancelled_when_agent_posts_complete_after_cancel_mid_test() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let id = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "sleep 1000"}}))
        .await;
    assert_eq!(
        agent.pop(&["q"]).await.map(|j| job_id_of(&j)),
        Some(id.clone())
    );
    agent.post_data(json!({"job_id": id})).await;
    assert!(agent.enter_phase(&id, "setup").await);
    agent
        .post_result(&id, json!({"status": {"setup": 0}}))
        .await;
    assert!(agent.enter_phase(&id, "test").await);
    agent
        .fragment(&id, "output", 0, "test", 1, "sleeping\n")
        .await;

    // The client cancels while the agent is in `test`.
    srv.cancel(&id).await.expect_status(200);
    assert_eq!(
        srv.job_state(&id).await,
        "cancelled",
        "the CLI's poll stops here"
    );

    // The agent's checker notices, kills the command, reports.
    assert_eq!(agent.job_state(&id).await, "cancelled");
    agent
        .fragment(
            &id,
            "output",
            1,
            "test",
            2,
            "\nJob cancellation was requested, exiting.\n",
        )
        .await;
    agent
        .post_result(&id, json!({"status": {"setup": 0, "test": -9}}))
        .await;
    // Before the next phase it checks again and stops.
    assert!(!agent.enter_phase(&id, "allocate").await);
    agent
        .post_result(
            &id,
            json!({"status": {"setup": 0, "test": -9, "cleanup": 0}, "job_state": "complete"}),
        )
        .await;

    let result = srv.result(&id).await;
    assert_eq!(
        result["job_state"], "cancelled",
        "terminal states are sticky: {result}"
    );
    assert_eq!(result["test_status"], -9, "the outcome is still recorded");
    assert_eq!(
        result["test_output"],
        "sleeping\n\nJob cancellation was requested, exiting.\n"
    );
    // Later phase posts do not revive it either.
    agent
        .post_result(&id, json!({"job_state": "reserve"}))
        .await;
    assert_eq!(srv.job_state(&id).await, "cancelled");
    let jobs = srv.get("/v1/queues/q/jobs").await.expect_json();
    assert_eq!(jobs[0]["job_state"], "cancelled");
    let found = srv
        .get("/v1/job/search?state=cancelled")
        .await
        .expect_json();
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == id.as_str()),
        "{found}"
    );
    srv.cancel(&id).await.expect_status(400);

    // The agent resets and polls again: nothing.
    agent.post_data(json!({"job_id": ""})).await;
    agent
        .post_data(json!({"state": "waiting", "comment": ""}))
        .await;
    assert_eq!(agent.pop(&["q"]).await, None);
}

// ---- Retried pops --------------------------------------------------------------------------

#[tokio::test]
async fn pop_returns_same_job_when_agent_retries_before_reporting_on_it() {
    let srv = TestServer::start();
    let a = Agent::register(&srv, "dut-a", &["q"]).await;
    let b = Agent::register(&srv, "dut-b", &["q"]).await;
    let j1 = srv.submit_to("q").await;
    let j2 = srv.submit_to("q").await;
    let j3 = srv.submit_to("q").await;

    let first = a.pop(&["q"]).await.expect("job");
    assert_eq!(job_id_of(&first), j1);
    // The response was lost; urllib3 repeats the GET.
    let again = a.pop(&["q"]).await.expect("same job again");
    assert_eq!(again, first, "a retried pop returns the same job");
    // Another agent is not given it.
    assert_eq!(b.pop(&["q"]).await.map(|j| job_id_of(&j)), Some(j2.clone()));
    // Registering the job with the agent record is not a report on the job.
    a.post_data(json!({"job_id": j1})).await;
    assert_eq!(a.pop(&["q"]).await.map(|j| job_id_of(&j)), Some(j1.clone()));

    // Once it posts a state, its next pop is a new job.
    a.post_result(&j1, json!({"job_state": "setup"})).await;
    assert_eq!(a.pop(&["q"]).await.map(|j| job_id_of(&j)), Some(j3.clone()));
    a.post_result(&j3, json!({"job_state": "complete"})).await;
    assert_eq!(a.pop(&["q"]).await, None);
    assert_eq!(srv.job_state(&j1).await, "setup");

    // A pop without a cookie (old agents) is allowed and never a "retry".
    let j4 = srv.submit_to("q").await;
    let j5 = srv.submit_to("q").await;
    let r = srv.get("/v1/job?queue=q").await;
    assert_eq!(job_id_of(&r.expect_json()), j4);
    let r = srv.get("/v1/job?queue=q").await;
    assert_eq!(job_id_of(&r.expect_json()), j5);
    srv.get("/v1/job?queue=q").await.expect_no_content();
}

// ---- Priority and validation ---------------------------------------------------------------

#[tokio::test]
async fn pop_takes_higher_priority_first_across_queues_then_submission_order() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["a", "b"]).await;
    let a1 = srv.submit(&json!({"job_queue": "a"})).await;
    let b1 = srv
        .submit(&json!({"job_queue": "b", "job_priority": 5}))
        .await;
    let a2 = srv
        .submit(&json!({"job_queue": "a", "job_priority": 5}))
        .await;
    let b2 = srv
        .submit(&json!({"job_queue": "b", "job_priority": 0}))
        .await;
    let a3 = srv
        .submit(&json!({"job_queue": "a", "job_priority": 9}))
        .await;
    let a4 = srv
        .submit(&json!({"job_queue": "a", "job_priority": -1}))
        .await;

    // Positions within a queue account for priority.
    assert_eq!(position_of(&srv, &a3).await, 0);
    assert_eq!(position_of(&srv, &a2).await, 1);
    assert_eq!(position_of(&srv, &a1).await, 2);
    assert_eq!(position_of(&srv, &a4).await, 3);
    assert_eq!(position_of(&srv, &b1).await, 0);
    assert_eq!(position_of(&srv, &b2).await, 1);

    let mut got = Vec::new();
    for _ in 0..6 {
        let job = agent.pop(&["b", "a"]).await.expect("job");
        let id = job_id_of(&job);
        agent
            .post_result(&id, json!({"job_state": "complete"}))
            .await;
        got.push(id);
    }
    assert_eq!(got, vec![a3, b1, a2, a1, b2, a4.clone()]);
    assert_eq!(agent.pop(&["a", "b"]).await, None);
    let r = srv.position(&a4).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn submit_is_refused_with_422_naming_the_field_when_known_fields_have_wrong_types() {
    let srv = TestServer::start();
    for (job, field) in [
        (
            json!({"job_queue": "q", "job_priority": "x"}),
            "job_priority",
        ),
        (
            json!({"job_queue": "q", "job_priority": true}),
            "job_priority",
        ),
        (
            json!({"job_queue": "q", "exclude_agents": "a"}),
            "exclude_agents",
        ),
        (
            json!({"job_queue": "q", "exclude_agents": [1]}),
            "exclude_agents",
        ),
        (json!({"job_queue": "q", "tags": "x"}), "tags"),
        (
            json!({"job_queue": "q", "global_timeout": "long"}),
            "global_timeout",
        ),
        (json!({"job_queue": "q", "test_data": "echo"}), "test_data"),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": "soon"}}),
            "reserve_data",
        ),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": -5}}),
            "reserve_data",
        ),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": ""}}),
            "reserve_data",
        ),
    ] {
        let r = srv.post_json("/v1/job", &job).await;
        r.expect_error(422);
        let body = r.json();
        let detail = &body["detail"];
        assert!(
            detail["json"].get(field).is_some(),
            "{job}: detail should name {field}: {body}"
        );
        if field == "reserve_data" {
            assert!(detail.to_string().contains("timeout"), "{job}: {body}");
        }
    }
    // Nothing was queued by the refused submissions.
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn reserve_timeout_is_stored_as_seconds_and_unknown_fields_reach_agent_when_submitted() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let job = json!({
        "job_queue": "q",
        "reserve_data": {"ssh_keys": ["lp:someone"], "timeout": "1h30m"},
        "provision_data": {"distro": "noble"},
        "my_lab_extension": {"power": ["pdu-1", 4]},
        "tags": ["nightly"],
    });
    let id = srv.submit(&job).await;
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(shown["reserve_data"]["timeout"], 5400);
    assert_eq!(shown["reserve_data"]["ssh_keys"], json!(["lp:someone"]));
    let popped = agent.pop(&["q"]).await.expect("job");
    assert_eq!(popped["reserve_data"]["timeout"], 5400);
    assert_eq!(popped["my_lab_extension"], json!({"power": ["pdu-1", 4]}));
    assert_eq!(popped["tags"], json!(["nightly"]));

    for (timeout, seconds) in [
        (json!("30m"), 1800),
        (json!("2d"), 172_800),
        (json!("1800s"), 1800),
        (json!("1800"), 1800),
        (json!(600), 600),
    ] {
        let id = srv
            .submit(&json!({"job_queue": "r", "reserve_data": {"timeout": timeout}}))
            .await;
        let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        assert_eq!(
            shown["reserve_data"]["timeout"], seconds,
            "timeout {timeout}"
        );
    }
}

// ---- Search and wait times -----------------------------------------------------------------

#[tokio::test]
async fn job_search_filters_by_tags_match_and_state_and_honours_limit() {
    let srv = TestServer::start();
    let ab = srv
        .submit(&json!({"job_queue": "q", "tags": ["a", "b"]}))
        .await;
    let a = srv.submit(&json!({"job_queue": "q", "tags": ["a"]})).await;
    let b = srv.submit(&json!({"job_queue": "q", "tags": ["b"]})).await;
    let ab_cancelled = srv
        .submit(&json!({"job_queue": "q", "tags": ["a", "b", "c"]}))
        .await;
    let untagged = srv.submit_to("q").await;
    srv.cancel(&ab_cancelled).await.expect_status(200);

    let ids = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a JSON list: {v}"))
            .iter()
            .map(job_id_of)
            .collect()
    };
    let set = |xs: &[&String]| -> std::collections::BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    };

    let all = srv
        .get("/v1/job/search?tags=a&tags=b&match=all")
        .await
        .expect_json();
    assert_eq!(ids(&all), set(&[&ab, &ab_cancelled]));
    for entry in all.as_array().unwrap() {
        assert_iso_z(entry["created_at"].as_str().expect("created_at"));
        assert!(entry["job_state"].is_string(), "{entry}");
    }
    let active = srv
        .get("/v1/job/search?tags=a&match=all&state=active")
        .await
        .expect_json();
    assert_eq!(ids(&active), set(&[&ab, &a]));
    let active_ab = srv
        .get("/v1/job/search?tags=a&tags=b&match=all&state=active")
        .await
        .expect_json();
    assert_eq!(ids(&active_ab), set(&[&ab]));
    let any = srv
        .get("/v1/job/search?tags=a&tags=b&match=any")
        .await
        .expect_json();
    assert_eq!(ids(&any), set(&[&ab, &a, &b, &ab_cancelled]));
    let default_any = srv.get("/v1/job/search?tags=a&tags=b").await.expect_json();
    assert_eq!(ids(&default_any), ids(&any));
    let cancelled = srv
        .get("/v1/job/search?state=cancelled")
        .await
        .expect_json();
    assert_eq!(ids(&cancelled), set(&[&ab_cancelled]));
    let everything = srv.get("/v1/job/search").await.expect_json();
    assert_eq!(
        ids(&everything),
        set(&[&ab, &a, &b, &ab_cancelled, &untagged])
    );

    // limit caps the answer.
    let limited = srv.get("/v1/job/search?tags=a&limit=2").await.expect_json();
    assert_eq!(limited.as_array().unwrap().len(), 2, "{limited}");
    assert!(ids(&limited).is_subset(&ids(&srv.get("/v1/job/search?tags=a").await.expect_json())));
    let one = srv.get("/v1/job/search?limit=1").await.expect_json();
    assert_eq!(one.as_array().unwrap().len(), 1);

    // Bad match/state: 422 as upstream.
    srv.get("/v1/job/search?match=some").await.expect_error(422);
    srv.get("/v1/job/search?state=bogus")
        .await
        .expect_error(422);
}

#[tokio::test]
async fn wait_times_report_percentiles_per_queue_when_jobs_were_dispatched() {
    let srv = TestServer::start();
    assert_eq!(
        srv.get("/v1/queues/wait_times").await.expect_json(),
        json!({})
    );
    let agent = Agent::register(&srv, "dut-1", &["a", "b", "c"]).await;
    for q in ["a", "a", "a", "b"] {
        srv.submit_to(q).await;
    }
    srv.submit_to("c").await; // never dispatched: no data
    for q in ["a", "a", "a", "b"] {
        let id = job_id_of(&agent.pop(&[q]).await.expect("job"));
        agent
            .post_result(&id, json!({"job_state": "complete"}))
            .await;
    }
    let all = srv.get("/v1/queues/wait_times").await.expect_json();
    let map = all.as_object().expect("object");
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["a", "b"],
        "queues without data are omitted: {all}"
    );
    for stats in map.values() {
        let stats = stats.as_object().expect("per-queue object");
        let mut pcts: Vec<&String> = stats.keys().collect();
        pcts.sort_by_key(|k| k.parse::<u32>().unwrap_or(u32::MAX));
        assert_eq!(pcts, vec!["5", "10", "50", "90", "95"], "{all}");
        for v in stats.values() {
            let secs = v
                .as_f64()
                .unwrap_or_else(|| panic!("a number of seconds: {v}"));
            assert!((0.0..60.0).contains(&secs), "{all}");
        }
    }
    let only = srv
        .get("/v1/queues/wait_times?queue=b&queue=c")
        .await
        .expect_json();
    let keys: Vec<&String> = only.as_object().expect("object").keys().collect();
    assert_eq!(keys, vec!["b"], "{only}");
}

#[tokio::test]
async fn job_search_route_wins_when_path_could_be_a_job_id() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q", "tags": ["t"]})).await;
    let r = srv.get("/v1/job/search").await;
    let list = r.expect_json();
    assert!(
        list.is_array(),
        "search answers a list, not a job or an id error: {list}"
    );
    let r = srv.get("/v1/job/search?tags=t").await;
    assert_eq!(r.expect_json()[0]["job_id"], id.as_str());
    // The parameterised routes still work around it.
    assert_eq!(
        job_id_of(&srv.get(&format!("/v1/job/{id}")).await.expect_json()),
        id
    );
    srv.get("/v1/job/searc").await.expect_error(400);
}
