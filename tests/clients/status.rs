//! CLI `queue-status`, `agent-status`, `list-queues` and `list-agents`: what agents
//! advertised and registered, and the jobs in a queue.

use serde_json::json;

use super::{assert_iso_z, cli_auth_init, Agent};
use crate::util::{job_id_of, TestServer};

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
