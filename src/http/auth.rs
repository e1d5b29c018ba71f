//! Credential and permission endpoints (Testflinger's `retrieve_token`,
//! `refresh_access_token`, `revoke_refresh_token`, `*_client_permissions`,
//! `*_restricted_queue(s)` in `api/v1.py`): same paths, bodies, status codes and messages.
//! Who may call them is the access layer's business (`access::table`); these handlers
//! receive the resolved [`Caller`].

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::agents::read_agents;
use super::respond::{json_value, ok, read_body, text};
use super::wire::{empty_as_object, json_object_body};
use crate::access::clients::{check_client_edit, ClientEdit};
use crate::access::{peer, secrets, security_event, token, Caller, Limiter};
use crate::actors::{now, Services};
use crate::error::{Error, Result};
use crate::model::access::{
    Client, Permissions, RefreshId, Role, MAX_SECRETS_PER_CLIENT, SYSTEM_ADMIN_ID,
};
use crate::model::{Event, Name};

/// Largest body of these endpoints.
const MAX_BODY: usize = 64 << 10;
/// Shortest client secret `PUT /v1/client-permissions` accepts (upstream: 15).
const MIN_SECRET_LEN: usize = 15;
/// A bcrypt hash of a random secret nobody knows, checked when the client id is unknown
/// so an unknown id takes as long to refuse as a wrong secret.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| token::hash_secret(&token::random_text(32)).unwrap_or_default());

fn token_response(access: String, expires_in: u64, refresh: Option<String>) -> Response {
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = Value::from(refresh);
    }
    json_value(StatusCode::OK, &body)
}

/// `POST /v1/oauth2/token`: HTTP Basic `client_id:client_secret` → an access token and a
/// refresh token. Failures count against the (client id, address) pair and the address
/// (429 past the limit), never the client id alone.
pub async fn token_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let gate = &svc.access;
    let from = peer(request.extensions());
    // Logged here, naming the client id of the Basic header the front does not know;
    // so the answer is marked logged, not logged a second time by the front.
    let refuse = |who: &str, why: &str, error: Error| {
        security_event("authn_fail", who, "POST", "/v1/oauth2/token", from, why);
        Ok(super::respond::already_logged(error))
    };
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return refuse(
            "unknown",
            "token request without an authorization header",
            Error::Unauthorized("No authorization header specified".into()),
        );
    };
    let credentials = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        })
        .filter(|(id, _)| !id.is_empty());
    let Some((client_id, secret)) = credentials else {
        return refuse(
            "unknown",
            "token request with incomplete credentials",
            Error::Unauthorized(
                "Client id and key must be specified in authorization header".into(),
            ),
        );
    };
    // No such client can exist: refused before it names a limiter key (unbounded text)
    // or costs a bcrypt run.
    if token::client_id_problem(&client_id).is_some() {
        return refuse(
            &client_id,
            "token request with an impossible client id",
            Error::Unauthorized("Invalid client id or client key".into()),
        );
    }
    let keys = Limiter::keys(&client_id, from.map(|a| a.ip()));
    // Counted as failed from here until it succeeds: guesses sent at once cannot all
    // pass this check before the first of them has failed.
    let admitted = match gate.limiter.admit(&keys).await {
        Ok(admitted) => admitted,
        Err(message) => {
            return refuse(
                &client_id,
                "token request refused: too many failed attempts",
                Error::TooManyRequests(message),
            )
        }
    };
    let hash = gate
        .store
        .read(|a| a.client(&client_id).map(|c| c.secret_hash.to_string()));
    let known = hash.as_deref().is_some_and(|h| !h.is_empty());
    let verified = hash.clone();
    let checked = hash
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let matches = tokio::task::spawn_blocking(move || token::secret_matches(&secret, &checked))
        .await
        .map_err(|e| Error::Internal(format!("bcrypt task failed: {e}")))?;
    if !(known && matches) {
        drop(admitted);
        return refuse(
            &client_id,
            "token request with invalid credentials",
            Error::Unauthorized("Invalid client id or client key".into()),
        );
    }
    admitted.succeeded();
    let refresh = token::new_refresh_token();
    let refresh_hash = token::token_hash(&refresh);
    let refresh_id = RefreshId::of_hash(&refresh_hash).expect("a SHA-256 in hex");
    let at = now();
    let mut permissions = None;
    let id = Name::from(client_id.as_str());
    gate.store
        .record_durably(|access| {
            // The secret checked above must still be the client's: one replaced while
            // bcrypt ran (the fix for a leaked secret) gets no refresh token.
            let client = access
                .client(&client_id)
                .filter(|c| verified.as_deref() == Some(&*c.secret_hash))
                .ok_or_else(|| Error::Unauthorized("Invalid client id or client key".into()))?;
            permissions = Some((
                Permissions::of(&client_id, client),
                client.secret_fingerprint(),
            ));
            Ok(Some(Event::RefreshTokenIssued {
                hash: refresh_hash,
                client_id: id,
                issued_at: at,
                expires_at: at + gate.refresh_ttl,
            }))
        })
        .await?;
    let (permissions, secret) = permissions.expect("set when recorded");
    let from_text = from.map_or_else(
        || "unknown".to_owned(),
        |a| a.ip().to_canonical().to_string(),
    );
    tracing::info!(target: "flinger::security", event = "authn_token_created", client = client_id.as_str(), role = permissions.role.as_deref().unwrap_or("contributor"), from = %from_text, "issued an access token and a refresh token");
    let access = gate
        .signer
        .issue(&permissions, secret, refresh_id, at, gate.access_ttl);
    Ok(token_response(access, gate.access_ttl, Some(refresh)))
}

/// The `refresh_token` of a `{refresh_token}` body (422 when absent or empty).
async fn refresh_token_field(request: Request) -> Result<String> {
    let body =
        empty_as_object(read_body(request, MAX_BODY, "an access-control request's body").await?);
    let value = json_object_body(&body)?;
    super::wire::only_keys(&value, &["refresh_token"])?;
    match value.get("refresh_token") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        Some(Value::String(_)) => Err(Error::validation(
            "refresh_token",
            "Shorter than minimum length 1.",
        )),
        Some(_) => Err(Error::validation("refresh_token", "Not a valid string.")),
        None => Err(Error::validation(
            "refresh_token",
            "Missing data for required field.",
        )),
    }
}

/// `POST /v1/oauth2/refresh`: `{refresh_token}` → a new access token from the client's
/// current permissions (no new refresh token, as upstream).
pub async fn refresh_post(State(svc): State<Services>, request: Request) -> Result<Response> {
    let gate = &svc.access;
    let from = peer(request.extensions());
    let refresh = refresh_token_field(request).await?;
    let hash = token::token_hash(&refresh);
    let at = now();
    let found = gate.store.read(|a| {
        let t = a.tokens.get(&hash)?;
        // A refresh token lives only as long as the secret it was issued under (a new
        // one drops it), so the client's secret now is the token's.
        let p = a
            .client(&t.client_id)
            .map(|c| (Permissions::of(&t.client_id, c), c.secret_fingerprint()));
        Some((t.clone(), p))
    });
    // The event says which refusal it was: a token never issued here (or of a client
    // since deleted) is a guess or a stale file, a revoked one presented again may be a
    // stolen copy, an expired one is only late.
    let refused = |event: &'static str, who: &str, why: &str| {
        security_event(event, who, "POST", "/v1/oauth2/refresh", from, why);
        Err(Error::InvalidInput(why.into()))
    };
    let Some((entry, permissions)) = found else {
        return refused("authn_token_unknown", "unknown", "Invalid refresh token.");
    };
    if entry.revoked {
        return refused(
            "authn_token_reuse",
            &entry.client_id,
            "Refresh token revoked.",
        );
    }
    if entry.expires_at < at {
        return refused(
            "authn_token_expired",
            &entry.client_id,
            "Refresh token expired",
        );
    }
    let Some((permissions, secret)) = permissions else {
        return refused(
            "authn_token_unknown",
            &entry.client_id,
            "Invalid refresh token.",
        );
    };
    let refresh_id = RefreshId::of_hash(&hash).expect("a SHA-256 in hex");
    let access = gate
        .signer
        .issue(&permissions, secret, refresh_id, at, gate.access_ttl);
    Ok(token_response(access, gate.access_ttl, None))
}

/// `POST /v1/oauth2/revoke` (admin): `{refresh_token}` can no longer be used, nor can
/// the access tokens issued with or from it (401 from their next request on,
/// `crate::access::Gate::caller`).
pub async fn revoke_post(
    State(svc): State<Services>,
    caller: Caller,
    request: Request,
) -> Result<Response> {
    let refresh = refresh_token_field(request).await?;
    let hash = token::token_hash(&refresh);
    let mut target = String::new();
    svc.access
        .store
        .record_durably(|access| {
            let entry = access
                .tokens
                .get(&hash)
                .ok_or_else(|| Error::InvalidInput("Refresh token not found".into()))?;
            if entry.revoked {
                return Err(Error::InvalidInput(
                    "Refresh token has already been revoked".into(),
                ));
            }
            target = entry.client_id.to_string();
            Ok(Some(Event::RefreshTokenRevoked { hash }))
        })
        .await?;
    tracing::info!(target: "flinger::security", event = "authn_token_revoked", by = caller.client_id().unwrap_or("open"), client = target.as_str(), "refresh token revoked");
    Ok(json_value(StatusCode::OK, &json!({"status": "OK"})))
}

/// A client as `GET /v1/client-permissions` shows it (never its secret hash).
pub fn client_json(id: &str, client: &Client) -> Value {
    let mut map = Map::new();
    map.insert("client_id".into(), Value::from(id));
    map.insert("max_priority".into(), json!(client.max_priority));
    map.insert("allowed_queues".into(), json!(client.allowed_queues));
    map.insert(
        "max_reservation_time".into(),
        json!(client.max_reservation_time),
    );
    map.insert("role".into(), Value::from(client.role().as_str()));
    if let Some(email) = &client.email {
        map.insert("email".into(), Value::from(email.as_str()));
    }
    Value::Object(map)
}

const NO_CLIENT: &str = "Error: Specified client_id does not exist.";

/// `GET /v1/client-permissions`: every client.
pub async fn clients_get(State(svc): State<Services>) -> Result<Response> {
    let list = svc.access.store.read(|a| {
        a.clients
            .iter()
            .map(|(id, c)| client_json(id, c))
            .collect::<Vec<_>>()
    });
    Ok(json_value(StatusCode::OK, &Value::Array(list)))
}

/// `GET /v1/client-permissions/<id>`: one client (404 unknown).
pub async fn client_get(
    State(svc): State<Services>,
    Path(client_id): Path<String>,
) -> Result<Response> {
    let found = svc
        .access
        .store
        .read(|a| a.client(&client_id).map(|c| client_json(&client_id, c)));
    match found {
        Some(v) => Ok(json_value(StatusCode::OK, &v)),
        None => Err(Error::NotFound(NO_CLIENT.into())),
    }
}

/// The caller's role for client management (access control off: admin).
fn acting_role(caller: &Caller) -> Role {
    match caller {
        Caller::Open => Role::Admin,
        other => other
            .permissions()
            .and_then(Permissions::role)
            .unwrap_or(Role::Contributor),
    }
}

fn int_map(field: &str, value: &Value) -> Result<std::collections::BTreeMap<String, i64>> {
    let Value::Object(map) = value else {
        return Err(Error::validation(field, "Not a valid mapping type."));
    };
    map.iter()
        .map(|(k, v)| {
            v.as_i64()
                .map(|n| (k.clone(), n))
                .ok_or_else(|| Error::validation(field, "Not a valid integer."))
        })
        .collect()
}

/// `PUT /v1/client-permissions/<id>`: create a client (needs `client_secret`) or change
/// its permissions, as `access::clients` allows (a caller cannot edit a client above its
/// own role, grant a role above its own, or take over a peer's secret or role).
pub async fn client_put(
    State(svc): State<Services>,
    caller: Caller,
    Path(client_id): Path<String>,
    request: Request,
) -> Result<Response> {
    if client_id == SYSTEM_ADMIN_ID {
        return Err(Error::validation(
            "client_id",
            "Error: System admin client cannot by modified from API.",
        ));
    }
    if let Some(problem) = token::client_id_problem(&client_id) {
        return Err(Error::validation("client_id", problem));
    }
    let body =
        empty_as_object(read_body(request, MAX_BODY, "an access-control request's body").await?);
    let fields = json_object_body(&body)?;
    let mut secret = None;
    let mut role = None;
    let mut max_priority = None;
    let mut max_reservation = None;
    let mut email = None;
    for (field, value) in &fields {
        match field.as_str() {
            "client_secret" => match value {
                Value::String(s) => match token::secret_problem(s) {
                    Some(problem) => return Err(Error::validation(field, problem)),
                    None if s.chars().count() >= MIN_SECRET_LEN => secret = Some(s.clone()),
                    None => {
                        return Err(Error::validation(field, "Shorter than minimum length 15."))
                    }
                },
                _ => return Err(Error::validation(field, "Not a valid string.")),
            },
            "role" => {
                role = Some(value.as_str().and_then(Role::parse).ok_or_else(|| {
                    Error::validation(field, "Must be one of: admin, manager, contributor, agent.")
                })?)
            }
            "max_priority" => max_priority = Some(int_map(field, value)?),
            "max_reservation_time" => max_reservation = Some(int_map(field, value)?),
            "email" => match value.as_str() {
                Some(e) => match token::email_problem(e) {
                    None => email = Some(e.to_owned()),
                    Some(problem) => {
                        return Err(Error::validation(
                            field,
                            format!("Not a valid email address: {problem}."),
                        ))
                    }
                },
                None => return Err(Error::validation(field, "Not a valid email address.")),
            },
            _ => return Err(Error::unknown_field(field)),
        }
    }
    let hash = match secret {
        Some(secret) => Some(
            tokio::task::spawn_blocking(move || token::hash_secret(&secret))
                .await
                .map_err(|e| Error::Internal(format!("bcrypt task failed: {e}")))??,
        ),
        None => None,
    };
    let mine = acting_role(&caller);
    let who = caller.client_id().unwrap_or("open").to_owned();
    let mut created = false;
    svc.access
        .store
        .record_durably(|access| {
            let existing = access.client(&client_id);
            created = existing.is_none();
            if created && hash.is_none() {
                return Err(Error::InvalidInput(
                    "Error: Missing client_secret in request body for new client".into(),
                ));
            }
            check_client_edit(ClientEdit {
                caller: caller.client_id(),
                caller_role: mine,
                target: &client_id,
                current_role: existing.map(Client::role),
                new_role: role,
                new_secret: hash.is_some(),
            })?;
            let mut client = existing.cloned().unwrap_or_default();
            if let Some(h) = &hash {
                client.secret_hash = h.as_str().into();
            }
            if let Some(r) = role {
                client.role = Some(r);
            }
            if let Some(m) = &max_priority {
                client.max_priority = m.clone();
            }
            if let Some(m) = &max_reservation {
                client.max_reservation_time = m.clone();
            }
            if let Some(e) = &email {
                client.email = Some(e.clone());
            }
            Ok(Some(Event::ClientSaved {
                id: Name::from(client_id.as_str()),
                client: Box::new(client),
            }))
        })
        .await?;
    tracing::info!(target: "flinger::security", event = if created { "user_created" } else { "user_updated" }, by = &*who, client = client_id.as_str(), "client permissions saved");
    Ok(text(if created {
        format!("Created permissions for client '{client_id}'")
    } else {
        format!("Updated permissions for client '{client_id}'")
    }))
}

/// `DELETE /v1/client-permissions/<id>` (admin): the client, its tokens and secrets.
pub async fn client_delete(
    State(svc): State<Services>,
    caller: Caller,
    Path(client_id): Path<String>,
) -> Result<Response> {
    if client_id == SYSTEM_ADMIN_ID {
        return Err(Error::validation(
            "client_id",
            "Error: System admin client cannot by deleted from API.",
        ));
    }
    svc.access
        .store
        .record_durably(|access| {
            access
                .client(&client_id)
                .ok_or_else(|| Error::NotFound(NO_CLIENT.into()))?;
            Ok(Some(Event::ClientDeleted {
                id: Name::from(client_id.as_str()),
            }))
        })
        .await?;
    tracing::info!(target: "flinger::security", event = "user_deleted", by = caller.client_id().unwrap_or("open"), client = client_id.as_str(), "client deleted");
    Ok(ok())
}

const NOT_RESTRICTED: &str = "Error: Restricted queue not found.";

/// `GET /v1/restricted-queues`: `[{queue, owners}]`.
pub async fn restricted_queues_get(State(svc): State<Services>) -> Result<Response> {
    let list = svc.access.store.read(|a| {
        let owners = a.owners();
        a.restricted
            .iter()
            .map(
                |q| json!({"queue": &**q, "owners": owners.get(&**q).cloned().unwrap_or_default()}),
            )
            .collect::<Vec<_>>()
    });
    Ok(json_value(StatusCode::OK, &Value::Array(list)))
}

/// `GET /v1/restricted-queues/<queue>`: `{queue, owners}` (404 when not restricted).
pub async fn restricted_queue_get(
    State(svc): State<Services>,
    Path(queue): Path<String>,
) -> Result<Response> {
    let found = svc.access.store.read(|a| {
        a.is_restricted(&queue)
            .then(|| json!({"queue": &queue, "owners": a.owners().get(queue.as_str()).cloned().unwrap_or_default()}))
    });
    match found {
        Some(v) => Ok(json_value(StatusCode::OK, &v)),
        None => Err(Error::NotFound(NOT_RESTRICTED.into())),
    }
}

/// The `client_id` of a restricted-queue body: 422 when absent, 400 when empty.
async fn restricted_client_id(request: Request) -> Result<String> {
    let body =
        empty_as_object(read_body(request, MAX_BODY, "an access-control request's body").await?);
    let value = json_object_body(&body)?;
    super::wire::only_keys(&value, &["client_id"])?;
    match value.get("client_id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::String(_)) => Err(Error::InvalidInput("Error: Missing client ID.".into())),
        Some(_) => Err(Error::validation("client_id", "Not a valid string.")),
        None => Err(Error::validation(
            "client_id",
            "Missing data for required field.",
        )),
    }
}

/// `POST /v1/restricted-queues/<queue>` `{client_id}`: restrict the queue (it must be
/// served by some agent) and allow the client on it.
pub async fn restricted_queue_post(
    State(svc): State<Services>,
    Path(queue): Path<String>,
    request: Request,
) -> Result<Response> {
    let client_id = restricted_client_id(request).await?;
    if svc.access.store.read(|a| a.client(&client_id).is_none()) {
        return Err(Error::NotFound(NO_CLIENT.into()));
    }
    let wanted = queue.clone();
    let served = read_agents(&svc, move |agents| {
        agents.agents.values().any(|r| {
            r.fields_map()
                .get("queues")
                .and_then(Value::as_array)
                .is_some_and(|qs| qs.iter().any(|q| q.as_str() == Some(wanted.as_str())))
        })
    })
    .await?;
    if !served {
        return Err(Error::NotFound(
            "Error: No agent is associated with the specified queue.".into(),
        ));
    }
    svc.access
        .store
        .record_durably(|access| {
            access
                .client(&client_id)
                .ok_or_else(|| Error::NotFound(NO_CLIENT.into()))?;
            Ok(Some(Event::QueueRestricted {
                queue: Name::from(queue.as_str()),
                client_id: Name::from(client_id.as_str()),
            }))
        })
        .await?;
    Ok(ok())
}

/// `DELETE /v1/restricted-queues/<queue>` `{client_id}`: lift the restriction (for
/// everyone, as upstream) and drop the queue from that client's list.
pub async fn restricted_queue_delete(
    State(svc): State<Services>,
    Path(queue): Path<String>,
    request: Request,
) -> Result<Response> {
    if !svc.access.store.read(|a| a.is_restricted(&queue)) {
        return Err(Error::NotFound(NOT_RESTRICTED.into()));
    }
    let client_id = restricted_client_id(request).await?;
    svc.access
        .store
        .record_durably(|access| {
            if !access.is_restricted(&queue) {
                return Err(Error::NotFound(NOT_RESTRICTED.into()));
            }
            Ok(Some(Event::QueueUnrestricted {
                queue: Name::from(queue.as_str()),
                client_id: Name::from(client_id.as_str()),
            }))
        })
        .await?;
    Ok(ok())
}

/// Adds upstream's `restricted_to: {queue: [owners]}` to agent objects: for each queue
/// the agent serves that is restricted and has owners.
pub fn add_restricted_to(svc: &Services, agents: &mut [Value]) {
    svc.access.store.read(|a| {
        let owners = if a.restricted.is_empty() {
            Default::default()
        } else {
            a.owners()
        };
        for agent in agents.iter_mut() {
            let mut restricted = Map::new();
            if let Some(queues) = agent.get("queues").and_then(Value::as_array) {
                for q in queues.iter().filter_map(Value::as_str) {
                    if let Some(o) = owners
                        .get(q)
                        .filter(|o| !o.is_empty() && a.is_restricted(q))
                    {
                        restricted.insert(q.to_owned(), json!(o));
                    }
                }
            }
            if let Value::Object(map) = agent {
                map.insert("restricted_to".into(), Value::Object(restricted));
            }
        }
    });
}

/// The caller's client id if it may manage `client_id`'s secrets (upstream: only its
/// own; 401 without a login, 403 for another client's), and the path if valid (422).
fn secret_owner<'a>(caller: &'a Caller, client_id: &str, path: &str) -> Result<&'a str> {
    let Some(me) = caller.client_id() else {
        return Err(Error::Unauthorized(
            "A login (known client_id) is required to securely store information.".into(),
        ));
    };
    if me != client_id {
        return Err(Error::Forbidden(format!(
            "'{client_id}' doesn't match authenticated client id"
        )));
    }
    if !secrets::valid_path(path) {
        return Err(Error::validation(
            "path",
            format!(
                "Invalid value '{path}', not a valid path. Paths must only contain alphanumeric characters, hyphens (-), underscores (_), and forward slashes (/), and must not start or end with a forward slash (/)."
            ),
        ));
    }
    Ok(me)
}

/// A secret's `expire_after`: whole seconds, at least 1 (marshmallow's `Integer` with
/// `Range(min=1)`, upstream), at most `u64::MAX` (later than any clock reaches).
fn expiry_secs(value: &Value) -> Result<u64> {
    let refuse = |reason: String| Err(Error::validation("expire_after", reason));
    let Some(n) = value.as_number() else {
        return refuse("Not a valid integer.".into());
    };
    if let Some(secs) = n.as_u64() {
        return if secs >= 1 {
            Ok(secs)
        } else {
            refuse("Must be greater than or equal to 1.".into())
        };
    }
    // Negative integers, and numbers JSON wrote with a fraction or exponent (`1.0` is 1,
    // as marshmallow reads it).
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() != 0.0 || f.is_nan() {
        refuse("Not a valid integer.".into())
    } else if f < 1.0 {
        refuse("Must be greater than or equal to 1.".into())
    } else if f >= u64::MAX as f64 {
        refuse(format!("Must be at most {}.", u64::MAX))
    } else {
        Ok(f as u64)
    }
}

/// `PUT /v1/secrets/<client_id>/<path>` `{value, expire_after?, ephemeral?}`: store a
/// secret, sealed; → `{"expires_at": ISO|null}`.
pub async fn secrets_put(
    State(svc): State<Services>,
    caller: Caller,
    Path((client_id, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response> {
    let Some(sealer) = &svc.access.secrets else {
        return Err(Error::InvalidInput("No secrets store".into()));
    };
    let owner = secret_owner(&caller, &client_id, &path)?.to_owned();
    let body = empty_as_object(
        read_body(
            request,
            secrets::MAX_SECRET_BYTES + MAX_BODY,
            "a secret's body (its value at most 65536 bytes)",
        )
        .await?,
    );
    let fields = json_object_body(&body)?;
    super::wire::only_keys(&fields, &["value", "expire_after", "ephemeral"])?;
    let value = match fields.get("value") {
        Some(Value::String(v)) if !v.is_empty() && v.len() <= secrets::MAX_SECRET_BYTES => v,
        Some(Value::String(_)) => {
            return Err(Error::validation(
                "value",
                format!("Length must be 1 to {} bytes.", secrets::MAX_SECRET_BYTES),
            ))
        }
        None => {
            return Err(Error::validation(
                "value",
                "Missing data for required field.",
            ))
        }
        Some(_) => return Err(Error::validation("value", "Not a valid string.")),
    };
    let ephemeral = match fields.get("ephemeral") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::validation("ephemeral", "Not a valid boolean.")),
    };
    let expire_after = match fields.get("expire_after") {
        None => Some(secrets::DEFAULT_EXPIRY_SECS),
        Some(Value::Null) => None,
        Some(v) => Some(expiry_secs(v)?),
    };
    if ephemeral && fields.get("expire_after").is_some_and(|v| !v.is_null()) {
        return Err(Error::validation(
            "_schema",
            "Provide either 'ephemeral' or 'expire_after', not both.",
        ));
    }
    let expires_at = if ephemeral {
        None
    } else {
        expire_after.map(|secs| now().saturating_add(secs))
    };
    let sealed = sealer.seal(&owner, &path, value);
    let at = now();
    svc.access
        .store
        .record_all_durably(|access| {
            let mut events = Vec::with_capacity(2);
            let replacing = access
                .secrets
                .contains_key(&(Name::from(owner.as_str()), path.clone()));
            if !replacing && access.secret_count(&owner) >= MAX_SECRETS_PER_CLIENT {
                // Expired secrets read as absent: they do not hold a place. They go (as
                // a recorded event, so replay agrees) and only live ones count.
                let expired = access.expired_secrets(&owner, at).len();
                if access.secret_count(&owner) - expired >= MAX_SECRETS_PER_CLIENT {
                    return Err(Error::InvalidInput(format!(
                        "At most {MAX_SECRETS_PER_CLIENT} secrets per client"
                    )));
                }
                events.push(Event::SecretsExpired {
                    client_id: Name::from(owner.as_str()),
                    at,
                });
            }
            events.push(Event::SecretStored {
                client_id: Name::from(owner.as_str()),
                path: path.as_str().into(),
                sealed,
                expires_at,
                ephemeral,
            });
            Ok(events)
        })
        .await?;
    Ok(json_value(
        StatusCode::OK,
        &json!({"expires_at": expires_at.map(crate::http::wire::iso_z)}),
    ))
}

/// `DELETE /v1/secrets/<client_id>/<path>`: remove a secret.
pub async fn secrets_delete(
    State(svc): State<Services>,
    caller: Caller,
    Path((client_id, path)): Path<(String, String)>,
) -> Result<Response> {
    if svc.access.secrets.is_none() {
        return Err(Error::InvalidInput("No secrets store".into()));
    }
    let owner = secret_owner(&caller, &client_id, &path)?.to_owned();
    svc.access
        .store
        .record_durably(|access| {
            Ok(access
                .secrets
                .contains_key(&(Name::from(owner.as_str()), path.clone()))
                .then(|| Event::SecretDeleted {
                    client_id: Name::from(owner.as_str()),
                    path: path.as_str().into(),
                }))
        })
        .await?;
    Ok(ok())
}
