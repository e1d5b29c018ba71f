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
use super::wire::{path_id, PHASES};
use crate::actors::files::FileMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::results::ResultMsg;
use crate::actors::{ask, Services};
use crate::error::{Error, Result};
use crate::model::{FileKind, JobId, Name};

/// `POST /v1/result/<id>`: merge top-level fields into the job's result.
pub async fn result_post(State(svc): State<Services>, Path(id): Path<String>, request: Request) -> Result<Response> {
    let id = path_id(&id)?;
    let body = read_body(request, svc.config.max_result_bytes).await?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return Err(Error::InvalidInput("Invalid result data".into()));
    };
    let state: Option<Name> = fields.get("job_state").and_then(Value::as_str).map(Name::from);
    let mut lsn = ask(&svc.results, |p| ResultMsg::Merge(id, body, p)).await??;
    if let Some(state) = state {
        if let Some(changed) = ask(&svc.registry, |p| RegistryMsg::Report(id, state, p)).await?? {
            lsn = lsn.max(changed);
        }
    }
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// `GET /v1/result/<id>`: the result document, with the registry's `job_state`.
pub async fn result_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    let (job, doc) = tokio::join!(
        ask(&svc.registry, |p| RegistryMsg::Get(id, p)),
        ask(&svc.results, |p| ResultMsg::Get(id, p))
    );
    let (job, doc) = (job?, doc?);
    if job.is_none() && doc.as_ref().is_none_or(|d| d.fields.is_none()) {
        return Ok(no_content());
    }
    let fields = doc.as_ref().map(|d| d.fields_map()).unwrap_or_default();
    let result = match job {
        // The registry owns the lifecycle: its state wins over whatever was posted.
        Some(job) => with_state(fields, &job.state),
        None => fields,
    };
    Ok(json_bytes(StatusCode::OK, Bytes::from(serde_json::to_vec(&result).expect("maps serialise"))))
}

/// `fields` with `job_state` set to `state`: in place when posted, else first (where
/// Testflinger's initial `{"job_state": "waiting"}` puts it).
fn with_state(mut fields: Map<String, Value>, state: &str) -> Map<String, Value> {
    if let Some(slot) = fields.get_mut("job_state") {
        *slot = Value::from(state);
        return fields;
    }
    let mut result = Map::with_capacity(fields.len() + 1);
    result.insert("job_state".into(), Value::from(state));
    result.extend(fields);
    result
}

/// `POST /v1/result/<id>/output`: append raw text to the job's output stream.
pub async fn output_post(State(svc): State<Services>, Path(id): Path<String>, request: Request) -> Result<Response> {
    let id = path_id(&id)?;
    let body = read_body(request, svc.config.max_output_bytes).await?;
    if body.is_empty() {
        return Ok(ok());
    }
    let phase = current_phase(&svc, id).await?;
    let lsn = ask(&svc.results, |p| ResultMsg::AppendOutput(id, phase, body, p)).await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// The phase a legacy output chunk belongs to: the job's current phase, else `test`.
async fn current_phase(svc: &Services, id: JobId) -> Result<Name> {
    let state = ask(&svc.registry, |p| RegistryMsg::Get(id, p)).await?.map(|j| j.state);
    Ok(Name::from(state.as_deref().filter(|s| PHASES.contains(s)).unwrap_or("test")))
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
pub async fn artifact_post(State(svc): State<Services>, Path(id): Path<String>, request: Request) -> Result<Response> {
    let id = path_id(&id)?;
    store_upload(&svc, id, FileKind::Artifact, request).await?;
    Ok(ok())
}

/// `GET /v1/result/<id>/artifact`: the artifact, streamed from disk.
pub async fn artifact_get(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    serve_file(&svc, id, FileKind::Artifact, "application/octet-stream", "artifact.tar.gz").await
}

/// Streams the multipart field `file` of `request` into a new durable file and records
/// it as the job's `kind`. The file name is ours: nothing the client sends becomes a path.
pub async fn store_upload(svc: &Services, id: JobId, kind: FileKind, request: Request) -> Result<()> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| Error::InvalidInput(format!("Expected a multipart/form-data upload: {}", e.body_text())))?;
    let limit = svc.config.max_artifact_bytes;
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
                return Err(e);
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
    let recorded = async {
        let lsn = ask(&svc.files, |p| FileMsg::Stored(id, kind, name.into_boxed_str(), size, p)).await??;
        svc.journal.durable(lsn).await
    };
    if let Err(e) = recorded.await {
        // Not recorded (or not durably): the file may be unreferenced; start-up sweeps
        // unreferenced files, and deleting it here could race a durable-late record.
        return Err(e);
    }
    Ok(())
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

async fn write_stream(path: &FsPath, mut field: axum::extract::multipart::Field<'_>, limit: u64) -> Result<u64> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::TooLarge(format!("Payload too large: the limit is {limit} bytes")));
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
pub async fn serve_file(svc: &Services, id: JobId, kind: FileKind, mime: &'static str, download: &str) -> Result<Response> {
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
            return stream_file(tokio::fs::File::open(svc.files_dir.join(&*newer.file)).await?, newer.size, mime, download);
        }
        Err(e) => return Err(e.into()),
    };
    stream_file(file, stored.size, mime, download)
}

fn stream_file(file: tokio::fs::File, size: u64, mime: &'static str, download: &str) -> Result<Response> {
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
