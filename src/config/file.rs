//! The Testflinger-style config file: finding it, parsing `KEY = value` lines, and the
//! keys it may set (the values are applied by [`super::Config::resolve`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number (0 when the file could not be read).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Keys the config file may set, and keys from Testflinger that we accept and ignore.
pub(super) const KNOWN_KEYS: &[&str] = &[
    "DATA_PATH",
    "BIND",
    "FSYNC",
    "MAX_JOB_BYTES",
    "MAX_JOBS_BYTES",
    "MAX_JOBS_SHARE_PERCENT",
    "MAX_RESULT_BYTES",
    "MAX_OUTPUT_BYTES",
    "MAX_JOB_DATA_BYTES",
    "MAX_RESULTS_BYTES",
    "MAX_ARTIFACT_BYTES",
    "MAX_ATTACHMENTS_BYTES",
    "SEGMENT_BYTES",
    "SNAPSHOT_BYTES",
    "SNAPSHOT_GROWTH_PERCENT",
    "RETENTION_SECS",
    "MAX_CONNECTIONS",
    "HEADER_TIMEOUT_SECS",
    "MAX_HEADER_BYTES",
    "MIN_TRANSFER_BYTES",
    "TRANSFER_WINDOW_SECS",
    "DRAIN_SECS",
    "FOLLOW_MAX_SECS",
    "MAX_FOLLOWS",
    "MAX_PART_HEADER_BYTES",
    "MAX_UPLOAD_PARTS",
    "MAX_FIELD_BYTES",
    "MAX_PENDING",
    "WORKERS",
    "THP",
    "ORPHAN_QUOTA_BYTES",
    "QUEUE_IDLE_SECS",
    "MAX_SEARCHES",
    "AGENT_EXPIRY_SECS",
    "MAX_AGENTS_PER_CLIENT",
    "LOST_AGENT_GRACE_SECS",
    "LOST_AGENT_REQUEUE",
    "MAX_WAITERS",
    "METRICS_QUEUES",
    "ACCESS_CONTROL",
    "JWT_LEEWAY",
    "ACCESS_TOKEN_SECS",
    "REFRESH_TOKEN_SECS",
    "TOKEN_FAILURES_PER_MINUTE",
    "WEBHOOK_URL",
    "WEBHOOK_AUTH",
    "WEBHOOK_GIVE_UP_SECS",
    "WEBHOOK_TIMEOUT_SECS",
    "WEBHOOK_MAX_BACKOFF_SECS",
    "MAX_JOB_EVENTS",
    "MAX_EVENT_DETAIL_BYTES",
    "MAX_WEBHOOK_URL_BYTES",
    "JOURNAL",
    "LEASE_MS",
    "ADVERTISE_URL",
    "FORWARD_IDLE_SECS",
    "ALLOWED_HOSTS",
];
/// Testflinger keys with no meaning here (flinger needs no Redis or Mongo).
pub(super) const IGNORED_KEYS: &[&str] = &[
    "REDIS_HOST",
    "REDIS_PORT",
    "SENTRY_DSN",
    "MONGODB_URI",
    "MONGODB_HOST",
    "MONGODB_PORT",
];

/// Parses config file text into `KEY -> value` (values unquoted). Pure; never panics. A
/// key set twice is an error naming both lines (as a TOML parser refuses it): which one
/// was meant cannot be guessed, and taking the last silently hides the other.
pub fn parse_config_file(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| ConfigError {
            line: i + 1,
            reason,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected `KEY = value`, got {line:?}")))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!("bad key {key:?}")));
        }
        let value = unquote(value.trim()).map_err(err)?;
        if let Some(first) = lines.insert(key.to_owned(), i + 1) {
            return Err(err(format!(
                "{key} is set again (first on line {first}): keep one of them"
            )));
        }
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// One value as Python reads it: a quoted string (no escapes: a backslash is kept as
/// written) or a bare word, either followed by an optional `#` comment.
fn unquote(value: &str) -> Result<String, String> {
    if let Some(quote) = value.chars().next().filter(|c| matches!(c, '\'' | '"')) {
        let rest = &value[1..];
        let end = rest
            .find(quote)
            .ok_or_else(|| format!("unterminated string {value:?}"))?;
        let (inner, after) = (&rest[..end], rest[end + 1..].trim_start());
        if !(after.is_empty() || after.starts_with('#')) {
            let escape = if inner.ends_with('\\') {
                " (backslash escapes are not supported: quote with the other kind)"
            } else {
                ""
            };
            return Err(format!(
                "unexpected text after the closing quote in {value:?}: expected the end of \
                 the line or a `#` comment{escape}"
            ));
        }
        return Ok(inner.to_owned());
    }
    // A bare value ends where a comment starts: a `#` at its start or after whitespace.
    let comment = value
        .char_indices()
        .find(|&(i, c)| {
            c == '#'
                && value[..i]
                    .chars()
                    .next_back()
                    .is_none_or(char::is_whitespace)
        })
        .map_or(value.len(), |(i, _)| i);
    let value = value[..comment].trim_end();
    if value.is_empty() {
        return Err("missing value".into());
    }
    if value.contains(['\'', '"']) {
        return Err(format!("stray quote in {value:?}"));
    }
    Ok(value.to_owned())
}

/// A config file that was read: its path and its keys.
pub type ConfigFile = (PathBuf, BTreeMap<String, String>);

/// Finds and reads the config file: `TESTFLINGER_CONFIG`, else `./testflinger.conf`.
/// Returns the path read and its keys, or `None` when there is no file.
pub fn read_config_file(env_path: Option<&Path>) -> Result<Option<ConfigFile>, ConfigError> {
    let path = match env_path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from("testflinger.conf");
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        line: 0,
        reason: format!("cannot read config file {}: {e}", path.display()),
    })?;
    // "FILE line N: reason", the order editors and compilers use.
    let keys = parse_config_file(&text).map_err(|e| ConfigError {
        line: 0,
        reason: format!("{} line {}: {}", path.display(), e.line, e.reason),
    })?;
    Ok(Some((path, keys)))
}
