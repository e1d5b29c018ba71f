//! Agent records and the credentials that make them: one agent credential creates at most
//! `--max-agents-per-client` of the records kept (so a leaked or broken one cannot fill
//! every place and keep new devices from registering for a week), and an operator deletes
//! a record (`DELETE /v1/agents/data/<name>`), which frees its place; both across a
//! snapshot and restarts.

use serde_json::{json, Value};

use super::{call, Lab};
use crate::util::{Resp, TestServer};

/// `POST /v1/agents/data/<name>` as `token`.
async fn post(srv: &TestServer, token: &str, name: &str, fields: Value) -> Resp {
    let path = format!("/v1/agents/data/{name}");
    call(srv, "POST", &path, Some(token), None, Some(&fields)).await
}

/// The refusal of a credential's new agent past its share: 507, naming the credential,
/// its count and the setting.
#[track_caller]
fn assert_share_refusal(r: &Resp, client: &str) {
    let message = r.expect_error(507);
    for part in [
        format!("agent credential \"{client}\""),
        "has created 3".to_owned(),
        "--max-agents-per-client 3".to_owned(),
    ] {
        assert!(message.contains(&part), "{part:?} in {message}");
    }
}

#[tokio::test]
async fn an_agent_credential_is_refused_new_agents_past_its_share_while_others_register() {
    let mut lab = Lab::start(&["--max-agents-per-client", "3", "--snapshot-bytes", "1MiB"]);
    let one = lab.token_for("share-one", "agent", json!({})).await;
    let two = lab.token_for("share-two", "agent", json!({})).await;
    let manager = lab.token_for("share-mgr", "manager", json!({})).await;
    let srv = &lab.srv;
    for n in 0..3 {
        post(srv, &one, &format!("one-{n}"), json!({"state": "waiting"}))
            .await
            .expect_status(200);
    }
    assert_share_refusal(
        &post(srv, &one, "one-3", json!({"state": "waiting"})).await,
        "share-one",
    );
    srv.get("/v1/agents/data/one-3").await.expect_error(404);
    // Its agents keep posting; another credential and a manager still make records.
    post(srv, &one, "one-0", json!({"state": "test"}))
        .await
        .expect_status(200);
    post(srv, &two, "two-0", json!({"state": "waiting"}))
        .await
        .expect_status(200);
    post(srv, &manager, "mgr-0", json!({"state": "waiting"}))
        .await
        .expect_status(200);
    // A manager's post releases a record (another credential may take it over), but it
    // stays in the share of the credential that created it.
    post(srv, &manager, "one-1", json!({"state": "maintenance"}))
        .await
        .expect_status(200);
    assert_share_refusal(&post(srv, &one, "one-3", json!({})).await, "share-one");

    // The counts are the fold's: a snapshot and a restart keep them.
    srv.log_for_a_snapshot().await;
    srv.snapshot_taken().await;
    lab.srv.restart();
    let srv = &lab.srv;
    assert_share_refusal(&post(srv, &one, "one-3", json!({})).await, "share-one");
    post(srv, &one, "one-2", json!({"state": "waiting"}))
        .await
        .expect_status(200);

    // An operator deletes one of its records: the place is free again, for it too.
    let deleted = call(
        srv,
        "DELETE",
        "/v1/agents/data/one-1",
        Some(&manager),
        None,
        None,
    )
    .await;
    assert_eq!(deleted.expect_status(200).text(), "OK");
    srv.get("/v1/agents/data/one-1").await.expect_error(404);
    post(srv, &one, "one-3", json!({"state": "waiting"}))
        .await
        .expect_status(200);
    assert_share_refusal(&post(srv, &one, "one-4", json!({})).await, "share-one");
    // An agent credential may not delete records, not even its own.
    call(
        srv,
        "DELETE",
        "/v1/agents/data/one-0",
        Some(&one),
        None,
        None,
    )
    .await
    .expect_error(403);

    // Replayed from the snapshot and the log after it: the deletion holds, the count too.
    lab.srv.restart();
    let srv = &lab.srv;
    srv.get("/v1/agents/data/one-1").await.expect_error(404);
    assert_share_refusal(&post(srv, &one, "one-4", json!({})).await, "share-one");
    post(srv, &two, "two-1", json!({"state": "waiting"}))
        .await
        .expect_status(200);
    let names: Vec<String> = srv
        .get("/v1/agents/data")
        .await
        .expect_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["mgr-0", "one-0", "one-2", "one-3", "two-0", "two-1"]
    );
}
