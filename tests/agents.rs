//! What agents advertise: queue descriptions (`POST|GET /v1/agents/queues`, merged) and images
//! per queue (`POST /v1/agents/images`, replaced per queue; `GET /v1/agents/images/<queue>`).

use serde_json::json;

use crate::util::{Resp, TestServer};

#[track_caller]
fn assert_json_content_type(r: &Resp) {
    let ct = r.content_type().unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content type {ct:?}");
}

/// A type error in an agents body: 400 or 422, always a JSON error.
#[track_caller]
fn assert_rejected(r: &Resp, what: &str) {
    assert!(
        r.status == 400 || r.status == 422,
        "{what}: expected 400 or 422, got {}: {}",
        r.status,
        r.text_preview()
    );
    r.expect_json_error();
}

#[tokio::test]
async fn queues_are_an_empty_object_when_none_were_advertised() {
    let srv = TestServer::start();
    let r = srv.get("/v1/agents/queues").await;
    assert_eq!(r.expect_json(), json!({}));
    assert_json_content_type(&r);
}

#[tokio::test]
async fn queues_are_merged_when_several_agents_advertise() {
    let srv = TestServer::start();
    srv.post_json(
        "/v1/agents/queues",
        &json!({"qfoo": "this is a test queue"}),
    )
    .await
    .expect_status(200);
    assert_eq!(
        srv.get("/v1/agents/queues").await.expect_json(),
        json!({"qfoo": "this is a test queue"})
    );
    srv.post_json("/v1/agents/queues", &json!({"a": "A", "b": "B"}))
        .await
        .expect_status(200);
    srv.post_json("/v1/agents/queues", &json!({"b": "B2", "c": "C"}))
        .await
        .expect_status(200);
    srv.post_json("/v1/agents/queues", &json!({}))
        .await
        .expect_status(200);
    let r = srv.get("/v1/agents/queues").await;
    assert_eq!(
        r.expect_json(),
        json!({"qfoo": "this is a test queue", "a": "A", "b": "B2", "c": "C"})
    );
    assert_json_content_type(&r);
}

/// The stock agent re-posts its advertised queues on every poll: a post repeating what
/// stands is acknowledged without writing a record (a changed description, or a new
/// queue beside repeated ones, is recorded), and the same holds for a queue's images.
#[tokio::test]
async fn repeated_advertisements_are_acknowledged_without_a_record() {
    let srv = TestServer::start();
    let post = |path: &'static str, body: serde_json::Value| {
        let srv = &srv;
        async move {
            srv.post_json(path, &body).await.expect_status(200);
        }
    };
    post("/v1/agents/queues", json!({"rq": "desc", "rq2": "two"})).await;
    post("/v1/agents/images", json!({"rq": {"img": "url"}})).await;
    let first = records(&srv);
    for _ in 0..2 {
        post("/v1/agents/queues", json!({"rq": "desc", "rq2": "two"})).await;
        post("/v1/agents/images", json!({"rq": {"img": "url"}})).await;
    }
    post("/v1/agents/queues", json!({"rq": "desc"})).await;
    assert_eq!(records(&srv), first, "repeats are not recorded");
    post("/v1/agents/queues", json!({"rq": "changed"})).await;
    post("/v1/agents/queues", json!({"rq": "changed", "rq3": "new"})).await;
    post("/v1/agents/images", json!({"rq": {"img": "url2"}})).await;
    assert_eq!(records(&srv), first + 3, "each change is recorded");
    assert_eq!(
        srv.get("/v1/agents/queues").await.expect_json(),
        json!({"rq": "changed", "rq2": "two", "rq3": "new"})
    );
    assert_eq!(
        srv.get("/v1/agents/images/rq").await.expect_json(),
        json!({"img": "url2"})
    );
}

/// How many records the server's journal holds: the lines `flinger wal dump` prints for
/// the file log, the rows of `flinger_events` on PostgreSQL.
fn records(srv: &TestServer) -> usize {
    if let Some(url) = srv.journal() {
        return crate::util::pg::sql(url, "SELECT count(*) FROM flinger_events")
            .parse()
            .unwrap();
    }
    let data = srv.data_dir().display().to_string();
    let out = crate::util::run_to_exit(
        srv.dir(),
        &["wal", "dump", &data],
        &[],
        std::time::Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

#[tokio::test]
async fn queues_post_is_rejected_when_body_is_not_an_object_of_strings() {
    let srv = TestServer::start();
    // JSON that is not an object: 422, as upstream's schema answers; not JSON at all: 400
    // (an empty body is `{}`, as upstream reads it: `settled`).
    for (body, status) in [
        (&b"[]"[..], 422),
        (b"[\"q\"]", 422),
        (b"\"q\"", 422),
        (b"1", 422),
        (b"null", 422),
        (b"not json", 400),
        (b"{", 400),
    ] {
        let r = srv
            .post_raw("/v1/agents/queues", Some("application/json"), body.to_vec())
            .await;
        assert_eq!(
            r.status,
            status,
            "body {:?}: {}",
            String::from_utf8_lossy(body),
            r.text_preview()
        );
        r.expect_json_error();
    }
    for body in [
        json!({"q": 1}),
        json!({"q": null}),
        json!({"q": ["x"]}),
        json!({"q": {"d": "x"}}),
        json!({"ok": "fine", "q": true}),
    ] {
        let r = srv.post_json("/v1/agents/queues", &body).await;
        assert_rejected(&r, &body.to_string());
    }
    assert_eq!(
        srv.get("/v1/agents/queues").await.expect_json(),
        json!({}),
        "nothing merged"
    );
}

#[tokio::test]
async fn images_are_returned_per_queue_when_posted() {
    let srv = TestServer::start();
    let images =
        json!({"image1": "url: http://place/image1", "image2": "url: http://place/image2"});
    srv.post_json(
        "/v1/agents/images",
        &json!({"myqueue": images.clone(), "other": {"x": "y"}}),
    )
    .await
    .expect_status(200);
    let r = srv.get("/v1/agents/images/myqueue").await;
    assert_eq!(r.expect_json(), images);
    assert_json_content_type(&r);
    assert_eq!(
        srv.get("/v1/agents/images/other").await.expect_json(),
        json!({"x": "y"})
    );
}

#[tokio::test]
async fn images_are_replaced_for_that_queue_only_when_posted_again() {
    let srv = TestServer::start();
    srv.post_json(
        "/v1/agents/images",
        &json!({"q": {"i1": "d1", "i2": "d2"}, "keep": {"k": "v"}}),
    )
    .await
    .expect_status(200);
    srv.post_json("/v1/agents/images", &json!({"q": {"i3": "d3"}}))
        .await
        .expect_status(200);
    assert_eq!(
        srv.get("/v1/agents/images/q").await.expect_json(),
        json!({"i3": "d3"})
    );
    assert_eq!(
        srv.get("/v1/agents/images/keep").await.expect_json(),
        json!({"k": "v"})
    );
    srv.post_json("/v1/agents/images", &json!({"q": {}}))
        .await
        .expect_status(200);
    assert_eq!(
        srv.get("/v1/agents/images/q").await.expect_json(),
        json!({})
    );
}

#[tokio::test]
async fn images_are_an_empty_object_when_queue_is_unknown() {
    let srv = TestServer::start();
    for q in ["nope", "with%20space", "x.y-z_1"] {
        let r = srv.get(&format!("/v1/agents/images/{q}")).await;
        assert_eq!(r.expect_json(), json!({}), "queue {q}");
        assert_json_content_type(&r);
    }
}

#[tokio::test]
async fn images_work_when_queue_name_needs_percent_encoding() {
    let srv = TestServer::start();
    srv.post_json("/v1/agents/images", &json!({"my queue/ü": {"img": "data"}}))
        .await
        .expect_status(200);
    let r = srv.get("/v1/agents/images/my%20queue%2F%C3%BC").await;
    assert_eq!(r.expect_json(), json!({"img": "data"}));
}

#[tokio::test]
async fn images_post_is_rejected_when_body_has_wrong_shape() {
    let srv = TestServer::start();
    // JSON that is not an object: 422, as upstream's schema answers; not JSON at all: 400
    // (an empty body is `{}`, as upstream reads it: `settled`).
    for (body, status) in [
        (&b"[]"[..], 422),
        (b"\"q\"", 422),
        (b"1", 422),
        (b"null", 422),
        (b"not json", 400),
    ] {
        let r = srv
            .post_raw("/v1/agents/images", Some("application/json"), body.to_vec())
            .await;
        assert_eq!(
            r.status,
            status,
            "body {:?}: {}",
            String::from_utf8_lossy(body),
            r.text_preview()
        );
        r.expect_json_error();
    }
    for body in [
        json!({"q": "not an object"}),
        json!({"q": ["i"]}),
        json!({"q": null}),
    ] {
        let r = srv.post_json("/v1/agents/images", &body).await;
        assert_rejected(&r, &body.to_string());
    }
    // A bad image name: upstream's words, and which name it was.
    for (image, named) in [("$x", "\"$x\""), ("a.b", "\"a.b\""), ("", "\"\"")] {
        let body = json!({"q": {image: "url"}});
        let r = srv.post_json("/v1/agents/images", &body).await;
        r.expect_status(422);
        let message = r.json()["detail"].to_string();
        assert!(
            message.contains("Names for queue 'q' must be non-empty strings")
                && message.contains(&format!("image name {named}").replace('"', "\\\"")),
            "{image:?}: {message}"
        );
    }
    assert_eq!(
        srv.get("/v1/agents/images/q").await.expect_json(),
        json!({})
    );
}

/// The provision log body loads as upstream's schema does: a wrong type names the field
/// and marshmallow's reason (not "Missing data" for a field that is there), and an
/// `exit_code` given as a numeric string is stored as the integer.
#[tokio::test]
async fn provision_log_post_names_the_field_and_the_problem_when_a_value_is_wrong() {
    let srv = TestServer::start();
    srv.post_json("/v1/agents/data/dut-p", &json!({"state": "waiting"}))
        .await
        .expect_status(200);
    let path = "/v1/agents/provision_logs/dut-p";
    let id = "00000000-0000-4000-8000-000000000001";
    let cases = [
        (
            json!({"job_id": id, "exit_code": "zz"}),
            "exit_code",
            "Not a valid integer.",
        ),
        (
            json!({"job_id": id, "exit_code": [1]}),
            "exit_code",
            "Not a valid integer.",
        ),
        (
            json!({"job_id": id, "exit_code": "99999999999999999999"}),
            "exit_code",
            "Number too large.",
        ),
        (
            json!({"job_id": id, "exit_code": null}),
            "exit_code",
            "Field may not be null.",
        ),
        (
            json!({"job_id": id}),
            "exit_code",
            "Missing data for required field.",
        ),
        (
            json!({"job_id": 5, "exit_code": 0}),
            "job_id",
            "Not a valid string.",
        ),
        (
            json!({"exit_code": 0}),
            "job_id",
            "Missing data for required field.",
        ),
        (
            json!({"job_id": id, "exit_code": 0, "detail": 7}),
            "detail",
            "Not a valid string.",
        ),
    ];
    for (body, field, reason) in cases {
        let r = srv.post_json(path, &body).await;
        r.expect_error(422);
        let text = r.text();
        assert!(
            text.contains(field) && text.contains(reason),
            "{body}: {text}"
        );
    }
    srv.post_json(
        path,
        &json!({"job_id": id, "exit_code": "3", "detail": "provision_end"}),
    )
    .await
    .expect_status(200);
    // One failed provision, from the valid post alone ("3" loaded as 3, not 0).
    let data = srv.get("/v1/agents/data/dut-p").await.expect_json();
    assert_eq!(data["provision_streak_type"], "fail", "{data}");
    assert_eq!(data["provision_streak_count"], 1, "{data}");
}

/// Advertisements never expire, so their number is bounded: a post that would keep more
/// than 10,000 advertised queues (or queues with images) is refused with 507 and adds
/// nothing; queues already advertised can still be advertised again.
#[tokio::test]
async fn advertised_queues_and_images_stop_at_ten_thousand_queues() {
    let srv = TestServer::start();
    let names = |from: usize, to: usize| -> serde_json::Map<String, serde_json::Value> {
        (from..to).map(|i| (format!("aq{i}"), json!("d"))).collect()
    };
    srv.post_json("/v1/agents/queues", &json!(names(0, 6_000)))
        .await
        .expect_status(200);
    let r = srv
        .post_json("/v1/agents/queues", &json!(names(5_000, 10_001)))
        .await;
    let message = r.expect_error(507);
    assert!(
        message.contains("10000") && message.contains("10001"),
        "{message}"
    );
    let kept = srv.get("/v1/agents/queues").await.expect_json();
    assert_eq!(
        kept.as_object().unwrap().len(),
        6_000,
        "the refused post added nothing"
    );
    srv.post_json("/v1/agents/queues", &json!(names(5_000, 10_000)))
        .await
        .expect_status(200);
    srv.post_json("/v1/agents/queues", &json!({"aq0": "again"}))
        .await
        .expect_status(200);

    let images = |from: usize, to: usize| -> serde_json::Map<String, serde_json::Value> {
        (from..to)
            .map(|i| (format!("iq{i}"), json!({"img": "url"})))
            .collect()
    };
    srv.post_json("/v1/agents/images", &json!(images(0, 9_999)))
        .await
        .expect_status(200);
    let r = srv
        .post_json("/v1/agents/images", &json!(images(9_998, 10_001)))
        .await;
    r.expect_error(507);
    srv.get("/v1/agents/images/iq9999")
        .await
        .expect_json()
        .as_object()
        .filter(|o| o.is_empty())
        .expect("nothing of the refused post was kept");
}

/// An agent record's size is bounded (4 MiB): a post that would pass it is refused with
/// 413 and changes nothing; replacing a field with a value of the same size still works.
#[tokio::test]
async fn agent_record_stops_growing_at_four_mib() {
    let srv = TestServer::start();
    let path = "/v1/agents/data/grower";
    let big = "x".repeat(1_000_000);
    for key in ["identifier", "location", "provision_type", "comment"] {
        srv.post_json(path, &json!({key: big}))
            .await
            .expect_status(200);
    }
    let r = srv.post_json(path, &json!({"state": big})).await;
    let message = r.expect_error(413);
    assert!(message.contains("4194304"), "{message}");
    let record = srv.get(path).await.expect_json();
    // The refused state was not kept (`null`: never posted).
    assert!(record["state"].is_null() && record.get("comment").is_some());
    srv.post_json(path, &json!({"identifier": "y".repeat(1_000_000)}))
        .await
        .expect_status(200);
    srv.post_json(path, &json!({"state": "waiting"}))
        .await
        .expect_status(200);
}

/// Asserts `r` is upstream's refusal of an undeclared key: 422, marshmallow's `Unknown
/// field.` under the key in `detail`, and a `message` naming it.
#[track_caller]
pub fn assert_unknown_key_refused(r: &Resp, key: &str, what: &str) {
    assert_eq!(r.status, 422, "{what}: {}", r.text_preview());
    let body = r.json();
    assert_eq!(
        body["detail"]["json"][key],
        json!(["Unknown field."]),
        "{what}: {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("\"{key}\"")), "{what}: {body}");
}

/// The bodies agents post declare their keys as upstream's schemas do (`AgentIn`,
/// `ProvisionLogsIn`, `LogPost`, `ActionIn`, `StatusUpdate`): a key none declares is a 422
/// naming it and nothing is stored, as upstream answers; the stock agent sends none.
#[tokio::test]
async fn agent_bodies_with_an_undeclared_key_are_refused_naming_it() {
    let srv = TestServer::start();
    let record = "/v1/agents/data/strict-dut";
    srv.post_json(record, &json!({"state": "waiting", "queues": ["strict-q"]}))
        .await
        .expect_status(200);
    let r = srv
        .post_json(record, &json!({"state": "test", "colour": "red"}))
        .await;
    assert_unknown_key_refused(&r, "colour", "agent data");
    let kept = srv.get(record).await.expect_json();
    assert_eq!(kept["state"], "waiting", "{kept}");
    assert!(kept.get("colour").is_none(), "{kept}");

    let id = srv.submit_to("strict-q").await;
    let r = srv
        .post_json(
            "/v1/agents/provision_logs/strict-dut",
            &json!({"job_id": id, "exit_code": 0, "detail": "", "retries": 2}),
        )
        .await;
    assert_unknown_key_refused(&r, "retries", "provision log");
    let kept = srv.get(record).await.expect_json();
    assert!(kept.get("provision_streak_type").is_none(), "{kept}");

    let r = srv
        .post_json(
            &format!("/v1/job/{id}/action"),
            &json!({"action": "cancel", "reason": "why"}),
        )
        .await;
    assert_unknown_key_refused(&r, "reason", "action");
    assert_eq!(srv.job_state(&id).await, "waiting");

    srv.pop_id(&["strict-q"])
        .await
        .expect("the job is dispatched");
    let fragment = json!({
        "fragment_number": 0,
        "timestamp": "2026-12-02T10:00:00+00:00",
        "phase": "setup",
        "log_data": "hello\n",
        "stream": "stdout",
    });
    let r = srv
        .post_json(&format!("/v1/result/{id}/log/output"), &fragment)
        .await;
    assert_unknown_key_refused(&r, "stream", "log fragment");
    let log = srv
        .get(&format!("/v1/result/{id}/log/output"))
        .await
        .expect_json();
    assert_eq!(log["output"]["setup"]["last_fragment_number"], -1, "{log}");

    let r = srv
        .post_json(
            &format!("/v1/job/{id}/events"),
            &json!({"job_status_webhook": "http://hooks.example/x", "events": [], "note": 1}),
        )
        .await;
    assert_unknown_key_refused(&r, "note", "events");

    // The same bodies without the extra key are taken.
    let mut fragment = fragment;
    fragment.as_object_mut().unwrap().remove("stream");
    srv.post_json(&format!("/v1/result/{id}/log/output"), &fragment)
        .await
        .expect_status(200);
    srv.post_json(
        "/v1/agents/provision_logs/strict-dut",
        &json!({"job_id": id, "exit_code": 0, "detail": ""}),
    )
    .await
    .expect_status(200);
}

/// An agent record's string fields take strings only, as upstream's `AgentIn` loads them:
/// `null` is a 422 naming the field (marshmallow's "Field may not be null."), and the
/// record is unchanged; `""` (how the stock agent clears its job id) is taken.
#[tokio::test]
async fn agent_record_string_fields_refuse_null_as_upstream() {
    let srv = TestServer::start();
    let record = "/v1/agents/data/null-dut";
    srv.post_json(record, &json!({"state": "waiting", "job_id": "x"}))
        .await
        .expect_status(200);
    for field in [
        "identifier",
        "job_id",
        "location",
        "provision_type",
        "state",
        "comment",
    ] {
        let r = srv.post_json(record, &json!({ field: null })).await;
        assert_eq!(r.status, 422, "{field}: {}", r.text_preview());
        assert_eq!(
            r.json()["detail"]["json"][field],
            json!(["Field may not be null."]),
            "{field}"
        );
    }
    let kept = srv.get(record).await.expect_json();
    assert_eq!(
        (&kept["state"], &kept["job_id"]),
        (&json!("waiting"), &json!("x"))
    );
    srv.post_json(record, &json!({"job_id": ""}))
        .await
        .expect_status(200);
    assert_eq!(srv.get(record).await.expect_json()["job_id"], "");
}

/// `GET /v1/queues/<q>/agents` lists the agents whose records list the queue (now read
/// from an index, not by parsing every record): as they add and drop queues, with records
/// full of log lines beside them, and after a restart (the index is rebuilt, never
/// stored); 404 once none serves it.
#[tokio::test]
async fn queue_agents_follow_the_queues_agents_list_and_survive_a_restart() {
    let mut srv = TestServer::start();
    let names = |r: Resp| -> Vec<String> {
        r.expect_json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let lines: Vec<String> = (0..100)
        .map(|n| format!("line {n} {}", "x".repeat(1000)))
        .collect();
    for (name, queues) in [
        ("dev-b", json!(["qa", "qb"])),
        ("dev-a", json!(["qa"])),
        ("dev-c", json!(["qc"])),
    ] {
        srv.post_json(
            &format!("/v1/agents/data/{name}"),
            &json!({"queues": queues, "state": "waiting", "location": name, "log": lines}),
        )
        .await
        .expect_status(200);
    }
    let qa = srv.get("/v1/queues/qa/agents").await;
    assert_eq!(names(qa), ["dev-a", "dev-b"], "by name");
    // dev-b drops qa and takes qc; a post without `queues` keeps them.
    srv.post_json("/v1/agents/data/dev-b", &json!({"queues": ["qc"]}))
        .await
        .expect_status(200);
    srv.post_json("/v1/agents/data/dev-b", &json!({"state": "test"}))
        .await
        .expect_status(200);
    assert_eq!(names(srv.get("/v1/queues/qa/agents").await), ["dev-a"]);
    let qc = srv.get("/v1/queues/qc/agents").await.expect_json();
    assert_eq!(
        qc,
        json!([
            {"name": "dev-b", "state": "test", "queues": ["qc"], "location": "dev-b",
             "restricted_to": {}},
            {"name": "dev-c", "state": "waiting", "queues": ["qc"], "location": "dev-c",
             "restricted_to": {}},
        ])
    );
    srv.get("/v1/queues/qb/agents").await.expect_error(404);
    srv.restart();
    assert_eq!(names(srv.get("/v1/queues/qa/agents").await), ["dev-a"]);
    assert_eq!(
        names(srv.get("/v1/queues/qc/agents").await),
        ["dev-b", "dev-c"]
    );
    // The dashboard's queue page lists them too.
    let html = srv.get("/queues/qc").await.expect_status(200).text();
    assert!(html.contains("/agents/dev-b") && html.contains("/agents/dev-c"));
    assert!(!html.contains("/agents/dev-a"));
}

/// `DELETE /v1/agents/data/<name>` with access control off, from the server's own host
/// (as every test client is): the record goes with its queues' listing and its provision
/// history, durably (still gone after a restart); an agent no record has is 404, and so
/// is its provision log; the agent's next post makes a new record from nothing. Without
/// access control there is no credential, so `--max-agents-per-client` holds no one.
#[tokio::test]
async fn an_operator_deletes_an_agent_record_and_it_stays_gone_after_a_restart() {
    let mut srv = TestServer::start_with(&["--max-agents-per-client", "1"]);
    for name in ["del-x", "del-y"] {
        srv.post_json(
            &format!("/v1/agents/data/{name}"),
            &json!({"queues": ["qdel"], "state": "waiting", "location": "lab"}),
        )
        .await
        .expect_status(200);
    }
    let entry = json!({"job_id": crate::util::new_id(), "exit_code": 0, "detail": ""});
    srv.post_json("/v1/agents/provision_logs/del-x", &entry)
        .await
        .expect_status(200);
    let deleted = srv
        .request("DELETE", "/v1/agents/data/del-x", &[], Vec::new())
        .await;
    assert_eq!(deleted.expect_status(200).text(), "OK");
    deleted_record_is_gone(&srv).await;
    let again = srv
        .request("DELETE", "/v1/agents/data/del-x", &[], Vec::new())
        .await;
    assert!(again.expect_error(404).contains("del-x"));
    srv.post_json("/v1/agents/provision_logs/del-x", &entry)
        .await
        .expect_error(404);
    srv.restart();
    deleted_record_is_gone(&srv).await;
    srv.post_json("/v1/agents/data/del-x", &json!({"state": "waiting"}))
        .await
        .expect_status(200);
    let record = srv.get("/v1/agents/data/del-x").await.expect_json();
    assert_eq!(record["state"], "waiting");
    for old in ["queues", "location", "provision_streak_type"] {
        assert!(record.get(old).is_none(), "{old} in {record}");
    }
}

/// `del-x`, deleted, is nowhere: not by name, in the list or among its queue's agents.
async fn deleted_record_is_gone(srv: &TestServer) {
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    srv.get("/v1/agents/data/del-x").await.expect_error(404);
    let listed = srv.get("/v1/agents/data").await.expect_json();
    assert_eq!(names(listed), ["del-y"]);
    let serving = srv.get("/v1/queues/qdel/agents").await.expect_json();
    assert_eq!(names(serving), ["del-y"]);
}
