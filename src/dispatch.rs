//! Dispatch: handing waiting jobs to agents (`GET /v1/job`), at once or by long poll.
//!
//! The pop protocol: the pop visits each named queue's actor in turn; each reserves the
//! best job this agent may receive there if it beats the best found so far (highest
//! priority, then oldest), releasing that one; the last forwards the claim of the best to
//! the registry (the one place a job leaves `waiting`, so exactly once), which answers
//! the request and settles the reservation: one reply to wait for however many queues
//! the pop names. A pop that finds nothing gives back the job the agent already holds
//! without having reported on it (its pop is a retry), else nothing.
//!
//! Long poll (`wait=SECONDS`): the agent is entered in [`Waiters`] for each of its
//! queues, in arrival order, *before* its first pop, so a job arriving between that pop
//! and the wait is not missed. The registry tells [`Waiters::arrived`] whenever a job
//! becomes dispatchable in a queue (submitted, attachments arrived, requeued), and a pop
//! that releases a reservation says so too; each such signal wakes the longest-waiting
//! agent of that queue not already woken, which pops again. A woken agent that finds
//! nothing eligible (the job excludes it, or another pop was faster) passes the signal
//! on to the next agent in line; one that leaves while woken (it got a job, gave up or
//! disconnected) passes it on too, so a signal is never lost with the agent it woke. So
//! does one that leaves with a job of another queue than the one whose signal woke it
//! (an agent of several queues took a better job elsewhere): the job that signal
//! announced may still wait, for the next agent in that queue's line.
//! Waiting costs no CPU (a parked future on a `Notify`), and a client that disconnects
//! drops its future, which leaves the table; its claim, if any was under way, is
//! skipped by the registry (it checks the reply port before deciding).
//!
//! Deliberately not here: the order of jobs (the queue actors' indexes) and whether a
//! job may go (the registry).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use crate::actors::queue::{Feed, Pop};
use crate::actors::registry::{Claimed, JobView};
use crate::actors::{Callee, Services};
use crate::error::{Error, Result};
use crate::model::registry::Attachments;
use crate::model::{FastMap, Name};

/// How often one pop retries when the job it chose was taken by a cancel in between.
const MAX_POP_ATTEMPTS: usize = 16;

/// The longest `wait` a pop may ask for, in seconds (a longer one is refused with 400).
pub const MAX_WAIT_SECS: u64 = 60;

/// Hands the agent the best waiting job of `queues` now, if any. `client` is the agent's
/// credential (access control on): the job records it, and only that agent may then post
/// about the job.
///
/// The pop visits the named queues' actors in turn and the last forwards the claim to
/// the registry, which answers here (see [`Feed::pop`]): one reply to wait for.
pub async fn pop(
    svc: &Services,
    queues: &[Name],
    agent: Option<Name>,
    client: Option<Name>,
) -> Result<Option<Bytes>> {
    Ok(pop_from(svc, queues, agent, client)
        .await?
        .map(|(body, _)| body))
}

/// [`pop`], with the queue the job came from.
async fn pop_from(
    svc: &Services,
    queues: &[Name],
    agent: Option<Name>,
    client: Option<Name>,
) -> Result<Option<(Bytes, Name)>> {
    for _ in 0..MAX_POP_ATTEMPTS {
        // Looked up on every attempt: a queue actor stopping as idle (out of the
        // directory first) drops the pops still in its mailbox, and the retry must not
        // ask it again.
        let mut feeds: VecDeque<(Name, Feed)> = queues
            .iter()
            .filter_map(|q| svc.queues.get(q).map(|f| (q.clone(), f)))
            .collect();
        let Some((first, feed)) = feeds.pop_front() else {
            return held_job(svc, queues, agent, client).await;
        };
        // The registry's admission, taken here: the claim reaches it from a queue actor.
        let pass = svc.registry.admit()?;
        let (port, claim) = ractor::concurrency::oneshot();
        let pop = Box::new(Pop {
            queue: first,
            rest: feeds,
            queues: queues.to_vec(),
            best: None,
            agent: agent.clone(),
            client: client.clone(),
            registry: svc.registry.post().clone(),
            waiters: svc.dispatch.clone(),
            port: port.into(),
        });
        if feed.pop(pop).is_err() {
            // Its actor stopped as idle since the look-up: look the queues up again.
            continue;
        }
        let claimed = claim.await;
        drop(pass);
        let claimed = match claimed {
            Ok(claimed) => claimed?,
            // Dropped on its way: by a queue actor that stopped as idle (it had no job,
            // but the queues after it may), or by a registry shutting down.
            Err(_) => continue,
        };
        if let Claimed::Nothing = claimed {
            return held_job(svc, queues, agent, client).await;
        }
        if let Some(body) = answer(svc, claimed).await? {
            return Ok(Some(body));
        }
    }
    held_job(svc, queues, agent, client).await
}

/// What the agent is answered for a claim, with the job's queue: the job dispatched to
/// it once that is durable, the job it already holds (a retried pop: the dispatch it
/// repeats may not be durable yet either), or `None` when the job went meanwhile (pop
/// again).
async fn answer(svc: &Services, claimed: Claimed) -> Result<Option<(Bytes, Name)>> {
    match claimed {
        Claimed::Dispatched(job, ticket) => {
            svc.journal.durable(ticket).await?;
            svc.metrics.dispatched(
                &job.queue,
                crate::actors::now().saturating_sub(job.created_at),
            );
            Ok(Some((dispatched_body(svc, &job).await?, job.queue)))
        }
        Claimed::Held(job) => {
            svc.journal.durable(svc.journal.settled()).await?;
            Ok(Some((dispatched_body(svc, &job).await?, job.queue)))
        }
        Claimed::Gone | Claimed::Nothing => Ok(None),
    }
}

/// [`pop`], waiting up to `wait` for a job to arrive when none is there (see the module
/// documentation); `None` at the deadline or when the server shuts down.
pub async fn pop_waiting(
    svc: &Services,
    queues: &[Name],
    agent: Option<Name>,
    client: Option<Name>,
    wait: Duration,
) -> Result<Option<Bytes>> {
    let deadline = tokio::time::Instant::now() + wait;
    let waiter = svc.dispatch.enter(queues)?;
    loop {
        let signal = waiter.take_signal();
        if let Some((job, from)) = pop_from(svc, queues, agent.clone(), client.clone()).await? {
            if let Some(queue) = signal.filter(|queue| *queue != from) {
                waiter.pass_on_in(&queue);
            }
            return Ok(Some(job));
        }
        if signal.is_some() {
            waiter.pass_on();
        }
        if svc.dispatch.is_closed() {
            return Ok(None);
        }
        if tokio::time::timeout_at(deadline, waiter.me.notify.notified())
            .await
            .is_err()
        {
            return Ok(None);
        }
    }
}

/// With nothing to take: the job `agent` still holds in these queues, if its pop is a
/// retry (the agent retries every method on 5xx, so a lost answer must not orphan a job).
/// A retried pop counts as hearing from the agent about that job.
async fn held_job(
    svc: &Services,
    queues: &[Name],
    agent: Option<Name>,
    client: Option<Name>,
) -> Result<Option<(Bytes, Name)>> {
    let Some((id, job)) = agent.and_then(|agent| svc.jobs.held_by(&agent)) else {
        return Ok(None);
    };
    // Only the same agent credential's retry gets the job back (access control on).
    if !queues.contains(&job.queue) || job.client != client {
        return Ok(None);
    }
    svc.watch.heard(id, crate::actors::now());
    // As for a retried claim: the dispatch it repeats may not be durable yet.
    svc.journal.durable(svc.journal.settled()).await?;
    Ok(Some((dispatched_body(svc, &job).await?, job.queue)))
}

/// The job document an agent receives: as submitted, with its secrets resolved (access
/// control on), plus what upstream's pop answer adds: `started_at` (when it was dispatched,
/// `...Z` as HEAD's pop writes it; a retried pop repeats the first dispatch's) and
/// `attachments_status` when the job has attachments (the agent downloads them only when
/// it reads `complete`).
async fn dispatched_body(svc: &Services, job: &JobView) -> Result<Bytes> {
    let body = crate::access::resolve_secrets(svc, job.owner.as_deref(), job.body.clone()).await?;
    Ok(with_server_fields(job, body))
}

fn with_server_fields(job: &JobView, body: Bytes) -> Bytes {
    let started_at = job.started_at.map(crate::http::wire::iso_z);
    let attachments = job.attachments == Attachments::Complete;
    // The common case, a compact object (as stored) without a member of these names:
    // `started_at` is written before its closing brace, without parsing the document.
    let plain = !attachments
        && body.len() > 2
        && body.first() == Some(&b'{')
        && body.last() == Some(&b'}')
        && memchr::memmem::find(&body, b"\"started_at\"").is_none();
    match started_at {
        None if !attachments => body,
        Some(at) if plain => {
            let mut text = Vec::with_capacity(body.len() + 40);
            text.extend_from_slice(&body[..body.len() - 1]);
            text.extend_from_slice(b",\"started_at\":\"");
            text.extend_from_slice(at.as_bytes());
            text.extend_from_slice(b"\"}");
            Bytes::from(text)
        }
        // A submitted top-level `started_at` (flinger keeps unknown members) is replaced:
        // the agent is told when the server dispatched the job.
        at => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut map)) => {
                if let Some(at) = at {
                    map.insert("started_at".into(), Value::from(at));
                }
                if attachments {
                    map.insert("attachments_status".into(), Value::from("complete"));
                }
                Bytes::from(serde_json::to_vec(&map).expect("maps serialise"))
            }
            _ => body,
        },
    }
}

/// One waiting agent.
struct Waiter {
    /// Wakes its request.
    notify: Notify,
    /// The queue whose signal woke it, if one did and it has not popped since (such a
    /// waiter is skipped by further signals, which go to the next in line). Read and
    /// written under the table's lock only.
    woken: Mutex<Option<Name>>,
}

/// Agents waiting for jobs, per queue in arrival order (bounded by `--max-waiters`).
pub struct Waiters {
    table: Mutex<Table>,
    /// Most agents waiting at once.
    max: usize,
    /// Set at shutdown: waiting agents are answered 204 at once.
    closed: AtomicBool,
}

#[derive(Default)]
struct Table {
    /// Arrival tickets, increasing: a lower ticket has waited longer.
    next: u64,
    /// Agents waiting now.
    count: usize,
    /// Per queue, its waiting agents by ticket.
    by_queue: FastMap<Name, BTreeMap<u64, Arc<Waiter>>>,
}

impl Table {
    /// Wakes the first waiter of `queue` after `after` that is not already woken.
    fn wake(&self, queue: &str, after: Option<u64>) {
        let Some((name, line)) = self.by_queue.get_key_value(queue) else {
            return;
        };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let next = line
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, w)| w)
            .find(|w| w.woken.lock().is_none());
        if let Some(waiter) = next {
            *waiter.woken.lock() = Some(name.clone());
            waiter.notify.notify_one();
        }
    }
}

impl Waiters {
    /// No one waiting; at most `max` at once.
    pub fn new(max: usize) -> Waiters {
        Waiters {
            table: Mutex::new(Table::default()),
            max,
            closed: AtomicBool::new(false),
        }
    }

    /// A job became dispatchable in `queue`: wake its longest-waiting agent.
    pub fn arrived(&self, queue: &str) {
        self.table.lock().wake(queue, None);
    }

    /// How many agents wait now.
    pub fn len(&self) -> usize {
        self.table.lock().count
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shutdown: answer every waiting agent now, and every later one at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let table = self.table.lock();
        for line in table.by_queue.values() {
            for waiter in line.values() {
                waiter.notify.notify_one();
            }
        }
    }

    /// Whether [`Waiters::close`] was called: the server is shutting down (log follow
    /// streams end on it too).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Enters an agent waiting on `queues` (503 when `--max-waiters` wait already).
    fn enter(self: &Arc<Self>, queues: &[Name]) -> Result<Entered> {
        let mut table = self.table.lock();
        if table.count >= self.max {
            return Err(Error::Unavailable(format!(
                "too many agents are waiting for jobs (--max-waiters {}): poll again later or without wait",
                self.max
            )));
        }
        table.count += 1;
        let ticket = table.next;
        table.next += 1;
        let me = Arc::new(Waiter {
            notify: Notify::new(),
            woken: Mutex::new(None),
        });
        for queue in queues {
            table
                .by_queue
                .entry(queue.clone())
                .or_default()
                .insert(ticket, me.clone());
        }
        Ok(Entered {
            waiters: self.clone(),
            ticket,
            queues: queues.to_vec(),
            me,
        })
    }
}

/// An agent's place in [`Waiters`]; leaving (drop) frees it.
struct Entered {
    waiters: Arc<Waiters>,
    ticket: u64,
    queues: Vec<Name>,
    me: Arc<Waiter>,
}

impl Entered {
    /// Before a pop: the queue whose signal woke this agent since its last pop, if one
    /// did (and from now on it counts as not woken).
    fn take_signal(&self) -> Option<Name> {
        let _table = self.waiters.table.lock();
        self.me.woken.lock().take()
    }

    /// The signal that woke this agent was not for it: wake the next in line.
    fn pass_on(&self) {
        let table = self.waiters.table.lock();
        for queue in &self.queues {
            table.wake(queue, Some(self.ticket));
        }
    }

    /// This agent leaves with a job of another queue than `queue`, whose signal woke it:
    /// wake the next in `queue`'s line.
    fn pass_on_in(&self, queue: &str) {
        self.waiters.table.lock().wake(queue, Some(self.ticket));
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut table = self.waiters.table.lock();
        table.count -= 1;
        for queue in &self.queues {
            if let Some(line) = table.by_queue.get_mut(queue) {
                line.remove(&self.ticket);
                if line.is_empty() {
                    table.by_queue.remove(queue);
                }
            }
        }
        if self.me.woken.lock().is_some() {
            for queue in &self.queues {
                table.wake(queue, None);
            }
        }
    }
}
