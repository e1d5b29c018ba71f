//! Current upstream clients, replayed request by request: `testflinger-cli` (`submit` with an
//! attachment, `poll`, `results`, `artifacts`, `cancel`, `queue-status`, `agent-status`,
//! `list-queues`, `list-agents`) and `testflinger-agent` (register with the `agent_name`
//! cookie, advertise, pop, phases with state posts, log fragments, cancellation noticed
//! mid-phase, artifact, final outcome). Bodies, headers and status codes follow
//! `shared/reference/testflinger-api.md` §2 (what the server answers) and §3 (what the
//! clients send and read).
//!
//! This file holds what the clients send (the helpers every module uses); the tests are in
//! one module per client command or agent stage.

use serde_json::{json, Value};

use crate::util::{pop_path, pseudo_random_bytes, Http, Resp, TestServer};

// CLI `submit` with an attachment, and submit-time validation of job fields.
mod submit;
// CLI `poll` until complete, and the log reads and writes it relies on.
mod poll;
// CLI `results`, `artifacts`, `cancel`.
mod results;
// CLI `queue-status`, `agent-status`, `list-queues`, `list-agents`.
mod status;
// The agent: the whole cycle, exclusions, cancellation mid-phase, retried pops, priority.
mod agent;
// Job search and queue wait times.
mod search;

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
