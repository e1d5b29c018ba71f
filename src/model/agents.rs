//! What agents tell the server about themselves: advertised queues and images, and agent
//! records (state, queues, location, log, provision history).
//!
//! Records are JSON objects merged key by key, as Testflinger's agent-data endpoint does;
//! the `log` list and provision history keep only their newest entries so an agent that
//! runs for years cannot grow the state without bound, and a record expires once its
//! agent has not posted for `--agent-expiry-secs`. What clients can add without bound
//! otherwise is bounded here ([`Agents::admit`]): a record's size (new keys), the number
//! of records, the number of advertised queues (which never expire), and the bytes all of
//! it holds together ([`MAX_AGENT_DATA_BYTES`]: the counts times the per-item limits
//! would be tens of GB).
//!
//! Reads that need a few fields of many records parse those alone
//! ([`AgentRecord::members`]); which agents serve a queue ([`Agents::serving`]) and how
//! many records have each state ([`Agents::states`]) are kept by the fold, so neither
//! costs a parse of every record.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event::Event;
use super::ids::{JobId, Name};
use crate::error::{Error, Result};

/// How many `log` lines and provision entries an agent record keeps (Testflinger keeps 100).
pub const AGENT_LOG_KEEP: usize = 100;
/// Most bytes of JSON an agent record's merged fields may hold (upstream: no bound).
pub const MAX_AGENT_RECORD_BYTES: usize = 4 << 20;
/// Most bytes of provision entries an agent record keeps: past it the oldest go (the
/// newest is always kept), so 100 entries of 1 MiB cannot pin 100 MiB per agent name.
pub const MAX_PROVISION_LOG_BYTES: usize = 1 << 20;
/// Most agent records kept at once (records expire after `--agent-expiry-secs` of silence).
pub const MAX_AGENTS: usize = 10_000;
/// Most queues advertised with a description, and most queues with advertised images
/// (advertisements never expire, as upstream's).
pub const MAX_ADVERTISED_QUEUES: usize = 10_000;
/// Most bytes the advertised queues' descriptions, the advertised images, the agent
/// records and their provision entries hold together.
pub const MAX_AGENT_DATA_BYTES: usize = 256 << 20;

/// One advertised queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    /// Its description.
    pub description: Box<str>,
    /// Unix seconds of the advertisement that set this description (a repeat of it is
    /// not recorded: [`Agents::repeats`]).
    pub updated_at: u64,
}

/// One agent's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The merged fields (`state`, `queues`, `location`, `job_id`, `log`, ...) as JSON text.
    pub fields: Bytes,
    /// Unix seconds of the latest update.
    pub updated_at: u64,
    /// Provision outcomes, newest last (at most [`AGENT_LOG_KEEP`], and at most
    /// [`MAX_PROVISION_LOG_BYTES`] of them but the newest).
    pub provision_log: Vec<Bytes>,
    /// Consecutive provision outcomes of the same kind: ("pass"|"fail", count).
    pub provision_streak: Option<(Box<str>, u64)>,
    /// The agent credential (client id) that last wrote the record, with access control
    /// on: another agent credential may not change it (`access::check`); `None` after a
    /// write by a manager, an admin or the server. Last, with a default, so older
    /// snapshots still decode.
    #[serde(default)]
    pub writer: Option<Name>,
}

impl AgentRecord {
    /// Bytes of client-supplied data it holds: its fields and provision entries.
    fn bytes(&self) -> usize {
        self.fields.len() + self.provision_log.iter().map(Bytes::len).sum::<usize>()
    }

    /// The merged fields as a JSON object.
    pub fn fields_map(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.fields).unwrap_or_default()
    }

    /// Whether the agent said, in a post made since `since` (unix seconds, the same second
    /// included: an agent restarted within the second it was last heard must not be taken
    /// offline), that it has left job `job`: its record shows it idle (`state` `waiting`,
    /// which the stock agent posts when it starts and after each job) or names another job
    /// (`job_id`). An agent restarted mid-job abandons the job it ran: that job is lost,
    /// the agent is not. While it runs a job the stock agent posts only phase names, so a
    /// dead agent's record never reads so.
    pub fn left_job(&self, job: JobId, since: u64) -> bool {
        if self.updated_at < since {
            return false;
        }
        let fields = self.fields_map();
        let idle = fields.get("state").and_then(Value::as_str) == Some("waiting");
        let other = fields
            .get("job_id")
            .and_then(Value::as_str)
            .is_some_and(|named| JobId::parse(named) != Some(job));
        idle || other
    }

    /// The members `keys` of the merged fields (those it has), the other values skipped
    /// unbuilt: a reader that needs a few fields (a page's row: state, job, queues) does
    /// not parse or copy the rest (a record may hold 4 MiB of log lines). The fields are
    /// a map the server wrote: no key twice.
    pub fn members(&self, keys: &[&str]) -> Map<String, Value> {
        /// Keeps the members named, skips the others.
        struct Pick<'k>(&'k [&'k str]);
        impl<'de> serde::de::Visitor<'de> for Pick<'_> {
            type Value = Map<String, Value>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Map<String, Value>, A::Error> {
                let mut picked = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if self.0.contains(&key.as_str()) {
                        picked.insert(key, map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(picked)
            }
        }
        use serde::Deserializer as _;
        let mut de = serde_json::Deserializer::from_slice(&self.fields);
        de.deserialize_map(Pick(keys)).unwrap_or_default()
    }

    /// The queues the agent lists as those it serves (the strings of its `queues`
    /// field), that member alone parsed ([`AgentRecord::members`]).
    pub fn queues(&self) -> Vec<Name> {
        queues_of(self.members(&["queues"]).remove("queues"))
    }

    /// What [`Agents`] indexes the record by: its queues and its state, both members
    /// parsed in one pass.
    fn indexed(&self) -> Indexed {
        let mut members = self.members(&["queues", "state"]);
        Indexed {
            queues: queues_of(members.remove("queues")),
            state: state_of(members.get("state")),
        }
    }
}

/// The strings of a record's `queues` member.
fn queues_of(queues: Option<Value>) -> Vec<Name> {
    match queues {
        Some(Value::Array(queues)) => queues
            .iter()
            .filter_map(Value::as_str)
            .map(Name::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// The state a record is counted under in [`Agents::states`]: its `state` member when
/// that is a string, else [`UNKNOWN_STATE`].
fn state_of(state: Option<&Value>) -> Box<str> {
    state
        .and_then(Value::as_str)
        .unwrap_or(UNKNOWN_STATE)
        .into()
}

/// The state of a record whose `state` is missing or not a string.
pub const UNKNOWN_STATE: &str = "unknown";

/// What a record is indexed by ([`AgentRecord::indexed`]).
struct Indexed {
    /// [`AgentRecord::queues`].
    queues: Vec<Name>,
    /// [`state_of`] its `state`.
    state: Box<str>,
}

/// All agent-reported data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Agents {
    /// Advertised queues by name.
    pub queues: BTreeMap<Name, Advertised>,
    /// Advertised images per queue: JSON object text `{image: provision data}`.
    pub images: BTreeMap<Name, Bytes>,
    /// Agent records by name.
    pub agents: BTreeMap<Name, AgentRecord>,
    /// The names of the agents whose records list each queue ([`AgentRecord::queues`]),
    /// kept by [`Agents::apply`] (the only writer of `agents`) and built afresh when a
    /// snapshot is decoded; never stored. Asking which agents serve a queue visits
    /// those, not every record.
    #[serde(skip)]
    serving: BTreeMap<Name, BTreeSet<Name>>,
    /// How many records have each state ([`state_of`]; no entry for none), kept beside
    /// `serving` and like it never stored: the dashboard's overview shows these counts on
    /// every view, and counting them there parsed every record (2,000 records of 100 KB:
    /// 200 MB read under the partition's lock per view).
    #[serde(skip)]
    states: BTreeMap<Box<str>, usize>,
    /// [`Agents::held_bytes`], kept by [`Agents::apply`] (the only writer of the maps
    /// above) and counted afresh when a snapshot is decoded; never stored.
    #[serde(skip)]
    held: usize,
}

/// [`Agents`] as a snapshot stores it (the same fields, in the same order).
#[derive(Deserialize)]
struct Stored {
    queues: BTreeMap<Name, Advertised>,
    images: BTreeMap<Name, Bytes>,
    agents: BTreeMap<Name, AgentRecord>,
}

impl From<Stored> for Agents {
    fn from(stored: Stored) -> Agents {
        let mut agents = Agents {
            queues: stored.queues,
            images: stored.images,
            agents: stored.agents,
            serving: BTreeMap::new(),
            states: BTreeMap::new(),
            held: 0,
        };
        agents.held = agents.count_bytes();
        let names: Vec<Name> = agents.agents.keys().cloned().collect();
        for name in names {
            agents.reindex(&name, None);
        }
        agents
    }
}

/// `old` fields with the `new` JSON object merged in, key by key, the `log` list extended
/// and cut to its newest [`AGENT_LOG_KEEP`] entries; `None` when `new` is not an object.
fn merge(old: &[u8], new: &[u8]) -> Option<Bytes> {
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(new) else {
        return None;
    };
    let mut map: Map<String, Value> = serde_json::from_slice(old).unwrap_or_default();
    for (key, value) in new {
        if key == "log" {
            let mut log = match map.remove("log") {
                Some(Value::Array(old)) => old,
                _ => Vec::new(),
            };
            if let Value::Array(more) = value {
                log.extend(more);
            }
            let excess = log.len().saturating_sub(AGENT_LOG_KEEP);
            log.drain(..excess);
            map.insert(key, Value::Array(log));
        } else {
            map.insert(key, value);
        }
    }
    Some(Bytes::from(
        serde_json::to_vec(&map).expect("map serialises"),
    ))
}

/// 507 when `count` advertised `what` would pass [`MAX_ADVERTISED_QUEUES`].
fn advertised(count: usize, what: &str) -> Result<()> {
    if count > MAX_ADVERTISED_QUEUES {
        return Err(Error::NoSpace(format!(
            "at most {MAX_ADVERTISED_QUEUES} {what} are kept (advertisements do not expire); \
             this post would make {count}"
        )));
    }
    Ok(())
}

/// 507 when `delta` more bytes would take the partition's `held` past
/// [`MAX_AGENT_DATA_BYTES`] (events that do not grow it always pass).
fn within_budget(held: usize, delta: usize) -> Result<()> {
    if delta > 0 && held.saturating_add(delta) > MAX_AGENT_DATA_BYTES {
        return Err(Error::NoSpace(format!(
            "agent data is full: advertised queues, images and agent records hold {held} \
             bytes, and at most {MAX_AGENT_DATA_BYTES} are kept; this post would add {delta} \
             (records of silent agents expire after --agent-expiry-secs)"
        )));
    }
    Ok(())
}

impl Agents {
    /// Bytes the partition's client-supplied data holds: descriptions, images, records'
    /// fields and provision entries (what [`MAX_AGENT_DATA_BYTES`] bounds).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// [`Agents::held_bytes`] counted over every entry.
    fn count_bytes(&self) -> usize {
        let queues: usize = self.queues.values().map(|q| q.description.len()).sum();
        let images: usize = self.images.values().map(Bytes::len).sum();
        let records: usize = self.agents.values().map(AgentRecord::bytes).sum();
        queues + images + records
    }

    /// The agents whose records list `queue` among those they serve, by name.
    pub fn serving<'a>(&'a self, queue: &str) -> impl Iterator<Item = (&'a Name, &'a AgentRecord)> {
        self.serving
            .get(queue)
            .into_iter()
            .flatten()
            .filter_map(|name| self.agents.get_key_value(name))
    }

    /// How many agent records have each state (a record's `state` when it is a string,
    /// else [`UNKNOWN_STATE`]), by state; states no record has are left out.
    pub fn states(&self) -> impl Iterator<Item = (&str, usize)> {
        self.states.iter().map(|(state, &count)| (&**state, count))
    }

    /// Moves agent `name` in [`Agents::serving`] and [`Agents::states`] from what its
    /// record was indexed by `before` (`None`: it had none) to what it is now (nothing,
    /// once it is gone).
    fn reindex(&mut self, name: &Name, before: Option<Indexed>) {
        let now = self.agents.get(name).map(AgentRecord::indexed);
        let (before, now) = match (before, now) {
            (Some(before), Some(now)) if before.state == now.state => (before.queues, now.queues),
            (before, now) => {
                if let Some(Indexed { state, .. }) = &before {
                    if let Some(count) = self.states.get_mut(state) {
                        *count -= 1;
                        if *count == 0 {
                            self.states.remove(state);
                        }
                    }
                }
                if let Some(Indexed { state, .. }) = &now {
                    *self.states.entry(state.clone()).or_default() += 1;
                }
                (
                    before.map(|b| b.queues).unwrap_or_default(),
                    now.map(|n| n.queues).unwrap_or_default(),
                )
            }
        };
        if now == before {
            return;
        }
        for queue in before {
            if let Some(names) = self.serving.get_mut(&queue) {
                names.remove(name);
                if names.is_empty() {
                    self.serving.remove(&queue);
                }
            }
        }
        for queue in now {
            self.serving.entry(queue).or_default().insert(name.clone());
        }
    }

    /// Applies `change` to agent `name`'s record (a new one if it has none), keeping
    /// [`Agents::held_bytes`].
    fn change_record(&mut self, name: &Name, change: impl FnOnce(&mut AgentRecord)) {
        let record = self.agents.entry(name.clone()).or_default();
        let before = record.bytes();
        change(record);
        self.held = self.held - before + record.bytes();
    }

    /// Folds one agents event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::QueuesAdvertised { queues, at } => {
                for (name, description) in queues {
                    let advertised = Advertised {
                        description: description.clone(),
                        updated_at: *at,
                    };
                    let old = self.queues.insert(name.clone(), advertised);
                    self.held += description.len();
                    self.held -= old.map_or(0, |q| q.description.len());
                }
            }
            Event::ImagesAdvertised { queue, images } => {
                let old = self.images.insert(queue.clone(), images.clone());
                self.held += images.len();
                self.held -= old.map_or(0, |i| i.len());
            }
            Event::AgentUpdated {
                name,
                fields,
                at,
                by,
            } => {
                let before = self.agents.get(name).map(AgentRecord::indexed);
                self.change_record(name, |record| {
                    if let Some(merged) = merge(&record.fields, fields) {
                        record.fields = merged;
                        record.updated_at = *at;
                    }
                    // A manager's or the server's own update (a lost agent marked offline)
                    // releases the record: any agent credential may take it next.
                    record.writer = by.clone();
                });
                self.reindex(name, before);
            }
            Event::ProvisionLogged { name, entry, .. } => {
                // A provision entry for an agent without a record starts one (of no
                // fields): counted, its state unknown.
                let new = !self.agents.contains_key(name);
                self.change_record(name, |record| {
                    let passed = serde_json::from_slice::<Value>(entry)
                        .ok()
                        .and_then(|v| v.get("exit_code").and_then(Value::as_i64))
                        == Some(0);
                    let kind: &str = if passed { "pass" } else { "fail" };
                    record.provision_streak = match record.provision_streak.take() {
                        Some((k, n)) if &*k == kind => Some((k, n + 1)),
                        _ => Some((kind.into(), 1)),
                    };
                    record.provision_log.push(entry.clone());
                    let mut excess = record.provision_log.len().saturating_sub(AGENT_LOG_KEEP);
                    let mut held: usize =
                        record.provision_log[excess..].iter().map(Bytes::len).sum();
                    while held > MAX_PROVISION_LOG_BYTES && excess + 1 < record.provision_log.len()
                    {
                        held -= record.provision_log[excess].len();
                        excess += 1;
                    }
                    record.provision_log.drain(..excess);
                });
                if new {
                    self.reindex(name, None);
                }
            }
            Event::AgentsExpired { names } => {
                for name in names {
                    if let Some(record) = self.agents.remove(name) {
                        self.held -= record.bytes();
                        self.reindex(name, Some(record.indexed()));
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether recording `event` would change nothing a reader sees: an advertisement
    /// repeating every description, or a queue's images, as they stand. The stock agent
    /// re-posts its queues on every poll (upstream refreshes a TTL with it; here they do
    /// not expire), so recording each one would sync a write every few seconds per agent.
    pub fn repeats(&self, event: &Event) -> bool {
        match event {
            Event::QueuesAdvertised { queues, .. } => queues.iter().all(|(name, description)| {
                self.queues
                    .get(name)
                    .is_some_and(|q| q.description == *description)
            }),
            Event::ImagesAdvertised { queue, images } => self.images.get(queue) == Some(images),
            _ => false,
        }
    }

    /// Whether `event` may be recorded: refused, before anything changes, when it would
    /// take an agent record past [`MAX_AGENT_RECORD_BYTES`] (413), add a record or an
    /// advertised queue past [`MAX_AGENTS`] or [`MAX_ADVERTISED_QUEUES`] (507), or grow
    /// the partition past [`MAX_AGENT_DATA_BYTES`] (507).
    pub fn admit(&self, event: &Event) -> Result<()> {
        match event {
            Event::AgentUpdated { name, fields, .. } => {
                let record = self.agents.get(name);
                if record.is_none() && self.agents.len() >= MAX_AGENTS {
                    return Err(Error::NoSpace(format!(
                        "{MAX_AGENTS} agents have records, the most kept at once: a new \
                         agent's record is refused until silent ones expire \
                         (--agent-expiry-secs)"
                    )));
                }
                let old = record.map(|r| r.fields.clone()).unwrap_or_default();
                match merge(&old, fields) {
                    Some(merged) if merged.len() > MAX_AGENT_RECORD_BYTES => {
                        Err(Error::TooLarge(format!(
                            "the agent's record would hold {} bytes, the limit is {} \
                             (every key posted is kept: post fewer or smaller keys)",
                            merged.len(),
                            MAX_AGENT_RECORD_BYTES
                        )))
                    }
                    Some(merged) => {
                        within_budget(self.held_bytes(), merged.len().saturating_sub(old.len()))
                    }
                    None => Ok(()),
                }
            }
            Event::QueuesAdvertised { queues, .. } => {
                let new = queues
                    .iter()
                    .filter(|(name, _)| !self.queues.contains_key(name))
                    .count();
                advertised(self.queues.len() + new, "queues")?;
                let added: usize = queues
                    .iter()
                    .map(|(name, description)| {
                        let old = self.queues.get(name).map_or(0, |q| q.description.len());
                        description.len().saturating_sub(old)
                    })
                    .sum();
                within_budget(self.held_bytes(), added)
            }
            Event::ImagesAdvertised { queue, images } => {
                let new = usize::from(!self.images.contains_key(queue));
                advertised(self.images.len() + new, "queues with images")?;
                let old = self.images.get(queue).map_or(0, Bytes::len);
                within_budget(self.held_bytes(), images.len().saturating_sub(old))
            }
            Event::ProvisionLogged { entry, .. } => within_budget(self.held_bytes(), entry.len()),
            _ => Ok(()),
        }
    }

    /// [`Agents::admit`] for one post of images for `queues` (each recorded as an event
    /// of its own): 507 when together they would pass [`MAX_ADVERTISED_QUEUES`].
    pub fn admit_images<'a>(&self, queues: impl Iterator<Item = &'a Name>) -> Result<()> {
        let new: std::collections::BTreeSet<&Name> = queues
            .filter(|queue| !self.images.contains_key(*queue))
            .collect();
        advertised(self.images.len() + new.len(), "queues with images")
    }

    /// Agents whose record was last updated before `cutoff` (unix seconds).
    pub fn silent_since(&self, cutoff: u64) -> Vec<Name> {
        self.agents
            .iter()
            .filter(|(_, r)| r.updated_at < cutoff)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_has_left_a_job_only_when_it_posted_idle_or_another_job_after_last_heard() {
        let job = JobId::random();
        let record = |fields: String, updated_at: u64| AgentRecord {
            fields: Bytes::from(fields),
            updated_at,
            ..AgentRecord::default()
        };
        let running = format!(r#"{{"state":"test","job_id":"{job}"}}"#);
        let restarted = format!(r#"{{"state":"waiting","job_id":"{job}"}}"#);
        let upper = format!(
            r#"{{"state":"setup","job_id":"{}"}}"#,
            job.to_string().to_uppercase()
        );
        let other = format!(r#"{{"state":"setup","job_id":"{}"}}"#, JobId::random());
        assert!(!record(running, 20).left_job(job, 10), "still on it");
        assert!(
            !record(upper, 20).left_job(job, 10),
            "the same job, spelt otherwise"
        );
        assert!(
            record(restarted.clone(), 20).left_job(job, 10),
            "started again"
        );
        assert!(
            record(other.clone(), 20).left_job(job, 10),
            "took another job"
        );
        assert!(
            record(restarted.clone(), 10).left_job(job, 10),
            "in the second it was last heard"
        );
        assert!(
            !record(restarted, 9).left_job(job, 10),
            "not before it was last heard"
        );
        assert!(
            !record(other, 9).left_job(job, 10),
            "not after it was last heard"
        );
    }

    fn update(name: &str) -> Event {
        Event::AgentUpdated {
            name: Name::from(name),
            fields: Bytes::from_static(br#"{"state":"waiting"}"#),
            at: 1,
            by: None,
        }
    }

    #[test]
    fn agent_data_is_bounded_in_total_bytes() {
        let mut agents = Agents::default();
        // One buffer shared by every queue's images: counted for each, allocated once.
        let big = Bytes::from(vec![b'x'; 4 << 20]);
        let images = |q: usize| Event::ImagesAdvertised {
            queue: Name::from(format!("q{q}").as_str()),
            images: big.clone(),
        };
        let fit = MAX_AGENT_DATA_BYTES / big.len();
        for q in 0..fit {
            agents.admit(&images(q)).unwrap();
            agents.apply(&images(q));
        }
        assert_eq!(agents.held_bytes(), fit * big.len());
        let refused = agents.admit(&images(fit)).unwrap_err();
        assert!(
            matches!(refused, Error::NoSpace(_))
                && refused.message().contains("agent data is full"),
            "{refused:?}"
        );
        // Replacing a queue's images with as many bytes adds nothing: let in.
        agents.admit(&images(0)).unwrap();
        // Records and provision entries count too.
        assert!(matches!(
            agents.admit(&update("late")),
            Err(Error::NoSpace(_))
        ));
        let entry = Event::ProvisionLogged {
            name: Name::from("q0"),
            entry: Bytes::from_static(br#"{"exit_code":0}"#),
            at: 1,
        };
        assert!(matches!(agents.admit(&entry), Err(Error::NoSpace(_))));
    }

    /// The running count [`Agents::apply`] keeps is what counting every entry gives,
    /// through replacements, merges, trimmed provision history, expiry and a snapshot's
    /// encoding and decoding (which stores no count).
    #[test]
    fn held_bytes_is_kept_through_every_change_and_a_snapshot() {
        let mut agents = Agents::default();
        let events = [
            Event::QueuesAdvertised {
                queues: vec![(Name::from("q"), "first".into())],
                at: 1,
            },
            Event::QueuesAdvertised {
                queues: vec![(Name::from("q"), "a longer one".into())],
                at: 2,
            },
            Event::ImagesAdvertised {
                queue: Name::from("q"),
                images: Bytes::from_static(br#"{"img":"url"}"#),
            },
            Event::ImagesAdvertised {
                queue: Name::from("q"),
                images: Bytes::from_static(br#"{}"#),
            },
            update("a"),
            update("b"),
            Event::AgentUpdated {
                name: Name::from("a"),
                fields: Bytes::from_static(br#"{"location":"lab 3","log":["x"]}"#),
                at: 2,
                by: None,
            },
        ];
        for event in &events {
            agents.apply(event);
            assert_eq!(agents.held_bytes(), agents.count_bytes(), "{event:?}");
        }
        for n in 0..120 {
            agents.apply(&Event::ProvisionLogged {
                name: Name::from("a"),
                entry: Bytes::from(format!(
                    "{{\"exit_code\":{n},\"d\":\"{}\"}}",
                    "x".repeat(20_000)
                )),
                at: 3,
            });
            assert_eq!(agents.held_bytes(), agents.count_bytes());
        }
        agents.apply(&Event::AgentsExpired {
            names: vec![Name::from("b")],
        });
        assert_eq!(agents.held_bytes(), agents.count_bytes());
        assert!(agents.held_bytes() > 0);
        let decoded: Agents = rmp_serde::from_slice(&rmp_serde::to_vec(&agents).unwrap()).unwrap();
        assert_eq!(decoded.held_bytes(), agents.held_bytes());
    }

    #[test]
    fn provision_history_keeps_the_newest_entries_within_its_bytes() {
        let mut agents = Agents::default();
        agents.apply(&update("a"));
        let log = |n: usize, len: usize| Event::ProvisionLogged {
            name: Name::from("a"),
            entry: Bytes::from(format!("{{\"n\":{n},\"d\":\"{}\"}}", "x".repeat(len))),
            at: 1,
        };
        for n in 0..150 {
            agents.apply(&log(n, 10));
        }
        assert_eq!(agents.agents["a"].provision_log.len(), AGENT_LOG_KEEP);
        for n in 0..10 {
            agents.apply(&log(n, 300_000));
        }
        let kept = &agents.agents["a"].provision_log;
        let held: usize = kept.iter().map(Bytes::len).sum();
        assert!(held <= MAX_PROVISION_LOG_BYTES, "{held}");
        assert_eq!(kept.len(), 3, "the newest three of ~300 kB");
        agents.apply(&log(99, 2 * MAX_PROVISION_LOG_BYTES));
        assert_eq!(
            agents.agents["a"].provision_log.len(),
            1,
            "the newest stays"
        );
    }

    /// Past [`MAX_AGENTS`] records a new agent is refused (507) while the known ones keep
    /// posting; once one expires, a new one is let in.
    #[test]
    fn a_new_agent_is_refused_only_past_the_most_records_kept() {
        let mut agents = Agents::default();
        for i in 0..MAX_AGENTS {
            let event = update(&format!("a{i}"));
            agents.admit(&event).unwrap();
            agents.apply(&event);
        }
        let refused = agents.admit(&update("one-more")).unwrap_err();
        assert!(matches!(refused, Error::NoSpace(_)), "{refused:?}");
        agents.admit(&update("a0")).unwrap();
        agents.apply(&Event::AgentsExpired {
            names: vec![Name::from("a0")],
        });
        agents.admit(&update("one-more")).unwrap();
    }

    /// Which agents serve a queue, and how many records have each state, as the indexes
    /// answer them, are always what reading every record would say: through updates that
    /// change, keep or drop their queues or state (or post none, or a state that is not a
    /// string), provision entries (one may start a record), expiries, and a snapshot's
    /// decoding.
    #[test]
    fn the_agents_serving_a_queue_and_the_state_counts_are_what_the_records_say() {
        let mut seed: u64 = 0x51f1_5eed_0bad_cafe;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let every = |agents: &Agents, queue: &str| -> Vec<Name> {
            agents
                .agents
                .iter()
                .filter(|(_, r)| r.queues().iter().any(|q| &**q == queue))
                .map(|(name, _)| name.clone())
                .collect()
        };
        let counted = |agents: &Agents| -> Vec<(String, usize)> {
            let mut states: BTreeMap<String, usize> = BTreeMap::new();
            for record in agents.agents.values() {
                let fields = record.fields_map();
                let state = fields.get("state").and_then(Value::as_str);
                *states.entry(state.unwrap_or("unknown").into()).or_default() += 1;
            }
            states.into_iter().collect()
        };
        let indexed = |agents: &Agents| -> Vec<(String, usize)> {
            agents.states().map(|(s, n)| (s.to_owned(), n)).collect()
        };
        let mut agents = Agents::default();
        for step in 0..2_000 {
            let name = Name::from(format!("dev-{}", below(6)));
            let event = match below(9) {
                0 => Event::AgentsExpired { names: vec![name] },
                6 => Event::ProvisionLogged {
                    name,
                    entry: Bytes::from_static(br#"{"exit_code":0}"#),
                    at: step,
                },
                7 | 8 => {
                    let state = match below(5) {
                        0 => Value::from(3),
                        1 => Value::Null,
                        s => Value::from(["waiting", "test", "offline"][s as usize - 2]),
                    };
                    Event::AgentUpdated {
                        name,
                        fields: Bytes::from(
                            serde_json::to_vec(&serde_json::json!({"state": state})).unwrap(),
                        ),
                        at: step,
                        by: None,
                    }
                }
                1 => Event::AgentUpdated {
                    name,
                    fields: Bytes::from_static(br#"{"state":"waiting","log":["x"]}"#),
                    at: step,
                    by: None,
                },
                2 => Event::AgentUpdated {
                    name,
                    fields: Bytes::from_static(br#"{"queues":"not a list"}"#),
                    at: step,
                    by: None,
                },
                _ => {
                    let queues: Vec<Value> = (0..below(3))
                        .map(|_| match below(5) {
                            0 => Value::from(1),
                            q => Value::from(format!("q{q}")),
                        })
                        .collect();
                    Event::AgentUpdated {
                        name,
                        fields: Bytes::from(
                            serde_json::to_vec(&serde_json::json!({"queues": queues})).unwrap(),
                        ),
                        at: step,
                        by: None,
                    }
                }
            };
            agents.apply(&event);
            let decoded: Agents =
                rmp_serde::from_slice(&rmp_serde::to_vec(&agents).unwrap()).unwrap();
            assert_eq!(indexed(&agents), counted(&agents), "step {step}");
            assert_eq!(indexed(&decoded), counted(&agents), "decoded, step {step}");
            for queue in ["q1", "q2", "q3", "q4", "nowhere"] {
                let want = every(&agents, queue);
                let got: Vec<Name> = agents.serving(queue).map(|(n, _)| n.clone()).collect();
                assert_eq!(got, want, "step {step}, {queue}");
                let got: Vec<Name> = decoded.serving(queue).map(|(n, _)| n.clone()).collect();
                assert_eq!(got, want, "decoded, step {step}, {queue}");
            }
        }
    }
}
