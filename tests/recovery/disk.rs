//! Recovery from the disk and the data directory themselves: a full disk (507, then every
//! acknowledged write kept once there is room), a data directory another server holds,
//! one named by the config file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{assert_jobs, refused_start, start_on};
use crate::util::{pseudo_random_bytes, Opts, TestServer};

/// Lazily unmounts a tmpfs when dropped, also when the test panics.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `path` with one file until it reports ENOSPC.
fn fill_disk(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create ballast");
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let buf = vec![0xabu8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("writing ballast: {e}"),
            }
        }
    }
    written
}

/// What a mutation answered: `true` for 2xx; otherwise it must be a JSON 507/503.
#[track_caller]
fn accepted(r: &crate::util::Resp, what: &str) -> bool {
    if (200..300).contains(&r.status) {
        return true;
    }
    assert!(
        r.status == 507 || r.status == 503,
        "{what}: a mutation that cannot be made durable must get 507 or 503, got {}: {:?}",
        r.status,
        r.text_preview()
    );
    r.expect_json_error();
    false
}

/// A tmpfs of `size` (mount's syntax, e.g. `16m`) on a new directory, unmounted when the
/// guard drops; `None` (the test skips, saying so) where mounting is not allowed, which
/// as root must not happen.
fn small_disk(size: &str) -> Option<(tempfile::TempDir, Unmount)> {
    let tmp = tempfile::Builder::new()
        .prefix("flinger-tmpfs-")
        .tempdir()
        .expect("tempdir");
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(tmp.path())
        .output();
    let mounted = matches!(&mount, Ok(o) if o.status.success());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !mounted {
        eprintln!("disk-full test skipped: cannot mount a tmpfs: {mount:?}");
    }
    assert!(
        !root || mounted,
        "running as root, the tmpfs must mount: {mount:?}"
    );
    mounted.then(|| {
        let unmount = Unmount(tmp.path().to_path_buf());
        (tmp, unmount)
    })
}

/// A server started on a disk without room for its next log segment says so at start-up
/// (the writer logs only changes of the disk's state: it used to start silent, looking
/// healthy, and refuse every change).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_started_on_a_full_disk_says_so_and_refuses_changes_with_507() {
    let Some((tmp, _unmount)) = small_disk("3m") else {
        return;
    };
    let srv = start_on(&tmp.path().join("data"), &[]);
    let r = srv
        .post_json("/v1/job", &json!({"job_queue": "full"}))
        .await;
    assert_eq!(r.status, 507, "{}", r.text());
    let logged = srv
        .stderr_lines_once(|l| l.contains("disk full at start-up"))
        .await;
    let line = logged
        .iter()
        .find(|l| l.contains("disk full at start-up"))
        .expect("the start-up warning");
    assert!(
        line.contains("--segment-bytes") && line.contains("data_dir="),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_get_507_and_resume_without_losing_acknowledged_writes_when_the_disk_is_full() {
    let Some((tmp, _unmount)) = small_disk("16m") else {
        return;
    };
    let mnt = tmp.path().to_path_buf();
    let data = mnt.join("data");
    let mut srv = start_on(
        &data,
        &[
            "--segment-bytes",
            "2097152",
            "--max-job-bytes",
            "262144",
            "--max-result-bytes",
            "262144",
            "--max-output-bytes",
            "262144",
        ],
    );
    let job = srv.submit_to("full").await;
    let ballast = mnt.join("ballast");
    let ballast_bytes = fill_disk(&ballast);
    assert!(
        ballast_bytes > 4 << 20,
        "the ballast took only {ballast_bytes} bytes"
    );

    // Results of ~200 KiB each, each to its own id, until a mutation is refused.
    let blob = |n: usize| -> String {
        let c = (b'a' + (n % 26) as u8) as char;
        c.to_string().repeat(200 * 1024)
    };
    let mut acked: Vec<(String, usize)> = Vec::new();
    let mut n = 0;
    let refused = loop {
        assert!(
            n < 60,
            "60 results of 200 KiB fit on a 16 MiB tmpfs that was full"
        );
        let id = uuid::Uuid::new_v4().to_string();
        let r = srv
            .post_json(
                &format!("/v1/result/{id}"),
                &json!({"n": n, "blob": blob(n)}),
            )
            .await;
        if accepted(&r, &format!("result {n} while filling")) {
            acked.push((id, n));
            n += 1;
        } else {
            break r;
        }
    };
    eprintln!(
        "disk full after {} acknowledged results: {} {}",
        acked.len(),
        refused.status,
        refused.text()
    );
    // Reads keep working while full.
    srv.get(&format!("/v1/job/{job}")).await.expect_status(200);
    for (id, n) in &acked {
        let v = srv.result(id).await;
        assert_eq!(v["n"], json!(n), "result {id} while full");
    }
    // Another mutation kind is refused or durable, never acknowledged and lost.
    let r = srv
        .post_json("/v1/job", &json!({"job_queue": "full"}))
        .await;
    let mut jobs = vec![job];
    if accepted(&r, "submit while full") {
        jobs.push(r.json()["job_id"].as_str().unwrap().to_string());
    }

    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        let r = srv
            .post_json(
                &format!("/v1/result/{id}"),
                &json!({"n": n, "blob": blob(n)}),
            )
            .await;
        if accepted(&r, "result after freeing space") {
            acked.push((id, n));
            n += 1;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mutations still refused 10 s after space was freed: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more, to be sure the log is really writable again (crossing into a new segment).
    for _ in 0..12 {
        let id = uuid::Uuid::new_v4().to_string();
        let r = srv
            .post_json(
                &format!("/v1/result/{id}"),
                &json!({"n": n, "blob": blob(n)}),
            )
            .await;
        assert!(accepted(&r, "result after recovery"));
        acked.push((id, n));
        n += 1;
    }

    assert!(srv.restart().success());
    assert_jobs(&srv, &jobs, 200, "after restart").await;
    for (id, n) in &acked {
        let v = srv.result(id).await;
        assert_eq!(v["n"], json!(n), "acknowledged result {id} after restart");
        assert!(
            v["blob"].as_str() == Some(blob(*n).as_str()),
            "acknowledged result {id} (n={n}) came back different after restart"
        );
    }
    drop(srv);
}

// ---- 6. the data directory's place --------------------------------------------------------

#[tokio::test]
async fn config_file_sets_data_dir_when_named_by_testflinger_config() {
    let srv = TestServer::start_opts(Opts {
        omit_data_dir: true,
        files: vec![(
            "custom.conf".into(),
            "DATA_PATH = '{dir}/from-conf'\n".into(),
        )],
        envs: vec![("TESTFLINGER_CONFIG".into(), "{dir}/custom.conf".into())],
        ..Opts::default()
    });
    let line = srv
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains(" listening "))
        .unwrap();
    let expected = srv.dir().join("from-conf");
    assert!(
        line.contains(&format!("data_dir={}", expected.display())),
        "{line}"
    );
    srv.submit_to("q").await;
    assert!(
        expected.is_dir(),
        "data dir from the config file was not created"
    );
}

// ---- 7. the data directory lock ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn second_server_refuses_to_start_and_first_keeps_serving_when_the_data_dir_is_locked() {
    let mut srv = TestServer::start();
    let id = srv.submit_to("lockq").await;
    let bytes = pseudo_random_bytes(50_000, 11);
    srv.post_multipart(
        &format!("/v1/result/{id}/artifact"),
        "file",
        "a.bin",
        &bytes,
    )
    .await
    .expect_status(200);

    let stderr = refused_start(srv.dir(), &srv.data_dir(), &[]);
    assert!(
        stderr.to_lowercase().contains("lock"),
        "the error should say the data directory is locked:\n{stderr}"
    );

    // The first server is unaffected: reads, writes, and its files.
    srv.get(&format!("/v1/job/{id}")).await.expect_status(200);
    let r = srv.get(&format!("/v1/result/{id}/artifact")).await;
    r.expect_status(200);
    assert!(
        r.body[..] == bytes[..],
        "artifact changed after the refused second start"
    );
    let other = srv.submit_to("lockq").await;
    assert!(srv.restart().success());
    assert_jobs(&srv, &[id.clone(), other], 200, "after restart").await;
    let r = srv.get(&format!("/v1/result/{id}/artifact")).await;
    r.expect_status(200);
    assert!(
        r.body[..] == bytes[..],
        "artifact lost after the refused second start"
    );
}
