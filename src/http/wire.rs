//! The Testflinger JSON shapes: parsing and validating what clients send, and the small
//! query/cookie syntax of the API. The only module that knows the wire format of jobs.
//!
//! A job is any JSON object with a non-empty string `job_queue`; the fields Testflinger
//! defines are type-checked (422 naming the field), every other field is kept verbatim,
//! in its order, for the agent.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::registry::Submission;
use crate::model::{JobId, Name};

/// Longest queue or agent name accepted.
pub const MAX_NAME: usize = 256;
/// Most entries in `exclude_agents` or `tags`.
pub const MAX_LIST: usize = 1024;

/// Testflinger's text for an unusable submission body.
pub const INVALID_JOB: &str = "Invalid data or no job_queue specified";
/// Testflinger's text for a bad `job_id` in a submission.
pub const INVALID_JOB_ID: &str = "Invalid job_id specified";
/// Testflinger's text for a malformed id in a path.
pub const INVALID_ID: &str = "Invalid job id";

/// Parses an id from a path segment (400 when it is not a UUID spelling).
pub fn path_id(text: &str) -> Result<JobId> {
    JobId::parse(text).ok_or_else(|| Error::InvalidInput(INVALID_ID.into()))
}

/// Phases of a Testflinger job, in order (also the keys of log responses).
pub const PHASES: &[&str] = &[
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "reserve",
    "cleanup",
];

/// Checks a queue name wherever one enters (submission, `queue=` parameters, paths,
/// advertisements, images, agent records): 1 to [`MAX_NAME`] bytes, not only whitespace,
/// no control characters (NUL, C0, DEL, C1) and no bidirectional-text controls (which
/// make a name display as another). Returns a 400 naming the problem.
pub fn check_queue_name(name: &str) -> Result<()> {
    let bad = |why: String| {
        Err(Error::InvalidInput(format!(
            "Invalid queue name {}: {why}",
            serde_json::Value::from(name.chars().take(64).collect::<String>())
        )))
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if name.len() > MAX_NAME {
        return bad(format!("it is longer than {MAX_NAME} bytes"));
    }
    if name.trim().is_empty() {
        return bad("it is only whitespace".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return bad(format!(
            "it contains the control character U+{:04X}",
            c as u32
        ));
    }
    if let Some(c) = name.chars().find(|c| is_bidi_control(*c)) {
        return bad(format!(
            "it contains the bidirectional text control U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode's bidirectional formatting characters (UAX #9): marks, embeddings, overrides,
/// isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Validates a submission body and builds what the registry needs.
///
/// One pass over the object's fields: known fields are type-checked, everything else
/// is kept as is.
pub fn parse_job(body: &[u8]) -> Result<Submission> {
    let invalid = || Error::InvalidInput(INVALID_JOB.into());
    let Ok(Value::Object(mut job)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid());
    };
    let mut queue: Option<Name> = None;
    let mut id: Option<JobId> = None;
    let mut priority = 0;
    let mut exclude: Vec<Name> = Vec::new();
    let mut awaits_attachments = false;
    for (field, value) in job.iter_mut() {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "job_queue" => match value {
                Value::String(q) if q.is_empty() => return Err(invalid()),
                Value::String(q) if q.len() > MAX_NAME => {
                    return Err(Error::validation(
                        field,
                        format!("Longer than maximum length {MAX_NAME}."),
                    ))
                }
                Value::String(q) => {
                    check_queue_name(q)?;
                    queue = Some(q.as_str().into())
                }
                _ => return Err(Error::validation(field, "Not a valid string.")),
            },
            "job_id" => match value {
                Value::String(s) if s.is_empty() => {}
                Value::String(s) => {
                    id = Some(
                        JobId::parse(s)
                            .ok_or_else(|| Error::InvalidInput(INVALID_JOB_ID.into()))?,
                    )
                }
                _ => return Err(Error::InvalidInput(INVALID_JOB_ID.into())),
            },
            // Authorisation seam: upstream accepts a priority other than 0 only from a client
            // whose token grants it (`max_priority`). flinger has no authentication yet, so
            // every client may set any priority; when tokens arrive, check them here.
            "job_priority" => {
                priority = value
                    .as_i64()
                    .ok_or_else(|| Error::validation(field, "Not a valid integer."))?
            }
            "exclude_agents" => exclude = string_list(field, value)?,
            "tags" => {
                string_list(field, value)?;
            }
            "global_timeout" | "output_timeout" | "allocation_timeout"
                if value.as_i64().is_none() =>
            {
                return Err(Error::validation(field, "Not a valid integer."));
            }
            "name" | "parent_job_id" | "job_status_webhook" if !value.is_string() => {
                return Err(Error::validation(field, "Not a valid string."));
            }
            "debug" if !value.is_boolean() => {
                return Err(Error::validation(field, "Not a valid boolean."))
            }
            "provision_data"
            | "firmware_update_data"
            | "test_data"
            | "allocate_data"
            | "reserve_data" => {
                let Value::Object(data) = value else {
                    let reason = if field == "provision_data" {
                        "Invalid provision data schema."
                    } else {
                        "Not a valid mapping type."
                    };
                    return Err(Error::validation(field, reason));
                };
                if field == "reserve_data" {
                    check_reserve_data(data)?;
                } else if field != "allocate_data" {
                    awaits_attachments |= data
                        .get("attachments")
                        .is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()));
                }
            }
            _ => {}
        }
    }
    let queue = queue.ok_or_else(invalid)?;
    let id = id.unwrap_or_else(JobId::random);
    let id_value = Value::String(id.to_string());
    match job.get_mut("job_id") {
        Some(slot) => *slot = id_value,
        None => {
            job.insert("job_id".into(), id_value);
        }
    }
    let body = Bytes::from(serde_json::to_vec(&job).expect("JSON maps serialise"));
    Ok(Submission {
        id,
        queue,
        body,
        priority,
        exclude: exclude.into(),
        awaits_attachments,
    })
}

/// `reserve_data`: `timeout` is seconds or a duration string (stored as seconds, as
/// Testflinger does), `ssh_keys` a list of strings.
fn check_reserve_data(reserve: &mut Map<String, Value>) -> Result<()> {
    if let Some(timeout) = reserve.get("timeout").filter(|v| !v.is_null()) {
        let seconds = match timeout {
            Value::Number(n) => n.as_u64().filter(|&s| s > 0),
            Value::String(s) => parse_duration(s),
            _ => None,
        }
        .ok_or_else(|| {
            Error::validation(
                "reserve_data",
                "timeout: Not a valid duration (seconds, or like 1h30m).",
            )
        })?;
        reserve.insert("timeout".into(), Value::from(seconds));
    }
    if let Some(keys) = reserve.get("ssh_keys").filter(|v| !v.is_null()) {
        if !keys
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(Error::validation(
                "reserve_data",
                "ssh_keys: Not a valid list of strings.",
            ));
        }
    }
    Ok(())
}

fn string_list(field: &str, value: &Value) -> Result<Vec<Name>> {
    match value {
        Value::Array(items) if items.len() <= MAX_LIST => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(Name::from)
                    .ok_or_else(|| Error::validation(field, "Not a valid string."))
            })
            .collect(),
        Value::Array(_) => Err(Error::validation(
            field,
            format!("Longer than maximum length {MAX_LIST}."),
        )),
        _ => Err(Error::validation(field, "Not a valid list.")),
    }
}

/// Parses Testflinger duration strings: plain seconds (`"1800"`), or number+unit groups
/// (`"30m"`, `"1h30m"`, `"2d"`, `"1800s"`). Zero and overflow are rejected.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return (seconds > 0).then_some(seconds);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(number.unwrap_or(0).checked_mul(10)?.checked_add(d as u64)?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    if number.is_some() {
        return None;
    }
    (total > 0).then_some(total)
}

/// Decodes an `application/x-www-form-urlencoded` query into (key, value) pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten()
            .map(|v| v as u8);
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `agent_name` cookie (set by `POST /v1/agents/data/<name>`), if sent.
pub fn agent_cookie(headers: &axum::http::HeaderMap) -> Option<Name> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("agent_name="))
        .map(|name| name.trim_matches('"'))
        .find(|name| !name.is_empty() && name.len() <= MAX_NAME)
        .map(Name::from)
}

/// Formats unix seconds the way Testflinger does: `YYYY-MM-DDTHH:MM:SSZ` (clients replace
/// the `Z` with `+00:00`, so no offset may precede it).
pub fn iso_z(secs: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Parses an ISO 8601 / RFC 3339 timestamp (`Z` or an offset; a missing offset means
/// UTC, as Python's naive datetimes do) into unix microseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if text.len() > 64 {
        return None;
    }
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
        .or_else(|_| time::OffsetDateTime::parse(&format!("{}Z", text.replace(' ', "T")), &Rfc3339))
        .ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_testflinger() {
        for (text, expected) in [
            ("1800", Some(1800)),
            ("30m", Some(1800)),
            ("1h30m", Some(5400)),
            ("2d", Some(172_800)),
            ("1800s", Some(1800)),
            ("", None),
            ("0", None),
            ("h", None),
            ("5x", None),
            ("1h30", None),
            ("-5", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text:?}");
        }
    }

    #[test]
    fn queries_decode_repeated_keys_and_escapes() {
        let pairs = query_pairs("queue=a&queue=b%20c&queue=d+e&x=%zz&y=%4");
        assert_eq!(pairs[1].1, "b c");
        assert_eq!(pairs[2].1, "d e");
        assert_eq!(pairs[3].1, "%zz");
        assert_eq!(pairs[4].1, "%4");
    }

    #[test]
    fn job_id_is_normalised_in_place_and_fields_kept_in_order() {
        let sub = parse_job(
            br#"{"b":1,"job_id":"{0123ABCD-4567-89AB-CDEF-0123456789AB}","job_queue":"q","a":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&sub.body).unwrap(),
            r#"{"b":1,"job_id":"0123abcd-4567-89ab-cdef-0123456789ab","job_queue":"q","a":[1]}"#
        );
    }
}
