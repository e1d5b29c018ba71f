//! Access control across server starts: clients, tokens and the signing key survive
//! restarts and snapshots with no secret on disk in clear, and a public address with access
//! control off is refused at start-up with how to fix it.

use std::time::Duration;

use serde_json::json;

use super::{access_token, call, client_command, kept_in_clear, printed_secret, token_request};
use crate::util::pg::sql;
use crate::util::{run_to_exit, TestServer, SNAPSHOT_SOON};

#[tokio::test]
async fn clients_tokens_and_the_signing_key_survive_restarts_and_snapshots_and_no_secret_is_on_disk(
) {
    let mut srv = TestServer::start_with(&[&["--access-control", "on"], SNAPSHOT_SOON].concat());
    srv.stop();
    let root = printed_secret(&client_command(&srv, &["add", "root", "--role", "admin"]));
    srv.start_again();
    match srv.journal() {
        // The PostgreSQL journal keeps it in the database, shared by every node.
        Some(url) => assert_eq!(
            sql(
                url,
                "SELECT length(value) FROM flinger_private WHERE name = 'jwt-signing-key'"
            ),
            "64"
        ),
        None => {
            let key_file = srv.data_dir().join("jwt-signing-key");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file)
                .expect("signing key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    let admin = access_token(&srv, "root", &root).await;
    let secret = "a-secret-nobody-should-find-42";
    let put = json!({"client_secret": secret, "role": "manager", "max_priority": {"*": 7}});
    call(
        &srv,
        "PUT",
        "/v1/client-permissions/kept",
        Some(&admin),
        None,
        Some(&put),
    )
    .await
    .expect_status(200);
    let issued = token_request(&srv, "kept", secret).await.expect_json();
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    // Enough log to make the server take a snapshot.
    srv.log_for_a_snapshot().await;
    srv.snapshot_taken().await;
    srv.restart();
    // The old access token still verifies (same key), the refresh token still works.
    let clients = call(
        &srv,
        "GET",
        "/v1/client-permissions/kept",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(clients["role"], "manager");
    assert_eq!(clients["max_priority"], json!({"*": 7}));
    let body = json!({"refresh_token": refresh});
    call(&srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
        .await
        .expect_status(200);
    token_request(&srv, "kept", secret).await.expect_status(200);
    srv.stop();
    for needle in [secret, refresh.as_str(), root.as_str()] {
        assert!(!kept_in_clear(&srv, needle), "{needle:?} is kept in clear");
    }
}

#[tokio::test]
async fn binding_a_public_address_with_access_control_off_is_refused_with_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--bind", "0.0.0.0:0", "--data-dir", "d"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--access-control on") && stderr.contains("--allow-open-access"),
        "{stderr}"
    );
    assert!(!dir.path().join("d").exists(), "nothing should be created");
}

/// A key short enough to be found (HS256 needs 256 bits; the secrets store's master key
/// as much) is refused as a configuration error: exit status 2, naming the variable, before
/// the data directory is created or its log replayed, and the key never shown.
#[tokio::test]
async fn short_keys_from_the_environment_are_refused_as_configuration_errors_before_the_data_dir_is_touched(
) {
    for var in [
        "FLINGER_JWT_SIGNING_KEY",
        "JWT_SIGNING_KEY",
        "FLINGER_SECRETS_KEY",
        "TESTFLINGER_SECRETS_MASTER_KEY",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--access-control",
            "on",
        ];
        let out = run_to_exit(
            dir.path(),
            &args,
            &[(var, "changeme")],
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("{var} must be at least 32 bytes, got 8")),
            "{var}: {stderr}"
        );
        assert!(!stderr.contains("changeme"), "{var}: {stderr}");
        assert!(
            !dir.path().join("d").exists(),
            "{var}: nothing should be created"
        );
    }
}

/// The kept signing key is held to the same minimum as one from the environment: a file
/// written by hand with a short key, or emptied, is refused naming the file and how to
/// get a new key, instead of signing tokens with it (or silently replacing it). It is a
/// configuration error like a short key in the environment: exit status 2.
#[tokio::test]
async fn short_or_empty_signing_key_file_is_refused_naming_the_file_when_starting() {
    for key in ["short", ""] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let file = data.join("jwt-signing-key");
        std::fs::write(&file, key).unwrap();
        let args = [
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--access-control",
            "on",
        ];
        let out = run_to_exit(dir.path(), &args, &[], Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key:?}: {stderr}");
        assert!(!stderr.contains("listening"), "{key:?}: {stderr}");
        let shown = file.display().to_string();
        for wanted in [
            "flinger: configuration error: ".to_owned(),
            format!("the file {shown} is {} bytes", key.len()),
            format!("rm {shown}"),
            "FLINGER_JWT_SIGNING_KEY".to_owned(),
        ] {
            assert!(
                stderr.contains(&wanted),
                "{key:?}: no {wanted:?} in {stderr}"
            );
        }
        assert_eq!(
            std::fs::read(&file).unwrap(),
            key.as_bytes(),
            "left as it was"
        );
    }
}
