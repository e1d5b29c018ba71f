//! Access control (issue 9): the route × role table over real HTTP for every role and
//! anonymous callers, the three submission checks, job ownership, the token lifecycle,
//! restart survival, secrets never on disk in clear, the safe default off loopback, and
//! the real upstream CLI and agent against a server with access control on.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::util::{new_id, run_to_exit, upstream, Opts, Resp, TestServer};

/// The signing key the test servers get, so tests can forge tokens.
const KEY: &str = "test-signing-key-0123456789abcdef";

/// A server with access control on and an admin made with `flinger client add`.
struct Lab {
    srv: TestServer,
    /// The admin's client id and secret.
    admin: (String, String),
}

/// The secret `flinger client add` printed.
fn printed_secret(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap_or_else(|| panic!("no client_secret line in {stdout:?}"))
        .trim()
        .to_owned()
}

/// Runs `flinger --data-dir DATA client ARGS...` to completion; its stdout.
fn client_command(srv: &TestServer, args: &[&str]) -> String {
    let data = srv.data_dir().display().to_string();
    let mut all = vec!["--data-dir", data.as_str(), "client"];
    all.extend_from_slice(args);
    let out = run_to_exit(srv.dir(), &all, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "flinger client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    fn start(extra: &[&str]) -> Lab {
        Lab::start_env(extra, &[])
    }

    fn start_env(extra: &[&str], envs: &[(&str, &str)]) -> Lab {
        let mut args = vec!["--access-control", "on"];
        args.extend_from_slice(extra);
        let mut envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        envs.push(("FLINGER_JWT_SIGNING_KEY".into(), KEY.into()));
        let mut srv = TestServer::start_opts(Opts {
            args: args.iter().map(|s| s.to_string()).collect(),
            envs,
            ..Opts::default()
        });
        srv.stop();
        let secret = printed_secret(&client_command(&srv, &["add", "root", "--role", "admin"]));
        srv.start_again();
        Lab {
            srv,
            admin: ("root".into(), secret),
        }
    }

    async fn admin_token(&self) -> String {
        access_token(&self.srv, &self.admin.0, &self.admin.1).await
    }

    /// Creates (or updates) a client through the API as the admin; returns its secret.
    async fn client(&self, id: &str, role: &str, extra: Value) -> String {
        let secret = format!("secret-of-{id}-0123456789");
        let mut body = json!({"client_secret": secret, "role": role});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let admin = self.admin_token().await;
        let r = call(
            &self.srv,
            "PUT",
            &format!("/v1/client-permissions/{id}"),
            Some(&admin),
            None,
            Some(&body),
        )
        .await;
        r.expect_status(200);
        secret
    }

    /// A client's access token (created first).
    async fn token_for(&self, id: &str, role: &str, extra: Value) -> String {
        let secret = self.client(id, role, extra).await;
        access_token(&self.srv, id, &secret).await
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// `POST /v1/oauth2/token` with HTTP Basic credentials.
async fn token_request(srv: &TestServer, id: &str, secret: &str) -> Resp {
    srv.request(
        "POST",
        "/v1/oauth2/token",
        &[("authorization", &basic(id, secret))],
        Vec::new(),
    )
    .await
}

async fn access_token(srv: &TestServer, id: &str, secret: &str) -> String {
    let v = token_request(srv, id, secret).await.expect_json();
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// One request with an optional bearer token, agent cookie and JSON body.
async fn call(
    srv: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let cookie = cookie.map(|c| format!("agent_name={c}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    if let Some(c) = &cookie {
        headers.push(("cookie", c));
    }
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    srv.request(method, path, &headers, body).await
}

fn fragment(n: u64) -> Value {
    json!({"fragment_number": n, "timestamp": "2026-01-01T00:00:00+00:00", "phase": "test", "log_data": "x"})
}

/// Upstream's role matrix (permissions.json) plus flinger's own routes: (method, path,
/// roles allowed). `{id}` is a job dispatched to the agent under test, `{q}` a queue.
const MATRIX: &[(&str, &str, &str)] = &[
    ("GET", "/v1/agents/data", "contributor manager admin"),
    ("POST", "/v1/agents/data/lab-agent", "agent manager admin"),
    (
        "GET",
        "/v1/agents/data/lab-agent",
        "agent contributor manager admin",
    ),
    ("POST", "/v1/agents/images", "agent manager admin"),
    ("GET", "/v1/agents/images/{q}", "contributor manager admin"),
    ("POST", "/v1/agents/provision_logs/lab-agent", "agent"),
    ("POST", "/v1/agents/queues", "agent manager admin"),
    ("GET", "/v1/agents/queues", "contributor manager admin"),
    ("DELETE", "/v1/client-permissions/nobody", "admin"),
    ("GET", "/v1/client-permissions/nobody", "manager admin"),
    ("PUT", "/v1/client-permissions/nobody", "manager admin"),
    ("GET", "/v1/client-permissions", "manager admin"),
    ("GET", "/v1/job?queue={q}", "agent"),
    ("POST", "/v1/job", "contributor manager admin"),
    ("GET", "/v1/job/{id}", "contributor manager admin"),
    ("GET", "/v1/job/{id}/attachments", "agent"),
    (
        "POST",
        "/v1/job/{id}/attachments",
        "contributor manager admin",
    ),
    ("GET", "/v1/job/{id}/position", "contributor manager admin"),
    ("GET", "/v1/job/search", "contributor manager admin"),
    ("POST", "/v1/oauth2/revoke", "admin"),
    ("GET", "/v1/queues/{q}/agents", "contributor manager admin"),
    ("GET", "/v1/queues/{q}/jobs", "contributor manager admin"),
    ("GET", "/v1/queues/wait_times", "contributor manager admin"),
    ("GET", "/v1/restricted-queues", "contributor manager admin"),
    (
        "GET",
        "/v1/restricted-queues/{q}",
        "contributor manager admin",
    ),
    ("DELETE", "/v1/restricted-queues/{q}", "manager admin"),
    ("POST", "/v1/restricted-queues/{q}", "manager admin"),
    ("POST", "/v1/result/{id}", "agent"),
    ("GET", "/v1/result/{id}", "agent contributor manager admin"),
    ("POST", "/v1/result/{id}/artifact", "agent"),
    (
        "GET",
        "/v1/result/{id}/artifact",
        "contributor manager admin",
    ),
    ("POST", "/v1/result/{id}/log/output", "agent"),
    (
        "GET",
        "/v1/result/{id}/log/output",
        "contributor manager admin",
    ),
    ("POST", "/v1/result/{id}/output", "agent"),
    ("GET", "/v1/result/{id}/output", "contributor manager admin"),
    ("POST", "/v1/job/{id}/action", "contributor manager admin"),
    ("POST", "/v1/job/{id}/events", "agent"),
    (
        "GET",
        "/v1/job/{id}/events",
        "agent contributor manager admin",
    ),
    ("GET", "/v1", "public"),
    ("GET", "/v1/", "public"),
    ("GET", "/", "public"),
    ("POST", "/v1/oauth2/refresh", "public"),
    ("POST", "/v1/oauth2/token", "public"),
    (
        "PUT",
        "/v1/secrets/lab-agent/some/path",
        "contributor manager admin",
    ),
    (
        "DELETE",
        "/v1/secrets/lab-agent/some/path",
        "contributor manager admin",
    ),
    // flinger's own: metrics, the API document, the dashboard (pages show what the JSON
    // reads they mirror show). The log follow stream is left out: it holds the request
    // open while the job runs.
    ("GET", "/metrics", "contributor manager admin"),
    ("GET", "/openapi.json", "public"),
    ("GET", "/static/dash.css", "public"),
    ("GET", "/queues", "contributor manager admin"),
    ("GET", "/queues/{q}", "contributor manager admin"),
    ("GET", "/agents", "contributor manager admin"),
    ("GET", "/agents/lab-agent", "contributor manager admin"),
    ("GET", "/jobs", "contributor manager admin"),
    ("GET", "/jobs/{id}", "contributor manager admin"),
    // flinger's operator route (loopback-only with access control off); last, as the
    // admin's call deletes the job the rows above use.
    ("DELETE", "/v1/job/{id}", "admin"),
];

const TOKEN_ROUTE: &str = "/v1/oauth2/token";

/// A body each route accepts far enough to get past access control.
fn body_for(method: &str, path: &str, queue: &str, job: &str) -> Option<Value> {
    if method == "GET" || method == "DELETE" && !path.contains("restricted") {
        return None;
    }
    Some(if path.contains("/log/") {
        fragment(1)
    } else if path == "/v1/job" {
        json!({"job_queue": queue})
    } else if path.contains("provision_logs") {
        json!({"job_id": job, "exit_code": 0})
    } else if path.contains("/action") {
        json!({"action": "cancel"})
    } else {
        json!({})
    })
}

#[tokio::test]
async fn every_endpoint_admits_exactly_its_roles_when_access_control_is_on() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let queue = "matrix-q";
    let agent = lab.token_for("lab-agent", "agent", json!({})).await;
    let callers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("agent", Some(agent.clone())),
        (
            "contributor",
            Some(lab.token_for("lab-contrib", "contributor", json!({})).await),
        ),
        (
            "manager",
            Some(lab.token_for("lab-manager", "manager", json!({})).await),
        ),
        ("admin", Some(lab.admin_token().await)),
    ];
    // A job dispatched to the agent under test, so its per-job checks pass.
    call(
        srv,
        "POST",
        "/v1/agents/data/lab-agent",
        Some(&agent),
        None,
        Some(&json!({"queues": [queue]})),
    )
    .await
    .expect_status(200);
    let id = srv.submit_to(queue).await;
    let popped = call(
        srv,
        "GET",
        &format!("/v1/job?queue={queue}"),
        Some(&agent),
        Some("lab-agent"),
        None,
    )
    .await;
    assert_eq!(popped.expect_json()["job_id"], id.as_str());
    let mut checked = 0;
    for (method, template, allowed) in MATRIX {
        let path = template.replace("{id}", &id).replace("{q}", queue);
        for (role, token) in &callers {
            let body = body_for(method, &path, queue, &id);
            let r = call(
                srv,
                method,
                &path,
                token.as_deref(),
                Some("lab-agent"),
                body.as_ref(),
            )
            .await;
            // With access control `on`, a caller without a token is a contributor.
            let acting = if *role == "anonymous" {
                "contributor"
            } else {
                role
            };
            let admitted = *allowed == "public" || allowed.split(' ').any(|a| a == acting);
            if *template == TOKEN_ROUTE {
                // Public, and without Basic credentials its own handler says 401.
                r.expect_error(401);
            } else if admitted {
                assert!(
                    ![401, 403, 405, 500].contains(&r.status),
                    "{role} should be admitted to {method} {template}: {} {:?}",
                    r.status,
                    r.text_preview()
                );
            } else {
                let message = r.expect_error(403);
                assert!(
                    message.starts_with("Specified action requires role: "),
                    "{role} {method} {template}: {message}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, MATRIX.len() * 5);
}

#[tokio::test]
async fn anonymous_callers_get_401_everywhere_but_public_routes_when_access_control_is_strict() {
    let mut srv = TestServer::start_with(&["--access-control", "strict"]);
    for (method, template, allowed) in MATRIX {
        let path = template.replace("{id}", &new_id()).replace("{q}", "q");
        let body = body_for(method, &path, "q", &new_id());
        let r = call(&srv, method, &path, None, Some("a"), body.as_ref()).await;
        if *template == TOKEN_ROUTE {
            assert_eq!(r.expect_error(401), "No authorization header specified");
        } else if *allowed == "public" {
            assert!(
                ![401, 403].contains(&r.status),
                "{method} {path}: {}",
                r.status
            );
        } else {
            assert_eq!(
                r.expect_error(401),
                "Authentication is required for specified endpoint",
                "{method} {path}"
            );
        }
    }
    srv.stop();
}

#[tokio::test]
async fn submission_is_checked_for_priority_restricted_queue_and_reservation_when_access_control_is_on(
) {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab
        .token_for(
            "alice",
            "contributor",
            json!({"max_priority": {"*": 10, "fast": 50}, "max_reservation_time": {"*": 30000}}),
        )
        .await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let admin = lab.admin_token().await;
    let submit = |token: Option<String>, job: Value| async move {
        call(srv, "POST", "/v1/job", token.as_deref(), None, Some(&job)).await
    };
    // Priority: anonymous 401, capped by `*` and per queue.
    let m = submit(None, json!({"job_queue": "q", "job_priority": 5}))
        .await
        .expect_error(401);
    assert_eq!(m, "Authentication required for setting priority: 5");
    submit(
        Some(alice.clone()),
        json!({"job_queue": "q", "job_priority": 10}),
    )
    .await
    .expect_status(200);
    let m = submit(
        Some(alice.clone()),
        json!({"job_queue": "q", "job_priority": 11}),
    )
    .await
    .expect_error(403);
    assert_eq!(m, "Not enough permissions to push to q with priority 11");
    submit(
        Some(alice.clone()),
        json!({"job_queue": "fast", "job_priority": 50}),
    )
    .await
    .expect_status(200);
    submit(
        Some(bob.clone()),
        json!({"job_queue": "q", "job_priority": 1}),
    )
    .await
    .expect_error(403);
    // Restricted queue: needs an agent serving it; then only its owners may submit.
    let agent = lab.token_for("rq-agent", "agent", json!({})).await;
    let restrict = call(
        srv,
        "POST",
        "/v1/restricted-queues/rq",
        Some(&admin),
        None,
        Some(&json!({"client_id": "alice"})),
    )
    .await;
    assert_eq!(
        restrict.expect_error(404),
        "Error: No agent is associated with the specified queue."
    );
    call(
        srv,
        "POST",
        "/v1/agents/data/rq-agent",
        Some(&agent),
        None,
        Some(&json!({"queues": ["rq"]})),
    )
    .await
    .expect_status(200);
    call(
        srv,
        "POST",
        "/v1/restricted-queues/rq",
        Some(&admin),
        None,
        Some(&json!({"client_id": "alice"})),
    )
    .await
    .expect_status(200);
    let owners = call(
        srv,
        "GET",
        "/v1/restricted-queues/rq",
        Some(&bob),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(owners, json!({"queue": "rq", "owners": ["alice"]}));
    let data = call(
        srv,
        "GET",
        "/v1/agents/data/rq-agent",
        Some(&bob),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(data["restricted_to"], json!({"rq": ["alice"]}));
    let m = submit(None, json!({"job_queue": "rq"}))
        .await
        .expect_error(401);
    assert_eq!(m, "Authentication required to push to restricted queue: rq");
    let m = submit(Some(bob.clone()), json!({"job_queue": "rq"}))
        .await
        .expect_error(403);
    assert_eq!(
        m,
        "Not enough permissions to push to the restricted queue: rq"
    );
    // The token carries the permissions it was issued with: alice needs a new one.
    let alice = access_token(srv, "alice", "secret-of-alice-0123456789").await;
    submit(Some(alice.clone()), json!({"job_queue": "rq"}))
        .await
        .expect_status(200);
    submit(Some(admin.clone()), json!({"job_queue": "rq"}))
        .await
        .expect_error(403);
    // Reservation timeout: up to 6 h for anyone, beyond that capped per client.
    submit(
        None,
        json!({"job_queue": "q", "reserve_data": {"timeout": 21600}}),
    )
    .await
    .expect_status(200);
    let m = submit(
        None,
        json!({"job_queue": "q", "reserve_data": {"timeout": "6h1s"}}),
    )
    .await
    .expect_error(401);
    assert_eq!(m, "Authentication required for setting timeout: 21601");
    submit(
        Some(alice.clone()),
        json!({"job_queue": "q", "reserve_data": {"timeout": 30000}}),
    )
    .await
    .expect_status(200);
    submit(
        Some(alice),
        json!({"job_queue": "q", "reserve_data": {"timeout": 30001}}),
    )
    .await
    .expect_error(403);
    submit(
        Some(bob),
        json!({"job_queue": "q", "reserve_data": {"timeout": 21601}}),
    )
    .await
    .expect_error(403);
}

#[tokio::test]
async fn only_the_owner_or_a_manager_changes_a_job_and_only_its_agent_reports_on_it() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let manager = lab.token_for("boss", "manager", json!({})).await;
    let agent1 = lab.token_for("agent-one", "agent", json!({})).await;
    let agent2 = lab.token_for("agent-two", "agent", json!({})).await;
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "own-q", "exclude_agents": ["excluded"]});
    call(srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_status(200);
    // Another client can neither cancel nor resubmit it; anonymous callers neither.
    for token in [Some(bob.as_str()), None] {
        call(
            srv,
            "POST",
            &format!("/v1/job/{id}/action"),
            token,
            None,
            Some(&json!({"action": "cancel"})),
        )
        .await
        .expect_error(403);
        let evil =
            json!({"job_id": id, "job_queue": "own-q", "test_data": {"test_cmds": "rm -rf /"}});
        call(srv, "POST", "/v1/job", token, None, Some(&evil))
            .await
            .expect_error(403);
    }
    // The agent must name itself: no cookie, no job (exclude_agents cannot be dodged).
    let pop = "/v1/job?queue=own-q";
    assert_eq!(
        call(srv, "GET", pop, Some(&agent1), None, None)
            .await
            .expect_error(401),
        "Agent not identified"
    );
    call(srv, "GET", pop, Some(&agent1), Some("excluded"), None)
        .await
        .expect_no_content();
    let got = call(srv, "GET", pop, Some(&agent1), Some("one"), None)
        .await
        .expect_json();
    assert_eq!(got["job_id"], id.as_str());
    // Only the agent it went to posts results, fragments, artifacts, provision logs.
    let result = format!("/v1/result/{id}");
    let log = format!("/v1/result/{id}/log/output");
    for token in [&agent2, &alice] {
        call(
            srv,
            "POST",
            &result,
            Some(token),
            None,
            Some(&json!({"job_state": "complete"})),
        )
        .await
        .expect_error(403);
        call(srv, "POST", &log, Some(token), None, Some(&fragment(0)))
            .await
            .expect_error(403);
    }
    let (ct, body) =
        crate::util::multipart(&[crate::util::Part::file("file", "a.tar.gz", b"bytes")]);
    let artifact = format!("/v1/result/{id}/artifact");
    let b2 = format!("Bearer {agent2}");
    srv.request(
        "POST",
        &artifact,
        &[("content-type", &ct), ("authorization", &b2)],
        body.clone(),
    )
    .await
    .expect_error(403);
    let b1 = format!("Bearer {agent1}");
    srv.request(
        "POST",
        &artifact,
        &[("content-type", &ct), ("authorization", &b1)],
        body,
    )
    .await
    .expect_status(200);
    call(
        srv,
        "POST",
        "/v1/agents/data/two",
        Some(&agent2),
        None,
        Some(&json!({"state": "waiting"})),
    )
    .await
    .expect_status(200);
    let provision = json!({"job_id": id, "exit_code": 0});
    call(
        srv,
        "POST",
        "/v1/agents/provision_logs/two",
        Some(&agent2),
        None,
        Some(&provision),
    )
    .await
    .expect_error(403);
    // Fragments for a job that was never dispatched cannot be posted ahead of the agent.
    let other = srv.submit_to("never-popped").await;
    call(
        srv,
        "POST",
        &format!("/v1/result/{other}/log/output"),
        Some(&agent1),
        None,
        Some(&fragment(0)),
    )
    .await
    .expect_error(403);
    call(srv, "POST", &log, Some(&agent1), None, Some(&fragment(0)))
        .await
        .expect_status(200);
    call(
        srv,
        "POST",
        &result,
        Some(&agent1),
        None,
        Some(&json!({"job_state": "test"})),
    )
    .await
    .expect_status(200);
    // The owner's manager may cancel it.
    call(
        srv,
        "POST",
        &format!("/v1/job/{id}/action"),
        Some(&manager),
        None,
        Some(&json!({"action": "cancel"})),
    )
    .await
    .expect_status(200);
    // Anonymous jobs stay as upstream: any contributor may cancel them.
    let anon = srv.submit_to("own-q").await;
    call(
        srv,
        "POST",
        &format!("/v1/job/{anon}/action"),
        Some(&bob),
        None,
        Some(&json!({"action": "cancel"})),
    )
    .await
    .expect_status(200);
}

/// A token signed with `key` carrying `claims`.
fn forge(key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tokens_expire_refresh_and_revoke_with_upstream_status_codes() {
    let lab = Lab::start(&[
        "--access-token-secs",
        "1",
        "--jwt-leeway-secs",
        "0",
        "--token-failures-per-minute",
        "4",
    ]);
    let srv = &lab.srv;
    let secret = lab
        .client("dev", "contributor", json!({"max_priority": {"*": 5}}))
        .await;
    // Wrong and missing credentials: 401 with upstream's messages.
    let r = srv
        .request("POST", "/v1/oauth2/token", &[], Vec::new())
        .await;
    assert_eq!(r.expect_error(401), "No authorization header specified");
    assert_eq!(
        token_request(srv, "dev", "wrong").await.expect_error(401),
        "Invalid client id or client key"
    );
    assert_eq!(
        token_request(srv, "ghost", "x").await.expect_error(401),
        "Invalid client id or client key"
    );
    let issued = token_request(srv, "dev", &secret).await.expect_json();
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], 1);
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "access_token");
    assert_eq!(claims["permissions"]["client_id"], "dev");
    assert_eq!(claims["permissions"]["role"], "contributor");
    assert_eq!(claims["permissions"]["max_priority"], json!({"*": 5}));
    let job = json!({"job_queue": "t", "job_priority": 5});
    call(srv, "POST", "/v1/job", Some(&token), None, Some(&job))
        .await
        .expect_status(200);
    // Expired: 401, so clients refresh and replay.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(srv, "POST", "/v1/job", Some(&token), None, Some(&job))
            .await
            .expect_error(401),
        "Token has expired"
    );
    let refreshed = call(
        srv,
        "POST",
        "/v1/oauth2/refresh",
        None,
        None,
        Some(&json!({"refresh_token": refresh})),
    )
    .await
    .expect_json();
    assert!(refreshed.get("refresh_token").is_none());
    let fresh = refreshed["access_token"].as_str().unwrap();
    call(srv, "POST", "/v1/job", Some(fresh), None, Some(&job))
        .await
        .expect_status(200);
    // Forged or damaged tokens: 403.
    let now = unix_now();
    let perms = json!({"client_id": "dev", "role": "admin"});
    let other_key = forge(
        "not-the-key",
        &json!({"exp": now + 60, "iat": now, "sub": "access_token", "permissions": perms}),
    );
    assert_eq!(
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(&other_key),
            None,
            None
        )
        .await
        .expect_error(403),
        "Invalid Token signature"
    );
    let no_sub = forge(
        KEY,
        &json!({"exp": now + 60, "iat": now, "permissions": perms}),
    );
    assert_eq!(
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(&no_sub),
            None,
            None
        )
        .await
        .expect_error(403),
        "Token missing required claim: sub"
    );
    assert_eq!(
        call(srv, "GET", "/v1/job/search", Some("not.a.jwt"), None, None)
            .await
            .expect_error(403),
        "Unable to decode token"
    );
    let future = forge(
        KEY,
        &json!({"exp": now + 600, "iat": now + 300, "sub": "access_token", "permissions": perms}),
    );
    assert_eq!(
        call(srv, "GET", "/v1/job/search", Some(&future), None, None)
            .await
            .expect_error(401),
        "Token not yet valid"
    );
    // Revoke is admin only; a revoked refresh token is refused with 400.
    let body = json!({"refresh_token": refresh});
    call(
        srv,
        "POST",
        "/v1/oauth2/revoke",
        Some(fresh),
        None,
        Some(&body),
    )
    .await
    .expect_error(403);
    let admin = lab.admin_token().await;
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/revoke",
            Some(&admin),
            None,
            Some(&body)
        )
        .await
        .expect_json(),
        json!({"status": "OK"})
    );
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/revoke",
            Some(&admin),
            None,
            Some(&body)
        )
        .await
        .expect_error(400),
        "Refresh token has already been revoked"
    );
    assert_eq!(
        call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
            .await
            .expect_error(400),
        "Refresh token revoked."
    );
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/refresh",
            None,
            None,
            Some(&json!({"refresh_token": "nope"}))
        )
        .await
        .expect_error(400),
        "Invalid refresh token."
    );
    call(
        srv,
        "POST",
        "/v1/oauth2/refresh",
        None,
        None,
        Some(&json!({})),
    )
    .await
    .expect_error(422);
    // Failed logins are limited per client and address (4 per minute here; two failed
    // above), even with the right secret.
    token_request(srv, "dev", "wrong-again")
        .await
        .expect_error(401);
    token_request(srv, "dev", "wrong-a-third-time")
        .await
        .expect_error(401);
    let m = token_request(srv, "dev", &secret).await.expect_error(429);
    assert!(
        m.starts_with("Too many failed authentication attempts"),
        "{m}"
    );
    let log = srv.stderr_lines().join("\n");
    assert!(
        log.contains("flinger::security") && log.contains("authn_fail"),
        "no security events logged"
    );
    assert!(
        !log.contains(&secret) && !log.contains(&refresh) && !log.contains(fresh),
        "a secret or token was logged"
    );
}

#[tokio::test]
async fn refresh_tokens_expire_after_their_lifetime() {
    let lab = Lab::start(&["--refresh-token-secs", "1"]);
    let srv = &lab.srv;
    let secret = lab.client("short", "contributor", json!({})).await;
    let issued = token_request(srv, "short", &secret).await.expect_json();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let body = json!({"refresh_token": issued["refresh_token"]});
    assert_eq!(
        call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
            .await
            .expect_error(400),
        "Refresh token expired"
    );
}

#[tokio::test]
async fn clients_tokens_and_the_signing_key_survive_restarts_and_snapshots_and_no_secret_is_on_disk(
) {
    let mut srv = TestServer::start_with(&["--access-control", "on", "--snapshot-bytes", "2048"]);
    srv.stop();
    let root = printed_secret(&client_command(&srv, &["add", "root", "--role", "admin"]));
    srv.start_again();
    let key_file = srv.data_dir().join("jwt-signing-key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file)
        .expect("signing key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let admin = access_token(&srv, "root", &root).await;
    let secret = "a-secret-nobody-should-find-42";
    let put = json!({"client_secret": secret, "role": "manager", "max_priority": {"*": 7}});
    call(
        &srv,
        "PUT",
        "/v1/client-permissions/kept",
        Some(&admin),
        None,
        Some(&put),
    )
    .await
    .expect_status(200);
    let issued = token_request(&srv, "kept", secret).await.expect_json();
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    // Enough log to make the server take a snapshot.
    for _ in 0..40 {
        srv.submit(&json!({"job_queue": "fill", "padding": "x".repeat(100)}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("snapshot taken"))
    {
        assert!(Instant::now() < deadline, "no snapshot was taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.restart();
    // The old access token still verifies (same key), the refresh token still works.
    let clients = call(
        &srv,
        "GET",
        "/v1/client-permissions/kept",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(clients["role"], "manager");
    assert_eq!(clients["max_priority"], json!({"*": 7}));
    let body = json!({"refresh_token": refresh});
    call(&srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
        .await
        .expect_status(200);
    token_request(&srv, "kept", secret).await.expect_status(200);
    srv.stop();
    for needle in [secret, refresh.as_str(), root.as_str()] {
        assert!(
            !dir_contains(&srv.data_dir(), needle.as_bytes()),
            "{needle:?} is on disk in clear"
        );
    }
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[tokio::test]
async fn binding_a_public_address_with_access_control_off_is_refused_with_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--bind", "0.0.0.0:0", "--data-dir", "d"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--access-control on") && stderr.contains("--allow-open-access"),
        "{stderr}"
    );
    assert!(!dir.path().join("d").exists(), "nothing should be created");
}

#[tokio::test]
async fn client_management_api_follows_upstream_rules() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let manager = lab.token_for("mgr", "manager", json!({})).await;
    let put = |token: String, id: &'static str, body: Value| async move {
        call(
            srv,
            "PUT",
            &format!("/v1/client-permissions/{id}"),
            Some(&token),
            None,
            Some(&body),
        )
        .await
    };
    assert_eq!(
        put(manager.clone(), "new", json!({"role": "contributor"}))
            .await
            .expect_error(400),
        "Error: Missing client_secret in request body for new client"
    );
    put(manager.clone(), "new", json!({"client_secret": "short"}))
        .await
        .expect_error(422);
    put(
        manager.clone(),
        "x",
        json!({"client_secret": "long-enough-secret", "role": "admin"}),
    )
    .await
    .expect_error(403);
    put(manager.clone(), "root", json!({"max_priority": {"*": 1}}))
        .await
        .expect_error(403);
    put(manager.clone(), "testflinger-admin", json!({}))
        .await
        .expect_error(422);
    let created = put(
        manager.clone(),
        "new",
        json!({"client_secret": "long-enough-secret", "email": "a@b.c"}),
    )
    .await;
    assert_eq!(
        created.expect_status(200).text(),
        "Created permissions for client 'new'"
    );
    let one = call(
        srv,
        "GET",
        "/v1/client-permissions/new",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        one,
        json!({"client_id": "new", "max_priority": {}, "allowed_queues": [], "max_reservation_time": {}, "role": "contributor", "email": "a@b.c"})
    );
    let all = call(
        srv,
        "GET",
        "/v1/client-permissions",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_json();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("client_secret_hash").is_none() && c.get("secret_hash").is_none()));
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_error(403);
    let admin = lab.admin_token().await;
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_status(200);
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_error(404);
    token_request(srv, "new", "long-enough-secret")
        .await
        .expect_error(401);
}

/// Writes the agent's config and starts `testflinger-agent` against `server`.
fn start_agent(dir: &Path, server: &str, queue: &str, token_file: &Path) -> Child {
    let config = format!(
        "agent_id: lab-agent-1\nserver_address: {server}\npolling_interval: 1\n\
         execution_basedir: {d}/run\nlogging_basedir: {d}/logs\nresults_basedir: {d}/results\n\
         logging_quiet: true\njob_queues:\n  - {queue}\n\
         test_command: echo ran-by-the-upstream-agent\n",
        d = dir.display()
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    Command::new(upstream::agent())
        .arg("-c")
        .arg(&path)
        .arg("--token-file")
        .arg(token_file)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start testflinger-agent")
}

/// Kills a child process we started, whatever it is doing.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn real_cli_submits_a_priority_job_and_real_agent_runs_it_when_access_control_is_on() {
    let mut srv = TestServer::start_with(&["--access-control", "on"]);
    srv.stop();
    printed_secret(&client_command(
        &srv,
        &["add", "lab-agent", "--role", "agent"],
    ));
    let cli_secret = printed_secret(&client_command(
        &srv,
        &["add", "ci-user", "--max-priority", "*=100"],
    ));
    let token_file = srv.dir().join("agent-token.json");
    let report = client_command(
        &srv,
        &[
            "token-file",
            "lab-agent",
            "--out",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(
        !report.contains(&std::fs::read_to_string(&token_file).unwrap()[20..40]),
        "the token was printed"
    );
    srv.start_again();
    let base = srv.base_url();
    let work = tempfile::tempdir().unwrap();
    let _agent = Reaped(start_agent(work.path(), &base, "auth-lab", &token_file));
    // Wait until the agent has registered its queue (it authenticates with the token file).
    let admin_free = lab_contributor_get(&srv, "/v1/queues/auth-lab/agents").await;
    assert!(admin_free, "the agent never registered on its queue");
    let job = work.path().join("job.yaml");
    std::fs::write(
        &job,
        "job_queue: auth-lab\njob_priority: 42\ntest_data:\n  test_cmds: unused\n",
    )
    .unwrap();
    let home = work.path().join("cli-home");
    let out = Command::new(upstream::cli())
        .args([
            "--server",
            &base,
            "submit",
            "--client_id",
            "ci-user",
            "--secret_key",
            &cli_secret,
            "--quiet",
        ])
        .arg(&job)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()
        .expect("run testflinger-cli");
    assert!(
        out.status.success(),
        "cli submit failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stored = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(stored["job_priority"], 42);
    // The agent runs it to completion and reports with its own credential.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let result = srv.get(&format!("/v1/result/{id}")).await.expect_json();
        if result["job_state"] == "complete" {
            assert_eq!(result["test_status"], 0, "{result}");
            let log = srv
                .get(&format!("/v1/result/{id}/log/output"))
                .await
                .expect_json();
            assert!(
                log.to_string().contains("ran-by-the-upstream-agent"),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not finish the job: {result}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The same priority job is refused to an anonymous CLI (401 from the server).
    let anon = Command::new(upstream::cli())
        .args(["--server", &base, "submit", "--quiet"])
        .arg(&job)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", work.path().join("other-config"))
        .stdin(Stdio::null())
        .output()
        .expect("run testflinger-cli");
    assert!(
        !anon.status.success(),
        "an anonymous priority submission was accepted"
    );
}

/// Polls a contributor-readable listing until it answers 200 (at most a minute).
async fn lab_contributor_get(srv: &TestServer, path: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if srv.get(path).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

#[tokio::test]
async fn job_secrets_reach_only_the_dispatched_agent_and_never_the_disk_in_clear() {
    let mut lab = Lab::start_env(
        &["--snapshot-bytes", "4096"],
        &[(
            "FLINGER_SECRETS_KEY",
            "master-key-for-tests-0123456789abcdef",
        )],
    );
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let agent = lab.token_for("sec-agent", "agent", json!({})).await;
    let value = "s3cr3t-value-nobody-greps-for";
    let put = |token: Option<String>, path: &'static str, body: Value| async move {
        call(srv, "PUT", path, token.as_deref(), None, Some(&body)).await
    };
    let stored = put(
        Some(alice.clone()),
        "/v1/secrets/alice/db/pass",
        json!({"value": value}),
    )
    .await
    .expect_json();
    assert!(
        stored["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{stored}"
    );
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/once",
        json!({"value": "only-once-value", "ephemeral": true}),
    )
    .await
    .expect_status(200);
    put(
        Some(bob.clone()),
        "/v1/secrets/alice/db/pass",
        json!({"value": "x"}),
    )
    .await
    .expect_error(403);
    put(None, "/v1/secrets/alice/db/pass", json!({"value": "x"}))
        .await
        .expect_error(401);
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/bad%20path",
        json!({"value": "x"}),
    )
    .await
    .expect_error(422);
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/both",
        json!({"value": "x", "ephemeral": true, "expire_after": 5}),
    )
    .await
    .expect_error(422);
    // Submission: every named path must be the submitter's.
    let job = |secrets: Value| json!({"job_queue": "sec-q", "test_data": {"test_cmds": "env", "secrets": secrets}});
    let r = call(
        srv,
        "POST",
        "/v1/job",
        Some(&bob),
        None,
        Some(&job(json!({"DB": "db/pass"}))),
    )
    .await;
    assert_eq!(r.expect_error(422), "Inaccessible secret paths: db/pass");
    let r = call(
        srv,
        "POST",
        "/v1/job",
        None,
        None,
        Some(&job(json!({"DB": "db/pass"}))),
    )
    .await;
    assert_eq!(
        r.expect_error(422),
        "Missing client ID (user not authenticated)"
    );
    let r = call(
        srv,
        "POST",
        "/v1/job",
        Some(&alice),
        None,
        Some(&job(json!({"DB": "db/pass", "ONCE": "once"}))),
    )
    .await;
    let id = r.expect_json()["job_id"].as_str().unwrap().to_owned();
    // Readers see paths; only the agent it is dispatched to sees values.
    let shown = call(
        srv,
        "GET",
        &format!("/v1/job/{id}"),
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        shown["test_data"]["secrets"],
        json!({"DB": "db/pass", "ONCE": "once"})
    );
    let popped = call(
        srv,
        "GET",
        "/v1/job?queue=sec-q",
        Some(&agent),
        Some("sec"),
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        popped["test_data"]["secrets"],
        json!({"DB": value, "ONCE": "only-once-value"})
    );
    // The ephemeral secret is gone after that read.
    let again = call(
        srv,
        "POST",
        "/v1/job",
        Some(&alice),
        None,
        Some(&job(json!({"ONCE": "once"}))),
    )
    .await;
    assert_eq!(again.expect_error(422), "Inaccessible secret paths: once");
    call(
        srv,
        "DELETE",
        "/v1/secrets/alice/db/pass",
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_status(200);
    // Enough log for a snapshot, then nothing on disk holds a value in clear.
    for _ in 0..40 {
        srv.submit(&json!({"job_queue": "fill", "padding": "x".repeat(100)}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("snapshot taken"))
    {
        assert!(Instant::now() < deadline, "no snapshot was taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = lab.srv.stderr_lines().join("\n");
    assert!(
        !log.contains(value) && !log.contains("only-once-value"),
        "a secret was logged"
    );
    lab.srv.stop();
    for needle in [value, "only-once-value"] {
        assert!(
            !dir_contains(&lab.srv.data_dir(), needle.as_bytes()),
            "{needle:?} is on disk in clear"
        );
    }
}

#[tokio::test]
async fn secrets_endpoints_say_no_store_when_no_master_key_is_set() {
    let lab = Lab::start(&[]);
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let r = call(
        &lab.srv,
        "PUT",
        "/v1/secrets/alice/x",
        Some(&alice),
        None,
        Some(&json!({"value": "v"})),
    )
    .await;
    assert_eq!(r.expect_error(400), "No secrets store");
    let job = json!({"job_queue": "q", "test_data": {"secrets": {"X": "x"}}});
    let r = call(&lab.srv, "POST", "/v1/job", Some(&alice), None, Some(&job)).await;
    assert_eq!(r.expect_error(422), "No secrets store");
}

#[tokio::test]
async fn a_job_naming_secrets_is_refused_as_unauthenticated_when_access_control_is_off_with_a_store(
) {
    let srv = TestServer::start_opts(Opts {
        envs: vec![(
            "FLINGER_SECRETS_KEY".into(),
            "master-key-for-tests-0123456789abcdef".into(),
        )],
        ..Opts::default()
    });
    let job = json!({"job_queue": "q", "test_data": {"secrets": {"X": "x"}}});
    let r = call(&srv, "POST", "/v1/job", None, None, Some(&job)).await;
    assert_eq!(
        r.expect_error(422),
        "Missing client ID (user not authenticated)"
    );
    let plain = json!({"job_queue": "q"});
    call(&srv, "POST", "/v1/job", None, None, Some(&plain))
        .await
        .expect_status(200);
}

#[tokio::test]
async fn client_command_refuses_to_touch_the_data_dir_of_a_running_server() {
    let srv = TestServer::start_with(&["--access-control", "on"]);
    let data = srv.data_dir().display().to_string();
    let out = run_to_exit(
        srv.dir(),
        &["--data-dir", &data, "client", "add", "x"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stop the server"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing (no secret) may be printed: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
