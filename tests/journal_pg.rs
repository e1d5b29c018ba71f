//! The PostgreSQL journal over the real binary and a throwaway PostgreSQL server
//! (`util::pg`): acknowledged changes survive a restart and a kill -9 with nothing kept in
//! the data directory's log, uploaded and orphan files live in the database (a new node
//! with an empty data directory serves them), snapshots compact the events they cover,
//! `sslmode=require` encrypts and verifies every connection, a leader notices PostgreSQL
//! restarting under it, and bad settings are refused
//! at start-up. Several processes on one database: `failover`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::pg::{fresh_database, server_ca, sql, OwnCluster};
use crate::util::{new_id, pseudo_random_bytes, run_to_exit, TestServer};

fn on_postgres(url: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--journal", url];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

#[tokio::test]
async fn acknowledged_changes_survive_kill9_and_restart_when_journal_is_postgres() {
    let url = fresh_database();
    let mut srv = on_postgres(&url, &[]);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(srv.submit(&json!({"job_queue": "pgq", "n": i})).await);
    }
    let popped = srv.pop_id(&["pgq"]).await.expect("a job");
    assert_eq!(popped, ids[0]);
    srv.cancel(&ids[1]).await.expect_status(200);
    srv.post_result(&popped, &json!({"job_state": "provision"}))
        .await;
    srv.kill9();
    srv.start_again();
    assert_eq!(srv.job_state(&ids[0]).await, "provision");
    assert_eq!(srv.job_state(&ids[1]).await, "cancelled");
    for id in &ids[2..] {
        assert_eq!(srv.job_state(id).await, "waiting");
    }
    // The next pop continues in order: nothing handed out twice, the cancelled one skipped.
    assert_eq!(srv.pop_id(&["pgq"]).await.as_deref(), Some(ids[2].as_str()));
    srv.restart();
    assert_eq!(srv.job_state(&ids[2]).await, "running");
    assert!(
        !srv.data_dir().join("wal").exists(),
        "the file log was used although --journal names PostgreSQL"
    );
    let events: u64 = sql(&url, "SELECT count(*) FROM flinger_events")
        .parse()
        .unwrap();
    assert!(events >= 10, "only {events} events in the database");
}

#[tokio::test]
async fn snapshot_deletes_the_events_it_covers_and_restart_loads_it_when_journal_is_postgres() {
    let url = fresh_database();
    let mut srv = on_postgres(&url, crate::util::SNAPSHOT_SOON);
    let mut ids = Vec::new();
    for i in 0..60 {
        // 60 x 20 KB: more than --snapshot-bytes.
        let filler = "x".repeat(20_000);
        ids.push(
            srv.submit(&json!({"job_queue": "snapq", "n": i, "filler": filler}))
                .await,
        );
    }
    // The writer asks for a snapshot on its next tick; wait for it to be installed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let installed = sql(
            &url,
            "SELECT count(*) FROM flinger_snapshots WHERE installed",
        );
        let events: u64 = sql(&url, "SELECT count(*) FROM flinger_events")
            .parse()
            .unwrap();
        if installed == "1" && events < 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot installed (installed={installed}, events={events})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let covered = sql(
        &url,
        "SELECT count(*) FROM flinger_events e, flinger_snapshots s WHERE s.installed AND e.lsn <= s.lsn",
    );
    assert_eq!(covered, "0", "events covered by the snapshot were kept");
    srv.cancel(&ids[59]).await.expect_status(200);
    srv.kill9();
    srv.start_again();
    for id in &ids[..59] {
        assert_eq!(srv.job_state(id).await, "waiting");
    }
    assert_eq!(srv.job_state(&ids[59]).await, "cancelled");
    let line = srv
        .stderr_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("recovered state"))
        .expect("a recovery line");
    assert!(line.contains("snapshot_lsn="), "{line}");
}

/// libpq's other way of giving the password, `?password=`, is hidden like the one in
/// `user:password@`, in the refusal of a malformed string and of an unreachable server.
#[tokio::test]
async fn journal_password_given_as_a_query_parameter_is_hidden_when_start_up_fails() {
    let (_closed, port) = closed_port();
    for (url, said) in [
        (
            format!("postgres://flinger@127.0.0.1:{port}/none?password=hunter2&connect_timeout=5"),
            "cannot connect to postgres://flinger@127.0.0.1",
        ),
        (
            format!(
                "postgres://flinger@127.0.0.1:{port}/none?pass%77ord=hunter2&no_such_parameter=1"
            ),
            "bad PostgreSQL connection string",
        ),
    ] {
        let stderr = refusal_to_start(&url);
        assert!(stderr.contains(said), "{stderr}");
        assert!(stderr.contains("=***"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// A password holding `?` (which ends the host part of a URL but not tokio-postgres's
/// credentials) and a libpq `key=value` string (refused, and quoted in the refusal) are
/// hidden too.
#[tokio::test]
async fn journal_password_with_a_question_mark_or_in_key_value_form_is_hidden_when_refused() {
    let (_closed, port) = closed_port();
    for (url, said) in [
        (
            format!("postgres://flinger:hun?ter2@127.0.0.1:{port}/none?connect_timeout=5"),
            "cannot connect to postgres://flinger:***@127.0.0.1",
        ),
        (
            format!("host=127.0.0.1 port={port} password='hun ter2' dbname=none"),
            "password=***",
        ),
    ] {
        let stderr = refusal_to_start(&url);
        assert!(stderr.contains(said), "{stderr}");
        assert!(!stderr.contains("ter2"), "{stderr}");
    }
}

/// A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it while the
/// socket lives) and never listening.
fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    (closed, port)
}

/// Starts the server on `journal` in a fresh data dir, asserts it refuses to start, and
/// returns what it said on stderr.
fn refusal_to_start(journal: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        "d",
        "--journal",
        journal,
    ];
    let out = run_to_exit(dir.path(), &args, &[], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[tokio::test]
async fn unreachable_or_malformed_journal_is_refused_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--journal", "mysql://db/flinger"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("postgres://"), "{stderr}");
    let start = |url: &str| {
        let args = ["--bind", "127.0.0.1:0", "--data-dir", "d", "--journal", url];
        let out = run_to_exit(dir.path(), &args, &[], Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("cannot connect to postgres://flinger:***@127.0.0.1"),
            "{stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
        stderr
    };
    // A port held by a socket that is bound but not listening: connections to it are
    // refused, and no other test's server can take it meanwhile (a port picked and then
    // released can be). A clear error naming the server, the password hidden.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    start(&format!(
        "postgres://flinger:hunter2@127.0.0.1:{port}/none?connect_timeout=5"
    ));
    // A peer that accepts and never answers (not PostgreSQL, or a hung one): refused once
    // the URL's connect_timeout has passed, for the whole handshake, not only the TCP
    // connect.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let stderr = start(&format!(
        "postgres://flinger:hunter2@127.0.0.1:{port}/none?connect_timeout=2"
    ));
    assert!(
        stderr.contains("no PostgreSQL answer within 2 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{stderr}");
    drop((closed, silent));
}

/// `sslmode` is read as flinger applies it: the modes that encrypt (`require`,
/// `verify-ca`, `verify-full`) are taken and tried (here against a closed port, so the
/// error is about connecting, not the string); `prefer` and `allow`, which fall back to a
/// connection in clear, are refused saying what is supported, as are client certificates
/// and unknown options (naming the option, not just "invalid connection string").
#[tokio::test]
async fn ssl_modes_are_taken_or_refused_saying_what_each_does_when_starting() {
    let (closed, port) = closed_port();
    let url = |query: &str| format!("postgres://u:hunter2@127.0.0.1:{port}/db?{query}");
    for mode in ["require", "verify-ca", "verify-full"] {
        let stderr = refusal_to_start(&url(&format!("sslmode={mode}&connect_timeout=5")));
        assert!(
            !stderr.contains("connection string") && stderr.contains("cannot connect"),
            "{mode}: {stderr}"
        );
    }
    for (query, wanted) in [
        (
            "sslmode=prefer",
            &[
                "sslmode=prefer is not supported",
                "connects in clear",
                "sslmode=require",
                "sslmode=disable",
            ][..],
        ),
        ("sslmode=allow", &["sslmode=allow is not supported"][..]),
        (
            "sslmode=verify",
            &["\"verify\" is not one of disable, require, verify-ca, verify-full"][..],
        ),
        (
            "sslmode=require&sslcert=/c.pem",
            &["sslcert: client certificates are not supported"][..],
        ),
        ("frobnicate=1", &["unknown option", "frobnicate"][..]),
        // The certificate authorities' file is read at start-up: one that cannot be is
        // the connection string's fault, a configuration error like the rest.
        (
            "sslmode=require&sslrootcert=/nonexistent/ca.pem",
            &["cannot read sslrootcert /nonexistent/ca.pem"][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = run_to_exit(
            dir.path(),
            &[
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                "d",
                "--journal",
                &url(query),
            ],
            &[],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{query}: {stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{query}: no {w:?} in {stderr}");
        }
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    drop(closed);
}

/// A signing key kept in the database that is too short (set by hand) is refused at
/// start-up as on the file journal: a configuration error (exit status 2) naming the row
/// and how to remove it, instead of a node that takes the lease and steps down again and
/// again.
#[tokio::test]
async fn short_signing_key_kept_in_the_database_is_a_configuration_error_when_starting() {
    let url = fresh_database();
    let mut srv = on_postgres(&url, &[]);
    srv.stop();
    sql(
        &url,
        "UPDATE flinger_private SET value = 'short' WHERE name = 'jwt-signing-key'",
    );
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        "d",
        "--journal",
        &url,
    ];
    let out = run_to_exit(dir.path(), &args, &[], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for wanted in [
        "flinger: configuration error: ",
        "the row \"jwt-signing-key\" of the database's table flinger_private is 5 bytes",
        "DELETE FROM flinger_private WHERE name = 'jwt-signing-key'",
    ] {
        assert!(stderr.contains(wanted), "no {wanted:?} in {stderr}");
    }
}

/// No `sslmode` means no TLS (libpq's default would try TLS first): a start-up warning
/// says so when the database is on another machine, and not for a local one.
#[tokio::test]
async fn journal_without_sslmode_on_another_host_is_warned_about_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    // 192.0.2.1 (TEST-NET-1) is never reachable: the start fails after the warning.
    let out = run_to_exit(
        dir.path(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--journal",
            "postgres://u@192.0.2.1:5432/db?connect_timeout=1",
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names no sslmode: its connections are not encrypted"),
        "{stderr}"
    );
    let (closed, port) = closed_port();
    let stderr = refusal_to_start(&format!(
        "postgres://u@127.0.0.1:{port}/db?connect_timeout=5"
    ));
    assert!(!stderr.contains("sslmode"), "{stderr}");
    drop(closed);
}

#[tokio::test]
async fn redis_settings_are_warned_about_and_point_at_journal_when_set() {
    let srv = TestServer::start_with_env(
        &[],
        &[("REDIS_HOST", "redis.example"), ("REDIS_PORT", "6379")],
    );
    let lines = srv.stderr_lines().join("\n");
    assert!(
        lines.contains("REDIS_HOST is ignored") && lines.contains("--journal postgres://"),
        "{lines}"
    );
    srv.submit(&json!({"job_queue": "q"})).await;
}

/// Every entry of `dir`, recursively (empty when it does not exist).
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(entry.path().display().to_string());
        if entry.path().is_dir() {
            out.extend(entries(&entry.path()));
        }
    }
    out
}

#[tokio::test]
async fn files_are_served_by_a_new_node_with_an_empty_data_dir_when_journal_is_postgres() {
    let url = fresh_database();
    let mut first = on_postgres(&url, &[]);
    // Bigger than a chunk (1 MiB) and not a multiple of it, so downloads cross rows.
    let attachments = pseudo_random_bytes(2 * 1024 * 1024 + 12_345, 7);
    let artifact = pseudo_random_bytes(3 * 1024 * 1024 + 1, 8);
    let orphan_artifact = pseudo_random_bytes(70_000, 9);
    let job = first
        .submit(&json!({
            "job_queue": "pgfiles",
            "test_data": {"attachments": [{"agent": "a.bin"}]}
        }))
        .await;
    first
        .post_multipart(
            &format!("/v1/job/{job}/attachments"),
            "file",
            "a.tar.gz",
            &attachments,
        )
        .await
        .expect_status(200);
    assert_eq!(
        first.pop_id(&["pgfiles"]).await.as_deref(),
        Some(job.as_str())
    );
    // Posted twice: a replaced artifact is deleted from the database once the
    // replacement is durable.
    for _ in 0..2 {
        first
            .post_multipart(
                &format!("/v1/result/{job}/artifact"),
                "file",
                "b.tar.gz",
                &artifact,
            )
            .await
            .expect_status(200);
    }
    let orphan = new_id();
    first
        .post_multipart(
            &format!("/v1/result/{orphan}/artifact"),
            "file",
            "c.tar.gz",
            &orphan_artifact,
        )
        .await
        .expect_status(200);
    first
        .post_result(&orphan, &json!({"device_info": {"n": 1}}))
        .await;
    for n in 0..3 {
        first
            .post_json(
                &format!("/v1/result/{orphan}/log/output"),
                &json!({"fragment_number": n, "timestamp": "2026-11-29T19:00:00+00:00",
                        "phase": "test", "log_data": format!("line {n}\n")}),
            )
            .await
            .expect_status(200);
    }
    let orphan_result = first.result(&orphan).await;
    assert_eq!(
        orphan_result["test_output"],
        json!("line 0\nline 1\nline 2\n")
    );
    assert!(
        entries(&first.data_dir()).is_empty(),
        "the data directory holds {:?}",
        entries(&first.data_dir())
    );
    // The first artifact went once its replacement was recorded (asynchronously).
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(&url, "SELECT count(*) FROM flinger_files") != "4" {
        assert!(
            Instant::now() < deadline,
            "the replaced artifact was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill9();
    // Left by a crash mid-upload: nothing refers to it, start-up removes it.
    sql(
        &url,
        "INSERT INTO flinger_files (name) VALUES ('left-by-a-crash')",
    );

    let second = on_postgres(&url, &[]);
    assert_ne!(second.data_dir(), first.data_dir());
    let got = second.get(&format!("/v1/job/{job}/attachments")).await;
    got.expect_status(200);
    assert!(got.body[..] == attachments[..], "attachments differ");
    let got = second.get(&format!("/v1/result/{job}/artifact")).await;
    got.expect_status(200);
    assert!(got.body[..] == artifact[..], "artifact differs");
    let got = second.get(&format!("/v1/result/{orphan}/artifact")).await;
    got.expect_status(200);
    assert!(
        got.body[..] == orphan_artifact[..],
        "orphan artifact differs"
    );
    assert_eq!(second.result(&orphan).await, orphan_result);
    assert_eq!(
        sql(
            &url,
            "SELECT count(*) FROM flinger_files WHERE name = 'left-by-a-crash'"
        ),
        "0"
    );
    assert!(
        entries(&second.data_dir()).is_empty(),
        "the data directory holds {:?}",
        entries(&second.data_dir())
    );
}

#[tokio::test]
async fn every_connection_is_encrypted_and_verified_when_sslmode_is_require() {
    let url = fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let tls = format!(
        "{url}?sslmode=require&sslrootcert={}",
        server_ca().display()
    );
    let mut srv = on_postgres(&tls, &[]);
    let job = srv.submit(&json!({"job_queue": "tlsq"})).await;
    let bytes = pseudo_random_bytes(100_000, 3);
    srv.post_multipart(
        &format!("/v1/result/{job}/artifact"),
        "file",
        "a.tgz",
        &bytes,
    )
    .await
    .expect_status(200);
    let got = srv.get(&format!("/v1/result/{job}/artifact")).await;
    assert!(got.body[..] == bytes[..], "artifact differs");
    let count = |encrypted: bool| -> u64 {
        sql(
            &url,
            &format!(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = '{db}' AND s.ssl = {encrypted} AND a.pid <> pg_backend_pid()"
            ),
        )
        .parse()
        .unwrap()
    };
    // The writer's session and the file store's connections.
    assert!(count(true) >= 2, "{} encrypted connections", count(true));
    assert_eq!(count(false), 0, "flinger has a connection without TLS");
    srv.kill9();
    srv.start_again();
    assert_eq!(srv.job_state(&job).await, "waiting");
    // Without the authority that signed the server's certificate, nothing connects.
    let out = run_to_exit(
        srv.dir(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "other",
            "--journal",
            &format!("{url}?sslmode=require"),
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without verifying: {stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// `GET /v1/ready` of `srv` until it leads in a term other than `not`, for up to 30 s:
/// the term.
async fn leads_in_a_term_other_than(srv: &TestServer, not: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = srv
            .http()
            .try_request("GET", "/v1/ready", &[], Vec::new())
            .await;
        let doc = r.as_ref().ok().map(|r| (r.status, r.json()));
        if let Some((200, doc)) = &doc {
            let term = doc["term"].as_i64().unwrap_or(0);
            if doc["role"] == "leader" && term != not {
                return term;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node did not lead in a new term within 30 s: {doc:?}\n{}",
            srv.stderr_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL restarted while the leader had nothing to write: its writer's connection
/// died idle. The node notices at once (steps down, reconnects, takes a new term), so the
/// first change after the restart is acknowledged instead of refused on the dead
/// connection.
#[tokio::test]
async fn first_change_after_postgresql_restarts_is_acknowledged_when_the_writer_was_idle() {
    let pg = OwnCluster::start();
    let srv = on_postgres(&pg.url(), &["--lease-ms", "1000"]);
    let first = leads_in_a_term_other_than(&srv, 0).await;
    let before = srv.submit(&json!({"job_queue": "restart"})).await;
    pg.pg_ctl(&["-m", "fast", "restart"]);
    leads_in_a_term_other_than(&srv, first).await;
    let r = srv
        .post_json("/v1/job", &json!({"job_queue": "restart"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text_preview());
    assert_eq!(srv.job_state(&before).await, "waiting");
    assert!(srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("connection to PostgreSQL was lost")));
}

/// The database answers nothing for a while (paused: its connections stay open): the
/// leader's lease renewals time out every third of a lease, and say so once per
/// `throttle::EVERY` (10 s) with a count, not each time.
#[tokio::test]
async fn renewal_failures_are_logged_once_not_per_attempt_when_postgresql_stops_answering() {
    let pg = OwnCluster::start();
    let srv = on_postgres(&pg.url(), &["--lease-ms", "300"]);
    let term = leads_in_a_term_other_than(&srv, 0).await;
    srv.submit(&json!({"job_queue": "paused"})).await;
    pg.pause(true);
    // 30 renewals' worth (one every 100 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.pause(false);
    let lines = srv.stderr_lines();
    let timed_out = lines
        .iter()
        .filter(|l| l.contains("lease renewal timed out"))
        .count();
    assert_eq!(timed_out, 1, "{}", lines.join("\n"));
    // And the node leads again once the database answers.
    let mut attempts = 0;
    let r = loop {
        attempts += 1;
        let r = srv
            .post_json("/v1/job", &json!({"job_queue": "paused"}))
            .await;
        // Each 503 waited two lease lengths for a leader.
        if r.status != 503 || attempts == 30 {
            break r;
        }
    };
    assert_eq!(r.status, 200, "{} (term {term})", r.text_preview());
}

/// The database stops answering (paused: the connection stays open, as behind a network
/// that drops packets) while a change is being appended: the request gets 503 once the
/// writer's bound on one statement (four leases, at least 10 s) has passed, instead of
/// waiting as long as the database does; the node steps down.
#[tokio::test]
async fn append_gets_503_when_postgresql_stops_answering_mid_statement() {
    let pg = OwnCluster::start();
    // A lease long enough that the request below reaches the writer before the leader's
    // own clock says its lease went unconfirmed.
    let srv = on_postgres(&pg.url(), &["--lease-ms", "3000"]);
    leads_in_a_term_other_than(&srv, 0).await;
    srv.submit(&json!({"job_queue": "hung"})).await;
    pg.pause(true);
    let answered = tokio::time::timeout(
        Duration::from_secs(25),
        srv.post_json("/v1/job", &json!({"job_queue": "hung"})),
    )
    .await;
    pg.pause(false);
    let r = answered.expect("no answer within 25 s while PostgreSQL was paused");
    assert_eq!(r.status, 503, "{}", r.text_preview());
    assert!(
        r.text_preview().contains("not saved"),
        "{}",
        r.text_preview()
    );
    assert!(srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("append failed: no answer within")));
}

/// The backend of the connection whose last statement starts with `query`, paused
/// (`SIGSTOP`): that one connection stays open and never answers again, as one to a
/// server that vanished without closing it; the server itself still accepts new ones.
async fn pause_backend_of(url: &str, query: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let found = sql(
            url,
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND query LIKE '{query}%' LIMIT 1"
            ),
        );
        if let Ok(pid) = found.parse() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no backend ran {query:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // SAFETY: kill has no memory preconditions; the pid is the test cluster's backend.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    pid
}

/// The leader's lease renewals go out on one connection; when it stops answering (its
/// server gone without a word), a renewal times out and the next goes out on a new
/// connection, so the leader serves again instead of waiting for that connection for
/// ever.
#[tokio::test]
async fn leader_renews_on_a_new_connection_when_its_renewal_connection_stops_answering() {
    let pg = OwnCluster::start();
    let url = pg.url();
    let srv = on_postgres(&url, &["--lease-ms", "1000"]);
    let term = leads_in_a_term_other_than(&srv, 0).await;
    srv.submit(&json!({"job_queue": "renew"})).await;
    pause_backend_of(&url, "UPDATE flinger_lease SET expires = clock_timestamp()").await;
    srv.stderr_lines_once(|l| l.contains("lease renewal timed out"))
        .await;
    // Three leases: long past the last renewal the hung connection answered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = srv
        .post_json("/v1/job", &json!({"job_queue": "renew"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text_preview());
    // Renewed in the same term: the node never stepped down.
    let r = srv
        .http()
        .try_request("GET", "/v1/ready", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.json()["term"], term, "{}", r.text_preview());
}

/// A standby's connection stops answering (its server gone without closing it) while
/// the leader dies: the standby gives that connection up after the bound on one answer
/// (four leases, at least 10 s), reconnects and takes over with every acknowledged
/// change, instead of waiting on it for ever.
#[tokio::test]
async fn standby_takes_over_when_its_own_connection_stopped_answering_and_the_leader_dies() {
    let pg = OwnCluster::start();
    let url = pg.url();
    let mut a = on_postgres(&url, &["--lease-ms", "1000"]);
    let term = leads_in_a_term_other_than(&a, 0).await;
    let b = on_postgres(&url, &["--lease-ms", "1000"]);
    let id = b.submit(&json!({"job_queue": "hung-standby"})).await;
    assert_eq!(b.job_state(&id).await, "waiting");
    // The standby's session is the one following the events (the leader's last ran its
    // lease renewal, its writer the append).
    pause_backend_of(&url, "SELECT lsn, payload FROM flinger_events").await;
    a.kill9();
    leads_in_a_term_other_than(&b, term).await;
    assert_eq!(b.job_state(&id).await, "waiting");
}
