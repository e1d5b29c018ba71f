//! Job ownership: only the job's owner or a manager changes a job, and only the agent the
//! job was dispatched to reports on it.

use serde_json::json;

use super::{call, fragment, register_agent, Lab};
use crate::util::new_id;

#[tokio::test]
async fn only_the_owner_or_a_manager_changes_a_job_and_only_its_agent_reports_on_it() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let manager = lab.token_for("boss", "manager", json!({})).await;
    let agent1 = lab.token_for("agent-one", "agent", json!({})).await;
    let agent2 = lab.token_for("agent-two", "agent", json!({})).await;
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "own-q", "exclude_agents": ["excluded"]});
    call(srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_status(200);
    // Another client can neither cancel nor resubmit it; anonymous callers neither.
    for token in [Some(bob.as_str()), None] {
        call(
            srv,
            "POST",
            &format!("/v1/job/{id}/action"),
            token,
            None,
            Some(&json!({"action": "cancel"})),
        )
        .await
        .expect_error(403);
        let evil =
            json!({"job_id": id, "job_queue": "own-q", "test_data": {"test_cmds": "rm -rf /"}});
        call(srv, "POST", "/v1/job", token, None, Some(&evil))
            .await
            .expect_error(403);
    }
    // The agent must name itself: no cookie, no job (exclude_agents cannot be dodged).
    let pop = "/v1/job?queue=own-q";
    assert_eq!(
        call(srv, "GET", pop, Some(&agent1), None, None)
            .await
            .expect_error(401),
        "Agent not identified"
    );
    // And only as an agent whose record it may change, which exists: agent-two cannot
    // take the job as "one", nor agent-one dodge exclude_agents with a name of its own
    // making; each agent posts its record first (the stock agent does, and gets its
    // cookie from that post).
    for name in ["one", "excluded"] {
        register_agent(srv, &agent1, name).await;
    }
    let unknown = call(srv, "GET", pop, Some(&agent1), Some("ghost"), None)
        .await
        .expect_error(403);
    assert!(unknown.contains("\"ghost\" has no record"), "{unknown}");
    let kept = call(srv, "GET", pop, Some(&agent2), Some("one"), None)
        .await
        .expect_error(403);
    assert!(
        kept.contains("kept by agent credential \"agent-one\"") && kept.contains("take jobs"),
        "{kept}"
    );
    call(srv, "GET", pop, Some(&agent1), Some("excluded"), None)
        .await
        .expect_no_content();
    let got = call(srv, "GET", pop, Some(&agent1), Some("one"), None)
        .await
        .expect_json();
    assert_eq!(got["job_id"], id.as_str());
    // Only the agent it went to posts results, fragments, artifacts, provision logs.
    let result = format!("/v1/result/{id}");
    let log = format!("/v1/result/{id}/log/output");
    for token in [&agent2, &alice] {
        call(
            srv,
            "POST",
            &result,
            Some(token),
            None,
            Some(&json!({"job_state": "complete"})),
        )
        .await
        .expect_error(403);
        call(srv, "POST", &log, Some(token), None, Some(&fragment(0)))
            .await
            .expect_error(403);
    }
    let (ct, body) =
        crate::util::multipart(&[crate::util::Part::file("file", "a.tar.gz", b"bytes")]);
    let artifact = format!("/v1/result/{id}/artifact");
    let b2 = format!("Bearer {agent2}");
    srv.request(
        "POST",
        &artifact,
        &[("content-type", &ct), ("authorization", &b2)],
        body.clone(),
    )
    .await
    .expect_error(403);
    let b1 = format!("Bearer {agent1}");
    srv.request(
        "POST",
        &artifact,
        &[("content-type", &ct), ("authorization", &b1)],
        body,
    )
    .await
    .expect_status(200);
    call(
        srv,
        "POST",
        "/v1/agents/data/two",
        Some(&agent2),
        None,
        Some(&json!({"state": "waiting"})),
    )
    .await
    .expect_status(200);
    let provision = json!({"job_id": id, "exit_code": 0});
    call(
        srv,
        "POST",
        "/v1/agents/provision_logs/two",
        Some(&agent2),
        None,
        Some(&provision),
    )
    .await
    .expect_error(403);
    // Fragments for a job that was never dispatched cannot be posted ahead of the agent.
    let other = srv.submit_to("never-popped").await;
    call(
        srv,
        "POST",
        &format!("/v1/result/{other}/log/output"),
        Some(&agent1),
        None,
        Some(&fragment(0)),
    )
    .await
    .expect_error(403);
    call(srv, "POST", &log, Some(&agent1), None, Some(&fragment(0)))
        .await
        .expect_status(200);
    call(
        srv,
        "POST",
        &result,
        Some(&agent1),
        None,
        Some(&json!({"job_state": "test"})),
    )
    .await
    .expect_status(200);
    // The owner's manager may cancel it.
    call(
        srv,
        "POST",
        &format!("/v1/job/{id}/action"),
        Some(&manager),
        None,
        Some(&json!({"action": "cancel"})),
    )
    .await
    .expect_status(200);
    // Anonymous jobs stay as upstream: any contributor may cancel them.
    let anon = srv.submit_to("own-q").await;
    call(
        srv,
        "POST",
        &format!("/v1/job/{anon}/action"),
        Some(&bob),
        None,
        Some(&json!({"action": "cancel"})),
    )
    .await
    .expect_status(200);
}

/// The per-job checks decide on the id the handler acts on: a path spelling the id with
/// percent-escapes (`%63…`, `%7B…%7D`), which the handler decodes, gets the same 403 as
/// the plain spelling, on every route of the table with a per-job check.
#[tokio::test]
async fn a_percent_encoded_job_id_gets_the_same_per_job_checks() {
    use flinger::access::table::{Check, TABLE};
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let agent1 = lab.token_for("agent-one", "agent", json!({})).await;
    let agent2 = lab.token_for("agent-two", "agent", json!({})).await;
    let id = new_id();
    let job = json!({"job_id": id, "job_queue": "enc-q"});
    call(srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_status(200);
    register_agent(srv, &agent1, "one").await;
    call(
        srv,
        "GET",
        "/v1/job?queue=enc-q",
        Some(&agent1),
        Some("one"),
        None,
    )
    .await
    .expect_json();
    let first = id.as_bytes()[0];
    let spellings = [
        id.clone(),
        format!("%{first:02X}{}", &id[1..]),
        format!("%{first:02x}{}", &id[1..]),
        format!("%7B{id}%7D"),
        id.chars().map(|c| format!("%{:02X}", c as u32)).collect(),
    ];
    let mut checked = 0;
    for rule in TABLE.iter().filter(|r| r.check != Check::None) {
        let intruder = match rule.check {
            Check::JobOwner => &bob,
            Check::JobAgent => &agent2,
            _ => continue,
        };
        for spelling in &spellings {
            let path = rule
                .path
                .replace("{id}", spelling)
                .replace("{kind}", "output");
            let body = match rule.path {
                p if p.ends_with("/action") || p.ends_with("/cancel") => {
                    json!({"action": "cancel"})
                }
                p if p.contains("/log/") => fragment(0),
                _ => json!({"job_state": "complete"}),
            };
            let r = call(
                srv,
                rule.method,
                &path,
                Some(intruder),
                Some("two"),
                Some(&body),
            )
            .await;
            assert_eq!(r.status, 403, "{} {path}: {}", rule.method, r.text());
            checked += 1;
        }
    }
    assert!(checked >= 9 * spellings.len(), "{checked} requests checked");
    // Nothing got through: the job is still with its agent, unchanged.
    let got = call(
        srv,
        "GET",
        &format!("/v1/result/{id}"),
        Some(&alice),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(got["job_state"], "running", "{got}");
    // Each refusal was a security event, but the log holds one line per kind per 10 s
    // (the next says how many it suppressed), and never a whole hostile path.
    let long = format!("/v1/job/{}", "a".repeat(20_000));
    call(srv, "GET", &long, Some("not-a-token"), None, None)
        .await
        .expect_error(403);
    let log = srv
        .stderr_lines_once(|l| l.contains("flinger::security") && l.contains("authn_fail"))
        .await;
    let security: Vec<_> = log
        .iter()
        .filter(|l| l.contains("flinger::security"))
        .collect();
    let refusals = security.iter().filter(|l| l.contains("authz_fail")).count();
    assert!(
        (1..=2).contains(&refusals),
        "{refusals} lines: {security:#?}"
    );
    let authn = security.iter().find(|l| l.contains("authn_fail"));
    let authn = authn.expect("the bad token is logged");
    assert!(authn.len() < 1_000, "{} bytes: {authn}", authn.len());
}

/// An agent credential may not change the record of an agent another agent credential
/// keeps; a manager's post, or deleting that credential, frees it. The writer is kept
/// across a restart.
#[tokio::test]
async fn an_agent_credential_may_not_change_another_credentials_agent_record() {
    let mut lab = Lab::start(&[]);
    let agent1 = lab.token_for("rec-one", "agent", json!({})).await;
    let agent2 = lab.token_for("rec-two", "agent", json!({})).await;
    let manager = lab.token_for("rec-boss", "manager", json!({})).await;
    let admin = lab.admin_token().await;
    let state = |s: &str| json!({"state": s});
    let post = |token: &str, body: serde_json::Value| {
        let token = token.to_owned();
        let srv = &lab.srv;
        async move {
            call(
                srv,
                "POST",
                "/v1/agents/data/dut-1",
                Some(&token),
                None,
                Some(&body),
            )
            .await
        }
    };
    post(&agent1, state("waiting")).await.expect_status(200);
    let message = post(&agent2, state("offline")).await.expect_error(403);
    assert!(message.contains("\"rec-one\""), "{message}");
    // Nor its provision history.
    let entry = json!({"job_id": new_id(), "exit_code": 1, "detail": "forged"});
    let path = "/v1/agents/provision_logs/dut-1";
    let r = call(&lab.srv, "POST", path, Some(&agent2), None, Some(&entry)).await;
    assert!(r.expect_error(403).contains("\"rec-one\""));
    // The same name spelled with escapes is the same agent.
    let r = call(
        &lab.srv,
        "POST",
        "/v1/agents/data/dut%2D1",
        Some(&agent2),
        None,
        Some(&state("offline")),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A manager's post releases the record: the next agent credential takes it.
    post(&manager, state("maintenance"))
        .await
        .expect_status(200);
    post(&agent2, state("provision")).await.expect_status(200);
    let message = post(&agent1, state("x")).await.expect_error(403);
    assert!(message.contains("\"rec-two\""), "{message}");
    let record = call(
        &lab.srv,
        "GET",
        "/v1/agents/data/dut-1",
        Some(&manager),
        None,
        None,
    )
    .await
    .expect_json();
    assert_eq!(record["state"], "provision", "{record}");
    // Deleting the keeping credential frees it too.
    call(
        &lab.srv,
        "DELETE",
        "/v1/client-permissions/rec-two",
        Some(&admin),
        None,
        None,
    )
    .await
    .expect_status(200);
    post(&agent1, state("waiting")).await.expect_status(200);
    lab.srv.restart();
    let agent3 = lab.token_for("rec-three", "agent", json!({})).await;
    let r = call(
        &lab.srv,
        "POST",
        "/v1/agents/data/dut-1",
        Some(&agent3),
        None,
        Some(&state("offline")),
    )
    .await;
    assert_eq!(
        r.status,
        403,
        "kept by rec-one after a restart: {}",
        r.text()
    );
}

/// With access control on, only the job's own agent credential keeps a running job alive:
/// another client reading its result with an `agent_name` cookie does not.
#[tokio::test]
async fn only_the_jobs_agent_credential_counts_as_contact_from_its_agent() {
    let lab = Lab::start(&["--lost-agent-grace-secs", "1"]);
    let srv = &lab.srv;
    let agent = lab.token_for("lost-agent", "agent", json!({})).await;
    let bob = lab.token_for("lost-bob", "contributor", json!({})).await;
    let id = running_job(srv, &agent, "dut", "lost-q", "test").await;
    let result = format!("/v1/result/{id}");
    // Allowance in `test`: output_timeout 1 + the agent's 10 s check + grace 1.
    let started = std::time::Instant::now();
    loop {
        let read = call(srv, "GET", &result, Some(&bob), Some("dut"), None).await;
        if read.expect_json()["job_state"] == "cancelled" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "another client's reads kept the job alive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Another agent credential naming the job as its `job_id` in its own record's post
/// (`POST /v1/agents/data/<name>`, which counts as contact from the job's agent) does not
/// keep the job of a silent agent alive either.
#[tokio::test]
async fn another_agents_data_post_naming_the_job_does_not_keep_it_alive() {
    let lab = Lab::start(&["--lost-agent-grace-secs", "1"]);
    let srv = &lab.srv;
    let agent = lab.token_for("silent-agent", "agent", json!({})).await;
    let other = lab.token_for("busy-agent", "agent", json!({})).await;
    register_agent(srv, &other, "busy-dut").await;
    let id = running_job(srv, &agent, "silent-dut", "silent-q", "test").await;
    // Allowance in `test`: output_timeout 1 + the agent's 10 s check + grace 1.
    let started = std::time::Instant::now();
    let naming = json!({"job_id": id, "state": "test"});
    loop {
        call(
            srv,
            "POST",
            "/v1/agents/data/busy-dut",
            Some(&other),
            None,
            Some(&naming),
        )
        .await
        .expect_status(200);
        if srv.job_state(&id).await == "cancelled" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "another agent's data posts kept the job alive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A job its lost agent left in `setup` goes back to its queue: it is dispatched to no
/// one again, so its old agent credential, coming back, may not report on it ahead of the
/// next agent (it would take the job out of the queue as `test` without a dispatch).
#[tokio::test]
async fn requeued_job_refuses_reports_from_the_agent_that_was_lost() {
    let lab = Lab::start(&["--lost-agent-grace-secs", "1"]);
    let srv = &lab.srv;
    let agent = lab.token_for("came-back", "agent", json!({})).await;
    let id = running_job(srv, &agent, "came-back-dut", "requeue-q", "setup").await;
    let result = format!("/v1/result/{id}");
    // Allowance in `setup`: output_timeout 1 + the agent's 10 s check + grace 1.
    let started = std::time::Instant::now();
    while srv.job_state(&id).await != "resubmitted" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "the job was not requeued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let late = call(
        srv,
        "POST",
        &result,
        Some(&agent),
        None,
        Some(&json!({"job_state": "test"})),
    )
    .await;
    assert_eq!(late.status, 403, "{}", late.text());
    let fragment = call(
        srv,
        "POST",
        &format!("/v1/result/{id}/log/output"),
        Some(&agent),
        None,
        Some(&fragment(0)),
    )
    .await;
    assert_eq!(fragment.status, 403, "{}", fragment.text());
    assert_eq!(srv.job_state(&id).await, "resubmitted");
}

/// The bound on all jobs' results and logs held (`--max-results-bytes`) holds with access
/// control on as off: the dispatched agent's own posts, which alone may add data, are 507
/// past it, naming the option, and nothing of them is kept.
#[tokio::test]
async fn the_dispatched_agents_own_posts_stop_at_max_results_bytes() {
    let lab = Lab::start(&[
        "--max-results-bytes",
        "200000",
        "--max-job-data-bytes",
        "200000",
        "--max-result-bytes",
        "65536",
        "--max-output-bytes",
        "65536",
    ]);
    let srv = &lab.srv;
    let agent = lab.token_for("bounded", "agent", json!({})).await;
    let big = |n: u64| {
        json!({"fragment_number": n, "timestamp": "2026-12-03T10:00:00+00:00",
               "phase": "test", "log_data": "x".repeat(50_000)})
    };
    let mut stored = 0;
    for dut in ["bounded-1", "bounded-2"] {
        let id = running_job(srv, &agent, dut, "bounded-q", "test").await;
        let log = format!("/v1/result/{id}/log/output");
        for n in 0..2 {
            let r = call(srv, "POST", &log, Some(&agent), Some(dut), Some(&big(n))).await;
            if r.status != 200 {
                // Two fragments of 50,132 and a report each: the fourth fragment is past
                // the server's bound, not its job's.
                assert_eq!((dut, n, r.status), ("bounded-2", 1, 507), "{}", r.text());
                let message = r.message();
                assert!(message.contains("--max-results-bytes"), "{message}");
                let kept = srv.get(&log).await.expect_json();
                assert_eq!(kept["output"]["test"]["last_fragment_number"], 0);
                return assert_eq!(stored, 3);
            }
            stored += 1;
        }
    }
    panic!("every fragment was kept");
}

/// A job submitted to `queue` (`output_timeout` 1 s), taken by agent `dut` with the agent
/// credential `token` (registering `dut` first) and reported in `state`; its id. Silent
/// from then on, it is lost after 1 s + the agent's 10 s check + the grace.
async fn running_job(
    srv: &crate::util::TestServer,
    token: &str,
    dut: &str,
    queue: &str,
    state: &str,
) -> String {
    let id = srv
        .submit(&json!({"job_queue": queue, "output_timeout": 1, "test_data": {"test_cmds": "x"}}))
        .await;
    register_agent(srv, token, dut).await;
    let pop = format!("/v1/job?queue={queue}");
    call(srv, "GET", &pop, Some(token), Some(dut), None)
        .await
        .expect_json();
    let report = json!({"job_state": state});
    let result = format!("/v1/result/{id}");
    call(srv, "POST", &result, Some(token), Some(dut), Some(&report))
        .await
        .expect_status(200);
    id
}

/// The dashboard's job page offers its cancel button only to a viewer whose cancel the
/// access table would let through: alice's job shows it to alice and a manager, not to
/// bob or an anonymous browser; an anonymous job (no owner) shows it to everyone. A
/// refusal a browser meets on a page is a page, not the API's JSON.
#[tokio::test]
async fn job_page_offers_the_cancel_button_only_to_those_who_may_cancel() {
    let lab = Lab::start(&[]);
    let srv = &lab.srv;
    let alice = lab.token_for("alice", "contributor", json!({})).await;
    let bob = lab.token_for("bob", "contributor", json!({})).await;
    let manager = lab.token_for("boss", "manager", json!({})).await;
    let owned = new_id();
    let job = json!({"job_id": owned, "job_queue": "page-q"});
    call(srv, "POST", "/v1/job", Some(&alice), None, Some(&job))
        .await
        .expect_status(200);
    let anonymous = srv.submit_to("page-q").await;
    let page = |id: String, token: Option<String>| async move {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("accept", "text/html")];
        headers.extend(bearer.as_deref().map(|b| ("authorization", b)));
        let r = srv.get_with_headers(&format!("/jobs/{id}"), &headers).await;
        r.expect_status(200);
        r.text().contains("id=\"cancel\"")
    };
    for (who, token, offered) in [
        ("alice", Some(alice.clone()), true),
        ("a manager", Some(manager), true),
        ("bob", Some(bob.clone()), false),
        ("anonymous", None, false),
    ] {
        assert_eq!(page(owned.clone(), token).await, offered, "{who}");
    }
    for token in [None, Some(bob.clone())] {
        assert!(page(anonymous.clone(), token).await);
    }
    // Bob's browser posting the form anyway: refused, as a page saying why.
    let bearer = format!("Bearer {bob}");
    let r = srv
        .request(
            "POST",
            &format!("/jobs/{owned}/cancel"),
            &[("accept", "text/html"), ("authorization", &bearer)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.content_type().as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        r.text().contains("Only the client that submitted this job"),
        "{}",
        r.text()
    );
}
