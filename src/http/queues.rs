//! Queue views: which agents serve a queue, which jobs it has, how long jobs wait
//! (Testflinger's `queues_agents_get`, `queue_jobs_get`, `queue_wait_times_get`).

use std::borrow::Cow;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::agents::read_agents;
use super::respond::{json_value, no_content};
use super::wire::{iso_z, query_pairs};
use crate::actors::Services;
use crate::error::{Error, Result};

/// Default and largest number of jobs a listing returns.
pub const LIST_DEFAULT: usize = 1000;
/// Largest `limit` a listing accepts.
pub const LIST_MAX: usize = 10_000;

/// The `limit` query parameter (default [`LIST_DEFAULT`], at most [`LIST_MAX`]).
pub fn limit_param(pairs: &[(Cow<'_, str>, Cow<'_, str>)]) -> Result<usize> {
    match pairs.iter().find(|(k, _)| k == "limit") {
        None => Ok(LIST_DEFAULT),
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIST_MAX).contains(n))
            .ok_or_else(|| {
                Error::InvalidInput(format!("limit must be 1 to {LIST_MAX}, got {v:?}"))
            }),
    }
}

/// `GET /v1/queues/<queue>/agents`: the agents that list the queue (404 when none).
pub async fn queues_agents_get(
    State(svc): State<Services>,
    Path(queue): Path<String>,
) -> Result<Response> {
    crate::http::wire::check_queue_name(&queue)?;
    let wanted = queue.clone();
    let mut agents = read_agents(&svc, move |agents| {
        // The agents that serve it (an index), not every record.
        agents
            .serving(&wanted)
            .map(|(name, record)| {
                let fields = record.fields_map();
                // Upstream's `AgentOut` fields, each only when the agent posted it (as
                // marshmallow dumps them), except `state`: the CLI reads `agent["state"]`
                // (submit, queue-status) and would raise KeyError, so an agent that never
                // posted one shows `null` (not "offline": usable).
                let mut agent = Map::new();
                agent.insert("name".into(), Value::from(&**name));
                agent.insert(
                    "state".into(),
                    fields.get("state").cloned().unwrap_or(Value::Null),
                );
                for key in ["queues", "location", "provision_type", "job_id", "comment"] {
                    if let Some(value) = fields.get(key) {
                        agent.insert(key.into(), value.clone());
                    }
                }
                Value::Object(agent)
            })
            .collect::<Vec<Value>>()
    })
    .await?;
    if agents.is_empty() {
        return Err(Error::NotFound(format!("Queue '{queue}' does not exist.")));
    }
    super::auth::add_restricted_to(&svc, &mut agents);
    Ok(json_value(StatusCode::OK, &Value::Array(agents)))
}

/// `GET /v1/queues/<queue>/jobs`: the queue's jobs in any state, oldest first (204 when
/// none; `limit` caps the list).
pub async fn queue_jobs_get(
    State(svc): State<Services>,
    Path(queue): Path<String>,
    request: Request,
) -> Result<Response> {
    crate::http::wire::check_queue_name(&queue)?;
    let limit = limit_param(&query_pairs(request.uri().query().unwrap_or(""))?)?;
    let jobs = {
        let _turn = svc
            .searches
            .take(crate::turns::requester(request.extensions()))
            .await;
        svc.jobs.list_queue(&queue, limit).await
    };
    if jobs.is_empty() {
        return Ok(no_content());
    }
    let list: Vec<Value> = jobs
        .into_iter()
        .map(|(id, job)| {
            json!({
                "job_id": id.to_string(),
                "created_at": iso_z(job.created_at),
                "job_state": job.state,
                "job_queue": &*job.queue,
            })
        })
        .collect();
    Ok(json_value(StatusCode::OK, &Value::Array(list)))
}

/// Linear-interpolated percentile of sorted `samples` (Testflinger's method).
fn percentile(sorted: &[u64], pct: f64) -> f64 {
    if sorted.len() == 1 {
        return sorted[0] as f64;
    }
    let rank = pct / 100.0 * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    let weight = rank - low as f64;
    sorted[low] as f64 * (1.0 - weight) + sorted[high] as f64 * weight
}

/// `GET /v1/queues/wait_times?queue=a&queue=b`: wait-time percentiles (seconds) of the
/// named queues, or of every queue with data. An empty name matches no queue (as
/// upstream's `$in`), so `?queue=` alone is `{}`, not every queue.
pub async fn queue_wait_times_get(
    State(svc): State<Services>,
    request: Request,
) -> Result<Response> {
    let mut named = false;
    let mut wanted: Vec<String> = Vec::new();
    for (key, value) in query_pairs(request.uri().query().unwrap_or(""))? {
        if key != "queue" {
            continue;
        }
        named = true;
        if !value.is_empty() {
            crate::http::wire::check_queue_name(&value)?;
            wanted.push(value.into_owned());
        }
    }
    if named && wanted.is_empty() {
        return Ok(json_value(StatusCode::OK, &Value::Object(Map::new())));
    }
    let samples = svc.jobs.wait_times(&wanted);
    let mut out = Map::new();
    for (queue, mut waits) in samples {
        if waits.is_empty() {
            continue;
        }
        waits.sort_unstable();
        let mut stats = Map::new();
        for pct in [5u32, 10, 50, 90, 95] {
            stats.insert(pct.to_string(), json!(percentile(&waits, pct as f64)));
        }
        out.insert(queue.to_string(), Value::Object(stats));
    }
    Ok(json_value(StatusCode::OK, &Value::Object(out)))
}
