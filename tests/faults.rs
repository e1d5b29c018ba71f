//! A disk that fails under a running server. The real binary cannot be made to fail its
//! fsync, so these tests run the server in-process on 127.0.0.1:0 with its write-ahead
//! log on `wal::fault::FaultyFs` (the log's filesystem seam), and talk to it over HTTP.

use std::sync::Arc;

use flinger::config::Config;
use flinger::server::{start, start_with_fs};
use serde_json::json;
use tokio::sync::oneshot;
use wal::fault::{Fault, FaultyFs, Op};

use crate::util::{serve_on, Http};

/// A server on a fresh data dir in `dir` whose log sits on a `FaultyFs` (no faults yet).
async fn start_faulty(
    dir: &tempfile::TempDir,
) -> (
    Config,
    Arc<FaultyFs>,
    Http,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<flinger::Result<()>>,
) {
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let fs = Arc::new(FaultyFs::new(Arc::new(wal::StdFs)));
    let running = start_with_fs(config.clone(), fs.clone()).await.unwrap();
    let (http, stop, server) = serve_on(running).await;
    (config, fs, http, stop, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_fsync_refuses_every_later_change_with_503_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (config, fs, http, stop, server) = start_faulty(&dir).await;

    let kept = http.submit_to("q").await;
    fs.fail_always(Op::Sync, Fault::Io);
    let refused = http.post_json("/v1/job", &json!({"job_queue": "q"})).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(!refused.message().is_empty());

    // The failed sync is never retried, even once the disk would work again: the log
    // stays refused (fsyncgate), and nothing new is applied.
    fs.clear();
    let cancel = http
        .post_json(
            &format!("/v1/job/{kept}/action"),
            &json!({"action": "cancel"}),
        )
        .await;
    assert_eq!(cancel.status, 503, "{}", cancel.text());
    let result = http
        .post_json(
            &format!("/v1/result/{kept}"),
            &json!({"job_state": "complete"}),
        )
        .await;
    assert_eq!(result.status, 503, "{}", result.text());

    // Reads keep working and show no refused change.
    http.get(&format!("/v1/job/{kept}"))
        .await
        .expect_status(200);
    assert_eq!(http.job_state(&kept).await, "waiting");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // A restart recovers from disk: the acknowledged job is there, still waiting.
    let (http, stop, server) = serve_on(start(config).await.unwrap()).await;
    assert_eq!(http.job_state(&kept).await, "waiting");
    assert_eq!(http.pop_id(&["q"]).await.as_deref(), Some(kept.as_str()));
    http.post_json("/v1/job", &json!({"job_queue": "q"}))
        .await
        .expect_status(200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_write_refuses_changes_with_503_and_acknowledges_nothing_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (config, fs, http, stop, server) = start_faulty(&dir).await;

    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        acknowledged.push(http.submit_to("q").await);
    }
    fs.fail_always(Op::Write, Fault::Io);
    for _ in 0..3 {
        let r = http.post_json("/v1/job", &json!({"job_queue": "q"})).await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let (http, stop, server) = serve_on(start(config).await.unwrap()).await;
    for id in &acknowledged {
        assert_eq!(
            http.job_state(id).await,
            "waiting",
            "acknowledged job {id} lost"
        );
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A server on a `FaultyFs` whose log rotates every few dozen 40 KiB jobs.
async fn start_faulty_small_segments(
    dir: &tempfile::TempDir,
) -> (
    Arc<FaultyFs>,
    Http,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<flinger::Result<()>>,
) {
    let config = Config {
        data_dir: dir.path().join("data"),
        max_job_bytes: 64 << 10,
        max_result_bytes: 64 << 10,
        max_output_bytes: 64 << 10,
        segment_bytes: 2 << 20,
        ..Config::default()
    };
    let fs = Arc::new(FaultyFs::new(Arc::new(wal::StdFs)));
    let running = start_with_fs(config, fs.clone()).await.unwrap();
    let (http, stop, server) = serve_on(running).await;
    (fs, http, stop, server)
}

fn padded_job() -> serde_json::Value {
    json!({"job_queue": "q", "pad": "x".repeat(40 << 10)})
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_for_a_new_segment_refuses_changes_then_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, http, stop, server) = start_faulty_small_segments(&dir).await;
    fs.fail_always(Op::Create, Fault::TooManyFiles);
    // The first rotation uses the reserved spare; making the next spare fails: from then
    // on changes are refused, with the cause, until a spare can be made.
    let mut acknowledged = Vec::new();
    let refused = loop {
        let r = http.post_json("/v1/job", &padded_job()).await;
        match r.status {
            200 => acknowledged.push(r.json()["job_id"].as_str().unwrap().to_owned()),
            _ => break r,
        }
        assert!(acknowledged.len() < 500, "never refused");
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.message().contains("Too many open files"),
        "{}",
        refused.text()
    );
    // The cause goes away: writing resumes by itself (the writer retries every 250 ms).
    fs.clear();
    let mut resumed = None;
    for _ in 0..100 {
        let r = http.post_json("/v1/job", &padded_job()).await;
        if r.status == 200 {
            resumed = Some(r.json()["job_id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    acknowledged.push(resumed.expect("the log did not recover by itself"));
    for _ in 0..40 {
        acknowledged.push(http.submit(&padded_job()).await);
    }
    for id in &acknowledged {
        assert_eq!(http.job_state(id).await, "waiting");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_segment_rename_holds_the_change_until_it_can_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, http, stop, server) = start_faulty_small_segments(&dir).await;
    // The first record creates the first segment.
    let mut acknowledged = vec![http.submit_to("q").await];
    fs.fail_always(Op::Rename, Fault::Denied);
    // Submit until one submission waits: its record needs a segment that cannot be named.
    let held = loop {
        let client = http.clone();
        let mut submit =
            tokio::spawn(async move { client.post_json("/v1/job", &padded_job()).await });
        let wait = std::time::Duration::from_secs(2);
        let Ok(r) = tokio::time::timeout(wait, &mut submit).await else {
            break submit;
        };
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        acknowledged.push(r.json()["job_id"].as_str().unwrap().to_owned());
        assert!(acknowledged.len() < 500, "never held");
    };
    // Meanwhile new changes are refused at the door, naming the cause; reads go on.
    let r = http.post_json("/v1/job", &json!({"job_queue": "q"})).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.message().contains("Permission denied"), "{}", r.text());
    http.get(&format!("/v1/job/{}", acknowledged[0]))
        .await
        .expect_status(200);
    // The directory becomes writable again: the held change is written and answered.
    fs.clear();
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    acknowledged.push(r.json()["job_id"].as_str().unwrap().to_owned());
    acknowledged.push(http.submit_to("q").await);
    for id in &acknowledged {
        assert_eq!(http.job_state(id).await, "waiting");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Holds preallocations: once [`Gate::hold`] is called, every `allocate` waits until
/// [`Gate::release`] (a filesystem without `fallocate`, where glibc writes the whole
/// segment, slowed to a stop). Released when dropped, so a failing test does not leave a
/// thread waiting.
#[derive(Default)]
struct Gate {
    /// (held, allocations waiting now).
    state: std::sync::Mutex<(bool, u64)>,
    wake: std::sync::Condvar,
}

impl Gate {
    fn hold(&self) {
        self.state.lock().unwrap().0 = true;
    }

    fn release(&self) {
        self.state.lock().unwrap().0 = false;
        self.wake.notify_all();
    }

    fn waiting(&self) -> u64 {
        self.state.lock().unwrap().1
    }

    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        while state.0 {
            state = self.wake.wait(state).unwrap();
        }
        state.1 -= 1;
    }
}

/// Releases the gate when the test ends, however it ends.
struct Release(Arc<Gate>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The real disk, with preallocation behind a [`Gate`].
struct SlowAllocFs {
    inner: wal::StdFs,
    gate: Arc<Gate>,
}

struct SlowAllocFile {
    inner: Box<dyn wal::FsFile>,
    gate: Arc<Gate>,
}

impl wal::Fs for SlowAllocFs {
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn create_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn lock(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }
    fn read_dir(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.read_dir(dir)
    }
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn open_read(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::FsRead>> {
        self.inner.open_read(path)
    }
    fn create(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::FsFile>> {
        Ok(Box::new(SlowAllocFile {
            inner: self.inner.create(path)?,
            gate: self.gate.clone(),
        }))
    }
    fn create_private(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::FsFile>> {
        self.inner.create_private(path)
    }
    fn open(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::FsFile>> {
        Ok(Box::new(SlowAllocFile {
            inner: self.inner.open(path)?,
            gate: self.gate.clone(),
        }))
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl wal::FsFile for SlowAllocFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> std::io::Result<bool> {
        self.gate.pass();
        self.inner.allocate(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submissions_are_acknowledged_while_the_next_segment_is_still_being_preallocated() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        max_job_bytes: 64 << 10,
        max_result_bytes: 64 << 10,
        max_output_bytes: 64 << 10,
        segment_bytes: 2 << 20,
        ..Config::default()
    };
    let gate = Arc::new(Gate::default());
    let _release = Release(gate.clone());
    let fs = Arc::new(SlowAllocFs {
        inner: wal::StdFs,
        gate: gate.clone(),
    });
    let running = start_with_fs(config, fs).await.unwrap();
    let (http, stop, server) = serve_on(running).await;
    // From now on preallocating a spare segment never finishes (until released).
    gate.hold();
    // A generous bound that only a submission waiting for the held preallocation reaches.
    let within = std::time::Duration::from_secs(30);
    let submit = |http: Http| async move {
        let r = tokio::time::timeout(within, http.post_json("/v1/job", &padded_job()))
            .await
            .expect("an acknowledgement waited for the next segment's preallocation");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["job_id"].as_str().unwrap().to_owned()
    };
    // Submit until a rotation has used the reserved spare and started making the next one.
    let mut acknowledged = Vec::new();
    while gate.waiting() == 0 {
        acknowledged.push(submit(http.clone()).await);
        assert!(acknowledged.len() < 500, "the log never rotated");
    }
    // Half a segment more, acknowledged while that preallocation is still held.
    for _ in 0..20 {
        acknowledged.push(submit(http.clone()).await);
    }
    assert_eq!(
        gate.waiting(),
        1,
        "the preallocation was not held meanwhile"
    );
    // Once it finishes, the next rotations take the spares made meanwhile.
    gate.release();
    for _ in 0..120 {
        acknowledged.push(submit(http.clone()).await);
    }
    for id in &acknowledged {
        assert_eq!(http.job_state(id).await, "waiting");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
