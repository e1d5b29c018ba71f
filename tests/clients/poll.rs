//! CLI `poll` until the job completes (state, queue position, new log fragments), and the
//! log reads and writes it relies on: filters by fragment, timestamp and phase, and 422 for
//! malformed fragments.

use serde_json::json;

use super::{
    assert_log_shape, cli_auth_init, fragment_body, get_log, log_text, next_start_fragment,
    position_of, Agent, LOG_PHASES,
};
use crate::util::{job_id_of, new_id, TestServer};

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
