//! Job secrets: they reach only the agent the job was dispatched to and are never on disk in
//! clear; without a master key the secrets endpoints say there is no store; with access
//! control off a job naming secrets is refused as unauthenticated.

use std::time::Duration;

use serde_json::{json, Value};

use super::{access_token, call, kept_in_clear, register_agent, token_request, Lab};
use crate::util::{run_to_exit, Opts, TestServer, SNAPSHOT_SOON};

#[tokio::test]
async fn job_secrets_reach_only_the_dispatched_agent_and_never_the_disk_in_clear() {
    let mut lab = Lab::start_env(
        SNAPSHOT_SOON,
        &[(
            "FLINGER_SECRETS_KEY",
            "master-key-for-tests-0123456789abcdef",
        )],
    );
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let agent = lab.token_for("sec-agent", "agent", json!({})).await;
    let value = "s3cr3t-value-nobody-greps-for";
    let put = |token: Option<String>, path: &'static str, body: Value| async move {
        call(srv, "PUT", path, token.as_deref(), None, Some(&body)).await
    };
    let stored = put(
        Some(alice.clone()),
        "/v1/secrets/alice/db/pass",
        json!({"value": value}),
    )
    .await
    .expect_json();
    assert!(
        stored["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{stored}"
    );
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/once",
        json!({"value": "only-once-value", "ephemeral": true}),
    )
    .await
    .expect_status(200);
    put(
        Some(bob.clone()),
        "/v1/secrets/alice/db/pass",
        json!({"value": "x"}),
    )
    .await
    .expect_error(403);
    put(None, "/v1/secrets/alice/db/pass", json!({"value": "x"}))
        .await
        .expect_error(401);
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/bad%20path",
        json!({"value": "x"}),
    )
    .await
    .expect_error(422);
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/both",
        json!({"value": "x", "ephemeral": true, "expire_after": 5}),
    )
    .await
    .expect_error(422);
    // Each refusal names the field and what is wrong with it.
    for (body, field, reason) in [
        (json!({"value": 5}), "value", "Not a valid string."),
        (json!({}), "value", "Missing data for required field."),
        (
            json!({"value": "x", "expire_after": 1.5}),
            "expire_after",
            "Not a valid integer.",
        ),
        (
            json!({"value": "x", "expire_after": "5"}),
            "expire_after",
            "Not a valid integer.",
        ),
        (
            json!({"value": "x", "expire_after": 0}),
            "expire_after",
            "Must be greater than or equal to 1.",
        ),
        (
            json!({"value": "x", "expire_after": -3}),
            "expire_after",
            "Must be greater than or equal to 1.",
        ),
        (
            json!({"value": "x", "expire_after": 1.8446744073709552e19}),
            "expire_after",
            "Must be at most 18446744073709551615.",
        ),
        (json!([1]), "_schema", "Invalid input type."),
    ] {
        let r = put(Some(alice.clone()), "/v1/secrets/alice/x", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.json()["detail"]["json"][field][0], reason, "{body}");
    }
    put(
        Some(alice.clone()),
        "/v1/secrets/alice/x",
        json!({"value": "x", "expire_after": 2.0}),
    )
    .await
    .expect_status(200);
    let admin = lab.admin_token().await;
    for (token, path) in [
        (&alice, "/v1/secrets/alice/x"),
        (&admin, "/v1/client-permissions/alice"),
    ] {
        let bearer = format!("Bearer {token}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        let r = srv.request("PUT", path, &headers, b"nope".to_vec()).await;
        let message = r.expect_error(400);
        assert!(
            message.starts_with("Invalid JSON body"),
            "{path}: {message}"
        );
    }
    // Submission: every named path must be the submitter's.
    let job = |secrets: Value| json!({"job_queue": "sec-q", "test_data": {"test_cmds": "env", "secrets": secrets}});
    let r = call(
        srv,
        "POST",
        "/v1/job",
        Some(&bob),
        None,
        Some(&job(json!({"DB": "db/pass"}))),
    )
    .await;
    assert_eq!(r.expect_error(422), "Inaccessible secret paths: db/pass");
    let r = call(
        srv,
        "POST",
        "/v1/job",
        None,
        None,
        Some(&job(json!({"DB": "db/pass"}))),
    )
    .await;
    assert_eq!(
        r.expect_error(422),
        "Missing client ID (user not authenticated)"
    );
    let r = call(
        srv,
        "POST",
        "/v1/job",
        Some(&alice),
        None,
        Some(&job(json!({"DB": "db/pass", "ONCE": "once"}))),
    )
    .await;
    let id = r.expect_json()["job_id"].as_str().unwrap().to_owned();
    // Readers see paths; only the agent it is dispatched to sees values.
    let shown = call(
        srv,
        "GET",
        &format!("/v1/job/{id}"),
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        shown["test_data"]["secrets"],
        json!({"DB": "db/pass", "ONCE": "once"})
    );
    register_agent(srv, &agent, "sec").await;
    let popped = call(
        srv,
        "GET",
        "/v1/job?queue=sec-q",
        Some(&agent),
        Some("sec"),
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        popped["test_data"]["secrets"],
        json!({"DB": value, "ONCE": "only-once-value"})
    );
    // The ephemeral secret is gone after that read.
    let again = call(
        srv,
        "POST",
        "/v1/job",
        Some(&alice),
        None,
        Some(&job(json!({"ONCE": "once"}))),
    )
    .await;
    assert_eq!(again.expect_error(422), "Inaccessible secret paths: once");
    call(
        srv,
        "DELETE",
        "/v1/secrets/alice/db/pass",
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_status(200);
    // Enough log for a snapshot, then nothing on disk holds a value in clear.
    srv.log_for_a_snapshot().await;
    srv.snapshot_taken().await;
    let log = lab.srv.stderr_lines().join("\n");
    assert!(
        !log.contains(value) && !log.contains("only-once-value"),
        "a secret was logged"
    );
    lab.srv.stop();
    for needle in [value, "only-once-value"] {
        assert!(
            !kept_in_clear(&lab.srv, needle),
            "{needle:?} is kept in clear"
        );
    }
}

#[tokio::test]
async fn secrets_endpoints_say_no_store_when_no_master_key_is_set() {
    let lab = Lab::start(&[]);
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let r = call(
        &lab.srv,
        "PUT",
        "/v1/secrets/alice/x",
        Some(&alice),
        None,
        Some(&json!({"value": "v"})),
    )
    .await;
    assert_eq!(r.expect_error(400), "No secrets store");
    let job = json!({"job_queue": "q", "test_data": {"secrets": {"X": "x"}}});
    let r = call(&lab.srv, "POST", "/v1/job", Some(&alice), None, Some(&job)).await;
    assert_eq!(r.expect_error(422), "No secrets store");
}

#[tokio::test]
async fn a_job_naming_secrets_is_refused_as_unauthenticated_when_access_control_is_off_with_a_store(
) {
    let srv = TestServer::start_opts(Opts {
        envs: vec![(
            "FLINGER_SECRETS_KEY".into(),
            "master-key-for-tests-0123456789abcdef".into(),
        )],
        ..Opts::default()
    });
    let job = json!({"job_queue": "q", "test_data": {"secrets": {"X": "x"}}});
    let r = call(&srv, "POST", "/v1/job", None, None, Some(&job)).await;
    assert_eq!(
        r.expect_error(422),
        "Missing client ID (user not authenticated)"
    );
    let plain = json!({"job_queue": "q"});
    call(&srv, "POST", "/v1/job", None, None, Some(&plain))
        .await
        .expect_status(200);
}

/// Stores `count` secrets `prefix-N` for `owner`, 50 requests at a time; their statuses.
async fn store_many(
    srv: &TestServer,
    token: &str,
    owner: &str,
    prefix: &str,
    count: usize,
    body: &Value,
) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    let paths: Vec<String> = (0..count)
        .map(|n| format!("/v1/secrets/{owner}/{prefix}-{n}"))
        .collect();
    for chunk in paths.chunks(50) {
        let puts = chunk
            .iter()
            .map(|path| call(srv, "PUT", path, Some(token), None, Some(body)));
        for r in futures_util::future::join_all(puts).await {
            statuses.push(r.status);
        }
    }
    statuses
}

#[tokio::test]
async fn expired_secrets_do_not_count_toward_the_per_client_limit_and_stay_gone_after_a_restart() {
    let mut lab = Lab::start_env(
        &[],
        &[(
            "FLINGER_SECRETS_KEY",
            "master-key-for-tests-0123456789abcdef",
        )],
    );
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let short = json!({"value": "v", "expire_after": 1});
    let statuses = store_many(&lab.srv, &alice, "alice", "short", 1000, &short).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Wait (not an assertion on time) until all of them have expired.
    let stored_by = std::time::SystemTime::now();
    while stored_by.elapsed().unwrap_or_default() < Duration::from_millis(2100) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let long = json!({"value": "v", "expire_after": 86_400});
    call(
        &lab.srv,
        "PUT",
        "/v1/secrets/alice/new",
        Some(&alice),
        None,
        Some(&long),
    )
    .await
    .expect_status(200);
    // The expired ones were removed by a recorded event: after a restart the client has
    // one secret, so 999 more fit and the next is refused.
    lab.srv.restart();
    let alice = access_token(&lab.srv, "alice", "secret-of-alice-0123456789").await;
    let statuses = store_many(&lab.srv, &alice, "alice", "long", 999, &long).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let r = call(
        &lab.srv,
        "PUT",
        "/v1/secrets/alice/one-too-many",
        Some(&alice),
        None,
        Some(&long),
    )
    .await;
    assert_eq!(r.expect_error(400), "At most 1000 secrets per client");
    // Replacing a live one is not a new one.
    call(
        &lab.srv,
        "PUT",
        "/v1/secrets/alice/long-0",
        Some(&alice),
        None,
        Some(&long),
    )
    .await
    .expect_status(200);
}

#[tokio::test]
async fn wal_dump_shows_credentials_by_kind_and_size_only() {
    // `wal dump` reads the file log (also in the PostgreSQL suite's run).
    let lab = Lab::start_env(
        &["--journal", "file"],
        &[(
            "FLINGER_SECRETS_KEY",
            "master-key-for-tests-0123456789abcdef",
        )],
    );
    let srv = &lab.srv;
    let secret = lab
        .client("alice", "contributor", json!({"email": "a@b.c"}))
        .await;
    let login = token_request(srv, "alice", &secret).await.expect_json();
    let refresh = login["refresh_token"].as_str().expect("refresh_token");
    let alice = login["access_token"].as_str().expect("access_token");
    call(
        srv,
        "PUT",
        "/v1/secrets/alice/db/pass",
        Some(alice),
        None,
        Some(&json!({"value": "dump-must-not-show-this"})),
    )
    .await
    .expect_status(200);
    let data = srv.data_dir().display().to_string();
    let out = run_to_exit(
        srv.dir(),
        &["wal", "dump", &data],
        &[],
        Duration::from_secs(30),
    );
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, leaked) in [
        ("a bcrypt hash", "$2b$".to_owned()),
        ("a bcrypt hash", "$2y$".to_owned()),
        ("a refresh token", refresh.to_owned()),
        (
            "a refresh token's hash",
            flinger::access::token::token_hash(refresh).to_string(),
        ),
    ] {
        assert!(!dump.contains(&leaked), "the dump shows {what}:\n{dump}");
    }
    let saved: Vec<&str> = dump.lines().filter(|l| l.contains("ClientSaved")).collect();
    assert!(
        saved.len() >= 2 && saved.iter().all(|l| l.contains("<bcrypt hash, 60 bytes>")),
        "{dump}"
    );
    // Everything else is kept.
    assert!(
        saved
            .iter()
            .any(|l| l.contains("\"alice\"") && l.contains("a@b.c")),
        "{dump}"
    );
    let stored = dump
        .lines()
        .find(|l| l.contains("SecretStored"))
        .unwrap_or_else(|| panic!("no SecretStored line:\n{dump}"));
    assert!(
        stored.contains("<sealed secret, ") && stored.contains("\"db/pass\""),
        "{stored}"
    );
    assert!(
        dump.lines().any(
            |l| l.contains("RefreshTokenIssued") && l.contains("<sha-256 of a refresh token, ")
        ),
        "{dump}"
    );
}

/// Secrets stored under one `FLINGER_SECRETS_KEY` do not open under another: start-up
/// says so (an error naming how many), and a job naming such a secret is refused at
/// submission (422 naming it and why) instead of reaching its agent as "" (upstream's
/// way, after which the stock agent skips the test phase and reports the job complete).
/// Stored again, it works; with no key at all, start-up says the stored ones are unusable.
#[tokio::test]
async fn secrets_stored_under_another_key_are_refused_at_submission_and_named_at_start_up() {
    let mut lab = Lab::start_env(
        &[],
        &[(
            "FLINGER_SECRETS_KEY",
            "the-first-master-key-0123456789abcdef",
        )],
    );
    let alice_secret = lab.client("alice", "contributor", json!({})).await;
    let alice = access_token(&lab.srv, "alice", &alice_secret).await;
    async fn store(srv: &TestServer, token: &str) {
        let body = json!({"value": "hunter2"});
        call(
            srv,
            "PUT",
            "/v1/secrets/alice/db/pass",
            Some(token),
            None,
            Some(&body),
        )
        .await
        .expect_status(200);
    }
    store(&lab.srv, &alice).await;
    let job = json!({"job_queue": "sec-q", "test_data": {"test_cmds": "env", "secrets": {"DB": "db/pass"}}});
    lab.srv.stop();
    lab.srv.set_env(
        "FLINGER_SECRETS_KEY",
        "a-different-master-key-0123456789abcd",
    );
    lab.srv.start_again();
    let logged = lab
        .srv
        .stderr_lines_once(|l| l.contains("does not open some stored job secrets"))
        .await;
    assert!(
        logged
            .iter()
            .any(|l| l.contains("does not open some stored job secrets")
                && l.contains("sealed_elsewhere=1")),
        "{logged:#?}"
    );
    let alice = access_token(&lab.srv, "alice", &alice_secret).await;
    let refused = call(&lab.srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_error(422);
    assert_eq!(
        refused,
        "Inaccessible secret paths: db/pass (db/pass stored under another secrets key than \
         the server's FLINGER_SECRETS_KEY: store again)"
    );
    store(&lab.srv, &alice).await;
    call(&lab.srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_status(200);
    lab.srv.stop();
    lab.srv.set_env("FLINGER_SECRETS_KEY", "");
    lab.srv.start_again();
    let logged = lab
        .srv
        .stderr_lines_once(|l| l.contains("FLINGER_SECRETS_KEY is not set"))
        .await;
    assert!(
        logged
            .iter()
            .any(|l| l.contains("job secrets are stored but FLINGER_SECRETS_KEY is not set")),
        "{logged:#?}"
    );
}
