//! Job event webhooks: the outbox. Per job, the distinct events its agent posted to
//! `POST /v1/job/<id>/events`, in arrival order, and how far delivery to the job's
//! webhook has come.
//!
//! Upstream forwards each post synchronously (the agent's request waits on the receiver
//! and fails with it). Here a post only records its *new* events (the agent re-sends the
//! whole cumulative list every time, so each event is identified by its name, timestamp
//! and detail and kept once), and a delivery worker (`actors::webhooks`) sends them
//! later, in order: delivery `k` of a job PUTs the first `k` events, exactly the
//! cumulative list upstream would have forwarded for the agent's `k`-th post.
//!
//! What is pending is derived from two counters, both logged: `delivered` (the receiver
//! acknowledged the first `delivered` events) and `abandoned` (the worker gave up on the
//! first `abandoned`; a later event is tried again, and its cumulative list carries them
//! too). Attempt counts and the last error are not logged (a receiver failing for a day
//! would otherwise write a record per attempt): they live in the worker's memory.
//!
//! Jobs' outboxes go when their jobs expire or are deleted (`WebhooksExpired`).

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{JobId, Name};
use super::{FastMap, FastSet};

/// One job event, as the agent posted it (upstream's `JobEvent` schema).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobEvent {
    /// `event_name` (upstream's `TestEvent` values, e.g. `provision_start`).
    pub name: Box<str>,
    /// `timestamp` as posted (the agent sends ISO 8601 with microseconds).
    pub timestamp: Box<str>,
    /// `detail`, when posted (upstream's field is optional).
    pub detail: Option<Box<str>>,
}

/// A recorded event: what was posted plus what its post said about the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The event.
    pub event: JobEvent,
    /// `agent_id` of the post that brought it (forwarded as upstream does).
    pub agent_id: Option<Name>,
    /// `job_queue` of the post that brought it.
    pub job_queue: Option<Name>,
    /// Unix seconds it was accepted: the give-up clock of a delivery starts here.
    pub at: u64,
}

/// Why delivery stopped being retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaveUp {
    /// Unix seconds.
    pub at: u64,
    /// What the worker saw (attempts, time spent, last error).
    pub reason: Box<str>,
}

/// One job's outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    /// The webhook of the latest accepted post (validated against `WEBHOOK_URL`).
    pub url: Box<str>,
    /// Distinct events in arrival order.
    pub events: Vec<Recorded>,
    /// The receiver acknowledged a PUT carrying the first `delivered` events.
    pub delivered: u32,
    /// The worker stopped retrying the first `abandoned` events.
    pub abandoned: u32,
    /// The last give-up, kept for the delivery view.
    pub gave_up: Option<GaveUp>,
}

/// Where a job's deliveries stand (the view adds the worker's attempt counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Every event was acknowledged.
    Delivered,
    /// Events wait to be sent (or are being retried).
    Pending,
    /// The worker gave up on every event not acknowledged.
    GaveUp,
}

impl Outbox {
    /// How many events the next delivery carries (`None`: nothing to send).
    pub fn next(&self) -> Option<u32> {
        let done = self.delivered.max(self.abandoned);
        ((done as usize) < self.events.len()).then_some(done + 1)
    }

    /// Unix seconds the oldest event still to send was accepted.
    pub fn pending_since(&self) -> Option<u64> {
        let next = self.next()?;
        Some(self.events[next as usize - 1].at)
    }

    /// Where deliveries stand.
    pub fn standing(&self) -> Standing {
        if self.delivered as usize >= self.events.len() {
            Standing::Delivered
        } else if self.next().is_none() {
            Standing::GaveUp
        } else {
            Standing::Pending
        }
    }

    /// Of `posted` (a cumulative list), the events not recorded yet, in posted order
    /// (an event repeated within the post counts once).
    pub fn unseen(&self, posted: Vec<JobEvent>) -> Vec<JobEvent> {
        let seen: FastSet<&JobEvent> = self.events.iter().map(|r| &r.event).collect();
        let mut fresh: Vec<JobEvent> = Vec::new();
        for event in posted {
            if !seen.contains(&event) && !fresh.contains(&event) {
                fresh.push(event);
            }
        }
        fresh
    }
}

/// Every job's outbox (the webhooks partition).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Webhooks {
    /// Per job.
    jobs: FastMap<JobId, Outbox>,
}

impl Webhooks {
    /// The job's outbox, if its agent posted events.
    pub fn get(&self, id: JobId) -> Option<&Outbox> {
        self.jobs.get(&id)
    }

    /// Jobs with events still to send.
    pub fn pending(&self) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, o)| o.next().is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Which of `ids` have an outbox.
    pub fn present(&self, ids: &[JobId]) -> Vec<JobId> {
        ids.iter()
            .copied()
            .filter(|id| self.jobs.contains_key(id))
            .collect()
    }

    /// The jobs with an outbox for which `exists` says no (their job is gone).
    pub fn without(&self, exists: impl Fn(JobId) -> bool) -> Vec<JobId> {
        self.jobs
            .keys()
            .copied()
            .filter(|id| !exists(*id))
            .collect()
    }

    /// Number of outboxes.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Folds one webhooks event.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::JobEventsPosted {
                id,
                url,
                agent_id,
                job_queue,
                events,
                at,
            } => {
                let outbox = self.jobs.entry(*id).or_default();
                outbox.url = url.clone();
                outbox.events.extend(events.iter().map(|e| Recorded {
                    event: e.clone(),
                    agent_id: agent_id.clone(),
                    job_queue: job_queue.clone(),
                    at: *at,
                }));
            }
            Event::JobEventsDelivered { id, upto } => {
                if let Some(outbox) = self.jobs.get_mut(id) {
                    let upto = (*upto).min(outbox.events.len() as u32);
                    outbox.delivered = outbox.delivered.max(upto);
                }
            }
            Event::JobEventsAbandoned {
                id,
                upto,
                reason,
                at,
            } => {
                if let Some(outbox) = self.jobs.get_mut(id) {
                    let upto = (*upto).min(outbox.events.len() as u32);
                    outbox.abandoned = outbox.abandoned.max(upto);
                    outbox.gave_up = Some(GaveUp {
                        at: *at,
                        reason: reason.clone(),
                    });
                }
            }
            Event::WebhooksExpired { ids } => {
                for id in ids {
                    self.jobs.remove(id);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, ts: &str) -> JobEvent {
        JobEvent {
            name: name.into(),
            timestamp: ts.into(),
            detail: None,
        }
    }

    fn post(hooks: &mut Webhooks, id: JobId, posted: Vec<JobEvent>, at: u64) -> usize {
        let fresh = hooks.get(id).cloned().unwrap_or_default().unseen(posted);
        let n = fresh.len();
        if n > 0 {
            hooks.apply(&Event::JobEventsPosted {
                id,
                url: "http://hook/x".into(),
                agent_id: Some("a".into()),
                job_queue: Some("q".into()),
                events: fresh,
                at,
            });
        }
        n
    }

    #[test]
    fn cumulative_reposts_record_each_event_once_in_order() {
        let mut hooks = Webhooks::default();
        let id = JobId::random();
        let (a, b, c) = (ev("job_start", "1"), ev("setup_start", "2"), ev("x", "3"));
        assert_eq!(post(&mut hooks, id, vec![a.clone()], 10), 1);
        assert_eq!(post(&mut hooks, id, vec![a.clone(), b.clone()], 11), 1);
        assert_eq!(post(&mut hooks, id, vec![a.clone(), b.clone()], 12), 0);
        assert_eq!(
            post(
                &mut hooks,
                id,
                vec![a.clone(), b.clone(), c.clone(), c.clone()],
                13
            ),
            1
        );
        let outbox = hooks.get(id).unwrap();
        let names: Vec<&str> = outbox.events.iter().map(|r| &*r.event.name).collect();
        assert_eq!(names, ["job_start", "setup_start", "x"]);
        assert_eq!(outbox.next(), Some(1));
        assert_eq!(outbox.pending_since(), Some(10));
    }

    #[test]
    fn deliveries_and_give_ups_move_the_next_delivery() {
        let mut hooks = Webhooks::default();
        let id = JobId::random();
        post(&mut hooks, id, vec![ev("a", "1"), ev("b", "2")], 10);
        hooks.apply(&Event::JobEventsDelivered { id, upto: 1 });
        assert_eq!(hooks.get(id).unwrap().next(), Some(2));
        assert_eq!(hooks.get(id).unwrap().standing(), Standing::Pending);
        hooks.apply(&Event::JobEventsAbandoned {
            id,
            upto: 2,
            reason: "r".into(),
            at: 20,
        });
        assert_eq!(hooks.get(id).unwrap().next(), None);
        assert_eq!(hooks.get(id).unwrap().standing(), Standing::GaveUp);
        assert!(hooks.pending().is_empty());
        // A later event is tried again; its cumulative list carries the abandoned one.
        post(
            &mut hooks,
            id,
            vec![ev("a", "1"), ev("b", "2"), ev("c", "3")],
            30,
        );
        assert_eq!(hooks.get(id).unwrap().next(), Some(3));
        assert_eq!(hooks.get(id).unwrap().pending_since(), Some(30));
        hooks.apply(&Event::JobEventsDelivered { id, upto: 3 });
        assert_eq!(hooks.get(id).unwrap().standing(), Standing::Delivered);
        hooks.apply(&Event::WebhooksExpired { ids: vec![id] });
        assert!(hooks.get(id).is_none());
    }

    #[test]
    fn outboxes_whose_job_is_gone_are_found_for_the_sweep() {
        let mut hooks = Webhooks::default();
        let (kept, gone) = (JobId::random(), JobId::random());
        post(&mut hooks, kept, vec![ev("a", "1")], 10);
        // A post recorded after its job's deletion (the race the actor now refuses).
        post(&mut hooks, gone, vec![ev("a", "1")], 10);
        let leftovers = hooks.without(|id| id == kept);
        assert_eq!(leftovers, vec![gone]);
        hooks.apply(&Event::WebhooksExpired { ids: leftovers });
        assert!(hooks.get(gone).is_none());
        assert!(hooks.get(kept).is_some());
        assert!(hooks.without(|id| id == kept).is_empty());
    }
}
