//! Several flinger nodes on one PostgreSQL journal (`ha`, issue 10): standbys forward to
//! the leader and say who leads, a standby takes over when the leader dies or pauses past
//! its lease, a paused leader steps down, and under concurrent submit/pop/cancel through
//! every node with repeated kill -9s and pauses of the leader nothing acknowledged is
//! lost, no job is handed out twice, no cancelled job is handed out, and every node ends
//! with the same state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::pg::{as_owner, bin, fresh_database, sql, start_on_free_port};
use crate::util::{run_to_exit, Http, TestServer};

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

/// What the clients of the soak saw acknowledged.
#[derive(Default)]
struct Seen {
    /// Submits acknowledged (200).
    submitted: Vec<String>,
    /// Pops acknowledged, with when each pop request was sent.
    popped: Vec<(String, Instant)>,
    /// Cancels acknowledged, with when the acknowledgement arrived.
    cancelled: HashMap<String, Instant>,
    /// Every job a cancel was sent for (one without an answer may still have been done).
    cancel_sent: HashSet<String>,
}

/// The current address of every node, updated when one restarts on a new port.
type Addresses = Arc<Mutex<Vec<String>>>;

async fn client_loop(
    kind: usize,
    worker: usize,
    addresses: Addresses,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut clients: HashMap<String, Http> = HashMap::new();
    let mut turn = worker;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let base = {
            let a = addresses.lock().unwrap();
            a[turn % a.len()].clone()
        };
        let http = clients
            .entry(base.clone())
            .or_insert_with(|| Http::new(base.clone()))
            .clone();
        match kind {
            0 => {
                let body = serde_json::to_vec(&json!({"job_queue": "soak", "w": worker})).unwrap();
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
                        let id = r.json()["job_id"].as_str().unwrap().to_owned();
                        seen.lock().unwrap().submitted.push(id);
                    } else {
                        assert_eq!(r.status, 503, "submit: {}", r.text_preview());
                    }
                }
            }
            1 => {
                let sent = Instant::now();
                if let Ok(r) = http
                    .try_request("GET", "/v1/job?queue=soak", &[], Vec::new())
                    .await
                {
                    match r.status {
                        200 => {
                            let id = r.json()["job_id"].as_str().unwrap().to_owned();
                            seen.lock().unwrap().popped.push((id, sent));
                        }
                        204 | 503 => {}
                        s => panic!("pop: {s} {}", r.text_preview()),
                    }
                }
            }
            _ => {
                let target = {
                    let s = seen.lock().unwrap();
                    let n = s.submitted.len();
                    (n > 0).then(|| s.submitted[(turn * 7919) % n].clone())
                };
                if let Some(id) = target {
                    seen.lock().unwrap().cancel_sent.insert(id.clone());
                    let body = serde_json::to_vec(&json!({"action": "cancel"})).unwrap();
                    if let Ok(r) = http
                        .try_request(
                            "POST",
                            &format!("/v1/job/{id}/action"),
                            &[("content-type", "application/json")],
                            body,
                        )
                        .await
                    {
                        if r.status == 200 {
                            seen.lock()
                                .unwrap()
                                .cancelled
                                .entry(id)
                                .or_insert_with(Instant::now);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_nor_handed_out_twice_when_leaders_are_killed_and_paused() {
    const KILLS: usize = 20;
    const PAUSES: usize = 5;
    let url = fresh_database();
    let mut nodes = vec![node(&url)];
    leader_of(&[&nodes[0].http()]).await;
    nodes.push(node(&url));
    nodes.push(node(&url));
    let addresses: Addresses = Arc::new(Mutex::new(nodes.iter().map(|n| n.base_url()).collect()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Three submitters, two poppers, one canceller, spread over every node.
    for (worker, kind) in [0, 0, 0, 1, 1, 2].into_iter().enumerate() {
        clients.push(tokio::spawn(client_loop(
            kind,
            worker,
            addresses.clone(),
            seen.clone(),
            stop.clone(),
        )));
    }
    let https = |nodes: &[TestServer]| nodes.iter().map(|n| n.http()).collect::<Vec<_>>();
    let mut failovers = Vec::new();
    for round in 0..KILLS + PAUSES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = https(&nodes);
        let leader = leader_of(&all.iter().collect::<Vec<_>>()).await;
        let other = (leader + 1) % nodes.len();
        if round < KILLS {
            let killed = Instant::now();
            nodes[leader].kill9();
            submit_retrying(&all[other], &json!({"job_queue": "probe"})).await;
            failovers.push(killed.elapsed());
            nodes[leader].start_again();
            addresses.lock().unwrap()[leader] = nodes[leader].base_url();
        } else {
            nodes[leader].send_signal(libc::SIGSTOP);
            // Paused past its lease: another node takes over and writes.
            submit_retrying(&all[other], &json!({"job_queue": "probe"})).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            nodes[leader].send_signal(libc::SIGCONT);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (status, doc) = ready(&all[leader]).await.expect("resumed node answers");
                assert!(
                    !(status == 200 && doc["role"] == "leader"),
                    "the resumed node claims to lead: {doc}"
                );
                if doc["role"] == "standby" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "resumed node did not step down: {doc}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    failovers.sort();
    eprintln!(
        "failover (kill -9 -> first acknowledged write), {} kills, lease {LEASE_MS} ms: p50 {:?} p99 {:?} max {:?}; {} submits, {} pops, {} cancels acknowledged",
        failovers.len(),
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().unwrap(),
        seen.submitted.len(),
        seen.popped.len(),
        seen.cancelled.len(),
    );
    assert!(seen.submitted.len() > 100 && !seen.popped.is_empty() && !seen.cancelled.is_empty());
    // No job handed out twice, none handed out after its cancel was acknowledged.
    let mut handed = HashSet::new();
    for (id, sent) in &seen.popped {
        assert!(handed.insert(id.clone()), "job {id} handed out twice");
        if let Some(cancelled) = seen.cancelled.get(id) {
            assert!(
                cancelled > sent,
                "cancelled job {id} handed out after the cancel"
            );
        }
    }
    // Every node folds to the same LSN once writes stop.
    let all = https(&nodes);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut lsns = Vec::new();
        for http in &all {
            lsns.push(ready(http).await.map(|(_, d)| d["lsn"].clone()));
        }
        if lsns.windows(2).all(|w| w[0] == w[1]) && lsns[0].is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "nodes' states differ: {lsns:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every acknowledged change is there, the same through each node as it leads: stop
    // the leader (it releases the lease) until the last node leads.
    // An acknowledged change must show; one answered 503 (or not at all) may have been
    // done or not: a pop or cancel the leader committed just before it died.
    let allowed = |id: &String| -> &'static [&'static str] {
        let cancel_sent = seen.cancel_sent.contains(id);
        if seen.cancelled.contains_key(id) {
            &["cancelled"]
        } else if handed.contains(id) {
            if cancel_sent {
                &["running", "cancelled"]
            } else {
                &["running"]
            }
        } else if cancel_sent {
            &["waiting", "running", "cancelled"]
        } else {
            &["waiting", "running"]
        }
    };
    let mut states: Option<HashMap<String, String>> = None;
    let mut running: Vec<usize> = (0..nodes.len()).collect();
    while !running.is_empty() {
        let all: Vec<Http> = running.iter().map(|&i| nodes[i].http()).collect();
        let leader = running[leader_of(&all.iter().collect::<Vec<_>>()).await];
        let via = nodes[leader].http();
        let mut here = HashMap::new();
        for id in &seen.submitted {
            let r = via.get(&format!("/v1/result/{id}")).await;
            assert_eq!(
                r.status,
                200,
                "acknowledged job {id} lost: {}",
                r.text_preview()
            );
            let state = r.json()["job_state"].as_str().unwrap().to_owned();
            assert!(
                allowed(id).contains(&state.as_str()),
                "job {id} is {state}, expected one of {:?}",
                allowed(id)
            );
            here.insert(id.clone(), state);
        }
        if let Some(before) = &states {
            assert!(
                before == &here,
                "node {leader} disagrees with the previous leader"
            );
        }
        states = Some(here);
        nodes[leader].stop();
        running.retain(|&i| i != leader);
    }
}

/// A PostgreSQL primary with a synchronous streaming standby in a temporary directory,
/// both stopped when dropped.
struct PgPair {
    dir: tempfile::TempDir,
    primary: u16,
    standby: u16,
}

/// Runs a PostgreSQL program (as the `postgres` user when root: initdb refuses root).
fn pg_run(name: &str, args: &[&str]) {
    let out = as_owner(bin(name))
        .args(args)
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgPair {
    fn start() -> PgPair {
        let dir = tempfile::Builder::new()
            .prefix("flinger-pgpair-")
            .tempdir()
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let path = |p: &str| dir.path().join(p).display().to_string();
        pg_run(
            "initdb",
            &[
                "-D",
                &path("p"),
                "--auth=trust",
                "-U",
                "flinger",
                "--no-sync",
            ],
        );
        let conf = format!(
            "wal_level = replica\nmax_wal_senders = 4\n\
             listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            dir.path().display()
        );
        let conf_path = dir.path().join("p/postgresql.conf");
        let append = |text: &str| {
            let mut all = std::fs::read_to_string(&conf_path).unwrap();
            all.push_str(text);
            std::fs::write(&conf_path, all).unwrap();
        };
        append(&conf);
        // Each port is picked just before its server binds it (another when it was taken).
        let primary = start_on_free_port(&dir.path().join("p"), &dir.path().join("p.log"), |p| {
            format!("-p {p}")
        });
        pg_run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.to_string(),
                "-U",
                "flinger",
                "-D",
                &path("s"),
                "-R",
                "-X",
                "stream",
            ],
        );
        let standby = start_on_free_port(&dir.path().join("s"), &dir.path().join("s.log"), |p| {
            format!("-p {p}")
        });
        // Commits wait for the standby from now on. Set after the base backup, so the
        // standby, once promoted, does not wait for a standby of its own.
        append("synchronous_standby_names = '*'\n");
        pg_run("pg_ctl", &["-D", &path("p"), "reload"]);
        PgPair {
            dir,
            primary,
            standby,
        }
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }

    /// Both servers, the writable one chosen at each connection.
    fn url(&self) -> String {
        format!(
            "postgres://flinger@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
            self.primary, self.standby
        )
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for data in ["p", "s"] {
            let _ = as_owner(bin("pg_ctl"))
                .args(["-D", &self.path(data), "-m", "immediate", "stop"])
                .output();
        }
    }
}

#[tokio::test]
async fn every_acknowledged_change_survives_when_postgresql_fails_over_to_its_synchronous_standby()
{
    let pair = PgPair::start();
    let url = pair.url();
    let primary = format!("postgres://flinger@127.0.0.1:{}/postgres", pair.primary);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(
        &primary,
        "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
    ) != "sync"
    {
        assert!(
            Instant::now() < deadline,
            "the standby never became synchronous: {:?}, synchronous_standby_names {:?}",
            sql(
                &primary,
                "SELECT string_agg(sync_state, ',') FROM pg_stat_replication"
            ),
            sql(&primary, "SHOW synchronous_standby_names"),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = node(&url);
    assert_eq!(leader_of(&[&a.http()]).await, 0);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(a.submit(&json!({"job_queue": "pgfail", "n": i})).await);
    }
    assert_eq!(
        a.pop_id(&["pgfail"]).await.as_deref(),
        Some(ids[0].as_str())
    );
    a.cancel(&ids[1]).await.expect_status(200);
    // The primary dies; the synchronous standby is promoted. flinger is not restarted.
    pg_run(
        "pg_ctl",
        &["-D", &pair.path("p"), "-m", "immediate", "stop"],
    );
    pg_run("pg_ctl", &["-D", &pair.path("s"), "-w", "promote"]);
    let after = submit_retrying(&a.http(), &json!({"job_queue": "pgfail", "n": 20})).await;
    assert_eq!(a.job_state(&ids[0]).await, "running");
    assert_eq!(a.job_state(&ids[1]).await, "cancelled");
    for id in &ids[2..] {
        assert_eq!(a.job_state(id).await, "waiting");
    }
    assert_eq!(a.job_state(&after).await, "waiting");
    assert_eq!(
        a.pop_id(&["pgfail"]).await.as_deref(),
        Some(ids[2].as_str())
    );
    assert!(
        a.stderr_lines_once(|l| l.contains("stepping down as leader"))
            .await
            .iter()
            .any(|l| l.contains("stepping down as leader")),
        "the node did not notice the primary's death"
    );
}
