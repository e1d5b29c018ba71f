//! Access control in one place: [`authorize`] (called by `http::front` for every request)
//! resolves the caller once per request (from its bearer token, or anonymous), checks the
//! route × role table ([`table`]) and the per-job ownership checks, and hands the handler
//! a [`Caller`] (kept in the request's [`Requester`], read by `Caller`'s extractor).
//! Handlers never look at the `Authorization` header themselves.
//!
//! - `table`: the route × role table (data, tested on its own against upstream's).
//! - `clients`: who may change which client (the role hierarchy of client edits).
//! - `token`: JWT access tokens, refresh tokens, bcrypt secrets, the signing key.
//! - `store`: the access partition (clients, refresh-token hashes, restricted queues,
//!   sealed secrets).
//! - `secrets`: sealing job secrets and resolving them for the dispatched agent.
//! - `admin`: the `flinger client` subcommand.
//! - `origin`: refusing a `Host` not allowed ([`check_host`], DNS rebinding) and
//!   browsers' state-changing requests made from another site (in every mode, before
//!   anything else).
//! - `limiter`: the limit on failed token requests per (client, address) and per address.
//! - `address`: what counts as one client address wherever something is keyed by one (an
//!   IPv6 /64; an IPv4-mapped address as its IPv4 address).
//! - `seclog`: the security log, throttled per kind without hiding who was refused.
//!
//! Modes ([`AccessMode`]): `off` lets every request through as [`Caller::Open`] (full
//! rights; the server refuses to start off loopback unless told otherwise); `on` is
//! upstream Testflinger without OIDC (no token = contributor); `strict` needs a token on
//! every endpoint that is not public.
//!
//! Authentication and authorisation failures are logged as security events (target
//! `flinger::security`: who, what, from where), never with a secret or a token.

pub mod address;
pub mod admin;
pub mod clients;
pub mod origin;
pub mod secrets;
pub mod store;
pub mod table;
pub mod token;

mod limiter;
mod seclog;
pub use limiter::{Admitted, Key, Limiter, Refused, ADDRESS_SHARE};
pub use seclog::{handler_refusal, security_event};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::actors::Services;
use crate::config::{AccessMode, Config};
use crate::error::{Error, Result};
use crate::model::access::{self, Asked, Permissions, RefreshId, Role};
use crate::model::registry::{Submission, Submitter};
use crate::model::{Event, JobId, Name};
use table::{Check, Roles};

/// Who sent a request: its peer address (set per connection by `server::Tracked`) and,
/// once [`authorize`] has let it through, its [`Caller`].
///
/// One request extension for both, not one each: axum adds two of its own (the matched
/// route and its parameters), and a fourth extension grows the request's extension map
/// (a second allocation and a rehash, ~470 instructions a request).
#[derive(Clone, Debug, Default)]
pub struct Requester {
    /// The client's address, as the failed-login limit counts it and security logs name
    /// it: the connection's peer; for a request another node forwarded (`ha`), the
    /// client's address that node vouched for with the nodes' shared key, else the
    /// connection's peer (whoever sent it). `None` for a request the server did not
    /// accept itself.
    pub peer: Option<SocketAddr>,
    /// Whether another node forwarded the request: its client is then not on this
    /// server's own host, whatever `peer` says (a loopback client of a standby is on the
    /// standby's host).
    pub forwarded: bool,
    /// Set by [`authorize`] for every request it lets through to a handler.
    pub caller: Option<Caller>,
}

impl Requester {
    /// `extensions`' requester, added empty if the request has none yet.
    pub fn of(extensions: &mut axum::http::Extensions) -> &mut Requester {
        extensions.get_or_insert_default::<Requester>()
    }
}

/// Who is calling, as the access layer resolved it. A handler takes it as an argument
/// (its extractor reads the request's [`Requester`]).
#[derive(Clone, Debug)]
pub enum Caller {
    /// Access control is off: every right.
    Open,
    /// No `Authorization` header.
    Anonymous,
    /// An `Authorization` header that is not a bearer token (upstream: no role).
    Unidentified,
    /// A verified access token.
    Client(Arc<Permissions>),
}

impl Caller {
    /// The authenticated client id.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Caller::Client(p) => Some(&p.client_id),
            _ => None,
        }
    }

    /// The token's permissions (`None` for anyone without a token).
    pub fn permissions(&self) -> Option<&Permissions> {
        match self {
            Caller::Client(p) => Some(p),
            _ => None,
        }
    }

    /// The client id of an agent credential (a token with the agent role).
    pub fn agent_credential(&self) -> Option<&str> {
        match self {
            Caller::Client(p) if p.role() == Some(Role::Agent) => Some(&p.client_id),
            _ => None,
        }
    }

    /// Whether the caller may act on other clients' jobs: access control off, or a
    /// manager or admin.
    pub fn is_privileged(&self) -> bool {
        match self {
            Caller::Open => true,
            Caller::Client(p) => matches!(p.role(), Some(Role::Manager | Role::Admin)),
            _ => false,
        }
    }

    /// The caller's role under `mode` (`None`: no role at all).
    fn role(&self, mode: AccessMode) -> Option<Role> {
        match self {
            Caller::Open => Some(Role::Admin),
            Caller::Anonymous if mode == AccessMode::On => Some(Role::Contributor),
            Caller::Anonymous | Caller::Unidentified => None,
            Caller::Client(p) => p.role(),
        }
    }

    /// Who, for security logs.
    fn who(&self) -> &str {
        match self {
            Caller::Client(p) => &p.client_id,
            Caller::Unidentified => "unidentified",
            _ => "anonymous",
        }
    }
}

/// Access control's shared state: the mode, the token signer, the access partition and
/// the failed-login limiter.
pub struct Gate {
    /// The mode.
    pub mode: AccessMode,
    /// Signs and verifies access tokens.
    pub signer: token::Signer,
    /// Clients, refresh tokens, restricted queues.
    pub store: store::AccessStore,
    /// Access token lifetime, seconds.
    pub access_ttl: u64,
    /// Refresh token lifetime, seconds.
    pub refresh_ttl: u64,
    /// Failed token requests per (client, address) and per address.
    pub limiter: Limiter,
    /// The job secrets store's cipher (`None`: no master key, no secrets store).
    pub secrets: Option<secrets::Sealer>,
    /// Tokens already verified → their client, `exp`, secret fingerprint and refresh
    /// token: a client's
    /// repeated requests skip the signature check and claim parsing. Bounded (cleared when
    /// full); an entry is used only while its token is unexpired, and the signing key
    /// never changes while the server runs, so a hit is exactly what verifying would give.
    verified: Mutex<crate::model::FastMap<Box<str>, Verified>>,
}

/// A verified token's client id, `exp` (unix seconds), the fingerprint of the secret it
/// was issued under and the refresh token it was issued with or from.
type Verified = (Name, u64, u64, RefreshId);

/// Most verified tokens remembered.
const VERIFIED_CACHE: usize = 10_000;

impl Gate {
    /// The gate for `config` over the recovered partition.
    /// `key` signs and verifies tokens ([`token::signing_key`]).
    pub fn new(config: &Config, key: &[u8], store: store::AccessStore) -> Result<Gate> {
        Ok(Gate {
            mode: config.access,
            signer: token::Signer::new(key, config.jwt_leeway.as_secs()),
            store,
            access_ttl: config.access_token_ttl.as_secs(),
            refresh_ttl: config.refresh_token_ttl.as_secs(),
            limiter: Limiter::new(config.token_failures_per_minute),
            secrets: secrets::Sealer::from_env()?,
            verified: Mutex::new(Default::default()),
        })
    }

    /// Resolves the caller from the request headers. A token says who its client is; what
    /// the client may do is what the access store says now, not the permissions the token
    /// was issued with: a client deleted, demoted or given fewer rights is held to that on
    /// its next request (its tokens live up to `--access-token-secs`), and a deleted
    /// client's token is refused (401), as is one issued under a secret the client no
    /// longer has (its secret was replaced: the fix for a leaked credential) or with or
    /// from a refresh token an admin has revoked.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller> {
        if self.mode == AccessMode::Off {
            return Ok(Caller::Open);
        }
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Ok(Caller::Unidentified);
        };
        let token = token.trim();
        let now = crate::actors::now();
        let cached = self
            .verified
            .lock()
            .get(token)
            .filter(|(_, exp, _, _)| now <= exp.saturating_add(self.signer.leeway()))
            .map(|(client_id, _, secret, refresh)| (client_id.clone(), *secret, *refresh));
        let (client_id, secret, refresh) = match cached {
            Some(cached) => cached,
            None => {
                let claimed = self.signer.verify(token, now)?;
                let client_id = Name::from(claimed.permissions.client_id);
                let mut verified = self.verified.lock();
                if verified.len() >= VERIFIED_CACHE {
                    verified.clear();
                }
                let entry = (
                    client_id.clone(),
                    claimed.exp,
                    claimed.secret,
                    claimed.refresh,
                );
                verified.insert(token.into(), entry);
                (client_id, claimed.secret, claimed.refresh)
            }
        };
        match self.store.current(&client_id, refresh) {
            Some(current) if current.secret == secret && current.refresh_revoked => {
                Err(Error::Unauthorized(format!(
                    "The token was issued from a refresh token of client {client_id:?} that \
                     an admin has revoked: obtain a new one with the client's secret"
                )))
            }
            Some(current) if current.secret == secret => Ok(Caller::Client(current.permissions)),
            Some(_) => Err(Error::Unauthorized(format!(
                "The token was issued before client {client_id:?}'s secret changed: \
                 obtain a new one with the new secret"
            ))),
            None => Err(Error::Unauthorized(format!(
                "The token's client {client_id:?} no longer exists"
            ))),
        }
    }
}

/// The client address of a request (set per connection by the server, or vouched for by
/// the node that forwarded it), for security logs and the limiter.
pub fn peer(request_extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    request_extensions.get::<Requester>().and_then(|r| r.peer)
}

/// Whether a request comes from this server's own host: a loopback peer (IPv4's too when
/// it reaches a dual-stack socket as `::ffff:127.0.0.1`), and not forwarded by another
/// node (operator-only routes with access control off).
pub fn from_own_host(request_extensions: &axum::http::Extensions) -> bool {
    request_extensions.get::<Requester>().is_some_and(|r| {
        !r.forwarded && r.peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
    })
}

/// The operator-only routes' rule with access control off (with it on, the access
/// table's row decides): `doing` (e.g. "Deleting a job") is allowed only from the
/// server's own host ([`from_own_host`]), else 403 saying so.
pub fn operator_only(
    caller: &Caller,
    request_extensions: &axum::http::Extensions,
    doing: &str,
) -> Result<()> {
    if matches!(caller, Caller::Open) && !from_own_host(request_extensions) {
        return Err(Error::Forbidden(format!(
            "{doing} is for the operator: only allowed from the server's own host"
        )));
    }
    Ok(())
}

/// The caller of a request [`authorize`] let through. A handler reached without one is a
/// route missing from the access table's path through `http::front`, a server bug: 500,
/// as axum's own `Extension` extractor answers for a missing extension.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller> {
        parts
            .extensions
            .get::<Requester>()
            .and_then(|r| r.caller.clone())
            .ok_or_else(|| {
                Error::Internal("the request reached its handler without a caller".into())
            })
    }
}

/// The first check of every request, before any route's (called by `http::front`, and by
/// a standby before it forwards, `ha`): its `Host` must name this server as `config`
/// allows ([`origin::check_host`]); a refusal (403, for the caller to answer) is logged as
/// a security event. The [`origin::HostAdmitted`] says how it passed.
pub fn check_host(config: &Config, request: &Request) -> Result<origin::HostAdmitted> {
    let host = request.headers().get(axum::http::header::HOST);
    origin::check_host(origin::Hosts::of(config), host).inspect_err(|e| {
        let from = peer(request.extensions());
        let (method, path) = (request.method().as_str(), request.uri().path());
        security_event("host_refused", "unknown", method, path, from, e.message());
    })
}

/// Access control for one request (called by `http::front` for every request): resolve
/// the caller, check the table and the per-job checks, and hand the handler the
/// [`Caller`] in the request's [`Requester`] (`Ok`), or the refusal to answer (`Err`).
///
/// `route` is the template the router matched (`/v1/job/{id}`). A request whose method
/// and route have no row in [`table`] is one the router itself refuses (no such route:
/// 404; no such method: 405): it passes untouched, without resolving its caller. Every
/// routed method has a row: the table's tests hold it to the OpenAPI document, and the
/// OpenAPI test holds that to the router.
pub async fn authorize(
    svc: &Services,
    route: &str,
    mut request: Request,
) -> std::result::Result<Request, Response> {
    let gate = &svc.access;
    // In every mode: with access control off, anyone's browser is a full-rights client.
    // (The `Host` was checked before, by `check_host`.)
    let asked = origin::Asked {
        method: request.method(),
        changing_read: table::CHANGING_READS.contains(&route),
    };
    // axum answers a HEAD with the GET handler and drops the body: for a read that
    // changes state (a pop dispatches a job, the legacy output read marks it read) the
    // change would be made and what it hands out thrown away (a job dispatched to no one).
    if asked.changing_read && request.method() == axum::http::Method::HEAD {
        return Err(crate::error::Error::MethodNotAllowed(format!(
            "HEAD {route} would change state (it is answered by GET without a body): use GET"
        ))
        .into_response());
    }
    if let Err(e) = origin::check(&asked, request.headers()) {
        let from = peer(request.extensions());
        let (method, path) = (request.method().as_str(), request.uri().path());
        security_event("cross_origin", "unknown", method, path, from, e.message());
        return Err(e.into_response());
    }
    if gate.mode == AccessMode::Off {
        Requester::of(request.extensions_mut()).caller = Some(Caller::Open);
        return Ok(request);
    }
    let Some(rule) = table::lookup(request.method().as_str(), route) else {
        return Ok(request);
    };
    // Boxed: inline, the checks' state (the head, the caller, the job check's future:
    // ~1 KB) would be part of every request's middleware future, which is copied whole
    // when it is boxed, with access control off too.
    Box::pin(authorize_by_rule(svc, rule, request)).await
}

/// [`authorize`] once access control is on and the route has a `rule`.
async fn authorize_by_rule(
    svc: &Services,
    rule: &'static table::Rule,
    request: Request,
) -> std::result::Result<Request, Response> {
    let gate = &svc.access;
    // The head is borrowed for the checks and the security log, not copied: a request
    // allocates nothing here beyond what resolving the caller takes.
    let (mut parts, body) = request.into_parts();
    let rule = match rule.check {
        Check::Overview if crate::http::dash::wants_html(&parts.headers) => &table::OVERVIEW,
        _ => rule,
    };
    let about = match rule.check {
        Check::JobOwner | Check::JobAgent => {
            path_param(&mut parts, "id").map(|id| About::Job(id.as_deref().and_then(JobId::parse)))
        }
        Check::AgentRecord => path_param(&mut parts, "name").map(About::Agent),
        Check::None | Check::AgentCookie | Check::Overview => Ok(About::Nothing),
    };
    let about = match about {
        Ok(about) => about,
        Err(e) => return Err(e.into_response()),
    };
    let method = parts.method.as_str();
    let path = parts.uri.path();
    let from = peer(&parts.extensions);
    let caller = match gate.caller(&parts.headers) {
        Ok(caller) => caller,
        Err(e) => {
            security_event("authn_fail", "unknown", method, path, from, e.message());
            return Err(e.into_response());
        }
    };
    let cookie = match rule.check {
        Check::AgentCookie => crate::http::wire::agent_cookie(&parts.headers),
        _ => None,
    };
    if let Err(e) = check(svc, &caller, rule, about, cookie.as_deref()).await {
        let kind = if e.status() == 401 {
            "authn_fail"
        } else {
            "authz_fail"
        };
        security_event(kind, caller.who(), method, path, from, e.message());
        return Err(e.into_response());
    }
    Requester::of(&mut parts.extensions).caller = Some(caller);
    Ok(Request::from_parts(parts, body))
}

/// The route's `{key}` exactly as the handler's `Path` extractor will read it (axum's
/// matched parameters, percent-decoded); `None` when it is not UTF-8 (the handler
/// refuses it too).
///
/// Checks decide on this, never on the raw path: `/v1/job/%63…/action` names the same
/// job as `/v1/job/c…/action` to the handler, and the raw segment does not parse.
///
/// axum's extractor is async but never waits; polled once here, so `authorize`'s future
/// does not carry its state (futures are moved and copied per request).
///
/// Fails closed: a route without `{key}`, or an extractor that would wait, is a bug
/// answered 500, never a request let past its check.
fn path_param(parts: &mut axum::http::request::Parts, key: &str) -> Result<Option<String>> {
    use axum::extract::rejection::RawPathParamsRejection;
    use axum::extract::{FromRequestParts, RawPathParams};
    use futures_util::FutureExt;
    let bug = |what: &str| Error::Internal(format!("access check: {what} for {{{key}}}"));
    let extracted = RawPathParams::from_request_parts(parts, &())
        .now_or_never()
        .ok_or_else(|| bug("the path extractor would wait"))?;
    let params = match extracted {
        Ok(params) => params,
        // The handler's `Path` refuses the same text (400).
        Err(RawPathParamsRejection::InvalidUtf8InPathParam(_)) => return Ok(None),
        Err(_) => return Err(bug("no path parameters")),
    };
    let (_, value) = params
        .iter()
        .find(|(name, _)| *name == key)
        .ok_or_else(|| bug("no such parameter"))?;
    Ok(Some(value.to_owned()))
}

/// What a request is about, for the checks that follow the role check, as the handler
/// reads it from the path.
enum About {
    /// The route's `{id}`, parsed (`None`: it does not parse, and the handler, reading
    /// the same text, refuses it).
    Job(Option<JobId>),
    /// The route's `{name}`.
    Agent(Option<String>),
    /// Nothing the checks need.
    Nothing,
}

/// The table's `rule` and then its per-job or per-agent check, for `caller` asking about
/// `about`, naming itself `agent` (its `agent_name` cookie) where the rule asks for it.
async fn check(
    svc: &Services,
    caller: &Caller,
    rule: &table::Rule,
    about: About,
    agent: Option<&str>,
) -> Result<()> {
    let gate = &svc.access;
    let Roles::Only(roles) = rule.roles else {
        return Ok(());
    };
    let role = caller.role(gate.mode);
    if gate.mode == AccessMode::Strict && caller.client_id().is_none() {
        return Err(Error::Unauthorized(
            "Authentication is required for specified endpoint".into(),
        ));
    }
    if !role.is_some_and(|r| roles.contains(&r)) {
        return Err(Error::Forbidden(format!(
            "Specified action requires role: {}",
            table::role_list(roles)
        )));
    }
    match rule.check {
        Check::None | Check::Overview => Ok(()),
        Check::AgentCookie => match (agent, caller.agent_credential()) {
            (None, _) => Err(Error::Unauthorized("Agent not identified".into())),
            (Some(name), Some(me)) => check_agent_name(svc, me, name),
            (Some(_), None) => Ok(()),
        },
        Check::AgentRecord => match (caller.agent_credential(), about) {
            (Some(me), About::Agent(Some(name))) => check_agent_writer(svc, me, &name),
            _ => Ok(()),
        },
        Check::JobOwner | Check::JobAgent => {
            let About::Job(Some(id)) = about else {
                return Ok(()); // the handler answers the malformed id
            };
            if rule.check == Check::JobOwner {
                check_job_owner(svc, caller, id).await
            } else {
                check_job_agent(svc, caller, id).await
            }
        }
    }
}

/// Whether agent credential `me` may act as agent `name` (its `agent_name` cookie): only
/// for a record it may change ([`check_agent_writer`]) that exists, so one agent cannot
/// take jobs in another's name (dodging `exclude_agents`, and leaving the other to be
/// blamed when the job's agent goes silent). The stock agent posts its record before it
/// polls, and gets its cookie from that post.
fn check_agent_name(svc: &Services, me: &str, name: &str) -> Result<()> {
    let Some(writer) = svc
        .agent_data
        .read()
        .agents
        .get(name)
        .map(|record| record.writer.clone())
    else {
        return Err(Error::Forbidden(format!(
            "Agent {name:?} has no record: an agent posts its data \
             (POST /v1/agents/data/<name>, which sets the agent_name cookie) before it takes jobs"
        )));
    };
    refuse_if_kept(svc, me, name, writer, "take jobs in its name")
}

/// Whether agent credential `me` may change agent `name`'s record: refused (403) when
/// another agent credential wrote it last and still exists. A credential that was
/// deleted gives its records up, so replacing a lab's agent credential needs no wait.
fn check_agent_writer(svc: &Services, me: &str, name: &str) -> Result<()> {
    let writer = svc
        .agent_data
        .read()
        .agents
        .get(name)
        .and_then(|record| record.writer.clone());
    refuse_if_kept(svc, me, name, writer, "change its record")
}

/// 403 when agent `name`'s record was last written by `writer`, another agent credential
/// than `me` that still exists; `doing` completes the refusal's "another agent
/// credential may not ...".
fn refuse_if_kept(
    svc: &Services,
    me: &str,
    name: &str,
    writer: Option<Name>,
    doing: &str,
) -> Result<()> {
    let Some(writer) = writer.filter(|w| &**w != me) else {
        return Ok(());
    };
    if svc.access.store.read(|a| a.client(&writer).is_none()) {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "Agent {name:?} is kept by agent credential {writer:?}: another agent credential \
         may not {doing} until a manager posts to its record (which releases it) or that \
         credential is deleted"
    )))
}

/// Testflinger's submission checks for `caller` (priority, restricted queue,
/// reservation timeout), and who submits for the registry's resubmission rule.
pub fn check_submission(svc: &Services, caller: &Caller, sub: &Submission) -> Result<Submitter> {
    // Secrets first, whatever the mode: with access control off no one is authenticated,
    // so a job naming secrets is refused with upstream's message ("No secrets store"
    // without a store, else "Missing client ID").
    check_job_secrets(svc, caller, &sub.body)?;
    if matches!(caller, Caller::Open) {
        return Ok(Submitter {
            owner: None,
            privileged: true,
        });
    }
    let restricted = svc.access.store.read(|a| a.is_restricted(&sub.queue));
    access::check_submission(
        caller.permissions(),
        Asked {
            queue: &sub.queue,
            priority: sub.priority,
            reservation: reservation_secs(&sub.body),
            restricted,
        },
    )?;
    Ok(Submitter {
        owner: caller.client_id().map(Name::from),
        privileged: caller.is_privileged(),
    })
}

/// Whether `word` occurs anywhere in the JSON text `body`: the cheap test before parsing
/// it for a field of that name (a vectorised search; this runs on every submit). The
/// words' searchers are built once: `memmem::find` builds one per call, ~400 instructions
/// a submit, more than searching a small job's text.
fn mentions(body: &[u8], word: &memchr::memmem::Finder<'static>) -> bool {
    word.find(body).is_some()
}

/// `"secrets"`, for [`mentions`].
static SECRETS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"secrets"));

/// `"reserve_data"`, for [`mentions`].
static RESERVE_DATA: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"reserve_data"));

/// Upstream's `validate_secrets`: a job naming secrets needs a secrets store, an
/// authenticated submitter and every path stored for that submitter (422 otherwise).
fn check_job_secrets(svc: &Services, caller: &Caller, body: &[u8]) -> Result<()> {
    if !mentions(body, &SECRETS) {
        return Ok(());
    }
    let Ok(job) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(());
    };
    let Some(wanted) = secrets::job_secrets(&job) else {
        return Ok(());
    };
    let refuse = |message: String| Error::Validation {
        message,
        field: "test_data".into(),
        reason: "secrets".into(),
    };
    let Some(sealer) = &svc.access.secrets else {
        return Err(refuse("No secrets store".into()));
    };
    let Some(client) = caller.client_id() else {
        return Err(refuse("Missing client ID (user not authenticated)".into()));
    };
    let now = crate::actors::now();
    // A stored secret the server's key cannot open (sealed under another
    // FLINGER_SECRETS_KEY) is as inaccessible as a missing one: upstream would hand the
    // agent "" for it, and the stock agent then skips the job's test phase.
    let (mut missing, mut sealed_elsewhere) = (Vec::new(), Vec::new());
    svc.access.store.read(|a| {
        for path in wanted.values().map(|p| p.as_str().unwrap_or_default()) {
            match a.secret(client, path, now) {
                None => missing.push(path.to_owned()),
                Some(s) if sealer.open(client, path, &s.sealed).is_none() => {
                    sealed_elsewhere.push(path.to_owned())
                }
                Some(_) => {}
            }
        }
    });
    if missing.is_empty() && sealed_elsewhere.is_empty() {
        return Ok(());
    }
    sealed_elsewhere.sort();
    let elsewhere = if sealed_elsewhere.is_empty() {
        String::new()
    } else {
        format!(
            " ({} stored under another secrets key than the server's FLINGER_SECRETS_KEY: \
             store again)",
            sealed_elsewhere.join(", ")
        )
    };
    missing.append(&mut sealed_elsewhere);
    missing.sort();
    Err(refuse(format!(
        "Inaccessible secret paths: {}{elsewhere}",
        missing.join(", ")
    )))
}

/// The start-up check of the stored job secrets against the server's key: how many are
/// stored, and how many of them the key cannot open (sealed under another
/// `FLINGER_SECRETS_KEY`); logged as an error when any cannot be, or when secrets are
/// stored and no key is set (jobs naming them are then refused at submission, 422).
pub fn check_stored_secrets(gate: &Gate) {
    let (stored, sealed_elsewhere) = gate.store.read(|a| {
        let unopened = gate.secrets.as_ref().map_or(0, |sealer| {
            a.secrets
                .iter()
                .filter(|((client, path), s)| sealer.open(client, path, &s.sealed).is_none())
                .count()
        });
        (a.secrets.len(), unopened)
    });
    if stored > 0 && gate.secrets.is_none() {
        tracing::error!(stored, "job secrets are stored but FLINGER_SECRETS_KEY is not set: jobs naming them are refused (422) until it is set to the key they were stored under");
    } else if sealed_elsewhere > 0 {
        tracing::error!(stored, sealed_elsewhere, "FLINGER_SECRETS_KEY does not open some stored job secrets (they were stored under another key): jobs naming them are refused (422 naming the paths) until the key they were stored under is set again or they are stored again");
    }
}

/// The job document handed to the agent it is dispatched to, with `test_data.secrets`
/// resolved into values (as upstream's `retrieve_secrets`: an unreadable one becomes "").
/// Ephemeral secrets are deleted once read. With access control off the document goes out
/// as stored.
pub async fn resolve_secrets(
    svc: &Services,
    owner: Option<&str>,
    body: bytes::Bytes,
) -> Result<bytes::Bytes> {
    if svc.access.mode == AccessMode::Off || !mentions(&body, &SECRETS) {
        return Ok(body);
    }
    // Boxed, as in `authorize`: every pop's future would otherwise carry this state.
    Box::pin(resolve_mentioned_secrets(svc, owner, body)).await
}

/// [`resolve_secrets`] for a document that mentions secrets, with access control on.
async fn resolve_mentioned_secrets(
    svc: &Services,
    owner: Option<&str>,
    body: bytes::Bytes,
) -> Result<bytes::Bytes> {
    let Ok(serde_json::Value::Object(mut job)) = serde_json::from_slice(&body) else {
        return Ok(body);
    };
    let Some(wanted) = job
        .get("test_data")
        .and_then(|t| t.get("secrets"))
        .and_then(|s| s.as_object())
        .cloned()
    else {
        return Ok(body);
    };
    let now = crate::actors::now();
    let mut resolved = serde_json::Map::new();
    let mut spent = Vec::new();
    for (name, path) in wanted {
        let path = path.as_str().unwrap_or_default().to_owned();
        let value = match (owner, &svc.access.secrets) {
            (Some(owner), Some(sealer)) => svc.access.store.read(|a| {
                a.secret(owner, &path, now).and_then(|s| {
                    if s.ephemeral {
                        spent.push(path.clone());
                    }
                    let value = sealer.open(owner, &path, &s.sealed);
                    if value.is_none() {
                        // Submission refuses such a path; one stored again with a key
                        // since changed reaches here, once per job dispatched.
                        tracing::warn!(client = owner, path = path.as_str(), "a job's secret does not open with the server's FLINGER_SECRETS_KEY (stored under another key): its agent gets an empty value");
                    }
                    value
                })
            }),
            _ => None,
        };
        resolved.insert(name, serde_json::Value::from(value.unwrap_or_default()));
    }
    if let Some(owner) = owner {
        for path in spent {
            svc.access
                .store
                .record_durably(|a| {
                    Ok(a.secret(owner, &path, now).map(|_| Event::SecretDeleted {
                        client_id: Name::from(owner),
                        path: path.as_str().into(),
                    }))
                })
                .await?;
        }
    }
    if let Some(test_data) = job.get_mut("test_data").and_then(|t| t.as_object_mut()) {
        test_data.insert("secrets".into(), serde_json::Value::Object(resolved));
    }
    Ok(bytes::Bytes::from(
        serde_json::to_vec(&job).expect("maps serialise"),
    ))
}

/// `reserve_data.timeout` of a stored job document in seconds (the default when absent).
fn reservation_secs(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Job {
        reserve_data: Option<Reserve>,
    }
    #[derive(serde::Deserialize)]
    struct Reserve {
        timeout: Option<serde_json::Value>,
    }
    // Most jobs reserve nothing: skip the parse.
    if !mentions(body, &RESERVE_DATA) {
        return access::DEFAULT_RESERVATION_SECS;
    }
    serde_json::from_slice::<Job>(body)
        .ok()
        .and_then(|j| j.reserve_data)
        .and_then(|r| r.timeout)
        .and_then(|t| crate::http::schema::duration(&t).ok().flatten())
        .unwrap_or(access::DEFAULT_RESERVATION_SECS)
}

/// Whether `caller` would be let through `method` on `route` (a template of [`table`])
/// about job `id`: what a page offers its viewer, so the dashboard shows a button only to
/// those whose request it would let through. The same table and checks as [`authorize`].
pub async fn may_act_on_job(
    svc: &Services,
    caller: &Caller,
    method: &str,
    route: &str,
    id: JobId,
) -> bool {
    if svc.access.mode == AccessMode::Off {
        return true;
    }
    let Some(rule) = table::lookup(method, route) else {
        return false;
    };
    check(svc, caller, rule, About::Job(Some(id)), None)
        .await
        .is_ok()
}

/// The caller must own job `id` or be a manager/admin (unknown and anonymous jobs pass).
pub async fn check_job_owner(svc: &Services, caller: &Caller, id: JobId) -> Result<()> {
    if caller.is_privileged() {
        return Ok(());
    }
    let job = svc.jobs.get(id);
    match job.and_then(|j| j.owner) {
        Some(owner) if Some(&*owner) != caller.client_id() => {
            Err(Error::Forbidden(crate::model::registry::NOT_OWNER.into()))
        }
        _ => Ok(()),
    }
}

/// With access control on, the caller must be the agent credential job `id` was
/// dispatched to.
pub async fn check_job_agent(svc: &Services, caller: &Caller, id: JobId) -> Result<()> {
    if is_job_agent(svc, caller, id) {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "Job {id} was not dispatched to this agent"
        )))
    }
}

/// Whether `caller` is job `id`'s agent: anyone with access control off, else only the
/// credential the job was dispatched to (also what counts as contact from its agent for
/// lost-agent recovery).
pub fn is_job_agent(svc: &Services, caller: &Caller, id: JobId) -> bool {
    if matches!(caller, Caller::Open) {
        return true;
    }
    let client = svc.jobs.get(id).and_then(|j| j.client);
    matches!((client, caller.client_id()), (Some(client), Some(me)) if &*client == me)
}
