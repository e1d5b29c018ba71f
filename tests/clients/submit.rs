//! CLI `submit` with an attachment (the job is dispatched only after the upload), the
//! attachments upload's refusals, and submit-time validation: wrong field types are a 422
//! naming the field, `reserve_data.timeout` is stored as seconds, unknown fields reach the
//! agent.

use serde_json::json;

use super::{cli_auth_init, fake_tar_gz, position_of, post_gzip_file, Agent};
use crate::util::{job_id_of, new_id, TestServer};

#[tokio::test]
async fn submit_with_attachment_dispatches_only_after_upload_when_cli_sequence_is_replayed() {
    let srv = TestServer::start();
    cli_auth_init(&srv).await;

    // Pre-check: no agent lists the queue yet.
    let r = srv.get("/v1/queues/lab-q/agents").await;
    assert_eq!(r.expect_error(404), "Queue 'lab-q' does not exist.");

    // An agent serves the queue: the CLI sees a list of {name, state, ...}.
    let agent = Agent::register(&srv, "dut-1", &["lab-q"]).await;
    let agents = srv.get("/v1/queues/lab-q/agents").await.expect_json();
    let agents = agents.as_array().expect("a JSON list of agents");
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["name"], "dut-1");
    assert_eq!(agents[0]["state"], "waiting");

    // The job as the CLI rewrites it: `local` removed, `agent` the path in the archive.
    let job = json!({
        "job_queue": "lab-q",
        "provision_data": {"distro": "noble"},
        "test_data": {
            "test_cmds": "ls test/",
            "attachments": [{"agent": "scripts/run.sh"}],
        },
    });
    let id = srv.submit(&job).await;

    // Not dispatched before the attachments arrive, but waiting (position answers).
    assert_eq!(agent.pop(&["lab-q"]).await, None);
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(position_of(&srv, &id).await, 0);
    srv.get(&format!("/v1/job/{id}/attachments"))
        .await
        .expect_no_content();

    let archive = fake_tar_gz(3000, 7);
    let r = post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "tmpq1w2e3r4.tar.gz",
        &archive,
    )
    .await;
    r.expect_status(200);
    // The CLI retries uploads whose answer it lost: a second upload is still a success.
    post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "tmpq1w2e3r4.tar.gz",
        &archive,
    )
    .await
    .expect_status(200);

    let popped = agent
        .pop(&["lab-q"])
        .await
        .expect("dispatched once attached");
    assert_eq!(job_id_of(&popped), id);
    assert_eq!(popped["attachments_status"], "complete");
    assert_eq!(
        popped["test_data"]["attachments"],
        job["test_data"]["attachments"]
    );

    // The stored job, as `show` reads it, does not expose the internal status.
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert!(shown.get("attachments_status").is_none(), "{shown}");

    // The agent downloads them: the exact bytes.
    let r = agent.get(&format!("/v1/job/{id}/attachments")).await;
    r.expect_status(200);
    assert_eq!(r.body.as_ref(), archive.as_slice(), "attachments differ");

    // No longer waiting: further uploads are refused with 422.
    let r = post_gzip_file(
        &srv.http(),
        &format!("/v1/job/{id}/attachments"),
        "a.tar.gz",
        b"x",
    )
    .await;
    assert_eq!(
        r.status,
        422,
        "upload for a running job; body {:?}",
        r.text()
    );
}

/// An attachments upload let in while the job awaited them, but finished after another
/// upload stored them, does not replace them: 400 while the job still waits, 422 once it
/// is dispatched; the agent gets the first upload's bytes, also after a restart.
#[tokio::test]
async fn attachments_stored_by_one_upload_are_not_replaced_by_a_slower_one() {
    use crate::util::RawConn;
    let mut srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-race", &["race-q"]).await;
    let id = srv
        .submit(&json!({"job_queue": "race-q", "test_data": {"attachments": [{"agent": "a"}]}}))
        .await;
    let path = format!("/v1/job/{id}/attachments");
    // Two uploads whose last bytes are held back: both are let in while the job waits.
    let mut slow = Vec::new();
    for seed in [11, 12] {
        let boundary = "slowboundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"a.tar.gz\"\r\n\r\n"
        )
        .into_bytes();
        body.extend(fake_tar_gz(2000, seed));
        body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = crate::util::raw_post(
            &path,
            Some(&format!("multipart/form-data; boundary={boundary}")),
            &body,
            false,
        );
        let (head, tail) = request.split_at(request.len() - 10);
        let mut conn = RawConn::connect(srv.base()).await;
        conn.send(head).await;
        slow.push((conn, tail.to_vec()));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let first = fake_tar_gz(3000, 10);
    post_gzip_file(&srv.http(), &path, "a.tar.gz", &first)
        .await
        .expect_status(200);
    let (mut conn, tail) = slow.remove(0);
    conn.send(&tail).await;
    let r = conn.read_response().await.expect("an answer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not replaced"), "{}", r.text());
    assert_eq!(
        job_id_of(&agent.pop(&["race-q"]).await.expect("dispatched")),
        id
    );
    let (mut conn, tail) = slow.remove(0);
    conn.send(&tail).await;
    let r = conn.read_response().await.expect("an answer");
    assert_eq!(r.status, 422, "{}", r.text());
    let got = agent.get(&path).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), first.as_slice(), "attachments replaced");
    srv.restart();
    let got = srv
        .http()
        .get_with_headers(&path, &[("cookie", &agent.cookie)])
        .await;
    assert_eq!(
        got.body.as_ref(),
        first.as_slice(),
        "replaced after a restart"
    );
}

/// A re-upload made after the attachments were stored, while the job still waits: the
/// same bytes (the CLI retrying an upload whose answer it lost) are a success, other bytes
/// (another size, or one byte changed past the first read chunk) a 400 saying they are not
/// replaced. The stored bytes stay, and no re-upload leaves a file behind.
#[tokio::test]
async fn attachments_reupload_is_200_when_identical_and_400_when_content_differs() {
    use std::time::{Duration, Instant};
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-again", &["again-q"]).await;
    let id = srv
        .submit(&json!({"job_queue": "again-q", "test_data": {"attachments": [{"agent": "a"}]}}))
        .await;
    let path = format!("/v1/job/{id}/attachments");
    // Larger than one read chunk (256 KiB): the comparison spans chunks.
    let first = fake_tar_gz(300_000, 21);
    post_gzip_file(&srv.http(), &path, "a.tar.gz", &first)
        .await
        .expect_status(200);
    let stored = srv.stored_files();
    assert_eq!(stored.len(), 1, "{stored:?}");

    post_gzip_file(&srv.http(), &path, "a.tar.gz", &first)
        .await
        .expect_status(200);
    let mut last_byte_differs = first.clone();
    *last_byte_differs.last_mut().unwrap() ^= 1;
    for other in [last_byte_differs, fake_tar_gz(1000, 22)] {
        let r = post_gzip_file(&srv.http(), &path, "a.tar.gz", &other).await;
        let message = r.expect_error(400);
        assert!(message.contains("not replaced"), "{message}");
    }

    // Each re-upload was received into a file of its own, deleted off the answer's path.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.stored_files() != stored {
        assert!(
            Instant::now() < deadline,
            "a re-upload left a file: {:?} (stored {stored:?})",
            srv.stored_files()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(
        job_id_of(&agent.pop(&["again-q"]).await.expect("dispatched")),
        id
    );
    let got = agent.get(&path).await;
    got.expect_status(200);
    assert_eq!(got.body.as_ref(), first.as_slice(), "attachments replaced");
}

/// Two uploads of different attachments for one waiting job, sent at once: at most one is
/// told it stored them, and the stored bytes are that one's. (Both used to be answered
/// 200 when the second finished while the first's arrival was being recorded: the second
/// replaced the first's file.) The same bytes sent twice at once are both a success.
#[tokio::test]
async fn concurrent_attachments_uploads_with_different_content_are_not_both_200() {
    let srv = TestServer::start();
    let http = srv.http();
    let trials = 12;
    for trial in 0..trials {
        let id = srv
            .submit(&json!({"job_queue": "race-q", "test_data": {"attachments": [{"agent": "a"}]}}))
            .await;
        let path = format!("/v1/job/{id}/attachments");
        let ours = fake_tar_gz(400_000, 100 + trial);
        let theirs = if trial % 4 == 3 {
            ours.clone()
        } else {
            fake_tar_gz(400_000, 200 + trial)
        };
        let (a, b) = tokio::join!(
            post_gzip_file(&http, &path, "a.tar.gz", &ours),
            post_gzip_file(&http, &path, "b.tar.gz", &theirs)
        );
        let stored = srv.get(&path).await;
        stored.expect_status(200);
        let stored = stored.body.as_ref();
        let same = ours == theirs;
        for (r, sent) in [(&a, &ours), (&b, &theirs)] {
            match r.status {
                200 => assert_eq!(
                    stored,
                    sent.as_slice(),
                    "trial {trial}: an upload was told 200 but other bytes are stored"
                ),
                400 if !same => assert!(r.message().contains("not replaced"), "{}", r.message()),
                status => panic!("trial {trial}: unexpected {status}: {}", r.text_preview()),
            }
        }
        if same {
            assert_eq!((a.status, b.status), (200, 200), "trial {trial}");
        }
    }
}

#[tokio::test]
async fn attachments_upload_is_refused_when_job_has_none_is_unknown_or_id_is_malformed() {
    let srv = TestServer::start();
    let plain = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "true"}}))
        .await;
    let http = srv.http();
    let archive = fake_tar_gz(100, 3);

    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{plain}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(
        r.status,
        422,
        "job without declared attachments; body {:?}",
        r.text()
    );
    assert!(
        r.text().contains("not awaiting attachments"),
        "{:?}",
        r.text()
    );
    // Still dispatchable, and no attachments were stored.
    srv.get(&format!("/v1/job/{plain}/attachments"))
        .await
        .expect_no_content();

    let unknown = new_id();
    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{unknown}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 422, "unknown job; body {:?}", r.text());
    assert!(r.text().contains("is not valid"), "{:?}", r.text());

    // A cancelled job awaiting attachments is not waiting any more.
    let attached = srv
        .submit(&json!({"job_queue": "q", "provision_data": {"attachments": [{"agent": "img"}]}}))
        .await;
    srv.cancel(&attached).await.expect_status(200);
    let r = post_gzip_file(
        &http,
        &format!("/v1/job/{attached}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 422, "cancelled job; body {:?}", r.text());

    let r = post_gzip_file(
        &http,
        "/v1/job/not-a-uuid/attachments",
        "a.tar.gz",
        &archive,
    )
    .await;
    assert_eq!(r.status, 400, "malformed id; body {:?}", r.text());
    srv.get("/v1/job/not-a-uuid/attachments")
        .await
        .expect_status(400);

    // firmware_update_data attachments also hold the job back.
    let fw = srv
        .submit(&json!({"job_queue": "fw", "firmware_update_data": {"attachments": [{"agent": "fw.bin"}]}}))
        .await;
    assert_eq!(srv.pop(&["fw"]).await, None);
    post_gzip_file(
        &http,
        &format!("/v1/job/{fw}/attachments"),
        "a.tar.gz",
        &archive,
    )
    .await
    .expect_status(200);
    assert_eq!(srv.pop_id(&["fw"]).await, Some(fw));
}

#[tokio::test]
async fn submit_is_refused_with_422_naming_the_field_when_known_fields_have_wrong_types() {
    let srv = TestServer::start();
    for (job, field) in [
        (
            json!({"job_queue": "q", "job_priority": "x"}),
            "job_priority",
        ),
        (
            json!({"job_queue": "q", "job_priority": true}),
            "job_priority",
        ),
        (
            json!({"job_queue": "q", "exclude_agents": "a"}),
            "exclude_agents",
        ),
        (
            json!({"job_queue": "q", "exclude_agents": [1]}),
            "exclude_agents",
        ),
        (json!({"job_queue": "q", "tags": "x"}), "tags"),
        (
            json!({"job_queue": "q", "global_timeout": "long"}),
            "global_timeout",
        ),
        (json!({"job_queue": "q", "test_data": "echo"}), "test_data"),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": "soon"}}),
            "reserve_data",
        ),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": -5}}),
            "reserve_data",
        ),
        (
            json!({"job_queue": "q", "reserve_data": {"timeout": ""}}),
            "reserve_data",
        ),
    ] {
        let r = srv.post_json("/v1/job", &job).await;
        r.expect_error(422);
        let body = r.json();
        let detail = &body["detail"];
        assert!(
            detail["json"].get(field).is_some(),
            "{job}: detail should name {field}: {body}"
        );
        if field == "reserve_data" {
            assert!(detail.to_string().contains("timeout"), "{job}: {body}");
        }
    }
    // Nothing was queued by the refused submissions.
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn reserve_timeout_is_stored_as_seconds_and_unknown_fields_reach_agent_when_submitted() {
    let srv = TestServer::start();
    let agent = Agent::register(&srv, "dut-1", &["q"]).await;
    let job = json!({
        "job_queue": "q",
        "reserve_data": {"ssh_keys": ["lp:someone"], "timeout": "1h30m"},
        "provision_data": {"distro": "noble"},
        "my_lab_extension": {"power": ["pdu-1", 4]},
        "tags": ["nightly"],
    });
    let id = srv.submit(&job).await;
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(shown["reserve_data"]["timeout"], 5400);
    assert_eq!(shown["reserve_data"]["ssh_keys"], json!(["lp:someone"]));
    let popped = agent.pop(&["q"]).await.expect("job");
    assert_eq!(popped["reserve_data"]["timeout"], 5400);
    assert_eq!(popped["my_lab_extension"], json!({"power": ["pdu-1", 4]}));
    assert_eq!(popped["tags"], json!(["nightly"]));

    for (timeout, seconds) in [
        (json!("30m"), 1800),
        (json!("2d"), 172_800),
        (json!("1800s"), 1800),
        (json!("1800"), 1800),
        (json!(600), 600),
    ] {
        let id = srv
            .submit(&json!({"job_queue": "r", "reserve_data": {"timeout": timeout}}))
            .await;
        let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        assert_eq!(
            shown["reserve_data"]["timeout"], seconds,
            "timeout {timeout}"
        );
    }
}
