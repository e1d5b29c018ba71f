//! Long-poll dispatch (`GET /v1/job?queue=..&wait=SECONDS`): the request is held until a job
//! arrives (or 204 at the deadline), the longest-waiting agent first, with the same
//! exactly-once delivery; a client that disconnects loses no job; the wait and the number of
//! waiting agents are bounded.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::util::{job_id_of, raw_post, Http, RawConn, TestServer};

/// Starts a long-poll pop in the background: `(status, job id)` when it answers.
fn wait_pop(
    http: &Http,
    path: &str,
    cookie: Option<&str>,
) -> tokio::task::JoinHandle<(u16, Option<String>)> {
    let http = http.clone();
    let path = path.to_string();
    let cookie = cookie.map(str::to_string);
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let r = http.get_with_headers(&path, &headers).await;
        let id = (r.status == 200).then(|| job_id_of(&r.json()));
        (r.status, id)
    })
}

/// Gives a just-started request time to reach the server and start waiting.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn waiting_agent_gets_a_job_submitted_after_it_started_waiting_at_once() {
    let srv = TestServer::start();
    let waiter = wait_pop(&srv.http().unpooled(), "/v1/job?queue=q&wait=30", None);
    settle().await;
    assert!(
        !waiter.is_finished(),
        "the pop must wait while the queue is empty"
    );
    let submitted = Instant::now();
    let id = srv.submit_to("q").await;
    let (status, got) = waiter.await.unwrap();
    assert_eq!((status, got), (200, Some(id.clone())));
    // Answered on arrival, not at the 30 s deadline (generous for a loaded machine).
    assert!(
        submitted.elapsed() < Duration::from_secs(15),
        "took {:?}",
        submitted.elapsed()
    );
    assert_eq!(srv.job_state(&id).await, "running");
    assert_eq!(srv.pop(&["q"]).await, None, "delivered exactly once");
}

#[tokio::test]
async fn longest_waiting_agent_gets_the_first_job_when_two_wait() {
    let srv = TestServer::start();
    let http = srv.http().unpooled();
    let first = wait_pop(&http, "/v1/job?queue=q&wait=30", None);
    settle().await;
    let second = wait_pop(&http, "/v1/job?queue=q&wait=30", None);
    settle().await;
    let a = srv.submit_to("q").await;
    let (status, got) = first.await.unwrap();
    assert_eq!((status, got), (200, Some(a)));
    assert!(!second.is_finished(), "one job, one agent");
    let b = srv.submit_to("q").await;
    assert_eq!(second.await.unwrap(), (200, Some(b)));
}

#[tokio::test]
async fn job_excluding_the_first_waiting_agent_goes_to_the_next_one() {
    let srv = TestServer::start();
    let http = srv.http().unpooled();
    let excluded = wait_pop(&http, "/v1/job?queue=q&wait=4", Some("agent_name=dut-x"));
    settle().await;
    let other = wait_pop(&http, "/v1/job?queue=q&wait=30", Some("agent_name=dut-y"));
    settle().await;
    let id = srv
        .submit(&json!({"job_queue": "q", "exclude_agents": ["dut-x"]}))
        .await;
    assert_eq!(other.await.unwrap(), (200, Some(id)));
    assert_eq!(
        excluded.await.unwrap(),
        (204, None),
        "dut-x waits out its deadline"
    );
}

/// An agent of two queues woken for a job of one that takes a better job of the other
/// (arrived meanwhile, its signal dropped because the agent was already woken) passes the
/// first signal on: the agent waiting on the first queue gets that job at once. Before, it
/// slept out its wait while the job waited. Each round sends both submits before reading
/// either answer, so both jobs are usually in before the woken agent pops; a round in
/// which it popped first (it takes the first job, the second's queue has no other agent)
/// checks that nothing else moved.
#[tokio::test]
async fn agent_taking_another_queues_job_passes_its_wake_up_on() {
    let srv = TestServer::start();
    let http = srv.http().unpooled();
    for round in 0..4 {
        let (qa, qb) = (format!("qa{round}"), format!("qb{round}"));
        let both = wait_pop(
            &http,
            &format!("/v1/job?queue={qb}&queue={qa}&wait=30"),
            None,
        );
        settle().await;
        let one = wait_pop(&http, &format!("/v1/job?queue={qa}&wait=5"), None);
        settle().await;
        let mut conns = Vec::new();
        for (queue, priority) in [(&qa, 0), (&qb, 5)] {
            let body = json!({"job_queue": queue, "job_priority": priority}).to_string();
            let mut conn = RawConn::connect(&srv.base_url()).await;
            conn.send(&raw_post(
                "/v1/job",
                Some("application/json"),
                body.as_bytes(),
                true,
            ))
            .await;
            conns.push(conn);
        }
        let mut ids = Vec::new();
        for conn in &mut conns {
            let r = conn.read_response().await.expect("a submit answer");
            assert_eq!(r.status, 200, "{}", r.text());
            ids.push(job_id_of(&serde_json::from_slice(&r.body).unwrap()));
        }
        let (a, b) = (ids[0].clone(), ids[1].clone());
        let answered = Instant::now();
        let (status, got) = both.await.unwrap();
        assert_eq!(status, 200);
        if got.as_ref() == Some(&b) {
            assert_eq!(
                one.await.unwrap(),
                (200, Some(a)),
                "round {round}: the agent of {qa} alone gets its job"
            );
            assert!(
                answered.elapsed() < Duration::from_secs(4),
                "round {round}: answered at its deadline ({:?}), not on the passed signal",
                answered.elapsed()
            );
        } else {
            assert_eq!(got, Some(a), "round {round}");
            assert_eq!(one.await.unwrap(), (204, None), "round {round}");
            assert_eq!(srv.pop_id(&[qb.as_str()]).await, Some(b), "round {round}");
        }
    }
}

#[tokio::test]
async fn job_is_not_lost_when_a_waiting_agent_disconnects() {
    let srv = TestServer::start();
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v1/job?queue=q&wait=30 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    settle().await;
    drop(stream);
    settle().await;
    let id = srv.submit_to("q").await;
    settle().await;
    assert_eq!(
        srv.job_state(&id).await,
        "waiting",
        "no one took it for the gone agent"
    );
    assert_eq!(srv.pop_id(&["q"]).await, Some(id));
}

#[tokio::test]
async fn pop_answers_204_at_the_deadline_when_no_job_arrives() {
    let srv = TestServer::start();
    let started = Instant::now();
    srv.get("/v1/job?queue=q&wait=1").await.expect_no_content();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before the deadline"
    );
    // A job already waiting is answered at once, whatever the wait.
    let id = srv.submit_to("q").await;
    let r = srv.get("/v1/job?queue=q&wait=60").await;
    assert_eq!(job_id_of(&r.expect_json()), id);
}

#[tokio::test]
async fn pop_is_refused_with_400_when_wait_is_beyond_60_seconds_or_not_a_number() {
    let srv = TestServer::start();
    for wait in ["61", "3600", "-1", "1.5", "soon"] {
        let message = srv
            .get(&format!("/v1/job?queue=q&wait={wait}"))
            .await
            .expect_error(400);
        assert!(message.contains("wait"), "wait={wait}: {message}");
    }
}

#[tokio::test]
async fn pop_is_refused_with_503_when_max_waiters_agents_already_wait() {
    let srv = TestServer::start_with(&["--max-waiters", "1"]);
    let http = srv.http().unpooled();
    let waiting = wait_pop(&http, "/v1/job?queue=q&wait=30", None);
    settle().await;
    let message = srv.get("/v1/job?queue=q&wait=5").await.expect_error(503);
    assert!(message.contains("--max-waiters"), "{message}");
    // A pop without wait is not a waiter: served as before.
    srv.get("/v1/job?queue=q").await.expect_no_content();
    let id = srv.submit_to("q").await;
    assert_eq!(waiting.await.unwrap(), (200, Some(id)));
}

#[tokio::test]
async fn waiting_agents_are_answered_204_at_once_when_the_server_shuts_down() {
    let mut srv = TestServer::start();
    let waiter = wait_pop(&srv.http().unpooled(), "/v1/job?queue=q&wait=60", None);
    settle().await;
    let stopping = Instant::now();
    srv.send_signal(libc::SIGTERM);
    assert_eq!(waiter.await.unwrap(), (204, None));
    assert!(srv.wait_for_exit().success());
    // Not held until the 60 s wait or the 30 s drain timeout.
    assert!(
        stopping.elapsed() < Duration::from_secs(25),
        "took {:?}",
        stopping.elapsed()
    );
}
