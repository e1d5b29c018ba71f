//! Power loss: nothing acknowledged is lost when the machine loses power at any instant.
//!
//! Each trial runs an in-process server whose whole data dir (log segments, the spare
//! segment, snapshots, uploaded files) sits on `wal::power::PowerFs`, a simulated disk with
//! a page cache. Concurrent clients and agents submit, pop, cancel, post results, log
//! fragments, artifacts, attachments and agent data; the power goes at a random instant
//! (after a random number of disk calls, or right after a random acknowledgement), in a
//! quarter of the trials again while recovering; a fresh server recovers the disk image
//! (strict recovery, no `--wal-truncate-corruption`), and the trial checks that every change
//! acknowledged before the cut is there, byte-identical, that no job is handed out twice and
//! no cancelled job is handed out. Segments and snapshots are tiny, so cuts land
//! mid-rotation and mid-snapshot often; the run asserts that they did.
//!
//! Requests go to the router as a tower service (no sockets), as in `faults.rs`, so a
//! trial takes milliseconds. `FLINGER_POWER_TRIALS=N` runs N trials (default 1000);
//! `FLINGER_POWER_SEED=S` replays the trial of seed S, 20 times (the workload, the cut and
//! the crash choices follow from the seed; the scheduling of threads does not, so a rare
//! interleaving may need several runs); `FLINGER_POWER_BASE=B` runs seeds B, B+1, ...

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use flinger::config::Config;
use flinger::server::{start_with_fs, Running};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use wal::power::{OpKind, PowerFs, Rng};

/// Trials run by default: enough to land in every phase of rotation and snapshotting.
const DEFAULT_TRIALS: u64 = 1000;
/// Runs of the one seed given in `FLINGER_POWER_SEED` (unless `FLINGER_POWER_TRIALS` says).
const REPLAYS: u64 = 20;
/// Concurrent clients per trial.
const CLIENTS: u64 = 3;
/// Requests each client makes at most.
const STEPS: u64 = 16;
/// How long the clients may take to finish after the cut (they get errors, not hangs).
const DRAIN: Duration = Duration::from_secs(30);
/// Queues the trial uses.
const QUEUES: [&str; 2] = ["q0", "q1"];
/// Uploads are at most this big (several sectors and pages, so tearing matters).
const MAX_UPLOAD: u64 = 12_000;

/// A small server: 4 KiB segments and a snapshot every 2 KiB of log, so a trial of a few
/// dozen requests rotates and snapshots several times.
fn config() -> Config {
    Config {
        data_dir: "/srv/flinger".into(),
        segment_bytes: 4096,
        snapshot_bytes: 2048,
        max_artifact_bytes: 1 << 20,
        ..Config::default()
    }
}

/// What the clients know about one job.
#[derive(Default)]
struct JobRecord {
    /// The submitted `n` (identifies the body), once the submit was acknowledged.
    submitted: Option<u64>,
    /// Declares attachments: not dispatched before they arrive.
    attachments: bool,
    /// A pop handed it out and was acknowledged.
    popped: bool,
    /// A cancel was acknowledged (at this tick of the trial's clock).
    cancelled: Option<u64>,
    /// Result fields acknowledged: key -> value.
    fields: Vec<(String, String)>,
    /// Log fragments acknowledged (their `log_data`).
    fragments: Vec<String>,
    /// Artifact uploads, in the order they were sent.
    artifacts: Vec<Upload>,
    /// Attachments uploads, likewise.
    attachment_uploads: Vec<Upload>,
}

/// One upload and when it was sent and acknowledged (ticks of the trial's clock).
struct Upload {
    bytes: Vec<u8>,
    sent: u64,
    acked: Option<u64>,
}

/// Shared by the clients of one trial.
struct World {
    /// The disk whose power is cut.
    fs: PowerFs,
    /// The server under test.
    app: Router,
    /// Jobs by id.
    jobs: Mutex<HashMap<String, JobRecord>>,
    /// Ids in submission order (for picking one at random).
    ids: Mutex<Vec<String>>,
    /// Agent data fields acknowledged: (agent, key, value).
    agent_fields: Mutex<Vec<(String, String, String)>>,
    /// Unique numbers for bodies, fields and fragments.
    counter: AtomicU64,
    /// Acknowledgements counted so far.
    acks: AtomicU64,
    /// Cut the power right after this acknowledgement (0: not this way).
    cut_at_ack: u64,
    /// The seed of the crash choices.
    crash_seed: u64,
    /// Problems seen before the cut (a 5xx, a job handed out twice).
    problems: Mutex<Vec<String>>,
    /// Set once the clients should stop.
    stop: AtomicBool,
}

/// A response: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn call(app: &Router, method: Method, uri: &str, ct: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let req = req.body(Body::from(body)).expect("request builds");
    let response = app
        .clone()
        .oneshot(req)
        .await
        .expect("the router is infallible");
    let status = response.status().as_u16();
    // A body that fails mid-stream (a dead disk) reads as empty: only post-cut answers can.
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    Answer { status, body }
}

fn multipart(bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("----power-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.tgz\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl World {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request; `Some(answer)` when the power was still on when it was answered
    /// (so a 2xx is an acknowledgement), `None` when the outcome is unknown.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        ct: Option<&str>,
        body: Vec<u8>,
    ) -> Option<Answer> {
        if self.fs.is_cut() {
            return None;
        }
        let answer = call(&self.app, method, uri, ct, body).await;
        if self.fs.is_cut() {
            return None;
        }
        if answer.status >= 500 {
            self.problem(format!(
                "{uri} answered {} before the cut: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        Some(answer)
    }

    /// Counts an acknowledgement; cuts the power if this is the chosen one.
    fn acked(&self) {
        let n = self.acks.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.cut_at_ack {
            self.fs.cut(self.crash_seed);
        }
    }

    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }

    fn pick(&self, rng: &mut Rng, filter: impl Fn(&JobRecord) -> bool) -> Option<String> {
        let ids = self.ids.lock().unwrap();
        let jobs = self.jobs.lock().unwrap();
        let candidates: Vec<&String> = ids.iter().filter(|id| filter(&jobs[*id])).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rng.below(candidates.len() as u64) as usize].clone())
    }

    async fn submit(&self, rng: &mut Rng) {
        let n = self.next();
        let attachments = rng.chance(1, 5);
        let id = uuid::Uuid::new_v4().to_string();
        let mut job = json!({"job_id": id, "job_queue": QUEUES[rng.below(2) as usize], "n": n});
        if attachments {
            job["test_data"] = json!({"attachments": [{"local": "a.bin", "agent": "a.bin"}]});
        }
        self.jobs.lock().unwrap().insert(
            id.clone(),
            JobRecord {
                attachments,
                ..JobRecord::default()
            },
        );
        self.ids.lock().unwrap().push(id.clone());
        let body = serde_json::to_vec(&job).unwrap();
        if let Some(a) = self
            .send(Method::POST, "/v1/job", Some("application/json"), body)
            .await
        {
            if a.status == 200 {
                self.jobs.lock().unwrap().get_mut(&id).unwrap().submitted = Some(n);
                self.acked();
            }
        }
    }

    async fn pop(&self) {
        let sent = self.next();
        let uri = format!("/v1/job?queue={}&queue={}", QUEUES[0], QUEUES[1]);
        let Some(a) = self.send(Method::GET, &uri, None, Vec::new()).await else {
            return;
        };
        if a.status != 200 {
            return;
        }
        let Some(id) = a.json()["job_id"].as_str().map(str::to_owned) else {
            self.problem(format!(
                "pop answered 200 without a job_id: {}",
                String::from_utf8_lossy(&a.body)
            ));
            return;
        };
        {
            let mut jobs = self.jobs.lock().unwrap();
            let Some(job) = jobs.get_mut(&id) else {
                self.problem(format!("pop handed out unknown job {id}"));
                return;
            };
            if job.popped {
                self.problem(format!("job {id} handed out twice before the cut"));
            }
            if job.cancelled.is_some_and(|at| at < sent) {
                self.problem(format!("cancelled job {id} handed out before the cut"));
            }
            job.popped = true;
        }
        self.acked();
    }

    async fn cancel(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, |j| j.cancelled.is_none()) else {
            return;
        };
        let body = serde_json::to_vec(&json!({"action": "cancel"})).unwrap();
        let uri = format!("/v1/job/{id}/action");
        if let Some(a) = self
            .send(Method::POST, &uri, Some("application/json"), body)
            .await
        {
            if a.status == 200 {
                let at = self.next();
                self.jobs.lock().unwrap().get_mut(&id).unwrap().cancelled = Some(at);
                self.acked();
            }
        }
    }

    async fn result(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, |j| j.submitted.is_some()) else {
            return;
        };
        let n = self.next();
        let (key, value) = (
            format!("k{n}"),
            format!("v{n}-{}", "x".repeat(rng.below(300) as usize)),
        );
        let body = serde_json::to_vec(&json!({ key.clone(): value.clone() })).unwrap();
        let uri = format!("/v1/result/{id}");
        if let Some(a) = self
            .send(Method::POST, &uri, Some("application/json"), body)
            .await
        {
            if a.status == 200 {
                self.jobs
                    .lock()
                    .unwrap()
                    .get_mut(&id)
                    .unwrap()
                    .fields
                    .push((key, value));
                self.acked();
            }
        }
    }

    async fn log(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, |j| j.submitted.is_some()) else {
            return;
        };
        let n = self.next();
        let data = format!("<fragment {n} {}>", "y".repeat(rng.below(400) as usize));
        let body = serde_json::to_vec(&json!({
            "fragment_number": n,
            "timestamp": "2026-11-29T12:00:00+00:00",
            "phase": "test",
            "log_data": data,
        }))
        .unwrap();
        let uri = format!("/v1/result/{id}/log/output");
        // Agents retry on errors and timeouts, so the same fragment may arrive twice at once:
        // the second answer must not come before the first's record is durable.
        let retried = rng.chance(1, 3);
        let post = || self.send(Method::POST, &uri, Some("application/json"), body.clone());
        let mut answers = vec![];
        if retried {
            let (a, b) = tokio::join!(post(), post());
            answers.extend([a, b]);
        } else {
            answers.push(post().await);
        }
        for a in answers.into_iter().flatten() {
            if a.status == 200 {
                let mut jobs = self.jobs.lock().unwrap();
                let fragments = &mut jobs.get_mut(&id).unwrap().fragments;
                if !fragments.contains(&data) {
                    fragments.push(data.clone());
                }
                drop(jobs);
                self.acked();
            }
        }
    }

    /// Merges a field into one of a few agents' records: each record takes up to five of
    /// the string fields an agent record has, each field written once (so a later write
    /// never replaces an acknowledged one, whichever client's lands first).
    async fn agent(&self, rng: &mut Rng) {
        const KEYS: [&str; 5] = [
            "identifier",
            "location",
            "provision_type",
            "state",
            "comment",
        ];
        let n = self.next();
        let agent = format!("agent{}-{}", rng.below(3), n / KEYS.len() as u64);
        let (key, value) = (
            KEYS[(n % KEYS.len() as u64) as usize].to_owned(),
            format!("v{n}"),
        );
        let body = serde_json::to_vec(&json!({ key.clone(): value.clone() })).unwrap();
        let uri = format!("/v1/agents/data/{agent}");
        if let Some(a) = self
            .send(Method::POST, &uri, Some("application/json"), body)
            .await
        {
            if a.status == 200 {
                self.agent_fields.lock().unwrap().push((agent, key, value));
                self.acked();
            }
        }
    }

    /// Uploads an artifact (often to a job that has one already: a replacement) or a waiting
    /// job's attachments.
    async fn upload(&self, rng: &mut Rng, attachments: bool) {
        let id = if attachments {
            self.pick(rng, |j| {
                j.attachments && j.submitted.is_some() && j.cancelled.is_none()
            })
        } else {
            self.pick(rng, |j| j.submitted.is_some())
        };
        let Some(id) = id else { return };
        let len = rng.below(MAX_UPLOAD);
        let seed = rng.next_u64();
        let mut bytes_rng = Rng::new(seed);
        let bytes: Vec<u8> = (0..len).map(|_| bytes_rng.next_u64() as u8).collect();
        let index = {
            let mut jobs = self.jobs.lock().unwrap();
            let list = if attachments {
                &mut jobs.get_mut(&id).unwrap().attachment_uploads
            } else {
                &mut jobs.get_mut(&id).unwrap().artifacts
            };
            list.push(Upload {
                bytes: bytes.clone(),
                sent: self.next(),
                acked: None,
            });
            list.len() - 1
        };
        let (ct, body) = multipart(&bytes);
        let uri = if attachments {
            format!("/v1/job/{id}/attachments")
        } else {
            format!("/v1/result/{id}/artifact")
        };
        if let Some(a) = self.send(Method::POST, &uri, Some(&ct), body).await {
            if a.status == 200 {
                let mut jobs = self.jobs.lock().unwrap();
                let job = jobs.get_mut(&id).unwrap();
                let list = if attachments {
                    &mut job.attachment_uploads
                } else {
                    &mut job.artifacts
                };
                list[index].acked = Some(self.next());
                drop(jobs);
                self.acked();
            }
        }
    }

    /// One client: a random mix of everything clients and agents do.
    async fn client(self: Arc<Self>, seed: u64) {
        let mut rng = Rng::new(seed);
        for _ in 0..STEPS {
            if self.fs.is_cut() || self.stop.load(Ordering::Relaxed) {
                return;
            }
            match rng.below(17) {
                0..=3 => self.submit(&mut rng).await,
                4..=6 => self.pop().await,
                7 => self.cancel(&mut rng).await,
                8..=9 => self.result(&mut rng).await,
                10..=11 => self.log(&mut rng).await,
                12..=13 => self.upload(&mut rng, false).await,
                14 => self.agent(&mut rng).await,
                _ => self.upload(&mut rng, true).await,
            }
        }
    }
}

/// What a trial's cut hit, for the coverage assertions.
#[derive(Default, Debug)]
struct Coverage {
    trials: u64,
    mid_snapshot: u64,
    mid_rotation: u64,
    mid_upload: u64,
    by_ack: u64,
    acknowledged: u64,
    /// Trials whose workload ended before the power went (cut while quiet).
    quiet: u64,
    /// Disk calls made before the cuts, summed.
    ops: u64,
    /// Trials that lost power a second time, while recovering.
    recovery_cuts: u64,
}

/// Stops a server without waiting forever on a dead disk.
async fn stop(running: Running) {
    let _ = tokio::time::timeout(DRAIN, running.stop()).await;
}

/// One trial; `Err` says what was lost or broken.
async fn trial(seed: u64, coverage: &Mutex<Coverage>) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let fs = PowerFs::new();
    let running = start_with_fs(config(), Arc::new(fs.clone()))
        .await
        .map_err(|e| format!("the first start failed: {e}"))?;
    let app = flinger::http::router(running.services.clone());
    let crash_seed = rng.next_u64();
    // Half the trials cut after a random number of disk calls (anywhere: mid-write,
    // mid-rename, mid-snapshot), half right after a random acknowledgement (the moment an
    // early acknowledgement would be exposed).
    let by_ack = rng.chance(1, 2);
    let cut_at_ack = if by_ack {
        1 + rng.below(CLIENTS * STEPS / 2)
    } else {
        0
    };
    if !by_ack {
        fs.cut_after(1 + rng.below(120), crash_seed);
    }
    let world = Arc::new(World {
        fs: fs.clone(),
        app,
        jobs: Mutex::default(),
        ids: Mutex::default(),
        agent_fields: Mutex::default(),
        counter: AtomicU64::new(0),
        acks: AtomicU64::new(0),
        cut_at_ack,
        crash_seed,
        problems: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(world.clone().client(rng.next_u64())))
        .collect();
    let drained = tokio::time::timeout(DRAIN, async {
        for c in clients {
            let _ = c.await;
        }
    })
    .await;
    world.stop.store(true, Ordering::Relaxed);
    let quiet = !fs.is_cut();
    // Quiet end of the workload without a cut: cut now (everything should be durable).
    let (image, cut) = fs.cut(crash_seed);
    stop(running).await;
    if drained.is_err() {
        return Err(format!("clients hung after the power cut ({cut:?})"));
    }
    let problems = world.problems.lock().unwrap().clone();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    {
        let mut c = coverage.lock().unwrap();
        c.trials += 1;
        c.by_ack += u64::from(by_ack);
        c.quiet += u64::from(quiet);
        c.ops += cut.ops;
        c.acknowledged += world.acks.load(Ordering::Relaxed);
        if let Some((kind, path)) = &cut.last_op {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.contains(".snap") {
                c.mid_snapshot += 1;
            }
            if name == "next.spare" || (*kind == OpKind::Rename && name.ends_with(".wal")) {
                c.mid_rotation += 1;
            }
            if name.starts_with("tmp-") {
                c.mid_upload += 1;
            }
        }
    }

    // A quarter of the trials lose power again while recovering (mid-truncation of a torn
    // tail, mid-snapshot of the replayed state...), and recover from that.
    let image = if rng.chance(1, 4) {
        image.cut_after(1 + rng.below(6), rng.next_u64());
        match start_with_fs(config(), Arc::new(image.clone())).await {
            Ok(running) if !image.is_cut() => {
                image.disarm();
                stop(running).await;
            }
            Ok(running) => stop(running).await,
            Err(_) if image.is_cut() => {}
            Err(e) => return Err(format!("recovery after the cut failed: {e} (cut: {cut:?})")),
        }
        coverage.lock().unwrap().recovery_cuts += u64::from(image.is_cut());
        image.image().map_or(image, |(again, _)| again)
    } else {
        image
    };
    let recovered = start_with_fs(config(), Arc::new(image))
        .await
        .map_err(|e| format!("recovery after the cut failed: {e} (cut: {cut:?})"))?;
    let app = flinger::http::router(recovered.services.clone());
    let checked = check(&app, &world).await;
    stop(recovered).await;
    checked.map_err(|e| format!("{e} (cut: {:?})", cut.last_op))
}

/// Everything acknowledged before the cut is there after recovery.
async fn check(app: &Router, world: &World) -> Result<(), String> {
    let jobs = std::mem::take(&mut *world.jobs.lock().unwrap());
    for (id, job) in &jobs {
        let Some(n) = job.submitted else { continue };
        let got = call(app, Method::GET, &format!("/v1/job/{id}"), None, Vec::new()).await;
        if got.status != 200 || got.json()["n"] != json!(n) {
            return Err(format!(
                "acknowledged job {id} lost: {} {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            ));
        }
        let result = call(
            app,
            Method::GET,
            &format!("/v1/result/{id}"),
            None,
            Vec::new(),
        )
        .await
        .json();
        let state = result["job_state"].as_str().unwrap_or("").to_owned();
        if job.cancelled.is_some() && state != "cancelled" {
            return Err(format!("acknowledged cancel of {id} lost: state {state}"));
        }
        if job.popped && state == "waiting" {
            return Err(format!("acknowledged pop of {id} lost: waiting again"));
        }
        for (key, value) in &job.fields {
            if result[key] != json!(value) {
                return Err(format!(
                    "acknowledged result field {key} of {id} lost: {}",
                    result[key]
                ));
            }
        }
        if !job.fragments.is_empty() {
            let log = call(
                app,
                Method::GET,
                &format!("/v1/result/{id}/log/output"),
                None,
                Vec::new(),
            )
            .await
            .json();
            let text = log["output"]["test"]["log_data"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            for f in &job.fragments {
                if !text.contains(f.as_str()) {
                    return Err(format!("acknowledged log fragment of {id} lost: {f:.20}"));
                }
            }
        }
        check_file(
            app,
            &format!("/v1/result/{id}/artifact"),
            &job.artifacts,
            true,
        )
        .await?;
        // Attachments are never replaced: a later upload is 200 only when it holds the
        // stored bytes (a retry), so every acknowledged upload holds the kept ones.
        check_file(
            app,
            &format!("/v1/job/{id}/attachments"),
            &job.attachment_uploads,
            false,
        )
        .await?;
    }
    let agent_fields = std::mem::take(&mut *world.agent_fields.lock().unwrap());
    for (agent, key, value) in &agent_fields {
        let got = call(
            app,
            Method::GET,
            &format!("/v1/agents/data/{agent}"),
            None,
            Vec::new(),
        )
        .await;
        if got.json()[key] != json!(value) {
            return Err(format!(
                "acknowledged field {key} of {agent} lost: {} {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            ));
        }
    }
    // Drain the queues: nothing handed out before the cut, nothing cancelled, comes out.
    let uri = format!("/v1/job?queue={}&queue={}", QUEUES[0], QUEUES[1]);
    let mut seen = HashSet::new();
    loop {
        let a = call(app, Method::GET, &uri, None, Vec::new()).await;
        if a.status == 204 {
            break;
        }
        let id = a.json()["job_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "pop after recovery answered {}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                )
            })?;
        if !seen.insert(id.clone()) {
            return Err(format!("job {id} handed out twice after recovery"));
        }
        if let Some(job) = jobs.get(&id) {
            if job.popped {
                return Err(format!(
                    "job {id} handed out before the cut and again after it"
                ));
            }
            if job.cancelled.is_some() {
                return Err(format!("cancelled job {id} handed out after recovery"));
            }
        }
    }
    Ok(())
}

/// The stored file at `uri` is, byte for byte, an upload not certainly replaced: one that
/// no acknowledged upload sent after its acknowledgement replaced (with `replaces` false:
/// any upload sent). Nothing stored is fine only when no upload was acknowledged.
async fn check_file(
    app: &Router,
    uri: &str,
    uploads: &[Upload],
    replaces: bool,
) -> Result<(), String> {
    if uploads.is_empty() {
        return Ok(());
    }
    let any_acked = uploads.iter().any(|u| u.acked.is_some());
    let replaced = |u: &Upload| {
        replaces
            && uploads
                .iter()
                .any(|v| v.acked.is_some() && u.acked.is_some_and(|at| v.sent > at))
    };
    let got = call(app, Method::GET, uri, None, Vec::new()).await;
    let fine = match got.status {
        204 => !any_acked,
        200 => {
            uploads.iter().any(|u| !replaced(u) && u.bytes == got.body)
                && (replaces
                    || uploads
                        .iter()
                        .all(|u| u.acked.is_none() || u.bytes == got.body))
        }
        _ => false,
    };
    if fine {
        return Ok(());
    }
    let expected: Vec<String> = uploads
        .iter()
        .map(|u| {
            format!(
                "{} bytes{}{}",
                u.bytes.len(),
                if u.acked.is_some() {
                    " acknowledged"
                } else {
                    ""
                },
                if replaced(u) { " replaced" } else { "" }
            )
        })
        .collect();
    Err(format!(
        "{uri}: acknowledged upload lost or damaged: got {} with {} bytes; uploads: {}",
        got.status,
        got.body.len(),
        expected.join(", ")
    ))
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_power_loss_at_any_instant() {
    let seeds: Vec<u64> = match env_u64("FLINGER_POWER_SEED") {
        // Threads are not scheduled the same way twice: run the one seed several times.
        Some(seed) => vec![seed; env_u64("FLINGER_POWER_TRIALS").unwrap_or(REPLAYS) as usize],
        None => {
            let trials = env_u64("FLINGER_POWER_TRIALS").unwrap_or(DEFAULT_TRIALS);
            // A fresh base each run explores new ground; every failure prints its seed.
            let base = env_u64("FLINGER_POWER_BASE").unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    << 20
            });
            (base..base + trials).collect()
        }
    };
    let coverage = Mutex::new(Coverage::default());
    let started = Instant::now();
    for &seed in &seeds {
        if let Err(e) = trial(seed, &coverage).await {
            panic!("power-loss trial failed; replay with FLINGER_POWER_SEED={seed}: {e}");
        }
    }
    let c = coverage.into_inner().unwrap();
    eprintln!(
        "power loss: {} trials in {:.1} s, {} acknowledgements checked; cuts mid-snapshot {}, mid-rotation {}, mid-upload {}, right after an acknowledgement {}, after the workload {}, again while recovering {}; {} disk calls per trial",
        c.trials,
        started.elapsed().as_secs_f64(),
        c.acknowledged,
        c.mid_snapshot,
        c.mid_rotation,
        c.mid_upload,
        c.by_ack,
        c.quiet,
        c.recovery_cuts,
        c.ops / c.trials.max(1)
    );
    if seeds.len() >= 200 && env_u64("FLINGER_POWER_SEED").is_none() {
        assert!(
            c.mid_snapshot > 0 && c.mid_rotation > 0 && c.mid_upload > 0 && c.recovery_cuts > 0,
            "the trials no longer cut mid-snapshot, mid-rotation, mid-upload and mid-recovery: {c:?}"
        );
    }
}
