//! Failover under fire: clients submitting, popping and cancelling through every node
//! while leaders are killed (-9) and paused, and PostgreSQL itself failing over to its
//! synchronous standby: nothing acknowledged is lost or handed out twice.

use super::*;

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
