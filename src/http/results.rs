//! Result endpoints: result documents, legacy output, artifacts (Testflinger's
//! `result_post`, `result_get`, `output_post`, `output_get`, `artifacts_post`,
//! `artifacts_get`).

use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::respond::{json_bytes, no_content, ok, read_body, text};
use super::wire::{parse_timestamp, path_id, query_pairs, PHASES};
use crate::actors::files::FileMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::results::{FragmentPost, LogQuery, ResultMsg};
use crate::actors::{ask, Services};
use crate::error::{Error, Result};
use crate::model::results::Fields;
use crate::model::{FileKind, JobId, LogKind, Name};

/// `POST /v1/result/<id>`: merge top-level fields into the job's result.
pub async fn result_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let body = read_body(request, svc.config.max_result_bytes).await?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return Err(Error::InvalidInput("Invalid result data".into()));
    };
    let state: Option<Name> = fields
        .get("job_state")
        .and_then(Value::as_str)
        .map(Name::from);
    // A bare state report about a known job (what agents send at every phase) is the
    // registry's alone: the job's lifecycle state is what clients read back, so the
    // result document need not record it too.
    if let (Some(state), 1) = (&state, fields.len()) {
        let (known, reported) =
            ask(&svc.registry, |p| RegistryMsg::Report(id, state.clone(), p)).await??;
        if known {
            if let Some(reported) = reported {
                svc.journal.durable(reported).await?;
            }
            return Ok(ok());
        }
    }
    // Otherwise the two partitions are independent: ask both at once.
    let report = async {
        match state {
            Some(state) => ask(&svc.registry, |p| RegistryMsg::Report(id, state, p)).await?,
            None => Ok((false, None)),
        }
    };
    let (merged, reported) =
        tokio::join!(ask(&svc.results, |p| ResultMsg::Merge(id, body, p)), report);
    let (merged, (_, reported)) = (merged??, reported?);
    svc.journal.durable(merged).await?;
    if let Some(reported) = reported {
        svc.journal.durable(reported).await?;
    }
    Ok(ok())
}

/// `GET /v1/result/<id>`: the result document, with the registry's `job_state`.
///
/// The stored members are copied out as JSON text and written back as they are: only
/// `status` (for `<phase>_status`) is parsed.
pub async fn result_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    let job = svc.jobs.get(id);
    let view = svc.result_docs.view(id).await;
    if job.is_none() && view.as_ref().is_none_or(|v| v.fields.is_none()) {
        return Ok(no_content());
    }
    let (mut result, logs) = match view {
        Some(view) => (view.fields.unwrap_or_default(), view.logs),
        None => (Fields::default(), Vec::new()),
    };
    // The registry owns the lifecycle: its state wins over whatever was posted (in
    // place when posted, else first, where Testflinger's initial
    // `{"job_state": "waiting"}` puts it).
    if let Some(job) = job {
        result.insert_first("job_state", json_text(&Value::from(job.state)));
    }
    add_phase_views(&mut result, logs);
    Ok(json_bytes(StatusCode::OK, Bytes::from(result.to_json())))
}

fn json_text(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("JSON values serialise"))
}

/// Adds what current Testflinger clients read: `<phase>_status` from the posted
/// `status` object, and `<phase>_output` / `<phase>_serial` from the log fragments.
/// Fields an older agent posted under those names are kept as posted.
fn add_phase_views(result: &mut Fields, logs: Vec<(String, String)>) {
    let status = result
        .get("status")
        .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(raw).ok());
    for (phase, code) in status.into_iter().flatten() {
        let key = format!("{phase}_status");
        if result.get(&key).is_none() {
            result.insert(&key, json_text(&code));
        }
    }
    for (key, text) in logs {
        if result.get(&key).is_none() {
            result.insert(&key, json_text(&Value::from(text)));
        }
    }
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
    let body = read_body(request, svc.config.max_output_bytes + (64 << 10)).await?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
        return Err(Error::validation("json", "Expected a JSON object"));
    };
    let number = map
        .get("fragment_number")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::validation("fragment_number", "Not a valid non-negative integer."))?;
    let timestamp = map
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
        .ok_or_else(|| Error::validation("timestamp", "Not a valid datetime."))?;
    let phase = map
        .get("phase")
        .and_then(Value::as_str)
        .filter(|p| PHASES.contains(p))
        .ok_or_else(|| {
            Error::validation("phase", format!("Must be one of: {}.", PHASES.join(", ")))
        })?;
    let data = map
        .get("log_data")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::validation("log_data", "Not a valid string."))?;
    if data.len() > svc.config.max_output_bytes {
        return Err(Error::TooLarge(format!(
            "Payload too large: log_data is limited to {} bytes",
            svc.config.max_output_bytes
        )));
    }
    let fragment = FragmentPost {
        kind,
        number,
        phase: Name::from(phase),
        timestamp,
        data: Bytes::copy_from_slice(data.as_bytes()),
    };
    if let Some(lsn) = ask(&svc.results, |p| ResultMsg::AppendLog(id, fragment, p)).await?? {
        svc.journal.durable(lsn).await?;
    }
    Ok(ok())
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
    for (key, value) in query_pairs(request.uri().query().unwrap_or("")) {
        match key.as_str() {
            "start_fragment" => {
                from = value.parse().map_err(|_| {
                    Error::InvalidInput("start_fragment must be a non-negative integer".into())
                })?
            }
            "start_timestamp" => {
                since = parse_timestamp(&value).ok_or_else(|| {
                    Error::InvalidInput("start_timestamp must be an ISO 8601 datetime".into())
                })?
            }
            "phase" if PHASES.contains(&value.as_str()) => only = Some(value),
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
    };
    let mut phases = Map::new();
    for (phase, last, text) in svc.result_docs.log(id, kind, query).await {
        phases.insert(
            phase.into(),
            serde_json::json!({"last_fragment_number": last, "log_data": text}),
        );
    }
    let kind_name = if kind == LogKind::Output {
        "output"
    } else {
        "serial"
    };
    let mut body = Map::new();
    body.insert(kind_name.into(), Value::Object(phases));
    Ok(json_bytes(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(&body).expect("maps serialise")),
    ))
}

/// `POST /v1/result/<id>/output`: append raw text to the job's output stream.
pub async fn output_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let body = read_body(request, svc.config.max_output_bytes).await?;
    if body.is_empty() {
        return Ok(ok());
    }
    let phase = current_phase(&svc, id).await?;
    let lsn = ask(&svc.results, |p| {
        ResultMsg::AppendOutput(id, phase, body, p)
    })
    .await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// The phase a legacy output chunk belongs to: the job's current phase, else `test`.
async fn current_phase(svc: &Services, id: JobId) -> Result<Name> {
    let state = svc.jobs.get(id).map(|j| j.state);
    Ok(Name::from(
        state
            .as_deref()
            .filter(|s| PHASES.contains(s))
            .unwrap_or("test"),
    ))
}

/// `GET /v1/result/<id>/output`: the output not read yet (and mark it read).
pub async fn output_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    match ask(&svc.results, |p| ResultMsg::ReadOutput(id, p)).await?? {
        Some((data, lsn)) => {
            svc.journal.durable(lsn).await?;
            Ok(text(data))
        }
        None => Ok(no_content()),
    }
}

/// `POST /v1/result/<id>/artifact`: multipart field `file`, streamed to disk.
pub async fn artifact_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    store_upload(&svc, id, FileKind::Artifact, request).await?;
    Ok(ok())
}

/// `GET /v1/result/<id>/artifact`: the artifact, streamed from disk.
pub async fn artifact_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    serve_file(
        &svc,
        id,
        FileKind::Artifact,
        "application/octet-stream",
        "artifact.tar.gz",
    )
    .await
}

/// Streams the multipart field `file` of `request` into a new durable file and records
/// it as the job's `kind`. The file name is ours: nothing the client sends becomes a path.
pub async fn store_upload(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    request: Request,
) -> Result<()> {
    // An id no job has may only take what is left of the orphan quota: refused before
    // any byte is stored when nothing is.
    let orphan = kind == FileKind::Artifact && svc.jobs.get(id).is_none();
    let mut limit = svc.config.max_artifact_bytes;
    if orphan {
        let room = svc.orphans.room();
        if room == 0 {
            return Err(svc.orphans.full());
        }
        limit = limit.min(room);
    }
    let over_quota = |e: Error| match e {
        Error::TooLarge(_) if orphan && limit < svc.config.max_artifact_bytes => {
            svc.orphans.full()
        }
        e => e,
    };
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        Error::InvalidInput(format!(
            "Expected a multipart/form-data upload: {}",
            e.body_text()
        ))
    })?;
    let name = format!("{id}.{}.{}", kind_tag(kind), uuid::Uuid::new_v4().simple());
    let tmp = svc.files_dir.join(format!("tmp-{name}"));
    let mut stored = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                remove_quietly(&tmp).await;
                return Err(multipart_error(e, limit));
            }
        };
        if field.name() != Some("file") || stored.is_some() {
            continue;
        }
        match write_stream(&tmp, field, limit).await {
            Ok(size) => stored = Some(size),
            Err(e) => {
                remove_quietly(&tmp).await;
                return Err(over_quota(e));
            }
        }
    }
    let Some(size) = stored else {
        return Err(Error::InvalidInput("The upload has no `file` field".into()));
    };
    let path = svc.files_dir.join(&name);
    let durable = async {
        tokio::fs::rename(&tmp, &path).await?;
        sync_dir(svc.files_dir.clone()).await
    };
    if let Err(e) = durable.await {
        remove_quietly(&tmp).await;
        return Err(e);
    }
    let lsn = match ask(&svc.files, |p| {
        FileMsg::Stored(id, kind, name.into_boxed_str(), size, p)
    })
    .await
    {
        Ok(Ok(lsn)) => lsn,
        // Refused before anything was recorded (at the door, or over the orphan quota).
        Ok(Err(e)) | Err(e) => {
            remove_quietly(&path).await;
            return Err(e);
        }
    };
    // If this fails the file may stay unreferenced: start-up sweeps such files, and
    // deleting it here could race a record that becomes durable late.
    svc.journal.durable(lsn).await
}

fn kind_tag(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Artifact => "artifact",
        FileKind::Attachments => "attachments",
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(format!("Payload too large: the limit is {limit} bytes"))
    } else {
        Error::InvalidInput(format!("Malformed multipart upload: {}", e.body_text()))
    }
}

async fn write_stream(
    path: &FsPath,
    mut field: axum::extract::multipart::Field<'_>,
    limit: u64,
) -> Result<u64> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::TooLarge(format!(
                "Payload too large: the limit is {limit} bytes"
            )));
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(size)
}

/// fsyncs a directory so a rename in it is durable.
pub async fn sync_dir(dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| Error::Internal(format!("directory sync task failed: {e}")))??;
    Ok(())
}

async fn remove_quietly(path: &FsPath) {
    let _ = tokio::fs::remove_file(path).await;
}

/// Streams the job's file of `kind` (204 when there is none).
pub async fn serve_file(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    mime: &'static str,
    download: &str,
) -> Result<Response> {
    let Some(stored) = ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? else {
        return Ok(no_content());
    };
    let file = match tokio::fs::File::open(svc.files_dir.join(&*stored.file)).await {
        Ok(file) => file,
        // Replaced between the lookup and the open: the newer file is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(newer) = ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? else {
                return Ok(no_content());
            };
            return stream_file(
                tokio::fs::File::open(svc.files_dir.join(&*newer.file)).await?,
                newer.size,
                mime,
                download,
            );
        }
        Err(e) => return Err(e.into()),
    };
    stream_file(file, stored.size, mime, download)
}

fn stream_file(
    file: tokio::fs::File,
    size: u64,
    mime: &'static str,
    download: &str,
) -> Result<Response> {
    let stream = futures_util::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 << 10];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={download}")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
