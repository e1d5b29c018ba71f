//! The three submission checks with access control on: job priority, restricted queues and
//! reservation (each needs a permission the client was given); and each submitter's share
//! of the room for jobs.

use serde_json::{json, Value};

use super::{access_token, call, Lab};

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
    // A token carries its client's current permissions: alice's new one has them, as her
    // old one does (`tokens::a_change_to_a_client_applies_to_its_existing_tokens_at_once`).
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

/// With access control on, one submitter's jobs take at most `--max-jobs-share-percent`
/// of `--max-jobs-bytes`: an authenticated client's, and those submitted without a token
/// all together, so an anonymous flood cannot fill the room every lab user shares. The
/// refusal (507) names whose share and the settings; the count holds after a restart.
/// Each queue a submitter's jobs are in counts against its share as against the room,
/// so jobs each sent to a new queue cannot fill the room from within one share. With
/// access control off there is no share.
#[tokio::test]
async fn one_submitters_jobs_take_at_most_their_share_of_the_job_store() {
    // A share of 40,000 bytes: the queue's 16 KiB and five jobs of ~4.1 KiB (document
    // and 1 KiB) fit, a sixth not.
    let flags = [
        "--max-job-bytes",
        "4096",
        "--max-jobs-bytes",
        "400000",
        "--max-jobs-share-percent",
        "10",
    ];
    let mut lab = Lab::start(&flags);
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let job = json!({"job_queue": "share", "pad": "x".repeat(3000)});
    async fn submit(srv: &crate::util::TestServer, token: Option<String>) -> crate::util::Resp {
        let job = json!({"job_queue": "share", "pad": "x".repeat(3000)});
        call(srv, "POST", "/v1/job", token.as_deref(), None, Some(&job)).await
    }
    for _ in 0..5 {
        submit(&lab.srv, None).await.expect_status(200);
        submit(&lab.srv, Some(alice.clone()))
            .await
            .expect_status(200);
    }
    let anonymous = submit(&lab.srv, None).await.expect_error(507);
    assert!(
        anonymous.contains("submitted without a token")
            && anonymous.contains("--max-jobs-share-percent")
            && anonymous.contains("a share of its own"),
        "{anonymous}"
    );
    let theirs = submit(&lab.srv, Some(alice.clone()))
        .await
        .expect_error(507);
    assert!(
        theirs.contains("client \"alice\"'s jobs") && theirs.contains("40000 bytes"),
        "{theirs}"
    );
    // Nobody else's room is taken.
    submit(&lab.srv, Some(bob.clone())).await.expect_status(200);
    lab.srv.restart();
    submit(&lab.srv, None).await.expect_error(507);
    let alice = super::access_token(&lab.srv, "alice", "secret-of-alice-0123456789").await;
    submit(&lab.srv, Some(alice)).await.expect_error(507);

    // Small jobs each to a queue of its own: the queues fill dave's share, not the room.
    let dave = lab.token_for("dave", "contributor", json!({})).await;
    let to_queue = |i: usize| json!({"job_queue": format!("own-{i}")});
    for i in 0..2 {
        call(
            &lab.srv,
            "POST",
            "/v1/job",
            Some(&dave),
            None,
            Some(&to_queue(i)),
        )
        .await
        .expect_status(200);
    }
    let queues = call(
        &lab.srv,
        "POST",
        "/v1/job",
        Some(&dave),
        None,
        Some(&to_queue(2)),
    )
    .await
    .expect_error(507);
    assert!(
        queues.contains("client \"dave\"'s jobs") && queues.contains("each queue they are in"),
        "{queues}"
    );
    // A queue dave already has jobs in costs him only the job.
    call(
        &lab.srv,
        "POST",
        "/v1/job",
        Some(&dave),
        None,
        Some(&to_queue(1)),
    )
    .await
    .expect_status(200);
    let carol = lab.token_for("carol", "contributor", json!({})).await;
    submit(&lab.srv, Some(carol)).await.expect_status(200);

    let open = crate::util::TestServer::start_with(&flags);
    for _ in 0..6 {
        open.post_json("/v1/job", &job).await.expect_status(200);
    }
}

/// With access control on, one submitter's attachments take at most
/// `--max-jobs-share-percent` of `--max-attachments-bytes` (the job documents' share):
/// those of jobs submitted without a token all together, so anonymous callers declaring
/// attachments for jobs no agent takes cannot fill the disk or the room of everyone else;
/// a client with a token has its own. The count holds after a restart.
#[tokio::test]
async fn one_submitters_attachments_take_at_most_their_share_of_max_attachments_bytes() {
    // A share of 100,000 bytes.
    let mut lab = Lab::start(&[
        "--max-artifact-bytes",
        "100000",
        "--max-attachments-bytes",
        "400000",
        "--max-jobs-share-percent",
        "25",
    ]);
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let job = json!({"job_queue": "nobody-serves-this", "test_data": {"attachments": [{"agent": "a.bin"}]}});
    async fn submit(srv: &crate::util::TestServer, token: Option<&str>, job: &Value) -> String {
        let r = call(srv, "POST", "/v1/job", token, None, Some(job)).await;
        r.expect_json()["job_id"].as_str().unwrap().to_owned()
    }
    async fn upload(
        srv: &crate::util::TestServer,
        token: Option<&str>,
        id: &str,
        len: usize,
    ) -> crate::util::Resp {
        let data = crate::util::pseudo_random_bytes(len, 7);
        let (ct, body) = crate::util::multipart(&[crate::util::Part::file("file", "a.bin", &data)]);
        let path = format!("/v1/job/{id}/attachments");
        match token {
            None => srv.post_oversized(&path, Some(&ct), &body).await,
            Some(token) => {
                let bearer = format!("Bearer {token}");
                let headers = [("content-type", ct.as_str()), ("authorization", &bearer)];
                srv.request("POST", &path, &headers, body).await
            }
        }
    }
    let anonymous = [
        submit(&lab.srv, None, &job).await,
        submit(&lab.srv, None, &job).await,
    ];
    let theirs = submit(&lab.srv, Some(&alice), &job).await;
    upload(&lab.srv, None, &anonymous[0], 60_000)
        .await
        .expect_status(200);
    let refused = upload(&lab.srv, None, &anonymous[1], 60_000)
        .await
        .expect_error(507);
    for needed in [
        "attachments of jobs submitted without a token (all such clients together)",
        "100000 bytes (--max-jobs-share-percent of --max-attachments-bytes)",
        "a share of its own",
        "DELETE /v1/job/<id>",
    ] {
        assert!(refused.contains(needed), "{needed:?} in {refused}");
    }
    // Nobody else's room is taken.
    upload(&lab.srv, Some(&alice), &theirs, 60_000)
        .await
        .expect_status(200);
    lab.srv.restart();
    upload(&lab.srv, None, &anonymous[1], 60_000)
        .await
        .expect_error(507);
    upload(&lab.srv, None, &anonymous[1], 30_000)
        .await
        .expect_status(200);
}
