//! A flinger core for the HTTP fuzz checks: `flinger::server::start` on a temporary data
//! directory, its router driven in-process with `tower::ServiceExt::oneshot` (no sockets), and
//! a few jobs in every lifecycle state so that fuzzed requests can name ids that exist.
//!
//! Fuzz targets keep one per process (`OnceLock`); the stable seed replay makes one per test
//! and drops it, which stops the actors and removes the directory.

// Each including target uses only part of this harness.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use flinger::config::{Config, FsyncPolicy};
use flinger::model::JobId;

/// A response, fully read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Server {
    rt: tokio::runtime::Runtime,
    router: flinger::http::App,
    running: Option<flinger::server::Running>,
    _dir: tempfile::TempDir,
    /// Jobs created at start: waiting, running, completed, cancelled (states may change as
    /// fuzzed requests act on them).
    pub jobs: Vec<JobId>,
    /// The core's `--max-upload-parts`: a well-formed upload with more parts is refused.
    pub max_upload_parts: usize,
}

impl Server {
    /// Starts a core whose data directory is a new temporary directory inside `base` (or the
    /// system's temporary directory).
    pub fn start(base: Option<&Path>) -> Server {
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("flinger-fuzz-");
            b
        };
        let dir = match base {
            Some(base) => {
                std::fs::create_dir_all(base).expect("create the fuzz data folder");
                builder.tempdir_in(base)
            }
            None => builder.tempdir(),
        }
        .expect("create a temporary data dir");
        // Fuzzing is about answers, not durability: sync once a second, keep files small.
        let config = Config {
            data_dir: dir.path().join("data"),
            fsync: FsyncPolicy::Interval(Duration::from_millis(1000)),
            max_job_bytes: 64 << 10,
            max_result_bytes: 64 << 10,
            max_output_bytes: 64 << 10,
            max_artifact_bytes: 1 << 20,
            segment_bytes: 4 << 20,
            snapshot_bytes: 2 << 20,
            ..Config::default()
        };
        let max_upload_parts = config.max_upload_parts;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let running = rt
            .block_on(flinger::server::start(config))
            .expect("the server core starts");
        let router = flinger::http::app(running.services.clone());
        let mut server = Server {
            rt,
            router,
            running: Some(running),
            _dir: dir,
            jobs: Vec::new(),
            max_upload_parts,
        };
        server.seed_jobs();
        server
    }

    fn seed_jobs(&mut self) {
        let ids: Vec<JobId> = (1..=4)
            .map(|n| JobId::parse(&format!("0000000{n}-f022-4000-8000-00000000f022")).unwrap())
            .collect();
        for id in &ids {
            let job = format!(
                r#"{{"job_id": "{id}", "job_queue": "fuzz", "tags": ["t"], "test_data": {{}}}}"#
            );
            let answer = self.send(post("/v1/job", "application/json", job.into_bytes()));
            assert_eq!(answer.status, StatusCode::OK, "seed job {id}");
        }
        for _ in 0..3 {
            let answer = self.send(
                Request::get("/v1/job?queue=fuzz")
                    .body(Body::empty())
                    .unwrap(),
            );
            assert_eq!(answer.status, StatusCode::OK, "seed pop");
        }
        let done = post(
            &format!("/v1/result/{}", ids[1]),
            "application/json",
            br#"{"job_state": "complete"}"#.to_vec(),
        );
        assert_eq!(self.send(done).status, StatusCode::OK);
        let cancel = post(
            &format!("/v1/job/{}/action", ids[2]),
            "application/json",
            br#"{"action": "cancel"}"#.to_vec(),
        );
        assert_eq!(self.send(cancel).status, StatusCode::OK);
        // ids[0] running, ids[1] complete, ids[2] cancelled, ids[3] waiting.
        self.jobs = ids;
    }

    /// Sends one request through the router and reads the whole answer.
    pub fn send(&self, request: Request<Body>) -> Answer {
        let what = format!("{} {}", request.method(), request.uri());
        self.rt.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => panic!("{what}: the response body failed: {e}"),
            };
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.rt.block_on(running.stop());
        }
    }
}

pub fn post(path: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap()
}

/// Ways Python's `uuid.UUID` (and so Testflinger) accepts one id, and one it does not.
pub fn spell(id: JobId, how: usize) -> String {
    let canonical = id.to_string();
    match how % 7 {
        0 => canonical,
        1 => canonical.to_uppercase(),
        2 => format!("{{{canonical}}}"),
        3 => format!("urn:uuid:{canonical}"),
        4 => canonical.replace('-', ""),
        5 => canonical
            .replace('-', "")
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("-"),
        _ => format!("{canonical}0"),
    }
}
