//! The real upstream `testflinger-agent` run against a test server, and `testflinger-cli`
//! commands against it: what a lab does, end to end.
//!
//! [`RealAgent::start`] writes an agent config (JSON, which the agent's YAML loader reads)
//! into a temporary directory with the agent's run, log and results folders, the queues it
//! serves and a shell command per phase, and starts `testflinger-agent -c <config>` polling
//! every second. The phase commands run in the job's run directory, where the agent reads
//! `<phase>-serial.log` after the phase and posts it as the serial log. Stop it with
//! [`RealAgent::stop`] (SIGINT: the agent exits on KeyboardInterrupt); dropping it kills it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::upstream;
use super::TestServer;

/// How an agent is set up.
pub struct AgentSpec {
    /// `agent_id`.
    pub name: String,
    /// `job_queues`.
    pub queues: Vec<String>,
    /// `(phase, shell command)`: `setup`, `provision`, `test`, ... (`<phase>_command`).
    pub commands: Vec<(String, String)>,
    /// `--token-file` (the agent reads a refresh token from it when it exists). Default: a
    /// file that does not exist in the agent's directory, so the agent is anonymous.
    pub token_file: Option<PathBuf>,
    /// More config keys (e.g. `advertised_queues`), merged over the defaults.
    pub extra: Map<String, Value>,
}

impl AgentSpec {
    /// An agent `name` serving `queues`, with no phase commands yet.
    pub fn new(name: &str, queues: &[&str]) -> AgentSpec {
        AgentSpec {
            name: name.to_owned(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            commands: Vec::new(),
            token_file: None,
            extra: Map::new(),
        }
    }

    /// Runs `command` (a shell command line) in `phase`.
    pub fn command(mut self, phase: &str, command: &str) -> AgentSpec {
        self.commands.push((phase.to_owned(), command.to_owned()));
        self
    }
}

/// A running `testflinger-agent`.
pub struct RealAgent {
    child: Child,
    name: String,
    dir: tempfile::TempDir,
}

impl RealAgent {
    /// Starts the agent against `srv`.
    pub fn start(srv: &TestServer, spec: AgentSpec) -> RealAgent {
        let dir = tempfile::Builder::new()
            .prefix("flinger-agent-")
            .tempdir()
            .expect("a temporary agent directory");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let mut config = json!({
            "agent_id": spec.name,
            "server_address": srv.base_url(),
            "polling_interval": 1,
            "execution_basedir": path("run"),
            "logging_basedir": path("logs"),
            "results_basedir": path("results"),
            "logging_level": "DEBUG",
            "job_queues": spec.queues,
        });
        let map = config.as_object_mut().expect("an object");
        for (phase, command) in &spec.commands {
            map.insert(format!("{phase}_command"), Value::from(command.as_str()));
        }
        map.extend(spec.extra);
        let config_path = dir.path().join("agent.conf");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap())
            .expect("write the agent config");
        let token_file = spec
            .token_file
            .unwrap_or_else(|| dir.path().join("no-refresh-token"));
        let console = File::create(dir.path().join("console.log")).expect("agent console log");
        let mut command = Command::new(upstream::agent());
        // Python installs its KeyboardInterrupt handler only when SIGINT is not ignored at
        // start-up, and a shell without job control starts background commands with SIGINT
        // ignored: without this, `stop` would depend on how the test binary was launched.
        // SAFETY: signal(2) is async-signal-safe, and nothing else runs in the forked child
        // before exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = command
            .arg("-c")
            .arg(&config_path)
            .arg("--token-file")
            .arg(&token_file)
            .current_dir(dir.path())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("clone a file handle"))
            .stderr(console)
            .spawn()
            .expect("start testflinger-agent");
        RealAgent {
            child,
            name: spec.name,
            dir,
        }
    }

    /// The agent's own directory (config, `run/`, `logs/`, `results/`, `console.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the agent printed so far (its log), for assertion messages.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the agent has reported itself `waiting` to `srv` (it does
    /// so only after it has posted a job's outcome and cleared its job id), then
    /// [`RealAgent::stop`]s it: a job seen `complete` does not yet mean the agent is idle.
    pub async fn stop_when_idle(&mut self, srv: &TestServer) -> ExitStatus {
        let path = format!("/v1/agents/data/{}", self.name);
        self.wait_until(
            "report itself waiting",
            Duration::from_secs(30),
            async || {
                let resp = srv.get(&path).await;
                resp.status == 200 && resp.json()["state"] == "waiting"
            },
        )
        .await;
        self.stop()
    }

    /// Checks `done` every 100 ms until it holds. Panics with the agent's console after
    /// `limit`, or at once when the agent has exited; `what` says what was awaited.
    pub async fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}) before {what}:\n{}",
                    self.console()
                );
            }
            if done().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for the agent to {what}; it said:\n{}",
                self.console()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the agent with SIGINT (as Ctrl-C) and waits for it; SIGKILL after 20 s.
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().expect("reap the agent")
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `testflinger-cli --server <srv> <args>` to completion (at most `timeout`), with its
/// configuration and history in a fresh temporary home.
pub fn cli(srv: &TestServer, args: &[&str], timeout: Duration) -> Output {
    let home = tempfile::Builder::new()
        .prefix("flinger-cli-")
        .tempdir()
        .expect("a temporary home");
    let mut child = Command::new(upstream::cli())
        .arg("--server")
        .arg(srv.base_url())
        .args(args)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start testflinger-cli");
    // Read both pipes on threads so a large output cannot block the CLI.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the CLI") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("reap the CLI");
            panic!("testflinger-cli {args:?} did not finish within {timeout:?} ({status})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("reader").unwrap_or_default(),
        stderr: err.join().expect("reader").unwrap_or_default(),
    }
}
