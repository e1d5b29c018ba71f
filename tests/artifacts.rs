//! Artifacts (`POST|GET /v1/result/<id>/artifact`): multipart field `file`, byte-identical
//! download of several MiB, atomic replacement, the size limit, and client file names that must
//! never become paths; attachments held at once, bounded by `--max-attachments-bytes`.

use std::time::Duration;

use serde_json::json;

use crate::util::{multipart, new_id, pseudo_random_bytes, Part, RawConn, Resp, TestServer};

#[tokio::test]
async fn artifact_is_204_when_none_was_uploaded() {
    let srv = TestServer::start();
    srv.get(&format!("/v1/result/{}/artifact", new_id()))
        .await
        .expect_no_content();
    let id = srv.submit_to("q").await;
    srv.get(&format!("/v1/result/{id}/artifact"))
        .await
        .expect_no_content();
}

#[tokio::test]
async fn artifact_is_byte_identical_when_several_mib_are_uploaded() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    let path = format!("/v1/result/{id}/artifact");
    let data = pseudo_random_bytes(5 * 1024 * 1024 + 123, 42);
    srv.post_multipart(&path, "file", "artifact.tar.gz", &data)
        .await
        .expect_status(200);
    for _ in 0..2 {
        let r = srv.get(&path).await;
        r.expect_status(200);
        assert_eq!(r.body.len(), data.len(), "artifact length");
        assert!(r.body[..] == data[..], "artifact bytes differ");
    }
}

#[tokio::test]
async fn artifact_is_replaced_when_uploaded_again() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    let first = pseudo_random_bytes(3 * 1024 * 1024, 1);
    let second = pseudo_random_bytes(1024 * 1024 + 7, 2);
    srv.post_multipart(&path, "file", "one.tgz", &first)
        .await
        .expect_status(200);
    srv.post_multipart(&path, "file", "two.tgz", &second)
        .await
        .expect_status(200);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(r.body.len(), second.len());
    assert!(
        r.body[..] == second[..],
        "the second upload replaces the first entirely"
    );
}

#[tokio::test]
async fn artifact_keeps_bytes_that_look_like_multipart_when_uploaded() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    let tricky =
        b"\r\n--\r\n------WebKitFormBoundary\r\nContent-Disposition: form-data\r\n\r\n\0\0\xff--"
            .to_vec();
    srv.post_multipart(&path, "file", "t.bin", &tricky)
        .await
        .expect_status(200);
    assert_eq!(&srv.get(&path).await.body[..], &tricky[..]);
    // An empty file is an artifact too.
    srv.post_multipart(&path, "file", "empty.bin", b"")
        .await
        .expect_status(200);
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn artifact_upload_ignores_other_fields_when_file_is_present() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    let (ct, body) = multipart(&[
        Part::field("comment", b"not the artifact"),
        Part::file("file", "a.tgz", b"THE ARTIFACT"),
        Part::field("trailer", b"also not"),
    ]);
    srv.post_raw(&path, Some(&ct), body)
        .await
        .expect_status(200);
    assert_eq!(&srv.get(&path).await.body[..], b"THE ARTIFACT");
}

#[tokio::test]
async fn artifact_upload_is_400_when_file_field_is_missing() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    srv.post_multipart(&path, "upload", "a.tgz", b"data")
        .await
        .expect_error(400);
    let (ct, body) = multipart(&[Part::field("comment", b"hello")]);
    srv.post_raw(&path, Some(&ct), body).await.expect_error(400);
    let (ct, body) = multipart(&[]);
    srv.post_raw(&path, Some(&ct), body).await.expect_error(400);
    srv.get(&path).await.expect_no_content();
}

#[tokio::test]
async fn artifact_upload_is_400_when_body_is_not_multipart() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    srv.post_raw(
        &path,
        Some("application/json"),
        br#"{"file": "x"}"#.to_vec(),
    )
    .await
    .expect_error(400);
    srv.post_raw(&path, None, b"raw bytes".to_vec())
        .await
        .expect_error(400);
    srv.post_raw(&path, Some("application/octet-stream"), b"raw".to_vec())
        .await
        .expect_error(400);
    // Declared multipart but no boundary, or a body that does not match the boundary.
    srv.post_raw(&path, Some("multipart/form-data"), b"--x\r\n".to_vec())
        .await
        .expect_error(400);
    srv.post_raw(
        &path,
        Some("multipart/form-data; boundary=abc"),
        b"garbage without boundary".to_vec(),
    )
    .await
    .expect_error(400);
    srv.get(&path).await.expect_no_content();
}

#[tokio::test]
async fn artifact_upload_is_413_when_file_exceeds_max_artifact_bytes() {
    let srv = TestServer::start_with(&["--max-artifact-bytes", "1000"]);
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    srv.post_multipart(&path, "file", "small.bin", &[7u8; 500])
        .await
        .expect_status(200);
    for (len, seed) in [(1001, 8), (5000, 9), (3 * 1024 * 1024, 10)] {
        let data = pseudo_random_bytes(len, seed);
        let (ct, body) = multipart(&[Part::file("file", "big.bin", &data)]);
        let r = srv.post_oversized(&path, Some(&ct), &body).await;
        assert_eq!(r.status, 413, "{len}-byte artifact: {}", r.text_preview());
        r.expect_json_error();
    }
    // A small file with an oversized other field: the 413 names the field's limit, or
    // (when the whole upload is over) what an upload as a whole may hold.
    let (note, half) = ([b'n'; 65_537], [b'n'; 60_000]);
    let tiny = Part::file("file", "small.bin", b"tiny");
    for (parts, expected) in [
        (
            vec![Part::field("note", &note), tiny],
            "\"note\" is limited to 65536 bytes",
        ),
        (
            vec![Part::field("a", &half), Part::field("b", &half), tiny],
            "(its file, other fields, part headers and boundaries together) is at most \
             66536 bytes; its file at most 1000",
        ),
    ] {
        let (ct, body) = multipart(&parts);
        let r = srv.post_oversized(&path, Some(&ct), &body).await;
        let message = r.expect_error(413);
        assert!(message.contains(expected), "{message}");
    }
    let r = srv.get(&path).await;
    r.expect_status(200);
    assert_eq!(
        &r.body[..],
        &[7u8; 500][..],
        "a rejected upload leaves the previous artifact intact"
    );
}

#[tokio::test]
async fn artifact_name_never_becomes_a_path_when_filename_tries_to_escape() {
    let srv = TestServer::start();
    let id = new_id();
    let path = format!("/v1/result/{id}/artifact");
    for name in [
        "../../../escape-flinger.txt",
        "/tmp/escape-flinger-abs.txt",
        "..\\..\\escape-flinger-win.txt",
    ] {
        srv.post_multipart(&path, "file", name, name.as_bytes())
            .await
            .expect_status(200);
        assert_eq!(&srv.get(&path).await.body[..], name.as_bytes());
    }
    let mut stray = Vec::new();
    for dir in [
        srv.dir().to_path_buf(),
        srv.dir().join(".."),
        srv.data_dir().join(".."),
    ] {
        for f in ["escape-flinger.txt", "escape-flinger-win.txt"] {
            if dir.join(f).exists() {
                stray.push(dir.join(f));
            }
        }
    }
    assert!(
        !std::path::Path::new("/tmp/escape-flinger-abs.txt").exists(),
        "absolute client filename was written"
    );
    assert!(
        stray.is_empty(),
        "client file names became paths: {stray:?}"
    );
}

#[tokio::test]
async fn artifact_endpoints_are_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in [
        "foo",
        "00000000-0000-0000-0000-00000000000X",
        "..",
        "%2e%2e%2f%2e%2e",
    ] {
        let path = format!("/v1/result/{id}/artifact");
        let r = srv.get(&path).await;
        assert!(
            r.status == 400 || r.status == 404,
            "GET {path}: {}",
            r.status
        );
        r.expect_json_error();
        let r = srv.post_multipart(&path, "file", "a", b"x").await;
        assert!(
            r.status == 400 || r.status == 404,
            "POST {path}: {}",
            r.status
        );
        r.expect_json_error();
    }
    srv.get("/v1/result/foo/artifact").await.expect_error(400);
}

/// A job to a queue no agent serves, declaring attachments: it waits, with them, forever.
async fn awaiting_attachments(srv: &TestServer) -> String {
    srv.submit(&json!({
        "job_queue": "nobody-serves-this",
        "test_data": {"attachments": [{"agent": "blob.bin"}]}
    }))
    .await
}

/// Uploads `len` bytes as job `id`'s attachments on a connection of its own (so a refusal
/// before the body is read is seen as the server's answer).
async fn upload_attachments(srv: &TestServer, id: &str, len: usize) -> Resp {
    let data = pseudo_random_bytes(len, len as u64);
    let (ct, body) = multipart(&[Part::file("file", "blob.bin", &data)]);
    srv.post_oversized(&format!("/v1/job/{id}/attachments"), Some(&ct), &body)
        .await
}

const ROOM: [&str; 4] = [
    "--max-artifact-bytes",
    "100000",
    "--max-attachments-bytes",
    "250000",
];

/// The attachments of waiting jobs are held while they wait, which may be forever: past
/// `--max-attachments-bytes` held at once an upload is 507 (nothing kept, the job still
/// awaiting them), naming the bound, the option and what frees room; the count is the
/// stored files' after a restart too; deleting a job gives its room back. Artifacts are
/// not counted.
#[tokio::test]
async fn attachments_upload_is_507_when_attachments_held_would_pass_max_attachments_bytes() {
    let mut srv = TestServer::start_with(&ROOM);
    let ids = [
        awaiting_attachments(&srv).await,
        awaiting_attachments(&srv).await,
        awaiting_attachments(&srv).await,
        awaiting_attachments(&srv).await,
    ];
    upload_attachments(&srv, &ids[0], 100_000)
        .await
        .expect_status(200);
    upload_attachments(&srv, &ids[1], 100_000)
        .await
        .expect_status(200);
    let message = upload_attachments(&srv, &ids[2], 100_000)
        .await
        .expect_error(507);
    for needed in [
        "250000 bytes (--max-attachments-bytes)",
        "DELETE /v1/job/<id>",
        "--retention-secs",
    ] {
        assert!(message.contains(needed), "{needed:?} in {message}");
    }
    assert_eq!(srv.job_state(&ids[2]).await, "waiting");
    // What is left still takes a smaller upload.
    upload_attachments(&srv, &ids[2], 40_000)
        .await
        .expect_status(200);
    upload_attachments(&srv, &ids[3], 20_000)
        .await
        .expect_error(507);
    // A retry of stored attachments is compared as it arrives and needs no room.
    upload_attachments(&srv, &ids[0], 100_000)
        .await
        .expect_status(200);
    let (ct, other) = multipart(&[Part::file("file", "blob.bin", &[9u8; 100_000])]);
    let path = format!("/v1/job/{}/attachments", ids[0]);
    srv.post_oversized(&path, Some(&ct), &other)
        .await
        .expect_error(400);
    // Artifacts take none of it.
    let job = srv.submit_to("q").await;
    srv.post_multipart(
        &format!("/v1/result/{job}/artifact"),
        "file",
        "a.bin",
        vec![1u8; 100_000],
    )
    .await
    .expect_status(200);

    srv.restart();
    upload_attachments(&srv, &ids[3], 20_000)
        .await
        .expect_error(507);
    let attachments = srv
        .stored_files()
        .into_iter()
        .filter(|name| name.contains(".attachments."))
        .count();
    assert_eq!(attachments, 3, "refused uploads leave no file");
    srv.request("DELETE", &format!("/v1/job/{}", ids[0]), &[], Vec::new())
        .await
        .expect_status(200);
    upload_attachments(&srv, &ids[3], 20_000)
        .await
        .expect_status(200);
}

/// Uploads at once cannot together pass the bound: each takes its declared length from
/// the room before it writes, so of five 100,000-byte uploads to a room of 250,000
/// exactly two are kept.
#[tokio::test]
async fn attachments_uploaded_at_once_never_take_more_than_max_attachments_bytes() {
    let srv = TestServer::start_with(&ROOM);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(awaiting_attachments(&srv).await);
    }
    let answers =
        futures_util::future::join_all(ids.iter().map(|id| upload_attachments(&srv, id, 100_000)))
            .await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 507, 507, 507]);
}

/// An upload's bytes count while they arrive: another is refused while it is under way,
/// and the room comes back when it is abandoned.
#[tokio::test]
async fn attachments_being_uploaded_hold_their_room_until_the_upload_ends() {
    let srv = TestServer::start_with(&[
        "--max-artifact-bytes",
        "200000",
        "--max-attachments-bytes",
        "250000",
    ]);
    let (slow, other) = (
        awaiting_attachments(&srv).await,
        awaiting_attachments(&srv).await,
    );
    let data = pseudo_random_bytes(100_000, 1);
    let (ct, body) = multipart(&[Part::file("file", "blob.bin", &data)]);
    let mut conn = RawConn::connect(&srv.base_url()).await;
    let request = crate::util::raw_post(
        &format!("/v1/job/{slow}/attachments"),
        Some(&ct),
        &body,
        true,
    );
    // All but the end: the server holds the upload open, waiting for the rest.
    conn.send(&request[..request.len() - 1000]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    upload_attachments(&srv, &other, 200_000)
        .await
        .expect_error(507);
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = upload_attachments(&srv, &other, 200_000).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 507, "{}", r.text_preview());
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned upload's room never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
