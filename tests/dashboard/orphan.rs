//! The job page of a job whose data lives in the orphan store (posted for its id before
//! any job had it): the page shows the log's end and the results' start as for any job,
//! and one view reads the id's file once.

use serde_json::json;

use super::fragment;
use crate::util::{new_id, TestServer};

/// Bytes the server process has read through read calls (`rchar`): on the file journal
/// the orphan store's files are read so.
fn bytes_read(srv: &TestServer) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", srv.pid())).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/<pid>/io")
}

#[tokio::test]
async fn job_page_of_a_job_whose_data_is_in_the_orphan_store_reads_its_file_once() {
    let srv = TestServer::start();
    let id = new_id();
    let chunk = "<x>\n".repeat(256 << 10); // 1 MiB
    for n in 0..4 {
        srv.post_result(&id, &json!({format!("field-{n}"): chunk}))
            .await;
    }
    for n in 0..4u64 {
        let text = match n {
            0 => format!("THE-START\n{chunk}"),
            3 => format!("{chunk}THE-END\n"),
            _ => chunk.clone(),
        };
        srv.post_json(
            &format!("/v1/result/{id}/log/output"),
            &fragment(n, "test", &text),
        )
        .await
        .expect_status(200);
    }
    // A job takes the id: its data stays in the orphan store's file.
    srv.submit(&json!({"job_queue": "orphan-page", "job_id": id}))
        .await;
    let view = || async {
        let html = srv
            .get(&format!("/jobs/{id}"))
            .await
            .expect_status(200)
            .text();
        assert!(
            html.contains("THE-END") && !html.contains("THE-START"),
            "the log's end"
        );
        assert!(
            html.contains("field-0") && !html.contains("field-3"),
            "the results' start"
        );
    };
    view().await; // warm: whatever a first view loads once
    if srv.journal().is_some() {
        // On PostgreSQL the file is read from the database, over a socket.
        return;
    }
    let file: u64 = std::fs::read_dir(srv.data_dir().join("files"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(file > 8 << 20, "the orphan file holds {file} bytes");
    let before = bytes_read(&srv);
    view().await;
    let read = bytes_read(&srv) - before;
    assert!(
        read >= file && read < file + file / 2,
        "one view read {read} bytes of a {file}-byte file"
    );
}
