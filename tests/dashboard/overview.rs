//! The overview's agents by state: counts the agents' fold keeps as records change, never
//! a pass over the records. They must say what the agent list (`GET /v1/agents/data`)
//! says through every kind of change: an advertisement, new records, state changes, a
//! lost agent marked offline by the server, a record an operator deleted, and records
//! removed on expiry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{job_id_of, TestServer};

/// The overview's counts, by state.
async fn shown(srv: &TestServer) -> BTreeMap<String, usize> {
    let html = srv
        .get_with_headers("/", &[("accept", "text/html")])
        .await
        .expect_status(200)
        .text();
    let mut counts = BTreeMap::new();
    let Some(at) = html.find("id=\"agent-states\"") else {
        assert!(html.contains("No agent has reported."), "{html}");
        return counts;
    };
    let list = &html[at..html[at..].find("</ul>").unwrap() + at];
    for item in list.split("<li>").skip(1) {
        // <a href="/agents?state=S">S</a>: <span class="num">N</span></li>
        let state = &item[item.find('>').unwrap() + 1..item.find("</a>").unwrap()];
        let number = &item[item.find("class=\"num\">").unwrap() + 12..];
        let number = number[..number.find('<').unwrap()].parse().unwrap();
        counts.insert(state.to_owned(), number);
    }
    counts
}

/// The counts the agent list gives: each record's `state`, `unknown` when it has none.
async fn listed(srv: &TestServer) -> BTreeMap<String, usize> {
    let records = srv.get("/v1/agents/data").await.expect_json();
    let mut counts = BTreeMap::new();
    for record in records.as_array().unwrap() {
        let state = record["state"].as_str().unwrap_or("unknown");
        *counts.entry(state.to_owned()).or_default() += 1;
    }
    counts
}

/// Asserts the overview says what the list says, and that this is `want`.
async fn agree(srv: &TestServer, want: &[(&str, usize)], when: &str) {
    let want: BTreeMap<String, usize> = want.iter().map(|&(s, n)| (s.to_owned(), n)).collect();
    assert_eq!(listed(srv).await, want, "the list, {when}");
    assert_eq!(shown(srv).await, want, "the overview, {when}");
}

async fn post_agent(srv: &TestServer, name: &str, fields: Value) {
    srv.post_json(&format!("/v1/agents/data/{name}"), &fields)
        .await
        .expect_status(200);
}

#[tokio::test]
async fn overview_counts_agents_by_state_as_the_agent_list_does_through_every_change() {
    // Lost after 1 s of grace past the job's allowance; records removed after 8 s silent.
    let srv = TestServer::start_with(&["--lost-agent-grace-secs", "1", "--agent-expiry-secs", "8"]);
    srv.post_json("/v1/agents/queues", &json!({"ov-q": "a queue"}))
        .await
        .expect_status(200);
    agree(&srv, &[], "after an advertisement alone").await;

    // An agent takes a job and goes silent while provisioning: lost once the job's
    // global_timeout (2 s) and the grace have passed.
    post_agent(
        &srv,
        "ov-lost",
        json!({"state": "waiting", "queues": ["ov-lost-q"]}),
    )
    .await;
    let job = json!({"job_queue": "ov-lost-q", "global_timeout": 2});
    let id = srv.submit(&job).await;
    let popped = srv
        .get_with_headers(
            "/v1/job?queue=ov-lost-q",
            &[("cookie", "agent_name=ov-lost")],
        )
        .await
        .expect_json();
    assert_eq!(job_id_of(&popped), id);
    srv.post_result(&id, &json!({"job_state": "provision"}))
        .await;
    post_agent(&srv, "ov-lost", json!({"state": "provision", "job_id": id})).await;
    let silent_since = Instant::now();

    // New records, one without a state; then state changes (that one's first).
    post_agent(
        &srv,
        "ov-a",
        json!({"state": "waiting", "queues": ["ov-q"]}),
    )
    .await;
    post_agent(
        &srv,
        "ov-b",
        json!({"state": "waiting", "queues": ["ov-q"]}),
    )
    .await;
    post_agent(&srv, "ov-c", json!({"state": "test"})).await;
    post_agent(&srv, "ov-bare", json!({"queues": ["ov-q"]})).await;
    agree(
        &srv,
        &[
            ("provision", 1),
            ("test", 1),
            ("unknown", 1),
            ("waiting", 2),
        ],
        "after new records",
    )
    .await;
    post_agent(&srv, "ov-b", json!({"state": "provision"})).await;
    post_agent(&srv, "ov-c", json!({"state": "waiting", "location": "lab"})).await;
    post_agent(&srv, "ov-a", json!({"state": "setup"})).await;
    post_agent(&srv, "ov-bare", json!({"state": "test"})).await;
    agree(
        &srv,
        &[("provision", 2), ("setup", 1), ("test", 1), ("waiting", 1)],
        "after state changes",
    )
    .await;

    // The others keep posting while the silent one is marked offline by the server.
    let others = [
        ("ov-a", json!({"state": "setup"})),
        ("ov-b", json!({"state": "provision"})),
        ("ov-c", json!({"state": "waiting"})),
        ("ov-bare", json!({"state": "test"})),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (name, fields) in &others {
            post_agent(&srv, name, fields.clone()).await;
        }
        let record = srv.get("/v1/agents/data/ov-lost").await.expect_json();
        if record["state"] == "offline" {
            break;
        }
        assert!(Instant::now() < deadline, "never marked offline: {record}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(silent_since.elapsed() >= Duration::from_secs(2));
    agree(
        &srv,
        &[
            ("offline", 1),
            ("provision", 1),
            ("setup", 1),
            ("test", 1),
            ("waiting", 1),
        ],
        "after the lost agent was marked offline",
    )
    .await;

    // An operator deletes one (`DELETE /v1/agents/data/<name>`): its count goes too.
    srv.request("DELETE", "/v1/agents/data/ov-bare", &[], Vec::new())
        .await
        .expect_status(200);
    agree(
        &srv,
        &[
            ("offline", 1),
            ("provision", 1),
            ("setup", 1),
            ("waiting", 1),
        ],
        "after a record was deleted",
    )
    .await;

    // Only ov-c keeps posting: every other record expires.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        post_agent(&srv, "ov-c", json!({"state": "waiting"})).await;
        if listed(&srv).await.values().sum::<usize>() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "records never expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    agree(&srv, &[("waiting", 1)], "after the others expired").await;
}
