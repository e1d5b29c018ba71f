//! Lost agents on the dashboard: the job page says the agent was lost (when, what the
//! server did, why) and shows every run of a job requeued for it; the agent page lists the
//! jobs it was lost on and names the one that made it offline. Both the same after a
//! restart from a snapshot.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{job_id_of, TestServer};

/// Pops a job of `queue` as `agent` (its cookie), returning its id.
async fn pop_as(srv: &TestServer, queue: &str, agent: &str) -> String {
    let popped = srv
        .get_with_headers(
            &format!("/v1/job?queue={queue}"),
            &[("cookie", &format!("agent_name={agent}"))],
        )
        .await
        .expect_json();
    job_id_of(&popped)
}

/// The timeline's entries, each as `(what, agent)`.
fn timeline(html: &str) -> Vec<(String, Option<String>)> {
    let start = html.find("id=\"timeline\"").expect("a timeline");
    let list = &html[start..start + html[start..].find("</ol>").unwrap()];
    list.split("<li")
        .skip(1)
        .map(|item| {
            let what = item.split("<span class=\"state\">").nth(1).unwrap();
            let what = what.split('<').next().unwrap().to_owned();
            let agent = item
                .split("href=\"/agents/")
                .nth(1)
                .map(|rest| rest.split('"').next().unwrap().to_owned());
            (what, agent)
        })
        .collect()
}

/// The `id="…"` element's text up to its closing `</dd>`.
fn dd<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id}: {html}"));
    &html[start..start + html[start..].find("</dd>").unwrap()]
}

#[tokio::test]
async fn job_page_shows_the_lost_agent_and_every_run_when_a_requeued_job_is_lost_again() {
    let mut srv = TestServer::start_with(crate::util::SNAPSHOT_SOON);
    let queue = "lost-q";
    let job = json!({"job_queue": queue, "test_data": {"test_cmds": "x"}});
    let id = srv.submit(&job).await;
    assert_eq!(pop_as(&srv, queue, "rig-x").await, id);
    srv.post_result(&id, &json!({"job_state": "setup"})).await;
    // rig-x takes another job: the first, left in setup, goes back into its queue.
    let second = srv.submit(&job).await;
    assert_eq!(pop_as(&srv, queue, "rig-x").await, second);
    assert_eq!(srv.job_state(&id).await, "resubmitted");
    let html = srv
        .get(&format!("/jobs/{id}"))
        .await
        .expect_status(200)
        .text();
    let lost = dd(&html, "lost-agent");
    assert!(
        lost.contains("Put back into its queue")
            && lost.contains("rig-x")
            && lost.contains(&second),
        "{lost}"
    );
    // rig-y runs it to `test` and takes another job too: now it ends.
    assert_eq!(pop_as(&srv, queue, "rig-y").await, id);
    srv.post_result(&id, &json!({"job_state": "setup"})).await;
    srv.post_result(&id, &json!({"job_state": "test"})).await;
    let third = srv.submit(&job).await;
    assert_eq!(pop_as(&srv, queue, "rig-y").await, third);
    assert_eq!(srv.job_state(&id).await, "cancelled");

    let expected: Vec<(String, Option<String>)> = [
        ("submitted", None),
        ("dispatched", Some("rig-x")),
        ("setup", None),
        ("agent lost: requeued", Some("rig-x")),
        ("dispatched", Some("rig-y")),
        ("setup", None),
        ("test", None),
        ("agent lost: cancelled", Some("rig-y")),
    ]
    .iter()
    .map(|(w, a)| (w.to_string(), a.map(str::to_owned)))
    .collect();
    let check = |html: String| {
        assert_eq!(timeline(&html), expected, "{html}");
        let lost = dd(&html, "lost-agent");
        assert!(
            lost.contains("Ended as cancelled")
                && lost.contains("rig-y")
                && lost.contains(&third)
                && lost.contains("test"),
            "{lost}"
        );
    };
    check(srv.get(&format!("/jobs/{id}")).await.text());
    srv.log_for_a_snapshot().await;
    srv.restart();
    check(srv.get(&format!("/jobs/{id}")).await.text());
}

#[tokio::test]
async fn agent_page_names_the_job_it_was_lost_on_when_the_server_made_it_offline() {
    let mut srv =
        TestServer::start_with(&["--lost-agent-grace-secs", "1", "--snapshot-bytes", "1MiB"]);
    srv.post_json(
        "/v1/agents/data/rig-gone",
        &json!({"state": "waiting", "queues": ["gone-q"]}),
    )
    .await
    .expect_status(200);
    // Allowance in `test`: output_timeout 1 + the agent's 10 s check + grace 1 s.
    let id = srv
        .submit(&json!({"job_queue": "gone-q", "output_timeout": 1}))
        .await;
    assert_eq!(pop_as(&srv, "gone-q", "rig-gone").await, id);
    srv.post_result(&id, &json!({"job_state": "test"})).await;
    // As the stock agent says it runs the job (a `waiting` record posted since it was
    // last heard would say it left the job, and keep it in service).
    srv.post_json(
        "/v1/agents/data/rig-gone",
        &json!({"state": "test", "job_id": id}),
    )
    .await
    .expect_status(200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = srv.get("/v1/agents/data/rig-gone").await.expect_json();
        if record["state"] == "offline" {
            break;
        }
        assert!(Instant::now() < deadline, "never offline: {record}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let check = |html: String| {
        let offline = dd(&html, "offline-for");
        assert!(offline.contains(&format!("/jobs/{id}")), "{offline}");
        let start = html.find("id=\"lost-jobs\"").expect("the lost jobs");
        let table = &html[start..start + html[start..].find("</table>").unwrap()];
        assert!(
            table.contains(&id) && table.contains("cancelled") && table.contains("silent since"),
            "{table}"
        );
    };
    check(srv.get("/agents/rig-gone").await.expect_status(200).text());
    srv.log_for_a_snapshot().await;
    srv.restart();
    check(srv.get("/agents/rig-gone").await.expect_status(200).text());
    // Put back in service, it is no longer offline for the job; the job stays listed.
    srv.post_json(
        "/v1/agents/data/rig-gone",
        &json!({"state": "waiting", "comment": ""}),
    )
    .await
    .expect_status(200);
    let html = srv.get("/agents/rig-gone").await.text();
    assert!(!html.contains("id=\"offline-for\""), "{html}");
    assert!(html.contains("id=\"lost-jobs\""), "{html}");
}
