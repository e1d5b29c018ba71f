//! Result endpoints: result documents, log fragments and legacy output (Testflinger's
//! `result_post`, `result_get`, `output_post`, `output_get`); a job's stored files
//! (artifact, attachments) are in [`files`].

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde_json::{Map, Value};

use super::logbody::{self, Part};
use super::respond::{json_bytes, no_content, ok, read_body, text};
use super::wire::{
    parse_timestamp, path_id, pick_members, query_number, query_pairs, NotAnObject, MAX_NAME,
    PHASES,
};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::actors::files::{FileMsg, Reservation};
use crate::actors::reads::{compose_off_runtime, LogQuery};
use crate::actors::registry::RegistryMsg;
use crate::actors::results::{read_output, record, FragmentPost, Post};
use crate::actors::{ask, ask_admitted, Callee, Services};
use crate::error::{Error, Result};
use crate::journal::files::{Download, NewFile};
use crate::model::registry::first_run;
use crate::model::results::Fields;
use crate::model::{FileKind, JobId, LogKind, Name};

/// `POST /v1/result/<id>`: merge top-level fields into the job's result.
pub async fn result_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let body = read_body(
        request,
        svc.config.max_result_bytes,
        "a results body (--max-result-bytes)",
    )
    .await?;
    let picked = pick_members(&body, ["job_state"]).map_err(|e| match e {
        NotAnObject::Invalid(e) => {
            Error::InvalidInput(format!("Invalid result data: {}", e.message()))
        }
        NotAnObject::Other(other) => Error::InvalidInput(format!(
            "Invalid result data: the body is {}, not a JSON object",
            super::wire::json_kind(&other)
        )),
    })?;
    let [state] = &picked.values;
    let state: Option<Name> = match state {
        None => None,
        Some(value) => Some(Name::from(job_state(value)?)),
    };
    if let Some(queue) = state
        .as_deref()
        .and_then(|state| svc.jobs.waiting_for_phase(id, state))
    {
        // Upstream's HEAD takes the job out of its queue, where no agent gets it and none
        // is found lost: stranded. The registry ignores such a report; say why here.
        return Err(Error::Conflict(format!(
            "Job {id} is waiting in queue '{queue}': no agent has taken it, so it has no \
             phase to report ({:?}); only complete, completed or cancelled end it before \
             then",
            state.as_deref().unwrap_or_default()
        )));
    }
    // A bare state report about a known job (what agents send at every phase) is the
    // registry's alone: the job's lifecycle state is what clients read back, so the
    // result document need not record it too.
    if let (Some(state), None) = (&state, &picked.other) {
        let (known, reported) =
            ask(&svc.registry, |p| RegistryMsg::Report(id, state.clone(), p)).await??;
        if known {
            // A repeated report records nothing, but the state it repeats may not be
            // durable yet.
            let ticket = reported.unwrap_or_else(|| svc.journal.settled());
            svc.journal.durable(ticket).await?;
            return Ok(ok());
        }
    }
    // Otherwise the two partitions are independent: ask both at once, once both let
    // the request in (a refusal must leave both untouched).
    let merge_pass = svc.results.admit()?;
    let report_pass = match state {
        Some(_) => svc.registry.admit()?,
        None => None,
    };
    let report = async {
        match state {
            Some(state) => {
                ask_admitted(&svc.registry, report_pass, |p| {
                    RegistryMsg::Report(id, state, p)
                })
                .await?
            }
            None => Ok((false, None)),
        }
    };
    let (merged, reported) = tokio::join!(record(&svc, id, Post::Merge(body), merge_pass), report);
    let (merged, (_, reported)) = (merged?, reported?);
    if let Some(merged) = merged {
        svc.journal.durable(merged).await?;
    }
    if let Some(reported) = reported {
        svc.journal.durable(reported).await?;
    }
    Ok(ok())
}

/// A reported `job_state`: a string (upstream's `ResultPost` declares `fields.String`, so
/// anything else is its 422), of 1 to [`MAX_NAME`] bytes without control or
/// bidirectional characters (upstream takes any string: here it becomes the job's
/// lifecycle state, kept and shown with the job on pages and in the CLI, as a queue name
/// is, under the same rules).
fn job_state(value: &Value) -> Result<&str> {
    match value {
        Value::String(state) if state.is_empty() => Err(Error::validation(
            "job_state",
            "Shorter than minimum length 1.",
        )),
        Value::String(state) if state.len() > MAX_NAME => Err(Error::validation(
            "job_state",
            format!("Longer than maximum length {MAX_NAME}."),
        )),
        Value::String(state) => match super::wire::unshowable(state) {
            Some(what) => Err(Error::validation(
                "job_state",
                format!("It contains {what}."),
            )),
            None => Ok(state),
        },
        Value::Null => Err(Error::validation("job_state", "Field may not be null.")),
        _ => Err(Error::validation("job_state", "Not a valid string.")),
    }
}

/// `GET /v1/result/<id>`: the result document, with the registry's `job_state`.
///
/// The stored members are copied out as JSON text and written back as they are: only
/// `status` (for `<phase>_status`) is parsed.
pub async fn result_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    let job = svc.jobs.get(id);
    let view = svc.result_docs.view(id).await?;
    let job_run = job.as_ref().map(|j| j.run);
    if job.is_none() && view.as_ref().is_none_or(|v| v.fields.is_none()) {
        return Ok(no_content());
    }
    let (mut result, logs) = match view {
        // A re-run that has posted nothing yet shows no logs, not the earlier run's.
        Some(view) if job_run.is_some_and(|run| is_older_run(view.run, run)) => {
            (view.fields.unwrap_or_default(), Vec::new())
        }
        Some(view) => (view.fields.unwrap_or_default(), view.logs),
        None => (Fields::default(), Vec::new()),
    };
    // The registry owns the lifecycle: its state wins over whatever was posted (in
    // place when posted, else first, where Testflinger's initial
    // `{"job_state": "waiting"}` puts it).
    if let Some(job) = job {
        if let Some(lost) = &job.lost {
            result.insert("lost_agent", json_text(&lost_agent_json(lost)));
        }
        result.insert_first("job_state", json_text(&Value::from(job.state)));
    }
    let logs = add_phase_views(&mut result, logs);
    // Streamed (`logbody`): the stored members as they are (handles, not copies), then
    // each log member, last (where `Fields::insert` would put it), its text escaped from
    // the fragments. A job's results and logs may hold up to --max-job-data-bytes; joined
    // and escaped here they were held about three times over per request.
    let mut parts = Vec::with_capacity(2 * result.len() + 3 * logs.len() + 1);
    let mut text_bytes = 0;
    let mut open = "{";
    for (key, value) in result.iter() {
        let mut member = open.as_bytes().to_vec();
        serde_json::to_writer(&mut member, key).expect("strings serialise");
        member.push(b':');
        parts.push(Part::Raw(Bytes::from(member)));
        parts.push(Part::Raw(value.clone()));
        text_bytes += value.len();
        open = ",";
    }
    for (key, pieces) in logs {
        // `<phase>_<kind>`: nothing in it to escape.
        parts.push(Part::Raw(Bytes::from(format!("{open}\"{key}\":\""))));
        open = ",";
        text_bytes += pieces.iter().map(Bytes::len).sum::<usize>();
        parts.push(Part::Text(pieces));
        parts.push(Part::Raw(Bytes::from_static(b"\"")));
    }
    parts.push(Part::Raw(Bytes::from_static(match open {
        "{" => b"{}",
        _ => b"}",
    })));
    Ok(streamed_json(parts, text_bytes).await)
}

/// The `lost_agent` result field: why the server ended (or requeued) the job, and when
/// its agent was last heard (see `model::lost`).
fn lost_agent_json(lost: &crate::model::registry::Lost) -> Value {
    serde_json::json!({
        "reason": lost.reason(),
        "action": lost.action(),
        "agent": lost.agent.as_deref(),
        "phase": &*lost.phase,
        "last_heard_at": super::wire::iso_z(lost.last_heard),
        "decided_at": super::wire::iso_z(lost.at),
    })
}

fn json_text(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("JSON values serialise"))
}

/// Adds what current Testflinger clients read: `<phase>_status` from the posted
/// `status` object; returns the `<phase>_output` / `<phase>_serial` members to add from
/// the log fragments. Fields an older agent posted under those names are kept as posted.
fn add_phase_views(
    result: &mut Fields,
    mut logs: Vec<(String, Vec<Bytes>)>,
) -> Vec<(String, Vec<Bytes>)> {
    let status = result
        .get("status")
        .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(raw).ok());
    for (phase, code) in status.into_iter().flatten() {
        let key = format!("{phase}_status");
        if result.get(&key).is_none() {
            result.insert(&key, json_text(&code));
        }
    }
    logs.retain(|(key, _)| result.get(key).is_none());
    logs
}

/// `POST /v1/result/<id>/log/<output|serial>`: one log fragment
/// `{fragment_number, timestamp, phase, log_data}`; retried posts are stored once.
pub async fn log_post(
    State(svc): State<Services>,
    Path((id, kind)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let kind = log_kind(&kind)?;
    let limit = svc.config.max_output_bytes;
    let body = read_body(request, fragment_body_limit(limit), "a log fragment's body")
        .await
        .map(super::wire::empty_as_object)
        .map_err(|e| match e {
            Error::TooLarge(_) => Error::TooLarge(format!(
                "Payload too large: a log fragment's body is limited to {} bytes (log_data to \
                 {limit} bytes of UTF-8 text, however it is escaped)",
                fragment_body_limit(limit)
            )),
            other => other,
        })?;
    let picked = pick_members(&body, ["fragment_number", "timestamp", "phase", "log_data"])?;
    // Upstream's `LogPost` refuses keys it does not declare; the stock agent sends none.
    if let Some(other) = &picked.other {
        return Err(Error::unknown_field(other));
    }
    let [number, timestamp, phase, data] = picked.values;
    // Loaded as upstream's `LogPost` loads it, marshmallow's non-strict `Integer` (`"7"` and
    // `7.0` are 7; the stock agent sends integers), except that a negative number is
    // refused: upstream stores it but no read returns it (reads start at fragment 0 and
    // `start_fragment` may not be negative), and -1 is `last_fragment_number`'s "none".
    // At most i64::MAX: reads answer `last_fragment_number` as a signed number, and
    // upstream's MongoDB stores 64-bit signed integers.
    let number = required("fragment_number", &number)?;
    let number = match number.as_u64() {
        Some(n) => n,
        None => {
            let n = super::schema::integer(number)
                .map_err(|reason| Error::validation("fragment_number", reason))?;
            u64::try_from(n).map_err(|_| {
                Error::validation(
                    "fragment_number",
                    format!("Must be greater than or equal to 0 (got {n}): a negative fragment could never be read."),
                )
            })?
        }
    };
    if i64::try_from(number).is_err() {
        return Err(Error::validation(
            "fragment_number",
            format!("Must be less than or equal to {}.", i64::MAX),
        ));
    }
    let timestamp = required("timestamp", &timestamp)?
        .as_str()
        .and_then(parse_timestamp)
        .ok_or_else(|| Error::validation("timestamp", "Not a valid datetime."))?;
    let phase = required("phase", &phase)?
        .as_str()
        .filter(|p| PHASES.contains(p))
        .ok_or_else(|| {
            Error::validation("phase", format!("Must be one of: {}.", PHASES.join(", ")))
        })?;
    let data = required("log_data", &data)?
        .as_str()
        .ok_or_else(|| Error::validation("log_data", "Not a valid string."))?;
    if data.len() > limit {
        return Err(Error::TooLarge(format!(
            "Payload too large: log_data is {} bytes of UTF-8 text, the limit is {limit} bytes \
             (--max-output-bytes)",
            data.len()
        )));
    }
    let run = job_run(&svc, id);
    let fragment = FragmentPost {
        kind,
        number,
        phase: Name::from(phase),
        timestamp,
        data: Bytes::copy_from_slice(data.as_bytes()),
        run,
    };
    // A retried fragment is not recorded again, but its first post may not be durable yet.
    let ticket = record(&svc, id, Post::Log(fragment), None)
        .await?
        .unwrap_or_else(|| svc.journal.settled());
    svc.journal.durable(ticket).await?;
    Ok(ok())
}

/// A required member of a post: upstream's 422 when it is absent (a wrong type is the
/// caller's to name).
fn required<'a>(field: &str, value: &'a Option<Value>) -> Result<&'a Value> {
    value
        .as_ref()
        .ok_or_else(|| Error::validation(field, "Missing data for required field."))
}

/// The body limit of a log fragment post, from the limit on its decoded `log_data`: JSON
/// may escape every byte of text as `\uXXXX` (6 bytes; the stock agent's `requests` escapes
/// all non-ASCII and control characters, 12 bytes for a character outside the BMP), so a
/// `log_data` of `decoded` bytes fits in 6 × `decoded` bytes whatever its escaping, plus
/// 64 KiB for the other fields.
pub fn fragment_body_limit(decoded: usize) -> usize {
    decoded.saturating_mul(6).saturating_add(64 << 10)
}

/// The current run of job `id` (1 when the registry does not know the job: results may
/// be posted for ids no job has).
fn job_run(svc: &Services, id: JobId) -> u32 {
    svc.jobs.run(id).unwrap_or_else(first_run)
}

/// Whether a log showing run `shown` is about an older run than the job's `current` one
/// (the job was resubmitted and its new run has posted nothing yet).
fn is_older_run(shown: Option<u32>, current: u32) -> bool {
    shown.is_some_and(|run| run < current)
}

pub(crate) fn log_kind(text: &str) -> Result<LogKind> {
    match text {
        "output" => Ok(LogKind::Output),
        "serial" => Ok(LogKind::Serial),
        _ => Err(Error::NotFound(format!(
            "Unknown log type {text:?}: expected output or serial"
        ))),
    }
}

/// `GET /v1/result/<id>/log/<output|serial>?start_fragment=N&start_timestamp=T&phase=P`:
/// every phase's log text (or just `phase`'s), non-destructively, with
/// `last_fragment_number` (-1 when a phase has none).
pub async fn log_get(
    State(svc): State<Services>,
    Path((id, kind)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let kind = log_kind(&kind)?;
    let mut from = 0u64;
    let mut since = i64::MIN;
    let mut only: Option<String> = None;
    let mut run: Option<u32> = None;
    for (key, value) in query_pairs(request.uri().query().unwrap_or(""))? {
        match key.as_ref() {
            "start_fragment" => from = query_number("start_fragment", &value, u64::MAX, "")?,
            "start_timestamp" => {
                since = parse_timestamp(&value).ok_or_else(|| {
                    Error::InvalidInput("start_timestamp must be an ISO 8601 datetime".into())
                })?
            }
            "run" => {
                let max = u32::MAX.into();
                let n = query_number("run", &value, max, "1: the job's first run")?;
                run = Some(n as u32); // at most u32::MAX
            }
            "phase" if PHASES.contains(&value.as_ref()) => only = Some(value.into_owned()),
            "phase" => {
                return Err(Error::InvalidInput(format!(
                    "phase must be one of: {}",
                    PHASES.join(", ")
                )))
            }
            _ => {}
        }
    }
    let query = LogQuery {
        from,
        since,
        phase: only,
        run,
    };
    // A run that is not there is an error, not an empty log (which would read as "no
    // output yet"): 0 is no run (they count from 1), and a run past the job's current
    // one has not happened.
    if run.is_some_and(|n| n < first_run()) {
        return Err(Error::InvalidInput(format!(
            "run must be at least {} (runs are numbered from {0}, the job's first run), got 0",
            first_run()
        )));
    }
    let current = svc.jobs.run(id);
    if let Some((n, current)) = run.zip(current) {
        if n > current {
            return Err(no_run(id, n, current));
        }
    }
    let mut answer = svc.result_docs.log(id, kind, query, None).await?;
    if let (Some(n), None) = (run, current) {
        // An id no job has: its data is the runs its fragments name (run 1).
        let newest = answer.latest.unwrap_or_else(first_run);
        if n > newest {
            return Err(no_run(id, n, newest));
        }
    }
    let job = match run {
        Some(_) => None,
        None => svc.jobs.get(id),
    };
    if job.is_some_and(|job| is_older_run(answer.run, job.run)) {
        for phase in answer.phases.iter_mut() {
            phase.clear();
        }
    }
    let kind_name = if kind == LogKind::Output {
        "output"
    } else {
        "serial"
    };
    // `{"<kind>":{"<phase>":{"last_fragment_number":N,"log_data":"<text>"},...}}`, as
    // serde_json writes it, the texts streamed from the fragments (`logbody`).
    let mut parts = vec![Part::Raw(Bytes::from(format!("{{\"{kind_name}\":{{")))];
    let mut text_bytes = 0;
    for (i, phase) in answer.phases.into_iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        parts.push(Part::Raw(Bytes::from(format!(
            "{comma}\"{}\":{{\"last_fragment_number\":{},\"log_data\":\"",
            phase.phase, phase.last
        ))));
        text_bytes += phase.pieces.iter().map(Bytes::len).sum::<usize>();
        parts.push(Part::Text(phase.pieces));
        parts.push(Part::Raw(Bytes::from_static(b"\"}")));
    }
    parts.push(Part::Raw(Bytes::from_static(b"}}")));
    Ok(streamed_json(parts, text_bytes).await)
}

/// A 200 JSON answer of `parts` (`logbody`), whose texts hold `text_bytes`: built whole in
/// one pass when that is under [`logbody::WHOLE_BELOW`], streamed otherwise.
async fn streamed_json(parts: Vec<Part>, text_bytes: usize) -> Response {
    // A streamed answer escapes its texts twice (once to count its `Content-Length`, once
    // to send them): for the small answers of most requests, one pass into one buffer is
    // cheaper (+380 instructions a lifecycle request, streamed, under callgrind).
    if text_bytes < logbody::WHOLE_BELOW {
        return json_bytes(StatusCode::OK, logbody::whole(parts));
    }
    // Counting a long log's escaped length takes milliseconds: off the runtime.
    let (parts, len) = compose_off_runtime(
        move || {
            let len = logbody::length(&parts);
            (parts, len)
        },
        text_bytes > LARGE_LOG_BYTES,
    )
    .await;
    let mut response = Response::new(logbody::body(parts, len));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The 404 of a log read asking for run `n` of `id`, which has runs 1 to `newest`.
fn no_run(id: JobId, n: u32, newest: u32) -> Error {
    let runs = if newest == first_run() {
        format!("only run {newest}")
    } else {
        format!("runs {} to {newest}", first_run())
    };
    Error::NotFound(format!("Job {id} has no run {n}: it has {runs}"))
}

/// Log text above which an answer's length is counted on a blocking thread.
const LARGE_LOG_BYTES: usize = 1 << 20;

/// `POST /v1/result/<id>/output`: append raw text to the job's output stream.
pub async fn output_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    // The raw body is the text: the limit on decoded log text applies to it as is.
    let limit = svc.config.max_output_bytes;
    let body = read_body(request, limit, "an output chunk")
        .await
        .map_err(|e| match e {
            Error::TooLarge(_) => Error::TooLarge(format!(
            "Payload too large: an output chunk is limited to {limit} bytes (--max-output-bytes)"
        )),
            other => other,
        })?;
    if body.is_empty() {
        return Ok(ok());
    }
    let (phase, run) = current_phase(&svc, id).await?;
    if let Some(lsn) = record(&svc, id, Post::Output(phase, run, body), None).await? {
        svc.journal.durable(lsn).await?;
    }
    Ok(ok())
}

/// The phase a legacy output chunk belongs to (the job's current phase, else `test`) and
/// the job's current run.
async fn current_phase(svc: &Services, id: JobId) -> Result<(Name, u32)> {
    let job = svc.jobs.get(id);
    let phase = job
        .as_ref()
        .map(|j| j.state.as_str())
        .filter(|s| PHASES.contains(s))
        .unwrap_or("test");
    Ok((Name::from(phase), job.map_or(first_run(), |j| j.run)))
}

/// `GET /v1/result/<id>/output`: the output not read yet (and mark it read).
pub async fn output_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    match read_output(&svc, id).await? {
        Some((data, lsn)) => {
            svc.journal.durable(lsn).await?;
            Ok(text(data))
        }
        None => Ok(no_content()),
    }
}

mod files;
pub use files::{artifact_get, artifact_post, serve_file, store_upload, upload_matches_stored};
