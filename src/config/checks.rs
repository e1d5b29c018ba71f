//! The bounds a resolved [`Config`] is held to ([`Config::validate`], run by
//! `Config::resolve`), the exposure check the server makes before it listens, and the
//! warning for a server reached by name without `--allowed-hosts`, and `--forward-idle-secs`
//! against the lease: each refusal names the setting as the operator can change it (flag,
//! variable, file key).

use std::time::Duration;

use super::{AccessMode, Config, ConfigError, JournalTarget, MAX_BODY_LIMIT, MAX_WORKERS};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| Err(ConfigError { line: 0, reason });
        for (name, value) in [
            ("max-job-bytes", self.max_job_bytes),
            ("max-result-bytes", self.max_result_bytes),
            ("max-output-bytes", self.max_output_bytes),
        ] {
            if value > MAX_BODY_LIMIT {
                return err(format!(
                    "{} must be at most 256 MiB ({MAX_BODY_LIMIT}; bodies are logged whole), got {value}",
                    setting(name)
                ));
            }
        }
        let one_post = self.max_result_bytes.max(self.max_output_bytes) as u64;
        // A post is charged its text plus what is kept beside it (a phase name, at most
        // a name's length, and the per-entry overhead).
        let charged =
            one_post + crate::model::results::ENTRY_OVERHEAD + crate::http::wire::MAX_NAME as u64;
        if self.max_job_data_bytes < charged {
            return err(format!(
                "{} is {} bytes, less than one post may take (the larger of --max-result-bytes \
                 and --max-output-bytes: {one_post}, plus {} for what is kept beside it)",
                setting("max-job-data-bytes"),
                self.max_job_data_bytes,
                charged - one_post
            ));
        }
        // Below one job's bound, a job could never reach its own limit even alone.
        if self.max_results_bytes < self.max_job_data_bytes {
            return err(format!(
                "{} is {} bytes, less than one job's results and logs may take \
                 (--max-job-data-bytes: {})",
                setting("max-results-bytes"),
                self.max_results_bytes,
                self.max_job_data_bytes
            ));
        }
        let beside = crate::model::index::JOB_OVERHEAD + crate::model::index::QUEUE_OVERHEAD;
        let one_job = beside + self.max_job_bytes as u64;
        if self.max_jobs_bytes < one_job {
            return err(format!(
                "{} is {} bytes, less than one job may take (--max-job-bytes {} plus {beside} \
                 for it and its queue)",
                setting("max-jobs-bytes"),
                self.max_jobs_bytes,
                self.max_job_bytes,
            ));
        }
        if self.max_attachments_bytes < self.max_artifact_bytes {
            return err(format!(
                "{} is {} bytes, less than one attachments upload may take (--max-artifact-bytes {})",
                setting("max-attachments-bytes"),
                self.max_attachments_bytes,
                self.max_artifact_bytes,
            ));
        }
        let biggest = self
            .max_result_bytes
            .max(self.max_job_bytes)
            .max(self.max_output_bytes) as u64;
        if self.segment_bytes < 2 * biggest + (1 << 20) {
            return err(format!(
                "{} is {} bytes, too small for records of up to {biggest} bytes (needs at least 2x \
                 the largest of --max-job-bytes, --max-result-bytes, --max-output-bytes + 1 MiB: {})",
                setting("segment-bytes"),
                self.segment_bytes,
                2 * biggest + (1 << 20)
            ));
        }
        // Each below its least would make the server useless (every submit or upload
        // refused, every token request 429, records gone as they are written) rather than
        // strict: refused at start-up, naming the setting.
        let body = " (smaller refuses ordinary requests)";
        for (name, value, least, why) in [
            ("max-job-bytes", self.max_job_bytes as u64, 256, body),
            ("max-result-bytes", self.max_result_bytes as u64, 256, body),
            ("max-output-bytes", self.max_output_bytes as u64, 256, body),
            ("max-artifact-bytes", self.max_artifact_bytes, 256, body),
            (
                "max-event-detail-bytes",
                self.max_event_detail_bytes as u64,
                64,
                " (an event's name and timestamp alone need that)",
            ),
            ("retention-secs", self.retention.as_secs(), 1, ""),
            ("agent-expiry-secs", self.agent_expiry.as_secs(), 1, ""),
            ("queue-idle-secs", self.queue_idle.as_secs(), 1, ""),
            (
                "token-failures-per-minute",
                self.token_failures_per_minute as u64,
                1,
                " (0 would refuse every token request)",
            ),
            (
                "webhook-give-up-secs",
                self.webhook_give_up.as_secs(),
                1,
                "",
            ),
            ("max-connections", self.max_connections as u64, 1, ""),
            (
                "max-header-bytes",
                self.max_header_bytes as u64,
                8192,
                " (hyper's smallest buffer)",
            ),
            ("header-timeout-secs", self.header_timeout.as_secs(), 1, ""),
            (
                "transfer-window-secs",
                self.transfer_window.as_secs(),
                1,
                "",
            ),
            ("min-transfer-bytes", self.min_transfer_bytes, 1, ""),
            ("follow-max-secs", self.follow_max.as_secs(), 1, ""),
            ("forward-idle-secs", self.forward_idle.as_secs(), 1, ""),
            ("max-upload-parts", self.max_upload_parts as u64, 1, ""),
            (
                "max-part-header-bytes",
                self.max_part_header_bytes as u64,
                256,
                "",
            ),
            ("max-pending", self.max_pending as u64, 1, ""),
            ("max-searches", self.max_searches as u64, 1, ""),
            ("max-follows", self.max_follows as u64, 1, ""),
            ("max-waiters", self.max_waiters as u64, 1, ""),
            (
                "max-agents-per-client",
                self.max_agents_per_client as u64,
                1,
                " (0 would refuse every new agent credential's agents)",
            ),
            (
                "max-field-bytes",
                self.max_field_bytes,
                256,
                " (smaller refuses ordinary form fields beside the file)",
            ),
            (
                "snapshot-bytes",
                self.snapshot_bytes,
                MIN_SNAPSHOT_BYTES,
                " (1 MiB: smaller rewrites the whole state every few records, and frees no \
                 log, which is cut in whole segments of at least that)",
            ),
        ] {
            if value < least {
                return err(format!(
                    "{} must be at least {least}{why}, got {value}",
                    setting(name)
                ));
            }
        }
        // What the runtime can hold: a semaphore has at most 2^61 permits, and a deadline
        // must stay within the clock's range (hyper and the transfer-rate timer add these
        // to the current instant, and panic past it). Far beyond any sensible value. And
        // what would make the server unusable or let one client pin memory: each above
        // its most is refused at start-up, naming the setting.
        let pinned = " (what one connection may hold in memory before its request is parsed)";
        for (name, value, most, why) in [
            ("max-pending", self.max_pending as u64, MAX_COUNT, ""),
            ("max-searches", self.max_searches as u64, MAX_COUNT, ""),
            ("max-follows", self.max_follows as u64, MAX_COUNT, ""),
            (
                "max-agents-per-client",
                self.max_agents_per_client as u64,
                crate::model::agents::MAX_AGENTS as u64,
                " (the most agent records kept at once, by all credentials together)",
            ),
            (
                "max-connections",
                self.max_connections as u64,
                MAX_COUNT,
                "",
            ),
            (
                "header-timeout-secs",
                self.header_timeout.as_secs(),
                MAX_DEADLINE_SECS,
                "",
            ),
            (
                "transfer-window-secs",
                self.transfer_window.as_secs(),
                MAX_DEADLINE_SECS,
                "",
            ),
            (
                "follow-max-secs",
                self.follow_max.as_secs(),
                MAX_DEADLINE_SECS,
                "",
            ),
            (
                "max-header-bytes",
                self.max_header_bytes as u64,
                MAX_HEAD_BYTES,
                pinned,
            ),
            (
                "max-part-header-bytes",
                self.max_part_header_bytes as u64,
                MAX_HEAD_BYTES,
                " (the multipart parser rescans a header block for its end as it grows)",
            ),
            (
                "segment-bytes",
                self.segment_bytes,
                MAX_SEGMENT_BYTES,
                " (4 GiB: the log keeps a spare segment preallocated and zeroed; a larger one \
                 the disk cannot hold refuses every change)",
            ),
            (
                "forward-idle-secs",
                self.forward_idle.as_secs(),
                MAX_DEADLINE_SECS,
                "",
            ),
        ] {
            if value > most {
                return err(format!(
                    "{} must be at most {most}{why}, got {value}",
                    setting(name)
                ));
            }
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return err(format!(
                "{} must be 1 to {MAX_WORKERS}, got {}",
                setting("workers"),
                self.workers
            ));
        }
        let access = self.access_token_ttl.as_secs();
        let most = crate::model::access::MAX_ACCESS_TOKEN_SECS;
        if !(1..=most).contains(&access) {
            return err(format!(
                "{} must be 1 to {most} seconds, got {access}",
                setting("access-token-secs")
            ));
        }
        let refresh = self.refresh_token_ttl.as_secs();
        if !(1..=366 * 86_400).contains(&refresh) {
            return err(format!(
                "{} must be 1 to 31622400 seconds (366 days), got {refresh}",
                setting("refresh-token-secs")
            ));
        }
        let leeway = self.jwt_leeway.as_secs();
        if leeway > 300 {
            return err(format!(
                "--jwt-leeway-secs (FLINGER_JWT_LEEWAY_SECS, or JWT_LEEWAY in the environment or \
                 the config file) must be at most 300 seconds, got {leeway}"
            ));
        }
        if let Some(url) = &self.webhook_url {
            if let Err(why) = crate::actors::webhooks::base_of(url) {
                return err(format!("WEBHOOK_URL {url:?}: {why}"));
            }
        }
        if self.webhook_timeout.is_zero() || self.webhook_max_backoff.is_zero() {
            return err("the webhook timeout and max backoff must be at least 1 s".into());
        }
        if self.max_job_events == 0 || !(256..=1 << 20).contains(&self.max_webhook_url_bytes) {
            return err(
                "max job events must be at least 1, max webhook URL bytes 256..=1048576".into(),
            );
        }
        if self.max_event_detail_bytes > 1 << 20 || self.max_job_events > 100_000 {
            return err(
                "max event detail bytes must be at most 1 MiB, max job events at most 100000"
                    .into(),
            );
        }
        if !(1..=100).contains(&self.max_jobs_share_percent) {
            return err(format!(
                "{} must be 1 to 100, got {}",
                setting("max-jobs-share-percent"),
                self.max_jobs_share_percent
            ));
        }
        if self.snapshot_growth_percent > 10_000 {
            return err("snapshot growth percent must be at most 10000".into());
        }
        let lease = self.lease.as_millis();
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease) {
            return err(format!(
                "{} must be {LEASE_MS_MIN} to {LEASE_MS_MAX} milliseconds, got {lease}",
                setting("lease-ms")
            ));
        }
        if let Some(url) = &self.advertise_url {
            let parsed = url.parse::<axum::http::Uri>().ok();
            let ok = parsed.as_ref().is_some_and(|u| {
                u.scheme_str() == Some("http")
                    && u.authority().is_some()
                    && u.path_and_query().is_none_or(|p| p.as_str() == "/")
            });
            if !ok {
                return err(format!(
                    "{} must be http://HOST:PORT (where other nodes reach this one), got {url:?}",
                    setting("advertise-url")
                ));
            }
            let host = parsed.as_ref().and_then(|u| u.host()).unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified())
            {
                return err(format!(
                    "{} names no host other nodes can reach ({url:?}): give this node's address",
                    setting("advertise-url")
                ));
            }
        } else if matches!(self.journal, JournalTarget::Postgres(_))
            && self.bind.ip().is_unspecified()
        {
            // Other nodes forward to the advertised URL; by default it is the bound
            // address, and 0.0.0.0 would make them forward to themselves.
            return err(format!(
                "{} is required on the PostgreSQL journal when {} listens on every address ({}): \
                 other nodes forward requests to it",
                setting("advertise-url"),
                setting("bind"),
                self.bind
            ));
        }
        Ok(())
    }

    /// Safe default, like Redis's protected mode: access control off is only for
    /// loopback addresses unless the operator opted out explicitly.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.access == AccessMode::Off
            && !self.bind.ip().is_loopback()
            && !self.allow_open_access
        {
            return Err(ConfigError {
                line: 0,
                reason: format!(
                    "refusing to serve on {} with access control off: anyone who can reach it could run jobs on your devices. \
                     Turn access control on (--access-control on, FLINGER_ACCESS_CONTROL=on or ACCESS_CONTROL = 'on'; \
                     create the first admin with `flinger client add NAME --role admin`), \
                     bind a loopback address, or opt out explicitly with --allow-open-access",
                    self.bind
                ),
            });
        }
        Ok(())
    }

    /// The start-up warning for a server others reach by name with no `--allowed-hosts`:
    /// any page whose name is made to resolve to its address (DNS rebinding) can use it
    /// as its own site. Only a warning: which names lab users use the server cannot know,
    /// and refusing them all by default would break every lab.
    /// `--forward-idle-secs` against what a leader may rightly be silent for
    /// ([`leader_quiet_most`]): unset, it is that plus [`FORWARD_IDLE_MARGIN`] (90 s with
    /// the default 5-s lease, 270 s with the longest); set at or below it on the
    /// PostgreSQL journal, the warning to log, as a standby would then answer 504 (or cut
    /// an answer) for requests the leader is still rightly working on.
    pub(super) fn settle_forward_idle(&mut self, chosen: bool) -> Option<String> {
        let quiet = leader_quiet_most(self.lease);
        if !chosen {
            self.forward_idle = quiet + FORWARD_IDLE_MARGIN;
            return None;
        }
        let on_postgres = matches!(self.journal, JournalTarget::Postgres(_));
        (on_postgres && self.forward_idle <= quiet).then(|| {
            format!(
                "{} is {} s, not above the {} s a leader may rightly be silent on a forwarded \
                 request (a long poll's {} s, or four lease lengths of --lease-ms {} waiting \
                 on the database): a standby answers 504 for such requests though the leader \
                 may still complete them; leave it unset to follow --lease-ms",
                setting("forward-idle-secs"),
                self.forward_idle.as_secs(),
                quiet.as_secs(),
                crate::dispatch::MAX_WAIT_SECS,
                self.lease.as_millis(),
            )
        })
    }

    pub(super) fn rebinding_warning(&self) -> Option<String> {
        (self.allowed_hosts.is_none() && !self.bind.ip().is_loopback()).then(|| {
            format!(
                "{} is not set and {} is not a loopback address: a web page whose name is \
                 made to resolve to this server's address (DNS rebinding) can use it as its \
                 own site, with the rights of a caller without a token (read every answer; \
                 submit and cancel jobs unless access control is strict). Name the hosts \
                 clients use to reach this server there (`*.suffix` allowed; IP addresses \
                 and localhost always pass)",
                setting("allowed-hosts"),
                self.bind
            )
        })
    }
}

/// Largest `--max-pending` and `--max-searches` (each is a semaphore's permits).
pub const MAX_COUNT: u64 = 1_000_000;
/// Longest `--header-timeout-secs` and `--transfer-window-secs` (a day): each is added to
/// the current instant, which panics past the clock's range.
pub const MAX_DEADLINE_SECS: u64 = 86_400;

/// Least `--snapshot-bytes` (1 MiB): a snapshot rewrites the whole state, and the log it
/// covers is removed in whole segments, each at least 1 MiB (`--segment-bytes` is 2x the
/// largest body + 1 MiB at least), so snapshotting more often frees nothing and only
/// spends the disk.
pub const MIN_SNAPSHOT_BYTES: u64 = 1 << 20;
/// Most `--segment-bytes` (4 GiB, 8x the largest any body limit needs): the log keeps the
/// segment it writes and a spare, preallocated and zeroed, so each costs its size on disk.
pub const MAX_SEGMENT_BYTES: u64 = 4 << 30;
/// Most `--max-header-bytes` and `--max-part-header-bytes` (1 MiB): a request head is
/// buffered whole (hyper's default buffer is ~400 KiB, a real client's head a few KiB).
pub const MAX_HEAD_BYTES: u64 = 1 << 20;

/// The longest a leader may rightly say nothing on a forwarded request: a long poll's
/// longest wait (`dispatch::MAX_WAIT_SECS`), or the leader's wait for one database
/// statement ([`crate::journal::statement_bound`]: four lease lengths, at least 10 s).
pub fn leader_quiet_most(lease: Duration) -> Duration {
    Duration::from_secs(crate::dispatch::MAX_WAIT_SECS).max(crate::journal::statement_bound(lease))
}

/// What an unset `--forward-idle-secs` adds to [`leader_quiet_most`]: time for the
/// answer to reach the standby once the leader has it.
pub const FORWARD_IDLE_MARGIN: Duration = Duration::from_secs(30);

/// Shortest lease (`--lease-ms`): renewals every third of it must fit a database round
/// trip on a loaded machine.
pub const LEASE_MS_MIN: u128 = 300;
/// Longest lease: a dead leader is replaced after at most this long.
pub const LEASE_MS_MAX: u128 = 60_000;

/// How an operator names the setting `--name`: its flag, environment variable and config
/// file key (every setting checked in `Config::validate` has all three), so an error says
/// what to change wherever the value came from.
pub(super) fn setting(name: &str) -> String {
    let key = name.replace('-', "_").to_uppercase();
    format!("--{name} (FLINGER_{key}, config key {key})")
}
