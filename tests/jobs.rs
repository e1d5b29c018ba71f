//! Submitting jobs (`POST /v1/job`), reading them back (`GET /v1/job/<id>`), id validation and
//! normalisation, resubmission, the job body size limit, and the version endpoints.

use serde_json::{json, Value};

use crate::util::{assert_json_same_order, new_id, TestServer};

const INVALID_DATA: &str = "Invalid data or no job_queue specified";
const INVALID_JOB_ID: &str = "Invalid job_id specified";

/// The spellings Python's `uuid.UUID` accepts for one id, and the normalised form.
fn spellings(id: &str) -> Vec<String> {
    let upper = id.to_uppercase();
    vec![
        id.to_string(),
        upper.clone(),
        format!("{{{id}}}"),
        format!("{{{upper}}}"),
        format!("urn:uuid:{id}"),
        format!("urn:uuid:{upper}"),
        id.replace('-', ""),
        upper.replace('-', ""),
    ]
}

#[tokio::test]
async fn version_text_is_served_when_root_or_v1_is_requested() {
    let srv = TestServer::start();
    for path in ["/", "/v1", "/v1/"] {
        let r = srv.get(path).await;
        r.expect_status(200);
        assert!(
            r.text().starts_with("Testflinger Server v"),
            "GET {path}: body {:?}",
            r.text()
        );
    }
}

#[tokio::test]
async fn submit_returns_fresh_lowercase_uuid_when_no_job_id_given() {
    let srv = TestServer::start();
    let r = srv.post_json("/v1/job", &json!({"job_queue": "q"})).await;
    let v = r.expect_json();
    assert!(
        r.content_type()
            .unwrap_or_default()
            .starts_with("application/json"),
        "content type {:?}",
        r.content_type()
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "body should be exactly {{job_id}}: {v}"
    );
    let id = v["job_id"].as_str().expect("job_id string");
    let parsed = uuid::Uuid::parse_str(id).expect("job_id is a UUID");
    assert_eq!(
        parsed.hyphenated().to_string(),
        id,
        "job_id must be lower-case hyphenated"
    );

    let other = srv.submit_to("q").await;
    assert_ne!(id, other, "two submissions must get different ids");
}

#[tokio::test]
async fn submit_keeps_supplied_id_when_job_id_is_canonical() {
    let srv = TestServer::start();
    let id = "77777777-7777-7777-7777-777777777777";
    let got = srv.submit(&json!({"job_queue": "q", "job_id": id})).await;
    assert_eq!(got, id);
    let job = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(job["job_id"], id);
}

#[tokio::test]
async fn submit_normalises_id_when_job_id_uses_another_uuid_spelling() {
    let srv = TestServer::start();
    let variants = spellings(&new_id()).len();
    for variant in 1..variants {
        let id = new_id();
        let spelled = spellings(&id)[variant].clone();
        let got = srv
            .submit(&json!({"job_queue": "q", "job_id": spelled}))
            .await;
        assert_eq!(got, id, "submitting job_id {spelled:?}");
        let job = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        assert_eq!(job["job_id"], id.as_str(), "stored job_id for {spelled:?}");
    }
}

#[tokio::test]
async fn submit_generates_id_when_job_id_is_null_or_empty() {
    let srv = TestServer::start();
    for given in [Value::Null, json!("")] {
        let id = srv
            .submit(&json!({"job_queue": "q", "job_id": given}))
            .await;
        uuid::Uuid::parse_str(&id).expect("generated id is a UUID");
        let job = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        assert_eq!(job["job_id"], id.as_str());
    }
}

#[tokio::test]
async fn submit_is_rejected_with_400_when_job_id_is_invalid() {
    let srv = TestServer::start();
    let bad = [
        json!("bad"),
        json!("1234"),
        json!("00000000-0000-0000-0000-00000000000X"),
        json!("00000000-0000-0000-0000-0000000000000"),
        json!("00000000-0000-0000-0000-00000000000"),
        json!(" 00000000-0000-0000-0000-000000000000 x"),
        json!("../../etc/passwd"),
        json!("x".repeat(10_000)),
        json!(12345),
        json!(1.5),
        json!(true),
        json!(["00000000-0000-0000-0000-000000000000"]),
        json!({"id": "00000000-0000-0000-0000-000000000000"}),
    ];
    for job_id in bad {
        let r = srv
            .post_json("/v1/job", &json!({"job_queue": "q", "job_id": job_id}))
            .await;
        let msg = r.expect_error(400);
        assert_eq!(msg, INVALID_JOB_ID, "job_id {job_id}");
    }
    assert_eq!(srv.pop(&["q"]).await, None, "no rejected job may be queued");
}

#[tokio::test]
async fn submit_is_rejected_with_400_when_body_is_not_an_object_or_queue_is_missing() {
    let srv = TestServer::start();
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"hello".to_vec(),
        b"{".to_vec(),
        b"{\"job_queue\": \"q\",}".to_vec(),
        b"[]".to_vec(),
        b"[{\"job_queue\": \"q\"}]".to_vec(),
        b"\"q\"".to_vec(),
        b"42".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"queue\": \"q\"}".to_vec(),
        b"{\"job_queue\": null}".to_vec(),
        b"{\"job_queue\": \"\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
    ];
    for body in bodies {
        let r = srv
            .post_raw("/v1/job", Some("application/json"), body.clone())
            .await;
        let msg = r.expect_error(400);
        // Testflinger's text, then what is wrong with this body.
        assert!(
            msg.starts_with(INVALID_DATA) && msg.len() > INVALID_DATA.len() + 2,
            "{msg}: body {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_ne!(
            msg,
            INVALID_DATA,
            "body {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // No body and no content type at all (upstream test_add_job_bad).
    let r = srv.request("POST", "/v1/job", &[], Vec::new()).await;
    assert!(r.expect_error(400).starts_with(INVALID_DATA));
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn submit_is_rejected_with_422_when_job_queue_has_wrong_type() {
    let srv = TestServer::start();
    for job_queue in [
        json!(123),
        json!(0),
        json!(1.5),
        json!(true),
        json!(false),
        json!(["q"]),
        json!({"q": 1}),
    ] {
        let r = srv
            .post_json("/v1/job", &json!({"job_queue": job_queue}))
            .await;
        r.expect_error(422);
        let v = r.json();
        assert!(v.get("detail").is_some(), "422 body needs a detail: {v}");
    }
    assert_eq!(srv.pop(&["123"]).await, None);
}

#[tokio::test]
async fn submit_is_accepted_when_content_type_is_not_json() {
    let srv = TestServer::start();
    let body = br#"{"job_queue": "q", "n": 1}"#.to_vec();
    let mut ids = Vec::new();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/octet-stream"),
    ] {
        let r = srv.post_raw("/v1/job", ct, body.clone()).await;
        let v = r.expect_json();
        ids.push(v["job_id"].as_str().expect("job_id").to_string());
    }
    for id in ids {
        assert_eq!(srv.pop_id(&["q"]).await, Some(id));
    }
}

#[tokio::test]
async fn job_is_returned_verbatim_with_key_order_when_fetched_by_id() {
    let srv = TestServer::start();
    let submitted = json!({
        "zeta": 1,
        "job_queue": "device-1",
        "alpha": {"z": [3, 2, 1], "a": {"y": null, "b": true}, "m": "ü ☃ \u{0} \"quoted\""},
        "provision_data": {"url": "http://example.com/img.img.xz"},
        "test_data": {"test_cmds": "echo hi\nls -la"},
        "float": 1.25,
        "neg": -7,
        "big": 9007199254740993u64,
        "empty_obj": {},
        "empty_list": [],
        "reserve_data": {"ssh_keys": ["lp:someone"], "timeout": 3600}
    });
    let id = srv.submit(&submitted).await;
    let mut expected = submitted.clone();
    let fields = expected.as_object_mut().unwrap();
    // Upstream's schema adds `exclude_agents: []` when absent.
    fields.insert("exclude_agents".to_string(), json!([]));
    fields.insert("job_id".to_string(), Value::String(id.clone()));

    for _ in 0..2 {
        let r = srv.get(&format!("/v1/job/{id}")).await;
        let got = r.expect_json();
        assert_json_same_order(&got, &expected);
        assert_eq!(
            got.as_object().unwrap().keys().next_back().unwrap(),
            "job_id",
            "job_id appended last"
        );
    }
    // Non-destructive: the job is still there to pop, and the popped copy is the same object
    // followed by the dispatch time (as HEAD's pop answer).
    let popped = srv.pop(&["device-1"]).await.expect("job still queued");
    assert_json_same_order(&without_started_at(popped), &expected);
}

#[tokio::test]
async fn job_id_is_replaced_in_place_when_submitted_in_another_spelling() {
    let srv = TestServer::start();
    let id = new_id();
    let submitted =
        json!({"a": 1, "job_id": format!("{{{}}}", id.to_uppercase()), "job_queue": "q", "z": 2});
    assert_eq!(srv.submit(&submitted).await, id);
    // Upstream's schema adds `exclude_agents: []` when absent.
    let expected = json!({"a": 1, "job_id": id, "job_queue": "q", "z": 2, "exclude_agents": []});
    let got = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_json_same_order(&got, &expected);
    let popped = srv.pop(&["q"]).await.expect("queued");
    assert_json_same_order(&without_started_at(popped), &expected);
}

/// A pop answer without its last member, `started_at` (checked to be there, and last).
fn without_started_at(mut popped: Value) -> Value {
    let fields = popped.as_object_mut().expect("an object");
    assert_eq!(
        fields.keys().next_back().map(String::as_str),
        Some("started_at")
    );
    fields.remove("started_at");
    popped
}

#[tokio::test]
async fn job_fetch_returns_204_when_id_is_unknown() {
    let srv = TestServer::start();
    srv.get(&format!("/v1/job/{}", new_id()))
        .await
        .expect_no_content();
    srv.get("/v1/job/00000000-0000-0000-0000-000000000000")
        .await
        .expect_no_content();
}

#[tokio::test]
async fn job_fetch_returns_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in [
        "foo",
        "00000000-0000-0000-0000-00000000000X",
        "1234",
        "%20",
        "..%2F..%2Fetc",
    ] {
        srv.get(&format!("/v1/job/{id}")).await.expect_error(400);
    }
}

#[tokio::test]
async fn every_id_endpoint_addresses_the_same_job_when_id_is_spelled_differently() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let upper = id.to_uppercase();
    // Path-safe spellings: braces percent-encoded as a client library would send them.
    let in_paths = [
        id.clone(),
        upper.clone(),
        format!("%7B{id}%7D"),
        format!("%7B{upper}%7D"),
        format!("urn:uuid:{id}"),
        id.replace('-', ""),
        upper.replace('-', ""),
    ];
    for (n, s) in in_paths.iter().enumerate() {
        let job = srv.get(&format!("/v1/job/{s}")).await.expect_json();
        assert_eq!(job["job_id"], id.as_str(), "GET /v1/job/{s}");
        let pos = srv.position(s).await;
        pos.expect_status(200);
        assert_eq!(pos.text(), "0", "position via {s}");
        srv.post_result(s, &json!({ format!("k{n}"): n })).await;
        let out = srv
            .post_raw(
                &format!("/v1/result/{s}/output"),
                None,
                format!("<{n}>").into_bytes(),
            )
            .await;
        out.expect_status(200);
    }
    let result = srv.result(&id).await;
    for n in 0..in_paths.len() {
        assert_eq!(
            result[format!("k{n}")],
            json!(n),
            "result merged through every spelling: {result}"
        );
    }
    let out = srv.get(&format!("/v1/result/{}/output", in_paths[2])).await;
    out.expect_status(200);
    let expected: String = (0..in_paths.len()).map(|n| format!("<{n}>")).collect();
    assert_eq!(out.text(), expected);

    srv.post_multipart(
        &format!("/v1/result/{}/artifact", in_paths[4]),
        "file",
        "a.tgz",
        b"ART",
    )
    .await
    .expect_status(200);
    let art = srv
        .get(&format!("/v1/result/{}/artifact", in_paths[6]))
        .await;
    art.expect_status(200);
    assert_eq!(&art.body[..], b"ART");

    srv.cancel(&in_paths[3]).await.expect_status(200);
    assert_eq!(srv.job_state(&in_paths[5]).await, "cancelled");
    assert_eq!(srv.job_state(&id).await, "cancelled");
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn resubmit_is_idempotent_when_job_is_still_waiting() {
    let srv = TestServer::start();
    let job = json!({"job_queue": "q", "payload": "x"});
    let id = srv.submit(&job).await;
    let again = json!({"job_queue": "q", "payload": "x", "job_id": id});
    assert_eq!(srv.submit(&again).await, id);
    // Another spelling of the same id is the same job too.
    let upper = json!({"job_queue": "q", "payload": "x", "job_id": id.to_uppercase()});
    assert_eq!(srv.submit(&upper).await, id);

    let r = srv.position(&id).await;
    r.expect_status(200);
    assert_eq!(r.text(), "0");
    assert_eq!(srv.pop_id(&["q"]).await, Some(id.clone()));
    assert_eq!(
        srv.pop(&["q"]).await,
        None,
        "only one copy may be dispatched"
    );
}

#[tokio::test]
async fn resubmit_queues_job_again_and_keeps_results_when_job_was_popped() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q", "payload": 1})).await;
    assert_eq!(srv.pop_id(&["q"]).await, Some(id.clone()));
    srv.post_result(
        &id,
        &json!({"job_state": "provision", "provision_output": "flashed"}),
    )
    .await;

    let again = json!({"job_queue": "q", "payload": 1, "job_id": id});
    assert_eq!(srv.submit(&again).await, id);
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "resubmitted", "{result}");
    assert_eq!(
        result["provision_output"], "flashed",
        "earlier results are kept: {result}"
    );

    let r = srv.position(&id).await;
    r.expect_status(200);
    assert_eq!(r.text(), "0");
    let popped = srv
        .pop(&["q"])
        .await
        .expect("resubmitted job is queued again");
    assert_eq!(popped["job_id"], id.as_str());
    assert_eq!(popped["payload"], 1);
    assert_eq!(srv.pop(&["q"]).await, None);
    assert_eq!(srv.job_state(&id).await, "running");
}

#[tokio::test]
async fn submit_is_rejected_with_413_when_body_exceeds_default_one_mib() {
    let srv = TestServer::start();
    let filler = "x".repeat(1024 * 1024);
    let body = serde_json::to_vec(&json!({"job_queue": "q", "filler": filler})).unwrap();
    let r = srv
        .post_oversized("/v1/job", Some("application/json"), &body)
        .await;
    assert_eq!(
        r.expect_error(413),
        "Payload too large: a job document (--max-job-bytes) is at most 1048576 bytes"
    );
    // Just under the limit is fine.
    let filler = "x".repeat(1024 * 1024 - 200);
    let id = srv
        .submit(&json!({"job_queue": "q", "filler": filler}))
        .await;
    let popped = srv.pop(&["q"]).await.expect("large job queued");
    assert_eq!(popped["job_id"], id.as_str());
    assert_eq!(popped["filler"].as_str().unwrap().len(), 1024 * 1024 - 200);
    assert_eq!(
        srv.pop(&["q"]).await,
        None,
        "the rejected job was not queued"
    );
}

#[tokio::test]
async fn submit_limit_is_exact_when_max_job_bytes_is_configured() {
    let srv = TestServer::start_with(&["--max-job-bytes", "1000"]);
    let prefix = br#"{"job_queue":"q","f":""#;
    let make = |total: usize| {
        let mut b = prefix.to_vec();
        b.resize(total - 2, b'y');
        b.extend_from_slice(b"\"}");
        assert_eq!(b.len(), total);
        b
    };
    srv.post_raw("/v1/job", Some("application/json"), make(1000))
        .await
        .expect_status(200);
    srv.post_oversized("/v1/job", Some("application/json"), &make(1001))
        .await
        .expect_error(413);
    srv.post_oversized("/v1/job", Some("application/json"), &make(5000))
        .await
        .expect_error(413);
    assert!(srv.pop(&["q"]).await.is_some());
    assert_eq!(
        srv.pop(&["q"]).await,
        None,
        "only the job within the limit was queued"
    );
}
