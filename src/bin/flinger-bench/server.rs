//! Server processes the bench starts and watches: spawning one on a free
//! loopback port with a fresh temporary data dir ([`ServerProc`], which kills
//! it and removes the directory on drop), its memory and CPU from /proc, the
//! descriptor limits of the bench and its children, and [`Watch`], which
//! reads the server's log and data dir while a workload runs to see its
//! snapshots and segment rotations.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use crate::client::{Conn, Target};
use crate::Abort;

// ---------------------------------------------------------------- /proc

#[derive(Clone, Copy)]
pub struct Rss {
    pub hwm_kb: u64,
    pub rss_kb: u64,
}

pub fn read_rss(pid: u32) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Rss {
        hwm_kb: field("VmHWM:")?,
        rss_kb: field("VmRSS:")?,
    })
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so the next
/// reading is the peak of what follows (Linux ≥ 4.0; false where refused).
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// This process's user + system CPU seconds (the client's share of the box).
pub fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Samples a process's RSS every 100 ms while a phase runs; together with a
/// VmHWM reset at the phase's start this gives the phase's own peak.
pub struct RssSampler {
    pid: u32,
    hwm_reset: bool,
    peak_kb: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let hwm_reset = reset_hwm(pid);
        let peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = peak_kb.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(r) = read_rss(pid) {
                    peak.fetch_max(r.rss_kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler {
            pid,
            hwm_reset,
            peak_kb,
            task,
        }
    }

    /// The phase's peak RSS in KiB and how it was found.
    pub fn finish(self) -> (Option<u64>, &'static str) {
        self.task.abort();
        let sampled = self.peak_kb.load(Ordering::Relaxed);
        let now = read_rss(self.pid);
        if let Some(r) = now {
            if self.hwm_reset {
                return (
                    Some(r.hwm_kb.max(sampled)),
                    "VmHWM, reset at the phase's start",
                );
            }
        }
        let peak = sampled.max(now.map_or(0, |r| r.rss_kb));
        ((peak > 0).then_some(peak), "VmRSS sampled every 100 ms")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- descriptor limits

/// The soft RLIMIT_NOFILE the bench started with, restored in spawned
/// servers so they run under the limit a shell would give them.
static CHILD_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises this process's soft descriptor limit to its hard limit (the
/// attackers and big concurrencies need more than the common 1,024); returns
/// (before, after). Spawned servers get the original limit back.
pub fn raise_nofile() -> Option<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let _ = CHILD_NOFILE.set(lim);
    let before = lim.rlim_cur as u64;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some((before, lim.rlim_max as u64));
        }
    }
    Some((before, before))
}

/// The current soft descriptor limit.
pub fn nofile_soft() -> u64 {
    // SAFETY: getrlimit on a struct we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur as u64
}

// ---------------------------------------------------------------- server processes

/// How to start a server: program, arguments before `--bind`, extras after,
/// and RUST_LOG when our environment has none.
#[derive(Clone)]
pub struct ServerSpec {
    pub label: String,
    pub program: PathBuf,
    pub pre_args: Vec<String>,
    pub extra_args: Vec<String>,
    pub rust_log: &'static str,
}

/// A spawned server with its own temporary directory (data dir + log). Drop
/// kills it and removes the directory, so no error path leaves either behind.
pub struct ServerProc {
    pub spec: ServerSpec,
    temp: PathBuf,
    pub data_dir: PathBuf,
    /// Its stdout and stderr, appended across restarts.
    pub log: PathBuf,
    child: Option<Child>,
    pub addr: SocketAddr,
}

fn free_port() -> std::io::Result<u16> {
    // Bind-and-drop: racy in principle, fine on a machine we share only with
    // our own servers.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl ServerProc {
    pub async fn start(
        spec: ServerSpec,
        limit: Duration,
        deadline: Instant,
    ) -> Result<(ServerProc, Duration), Abort> {
        if !spec.program.is_file() {
            return Err(Abort::Setup(format!(
                "{} binary not found at {} (build it, e.g. `cargo build --release --bin flinger`, \
                 or pass --server-bin PATH or --url URL)",
                spec.label,
                spec.program.display()
            )));
        }
        let temp = std::env::temp_dir().join(format!(
            "flinger-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let data_dir = temp.join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| Abort::Setup(format!("cannot create {}: {e}", data_dir.display())))?;
        let mut sp = ServerProc {
            spec,
            log: temp.join("server.log"),
            temp,
            data_dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let took = sp.spawn_and_wait(limit, deadline).await?;
        Ok((sp, took))
    }

    pub fn target(&self) -> Target {
        Target::local(self.addr, self.pid())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Spawns on a fresh free port and waits until `GET /v1` answers; returns
    /// the time from spawn to the first answer.
    pub async fn spawn_and_wait(
        &mut self,
        limit: Duration,
        deadline: Instant,
    ) -> Result<Duration, Abort> {
        let port = free_port().map_err(|e| Abort::Setup(format!("no free port: {e}")))?;
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Abort::Setup(format!("cannot open {}: {e}", self.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Abort::Setup(format!("log: {e}")))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.pre_args)
            .arg("--bind")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        {
            use std::os::unix::process::CommandExt;
            // Own process group: signals reach a wrapper script's children
            // too, and a terminal Ctrl-C goes to us only (we then stop it).
            cmd.process_group(0);
        }
        let nofile = CHILD_NOFILE.get().copied();
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl and setrlimit are async-signal-safe, as pre_exec
            // requires. Why PR_SET_PDEATHSIG: if the bench dies without
            // running Drop (SIGKILL, second Ctrl-C), the kernel kills the
            // server too. The signal fires when the forking *thread* exits:
            // we fork from the main thread, which lives as long as the
            // process. Why setrlimit: the server runs under the descriptor
            // limit the bench was given, not the one it raised for itself.
            unsafe {
                cmd.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if let Some(lim) = nofile {
                        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    }
                    Ok(())
                });
            }
        }
        // Per-request info logging would measure the logger, not the server;
        // an explicit RUST_LOG in our environment still wins.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", self.spec.rust_log);
        }
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            Abort::Setup(format!("cannot start {}: {e}", self.spec.program.display()))
        })?;
        self.child = Some(child);
        let target = self.target();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(Abort::Setup(format!(
                    "{} exited ({status}) before answering GET /v1; log tail:\n{}",
                    self.spec.label,
                    self.log_tail(20)
                )));
            }
            if Instant::now() >= deadline {
                return Err(Abort::Deadline);
            }
            if t0.elapsed() > limit {
                return Err(Abort::Setup(format!(
                    "{} did not answer GET /v1 within {:.0} s; log tail:\n{}",
                    self.spec.label,
                    limit.as_secs_f64(),
                    self.log_tail(20)
                )));
            }
            let mut conn = Conn::new(&target, Duration::from_millis(500));
            // Any HTTP answer means it is serving; the status is not judged.
            if conn.call(Method::GET, "/v1", None, None).await.is_ok() {
                return Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns the time to
    /// exit and whether it had to be killed.
    pub async fn terminate(&mut self, grace: Duration) -> Option<(Duration, bool)> {
        let child = self.child.as_mut()?;
        if let Ok(Some(_)) = child.try_wait() {
            self.child = None;
            return None;
        }
        signal_group(child, libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Some((t0.elapsed(), false));
            }
            if t0.elapsed() > grace {
                signal_group(child, libc::SIGKILL);
                let _ = child.wait();
                self.child = None;
                return Some((t0.elapsed(), true));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the process is still running (false once it exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

/// Signals the child's whole process group (it leads one, see spawn).
fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on the group our own, not yet reaped, child
        // leads; the pid cannot have been reused while we hold the Child.
        unsafe { libc::kill(-pid, sig) };
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

// ---------------------------------------------------------------- watching a server

/// The log line flinger writes (at info, `flinger::server`) after each
/// snapshot, with `copy_ms`, `encode_ms` and `total_ms` fields.
pub const SNAPSHOT_LINE: &str = "snapshot taken";

/// One snapshot as the server's log reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotSeen {
    /// Seconds from the watch's origin to when the line was read (within
    /// the 100 ms poll).
    pub at_s: f64,
    pub total_ms: Option<u64>,
    pub encode_ms: Option<u64>,
    pub copy_ms: Option<u64>,
}

/// What a [`Watch`] saw.
#[derive(Default)]
pub struct Seen {
    pub snapshots: Vec<SnapshotSeen>,
    /// Seconds (from the origin) at which a new log segment file appeared.
    pub rotations: Vec<f64>,
    /// Distinct snapshot files that appeared in the log directory.
    pub snapshot_files: usize,
}

impl Seen {
    pub fn json(&self) -> Value {
        json!({
            "snapshots_taken": self.snapshots.len(),
            "snapshots": self.snapshots.iter().map(|s| json!({
                "seen_at_s": s.at_s, "total_ms": s.total_ms,
                "encode_ms": s.encode_ms, "copy_ms": s.copy_ms,
            })).collect::<Vec<_>>(),
            "snapshot_files_seen": self.snapshot_files,
            "segment_rotations": self.rotations.len(),
            "rotations_at_s": self.rotations,
        })
    }
}

/// Reads a spawned server's log and lists its log directory every 100 ms
/// while a workload runs: "snapshot taken" lines are snapshots (with their
/// durations), new `*.wal` files after the first are segment rotations, new
/// `snapshot-*` files are snapshots on disk (a check that needs no log level).
pub struct Watch {
    stop: Arc<AtomicBool>,
    /// None once joined.
    task: Option<std::thread::JoinHandle<Seen>>,
}

impl Watch {
    /// Starts watching; times are seconds from `origin` (negative before it).
    pub fn start(log: PathBuf, wal_dir: PathBuf, origin: Instant) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A plain thread: it blocks on file reads, and the client runtime's
        // two threads are for requests.
        let mut w = Watcher::new(log, wal_dir, origin);
        // Whatever is there already is not news.
        w.poll(false);
        let task = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                w.poll(true);
            }
            w.poll(true);
            w.seen
        });
        Watch {
            stop,
            task: Some(task),
        }
    }

    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Watch {
    /// A watch dropped unfinished (an early return) still ends its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Watcher {
    log: PathBuf,
    wal_dir: PathBuf,
    origin: Instant,
    offset: u64,
    /// A line not yet ended by a newline.
    partial: String,
    segments: BTreeSet<String>,
    snapshot_files: BTreeSet<String>,
    seen: Seen,
}

impl Watcher {
    fn new(log: PathBuf, wal_dir: PathBuf, origin: Instant) -> Watcher {
        Watcher {
            log,
            wal_dir,
            origin,
            offset: 0,
            partial: String::new(),
            segments: BTreeSet::new(),
            snapshot_files: BTreeSet::new(),
            seen: Seen::default(),
        }
    }

    fn now_s(&self) -> f64 {
        let now = Instant::now();
        match now.checked_duration_since(self.origin) {
            Some(d) => d.as_secs_f64(),
            None => -(self.origin - now).as_secs_f64(),
        }
    }

    fn poll(&mut self, count: bool) {
        let at = self.now_s();
        for line in self.new_lines() {
            if let Some(s) = parse_snapshot_line(&line, at) {
                if count {
                    self.seen.snapshots.push(s);
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.wal_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_segment_name(&name) {
                // The log's first segment appears with its first record: a
                // segment is a rotation only when another came before it.
                let first = self.segments.is_empty();
                if self.segments.insert(name) && count && !first {
                    self.seen.rotations.push(at);
                }
            } else if name.starts_with("snapshot-")
                && !name.ends_with(".tmp")
                && self.snapshot_files.insert(name)
                && count
            {
                self.seen.snapshot_files += 1;
            }
        }
    }

    /// Complete lines appended to the log since the last poll, at most 1 MiB
    /// of them per poll (the server logs little at the level we give it).
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(1 << 20).read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let Some(last) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        done.lines().map(str::to_string).collect()
    }
}

/// A WAL segment file name: twenty digits and `.wal`.
fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(".wal")
        .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a "snapshot taken" log line (tracing's fmt output, `key=value`
/// fields); other lines are None.
fn parse_snapshot_line(line: &str, at_s: f64) -> Option<SnapshotSeen> {
    if !line.contains(SNAPSHOT_LINE) {
        return None;
    }
    let field = |key: &str| -> Option<u64> {
        let pat = format!("{key}=");
        let start = line.find(&pat)? + pat.len();
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some(SnapshotSeen {
        at_s,
        total_ms: field("total_ms"),
        encode_ms: field("encode_ms"),
        copy_ms: field("copy_ms"),
    })
}

/// Where a data dir keeps its write-ahead log (flinger's `journal::wal_dir`).
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

#[cfg(test)]
mod tests {
    //! Unit tests of the log and directory parsing.

    use super::*;

    #[test]
    fn snapshot_lines_are_parsed() {
        let line = "2026-11-29T13:00:00.000000Z  INFO flinger::server: snapshot taken \
                    lsn=123 copy_ms=17 encode_ms=1631 total_ms=1923";
        let s = parse_snapshot_line(line, 2.5).unwrap();
        assert_eq!(
            s,
            SnapshotSeen {
                at_s: 2.5,
                total_ms: Some(1923),
                encode_ms: Some(1631),
                copy_ms: Some(17),
            }
        );
        assert!(parse_snapshot_line("INFO flinger::server: listening", 0.0).is_none());
    }

    #[test]
    fn only_segment_files_count_as_rotations() {
        assert!(is_segment_name("00000000000000000001.wal"));
        assert!(!is_segment_name("1.wal"));
        assert!(!is_segment_name("next.spare"));
        assert!(!is_segment_name("snapshot-00000000000000000001.snap"));
    }

    #[test]
    fn the_watch_sees_new_segments_and_snapshot_lines() {
        let dir = std::env::temp_dir().join(format!("flinger-bench-watch-{}", std::process::id()));
        let wal = dir.join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        let log = dir.join("server.log");
        std::fs::write(&log, "old snapshot taken total_ms=1\n").unwrap();
        let watch = Watch::start(log.clone(), wal.clone(), Instant::now());
        // The first segment is not a rotation; the second is (whichever
        // poll sees them).
        std::fs::write(wal.join("00000000000000000001.wal"), b"").unwrap();
        std::fs::write(wal.join("00000000000000000900.wal"), b"").unwrap();
        std::fs::write(wal.join("snapshot-00000000000000000899.snap"), b"").unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"x snapshot taken total_ms=42\nhalf a li").unwrap();
        let seen = watch.finish();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(seen.rotations.len(), 1);
        assert_eq!(seen.snapshot_files, 1);
        assert_eq!(seen.snapshots.len(), 1);
        assert_eq!(seen.snapshots[0].total_ms, Some(42));
    }
}
