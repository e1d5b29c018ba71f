//! Job endpoints: submit, pop, get, position, cancel (names follow Testflinger's
//! `api/v1.py`: `job_post`, `job_get`, `job_get_id`, `job_position_get`, `action_post`).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use std::time::Duration;

use serde_json::{json, Value};

use super::respond::{json_bytes, json_value, no_content, ok, read_body, text};
use super::wire::{self, path_id};
use crate::access::Caller;
use crate::actors::files::{attachments_not_replaced, FileMsg};
use crate::actors::queue::QueueMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::results::ResultMsg;
use crate::actors::{ask, ask_admitted, Callee, Services};
use crate::dispatch;
use crate::error::{Error, Result};
use crate::model::distinct::Distinct;
use crate::model::index::Search;
use crate::model::registry::Attachments;
use crate::model::{FileKind, JobId, Name};

/// Most `queue` parameters one pop may name.
const MAX_POP_QUEUES: usize = 256;

/// `POST /v1/job`: submit (or resubmit) a job.
pub async fn job_post(
    State(svc): State<Services>,
    caller: Caller,
    request: Request,
) -> Result<Response> {
    let body = read_body(
        request,
        svc.config.max_job_bytes,
        "a job document (--max-job-bytes)",
    )
    .await?;
    let submission = wire::parse_job(&body)?;
    super::events::check_job_webhook(&svc.config, &submission.body)?;
    check_some_agent_may_run(&svc, &submission.queue, &submission.exclude).await?;
    let id = submission.id;
    let by = crate::access::check_submission(&svc, &caller, &submission)?;
    // A job removed with this id may still have data in the other partitions: wait for
    // its removal to end, or the new job would show the old one's results and lose its
    // own to the removal (`actors::purges`). The registry refuses (503) a submission
    // that raced a removal begun after this wait; it waits again then, a few times.
    let mut tries = 0;
    let lsn = loop {
        svc.purges.settled(id).await;
        let (submission, by) = (submission.clone(), by.clone());
        match ask(&svc.registry, |p| RegistryMsg::SubmitBy(submission, by, p)).await? {
            // Also when that removal has ended since: then the next try goes through.
            Err(Error::Unavailable(_)) if tries < 3 => tries += 1,
            answer => break answer?,
        }
    };
    svc.journal.durable(lsn).await?;
    // Written directly (a job id needs no escaping): the same text as the JSON value,
    // without building one for every submit.
    Ok(json_bytes(
        StatusCode::OK,
        bytes::Bytes::from(format!(r#"{{"job_id":"{id}"}}"#)),
    ))
}

/// Upstream's submit check: a job whose `exclude_agents` leaves none of the agents serving
/// its queue could never run, so it is refused (422). Unlike upstream, a queue no agent has
/// registered for yet is not refused: its agents may come later (and flinger's own users
/// submit to such queues).
async fn check_some_agent_may_run(svc: &Services, queue: &Name, exclude: &[Name]) -> Result<()> {
    if exclude.is_empty() {
        return Ok(());
    }
    let (queue, exclude) = (queue.clone(), exclude.to_vec());
    let (serving, allowed) = super::agents::read_agents(svc, move |agents| {
        let serving: Vec<&Name> = agents.serving(&queue).map(|(name, _)| name).collect();
        let allowed = serving.iter().any(|name| !exclude.contains(name));
        (serving.len(), allowed)
    })
    .await?;
    if serving > 0 && !allowed {
        return Err(Error::Validation {
            message: "There are no agents on the specified queue that are allowed to run this job"
                .into(),
            field: "exclude_agents".into(),
            reason: format!("excludes all {serving} agents serving the queue"),
        });
    }
    Ok(())
}

/// `GET /v1/job?queue=a&queue=b[&wait=SECONDS]`: hand the agent the best waiting job
/// of those queues; with `wait` (whole seconds, at most [`dispatch::MAX_WAIT_SECS`]),
/// hold the request until one arrives or the time is up (204). See [`crate::dispatch`].
pub async fn job_get(
    State(svc): State<Services>,
    caller: Caller,
    request: Request,
) -> Result<Response> {
    // The request goes into a plain function: borrowed here, it would be kept in the
    // future axum boxes (and moves) for every pop, across the pop's awaits.
    let (queues, wait, agent) = pop_request(request)?;
    if queues.is_empty() {
        // Only empty names (`?queue=`): no job has one, so none is waiting (upstream: 204).
        return Ok(no_content());
    }
    let client = caller.client_id().map(Name::from);
    let job = if wait == 0 {
        dispatch::pop(&svc, &queues, agent, client).await?
    } else {
        // Boxed: a long poll is rare next to plain pops, whose future would otherwise
        // carry room for both.
        let wait = Duration::from_secs(wait);
        Box::pin(dispatch::pop_waiting(&svc, &queues, agent, client, wait)).await?
    };
    match job {
        Some(body) => Ok(json_bytes(StatusCode::OK, body)),
        None => Ok(no_content()),
    }
}

/// A pop's queues (distinct, in the order named), its `wait` in seconds, and the agent's
/// name from its cookie. No `queue` parameter is a 400 (as upstream); empty names are
/// skipped, so `?queue=` alone gives no queues (upstream pops from `[""]`: 204).
fn pop_request(request: Request) -> Result<(Vec<Name>, u64, Option<Name>)> {
    let mut queues: Distinct<Name> = Distinct::default();
    let mut named = false;
    let mut wait = 0;
    // De-duplicated, and the cap checked, as names arrive, so a URL of thousands of
    // `queue=` parameters costs linear time.
    for (key, value) in wire::query_pairs(request.uri().query().unwrap_or(""))? {
        if key == "wait" {
            wait = value
                .parse::<u64>()
                .ok()
                .filter(|&w| w <= dispatch::MAX_WAIT_SECS)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "wait must be whole seconds from 0 to {}, got {value:?}",
                        dispatch::MAX_WAIT_SECS
                    ))
                })?;
            continue;
        }
        if key != "queue" {
            continue;
        }
        named = true;
        if value.is_empty() {
            continue;
        }
        if queues.contains(&*value) {
            continue;
        }
        wire::check_queue_name(&value)?;
        if queues.len() == MAX_POP_QUEUES {
            return Err(Error::InvalidInput(format!(
                "At most {MAX_POP_QUEUES} queues per request"
            )));
        }
        queues.insert(Name::from(&*value));
    }
    if !named {
        return Err(Error::InvalidInput(
            "No queue(s) specified in request".into(),
        ));
    }
    Ok((
        queues.into_vec(),
        wait,
        wire::agent_cookie(request.headers()),
    ))
}

/// `GET /v1/job/<id>`: the stored job document.
pub async fn job_get_id(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    match svc.jobs.get(id) {
        Some(job) => Ok(json_bytes(StatusCode::OK, job.body)),
        None => Ok(no_content()),
    }
}

/// `DELETE /v1/job/<id>`: an operator removes a job and everything it owns (results,
/// logs, artifact, attachments), whatever its state; also the data of an id no job has.
/// Durable (logged) like any change. Operator-only: with access control on, the admin
/// role (the access table's row); with it off, only loopback clients. 404 when nothing is
/// known by that id.
pub async fn job_delete(
    State(svc): State<Services>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    crate::access::operator_only(&caller, request.extensions(), "Deleting a job")?;
    let id = path_id(&id)?;
    // All three partitions let the request in before any is asked, so a 503 deletes
    // nothing.
    let passes = (
        svc.registry.admit()?,
        svc.results.admit()?,
        svc.files.admit()?,
    );
    // Its own task: a client that goes away mid-way must not leave the job removed and
    // its data kept, for a job made again with the id to take over.
    let removal = tokio::spawn({
        let svc = svc.clone();
        async move {
            let (job, _purge) =
                ask_admitted(&svc.registry, passes.0, |p| RegistryMsg::Delete(id, p)).await??;
            let results =
                ask_admitted(&svc.results, passes.1, |p| ResultMsg::Delete(id, p)).await??;
            let files = ask_admitted(&svc.files, passes.2, |p| FileMsg::Delete(id, p)).await??;
            // The job's event outbox goes with it (undelivered events are dropped).
            let hooks = ask(&*svc.webhooks, |p| {
                crate::actors::webhooks::WebhookMsg::Expire(vec![id], p)
            })
            .await??;
            Ok::<_, Error>((job, results, files, hooks))
        }
    });
    let (job, results, files, hooks) = removal
        .await
        .map_err(|e| Error::Internal(format!("the deletion's task failed: {e}")))??;
    let mut found = false;
    for ticket in [job, results, files, hooks].into_iter().flatten() {
        found = true;
        svc.journal.durable(ticket).await?;
    }
    if !found {
        return Err(Error::NotFound(format!("Nothing is known about job {id}")));
    }
    Ok(ok())
}

/// The text Testflinger answers for a job that is not waiting.
const NOT_WAITING: &str = "Job not found or already started";

/// `GET /v1/job/<id>/position`: how many waiting jobs of its queue are ahead of it.
pub async fn job_position_get(
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = path_id(&id)?;
    let gone = || Error::Gone(NOT_WAITING.into());
    let job = svc.jobs.get(id).filter(|j| j.waiting).ok_or_else(gone)?;
    let queue = svc.queues.get(&job.queue).ok_or_else(gone)?;
    let position = ask(queue.actor(), |p| QueueMsg::Position(id, p))
        .await
        .ok()
        .flatten()
        .ok_or_else(gone)?;
    Ok(text(position.to_string()))
}

/// `POST /v1/job/<id>/action`: `{"action": "cancel"}`.
pub async fn action_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id: JobId = path_id(&id)?;
    let body = read_body(request, 64 << 10, "an action's body").await?;
    let body = wire::parse_json(&body)?;
    let action = body
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::InvalidInput("Invalid action: expected {\"action\": \"cancel\"}".into())
        })?;
    if action != "cancel" {
        return Err(Error::InvalidInput(format!(
            "Invalid action {action:?}: only \"cancel\" is supported"
        )));
    }
    // Upstream's `ActionIn` refuses keys other than `action` (the CLI sends none); a
    // missing or unknown action stays the original server's 400, checked first.
    if let Value::Object(map) = &body {
        wire::only_keys(map, &["action"])?;
    }
    let lsn = ask(&svc.registry, |p| RegistryMsg::Cancel(id, p)).await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// States `/v1/job/search` accepts: Testflinger's list, plus the states it forgot
/// (`waiting`, `running`, `complete`, `resubmitted`), plus `active` (= not finished).
pub(crate) const SEARCH_STATES: &[&str] = &[
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "allocated",
    "reserve",
    "cleanup",
    "cancelled",
    "completed",
    "complete",
    "waiting",
    "resubmitted",
    "running",
    "active",
];

/// Refuses a `state` filter no job can have (422 naming the ones it could), for the search
/// API and the dashboard's job list alike.
pub(crate) fn check_search_state(value: &str) -> Result<()> {
    if SEARCH_STATES.contains(&value) {
        Ok(())
    } else {
        Err(Error::validation(
            "state",
            format!("Must be one of: {}.", SEARCH_STATES.join(", ")),
        ))
    }
}

/// `GET /v1/job/search?tags=a&tags=b&match=any|all&state=s&limit=n`: jobs by tags and
/// state, newest first, at most `limit` (default 1000, at most 10000).
pub async fn job_search(State(svc): State<Services>, request: Request) -> Result<Response> {
    let requester = crate::turns::requester(request.extensions());
    let pairs = wire::query_pairs(request.uri().query().unwrap_or(""))?;
    let limit = super::queues::limit_param(&pairs)?;
    let mut tags: Vec<String> = Vec::new();
    let mut states: Vec<String> = Vec::new();
    let mut match_all = false;
    for (key, value) in pairs {
        match key.as_ref() {
            "tags" => tags.push(value.into_owned()),
            "state" => {
                check_search_state(&value)?;
                states.push(value.into_owned())
            }
            "match" if value == "any" || value == "all" => match_all = value == "all",
            "match" => return Err(Error::validation("match", "Must be one of: any, all.")),
            _ => {}
        }
    }
    // Each tag once: a repeated tag changes nothing but the work.
    let mut distinct: Vec<Name> = Vec::with_capacity(tags.len());
    let mut seen = std::collections::HashSet::with_capacity(tags.len());
    for tag in tags {
        if seen.insert(tag.clone()) {
            distinct.push(Name::from(tag));
        }
    }
    let search = Search {
        tags: distinct,
        match_all,
        states,
    };
    let jobs = {
        let _turn = svc.searches.take(requester).await;
        svc.jobs.search(&search, limit).await
    };
    let list: Vec<Value> = jobs
        .into_iter()
        .map(|(id, job)| json!({"job_id": id.to_string(), "created_at": wire::iso_z(job.created_at), "job_state": job.state}))
        .collect();
    Ok(json_value(StatusCode::OK, &Value::Array(list)))
}

/// `POST /v1/job/<id>/attachments`: the job's input files (multipart `file`); the job
/// becomes dispatchable once they are stored.
pub async fn attachments_post(
    State(svc): State<Services>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    // Refuse before receiving gigabytes for a job that cannot take them.
    let job = svc.jobs.get(id);
    match job {
        Some(job) if job.waiting => match job.attachments {
            // Stored already, though perhaps not durably yet. testflinger-cli retries an
            // upload whose answer it lost with the same archive: that retry succeeds as
            // the first upload did; other bytes would replace them, and are refused.
            Attachments::Complete => {
                let kind = FileKind::Attachments;
                if !super::results::upload_matches_stored(&svc, id, kind, request).await? {
                    let why = "and this one's content differs";
                    return Err(attachments_not_replaced(id, why));
                }
                svc.journal.durable(svc.journal.settled()).await?;
                return Ok(ok());
            }
            Attachments::None => {
                return Err(Error::Validation {
                    message: format!("Job {id} not awaiting attachments"),
                    field: "job_id".into(),
                    reason: "no attachments declared".into(),
                })
            }
            Attachments::Waiting => {}
        },
        _ => {
            return Err(Error::Validation {
                message: format!("Job {id} is not valid"),
                field: "job_id".into(),
                reason: "not a waiting job".into(),
            })
        }
    }
    super::results::store_upload(&svc, id, FileKind::Attachments, request).await?;
    // `None`: a concurrent upload marked them arrived, perhaps not durably yet.
    let ticket = ask(&svc.registry, |p| RegistryMsg::AttachmentsArrived(id, p))
        .await??
        .unwrap_or_else(|| svc.journal.settled());
    svc.journal.durable(ticket).await?;
    Ok(ok())
}

/// `GET /v1/job/<id>/attachments`: the job's input files.
pub async fn attachments_get(
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = path_id(&id)?;
    super::results::serve_file(
        &svc,
        id,
        FileKind::Attachments,
        "application/gzip",
        "attachments.tar.gz",
    )
    .await
}
