//! Hostile and broken clients (issue 14): slow bodies, readers that never read, heads and
//! multipart framing that never end, too many parts, odd queue names, a SIGTERM with
//! stalled connections, descriptor limits. Each test makes its limit small so it runs in
//! seconds, and checks that a well-behaved client is still served meanwhile.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{self, multipart, Part, RawConn, TestServer};

/// A server whose minimum transfer rate is 1 KiB per second.
fn strict_rate(extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--min-transfer-bytes",
        "1024",
        "--transfer-window-secs",
        "1",
    ];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

#[tokio::test]
async fn trickled_body_gets_408_while_other_clients_are_served() {
    let srv = strict_rate(&[]);
    let mut slow = RawConn::connect(&srv.base_url()).await;
    slow.send(b"POST /v1/job HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await;
    // Meanwhile a normal client is answered.
    let id = srv.submit_to("q").await;
    assert_eq!(srv.job_state(&id).await, "waiting");
    let answer = slow.read_response().await.expect("an answer");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(
        answer.message().contains("slower than 1024 bytes per 1 s"),
        "{}",
        answer.text()
    );
    assert_eq!(answer.headers.get("connection").unwrap(), "close");
}

#[tokio::test]
async fn slow_but_steady_body_is_accepted_when_above_the_minimum_rate() {
    let srv = strict_rate(&[]);
    let job = serde_json::to_vec(&json!({"job_queue": "q", "pad": "x".repeat(5000)})).unwrap();
    let mut conn = RawConn::connect(&srv.base_url()).await;
    conn.send(
        format!(
            "POST /v1/job HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            job.len()
        )
        .as_bytes(),
    )
    .await;
    // 600 bytes every 250 ms: 2.4 KiB/s, above 1 KiB/s, over about 2 s.
    for piece in job.chunks(600) {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = conn.read_response().await.expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn client_that_never_reads_a_large_response_is_disconnected() {
    let srv = strict_rate(&[]);
    let id = srv.submit_to("q").await;
    let size = 24 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    srv.post_multipart(&format!("/v1/result/{id}/artifact"), "file", "a.tgz", &data)
        .await
        .expect_status(200);

    // A small receive buffer so the kernel cannot swallow the whole response for us.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = srv
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /v1/result/{id}/artifact HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // Not reading for several windows: the server gives up on the connection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        received.len() < size,
        "the whole response ({} bytes) was delivered to a client that did not read",
        received.len()
    );
    // The server is fine.
    srv.get(&format!("/v1/job/{id}")).await.expect_status(200);
}

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431() {
    let srv = TestServer::start_with(&["--max-header-bytes", "8192"]);
    let big = "a".repeat(10_000);
    let answer = util::raw_exchange(
        &srv.base_url(),
        format!("GET /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status, 431);
    srv.get("/v1/").await.expect_status(200);
}

#[tokio::test]
async fn the_default_max_header_bytes_is_exact_for_a_head_that_arrives_whole() {
    // hyper's read buffer alone let heads of up to ~114 KB through under a 64 KiB limit
    // when they arrived in one read.
    let srv = TestServer::start();
    let head = |filler: usize| {
        let start = "GET /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        let pad = 65536 - start.len() - "X-A: \r\n\r\n".len() + filler;
        format!("{start}X-A: {}\r\n\r\n", "a".repeat(pad))
    };
    let at_limit = util::raw_exchange(&srv.base_url(), head(0).as_bytes())
        .await
        .expect("an answer");
    assert_eq!(at_limit.status, 200);
    for over in [1, 20_000, 48_000] {
        let answer = util::raw_exchange(&srv.base_url(), head(over).as_bytes())
            .await
            .expect("an answer");
        assert_eq!(answer.status, 431, "{over} bytes over");
    }
    // The server's own answer names the sizes; hyper's (a head that overflowed the read
    // buffer before it was whole) has no body.
    let answer = util::raw_exchange(&srv.base_url(), head(1).as_bytes())
        .await
        .expect("an answer");
    let text = answer.text_preview();
    assert!(
        text.is_empty() || text.contains("65537 bytes, over the limit of 65536"),
        "{text:?}"
    );
    srv.get("/v1/").await.expect_status(200);
}

/// Sends an artifact upload whose multipart framing is `prefix` followed by `filler`
/// bytes without end (chunked), and returns the answer.
async fn endless_upload(srv: &TestServer, id: &str, prefix: &str) -> util::Resp {
    let mut conn = RawConn::connect(&srv.base_url()).await;
    conn.send(
        format!(
            "POST /v1/result/{id}/artifact HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let chunk = |data: &[u8]| {
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    };
    conn.send(&chunk(prefix.as_bytes())).await;
    // Up to 16 MiB of filler: far more than the limit allows, far less than the old cost.
    let filler = chunk(&[b'A'; 64 << 10]);
    let writer = async {
        for _ in 0..256 {
            conn.send(&filler).await;
        }
        conn
    };
    let mut conn = writer.await;
    conn.read_response().await.expect("an answer")
}

#[tokio::test]
async fn never_ending_part_header_or_preamble_is_refused_while_others_are_served() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    for prefix in [
        "--BB\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Long: ",
        "preamble that never ends ",
    ] {
        let started = Instant::now();
        let answer = endless_upload(&srv, &id, prefix).await;
        assert_eq!(answer.status, 413, "{prefix:?}: {}", answer.text());
        assert!(
            answer.message().contains("--max-part-header-bytes"),
            "{}",
            answer.text()
        );
        // Bounded: refused after a few KiB, not after the whole upload limit.
        assert!(started.elapsed() < Duration::from_secs(60));
        srv.submit_to("q").await;
    }
    // Nothing was stored.
    srv.get(&format!("/v1/result/{id}/artifact"))
        .await
        .expect_no_content();
}

#[tokio::test]
async fn too_many_parts_or_a_large_other_field_get_413_and_a_5_mib_artifact_round_trips() {
    let srv = TestServer::start_with(&["--max-upload-parts", "4", "--max-field-bytes", "1000"]);
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}/artifact");

    let small = [0u8; 10];
    let many: Vec<Part> = (0..5).map(|_| Part::field("x", &small)).collect();
    let (ct, body) = multipart(&many);
    let answer = srv.post_oversized(&path, Some(&ct), &body).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(
        answer.message().contains("--max-upload-parts"),
        "{}",
        answer.text()
    );

    let big_field = vec![b'x'; 2000];
    let (ct, body) = multipart(&[
        Part::field("comment", &big_field),
        Part::file("file", "a", &small),
    ]);
    let answer = srv.post_oversized(&path, Some(&ct), &body).await;
    assert_eq!(answer.status, 413, "{}", answer.text());

    let data: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 253) as u8).collect();
    let (ct, body) = multipart(&[
        Part::field("comment", b"ok"),
        Part::file("file", "a.tgz", &data),
    ]);
    srv.post_raw(&path, Some(&ct), body)
        .await
        .expect_status(200);
    let back = srv.get(&path).await.expect_status(200).body.clone();
    assert!(back == data, "the artifact changed on the way");
}

#[tokio::test]
async fn queue_names_with_control_bidi_or_only_whitespace_get_400_everywhere() {
    let srv = TestServer::start();
    for bad in [
        "a\u{0}b",
        "a\u{7}",
        "\u{202E}gnp.exe",
        "ab\u{2066}",
        " ",
        "\t \t",
    ] {
        let r = srv.post_json("/v1/job", &json!({"job_queue": bad})).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(r.message().contains("Invalid queue name"), "{}", r.text());
        let escaped: String = url_escape(bad);
        for path in [
            format!("/v1/job?queue={escaped}"),
            format!("/v1/queues/{escaped}/jobs"),
            format!("/v1/queues/{escaped}/agents"),
            format!("/v1/agents/images/{escaped}"),
            format!("/v1/queues/wait_times?queue={escaped}"),
        ] {
            let r = srv.get(&path).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
        }
        let r = srv.post_json("/v1/agents/queues", &json!({bad: "d"})).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        let r = srv
            .post_json("/v1/agents/images", &json!({bad: {"i": "d"}}))
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        let r = srv
            .post_json("/v1/agents/data/agent1", &json!({"queues": ["ok", bad]}))
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    // Ordinary names, spaces inside and non-Latin letters included, still work.
    for good in ["q", "my queue", "очередь-1"] {
        srv.post_json("/v1/job", &json!({"job_queue": good}))
            .await
            .expect_status(200);
    }
}

fn url_escape(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn sigterm_does_not_wait_for_idle_or_stalled_connections() {
    let mut srv = TestServer::start();
    // One connection idle after a request, one stuck half-way through its headers.
    let mut idle = RawConn::connect(&srv.base_url()).await;
    idle.send(b"GET /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    idle.read_response()
        .await
        .expect("an answer")
        .expect_status(200);
    let mut stalled = RawConn::connect(&srv.base_url()).await;
    stalled
        .send(b"GET /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    srv.send_signal(libc::SIGTERM);
    let status = srv.wait_for_exit();
    assert!(status.success(), "{status:?}");
    // The drain allows 30 s for requests in progress; these had none.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown waited {:?}",
        started.elapsed()
    );
}

#[test]
fn max_connections_beyond_the_descriptor_hard_limit_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = util::run_to_exit(
        dir.path(),
        // The most it takes (more is refused as such), needing 2,000,256 descriptors:
        // beyond any hard limit Linux allows by default (fs.nr_open, 1048576).
        &["--max-connections", "1000000"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("RLIMIT_NOFILE"), "{stderr}");
}

/// Under a hard descriptor limit too low for the default `--max-connections`, the default
/// is fitted to it quietly (an info line saying so), not a warning on every start: the
/// operator asked for nothing that cannot be met.
#[test]
fn default_max_connections_is_fitted_to_a_low_hard_limit_without_a_warning() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = util::flinger_command(dir.path());
    cmd.args(["--bind", "127.0.0.1:0", "--data-dir", "d"])
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("listening"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
    assert!(
        text.contains("INFO") && text.contains("--max-connections defaults to 1920 here"),
        "{text}"
    );
}

#[tokio::test]
async fn all_agents_are_streamed_as_one_valid_array_when_many() {
    let srv = TestServer::start();
    for i in 0..130 {
        srv.post_json(
            &format!("/v1/agents/data/agent{i}"),
            &json!({"state": "waiting", "queues": ["q"]}),
        )
        .await
        .expect_status(200);
    }
    let all = srv.get("/v1/agents/data").await.expect_json();
    let names: std::collections::BTreeSet<String> = all
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 130);
}

#[tokio::test]
async fn unfinished_request_head_is_dropped_after_header_timeout_secs() {
    let srv = TestServer::start_with(&["--header-timeout-secs", "1"]);
    let mut conn = RawConn::connect(&srv.base_url()).await;
    conn.send(b"GET /v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        .await;
    // The connection is closed (no status line) well before the 15 s read limit.
    let started = Instant::now();
    assert!(conn.read_response().await.is_none_or(|r| r.status == 408));
    assert!(started.elapsed() < Duration::from_secs(10));
    srv.get("/v1/").await.expect_status(200);
}

#[tokio::test]
async fn sigterm_stops_waiting_for_a_busy_request_after_drain_secs() {
    // A body that stalls is busy, and the transfer window (60 s) would not end it soon.
    let mut srv = TestServer::start_with(&["--drain-secs", "1", "--transfer-window-secs", "60"]);
    let mut busy = RawConn::connect(&srv.base_url()).await;
    busy.send(b"POST /v1/job HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    srv.send_signal(libc::SIGTERM);
    let status = srv.wait_for_exit();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(srv
        .stderr_lines_once(|l| l.contains("did not finish within"))
        .await
        .iter()
        .any(|l| l.contains("did not finish within")));
}

#[tokio::test]
async fn pop_takes_thousands_of_repeated_queue_parameters_once_each_and_refuses_the_257th_distinct_queue(
) {
    let srv = TestServer::start();
    let id = srv
        .post_json("/v1/job", &json!({"job_queue": "q7"}))
        .await
        .expect_status(200)
        .json()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 5,000 parameters naming 8 queues: each counts once, so this is no "too many queues".
    let repeated: Vec<String> = (0..5000).map(|i| format!("queue=q{}", i % 8)).collect();
    let r = srv.get(&format!("/v1/job?{}", repeated.join("&"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["job_id"], id.as_str());
    // Past a few names the repeats are found through a set: 5,000 parameters naming 200
    // queues are 200 queues, within the bound.
    let repeated: Vec<String> = (0..5000).map(|i| format!("queue=r{}", i % 200)).collect();
    let r = srv.get(&format!("/v1/job?{}", repeated.join("&"))).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // 256 distinct queues are allowed; the 257th is refused, naming the bound.
    let distinct = |n: usize| -> String {
        (0..n)
            .map(|i| format!("queue=d{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    srv.get(&format!("/v1/job?{}", distinct(256)))
        .await
        .expect_status(204);
    let r = srv.get(&format!("/v1/job?{}", distinct(257))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.message().contains("At most 256 queues per request"),
        "{}",
        r.text()
    );
}

/// Searches take turns fairly between client addresses (`--max-searches`): a flood of
/// searches from one address delays another address's search by about one search, not
/// by the whole flood (a first-come line made it wait behind all of them).
#[tokio::test]
async fn a_flood_of_searches_from_one_address_does_not_hold_another_addresss_search() {
    let srv = TestServer::start_with(&["--max-searches", "1"]);
    let jobs: Vec<Value> = (0..3000)
        .map(|i| json!({"job_queue": format!("q{}", i % 7), "tags": ["t", format!("n{i}")]}))
        .collect();
    for job in &jobs {
        srv.submit(job).await;
    }
    let search = b"GET /v1/job/search?tags=t&limit=10000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooder: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..30 {
        let mut conn = RawConn::connect_from(&srv.base_url(), flooder).await;
        conn.send(search).await;
        let done = done.clone();
        flood.push(tokio::spawn(async move {
            let r = conn.read_response().await.expect("an answer");
            assert_eq!(r.status, 200);
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    // The flood is in line before the other address asks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = done.load(std::sync::atomic::Ordering::SeqCst);
    let mut other = RawConn::connect_from(&srv.base_url(), "127.0.0.3".parse().unwrap()).await;
    other.send(search).await;
    let r = other.read_response().await.expect("an answer");
    assert_eq!(r.status, 200);
    let during = done.load(std::sync::atomic::Ordering::SeqCst) - before;
    for task in flood {
        task.await.unwrap();
    }
    assert!(
        before < 25,
        "the flood was answered before the other search was sent ({before} of 30): make \
         the searches slower"
    );
    assert!(
        during <= 3,
        "{during} of the flood's searches were answered while the other address waited"
    );
}
