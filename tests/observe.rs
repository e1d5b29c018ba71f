//! Seeing the server from outside: `/metrics` parsed as Prometheus text after known
//! actions, and `/openapi.json` checked against the live router (every route documented,
//! every documented route served, with the same methods) and against upstream's document
//! (shared operations keep upstream's paths, methods and shapes).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::TestServer;

/// One series of a scrape: counters as `<name>_total`, histograms as `<name>_count` and
/// `<name>_sum`, gauges by their name.
struct Series {
    metric: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// `/metrics`, parsed (and so validated) by a strict OpenMetrics parser.
async fn scrape(srv: &TestServer) -> Vec<Series> {
    use openmetrics_parser::OpenMetricsValue as V;
    let resp = srv.get("/metrics").await;
    resp.expect_status(200);
    assert!(resp
        .content_type()
        .is_some_and(|c| c.starts_with("application/openmetrics-text")));
    let text = resp.text();
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e:?}\n{text}"));
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        for s in family.iter_samples() {
            let labels: HashMap<String, String> = s
                .get_labelset()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut push = |suffix: &str, value: f64| {
                out.push(Series {
                    metric: format!("{name}{suffix}"),
                    labels: labels.clone(),
                    value,
                })
            };
            match &s.value {
                V::Gauge(n) | V::Unknown(n) => push("", n.as_f64()),
                V::Counter(c) => push("_total", c.value.as_f64()),
                V::Histogram(h) => {
                    push("_count", h.count.unwrap_or(0) as f64);
                    push("_sum", h.sum.as_ref().map_or(0.0, |n| n.as_f64()));
                }
                other => panic!("{name}: unexpected kind {other:?}"),
            }
        }
    }
    out
}

/// The value of the series `metric` whose labels include `labels`; `None` if absent.
fn sample(scrape: &[Series], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .iter()
        .find(|s| {
            s.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn value(scrape: &[Series], metric: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, metric, labels)
        .unwrap_or_else(|| panic!("no sample {metric}{labels:?} in the scrape"))
}

#[tokio::test]
async fn metrics_report_queues_states_dispatches_and_routes_when_jobs_flow() {
    let srv = TestServer::start_with(&["--metrics-queues", "2", "--max-job-bytes", "4096"]);
    let mut qa = Vec::new();
    for _ in 0..3 {
        qa.push(srv.submit_to("qa").await);
    }
    srv.submit_to("qb").await;
    // Dispatches admit qa and qb to their own labels (the cap is 2).
    assert!(srv.pop_id(&["qa"]).await.is_some());
    assert!(srv.pop_id(&["qb"]).await.is_some());
    srv.submit_to("qc").await;
    srv.submit_to("qd").await;
    srv.submit_to("qd").await;
    let waiting_qa = qa[2].clone();
    srv.cancel(&waiting_qa).await.expect_status(200);
    srv.get("/no/such/route").await.expect_status(404);
    let big = json!({"job_queue": "qa", "pad": "x".repeat(5000)});
    srv.post_json("/v1/job", &big).await.expect_status(413);

    let m = scrape(&srv).await;
    // Queue depth and running jobs, beyond the cap summed under `other`.
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "qa")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "qb")]),
        0.0
    );
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "other")]),
        3.0
    );
    assert_eq!(
        value(&m, "flinger_queue_running_jobs", &[("queue", "qa")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_running_jobs", &[("queue", "qb")]),
        1.0
    );
    assert!(sample(&m, "flinger_queue_waiting_jobs", &[("queue", "qc")]).is_none());
    assert!(value(&m, "flinger_queue_oldest_wait_seconds", &[("queue", "qa")]) >= 0.0);
    // Jobs by state.
    assert_eq!(value(&m, "flinger_jobs", &[("state", "waiting")]), 4.0);
    assert_eq!(value(&m, "flinger_jobs", &[("state", "running")]), 2.0);
    assert_eq!(value(&m, "flinger_jobs", &[("state", "cancelled")]), 1.0);
    // Dispatches and their waits.
    assert_eq!(
        value(&m, "flinger_dispatches_total", &[("queue", "qa")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_dispatches_total", &[("queue", "qb")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_job_wait_seconds_count", &[("queue", "qa")]),
        1.0
    );
    // Requests by route template, never the raw path.
    let ok = [("route", "/v1/job"), ("method", "POST"), ("status", "200")];
    assert_eq!(value(&m, "flinger_http_requests_total", &ok), 7.0);
    let cancel = [
        ("route", "/v1/job/{id}/action"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(value(&m, "flinger_http_requests_total", &cancel), 1.0);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(value(&m, "flinger_http_requests_total", &unmatched), 1.0);
    assert!(
        !m.iter().any(|s| s
            .labels
            .get("route")
            .is_some_and(|r| r.contains(&waiting_qa))),
        "a raw path became a label"
    );
    assert_eq!(
        value(
            &m,
            "flinger_http_request_duration_seconds_count",
            &[("route", "/v1/job"), ("method", "POST")]
        ),
        8.0
    );
    // Refusals, the log writer, connections.
    assert_eq!(
        value(
            &m,
            "flinger_refused_requests_total",
            &[("reason", "too_large")]
        ),
        1.0
    );
    // 7 submissions, 2 dispatches, 1 cancellation: 10 records at least.
    assert!(value(&m, "flinger_wal_batch_records_sum", &[]) >= 10.0);
    assert!(value(&m, "flinger_wal_sync_seconds_count", &[]) >= 1.0);
    assert!(value(&m, "flinger_open_connections", &[]) >= 1.0);
}

/// Queue labels go first to queues agents serve: invented queue names that took every
/// label give them up to a queue an agent advertises, and to one an agent's record lists
/// (the invented ones' dispatch series go, and they count under `other`), and later
/// invented names find none free.
#[tokio::test]
async fn queues_agents_serve_take_metric_labels_from_invented_queues() {
    let srv = TestServer::start_with(&["--metrics-queues", "2"]);
    for queue in ["junk1", "junk1", "junk2", "junk2"] {
        srv.submit_to(queue).await;
    }
    assert!(srv.pop_id(&["junk1"]).await.is_some());
    let m = scrape(&srv).await;
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "junk1")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "junk2")]),
        2.0
    );
    assert_eq!(
        value(&m, "flinger_dispatches_total", &[("queue", "junk1")]),
        1.0
    );
    // Every label is taken. One agent advertises "real", another's record lists "lab".
    srv.post_json("/v1/agents/queues", &json!({"real": "a real queue"}))
        .await
        .expect_status(200);
    let record = json!({"state": "waiting", "queues": ["lab"]});
    srv.post_json("/v1/agents/data/lab-agent-1", &record)
        .await
        .expect_status(200);
    srv.submit_to("real").await;
    srv.submit_to("lab").await;
    srv.submit_to("real").await;
    assert!(srv.pop_id(&["real"]).await.is_some());
    srv.submit_to("junk3").await;
    let m = scrape(&srv).await;
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "real")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_running_jobs", &[("queue", "real")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "lab")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_dispatches_total", &[("queue", "real")]),
        1.0
    );
    // junk1 (1 waiting, 1 running), junk2 (2 waiting) and junk3 (1 waiting) are `other`.
    assert_eq!(
        value(&m, "flinger_queue_waiting_jobs", &[("queue", "other")]),
        4.0
    );
    assert_eq!(
        value(&m, "flinger_queue_running_jobs", &[("queue", "other")]),
        1.0
    );
    for junk in ["junk1", "junk2", "junk3"] {
        assert!(
            !m.iter()
                .any(|s| s.labels.get("queue").map(String::as_str) == Some(junk)),
            "{junk} kept a label: {:?}",
            m.iter()
                .filter(|s| s.labels.get("queue").map(String::as_str) == Some(junk))
                .map(|s| &s.metric)
                .collect::<Vec<_>>()
        );
    }
    // A dispatch from an invented queue now counts under `other`.
    assert!(srv.pop_id(&["junk2"]).await.is_some());
    let m = scrape(&srv).await;
    assert_eq!(
        value(&m, "flinger_dispatches_total", &[("queue", "other")]),
        1.0
    );
    assert_eq!(
        value(&m, "flinger_queue_running_jobs", &[("queue", "other")]),
        2.0
    );
    assert!(sample(&m, "flinger_dispatches_total", &[("queue", "junk2")]).is_none());
}

/// Queue names are the clients': one holding `"` or `\` is written escaped in every
/// series labelled by queue, so the scrape still parses and no name adds labels of its own.
#[tokio::test]
async fn queue_names_with_quotes_and_backslashes_are_escaped_in_metrics() {
    let srv = TestServer::start();
    let names = [r#"x",state="complete"#, r"bs\", r#"q\"uote"#];
    for name in names {
        srv.submit_to(name).await;
        srv.submit_to(name).await;
        assert!(srv.pop_id(&[name]).await.is_some());
    }
    let m = scrape(&srv).await;
    for name in names {
        for metric in [
            "flinger_queue_waiting_jobs",
            "flinger_queue_running_jobs",
            "flinger_dispatches_total",
            "flinger_job_wait_seconds_count",
        ] {
            assert_eq!(
                value(&m, metric, &[("queue", name)]),
                1.0,
                "{metric} {name}"
            );
        }
    }
    let invented = m
        .iter()
        .filter(|s| s.metric.starts_with("flinger_queue_") && s.labels.len() != 1)
        .count();
    assert_eq!(invented, 0, "a queue name added labels of its own");
}

/// hyper accepts any token as a method and any path: labelling request metrics by either
/// would let a client add series (and server memory) without bound.
#[tokio::test]
async fn request_metrics_keep_a_bounded_number_of_series_when_methods_and_paths_are_made_up() {
    let srv = TestServer::start();
    let http = srv.http();
    // A queue with a job, so the queue gauges have a sample (the scrape's parser refuses
    // a family without one).
    srv.submit_to("q").await;
    for i in 0..300 {
        let method = format!("MADEUP{i}");
        // Made-up methods on a real route (405) and on made-up paths (404).
        http.request(&method, "/v1/job", &[], Vec::new()).await;
        http.request(&method, &format!("/made/up/{i}"), &[], Vec::new())
            .await;
        http.get(&format!("/v1/made-up-{i}"))
            .await
            .expect_status(404);
    }
    let m = scrape(&srv).await;
    let requests: Vec<&Series> = m
        .iter()
        .filter(|s| s.metric == "flinger_http_requests_total")
        .collect();
    let methods: BTreeSet<&str> = requests
        .iter()
        .map(|s| s.labels["method"].as_str())
        .collect();
    let routes: BTreeSet<&str> = requests
        .iter()
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert_eq!(methods, BTreeSet::from(["GET", "POST", "other"]));
    assert_eq!(routes, BTreeSet::from(["/v1/job", "unmatched"]));
    // Every made-up request is counted, in one series per (route, method, status).
    assert_eq!(
        value(
            &m,
            "flinger_http_requests_total",
            &[("route", "/v1/job"), ("method", "other"), ("status", "405")]
        ),
        300.0
    );
    assert_eq!(
        value(
            &m,
            "flinger_http_requests_total",
            &[
                ("route", "unmatched"),
                ("method", "other"),
                ("status", "404")
            ]
        ),
        300.0
    );
    assert_eq!(
        value(
            &m,
            "flinger_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        300.0
    );
    let latency = m
        .iter()
        .filter(|s| s.metric == "flinger_http_request_duration_seconds_count")
        .count();
    assert_eq!(latency, 4, "one latency series per (route, method)");
}

#[tokio::test]
async fn metrics_report_snapshots_when_one_was_taken() {
    let srv = TestServer::start_with(crate::util::SNAPSHOT_SOON);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut submitted = 0;
    let job = json!({"job_queue": "snap", "pad": "x".repeat(60_000)});
    loop {
        for _ in 0..20 {
            srv.submit(&job).await;
            submitted += 1;
        }
        let m = scrape(&srv).await;
        if value(&m, "flinger_snapshot_duration_seconds_count", &[]) >= 1.0 {
            assert!(value(&m, "flinger_snapshot_bytes", &[]) > 0.0);
            assert_eq!(
                value(&m, "flinger_jobs", &[("state", "waiting")]),
                submitted as f64
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot after {submitted} jobs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `path` with every `{param}` replaced by a value no literal segment has.
fn sample_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "00000000-0000-4000-8000-000000000000"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "options", "head", "trace",
];

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let srv = TestServer::start();
    let doc = srv.get("/openapi.json").await.expect_json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "too few paths: {}", paths.len());
    let mut problems = Vec::new();
    for (path, ops) in paths {
        let documented: BTreeSet<String> = ops
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        // A method no route has: the router answers 405 and lists the methods it has.
        let resp = srv
            .request("PROBE", &sample_path(path), &[], Vec::new())
            .await;
        if resp.status != 405 {
            problems.push(format!(
                "{path}: documented but not routed (status {})",
                resp.status
            ));
            continue;
        }
        let allowed: BTreeSet<String> = resp
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_owned())
            // HEAD comes with GET and OPTIONS with every route; neither is documented.
            .filter(|m| !m.is_empty() && m != "HEAD" && m != "OPTIONS")
            .collect();
        if allowed != documented {
            problems.push(format!(
                "{path}: routed {allowed:?}, documented {documented:?}"
            ));
        }
        for (method, op) in ops.as_object().unwrap() {
            if op["responses"].as_object().is_none_or(|r| r.is_empty())
                || op["summary"].as_str().is_none()
            {
                problems.push(format!("{method} {path}: no summary or no responses"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the document and the router differ:\n{}",
        problems.join("\n")
    );
}

/// `schema` with every `$ref` replaced by the schema it names (recursion cut at depth 8).
fn resolve(schema: &Value, components: &Value, depth: usize) -> Value {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let name = r.rsplit('/').next().unwrap();
                if depth > 8 {
                    return json!({ "$ref": name });
                }
                return resolve(&components["schemas"][name], components, depth + 1);
            }
            Value::Object(
                map.iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.as_str(),
                            "description" | "summary" | "tags" | "x-permission-roles"
                        )
                    })
                    .map(|(k, v)| (k.clone(), resolve(v, components, depth)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, components, depth))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn shared_operations_keep_upstream_paths_methods_and_shapes() {
    let srv = TestServer::start();
    let ours = srv.get("/openapi.json").await.expect_json();
    let upstream: Value = serde_json::from_str(include_str!("data/upstream-openapi.json")).unwrap();
    // Upstream endpoints flinger does not serve (README's compatibility table says why).
    let not_served = [
        "/oidc/",
        "/v1/oauth2/",
        "/v1/client-permissions",
        "/v1/restricted-queues",
        "/v1/secrets/",
        "/events",
    ];
    let mut shared = 0;
    let mut problems = Vec::new();
    let ours_paths: HashMap<&String, &Value> = ours["paths"].as_object().unwrap().iter().collect();
    for (path, up_ops) in upstream["paths"].as_object().unwrap() {
        if not_served.iter().any(|p| path.contains(p)) {
            continue;
        }
        let Some(our_ops) = ours_paths.get(path) else {
            problems.push(format!(
                "{path}: upstream has it, flinger's document does not"
            ));
            continue;
        };
        for (method, up_op) in up_ops.as_object().unwrap() {
            let our_op = &our_ops[method];
            if our_op.is_null() {
                problems.push(format!("{method} {path}: missing"));
                continue;
            }
            shared += 1;
            for part in ["parameters", "requestBody", "responses"] {
                let a = resolve(&our_op[part], &ours["components"], 0);
                let b = resolve(&up_op[part], &upstream["components"], 0);
                if a != b {
                    problems.push(format!("{method} {path}: {part} differs from upstream"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(shared >= 25, "only {shared} shared operations compared");
}

/// The snapshot size and count the metrics report now.
async fn snapshots(srv: &TestServer) -> (f64, f64) {
    let m = scrape(srv).await;
    (
        value(&m, "flinger_snapshot_duration_seconds_count", &[]),
        value(&m, "flinger_snapshot_bytes", &[]),
    )
}

#[tokio::test]
async fn next_snapshot_waits_until_the_log_grew_by_the_percentage_of_the_last_one_when_it_is_set() {
    // 1 MiB of log alone would snapshot again after about 20 jobs; at 1000 % the second
    // snapshot waits until the log since the first is ten times that snapshot's size.
    let srv = TestServer::start_with(
        &[
            crate::util::SNAPSHOT_SOON,
            &["--snapshot-growth-percent", "1000"],
        ]
        .concat(),
    );
    let job = json!({"job_queue": "grow", "pad": "x".repeat(50_000)});
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = None;
    let mut submitted = 0;
    let second = loop {
        srv.submit(&job).await;
        submitted += 1;
        // Snapshots are taken in the background: give one a moment to land.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (count, bytes) = snapshots(&srv).await;
        match (count as u64, first) {
            (0, _) => {}
            (1, None) => first = Some(bytes),
            (1, Some(_)) => {}
            (_, Some(first)) => break (first, bytes),
            (_, None) => panic!("two snapshots before the first was seen"),
        }
        assert!(
            Instant::now() < deadline,
            "no second snapshot after {submitted} jobs"
        );
    };
    let (first, second) = second;
    // Each job adds about as much to a snapshot as to the log (its 50 KB body, in both):
    // the log grew by ten first snapshots, so the state did by several.
    assert!(
        second >= 4.0 * first,
        "second snapshot {second} B came too soon after the first of {first} B"
    );
}

/// The operator routes' answers are what `/openapi.json` says they are: `OK` as text.
#[tokio::test]
async fn operator_deletes_answer_as_documented() {
    let srv = TestServer::start();
    let doc = srv.get("/openapi.json").await.expect_json();
    let id = srv.submit(&json!({"job_queue": "documented"})).await;
    srv.post_json("/v1/agents/data/dev-doc", &json!({"state": "waiting"}))
        .await
        .expect_status(200);
    for (path, documented) in [
        (format!("/v1/job/{id}"), "/v1/job/{job_id}"),
        (
            "/v1/agents/data/dev-doc".to_owned(),
            "/v1/agents/data/{agent_name}",
        ),
    ] {
        let r = srv.request("DELETE", &path, &[], Vec::new()).await;
        assert_eq!((r.status, r.text().as_str()), (200, "OK"), "{path}");
        assert!(
            r.content_type()
                .unwrap_or_default()
                .starts_with("text/plain"),
            "{path}: {:?}",
            r.content_type()
        );
        let content = &doc["paths"][documented]["delete"]["responses"]["200"]["content"];
        assert_eq!(
            content["text/plain"]["schema"]["example"], "OK",
            "{documented}: {content}"
        );
    }
}

/// On a dual-stack socket (`[::]`) an IPv4 loopback client arrives as
/// `::ffff:127.0.0.1`: it is the server's own host all the same, and may use the
/// operator routes with access control off (it was refused 403), as `::1` may.
#[tokio::test]
async fn an_ipv4_loopback_client_of_a_dual_stack_socket_is_the_servers_own_host() {
    let mut args = vec!["--bind", "[::]:0", "--allow-open-access"];
    if crate::util::pg::switched_on() {
        args.extend(["--advertise-url", "http://127.0.0.1:9"]);
    }
    let srv = TestServer::start_with(&args);
    let port = srv.base_url().rsplit(':').next().unwrap().to_owned();
    for (from, to) in [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")] {
        let id = srv.submit(&json!({"job_queue": "own-host"})).await;
        let mut conn = crate::util::RawConn::connect_from(
            &format!("http://{to}:{port}"),
            from.parse().unwrap(),
        )
        .await;
        let request =
            format!("DELETE /v1/job/{id} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        conn.send(request.as_bytes()).await;
        let r = conn.read_response().await.expect("an answer");
        assert_eq!(r.status, 200, "from {from}: {r:?}");
    }
}
