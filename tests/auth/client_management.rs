//! Client management: the client-permissions API follows upstream's rules, and the offline
//! `flinger client` command refuses the data directory of a running server, and one that
//! does not exist (except `add`, which starts it).

use std::time::Duration;

use serde_json::{json, Value};

use super::{call, token_request, Lab};
use crate::util::{run_to_exit, TestServer};

#[tokio::test]
async fn client_management_api_follows_upstream_rules() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let manager = lab.token_for("mgr", "manager", json!({})).await;
    let put = |token: String, id: &'static str, body: Value| async move {
        call(
            srv,
            "PUT",
            &format!("/v1/client-permissions/{id}"),
            Some(&token),
            None,
            Some(&body),
        )
        .await
    };
    assert_eq!(
        put(manager.clone(), "new", json!({"role": "contributor"}))
            .await
            .expect_error(400),
        "Error: Missing client_secret in request body for new client"
    );
    put(manager.clone(), "new", json!({"client_secret": "short"}))
        .await
        .expect_error(422);
    // bcrypt reads 72 bytes: a longer secret would be matched by its first 72 alone.
    let r = put(
        manager.clone(),
        "new",
        json!({"client_secret": "s".repeat(73)}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        r.json()["detail"]["json"]["client_secret"][0],
        "Longer than maximum length 72 bytes."
    );
    // A ':' splits HTTP Basic credentials; control characters would forge log lines.
    for id in ["a%3Ab", "a%0Ab"] {
        let r = put(
            manager.clone(),
            id,
            json!({"client_secret": "long-enough-secret"}),
        )
        .await;
        assert_eq!(r.status, 422, "{id}: {}", r.text());
    }
    put(
        manager.clone(),
        "x",
        json!({"client_secret": "long-enough-secret", "role": "admin"}),
    )
    .await
    .expect_error(403);
    put(manager.clone(), "root", json!({"max_priority": {"*": 1}}))
        .await
        .expect_error(403);
    put(manager.clone(), "testflinger-admin", json!({}))
        .await
        .expect_error(422);
    let created = put(
        manager.clone(),
        "new",
        json!({"client_secret": "long-enough-secret", "email": "a@b.c"}),
    )
    .await;
    assert_eq!(
        created.expect_status(200).text(),
        "Created permissions for client 'new'"
    );
    let one = call(
        srv,
        "GET",
        "/v1/client-permissions/new",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(
        one,
        json!({"client_id": "new", "max_priority": {}, "allowed_queues": [], "max_reservation_time": {}, "role": "contributor", "email": "a@b.c"})
    );
    let all = call(
        srv,
        "GET",
        "/v1/client-permissions",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_json();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("client_secret_hash").is_none() && c.get("secret_hash").is_none()));
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_error(403);
    let admin = lab.admin_token().await;
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_status(200);
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/new",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_error(404);
    token_request(srv, "new", "long-enough-secret")
        .await
        .expect_error(401);
}

#[tokio::test]
async fn a_manager_cannot_replace_a_fellow_managers_secret_or_role_but_may_its_own() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "manager", json!({})).await;
    let bob_secret = lab.client("bob", "manager", json!({})).await;
    lab.client("carol", "contributor", json!({})).await;
    let put = |token: String, id: &'static str, body: Value| async move {
        call(
            srv,
            "PUT",
            &format!("/v1/client-permissions/{id}"),
            Some(&token),
            None,
            Some(&body),
        )
        .await
    };
    let taken = json!({"client_secret": "alice-now-knows-this"});
    assert_eq!(
        put(alice.clone(), "bob", taken.clone())
            .await
            .expect_error(403),
        "alice has insufficient permissions to replace the secret of client 'bob': it needs a \
         role above 'manager'"
    );
    token_request(srv, "bob", "alice-now-knows-this")
        .await
        .expect_error(401);
    token_request(srv, "bob", &bob_secret)
        .await
        .expect_status(200);
    // Demoting the peer first (its secret would then be below alice's role) is refused too.
    let message = put(alice.clone(), "bob", json!({"role": "contributor"}))
        .await
        .expect_error(403);
    assert!(
        message.contains("change the role of client 'bob'"),
        "{message}"
    );
    // The rest of a peer's permissions follow upstream's rule: not below, so allowed.
    put(alice.clone(), "bob", json!({"max_priority": {"*": 5}}))
        .await
        .expect_status(200);
    // Below the caller's role, and its own: allowed; an admin may replace anyone's.
    put(
        alice.clone(),
        "carol",
        json!({"client_secret": "carol-new-secret-1"}),
    )
    .await
    .expect_status(200);
    token_request(srv, "carol", "carol-new-secret-1")
        .await
        .expect_status(200);
    put(
        alice.clone(),
        "alice",
        json!({"client_secret": "alice-new-secret-1"}),
    )
    .await
    .expect_status(200);
    token_request(srv, "alice", "alice-new-secret-1")
        .await
        .expect_status(200);
    let admin = lab.admin_token().await;
    put(admin, "bob", json!({"client_secret": "bob-reset-by-admin"}))
        .await
        .expect_status(200);
    token_request(srv, "bob", "bob-reset-by-admin")
        .await
        .expect_status(200);
}

#[tokio::test]
async fn client_command_refuses_to_touch_the_data_dir_of_a_running_server() {
    let srv = TestServer::start_with(&["--access-control", "on"]);
    let data = srv.data_dir().display().to_string();
    let mut args = vec!["--data-dir", &data];
    // On the PostgreSQL journal the server's database is what it holds.
    if let Some(url) = srv.journal() {
        args.extend(["--journal", url]);
    }
    args.extend(["client", "add", "x"]);
    let out = run_to_exit(srv.dir(), &args, &[], Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stop the server"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing (no secret) may be printed: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn client_commands_other_than_add_refuse_a_data_dir_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["client", "list"][..],
        &["client", "delete", "x"],
        &["client", "token-file", "x", "--out", "t"],
        &["--data-dir", "elsewhere", "client", "list"],
    ] {
        let out = run_to_exit(dir.path(), args, &[], Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no data directory at") && stderr.contains("--data-dir DIR client"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing may be created"
    );
    // `add` still starts a data directory: the first admin is made before the first start.
    run_in_ok(dir.path(), &["client", "add", "root", "--role", "admin"]);
    assert!(dir.path().join("data").is_dir());
}

#[tokio::test]
async fn refresh_and_restricted_queue_bodies_that_are_not_json_are_400_naming_where() {
    let lab = Lab::start(&[]);
    let bearer = format!("Bearer {}", lab.admin_token().await);
    for (path, token) in [
        ("/v1/oauth2/refresh", None),
        ("/v1/restricted-queues/q", Some(bearer.as_str())),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(token.map(|t| ("authorization", t)));
        let r = lab
            .srv
            .request("POST", path, &headers, b"{\"a\": tru".to_vec())
            .await;
        let message = r.expect_error(400);
        assert!(
            message.starts_with("Invalid JSON body: ") && message.contains("line 1 column"),
            "{path}: {message}"
        );
    }
}

#[tokio::test]
async fn client_add_refuses_an_email_address_that_is_not_one_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    for (email, problem) in [
        ("alice", "it has no '@'"),
        ("@example.com", "nothing comes before the '@'"),
        ("alice@", "no domain comes after the '@'"),
        ("alice@example..com", "has an empty label"),
        (
            "alice@example.com\nclient_secret: forged",
            "a space or a control character",
        ),
    ] {
        let out = run_to_exit(
            dir.path(),
            &["client", "add", "alice", "--email", email],
            &[],
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{email:?} was taken");
        assert!(
            stderr.contains("is not a valid email address") && stderr.contains(problem),
            "{email:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{email:?}: nothing may be printed");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused command creates nothing"
    );
    run_in_ok(
        dir.path(),
        &["client", "add", "alice", "--email", "alice@example.com"],
    );
    // The API applies the same check.
    let lab = Lab::start(&[]);
    let admin = lab.admin_token().await;
    let r = call(
        &lab.srv,
        "PUT",
        "/v1/client-permissions/bob",
        Some(&admin),
        None,
        Some(&json!({"client_secret": "long-enough-secret", "email": "bob@"})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        r.json()["detail"]["json"]["email"][0],
        "Not a valid email address: no domain comes after the '@'."
    );
}

#[tokio::test]
async fn client_token_file_records_no_token_when_the_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| run_to_exit(dir.path(), args, &[], Duration::from_secs(60));
    run_in_ok(
        dir.path(),
        &["client", "add", "lab-agent", "--role", "agent"],
    );
    std::fs::write(dir.path().join("a-file"), b"not a folder").unwrap();
    let issued = || {
        let out = run_in_ok(dir.path(), &["wal", "dump", "data"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("RefreshTokenIssued"))
            .count()
    };
    // A directory, a path below a regular file or in a folder that does not exist:
    // refused, nothing recorded (no folder made).
    for target in [".", "a-file/token", "tokens/refresh_token"] {
        let out = run(&["client", "token-file", "lab-agent", "--out", target]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{target}: {stderr}");
        assert!(
            stderr.contains("cannot write the token file")
                && stderr.contains("no token was issued"),
            "{target}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{target}");
    }
    assert_eq!(issued(), 0, "a token was recorded that no file holds");
    assert!(!dir.path().join("tokens").exists(), "a folder was made");
    let missing = run(&[
        "client",
        "token-file",
        "lab-agent",
        "--out",
        "tokens/refresh_token",
    ]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("the folder tokens does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    std::fs::create_dir(dir.path().join("tokens")).unwrap();
    // A writable path: the file holds the one token recorded, and replaces an older file
    // whole; no temporary file is left beside it.
    let path = dir.path().join("tokens").join("refresh_token");
    let mut tokens = Vec::new();
    for round in 1..=2 {
        let out = run(&[
            "client",
            "token-file",
            "lab-agent",
            "--out",
            "tokens/refresh_token",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        tokens.push(file["refresh_token"].as_str().unwrap().to_owned());
        assert_eq!(issued(), round);
    }
    assert_ne!(tokens[0], tokens[1]);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["refresh_token"]);
}

/// `client add` for a client that exists gives it a new secret, which ends the refresh
/// tokens issued with the old one: the output says so, and how to write a new token file,
/// instead of leaving an agent to find its token file dead.
#[tokio::test]
async fn client_add_of_an_existing_client_says_its_refresh_tokens_were_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = |args: &[&str]| String::from_utf8(run_in_ok(dir.path(), args).stdout).unwrap();
    let created = stdout(&["client", "add", "agentx", "--role", "agent"]);
    assert!(!created.contains("revoked"), "{created}");
    stdout(&["client", "token-file", "agentx", "--out", "t.tok"]);
    stdout(&["client", "token-file", "agentx", "--out", "u.tok"]);
    let replaced = stdout(&[
        "client",
        "add",
        "agentx",
        "--role",
        "agent",
        "--email",
        "a@b.example.com",
    ]);
    for wanted in [
        "Gave a new secret to client \"agentx\" with role agent",
        "The old secret no longer works",
        "Access tokens issued under the old secret are refused from their next request on",
        "Its 2 refresh tokens were revoked",
        "flinger client token-file agentx --out FILE",
    ] {
        assert!(replaced.contains(wanted), "no {wanted:?} in {replaced}");
    }
    let again = stdout(&["client", "add", "agentx", "--role", "agent"]);
    assert!(again.contains("It had no refresh tokens."), "{again}");
}

/// `client add` of an existing client without `--role` or limits is a new secret only:
/// rotating the only admin's secret must not demote it to contributor or drop its limits
/// (it did); options given replace what they name, and a new client is a contributor.
#[tokio::test]
async fn client_add_of_an_existing_client_keeps_what_the_options_leave_out() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = |args: &[&str]| String::from_utf8(run_in_ok(dir.path(), args).stdout).unwrap();
    let listed = |id: &str| -> serde_json::Value {
        stdout(&["client", "list"])
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|c| c["client_id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed"))
    };
    stdout(&[
        "client",
        "add",
        "boss",
        "--role",
        "admin",
        "--max-priority",
        "*=5",
        "--max-reservation",
        "q=90000",
        "--email",
        "boss@lab.example.com",
    ]);
    let before = listed("boss");
    let rotated = stdout(&["client", "add", "boss"]);
    assert!(
        rotated.contains("with role admin") && rotated.contains("are as they were"),
        "{rotated}"
    );
    let after = listed("boss");
    assert_eq!(after, before);
    assert_eq!(after["role"], "admin");
    assert_eq!(after["max_priority"], json!({"*": 5}));
    assert_eq!(after["email"], "boss@lab.example.com");
    let changed = stdout(&["client", "add", "boss", "--max-priority", "*=7"]);
    assert!(changed.contains("as the options give them"), "{changed}");
    let after = listed("boss");
    assert_eq!(after["max_priority"], json!({"*": 7}));
    assert_eq!(after["max_reservation_time"], json!({"q": 90000}));
    assert_eq!(after["role"], "admin");
    stdout(&["client", "add", "newcomer"]);
    assert_eq!(listed("newcomer")["role"], "contributor");
}

/// The client-facing bodies of access control declare their keys as upstream's schemas do
/// (`ClientPermissionsIn`, `RestrictedQueueIn`, `RefreshTokenIn`, `SecretIn`): a key none
/// declares is a 422 naming it, and nothing changes.
#[tokio::test]
async fn access_control_bodies_with_an_undeclared_key_are_refused_naming_it() {
    let lab = Lab::start_env(
        &[],
        &[(
            "FLINGER_SECRETS_KEY",
            "master-key-for-tests-0123456789abcdef",
        )],
    );
    let srv = &lab.srv;
    let admin = lab.admin_token().await;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let refresh = token_request(srv, &lab.admin.0, &lab.admin.1)
        .await
        .expect_json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (
            "PUT",
            "/v1/client-permissions/alice",
            json!({"role": "manager", "team": "qa"}),
            &admin,
            "team",
        ),
        (
            "POST",
            "/v1/restricted-queues/any-q",
            json!({"client_id": "alice", "why": "x"}),
            &admin,
            "why",
        ),
        (
            "POST",
            "/v1/oauth2/refresh",
            json!({"refresh_token": refresh, "scope": "all"}),
            &admin,
            "scope",
        ),
        (
            "POST",
            "/v1/oauth2/revoke",
            json!({"refresh_token": refresh, "reason": "x"}),
            &admin,
            "reason",
        ),
        (
            "PUT",
            "/v1/secrets/alice/db/pass",
            json!({"value": "v", "ttl": 5}),
            &alice,
            "ttl",
        ),
    ];
    for (method, path, body, token, key) in cases {
        let r = call(srv, method, path, Some(token), None, Some(&body)).await;
        crate::agents::assert_unknown_key_refused(&r, key, &format!("{method} {path}"));
    }
    // Nothing changed: alice is still a contributor, the refresh token still works and
    // no secret was stored.
    let shown = call(
        srv,
        "GET",
        "/v1/client-permissions/alice",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(shown["role"], "contributor", "{shown}");
    let body = json!({"refresh_token": refresh});
    call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
        .await
        .expect_status(200);
    let r = call(
        srv,
        "PUT",
        "/v1/secrets/alice/db/pass",
        Some(&alice),
        None,
        Some(&json!({"value": "v"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text_preview());
}

/// Runs `flinger ARGS...` in `dir` to completion, asserting it succeeded; its output.
fn run_in_ok(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = run_to_exit(dir, args, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "flinger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A client edit the role hierarchy refuses is a security event, as a refusal of the
/// access table is: who, what, from where; a caller repeating it makes one line per
/// interval (the next counts the suppressed), not one per request. So is any refusal a
/// handler makes itself (here a priority over the caller's maximum).
#[tokio::test]
async fn a_refused_client_edit_is_a_security_event_logged_once_per_interval() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "manager", json!({})).await;
    lab.client("bob", "manager", json!({})).await;
    for _ in 0..30 {
        call(
            srv,
            "PUT",
            "/v1/client-permissions/bob",
            Some(&alice),
            None,
            Some(&json!({"client_secret": "alice-now-knows-this"})),
        )
        .await
        .expect_error(403);
    }
    let edit = |l: &str| {
        l.contains("flinger::security")
            && l.contains("authz_fail")
            && l.contains("/v1/client-permissions/bob")
    };
    let log = srv.stderr_lines_once(edit).await;
    let lines: Vec<_> = log.iter().filter(|l| edit(l)).collect();
    assert_eq!(lines.len(), 1, "{log:#?}");
    assert!(
        lines[0].contains("alice") && lines[0].contains("replace the secret"),
        "{}",
        lines[0]
    );
}

/// A refusal a handler makes itself is logged under its own kind too: a contributor's
/// priority over its maximum (a 403 of the submission check, not of the table).
#[tokio::test]
async fn a_submission_over_the_callers_priority_is_a_security_event() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let carol = lab.token_for("carol", "contributor", json!({})).await;
    let job = json!({"job_queue": "q", "job_priority": 7});
    call(srv, "POST", "/v1/job", Some(&carol), None, Some(&job))
        .await
        .expect_error(403);
    let refused = |l: &str| {
        l.contains("flinger::security") && l.contains("authz_fail") && l.contains("carol")
    };
    let log = srv.stderr_lines_once(refused).await;
    let line = log.iter().find(|l| refused(l));
    let line = line.unwrap_or_else(|| panic!("no security line: {log:#?}"));
    assert!(
        line.contains("/v1/job") && line.contains("priority 7"),
        "{line}"
    );
}
