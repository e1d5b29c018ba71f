//! The route × role table ([`MATRIX`]) over real HTTP: every endpoint admits exactly the
//! roles it lists (upstream's permissions.json plus flinger's own routes), and anonymous
//! callers get 401 everywhere but the public routes when access control is strict.
//! A new route gets its row in [`MATRIX`].

use serde_json::{json, Value};

use super::{call, fragment, Lab};
use crate::util::{new_id, TestServer};

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
    // flinger's operator route (loopback-only with access control off); an agent no
    // record has, so the rows after it keep theirs.
    ("DELETE", "/v1/agents/data/nobody", "manager admin"),
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
    ("GET", "/v1/ready", "public"),
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
    // `/` is public as the version text; the overview it shows browsers is a dashboard
    // page, and lists queues, agents and jobs; a browser is told so on a page.
    let overview = srv
        .request("GET", "/", &[("accept", "text/html")], Vec::new())
        .await;
    assert_eq!(overview.status, 401);
    assert_eq!(
        overview.content_type().as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        overview
            .text()
            .contains("Authentication is required for specified endpoint"),
        "{}",
        overview.text()
    );
    srv.stop();
}
