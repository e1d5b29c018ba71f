//! The web dashboard: HTML pages over the same read views the JSON API uses, and the log
//! follow endpoint (server-sent events) that both the job page and API clients use.
//!
//! Templates are minijinja, embedded at compile time (`include_str!` of
//! `templates/*.html` beside this file) and parsed once at start-up; a unit test renders
//! every one. minijinja over askama: askama wants its templates under a `templates/`
//! folder at the crate root (or an `askama.toml` there), which the repository layout does
//! not have, and its derive macros add build time on a 2-core machine; minijinja
//! auto-escapes every value of a `.html` template the same way and costs one small
//! dependency. No page uses a CDN or an external font; the pages work without
//! JavaScript, and `static/dash.js` only follows the live log.
//!
//! The job page and its cancel button are `job`'s (with what bounds its reads of a
//! job's log and results).
//!
//! Bounds: no page scans every job. Queue figures come from the registry's live-jobs
//! index (queues with unfinished jobs), job lists from the indexes with a limit
//! ([`PAGE_LIMIT`]); agents are few (one per lab device): their rows parse only the fields
//! they show, a queue's come from the agents' index of who serves it.
//!
//! Paths follow upstream's web UI (`/queues`, `/agents`, `/jobs`); `/` answers the
//! overview to browsers (a request that accepts `text/html`) and the version text to
//! everyone else, so OLD clients and `curl` still read the version there (upstream HEAD
//! moved the version to `/v1/`, which agents use; flinger keeps both).

use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use minijinja::Environment;
use serde_json::{json, Value};

use super::agents::read_agents;
use super::logbody::{self, Part};
use super::respond::text;
use super::wire::{iso_z, path_id, query_pairs};
use crate::actors::queue::QueueMsg;
use crate::actors::reads::{FollowMark, LogQuery};
use crate::actors::registry::{is_finished, JobDetail};
use crate::actors::{ask, now, Services};
use crate::error::{Error, Result};
use crate::model::index::{Search, AGENT_RECENT};
use crate::model::{FastSet, JobId, Name};

mod job;
pub use job::{cancel_form, job_page};

/// Most jobs, queues or agents one page lists.
pub const PAGE_LIMIT: usize = 100;
/// Most bytes of a job's output log its page shows (its end; the whole log is at
/// `/v1/result/<id>/log/output`), and of its results (their start).
pub const LOG_TAIL_BYTES: usize = 256 << 10;
/// Jobs `/jobs?queue=` filters between giving its worker back to other requests.
const FILTER_STEP: usize = 64;
/// How often a log follow looks for new fragments.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// After this long without news a log follow sends a comment, so that a proxy or a
/// browser does not take the open stream for a dead one.
const FOLLOW_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a path segment escapes: everything but RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The templates, parsed once.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A name as one path segment: minijinja's `urlencode` leaves `/` as it is, and a queue
    // or agent named `a/b` would link to a page that does not exist.
    // Any value, as `urlencode` took: a string displays as its text, a number as digits.
    env.add_filter("segment", |name: minijinja::Value| -> String {
        percent_encoding::utf8_percent_encode(&name.to_string(), SEGMENT).to_string()
    });
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("overview.html", include_str!("templates/overview.html")),
        ("job_rows.html", include_str!("templates/job_rows.html")),
        ("agent_rows.html", include_str!("templates/agent_rows.html")),
        ("queues.html", include_str!("templates/queues.html")),
        ("queue.html", include_str!("templates/queue.html")),
        ("agents.html", include_str!("templates/agents.html")),
        ("agent.html", include_str!("templates/agent.html")),
        ("jobs.html", include_str!("templates/jobs.html")),
        ("job.html", include_str!("templates/job.html")),
        ("error.html", include_str!("templates/error.html")),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
});

fn page(name: &str, context: Value) -> Result<Response> {
    let html = TEMPLATES
        .get_template(name)
        .and_then(|t| t.render(minijinja::Value::from_serialize(&context)))
        .map_err(|e| Error::Internal(format!("rendering {name}: {e}")))?;
    let mut response = Response::new(Body::from(html));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages load only our own stylesheet and script (no inline code: an injection that
    // escaped the template's escaping still could not run), and may not be framed by
    // another site's page (which could trick a click on the cancel button).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The routes whose answers are pages (`/` for a browser): a refusal or an error on one
/// is shown to a browser as a page ([`error_page`]), not as the API's JSON.
pub const PAGES: [&str; 8] = [
    "/",
    "/queues",
    "/queues/{queue}",
    "/agents",
    "/agents/{name}",
    "/jobs",
    "/jobs/{id}",
    "/jobs/{id}/cancel",
];

/// Most bytes of an error's JSON read to show it as a page (the messages are short).
const MAX_ERROR_JSON: usize = 64 << 10;

/// `response`, an error answer in JSON (`{"message": ...}`, or HEAD's `detail`), as a page
/// saying what went wrong, with the same status and headers. Any other answer is
/// returned as it is.
pub async fn error_page(response: Response) -> Response {
    use http_body_util::BodyExt;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let doc: Value = match http_body_util::Limited::new(body, MAX_ERROR_JSON)
        .collect()
        .await
    {
        Ok(bytes) => serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let message = match (&doc["message"], &doc["detail"]) {
        (Value::String(m), _) => m.clone(),
        (_, Value::Null) => String::new(),
        (_, detail) => detail.to_string(),
    };
    let context = json!({
        "status": status.as_u16(),
        "reason": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    let mut page = match page("error.html", context) {
        Ok(page) => page,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    *page.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if !page.headers().contains_key(name) && name != header::CONTENT_LENGTH {
            page.headers_mut().insert(name.clone(), value.clone());
        }
    }
    page
}

/// Whether the request accepts `text/html` (a browser's does): `/` then answers the
/// overview, which access control checks as a dashboard page (`access::table::OVERVIEW`).
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Seconds as `1h 2m 3s`.
fn span(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// The queues with unfinished jobs, busiest first, at most [`PAGE_LIMIT`].
fn queue_rows(svc: &Services) -> (Vec<Value>, bool) {
    let now = now();
    let mut summaries = svc.jobs.queue_summaries();
    summaries.sort_by(|a, b| (b.waiting, &b.queue).cmp(&(a.waiting, &a.queue)));
    let truncated = summaries.len() > PAGE_LIMIT;
    let rows = summaries
        .into_iter()
        .take(PAGE_LIMIT)
        .map(|q| {
            json!({
                "name": &*q.queue,
                "waiting": q.waiting,
                "running": q.running,
                "oldest_wait": q.oldest_waiting_since.map(|t| span(now.saturating_sub(t))).unwrap_or_default(),
            })
        })
        .collect();
    (rows, truncated)
}

fn job_row(id: JobId, queue: &str, state: &str, created_at: u64) -> Value {
    json!({"id": id.to_string(), "queue": queue, "state": state, "created_at": iso_z(created_at)})
}

/// One agent as the pages show it.
fn agent_row(name: &str, fields: &serde_json::Map<String, Value>, updated_at: u64) -> Value {
    let text = |k: &str| match fields.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let queues: Vec<String> = fields
        .get("queues")
        .and_then(Value::as_array)
        .map(|qs| {
            qs.iter()
                .filter_map(|q| q.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": name,
        "state": text("state"),
        "job_id": text("job_id"),
        "queues": queues,
        "updated": iso_z(updated_at),
    })
}

/// The fields of an agent a row shows ([`agent_row`]).
const ROW_FIELDS: &[&str] = &["state", "job_id", "queues"];

/// Every agent (name, the fields its row shows, last seen) — agents are one per device.
/// Only those fields are parsed and copied, never a record's other values (up to 4 MiB
/// of log lines) or its provision history.
async fn agents(svc: &Services) -> Result<Vec<(String, serde_json::Map<String, Value>, u64)>> {
    read_agents(svc, |agents| {
        agents
            .agents
            .iter()
            .map(|(name, record)| {
                let row = record.members(ROW_FIELDS);
                (name.to_string(), row, record.updated_at)
            })
            .collect()
    })
    .await
}

/// `GET /`: the overview to browsers, the version text to everyone else.
pub async fn home_or_overview(State(svc): State<Services>, request: Request) -> Result<Response> {
    let requester = crate::turns::requester(request.extensions());
    let mut response = overview_or_version(&svc, request.headers(), requester).await?;
    // Two answers for one URL: a cache must key on what was accepted.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

async fn overview_or_version(
    svc: &Services,
    headers: &HeaderMap,
    requester: crate::turns::Requester,
) -> Result<Response> {
    if !wants_html(headers) {
        return Ok(text(super::version_text()));
    }
    let (queues, queues_truncated) = queue_rows(svc);
    // Counts the agents' fold keeps: no record is visited.
    let agent_states: Vec<Value> = read_agents(svc, |agents| {
        agents
            .states()
            .map(|(state, count)| json!({"state": state, "count": count}))
            .collect()
    })
    .await?;
    let jobs = recent_jobs(svc, &Search::default(), 20, requester).await;
    page(
        "overview.html",
        json!({"queues": queues, "queues_truncated": queues_truncated, "agent_states": agent_states, "jobs": jobs}),
    )
}

async fn recent_jobs(
    svc: &Services,
    search: &Search,
    limit: usize,
    requester: crate::turns::Requester,
) -> Vec<Value> {
    let _turn = svc.searches.take(requester).await;
    svc.jobs
        .search(search, limit)
        .await
        .into_iter()
        .map(|(id, j)| job_row(id, &j.queue, &j.state, j.created_at))
        .collect()
}

/// `GET /queues`: queues advertised by agents and queues with unfinished jobs.
pub async fn queues_page(State(svc): State<Services>) -> Result<Response> {
    let (rows, busy_truncated) = queue_rows(&svc);
    let busy_shown = rows.len();
    let advertised = read_agents(&svc, |agents| {
        agents
            .queues
            .iter()
            .take(10 * PAGE_LIMIT)
            .map(|(n, q)| (n.to_string(), q.description.to_string()))
            .collect::<Vec<_>>()
    })
    .await?;
    let mut by_name: std::collections::BTreeMap<String, Value> = rows
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r))
        .collect();
    for (name, description) in advertised {
        let row = by_name.entry(name.clone()).or_insert_with(
            || json!({"name": name, "waiting": 0, "running": 0, "oldest_wait": ""}),
        );
        row["description"] = Value::from(description);
    }
    let listed = by_name.len();
    let queues: Vec<Value> = by_name.into_values().take(10 * PAGE_LIMIT).collect();
    page(
        "queues.html",
        json!({"queues": queues, "busy_truncated": busy_truncated, "busy_shown": busy_shown,
               "listed_truncated": listed > queues.len()}),
    )
}

fn detail_row(id: JobId, d: &JobDetail) -> Value {
    json!({
        "id": id.to_string(),
        "priority": d.priority,
        "state": d.view.state,
        "created_at": iso_z(d.view.created_at),
        "started_at": d.view.started_at.map(iso_z),
        "agent": d.agent.as_deref(),
    })
}

/// Linear-interpolated percentile of sorted samples (as `/v1/queues/wait_times`), to a
/// tenth of a second for reading (the samples are whole seconds; the interpolation's
/// float noise showed as `1.4000000000000004`).
fn percentile(sorted: &[u64], pct: f64) -> f64 {
    let rank = pct / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - low as f64;
    let value = sorted[low] as f64 * (1.0 - weight) + sorted[high] as f64 * weight;
    (value * 10.0).round() / 10.0
}

/// `GET /queues/<queue>`: waiting jobs in dispatch order, running jobs, agents, waits.
pub async fn queue_page(
    State(svc): State<Services>,
    Path(queue): Path<String>,
) -> Result<Response> {
    // The API's rules for a queue name, so the page never shows one no job can have.
    super::wire::check_queue_name(&queue)?;
    let mut live = svc.jobs.live_jobs(&queue, PAGE_LIMIT);
    if live.waiting_total > live.waiting.len() {
        // More wait than a page shows: the first page in dispatch order comes from the
        // queue's actor, which holds that order (the live index is by submission).
        if let Some(feed) = svc.queues.get(&queue) {
            let head = ask(feed.actor(), |p| QueueMsg::Head(PAGE_LIMIT, p)).await?;
            live.waiting = head
                .into_iter()
                .filter_map(|id| svc.jobs.detail(id).map(|d| (id, d)))
                .collect();
        }
    }
    let mut waits = svc
        .jobs
        .wait_times(std::slice::from_ref(&queue))
        .into_iter()
        .next()
        .map(|(_, w)| w)
        .unwrap_or_default();
    waits.sort_unstable();
    let percentiles: Vec<Value> = if waits.is_empty() {
        Vec::new()
    } else {
        [5u32, 10, 50, 90, 95]
            .iter()
            .map(|p| json!({"pct": p, "value": percentile(&waits, *p as f64)}))
            .collect()
    };
    let wanted = queue.clone();
    // The agents serving it (the agents' index), as many as the page lists.
    let agents: Vec<Value> = read_agents(&svc, move |agents| {
        agents
            .serving(&wanted)
            .take(PAGE_LIMIT)
            .map(|(name, record)| agent_row(name, &record.members(ROW_FIELDS), record.updated_at))
            .collect()
    })
    .await?;
    page(
        "queue.html",
        json!({
            "name": queue,
            "waiting_total": live.waiting_total,
            "running_total": live.running_total,
            "waiting": live.waiting.iter().map(|(id, d)| detail_row(*id, d)).collect::<Vec<_>>(),
            "running": live.running.iter().map(|(id, d)| detail_row(*id, d)).collect::<Vec<_>>(),
            "wait_samples": waits.len(),
            "percentiles": percentiles,
            "agents": agents,
        }),
    )
}

/// `GET /agents?name=&state=&queue=`: agents, filtered (name: substring).
pub async fn agents_page(State(svc): State<Services>, request: Request) -> Result<Response> {
    let pairs = query_pairs(request.uri().query().unwrap_or(""))?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    let (name, state, queue) = (get("name"), get("state"), get("queue"));
    // The state box offers the states agents are in now (counts the fold keeps), and the
    // one asked for, if none is in it any more.
    let mut states: Vec<String> = read_agents(&svc, |agents| {
        agents.states().map(|(state, _)| state.to_owned()).collect()
    })
    .await?;
    if !state.is_empty() && !states.contains(&state) {
        states.push(state.clone());
    }
    states.sort_unstable();
    let all = agents(&svc).await?;
    let total = all.len();
    let rows: Vec<Value> = all
        .into_iter()
        .map(|(n, fields, seen)| agent_row(&n, &fields, seen))
        .filter(|row| {
            (name.is_empty() || row["name"].as_str().is_some_and(|n| n.contains(&name)))
                && (state.is_empty() || row["state"] == state.as_str())
                && (queue.is_empty()
                    || row["queues"]
                        .as_array()
                        .is_some_and(|qs| qs.iter().any(|q| q == queue.as_str())))
        })
        .take(10 * PAGE_LIMIT)
        .collect();
    page(
        "agents.html",
        json!({"agents": rows, "total": total, "states": states,
               "filter": {"name": name, "state": state, "queue": queue}}),
    )
}

/// `GET /agents/<name>`: the agent's data, provision history, current job and the jobs
/// last dispatched to it (newest first, at most [`AGENT_RECENT`]).
pub async fn agent_page(State(svc): State<Services>, Path(name): Path<String>) -> Result<Response> {
    // This agent's record alone, whole: the page shows all of it.
    let wanted = name.clone();
    let found = read_agents(&svc, move |agents| {
        agents.agents.get(wanted.as_str()).map(|record| {
            let provision_log: Vec<String> = record
                .provision_log
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            (record.fields_map(), record.updated_at, provision_log)
        })
    })
    .await?;
    let Some((fields, seen, provision_log)) = found else {
        return Err(Error::NotFound(format!("Agent '{name}' does not exist.")));
    };
    let row = agent_row(&name, &fields, seen);
    // The jobs last dispatched to it (the index keeps the newest per agent), led by the
    // one it holds should that have fallen out of the list.
    let mut recent = svc.jobs.agent_jobs(&name, AGENT_RECENT);
    if let Some((id, held)) = svc.jobs.held_by(&name) {
        if !recent.iter().any(|(j, _)| *j == id) {
            recent.insert(0, (id, held));
        }
    }
    let jobs: Vec<Value> = recent
        .iter()
        .map(|(id, j)| job_row(*id, &j.queue, &j.state, j.created_at))
        .collect();
    // The jobs it was found lost on: a lost job no longer names its agent, so the recent
    // jobs above leave it out, while it is what made the agent offline.
    let lost: Vec<Value> = svc
        .jobs
        .lost_on(&name, AGENT_RECENT)
        .iter()
        .map(|(id, job, loss)| {
            json!({
                "id": id.to_string(),
                "queue": &*job.queue,
                "state": job.state,
                "phase": &*loss.phase,
                "action": loss.action(),
                "at": iso_z(loss.at),
                "last_heard": iso_z(loss.last_heard),
                "took": loss.took.map(|t| t.to_string()),
                "reason": loss.reason(),
            })
        })
        .collect();
    // Only a silent agent is marked offline (one that took another job is in service):
    // the newest such loss is why, while the record says offline.
    let offline_for = (row["state"] == "offline")
        .then(|| {
            lost.iter()
                .find(|l| l["took"].is_null())
                .map(|l| l["id"].clone())
        })
        .flatten();
    let log_start = provision_log.len().saturating_sub(PAGE_LIMIT);
    page(
        "agent.html",
        json!({
            "name": name,
            "state": row["state"],
            "job_id": row["job_id"],
            "queues": row["queues"],
            "updated": row["updated"],
            "fields": serde_json::to_string_pretty(&Value::Object(fields)).unwrap_or_default(),
            "provision_log": &provision_log[log_start..],
            "jobs": jobs,
            "lost": lost,
            "offline_for": offline_for,
        }),
    )
}

/// `GET /jobs?tags=a,b&state=s&queue=q`: newest first, at most [`PAGE_LIMIT`].
pub async fn jobs_page(State(svc): State<Services>, request: Request) -> Result<Response> {
    let requester = crate::turns::requester(request.extensions());
    let pairs = query_pairs(request.uri().query().unwrap_or(""))?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (tags, state, queue) = (get("tags"), get("state"), get("queue"));
    if !state.is_empty() {
        super::jobs::check_search_state(&state)?;
    }
    let search = Search {
        tags: tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .take(16)
            .map(Name::from)
            .collect(),
        match_all: true,
        states: if state.is_empty() {
            Vec::new()
        } else {
            vec![state.clone()]
        },
    };
    let jobs: Vec<Value> = if queue.is_empty() {
        recent_jobs(&svc, &search, PAGE_LIMIT, requester).await
    } else {
        // The queue's newest jobs through its index (at most LIST_MAX visited), filtered.
        // Reading each one's tags costs about their number (up to 1,024 a job): the
        // worker is given back every FILTER_STEP jobs, so other requests go on meanwhile.
        let _turn = svc.searches.take(requester).await;
        let wanted: FastSet<&str> = search.tags.iter().map(|t| &**t).collect();
        let mut rows = Vec::new();
        let newest = svc.jobs.newest_of_queue(&queue, super::queues::LIST_MAX);
        for (n, (id, j)) in newest.into_iter().enumerate() {
            if n > 0 && n % FILTER_STEP == 0 {
                tokio::task::yield_now().await;
            }
            if !search.state_ok(&j.state) {
                continue;
            }
            if !wanted.is_empty() {
                // `tags_of` lists each tag once.
                let have = crate::model::index::tags_of(&j.body);
                let found = have.iter().filter(|t| wanted.contains(&***t)).count();
                if found < wanted.len() {
                    continue;
                }
            }
            rows.push(job_row(id, &j.queue, &j.state, j.created_at));
            if rows.len() == PAGE_LIMIT {
                break;
            }
        }
        rows
    };
    page(
        "jobs.html",
        json!({"jobs": jobs, "limit": PAGE_LIMIT, "scan": super::queues::LIST_MAX,
               "states": super::jobs::SEARCH_STATES,
               "filter": {"tags": tags, "state": state, "queue": queue}}),
    )
}

/// A JSON value as block-style YAML (strings in JSON's double-quoted form, which is
/// also YAML's), for the job page: its first `most` bytes at most (whole lines, the last
/// one cut at a character boundary), and whether there was more. Printing stops there,
/// so what it costs is what the page shows.
pub fn yaml(value: &Value, most: usize) -> (String, bool) {
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            Value::Array(a) if a.is_empty() => "[]".into(),
            Value::Object(o) if o.is_empty() => "{}".into(),
            other => other.to_string(),
        }
    }
    fn is_block(v: &Value) -> bool {
        matches!(v, Value::Array(a) if !a.is_empty())
            || matches!(v, Value::Object(o) if !o.is_empty())
    }
    fn emit(v: &Value, indent: usize, out: &mut String, most: usize) {
        if out.len() > most {
            return;
        }
        let pad = " ".repeat(indent);
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    if out.len() > most {
                        return;
                    }
                    let key = serde_json::to_string(k).unwrap_or_default();
                    if is_block(v) {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(v, indent + 2, out, most);
                    } else {
                        out.push_str(&format!("{pad}{key}: {}\n", scalar(v)));
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for v in items {
                    if out.len() > most {
                        return;
                    }
                    if is_block(v) {
                        out.push_str(&format!("{pad}-\n"));
                        emit(v, indent + 2, out, most);
                    } else {
                        out.push_str(&format!("{pad}- {}\n", scalar(v)));
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", scalar(other))),
        }
    }
    let mut out = String::new();
    emit(value, 0, &mut out, most);
    let cut = out.len() > most;
    if cut {
        let mut end = most;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    (out, cut)
}

/// `GET /static/<file>`: the dashboard's stylesheet and script.
pub async fn static_file(Path(file): Path<String>) -> Result<Response> {
    let (body, kind) = match file.as_str() {
        "dash.css" => (include_str!("static/dash.css"), "text/css; charset=utf-8"),
        "dash.js" => (
            include_str!("static/dash.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return Err(Error::NotFound(format!("no static file {file:?}"))),
    };
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    Ok(response)
}

/// A log follow's state between polls.
struct Follow {
    svc: Services,
    /// The next fragment number to send.
    from: u64,
    /// The fragments read so far: a poll copies only those after them.
    mark: FollowMark,
    /// Whether the `end` event is in `pending` (or was sent).
    done: bool,
    /// The events found last, being sent chunk by chunk.
    pending: Option<Box<dyn Iterator<Item = Bytes> + Send>>,
    /// When anything was last sent (for [`FOLLOW_KEEP_ALIVE`]).
    sent_at: Instant,
    /// This stream's place among `--max-follows`, given back when it ends or its client
    /// leaves (the stream is dropped).
    _place: tokio::sync::OwnedSemaphorePermit,
}

/// `GET /v1/result/<id>/log/<output|serial>/follow?start_fragment=N`: server-sent events,
/// one `fragment` event (`{"phase", "text", "last_fragment_number"}`) per phase with new
/// text, as fragments arrive; then an `end` event: `{"finished":true}` once the job has
/// finished and its log was sent, `{"finished":false,"next_fragment":N}` after
/// `--follow-max-secs` or when the server begins to shut down (so the drain does not wait
/// for open pages; clients reconnect from `N`). A `: keep-alive` comment after
/// `FOLLOW_KEEP_ALIVE` (15 s) without news. Reads the shared result view every `FOLLOW_POLL`,
/// never the result actor.
pub async fn log_follow(
    State(svc): State<Services>,
    Path((id, kind)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    let id = path_id(&id)?;
    let kind = super::results::log_kind(&kind)?;
    let mut from = 0u64;
    for (key, value) in query_pairs(request.uri().query().unwrap_or(""))? {
        if key == "start_fragment" {
            from = super::wire::query_number("start_fragment", &value, u64::MAX, "")?;
        }
    }
    let place = svc.follows.clone().try_acquire_owned().map_err(|_| {
        Error::Unavailable(format!(
            "{} log follows are open, the most at once (--max-follows): try again later",
            svc.config.max_follows
        ))
    })?;
    let started = Instant::now();
    let follow_max = svc.config.follow_max;
    let state = Follow {
        svc,
        from,
        mark: FollowMark::default(),
        done: false,
        pending: None,
        sent_at: started,
        _place: place,
    };
    let stream = futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            // The events found last are sent a bounded chunk at a time (`logbody`).
            if let Some(chunk) = st.pending.as_mut().and_then(Iterator::next) {
                st.sent_at = Instant::now();
                return Some((Ok::<_, Infallible>(chunk), st));
            }
            st.pending = None;
            if st.done {
                return None;
            }
            let job = st.svc.jobs.get(id);
            let finished = job.as_ref().is_none_or(is_finished);
            let query = LogQuery {
                from: st.from,
                since: i64::MIN,
                phase: None,
                // The job's current run (the newest with fragments for an id no job has).
                run: job.map(|j| j.run),
            };
            // An unreadable orphan file ends the stream (the plain read names the damage).
            let Ok(answer) = st
                .svc
                .result_docs
                .log(id, kind, query, Some(&mut st.mark))
                .await
            else {
                return None;
            };
            // `event: fragment` + `data: {"phase":..,"text":..,"last_fragment_number":..}`
            // per phase with new text, as serde_json writes the object.
            let mut parts = Vec::new();
            for phase in answer.phases {
                if phase.last >= 0 && phase.pieces.iter().any(|p| !p.is_empty()) {
                    st.from = st.from.max(phase.last as u64 + 1);
                    parts.push(Part::Raw(Bytes::from(format!(
                        "event: fragment\ndata: {{\"phase\":\"{}\",\"text\":\"",
                        phase.phase
                    ))));
                    parts.push(Part::Text(phase.pieces));
                    parts.push(Part::Raw(Bytes::from(format!(
                        "\",\"last_fragment_number\":{}}}\n\n",
                        phase.last
                    ))));
                }
            }
            let end = if finished && parts.is_empty() {
                Some(Bytes::from_static(
                    b"event: end\ndata: {\"finished\":true}\n\n",
                ))
            } else if st.svc.dispatch.is_closed() || started.elapsed() > follow_max {
                Some(Bytes::from(format!(
                    "event: end\ndata: {{\"finished\":false,\"next_fragment\":{}}}\n\n",
                    st.from
                )))
            } else {
                None
            };
            st.done = end.is_some();
            parts.extend(end.map(Part::Raw));
            if !parts.is_empty() {
                st.pending = Some(Box::new(logbody::chunks(parts)));
                continue;
            }
            if st.sent_at.elapsed() >= FOLLOW_KEEP_ALIVE {
                st.sent_at = Instant::now();
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_percentiles_read_to_a_tenth_of_a_second() {
        let waits = [1, 1, 2, 2, 2, 3, 5, 8, 13, 21];
        for (pct, expected) in [(50.0, 2.5), (90.0, 13.8), (95.0, 17.4), (99.0, 20.3)] {
            assert_eq!(percentile(&waits, pct), expected, "p{pct}");
        }
        assert_eq!(percentile(&[1, 2], 40.0), 1.4);
    }

    #[test]
    fn every_template_parses_and_escapes_what_it_is_given() {
        let evil = "<script>alert(1)</script>";
        let ctx = json!({"id": evil, "queue": evil, "state": evil, "priority": 0, "agent": evil,
            "cancellable": true, "timeline": [{"what": evil, "at": evil}], "yaml": evil, "json": evil,
            "log": evil, "log_bytes": 0, "log_shown": 0, "log_next": 0, "results": evil, "results_cut": true, "results_shown": 0, "jobs": [{"id": evil, "queue": evil, "state": evil, "created_at": evil}],
            "queues": [{"name": evil, "waiting": 1, "running": 0, "oldest_wait": evil, "description": evil}],
            "agents": [{"name": evil, "state": evil, "job_id": evil, "queues": [evil], "updated": evil}],
            "agent_states": [{"state": evil, "count": 1}], "states": [evil], "name": evil, "filter": {"name": evil, "state": evil, "queue": evil, "tags": evil},
            "total": 1, "limit": 1, "scan": 1, "waiting": [], "running": [], "waiting_total": 0, "running_total": 0,
            "percentiles": [], "wait_samples": 0, "provision_log": [evil], "fields": evil, "job_id": evil});
        for name in [
            "overview.html",
            "queues.html",
            "queue.html",
            "agents.html",
            "agent.html",
            "jobs.html",
            "job.html",
        ] {
            let html = TEMPLATES
                .get_template(name)
                .unwrap()
                .render(minijinja::Value::from_serialize(&ctx))
                .unwrap();
            assert!(!html.contains(evil), "{name} let markup through");
            assert!(html.contains("&lt;script&gt;"), "{name} shows the text");
        }
    }

    #[test]
    fn yaml_of_a_job_reads_back_as_the_same_document() {
        let doc = json!({"job_queue": "q", "tags": ["a", "b: c"], "provision_data": {"url": "http://x/\"y\"", "n": 3, "e": {}}, "nothing": null});
        let (text, cut) = yaml(&doc, usize::MAX);
        assert!(!cut);
        assert!(text.contains("\"job_queue\": \"q\"\n"));
        assert!(text.contains("\"tags\":\n  - \"a\"\n  - \"b: c\"\n"));
        assert!(text.contains(
            "\"provision_data\":\n  \"url\": \"http://x/\\\"y\\\"\"\n  \"n\": 3\n  \"e\": {}\n"
        ));
    }
}
