//! The web dashboard, over HTTP and in headless Chromium (Debian's `chromium`, installed
//! by `.ci/run`): every page renders against a server with jobs in every state, agents
//! and logs, with no console message; figures on the pages match the JSON API; the live
//! log shows a fragment posted after the page opened; markup a client sent stays text.
//! Screenshots go to `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::TestServer;

mod follow;
mod job_page;
mod lost;
mod orphan;
mod overview;

const EVIL: &str = "<script>document.title='pwned'</script>";

fn fragment(number: u64, phase: &str, data: &str) -> Value {
    json!({
        "fragment_number": number,
        "timestamp": format!("2026-01-01T00:00:{:02}.123456+00:00", number % 60),
        "phase": phase,
        "log_data": data,
    })
}

/// Ids of the jobs [`populate`] made.
struct Data {
    waiting: String,
    running: String,
    provisioning: String,
    complete: String,
    cancelled: String,
}

/// Jobs in every state (waiting, running, a phase, complete, cancelled), two agents,
/// logs and results; client-sent fields carry markup.
async fn populate(srv: &TestServer) -> Data {
    let submit = |queue: &str| json!({"job_queue": queue, "tags": ["web", "t1"], "note": EVIL});
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(srv.submit(&submit("dash-q")).await);
    }
    let waiting = srv.submit(&submit("dash-q")).await;
    let running = srv.pop_id(&["dash-q"]).await.unwrap();
    let provisioning = srv.pop_id(&["dash-q"]).await.unwrap();
    let complete = srv.pop_id(&["dash-q"]).await.unwrap();
    let cancelled = ids[3].clone();
    srv.post_result(&provisioning, &json!({"job_state": "provision"}))
        .await;
    srv.post_json(
        &format!("/v1/result/{complete}/log/output"),
        &fragment(0, "test", &format!("done {EVIL}\n")),
    )
    .await
    .expect_status(200);
    srv.post_result(
        &complete,
        &json!({"job_state": "complete", "status": {"test": 0}, "comment": EVIL}),
    )
    .await;
    srv.cancel(&cancelled).await.expect_status(200);
    for (name, state, job) in [
        ("dev-1", "test", running.as_str()),
        ("dev-2", "waiting", ""),
    ] {
        srv.post_json(
            &format!("/v1/agents/data/{name}"),
            &json!({"state": state, "queues": ["dash-q"], "job_id": job, "location": EVIL}),
        )
        .await
        .expect_status(200);
    }
    Data {
        waiting,
        running,
        provisioning,
        complete,
        cancelled,
    }
}

/// The number in the element with `id` on an HTML page.
fn figure(html: &str, id: &str) -> usize {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    rest[start..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("#{id} is not a number"))
}

#[tokio::test]
async fn pages_render_figures_match_the_api_and_markup_stays_text_when_served() {
    let srv = TestServer::start();
    let d = populate(&srv).await;
    // `/` is still the version text for agents and scripts, the overview for browsers.
    let plain = srv.get("/").await;
    assert!(plain.text().starts_with("Testflinger Server"));
    let home = srv.get_with_headers("/", &[("accept", "text/html")]).await;
    assert!(home.content_type().unwrap().starts_with("text/html"));
    let waiting_api = srv
        .get("/v1/queues/dash-q/jobs")
        .await
        .expect_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["job_state"] == "waiting")
        .count();
    let queue = srv.get("/queues/dash-q").await.text();
    assert_eq!(figure(&queue, "waiting-total"), waiting_api);
    assert_eq!(
        figure(&queue, "running-total"),
        2,
        "running and provisioning"
    );
    assert!(queue.contains(&d.waiting));
    let agents = srv.get("/agents?state=test").await.text();
    assert_eq!(figure(&agents, "agent-count"), 1);
    let searched = srv.get("/jobs?tags=web&state=cancelled").await.text();
    assert!(searched.contains(&d.cancelled) && !searched.contains(&d.complete));
    for path in [
        "/queues".to_owned(),
        "/agents".to_owned(),
        "/agents/dev-1".to_owned(),
        format!("/jobs/{}", d.complete),
        format!("/jobs/{}", d.provisioning),
        "/jobs?queue=dash-q".to_owned(),
    ] {
        let page = srv.get(&path).await;
        page.expect_status(200);
        let html = page.text();
        assert!(!html.contains(EVIL), "{path} let markup through");
    }
    let job = srv.get(&format!("/jobs/{}", d.complete)).await.text();
    assert!(job.contains("&lt;script&gt;"), "the note is shown as text");
    let unescaped = job.replace("&#34;", "\"").replace("&quot;", "\"");
    assert!(
        unescaped.contains("\"job_queue\": \"dash-q\"\n"),
        "YAML definition"
    );
    assert!(unescaped.contains("\"tags\":\n  - \"web\"\n"), "YAML lists");
    // Pages may not be framed by another site, and run only our own script.
    let headers = &srv.get(&format!("/jobs/{}", d.running)).await.headers;
    assert_eq!(headers["x-frame-options"], "DENY");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    // The cancel button is a form: it works without JavaScript, from our own pages only.
    let cancel = format!("/jobs/{}/cancel", d.running);
    let host = srv.base().trim_start_matches("http://").to_owned();
    let evil_page = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ];
    let old_browser = [("origin", "http://evil.example")];
    for headers in [&evil_page[..], &old_browser[..]] {
        let resp = srv.request("POST", &cancel, headers, Vec::new()).await;
        let message = resp.expect_error(403);
        assert!(
            message.starts_with("Cross-origin request refused"),
            "{message}"
        );
    }
    assert_eq!(srv.job_state(&d.running).await, "running");
    let own_origin = format!("http://{host}");
    let own_page = [("sec-fetch-site", "same-origin"), ("origin", &own_origin)];
    let resp = srv.request("POST", &cancel, &own_page, Vec::new()).await;
    assert_eq!(resp.status, 303);
    assert_eq!(srv.job_state(&d.running).await, "cancelled");
    srv.get("/static/nope.js").await.expect_status(404);
    srv.get("/agents/no-such-agent").await.expect_status(404);
    // A form on another site posting "JSON" as text/plain submits nothing.
    let job = br#"{"job_queue": "csrf-q"}"#.to_vec();
    let mut headers = evil_page.to_vec();
    headers.push(("content-type", "text/plain"));
    srv.request("POST", "/v1/job", &headers, job)
        .await
        .expect_error(403);
    let listed = srv.get("/v1/queues/csrf-q/jobs").await;
    assert_eq!(listed.status, 204, "{}", listed.text());
    // Nor can an <img> on another site pop a job.
    srv.submit_to("csrf-q").await;
    let pop = [
        ("sec-fetch-site", "cross-site"),
        ("cookie", "agent_name=img"),
    ];
    srv.get_with_headers("/v1/job?queue=csrf-q", &pop)
        .await
        .expect_error(403);
    // A name rebound to 127.0.0.1 does not make another site's page ours: a loopback
    // server with access control off answers browsers at localhost and addresses only.
    let port = host.rsplit(':').next().unwrap();
    let rebound = format!("evil.example:{port}");
    let page = [
        ("host", rebound.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    let r = srv.get_with_headers("/v1/", &page).await;
    assert!(r.expect_error(403).contains("DNS rebinding"));
    let local = format!("localhost:{port}");
    let page = [("host", local.as_str()), ("sec-fetch-site", "same-origin")];
    srv.get_with_headers("/v1/", &page).await.expect_status(200);
    let popped = srv
        .get_with_headers("/v1/job?queue=csrf-q", &[("cookie", "agent_name=a")])
        .await;
    assert_eq!(popped.status, 200, "{}", popped.text());
}

// ---- headless Chromium ----

/// Where screenshots go: `target/screenshots/` of this package.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `extra` flags, killed after 60 s; (stdout, stderr).
fn chromium(url: &str, extra: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("chromium is needed for the dashboard's browser tests: apt-get install chromium chromium-driver (.ci/run does)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => {
            let out = out.unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("chromium did not finish {url} within 60 s");
        }
    }
}

/// Console messages (errors included) Chromium logged for the page.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE(")).collect()
}

#[tokio::test]
async fn every_page_renders_in_chromium_without_console_errors_and_markup_stays_text() {
    let srv = TestServer::start();
    let d = populate(&srv).await;
    let base = srv.base_url();
    let pages = [
        ("overview", "/".to_owned()),
        ("queues", "/queues".to_owned()),
        ("queue", "/queues/dash-q".to_owned()),
        ("agents", "/agents".to_owned()),
        ("agent", "/agents/dev-1".to_owned()),
        ("jobs", "/jobs?tags=web".to_owned()),
        ("job", format!("/jobs/{}", d.complete)),
    ];
    let shots = screenshots();
    for (name, path) in &pages {
        let url = format!("{base}{path}");
        let (dom, stderr) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || chromium(&url, &["--dump-dom"])
        })
        .await
        .unwrap();
        assert!(
            dom.contains("</main>"),
            "{name}: no page rendered:\n{stderr}"
        );
        assert!(
            console_lines(&stderr).is_empty(),
            "{name}: console: {:?}",
            console_lines(&stderr)
        );
        assert!(
            !dom.contains("pwned</title>") && !dom.contains(EVIL),
            "{name}: markup ran or was kept"
        );
        let shot = shots.join(format!("{name}.png"));
        let flag = format!("--screenshot={}", shot.display());
        let url2 = url.clone();
        tokio::task::spawn_blocking(move || chromium(&url2, &[&flag]))
            .await
            .unwrap();
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "{name}: no screenshot"
        );
    }
    let (dom, _) = tokio::task::spawn_blocking(move || {
        chromium(&format!("{base}/queues/dash-q"), &["--dump-dom"])
    })
    .await
    .unwrap();
    let waiting_api = srv
        .get("/v1/queues/dash-q/jobs")
        .await
        .expect_json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["job_state"] == "waiting")
        .count();
    assert_eq!(
        figure(&dom, "waiting-total"),
        waiting_api,
        "the page's figure is the API's"
    );
}

/// The page's script follows the log across streams: each ends unfinished after
/// `--follow-max-secs` and the script opens the next one from the fragment after the last
/// it showed, so a fragment posted after a reconnection shows too, and none twice.
#[tokio::test]
async fn job_page_in_chromium_shows_a_fragment_posted_after_it_opened() {
    let srv = TestServer::start_with(&["--follow-max-secs", "2"]);
    let id = srv
        .submit(&json!({"job_queue": "live-q", "note": EVIL}))
        .await;
    srv.pop_id(&["live-q"]).await.unwrap();
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(0, "setup", "before-open\n"),
    )
    .await;
    let url = format!("{}/jobs/{id}", srv.base_url());
    // Virtual time lets the page's script run; the dump waits while the stream is open.
    let browser = tokio::task::spawn_blocking(move || {
        chromium(&url, &["--dump-dom", "--virtual-time-budget=20000"])
    });
    follow::wait_for_follows(&srv, 1).await;
    let late = format!("after-open {EVIL}\n");
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(1, "test", &late),
    )
    .await;
    // Two streams later (each lasts 2 s), a fragment only the third one can show.
    follow::wait_for_follows(&srv, 3).await;
    srv.post_json(
        &format!("/v1/result/{id}/log/output"),
        &fragment(2, "test", "after-reconnecting\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    srv.post_result(&id, &json!({"job_state": "complete"}))
        .await;
    let (dom, stderr) = browser.await.unwrap();
    assert!(
        dom.contains("before-open"),
        "server-rendered log:\n{stderr}"
    );
    for (text, times) in [
        ("before-open", 1),
        ("after-open &lt;script&gt;", 1),
        ("after-reconnecting", 1),
    ] {
        assert_eq!(dom.matches(text).count(), times, "{text} in:\n{dom}");
    }
    assert!(
        dom.contains("after-open &lt;script&gt;"),
        "the live fragment, as text:\n{dom}"
    );
    assert!(
        console_lines(&stderr).is_empty(),
        "console: {:?}",
        console_lines(&stderr)
    );
}

#[tokio::test]
async fn agent_page_lists_jobs_dispatched_to_it_newest_first_when_it_took_several() {
    let mut srv = TestServer::start_with(crate::util::SNAPSHOT_SOON);
    srv.post_json(
        "/v1/agents/data/rig-1",
        &json!({"state": "waiting", "queues": ["rig-q"]}),
    )
    .await
    .expect_status(200);
    let mut mine = Vec::new();
    for round in 0..3 {
        srv.submit(&json!({"job_queue": "rig-q"})).await;
        let popped = srv
            .get_with_headers("/v1/job?queue=rig-q", &[("cookie", "agent_name=rig-1")])
            .await
            .expect_json();
        let id = crate::util::job_id_of(&popped);
        if round < 2 {
            srv.post_result(&id, &json!({"job_state": "complete"}))
                .await;
        }
        mine.push(id);
    }
    // A job another agent took is not on rig-1's page.
    srv.submit(&json!({"job_queue": "rig-q"})).await;
    let other = srv
        .get_with_headers("/v1/job?queue=rig-q", &[("cookie", "agent_name=rig-2")])
        .await
        .expect_json();
    let other = crate::util::job_id_of(&other);
    let check = |html: String| {
        let at: Vec<usize> = mine
            .iter()
            .map(|id| {
                html.find(id.as_str())
                    .unwrap_or_else(|| panic!("{id} not listed"))
            })
            .collect();
        assert!(at[2] < at[1] && at[1] < at[0], "newest dispatch first");
        assert!(!html.contains(&other), "another agent's job is listed");
    };
    check(srv.get("/agents/rig-1").await.text());
    // Enough log for a snapshot, then the index is rebuilt (or replayed) on restart.
    srv.log_for_a_snapshot().await;
    srv.restart();
    check(srv.get("/agents/rig-1").await.text());
}

#[tokio::test]
async fn queue_page_lists_waiting_jobs_in_dispatch_order_when_more_wait_than_a_page_shows() {
    let srv = TestServer::start();
    // 120 plain jobs, then one with priority: it is dispatched first, though newest.
    let mut plain = Vec::new();
    for _ in 0..120 {
        plain.push(srv.submit(&json!({"job_queue": "deep-q"})).await);
    }
    let urgent = srv
        .submit(&json!({"job_queue": "deep-q", "job_priority": 7}))
        .await;
    let html = srv.get("/queues/deep-q").await.expect_status(200).text();
    assert_eq!(figure(&html, "waiting-total"), 121);
    let table = &html[html.find("id=\"waiting\"").expect("a waiting table")..];
    let at = |id: &str| table.find(id).unwrap_or(usize::MAX);
    assert!(at(&urgent) < at(&plain[0]), "the priority job comes first");
    assert!(at(&plain[0]) < at(&plain[1]), "then the oldest");
    assert_eq!(at(&plain[119]), usize::MAX, "only the first page is listed");
    // The order on the page is the order agents get.
    let first = srv.pop_id(&["deep-q"]).await.unwrap();
    assert_eq!(first, urgent);
}

#[tokio::test]
async fn jobs_page_refuses_an_unknown_state_filter_naming_the_valid_ones_as_the_search_api_does() {
    let srv = TestServer::start();
    srv.post_json("/v1/job", &json!({"job_queue": "q"}))
        .await
        .expect_status(200);
    for path in ["/jobs?state=bogus", "/v1/job/search?state=bogus"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert!(r.text().contains("waiting"), "{path}: {}", r.text());
    }
    let r = srv.get("/jobs?state=waiting").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The page offers what the search takes, the one asked for selected.
    let page = r.text();
    for state in [
        "waiting",
        "provision",
        "reserve",
        "cancelled",
        "complete",
        "active",
    ] {
        assert!(
            page.contains(&format!(">{state}</option>")),
            "{state}: {page}"
        );
    }
    assert!(page.contains("<option selected>waiting</option>"), "{page}");
    assert!(page.contains("<option value=\"\">any</option>"), "{page}");
}

/// The agents page's state box offers the states agents are in now, and the one asked
/// for (selected) even when no agent is in it any more.
#[tokio::test]
async fn agents_page_offers_the_states_agents_are_in() {
    let srv = TestServer::start();
    for (name, state) in [("dev-a", "waiting"), ("dev-b", "provision")] {
        srv.post_json(
            &format!("/v1/agents/data/{name}"),
            &json!({"state": state, "queues": ["q"]}),
        )
        .await
        .expect_status(200);
    }
    let page = srv.get("/agents?state=test").await.text();
    for state in ["waiting", "provision"] {
        assert!(
            page.contains(&format!("<option>{state}</option>")),
            "{state}: {page}"
        );
    }
    assert!(page.contains("<option selected>test</option>"), "{page}");
    assert_eq!(figure(&page, "agent-count"), 0);
}

/// Links to a queue or agent whose name holds `/`, `?` or `#` escape it as one path
/// segment, and lead to its page.
#[tokio::test]
async fn links_to_names_with_slashes_lead_to_their_pages() {
    let srv = TestServer::start();
    let id = srv.submit_to("a/b?c#d").await;
    srv.post_json(
        "/v1/agents/data/x%2Fy",
        &json!({"state": "waiting", "job_id": id}),
    )
    .await
    .expect_status(200);
    let queues = srv.get("/queues").await.text();
    assert!(
        queues.contains(r#"href="/queues/a%2Fb%3Fc%23d""#),
        "{queues}"
    );
    srv.get("/queues/a%2Fb%3Fc%23d").await.expect_status(200);
    let agents = srv.get("/agents").await.text();
    assert!(agents.contains(r#"href="/agents/x%2Fy""#), "{agents}");
    srv.get("/agents/x%2Fy").await.expect_status(200);
    let job = srv.get(&format!("/jobs/{id}")).await.text();
    assert!(job.contains(r#"href="/queues/a%2Fb%3Fc%23d""#), "{job}");
}

/// A job may carry 1,024 tags. Filtering a queue's jobs by tag on `/jobs` looks at each
/// one's tags, for seconds over 2,000 such jobs in a debug build: it must not hold the
/// server meanwhile (it held the one worker for ~10 s, and every other request waited).
/// Judged by order, not by time, so a loaded machine cannot fail it: a request sent while
/// the page is being computed is answered before the page.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_page_filtering_a_queue_of_jobs_with_many_tags_holds_no_one_up() {
    let srv = TestServer::start();
    let tags: Vec<String> = (0..1024).map(|n| format!("tag-{n:04}")).collect();
    let job = json!({"job_queue": "tagged", "tags": tags});
    // 100 at a time: 2,000 at once would pass --max-pending (1,024) and be refused (503).
    for _ in 0..20 {
        let submits: Vec<_> = (0..100)
            .map(|_| {
                let (http, job) = (srv.http(), job.clone());
                tokio::spawn(async move { http.submit(&job).await })
            })
            .collect();
        for submit in submits {
            submit.await.unwrap();
        }
    }
    let page = {
        let http = srv.http();
        tokio::spawn(async move {
            let r = http.get("/jobs?queue=tagged&tags=tag-0007,nowhere").await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other_sent = Instant::now();
    srv.get("/v1/").await.expect_status(200);
    let other_answered = Instant::now();
    let (r, page_answered) = page.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("No jobs."), "no job has both tags");
    assert!(
        other_answered < page_answered || other_sent >= page_answered,
        "a request sent while the page was computed waited for it: answered {:?} after the page",
        other_answered - page_answered
    );
}

/// `/queues` lists the 100 busiest queues with unfinished jobs: with more, it says so,
/// as the overview does, instead of leaving the rest out silently.
#[tokio::test]
async fn queues_page_says_when_it_lists_only_the_busiest_queues() {
    let srv = TestServer::start();
    for n in 0..105 {
        srv.submit_to(&format!("busy-{n:03}")).await;
    }
    let html = srv.get("/queues").await.expect_status(200).text();
    assert_eq!(html.matches("<tr><td><a href=\"/queues/busy-").count(), 100);
    assert!(
        html.contains("id=\"queues-truncated\""),
        "no word of the other 5"
    );
    let few = TestServer::start();
    few.submit_to("alone").await;
    let html = few.get("/queues").await.expect_status(200).text();
    assert!(!html.contains("id=\"queues-truncated\""));
}
