//! The edges of several nodes on one PostgreSQL journal (`ha`, `journal::postgres`): the
//! forwarder passes on no header of one hop (those `Connection` names included), in either
//! direction, vouches for each client's address (failed logins through a standby are
//! counted per client), and gives up on a leader that holds its lease but stops
//! answering; no wait of the leader on the database outlasts its bound (a snapshot upload
//! against a lock or a paused backend, a renewal's reconnect to a server that never
//! answers, a promoted node's writer set-up against one, a download from paused file
//! store connections), and a file store connection given up on or failed is closed, not
//! reused; and lease terms only grow, even when the lease row is deleted by hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::pg::{fresh_database, sql};
use crate::util::{Http, RawConn, TestServer};

/// The lease the tests run with (as `failover.rs`): quick failovers, renewals that keep up
/// on a loaded 2-core machine.
const LEASE_MS: &str = "1000";

fn node(url: &str) -> TestServer {
    TestServer::start_with(&["--journal", url, "--lease-ms", LEASE_MS])
}

/// `GET /v1/ready` of one node: status and document (`None` on a transport error).
async fn ready(http: &Http) -> Option<(u16, Value)> {
    let r = http
        .try_request("GET", "/v1/ready", &[], Vec::new())
        .await
        .ok()?;
    Some((r.status, r.json()))
}

/// Waits up to `within` until `node` answers `GET /v1/ready` with 200 in `role`; returns
/// the document.
async fn wait_role(node: &TestServer, role: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let answer = ready(&node.http()).await;
        if let Some((200, doc)) = &answer {
            if doc["role"] == role {
                return doc.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not {role} within {within:?}; it said {answer:?}",
            node.base_url()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client's `Connection` names a header meant for the standby alone: the leader must
/// not see it. `Sec-Fetch-Site: cross-site` makes the leader refuse a submit (403) when it
/// does, which is how a test through two real nodes can tell.
#[tokio::test]
async fn standby_drops_the_headers_a_clients_connection_names_before_forwarding() {
    let url = fresh_database();
    let a = node(&url);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let b = node(&url);
    wait_role(&b, "standby", Duration::from_secs(30)).await;
    let body = serde_json::to_vec(&json!({"job_queue": "hop"})).unwrap();
    let headers = [
        ("content-type", "application/json"),
        ("sec-fetch-site", "cross-site"),
        ("connection", "keep-alive, Sec-Fetch-Site"),
    ];
    // Sent to the leader itself, the header is its own to act on.
    let direct = a.request("POST", "/v1/job", &headers, body.clone()).await;
    assert_eq!(direct.status, 403, "{}", direct.text_preview());
    let forwarded = b.request("POST", "/v1/job", &headers, body).await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.text_preview());
    let id = forwarded.json()["job_id"].as_str().unwrap().to_owned();
    assert_eq!(a.job_state(&id).await, "waiting");
}

/// What a fake leader at `listener` received (the request head) and sends back.
async fn fake_leader(listener: TcpListener, answer: &'static str, seen: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Both directions, header by header: a fake leader (the lease row names it) records the
/// request the standby forwards and answers with hop-by-hop headers of its own.
#[tokio::test]
async fn forwarder_passes_no_hop_by_hop_header_on_in_either_direction() {
    let url = fresh_database();
    let a = node(&url);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    const ANSWER: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
        Connection: close, X-Leader-Hop\r\nX-Leader-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
        Proxy-Authenticate: Basic realm=\"x\"\r\nUpgrade: h2c\r\nX-End-To-End: kept\r\n\r\nok";
    tokio::spawn(fake_leader(listener, ANSWER, seen.clone()));
    // The fake takes the lease in a newer term: the node steps down and forwards to it.
    sql(
        &url,
        &format!(
            "UPDATE flinger_lease SET term = term + 1, holder = 'fake', url = '{leader}', \
             expires = clock_timestamp() + interval '1 hour'"
        ),
    );
    wait_role(&a, "standby", Duration::from_secs(10)).await;
    let mut conn = RawConn::connect(&a.base_url()).await;
    // A name under `.localhost`: the standby checks `Host` itself before it forwards, and
    // on loopback with access control off it answers only names that need no DNS.
    conn.send(
        b"GET /v1/job/search?tags=x HTTP/1.1\r\nHost: client.localhost\r\n\
          Connection: keep-alive, X-Client-Hop, Host\r\nX-Client-Hop: 1\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n\
          Proxy-Connection: keep-alive\r\nUpgrade: websocket\r\nTrailer: X-T\r\n\
          X-End-To-End: kept\r\n\r\n",
    )
    .await;
    let r = conn.read_response().await.expect("an answer");
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{r:?}");
    for gone in [
        "x-leader-hop",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(!r.headers.contains_key(gone), "{gone} passed back: {r:?}");
    }
    assert_eq!(r.headers["x-end-to-end"], "kept", "{r:?}");
    let head = seen.lock().unwrap().concat().to_ascii_lowercase();
    for gone in [
        "\r\nconnection:",
        "\r\nx-client-hop:",
        "\r\nkeep-alive:",
        "\r\nte:",
        "\r\nproxy-authorization:",
        "\r\nproxy-connection:",
        "\r\nupgrade:",
        "\r\ntrailer:",
    ] {
        assert!(!head.contains(gone), "{gone:?} forwarded:\n{head}");
    }
    // `Host` is every recipient's (the leader's browser checks read it), even when named.
    for kept in [
        "\r\nhost: client.localhost\r\n",
        "\r\nx-end-to-end: kept\r\n",
    ] {
        assert!(head.contains(kept), "{kept:?} not forwarded:\n{head}");
    }
    assert!(
        head.starts_with("get /v1/job/search?tags=x http/1.1\r\n"),
        "{head}"
    );
}

/// A fake leader at `listener` that reads each request whole (head, then a
/// `Content-Length` body) and answers by its path: `/silent` nothing at all, `/half` its
/// head and 10 of the 100 bytes it announces, anything else `200 ok`; it keeps every
/// connection open, so only the standby's own bound ends the first two.
async fn stalling_leader(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0u8; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let answer: &[u8] = if head.starts_with("get /silent") {
                b""
            } else if head.starts_with("get /half") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            let _ = stream.write_all(answer).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(stream);
        });
    }
}

/// A leader that holds its lease but stops answering a forwarded request does not hold
/// the client: with no answer's head within `--forward-idle-secs` (2 s here) the client
/// gets 504 naming the leader; an answer that stops half-way is cut (the client sees the
/// connection close short of its `Content-Length`) and logged. A client's own slow upload
/// is not the leader's silence: it goes through however long it takes.
#[tokio::test]
async fn standby_gives_up_on_a_leader_that_stops_answering_after_its_idle_bound() {
    let url = fresh_database();
    let a = TestServer::start_with(&[
        "--journal",
        &url,
        "--lease-ms",
        LEASE_MS,
        "--forward-idle-secs",
        "2",
    ]);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stalling_leader(listener));
    sql(
        &url,
        &format!(
            "UPDATE flinger_lease SET term = term + 1, holder = 'fake', url = '{leader}', \
             expires = clock_timestamp() + interval '1 hour'"
        ),
    );
    wait_role(&a, "standby", Duration::from_secs(10)).await;

    // No head at all: 504, naming the leader, once 2 s passed without a word.
    let started = Instant::now();
    let r = a
        .http()
        .try_request("GET", "/silent", &[], Vec::new())
        .await
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text_preview());
    assert!(r.message().contains(&leader), "{}", r.text_preview());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "answered after {took:?}"
    );

    // The head and 10 bytes of 100, then nothing: the connection is cut.
    let started = Instant::now();
    let mut conn = RawConn::connect(&a.base_url()).await;
    conn.send(b"GET /half HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let r = conn.read_response().await.expect("the head");
    let took = started.elapsed();
    assert_eq!((r.status, &r.body[..]), (200, &b"0123456789"[..]), "{r:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "cut after {took:?}"
    );
    let lines = a
        .stderr_lines_once(|l| l.contains("stopped sending its answer"))
        .await;
    let cut = lines
        .iter()
        .find(|l| l.contains("stopped sending its answer"));
    assert!(
        cut.is_some_and(|l| l.contains(&leader)),
        "not logged: {cut:?}"
    );

    // A client uploading 5 bytes over 5 s (1 s apart): its pace, not the leader's.
    let started = Instant::now();
    let mut conn = RawConn::connect(&a.base_url()).await;
    conn.send(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\n")
        .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        conn.send(b"x").await;
    }
    let r = conn.read_response().await.expect("an answer");
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"ok"[..]),
        "{r:?} after {:?}",
        started.elapsed()
    );
}

/// `POST /v1/oauth2/token` for `client_id` with a wrong secret, sent to `base` from the
/// loopback address `from` (any of 127.0.0.0/8 reaches a server on 127.0.0.1), with
/// `extra` header lines; the answer's status.
async fn token_attempt_from(base: &str, from: [u8; 4], client_id: &str, extra: &str) -> u16 {
    use base64::Engine;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:wrong-secret"));
    let request = format!(
        "POST /v1/oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\
         {extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// The limit on failed token requests per address tells a standby's clients apart: the
/// standby vouches for the address it accepted each request from, with the key the nodes
/// share, so one client's bad logins through it (to 429) leave another client of the same
/// standby its own attempts (401, checked), and the leader's security log names the
/// client, not the standby. A header naming another address is not believed, neither
/// from a client of the standby nor sent to the leader as if forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_through_a_standby_are_counted_per_client_not_per_standby() {
    let url = fresh_database();
    let args = [
        "--journal",
        &url,
        "--lease-ms",
        LEASE_MS,
        "--access-control",
        "on",
        "--token-failures-per-minute",
        "2",
    ];
    let a = TestServer::start_with(&args);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let b = TestServer::start_with(&args);
    wait_role(&b, "standby", Duration::from_secs(30)).await;
    let (leader, standby) = (a.base_url(), b.base_url());
    const ATTACKER: [u8; 4] = [127, 0, 0, 2];
    const OTHER: [u8; 4] = [127, 0, 0, 3];
    // Different client ids: what fills up is the attacker's address (its share is
    // `ADDRESS_SHARE` times the per-client limit of 2).
    let share = 2 * flinger::access::ADDRESS_SHARE;
    for n in 0..share {
        let status = token_attempt_from(&standby, ATTACKER, &format!("guess-{n}"), "").await;
        assert_eq!(status, 401, "guess {n}");
    }
    assert_eq!(
        token_attempt_from(&standby, ATTACKER, "one-more", "").await,
        429
    );
    // Another client of the same standby is checked, not refused.
    assert_eq!(
        token_attempt_from(&standby, OTHER, "someone", "").await,
        401
    );
    // Naming another address does not get the attacker out of its own minute.
    let forged = "X-Flinger-Client-Address: 127.0.0.9\r\nX-Flinger-Client-Proof: AAAA\r\n";
    assert_eq!(
        token_attempt_from(&standby, ATTACKER, "forged", forged).await,
        429
    );
    let as_forwarded = format!("X-Flinger-Forwarded-By: http://127.0.0.1:1\r\n{forged}");
    assert_eq!(
        token_attempt_from(&leader, ATTACKER, "as-forwarded", &as_forwarded).await,
        429
    );
    let lines = a
        .stderr_lines_once(|l| l.contains("authn_fail") && l.contains("from=127.0.0.2"))
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authn_fail") && l.contains("from=127.0.0.2")),
        "the leader's security log does not name the client"
    );
}

/// The lease row deleted by hand (with the leader running): the leader steps down, the row
/// comes back, and the next term is higher than every term before, not 1 again (fencing
/// compares terms: a term given out twice would let the deposed holder of the first write).
#[tokio::test]
async fn lease_terms_keep_growing_when_the_lease_row_is_deleted_by_hand() {
    let url = fresh_database();
    let mut a = node(&url);
    // Three terms: each orderly stop releases the lease for the next start.
    for _ in 0..2 {
        wait_role(&a, "leader", Duration::from_secs(30)).await;
        a.restart();
    }
    let before = wait_role(&a, "leader", Duration::from_secs(30)).await["term"]
        .as_i64()
        .unwrap();
    assert_eq!(before, 3);
    let first = a.submit(&json!({"job_queue": "terms"})).await;
    sql(&url, "DELETE FROM flinger_lease");
    // Once the node found the row gone it stepped down; it leads again in a newer term.
    let lines = a
        .stderr_lines_once(|l| l.contains("stepping down as leader"))
        .await;
    assert!(
        lines.iter().any(|l| l.contains("stepping down as leader")),
        "no step-down logged"
    );
    let after = wait_role(&a, "leader", Duration::from_secs(30)).await["term"]
        .as_i64()
        .unwrap();
    assert!(
        after > before,
        "term {after} after the row's deletion, {before} before"
    );
    assert_eq!(
        sql(&url, "SELECT term FROM flinger_lease"),
        after.to_string()
    );
    assert_eq!(a.job_state(&first).await, "waiting");
    let second = a.submit(&json!({"job_queue": "terms"})).await;
    assert_eq!(a.pop_id(&["terms"]).await.as_deref(), Some(first.as_str()));
    assert_eq!(a.pop_id(&["terms"]).await.as_deref(), Some(second.as_str()));
    // A database made before the sequence kept the highest term: connecting puts it
    // there, before any take (another holder has the lease meanwhile).
    a.stop();
    sql(&url, "DROP SEQUENCE flinger_lease_terms");
    sql(
        &url,
        "UPDATE flinger_lease SET holder = 'other', url = '', \
         expires = clock_timestamp() + interval '1 hour'",
    );
    a.start_again();
    let (_, doc) = ready(&a.http()).await.unwrap();
    assert_eq!(doc["role"], "standby", "{doc}");
    assert_eq!(doc["term"], after, "{doc}");
    sql(&url, "DELETE FROM flinger_lease");
    let again = wait_role(&a, "leader", Duration::from_secs(30)).await["term"]
        .as_i64()
        .unwrap();
    assert!(
        again > after,
        "term {again} after the row's deletion, {after} before"
    );
}

/// A TCP relay to `upstream` (PostgreSQL): while `hold` is set, a connection it accepts is
/// kept open and never relayed, for good (a server behind a network that drops packets);
/// the connections relayed before are unaffected.
async fn relay(listener: TcpListener, upstream: String, hold: Arc<AtomicBool>) {
    let mut held = Vec::new();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        if hold.load(Ordering::SeqCst) {
            held.push(client);
            continue;
        }
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// `url` (`postgres://USER@HOST:PORT/DB`) through a [`relay`]: the relayed URL, the relay's
/// hold switch.
async fn relayed(url: &str) -> (String, Arc<AtomicBool>) {
    let (user, rest) = url.split_once('@').unwrap();
    let (server, db) = rest.split_once('/').unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let through = format!("{user}@{}/{db}", listener.local_addr().unwrap());
    let hold = Arc::new(AtomicBool::new(false));
    tokio::spawn(relay(listener, server.to_owned(), hold.clone()));
    (through, hold)
}

/// The leader's renewal connection dies while new connections to the database get no
/// answer: each reconnect gives up after a third of a lease (not the URL's
/// `connect_timeout`, 30 s when unset), so once the database answers again the leader
/// renews within about a lease and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_renews_soon_after_the_database_answers_again_when_a_reconnect_got_no_answer() {
    let direct = fresh_database();
    let (url, hold) = relayed(&direct).await;
    let a = node(&url);
    let term = wait_role(&a, "leader", Duration::from_secs(30)).await["term"].clone();
    a.submit(&json!({"job_queue": "renew"})).await;
    hold.store(true, Ordering::SeqCst);
    // The renewal's session is the one whose last statement renewed the lease.
    let renewal = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                   WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND query LIKE 'UPDATE flinger_lease SET expires = clock_timestamp()%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql(&direct, renewal) != "1" {
        assert!(Instant::now() < deadline, "no renewal session found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its reconnects go unanswered: the lease lapses (the node serves nothing as leader).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, doc) = ready(&a.http()).await.unwrap();
        if status == 503 {
            assert_eq!(doc["role"], "leader", "{doc}");
            break;
        }
        assert!(Instant::now() < deadline, "the lease did not lapse: {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    hold.store(false, Ordering::SeqCst);
    let back = Instant::now();
    let doc = wait_role(&a, "leader", Duration::from_secs(30)).await;
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the leader renewed {took:?} after the database answered again (lease 1 s)"
    );
    // Nobody else took the lease meanwhile: the same term goes on.
    assert_eq!(doc["term"], term, "{doc}");
    a.submit(&json!({"job_queue": "renew"})).await;
}

/// A standby takes the lease while new connections to the database get no answer (the
/// standby's own connection, made before, still works): setting up the journal writer
/// gives up within the wait for one answer (four leases, at least 10 s), not the URL's
/// `connect_timeout` (60 s here), says so in the log, and the node follows again and
/// retries; once the database answers it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_standby_gives_up_setting_up_its_writer_on_a_database_that_does_not_answer() {
    let direct = fresh_database();
    let (url, hold) = relayed(&direct).await;
    let url = format!("{url}?connect_timeout=60");
    let mut a = node(&url);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let first = a.submit(&json!({"job_queue": "writer"})).await;
    // Stopped in order (the lease released), then started under another node's lease, so
    // that it follows first.
    a.stop();
    sql(
        &direct,
        "UPDATE flinger_lease SET term = term + 1, holder = 'other', url = 'http://127.0.0.1:1', \
         expires = clock_timestamp() + interval '1 hour'",
    );
    a.start_again();
    wait_role(&a, "standby", Duration::from_secs(30)).await;
    hold.store(true, Ordering::SeqCst);
    sql(
        &direct,
        "UPDATE flinger_lease SET expires = clock_timestamp()",
    );
    let expired = Instant::now();
    let logged = |l: &str| l.contains("cannot lead") && l.contains("journal writer");
    let deadline = expired + Duration::from_secs(20);
    let line = loop {
        if let Some(line) = a.stderr_lines().into_iter().find(|l| logged(l)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no word of the writer within {:?} of the lease's expiry",
            expired.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = expired.elapsed();
    assert!(line.contains("no PostgreSQL answer within 10 s"), "{line}");
    assert!(took < Duration::from_secs(14), "given up after {took:?}");
    hold.store(false, Ordering::SeqCst);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    assert_eq!(a.job_state(&first).await, "waiting");
    a.submit(&json!({"job_queue": "writer"})).await;
}

/// A snapshot upload that cannot go on (a lock held elsewhere on the chunks' table; the
/// same bound ends one to a database that stopped answering) fails within its bound
/// instead of waiting for as long as the lock is held, the leader acknowledging changes
/// all the while; nothing of it stays, and every acknowledged change is there after a
/// restart, whose snapshot then installs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_upload_gives_up_within_its_bound_and_loses_nothing_when_the_database_blocks_it() {
    let url = fresh_database();
    let mut a = TestServer::start_with(&[
        "--journal",
        &url,
        "--lease-ms",
        LEASE_MS,
        "--snapshot-bytes",
        "1MiB",
    ]);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    // Another session holds the chunks' table for a minute (ended by hand below).
    let mut locker = lock_table(&url, "flinger_snapshot_chunks", 60);
    let held = LOCK_HELD;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql(&url, held) != "1" {
        assert!(Instant::now() < deadline, "the lock was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Enough logged for a snapshot request; the upload then waits for the lock.
    // 8 x 140 KB: more than --snapshot-bytes.
    let filler = "x".repeat(140_000);
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            a.submit(&json!({"job_queue": "snap", "n": n, "filler": filler}))
                .await,
        );
    }
    let started = Instant::now();
    let lines = a.stderr_lines_once(|l| l.contains("snapshot failed")).await;
    let failed = lines.iter().find(|l| l.contains("snapshot failed"));
    assert!(
        failed.is_some(),
        "no snapshot failure logged within {:?} while the lock was held",
        started.elapsed()
    );
    assert!(
        failed.unwrap().contains("lock timeout"),
        "{}",
        failed.unwrap()
    );
    // The leader acknowledged changes while the upload waited and after it gave up.
    for n in 8..12 {
        ids.push(a.submit(&json!({"job_queue": "snap", "n": n})).await);
    }
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    assert_eq!(
        sql(&url, waiting),
        "0",
        "an upload still waits for the lock"
    );
    assert_eq!(
        sql(&url, "SELECT count(*) FROM flinger_snapshots"),
        "0",
        "the failed upload left a row"
    );
    sql(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'flinger_test_lock'",
    );
    let _ = locker.wait();
    // A restart replays every event (none was compacted) and snapshots them at once.
    a.restart();
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(a.job_state(id).await, "waiting", "{id}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(
        &url,
        "SELECT count(*) FROM flinger_snapshots WHERE installed",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "no snapshot installed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The upload's own backend stops answering (paused while it waits for a lock, so the
/// server's own timeouts cannot fire either): the leader gives the upload up after one
/// statement's bound, closing its connection, and goes on acknowledging changes; the
/// backend, resumed, finds its client gone and nothing of the upload stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_upload_gives_up_when_its_connection_stops_answering() {
    let url = fresh_database();
    // A 3 s lease: the upload waits for the lock up to 3 s, time to pause its backend; one
    // statement's bound is then 12 s.
    let a = TestServer::start_with(&[
        "--journal",
        &url,
        "--lease-ms",
        "3000",
        "--snapshot-bytes",
        "1MiB",
    ]);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let mut locker = lock_table(&url, "flinger_snapshot_chunks", 120);
    let held = LOCK_HELD;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql(&url, held) != "1" {
        assert!(Instant::now() < deadline, "the lock was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 8 x 140 KB: more than --snapshot-bytes.
    let filler = "x".repeat(140_000);
    for n in 0..8 {
        a.submit(&json!({"job_queue": "snap", "n": n, "filler": filler}))
            .await;
    }
    let upload = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                  AND application_name = 'flinger snapshot upload' AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Ok(pid) = sql(&url, upload).parse() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no upload waits for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // SAFETY: kill has no memory preconditions; the pid is the test cluster's backend.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let paused = Instant::now();
    let deadline = paused + Duration::from_secs(30);
    let failed = loop {
        let lines = a.stderr_lines();
        if let Some(line) = lines.iter().find(|l| l.contains("snapshot failed")) {
            break line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the upload was not given up within 30 s of its backend pausing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = paused.elapsed();
    assert!(failed.contains("no answer within 12 s"), "{failed}");
    assert!(took < Duration::from_secs(16), "given up after {took:?}");
    a.submit(&json!({"job_queue": "snap", "n": 8})).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    sql(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'flinger_test_lock'",
    );
    let _ = locker.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql(
        &url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'flinger snapshot upload'",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "the upload's backend stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sql(&url, "SELECT count(*) FROM flinger_snapshots"), "0");
}

/// The file store's connections stop answering (their backends paused, so the server's
/// `statement_timeout` cannot fire): a download gets 503 within its bound instead of
/// waiting until TCP gives up, and works again once they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_gets_503_within_its_bound_when_the_file_stores_connections_stop_answering() {
    let url = fresh_database();
    let a = node(&url);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let id = a.submit(&json!({"job_queue": "files"})).await;
    let bytes = crate::util::pseudo_random_bytes(3 << 20, 7);
    let path = format!("/v1/result/{id}/artifact");
    a.post_multipart(&path, "file", "a.tgz", &bytes)
        .await
        .expect_status(200);
    let pids = file_store_sessions(&url);
    assert!(!pids.is_empty(), "no file store session found");
    let signal = |s| {
        for pid in &pids {
            // SAFETY: kill has no memory preconditions; these are the cluster's backends.
            unsafe { libc::kill(*pid, s) };
        }
    };
    signal(libc::SIGSTOP);
    let started = Instant::now();
    let answer = a.http().try_request("GET", &path, &[], Vec::new()).await;
    let took = started.elapsed();
    signal(libc::SIGCONT);
    let r = answer.expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text_preview());
    assert!(
        r.message().contains("no answer within 4 s"),
        "{}",
        r.text_preview()
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let got = a.get(&path).await;
    assert!(
        got.status == 200 && got.body[..] == bytes[..],
        "{}",
        got.text_preview()
    );
}

/// The file store pool's sessions: the ones whose last statement was the file store's.
fn file_store_sessions(url: &str) -> Vec<i32> {
    sql(
        url,
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND (query LIKE '%flinger_files%' OR query LIKE '%flinger_file_chunks%' \
              OR query LIKE '%flinger_private%')",
    )
    .split(',')
    .filter_map(|p| p.parse().ok())
    .collect()
}

/// Backends paused with SIGSTOP, resumed when dropped (a failing test too: the cluster
/// serves every test).
struct Paused(Vec<i32>);

impl Paused {
    fn stop(pids: &[i32]) -> Paused {
        for pid in pids {
            // SAFETY: kill has no memory preconditions; these are the cluster's backends.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Paused(pids.to_vec())
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

/// Whether any of `pids` is still a backend of the cluster.
fn any_alive(url: &str, pids: &[i32]) -> bool {
    let list = pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    sql(
        url,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid IN ({list})"),
    ) != "0"
}

/// A connection of the file store whose statement was given up (its backend paused, so
/// its answer may still come) or failed (the server ended it) is closed, never handed out
/// again: with the paused backends still paused, downloads go on after at most one 503
/// per paused connection (before, every download waited on a paused one and got 503),
/// the resumed backends end instead of idling in the pool, and the session whose
/// statement the server timed out ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_closes_a_connection_whose_statement_timed_out_or_failed() {
    let url = fresh_database();
    let a = node(&url);
    wait_role(&a, "leader", Duration::from_secs(30)).await;
    let id = a.submit(&json!({"job_queue": "files"})).await;
    let bytes = crate::util::pseudo_random_bytes(3 << 20, 7);
    let path = format!("/v1/result/{id}/artifact");
    a.post_multipart(&path, "file", "a.tgz", &bytes)
        .await
        .expect_status(200);
    let download = || async {
        a.http()
            .try_request("GET", &path, &[], Vec::new())
            .await
            .expect("an answer")
    };

    let pids = file_store_sessions(&url);
    assert!(!pids.is_empty(), "no file store session found");
    let paused = Paused::stop(&pids);
    let mut refused = 0;
    let got = loop {
        let r = download().await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.text_preview());
        assert!(
            r.message().contains("no answer within 4 s"),
            "{}",
            r.text_preview()
        );
        refused += 1;
        assert!(
            refused <= pids.len(),
            "{refused} downloads refused with {} connections paused: one given up on was \
             handed out again",
            pids.len()
        );
    };
    assert!(refused >= 1, "no download waited on a paused connection");
    assert!(got.body[..] == bytes[..], "{}", got.text_preview());
    drop(paused);
    let deadline = Instant::now() + Duration::from_secs(10);
    while any_alive(&url, &pids) {
        assert!(
            Instant::now() < deadline,
            "a resumed backend stayed: its connection is still pooled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The server ends the statement itself (`statement_timeout`, 2 s here): a lock held
    // elsewhere on the files' table.
    let before = file_store_sessions(&url);
    assert!(!before.is_empty(), "no file store session found");
    let mut locker = lock_table(&url, "flinger_files", 60);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sql(&url, LOCK_HELD) != "1" {
        assert!(Instant::now() < deadline, "the lock was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = download().await;
    sql(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'flinger_test_lock'",
    );
    let _ = locker.wait();
    assert_eq!(r.status, 503, "{}", r.text_preview());
    assert!(
        r.message().contains("statement timeout"),
        "{}",
        r.text_preview()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while before.iter().all(|pid| any_alive(&url, &[*pid])) {
        assert!(
            Instant::now() < deadline,
            "every session of {before:?} stayed: the one whose statement failed is still pooled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = download().await;
    assert!(
        got.status == 200 && got.body[..] == bytes[..],
        "{}",
        got.text_preview()
    );
}

/// Counts 1 once [`lock_table`]'s session holds its lock.
const LOCK_HELD: &str = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid) \
    WHERE s.datname = current_database() AND s.application_name = 'flinger_test_lock' \
    AND l.mode = 'AccessExclusiveLock' AND l.granted";

/// A psql session (named `flinger_test_lock`) that holds `table` locked for `secs`
/// seconds, or until killed.
fn lock_table(url: &str, table: &str, secs: u32) -> std::process::Child {
    std::process::Command::new(crate::util::pg::bin("psql"))
        .arg(url)
        .args(["-q", "-c"])
        .arg(format!(
            "SET application_name = 'flinger_test_lock'; BEGIN; \
             LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep({secs}); COMMIT"
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run psql")
}
