//! Result objects (`POST|GET /v1/result/<id>`): shallow merge, no job required, validation and
//! the size limit.

use serde_json::json;

use crate::util::{new_id, Resp, TestServer};

const INVALID_RESULT: &str = "Invalid result data";

#[tokio::test]
async fn result_is_waiting_when_job_was_just_submitted() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let r = srv.get(&format!("/v1/result/{id}")).await;
    assert_eq!(r.expect_json(), json!({"job_state": "waiting"}));
}

#[tokio::test]
async fn result_is_204_when_nothing_was_posted_for_id() {
    let srv = TestServer::start();
    srv.get(&format!("/v1/result/{}", new_id()))
        .await
        .expect_no_content();
    srv.get("/v1/result/00000000-0000-0000-0000-000000000000")
        .await
        .expect_no_content();
}

#[tokio::test]
async fn result_is_stored_as_posted_when_no_job_exists() {
    let srv = TestServer::start();
    let id = "00000000-0000-0000-0000-000000000000";
    let r = srv
        .post_json(&format!("/v1/result/{id}"), &json!({"foo": "test"}))
        .await;
    r.expect_status(200);
    assert_eq!(srv.result(id).await, json!({"foo": "test"}));
    // Still no job by that id.
    srv.get(&format!("/v1/job/{id}")).await.expect_no_content();
}

#[tokio::test]
async fn result_post_merges_top_level_keys_when_posted_twice() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    srv.post_result(
        &id,
        &json!({"foo": "test", "nested": {"x": 1, "keep": true}, "list": [1, 2]}),
    )
    .await;
    srv.post_result(&id, &json!({"nested": {"y": 2}, "bar": null, "list": []}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(
        result,
        json!({
            "job_state": "waiting",
            "foo": "test",
            "nested": {"y": 2},
            "list": [],
            "bar": null
        }),
        "shallow merge: top-level keys replace"
    );
}

#[tokio::test]
async fn job_state_follows_agent_when_state_is_not_terminal() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert!(srv.pop(&["q"]).await.is_some());
    for phase in [
        "setup",
        "provision",
        "firmware_update",
        "test",
        "allocate",
        "reserve",
        "cleanup",
    ] {
        srv.post_result(&id, &json!({"job_state": phase})).await;
        assert_eq!(srv.job_state(&id).await, phase);
    }
    srv.post_result(
        &id,
        &json!({"job_state": "complete", "test_status": 0, "device_info": {"ip": "10.0.0.1"}}),
    )
    .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "complete");
    assert_eq!(result["device_info"]["ip"], "10.0.0.1");
}

/// A phase reported for a job no agent has taken would strand it (upstream's HEAD takes it
/// out of its queue, where no agent gets it and no lost-agent rule finds it): 400 (a
/// conflict, as Testflinger answers a cancel of a finished job) naming
/// the queue, the job still dispatched after; an end (what upstream's tests post) still
/// ends it, and a report with other fields is refused whole.
#[tokio::test]
async fn a_phase_for_a_job_no_agent_has_taken_is_400_and_the_job_stays_queued() {
    let srv = TestServer::start();
    let id = srv.submit_to("strand").await;
    let path = format!("/v1/result/{id}");
    for body in [
        json!({"job_state": "setup"}),
        json!({"job_state": "provision", "device_info": {"ip": "10.0.0.9"}}),
    ] {
        let r = srv.post_json(&path, &body).await;
        r.expect_status(400);
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("waiting in queue 'strand'") && message.contains("no agent"),
            "{message}"
        );
    }
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(srv.result(&id).await.get("device_info"), None);
    srv.get(&format!("/v1/job/{id}/position"))
        .await
        .expect_status(200);
    assert_eq!(srv.pop_id(&["strand"]).await.as_deref(), Some(id.as_str()));
    srv.post_result(&id, &json!({"job_state": "setup"})).await;
    assert_eq!(srv.job_state(&id).await, "setup");

    let other = srv.submit_to("strand").await;
    srv.post_result(&other, &json!({"job_state": "cancelled"}))
        .await;
    assert_eq!(srv.job_state(&other).await, "cancelled");
    assert_eq!(srv.pop(&["strand"]).await, None);
}

#[tokio::test]
async fn result_post_keeps_earlier_fields_when_state_changes() {
    let srv = TestServer::start();
    let id = new_id();
    srv.post_result(&id, &json!({"foo": "test", "job_state": "waiting"}))
        .await;
    srv.post_result(&id, &json!({"job_state": "provision"}))
        .await;
    assert_eq!(
        srv.result(&id).await,
        json!({"foo": "test", "job_state": "provision"})
    );
}

#[tokio::test]
async fn result_post_is_400_when_body_is_not_a_json_object() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}");
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"[{\"a\": 1}]".to_vec(),
        b"\"str\"".to_vec(),
        b"3".to_vec(),
        b"null".to_vec(),
        b"true".to_vec(),
        vec![0xff, 0xfe],
    ];
    for body in bodies {
        let r = srv
            .post_raw(&path, Some("application/json"), body.clone())
            .await;
        assert_eq!(
            r.status,
            400,
            "body {:?}: {}",
            String::from_utf8_lossy(&body),
            r.text_preview()
        );
        // Testflinger's text, then what is wrong with this body.
        let message = r.expect_json_error();
        assert!(
            message.starts_with(INVALID_RESULT) && message.len() > INVALID_RESULT.len() + 2,
            "{message}"
        );
    }
    assert_eq!(
        srv.result(&id).await,
        json!({"job_state": "waiting"}),
        "nothing merged"
    );
}

/// `job_state` is a string (upstream's schema: anything else is its 422) and, since it
/// becomes the job's lifecycle state, 1 to 256 bytes without control or bidirectional
/// characters; a refused post changes nothing.
#[tokio::test]
async fn result_post_is_422_when_job_state_is_not_a_string_or_too_long() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}");
    let long = "s".repeat(257);
    let cases = [
        (json!({"job_state": 5}), "Not a valid string."),
        (json!({"job_state": ["test"]}), "Not a valid string."),
        (json!({"job_state": null}), "Field may not be null."),
        (
            json!({"job_state": long, "note": 1}),
            "Longer than maximum length 256.",
        ),
        (json!({"job_state": ""}), "Shorter than minimum length 1."),
        (
            json!({"job_state": "te\u{0000}st"}),
            "the control character U+0000",
        ),
        (
            json!({"job_state": "\u{202e}tset"}),
            "the bidirectional text control U+202E",
        ),
    ];
    for (body, reason) in cases {
        let r = srv.post_json(&path, &body).await;
        r.expect_error(422);
        let text = r.text();
        assert!(
            text.contains("job_state") && text.contains(reason),
            "{body}: {text}"
        );
    }
    assert_eq!(
        srv.result(&id).await,
        json!({"job_state": "waiting"}),
        "nothing changed"
    );
    // Only the agent that took the job reports a phase of it.
    assert!(srv.pop(&["q"]).await.is_some());
    let longest = "s".repeat(256);
    srv.post_result(&id, &json!({"job_state": longest})).await;
    assert_eq!(srv.job_state(&id).await, longest);
}

/// A log fragment missing a member is upstream's 422 saying that member is missing (it
/// was answered as if present with the wrong type: "Not a valid datetime." for a missing
/// timestamp); a member of the wrong type is still named as such.
#[tokio::test]
async fn log_post_is_422_naming_the_missing_member_when_one_is_absent() {
    let srv = TestServer::start();
    let path = format!("/v1/result/{}/log/output", new_id());
    let whole = json!({
        "fragment_number": 0,
        "timestamp": "2024-01-01T00:00:00+00:00",
        "phase": "test",
        "log_data": "x",
    });
    for field in ["fragment_number", "timestamp", "phase", "log_data"] {
        let mut body = whole.clone();
        body.as_object_mut().unwrap().remove(field);
        let r = srv.post_json(&path, &body).await;
        r.expect_error(422);
        let reasons = &r.json()["detail"]["json"][field];
        assert_eq!(
            reasons,
            &json!(["Missing data for required field."]),
            "{field}: {}",
            r.text()
        );
    }
    let mut wrong = whole.clone();
    wrong["timestamp"] = json!("yesterday");
    let r = srv.post_json(&path, &wrong).await;
    r.expect_error(422);
    assert_eq!(
        r.json()["detail"]["json"]["timestamp"],
        json!(["Not a valid datetime."])
    );
    srv.post_json(&path, &whole).await.expect_status(200);
}

#[tokio::test]
async fn result_endpoints_are_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in ["BAD_JOB_ID", "00000000-0000-0000-0000-00000000000X", "0"] {
        srv.get(&format!("/v1/result/{id}")).await.expect_error(400);
        srv.post_json(&format!("/v1/result/{id}"), &json!({"a": 1}))
            .await
            .expect_error(400);
    }
}

#[tokio::test]
async fn result_post_is_413_when_body_exceeds_max_result_bytes() {
    let srv = TestServer::start_with(&["--max-result-bytes", "1024"]);
    let id = new_id();
    let make = |total: usize| {
        let mut b = br#"{"f":""#.to_vec();
        b.resize(total - 2, b'r');
        b.extend_from_slice(b"\"}");
        b
    };
    let path = format!("/v1/result/{id}");
    srv.post_raw(&path, Some("application/json"), make(1024))
        .await
        .expect_status(200);
    srv.post_oversized(&path, Some("application/json"), &make(1025))
        .await
        .expect_error(413);
    srv.post_oversized(&path, Some("application/json"), &make(100_000))
        .await
        .expect_error(413);
    assert_eq!(srv.result(&id).await["f"].as_str().unwrap().len(), 1024 - 8);
}

#[tokio::test]
async fn result_post_is_413_when_body_exceeds_default_sixteen_mib() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}");
    // Well over the 1 MiB job limit but under 16 MiB: accepted.
    let big = "o".repeat(3 * 1024 * 1024);
    srv.post_json(&path, &json!({"test_output": big}))
        .await
        .expect_status(200);
    assert_eq!(
        srv.result(&id).await["test_output"].as_str().unwrap().len(),
        3 * 1024 * 1024
    );
    let huge = "o".repeat(16 * 1024 * 1024);
    let body = serde_json::to_vec(&json!({"test_output": huge})).unwrap();
    srv.post_oversized(&path, Some("application/json"), &body)
        .await
        .expect_error(413);
}

#[tokio::test]
async fn small_merges_onto_a_large_result_stay_cheap_and_keep_every_field() {
    // A big snapshot threshold would hide the snapshot path; a small one takes snapshots
    // of the large document during the merges, and the restart loads one.
    let mut srv = TestServer::start_with(&["--snapshot-bytes", "10000000"]);
    let id = srv.submit_to("q").await;
    let big = "x".repeat(15 << 20);
    srv.post_result(&id, &json!({"big": big, "first": 0})).await;
    let started = std::time::Instant::now();
    for i in 0..300 {
        srv.post_result(&id, &json!({format!("k{}", i % 10): i, "first": i}))
            .await;
    }
    let took = started.elapsed();
    // Re-parsing and re-writing the 15 MiB document on each merge took 60–200 ms per
    // merge even on a fast machine (18 s and more for these 300); a merge that parses
    // only the post takes a few milliseconds (its fsync).
    assert!(
        took < std::time::Duration::from_secs(10),
        "300 small merges onto a 15 MiB result took {took:?}"
    );
    let check = |result: serde_json::Value| {
        let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
        let mut want = vec!["job_state".to_string(), "big".into(), "first".into()];
        want.extend((0..10).map(|k| format!("k{k}")));
        assert_eq!(keys, want.iter().collect::<Vec<_>>());
        assert_eq!(result["first"], json!(299));
        assert_eq!(result["k3"], json!(293));
        assert_eq!(result["big"].as_str().map(str::len), Some(15 << 20));
    };
    check(srv.result(&id).await);
    srv.restart();
    check(srv.result(&id).await);
}

/// A job's results and logs together are bounded (`--max-job-data-bytes`): every post is
/// bounded on its own, but not their number, and `GET /v1/result/<id>` builds its answer
/// from all of them. A post that would pass the bound is 413 naming it and stores nothing.
#[tokio::test]
async fn results_and_logs_of_one_job_stop_at_max_job_data_bytes() {
    let srv = TestServer::start_with(&[
        "--max-job-data-bytes",
        "200000",
        "--max-result-bytes",
        "65536",
        "--max-output-bytes",
        "65536",
    ]);
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}");
    for i in 0..3 {
        srv.post_result(&id, &json!({format!("k{i}"): "x".repeat(60_000)}))
            .await;
    }
    let fragment = |n: u64, len: usize| {
        json!({"fragment_number": n, "timestamp": "2026-11-30T00:00:00Z", "phase": "test",
               "log_data": "y".repeat(len)})
    };
    let log = format!("/v1/result/{id}/log/output");
    let r = srv.post_json(&log, &fragment(0, 30_000)).await;
    let message = r.expect_error(413);
    assert!(message.contains("--max-job-data-bytes"), "{message}");
    let r = srv
        .post_json(&path, &json!({"k3": "x".repeat(30_000)}))
        .await;
    r.expect_error(413);
    let r = srv
        .post_raw(
            &format!("{path}/output"),
            Some("text/plain"),
            vec![b'z'; 30_000],
        )
        .await;
    r.expect_error(413);
    let result = srv.result(&id).await;
    assert!(
        result.get("k3").is_none() && result.get("test_output").is_none(),
        "nothing stored"
    );
    srv.post_json(&log, &fragment(0, 5_000))
        .await
        .expect_status(200);
}

/// All jobs' results and logs together are bounded (`--max-results-bytes`): each job's are,
/// but jobs are many and waiting ones never expire. A post that would add data past it is
/// 507 naming the bound, the option, what is held and how room comes back, and stores
/// nothing; the count is the recorded state's after a restart (from the log, and from a
/// snapshot), and deleting a job gives
/// its room back. Data of an id no job has is kept on disk, not in memory: it counts only
/// against `--orphan-quota-bytes`.
#[tokio::test]
async fn results_and_logs_of_all_jobs_stop_at_max_results_bytes_until_a_job_is_removed() {
    let mut srv = TestServer::start_with(
        &[
            crate::util::SNAPSHOT_SOON,
            &[
                "--max-results-bytes",
                "250700",
                "--max-job-data-bytes",
                "200000",
                "--max-result-bytes",
                "65536",
                "--max-output-bytes",
                "65536",
            ],
        ]
        .concat(),
    );
    let fragment = |n: u64| {
        json!({"fragment_number": n, "timestamp": "2026-12-03T10:00:00Z", "phase": "test",
               "log_data": "x".repeat(50_000)})
    };
    let log = |id: &str| format!("/v1/result/{id}/log/output");
    let (a, b, c) = (
        srv.submit_to("memq").await,
        srv.submit_to("memq").await,
        srv.submit_to("memq").await,
    );
    // Each fragment is charged 50,000 + 4 ("test") + 128: five fit in 250,700, and leave
    // too little for a field or a chunk (each charged 128 besides its text).
    for n in 0..3 {
        srv.post_json(&log(&a), &fragment(n))
            .await
            .expect_status(200);
    }
    for n in 0..2 {
        srv.post_json(&log(&b), &fragment(n))
            .await
            .expect_status(200);
    }
    let held = 5 * 50_132;
    let refused = |message: String| {
        for part in [
            "--max-results-bytes",
            "250700",
            &format!("take {held} bytes"),
            "--retention-secs",
            "DELETE /v1/job/<id>",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    };
    refused(
        srv.post_json(&log(&b), &fragment(2))
            .await
            .expect_error(507),
    );
    refused(
        srv.post_json(&format!("/v1/result/{c}"), &json!({"k": "v"}))
            .await
            .expect_error(507),
    );
    refused(
        srv.post_raw(
            &format!("/v1/result/{c}/output"),
            Some("text/plain"),
            b"chunk".to_vec(),
        )
        .await
        .expect_error(507),
    );
    // A retry adds nothing: still answered as stored.
    srv.post_json(&log(&b), &fragment(1))
        .await
        .expect_status(200);
    let logged = srv.get(&log(&b)).await;
    assert_eq!(
        logged.expect_json()["output"]["test"]["last_fragment_number"],
        1,
        "nothing of the refused post stored"
    );
    assert_eq!(srv.result(&c).await, json!({"job_state": "waiting"}));
    // Data of an id no job has is on disk: not counted here.
    srv.post_json(&log(&crate::util::new_id()), &fragment(0))
        .await
        .expect_status(200);

    // Counted again from the log, then from a snapshot (and the log after it).
    srv.restart();
    refused(
        srv.post_json(&log(&b), &fragment(2))
            .await
            .expect_error(507),
    );
    srv.log_for_a_snapshot().await;
    srv.snapshot_taken().await;
    srv.kill9();
    srv.start_again();
    refused(
        srv.post_json(&log(&b), &fragment(2))
            .await
            .expect_error(507),
    );

    srv.request("DELETE", &format!("/v1/job/{a}"), &[], Vec::new())
        .await
        .expect_status(200);
    srv.post_json(&log(&b), &fragment(2))
        .await
        .expect_status(200);
    srv.post_json(&format!("/v1/result/{c}"), &json!({"k": "v"}))
        .await
        .expect_status(200);
}

/// An empty fragment or a tiny result field is not free: each one is charged a fixed
/// overhead (and a fragment its phase name), so a client posting millions of them meets
/// the same bound.
#[tokio::test]
async fn empty_log_fragments_and_tiny_fields_count_against_max_job_data_bytes() {
    let srv = TestServer::start_with(&[
        "--max-job-data-bytes",
        "8192",
        "--max-result-bytes",
        "4096",
        "--max-output-bytes",
        "4096",
    ]);
    let id = srv.submit_to("q").await;
    let log = format!("/v1/result/{id}/log/output");
    let mut stored = 0;
    let refused = loop {
        let fragment = json!({"fragment_number": stored, "timestamp": "2026-11-30T00:00:00Z",
                              "phase": "test", "log_data": ""});
        let r = srv.post_json(&log, &fragment).await;
        if r.status != 200 {
            break r;
        }
        stored += 1;
        assert!(stored < 1_000, "1,000 empty fragments were all taken");
    };
    assert!(refused.expect_error(413).contains("--max-job-data-bytes"));
    // 8192 bytes at 132 each (128 + "test"): 62 fragments.
    assert_eq!(stored, 8192 / 132, "fragments stored before the bound");
    // Nor are small result fields: each costs 128 bytes besides its text.
    let other = srv.submit_to("q").await;
    let fields = |from: usize| {
        let map: serde_json::Map<String, serde_json::Value> = (from..from + 40)
            .map(|i| (format!("k{i}"), json!(0)))
            .collect();
        serde_json::Value::Object(map)
    };
    let path = format!("/v1/result/{other}");
    srv.post_json(&path, &fields(0)).await.expect_status(200);
    let message = srv.post_json(&path, &fields(40)).await.expect_error(413);
    assert!(message.contains("--max-job-data-bytes"), "{message}");
}

/// A log GET is streamed from the stored fragments in bounded chunks, yet its bytes are
/// exactly serde_json's for the document, with its `Content-Length`: text with every
/// character JSON escapes, long enough for many chunks; and a character the legacy
/// output split across two posts is whole again (as in the joined text), next to bytes
/// that are not UTF-8 (U+FFFD).
#[tokio::test]
async fn log_get_streams_exactly_serde_jsons_bytes_and_length_when_the_log_spans_many_chunks() {
    let srv = TestServer::start();
    let id = srv.submit_to("streamq").await;
    srv.pop_id(&["streamq"]).await.unwrap();
    let tricky =
        "quote \" backslash \\ tab \t nl \n cr \r ctl \u{1} \u{1f} del \u{7f} é € 😀 </script>\n";
    let big = tricky.repeat(3000);
    post_logs_spanning_chunks(&srv, &id, &big, ["test", "test", "test"]).await;
    for (kind, want) in [
        ("serial", big.repeat(3)),
        ("output", "café \u{FFFD}!".into()),
    ] {
        let doc = exact_json(srv.get(&format!("/v1/result/{id}/log/{kind}")).await);
        let texts: Vec<&str> = doc[kind]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p["log_data"].as_str().unwrap())
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(texts, [want.as_str()], "{kind}");
    }
}

/// Posts three serial fragments of `text` (fragment 0, 1, 2 in `phases`) and, as legacy
/// output, "café" split inside its `é` followed by bytes that are not UTF-8.
async fn post_logs_spanning_chunks(srv: &TestServer, id: &str, text: &str, phases: [&str; 3]) {
    for (n, phase) in phases.into_iter().enumerate() {
        let body = json!({"fragment_number": n, "timestamp": "2026-12-02T10:00:00+00:00",
            "phase": phase, "log_data": text});
        srv.post_json(&format!("/v1/result/{id}/log/serial"), &body)
            .await
            .expect_status(200);
    }
    for raw in [&b"caf\xc3"[..], &b"\xa9 \xff!"[..]] {
        srv.post_raw(&format!("/v1/result/{id}/output"), None, raw.to_vec())
            .await
            .expect_status(200);
    }
}

/// The document of a 200 JSON answer, asserting its `Content-Length` is its length and its
/// bytes are exactly what serde_json writes for it.
fn exact_json(r: Resp) -> serde_json::Value {
    r.expect_status(200);
    assert_eq!(r.content_type().as_deref(), Some("application/json"));
    let length = r.headers.get("content-length").expect("a Content-Length");
    assert_eq!(length.to_str().unwrap(), r.body.len().to_string());
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        serde_json::to_vec(&doc).unwrap(),
        r.body.to_vec(),
        "not serde_json's bytes"
    );
    doc
}

/// `GET /v1/result/<id>` is streamed too (stored members as posted, log members escaped
/// from the fragments), yet its bytes are exactly serde_json's for the document, with its
/// `Content-Length`, and its members in the order the document always had: `job_state`
/// first, the posted members (one longer than a chunk), `<phase>_status`, then the logs;
/// a log member an agent posted as a field is kept as posted.
#[tokio::test]
async fn result_get_streams_exactly_serde_jsons_bytes_and_length_when_logs_span_many_chunks() {
    let srv = TestServer::start();
    let id = srv.submit_to("streamq").await;
    let tricky = "quote \" backslash \\ tab \t nl \n ctl \u{1} del \u{7f} é € 😀 </script>\n";
    let big = tricky.repeat(3000);
    let path = format!("/v1/result/{id}");
    let posted = json!({"ü \"key\"": {"nested": [1, 2.5, null]}, "long": "v".repeat(100_000),
        "status": {"test": 3}, "setup_serial": "as posted"});
    srv.post_json(&path, &posted).await.expect_status(200);
    post_logs_spanning_chunks(&srv, &id, &big, ["setup", "test", "test"]).await;
    let doc = exact_json(srv.get(&path).await);
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "job_state",
            "ü \"key\"",
            "long",
            "status",
            "setup_serial",
            "test_status",
            "test_output",
            "test_serial"
        ]
    );
    assert_eq!(doc["setup_serial"], "as posted");
    assert_eq!(doc["long"].as_str().unwrap().len(), 100_000);
    assert_eq!(doc["test_serial"].as_str().unwrap(), big.repeat(2));
    assert_eq!(doc["test_output"], "café \u{FFFD}!");
    assert_eq!(doc["ü \"key\""], posted["ü \"key\""]);
}

/// `?run=` naming no run is refused with a message saying so (0: 400, a run past the
/// newest: 404), for a job and for an id no job has, rather than answered as an empty
/// log that reads as "no output yet"; run 1 of an id with nothing is still the empty log
/// (upstream checks no existence).
#[tokio::test]
async fn log_get_of_a_run_that_does_not_exist_is_refused_naming_it() {
    let srv = TestServer::start();
    let id = srv.submit_to("runq").await;
    let other = new_id();
    for who in [&id, &other] {
        let path = format!("/v1/result/{who}/log/output");
        let got = srv.get(&format!("{path}?run=0")).await.expect_error(400);
        assert!(got.starts_with("run must be at least 1"), "{got}");
        let got = srv.get(&format!("{path}?run=2")).await.expect_error(404);
        assert_eq!(got, format!("Job {who} has no run 2: it has only run 1"));
        let log = srv.get(&format!("{path}?run=1")).await.expect_json();
        assert_eq!(log["output"]["test"]["last_fragment_number"], -1, "{log}");
    }
}

/// A log read copies only the fragments its filters let through; what it answers is what
/// the whole log filtered gives, for every combination of run (two runs, the newest by
/// default), `start_fragment`, `start_timestamp` and `phase`, fragments posted out of
/// order across phases.
#[tokio::test]
async fn log_get_answers_the_whole_log_filtered_for_every_combination_of_filters() {
    let srv = TestServer::start();
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "filters"});
    let phases = ["setup", "test", "cleanup"];
    // (run, number, phase): numbers scrambled, each run numbered from 0 again.
    let mut posted = Vec::new();
    for run in [1u32, 2] {
        srv.submit(&job).await;
        srv.pop_id(&["filters"]).await.unwrap();
        for k in 0..12u64 {
            let number = (k * 5) % 12;
            let phase = phases[(number / 4) as usize];
            srv.post_json(
                &format!("/v1/result/{id}/log/output"),
                &json!({
                    "fragment_number": number,
                    "timestamp": format!("2026-01-01T00:00:{number:02}.000000+00:00"),
                    "phase": phase,
                    "log_data": format!("r{run} n{number} {phase}\n"),
                }),
            )
            .await
            .expect_status(200);
            posted.push((run, number, phase));
        }
        srv.post_result(&id, &json!({"job_state": "complete"}))
            .await;
    }
    for run in [None, Some(1), Some(2)] {
        for from in [0u64, 3, 7, 12] {
            for since in [None, Some(5u64)] {
                for only in [None, Some("test")] {
                    let mut query = format!("start_fragment={from}");
                    if let Some(r) = run {
                        query += &format!("&run={r}");
                    }
                    if let Some(s) = since {
                        query += &format!("&start_timestamp=2026-01-01T00:00:{s:02}%2B00:00");
                    }
                    if let Some(p) = only {
                        query += &format!("&phase={p}");
                    }
                    let got = srv
                        .get(&format!("/v1/result/{id}/log/output?{query}"))
                        .await
                        .expect_json();
                    let shown = [
                        "setup",
                        "provision",
                        "firmware_update",
                        "test",
                        "allocate",
                        "reserve",
                        "cleanup",
                    ];
                    for phase in shown.iter().filter(|p| only.is_none_or(|o| o == **p)) {
                        let mut picked: Vec<u64> = posted
                            .iter()
                            .filter(|(r, n, p)| {
                                *r == run.unwrap_or(2)
                                    && p == phase
                                    && *n >= from
                                    && since.is_none_or(|s| *n >= s)
                            })
                            .map(|(_, n, _)| *n)
                            .collect();
                        picked.sort();
                        let text: String = picked
                            .iter()
                            .map(|n| format!("r{} n{n} {phase}\n", run.unwrap_or(2)))
                            .collect();
                        let last = picked.last().map_or(-1, |n| *n as i64);
                        assert_eq!(
                            got["output"][phase],
                            json!({"last_fragment_number": last, "log_data": text}),
                            "?{query}: {got}"
                        );
                    }
                    let phases_answered = got["output"].as_object().unwrap().len();
                    assert_eq!(
                        phases_answered,
                        if only.is_some() { 1 } else { shown.len() }
                    );
                }
            }
        }
    }
}
