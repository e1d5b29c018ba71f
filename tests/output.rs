//! Live output (`POST|GET /v1/result/<id>/output`): raw chunks appended, each byte read once,
//! concatenated with no separator, and the per-chunk size limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::util::{new_id, pseudo_random_bytes, TestServer};

#[tokio::test]
async fn output_is_204_when_nothing_was_posted() {
    let srv = TestServer::start();
    srv.get(&format!("/v1/result/{}/output", new_id()))
        .await
        .expect_no_content();
}

#[tokio::test]
async fn output_is_returned_once_when_read_after_post() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    srv.post_raw(&path, Some("text/plain"), b"line1\nline2\nline3".to_vec())
        .await
        .expect_status(200);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(&r.body[..], b"line1\nline2\nline3");
    srv.get(&path).await.expect_no_content();
}

#[tokio::test]
async fn output_chunks_are_concatenated_without_separator_when_several_are_posted() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}/output");
    for chunk in ["a", "b\n", "c", "\n\n", "d"] {
        srv.post_raw(&path, None, chunk.as_bytes().to_vec())
            .await
            .expect_status(200);
    }
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(r.text(), "ab\nc\n\nd");
}

#[tokio::test]
async fn output_returns_only_unread_bytes_when_read_between_posts() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    srv.post_raw(&path, None, b"first ".to_vec())
        .await
        .expect_status(200);
    assert_eq!(srv.get(&path).await.text(), "first ");
    srv.post_raw(&path, None, b"second ".to_vec())
        .await
        .expect_status(200);
    srv.post_raw(&path, None, b"third".to_vec())
        .await
        .expect_status(200);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(r.text(), "second third");
    srv.get(&path).await.expect_no_content();
}

#[tokio::test]
async fn output_is_byte_identical_when_chunks_are_binary_with_any_content_type() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    let mut expected = Vec::new();
    let types = [
        None,
        Some("application/octet-stream"),
        Some("text/plain; charset=utf-8"),
        Some("application/json"),
        Some("multipart/form-data"),
    ];
    for (n, ct) in types.into_iter().enumerate() {
        let mut chunk = pseudo_random_bytes(10_000 + n, n as u64 + 7);
        chunk.extend_from_slice(&[0, 0xff, b'\r', b'\n']);
        srv.post_raw(&path, ct, chunk.clone())
            .await
            .expect_status(200);
        expected.extend_from_slice(&chunk);
    }
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert!(
        r.body[..] == expected[..],
        "output differs ({} vs {} bytes)",
        r.body.len(),
        expected.len()
    );
}

#[tokio::test]
async fn output_streams_are_separate_when_ids_differ() {
    let srv = TestServer::start();
    let (a, b) = (new_id(), new_id());
    srv.post_raw(&format!("/v1/result/{a}/output"), None, b"AAA".to_vec())
        .await
        .expect_status(200);
    srv.post_raw(&format!("/v1/result/{b}/output"), None, b"BBB".to_vec())
        .await
        .expect_status(200);
    assert_eq!(
        srv.get(&format!("/v1/result/{b}/output")).await.text(),
        "BBB"
    );
    assert_eq!(
        srv.get(&format!("/v1/result/{a}/output")).await.text(),
        "AAA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_chunk_is_read_exactly_once_when_readers_race_a_writer() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let http = srv.http();
        let path = path.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut got = String::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let r = http.get(&path).await;
                match r.status {
                    200 => got.push_str(&r.text()),
                    204 if finished => break,
                    204 => tokio::task::yield_now().await,
                    s => panic!("unexpected status {s}"),
                }
            }
            got
        }));
    }
    for n in 0..200 {
        srv.post_raw(&path, None, format!("{n:03};").into_bytes())
            .await
            .expect_status(200);
    }
    done.store(true, Ordering::SeqCst);
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for r in readers {
        let text = r.await.unwrap();
        let mut last = None;
        for piece in text.split(';').filter(|p| !p.is_empty()) {
            let n: u32 = piece
                .parse()
                .unwrap_or_else(|_| panic!("chunk split or corrupted: {piece:?}"));
            assert!(
                last.is_none_or(|l| l < n),
                "one reader saw chunks out of order"
            );
            last = Some(n);
            *seen.entry(n).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 200, "every chunk read");
    assert!(seen.values().all(|&c| c == 1), "no chunk read twice");
}

#[tokio::test]
async fn output_post_is_413_when_chunk_exceeds_max_output_bytes() {
    let srv = TestServer::start_with(&["--max-output-bytes", "1024"]);
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    srv.post_raw(&path, None, vec![b'a'; 1024])
        .await
        .expect_status(200);
    srv.post_oversized(&path, None, &[b'b'; 1025])
        .await
        .expect_error(413);
    srv.post_oversized(&path, None, &vec![b'c'; 200_000])
        .await
        .expect_error(413);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(
        &r.body[..],
        &[b'a'; 1024][..],
        "rejected chunks are not appended"
    );
}

#[tokio::test]
async fn output_post_is_413_when_chunk_exceeds_default_four_mib() {
    // The default log text limit takes the stock agent's largest chunk (1 Mi characters of
    // up to 4 bytes); a legacy chunk's body is its text.
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/output");
    srv.post_raw(&path, None, vec![b'x'; 4 << 20])
        .await
        .expect_status(200);
    srv.post_oversized(&path, None, &vec![b'y'; (4 << 20) + 1])
        .await
        .expect_error(413);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(r.body.len(), 4 << 20);
}

#[tokio::test]
async fn output_endpoints_are_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in ["foo", "00000000-0000-0000-0000-00000000000X"] {
        let path = format!("/v1/result/{id}/output");
        srv.get(&path).await.expect_error(400);
        srv.post_raw(&path, None, b"x".to_vec())
            .await
            .expect_error(400);
    }
}

/// Agents released between upstream's #836 (Dec 2025) and #951 (Mar 2026) post every
/// output chunk twice: raw to the legacy `/output` first, then as a numbered fragment to
/// `/log/output` (upstream kept the two apart). flinger has one stream, so the fragment
/// must land on the legacy chunk as a retry would: each chunk shown once, in its phase,
/// even when a legacy post was lost and only the fragment arrived.
#[tokio::test]
async fn a_dual_writing_agent_shows_each_chunk_once() {
    let srv = TestServer::start();
    let id = srv.submit_to("dual").await;
    assert_eq!(srv.pop_id(&["dual"]).await.as_deref(), Some(id.as_str()));
    let legacy = format!("/v1/result/{id}/output");
    let log = format!("/v1/result/{id}/log/output");
    let mut number = 0;
    for (phase, chunks) in [("setup", 2), ("provision", 3), ("test", 2)] {
        srv.post_result(&id, &serde_json::json!({ "job_state": phase }))
            .await;
        for i in 0..chunks {
            let text = format!("{phase} chunk {i}\n");
            // The agent's legacy post of provision's second chunk failed.
            if (phase, i) != ("provision", 1) {
                srv.post_raw(&legacy, Some("text/plain"), text.clone().into_bytes())
                    .await
                    .expect_status(200);
            }
            let fragment = serde_json::json!({
                "fragment_number": number,
                "timestamp": "2026-01-05T10:00:00+00:00",
                "phase": phase,
                "log_data": text,
            });
            srv.post_json(&log, &fragment).await.expect_status(200);
            number += 1;
        }
    }
    let whole = srv.get(&log).await.expect_json();
    for (phase, expected) in [
        ("setup", "setup chunk 0\nsetup chunk 1\n"),
        (
            "provision",
            "provision chunk 0\nprovision chunk 1\nprovision chunk 2\n",
        ),
        ("test", "test chunk 0\ntest chunk 1\n"),
    ] {
        assert_eq!(whole["output"][phase]["log_data"], expected, "{whole}");
        assert_eq!(srv.result(&id).await[format!("{phase}_output")], expected);
    }
    assert_eq!(whole["output"]["test"]["last_fragment_number"], number - 1);
}
