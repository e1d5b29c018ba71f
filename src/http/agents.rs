//! Agent-facing endpoints: advertised queues and images (Testflinger's `queues_post`,
//! `queues_get`, `images_post`, `images_get`), agent records and provision logs, and
//! flinger's operator route that deletes an agent's record.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::respond::{json_bytes, json_value, ok, read_body};
use super::wire::{check_queue_name, empty_as_object, json_object_body, MAX_NAME};
use crate::access::Caller;
use crate::actors::agents::AgentMsg;
use crate::actors::{ask, Services};
use crate::error::{Error, Result};
use crate::model::agents::Agents;
use crate::model::Name;

/// Largest advertisement body.
const MAX_ADVERT_BYTES: usize = 4 << 20;
/// Longest advertised queue description (upstream: no bound; a description is a line of
/// text, and 10,000 queues of 4 MiB each would pin 40 GB and answer every listing with it).
pub const MAX_DESCRIPTION_BYTES: usize = 4 << 10;

/// Runs `f` over the agents partition under its read lock (not in the agents actor: a
/// read never waits behind writes queued there) and returns its result. `f` must be
/// brief: it copies what it needs (records are shared buffers) and renders outside.
pub async fn read_agents<T: Send + 'static>(
    svc: &Services,
    f: impl FnOnce(&Agents) -> T + Send + 'static,
) -> Result<T> {
    Ok(f(&svc.agent_data.read()))
}

async fn json_object(request: Request) -> Result<Map<String, Value>> {
    let body = empty_as_object(
        read_body(request, MAX_ADVERT_BYTES, "a queue or image advertisement").await?,
    );
    json_object_body(&body)
}

/// A 422 in the shape upstream's schema-level checks (`@validates_schema`) give:
/// `{"_schema": [reason]}`, the reason naming the queue (and image) at fault.
fn schema_error(reason: String) -> Error {
    Error::Validation {
        message: "Validation error".into(),
        field: "_schema".into(),
        reason,
    }
}

fn check_name(field: &str) -> Result<()> {
    if field.is_empty() || field.len() > MAX_NAME {
        return Err(Error::validation(
            field,
            format!("names must be 1 to {MAX_NAME} bytes"),
        ));
    }
    Ok(())
}

/// `POST /v1/agents/queues`: merge `{name: description}` into the advertised queues.
pub async fn queues_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let map = json_object(request).await?;
    let mut queues = Vec::with_capacity(map.len());
    for (name, description) in map {
        check_queue_name(&name)?;
        let Value::String(description) = description else {
            return Err(schema_error(format!(
                "Description for queue '{name}' must be a string"
            )));
        };
        if description.len() > MAX_DESCRIPTION_BYTES {
            return Err(schema_error(format!(
                "Description for queue '{name}' is {} bytes, at most {MAX_DESCRIPTION_BYTES} \
                 are kept",
                description.len()
            )));
        }
        queues.push((Name::from(name), description.into_boxed_str()));
    }
    if queues.is_empty() {
        return Ok(ok());
    }
    let lsn = ask(&svc.agents, |p| AgentMsg::AdvertiseQueues(queues, p)).await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// `GET /v1/agents/queues`: `{name: description}` of every advertised queue, and `""` for
/// a queue that only has advertised images (as upstream, whose images post creates the
/// queue's document: the CLI's `reserve` offers the queues listed here, then their images).
/// Sorted by name (both maps are; merged in one pass).
pub async fn queues_get(State(svc): State<Services>) -> Result<Response> {
    let map = read_agents(&svc, |agents| {
        let mut map = Map::new();
        let mut images_only = agents.images.keys().peekable();
        for (name, q) in &agents.queues {
            while let Some(image_queue) = images_only.next_if(|i| *i < name) {
                map.insert(image_queue.to_string(), Value::from(""));
            }
            images_only.next_if(|i| *i == name);
            map.insert(name.to_string(), Value::from(&*q.description));
        }
        for image_queue in images_only {
            map.insert(image_queue.to_string(), Value::from(""));
        }
        map
    })
    .await?;
    Ok(json_value(StatusCode::OK, &Value::Object(map)))
}

/// `POST /v1/agents/images`: `{queue: {image: data}}` replaces each named queue's images.
pub async fn images_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let map = json_object(request).await?;
    let mut sets = Vec::with_capacity(map.len());
    for (queue, images) in map {
        check_queue_name(&queue)?;
        // Upstream's `ImagesIn`: every image's provision data is a string (the CLI calls
        // string methods on it), and image names are usable as MongoDB keys.
        let Value::Object(images) = images else {
            return Err(schema_error(format!(
                "Images for queue '{queue}' must be a dict"
            )));
        };
        for (image, data) in images.iter() {
            if image.len() > MAX_NAME {
                return Err(schema_error(format!(
                    "Names for queue '{queue}' must be at most {MAX_NAME} bytes (an image \
                     name has {})",
                    image.len()
                )));
            }
            if image.is_empty()
                || image.starts_with('$')
                || image.contains('.')
                || image.contains('\0')
            {
                // Upstream's words (`ImagesIn`), then which name broke the rule.
                return Err(schema_error(format!(
                    "Names for queue '{queue}' must be non-empty strings, must not start with \
                     '$', contain '.' or null bytes (image name {image:?})"
                )));
            }
            if !data.is_string() {
                return Err(schema_error(format!(
                    "Provision data for image '{image}' in queue '{queue}' must be a string, \
                     not {}",
                    super::wire::json_kind(data)
                )));
            }
        }
        let text = Bytes::from(serde_json::to_vec(&images).expect("maps serialise"));
        sets.push((Name::from(queue), text));
    }
    if sets.is_empty() {
        return Ok(ok());
    }
    let lsn = ask(&svc.agents, |p| AgentMsg::AdvertiseImages(sets, p)).await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// `GET /v1/agents/images/<queue>`: that queue's images, `{}` when none.
pub async fn images_get(
    State(svc): State<Services>,
    Path(queue): Path<String>,
) -> Result<Response> {
    check_queue_name(&queue)?;
    let images = read_agents(&svc, move |agents| {
        agents.images.get(queue.as_str()).cloned()
    })
    .await?;
    Ok(json_bytes(
        StatusCode::OK,
        images.unwrap_or_else(|| Bytes::from_static(b"{}")),
    ))
}

/// Most bytes of an agent-data or provision-log post.
const MAX_AGENT_POST: usize = 1 << 20;
/// Most entries of an agent record's `queues` list, and most lines one post adds to its `log`.
const MAX_RECORD_LIST: usize = 10_000;

/// Field types of an agent record as upstream's `AgentIn` declares them; any other key is
/// a 422 naming it, as upstream.
fn check_agent_fields(map: &Map<String, Value>) -> Result<()> {
    for (field, value) in map {
        let ok = match field.as_str() {
            "identifier" | "job_id" | "location" | "provision_type" | "state" | "comment" => {
                // `fields.String()` without `allow_none`: the stock agent's configuration
                // schema requires strings, and it clears its job id with `""`.
                if value.is_null() {
                    return Err(Error::validation(field, "Field may not be null."));
                }
                value.is_string()
            }
            "log" => value
                .as_array()
                .is_some_and(|a| a.len() <= MAX_RECORD_LIST && a.iter().all(Value::is_string)),
            "queues" => {
                let Some(queues) = value.as_array() else {
                    return Err(Error::validation(field, "Not a valid list of queue names."));
                };
                if queues.len() > MAX_RECORD_LIST {
                    return Err(Error::validation(
                        field,
                        format!(
                            "{} queues; an agent record lists at most {MAX_RECORD_LIST}",
                            queues.len()
                        ),
                    ));
                }
                for queue in queues {
                    check_queue_name(queue.as_str().ok_or_else(|| {
                        Error::validation(field, "Not a valid list of queue names.")
                    })?)?;
                }
                true
            }
            // Upstream's `AgentIn` refuses keys it does not declare; the stock agent
            // sends none of them (its start-up record, state reports, heartbeats, job
            // ids and log lines use only the keys above).
            _ => return Err(Error::unknown_field(field)),
        };
        if !ok {
            return Err(Error::validation(
                field,
                "Not a valid value for this field.",
            ));
        }
    }
    Ok(())
}

/// `POST /v1/agents/data/<name>`: merge fields into the agent's record; sets the
/// `agent_name` cookie that identifies the agent to `GET /v1/job`.
pub async fn agents_post(
    State(svc): State<Services>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response> {
    check_name(&name)?;
    let body = empty_as_object(read_body(request, MAX_AGENT_POST, "an agent's post").await?);
    let map = json_object_body(&body)?;
    check_agent_fields(&map)?;
    // An agent reporting its state with the job it runs is heard about that job: from
    // the job's agent credential only (access control on), so no other client keeps a
    // dead agent's job alive by naming it, and once the post is recorded, as for every
    // other kind of contact (`front::agent_contact`).
    let contact = map
        .get("job_id")
        .and_then(Value::as_str)
        .and_then(|id| super::wire::path_id(id).ok())
        .filter(|&id| crate::access::is_job_agent(&svc, &caller, id));
    let cookie = cookie_value(&name)?;
    let by = caller.agent_credential().map(Name::from);
    let lsn = ask(&svc.agents, |p| {
        AgentMsg::Update(Name::from(name), body, by, p)
    })
    .await??;
    svc.journal.durable(lsn).await?;
    if let Some(id) = contact {
        svc.watch.heard(id, crate::actors::now());
    }
    let mut response = json_value(StatusCode::OK, &serde_json::json!({"status": "OK"}));
    response
        .headers_mut()
        .insert(axum::http::header::SET_COOKIE, cookie);
    Ok(response)
}

fn cookie_value(name: &str) -> Result<axum::http::HeaderValue> {
    if name
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || b == b';' || b == b',' || b == b'"' || b == b'\\')
    {
        return Err(Error::validation(
            "name",
            "agent names must be printable ASCII without ;,\"\\ or spaces",
        ));
    }
    axum::http::HeaderValue::from_str(&format!(
        "agent_name={name}; HttpOnly; SameSite=Strict; Path=/"
    ))
    .map_err(|_| Error::validation("name", "not a valid cookie value"))
}

/// An agent record as clients see it (Testflinger's agent document minus `log`).
pub fn agent_json(name: &str, record: &crate::model::agents::AgentRecord) -> Value {
    let mut map = record.fields_map();
    map.remove("log");
    map.insert("name".into(), Value::from(name));
    map.insert(
        "updated_at".into(),
        Value::from(super::wire::iso_z(record.updated_at)),
    );
    if let Some((kind, count)) = &record.provision_streak {
        map.insert("provision_streak_type".into(), Value::from(&**kind));
        map.insert("provision_streak_count".into(), Value::from(*count));
    }
    Value::Object(map)
}

/// `GET /v1/agents/data/<name>`: one agent's record (404 when unknown), with `state:
/// null` when the agent never posted one: the CLI's `agent-status` indexes `["state"]`
/// (upstream leaves the key out, and the CLI raises `KeyError`). The list keeps leaving it
/// out, as upstream: `list-agents` reads `.get("state")` but cannot format a `null`.
pub async fn agents_get_one(
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Response> {
    let found = read_agents(&svc, move |agents| {
        agents.agents.get(name.as_str()).map(|r| {
            let mut agent = agent_json(&name, r);
            if let Value::Object(map) = &mut agent {
                map.entry("state").or_insert(Value::Null);
            }
            agent
        })
    })
    .await?;
    match found {
        Some(agent) => {
            let mut one = [agent];
            super::auth::add_restricted_to(&svc, &mut one);
            Ok(json_value(StatusCode::OK, &one[0]))
        }
        None => Err(Error::NotFound("Agent not found".into())),
    }
}

/// `DELETE /v1/agents/data/<name>`: an operator removes agent `name`'s record (its
/// fields, log and provision history), durably; its place counts again towards the most
/// records kept and its creator's `--max-agents-per-client`. 404 when it has none.
/// Upstream has no such route. With access control on, managers and admins (the access
/// table's row: they already rewrite any agent's record); with it off, only clients on
/// the server's own host, as `DELETE /v1/job/<id>`. A job the agent holds is left as it
/// is: the lost-agent watch ends it once the agent is silent past its allowance, and
/// then makes no record to mark offline. The agent, if still running, makes a new
/// record with its next post (the stock agent's pop needs one for its cookie).
pub async fn agents_delete(
    State(svc): State<Services>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response> {
    crate::access::operator_only(&caller, request.extensions(), "Deleting an agent's record")?;
    check_name(&name)?;
    let ticket = ask(&svc.agents, |p| {
        AgentMsg::Delete(Name::from(name.as_str()), p)
    })
    .await??;
    svc.journal.durable(ticket).await?;
    tracing::info!(
        agent = name.as_str(),
        by = caller.client_id().unwrap_or("open"),
        "agent record deleted"
    );
    Ok(ok())
}

/// `GET /v1/agents/data`: every agent's record.
///
/// Streamed: the read lock is held only to copy the records (shared buffers, no parsing), and the
/// array is rendered about `AGENTS_CHUNK_BYTES` at a time as the client takes it, so a
/// large agent table costs one chunk per connection, not a whole copy of the answer.
pub async fn agents_get_all(State(svc): State<Services>) -> Result<Response> {
    let records = read_agents(&svc, |agents| {
        agents
            .agents
            .iter()
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect::<Vec<_>>()
    })
    .await?;
    let mut records = records.into_iter().peekable();
    let mut started = false;
    let mut finished = false;
    let body = std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let mut out = Vec::with_capacity(AGENTS_CHUNK_BYTES);
        if !started {
            out.push(b'[');
        }
        while out.len() < AGENTS_CHUNK_BYTES {
            let Some((name, record)) = records.next() else {
                break;
            };
            if started {
                out.push(b',');
            }
            started = true;
            // Upstream's `restricted_to` (access control), added per record as it streams.
            let mut one = [agent_json(&name, &record)];
            super::auth::add_restricted_to(&svc, &mut one);
            serde_json::to_writer(&mut out, &one[0]).expect("values serialise");
        }
        if records.peek().is_none() {
            out.push(b']');
            finished = true;
        }
        Some(Ok::<_, std::convert::Infallible>(Bytes::from(out)))
    });
    let mut response = Response::new(axum::body::Body::from_stream(futures_util::stream::iter(
        body,
    )));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `GET /v1/agents/data` renders records until a chunk holds this many bytes.
const AGENTS_CHUNK_BYTES: usize = 64 << 10;

/// `POST /v1/agents/provision_logs/<name>`: `{job_id, exit_code, detail}` appended to the
/// agent's provision history (404 when the agent is unknown; Testflinger keeps such an
/// entry anyway, which here would create an agent that never registered).
pub async fn agents_provision_logs_post(
    State(svc): State<Services>,
    caller: Caller,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response> {
    check_name(&name)?;
    let body = empty_as_object(read_body(request, MAX_AGENT_POST, "an agent's post").await?);
    let mut map = json_object_body(&body)?;
    // Types and required fields as upstream's schema loads them (`exit_code: "3"` is 3).
    super::schema::load(&super::schema::PROVISION_LOG, &mut map).map_err(super::wire::invalid)?;
    let job_id = map
        .get("job_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // With access control on, only the agent the job was dispatched to reports on it.
    if !matches!(caller, Caller::Open) {
        let id = super::wire::path_id(job_id)?;
        crate::access::check_job_agent(&svc, &caller, id).await?;
    }
    map.insert(
        "timestamp".into(),
        Value::from(super::wire::iso_z(crate::actors::now())),
    );
    let entry = Bytes::from(serde_json::to_vec(&map).expect("maps serialise"));
    let ticket = ask(&svc.agents, |p| {
        AgentMsg::ProvisionLog(Name::from(name), entry, p)
    })
    .await??;
    svc.journal.durable(ticket).await?;
    Ok(ok())
}
