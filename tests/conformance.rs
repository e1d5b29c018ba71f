//! Conformance with what upstream's clients and upstream's own tests expect (issue 13):
//! trailing slashes, log fragments as large as the stock agent sends, a resubmitted job's
//! own log, image data types, upstream's submit-time schema, and error messages that name
//! the problem. The log faults are also run with the real `testflinger-agent` and
//! `testflinger-cli` (`util::agent`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::agent::{cli, AgentSpec, RealAgent};
use crate::util::{multipart, new_id, Part, Resp, TestServer};

/// The body the stock agent's `requests` sends for a log fragment: `json.dumps` with
/// `ensure_ascii`, so every non-ASCII character is a `\uXXXX` escape (a surrogate pair of
/// two beyond the BMP) and control characters too.
fn agent_fragment_body(number: u64, phase: &str, text: &str) -> Vec<u8> {
    let mut data = String::with_capacity(text.len() * 6);
    for c in text.chars() {
        match c {
            '"' => data.push_str("\\\""),
            '\\' => data.push_str("\\\\"),
            '\n' => data.push_str("\\n"),
            c if (' '..='~').contains(&c) => data.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    data.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    format!(
        r#"{{"fragment_number": {number}, "timestamp": "2026-11-29T00:00:00+00:00", "phase": "{phase}", "log_data": "{data}"}}"#
    )
    .into_bytes()
}

async fn post_fragment(srv: &TestServer, id: &str, kind: &str, body: Vec<u8>) -> Resp {
    srv.post_raw(
        &format!("/v1/result/{id}/log/{kind}"),
        Some("application/json"),
        body,
    )
    .await
}

/// The `log_data` of `phase` in a `GET /v1/result/<id>/log/<kind>` answer.
async fn log_of(srv: &TestServer, id: &str, kind: &str, query: &str, phase: &str) -> (i64, String) {
    let log = srv
        .get(&format!("/v1/result/{id}/log/{kind}{query}"))
        .await
        .expect_json();
    let entry = &log[kind][phase];
    (
        entry["last_fragment_number"].as_i64().expect("a number"),
        entry["log_data"].as_str().expect("a string").to_owned(),
    )
}

// ---- 1. Trailing slashes -----------------------------------------------------------------

/// One request: method, path, query (with its `?`), content type, body.
type Row<'a> = (&'a str, String, &'a str, Option<&'a str>, Vec<u8>);

#[tokio::test]
async fn every_route_answers_the_same_when_its_path_ends_with_a_slash() {
    let srv = TestServer::start();
    let job = srv.submit(&json!({"job_queue": "slash-q"})).await;
    let (unknown, fresh) = (new_id(), new_id());
    srv.post_json(
        "/v1/agents/data/dut-1",
        &json!({"queues": ["slash-q"], "state": "waiting"}),
    )
    .await
    .expect_status(200);
    let (ct, upload) = multipart(&[Part::file("file", "a.tar.gz", b"bytes")]);
    let fragment = agent_fragment_body(0, "test", "hello\n");
    // (method, path, query, content type, body): every route of the router.
    let table: Vec<Row> = vec![
        ("GET", "/v1".into(), "", None, vec![]),
        ("GET", "/v1/job".into(), "?queue=empty-q", None, vec![]),
        ("GET", "/v1/job/search".into(), "?tags=none", None, vec![]),
        ("GET", format!("/v1/job/{job}"), "", None, vec![]),
        ("GET", format!("/v1/job/{job}/position"), "", None, vec![]),
        (
            "GET",
            format!("/v1/job/{job}/attachments"),
            "",
            None,
            vec![],
        ),
        (
            "POST",
            format!("/v1/job/{job}/attachments"),
            "",
            Some(&ct),
            upload.clone(),
        ),
        (
            "POST",
            format!("/v1/job/{unknown}/action"),
            "",
            Some("application/json"),
            br#"{"action":"cancel"}"#.to_vec(),
        ),
        (
            "POST",
            format!("/v1/result/{job}"),
            "",
            Some("application/json"),
            br#"{"k":1}"#.to_vec(),
        ),
        ("GET", format!("/v1/result/{job}"), "", None, vec![]),
        (
            "POST",
            format!("/v1/result/{job}/log/output"),
            "",
            Some("application/json"),
            fragment.clone(),
        ),
        (
            "GET",
            format!("/v1/result/{job}/log/output"),
            "?phase=test",
            None,
            vec![],
        ),
        (
            "POST",
            format!("/v1/result/{unknown}/output"),
            "",
            Some("text/plain"),
            b"x".to_vec(),
        ),
        // The legacy read is destructive: read an id with no output (204 both times).
        (
            "GET",
            format!("/v1/result/{fresh}/output"),
            "",
            None,
            vec![],
        ),
        (
            "POST",
            format!("/v1/result/{job}/artifact"),
            "",
            Some(&ct),
            upload.clone(),
        ),
        (
            "GET",
            format!("/v1/result/{job}/artifact"),
            "",
            None,
            vec![],
        ),
        (
            "POST",
            "/v1/agents/queues".into(),
            "",
            Some("application/json"),
            br#"{"slash-q":"d"}"#.to_vec(),
        ),
        ("GET", "/v1/agents/queues".into(), "", None, vec![]),
        (
            "POST",
            "/v1/agents/images".into(),
            "",
            Some("application/json"),
            br#"{"slash-q":{"img":"url: http://x"}}"#.to_vec(),
        ),
        ("GET", "/v1/agents/images/slash-q".into(), "", None, vec![]),
        (
            "POST",
            "/v1/agents/data/dut-1".into(),
            "",
            Some("application/json"),
            br#"{"state":"waiting"}"#.to_vec(),
        ),
        ("GET", "/v1/agents/data/dut-1".into(), "", None, vec![]),
        ("GET", "/v1/agents/data".into(), "", None, vec![]),
        (
            "POST",
            "/v1/agents/provision_logs/dut-1".into(),
            "",
            Some("application/json"),
            format!(r#"{{"job_id":"{job}","exit_code":0}}"#).into_bytes(),
        ),
        ("GET", "/v1/queues/wait_times".into(), "", None, vec![]),
        ("GET", "/v1/queues/slash-q/agents".into(), "", None, vec![]),
        ("GET", "/v1/queues/slash-q/jobs".into(), "", None, vec![]),
    ];
    for (method, path, query, content_type, body) in table {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let plain = srv
            .request(method, &format!("{path}{query}"), &headers, body.clone())
            .await;
        let slashed = srv
            .request(method, &format!("{path}/{query}"), &headers, body)
            .await;
        let no_route = plain.status == 404 && plain.text().contains("no such endpoint");
        assert!(
            plain.status < 500 && plain.status != 405 && !no_route,
            "{method} {path}: {}",
            plain.text_preview()
        );
        assert_eq!(
            slashed.status,
            plain.status,
            "{method} {path}/{query}: {:?}",
            slashed.text_preview()
        );
        // Bodies that carry times (agent records) differ by at most the second they were read in.
        if !path.starts_with("/v1/agents/data") {
            assert_eq!(slashed.body, plain.body, "{method} {path}/{query}");
        }
    }
    // A submission with a slash is a submission.
    let r = srv
        .post_json("/v1/job/", &json!({"job_queue": "slash-q"}))
        .await;
    assert!(r.expect_json()["job_id"].is_string());
    // The root keeps answering, with or without more slashes.
    for path in ["/", "/v1", "/v1/", "/v1//"] {
        let r = srv.get(path).await;
        r.expect_status(200);
        assert!(
            r.text().starts_with("Testflinger Server"),
            "{path}: {}",
            r.text()
        );
    }
    // An unknown route with a slash is still 404 JSON.
    srv.get("/v1/nothing/").await.expect_error(404);
}

// ---- 2. Log fragments as large as the agent sends ----------------------------------------

#[tokio::test]
async fn serial_fragment_of_200000_two_byte_characters_is_stored_whole_when_escaped_as_the_agent_sends_it(
) {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q"})).await;
    let text = "é".repeat(200_000);
    let body = agent_fragment_body(0, "test", &text);
    assert!(body.len() > 1_200_000, "6 bytes per character on the wire");
    post_fragment(&srv, &id, "serial", body)
        .await
        .expect_status(200);
    let (last, data) = log_of(&srv, &id, "serial", "", "test").await;
    assert_eq!(last, 0);
    assert_eq!(data.chars().count(), 200_000);
    assert_eq!(data, text);
    assert_eq!(srv.result(&id).await["test_serial"], Value::from(text));
}

#[tokio::test]
async fn largest_chunk_the_stock_agent_sends_is_accepted_by_default() {
    // 1,048,576 characters (the agent's chunk) beyond the BMP: 4 MiB of text, 12 MiB escaped.
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q"})).await;
    let text = "😀".repeat(1 << 20);
    let body = agent_fragment_body(0, "test", &text);
    assert!(body.len() > 12 << 20);
    post_fragment(&srv, &id, "serial", body)
        .await
        .expect_status(200);
    let (_, data) = log_of(&srv, &id, "serial", "?phase=test", "test").await;
    assert_eq!(data.len(), 4 << 20);
    assert!(data == text, "the stored text differs");
}

/// Reads answer `last_fragment_number` as a signed 64-bit number (-1: none), so a larger
/// number is refused when posted instead of read back negative.
#[tokio::test]
async fn fragment_numbers_beyond_the_signed_64_bit_range_are_refused_with_422() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q"})).await;
    for number in ["9223372036854775808", "18446744073709551615"] {
        let body = format!(
            r#"{{"fragment_number": {number}, "timestamp": "2026-11-29T00:00:00Z", "phase": "test", "log_data": "x"}}"#
        );
        let r = post_fragment(&srv, &id, "output", body.into_bytes()).await;
        r.expect_error(422);
        let body = r.text();
        assert!(
            body.contains("fragment_number") && body.contains("9223372036854775807"),
            "{body}"
        );
    }
    assert_eq!(
        log_of(&srv, &id, "output", "", "test").await,
        (-1, String::new())
    );
    let body = format!(
        r#"{{"fragment_number": {}, "timestamp": "2026-11-29T00:00:00Z", "phase": "test", "log_data": "x"}}"#,
        i64::MAX
    );
    post_fragment(&srv, &id, "output", body.into_bytes())
        .await
        .expect_status(200);
    assert_eq!(
        log_of(&srv, &id, "output", "", "test").await,
        (i64::MAX, "x".to_owned())
    );
}

#[tokio::test]
async fn log_fragment_over_the_decoded_limit_is_refused_with_413_naming_the_limit() {
    let srv = TestServer::start_with(&["--max-output-bytes", "65536"]);
    let id = srv.submit(&json!({"job_queue": "q"})).await;
    // Exactly at the limit, every byte escaped as \u0061 (6 x the text on the wire): stored.
    let at_limit: String = std::iter::repeat_n("\\u0061", 65_536).collect();
    let body = format!(
        r#"{{"fragment_number": 0, "timestamp": "2026-11-29T00:00:00Z", "phase": "test", "log_data": "{at_limit}"}}"#
    );
    post_fragment(&srv, &id, "output", body.into_bytes())
        .await
        .expect_status(200);
    assert_eq!(
        log_of(&srv, &id, "output", "", "test").await.1.len(),
        65_536
    );
    // One byte (one two-byte character, half of it) over: 413 naming the limit.
    let over = format!("{}é", "a".repeat(65_535));
    let r = post_fragment(&srv, &id, "output", agent_fragment_body(1, "test", &over)).await;
    let message = r.expect_error(413);
    assert!(
        message.contains("65537") && message.contains("65536"),
        "{message}"
    );
    assert_eq!(
        log_of(&srv, &id, "output", "", "test").await.0,
        0,
        "nothing stored"
    );
    // The legacy /output endpoint holds the same text limit (its body is the text).
    srv.post_raw(
        &format!("/v1/result/{id}/output"),
        Some("text/plain"),
        vec![b'b'; 65_536],
    )
    .await
    .expect_status(200);
    let r = srv
        .post_oversized(
            &format!("/v1/result/{id}/output"),
            Some("text/plain"),
            &vec![b'b'; 65_537],
        )
        .await;
    let message = r.expect_error(413);
    assert!(message.contains("65536"), "{message}");
}

// ---- 3. A resubmitted job's new run has its own log --------------------------------------

#[tokio::test]
async fn resubmitted_job_shows_its_new_runs_log_and_keeps_the_earlier_runs_readable() {
    let mut srv = TestServer::start();
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "q"});
    srv.submit(&job).await;
    srv.pop(&["q"]).await.expect("run 1");
    post_fragment(
        &srv,
        &id,
        "output",
        agent_fragment_body(0, "test", "run1\n"),
    )
    .await
    .expect_status(200);
    assert_eq!(
        srv.get(&format!("/v1/result/{id}/output")).await.text(),
        "run1\n"
    );
    srv.post_result(&id, &json!({"job_state": "complete"}))
        .await;

    srv.submit(&job).await;
    // The new run has posted nothing yet: its log is empty, not the first run's.
    assert_eq!(
        log_of(&srv, &id, "output", "", "test").await,
        (-1, String::new())
    );
    assert!(srv.result(&id).await.get("test_output").is_none());
    srv.pop(&["q"]).await.expect("run 2");
    for _ in 0..2 {
        // The agent numbers from 0 again; a retried post is stored once.
        post_fragment(
            &srv,
            &id,
            "output",
            agent_fragment_body(0, "test", "run2\n"),
        )
        .await
        .expect_status(200);
    }
    for _ in 0..2 {
        assert_eq!(
            log_of(&srv, &id, "output", "", "test").await,
            (0, "run2\n".into())
        );
        assert_eq!(
            log_of(&srv, &id, "output", "?run=2", "test").await,
            (0, "run2\n".into())
        );
        assert_eq!(
            log_of(&srv, &id, "output", "?run=1", "test").await,
            (0, "run1\n".into())
        );
        // A run that has not happened is an error naming it, not an empty log.
        let r = srv.get(&format!("/v1/result/{id}/log/output?run=3")).await;
        let got = r.expect_error(404);
        assert_eq!(got, format!("Job {id} has no run 3: it has runs 1 to 2"));
        assert_eq!(srv.result(&id).await["test_output"], "run2\n");
        // Replay rebuilds the same runs.
        srv.restart();
    }
    // The legacy reader sees what arrived since it last read: the second run's text.
    assert_eq!(
        srv.get(&format!("/v1/result/{id}/output")).await.text(),
        "run2\n"
    );
    let r = srv.get(&format!("/v1/result/{id}/log/output?run=x")).await;
    assert!(r.expect_error(400).contains("run"));
    // A number too large is not "not an integer": the message says which it is.
    for (query, message) in [
        ("run=4294967296", "run must be at most 4294967295"),
        ("run=-1", "run must be a non-negative integer"),
        ("run=0", "run must be at least 1"),
        (
            "start_fragment=99999999999999999999",
            "start_fragment must be at most 18446744073709551615",
        ),
        (
            "start_fragment=1.5",
            "start_fragment must be a non-negative integer",
        ),
    ] {
        let r = srv
            .get(&format!("/v1/result/{id}/log/output?{query}"))
            .await;
        let got = r.expect_error(400);
        assert!(got.starts_with(message), "{query}: {got}");
    }
}

// ---- 4. Image data must be strings -------------------------------------------------------

#[tokio::test]
async fn image_data_that_is_not_a_string_is_refused_with_422_naming_image_and_queue() {
    let srv = TestServer::start();
    for data in [
        json!(5),
        json!(null),
        json!({"url": "x"}),
        json!(["x"]),
        json!(true),
    ] {
        let r = srv
            .post_json("/v1/agents/images", &json!({"q": {"img": data}}))
            .await;
        r.expect_error(422);
        let reason = r.json()["detail"]["json"]["_schema"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            reason.contains("'img'") && reason.contains("'q'"),
            "{data}: {reason}"
        );
    }
    for images in [json!("x"), json!(["img"]), json!(5)] {
        let r = srv
            .post_json("/v1/agents/images", &json!({"q": images}))
            .await;
        assert!(r.expect_error(422).contains("Validation"), "{images}");
        assert!(r.json()["detail"]["json"]["_schema"][0]
            .as_str()
            .unwrap()
            .contains("'q'"));
    }
    for name in ["", "$x", "a.b", "a\u{0}b"] {
        let r = srv
            .post_json("/v1/agents/images", &json!({"q": {name: "url: x"}}))
            .await;
        r.expect_error(422);
    }
    // Nothing was stored by any of them.
    assert_eq!(
        srv.get("/v1/agents/images/q").await.expect_json(),
        json!({})
    );
    // A good set is stored.
    srv.post_json(
        "/v1/agents/images",
        &json!({"q": {"img": "url: http://x/img.xz"}}),
    )
    .await
    .expect_status(200);
    assert_eq!(
        srv.get("/v1/agents/images/q").await.expect_json(),
        json!({"img": "url: http://x/img.xz"})
    );
    // A body that is not an object: 422 as upstream (marshmallow's "Invalid input type.").
    for path in ["/v1/agents/images", "/v1/agents/queues"] {
        for body in [&b"\"q\""[..], b"[\"q\"]", b"[]", b"7"] {
            let r = srv
                .post_raw(path, Some("application/json"), body.to_vec())
                .await;
            let message = r.expect_error(422);
            assert!(
                message.contains("expected a JSON object"),
                "{path} {message}"
            );
            assert_eq!(
                r.json()["detail"]["json"]["_schema"],
                json!(["Invalid input type."])
            );
        }
    }
    let r = srv.post_json("/v1/agents/queues", &json!({"q": 5})).await;
    r.expect_error(422);
    assert!(r.json()["detail"]["json"]["_schema"][0]
        .as_str()
        .unwrap()
        .contains("'q'"));
}

// ---- 5. Upstream's submit-time schema ----------------------------------------------------

/// Submits `job`, asserting 422 whose detail names `field`; the reason.
async fn refused(srv: &TestServer, job: Value, field: &str) -> String {
    let r = srv.post_json("/v1/job", &job).await;
    assert_eq!(r.status, 422, "{job}: {}", r.text_preview());
    r.expect_json_error();
    let body = r.json();
    let reason = body["detail"]["json"][field][0].as_str();
    assert!(
        reason.is_some(),
        "{job}: detail should name {field}: {body}"
    );
    reason.unwrap().to_owned()
}

#[tokio::test]
async fn provision_data_must_match_one_of_the_device_connectors_schemas() {
    let srv = TestServer::start();
    let reason = refused(
        &srv,
        json!({"job_queue": "q", "provision_data": {"url": "invalid"}}),
        "provision_data",
    )
    .await;
    assert_eq!(reason, "Invalid provision data schema.");
    let r = srv
        .post_json(
            "/v1/job",
            &json!({"job_queue": "q", "provision_data": {"url": "invalid"}}),
        )
        .await;
    assert!(r.message().contains("Not a valid URL"), "{}", r.message());
    for bad in [
        json!({"url": "http://example/img.img.xz"}),
        json!({"url": "ftp//example.com/x"}),
        json!({"url": "http://example.com/x", "extra": 1}),
        json!({"jobs": []}),
        json!({"use_attachment": "a", "media": "floppy"}),
        json!({"url": "http://a.example.com", "robot_tasks": ["t"], "live_image": "maybe", "wait_until_ssh": true}),
        json!("http://example.com/x"),
        json!(["http://example.com/x"]),
    ] {
        refused(
            &srv,
            json!({"job_queue": "q", "provision_data": bad}),
            "provision_data",
        )
        .await;
    }
    // One job per device connector schema, and null (no provisioning).
    let good = [
        json!({"url": "http://example.com/image.img.xz"}),
        json!({"distro": "noble", "kernel": "ga", "disks": [{}], "ephemeral": false}),
        json!({"jobs": [{"job_queue": "a"}]}),
        json!({"use_attachment": "img.xz", "media": "usb", "create_user": true}),
        json!({"skip": true}),
        json!({"url": "https://example.com/oem.iso", "token_file": "t", "update_user_data": "yes"}),
        json!({"url": "http://10.0.0.1:8080/image.tar"}),
        json!({"provision_plan": {"a": 1}, "urls": ["http://a.example.com/x"], "ubuntu_sso_email": "me@example.com"}),
        json!({"preset": "p", "attachments": [{"agent": "img"}]}),
        json!({"url": "http://localhost/x.iso", "robot_tasks": ["t"], "robot_retries": 2}),
        json!({"url": "http://a.example.com/x.iso", "robot_tasks": [], "live_image": true, "wait_until_ssh": false}),
        json!({"alloem_url": "http://a.example.com/x.iso", "robot_tasks": ["t"], "oem": "dell"}),
        json!({"preset": "kvm", "cmdline_append": "quiet"}),
        Value::Null,
    ];
    for data in good {
        let id = srv
            .submit(&json!({"job_queue": "q", "provision_data": data}))
            .await;
        let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        if data.is_null() {
            assert_eq!(shown["provision_data"], Value::Null);
        }
    }
    // Values are stored as upstream loads them.
    let id = srv
        .submit(&json!({"job_queue": "q", "provision_data": {"distro": "noble", "ephemeral": "yes"}, "job_priority": "3"}))
        .await;
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(shown["provision_data"]["ephemeral"], true);
    assert_eq!(shown["job_priority"], 3);
}

#[tokio::test]
async fn reserve_and_test_data_accept_only_upstreams_keys_and_values() {
    let srv = TestServer::start();
    let reason = refused(
        &srv,
        json!({"job_queue": "q", "reserve_data": {"ssh_keys": ["who:me"]}}),
        "reserve_data",
    )
    .await;
    assert_eq!(
        reason,
        "ssh_keys.0: String does not match expected pattern."
    );
    for (data, expected) in [
        (
            json!({"ssh_keys": ["lp:me", ""]}),
            "ssh_keys.1: String does not match expected pattern.",
        ),
        (json!({"ssh_keys": "lp:me"}), "ssh_keys: Not a valid list."),
        (
            json!({"timeout": 60, "hosts": ["a"]}),
            "hosts: Unknown field.",
        ),
        (
            json!({"timeout": "-5"}),
            "timeout: Invalid duration format: Duration cannot be negative",
        ),
        (
            json!({"timeout": "5x"}),
            "timeout: Invalid duration format: '5x' is not seconds nor like 1h30m",
        ),
        (
            json!({"timeout": 1.5}),
            "timeout: Invalid duration format: Duration must be string or int, got <class 'float'>",
        ),
    ] {
        let reason = refused(
            &srv,
            json!({"job_queue": "q", "reserve_data": data}),
            "reserve_data",
        )
        .await;
        assert_eq!(reason, expected, "{data}");
    }
    for (data, seconds) in [
        (json!("1h 30min"), 5400),
        (json!("0"), 0),
        (json!("+90"), 90),
        (json!(null), -1),
    ] {
        let id = srv.submit(&json!({"job_queue": "ok-q", "reserve_data": {"timeout": data, "ssh_keys": ["gh:me"]}})).await;
        let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
        if seconds < 0 {
            assert_eq!(shown["reserve_data"]["timeout"], Value::Null);
        } else {
            assert_eq!(shown["reserve_data"]["timeout"], seconds, "{data}");
        }
    }
    for (data, expected) in [
        (
            json!({"test_cmds": "x", "cmds": "y"}),
            "cmds: Unknown field.",
        ),
        (
            json!({"test_cmds": ["x"]}),
            "test_cmds: Not a valid string.",
        ),
        (
            json!({"attachments": [{"device": "x"}]}),
            "attachments.0.agent: Missing data for required field.",
        ),
        (
            json!({"secrets": {"1BAD": "path"}}),
            "secrets.1BAD.key: String does not match expected pattern.",
        ),
        (
            json!({"secrets": {"GOOD": "a path"}}),
            "secrets.GOOD.value: String does not match expected pattern.",
        ),
    ] {
        let reason = refused(
            &srv,
            json!({"job_queue": "q", "test_data": data}),
            "test_data",
        )
        .await;
        assert_eq!(reason, expected, "{data}");
    }
    for (job, field, expected) in [
        (
            json!({"job_queue": "q", "name": null}),
            "name",
            "Field may not be null.",
        ),
        (
            json!({"job_queue": "q", "job_priority": "high"}),
            "job_priority",
            "Not a valid integer.",
        ),
        (
            json!({"job_queue": "q", "debug": "maybe"}),
            "debug",
            "Not a valid boolean.",
        ),
        (json!({"job_queue": 5}), "job_queue", "Not a valid string."),
        (
            json!({"job_queue": "q", "exclude_agents": null}),
            "exclude_agents",
            "Field may not be null.",
        ),
        (
            json!({"job_queue": "q", "firmware_update_data": []}),
            "firmware_update_data",
            "Not a valid mapping type.",
        ),
    ] {
        assert_eq!(refused(&srv, job.clone(), field).await, expected, "{job}");
    }
    // Secrets need a secrets store, which this server does not have (upstream's answer then).
    let r = srv
        .post_json(
            "/v1/job",
            &json!({"job_queue": "q", "test_data": {"secrets": {"TOKEN": "a/b"}}}),
        )
        .await;
    assert_eq!(r.expect_error(422), "No secrets store");
    assert_eq!(srv.pop(&["q"]).await, None, "nothing refused was queued");
}

#[tokio::test]
async fn exclude_agents_defaults_to_empty_and_may_not_exclude_every_agent_serving_the_queue() {
    let srv = TestServer::start();
    let id = srv
        .submit(&json!({"job_queue": "q", "lab_field": {"kept": true}}))
        .await;
    let shown = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(shown["exclude_agents"], json!([]));
    assert_eq!(
        shown["lab_field"],
        json!({"kept": true}),
        "unknown top-level fields are kept"
    );
    let popped = srv.pop(&["q"]).await.expect("the job");
    assert_eq!(popped["lab_field"], json!({"kept": true}));
    // No agent serves the queue yet: agents may still come, so the job is taken.
    srv.submit(&json!({"job_queue": "q", "exclude_agents": ["a"]}))
        .await;
    for name in ["a", "b"] {
        srv.post_json(
            &format!("/v1/agents/data/{name}"),
            &json!({"queues": ["q"], "state": "waiting"}),
        )
        .await
        .expect_status(200);
    }
    srv.submit(&json!({"job_queue": "q", "exclude_agents": ["a"]}))
        .await;
    let r = srv
        .post_json(
            "/v1/job",
            &json!({"job_queue": "q", "exclude_agents": ["a", "b"]}),
        )
        .await;
    let message = r.expect_error(422);
    assert_eq!(
        message,
        "There are no agents on the specified queue that are allowed to run this job"
    );
    assert!(r.json()["detail"]["json"]["exclude_agents"].is_array());
}

#[tokio::test]
async fn errors_name_the_actual_problem_when_bodies_are_malformed() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q"})).await;
    let surrogate = br#"{"job_queue":"q","x":"\ud800"}"#.to_vec();
    for path in [
        "/v1/job".to_owned(),
        format!("/v1/result/{id}"),
        format!("/v1/result/{id}/log/output"),
        "/v1/agents/queues".to_owned(),
        "/v1/agents/images".to_owned(),
        "/v1/agents/data/dut-1".to_owned(),
        format!("/v1/job/{id}/action"),
    ] {
        let r = srv
            .post_raw(&path, Some("application/json"), surrogate.clone())
            .await;
        let message = r.expect_error(400);
        assert!(
            message.contains("lone surrogate") && message.contains("line 1 column"),
            "{path}: {message}"
        );
    }
    // Without a job_queue: 400 (the original server's answer; the CLI says "did not specify a
    // job_queue" for it), saying which.
    let r = srv.post_json("/v1/job", &json!({"queue": "q"})).await;
    assert!(r.expect_error(400).contains("no job_queue"));
    let r = srv
        .post_raw("/v1/job", Some("application/json"), b"[1]".to_vec())
        .await;
    assert!(r.expect_error(400).contains("a JSON array"));
    let r = srv
        .post_raw(
            "/v1/job",
            Some("application/json"),
            b"{\"job_queue\": ".to_vec(),
        )
        .await;
    assert!(
        r.expect_error(400).contains("EOF while parsing"),
        "{}",
        r.text()
    );
    let r = post_fragment(&srv, &id, "output", b"[]".to_vec()).await;
    assert!(r.expect_error(422).contains("a JSON array"));
}

// ---- With the real agent and CLI ----------------------------------------------------------

/// Waits (at most 90 s) until job `id` reads `complete`; the agent's console on failure.
async fn wait_complete(srv: &TestServer, agent: &mut RealAgent, id: &str) {
    let what = format!("complete job {id}");
    agent
        .wait_until(&what, Duration::from_secs(90), async || {
            srv.job_state(id).await == "complete"
        })
        .await;
}

#[tokio::test]
async fn real_agent_serial_log_of_200000_two_byte_characters_reaches_cli_poll_serial_whole() {
    let srv = TestServer::start();
    let mut agent = RealAgent::start(
        &srv,
        AgentSpec::new("serial-dut", &["serial-q"]).command(
            "test",
            "python3 -c \"open('test-serial.log', 'w', encoding='utf-8').write('é' * 200000)\" && echo done",
        ),
    );
    let id = srv
        .submit(&json!({"job_queue": "serial-q", "test_data": {"test_cmds": "run"}}))
        .await;
    wait_complete(&srv, &mut agent, &id).await;
    assert!(
        agent.stop_when_idle(&srv).await.success(),
        "the agent exits 0 on SIGINT:\n{}",
        agent.console()
    );
    let (_, serial) = log_of(&srv, &id, "serial", "", "test").await;
    assert_eq!(
        serial.chars().count(),
        200_000,
        "agent said:\n{}",
        agent.console()
    );
    let out = cli(&srv, &["poll-serial", &id], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.matches('é').count(), 200_000);
    let out = cli(&srv, &["results", &id], Duration::from_secs(30));
    let results: Value = serde_json::from_slice(&out.stdout).expect("results prints JSON");
    assert_eq!(
        results["test_serial"].as_str().map(|s| s.chars().count()),
        Some(200_000)
    );
    assert_eq!(results["test_status"], 0);
}

#[tokio::test]
async fn real_agent_rerun_of_a_resubmitted_job_shows_its_own_output_in_cli_poll() {
    let srv = TestServer::start();
    let marker = srv.dir().join("marker");
    std::fs::write(&marker, "output-of-run-1\n").unwrap();
    let mut agent = RealAgent::start(
        &srv,
        AgentSpec::new("rerun-dut", &["rerun-q"])
            .command("test", &format!("cat '{}'", marker.display())),
    );
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "rerun-q", "test_data": {"test_cmds": "run"}});
    srv.submit(&job).await;
    wait_complete(&srv, &mut agent, &id).await;
    std::fs::write(&marker, "output-of-run-2\n").unwrap();
    srv.submit(&job).await;
    wait_complete(&srv, &mut agent, &id).await;
    assert!(
        agent.stop_when_idle(&srv).await.success(),
        "the agent exits 0 on SIGINT:\n{}",
        agent.console()
    );

    let out = cli(&srv, &["poll", &id], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("output-of-run-2"),
        "poll printed:\n{printed}"
    );
    assert!(
        !printed.contains("output-of-run-1"),
        "poll printed:\n{printed}"
    );
    let (_, first) = log_of(&srv, &id, "output", "?run=1", "test").await;
    assert!(
        first.contains("output-of-run-1") && !first.contains("output-of-run-2"),
        "{first}"
    );
}
