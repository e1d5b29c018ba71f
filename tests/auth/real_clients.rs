//! The real upstream `testflinger-cli` and `testflinger-agent` against a server with access
//! control on: a priority job submitted with credentials, run by the agent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{client_command, printed_secret};
use crate::util::{upstream, TestServer};

/// Writes the agent's config and starts `testflinger-agent` against `server`.
fn start_agent(dir: &Path, server: &str, queue: &str, token_file: &Path) -> Child {
    let config = format!(
        "agent_id: lab-agent-1\nserver_address: {server}\npolling_interval: 1\n\
         execution_basedir: {d}/run\nlogging_basedir: {d}/logs\nresults_basedir: {d}/results\n\
         logging_quiet: true\njob_queues:\n  - {queue}\n\
         test_command: echo ran-by-the-upstream-agent\n",
        d = dir.display()
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    Command::new(upstream::agent())
        .arg("-c")
        .arg(&path)
        .arg("--token-file")
        .arg(token_file)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start testflinger-agent")
}

/// Kills a child process we started, whatever it is doing.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn real_cli_submits_a_priority_job_and_real_agent_runs_it_when_access_control_is_on() {
    let mut srv = TestServer::start_with(&["--access-control", "on"]);
    srv.stop();
    printed_secret(&client_command(
        &srv,
        &["add", "lab-agent", "--role", "agent"],
    ));
    let cli_secret = printed_secret(&client_command(
        &srv,
        &["add", "ci-user", "--max-priority", "*=100"],
    ));
    let token_file = srv.dir().join("agent-token.json");
    let report = client_command(
        &srv,
        &[
            "token-file",
            "lab-agent",
            "--out",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(
        !report.contains(&std::fs::read_to_string(&token_file).unwrap()[20..40]),
        "the token was printed"
    );
    srv.start_again();
    let base = srv.base_url();
    let work = tempfile::tempdir().unwrap();
    let _agent = Reaped(start_agent(work.path(), &base, "auth-lab", &token_file));
    // Wait until the agent has registered its queue (it authenticates with the token file).
    let admin_free = lab_contributor_get(&srv, "/v1/queues/auth-lab/agents").await;
    assert!(admin_free, "the agent never registered on its queue");
    let job = work.path().join("job.yaml");
    std::fs::write(
        &job,
        "job_queue: auth-lab\njob_priority: 42\ntest_data:\n  test_cmds: unused\n",
    )
    .unwrap();
    let home = work.path().join("cli-home");
    let out = Command::new(upstream::cli())
        .args([
            "--server",
            &base,
            "submit",
            "--client_id",
            "ci-user",
            "--secret_key",
            &cli_secret,
            "--quiet",
        ])
        .arg(&job)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()
        .expect("run testflinger-cli");
    assert!(
        out.status.success(),
        "cli submit failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stored = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(stored["job_priority"], 42);
    // The agent runs it to completion and reports with its own credential.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let result = srv.get(&format!("/v1/result/{id}")).await.expect_json();
        if result["job_state"] == "complete" {
            assert_eq!(result["test_status"], 0, "{result}");
            let log = srv
                .get(&format!("/v1/result/{id}/log/output"))
                .await
                .expect_json();
            assert!(
                log.to_string().contains("ran-by-the-upstream-agent"),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not finish the job: {result}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The same priority job is refused to an anonymous CLI (401 from the server).
    let anon = Command::new(upstream::cli())
        .args(["--server", &base, "submit", "--quiet"])
        .arg(&job)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", work.path().join("other-config"))
        .stdin(Stdio::null())
        .output()
        .expect("run testflinger-cli");
    assert!(
        !anon.status.success(),
        "an anonymous priority submission was accepted"
    );
}

/// Polls a contributor-readable listing until it answers 200 (at most a minute).
async fn lab_contributor_get(srv: &TestServer, path: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if srv.get(path).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}
