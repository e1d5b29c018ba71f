//! Conformance differences settled one by one against upstream's servers and its real
//! clients: each test shows flinger answering what upstream answers where that is right,
//! through the real `testflinger-cli` or `testflinger-agent` where one is involved. The
//! differences kept on purpose are in README's compatibility table.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::agent::cli;
use crate::util::{new_id, TestServer};

#[tokio::test]
async fn real_cli_cancel_prints_a_message_when_job_is_unknown() {
    // `testflinger-cli cancel` words a 400 and lets any other status escape as a Python
    // traceback; both upstream servers answer 400 here.
    let srv = TestServer::start();
    let id = new_id();
    let out = cli(&srv, &["cancel", &id], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("Invalid job ID specified or the job is already complete/cancelled."),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains("Traceback"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn queue_agents_omit_fields_never_posted_but_state_when_agent_posted_only_queues() {
    // Upstream's `AgentOut` dump leaves out what the agent never posted; flinger showed
    // `null`. `state` stays (null): the CLI indexes it.
    let srv = TestServer::start();
    srv.post_json("/v1/agents/data/bare", &json!({"queues": ["bare-q"]}))
        .await
        .expect_status(200);
    srv.post_json(
        "/v1/agents/data/full",
        &json!({"state": "waiting", "queues": ["bare-q"], "location": "lab",
                "provision_type": "noprovision", "job_id": "", "comment": "hi"}),
    )
    .await
    .expect_status(200);
    let agents = srv.get("/v1/queues/bare-q/agents").await.expect_json();
    let by_name = |name: &str| {
        agents
            .as_array()
            .expect("a list")
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .expect("listed")
    };
    assert_eq!(
        by_name("bare"),
        json!({"name": "bare", "state": null, "queues": ["bare-q"], "restricted_to": {}})
    );
    assert_eq!(
        by_name("full"),
        json!({"name": "full", "state": "waiting", "queues": ["bare-q"], "location": "lab",
               "provision_type": "noprovision", "job_id": "", "comment": "hi",
               "restricted_to": {}})
    );
    // The real CLI reads both without raising.
    let out = cli(
        &srv,
        &["queue-status", "bare-q", "--json"],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr:\n{stderr}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("queue-status --json");
    let mut statuses: Vec<String> = printed["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| format!("{}={}", a["name"], a["status"]))
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["\"bare\"=null", "\"full\"=\"waiting\""]);
}

#[tokio::test]
async fn agent_posts_answer_as_for_an_empty_object_when_body_is_empty() {
    // Upstream loads these bodies with webargs, which reads an empty body as `{}`.
    let srv = TestServer::start();
    for content_type in [None, Some("application/json")] {
        let r = srv
            .post_raw("/v1/agents/data/quiet", content_type, Vec::new())
            .await;
        r.expect_status(200);
        assert_eq!(r.json(), json!({"status": "OK"}));
        assert!(r.headers.get("set-cookie").is_some(), "the agent cookie");
        for path in ["/v1/agents/queues", "/v1/agents/images"] {
            srv.post_raw(path, content_type, b" \n".to_vec())
                .await
                .expect_status(200);
        }
    }
    let agent = srv.get("/v1/agents/data/quiet").await.expect_json();
    assert_eq!(agent["name"], "quiet");
    // A provision log's fields are required: `{}` is 422 naming one.
    let r = srv
        .post_raw("/v1/agents/provision_logs/quiet", None, Vec::new())
        .await;
    assert!(r.expect_error(422).contains("job_id") || r.text().contains("job_id"));
    // Elsewhere an empty body stays OLD's 400 (its tests: submit, results).
    srv.post_raw("/v1/job", None, Vec::new())
        .await
        .expect_error(400);
}

#[tokio::test]
async fn pop_answers_204_when_every_queue_named_is_empty() {
    // Upstream pops from `[""]` and finds nothing; no `queue` at all stays 400.
    let srv = TestServer::start();
    let id = srv.submit_to("real-q").await;
    srv.get("/v1/job?queue=").await.expect_no_content();
    let started = std::time::Instant::now();
    srv.get("/v1/job?queue=&wait=5").await.expect_no_content();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for nothing"
    );
    srv.get("/v1/job").await.expect_error(400);
    srv.get("/v1/job?wait=1").await.expect_error(400);
    let job = srv.get("/v1/job?queue=&queue=real-q").await.expect_json();
    assert_eq!(job["job_id"], id.as_str());
}

#[tokio::test]
async fn fragment_numbers_load_as_marshmallow_integers_when_posted_as_strings_or_floats() {
    // Upstream's `LogPost.fragment_number` is a non-strict marshmallow `Integer`.
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let post = |number: Value, text: &str| {
        let body = json!({"fragment_number": number, "timestamp": "2026-11-29T00:00:00Z",
                          "phase": "test", "log_data": text});
        let path = format!("/v1/result/{id}/log/output");
        let srv = &srv;
        async move { srv.post_json(&path, &body).await }
    };
    post(json!("0"), "a").await.expect_status(200);
    post(json!(" 1 "), "b").await.expect_status(200);
    post(json!(2.0), "c").await.expect_status(200);
    // The same fragment again (as a number): stored once.
    post(json!(1), "b").await.expect_status(200);
    let log = srv
        .get(&format!("/v1/result/{id}/log/output?phase=test"))
        .await
        .expect_json();
    assert_eq!(
        log["output"]["test"],
        json!({"last_fragment_number": 2, "log_data": "abc"})
    );
    // Not integers, or negative (never readable): 422 naming the field.
    for bad in [
        json!("one"),
        json!(true),
        json!(null),
        json!(-1),
        json!("-3"),
    ] {
        let r = post(bad.clone(), "x").await;
        r.expect_error(422);
        assert!(
            r.json()["detail"].to_string().contains("fragment_number"),
            "{bad}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn pop_answer_carries_started_at_when_a_job_is_dispatched() {
    // HEAD's pop answer is the job plus `job_id` and `started_at` (`...Z`).
    let srv = TestServer::start();
    let id = srv
        .submit(&json!({"job_queue": "sa-q", "started_at": "submitted-by-hand"}))
        .await;
    let plain = srv.submit_to("sa-q").await;
    let popped = srv.pop(&["sa-q"]).await.expect("a job");
    assert_eq!(popped["job_id"], id.as_str());
    let at = popped["started_at"]
        .as_str()
        .expect("started_at")
        .to_owned();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at:?}"
    );
    assert_ne!(
        at, "submitted-by-hand",
        "the server's time replaces a submitted one"
    );
    let second = srv.pop(&["sa-q"]).await.expect("a job");
    assert_eq!(second["job_id"], plain.as_str());
    assert!(second["started_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    // `GET /v1/job/<id>` stays the job as submitted, as upstream's.
    let shown = srv.get(&format!("/v1/job/{plain}")).await.expect_json();
    assert!(shown.get("started_at").is_none(), "{shown}");
}

#[tokio::test]
async fn wait_times_are_empty_when_only_an_empty_queue_name_is_asked_for() {
    // Upstream matches names `$in [""]`: no queue has an empty name.
    let srv = TestServer::start();
    srv.submit_to("timed-q").await;
    srv.pop(&["timed-q"]).await.expect("a job");
    let all = srv.get("/v1/queues/wait_times").await.expect_json();
    assert!(all.get("timed-q").is_some(), "{all}");
    assert_eq!(
        srv.get("/v1/queues/wait_times?queue=").await.expect_json(),
        json!({})
    );
    let some = srv
        .get("/v1/queues/wait_times?queue=&queue=timed-q")
        .await
        .expect_json();
    assert_eq!(some.as_object().map(|m| m.len()), Some(1), "{some}");
}

#[tokio::test]
async fn queues_list_a_queue_with_only_images_with_an_empty_description() {
    // Upstream's images post creates the queue's document, which its queue list shows
    // (description `""`); the CLI's `reserve` picks a queue from that list.
    let srv = TestServer::start();
    srv.post_json(
        "/v1/agents/queues",
        &json!({"b-q": "described", "d-q": "too"}),
    )
    .await
    .expect_status(200);
    srv.post_json(
        "/v1/agents/images",
        &json!({"a-q": {"core22": "url: x"}, "b-q": {"jammy": "url: y"}, "c-q": {"i": "z"},
                "e-q": {"noble": "url: w"}}),
    )
    .await
    .expect_status(200);
    let r = srv.get("/v1/agents/queues").await;
    assert_eq!(
        r.text(),
        r#"{"a-q":"","b-q":"described","c-q":"","d-q":"too","e-q":""}"#
    );
    let out = cli(&srv, &["list-queues", "--json"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr:\n{stderr}");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("list-queues --json");
    assert_eq!(listed["a-q"], "");
    assert_eq!(listed["b-q"], "described");
}

#[tokio::test]
async fn schema_loaded_posts_name_the_missing_field_when_body_is_empty() {
    // HEAD's webargs loads an empty body as `{}`: the schema then names what is missing
    // (422), where flinger said only that the body was empty (400).
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    for (path, field) in [
        (format!("/v1/result/{id}/log/output"), "fragment_number"),
        (format!("/v1/job/{id}/events"), "job_status_webhook"),
        ("/v1/oauth2/refresh".to_string(), "refresh_token"),
    ] {
        let r = srv.post_raw(&path, None, Vec::new()).await;
        r.expect_error(422);
        assert!(
            r.json()["detail"]["json"].get(field).is_some(),
            "{path}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn retried_pop_repeats_the_first_dispatch_time_when_the_agent_pops_again() {
    // The agent retries a pop on 5xx; the job it holds comes back with its dispatch time.
    let srv = TestServer::start();
    srv.post_json("/v1/agents/data/retrier", &json!({"state": "waiting"}))
        .await
        .expect_status(200);
    let id = srv.submit_to("retry-q").await;
    let cookie = [("cookie", "agent_name=retrier")];
    let first = srv
        .request("GET", "/v1/job?queue=retry-q", &cookie, Vec::new())
        .await
        .expect_json();
    assert_eq!(first["job_id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = srv
        .request("GET", "/v1/job?queue=retry-q", &cookie, Vec::new())
        .await
        .expect_json();
    assert_eq!(again["job_id"], id.as_str());
    assert_eq!(again["started_at"], first["started_at"]);
}

#[tokio::test]
async fn real_cli_agent_status_and_list_agents_print_when_an_agent_never_posted_a_state() {
    // Upstream leaves `state` out of such a record and `agent-status` raises KeyError.
    let srv = TestServer::start();
    srv.post_json("/v1/agents/data/stateless", &json!({"queues": ["sl-q"]}))
        .await
        .expect_status(200);
    let record = srv.get("/v1/agents/data/stateless").await.expect_json();
    assert_eq!(record["state"], Value::Null, "{record}");
    for args in [
        &["agent-status", "stateless"][..],
        &["agent-status", "stateless", "--json"],
        &["list-agents"],
    ] {
        let out = cli(&srv, args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} stderr:\n{stderr}");
        assert!(!stderr.contains("Traceback"), "{args:?} stderr:\n{stderr}");
    }
}
