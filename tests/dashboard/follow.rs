//! The log follow stream (`GET /v1/result/<id>/log/<kind>/follow`, the dashboard's live
//! log): fragments once each and in order across polls, from the orphan store too, and
//! how a stream ends (the job finished; its time limit; the server shutting down).

use std::time::{Duration, Instant};

use serde_json::json;

use super::fragment;
use crate::util::TestServer;

#[tokio::test]
async fn log_follow_streams_fragments_then_ends_when_the_job_finishes() {
    let srv = TestServer::start();
    let id = srv.submit_to("follow-q").await;
    srv.pop_id(&["follow-q"]).await.unwrap();
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(0, "setup", "first\n"),
    )
    .await;
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(1, "test", "second\n"),
    )
    .await;
    srv.post_result(&id, &json!({"job_state": "complete"}))
        .await;
    let resp = srv
        .get(&format!(
            "/v1/result/{id}/log/output/follow?start_fragment=1"
        ))
        .await;
    resp.expect_status(200);
    assert_eq!(resp.content_type().as_deref(), Some("text/event-stream"));
    let body = resp.text();
    assert!(
        body.contains("event: fragment") && body.contains("second\\n") && !body.contains("first")
    );
    assert!(
        body.trim_end()
            .ends_with("event: end\ndata: {\"finished\":true}"),
        "{body}"
    );
    srv.get(&format!(
        "/v1/result/{id}/log/output/follow?start_fragment=x"
    ))
    .await
    .expect_status(400);
    srv.get(&format!("/v1/result/{id}/log/nope/follow"))
        .await
        .expect_status(404);
}

/// The `data:` lines of a log follow's server-sent events, in order.
fn event_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

/// Waits (45 s at most) until `n` log follow streams have been opened: a follow counts as
/// a request once its head is sent.
pub(super) async fn wait_for_follows(srv: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let metrics = srv.get("/metrics").await.text();
        let opened: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with(
                    "flinger_http_requests_total{route=\"/v1/result/{id}/log/{kind}/follow\"",
                )
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if opened >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{opened} follows opened, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A follow of a job still running ends unfinished, naming the fragment to go on from,
/// after `--follow-max-secs`, and when the server shuts down: an open dashboard page does
/// not hold the drain (`--drain-secs`, 30 s) until it runs out. A quiet stream sends a
/// keep-alive comment every 15 s.
#[tokio::test]
async fn log_follow_of_a_running_job_ends_unfinished_at_its_limit_and_at_shutdown() {
    async fn running_job_with_two_fragments(srv: &TestServer) -> String {
        let id = srv.submit_to("follow-end").await;
        srv.pop_id(&["follow-end"]).await.unwrap();
        let log = format!("/v1/result/{id}/log/output");
        for n in 0..2 {
            srv.post_json(&log, &fragment(n, "test", "text\n"))
                .await
                .expect_status(200);
        }
        log
    }
    let limited = TestServer::start_with(&["--follow-max-secs", "1"]);
    let log = running_job_with_two_fragments(&limited).await;
    let body = limited.get(&format!("{log}/follow")).await.text();
    assert!(
        body.trim_end()
            .ends_with("event: end\ndata: {\"finished\":false,\"next_fragment\":2}"),
        "{body}"
    );
    // The default limit (10 min) is far off: only the shutdown ends this one.
    let mut srv = TestServer::start();
    let log = running_job_with_two_fragments(&srv).await;
    let path = format!("{log}/follow?start_fragment=1");
    let follow = srv.get(&path);
    let stop = async {
        wait_for_follows(&srv, 1).await;
        // Long enough without news for a keep-alive comment (every 15 s).
        tokio::time::sleep(Duration::from_secs(16)).await;
        srv.send_signal(libc::SIGTERM);
        Instant::now()
    };
    let (resp, signalled) = tokio::join!(follow, stop);
    let body = resp.text();
    assert_eq!(body.matches("\n: keep-alive\n\n").count(), 1, "{body}");
    assert!(
        body.trim_end()
            .ends_with("event: end\ndata: {\"finished\":false,\"next_fragment\":2}"),
        "{body}"
    );
    srv.wait_for_exit();
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
}

/// A follow polls again and again while the job runs, each poll reading only the
/// fragments after those it read before: every text is sent once, in order, across
/// polls; a fragment arriving late with a number already passed is not sent (as a read
/// from that number would not show it); and the stream ends once the job finished.
#[tokio::test]
async fn log_follow_sends_each_fragment_once_across_polls_while_the_job_runs() {
    let srv = TestServer::start();
    let id = srv.submit_to("follow-polls").await;
    srv.pop_id(&["follow-polls"]).await.unwrap();
    let log = format!("/v1/result/{id}/log/output");
    let follow_path = format!("{log}/follow");
    let follow = srv.get(&follow_path);
    let agent = async {
        // Longer than the follow's poll (500 ms) between posts: each lands in a later poll.
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(700));
        for (n, phase, text) in [
            (0, "setup", "one\n"),
            (1, "test", "two\n"),
            (0, "test", "late\n"),
            (2, "test", "three\n"),
        ] {
            pause().await;
            srv.post_json(&log, &fragment(n, phase, text))
                .await
                .expect_status(200);
        }
        pause().await;
        srv.post_result(&id, &json!({"job_state": "complete"}))
            .await;
    };
    let (resp, ()) = tokio::join!(follow, agent);
    let body = resp.expect_status(200).text();
    let sent = event_data(&body);
    assert_eq!(
        sent,
        [
            r#"{"phase":"setup","text":"one\n","last_fragment_number":0}"#,
            r#"{"phase":"test","text":"two\n","last_fragment_number":1}"#,
            r#"{"phase":"test","text":"three\n","last_fragment_number":2}"#,
            r#"{"finished":true}"#,
        ],
        "{body}"
    );
}

/// A follow of a job whose data lives in the orphan store (posted for its id before the
/// job was submitted) reads only what was appended to the file since its last poll, and
/// sends what reading the whole file would: each text once, in order; a retry and a late
/// fragment not; an empty fragment, though not sent, counted in the next event's number
/// as a whole read counts it; a legacy chunk numbered after the run's highest.
#[tokio::test]
async fn log_follow_of_a_job_whose_data_lives_in_the_orphan_store_sends_each_fragment_once() {
    let srv = TestServer::start();
    let id = "0ff5e7a1-3c2b-4d5e-8f90-123456789abc";
    let log = format!("/v1/result/{id}/log/output");
    srv.post_json(&log, &fragment(0, "setup", "zero\n"))
        .await
        .expect_status(200);
    srv.submit(&json!({"job_id": id, "job_queue": "orphan-follow"}))
        .await;
    srv.pop_id(&["orphan-follow"]).await.unwrap();
    srv.post_result(id, &json!({"job_state": "test"})).await;
    let follow_path = format!("{log}/follow");
    let follow = srv.get(&follow_path);
    let agent = async {
        // Longer than the follow's poll (500 ms) between posts: each lands in a later poll.
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(700));
        for (n, text) in [
            (1, "one\n"),
            (1, "one\n"),
            (0, "late\n"),
            (3, ""),
            (2, "two\n"),
        ] {
            pause().await;
            srv.post_json(&log, &fragment(n, "test", text))
                .await
                .expect_status(200);
        }
        pause().await;
        srv.post_raw(
            &format!("/v1/result/{id}/output"),
            Some("text/plain"),
            b"legacy\n".to_vec(),
        )
        .await
        .expect_status(200);
        pause().await;
        srv.post_result(id, &json!({"job_state": "complete"})).await;
    };
    let (resp, ()) = tokio::join!(follow, agent);
    let body = resp.expect_status(200).text();
    let sent = event_data(&body);
    assert_eq!(
        sent,
        [
            r#"{"phase":"setup","text":"zero\n","last_fragment_number":0}"#,
            r#"{"phase":"test","text":"one\n","last_fragment_number":1}"#,
            r#"{"phase":"test","text":"two\n","last_fragment_number":3}"#,
            r#"{"phase":"test","text":"legacy\n","last_fragment_number":4}"#,
            r#"{"finished":true}"#,
        ],
        "{body}"
    );
    // A read of the whole file says the same.
    let whole = srv.get(&log).await.expect_json();
    assert_eq!(
        whole["output"]["test"]["last_fragment_number"], 4,
        "{whole}"
    );
}

/// Follow streams are bounded in number (`--max-follows`): each holds a connection for up
/// to `--follow-max-secs`, so without a bound open streams could take every connection
/// slot. One past the bound is 503 naming the option; a stream whose client left gives its
/// place back.
#[tokio::test]
async fn log_follows_past_max_follows_are_503_until_one_closes() {
    use crate::util::RawConn;
    let srv = TestServer::start_with(&["--max-follows", "2"]);
    let id = srv.submit_to("follows").await;
    srv.pop_id(&["follows"]).await.unwrap();
    let path = format!("/v1/result/{id}/log/output/follow");
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut conn = RawConn::connect(&srv.base_url()).await;
        conn.send(head.as_bytes()).await;
        open.push(conn);
    }
    wait_for_follows(&srv, 2).await;
    let refused = srv.get(&path).await;
    refused.expect_status(503);
    assert!(
        refused.message().contains("--max-follows"),
        "{}",
        refused.text()
    );
    drop(open.pop());
    let closed = Instant::now();
    // At the latest at its next keep-alive comment (15 s) a stream finds its client gone.
    let deadline = closed + Duration::from_secs(20);
    loop {
        // The server notices the closed connection at its next write or poll.
        let mut conn = RawConn::connect(&srv.base_url()).await;
        conn.send(head.as_bytes()).await;
        let status = tokio::time::timeout(Duration::from_millis(500), conn.read_response())
            .await
            .ok()
            .flatten()
            .map(|r| r.status);
        match status {
            // Still refused: the dropped stream has not noticed yet.
            Some(503) => {}
            // No complete answer yet: an open stream (its headers came, its body goes on).
            None | Some(200) => break,
            Some(other) => panic!("follow answered {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "the closed follow's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
