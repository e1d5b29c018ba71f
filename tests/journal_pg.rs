//! The PostgreSQL journal over the real binary and a throwaway PostgreSQL server
//! (`util::pg`): acknowledged changes survive a restart and a kill -9 with nothing kept in
//! the data directory's log, snapshots compact the events they cover, and bad settings are
//! refused at start-up. Several processes on one database: `failover`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::pg::{fresh_database, sql};
use crate::util::{run_to_exit, TestServer};

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
    let mut srv = on_postgres(&url, &["--snapshot-bytes", "4096"]);
    let mut ids = Vec::new();
    for i in 0..60 {
        let filler = "x".repeat(200);
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
    // A port nothing listens on: a clear error naming the server, the password hidden.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://flinger:hunter2@127.0.0.1:{port}/none?connect_timeout=5");
    let out = run_to_exit(
        dir.path(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "d",
            "--journal",
            &url,
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to postgres://flinger:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
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
