//! `--allowed-hosts` against DNS rebinding: a page whose name was made to resolve to the
//! server's address is same-origin to the browser, so with access control on (anonymous
//! callers are contributors) only the `Host` it sends can tell its requests from a lab
//! user's. With the option set, every request naming another host is refused, on every
//! route; the names listed, addresses and localhost pass, and the real CLI still works.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{call, Lab};
use crate::util::{run_to_exit, upstream, TestServer};

/// The listed names of the servers below.
const LISTED: &str = "flinger.lab.example,*.devices.lab.example";

/// What a browser sends from an attacker's page after its name was rebound to the
/// server's address: a `text/plain` "JSON" body (no preflight), the page's own origin.
fn rebound_headers(host: &str) -> Vec<(&str, String)> {
    vec![
        ("host", host.to_owned()),
        ("origin", format!("http://{host}")),
        ("sec-fetch-site", "same-origin".to_owned()),
        ("content-type", "text/plain".to_owned()),
    ]
}

#[tokio::test]
async fn a_rebound_name_is_refused_on_every_route_when_allowed_hosts_is_set_and_listed_names_pass()
{
    let srv = TestServer::start_with(&["--access-control", "on", "--allowed-hosts", LISTED]);
    let port = srv.base().rsplit(':').next().unwrap().to_owned();
    let job = br#"{"job_queue": "rebind-q"}"#.to_vec();
    let rebound = format!("rebind.attacker.example:{port}");
    let headers = rebound_headers(&rebound);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = srv.request("POST", "/v1/job", &headers, job.clone()).await;
    let message = r.expect_error(403);
    assert!(
        message.contains(&format!("{rebound:?}")) && message.contains("--allowed-hosts"),
        "{message}"
    );
    assert_eq!(srv.get("/v1/queues/rebind-q/jobs").await.status, 204);
    // Reads too (the page could read every answer), dashboard pages, metrics, OPTIONS.
    let id = srv.submit(&json!({"job_queue": "rebind-q"})).await;
    for (method, path) in [
        ("GET", format!("/v1/job/{id}")),
        ("GET", "/v1/job/search".to_owned()),
        ("GET", "/".to_owned()),
        ("GET", format!("/jobs/{id}")),
        ("GET", "/metrics".to_owned()),
        ("GET", "/v1/ready".to_owned()),
        ("OPTIONS", "/v1/job".to_owned()),
        ("POST", format!("/v1/job/{id}/action")),
        ("GET", "/no/such/route".to_owned()),
    ] {
        let r = srv
            .request(method, &path, &[("host", rebound.as_str())], Vec::new())
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text_preview());
    }
    // A browser asking for a page gets the refusal as a page.
    let page = srv
        .request(
            "GET",
            "/jobs",
            &[("host", rebound.as_str()), ("accept", "text/html")],
            Vec::new(),
        )
        .await;
    assert_eq!(page.status, 403);
    assert!(page.text().contains("--allowed-hosts"), "{}", page.text());
    assert_eq!(srv.job_state(&id).await, "waiting");
    // Names close to the listed ones are other names.
    for host in [
        "lab.example",
        "devices.lab.example",
        "evil-flinger.lab.example",
        "flinger.lab.example.evil.example",
        "x.devices.lab.example.evil.example",
    ] {
        let r = srv
            .request("GET", "/v1/job/search", &[("host", host)], Vec::new())
            .await;
        assert_eq!(r.status, 403, "{host}: {}", r.text_preview());
    }
    // The listed names (any case, any port, a trailing dot), addresses and localhost:
    // the same browser request submits.
    for host in [
        format!("flinger.lab.example:{port}"),
        format!("Flinger.Lab.Example.:{port}"),
        "rack1.devices.lab.example".to_owned(),
        "a.b.devices.lab.example:8000".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "10.1.2.3".to_owned(),
        format!("localhost:{port}"),
        "box.localhost".to_owned(),
    ] {
        let headers = rebound_headers(&host);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = srv.request("POST", "/v1/job", &headers, job.clone()).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text_preview());
    }
}

/// Without the option a server with access control on keeps answering any name (lab
/// users reach it by names it cannot know); with access control off on loopback, the
/// list replaces the rule that only localhost and addresses pass.
#[tokio::test]
async fn the_list_decides_with_access_control_off_on_loopback_and_any_name_passes_without_it() {
    let open = TestServer::start_with(&["--allowed-hosts", LISTED]);
    for (host, status) in [
        ("flinger.lab.example", 200),
        ("localhost", 200),
        ("rebind.attacker.example", 403),
    ] {
        let r = open
            .request("GET", "/v1/job/search", &[("host", host)], Vec::new())
            .await;
        assert_eq!(r.status, status, "{host}: {}", r.text_preview());
    }
    let unlisted = TestServer::start_with(&["--access-control", "on"]);
    let r = unlisted
        .request(
            "GET",
            "/v1/job/search",
            &[("host", "lab-server.example")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text_preview());
}

#[tokio::test]
async fn the_real_cli_submits_reads_and_cancels_when_allowed_hosts_is_set() {
    let lab = Lab::start(&["--allowed-hosts", LISTED]);
    let srv = &lab.srv;
    // The CLI submits only to a queue an online agent serves.
    let agent = lab.token_for("lab-agent", "agent", json!({})).await;
    let record = json!({"queues": ["hosts-cli"], "provision_type": "noprovision"});
    call(
        srv,
        "POST",
        "/v1/agents/data/lab-agent",
        Some(&agent),
        None,
        Some(&record),
    )
    .await
    .expect_status(200);
    let base = srv.base_url();
    let work = tempfile::tempdir().unwrap();
    let job = work.path().join("job.yaml");
    std::fs::write(
        &job,
        "job_queue: hosts-cli\ntest_data:\n  test_cmds: unused\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let home = work.path().join("home");
        let out = Command::new(upstream::cli())
            .args(["--server", &base])
            .args(args)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .stdin(Stdio::null())
            .output()
            .expect("run testflinger-cli");
        assert!(
            out.status.success(),
            "testflinger-cli {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let id = cli(&["submit", "--quiet", job.to_str().unwrap()]);
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(cli(&["status", &id]), "waiting");
    cli(&["cancel", &id]);
    assert_eq!(srv.job_state(&id).await, "cancelled");
}

#[tokio::test]
async fn a_bad_allowed_hosts_entry_is_refused_at_start_up_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    for (args, envs) in [
        (vec!["--allowed-hosts", "lab.example:8000"], vec![]),
        (
            vec![],
            vec![("FLINGER_ALLOWED_HOSTS", "http://lab.example")],
        ),
    ] {
        let mut all = vec!["--bind", "127.0.0.1:0", "--data-dir", "d"];
        all.extend(args);
        let out = run_to_exit(dir.path(), &all, &envs, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--allowed-hosts (FLINGER_ALLOWED_HOSTS, config key ALLOWED_HOSTS)"),
            "{stderr}"
        );
        assert!(!dir.path().join("d").exists(), "nothing should be created");
    }
}
