//! Access control (issue 9), over real HTTP with access control on: the shared helpers
//! (a [`Lab`] server with an admin, tokens, one request as any caller) and one module per
//! responsibility. The route × role table every role is checked against is `matrix::MATRIX`
//! (in `matrix.rs`): a new route gets its row there.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::util::{run_to_exit, Opts, Resp, TestServer};

// The route × role table (MATRIX) over real HTTP for every role and anonymous callers.
mod matrix;
// The three submission checks: priority, restricted queues, reservation.
mod submission;
// Job ownership: who may change a job, which agent may report on it.
mod ownership;
// The token lifecycle: expiry, refresh, revocation, forged tokens.
mod tokens;
// Across server starts: state surviving restarts and snapshots, the safe default off loopback.
mod startup;
// Client management: the client-permissions API and the `flinger client` command.
mod client_management;
// Job secrets: only the dispatched agent reads them, never on disk in clear.
mod secrets;
// The real upstream CLI and agent against a server with access control on.
mod real_clients;
// `--allowed-hosts`: the DNS-rebinding check of every request's `Host`.
mod hosts;
// Agent records: each agent credential's share of them, and an operator deleting one.
mod agent_records;
// Failed logins: limited per address and per (client, address), refilled as a rate, and
// logged naming who was refused even when the log is throttled.
mod failed_logins;

/// The signing key the test servers get, so tests can forge tokens.
const KEY: &str = "test-signing-key-0123456789abcdef";

/// A server with access control on and an admin made with `flinger client add`.
struct Lab {
    srv: TestServer,
    /// The admin's client id and secret.
    admin: (String, String),
}

/// The secret `flinger client add` printed.
fn printed_secret(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap_or_else(|| panic!("no client_secret line in {stdout:?}"))
        .trim()
        .to_owned()
}

/// Runs `flinger --data-dir DATA client ARGS...` to completion; its stdout.
fn client_command(srv: &TestServer, args: &[&str]) -> String {
    let data = srv.data_dir().display().to_string();
    let mut all = vec!["--data-dir", data.as_str()];
    if let Some(url) = srv.journal() {
        all.extend(["--journal", url]);
    }
    all.push("client");
    all.extend_from_slice(args);
    let out = run_to_exit(srv.dir(), &all, &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "flinger client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    fn start(extra: &[&str]) -> Lab {
        Lab::start_env(extra, &[])
    }

    fn start_env(extra: &[&str], envs: &[(&str, &str)]) -> Lab {
        let mut args = vec!["--access-control", "on"];
        args.extend_from_slice(extra);
        let mut envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        envs.push(("FLINGER_JWT_SIGNING_KEY".into(), KEY.into()));
        let mut srv = TestServer::start_opts(Opts {
            args: args.iter().map(|s| s.to_string()).collect(),
            envs,
            ..Opts::default()
        });
        srv.stop();
        let secret = printed_secret(&client_command(&srv, &["add", "root", "--role", "admin"]));
        srv.start_again();
        Lab {
            srv,
            admin: ("root".into(), secret),
        }
    }

    async fn admin_token(&self) -> String {
        access_token(&self.srv, &self.admin.0, &self.admin.1).await
    }

    /// Creates (or updates) a client through the API as the admin; returns its secret.
    async fn client(&self, id: &str, role: &str, extra: Value) -> String {
        let secret = format!("secret-of-{id}-0123456789");
        let mut body = json!({"client_secret": secret, "role": role});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let admin = self.admin_token().await;
        let r = call(
            &self.srv,
            "PUT",
            &format!("/v1/client-permissions/{id}"),
            Some(&admin),
            None,
            Some(&body),
        )
        .await;
        r.expect_status(200);
        secret
    }

    /// A client's access token (created first).
    async fn token_for(&self, id: &str, role: &str, extra: Value) -> String {
        let secret = self.client(id, role, extra).await;
        access_token(&self.srv, id, &secret).await
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// `POST /v1/oauth2/token` with HTTP Basic credentials.
async fn token_request(srv: &TestServer, id: &str, secret: &str) -> Resp {
    srv.request(
        "POST",
        "/v1/oauth2/token",
        &[("authorization", &basic(id, secret))],
        Vec::new(),
    )
    .await
}

/// [`token_request`] sent from the local address `from` (one of 127.0.0.0/8), as a client
/// on another host would.
async fn token_request_from(srv: &TestServer, from: &str, id: &str, secret: &str) -> Resp {
    let request = format!(
        "POST /v1/oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        basic(id, secret)
    );
    let source = from.parse().expect("an IP address");
    let mut conn = crate::util::RawConn::connect_from(&srv.base_url(), source).await;
    conn.send(request.as_bytes()).await;
    conn.read_response().await.expect("an answer")
}

async fn access_token(srv: &TestServer, id: &str, secret: &str) -> String {
    let v = token_request(srv, id, secret).await.expect_json();
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// One request with an optional bearer token, agent cookie and JSON body.
async fn call(
    srv: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let cookie = cookie.map(|c| format!("agent_name={c}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    if let Some(c) = &cookie {
        headers.push(("cookie", c));
    }
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    srv.request(method, path, &headers, body).await
}

/// Posts agent `name`'s record with agent credential `token`, as the stock agent does
/// before it polls: with access control on, a pop names only an agent whose record its
/// credential may change.
async fn register_agent(srv: &TestServer, token: &str, name: &str) {
    let record = format!("/v1/agents/data/{name}");
    call(srv, "POST", &record, Some(token), None, Some(&json!({})))
        .await
        .expect_status(200);
}

fn fragment(n: u64) -> Value {
    json!({"fragment_number": n, "timestamp": "2026-01-01T00:00:00+00:00", "phase": "test", "log_data": "x"})
}

/// Whether anything `srv` keeps contains `needle` in clear: a file under its data
/// directory, or, on the PostgreSQL journal, an event, snapshot or stored file in its
/// database.
fn kept_in_clear(srv: &TestServer, needle: &str) -> bool {
    if dir_contains(&srv.data_dir(), needle.as_bytes()) {
        return true;
    }
    let Some(url) = srv.journal() else {
        return false;
    };
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    let found = crate::util::pg::sql(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM flinger_events WHERE position('\\x{hex}'::bytea IN payload) > 0) \
             + (SELECT count(*) FROM flinger_snapshot_chunks WHERE position('\\x{hex}'::bytea IN data) > 0) \
             + (SELECT count(*) FROM flinger_file_chunks WHERE position('\\x{hex}'::bytea IN data) > 0)"
        ),
    );
    found != "0"
}

/// Whether any file under `dir` contains `needle` (a missing `dir` contains nothing: the
/// PostgreSQL journal writes none).
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                dir_contains(&path, needle)
            } else {
                std::fs::read(&path)
                    .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                    .unwrap_or(false)
            }
        })
}
