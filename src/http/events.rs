//! Job events: `POST /v1/job/<id>/events` (upstream's `agents_status_post`: the agent
//! reports what its job is doing, for the job's `job_status_webhook`) and flinger's
//! `GET /v1/job/<id>/events`, where each job's webhook deliveries stand.
//!
//! Upstream forwards the post to the webhook inside the agent's request and answers with
//! the receiver's status; here the post is recorded (its new events only) and answered
//! at once, and `actors::webhooks` delivers it. The body and its checks are upstream's
//! (`StatusUpdate` schema, 400 bad id, 404 unknown job, 403 for a webhook whose scheme or
//! host differs from `WEBHOOK_URL`), plus bounds on every size (413).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::respond::{json_value, read_body};
use super::wire::{iso_z, json_object_body, INVALID_JOB_ID};
use crate::actors::webhooks::{split_url, EventsPost, WebhookMsg};
use crate::actors::{ask, Services};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::webhooks::{JobEvent, Standing};
use crate::model::{JobId, Name};

/// Upstream's refusal of a webhook outside `WEBHOOK_URL`.
const INVALID_WEBHOOK: &str = "Invalid job_status_webhook URL specified";

fn job_id(text: &str) -> Result<JobId> {
    JobId::parse(text).ok_or_else(|| Error::InvalidInput(INVALID_JOB_ID.into()))
}

/// A string field of the post: `Ok(None)` when absent or null, 422 when not a string,
/// 413 when longer than `limit` bytes (`setting` names the limit).
fn string_field(
    map: &Map<String, Value>,
    field: &str,
    limit: usize,
    setting: &str,
) -> Result<Option<String>> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => within(field, s, limit, setting).map(|()| Some(s.clone())),
        Some(_) => Err(Error::validation(field, "Not a valid string.")),
    }
}

/// 413 when the string `value` of `field` is longer than `limit` bytes (`setting` names
/// the limit).
fn within(field: &str, value: &str, limit: usize, setting: &str) -> Result<()> {
    if value.len() > limit {
        return Err(Error::TooLarge(format!(
            "{field} is {} bytes, the limit is {limit} ({setting})",
            value.len()
        )));
    }
    Ok(())
}

/// The submit's share of the webhook URL rules: a job whose `job_status_webhook` is longer
/// than `--max-webhook-url-bytes` is refused at submit (413, the message its agent's event
/// posts would get), instead of being accepted and then having every event post about it
/// refused. Only a document that mentions the field is parsed again, and only for it.
pub fn check_job_webhook(config: &Config, job: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Hooked {
        #[serde(default)]
        job_status_webhook: Option<String>,
    }
    static FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"job_status_webhook\""));
    if FIELD.find(job).is_none() {
        return Ok(());
    }
    // The schema checked its type at parse: anything but a string is not a URL to bound.
    match serde_json::from_slice::<Hooked>(job) {
        Ok(Hooked {
            job_status_webhook: Some(url),
        }) => within(
            "job_status_webhook",
            &url,
            config.max_webhook_url_bytes,
            "--max-webhook-url-bytes",
        ),
        _ => Ok(()),
    }
}

/// Rejects keys outside `known` as marshmallow does (422 "Unknown field.").
fn only_known(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<()> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(Error::unknown_field(&format!("{prefix}{key}"))),
        None => Ok(()),
    }
}

/// Parses and checks upstream's `StatusUpdate` body.
fn parse_post(svc: &Services, body: &[u8]) -> Result<EventsPost> {
    let config = &svc.config;
    let detail_limit = config.max_event_detail_bytes;
    let map = json_object_body(body)?;
    only_known(
        &map,
        &["agent_id", "job_queue", "job_status_webhook", "events"],
        "",
    )?;
    let url = string_field(
        &map,
        "job_status_webhook",
        config.max_webhook_url_bytes,
        "--max-webhook-url-bytes",
    )?
    .ok_or_else(|| Error::validation("job_status_webhook", "Missing data for required field."))?;
    let (scheme, authority) =
        split_url(&url).map_err(|_| Error::validation("job_status_webhook", "Not a valid URL."))?;
    if !matches!(scheme.as_str(), "http" | "https") {
        return Err(Error::validation("job_status_webhook", "Not a valid URL."));
    }
    let name = |field: &str| -> Result<Option<Name>> {
        Ok(string_field(&map, field, detail_limit, "--max-event-detail-bytes")?.map(Name::from))
    };
    let (agent_id, job_queue) = (name("agent_id")?, name("job_queue")?);
    let posted = match map.get("events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(Error::validation("events", "Not a valid list.")),
    };
    if posted.len() > config.max_job_events {
        return Err(Error::TooLarge(format!(
            "{} events in one post; at most {} are kept per job (--max-job-events)",
            posted.len(),
            config.max_job_events
        )));
    }
    let mut events = Vec::with_capacity(posted.len());
    for (i, event) in posted.iter().enumerate() {
        let Value::Object(event) = event else {
            return Err(Error::validation(
                &format!("events.{i}"),
                "Invalid input type.",
            ));
        };
        only_known(
            event,
            &["event_name", "timestamp", "detail"],
            &format!("events.{i}."),
        )?;
        let field = |key: &str| -> Result<Option<String>> {
            string_field(event, key, detail_limit, "--max-event-detail-bytes").map_err(
                |e| match e {
                    Error::Validation { reason, .. } => {
                        Error::validation(&format!("events.{i}.{key}"), reason)
                    }
                    other => other,
                },
            )
        };
        let required = |key: &str| -> Result<String> {
            field(key)?.ok_or_else(|| {
                Error::validation(
                    &format!("events.{i}.{key}"),
                    "Missing data for required field.",
                )
            })
        };
        events.push(JobEvent {
            name: required("event_name")?.into(),
            timestamp: required("timestamp")?.into(),
            detail: field("detail")?.map(String::into_boxed_str),
        });
    }
    // Only the configured receiver, as upstream: same scheme and host:port.
    let Some(allowed) = &config.webhook_url else {
        return Err(Error::Forbidden(format!(
            "{INVALID_WEBHOOK}: this server forwards job events to no webhook (WEBHOOK_URL is not set)"
        )));
    };
    let allowed = split_url(allowed).map_err(Error::Internal)?;
    if (scheme, authority) != allowed {
        return Err(Error::Forbidden(INVALID_WEBHOOK.into()));
    }
    Ok(EventsPost {
        url: url.into_boxed_str(),
        agent_id,
        job_queue,
        events,
    })
}

/// `POST /v1/job/<id>/events`: records the post's new events for delivery and answers
/// at once with the job's delivery view (as `GET`).
pub async fn job_events_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = job_id(&id)?;
    if !svc.jobs.contains(id) {
        return Err(Error::NotFound("Job not found".into()));
    }
    let config = &svc.config;
    // Every event at its largest (three strings at the detail limit and JSON framing),
    // the URL and the two names, and room for escaping.
    let limit = config
        .max_job_events
        .saturating_mul(3 * config.max_event_detail_bytes + 256)
        .saturating_add(config.max_webhook_url_bytes + 2 * config.max_event_detail_bytes)
        .saturating_mul(2)
        .saturating_add(64 << 10);
    let body = super::wire::empty_as_object(read_body(request, limit, "a job's events body (as --max-job-events, --max-event-detail-bytes and --max-webhook-url-bytes allow)").await?);
    let post = parse_post(&svc, &body)?;
    let ticket = ask(&svc.webhooks, |p| WebhookMsg::Post(id, post, p)).await??;
    // A repeat changes nothing, but its 200 must not promise more than the original's.
    let ticket = ticket.unwrap_or_else(|| svc.journal.settled());
    svc.journal.durable(ticket).await?;
    Ok(json_value(StatusCode::OK, &view(&svc, id)))
}

/// `GET /v1/job/<id>/events`: where the job's webhook deliveries stand.
pub async fn job_events_get(
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = job_id(&id)?;
    if !svc.jobs.contains(id) {
        return Err(Error::NotFound("Job not found".into()));
    }
    Ok(json_value(StatusCode::OK, &view(&svc, id)))
}

/// The delivery view: `state` is `none` (no events), `pending`, `failing` (the current
/// delivery failed at least once: `attempts`, `last_error`), `delivered` or `gave up`
/// (`gave_up.reason`).
fn view(svc: &Services, id: JobId) -> Value {
    let (url, events, delivered, standing, gave_up) = {
        let outboxes = svc.hooks.outboxes.read();
        match outboxes.get(id) {
            None => (None, 0, 0, None, None),
            Some(o) => (
                Some(o.url.to_string()),
                o.events.len(),
                o.delivered,
                Some(o.standing()),
                o.gave_up.clone(),
            ),
        }
    };
    let progress = svc.hooks.progress(id).unwrap_or_default();
    let state = match standing {
        None => "none",
        Some(Standing::Delivered) => "delivered",
        Some(Standing::GaveUp) => "gave up",
        Some(Standing::Pending) if progress.attempts > 0 => "failing",
        Some(Standing::Pending) => "pending",
    };
    json!({
        "job_id": id.to_string(),
        "webhook": url,
        "state": state,
        "events": events,
        "delivered": delivered,
        "attempts": progress.attempts,
        "last_error": progress.last_error.as_deref(),
        "last_attempt_at": progress.last_attempt_at.map(iso_z),
        "next_attempt_at": progress.next_attempt_at.map(iso_z),
        "gave_up": gave_up.map(|g| json!({"at": iso_z(g.at), "reason": &*g.reason})),
    })
}
