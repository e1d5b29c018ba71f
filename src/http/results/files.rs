//! Stored files of a job: the artifact an agent uploads and the attachments a submitter
//! uploads (Testflinger's `artifacts_post`, `artifacts_get`, `attachments_post`), received
//! as multipart into a durable file within their bounds, compared when re-sent, and
//! streamed back.

use super::*;

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

/// Room for the multipart framing (boundaries, part headers) on top of the file itself:
/// the whole upload may exceed `--max-artifact-bytes` by at most this much.
const UPLOAD_FRAMING: u64 = 64 << 10;

/// Streams the multipart field `file` of `request` into a new durable file and records
/// it as the job's `kind` (see `receive_upload` for how it is received and bounded).
pub async fn store_upload(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    request: Request,
) -> Result<()> {
    let (name, size, reservation) = receive_upload(svc, id, kind, request, None).await?;
    let recorded = ask(&svc.files, |p| {
        FileMsg::Stored(id, kind, name.clone(), size, p)
    })
    .await;
    // Recorded: the artifact actor charges the file now. Otherwise the file is deleted
    // below, and its bytes count until then.
    let mut reservation = reservation;
    if let Ok(Ok(_)) = recorded {
        reservation = None;
    }
    let lsn = match recorded {
        Ok(Ok(lsn)) => lsn,
        // Attachments another upload stored while this one was received: a success only
        // if this one holds the same bytes (a retry sent while the first was in flight),
        // as for an upload made after they were stored.
        Ok(Err(e @ Error::Conflict(_))) if kind == FileKind::Attachments => {
            let same = same_as_stored(svc, id, kind, &name, size).await;
            svc.store.delete(vec![name]);
            drop(reservation);
            return match same? {
                true => Ok(()),
                false => Err(e),
            };
        }
        // Refused before anything was recorded (at the door, or over the orphan quota).
        Ok(Err(e)) | Err(e) => {
            svc.store.delete(vec![name]);
            drop(reservation);
            return Err(e);
        }
    };
    // If this fails the file may stay unreferenced: start-up sweeps such files, and
    // deleting it here could race a record that becomes durable late.
    svc.journal.durable(lsn).await
}

/// Whether the multipart field `file` of `request` holds exactly the bytes of the job's
/// stored file of `kind` (`false` when it has none): a client retrying an upload whose
/// answer it lost sends the same bytes again, and must not be told it replaced them.
///
/// Received like any upload (`receive_upload`: same limits, same refusals), but into
/// nothing: each chunk is compared with the stored file's next bytes as it arrives, so a
/// retry writes nothing to disk and takes no room for attachments (it needs none: a retry
/// of attachments that filled their submitter's share still succeeds).
pub async fn upload_matches_stored(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    request: Request,
) -> Result<bool> {
    let theirs = match ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? {
        None => None,
        Some(stored) => match svc.store.open(&stored.file, stored.size).await {
            Ok(download) => Some(download),
            // The stored file is missing: the new upload is not the same, it replaces it.
            Err(Error::Gone(_)) => {
                crate::journal::files::report_missing(&*svc.store, &stored.file);
                None
            }
            Err(e) => return Err(e),
        },
    };
    let verdict = Arc::new(Mutex::new(None));
    let comparing = Comparing {
        theirs,
        pending: Bytes::new(),
        same: true,
        verdict: verdict.clone(),
    };
    receive_upload(svc, id, kind, request, Some(Box::new(comparing))).await?;
    let same = verdict.lock().take();
    Ok(same == Some(true))
}

/// A file that is never written: what would be written to it is compared with a stored
/// file's bytes (`theirs`; `None`: there is none), whatever the chunk boundaries; its
/// `finish` tells whether they were all the same, in `verdict`.
struct Comparing {
    theirs: Option<Download>,
    /// Bytes of `theirs` read and not compared yet.
    pending: Bytes,
    /// Whether everything written so far matched.
    same: bool,
    verdict: Arc<Mutex<Option<bool>>>,
}

impl Comparing {
    /// `pending` holds bytes of `theirs` unless it has none left.
    async fn refill(&mut self) -> Result<()> {
        while self.pending.is_empty() {
            match self.theirs.as_mut() {
                Some(theirs) => match theirs.try_next().await? {
                    Some(chunk) => self.pending = chunk,
                    None => break,
                },
                None => break,
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl NewFile for Comparing {
    async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while self.same && !bytes.is_empty() {
            self.refill().await?;
            let n = self.pending.len().min(bytes.len());
            if n == 0 || self.pending[..n] != bytes[..n] {
                self.same = false;
                break;
            }
            self.pending = self.pending.slice(n..);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        if self.same {
            self.refill().await?;
            // Theirs must have ended too, and there must have been a stored file.
            self.same = self.pending.is_empty() && self.theirs.is_some();
        }
        *self.verdict.lock() = Some(self.same);
        Ok(())
    }

    async fn abandon(self: Box<Self>) {}
}

/// Whether the received file `name` of `size` bytes holds exactly the bytes of the job's
/// stored file of `kind` (`false` when it has none).
async fn same_as_stored(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    name: &str,
    size: u64,
) -> Result<bool> {
    let Some(stored) = ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? else {
        return Ok(false);
    };
    if stored.size != size {
        return Ok(false);
    }
    let theirs = match svc.store.open(&stored.file, stored.size).await {
        Ok(theirs) => theirs,
        // The stored file is missing: the new upload is not the same, it replaces it.
        Err(Error::Gone(_)) => {
            crate::journal::files::report_missing(&*svc.store, &stored.file);
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let ours = svc.store.open(name, size).await?;
    same_bytes(theirs, ours).await
}

/// Whether two downloads yield the same bytes, whatever their chunk boundaries.
async fn same_bytes(mut a: Download, mut b: Download) -> Result<bool> {
    /// Fills `buf` from `from` unless it still holds bytes; empty only at the end.
    async fn refill(from: &mut Download, buf: &mut Bytes) -> Result<()> {
        while buf.is_empty() {
            match from.try_next().await? {
                Some(chunk) => *buf = chunk,
                None => break,
            }
        }
        Ok(())
    }
    let (mut x, mut y) = (Bytes::new(), Bytes::new());
    loop {
        refill(&mut a, &mut x).await?;
        refill(&mut b, &mut y).await?;
        let n = x.len().min(y.len());
        if n == 0 {
            return Ok(x.is_empty() && y.is_empty());
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
        x = x.slice(n..);
        y = y.slice(n..);
    }
}

/// Streams the multipart field `file` of `request` into a new durable file, recorded
/// nowhere yet: its name and size. The file name is ours: nothing the client sends
/// becomes a path.
///
/// The bytes go to the file store (`svc.store`: a temporary file in the data dir, fsynced,
/// renamed to a fresh name and the directory fsynced; or chunks committed to the
/// journal's database) as they arrive, and are durable before the event that refers to the
/// file is logged: a crash at any point leaves the previous file (still referenced) or the
/// new one whole, never a torn one, and start-up sweeps what nothing refers to.
///
/// Bounded before anything is stored: a declared length over the limit, or a log that
/// cannot record the upload now, is refused before the body is read; the preamble, each
/// part's headers, the number of parts ([`crate::http::upload::Framing`]), other fields and the
/// whole body (multer's size limits) are bounded while it is read.
///
/// Attachments count against `--max-attachments-bytes` (and their submitter's share of
/// it) from before they are written, so uploads at once never together pass it: an upload
/// that surely cannot fit (nothing fits, or its declared length less the framing is more
/// than the room) is refused before its body is read; one that declares its length takes
/// that much (at most the file limit) at once, first come first served, and gives back
/// the framing once the file is whole; past what it holds (no length declared, or more
/// room than was left for the framing) each chunk is reserved before it is written. The
/// returned reservation holds the bytes until the caller records or deletes the file.
///
/// `into`, when given, takes the file's bytes instead of a new file of the store (which
/// is then neither created nor counted: nothing is written to disk).
async fn receive_upload(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    request: Request,
    mut into: Option<Box<dyn NewFile>>,
) -> Result<(Box<str>, u64, Option<Reservation>)> {
    let config = &svc.config;
    // An id no job has may only take what is left of the orphan quota: refused before
    // any byte is stored when nothing is.
    let orphan = kind == FileKind::Artifact && !svc.jobs.contains(id);
    let mut limit = config.max_artifact_bytes;
    if orphan {
        let room = svc.orphans.room();
        if room == 0 {
            return Err(svc.orphans.full());
        }
        limit = limit.min(room);
    }
    let over_quota = |e: Error| match e {
        Error::TooLarge(_) if orphan && limit < config.max_artifact_bytes => {
            svc.orphans.short_of(limit)
        }
        e => e,
    };
    let whole = limit.saturating_add(UPLOAD_FRAMING);
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            Error::InvalidInput("Expected a multipart/form-data upload with a boundary".into())
        })?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > whole) {
        return Err(over_quota(upload_too_large(limit)));
    }
    let mut reservation = match kind {
        FileKind::Attachments if into.is_none() => {
            let owner = svc.jobs.owner(id).flatten();
            let least = declared.map_or(0, |n| n.saturating_sub(UPLOAD_FRAMING));
            svc.attachments.fits(owner.as_ref(), least.max(1))?;
            let mut reservation = svc.attachments.reserve(owner);
            // Refused only for the framing's few bytes: the chunks are reserved instead.
            let _ = reservation.grow(declared.map_or(0, |n| n.min(limit)));
            Some(reservation)
        }
        _ => None,
    };
    // Nothing is written to disk for an upload the log could not record anyway.
    svc.journal.writable()?;
    let framing = crate::http::upload::Framing::new(
        request.into_body().into_data_stream(),
        &boundary,
        crate::http::upload::FramingLimits {
            header_bytes: config.max_part_header_bytes,
            parts: config.max_upload_parts,
        },
    );
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(whole)
            .per_field(config.max_field_bytes)
            .for_field("file", limit),
    );
    let mut multipart = multer::Multipart::with_constraints(framing, boundary, constraints);
    let name = format!("{id}.{}.{}", kind_tag(kind), uuid::Uuid::new_v4().simple());
    let mut stored: Option<(u64, Box<dyn NewFile>)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                if let Some((_, file)) = stored.take() {
                    file.abandon().await;
                }
                return Err(multipart_error(e, limit));
            }
        };
        if field.name() != Some("file") || stored.is_some() {
            // Read and dropped (bounded by --max-field-bytes, or the file limit).
            continue;
        }
        let mut file = match into.take() {
            Some(file) => file,
            None => svc.store.create(&name).await?,
        };
        match write_stream(&mut *file, field, limit, reservation.as_mut()).await {
            Ok(size) => stored = Some((size, file)),
            Err(e) => {
                file.abandon().await;
                return Err(over_quota(e));
            }
        }
    }
    let Some((size, writing)) = stored else {
        return Err(Error::InvalidInput("The upload has no `file` field".into()));
    };
    writing.finish().await?;
    if let Some(reservation) = reservation.as_mut() {
        reservation.trim(size);
    }
    Ok((name.into_boxed_str(), size, reservation))
}

fn kind_tag(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Artifact => "artifact",
        FileKind::Attachments => "attachments",
    }
}

/// The whole upload is over `limit` (the file's) plus [`UPLOAD_FRAMING`]: the file, or
/// the other parts and framing, or both, are too large.
fn upload_too_large(limit: u64) -> Error {
    Error::TooLarge(format!(
        "Payload too large: an upload (its file, other fields, part headers and boundaries \
         together) is at most {} bytes; its file at most {limit} (--max-artifact-bytes)",
        limit.saturating_add(UPLOAD_FRAMING)
    ))
}

fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!(
        "Payload too large: the file is at most {limit} bytes (--max-artifact-bytes)"
    ))
}

fn multipart_error(e: multer::Error, limit: u64) -> Error {
    match e {
        multer::Error::StreamReadFailed(cause) => {
            match cause.downcast::<crate::http::upload::Refused>() {
                Ok(refused) => refused.0,
                Err(cause) => Error::InvalidInput(format!("could not read the upload: {cause}")),
            }
        }
        multer::Error::FieldSizeExceeded {
            limit: field,
            field_name,
        } => Error::TooLarge(format!(
            "Payload too large: field {:?} is limited to {field} bytes",
            field_name.unwrap_or_default()
        )),
        multer::Error::StreamSizeExceeded { .. } => upload_too_large(limit),
        other => Error::InvalidInput(format!("Malformed multipart upload: {other}")),
    }
}

/// Streams `field` into `file`, each chunk counted in `reservation` (if any) before it is
/// written; its size.
async fn write_stream(
    file: &mut dyn NewFile,
    mut field: multer::Field<'_>,
    limit: u64,
    mut reservation: Option<&mut Reservation>,
) -> Result<u64> {
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        if let Some(reservation) = reservation.as_deref_mut() {
            reservation.cover(size)?;
        }
        file.write(&chunk).await?;
    }
    Ok(size)
}

/// Streams the job's file of `kind` (204 when there is none).
pub async fn serve_file(
    svc: &Services,
    id: JobId,
    kind: FileKind,
    mime: &'static str,
    download_name: &str,
) -> Result<Response> {
    let Some(stored) = ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? else {
        return Ok(no_content());
    };
    let download = match svc.store.open(&stored.file, stored.size).await {
        Ok(download) => download,
        Err(e) => {
            // Replaced between the lookup and the open: the newer file is the answer.
            let Some(newer) = ask(&svc.files, |p| FileMsg::Get(id, kind, p)).await? else {
                return Ok(no_content());
            };
            if newer.file == stored.file {
                return Err(unreadable(svc, id, kind, &stored.file, e));
            }
            let download = match svc.store.open(&newer.file, newer.size).await {
                Ok(download) => download,
                Err(e) => return Err(unreadable(svc, id, kind, &newer.file, e)),
            };
            return stream_file(download, newer.size, mime, download_name);
        }
    };
    stream_file(download, stored.size, mime, download_name)
}

/// The answer for the job's file of `kind`, stored as `name`, that the store could not
/// open with `e`: when it is missing (still recorded, so not replaced), a 410 that says
/// whose file it is and names no path, and an error in the server's log that does.
fn unreadable(svc: &Services, id: JobId, kind: FileKind, name: &str, e: Error) -> Error {
    match e {
        Error::Gone(_) => {
            crate::journal::files::report_missing(&*svc.store, name);
            let what = match kind {
                FileKind::Artifact => "artifact",
                FileKind::Attachments => "attachments",
            };
            Error::Gone(format!(
                "the {what} of job {id} was recorded but its file is missing from the server's storage; \
                 an operator must restore it (the server's log names the file)"
            ))
        }
        other => other,
    }
}

fn stream_file(
    download: Download,
    size: u64,
    mime: &'static str,
    download_name: &str,
) -> Result<Response> {
    let stream = download.map_err(|e| {
        Box::new(std::io::Error::other(e.message().to_owned()))
            as Box<dyn std::error::Error + Send + Sync>
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={download_name}")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
