//! Errors as a client sees them: unknown routes (404) and wrong methods (405) answer JSON
//! `{"message": ...}`, and a table of odd requests sent to every endpoint never gets a 5xx.

use serde_json::{json, Value};

use crate::util::{new_id, raw_exchange, raw_post, Http, RawConn, Resp, TestServer};

/// Every route of the API with `{id}` standing for a job id, and the methods it serves.
const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/v1", &["GET"]),
    ("/v1/", &["GET"]),
    ("/v1/job", &["GET", "POST"]),
    ("/v1/job/{id}", &["GET"]),
    ("/v1/job/{id}/position", &["GET"]),
    ("/v1/job/{id}/action", &["POST"]),
    ("/v1/result/{id}", &["GET", "POST"]),
    ("/v1/result/{id}/artifact", &["GET", "POST"]),
    ("/v1/result/{id}/output", &["GET", "POST"]),
    ("/v1/agents/queues", &["GET", "POST"]),
    ("/v1/agents/images", &["POST"]),
    ("/v1/agents/images/{id}", &["GET"]),
];

/// Records a problem instead of panicking, so one run reports every offending request.
fn check(problems: &mut Vec<String>, what: &str, r: &Resp) {
    if r.status >= 500 {
        problems.push(format!("{what} -> {} {}", r.status, r.text_preview()));
        return;
    }
    if r.status >= 400 {
        let ct = r.content_type().unwrap_or_default();
        let is_json_error = ct.starts_with("application/json")
            && matches!(serde_json::from_slice::<Value>(&r.body), Ok(Value::Object(ref m)) if m.get("message").is_some_and(Value::is_string));
        if !is_json_error {
            problems.push(format!(
                "{what} -> {} not a JSON error (content-type {ct:?}): {}",
                r.status,
                r.text_preview()
            ));
        }
    }
}

fn short(s: &str) -> String {
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...({} bytes)", &s[..end], s.len())
    } else {
        s.to_string()
    }
}

#[tokio::test]
async fn unknown_route_is_404_json_when_requested() {
    let srv = TestServer::start();
    for path in [
        "/v1/something",
        "/v2/job",
        "/nope",
        "/v1/job/00000000-0000-0000-0000-000000000000/nope",
        "/v1/result/00000000-0000-0000-0000-000000000000/log",
        "/v1/agents",
        "/v1/agents/images/q/extra",
        "/v1//job",
    ] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text_preview());
        r.expect_json_error();
    }
    srv.post_json("/v1/jobs", &json!({"job_queue": "q"}))
        .await
        .expect_error(404);
}

#[tokio::test]
async fn wrong_method_is_405_json_when_route_exists() {
    let srv = TestServer::start();
    let id = new_id();
    let cases: Vec<(&str, String)> = vec![
        ("POST", "/".to_string()),
        ("DELETE", "/v1/".to_string()),
        ("DELETE", "/v1/job".to_string()),
        ("PUT", "/v1/job".to_string()),
        ("POST", format!("/v1/job/{id}")),
        ("PUT", format!("/v1/job/{id}")),
        ("POST", format!("/v1/job/{id}/position")),
        ("GET", format!("/v1/job/{id}/action")),
        ("PUT", format!("/v1/result/{id}")),
        ("DELETE", format!("/v1/result/{id}")),
        ("PATCH", format!("/v1/result/{id}/output")),
        ("PUT", format!("/v1/result/{id}/artifact")),
        ("DELETE", "/v1/agents/queues".to_string()),
        ("GET", "/v1/agents/images".to_string()),
        ("POST", "/v1/agents/images/q".to_string()),
    ];
    for (method, path) in cases {
        let r = srv
            .request(
                method,
                &path,
                &[("content-type", "application/json")],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text_preview());
        r.expect_json_error();
    }
}

/// `OPTIONS` on any routed path is answered as upstream's Flask answers it: 200, no body,
/// and `Allow` naming the route's methods, before any authentication (access control on,
/// no credential); a 405 names the same methods. An unknown path stays 404.
#[tokio::test]
async fn options_lists_the_routes_methods_when_asked_on_any_route() {
    let srv = TestServer::start_with(&["--access-control", "on"]);
    let id = new_id();
    let cases = [
        ("/v1/job", "GET, OPTIONS, POST"),
        ("/v1/job/", "GET, OPTIONS, POST"),
        (
            &format!("/v1/job/{id}") as &str,
            "DELETE, GET, HEAD, OPTIONS",
        ),
        (
            &format!("/v1/result/{id}/log/output"),
            "GET, HEAD, OPTIONS, POST",
        ),
        ("/v1/agents/data/dut-1", "DELETE, GET, HEAD, OPTIONS, POST"),
        ("/v1/secrets/me/a/b", "DELETE, OPTIONS, PUT"),
    ];
    for (path, methods) in cases {
        let r = srv.request("OPTIONS", path, &[], Vec::new()).await;
        assert_eq!(r.status, 200, "OPTIONS {path}: {}", r.text_preview());
        assert!(r.body.is_empty(), "OPTIONS {path}: {}", r.text_preview());
        assert_eq!(r.headers["allow"], methods, "OPTIONS {path}");
        let r = srv.request("PATCH", path, &[], Vec::new()).await;
        assert_eq!(r.status, 405, "PATCH {path}: {}", r.text_preview());
        assert_eq!(r.headers["allow"], methods, "PATCH {path}");
    }
    srv.request("OPTIONS", "/v1/nothing-here", &[], Vec::new())
        .await
        .expect_error(404);
}

#[tokio::test]
async fn json_error_bodies_are_returned_when_requests_are_rejected() {
    // A spot check across areas that every error carries application/json and a message.
    let srv = TestServer::start();
    srv.get("/v1/job").await.expect_error(400);
    srv.get("/v1/job/foo").await.expect_error(400);
    srv.post_raw("/v1/job", None, b"x".to_vec())
        .await
        .expect_error(400);
    srv.post_raw("/v1/result/foo", None, b"{}".to_vec())
        .await
        .expect_error(400);
    srv.cancel(&new_id()).await.expect_error(400);
    srv.get("/missing").await.expect_error(404);
    srv.request("DELETE", "/v1/job", &[], Vec::new())
        .await
        .expect_error(405);
}

/// Ids to put where a route expects `{id}` (already in path form).
fn odd_ids() -> Vec<String> {
    vec![
        String::new(),
        "x".into(),
        "x".repeat(10_000),
        "0".repeat(10_000),
        "%00".into(),
        "00000000-0000-0000-0000-000000000000%00".into(),
        "%00000000-0000-0000-0000-000000000000".into(),
        "%FF".into(),
        "%C3%28".into(),
        "%C3%BC".into(),
        "%".into(),
        "%zz".into(),
        "..".into(),
        "%2e%2e".into(),
        "a%2Fb".into(),
        "%2F%2F%2F".into(),
        "%7B".into(),
        "%7B%7D".into(),
        "urn:uuid:".into(),
        "-1".into(),
        "null".into(),
        "%5B%5D".into(),
        "%20".into(),
        "00000000-0000-0000-0000-0000000000000000".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        new_id().to_uppercase(),
        "0000000000000000000000000000000g".into(),
    ]
}

/// Bodies to POST everywhere.
fn odd_bodies() -> Vec<Vec<u8>> {
    let mut deep_list = "[".repeat(100_000).into_bytes();
    deep_list.extend(std::iter::repeat_n(b']', 100_000));
    let mut deep_obj = String::new();
    for _ in 0..20_000 {
        deep_obj.push_str("{\"a\":");
    }
    deep_obj.push('1');
    deep_obj.push_str(&"}".repeat(20_000));
    let mut near_limit = String::from("{\"job_queue\":\"q\",\"x\":");
    near_limit.push_str(&"[".repeat(126));
    near_limit.push_str(&"]".repeat(126));
    near_limit.push('}');
    vec![
        b"".to_vec(),
        b"garbage".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"[]".to_vec(),
        b"[1,2]".to_vec(),
        b"[{\"job_queue\":\"q\"}]".to_vec(),
        b"null".to_vec(),
        b"\"s\"".to_vec(),
        b"1e999999".to_vec(),
        b"-0".to_vec(),
        b"{\"job_queue\":\"q\",\"job_queue\":\"r\"}".to_vec(),
        b"{\"job_queue\":\"q\"} trailing".to_vec(),
        b"\xef\xbb\xbf{\"job_queue\":\"q\"}".to_vec(),
        b"{\"job_queue\":\"\xff\xfe\"}".to_vec(),
        b"{\"job_queue\":\"\\ud800\"}".to_vec(),
        b"{\"job_queue\":\"q\",\"job_id\":\"\\u0000\"}".to_vec(),
        b"{\"job_queue\":\"\\u0000\"}".to_vec(),
        b"{\"job_queue\":\"q\",\"job_id\":1e400}".to_vec(),
        b"{\"action\":\"cancel\",\"action\":\"foo\"}".to_vec(),
        b"{\"q\":{\"img\":\"d\"},\"q\":\"x\"}".to_vec(),
        b"\0\0\0\0".to_vec(),
        deep_list,
        deep_obj.into_bytes(),
        near_limit.into_bytes(),
        format!("{{\"job_queue\":\"{}\"}}", "q".repeat(100_000)).into_bytes(),
        format!("{{\"{}\":\"long key\"}}", "k".repeat(100_000)).into_bytes(),
    ]
}

async fn fuzz_ids(http: &Http, problems: &mut Vec<String>) {
    for id in odd_ids() {
        for (template, methods) in ROUTES.iter().filter(|(t, _)| t.contains("{id}")) {
            let path = template.replace("{id}", &id);
            for method in *methods {
                let body = br#"{"action":"cancel","job_queue":"q"}"#.to_vec();
                let what = format!("{method} {}", short(&path));
                match http
                    .try_request(method, &path, &[("content-type", "application/json")], body)
                    .await
                {
                    Ok(r) => check(problems, &what, &r),
                    Err(e) if e.starts_with("building request") => {} // not expressible as a URI
                    Err(e) => problems.push(format!("{what} -> {e}")),
                }
            }
        }
    }
}

async fn fuzz_bodies(http: &Http, problems: &mut Vec<String>) {
    let id = new_id();
    let post_paths: Vec<String> = ROUTES
        .iter()
        .filter(|(_, m)| m.contains(&"POST"))
        .map(|(t, _)| t.replace("{id}", &id))
        .collect();
    let content_types = [
        Some("application/json"),
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=zzz"),
        Some("application/json; charset=latin1"),
    ];
    for body in odd_bodies() {
        for path in &post_paths {
            for ct in content_types {
                let mut headers = Vec::new();
                if let Some(ct) = ct {
                    headers.push(("content-type", ct));
                }
                let what = format!(
                    "POST {path} ({ct:?}) body {}",
                    short(&String::from_utf8_lossy(&body))
                );
                match http.try_request("POST", path, &headers, body.clone()).await {
                    Ok(r) => check(problems, &what, &r),
                    Err(e) => problems.push(format!("{what} -> {e}")),
                }
            }
        }
    }
}

async fn fuzz_methods_and_queries(http: &Http, problems: &mut Vec<String>) {
    let id = new_id();
    for (template, _) in ROUTES {
        let path = template.replace("{id}", &id);
        for method in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "FOO-BAR",
        ] {
            let what = format!("{method} {path}");
            match http.try_request(method, &path, &[], b"{}".to_vec()).await {
                Ok(r) => check(problems, &what, &r),
                Err(e) => problems.push(format!("{what} -> {e}")),
            }
        }
    }
    let long = "q".repeat(10_000);
    let queries = [
        "?queue=".to_string(),
        "?queue=%00".to_string(),
        "?queue=%FF".to_string(),
        "?queue=%C3%28".to_string(),
        format!("?queue={long}"),
        format!("?queue={long}&queue={long}"),
        "?queue=a&queue=%".to_string(),
        "?queue%5B%5D=x".to_string(),
        "?%%%".to_string(),
        "?queue=a;b".to_string(),
        "?queue=a&&&queue=b&".to_string(),
        "?queue".to_string(),
        "?=x".to_string(),
        "?queue=a%26queue%3Db".to_string(),
        format!(
            "?{}",
            (0..2000)
                .map(|i| format!("queue=q{i}"))
                .collect::<Vec<_>>()
                .join("&")
        ),
    ];
    for q in queries {
        for path in ["/v1/job", "/v1/agents/queues", "/v1/"] {
            let full = format!("{path}{q}");
            let what = format!("GET {}", short(&full));
            match http.try_request("GET", &full, &[], Vec::new()).await {
                Ok(r) => check(problems, &what, &r),
                Err(e) if e.starts_with("building request") => {}
                Err(e) => problems.push(format!("{what} -> {e}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn odd_requests_never_get_a_server_error_when_sent_to_every_endpoint() {
    let srv = TestServer::start();
    // Some state, so handlers that find a job take their non-trivial paths too.
    let waiting = srv.submit_to("q").await;
    let running = srv.submit_to("q").await;
    let _ = srv.pop(&["q"]).await;

    // Fresh connections: keep-alive after refused bodies is the concern of
    // `connection_is_reusable_or_marked_close_when_an_oversized_body_is_refused`, not of this test.
    let http = srv.http().unpooled();
    let (a, b, c) = (http.clone(), http.clone(), http.clone());
    let ids = tokio::spawn(async move {
        let mut p = Vec::new();
        fuzz_ids(&a, &mut p).await;
        p
    });
    let bodies = tokio::spawn(async move {
        let mut p = Vec::new();
        fuzz_bodies(&b, &mut p).await;
        p
    });
    let methods = tokio::spawn(async move {
        let mut p = Vec::new();
        fuzz_methods_and_queries(&c, &mut p).await;
        p
    });
    let mut problems = ids.await.unwrap();
    problems.extend(bodies.await.unwrap());
    problems.extend(methods.await.unwrap());
    // Same bodies against ids that name real jobs.
    for id in [&waiting, &running] {
        for body in odd_bodies() {
            for path in [format!("/v1/job/{id}/action"), format!("/v1/result/{id}")] {
                let what = format!(
                    "POST {path} body {}",
                    short(&String::from_utf8_lossy(&body))
                );
                match http
                    .try_request(
                        "POST",
                        &path,
                        &[("content-type", "application/json")],
                        body.clone(),
                    )
                    .await
                {
                    Ok(r) => check(&mut problems, &what, &r),
                    Err(e) => problems.push(format!("{what} -> {e}")),
                }
            }
        }
    }

    assert!(
        problems.is_empty(),
        "{} bad answers:\n{}",
        problems.len(),
        problems
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Still serving, and nothing panicked along the way.
    srv.get("/v1/").await.expect_status(200);
    let panics: Vec<String> = srv
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "server panicked:\n{}", panics.join("\n"));
}

#[tokio::test]
async fn malformed_http_never_gets_a_server_error_when_sent_raw() {
    let srv = TestServer::start();
    let mut requests: Vec<Vec<u8>> = vec![
        b"GET /v1/job/%ZZ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"BREW / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\nGET /v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"garbage garbage garbage\r\n\r\n".to_vec(),
        b"POST /v1/job HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
        b"POST /v1/job HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        b"POST /v1/job HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n\r\n".to_vec(),
        b"POST /v1/result/00000000-0000-0000-0000-000000000000/output HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        b"GET /v1/ HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n".to_vec(),
        b"GET http://evil.example/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    let mut big_uri = b"GET /".to_vec();
    big_uri.extend(std::iter::repeat_n(b'a', 70_000));
    big_uri.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    requests.push(big_uri);
    let mut big_header = b"GET /v1/ HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'h', 200_000));
    big_header.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    requests.push(big_header);
    let mut many_headers = b"GET /v1/ HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..500 {
        many_headers.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"Connection: close\r\n\r\n");
    requests.push(many_headers);

    let mut problems = Vec::new();
    for req in &requests {
        if let Some(r) = raw_exchange(&srv.base_url(), req).await {
            let status = r.status;
            if status >= 500 && status != 505 {
                problems.push(format!(
                    "{:?} -> {status}",
                    short(&String::from_utf8_lossy(req))
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "server errors:\n{}",
        problems.join("\n")
    );
    srv.get("/v1/").await.expect_status(200);
}

#[tokio::test]
async fn deeply_nested_job_round_trips_when_within_parser_limits() {
    let srv = TestServer::start();
    let mut nested = json!("leaf");
    for i in 0..100 {
        nested = if i % 2 == 0 {
            json!([nested])
        } else {
            json!({ "n": nested })
        };
    }
    let job = json!({"job_queue": "q", "deep": nested});
    let id = srv.submit(&job).await;
    let got = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(got["deep"], job["deep"]);
    let popped = srv.pop(&["q"]).await.expect("queued");
    assert_eq!(popped["deep"], job["deep"]);
    srv.post_result(&id, &json!({"deep": job["deep"].clone()}))
        .await;
    assert_eq!(srv.result(&id).await["deep"], job["deep"]);
}

#[tokio::test]
async fn connection_is_reusable_or_marked_close_when_an_oversized_body_is_refused() {
    // HTTP/1.1 keep-alive: a server that answers 413 without reading the body and then closes
    // the connection must say `Connection: close`, or the client's next request on that
    // connection fails. Either header or a usable connection is fine; silence plus close is not.
    let srv = TestServer::start_with(&["--max-job-bytes", "1000"]);
    for size in [1_001, 5_000, 64 * 1024, 3 * 1024 * 1024] {
        let mut body = br#"{"job_queue":"q","f":""#.to_vec();
        body.resize(size - 2, b'z');
        body.extend_from_slice(b"\"}");
        let mut conn = RawConn::connect(&srv.base_url()).await;
        conn.send(&raw_post("/v1/job", Some("application/json"), &body, false))
            .await;
        let r = conn.read_response().await.expect("a 413 response");
        r.expect_error(413);
        let says_close = r
            .headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .contains("close")
            });
        if says_close {
            continue;
        }
        conn.send(b"GET /v1/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let next = conn.read_response().await;
        assert!(
            next.as_ref().is_some_and(|n| n.status == 200),
            "{size}-byte body: 413 without `Connection: close`, then the connection was dropped \
             (next request on it got {:?})",
            next.map(|n| n.status)
        );
    }
}
