//! Agent-facing endpoints: advertised queues and images (Testflinger's `queues_post`,
//! `queues_get`, `images_post`, `images_get`).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::respond::{json_bytes, json_value, ok, read_body};
use super::wire::MAX_NAME;
use crate::actors::agents::AgentMsg;
use crate::actors::{ask, Services};
use crate::error::{Error, Result};
use crate::model::agents::Agents;
use crate::model::Name;

/// Largest advertisement body.
const MAX_ADVERT_BYTES: usize = 4 << 20;

/// Runs `f` over the agents partition inside its actor and returns its result.
pub async fn read_agents<T: Send + 'static>(svc: &Services, f: impl FnOnce(&Agents) -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    svc.agents
        .cast(AgentMsg::Read(Box::new(move |agents| {
            let _ = tx.send(f(agents));
        })))
        .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
    rx.await.map_err(|_| Error::Unavailable("the server is shutting down".into()))
}

async fn json_object(request: Request) -> Result<Map<String, Value>> {
    let body = read_body(request, MAX_ADVERT_BYTES).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::InvalidInput("Expected a JSON object".into())),
    }
}

fn check_name(field: &str) -> Result<()> {
    if field.is_empty() || field.len() > MAX_NAME {
        return Err(Error::validation(field, format!("names must be 1 to {MAX_NAME} bytes")));
    }
    Ok(())
}

/// `POST /v1/agents/queues`: merge `{name: description}` into the advertised queues.
pub async fn queues_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let map = json_object(request).await?;
    let mut queues = Vec::with_capacity(map.len());
    for (name, description) in map {
        check_name(&name)?;
        let Value::String(description) = description else {
            return Err(Error::validation(&name, "Not a valid string."));
        };
        queues.push((Name::from(name), description.into_boxed_str()));
    }
    if queues.is_empty() {
        return Ok(ok());
    }
    let lsn = ask(&svc.agents, |p| AgentMsg::AdvertiseQueues(queues, p)).await??;
    svc.journal.durable(lsn).await?;
    Ok(ok())
}

/// `GET /v1/agents/queues`: `{name: description}` of every advertised queue.
pub async fn queues_get(State(svc): State<Services>) -> Result<Response> {
    let map = read_agents(&svc, |agents| {
        agents
            .queues
            .iter()
            .map(|(name, q)| (name.to_string(), Value::from(&*q.description)))
            .collect::<Map<String, Value>>()
    })
    .await?;
    Ok(json_value(StatusCode::OK, &Value::Object(map)))
}

/// `POST /v1/agents/images`: `{queue: {image: data}}` replaces each named queue's images.
pub async fn images_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let map = json_object(request).await?;
    let mut sets = Vec::with_capacity(map.len());
    for (queue, images) in map {
        check_name(&queue)?;
        let Value::Object(images) = images else {
            return Err(Error::validation(&queue, "Not a valid mapping type."));
        };
        for (image, _) in images.iter() {
            if image.is_empty() || image.len() > MAX_NAME {
                return Err(Error::validation(&queue, format!("image names must be 1 to {MAX_NAME} bytes")));
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
pub async fn images_get(State(svc): State<Services>, Path(queue): Path<String>) -> Result<Response> {
    let images = read_agents(&svc, move |agents| agents.images.get(queue.as_str()).cloned()).await?;
    Ok(json_bytes(StatusCode::OK, images.unwrap_or_else(|| Bytes::from_static(b"{}"))))
}
