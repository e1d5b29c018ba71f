//! The upstream agent's request sequence: the whole cycle, `exclude_agents`, cancellation
//! noticed mid-phase, retried pops, and pop order by priority.

use serde_json::json;

use super::{assert_iso_z, fake_tar_gz, position_of, post_gzip_file, Agent};
use crate::util::{job_id_of, TestServer};

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

    // Once it posts a state, its next pop is a new job; the one it left unfinished (the
    // stock agent runs one job at a time) goes back into its queue, as it was in setup
    // (see tests/lost.rs), and comes back to it next.
    a.post_result(&j1, json!({"job_state": "setup"})).await;
    assert_eq!(a.pop(&["q"]).await.map(|j| job_id_of(&j)), Some(j3.clone()));
    assert_eq!(srv.job_state(&j1).await, "resubmitted");
    a.post_result(&j3, json!({"job_state": "complete"})).await;
    assert_eq!(a.pop(&["q"]).await.map(|j| job_id_of(&j)), Some(j1.clone()));
    a.post_result(&j1, json!({"job_state": "complete"})).await;
    assert_eq!(a.pop(&["q"]).await, None);

    // A pop without a cookie (old agents) is allowed and never a "retry".
    let j4 = srv.submit_to("q").await;
    let j5 = srv.submit_to("q").await;
    let r = srv.get("/v1/job?queue=q").await;
    assert_eq!(job_id_of(&r.expect_json()), j4);
    let r = srv.get("/v1/job?queue=q").await;
    assert_eq!(job_id_of(&r.expect_json()), j5);
    srv.get("/v1/job?queue=q").await.expect_no_content();
}

// ---- Priority -------------------------------------------------------------------------------

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
