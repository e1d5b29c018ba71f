//! CLI `results`, `artifacts` and `cancel`: what the agent posted shown back, artifacts'
//! exact bytes, and a second cancel refused.

use serde_json::json;

use super::{cli_auth_init, fake_tar_gz, post_gzip_file, Agent};
use crate::util::{new_id, TestServer};

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
    // Unknown id: 400, as upstream (OLD and HEAD): the CLI words only a 400.
    srv.cancel(&new_id()).await.expect_error(400);
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
