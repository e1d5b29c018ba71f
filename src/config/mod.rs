//! Configuration: one [`Config`] from flags, environment, the Testflinger-style config
//! file and defaults, in that order of precedence.
//!
//! The file is the seed's `testflinger.conf`: `KEY = value` lines, values quoted
//! Python-style (`DATA_PATH = '/srv/tf'`) or bare numbers/words, `#` comments. It is
//! named by `TESTFLINGER_CONFIG`, else `./testflinger.conf` if present. An unknown key
//! is a warning; a malformed line is an error (exit status 2). An environment variable
//! set to the empty string is unset, for every variable flinger reads ([`env_var`]).
//!
//! This module owns the settings, their defaults, precedence and bounds; `cli` has the
//! command line, `file` the config file's syntax and `checks` the bounds a resolved
//! configuration is held to.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod checks;
mod cli;
mod file;

use checks::setting;
pub use checks::{
    leader_quiet_most, FORWARD_IDLE_MARGIN, LEASE_MS_MAX, LEASE_MS_MIN, MAX_COUNT,
    MAX_DEADLINE_SECS, MAX_HEAD_BYTES, MAX_SEGMENT_BYTES, MIN_SNAPSHOT_BYTES,
};

pub use cli::{Cli, ClientAction, Command, ServeOpts, WalAction};
pub use file::{parse_config_file, read_config_file, ConfigError, ConfigFile};
use file::{IGNORED_KEYS, KNOWN_KEYS};

/// Most worker threads `--workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The default number of runtime workers: the machine's cores less one, at least one. The
/// log's writer thread, snapshot encoding and the kernel's share of every request (TCP,
/// `fdatasync`) need a core of their own: on a box of 2 cores, one worker served
/// 1.0-1.25x the submits, pops and job lifecycles of two with less CPU per request (work
/// stealing and waking the other worker cost more than they gained; README, Performance).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Whether the kernel may back the server's memory with transparent huge pages (THP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePages {
    /// Not for this process (`prctl(PR_SET_THP_DISABLE)`, as Redis does by default): with
    /// THP, the first touch of new memory zeroes a whole 2 MiB page while every request on
    /// that worker waits (measured: a steady p99 of ~6 ms against ~3 ms without; README,
    /// Performance).
    Off,
    /// The system's setting applies (`/sys/kernel/mm/transparent_hugepage/enabled`).
    System,
}

impl std::str::FromStr for HugePages {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(HugePages::Off),
            "system" => Ok(HugePages::System),
            _ => Err(format!("expected `off` or `system`, got {s:?}")),
        }
    }
}

/// How the write-ahead log acknowledges writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync before every acknowledgement (group commit batches concurrent ones).
    Always,
    /// Acknowledge at once, sync every interval: loses up to that much acknowledged work
    /// on a power loss or kernel crash.
    Interval(Duration),
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "always" {
            return Ok(FsyncPolicy::Always);
        }
        s.strip_prefix("interval:")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| (1..=60_000).contains(&ms))
            .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
            .ok_or_else(|| format!("expected `always` or `interval:MS` (1..=60000), got {s:?}"))
    }
}

/// Where the journal (events, snapshots) is kept.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum JournalTarget {
    /// The embedded write-ahead log under the data directory (needs nothing external).
    #[default]
    File,
    /// A PostgreSQL database, by its connection string (`postgres://user@host:port/db`,
    /// libpq-style key/value parameters too).
    Postgres(String),
}

impl std::str::FromStr for JournalTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "file" {
            return Ok(JournalTarget::File);
        }
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(format!(
                "expected `file` or a `postgres://` connection string, got {:?}",
                redact(s)
            ));
        }
        // `sslmode` and `sslrootcert` are flinger's to interpret (`journal::postgres::tls`).
        crate::journal::parse_postgres_url(s)
            .map_err(|e| format!("bad PostgreSQL connection string {:?}: {e}", redact(s)))?;
        Ok(JournalTarget::Postgres(s.to_owned()))
    }
}

/// A connection string with its password replaced by `***`, for logs and errors: the
/// one in `user:password@` and every `password=` parameter of the query string (libpq's
/// other way of giving it, which tokio-postgres reads too; its name percent-decoded, as
/// tokio-postgres decodes it). The credentials end where tokio-postgres ends them, at the
/// first `@` (a password may hold `?`, `/` or `#` unencoded). A string that is not a URL
/// (a libpq `key=value` string, refused by `--journal` but shown in the refusal) has every
/// `password` value hidden.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let (mut out, rest) = match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            (format!("{scheme}://{name}:***@"), host)
        }
        _ => (format!("{scheme}://"), rest),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    out.push_str(rest);
    if let Some(query) = query {
        let params = query.split('&').map(|param| match param.split_once('=') {
            Some((key, _)) if percent_encoding::percent_decode_str(key).eq(*b"password") => {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        });
        out.push('?');
        out.push_str(&params.collect::<Vec<_>>().join("&"));
    }
    out
}

/// `s` with the value of every `password = value` pair hidden (libpq's `key=value`
/// syntax: a value is a word, or a single-quoted string with backslash escapes).
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.to_ascii_lowercase().find("password") {
        let after = &rest[at + "password".len()..];
        let value = after.trim_start();
        let Some(value) = value.strip_prefix('=') else {
            out.push_str(&rest[..at + "password".len()]);
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let mut end = value.len();
        let mut chars = value.char_indices();
        if value.starts_with('\'') {
            chars.next();
            let mut escaped = false;
            for (i, c) in chars {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
        } else if let Some((i, _)) = chars.find(|(_, c)| c.is_whitespace()) {
            end = i;
        }
        out.push_str(&rest[..at]);
        out.push_str("password=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

impl JournalTarget {
    /// A warning for a connection string that leaves TLS unspecified while the database
    /// is elsewhere: flinger then connects in clear, where libpq (whose default is
    /// `prefer`) would have tried TLS first.
    fn tls_warning(&self) -> Option<String> {
        let JournalTarget::Postgres(url) = self else {
            return None;
        };
        let parsed = crate::journal::parse_postgres_url(url).ok()?;
        if parsed.tls != crate::journal::PostgresTls::Unspecified {
            return None;
        }
        let local = parsed.config.get_hosts().iter().all(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        });
        (!local).then(|| {
            format!(
                "the PostgreSQL journal {} names no sslmode: its connections are not encrypted \
                 (libpq's default would try TLS first). Add sslmode=require (with \
                 sslrootcert=CA.pem) to encrypt and verify the server, or sslmode=disable to say \
                 no TLS is wanted",
                redact(url)
            )
        })
    }
}

impl fmt::Debug for JournalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalTarget::File => f.write_str("file"),
            JournalTarget::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// Who may do what (see README "Access control").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    /// No checks: every caller has every right (the seed's behaviour). Only allowed on a
    /// loopback address unless `--allow-open-access` says otherwise.
    #[default]
    Off,
    /// Upstream Testflinger without OIDC: callers without a token are contributors
    /// (submit, read, cancel their anonymous jobs); agents, managers and admins need
    /// tokens; roles, ownership, restricted queues and submission limits are enforced.
    On,
    /// Like `on`, but a caller without a token gets 401 on every endpoint that is not
    /// public (upstream with OIDC enabled).
    Strict,
}

impl std::str::FromStr for AccessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AccessMode::Off),
            "on" => Ok(AccessMode::On),
            "strict" => Ok(AccessMode::Strict),
            _ => Err(format!("expected `off`, `on` or `strict`, got {s:?}")),
        }
    }
}

/// A yes/no setting as every source takes it (flag, environment variable, config file):
/// `true`, `1`, `yes` or `false`, `0`, `no`, any case.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{text:?} is not true or false (or 1/0, yes/no)")),
    }
}

/// A size as every byte setting takes it (flag, environment variable, config file): a
/// whole number of bytes, or one followed by `KiB`, `MiB` or `GiB` (binary units, any
/// case, a space before allowed): `1MiB` is 1048576. Decimal units (`MB`) are refused
/// rather than guessed at.
pub fn parse_bytes<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = (&t[..digits], t[digits..].trim_start());
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => u32::MAX,
    };
    let what =
        "a size in bytes: a whole number, optionally with KiB, MiB or GiB (e.g. 1048576 or 1MiB)";
    if number.is_empty() || shift == u32::MAX {
        return Err(format!("expected {what}, got {text:?}"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{text:?} is too large for {what}"))
}

/// The most `--max-job-bytes`, `--max-result-bytes` and `--max-output-bytes` may be: each
/// such body is logged whole, as one record, so this also bounds every record any
/// configuration could have written (the log's replay trusts lengths up to that, see
/// `journal::file`, whatever the limits are now).
pub const MAX_BODY_LIMIT: usize = 256 << 20;

/// The server's settings, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Where the log, snapshots and files live.
    pub data_dir: PathBuf,
    /// Durability of acknowledgements.
    pub fsync: FsyncPolicy,
    /// Largest job submission body.
    pub max_job_bytes: usize,
    /// Most bytes of job documents the registry keeps at once (waiting, running and
    /// finished jobs until retention removes them), each job counted with
    /// `model::index::JOB_OVERHEAD`: jobs are held in memory and never expire while they
    /// wait, so without it one client submitting without end would exhaust the server's
    /// memory. A submission past it is 507.
    pub max_jobs_bytes: u64,
    /// With access control on, the percentage of `max_jobs_bytes` one submitter's jobs may
    /// take: an authenticated client's, or all those submitted without a token together
    /// (so an anonymous flood cannot take the room of everyone else). 1 to 100; 100 is no
    /// share. A submission past it is 507.
    pub max_jobs_share_percent: u64,
    /// Largest result post body (Testflinger answers 413 from 16 MiB).
    pub max_result_bytes: usize,
    /// Most bytes of log text in one log fragment (`log_data`, decoded: what the log holds)
    /// or one legacy output chunk. The default, 4 MiB, takes the largest chunk the stock
    /// agent sends (1,048,576 characters of any Unicode, up to 4 bytes each); a fragment's
    /// body may be 6 times this plus 64 KiB (`http::results::fragment_body_limit`).
    pub max_output_bytes: usize,
    /// Most bytes one job's results and logs may hold together (result fields' keys and
    /// values as posted, and every log fragment's text): a post that would pass it is 413.
    /// `GET /v1/result/<id>` builds its answer from all of them in memory.
    pub max_job_data_bytes: u64,
    /// Most bytes all jobs' results and logs may hold together in memory (counted as for
    /// `max_job_data_bytes`): the number of jobs is bounded only by `max_jobs_bytes` and
    /// waiting jobs never expire, so without it the per-job bound times the jobs held is
    /// no bound at all. A post that would pass it is 507; room comes back as retention
    /// removes finished jobs (or an operator deletes jobs).
    pub max_results_bytes: u64,
    /// Largest artifact or attachments upload.
    pub max_artifact_bytes: u64,
    /// Most bytes of attachment files held at once (stored, and being uploaded while
    /// their bytes arrive): a job waits for an agent forever, and keeps its attachments
    /// while it does, so without it one client declaring attachments for jobs to a queue
    /// no agent serves fills the disk (and a full disk stops the log for everyone). With
    /// access control on, one submitter holds at most `max_jobs_share_percent` of it. An
    /// upload past either is 507. Artifacts (agents' uploads) are not counted.
    pub max_attachments_bytes: u64,
    /// WAL segment size.
    pub segment_bytes: u64,
    /// Take a snapshot once this many bytes were logged since the last one (the minimum:
    /// see `snapshot_growth_percent`).
    pub snapshot_bytes: u64,
    /// And only once the log since the last snapshot has grown to this percentage of that
    /// snapshot's size: each snapshot rewrites the whole state, so a fixed byte count would
    /// make snapshot work grow with the square of the state over a long run (Redis's
    /// `auto-aof-rewrite-percentage`). 0 keeps only `snapshot_bytes`. At most 10,000.
    pub snapshot_growth_percent: u64,
    /// Finished jobs (and their results, logs and files) are removed this long after they
    /// finish. Waiting jobs never expire.
    pub retention: Duration,
    /// Start even when the log is corrupt before its tail, dropping everything after the
    /// damage (operator's explicit choice).
    pub wal_truncate_corruption: bool,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Whether the operator chose `max_connections`; if not, start-up lowers it to what the
    /// hard descriptor limit allows instead of refusing to start.
    pub max_connections_chosen: bool,
    /// A client has this long to send a request's head (request line and headers).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers) and read buffer per connection:
    /// what one connection can pin before its request is parsed. At least 8 KiB (hyper's
    /// minimum).
    pub max_header_bytes: usize,
    /// Minimum transfer rate, bytes part: a request body must arrive, and a response be
    /// taken, at `min_transfer_bytes` per `transfer_window` at least, or the connection is
    /// closed (408 for a body). A body smaller than this must arrive within one window.
    pub min_transfer_bytes: u64,
    /// Minimum transfer rate, window part (see `min_transfer_bytes`).
    pub transfer_window: Duration,
    /// After SIGTERM, requests in progress get this long to finish; idle connections are
    /// closed at once.
    pub drain: Duration,
    /// How long one log follow stream lasts before it ends unfinished (clients reconnect
    /// from the fragment number it names): a bound on what one open page holds.
    pub follow_max: Duration,
    /// Most log follow streams open at once: each holds a connection for up to
    /// `follow_max`, so without a bound they could take every connection slot.
    pub max_follows: usize,
    /// Largest part header block (and preamble) of a multipart upload.
    pub max_part_header_bytes: usize,
    /// Most parts in one multipart upload.
    pub max_upload_parts: usize,
    /// Largest multipart part other than `file` (such fields are read and dropped).
    pub max_field_bytes: u64,
    /// Most requests in flight to one actor (registry, results, artifacts, agents) at
    /// once; beyond it a request is refused with 503 before anything is done.
    pub max_pending: usize,
    /// Worker threads of the async runtime (requests and actors); see [`default_workers`].
    pub workers: usize,
    /// Transparent huge pages for the server's memory.
    pub thp: HugePages,
    /// Total bytes kept for ids no job has (results, logs and artifacts posted for
    /// them); beyond it such posts are refused with 507.
    pub orphan_quota_bytes: u64,
    /// A queue's actor is stopped once the queue has had no waiting job this long.
    pub queue_idle: Duration,
    /// An agent's record is removed once the agent has not posted its data this long.
    pub agent_expiry: Duration,
    /// Most agent records kept at once that one agent credential created (1 to
    /// `model::agents::MAX_AGENTS`); a new agent's record past it is refused (507), so
    /// one credential cannot take every place of `MAX_AGENTS` and keep new devices from
    /// registering until its records expire.
    pub max_agents_per_client: usize,
    /// Searches and queue listings that run at once; more wait their turn, so a flood of
    /// them cannot take every CPU from other requests.
    pub max_searches: usize,
    /// Added to every lost-agent allowance (see `model::lost`).
    pub lost_agent_grace: Duration,
    /// Whether a job whose agent was lost before provisioning is requeued once.
    pub lost_agent_requeue: bool,
    /// Most agents waiting at once in long-poll pops (`GET /v1/job?wait=`).
    pub max_waiters: usize,
    /// Queues that get their own `queue` label in `/metrics`; the rest are summed under
    /// `other`, so a client inventing queue names cannot grow the scrape without bound.
    pub metrics_queues: usize,
    /// Access control mode.
    pub access: AccessMode,
    /// Serve with access control off on a non-loopback address anyway.
    pub allow_open_access: bool,
    /// Lifetime of access tokens (JWT `exp - iat`; upstream: 600 s).
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens issued by `/v1/oauth2/token` (upstream: 6 days).
    pub refresh_token_ttl: Duration,
    /// Clock skew tolerated when checking a token's `exp` and `iat` (upstream `JWT_LEEWAY`).
    pub jwt_leeway: Duration,
    /// Failed `/v1/oauth2/token` attempts allowed per minute per client id from one
    /// address (and `access::ADDRESS_SHARE` times as many per address), as a rate.
    pub token_failures_per_minute: u32,
    /// The webhook job events may go to (upstream `WEBHOOK_URL`): a job's
    /// `job_status_webhook` must have its scheme and host (with port). `None`: event posts
    /// are refused (403).
    pub webhook_url: Option<String>,
    /// Bearer token sent to the webhook (upstream `WEBHOOK_AUTH`).
    pub webhook_auth: Option<Secret>,
    /// How long the delivery worker retries an event before giving up.
    pub webhook_give_up: Duration,
    /// Time allowed for one delivery attempt (connect, send, answer).
    pub webhook_timeout: Duration,
    /// Longest wait between attempts (they start 1 s apart and double).
    pub webhook_max_backoff: Duration,
    /// Most events recorded per job (and so per post: the agent posts cumulative lists).
    pub max_job_events: usize,
    /// Largest `detail` of one event, in bytes.
    pub max_event_detail_bytes: usize,
    /// Longest `job_status_webhook`, in bytes.
    pub max_webhook_url_bytes: usize,
    /// The config file the settings were read from (`none`), for the start-up log line.
    pub source: String,
    /// Where the journal lives: the embedded log (default) or PostgreSQL.
    pub journal: JournalTarget,
    /// Length of the leader's lease on the PostgreSQL journal: a dead leader is replaced
    /// after at most this long; renewed every third of it.
    pub lease: Duration,
    /// The URL other nodes forward requests to while this node leads (default:
    /// `http://` + the bound address).
    pub advertise_url: Option<String>,
    /// How long a standby waits for the leader to move a forwarded request on before it
    /// gives up on it: a leader that still renews its lease but stopped answering (a stuck
    /// handler, a half-dead peer) would otherwise hold the client for good.
    pub forward_idle: Duration,
    /// The names a request's `Host` may give besides addresses and `localhost`
    /// (`--allowed-hosts`; the host of `advertise_url` joins them): every other request is
    /// refused, so a page whose name was rebound to this server's address (DNS rebinding)
    /// cannot use it as its own site. `None`: any name, except on a loopback address with
    /// access control off (`access::origin::Hosts`).
    pub allowed_hosts: Option<crate::access::origin::AllowedHosts>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: ([127, 0, 0, 1], 8000).into(),
            data_dir: PathBuf::from("./data"),
            fsync: FsyncPolicy::Always,
            max_job_bytes: 1 << 20,
            max_jobs_bytes: 2 << 30,
            max_jobs_share_percent: 25,
            max_result_bytes: 16 << 20,
            max_output_bytes: 4 << 20,
            max_job_data_bytes: 1 << 30,
            max_results_bytes: 4 << 30,
            max_artifact_bytes: 2 << 30,
            max_attachments_bytes: 16 << 30,
            segment_bytes: 64 << 20,
            snapshot_bytes: 128 << 20,
            snapshot_growth_percent: 100,
            retention: Duration::from_secs(7 * 24 * 3600),
            wal_truncate_corruption: false,
            max_connections: 10_000,
            max_connections_chosen: false,
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            min_transfer_bytes: 8 << 10,
            transfer_window: Duration::from_secs(10),
            drain: Duration::from_secs(30),
            follow_max: Duration::from_secs(600),
            max_follows: 1_000,
            max_part_header_bytes: 8 << 10,
            max_upload_parts: 16,
            max_field_bytes: 64 << 10,
            max_pending: 1024,
            workers: default_workers(),
            thp: HugePages::Off,
            orphan_quota_bytes: 64 << 20,
            queue_idle: Duration::from_secs(300),
            max_searches: 1,
            metrics_queues: 100,
            agent_expiry: Duration::from_secs(7 * 24 * 3600),
            max_agents_per_client: 1_000,
            lost_agent_grace: Duration::from_secs(300),
            lost_agent_requeue: true,
            max_waiters: 10_000,
            access: AccessMode::Off,
            allow_open_access: false,
            access_token_ttl: Duration::from_secs(600),
            refresh_token_ttl: Duration::from_secs(6 * 24 * 3600),
            jwt_leeway: Duration::from_secs(5),
            token_failures_per_minute: 10,
            webhook_url: None,
            webhook_auth: None,
            webhook_give_up: Duration::from_secs(86_400),
            webhook_timeout: Duration::from_secs(10),
            webhook_max_backoff: Duration::from_secs(300),
            max_job_events: 256,
            max_event_detail_bytes: 4096,
            max_webhook_url_bytes: 2048,
            source: "none".into(),
            journal: JournalTarget::File,
            lease: Duration::from_secs(5),
            advertise_url: None,
            // `checks::leader_quiet_most` of the default lease, plus the margin: what
            // `Config::resolve` makes of an unset one.
            forward_idle: Duration::from_secs(90),
            allowed_hosts: None,
        }
    }
}

/// A secret setting: kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The one rule for every environment variable flinger reads: a variable set to the empty
/// string is unset (as most servers, and shells' `${VAR:-default}`, take it), so
/// `FLINGER_X=` in a unit file or a compose file falls back to the next source instead of
/// being a value or an error. Applied to the `FLINGER_*` flags by [`Cli::parse_env`] and
/// to every other variable by [`env_var`].
fn unless_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Reads environment variable `name` under `unless_empty`'s rule: the only place flinger
/// reads the process environment, besides clap's reading of the `FLINGER_*` flags (which
/// [`Cli::parse_env`] holds to the same rule). A value that is not UTF-8 is kept (lossily)
/// so it is refused where it is parsed, not taken as unset.
pub fn env_var(name: &str) -> Option<String> {
    unless_empty(std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
}

impl Config {
    /// One submitter's share of `limit` (`--max-jobs-share-percent` of it, with access
    /// control on; `None`: no share), for job documents and attachments alike.
    pub fn share_of(&self, limit: u64) -> Option<u64> {
        crate::model::shares::share(
            limit,
            self.max_jobs_share_percent,
            self.access != AccessMode::Off,
        )
    }

    /// Resolves flags/env (`opts`) over the file's keys over defaults. Returns the config
    /// and warnings to log (unknown keys).
    pub fn resolve(
        opts: &ServeOpts,
        file: Option<ConfigFile>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        Config::resolve_with_env(opts, file, &env_var)
    }

    /// [`Config::resolve`] with upstream's environment variables (`JWT_LEEWAY`,
    /// `WEBHOOK_URL`, `WEBHOOK_AUTH`; clap reads the `FLINGER_*` ones) looked up through
    /// `env`, so tests need not change the process's environment.
    fn resolve_with_env(
        opts: &ServeOpts,
        file: Option<ConfigFile>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut config = Config::default();
        let mut warnings = Vec::new();
        let mut forward_idle_chosen = false;
        if let Some((path, keys)) = file {
            config.source = path.display().to_string();
            for (key, value) in &keys {
                let bad = |what: &str| ConfigError {
                    line: 0,
                    reason: format!("{}: {key} = {value:?} is not {what}", path.display()),
                };
                // Parsed straight into the setting's type: a value out of its range is
                // refused, never truncated.
                fn parse_as<T: std::str::FromStr>(
                    value: &str,
                    bad: impl Fn(&str) -> ConfigError,
                    what: &str,
                ) -> Result<T, ConfigError> {
                    value.parse().map_err(|_| bad(what))
                }
                let num = |what: &str| parse_as::<u64>(value, bad, what);
                let size = |what: &str| parse_as::<usize>(value, bad, what);
                let bytes_error = |reason: String| ConfigError {
                    line: 0,
                    reason: format!("{}: {key}: {reason}", path.display()),
                };
                let bytes = || parse_bytes::<u64>(value).map_err(bytes_error);
                let bytes_usize = || parse_bytes::<usize>(value).map_err(bytes_error);
                match key.as_str() {
                    "DATA_PATH" => config.data_dir = PathBuf::from(value),
                    "BIND" => config.bind = value.parse().map_err(|_| bad("HOST:PORT"))?,
                    "FSYNC" => {
                        config.fsync = value.parse().map_err(|_| bad("always or interval:MS"))?
                    }
                    "MAX_JOB_BYTES" => config.max_job_bytes = bytes_usize()?,
                    "MAX_JOBS_BYTES" => config.max_jobs_bytes = bytes()?,
                    "MAX_JOBS_SHARE_PERCENT" => {
                        config.max_jobs_share_percent = num("a percentage")?
                    }
                    "MAX_RESULT_BYTES" => config.max_result_bytes = bytes_usize()?,
                    "MAX_OUTPUT_BYTES" => config.max_output_bytes = bytes_usize()?,
                    "MAX_JOB_DATA_BYTES" => config.max_job_data_bytes = bytes()?,
                    "MAX_RESULTS_BYTES" => config.max_results_bytes = bytes()?,
                    "MAX_ARTIFACT_BYTES" => config.max_artifact_bytes = bytes()?,
                    "MAX_ATTACHMENTS_BYTES" => config.max_attachments_bytes = bytes()?,
                    "SEGMENT_BYTES" => config.segment_bytes = bytes()?,
                    "SNAPSHOT_BYTES" => config.snapshot_bytes = bytes()?,
                    "SNAPSHOT_GROWTH_PERCENT" => {
                        config.snapshot_growth_percent = num("a percentage")?
                    }
                    "RETENTION_SECS" => config.retention = Duration::from_secs(num("seconds")?),
                    "MAX_CONNECTIONS" => {
                        config.max_connections = size("a count")?;
                        config.max_connections_chosen = true;
                    }
                    "HEADER_TIMEOUT_SECS" => {
                        config.header_timeout = Duration::from_secs(num("seconds")?)
                    }
                    "MAX_HEADER_BYTES" => config.max_header_bytes = bytes_usize()?,
                    "MIN_TRANSFER_BYTES" => config.min_transfer_bytes = bytes()?,
                    "TRANSFER_WINDOW_SECS" => {
                        config.transfer_window = Duration::from_secs(num("seconds")?)
                    }
                    "DRAIN_SECS" => config.drain = Duration::from_secs(num("seconds")?),
                    "MAX_FOLLOWS" => config.max_follows = size("a count")?,
                    "FOLLOW_MAX_SECS" => {
                        config.follow_max = Duration::from_secs(num("seconds")?)
                    }
                    "MAX_PART_HEADER_BYTES" => {
                        config.max_part_header_bytes = bytes_usize()?
                    }
                    "MAX_UPLOAD_PARTS" => config.max_upload_parts = size("a count")?,
                    "MAX_FIELD_BYTES" => config.max_field_bytes = bytes()?,
                    "MAX_PENDING" => config.max_pending = size("a count")?,
                    "WORKERS" => config.workers = size("a count")?,
                    "THP" => config.thp = value.parse().map_err(|_| bad("off or system"))?,
                    "MAX_SEARCHES" => config.max_searches = size("a count")?,
                    "METRICS_QUEUES" => config.metrics_queues = size("a count")?,
                    "AGENT_EXPIRY_SECS" => {
                        config.agent_expiry = Duration::from_secs(num("seconds")?)
                    }
                    "ORPHAN_QUOTA_BYTES" => config.orphan_quota_bytes = bytes()?,
                    "MAX_AGENTS_PER_CLIENT" => {
                        config.max_agents_per_client = size("a count")?
                    }
                    "LOST_AGENT_GRACE_SECS" => {
                        config.lost_agent_grace = Duration::from_secs(num("seconds")?)
                    }
                    "LOST_AGENT_REQUEUE" => {
                        config.lost_agent_requeue =
                            parse_bool(value).map_err(|_| bad("true or false"))?
                    }
                    "MAX_WAITERS" => config.max_waiters = size("a count")?,
                    "QUEUE_IDLE_SECS" => config.queue_idle = Duration::from_secs(num("seconds")?),
                    "ACCESS_CONTROL" => {
                        config.access = value.parse().map_err(|_| bad("off, on or strict"))?
                    }
                    "JWT_LEEWAY" => config.jwt_leeway = Duration::from_secs(num("seconds")?),
                    "ACCESS_TOKEN_SECS" => {
                        config.access_token_ttl = Duration::from_secs(num("seconds")?)
                    }
                    "REFRESH_TOKEN_SECS" => {
                        config.refresh_token_ttl = Duration::from_secs(num("seconds")?)
                    }
                    "TOKEN_FAILURES_PER_MINUTE" => {
                        config.token_failures_per_minute = parse_as::<u32>(value, bad, "a count")?
                    }
                    "WEBHOOK_URL" => config.webhook_url = Some(value.clone()),
                    "WEBHOOK_AUTH" => config.webhook_auth = Some(Secret(value.clone())),
                    "WEBHOOK_GIVE_UP_SECS" => {
                        config.webhook_give_up = Duration::from_secs(num("seconds")?)
                    }
                    "WEBHOOK_TIMEOUT_SECS" => {
                        config.webhook_timeout = Duration::from_secs(num("seconds")?)
                    }
                    "WEBHOOK_MAX_BACKOFF_SECS" => {
                        config.webhook_max_backoff = Duration::from_secs(num("seconds")?)
                    }
                    "MAX_JOB_EVENTS" => config.max_job_events = size("a count")?,
                    "MAX_EVENT_DETAIL_BYTES" => {
                        config.max_event_detail_bytes = bytes_usize()?
                    }
                    "MAX_WEBHOOK_URL_BYTES" => {
                        config.max_webhook_url_bytes = bytes_usize()?
                    }
                    "JOURNAL" => {
                        // Not `bad`: it would show the value, password and all.
                        config.journal = value.parse().map_err(|reason: String| ConfigError {
                            line: 0,
                            reason: format!("{}: {key}: {reason}", path.display()),
                        })?
                    }
                    "LEASE_MS" => config.lease = Duration::from_millis(num("milliseconds")?),
                    "ADVERTISE_URL" => config.advertise_url = Some(value.clone()),
                    "FORWARD_IDLE_SECS" => {
                        config.forward_idle = Duration::from_secs(num("seconds")?);
                        forward_idle_chosen = true;
                    }
                    "ALLOWED_HOSTS" => {
                        config.allowed_hosts = Some(value.parse().map_err(|why| ConfigError {
                            line: 0,
                            reason: format!(
                                "{}: {key}: {}: {why}",
                                path.display(),
                                setting("allowed-hosts")
                            ),
                        })?)
                    }
                    "REDIS_HOST" | "REDIS_PORT" => warnings.push(format!(
                        "config key {key} is ignored: flinger keeps its journal in its data directory, or in PostgreSQL with --journal postgres://... (FLINGER_JOURNAL, config key JOURNAL)"
                    )),
                    k if IGNORED_KEYS.contains(&k) => warnings.push(format!(
                        "config key {k} is not used by flinger (no external store needed)"
                    )),
                    k => warnings.push(format!(
                        "unknown config key {k} in {} (known: {})",
                        path.display(),
                        KNOWN_KEYS.join(", ")
                    )),
                }
            }
        }
        if let Some(v) = opts.bind {
            config.bind = v;
        }
        if let Some(v) = &opts.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = opts.fsync {
            config.fsync = v;
        }
        if let Some(v) = opts.thp {
            config.thp = v;
        }
        macro_rules! take {
            ($($field:ident),*) => {$( if let Some(v) = opts.$field { config.$field = v; } )*};
        }
        take!(
            max_job_bytes,
            max_jobs_bytes,
            max_jobs_share_percent,
            max_result_bytes,
            max_output_bytes,
            max_job_data_bytes,
            max_results_bytes,
            max_artifact_bytes,
            max_attachments_bytes,
            segment_bytes,
            snapshot_bytes,
            snapshot_growth_percent,
            max_connections,
            max_header_bytes,
            min_transfer_bytes,
            max_part_header_bytes,
            max_upload_parts,
            max_field_bytes,
            max_pending,
            workers,
            orphan_quota_bytes,
            max_searches,
            max_follows,
            lost_agent_requeue,
            max_waiters,
            max_agents_per_client,
            metrics_queues
        );
        for (secs, slot) in [
            (opts.header_timeout_secs, &mut config.header_timeout),
            (opts.transfer_window_secs, &mut config.transfer_window),
            (opts.drain_secs, &mut config.drain),
            (opts.follow_max_secs, &mut config.follow_max),
            (opts.forward_idle_secs, &mut config.forward_idle),
        ] {
            if let Some(secs) = secs {
                *slot = Duration::from_secs(secs);
            }
        }
        config.max_connections_chosen |= opts.max_connections.is_some();
        forward_idle_chosen |= opts.forward_idle_secs.is_some();

        if let Some(secs) = opts.lost_agent_grace_secs {
            config.lost_agent_grace = Duration::from_secs(secs);
        }
        if let Some(secs) = opts.agent_expiry_secs {
            config.agent_expiry = Duration::from_secs(secs);
        }
        if let Some(secs) = opts.queue_idle_secs {
            config.queue_idle = Duration::from_secs(secs);
        }
        if let Some(secs) = opts.retention_secs {
            config.retention = Duration::from_secs(secs);
        }
        config.wal_truncate_corruption |= opts.wal_truncate_corruption;
        if let Some(v) = &opts.journal {
            // The refusal shows the string with its password hidden (`redact`).
            config.journal = v.parse().map_err(|reason: String| ConfigError {
                line: 0,
                reason: format!("{}: {reason}", setting("journal")),
            })?;
        }
        if let Some(ms) = opts.lease_ms {
            config.lease = Duration::from_millis(ms);
        }
        if let Some(url) = &opts.advertise_url {
            config.advertise_url = Some(url.clone());
        }
        if let Some(v) = &opts.allowed_hosts {
            config.allowed_hosts = Some(v.parse().map_err(|why| ConfigError {
                line: 0,
                reason: format!("{}: {why}", setting("allowed-hosts")),
            })?);
        }
        if let Some(v) = opts.access_control {
            config.access = v;
        }
        config.allow_open_access |= opts.allow_open_access;
        if let Some(secs) = opts.access_token_secs {
            config.access_token_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = opts.refresh_token_secs {
            config.refresh_token_ttl = Duration::from_secs(secs);
        }
        // Upstream's environment names count as environment too (below FLINGER_*); an
        // empty one is unset, as every variable is.
        let upstream_env = |name: &str| unless_empty(env(name));
        let leeway = match (opts.jwt_leeway_secs, upstream_env("JWT_LEEWAY")) {
            (Some(secs), _) => Some(secs),
            (None, Some(value)) => Some(value.trim().parse().map_err(|_| ConfigError {
                line: 0,
                reason: format!(
                    "environment variable JWT_LEEWAY = {value:?} is not seconds (0 to 300)"
                ),
            })?),
            (None, None) => None,
        };
        if let Some(secs) = leeway {
            config.jwt_leeway = Duration::from_secs(secs);
        }
        if let Some(n) = opts.token_failures_per_minute {
            config.token_failures_per_minute = n;
        }
        if let Some(url) = opts
            .webhook_url
            .clone()
            .or_else(|| upstream_env("WEBHOOK_URL"))
        {
            config.webhook_url = Some(url);
        }
        if let Some(auth) = opts
            .webhook_auth
            .clone()
            .or_else(|| upstream_env("WEBHOOK_AUTH"))
        {
            config.webhook_auth = Some(Secret(auth));
        }
        for (secs, slot) in [
            (opts.webhook_give_up_secs, &mut config.webhook_give_up),
            (opts.webhook_timeout_secs, &mut config.webhook_timeout),
            (
                opts.webhook_max_backoff_secs,
                &mut config.webhook_max_backoff,
            ),
        ] {
            if let Some(secs) = secs {
                *slot = Duration::from_secs(secs);
            }
        }
        take!(
            max_job_events,
            max_event_detail_bytes,
            max_webhook_url_bytes
        );
        config.validate()?;
        warnings.extend(config.settle_forward_idle(forward_idle_chosen));
        if let (Some(hosts), Some(url)) = (&mut config.allowed_hosts, &config.advertise_url) {
            // Other nodes reach this one by it, and so may clients.
            hosts.advertise(url);
        }
        warnings.extend(config.journal.tls_warning());
        warnings.extend(config.rebinding_warning());
        // The keys are not settings of `Config` (kept out of it, and so out of every
        // `Debug` of it), but a bad one is a configuration error all the same: refused
        // here, before the data directory or the journal is touched.
        let set = |name: &str| unless_empty(env(name));
        for key in [
            crate::access::token::env_signing_key(&set).map(drop),
            crate::access::secrets::env_master_key(&set).map(drop),
        ] {
            key.map_err(|reason| ConfigError { line: 0, reason })?;
        }
        Ok((config, warnings))
    }
}

#[cfg(test)]
mod tests;
