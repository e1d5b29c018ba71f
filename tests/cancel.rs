//! The cancel action (`POST /v1/job/<id>/action`): a waiting job leaves its queue for good
//! (upstream left it queued and dispatched it anyway), a running job is flagged, terminal states
//! stay terminal, and every bad request is a 4xx JSON error.

use serde_json::json;

use crate::util::{new_id, TestServer};

const ALREADY_DONE: &str = "The job is already completed or cancelled";

#[tokio::test]
async fn cancelled_waiting_job_is_never_dispatched_when_others_are_queued() {
    let srv = TestServer::start();
    let first = srv.submit_to("q").await;
    let second = srv.submit_to("q").await;
    let r = srv.cancel(&first).await;
    r.expect_status(200);
    assert_eq!(srv.job_state(&first).await, "cancelled");
    assert_eq!(
        srv.pop_id(&["q"]).await,
        Some(second),
        "the next job is handed out instead"
    );
    for _ in 0..3 {
        assert_eq!(
            srv.pop(&["q"]).await,
            None,
            "the cancelled job is gone for good"
        );
    }
}

#[tokio::test]
async fn cancelled_only_job_leaves_queue_empty_when_popped() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    srv.cancel(&id).await.expect_status(200);
    assert_eq!(srv.pop(&["q"]).await, None);
    // The job definition is still readable.
    let job = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(job["job_id"], id.as_str());
}

#[tokio::test]
async fn cancelled_job_does_not_block_other_queues_when_popped_together() {
    let srv = TestServer::start();
    let old = srv.submit_to("a").await;
    let newer = srv.submit_to("b").await;
    srv.cancel(&old).await.expect_status(200);
    assert_eq!(srv.pop_id(&["a", "b"]).await, Some(newer));
    assert_eq!(srv.pop(&["a", "b"]).await, None);
}

#[tokio::test]
async fn running_job_is_marked_cancelled_when_cancelled() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert_eq!(srv.pop_id(&["q"]).await, Some(id.clone()));
    srv.post_result(&id, &json!({"job_state": "provision"}))
        .await;
    srv.cancel(&id).await.expect_status(200);
    assert_eq!(srv.job_state(&id).await, "cancelled");
}

#[tokio::test]
async fn cancel_is_400_when_job_is_already_cancelled() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    srv.cancel(&id).await.expect_status(200);
    let r = srv.cancel(&id).await;
    assert_eq!(r.expect_error(400), ALREADY_DONE);
    assert_eq!(srv.job_state(&id).await, "cancelled");
}

#[tokio::test]
async fn cancel_is_400_when_job_is_complete() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert!(srv.pop(&["q"]).await.is_some());
    srv.post_result(&id, &json!({"job_state": "complete"}))
        .await;
    let r = srv.cancel(&id).await;
    assert_eq!(r.expect_error(400), ALREADY_DONE);
    assert_eq!(srv.job_state(&id).await, "complete");
}

#[tokio::test]
async fn cancel_is_400_naming_the_id_when_job_is_unknown() {
    // 400 as both upstream servers (and the only error `testflinger-cli cancel` words).
    let srv = TestServer::start();
    let id = new_id();
    let message = srv.cancel(&id).await.expect_error(400);
    assert!(
        message.starts_with("Job is not found and cannot be cancelled") && message.contains(&id),
        "{message}"
    );
    // Results alone do not make a job.
    let id = new_id();
    srv.post_result(&id, &json!({"job_state": "waiting"})).await;
    srv.cancel(&id).await.expect_error(400);
}

#[tokio::test]
async fn cancel_is_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in ["foo", "00000000-0000-0000-0000-00000000000X"] {
        srv.cancel(id).await.expect_error(400);
    }
}

#[tokio::test]
async fn action_is_400_when_action_is_unknown_or_missing_or_body_is_not_json() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let path = format!("/v1/job/{id}/action");
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"action": "foo"}"#.to_vec(),
        br#"{"action": "CANCEL"}"#.to_vec(),
        br#"{"action": ""}"#.to_vec(),
        br#"{"action": null}"#.to_vec(),
        br#"{"action": 1}"#.to_vec(),
        br#"{"action": ["cancel"]}"#.to_vec(),
        br#"{}"#.to_vec(),
        br#"{"verb": "cancel"}"#.to_vec(),
        br#"["cancel"]"#.to_vec(),
        br#""cancel""#.to_vec(),
        b"cancel".to_vec(),
        b"{".to_vec(),
        b"".to_vec(),
        vec![0xff, 0x00],
    ];
    for body in bodies {
        let r = srv
            .post_raw(&path, Some("application/json"), body.clone())
            .await;
        assert_eq!(
            r.status,
            400,
            "action body {:?}: {}",
            String::from_utf8_lossy(&body),
            r.text_preview()
        );
        r.expect_json_error();
    }
    let r = srv.request("POST", &path, &[], Vec::new()).await;
    r.expect_error(400);
    // None of these touched the job.
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(srv.pop_id(&["q"]).await, Some(id));
}

#[tokio::test]
async fn cancel_is_accepted_when_content_type_is_not_json() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    srv.post_raw(
        &format!("/v1/job/{id}/action"),
        Some("text/plain"),
        br#"{"action":"cancel"}"#.to_vec(),
    )
    .await
    .expect_status(200);
    assert_eq!(srv.job_state(&id).await, "cancelled");
}

#[tokio::test]
async fn cancelled_state_is_sticky_when_agent_later_posts_complete() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert!(srv.pop(&["q"]).await.is_some());
    srv.cancel(&id).await.expect_status(200);
    srv.post_result(&id, &json!({"job_state": "complete", "foo": 1}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["foo"], 1, "other fields still merge: {result}");
    srv.post_result(&id, &json!({"job_state": "provision", "bar": "x"}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["bar"], "x");
    assert_eq!(result["foo"], 1);
}

#[tokio::test]
async fn cancelled_state_is_sticky_when_waiting_job_gets_results() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    srv.cancel(&id).await.expect_status(200);
    srv.post_result(&id, &json!({"job_state": "waiting", "x": true}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled");
    assert_eq!(result["x"], true);
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn complete_state_is_terminal_when_agent_posts_another_state() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert!(srv.pop(&["q"]).await.is_some());
    srv.post_result(&id, &json!({"job_state": "complete", "test_status": 0}))
        .await;
    srv.post_result(&id, &json!({"job_state": "test", "late": "yes"}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "complete", "{result}");
    assert_eq!(result["late"], "yes", "fields still merge: {result}");
    assert_eq!(result["test_status"], 0);
}
