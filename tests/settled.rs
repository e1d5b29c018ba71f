//! Conformance differences settled one by one against upstream's servers and its real
//! clients: each test shows flinger answering what upstream answers where that is right,
//! through the real `testflinger-cli` or `testflinger-agent` where one is involved. The
//! differences kept on purpose are in README's compatibility table.

use std::time::Duration;

use crate::util::agent::cli;
use crate::util::{new_id, TestServer};

#[tokio::test]
async fn real_cli_cancel_prints_a_message_when_job_is_unknown() {
    // `testflinger-cli cancel` words a 400 and lets any other status escape as a Python
    // traceback; both upstream servers answer 400 here.
    let srv = TestServer::start();
    let id = new_id();
    let out = cli(&srv, &["cancel", &id], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("Invalid job ID specified or the job is already complete/cancelled."),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains("Traceback"), "stderr:\n{stderr}");
}
