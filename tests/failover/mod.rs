//! Several flinger nodes on one PostgreSQL journal (`ha`, issue 10): standbys forward to
//! the leader and say who leads, a standby takes over when the leader dies or pauses past
//! its lease, a paused leader steps down, and under concurrent submit/pop/cancel through
//! every node with repeated kill -9s and pauses of the leader nothing acknowledged is
//! lost, no job is handed out twice, no cancelled job is handed out, and every node ends
//! with the same state.
//!
//! `kills`: the soak of kill -9s and pauses under load, and PostgreSQL failing over to
//! its synchronous standby under a running node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::pg::{as_owner, bin, fresh_database, sql, start_on_free_port};
use crate::util::{run_to_exit, Http, TestServer};

mod kills;

/// The lease the tests run with: short, so failovers are quick, and long enough that
/// renewals (every third) keep up on a loaded 2-core machine.
const LEASE_MS: &str = "1000";

fn node(url: &str) -> TestServer {
    TestServer::start_with(&["--journal", url, "--lease-ms", LEASE_MS])
}

/// `GET /v1/ready` of one node: status and document (`None` on a transport error).
async fn ready(http: &Http) -> Option<(u16, Value)> {
    let r = http
        .try_request("GET", "/v1/ready", &[], Vec::new())
        .await
        .ok()?;
    Some((r.status, r.json()))
}

/// Waits until one of `nodes` says it leads; returns its index.
async fn leader_of(nodes: &[&Http]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut said = Vec::new();
        for (i, http) in nodes.iter().enumerate() {
            let answer = ready(http).await;
            if let Some((200, doc)) = &answer {
                if doc["role"] == "leader" {
                    return i;
                }
            }
            said.push(answer);
        }
        assert!(
            Instant::now() < deadline,
            "no node took the lease within 30 s; the nodes said {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits until a submit is acknowledged (a failover answers 503 meanwhile).
async fn submit_retrying(http: &Http, job: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = serde_json::to_vec(job).unwrap();
        if let Ok(r) = http
            .try_request(
                "POST",
                "/v1/job",
                &[("content-type", "application/json")],
                body,
            )
            .await
        {
            if r.status == 200 {
                return r.json()["job_id"].as_str().unwrap().to_owned();
            }
            assert_eq!(r.status, 503, "submit: {}", r.text_preview());
        }
        assert!(
            Instant::now() < deadline,
            "no submit acknowledged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nodes started together on a new database all come up: creating the tables is
/// serialised (an advisory lock), where three of four used to stop with PostgreSQL's
/// `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`.
#[tokio::test]
async fn nodes_started_together_on_a_new_database_all_come_up() {
    let url = fresh_database();
    let nodes: Vec<TestServer> = std::thread::scope(|s| {
        let started: Vec<_> = (0..4).map(|_| s.spawn(|| node(&url))).collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let https: Vec<Http> = nodes.iter().map(TestServer::http).collect();
    let leader = leader_of(&https.iter().collect::<Vec<_>>()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, http) in https.iter().enumerate() {
        let want = if i == leader { "leader" } else { "standby" };
        loop {
            let answer = ready(http).await;
            if answer
                .as_ref()
                .is_some_and(|(status, doc)| *status == 200 && doc["role"] == want)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} is not a {want}: it said {answer:?}; its log: {:?}",
                nodes[i].stderr_lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn standby_forwards_requests_and_names_the_leader_when_two_nodes_share_a_database() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = node(&url);
    let (status, doc) = ready(&b.http()).await.expect("standby answers");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["role"], "standby", "{doc}");
    assert_eq!(doc["leader"], a.base_url().as_str(), "{doc}");
    let (_, led) = ready(&a.http()).await.unwrap();
    assert_eq!(doc["term"], led["term"]);
    // Every kind of request through the standby: submit, read, pop, cancel.
    let first = b.submit(&json!({"job_queue": "fwd", "n": 1})).await;
    let second = b.submit(&json!({"job_queue": "fwd", "n": 2})).await;
    assert_eq!(a.job_state(&first).await, "waiting");
    assert_eq!(b.get(&format!("/v1/job/{first}")).await.json()["n"], 1);
    assert_eq!(b.pop_id(&["fwd"]).await.as_deref(), Some(first.as_str()));
    b.cancel(&second).await.expect_status(200);
    assert_eq!(a.job_state(&first).await, "running");
    assert_eq!(a.job_state(&second).await, "cancelled");
    assert_eq!(b.pop_id(&["fwd"]).await, None);
    // A large body streamed both ways through the standby (an artifact of 3 MiB).
    let bytes: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    b.post_multipart(
        &format!("/v1/result/{first}/artifact"),
        "file",
        "a.tgz",
        &bytes,
    )
    .await
    .expect_status(200);
    let got = b.get(&format!("/v1/result/{first}/artifact")).await;
    assert!(
        got.status == 200 && got.body[..] == bytes[..],
        "artifact differs"
    );
    // An operator route allowed only from the server's own host is not, through a
    // forwarder on that host: the leader cannot tell where the client is.
    let r = b
        .request("DELETE", &format!("/v1/job/{second}"), &[], Vec::new())
        .await;
    assert_eq!(r.status, 403, "{}", r.text_preview());
    let r = b
        .request("DELETE", "/v1/agents/data/fwd-agent", &[], Vec::new())
        .await;
    assert_eq!(r.status, 403, "{}", r.text_preview());
    // Errors come back as the leader gave them.
    let bad = b.post_json("/v1/job", &json!({"no_queue": 1})).await;
    let direct = a.post_json("/v1/job", &json!({"no_queue": 1})).await;
    assert!(
        bad.status >= 400 && bad.status < 500,
        "{}",
        bad.text_preview()
    );
    assert_eq!((bad.status, &bad.body), (direct.status, &direct.body));
    // The standby follows: once quiet, it has folded what the leader wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, led) = ready(&a.http()).await.unwrap();
        let (_, follows) = ready(&b.http()).await.unwrap();
        if led["lsn"] == follows["lsn"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "standby at {follows}, leader at {led}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `HEAD /v1/ready` (a health check's method too) is answered by the node asked, as GET
/// is: same status and length, not the leader's answer forwarded.
#[tokio::test]
async fn ready_answers_head_on_the_node_asked_as_it_answers_get() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = node(&url);
    for http in [a.http(), b.http()] {
        let get = http.request("GET", "/v1/ready", &[], Vec::new()).await;
        let head = http.request("HEAD", "/v1/ready", &[], Vec::new()).await;
        let length = |r: &crate::util::Resp| r.headers.get("content-length").cloned();
        assert_eq!(get.status, 200, "{}", get.text_preview());
        assert_eq!(
            (head.status, length(&head)),
            (get.status, length(&get)),
            "{}: {}",
            http.base(),
            get.text_preview()
        );
    }
}

/// The leader's browser checks (`access::origin`) read the `Host` the client sent: a
/// standby must pass it on, not put the leader's address in its place (which made a
/// same-origin browser's POST look cross-site and a DNS-rebinding page's request look
/// like this machine's own).
#[tokio::test]
async fn standby_passes_the_clients_host_on_so_browser_checks_decide_as_on_the_leader() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = node(&url);
    let (status, doc) = ready(&b.http()).await.expect("standby answers");
    assert_eq!(
        (status, doc["role"].as_str()),
        (200, Some("standby")),
        "{doc}"
    );
    for (n, (http, server)) in [(a.http(), &a), (b.http(), &b)].into_iter().enumerate() {
        // The dashboard's cancel button over plain HTTP: `Origin` and `Host` name the
        // node the browser talks to, no `Sec-Fetch-Site`.
        let id = http.submit(&json!({"job_queue": "browser"})).await;
        let origin = server.base_url();
        let host = origin.trim_start_matches("http://").to_owned();
        let r = http
            .request(
                "POST",
                &format!("/jobs/{id}/cancel"),
                &[("origin", origin.as_str()), ("host", host.as_str())],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, 303, "node {n}: {}", r.text_preview());
        assert_eq!(a.job_state(&id).await, "cancelled", "node {n}");
        // A page whose name was rebound to this address (access control off, loopback).
        let rebound = format!("rebound.example:{}", host.rsplit(':').next().unwrap());
        let r = http
            .request(
                "GET",
                "/v1/job/search",
                &[("host", rebound.as_str())],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, 403, "node {n}: {}", r.text_preview());
    }
}

/// `--allowed-hosts` on every node: a standby refuses a name it does not allow itself,
/// and passes on what it allows, its own advertised name included (which the leader does
/// not know: such a request goes on naming the leader, its same-origin `Origin` with it).
#[tokio::test]
async fn standby_refuses_a_rebound_name_and_the_leader_accepts_every_name_the_standby_allows() {
    let url = fresh_database();
    let listed = ["--allowed-hosts", "lb.lab.example"];
    let a = TestServer::start_with(
        &[&["--journal", &url, "--lease-ms", LEASE_MS], &listed[..]].concat(),
    );
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    // Its advertised URL names it; other nodes would forward there if it led (it does
    // not here: the port is never used).
    let b = TestServer::start_with(
        &[
            &["--journal", &url, "--lease-ms", LEASE_MS],
            &listed[..],
            &["--advertise-url", "http://node-b.lab.internal:1"],
        ]
        .concat(),
    );
    let (status, doc) = ready(&b.http()).await.expect("standby answers");
    assert_eq!(
        (status, doc["role"].as_str()),
        (200, Some("standby")),
        "{doc}"
    );
    let port = b.base().rsplit(':').next().unwrap().to_owned();
    let job = br#"{"job_queue": "hosts-ha"}"#.to_vec();
    for (host, status) in [
        (format!("lb.lab.example:{port}"), 200),
        (format!("node-b.lab.internal:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("rebind.attacker.example:{port}"), 403),
    ] {
        // A browser's `text/plain` post from a page of that name.
        let origin = format!("http://{host}");
        let headers = [
            ("host", host.as_str()),
            ("origin", origin.as_str()),
            ("content-type", "text/plain"),
        ];
        let r = b.request("POST", "/v1/job", &headers, job.clone()).await;
        assert_eq!(r.status, status, "{host}: {}", r.text_preview());
        if status == 403 {
            let message = r.expect_error(403);
            assert!(message.contains("--allowed-hosts"), "{message}");
            let r = b
                .request("GET", "/v1/ready", &[("host", host.as_str())], Vec::new())
                .await;
            assert_eq!(r.status, 403, "ready: {}", r.text_preview());
        }
    }
    // The dashboard's cancel form on the standby's own page, by its advertised name.
    let id = b.submit(&json!({"job_queue": "hosts-ha"})).await;
    let host = format!("node-b.lab.internal:{port}");
    let origin = format!("http://{host}");
    let r = b
        .request(
            "POST",
            &format!("/jobs/{id}/cancel"),
            &[("host", host.as_str()), ("origin", origin.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text_preview());
    assert_eq!(a.job_state(&id).await, "cancelled");
    // Another site's page posting to it by that name is still refused.
    let id = b.submit(&json!({"job_queue": "hosts-ha"})).await;
    let r = b
        .request(
            "POST",
            &format!("/jobs/{id}/cancel"),
            &[("host", host.as_str()), ("origin", "http://evil.example")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text_preview());
    assert_eq!(a.job_state(&id).await, "waiting");
}

#[tokio::test]
async fn standby_takes_over_with_every_acknowledged_change_when_the_leader_is_killed() {
    let url = fresh_database();
    let mut a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = node(&url);
    let mut ids = Vec::new();
    for i in 0..10 {
        let via = if i % 2 == 0 { &a } else { &b };
        ids.push(via.submit(&json!({"job_queue": "kill", "n": i})).await);
    }
    b.cancel(&ids[9]).await.expect_status(200);
    a.kill9();
    let id = submit_retrying(&b.http(), &json!({"job_queue": "kill", "n": 10})).await;
    let (status, doc) = ready(&b.http()).await.unwrap();
    assert_eq!((status, &doc["role"]), (200, &json!("leader")), "{doc}");
    for id in &ids[..9] {
        assert_eq!(b.job_state(id).await, "waiting");
    }
    assert_eq!(b.job_state(&ids[9]).await, "cancelled");
    assert_eq!(b.pop_id(&["kill"]).await.as_deref(), Some(ids[0].as_str()));
    // The killed node comes back as a standby of the new leader.
    a.start_again();
    let (status, doc) = ready(&a.http()).await.unwrap();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["role"], "standby", "{doc}");
    assert_eq!(doc["leader"], b.base_url().as_str(), "{doc}");
    assert_eq!(a.job_state(&id).await, "waiting");
}

/// Submits `count` jobs of about `bytes` each to the queue `compact` through `node`, their
/// ids appended to `ids`.
async fn submit_jobs_of(node: &TestServer, ids: &mut Vec<String>, count: usize, bytes: usize) {
    let filler = "x".repeat(bytes);
    for _ in 0..count {
        let n = ids.len();
        ids.push(
            node.submit(&json!({"job_queue": "compact", "n": n, "filler": filler}))
                .await,
        );
    }
}

#[tokio::test]
async fn standby_left_behind_by_compaction_reloads_the_snapshot_and_takes_over_with_everything() {
    let url = fresh_database();
    let args = [
        "--journal",
        &url,
        "--lease-ms",
        LEASE_MS,
        "--snapshot-bytes",
        "1MiB",
    ];
    let mut a = TestServer::start_with(&args);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = TestServer::start_with(&args);
    let first = a.submit(&json!({"job_queue": "compact"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&b.http()).await.map(|(_, doc)| doc["lsn"].clone()) != Some(json!(1)) {
        assert!(Instant::now() < deadline, "the standby never read event 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The standby sleeps while the leader writes enough for a snapshot that deletes the
    // events it has not read...
    b.send_signal(libc::SIGSTOP);
    let mut ids = vec![first];
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(&url, "SELECT count(*) FROM flinger_events WHERE lsn <= 2") != "0" {
        assert!(
            Instant::now() < deadline,
            "no snapshot compacted the first events"
        );
        submit_jobs_of(&a, &mut ids, 4, 64_000).await;
    }
    // ... and then more than the connection buffers (40 KB, under the next snapshot's
    // 1 MiB): the standby finds the gap with these rows unread.
    submit_jobs_of(&a, &mut ids, 40, 1000).await;
    b.send_signal(libc::SIGCONT);
    let last = a.submit(&json!({"job_queue": "compact"})).await;
    ids.push(last);
    a.kill9();
    // A request waits two lease lengths for a new leader; on a loaded machine the
    // takeover (the snapshot it reloads, then the tail) can take longer than that.
    assert_eq!(leader_of(&[&b.http()]).await, 0);
    assert!(
        b.stderr_lines_once(|l| l.contains("reloaded from its snapshot"))
            .await
            .iter()
            .any(|l| l.contains("reloaded from its snapshot")),
        "the standby did not say it reloaded the snapshot"
    );
    for id in &ids {
        assert_eq!(b.job_state(id).await, "waiting");
    }
    assert_eq!(
        b.pop_id(&["compact"]).await.as_deref(),
        Some(ids[0].as_str())
    );
}

#[tokio::test]
async fn paused_leader_steps_down_and_answers_nothing_as_leader_when_resumed() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let b = node(&url);
    a.submit(&json!({"job_queue": "pause"})).await;
    let (_, before) = ready(&a.http()).await.unwrap();
    a.send_signal(libc::SIGSTOP);
    let id = submit_retrying(&b.http(), &json!({"job_queue": "pause"})).await;
    let (_, after) = ready(&b.http()).await.unwrap();
    assert_eq!(after["role"], "leader");
    assert!(
        after["term"].as_i64() > before["term"].as_i64(),
        "{after} {before}"
    );
    // A change sent to the paused leader waits in its socket; once it resumes it must not
    // acknowledge it from its old term: 503, or forwarded to the new leader.
    let late = {
        let http = a.http();
        tokio::spawn(async move {
            http.post_json("/v1/job", &json!({"job_queue": "late"}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send_signal(libc::SIGCONT);
    let late = late.await.unwrap();
    match late.status {
        503 => {}
        200 => {
            let id = late.json()["job_id"].as_str().unwrap().to_owned();
            assert_eq!(b.job_state(&id).await, "waiting");
        }
        s => panic!("late submit: {s} {}", late.text_preview()),
    }
    // From the moment it resumes, the old leader never answers from its own stale state:
    // it forwards (the new job is found) or says it cannot serve (503), and never claims
    // to lead.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let r = a.get(&format!("/v1/job/{id}")).await;
        assert!(
            r.status == 200 || r.status == 503,
            "{} {}",
            r.status,
            r.text_preview()
        );
        let (status, doc) = ready(&a.http()).await.unwrap();
        assert!(
            !(status == 200 && doc["role"] == "leader"),
            "the resumed node claims to lead: {doc}"
        );
    }
    let (status, doc) = ready(&a.http()).await.unwrap();
    assert_eq!((status, &doc["role"]), (200, &json!("standby")), "{doc}");
    assert!(
        a.stderr_lines_once(|l| l.contains("stepping down as leader"))
            .await
            .iter()
            .any(|l| l.contains("stepping down as leader")),
        "no step-down logged"
    );
}

#[tokio::test]
async fn append_gets_no_2xx_and_the_leader_steps_down_when_another_term_took_the_lease() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    a.submit(&json!({"job_queue": "fence"})).await;
    let events = sql(&url, "SELECT count(*) FROM flinger_events");
    // Another holder takes the lease behind the leader's back (as a node whose clock ran
    // ahead would), advertising no URL: nobody can be forwarded to.
    sql(
        &url,
        "UPDATE flinger_lease SET term = term + 1, holder = 'intruder', url = '', \
         expires = clock_timestamp() + interval '1 hour'",
    );
    let r = a.post_json("/v1/job", &json!({"job_queue": "fence"})).await;
    assert_eq!(r.status, 503, "{}", r.text_preview());
    assert_eq!(sql(&url, "SELECT count(*) FROM flinger_events"), events);
    let (status, doc) = ready(&a.http()).await.unwrap();
    assert_eq!((status, &doc["role"]), (503, &json!("standby")), "{doc}");
    // Once the intruder's lease expires, the node leads again in a newer term.
    sql(&url, "UPDATE flinger_lease SET expires = '-infinity'");
    submit_retrying(&a.http(), &json!({"job_queue": "fence"})).await;
    let (_, doc) = ready(&a.http()).await.unwrap();
    assert_eq!(doc["role"], "leader");
    assert_eq!(
        sql(&url, "SELECT holder <> 'intruder' FROM flinger_lease"),
        "t"
    );
}

#[tokio::test]
async fn orphan_results_write_nothing_when_another_term_took_the_lease() {
    let url = fresh_database();
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let id = crate::util::new_id();
    a.post_json(&format!("/v1/result/{id}"), &json!({"job_state": "setup"}))
        .await
        .expect_status(200);
    let chunks =
        "SELECT count(*) || '/' || coalesce(sum(length(data)), 0) FROM flinger_file_chunks";
    let before = sql(&url, chunks);
    sql(
        &url,
        "UPDATE flinger_lease SET term = term + 1, holder = 'intruder', url = '', \
         expires = clock_timestamp() + interval '1 hour'",
    );
    // Data for an id no job has goes to the file store before its event: the deposed
    // leader's append is fenced like the event, so nothing of it lands.
    let r = a
        .post_json(
            &format!("/v1/result/{id}"),
            &json!({"job_state": "test", "x": "y".repeat(1000)}),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text_preview());
    assert_eq!(sql(&url, chunks), before);
}

#[tokio::test]
async fn ready_says_the_only_node_leads_when_the_journal_is_the_file_log() {
    let srv = TestServer::start_with(&["--journal", "file"]);
    let (status, doc) = ready(&srv.http()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(doc["role"], "leader", "{doc}");
    assert_eq!(doc["term"], 0, "{doc}");
}

#[tokio::test]
async fn lease_or_advertise_url_outside_their_bounds_is_refused_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    for lease in ["299", "60001"] {
        let out = run_to_exit(
            dir.path(),
            &["--lease-ms", lease, "--data-dir", "d"],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "--lease-ms (FLINGER_LEASE_MS, config key LEASE_MS) must be 300 to 60000"
            ),
            "{stderr}"
        );
    }
    let out = run_to_exit(
        dir.path(),
        &["--advertise-url", "ftp://x", "--data-dir", "d"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise-url"));
    // Nodes forward to the advertised URL: listening on every address needs one, and it
    // must name a host.
    let pg = fresh_database();
    for args in [
        vec!["--bind", "0.0.0.0:0"],
        vec!["--advertise-url", "http://0.0.0.0:8000"],
    ] {
        let mut all = args.clone();
        all.extend(["--journal", pg.as_str(), "--data-dir", "d"]);
        let out = run_to_exit(dir.path(), &all, &[], Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--advertise-url"), "{args:?}: {stderr}");
    }
}
