//! The process as an operator sees it: the startup log line, `--help`, graceful SIGTERM, and the
//! seed's configuration file (`TESTFLINGER_CONFIG`, else `./testflinger.conf`; flags win).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use crate::util::{flinger_command, run_to_exit, Opts, TestServer};

/// The startup line: `... listening addr=HOST:PORT data_dir=DIR config=SOURCE`.
fn listening_line(srv: &TestServer) -> String {
    srv.stderr_lines()
        .into_iter()
        .find(|l| l.contains(" listening ") && l.contains("addr="))
        .expect("a listening line")
}

#[tokio::test]
async fn startup_line_names_address_data_dir_and_config_when_server_starts() {
    let srv = TestServer::start();
    let line = listening_line(&srv);
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    assert!(line.contains(&format!("addr={addr}")), "{line}");
    assert!(
        line.contains(&format!("data_dir={}", srv.data_dir().display())),
        "{line}"
    );
    assert!(line.contains("config_file="), "{line}");
    assert!(line.contains("INFO"), "{line}");
}

/// What the server writes (log segments, snapshots, uploads, directories) is its user's
/// alone, even when started with a permissive umask: it holds jobs and results.
#[tokio::test]
async fn data_files_are_readable_by_the_servers_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: the test process's own mask, inherited by the server it starts; restored.
    let before = unsafe { libc::umask(0o022) };
    // The file journal: on PostgreSQL the data directory holds nothing to check.
    let mut srv =
        TestServer::start_with(&[crate::util::SNAPSHOT_SOON, &["--journal", "file"]].concat());
    unsafe { libc::umask(before) };
    let id = srv.submit_to("modes-q").await;
    srv.post_multipart(
        &format!("/v1/result/{id}/artifact"),
        "file",
        "a.bin",
        b"bytes",
    )
    .await
    .expect_status(200);
    srv.log_for_a_snapshot().await;
    srv.restart(); // a snapshot on the way
    let mut seen = 0;
    let mut pending = vec![srv.data_dir()];
    // The server runs meanwhile: a file or directory may go between listing and reading.
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.path().display());
            if meta.is_dir() {
                pending.push(entry.path());
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "only {seen} entries");
}

#[tokio::test]
async fn help_documents_every_option_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(dir.path(), &["--help"], &[], Duration::from_secs(20));
    assert!(out.status.success(), "--help exit status {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--bind",
        "--data-dir",
        "--max-job-bytes",
        "--max-result-bytes",
        "--max-output-bytes",
        "--max-artifact-bytes",
        "--workers",
        "--thp",
        "FLINGER_JWT_SIGNING_KEY",
        "FLINGER_SECRETS_KEY",
    ] {
        assert!(
            text.contains(option),
            "--help does not mention {option}:\n{text}"
        );
    }
}

/// A bad value from an environment variable is blamed on the variable (exit 2), not on a
/// flag the user never passed; a bad flag is still blamed on the flag.
#[test]
fn bad_values_from_environment_variables_name_the_variable_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, flag) in [
        ("FLINGER_FSYNC", "never", "--fsync"),
        ("FLINGER_ACCESS_CONTROL", "true", "--access-control"),
        ("FLINGER_RETENTION_SECS", "-1", "--retention-secs"),
        (
            "FLINGER_LOST_AGENT_REQUEUE",
            "maybe",
            "--lost-agent-requeue",
        ),
    ] {
        let out = run_to_exit(dir.path(), &[], &[(var, value)], Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for environment variable {var}"
            )),
            "{var}: {stderr}"
        );
        let out = run_to_exit(
            dir.path(),
            &[&format!("{flag}={value}")],
            &[(var, value)],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag} ")),
            "{flag}: {stderr}"
        );
    }
}

/// `--help` names every option's environment variable and, where the config file may set
/// it, its config key (whether the variable is set or not).
#[test]
fn help_names_every_options_environment_variable_and_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(dir.path(), &["--help"], &[], Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut options: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") && line.starts_with("      --") {
            let name = trimmed.split_whitespace().next().unwrap().to_owned();
            options.push((name, String::new()));
        } else if let Some((_, block)) = options.last_mut() {
            block.push_str(line);
            block.push(' ');
        }
    }
    assert!(options.len() >= 50, "{text}");
    for (name, block) in &options {
        if ["--help", "--version"].contains(&name.as_str()) {
            continue;
        }
        let env = format!("FLINGER_{}", name[2..].replace('-', "_").to_uppercase());
        // `[env: NAME]` for the variables whose values help never shows.
        assert!(
            block.contains(&format!("[env: {env}=]")) || block.contains(&format!("[env: {env}]")),
            "{name}: {block}"
        );
        let no_key = ["--wal-truncate-corruption", "--allow-open-access"];
        assert_eq!(
            block.contains("[config key: "),
            !no_key.contains(&name.as_str()),
            "{name}: {block}"
        );
    }
    assert!(text.contains("[config key: DATA_PATH]") && text.contains("[config key: JWT_LEEWAY]"));
}

/// A data directory that cannot be one (a regular file, a path below one, a parent that
/// cannot be written) is refused naming `--data-dir` and its value, not a path inside it;
/// the server and `flinger client` alike, as a configuration error (exit status 2).
#[test]
fn unusable_data_dir_is_refused_naming_the_setting_and_its_value() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    let below_file = file.join("data");
    let below_locked = locked.join("data");
    let mut cases = vec![
        (file.clone(), "it exists and is not a directory"),
        (
            below_file,
            "cannot create it: a part of its path is not a directory",
        ),
    ];
    if !root {
        cases.push((below_locked, "cannot create it: Permission denied"));
    }
    for (data, wanted) in cases {
        let shown = data.to_str().unwrap();
        for command in [&[][..], &["client", "add", "x"][..]] {
            let mut args = vec!["--bind", "127.0.0.1:0", "--data-dir", shown];
            args.extend_from_slice(command);
            let out = run_to_exit(dir.path(), &args, &[], Duration::from_secs(20));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "--data-dir {shown} (FLINGER_DATA_DIR, config key DATA_PATH): {wanted}"
                )),
                "{args:?}: {stderr}"
            );
        }
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Sizes take binary units wherever they are set (flag, environment, file): `1KiB` is
/// 1024 bytes, and a post past it is 413.
#[tokio::test]
async fn sizes_take_kib_mib_gib_from_flags_environment_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tf.conf");
    std::fs::write(&conf, "MAX_ARTIFACT_BYTES = '3 GiB'\n").unwrap();
    let srv = TestServer::start_with_env(
        &["--max-job-bytes", "1KiB"],
        &[
            ("FLINGER_MAX_RESULT_BYTES", "2MiB"),
            ("TESTFLINGER_CONFIG", conf.to_str().unwrap()),
        ],
    );
    let fits = json!({"job_queue": "q", "pad": "x".repeat(900)});
    assert_eq!(srv.post_json("/v1/job", &fits).await.status, 200);
    let too_big = json!({"job_queue": "q", "pad": "x".repeat(1024)});
    assert_eq!(srv.post_json("/v1/job", &too_big).await.status, 413);
}

/// Limits that would make the server useless (every submit, upload or form field refused,
/// every token request 429, records gone as they are written, a snapshot every few
/// records, a log segment the disk cannot hold), decimal units and a config key set twice
/// are refused at start-up (exit 2), naming what to change.
#[test]
fn useless_limits_decimal_units_and_repeated_config_keys_are_refused_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    let twice = dir.path().join("twice.conf");
    std::fs::write(
        &twice,
        "FSYNC = 'always'\nDATA_PATH = 'd'\nFSYNC = 'interval:5'\n",
    )
    .unwrap();
    let twice = twice.to_str().unwrap();
    /// Flags, environment, what stderr must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 11] = [
        (&["--max-job-bytes", "0"], &[], "--max-job-bytes (FLINGER_MAX_JOB_BYTES, config key MAX_JOB_BYTES) must be at least 256"),
        (&["--max-field-bytes", "0"], &[], "--max-field-bytes (FLINGER_MAX_FIELD_BYTES, config key MAX_FIELD_BYTES) must be at least 256"),
        (&["--snapshot-bytes", "1"], &[], "--snapshot-bytes (FLINGER_SNAPSHOT_BYTES, config key SNAPSHOT_BYTES) must be at least 1048576"),
        (&["--segment-bytes", "1024GiB"], &[], "--segment-bytes (FLINGER_SEGMENT_BYTES, config key SEGMENT_BYTES) must be at most 4294967296"),
        (&["--max-artifact-bytes", "0"], &[], "--max-artifact-bytes (FLINGER_MAX_ARTIFACT_BYTES, config key MAX_ARTIFACT_BYTES) must be at least 256"),
        (&["--token-failures-per-minute", "0"], &[], "--token-failures-per-minute (FLINGER_TOKEN_FAILURES_PER_MINUTE, config key TOKEN_FAILURES_PER_MINUTE) must be at least 1"),
        (&["--retention-secs", "0"], &[], "--retention-secs (FLINGER_RETENTION_SECS, config key RETENTION_SECS) must be at least 1"),
        (&["--max-event-detail-bytes", "0"], &[], "must be at least 64"),
        (&["--max-job-bytes", "1MB"], &[], "expected a size in bytes: a whole number, optionally with KiB, MiB or GiB"),
        (&[], &[("FLINGER_MAX_JOB_BYTES", "1 MB")], "for environment variable FLINGER_MAX_JOB_BYTES"),
        (&[], &[("TESTFLINGER_CONFIG", twice)], "twice.conf line 3: FSYNC is set again (first on line 1)"),
    ];
    for (args, envs, wanted) in cases {
        let mut all = vec!["--bind", "127.0.0.1:0", "--data-dir", "d"];
        all.extend_from_slice(args);
        let out = run_to_exit(dir.path(), &all, envs, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "{args:?} {envs:?}: no {wanted:?} in {stderr}"
        );
    }
    assert!(!dir.path().join("d").exists());
}

#[tokio::test]
async fn sigterm_exits_zero_when_server_is_idle() {
    let mut srv = TestServer::start();
    srv.submit_to("q").await;
    let status = srv.stop();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_when_shutting_down() {
    let mut srv = TestServer::start();
    let addr = srv.base_url().trim_start_matches("http://").to_string();
    let id = uuid::Uuid::new_v4();
    let body = b"{\"job_state\":\"provision\",\"pad\":\"0123456789\"}";
    let (head, tail) = body.split_at(10);
    // Send the headers and half the body, so the request is in flight when SIGTERM arrives.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /v1/result/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(head).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.send_signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(tail).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => panic!(
                "reading in-flight response: {e}; got {:?}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request was not finished: {text:?}"
    );
    let status = srv.wait_for_exit();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn config_file_in_working_directory_is_read_when_no_env_names_one() {
    let srv = TestServer::start_opts(Opts {
        omit_data_dir: true,
        files: vec![(
            "testflinger.conf".into(),
            "DATA_PATH = '{dir}/cwd-conf'\n".into(),
        )],
        ..Opts::default()
    });
    let line = listening_line(&srv);
    let expected = srv.dir().join("cwd-conf");
    assert!(
        line.contains(&format!("data_dir={}", expected.display())),
        "{line}"
    );
}

#[tokio::test]
async fn data_dir_defaults_to_dot_data_when_nothing_configures_it() {
    let srv = TestServer::start_opts(Opts {
        omit_data_dir: true,
        ..Opts::default()
    });
    let line = listening_line(&srv);
    assert!(
        line.contains("data_dir=./data")
            || line.contains(&format!("data_dir={}", srv.dir().join("data").display())),
        "{line}"
    );
}

#[tokio::test]
async fn data_dir_flag_wins_when_config_file_also_sets_it() {
    let srv = TestServer::start_opts(Opts {
        files: vec![(
            "testflinger.conf".into(),
            "DATA_PATH = '{dir}/loser'\n".into(),
        )],
        ..Opts::default()
    });
    let line = listening_line(&srv);
    assert!(
        line.contains(&format!("data_dir={}", srv.data_dir().display())),
        "{line}"
    );
    assert!(!line.contains("loser"), "{line}");
}

#[tokio::test]
async fn environment_beats_file_and_flag_beats_environment_when_all_set_data_dir() {
    let from_env = TestServer::start_opts(Opts {
        omit_data_dir: true,
        files: vec![(
            "testflinger.conf".into(),
            "DATA_PATH = '{dir}/from-file'\n".into(),
        )],
        envs: vec![("FLINGER_DATA_DIR".into(), "{dir}/from-env".into())],
        ..Opts::default()
    });
    let line = listening_line(&from_env);
    let expected = from_env.dir().join("from-env");
    assert!(
        line.contains(&format!("data_dir={}", expected.display())),
        "{line}"
    );

    let from_flag = TestServer::start_opts(Opts {
        envs: vec![("FLINGER_DATA_DIR".into(), "{dir}/from-env".into())],
        ..Opts::default()
    });
    let line = listening_line(&from_flag);
    assert!(
        line.contains(&format!("data_dir={}", from_flag.data_dir().display())),
        "{line}"
    );
}

#[tokio::test]
async fn limits_are_read_from_config_file_when_no_flag_overrides() {
    let srv = TestServer::start_opts(Opts {
        files: vec![("testflinger.conf".into(), "MAX_JOB_BYTES = 1000\n".into())],
        ..Opts::default()
    });
    let big = "x".repeat(2000);
    let body = serde_json::to_vec(&serde_json::json!({"job_queue": "q", "f": big})).unwrap();
    srv.post_oversized("/v1/job", Some("application/json"), &body)
        .await
        .expect_error(413);
    srv.submit_to("q").await;

    let flagged = TestServer::start_opts(Opts {
        args: vec!["--max-job-bytes".into(), "100000".into()],
        files: vec![("testflinger.conf".into(), "MAX_JOB_BYTES = 1000\n".into())],
        ..Opts::default()
    });
    flagged
        .submit(&serde_json::json!({"job_queue": "q", "f": big}))
        .await;
}

#[tokio::test]
async fn environment_variables_set_to_the_empty_string_count_as_unset() {
    // Clap alone took "" as the value (refusing it for numbers, booleans and the fsync
    // policy), the secrets key refused it as too short, TESTFLINGER_CONFIG named a file "".
    let empty = [
        "TESTFLINGER_CONFIG",
        "FLINGER_DATA_DIR",
        "FLINGER_MAX_JOB_BYTES",
        "FLINGER_MAX_PENDING",
        "FLINGER_FSYNC",
        "FLINGER_LOST_AGENT_REQUEUE",
        "FLINGER_WAL_TRUNCATE_CORRUPTION",
        "FLINGER_ALLOW_OPEN_ACCESS",
        "FLINGER_WEBHOOK_AUTH",
        "FLINGER_SECRETS_KEY",
        "TESTFLINGER_SECRETS_MASTER_KEY",
        "FLINGER_JWT_SIGNING_KEY",
        "JWT_LEEWAY",
        "REDIS_HOST",
    ];
    let srv = TestServer::start_opts(Opts {
        omit_data_dir: true,
        files: vec![(
            "testflinger.conf".into(),
            "DATA_PATH = '{dir}/from-file'\nMAX_JOB_BYTES = 1000\n".into(),
        )],
        envs: empty
            .iter()
            .map(|k| (k.to_string(), String::new()))
            .collect(),
        ..Opts::default()
    });
    // The next source decides: the config file (found as if TESTFLINGER_CONFIG were unset)...
    let line = listening_line(&srv);
    let expected = srv.dir().join("from-file");
    assert!(
        line.contains(&format!("data_dir={}", expected.display())),
        "{line}"
    );
    let big = "x".repeat(2000);
    let body = serde_json::to_vec(&serde_json::json!({"job_queue": "q", "f": big})).unwrap();
    srv.post_oversized("/v1/job", Some("application/json"), &body)
        .await
        .expect_error(413);
    // ...or the default: no secrets store, a generated signing key, no Redis warning.
    let r = srv
        .request(
            "PUT",
            "/v1/secrets/alice/x",
            &[("content-type", "application/json")],
            br#"{"value": "v"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.expect_error(400), "No secrets store");
    assert!(expected.join("jwt-signing-key").exists() || srv.journal().is_some());
    let log = srv.stderr_lines().join("\n");
    assert!(!log.contains("REDIS_HOST"), "{log}");
}

/// `THP_enabled` of the server's `/proc/<pid>/status`: 0 once the process turned
/// transparent huge pages off (`prctl(PR_SET_THP_DISABLE)`), 1 otherwise.
fn thp_enabled(srv: &TestServer) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .expect("THP_enabled in /proc/<pid>/status (Linux 5.0 and later)")
}

#[tokio::test]
async fn transparent_huge_pages_are_off_for_the_server_unless_thp_system_is_chosen() {
    let srv = TestServer::start();
    srv.get("/v1/").await.expect_status(200);
    assert_eq!(thp_enabled(&srv), "0", "the default is --thp off");
    // A process started with THP off (the flag is inherited) cannot show `system` leaving
    // it on.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    if own
        .lines()
        .any(|l| l.replace(char::is_whitespace, "") == "THP_enabled:0")
    {
        eprintln!("this test process runs with THP off: --thp system not checked");
        return;
    }

    let system = TestServer::start_with(&["--thp", "system"]);
    system.get("/v1/").await.expect_status(200);
    assert_eq!(
        thp_enabled(&system),
        "1",
        "--thp system leaves the kernel's setting"
    );

    let from_file = TestServer::start_opts(Opts {
        files: vec![("testflinger.conf".into(), "THP = system\n".into())],
        ..Opts::default()
    });
    from_file.get("/v1/").await.expect_status(200);
    assert_eq!(
        thp_enabled(&from_file),
        "1",
        "THP = system in the config file"
    );
}

#[tokio::test]
async fn unknown_config_key_is_warned_about_when_server_starts() {
    let srv = TestServer::start_opts(Opts {
        files: vec![("testflinger.conf".into(), "BOGUS_SETTING_XYZ = 1\n".into())],
        ..Opts::default()
    });
    srv.get("/v1/").await.expect_status(200);
    let lines = srv.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("BOGUS_SETTING_XYZ")),
        "no warning naming the unknown key:\n{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn malformed_config_file_exits_with_status_2_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "this line is not a setting\nDATA_PATH '/x'\n").unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--bind", "127.0.0.1:0"],
        &[("TESTFLINGER_CONFIG", conf.to_str().unwrap())],
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.conf"),
        "the error should name the file:\n{stderr}"
    );
}

/// A child process killed (if still running) and reaped when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn server_keeps_serving_and_exits_cleanly_when_its_stderr_is_closed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // RUST_LOG=debug: a log line for every request, each one a write into the closed pipe.
    let mut guard = Killed(
        flinger_command(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start flinger"),
    );
    let child = &mut guard.0;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .filter(|_| l.contains(" listening "))
                .map(str::to_owned)
        })
        .expect("a listening line");
    // The log's reader goes away, as when the process collecting the log dies.
    drop(lines);
    let http = crate::util::Http::new(format!("http://{addr}"));
    for _ in 0..5 {
        http.get("/v1/").await.expect_status(200);
    }
    assert!(child.try_wait().unwrap().is_none(), "flinger died");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flinger did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

#[tokio::test]
async fn configuration_errors_name_the_setting_its_value_and_the_file_line_when_starting() {
    let dir = tempfile::tempdir().unwrap();
    let too_big = dir.path().join("big.conf");
    std::fs::write(&too_big, "MAX_JOB_BYTES = 999999999\n").unwrap();
    let malformed = dir.path().join("bad.conf");
    std::fs::write(&malformed, "DATA_PATH = '/x'\nFSYNC 'always'\n").unwrap();
    let thp = dir.path().join("thp.conf");
    std::fs::write(&thp, "THP = sometimes\n").unwrap();
    let cases: [(&[&str], Option<&std::path::Path>, &[&str]); 5] = [
        (
            &["--max-upload-parts", "0"],
            None,
            &[
                "--max-upload-parts",
                "MAX_UPLOAD_PARTS",
                "at least 1, got 0",
            ],
        ),
        (
            &[],
            Some(&too_big),
            &["--max-job-bytes", "MAX_JOB_BYTES", "got 999999999"],
        ),
        (
            &["--header-timeout-secs", "0"],
            None,
            &["--header-timeout-secs", "FLINGER_HEADER_TIMEOUT_SECS"],
        ),
        (
            &[],
            Some(&malformed),
            &["bad.conf line 2: expected `KEY = value`"],
        ),
        (&[], Some(&thp), &["THP", "\"sometimes\"", "off or system"]),
    ];
    for (args, conf, wanted) in cases {
        let mut all = vec!["--bind", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let conf = conf.map(|c| c.to_str().unwrap().to_owned());
        let envs: Vec<(&str, &str)> = conf
            .iter()
            .map(|c| ("TESTFLINGER_CONFIG", c.as_str()))
            .collect();
        let out = run_to_exit(dir.path(), &all, &envs, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {conf:?}: {stderr}");
        for w in wanted {
            assert!(
                stderr.contains(w),
                "{args:?} {conf:?}: no {w:?} in {stderr}"
            );
        }
    }
}

/// Settings whose largest values the runtime cannot hold (a semaphore's permits, a
/// deadline past the clock's range) are refused at start-up, naming the setting, instead
/// of panicking at start-up or on the first request that uses them.
#[test]
fn settings_beyond_what_the_runtime_can_hold_are_refused_at_start_up_naming_them() {
    let huge = u64::MAX.to_string();
    for flag in [
        "--max-pending",
        "--max-searches",
        "--header-timeout-secs",
        "--transfer-window-secs",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = run_to_exit(
            dir.path(),
            &[
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                flag,
                &huge,
            ],
            &[],
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: stderr:\n{stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("at most"),
            "{flag}: the error should name the setting and its bound:\n{stderr}"
        );
    }
}

/// `--help` says what the webhook settings bound, as the server applies them: the event
/// string limit covers every string of a post but the URL (a long `agent_id` is refused
/// naming it), the URL must be `http`.
#[test]
fn help_names_every_string_the_event_detail_limit_bounds_and_that_webhooks_are_http_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(dir.path(), &["--help"], &[], Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    let option = |name: &str| -> String {
        let start = text.find(&format!("--{name} <")).expect(name);
        let end = text[start..]
            .find("[env:")
            .map_or(text.len(), |e| start + e);
        text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let detail = option("max-event-detail-bytes");
    for string in ["detail", "event_name", "timestamp", "agent_id", "job_queue"] {
        assert!(detail.contains(string), "{string} not named: {detail}");
    }
    assert!(
        option("webhook-url").contains("`http` only"),
        "{}",
        option("webhook-url")
    );
}

/// A second server on a data directory another one uses exits 1 saying it could not start
/// and why (not that it "stopped"), and the first keeps serving.
#[tokio::test]
async fn a_second_server_on_a_data_dir_in_use_says_it_could_not_start_and_why() {
    let srv = TestServer::start();
    if srv.journal().is_some() {
        return; // on the PostgreSQL journal nodes share a database by design
    }
    let data = srv.data_dir();
    let out = run_to_exit(
        srv.dir(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server could not start")
            && stderr.contains("is locked by another process (another flinger"),
        "{stderr}"
    );
    assert!(!stderr.contains("server stopped"), "{stderr}");
    srv.get("/v1").await.expect_status(200);
}
