//! A throwaway PostgreSQL server for tests of the PostgreSQL journal, and a fresh database
//! per server under test.
//!
//! With `FLINGER_TEST_PG_URL` set (`postgres://USER@HOST:PORT`, no database: what `.ci/run`
//! starts), databases are made there. Otherwise the first caller starts a cluster of its own:
//! `initdb` into a temporary directory (as the `postgres` user when running as root, which
//! `initdb` refuses), trust authentication, listening on 127.0.0.1 on a free port with its
//! socket in that directory, serving TLS with a certificate for 127.0.0.1 signed by a
//! certificate authority made for it ([`server_ca`]); it is stopped (`pg_ctl stop -m immediate`) when the test binary
//! exits. `FLINGER_PG_BIN` names the PostgreSQL binaries [default: the newest
//! /usr/lib/postgresql/<major>/bin].

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The server databases are made on: `postgres://USER@HOST:PORT`.
fn server() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("FLINGER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => start_cluster(),
    })
}

/// The PostgreSQL program `name` (see `FLINGER_PG_BIN` above).
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os("FLINGER_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(newest_installed)
    })
    .join(name)
}

/// Debian's newest `/usr/lib/postgresql/<major>/bin` (15 when none is found, so the error
/// names a real place to look).
fn newest_installed() -> PathBuf {
    let majors = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    let major = majors.max().unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

/// Data directory of the cluster this process started, for the exit hook.
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Runs `program` as the `postgres` user when this process is root.
pub fn as_owner(program: PathBuf) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

extern "C" fn stop_cluster() {
    if let Some(dir) = CLUSTER_DIR.get() {
        let _ = as_owner(bin("pg_ctl"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn start_cluster() -> String {
    let dir = tempfile::Builder::new()
        .prefix("flinger-pg-")
        .tempdir()
        .expect("create the cluster's directory")
        .keep();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown postgres {}", dir.display());
    }
    let out = as_owner(bin("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["--auth=trust", "-U", "flinger", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("run initdb (is PostgreSQL installed? FLINGER_PG_BIN)");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    make_certificates(&dir);
    let port = start_on_free_port(&dir.join("data"), &dir.join("log"), |port| {
        format!(
            "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
            d = dir.display()
        )
    });
    let _ = CLUSTER_DIR.set(dir);
    // SAFETY: registers a plain function run at process exit; it only spawns pg_ctl.
    unsafe { libc::atexit(stop_cluster) };
    format!("postgres://flinger@127.0.0.1:{port}")
}

/// Starts the cluster in `data` (`pg_ctl start -w`, its log in `log`) on a free port with
/// the server `options` for that port, and returns the port. A port picked free can be
/// taken before the cluster binds it (other tests start servers meanwhile): then it picks
/// another, up to three times, and fails on any other error.
pub fn start_on_free_port(
    data: &std::path::Path,
    log: &std::path::Path,
    options: impl Fn(u16) -> String,
) -> u16 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let out = as_owner(bin("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-w", "-o", &options(port), "-l"])
            .arg(log)
            .arg("start")
            .output()
            .expect("run pg_ctl");
        if out.status.success() {
            return port;
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            attempts < 3 && text.contains("could not bind"),
            "pg_ctl start -D {} failed: {}{}{text}",
            data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Writes a certificate authority (`ca.crt`) and the server's key and certificate for
/// 127.0.0.1 signed by it (`server.key`, `server.crt`) into `dir`, with `openssl`, so the
/// cluster serves TLS and the TLS test can verify it.
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=flinger test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    // PostgreSQL refuses a key others can read, and must own it.
    std::fs::set_permissions(
        dir.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod server.key");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir.join("server.key"))
            .status()
            .expect("run chown");
        assert!(status.success(), "chown postgres server.key");
    }
}

/// The certificate authority that signed the test server's TLS certificate: the one this
/// harness made for its own cluster, or `FLINGER_TEST_PG_CA` for a server named by
/// `FLINGER_TEST_PG_URL`.
pub fn server_ca() -> PathBuf {
    server();
    if let Some(path) = std::env::var_os("FLINGER_TEST_PG_CA") {
        return PathBuf::from(path);
    }
    CLUSTER_DIR
        .get()
        .expect("FLINGER_TEST_PG_URL names a server whose TLS certificate authority is unknown: set FLINGER_TEST_PG_CA")
        .join("ca.crt")
}

/// Makes an empty database on the test server and returns its connection string.
pub fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = server();
    let name = format!(
        "flinger_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new(bin("psql"))
        .arg(format!("{server}/postgres"))
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{server}/{name}")
}

/// Runs one SQL statement on the database at `url` and returns psql's unaligned output.
pub fn sql(url: &str, statement: &str) -> String {
    let out = Command::new(bin("psql"))
        .arg(url)
        .args(["-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", statement])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{statement} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the harness runs every [`super::TestServer`] on the PostgreSQL journal: in the
/// binary whose root sets `JOURNAL` to [`super::Journal::Postgres`] (`tests/on_postgres.rs`),
/// or in any binary with `FLINGER_TEST_JOURNAL=postgres`.
pub fn switched_on() -> bool {
    crate::JOURNAL == super::Journal::Postgres
        || std::env::var("FLINGER_TEST_JOURNAL").is_ok_and(|v| v == "postgres")
}

/// A PostgreSQL cluster of one test's own, for tests that stop or restart the server
/// (the shared one serves every other test): trust authentication, 127.0.0.1 on a free
/// port. Stopped (`-m immediate`) when dropped.
pub struct OwnCluster {
    dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
}

impl OwnCluster {
    pub fn start() -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("flinger-pgown-")
            .tempdir()
            .expect("create the cluster's directory");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("run chown")
                .success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let out = as_owner(bin("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["--auth=trust", "-U", "flinger", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sockets = dir.path().display().to_string();
        let port = start_on_free_port(&dir.path().join("data"), &dir.path().join("log"), |p| {
            format!("-p {p} -k {sockets} -c listen_addresses=127.0.0.1")
        });
        OwnCluster { dir, port }
    }

    /// Its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://flinger@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `pg_ctl ACTION` on it (`-w`: waits until done), e.g. `["-m", "fast", "restart"]`.
    pub fn pg_ctl(&self, action: &[&str]) {
        let out = as_owner(bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-w")
            .args(action)
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl OwnCluster {
    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the server and its backends: a database
    /// that holds its connections open and answers nothing.
    pub fn pause(&self, paused: bool) {
        let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .expect("read postmaster.pid");
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        for pid in pids {
            // SAFETY: kill has no memory preconditions; these are this cluster's processes.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.pause(false);
        let _ = as_owner(bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
