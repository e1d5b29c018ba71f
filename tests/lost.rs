//! Lost-agent recovery: a running job whose agent goes silent past its allowance (the
//! job's `output_timeout`/`global_timeout` by phase, plus `--lost-agent-grace-secs`) is
//! ended as `cancelled` with a `lost_agent` result field, or requeued once when it was
//! lost before provisioning; late posts still merge; the agent record says `offline`;
//! the CLI's `poll` ends; the decision survives a restart.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{job_id_of, multipart, upstream, Http, Part, TestServer};

/// Short settings: one second of grace (checked every second).
const FAST: &[&str] = &["--lost-agent-grace-secs", "1"];

/// A fake agent speaking HTTP like the stock one: registers (gets the `agent_name`
/// cookie), pops with it, reports states and checks its job with it.
struct FakeAgent {
    http: Http,
    cookie: String,
}

impl FakeAgent {
    async fn register(srv: &TestServer, name: &str) -> FakeAgent {
        let r = srv
            .post_json(
                &format!("/v1/agents/data/{name}"),
                &json!({"state": "waiting", "queues": ["q"]}),
            )
            .await;
        r.expect_status(200);
        let cookie = r
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("agent_name cookie")
            .to_string();
        FakeAgent {
            http: srv.http(),
            cookie,
        }
    }

    /// After a restart of `srv` (a new port): the same agent, cookie and all.
    fn reconnect(&mut self, srv: &TestServer) {
        self.http = srv.http();
    }

    async fn pop(&self) -> Option<Value> {
        let r = self
            .http
            .get_with_headers("/v1/job?queue=q", &[("cookie", &self.cookie)])
            .await;
        (r.status == 200).then(|| r.json())
    }

    async fn post_result(&self, id: &str, body: Value) {
        self.http
            .request(
                "POST",
                &format!("/v1/result/{id}"),
                &[
                    ("content-type", "application/json"),
                    ("cookie", &self.cookie),
                ],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
            .expect_status(200);
    }

    /// What the stock agent does every 10 s while a command runs: read the job's state.
    async fn check_state(&self, id: &str) {
        self.http
            .get_with_headers(&format!("/v1/result/{id}"), &[("cookie", &self.cookie)])
            .await
            .expect_status(200);
    }
}

/// Polls the job's state until `want` or `within` passes; returns how long it took.
async fn wait_for_state(srv: &TestServer, id: &str, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let state = srv.job_state(id).await;
        if state == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "job {id} still {state:?} after {within:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn job_is_cancelled_with_lost_agent_reason_when_agent_is_silent_past_its_allowance() {
    let mut srv = TestServer::start_with(FAST);
    let agent = FakeAgent::register(&srv, "dut-lost").await;
    // Allowance in `test`: output_timeout 3 + the agent's 10 s check + grace 1 = 14 s.
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 3, "test_data": {"test_cmds": "true"}}))
        .await;
    assert_eq!(agent.pop().await.map(|j| job_id_of(&j)), Some(id.clone()));
    agent.post_result(&id, json!({"job_state": "test"})).await;

    // An agent that keeps checking its job (as the stock agent does every 10 s) is alive,
    // well past the allowance measured from the dispatch.
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        agent.check_state(&id).await;
        assert_eq!(
            srv.job_state(&id).await,
            "test",
            "an agent heard every second is not lost"
        );
    }
    // A client reading the result (the CLI's poll, no agent cookie) does not keep it alive.
    let silent_since = Instant::now();
    let took = wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
    assert!(
        silent_since.elapsed() >= Duration::from_secs(13),
        "ended after {took:?} of silence, before the allowance"
    );
    let result = srv.result(&id).await;
    let lost = &result["lost_agent"];
    assert_eq!(lost["action"], "cancelled", "{result}");
    assert_eq!(lost["phase"], "test", "{result}");
    assert_eq!(lost["agent"], "dut-lost", "{result}");
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allowance")),
        "{result}"
    );
    assert!(
        lost["last_heard_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{result}"
    );

    // The agent record says it is gone.
    let record = offline_record(&srv, "dut-lost").await;
    assert!(
        record["comment"].as_str().is_some_and(|c| c.contains(&id)
            && c.contains("admin set agent-status --status online --agents dut-lost")
            && c.contains("to /v1/agents/data/dut-lost")),
        "{record}"
    );

    // A late post from the agent is merged, and the terminal state stays.
    agent
        .post_result(&id, json!({"job_state": "complete", "test_status": 0}))
        .await;
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["test_status"], 0, "{result}");

    // The decision is in the log: the same after a restart.
    srv.restart();
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["lost_agent"]["phase"], "test", "{result}");
}

#[tokio::test]
async fn job_lost_in_setup_is_requeued_once_then_cancelled_when_lost_again() {
    let srv = TestServer::start_with(FAST);
    let first = FakeAgent::register(&srv, "dut-a").await;
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 1, "test_data": {"test_cmds": "true"}}))
        .await;
    assert_eq!(first.pop().await.map(|j| job_id_of(&j)), Some(id.clone()));
    first.post_result(&id, json!({"job_state": "setup"})).await;

    // Nothing ran on the device yet: back into the queue, as resubmitted.
    wait_for_state(&srv, &id, "resubmitted", Duration::from_secs(60)).await;
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["action"], "requeued", "{result}");
    assert_eq!(result["lost_agent"]["agent"], "dut-a", "{result}");

    // Another agent takes it and is lost in setup too: this time it ends.
    let second = FakeAgent::register(&srv, "dut-b").await;
    assert_eq!(second.pop().await.map(|j| job_id_of(&j)), Some(id.clone()));
    second.post_result(&id, json!({"job_state": "setup"})).await;
    wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["action"], "cancelled", "{result}");
    assert_eq!(result["lost_agent"]["agent"], "dut-b", "{result}");
    // The first agent, were it to come back, does not get it again.
    assert!(first.pop().await.is_none());
}

#[tokio::test]
async fn job_lost_in_setup_is_cancelled_when_requeue_is_off() {
    let srv = TestServer::start_with(&[
        "--lost-agent-grace-secs",
        "1",
        "--lost-agent-requeue",
        "false",
    ]);
    let agent = FakeAgent::register(&srv, "dut-c").await;
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 1}))
        .await;
    assert!(agent.pop().await.is_some());
    agent.post_result(&id, json!({"job_state": "setup"})).await;
    wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
}

/// Runs `testflinger-cli poll <id>` to its end, returning its output.
fn cli_poll(base: &str, id: &str, home: &std::path::Path) -> std::process::Output {
    std::process::Command::new(upstream::cli())
        .args(["--server", base, "poll", id])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_DATA_HOME", home)
        .output()
        .expect("run testflinger-cli")
}

#[tokio::test]
async fn cli_poll_ends_when_the_server_cancels_the_job_of_a_lost_agent() {
    let srv = TestServer::start_with(FAST);
    let agent = FakeAgent::register(&srv, "dut-cli").await;
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 2}))
        .await;
    assert!(agent.pop().await.is_some());
    agent.post_result(&id, json!({"job_state": "test"})).await;
    // The agent dies now; the CLI polls until the server ends the job.
    let base = srv.base_url();
    let home = srv.dir().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let poll_id = id.clone();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cli_poll(&base, &poll_id, &home))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "poll exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.job_state(&id).await, "cancelled");
    // It ended because of the server's decision (the CLI polls every 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "poll took {:?}",
        started.elapsed()
    );
}

/// A real `testflinger-agent` process (the upstream agent from the venv) serving queue `q`,
/// with its directories under `dir`; killed (SIGKILL) when dropped.
struct RealAgent {
    child: std::process::Child,
}

impl RealAgent {
    fn spawn(srv: &TestServer, name: &str, setup: &str, test: &str) -> RealAgent {
        RealAgent::spawn_with(srv, name, &[("setup", setup), ("test", test)])
    }

    /// An agent running `<phase>_command` for each `(phase, command)`.
    fn spawn_with(srv: &TestServer, name: &str, commands: &[(&str, &str)]) -> RealAgent {
        let dir = srv.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let mut config = format!(
            "agent_id: {name}\nserver_address: {}\npolling_interval: 1\njob_queues: [q]\n\
             execution_basedir: {d}/run\nlogging_basedir: {d}/logs\nresults_basedir: {d}/results\n",
            srv.base_url()
        );
        for (phase, command) in commands {
            config.push_str(&format!("{phase}_command: {command:?}\n"));
        }
        let path = dir.join("agent.yaml");
        std::fs::write(&path, config).unwrap();
        let child = std::process::Command::new(upstream::agent())
            .arg("-c")
            .arg(&path)
            .arg("--token-file")
            .arg(dir.join("token"))
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.stderr")).unwrap())
            .spawn()
            .expect("start testflinger-agent");
        RealAgent { child }
    }

    /// SIGKILL: the agent gets no chance to report anything.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test]
async fn job_is_ended_within_its_allowance_when_the_real_agent_is_killed_mid_test() {
    let srv = TestServer::start_with(FAST);
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 4, "test_data": {"test_cmds": "x"}}))
        .await;
    let mut agent = RealAgent::spawn(&srv, "real-dut", "true", "echo started; sleep 20");
    wait_for_state(&srv, &id, "test", Duration::from_secs(90)).await;
    agent.kill9();
    let killed = Instant::now();
    wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
    // Allowance: output_timeout 4 + 10 + grace 1, plus the 1 s check: never long after.
    assert!(
        killed.elapsed() < Duration::from_secs(50),
        "took {:?}",
        killed.elapsed()
    );
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["agent"], "real-dut", "{result}");
    assert_eq!(result["lost_agent"]["phase"], "test", "{result}");
    offline_record(&srv, "real-dut").await;
}

/// The stock agent checks neither the output timeout nor cancellation while it
/// provisions (upstream `job.py`: output timeouts in the test phase only, no cancellation
/// during provision), so a provisioning command may stay silent, and the agent with it,
/// until `global_timeout`: a job provisioning quietly for longer than its
/// `output_timeout` is not taken for a lost agent's.
#[tokio::test]
async fn job_provisioning_silently_past_its_output_timeout_is_not_lost_when_the_agent_lives() {
    let srv = TestServer::start_with(FAST);
    let id = srv
        .submit(
            &json!({"job_queue": "q", "output_timeout": 2, "global_timeout": 600,
            "provision_data": {"url": "http://example.com/image.img.xz"},
            "test_data": {"test_cmds": "x"}}),
        )
        .await;
    let _agent = RealAgent::spawn_with(
        &srv,
        "quiet-flasher",
        &[
            ("setup", "true"),
            ("provision", "sleep 20"),
            ("test", "echo tested"),
        ],
    );
    wait_for_state(&srv, &id, "provision", Duration::from_secs(90)).await;
    // Allowance by the output timeout: 2 + 10 + grace 1 s; provisioning takes 20 s.
    wait_for_state(&srv, &id, "complete", Duration::from_secs(120)).await;
    let result = srv.result(&id).await;
    assert!(result.get("lost_agent").is_none(), "{result}");
}

/// An agent restarted mid-job (SIGKILL, then started again, as a crashed service is)
/// abandons the job it ran: the job is lost, but the agent is not. It said so when it
/// started again (the stock agent posts `waiting`), so the server ends the job without
/// marking the agent offline, which would idle the stock agent until an admin stepped in.
#[tokio::test]
async fn agent_restarted_mid_job_stays_in_service_when_its_old_job_is_ended_as_lost() {
    let srv = TestServer::start_with(FAST);
    // Allowance in `test`: 20 + 10 + 1 s, time for the agent to start again on a busy box.
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 20, "test_data": {"test_cmds": "x"}}))
        .await;
    let (setup, test) = ("true", "echo started; sleep 60");
    let mut agent = RealAgent::spawn(&srv, "real-restarted", setup, test);
    wait_for_state(&srv, &id, "test", Duration::from_secs(90)).await;
    agent.kill9();
    // Started again with a quick test command: the next job need not sleep a minute
    // (it ran 60 s of its 90-s deadline, which a loaded machine could miss).
    let _agent = RealAgent::spawn(&srv, "real-restarted", setup, "echo started");
    // It starts by saying it is waiting (while it ran the job, its record said `test`).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = srv
            .get("/v1/agents/data/real-restarted")
            .await
            .expect_json();
        if record["state"] == "waiting" {
            break;
        }
        assert!(Instant::now() < deadline, "never back: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        srv.job_state(&id).await,
        "test",
        "decided before the restart"
    );
    wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["agent"], "real-restarted", "{result}");
    // The offline mark would follow the job's end within moments (two actors).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = srv
        .get("/v1/agents/data/real-restarted")
        .await
        .expect_json();
    assert_ne!(record["state"], "offline", "{record}");
    // And the agent goes on taking jobs.
    let next = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "x"}}))
        .await;
    wait_for_state(&srv, &next, "complete", Duration::from_secs(90)).await;
}

/// The record of `agent`, once it says `offline`. The sweep that ends a lost agent's job
/// writes the agent record just after the job (two actors), so a reader may see the
/// job's end first: wait up to 10 s for the record.
async fn offline_record(srv: &TestServer, agent: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = srv
            .get(&format!("/v1/agents/data/{agent}"))
            .await
            .expect_json();
        if record["state"] == "offline" {
            return record;
        }
        assert!(Instant::now() < deadline, "never offline: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn job_is_requeued_once_when_the_real_agent_is_killed_in_setup() {
    let srv = TestServer::start_with(FAST);
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 3, "test_data": {"test_cmds": "x"}}))
        .await;
    let mut agent = RealAgent::spawn(&srv, "real-setup", "sleep 20", "true");
    wait_for_state(&srv, &id, "setup", Duration::from_secs(90)).await;
    agent.kill9();
    wait_for_state(&srv, &id, "resubmitted", Duration::from_secs(60)).await;
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["action"], "requeued", "{result}");
    assert_eq!(result["lost_agent"]["agent"], "real-setup", "{result}");
    // A healthy agent then runs it to the end.
    let _healthy = RealAgent::spawn(&srv, "real-ok", "true", "echo fine");
    wait_for_state(&srv, &id, "complete", Duration::from_secs(120)).await;
}

/// The watch holds exactly the running jobs: the registry stops watching a job in the turn
/// that takes it out of the running states (finished, cancelled, requeued by the
/// lost-agent rule), so a job requeued and handed out again is watched again, and no
/// later forget undoes that. Driven in-process to read the watch.
#[tokio::test(flavor = "multi_thread")]
async fn the_watch_holds_exactly_the_running_jobs_through_finish_cancel_and_requeue() {
    use flinger::actors::ask;
    use flinger::actors::registry::RegistryMsg;

    let core = crate::util::InProcess::start().await;
    let (http, svc) = (&core.http, &core.services);
    let watched = |svc: &flinger::actors::Services| svc.watch.len();

    let done = http.submit_to("q").await;
    assert_eq!(http.pop_id(&["q"]).await.as_deref(), Some(done.as_str()));
    assert_eq!(watched(svc), 1, "a dispatched job is watched");
    http.post_result(&done, &json!({"job_state": "setup"}))
        .await;
    assert_eq!(watched(svc), 1, "a running job stays watched");
    http.post_result(&done, &json!({"job_state": "complete"}))
        .await;
    assert_eq!(watched(svc), 0, "a finished job is not");

    let cancelled = http.submit_to("q").await;
    assert_eq!(
        http.pop_id(&["q"]).await.as_deref(),
        Some(cancelled.as_str())
    );
    assert_eq!(watched(svc), 1);
    http.cancel(&cancelled).await.expect_status(200);
    assert_eq!(watched(svc), 0, "a cancelled job is not");

    let lost = http.submit_to("q").await;
    assert_eq!(http.pop_id(&["q"]).await.as_deref(), Some(lost.as_str()));
    let id = flinger::model::JobId::parse(&lost).unwrap();
    let (ticket, _) = ask(&*svc.registry, |port| RegistryMsg::Lose {
        id,
        phase: "running".into(),
        last_heard: 0,
        requeue: true,
        port,
    })
    .await
    .unwrap()
    .unwrap()
    .expect("a running job is lost");
    svc.journal.durable(ticket).await.unwrap();
    assert_eq!(http.job_state(&lost).await, "resubmitted", "requeued");
    assert_eq!(watched(svc), 0, "a requeued job is not watched");
    assert_eq!(http.pop_id(&["q"]).await.as_deref(), Some(lost.as_str()));
    assert_eq!(watched(svc), 1, "handed out again, it is watched again");
    core.stop().await;
}

/// Only accepted requests are contact: the stock agent retries an artifact upload refused
/// as too large forever (between polls, never posting the job complete), so its job must
/// still end when the allowance passes rather than stay in its last phase for good.
#[tokio::test]
async fn refused_artifact_uploads_do_not_keep_a_job_from_being_ended_as_lost() {
    let srv = TestServer::start_with(&[
        "--lost-agent-grace-secs",
        "1",
        "--max-artifact-bytes",
        "1000",
    ]);
    let agent = FakeAgent::register(&srv, "dut-stuck").await;
    // Allowance in `cleanup`: output_timeout 3 + the agent's 10 s check + grace 1 = 14 s.
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 3, "test_data": {"test_cmds": "true"}}))
        .await;
    assert_eq!(agent.pop().await.map(|j| job_id_of(&j)), Some(id.clone()));
    agent
        .post_result(&id, json!({"job_state": "cleanup"}))
        .await;
    let too_large = vec![7u8; 2000];
    let (content_type, body) = multipart(&[Part::file("file", "artifacts.tar.gz", &too_large)]);
    let stuck_since = Instant::now();
    let mut refused = 0;
    while srv.job_state(&id).await == "cleanup" {
        assert!(
            stuck_since.elapsed() < Duration::from_secs(60),
            "the job of an agent retrying a refused upload ({refused} times) was never ended"
        );
        let r = agent
            .http
            .request(
                "POST",
                &format!("/v1/result/{id}/artifact"),
                &[("content-type", &content_type), ("cookie", &agent.cookie)],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 413, "{}", r.text_preview());
        refused += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        stuck_since.elapsed() >= Duration::from_secs(13),
        "ended after {:?}, before the allowance",
        stuck_since.elapsed()
    );
    let result = srv.result(&id).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["lost_agent"]["phase"], "cleanup", "{result}");
}

/// An operator deleting the record of an agent that holds a job leaves the job to this
/// watch: it stays as it was, and ends once the agent is silent past its allowance; the
/// server then makes no record just to mark the agent offline (the deletion stands).
#[tokio::test]
async fn job_of_an_agent_whose_record_was_deleted_ends_as_lost_and_no_record_is_made() {
    let srv = TestServer::start_with(&[
        "--lost-agent-grace-secs",
        "1",
        "--lost-agent-requeue",
        "false",
    ]);
    let agent = FakeAgent::register(&srv, "dut-deleted").await;
    let id = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 1}))
        .await;
    assert!(agent.pop().await.is_some());
    agent.post_result(&id, json!({"job_state": "setup"})).await;
    srv.request("DELETE", "/v1/agents/data/dut-deleted", &[], Vec::new())
        .await
        .expect_status(200);
    assert_eq!(srv.job_state(&id).await, "setup", "left as it was");
    wait_for_state(&srv, &id, "cancelled", Duration::from_secs(60)).await;
    let result = srv.result(&id).await;
    assert_eq!(result["lost_agent"]["agent"], "dut-deleted", "{result}");
    // The pass that ended the job goes on to the agent's record: none.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv
        .stderr_lines()
        .iter()
        .any(|l| l.contains("lost job's agent has no record"))
    {
        assert!(
            Instant::now() < deadline,
            "the watch never got to the agent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.get("/v1/agents/data/dut-deleted")
        .await
        .expect_error(404);
}

/// An agent that takes a job while another one handed to it is unfinished has left that
/// one (the stock agent runs one job at a time: it was restarted): the old job is lost at
/// once, as the watch would find it lost later, with a reason naming the new job. A job
/// the agent finished, and another agent's job, are left alone; the decision is logged,
/// so a restart shows the same.
#[tokio::test]
async fn job_is_cancelled_at_once_when_its_agent_takes_another_job() {
    // Default grace (300 s) and long timeouts: the watch decides nothing in this test.
    let mut srv = TestServer::start();
    let mut x = FakeAgent::register(&srv, "dut-x").await;
    let mut y = FakeAgent::register(&srv, "dut-y").await;
    let long = json!({"job_queue": "q", "output_timeout": 3600, "test_data": {"test_cmds": "x"}});

    // A job x finished before: never touched again.
    let done = srv.submit(&long).await;
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(done.clone()));
    x.post_result(&done, json!({"job_state": "test"})).await;
    x.post_result(&done, json!({"job_state": "complete"})).await;

    let old = srv.submit(&long).await;
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(old.clone()));
    x.post_result(&old, json!({"job_state": "test"})).await;
    let other = srv.submit(&long).await;
    assert_eq!(y.pop().await.map(|j| job_id_of(&j)), Some(other.clone()));
    y.post_result(&other, json!({"job_state": "test"})).await;

    // x comes back (restarted) and takes the next job: its old one ends in that pop.
    let next = srv.submit(&long).await;
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(next.clone()));
    check_left_job(&srv, [&old, &other, &done, &next]).await;
    // x is plainly in service: not marked offline.
    let record = srv.get("/v1/agents/data/dut-x").await.expect_json();
    assert_ne!(record["state"], "offline", "{record}");
    // Its retried pop gets the new job, never the old one.
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(next.clone()));

    srv.restart();
    x.reconnect(&srv);
    y.reconnect(&srv);
    check_left_job(&srv, [&old, &other, &done, &next]).await;
    // y taking a job now ends its own unfinished one, still not x's.
    let last = srv.submit(&long).await;
    assert_eq!(y.pop().await.map(|j| job_id_of(&j)), Some(last.clone()));
    let result = srv.result(&other).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["lost_agent"]["agent"], "dut-y", "{result}");
    assert_eq!(srv.job_state(&next).await, "running");
}

/// What [`job_is_cancelled_at_once_when_its_agent_takes_another_job`] expects, live and
/// after a restart: `old` ended for `dut-x` taking `next`; `other` and `done` untouched.
async fn check_left_job(srv: &TestServer, [old, other, done, next]: [&String; 4]) {
    let result = srv.result(old).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    let lost = &result["lost_agent"];
    assert_eq!(lost["action"], "cancelled", "{result}");
    assert_eq!(lost["agent"], "dut-x", "{result}");
    assert_eq!(lost["phase"], "test", "{result}");
    let reason = lost["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(next.as_str()) && reason.contains("took another job"),
        "{result}"
    );
    assert!(
        lost["decided_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{result}"
    );
    // Another agent's job and a finished job are untouched.
    let result = srv.result(other).await;
    assert_eq!(result["job_state"], "test", "{result}");
    assert!(result.get("lost_agent").is_none(), "{result}");
    let result = srv.result(done).await;
    assert_eq!(result["job_state"], "complete", "{result}");
    assert!(result.get("lost_agent").is_none(), "{result}");
    assert_eq!(srv.job_state(next).await, "running");
}

/// A job its agent left in `setup` (nothing ran on the device) goes back into its queue,
/// once, as for a silent agent; the next agent gets it, ahead of later jobs.
#[tokio::test]
async fn job_left_in_setup_is_requeued_at_once_when_its_agent_takes_another_job() {
    let mut srv = TestServer::start();
    let x = FakeAgent::register(&srv, "dut-x").await;
    let mut y = FakeAgent::register(&srv, "dut-y").await;
    let job = json!({"job_queue": "q", "test_data": {"test_cmds": "x"}});
    let old = srv.submit(&job).await;
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(old.clone()));
    x.post_result(&old, json!({"job_state": "setup"})).await;
    let next = srv.submit(&job).await;
    let later = srv.submit(&job).await;
    assert_eq!(x.pop().await.map(|j| job_id_of(&j)), Some(next.clone()));
    let result = srv.result(&old).await;
    assert_eq!(result["job_state"], "resubmitted", "{result}");
    assert_eq!(result["lost_agent"]["action"], "requeued", "{result}");
    assert_eq!(result["lost_agent"]["phase"], "setup", "{result}");
    assert!(
        result["lost_agent"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(next.as_str())),
        "{result}"
    );

    srv.restart();
    y.reconnect(&srv);
    let result = srv.result(&old).await;
    assert_eq!(result["job_state"], "resubmitted", "{result}");
    assert_eq!(result["lost_agent"]["action"], "requeued", "{result}");
    // Back in its old place: before `later`.
    assert_eq!(y.pop().await.map(|j| job_id_of(&j)), Some(old.clone()));
    y.post_result(&old, json!({"job_state": "setup"})).await;
    // Left in setup a second time: requeued only once, so now it ends.
    assert_eq!(y.pop().await.map(|j| job_id_of(&j)), Some(later.clone()));
    let result = srv.result(&old).await;
    assert_eq!(result["job_state"], "cancelled", "{result}");
    assert_eq!(result["lost_agent"]["agent"], "dut-y", "{result}");
    assert_eq!(srv.job_state(&next).await, "running");
}

/// The real agent, killed mid-test and started again while a job waits, takes that job
/// at once: its old job ends then, not when its allowance (here an hour) runs out.
#[tokio::test]
async fn real_agent_restarted_mid_job_ends_its_old_job_when_it_takes_the_next() {
    let srv = TestServer::start();
    let old = srv
        .submit(&json!({"job_queue": "q", "output_timeout": 3600, "test_data": {"test_cmds": "x"}}))
        .await;
    let mut agent = RealAgent::spawn(&srv, "real-again", "true", "echo started; sleep 60");
    wait_for_state(&srv, &old, "test", Duration::from_secs(90)).await;
    agent.kill9();
    let next = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "x"}}))
        .await;
    let _agent = RealAgent::spawn(&srv, "real-again", "true", "echo fine");
    wait_for_state(&srv, &old, "cancelled", Duration::from_secs(60)).await;
    let result = srv.result(&old).await;
    assert_eq!(result["lost_agent"]["agent"], "real-again", "{result}");
    assert!(
        result["lost_agent"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(next.as_str())),
        "{result}"
    );
    wait_for_state(&srv, &next, "complete", Duration::from_secs(90)).await;
    let record = srv.get("/v1/agents/data/real-again").await.expect_json();
    assert_ne!(record["state"], "offline", "{record}");
}
