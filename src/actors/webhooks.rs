//! The webhooks actor and its delivery worker: job events posted by agents, recorded
//! durably and forwarded to the job's webhook later (the outbox is `model::webhooks`).
//!
//! The actor owns the [`Webhooks`] partition: it records a post's new events (answering
//! the agent at once, whatever the receiver is doing), and the worker's progress
//! (`JobEventsDelivered`, `JobEventsAbandoned`). The worker is a task the actor starts
//! and stops: per job one PUT at a time, in order, each carrying the job's first `k`
//! events in upstream's JSON (`{agent_id, job_queue, events}`) with the header
//! `Idempotency-Key: <job id>/<k>` (the same for every retry of that delivery, also
//! across restarts), `Authorization: Bearer $WEBHOOK_AUTH` when set. A failed attempt is
//! retried 1 s later, then 2, 4... up to `--webhook-max-backoff-secs`; once the oldest
//! event it carries is older than `--webhook-give-up-secs`, the worker gives up on it
//! (logged, with the reason). Delivery is at least once: a crash between the receiver's
//! answer and the record of it sends that delivery again, with the same key.
//!
//! Not logged: attempt counts, the last error and the next attempt's time. They live in
//! [`Hooks::progress`], one entry per job with something to send (so memory follows the
//! number of such jobs, never the number of attempts), and restart from zero after a
//! restart (the give-up clock does not: it runs from when the event was accepted).
//!
//! The worker never scans the jobs: a `Schedule` keeps the ready ones in a queue and the
//! backing-off ones in a heap by due time, so each attempt costs O(log n) however many
//! jobs wait (10,000 receivers failing cost their attempts, not a scan after each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::registry::Jobs;
use super::{ask, now, reply, PendingSnapshot, Recorder, Shared};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::{Journal, Ticket};
use crate::model::webhooks::{JobEvent, Outbox, Webhooks};
use crate::model::{Event, FastMap, FastSet, JobId, Name};

/// Deliveries in flight at once (to all receivers together).
const MAX_IN_FLIGHT: usize = 16;
/// Bytes of a failed answer's body kept in the last error.
const ERROR_BODY_BYTES: usize = 200;
/// The first retry's wait; each next one doubles, up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The scheme and authority (`host[:port]`, with any user info) of an absolute URL: what
/// a job's webhook must share with `WEBHOOK_URL` (upstream compares `urlparse(..).scheme`
/// and `.netloc`).
pub fn split_url(url: &str) -> std::result::Result<(String, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    let scheme = uri.scheme_str().ok_or("not an absolute URL (no scheme)")?;
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or("no host")?;
    Ok((scheme.to_ascii_lowercase(), authority.as_str().to_owned()))
}

/// [`split_url`] of `WEBHOOK_URL`, which must be `http`: this build has no TLS client,
/// so an `https` webhook could never be delivered; it is refused at start-up rather than
/// accepted and retried for a day. Put a TLS-terminating proxy in front of an https
/// receiver.
pub fn base_of(url: &str) -> std::result::Result<(String, String), String> {
    let (scheme, authority) = split_url(url)?;
    match scheme.as_str() {
        "http" => Ok((scheme, authority)),
        "https" => Err("https webhooks are not supported by this build (no TLS client); use an http URL, e.g. of a TLS-terminating proxy".into()),
        other => Err(format!("scheme {other:?} is not http")),
    }
}

/// One `POST /v1/job/<id>/events`, validated.
#[derive(Clone, Debug)]
pub struct EventsPost {
    /// `job_status_webhook` (its base matched `WEBHOOK_URL`).
    pub url: Box<str>,
    /// `agent_id`.
    pub agent_id: Option<Name>,
    /// `job_queue`.
    pub job_queue: Option<Name>,
    /// `events`, as posted (cumulative).
    pub events: Vec<JobEvent>,
}

/// Messages to the webhooks actor.
pub enum WebhookMsg {
    /// Record a post's new events; `None` when it brought none (a repeat).
    Post(JobId, EventsPost, RpcReplyPort<Result<Option<Ticket>>>),
    /// The receiver acknowledged the job's first `upto` events (from the worker; the
    /// reply says whether it was recorded and applied).
    Delivered(JobId, u32, RpcReplyPort<Result<()>>),
    /// The worker gave up on the job's first `upto` events, for this reason (the reply
    /// says whether that was recorded).
    Abandon(JobId, u32, Box<str>, RpcReplyPort<Result<()>>),
    /// Drop these jobs' outboxes (their jobs expired or were deleted); `None`: none had one.
    Expire(Vec<JobId>, RpcReplyPort<Result<Option<Ticket>>>),
    /// Drop the outboxes of jobs the registry no longer has (left by a retention pass
    /// that failed between the registry's expiry and this partition's, or recorded by
    /// builds that let an event post race its job's deletion); `None`: there were none.
    Sweep(RpcReplyPort<Result<Option<Ticket>>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// One job's delivery attempts since it last had nothing to send (or since start-up).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Failed attempts of the current delivery.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<Box<str>>,
    /// Unix seconds of the last attempt.
    pub last_attempt_at: Option<u64>,
    /// Unix seconds of the next attempt, while one is scheduled.
    pub next_attempt_at: Option<u64>,
    /// When the next attempt may start (the worker's clock).
    due: Option<Instant>,
}

/// What handlers and the worker share: the partition (read), the worker's progress, and
/// the wake-up for new events.
#[derive(Default)]
pub struct Hooks {
    /// The partition; the actor is its only writer.
    pub outboxes: Shared<Webhooks>,
    /// Per job with something to send: its attempts. Bounded by the number of such jobs.
    progress: Mutex<FastMap<JobId, Progress>>,
    /// Jobs that got new events since the worker last looked.
    fresh: Mutex<FastSet<JobId>>,
    /// Wakes the worker.
    wake: Notify,
}

impl Hooks {
    /// Shares the recovered partition.
    pub fn new(outboxes: Webhooks) -> Hooks {
        Hooks {
            outboxes: Arc::new(parking_lot::RwLock::new(outboxes)),
            ..Hooks::default()
        }
    }

    /// The worker's progress on `id`, if it has something to send.
    pub fn progress(&self, id: JobId) -> Option<Progress> {
        self.progress.lock().get(&id).cloned()
    }

    fn poke(&self, id: JobId) {
        self.fresh.lock().insert(id);
        self.wake.notify_one();
    }
}

/// The webhooks actor.
pub struct WebhookActor;

/// Start-up inputs.
pub struct WebhookArgs {
    /// Shared with handlers and the worker (the recovered partition inside).
    pub hooks: Arc<Hooks>,
    /// Where events go.
    pub journal: Journal,
    /// Limits, the receiver's credentials and the retry policy.
    pub config: Arc<Config>,
    /// The registry's jobs: a post is recorded only while its job exists.
    pub jobs: Jobs,
}

/// The actor's state.
pub struct WebhookState {
    /// Partition and worker state.
    hooks: Arc<Hooks>,
    /// Journal.
    recorder: Recorder,
    /// `--max-job-events`.
    max_events: usize,
    /// The registry's jobs, read when a post is recorded: a job's deletion is applied
    /// to the registry before its outbox is dropped here (`WebhookMsg::Expire`, sent
    /// after), so a post recorded while the job exists is dropped by that message, and
    /// one arriving after the deletion finds no job and is refused. The handler's own
    /// check is earlier, outside this actor's turn, so it cannot decide that race.
    jobs: Jobs,
    /// The delivery worker, stopped with the actor.
    worker: tokio::task::JoinHandle<()>,
}

impl WebhookState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        self.hooks.outboxes.write().apply(&event);
        Ok(ticket)
    }

    fn post(&mut self, id: JobId, post: EventsPost) -> Result<Option<Ticket>> {
        if !self.jobs.contains(id) {
            return Err(Error::NotFound("Job not found".into()));
        }
        let (fresh, held) = {
            let outboxes = self.hooks.outboxes.read();
            match outboxes.get(id) {
                Some(outbox) => (outbox.unseen(post.events), outbox.events.len()),
                None => (Outbox::default().unseen(post.events), 0),
            }
        };
        if fresh.is_empty() {
            return Ok(None);
        }
        if held + fresh.len() > self.max_events {
            return Err(Error::TooLarge(format!(
                "job {id} would have {} events; at most {} are kept per job (--max-job-events)",
                held + fresh.len(),
                self.max_events
            )));
        }
        let ticket = self.record(Event::JobEventsPosted {
            id,
            url: post.url,
            agent_id: post.agent_id,
            job_queue: post.job_queue,
            events: fresh,
            at: now(),
        })?;
        self.hooks.poke(id);
        Ok(Some(ticket))
    }
}

impl Actor for WebhookActor {
    type Msg = WebhookMsg;
    type State = WebhookState;
    type Arguments = WebhookArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WebhookMsg>,
        args: WebhookArgs,
    ) -> std::result::Result<WebhookState, ActorProcessingErr> {
        let pending = args.hooks.outboxes.read().pending();
        for id in pending {
            args.hooks.poke(id);
        }
        let worker = tokio::spawn(deliver(args.hooks.clone(), myself, args.config.clone()));
        Ok(WebhookState {
            hooks: args.hooks,
            recorder: Recorder::new(args.journal),
            max_events: args.config.max_job_events,
            jobs: args.jobs,
            worker,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<WebhookMsg>,
        state: &mut WebhookState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.worker.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<WebhookMsg>,
        msg: WebhookMsg,
        state: &mut WebhookState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            WebhookMsg::Post(id, post, port) => {
                if !super::gone(&port) {
                    let result = state.post(id, post);
                    reply(port, result);
                }
            }
            WebhookMsg::Delivered(id, upto, port) => {
                // Not waited for durability: if it is lost in a crash, the delivery happens
                // again with the same idempotency key (at least once). A refused record
                // is the worker's to retry, with its backoff.
                let result = state.record(Event::JobEventsDelivered { id, upto });
                if let Err(e) = &result {
                    if let Some(suppressed) =
                        crate::throttle::allow("cannot record a webhook delivery", 0)
                    {
                        tracing::warn!(job = %id, error = %e, suppressed, "cannot record a webhook delivery; it will be repeated");
                    }
                }
                reply(port, result.map(drop));
            }
            WebhookMsg::Abandon(id, upto, reason, port) => {
                let event = Event::JobEventsAbandoned {
                    id,
                    upto,
                    reason,
                    at: now(),
                };
                let result = state.record(event);
                if let Err(e) = &result {
                    if let Some(suppressed) =
                        crate::throttle::allow("cannot record giving up a webhook delivery", 0)
                    {
                        tracing::warn!(job = %id, error = %e, suppressed, "cannot record giving up a webhook delivery");
                    }
                }
                reply(port, result.map(drop));
            }
            WebhookMsg::Expire(ids, port) => {
                let ids = state.hooks.outboxes.read().present(&ids);
                let result = if ids.is_empty() {
                    Ok(None)
                } else {
                    {
                        let mut progress = state.hooks.progress.lock();
                        for id in &ids {
                            progress.remove(id);
                        }
                    }
                    state.record(Event::WebhooksExpired { ids }).map(Some)
                };
                reply(port, result);
            }
            WebhookMsg::Sweep(port) => {
                let ids = {
                    let outboxes = state.hooks.outboxes.read();
                    outboxes.without(|id| state.jobs.contains(id))
                };
                let result = if ids.is_empty() {
                    Ok(None)
                } else {
                    tracing::info!(
                        outboxes = ids.len(),
                        "dropped the event outboxes of jobs that are gone"
                    );
                    {
                        let mut progress = state.hooks.progress.lock();
                        for id in &ids {
                            progress.remove(id);
                        }
                    }
                    state.record(Event::WebhooksExpired { ids }).map(Some)
                };
                reply(port, result);
            }
            WebhookMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&*state.hooks.outboxes.read()));
            }
        }
        Ok(())
    }
}

/// A delivery to attempt: the job's first `upto` events to `url`.
struct Delivery {
    id: JobId,
    upto: u32,
    url: String,
    body: Bytes,
    /// Unix seconds the oldest event it carries (first not yet delivered) was accepted.
    since: u64,
}

/// The PUT body of the job's delivery `upto`: upstream's forwarded JSON, the post minus
/// `job_status_webhook`, as the agent's `upto`-th cumulative post would have been.
fn delivery(id: JobId, outbox: &Outbox, upto: u32) -> Delivery {
    let events = &outbox.events[..upto as usize];
    let last = &events[events.len() - 1];
    let mut body = Map::new();
    if let Some(agent) = &last.agent_id {
        body.insert("agent_id".into(), Value::from(&**agent));
    }
    if let Some(queue) = &last.job_queue {
        body.insert("job_queue".into(), Value::from(&**queue));
    }
    let list: Vec<Value> = events
        .iter()
        .map(|r| {
            let mut e = json!({"event_name": &*r.event.name, "timestamp": &*r.event.timestamp});
            if let Some(detail) = &r.event.detail {
                e["detail"] = Value::from(&**detail);
            }
            e
        })
        .collect();
    body.insert("events".into(), Value::Array(list));
    Delivery {
        id,
        upto,
        url: outbox.url.to_string(),
        body: Bytes::from(serde_json::to_vec(&body).expect("JSON serialises")),
        since: outbox.pending_since().unwrap_or(last.at),
    }
}

/// One attempt: `Ok` on a 2xx answer, else what went wrong.
async fn attempt(
    client: &Client<HttpConnector, Full<Bytes>>,
    delivery: &Delivery,
    auth: Option<&str>,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut request = Request::put(&delivery.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            "idempotency-key",
            format!("{}/{}", delivery.id, delivery.upto),
        );
    if let Some(token) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(delivery.body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // hyper-util's error says little ("client error (Connect)"): name the causes.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            format!("unreachable ({text})")
        })?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can be reused.
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                let room = ERROR_BODY_BYTES.saturating_sub(text.len());
                text.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&text);
        let hint = match status.as_u16() {
            401 | 403 => " (authentication failed: check WEBHOOK_AUTH)",
            _ => "",
        };
        Err(format!(
            "answered {}{hint}: {}",
            status.as_u16(),
            text.trim()
        ))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {} s (--webhook-timeout-secs)",
            timeout.as_secs()
        )),
    }
}

/// Where one job stands in the worker's schedule: every job with something to send is in
/// exactly one of these, so it is never attempted twice at once nor forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// In the ready queue: attempted as soon as a delivery slot is free.
    Ready,
    /// Waiting out its backoff until this instant (an entry of the timer heap).
    Waiting(Instant),
    /// Its delivery is being attempted.
    InFlight,
}

/// The worker's schedule: which job to attempt next, in O(log n) a step. A job is ready
/// (a FIFO), waiting on a timer (a min-heap of due times) or in flight; a timer entry
/// whose job has moved on since is stale and skipped when it surfaces (lazy deletion:
/// each backoff pushes one entry, so the heap holds at most one more entry than there
/// are jobs per attempt in progress).
#[derive(Default)]
struct Schedule {
    /// Per job known to the worker: where it stands.
    slots: FastMap<JobId, Slot>,
    /// Jobs to attempt now, oldest first.
    ready: std::collections::VecDeque<JobId>,
    /// (due, job) of jobs waiting out a backoff, soonest first.
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, JobId)>>,
}

impl Schedule {
    /// A job got new events (or has some at start-up): ready, unless it is already
    /// scheduled (waiting out a backoff, in flight, or ready).
    fn poke(&mut self, id: JobId) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.slots.entry(id) {
            slot.insert(Slot::Ready);
            self.ready.push_back(id);
        }
    }

    /// Moves the jobs whose backoff ended by `now` to the ready queue; the instant the
    /// next one ends, if any waits.
    fn wake_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(std::cmp::Reverse((due, id))) = self.timers.peek().copied() {
            if due > now {
                return Some(due);
            }
            self.timers.pop();
            if self.slots.get(&id) == Some(&Slot::Waiting(due)) {
                self.slots.insert(id, Slot::Ready);
                self.ready.push_back(id);
            }
        }
        None
    }

    /// The next ready job, now in flight.
    fn take(&mut self) -> Option<JobId> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(slot) = self.slots.get_mut(&id) {
                if *slot == Slot::Ready {
                    *slot = Slot::InFlight;
                    return Some(id);
                }
            }
        }
        None
    }

    /// The job has nothing (left) to send: out of the schedule.
    fn forget(&mut self, id: JobId) {
        self.slots.remove(&id);
    }

    /// After an attempt of `id`: again now (`None`) or once `due` has passed.
    fn again(&mut self, id: JobId, due: Option<Instant>, now: Instant) {
        match due.filter(|due| *due > now) {
            Some(due) => {
                self.slots.insert(id, Slot::Waiting(due));
                self.timers.push(std::cmp::Reverse((due, id)));
            }
            None => {
                self.slots.insert(id, Slot::Ready);
                self.ready.push_back(id);
            }
        }
    }
}

/// The delivery worker: runs until its actor stops it.
async fn deliver(hooks: Arc<Hooks>, actor: ActorRef<WebhookMsg>, config: Arc<Config>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build_http();
    let auth: Option<Arc<str>> = config.webhook_auth.as_ref().map(|s| Arc::from(&*s.0));
    let timeout = config.webhook_timeout;
    let mut in_flight: JoinSet<(Delivery, std::result::Result<(), String>)> = JoinSet::new();
    let mut schedule = Schedule::default();
    loop {
        // Jobs with new events join the schedule.
        let fresh: Vec<JobId> = hooks.fresh.lock().drain().collect();
        if !fresh.is_empty() {
            let mut progress = hooks.progress.lock();
            for id in fresh {
                progress.entry(id).or_default();
                schedule.poke(id);
            }
        }
        // Start due deliveries, up to the in-flight bound: each costs O(log n).
        let soonest = schedule.wake_due(Instant::now());
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(id) = schedule.take() else { break };
            let next = {
                let outboxes = hooks.outboxes.read();
                outboxes
                    .get(id)
                    .and_then(|o| o.next().map(|upto| delivery(id, o, upto)))
            };
            let Some(next) = next else {
                // Nothing (left) to send: delivered, given up, or expired.
                hooks.progress.lock().remove(&id);
                schedule.forget(id);
                continue;
            };
            if let Some(p) = hooks.progress.lock().get_mut(&id) {
                p.last_attempt_at = Some(now());
                p.next_attempt_at = None;
            }
            let (client, auth) = (client.clone(), auth.clone());
            in_flight.spawn(async move {
                let result = attempt(&client, &next, auth.as_deref(), timeout).await;
                (next, result)
            });
        }
        let sleep = soonest.map_or(Duration::from_secs(3600), |s| {
            s.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                // An attempt cannot panic (its errors are values); were one aborted, its
                // job would stay in flight: only the actor's stop aborts, and ends us.
                let Ok((delivery, result)) = done else { continue };
                let id = delivery.id;
                finish(&hooks, &actor, &config, delivery, result).await;
                // Where finishing left it: reset (again now: the next delivery, or
                // nothing left), backing off, or gone with its outbox.
                let due = hooks.progress.lock().get(&id).map(|p| p.due);
                match due {
                    Some(due) => schedule.again(id, due, Instant::now()),
                    None => schedule.forget(id),
                }
            }
            _ = hooks.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Records an attempt's outcome: the delivery (and on to the next one), or the failure,
/// its backoff, and giving up once past the give-up time. A delivery or give-up the log
/// refuses to record (a failed disk) counts as a failed attempt: it is tried again after
/// the backoff, never at once (which would PUT the same delivery in a tight loop).
async fn finish(
    hooks: &Hooks,
    actor: &ActorRef<WebhookMsg>,
    config: &Config,
    delivery: Delivery,
    result: std::result::Result<(), String>,
) {
    let id = delivery.id;
    let error = match result {
        Ok(()) => {
            // Waited for, so the next look at the outbox sees it.
            match ask(actor, |port| WebhookMsg::Delivered(id, delivery.upto, port)).await {
                Ok(Ok(())) => {
                    if let Some(p) = hooks.progress.lock().get_mut(&id) {
                        *p = Progress::default();
                    }
                    return;
                }
                Ok(Err(e)) | Err(e) => {
                    // Delivered, but not recorded: retried later (the receiver dedupes on
                    // the idempotency key); it cannot be given up, as it was delivered.
                    backoff(hooks, config, id, format!(
                        "delivered, but the delivery could not be recorded ({e}); it will be sent again"
                    ));
                    return;
                }
            }
        }
        Err(error) => error,
    };
    let now_secs = now();
    let waited = now_secs.saturating_sub(delivery.since);
    let Some(attempts) = backoff(hooks, config, id, error.clone()) else {
        return;
    };
    if waited >= config.webhook_give_up.as_secs() {
        let reason = format!(
            "gave up after {attempts} attempts over {waited} s (--webhook-give-up-secs {}): {error}",
            config.webhook_give_up.as_secs()
        );
        if let Some(suppressed) = crate::throttle::allow("webhook delivery given up", 0) {
            tracing::warn!(job = %id, events = delivery.upto, %reason, suppressed, "webhook delivery given up");
        }
        let reason = reason.into_boxed_str();
        let recorded = ask(actor, |port| {
            WebhookMsg::Abandon(id, delivery.upto, reason, port)
        })
        .await;
        if let Ok(Ok(())) = recorded {
            // The next look finds nothing to send (unless events arrived meanwhile)
            // and drops the entry: the outbox's give-up says the rest.
            if let Some(p) = hooks.progress.lock().get_mut(&id) {
                *p = Progress::default();
            }
        }
        // Not recorded: the backoff set above stands, and the give-up is tried again
        // after the next failed attempt.
    } else if let Some(suppressed) = crate::throttle::allow("webhook delivery failed", 0) {
        tracing::warn!(job = %id, events = delivery.upto, attempts, %error, suppressed, "webhook delivery failed; retrying");
    }
}

/// Counts a failed attempt of job `id`'s delivery (`error`, why) and schedules the next
/// one after the backoff; the attempts so far, or `None` when the job has nothing to send
/// any more (its outbox went).
fn backoff(hooks: &Hooks, config: &Config, id: JobId, error: String) -> Option<u32> {
    let mut progress = hooks.progress.lock();
    let p = progress.get_mut(&id)?;
    p.attempts += 1;
    p.last_error = Some(error.into_boxed_str());
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << p.attempts.saturating_sub(1).min(20))
        .min(config.webhook_max_backoff);
    p.due = Some(Instant::now() + backoff);
    p.next_attempt_at = Some(now() + backoff.as_secs());
    Some(p.attempts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_holds_each_job_once_and_wakes_backoffs_in_due_order() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let ids: Vec<JobId> = (0..4).map(|_| JobId::random()).collect();
        for id in &ids {
            s.poke(*id);
            s.poke(*id); // a second post while ready: still once
        }
        let taken: Vec<JobId> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(taken, ids, "ready jobs are taken once each, oldest first");
        // Failed: back off, the later due first in the heap order.
        s.again(ids[0], Some(t0 + Duration::from_secs(3)), t0);
        s.again(ids[1], Some(t0 + Duration::from_secs(1)), t0);
        // Delivered: again at once (its next delivery, or nothing left).
        s.again(ids[2], None, t0);
        s.forget(ids[3]);
        s.poke(ids[0]); // new events while backing off do not cut the backoff short
        assert_eq!(s.take(), Some(ids[2]));
        assert_eq!(s.take(), None);
        assert_eq!(
            s.wake_due(t0 + Duration::from_secs(2)),
            Some(t0 + Duration::from_secs(3))
        );
        assert_eq!(s.take(), Some(ids[1]));
        // ids[1] failed again before ids[0]'s timer: its old entry is stale.
        s.again(ids[1], Some(t0 + Duration::from_secs(5)), t0);
        assert_eq!(
            s.wake_due(t0 + Duration::from_secs(4)),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(s.take(), Some(ids[0]));
        assert_eq!(s.take(), None);
        assert_eq!(s.wake_due(t0 + Duration::from_secs(9)), None);
        assert_eq!(s.take(), Some(ids[1]));
        assert_eq!(s.take(), None);
        // A forgotten job comes back with its next post.
        s.poke(ids[3]);
        assert_eq!(s.take(), Some(ids[3]));
    }
}
