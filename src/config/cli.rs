//! The command line: `flinger`'s flags (each also an environment variable) and its
//! maintenance subcommands, as clap types. [`super::Config::resolve`] turns them into settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{AccessMode, FsyncPolicy, HugePages};

/// `flinger --version`: the crate version and the commit built (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLINGER_GIT_COMMIT"),
    ")"
);

/// flinger: a Testflinger-compatible test-job server with a durable write-ahead log.
///
/// Settings come from these flags, then FLINGER_* environment variables, then the
/// Testflinger config file (TESTFLINGER_CONFIG, else ./testflinger.conf), then defaults.
#[derive(Parser, Debug)]
#[command(
    name = "flinger",
    version = VERSION,
    about,
    long_about,
    after_help = "Set only in the environment (never in a flag or the config file, so they stay out \
of process listings and files others may read):\n  \
FLINGER_JWT_SIGNING_KEY (or JWT_SIGNING_KEY)  the key that signs access tokens, at \
least 32 bytes; without it one is generated into the data directory\n  \
FLINGER_SECRETS_KEY (or TESTFLINGER_SECRETS_MASTER_KEY)  the job secrets store's \
master key, at least 32 bytes; without it there is no secrets store"
)]
pub struct Cli {
    /// Server options.
    #[command(flatten)]
    pub opts: ServeOpts,
    /// Maintenance commands (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses the process's arguments and `FLINGER_*` variables, an empty variable counting
    /// as unset ([`super::env_var`]'s rule; clap alone takes `""` as the value, which most
    /// flags refuse and a few take). Exits with clap's message and status on an error, as
    /// `Cli::parse` does, except that a bad value that came from an environment variable is
    /// blamed on that variable, not on the flag the user did not pass. Only the top-level
    /// flags read the environment. `--help` names each option's variable and config key.
    pub fn parse_env() -> Cli {
        let command = Cli::command().mut_args(|arg| {
            let Some(name) = arg.get_env().map(|n| n.to_string_lossy().into_owned()) else {
                return arg;
            };
            let arg = match config_key(&name) {
                Some(key) => {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    let arg = arg.help(format!("{help} [config key: {key}]"));
                    match arg.get_long_help().map(|h| h.to_string()) {
                        Some(long) => arg.long_help(format!("{long} [config key: {key}]")),
                        None => arg,
                    }
                }
                None => arg,
            };
            let set_but_empty =
                std::env::var_os(&name).is_some() && super::env_var(&name).is_none();
            if set_but_empty {
                arg.env(None)
            } else {
                arg
            }
        });
        let matches =
            command.clone().try_get_matches().unwrap_or_else(|e| {
                match blame_environment(&command, &e) {
                    Some(message) => {
                        eprintln!("{message}");
                        std::process::exit(2)
                    }
                    None => e.exit(),
                }
            });
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// The config file key of the setting read from environment variable `env`, if the file
/// may set it (most are the variable without `FLINGER_`; two keep upstream's names).
pub(super) fn config_key(env: &str) -> Option<&'static str> {
    let key = match env.strip_prefix("FLINGER_")? {
        "DATA_DIR" => "DATA_PATH",
        "JWT_LEEWAY_SECS" => "JWT_LEEWAY",
        key => key,
    };
    super::KNOWN_KEYS.iter().copied().find(|k| *k == key)
}

/// For a clap error about a bad value whose flag is not on the command line (so the value
/// came from the flag's environment variable): the error, naming the variable.
fn blame_environment(command: &clap::Command, e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let env = arg.get_env()?.to_string_lossy().into_owned();
    let given = std::env::args_os().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if given {
        return None;
    }
    let rendered = e.render().to_string();
    Some(rendered.replacen(
        &format!("for '{shown}'"),
        &format!("for environment variable {env} (the setting {shown})"),
        1,
    ))
}

/// Maintenance commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect the write-ahead log.
    Wal {
        /// What to do with it.
        #[command(subcommand)]
        action: WalAction,
    },
    /// Manage access-control clients in the data directory (the server must be stopped:
    /// the data directory's lock is taken). `--data-dir` goes before `client`
    /// (`flinger --data-dir DIR client add ID`), or comes from the config file, as for
    /// serving.
    Client {
        /// What to do.
        #[command(subcommand)]
        action: ClientAction,
    },
}

/// Client management (`flinger client ...`).
#[derive(Subcommand, Debug)]
pub enum ClientAction {
    /// Create a client, or give an existing one a new secret, and print the generated
    /// secret once on stdout. An existing client keeps its role, limits and email unless
    /// the options below give new ones.
    Add {
        /// The client id (`testflinger-cli --client_id`).
        client_id: String,
        /// Its role: admin, manager, contributor or agent [default for a new client:
        /// contributor; an existing client keeps its own].
        #[arg(long)]
        role: Option<String>,
        /// Highest job_priority on a queue, `QUEUE=N` (`*=N` for every queue); repeatable.
        /// Given, it replaces an existing client's list.
        #[arg(long = "max-priority", value_name = "QUEUE=N")]
        max_priority: Vec<String>,
        /// Longest reservation in seconds on a queue, `QUEUE=SECS` (`*=SECS` for every
        /// queue); repeatable. Given, it replaces an existing client's list.
        #[arg(long = "max-reservation", value_name = "QUEUE=SECS")]
        max_reservation: Vec<String>,
        /// Contact address.
        #[arg(long)]
        email: Option<String>,
    },
    /// Issue a refresh token for an existing client and write it to FILE in the format
    /// `testflinger-agent --token-file` reads (mode 0600). The token is never printed.
    TokenFile {
        /// The client id (normally one with role agent).
        client_id: String,
        /// Where to write the token file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long the refresh token stays valid, in days (1 to 3660).
        #[arg(long, default_value_t = 90, value_name = "DAYS")]
        valid_days: u64,
    },
    /// List clients and their permissions (never secrets).
    List,
    /// Delete a client with its refresh tokens and secrets.
    Delete {
        /// The client id.
        client_id: String,
    },
}

/// Write-ahead log inspection.
#[derive(Subcommand, Debug)]
pub enum WalAction {
    /// Print every record of the log in DATA_DIR human-readably, then a summary line
    /// starting with `#` (read-only; safe while the server runs). The dump stops at the
    /// first damage, as the server's replay does, unless --past-damage is given.
    #[command(
        after_help = "Exit status: 0 the log is intact; 1 it could not be read \
        (no log in DATA_DIR, an I/O error); 2 usage error; 3 a torn tail (an interrupted \
        write, which the server truncates at start-up with a warning); 4 corruption (the \
        server refuses to start on it unless run with --wal-truncate-corruption, which \
        cuts the log there). A reader that stops early (`| head`) ends the dump quietly \
        with status 0."
    )]
    Dump {
        /// The server's data directory (the one holding `wal/`, as given to the server's
        /// --data-dir).
        data_dir: PathBuf,
        /// Also print the checksum-valid records after the damage (the dump resyncs at the
        /// next record, as the start-up check does): what --wal-truncate-corruption would
        /// discard. They are marked `past-damage`.
        #[arg(long)]
        past_damage: bool,
    },
}

/// Flags of the server (each also readable from its environment variable).
#[derive(Args, Debug, Default)]
pub struct ServeOpts {
    /// Address to listen on [default: 127.0.0.1:8000, localhost only; use 0.0.0.0:8000 to
    /// open it up]. Port 0 picks a free port (the log line `listening addr=` names it).
    #[arg(long, env = "FLINGER_BIND", value_name = "HOST:PORT")]
    pub bind: Option<SocketAddr>,
    /// Data directory for the log, snapshots and files [default: DATA_PATH from the config
    /// file, else ./data].
    #[arg(long, env = "FLINGER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `always` (fdatasync before every acknowledgement, batched) or `interval:MS`
    /// (acknowledge at once, sync every MS milliseconds: a crash of the machine loses up to
    /// MS of acknowledged changes) [default: always].
    #[arg(long, env = "FLINGER_FSYNC", value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,
    /// Largest job submission body in bytes (sizes: a byte count, or with KiB, MiB or GiB,
    /// e.g. 1MiB) [default: 1MiB].
    #[arg(long, env = "FLINGER_MAX_JOB_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_job_bytes: Option<usize>,
    /// Most bytes of job documents kept at once (waiting, running, and finished until
    /// --retention-secs removes them; each job counts 1 KiB more, each queue with jobs
    /// 16 KiB), held in memory;
    /// a submission past it is refused with 507 [default: 2GiB].
    #[arg(long, env = "FLINGER_MAX_JOBS_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_jobs_bytes: Option<u64>,
    /// With access control on, the percentage of --max-jobs-bytes one submitter's jobs may
    /// take (an authenticated client's, or all submitted without a token together); past
    /// it a submission is refused with 507; 1 to 100, 100 for no share [default: 25].
    #[arg(long, env = "FLINGER_MAX_JOBS_SHARE_PERCENT", value_name = "PERCENT")]
    pub max_jobs_share_percent: Option<u64>,
    /// Largest result post body in bytes [default: 16 MiB].
    #[arg(long, env = "FLINGER_MAX_RESULT_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_result_bytes: Option<usize>,
    /// Most bytes of log text (decoded log_data) in one log fragment or output chunk
    /// [default: 4 MiB]; a fragment's JSON body may be 6x this + 64 KiB (escapes).
    #[arg(long, env = "FLINGER_MAX_OUTPUT_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_output_bytes: Option<usize>,
    /// Most bytes one job's results and logs hold together (result fields and log text);
    /// a post past it is 413 [default: 1 GiB].
    #[arg(long, env = "FLINGER_MAX_JOB_DATA_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_job_data_bytes: Option<u64>,
    /// Most bytes all jobs' results and logs hold together in memory (counted as for
    /// --max-job-data-bytes); a post past it is 507, and room comes back as retention
    /// removes finished jobs [default: 4 GiB].
    #[arg(long, env = "FLINGER_MAX_RESULTS_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_results_bytes: Option<u64>,
    /// Largest artifact or attachments upload in bytes [default: 2 GiB].
    #[arg(long, env = "FLINGER_MAX_ARTIFACT_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_artifact_bytes: Option<u64>,
    /// Most bytes of attachment files held at once, stored and being uploaded (jobs keep
    /// theirs while they wait, which may be forever); with access control on one submitter
    /// holds at most --max-jobs-share-percent of it; past either an upload is refused with
    /// 507; at least --max-artifact-bytes [default: 16 GiB].
    #[arg(long, env = "FLINGER_MAX_ATTACHMENTS_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_attachments_bytes: Option<u64>,
    /// Write-ahead log segment size in bytes, at least 2x the largest body limit + 1 MiB,
    /// at most 4 GiB [default: 64 MiB].
    #[arg(long, env = "FLINGER_SEGMENT_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub segment_bytes: Option<u64>,
    /// Snapshot (and drop covered log segments) after this many logged bytes, at least
    /// 1 MiB [default: 128 MiB].
    #[arg(long, env = "FLINGER_SNAPSHOT_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub snapshot_bytes: Option<u64>,
    /// Snapshot only once the log since the last snapshot is also this percentage of that
    /// snapshot's size, so snapshot work stays proportional to the work logged (0: only
    /// --snapshot-bytes counts; at most 10000) [default: 100].
    #[arg(long, env = "FLINGER_SNAPSHOT_GROWTH_PERCENT", value_name = "PERCENT")]
    pub snapshot_growth_percent: Option<u64>,
    /// Remove finished jobs with their results, logs and files this many seconds after
    /// they finish [default: 604800, 7 days]. Waiting jobs never expire.
    #[arg(long, env = "FLINGER_RETENTION_SECS", value_name = "SECS")]
    pub retention_secs: Option<u64>,
    /// Start even if the log is damaged before its tail, cutting it at the damage and
    /// discarding every record after it (the refusal without it says how many are valid;
    /// `flinger wal dump --past-damage` lists them). Stored files no remaining record
    /// refers to are then moved to DATA_DIR/lost+found instead of being deleted.
    #[arg(long, env = "FLINGER_WAL_TRUNCATE_CORRUPTION")]
    pub wal_truncate_corruption: bool,
    /// Most connections served at once, 1 to 1000000 [default: 10000]. The soft descriptor limit is
    /// raised at start-up to 2 per connection + 256; if the hard limit is below that, the
    /// default is lowered to fit (an info line) and a chosen value refuses to start.
    #[arg(long, env = "FLINGER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's line and headers, 1 to 86400
    /// [default: 30].
    #[arg(long, env = "FLINGER_HEADER_TIMEOUT_SECS", value_name = "SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Largest request line + headers, and the read buffer of a connection, in bytes
    /// (8192 to 1 MiB) [default: 65536]; larger heads get 431.
    #[arg(long, env = "FLINGER_MAX_HEADER_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_header_bytes: Option<usize>,
    /// Minimum transfer rate: bytes of request body received, or of response taken by the
    /// client, per --transfer-window-secs; slower connections are closed (408 for a body)
    /// [default: 8192].
    #[arg(long, env = "FLINGER_MIN_TRANSFER_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub min_transfer_bytes: Option<u64>,
    /// The window of the minimum transfer rate, in seconds, 1 to 86400 [default: 10].
    #[arg(long, env = "FLINGER_TRANSFER_WINDOW_SECS", value_name = "SECS")]
    pub transfer_window_secs: Option<u64>,
    /// On SIGTERM, seconds requests in progress get to finish (idle connections close at
    /// once) [default: 30].
    #[arg(long, env = "FLINGER_DRAIN_SECS", value_name = "SECS")]
    pub drain_secs: Option<u64>,
    /// Seconds one log follow stream (`.../log/<kind>/follow`, the dashboard's live log)
    /// lasts before it ends with `{"finished": false}` and the client reconnects; 1 to
    /// 86400 [default: 600].
    #[arg(long, env = "FLINGER_FOLLOW_MAX_SECS", value_name = "SECS")]
    pub follow_max_secs: Option<u64>,
    /// Log follow streams open at once; one more is refused with 503 (the dashboard's
    /// script retries with backoff), so open pages cannot take every connection; 1 to
    /// 1000000 [default: 1000].
    #[arg(long, env = "FLINGER_MAX_FOLLOWS", value_name = "N")]
    pub max_follows: Option<usize>,
    /// Largest header block of one multipart part, and largest preamble, in bytes
    /// (256 to 1 MiB) [default: 8192].
    #[arg(long, env = "FLINGER_MAX_PART_HEADER_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_part_header_bytes: Option<usize>,
    /// Most parts in one multipart upload [default: 16].
    #[arg(long, env = "FLINGER_MAX_UPLOAD_PARTS", value_name = "N")]
    pub max_upload_parts: Option<usize>,
    /// Largest multipart part other than `file`, in bytes, at least 256 [default: 65536].
    #[arg(long, env = "FLINGER_MAX_FIELD_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub max_field_bytes: Option<u64>,
    /// Most requests in flight to one actor (registry, results, artifacts, agents); more
    /// are refused with 503 before anything is done; 1 to 1000000 [default: 1024].
    #[arg(long, env = "FLINGER_MAX_PENDING", value_name = "N")]
    pub max_pending: Option<usize>,
    /// Threads that run requests and actors [default: the machine's cores less one, at
    /// least 1: the write-ahead log's writer, snapshots and the kernel's network work need
    /// a core too; on 2 cores one worker served 1.0-1.25x the requests of two]. One worker
    /// is a single-threaded runtime (no work stealing to pay for). At most 1024.
    #[arg(long, env = "FLINGER_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Transparent huge pages for the server's memory: `off` (this process only, as Redis
    /// does: zeroing a new 2 MiB page on first touch stalls every request on its worker)
    /// or `system` (the kernel's setting applies) [default: off].
    #[arg(long, env = "FLINGER_THP", value_name = "off|system")]
    pub thp: Option<HugePages>,
    /// Total bytes of results, logs and artifacts kept for job ids that no job has; more
    /// is refused with 507; such data expires --retention-secs after its last write
    /// [default: 64 MiB].
    #[arg(long, env = "FLINGER_ORPHAN_QUOTA_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<u64>)]
    pub orphan_quota_bytes: Option<u64>,
    /// Stop a queue's actor after the queue has had no waiting job for this many
    /// seconds (the next job starts a new one) [default: 300].
    #[arg(long, env = "FLINGER_QUEUE_IDLE_SECS", value_name = "SECS")]
    pub queue_idle_secs: Option<u64>,
    /// Remove an agent's record after this many seconds without the agent posting its
    /// data (`POST /v1/agents/data/<name>`) [default: 604800, 7 days].
    #[arg(long, env = "FLINGER_AGENT_EXPIRY_SECS", value_name = "SECS")]
    pub agent_expiry_secs: Option<u64>,
    /// Job searches and queue listings served at once; more wait their turn (so a flood
    /// of them leaves CPU to everything else); 1 to 1000000 [default: 1].
    #[arg(long, env = "FLINGER_MAX_SEARCHES", value_name = "N")]
    pub max_searches: Option<usize>,
    /// Seconds of silence added to a running job's allowance before its agent counts as
    /// lost and the job is ended (or requeued) [default: 300]. The allowance itself comes
    /// from the job's `output_timeout`/`global_timeout` and its phase (README: Lost agents).
    #[arg(long, env = "FLINGER_LOST_AGENT_GRACE_SECS", value_name = "SECS")]
    pub lost_agent_grace_secs: Option<u64>,
    /// Whether a job whose agent was lost before provisioning (`running`, `setup`) goes
    /// back to its queue once instead of ending [default: true].
    #[arg(long, env = "FLINGER_LOST_AGENT_REQUEUE", value_name = "BOOL", value_parser = super::parse_bool)]
    pub lost_agent_requeue: Option<bool>,
    /// Most agent records kept at once that one agent credential created (1 to 10000,
    /// the most records kept); a new agent's record past it is refused with 507, the
    /// credential's existing agents keep posting [default: 1000].
    #[arg(long, env = "FLINGER_MAX_AGENTS_PER_CLIENT", value_name = "N")]
    pub max_agents_per_client: Option<usize>,
    /// Most agents waiting at once in long-poll pops (`GET /v1/job?wait=`); more are
    /// refused with 503 [default: 10000].
    #[arg(long, env = "FLINGER_MAX_WAITERS", value_name = "N")]
    pub max_waiters: Option<usize>,
    /// Queues with their own `queue` label in `/metrics`; the others are summed under
    /// `queue="other"` (bounds the scrape's size); queues agents serve get them first
    /// [default: 100].
    #[arg(long, env = "FLINGER_METRICS_QUEUES", value_name = "N")]
    pub metrics_queues: Option<usize>,
    /// Access control: `off` (everyone may do everything; loopback only), `on`
    /// (upstream-compatible: anonymous callers are contributors, agents and admins need
    /// tokens) or `strict` (every non-public endpoint needs a token) [default: off].
    #[arg(long, env = "FLINGER_ACCESS_CONTROL", value_name = "MODE")]
    pub access_control: Option<AccessMode>,
    /// Serve with access control off on a non-loopback address anyway (anyone who can
    /// reach the port can run jobs on your devices).
    #[arg(long, env = "FLINGER_ALLOW_OPEN_ACCESS")]
    pub allow_open_access: bool,
    /// Lifetime of access tokens in seconds, 1 to 86400 [default: 600].
    #[arg(long, env = "FLINGER_ACCESS_TOKEN_SECS", value_name = "SECS")]
    pub access_token_secs: Option<u64>,
    /// Lifetime of refresh tokens from /v1/oauth2/token in seconds, at most 366 days
    /// [default: 518400, 6 days].
    #[arg(long, env = "FLINGER_REFRESH_TOKEN_SECS", value_name = "SECS")]
    pub refresh_token_secs: Option<u64>,
    /// Clock skew tolerated on token times in seconds, at most 300 [default: 5; env
    /// JWT_LEEWAY too].
    #[arg(long, env = "FLINGER_JWT_LEEWAY_SECS", value_name = "SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Failed /v1/oauth2/token attempts allowed per minute per client id from one address
    /// (and 4 times as many per address) before 429: a rate, each failed try coming back
    /// after 1/N of a minute [default: 10].
    #[arg(long, env = "FLINGER_TOKEN_FAILURES_PER_MINUTE", value_name = "N")]
    pub token_failures_per_minute: Option<u32>,
    /// The webhook job events may be forwarded to: a job's `job_status_webhook` must have
    /// this URL's scheme and host:port, else its agent's event posts are refused (403);
    /// unset, every event post is refused. `http` only: an `https` URL refuses to start
    /// (no TLS client; use a TLS-terminating proxy) [env WEBHOOK_URL too, as upstream].
    #[arg(long, env = "FLINGER_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Bearer token sent with every delivery to the webhook (prefer the environment: a
    /// flag shows in `ps`) [env WEBHOOK_AUTH too, as upstream].
    #[arg(
        long,
        env = "FLINGER_WEBHOOK_AUTH",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub webhook_auth: Option<String>,
    /// Seconds a job event is retried before its delivery gives up (the job's delivery
    /// view then says so, with the last error) [default: 86400].
    #[arg(long, env = "FLINGER_WEBHOOK_GIVE_UP_SECS", value_name = "SECS")]
    pub webhook_give_up_secs: Option<u64>,
    /// Seconds allowed for one delivery attempt [default: 10].
    #[arg(long, env = "FLINGER_WEBHOOK_TIMEOUT_SECS", value_name = "SECS")]
    pub webhook_timeout_secs: Option<u64>,
    /// Longest wait between delivery attempts in seconds; they start 1 s apart and
    /// double [default: 300].
    #[arg(long, env = "FLINGER_WEBHOOK_MAX_BACKOFF_SECS", value_name = "SECS")]
    pub webhook_max_backoff_secs: Option<u64>,
    /// Most job events recorded per job (a post carrying more is refused with 413), 1 to
    /// 100000 [default: 256].
    #[arg(long, env = "FLINGER_MAX_JOB_EVENTS", value_name = "N")]
    pub max_job_events: Option<usize>,
    /// Largest string of a job event post but its URL, in bytes: each event's `detail`,
    /// `event_name` and `timestamp`, and the post's `agent_id` and `job_queue` (413
    /// beyond); at most 1 MiB [default: 4096].
    #[arg(long, env = "FLINGER_MAX_EVENT_DETAIL_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_event_detail_bytes: Option<usize>,
    /// Longest `job_status_webhook` URL in bytes, at submit and in event posts (413 beyond)
    /// 256 to 1048576 [default: 2048].
    #[arg(long, env = "FLINGER_MAX_WEBHOOK_URL_BYTES", value_name = "BYTES", value_parser = super::parse_bytes::<usize>)]
    pub max_webhook_url_bytes: Option<usize>,
    /// Where events and snapshots are kept: `file` (the write-ahead log under the data
    /// directory) or a PostgreSQL connection string `postgres://USER[:PASSWORD]@HOST:PORT/DB`
    /// [default: file].
    // Kept as text and parsed when the settings are resolved: clap's own refusal of a
    // value would repeat it whole, password and all.
    #[arg(
        long,
        env = "FLINGER_JOURNAL",
        value_name = "file|postgres://...",
        hide_env_values = true
    )]
    pub journal: Option<String>,
    /// On the PostgreSQL journal: length of the leader's lease in milliseconds (300 to
    /// 60000); a dead leader is replaced after about this long, and it is renewed every
    /// third of it [default: 5000].
    #[arg(long, env = "FLINGER_LEASE_MS", value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// On the PostgreSQL journal: the URL other nodes forward requests to while this node
    /// leads, `http://HOST:PORT` [default: http:// + the bound address].
    #[arg(long, env = "FLINGER_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// On the PostgreSQL journal: seconds a standby waits for the leader to move a
    /// forwarded request on (take more of its body, send its answer's head or the next
    /// piece of its body) before giving up on it (504, or the connection cut mid-answer);
    /// 1 to 86400 [default: a long poll's 60 s or four lease lengths, whichever is longer,
    /// plus 30: 90 with the default lease]; a value set at or below the first part is
    /// warned of at start-up.
    #[arg(long, env = "FLINGER_FORWARD_IDLE_SECS", value_name = "SECS")]
    pub forward_idle_secs: Option<u64>,
    /// The names clients reach this server by, comma-separated, each optionally
    /// `*.suffix` (`flinger.lab.example,*.lab.example`): a request whose `Host` is none of
    /// them, nor an IP address or localhost, is refused (403), so a page whose name was
    /// rebound to this server's address (DNS rebinding) cannot use it. The host of
    /// --advertise-url counts too [default: any name; only localhost and addresses on a
    /// loopback address with access control off].
    #[arg(long, env = "FLINGER_ALLOWED_HOSTS", value_name = "NAMES")]
    pub allowed_hosts: Option<String>,
}
