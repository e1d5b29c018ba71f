//! The token lifecycle with upstream's status codes: access tokens expire, refresh tokens
//! refresh and expire, revocation, forged and malformed tokens.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::{call, token_request, Lab, KEY};

/// A token signed with `key` carrying `claims`.
fn forge(key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tokens_expire_refresh_and_revoke_with_upstream_status_codes() {
    let lab = Lab::start(&[
        "--access-token-secs",
        "1",
        "--jwt-leeway-secs",
        "0",
        "--token-failures-per-minute",
        "4",
    ]);
    let srv = &lab.srv;
    let secret = lab
        .client("dev", "contributor", json!({"max_priority": {"*": 5}}))
        .await;
    // Wrong and missing credentials: 401 with upstream's messages.
    let r = srv
        .request("POST", "/v1/oauth2/token", &[], Vec::new())
        .await;
    assert_eq!(r.expect_error(401), "No authorization header specified");
    assert_eq!(
        token_request(srv, "dev", "wrong").await.expect_error(401),
        "Invalid client id or client key"
    );
    assert_eq!(
        token_request(srv, "ghost", "x").await.expect_error(401),
        "Invalid client id or client key"
    );
    let issued = token_request(srv, "dev", &secret).await.expect_json();
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], 1);
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "access_token");
    assert_eq!(claims["permissions"]["client_id"], "dev");
    assert_eq!(claims["permissions"]["role"], "contributor");
    assert_eq!(claims["permissions"]["max_priority"], json!({"*": 5}));
    let job = json!({"job_queue": "t", "job_priority": 5});
    call(srv, "POST", "/v1/job", Some(&token), None, Some(&job))
        .await
        .expect_status(200);
    // Expired: 401, so clients refresh and replay.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(srv, "POST", "/v1/job", Some(&token), None, Some(&job))
            .await
            .expect_error(401),
        "Token has expired"
    );
    let refreshed = call(
        srv,
        "POST",
        "/v1/oauth2/refresh",
        None,
        None,
        Some(&json!({"refresh_token": refresh})),
    )
    .await
    .expect_json();
    assert!(refreshed.get("refresh_token").is_none());
    let fresh = refreshed["access_token"].as_str().unwrap();
    call(srv, "POST", "/v1/job", Some(fresh), None, Some(&job))
        .await
        .expect_status(200);
    // Forged or damaged tokens: 403.
    let now = unix_now();
    let perms = json!({"client_id": "dev", "role": "admin"});
    let other_key = forge(
        "not-the-key",
        &json!({"exp": now + 60, "iat": now, "sub": "access_token", "permissions": perms}),
    );
    assert_eq!(
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(&other_key),
            None,
            None
        )
        .await
        .expect_error(403),
        "Invalid Token signature"
    );
    let no_sub = forge(
        KEY,
        &json!({"exp": now + 60, "iat": now, "permissions": perms}),
    );
    assert_eq!(
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(&no_sub),
            None,
            None
        )
        .await
        .expect_error(403),
        "Token missing required claim: sub"
    );
    assert_eq!(
        call(srv, "GET", "/v1/job/search", Some("not.a.jwt"), None, None)
            .await
            .expect_error(403),
        "Unable to decode token"
    );
    let future = forge(
        KEY,
        &json!({"exp": now + 600, "iat": now + 300, "sub": "access_token", "permissions": perms}),
    );
    assert_eq!(
        call(srv, "GET", "/v1/job/search", Some(&future), None, None)
            .await
            .expect_error(401),
        "Token not yet valid"
    );
    // Revoke is admin only; a revoked refresh token is refused with 400.
    let body = json!({"refresh_token": refresh});
    call(
        srv,
        "POST",
        "/v1/oauth2/revoke",
        Some(fresh),
        None,
        Some(&body),
    )
    .await
    .expect_error(403);
    let admin = lab.admin_token().await;
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/revoke",
            Some(&admin),
            None,
            Some(&body)
        )
        .await
        .expect_json(),
        json!({"status": "OK"})
    );
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/revoke",
            Some(&admin),
            None,
            Some(&body)
        )
        .await
        .expect_error(400),
        "Refresh token has already been revoked"
    );
    assert_eq!(
        call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
            .await
            .expect_error(400),
        "Refresh token revoked."
    );
    assert_eq!(
        call(
            srv,
            "POST",
            "/v1/oauth2/refresh",
            None,
            None,
            Some(&json!({"refresh_token": "nope"}))
        )
        .await
        .expect_error(400),
        "Invalid refresh token."
    );
    call(
        srv,
        "POST",
        "/v1/oauth2/refresh",
        None,
        None,
        Some(&json!({})),
    )
    .await
    .expect_error(422);
    // Failed logins are limited per client id from one address (4 a minute here; one
    // failed for dev above, the ghost's counts only for the address), even with the
    // right secret.
    for guess in ["wrong-again", "wrong-a-third-time", "wrong-a-fourth-time"] {
        token_request(srv, "dev", guess).await.expect_error(401);
    }
    let m = token_request(srv, "dev", &secret).await.expect_error(429);
    assert!(
        m.starts_with("Too many failed authentication attempts"),
        "{m}"
    );
    let log = srv
        .stderr_lines_once(|l| l.contains("flinger::security") && l.contains("authn_fail"))
        .await
        .join("\n");
    assert!(
        log.contains("flinger::security") && log.contains("authn_fail"),
        "no security events logged"
    );
    assert!(
        !log.contains(&secret) && !log.contains(&refresh) && !log.contains(fresh),
        "a secret or token was logged"
    );
}

#[tokio::test]
async fn refresh_tokens_expire_after_their_lifetime() {
    let lab = Lab::start(&["--refresh-token-secs", "1"]);
    let srv = &lab.srv;
    let secret = lab.client("short", "contributor", json!({})).await;
    let issued = token_request(srv, "short", &secret).await.expect_json();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let body = json!({"refresh_token": issued["refresh_token"]});
    assert_eq!(
        call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
            .await
            .expect_error(400),
        "Refresh token expired"
    );
}

/// Replacing a client's secret (the fix for a leaked one) ends the refresh tokens issued
/// with the old secret, also after a restart; changing only its role keeps them.
#[tokio::test]
async fn a_new_client_secret_ends_the_refresh_tokens_of_the_old_one() {
    async fn refresh(srv: &crate::util::TestServer, token: &str) -> crate::util::Resp {
        let body = json!({"refresh_token": token});
        call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body)).await
    }
    async fn put(lab: &Lab, body: Value) {
        let admin = lab.admin_token().await;
        let path = "/v1/client-permissions/rotated";
        call(&lab.srv, "PUT", path, Some(&admin), None, Some(&body))
            .await
            .expect_status(200);
    }
    let mut lab = Lab::start(&[]);
    let old_secret = lab.client("rotated", "contributor", json!({})).await;
    let login = token_request(&lab.srv, "rotated", &old_secret)
        .await
        .expect_json();
    let old = login["refresh_token"].as_str().unwrap().to_owned();
    put(&lab, json!({"role": "manager"})).await;
    refresh(&lab.srv, &old).await.expect_status(200);
    put(&lab, json!({"client_secret": "a-brand-new-secret-0123"})).await;
    assert_eq!(
        refresh(&lab.srv, &old).await.expect_error(400),
        "Invalid refresh token."
    );
    token_request(&lab.srv, "rotated", &old_secret)
        .await
        .expect_error(401);
    let fresh = token_request(&lab.srv, "rotated", "a-brand-new-secret-0123")
        .await
        .expect_json();
    let fresh = fresh["refresh_token"].as_str().unwrap().to_owned();
    lab.srv.restart();
    refresh(&lab.srv, &old).await.expect_error(400);
    refresh(&lab.srv, &fresh).await.expect_status(200);
    // Logins with the old secret in flight while it is replaced (bcrypt takes a while)
    // get no refresh token that outlives it.
    let racing: Vec<_> = (0..4)
        .map(|_| {
            let base = lab.srv.base().to_owned();
            tokio::spawn(async move {
                let http = crate::util::Http::new(base);
                let auth = super::basic("rotated", "a-brand-new-secret-0123");
                let mut kept = Vec::new();
                let until = std::time::Instant::now() + Duration::from_millis(1500);
                while std::time::Instant::now() < until {
                    let r = http
                        .request(
                            "POST",
                            "/v1/oauth2/token",
                            &[("authorization", &auth)],
                            vec![],
                        )
                        .await;
                    if r.status == 200 {
                        kept.push(r.json()["refresh_token"].as_str().unwrap().to_owned());
                    }
                }
                kept
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&lab, json!({"client_secret": "a-third-secret-0123456"})).await;
    let mut kept = 0;
    for task in racing {
        for token in task.await.unwrap() {
            refresh(&lab.srv, &token).await.expect_error(400);
            kept += 1;
        }
    }
    assert!(kept > 0, "no login succeeded before the change");
    refresh(&lab.srv, &fresh).await.expect_error(400);
}

/// Replacing a client's secret ends the access tokens issued under the old one on their
/// next request (401 saying why), cached or not, also after a restart; a token issued
/// under the new secret works, and neither another client's tokens nor a change that
/// keeps the secret are touched. A token that does not say which secret it was issued
/// under is refused (401, so upstream's clients log in again).
#[tokio::test]
async fn a_new_client_secret_ends_the_access_tokens_issued_under_the_old_one() {
    async fn list(srv: &crate::util::TestServer, token: &str) -> crate::util::Resp {
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(token),
            None,
            None,
        )
        .await
    }
    let mut lab = Lab::start(&[]);
    let old_secret = lab.client("leaked", "manager", json!({})).await;
    let bystander = lab.token_for("bystander", "manager", json!({})).await;
    let old = super::access_token(&lab.srv, "leaked", &old_secret).await;
    // Used once: the server now has it among its verified tokens.
    list(&lab.srv, &old).await.expect_status(200);
    let admin = lab.admin_token().await;
    let put = |body: Value| {
        let (srv, admin) = (&lab.srv, admin.clone());
        async move {
            call(
                srv,
                "PUT",
                "/v1/client-permissions/leaked",
                Some(&admin),
                None,
                Some(&body),
            )
            .await
            .expect_status(200);
        }
    };
    let new_secret = "the-replacement-secret-0123";
    put(json!({"client_secret": new_secret, "role": "manager"})).await;
    let refused = "The token was issued before client \"leaked\"'s secret changed: \
                   obtain a new one with the new secret";
    assert_eq!(list(&lab.srv, &old).await.expect_error(401), refused);
    // Not only where the role table asks for a role: a public route refuses it too.
    assert_eq!(
        call(&lab.srv, "GET", "/v1", Some(&old), None, None)
            .await
            .expect_error(401),
        refused
    );
    list(&lab.srv, &bystander).await.expect_status(200);
    let fresh = super::access_token(&lab.srv, "leaked", new_secret).await;
    list(&lab.srv, &fresh).await.expect_status(200);
    // A change that keeps the secret keeps its tokens.
    put(json!({"role": "manager", "max_priority": {"*": 3}})).await;
    list(&lab.srv, &fresh).await.expect_status(200);
    // A token of this server's key without the secret claim (as an earlier flinger, or
    // upstream sharing the key, issued): 401, for the client to obtain a new one.
    let now = unix_now();
    let legacy = forge(
        KEY,
        &json!({"exp": now + 600, "iat": now, "sub": "access_token",
            "permissions": {"client_id": "bystander", "role": "manager"}}),
    );
    let m = list(&lab.srv, &legacy).await.expect_error(401);
    assert!(
        m.contains("does not say which client secret and refresh token"),
        "{m}"
    );
    // After a restart (nothing cached; the secret's fingerprint is derived again from
    // the replayed journal) the old token stays refused and the others work.
    lab.srv.restart();
    assert_eq!(list(&lab.srv, &old).await.expect_error(401), refused);
    list(&lab.srv, &fresh).await.expect_status(200);
    list(&lab.srv, &bystander).await.expect_status(200);
    let log = lab
        .srv
        .stderr_lines_once(|l| l.contains("authn_fail") && l.contains("secret changed"))
        .await;
    assert!(
        log.iter().any(|l| l.contains("secret changed")),
        "the refusal was not logged: {log:#?}"
    );
    assert!(
        log.iter()
            .all(|l| !l.contains(&old) && !l.contains(new_secret)),
        "a token or secret was logged: {log:#?}"
    );
}

/// The limit on failed token requests holds for requests sent at once: each is counted
/// while its secret is checked, so 40 concurrent wrong guesses at a limit of 4 per minute
/// get at most 4 checks (401) and the rest 429, and the right secret from that address
/// waits for a try to come back too; while good logins sent at once (more than the limit, from one address) all get
/// their tokens, waiting for one another's checks instead of being refused.
/// Revoking a refresh token ends the access tokens issued with it (at login) and from it
/// (by refreshing) from their next request on, also across a restart, while the client's
/// other logins and its secret keep working; the stock clients' way back is a new login.
#[tokio::test]
async fn revoking_a_refresh_token_ends_the_access_tokens_issued_with_and_from_it() {
    let mut lab = Lab::start(&[]);
    let secret = lab.client("laptop", "contributor", json!({})).await;
    let login = |secret: String| {
        let srv = &lab.srv;
        async move {
            let issued = token_request(srv, "laptop", &secret).await.expect_json();
            let field = |k: &str| issued[k].as_str().unwrap().to_owned();
            (field("access_token"), field("refresh_token"))
        }
    };
    let (stolen, stolen_refresh) = login(secret.clone()).await;
    let (kept, _) = login(secret.clone()).await;
    let refresh = json!({"refresh_token": stolen_refresh});
    let refreshed = call(
        &lab.srv,
        "POST",
        "/v1/oauth2/refresh",
        None,
        None,
        Some(&refresh),
    )
    .await
    .expect_json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    async fn submit(srv: &crate::util::TestServer, token: &str) -> crate::util::Resp {
        let job = json!({"job_queue": "revoke-q"});
        call(srv, "POST", "/v1/job", Some(token), None, Some(&job)).await
    }
    for token in [&stolen, &refreshed, &kept] {
        submit(&lab.srv, token).await.expect_status(200);
    }
    let admin = lab.admin_token().await;
    call(
        &lab.srv,
        "POST",
        "/v1/oauth2/revoke",
        Some(&admin),
        None,
        Some(&refresh),
    )
    .await
    .expect_status(200);
    let refused = "The token was issued from a refresh token of client \"laptop\" that an \
                   admin has revoked: obtain a new one with the client's secret";
    for token in [&stolen, &refreshed] {
        assert_eq!(submit(&lab.srv, token).await.expect_error(401), refused);
        // A public route refuses it too, as for any token that is no longer good.
        let r = call(&lab.srv, "GET", "/v1", Some(token), None, None).await;
        assert_eq!(r.expect_error(401), refused);
    }
    submit(&lab.srv, &kept).await.expect_status(200);
    let (fresh, _) = login(secret.clone()).await;
    submit(&lab.srv, &fresh).await.expect_status(200);
    lab.srv.restart();
    for token in [&stolen, &refreshed] {
        assert_eq!(submit(&lab.srv, token).await.expect_error(401), refused);
    }
    submit(&lab.srv, &kept).await.expect_status(200);
    submit(&lab.srv, &fresh).await.expect_status(200);
    let log = lab
        .srv
        .stderr_lines_once(|l| l.contains("authn_fail") && l.contains("has revoked"))
        .await;
    assert!(!log.is_empty(), "the refusal is a security event");
}

#[tokio::test]
async fn concurrent_wrong_secrets_get_no_more_checks_than_the_limit_allows() {
    let lab = Lab::start(&["--token-failures-per-minute", "4"]);
    let srv = &lab.srv;
    let good = lab.client("many-logins", "contributor", json!({})).await;
    let logins = (0..12).map(|_| token_request(srv, "many-logins", &good));
    for r in futures_util::future::join_all(logins).await {
        r.expect_status(200);
    }
    let secret = lab.client("guessed", "contributor", json!({})).await;
    let guesses = (0..40).map(|n| async move {
        token_request(srv, "guessed", &format!("wrong-guess-number-{n}")).await
    });
    let answers = futures_util::future::join_all(guesses).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 4, "{checked} guesses were checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    token_request(srv, "guessed", &secret)
        .await
        .expect_error(429);
}

/// A bearer token on a public endpoint is checked as on any other: expired 401 (the code
/// the stock clients refresh and replay on), forged 403, and each refusal a security
/// event. Upstream ignores a token there; flinger keeps refusing because no stock client
/// flow depends on it (README's compatibility table): the agent's health check
/// (`GET /v1`, which sends its token) counts any answer below 500 as reachable and
/// refreshes on a 401, and both clients call `/v1/oauth2/refresh` without their token.
#[tokio::test]
async fn a_bad_token_on_a_public_endpoint_is_refused_and_the_stock_clients_way_recovers() {
    let lab = Lab::start(&["--access-token-secs", "1", "--jwt-leeway-secs", "0"]);
    let srv = &lab.srv;
    let secret = lab.client("probe", "agent", json!({})).await;
    let issued = token_request(srv, "probe", &secret).await.expect_json();
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    call(srv, "GET", "/v1", Some(&token), None, None)
        .await
        .expect_status(200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The agent's health check with its expired token: 401, so it refreshes.
    assert_eq!(
        call(srv, "GET", "/v1", Some(&token), None, None)
            .await
            .expect_error(401),
        "Token has expired"
    );
    // As the stock clients refresh: without the expired token.
    let body = json!({"refresh_token": refresh});
    let fresh = call(srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
        .await
        .expect_json();
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    call(srv, "GET", "/v1", Some(&fresh), None, None)
        .await
        .expect_status(200);
    // A client that sends its expired token to the refresh endpoint is refused with the
    // code that says so (recorded as a difference from upstream).
    call(
        srv,
        "POST",
        "/v1/oauth2/refresh",
        Some(&token),
        None,
        Some(&body),
    )
    .await
    .expect_error(401);
    // A token of another key: 403 on a public endpoint too; no token at all: public.
    let now = unix_now();
    let claims = json!({"exp": now + 60, "iat": now, "sub": "access_token",
        "permissions": {"client_id": "probe", "role": "admin"}});
    let forged = forge("not-the-key", &claims);
    assert_eq!(
        call(srv, "GET", "/v1", Some(&forged), None, None)
            .await
            .expect_error(403),
        "Invalid Token signature"
    );
    call(srv, "GET", "/v1", None, None, None)
        .await
        .expect_status(200);
    let log = srv
        .stderr_lines_once(|l| l.contains("flinger::security") && l.contains("authn_fail"))
        .await;
    assert!(
        log.iter()
            .any(|l| l.contains("flinger::security") && l.contains("authn_fail")),
        "{log:#?}"
    );
}

/// A refresh token this server never issued is logged as unknown, not as the reuse of a
/// revoked one (which reads like a stolen copy being replayed).
#[tokio::test]
async fn an_unknown_refresh_token_is_logged_as_unknown_not_as_reuse() {
    let srv = crate::util::TestServer::start_with(&["--access-control", "on"]);
    let body = json!({"refresh_token": "never-issued-here"});
    assert_eq!(
        call(&srv, "POST", "/v1/oauth2/refresh", None, None, Some(&body))
            .await
            .expect_error(400),
        "Invalid refresh token."
    );
    let log = srv
        .stderr_lines_once(|l| l.contains("authn_token_unknown"))
        .await
        .join("\n");
    assert!(log.contains("authn_token_unknown"), "{log}");
    assert!(!log.contains("authn_token_reuse"), "{log}");
}
/// An access token carries its client's current rights, not those it was issued with:
/// deleting the client refuses its token (401 naming why), and lowering its role or
/// taking a restricted queue or a priority from it takes effect on its next request,
/// within the token's lifetime.
#[tokio::test]
async fn a_change_to_a_client_applies_to_its_existing_tokens_at_once() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let admin = lab.admin_token().await;
    let list = |token: String| async move {
        call(
            srv,
            "GET",
            "/v1/client-permissions",
            Some(&token),
            None,
            None,
        )
        .await
    };
    // Deleted: its token can no longer list clients or make a manager.
    let carol = lab.token_for("carol", "manager", json!({})).await;
    list(carol.clone()).await.expect_status(200);
    call(
        srv,
        "DELETE",
        "/v1/client-permissions/carol",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_status(200);
    let m = list(carol.clone()).await.expect_error(401);
    assert!(m.contains("carol") && m.contains("no longer exists"), "{m}");
    let friend = json!({"client_secret": "a-friend-of-carol-0123", "role": "manager"});
    let path = "/v1/client-permissions/carols-friend";
    call(srv, "PUT", path, Some(&carol), None, Some(&friend))
        .await
        .expect_error(401);
    call(srv, "GET", path, Some(&admin), None, None)
        .await
        .expect_error(404);
    // Demoted: a contributor from the next request on.
    let dave = lab.token_for("dave", "manager", json!({})).await;
    list(dave.clone()).await.expect_status(200);
    let demote = json!({"role": "contributor"});
    call(
        srv,
        "PUT",
        "/v1/client-permissions/dave",
        Some(&admin),
        None,
        Some(&demote),
    )
    .await
    .expect_status(200);
    assert_eq!(
        list(dave).await.expect_error(403),
        "Specified action requires role: admin, manager"
    );
    // A restricted queue and a priority taken away.
    let eve = lab
        .token_for("eve", "contributor", json!({"max_priority": {"*": 10}}))
        .await;
    let agent = lab.token_for("rq-agent", "agent", json!({})).await;
    let queues = json!({"queues": ["eves-queue"]});
    call(
        srv,
        "POST",
        "/v1/agents/data/rq-agent",
        Some(&agent),
        None,
        Some(&queues),
    )
    .await
    .expect_status(200);
    let owner = json!({"client_id": "eve"});
    let restricted = "/v1/restricted-queues/eves-queue";
    call(srv, "POST", restricted, Some(&admin), None, Some(&owner))
        .await
        .expect_status(200);
    let submit = |job: Value| {
        let eve = eve.clone();
        async move { call(srv, "POST", "/v1/job", Some(&eve), None, Some(&job)).await }
    };
    // Allowed on the queue at once, though the token was issued before.
    submit(json!({"job_queue": "eves-queue", "job_priority": 10}))
        .await
        .expect_status(200);
    call(srv, "DELETE", restricted, Some(&admin), None, Some(&owner))
        .await
        .expect_status(200);
    call(
        srv,
        "POST",
        restricted,
        Some(&admin),
        None,
        Some(&json!({"client_id": "dave"})),
    )
    .await
    .expect_status(200);
    assert_eq!(
        submit(json!({"job_queue": "eves-queue"}))
            .await
            .expect_error(403),
        "Not enough permissions to push to the restricted queue: eves-queue"
    );
    let lower = json!({"max_priority": {"*": 1}});
    call(
        srv,
        "PUT",
        "/v1/client-permissions/eve",
        Some(&admin),
        None,
        Some(&lower),
    )
    .await
    .expect_status(200);
    assert_eq!(
        submit(json!({"job_queue": "q", "job_priority": 10}))
            .await
            .expect_error(403),
        "Not enough permissions to push to q with priority 10"
    );
}
