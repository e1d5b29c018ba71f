//! What agents tell the server about themselves: advertised queues and images, and agent
//! records (state, queues, location, log, provision history).
//!
//! Records are JSON objects merged key by key, as Testflinger's agent-data endpoint does;
//! the `log` list and provision history keep only their newest entries so an agent that
//! runs for years cannot grow the state without bound, and a record expires once its
//! agent has not posted for `--agent-expiry-secs`. What clients can add without bound
//! otherwise is bounded here ([`Agents::admit`]): a record's size (new keys), the number
//! of records, and of them those one agent credential created (`--max-agents-per-client`:
//! else one leaked credential takes every place for a week), the number of advertised
//! queues (which never expire), and the bytes all of it holds together
//! ([`MAX_AGENT_DATA_BYTES`]: the counts times the per-item limits would be tens of GB).
//! A record goes when it expires or an operator deletes it (`Event::AgentDeleted`).
//!
//! Reads that need a few fields of many records parse those alone
//! ([`AgentRecord::members`]); which agents serve a queue ([`Agents::serving`]), how
//! many records have each state ([`Agents::states`]) and how many each credential
//! created ([`Agents::created_by`]) are kept by the fold, so none costs a parse of every
//! record.

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
    /// The agent credential (client id) the record was created under, with access
    /// control on: fixed for the record's life (a manager's post or another credential
    /// taking the record over changes [`AgentRecord::writer`], not this), it is what
    /// `--max-agents-per-client` counts ([`Agents::created_by`]). `None` for a record
    /// made by a manager, an admin or the server, with access control off, or read from
    /// a snapshot older than this field (counted under no credential). Last, with a
    /// default, for those snapshots.
    #[serde(default)]
    pub creator: Option<Name>,
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
    /// How many records each agent credential created ([`AgentRecord::creator`]; no
    /// entry for none), kept by [`Agents::apply`] beside `states` and like it counted
    /// afresh when a snapshot is decoded, never stored: [`Agents::admit`] holds a
    /// credential to its share with it, and counting every record per post would visit
    /// 10,000 of them.
    #[serde(skip)]
    created: BTreeMap<Name, usize>,
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
            created: BTreeMap::new(),
        };
        agents.held = agents.count_bytes();
        for creator in agents.agents.values().filter_map(|r| r.creator.clone()) {
            *agents.created.entry(creator).or_default() += 1;
        }
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
                let new = before.is_none();
                self.change_record(name, |record| {
                    if new {
                        record.creator = by.clone();
                    }
                    if let Some(merged) = merge(&record.fields, fields) {
                        record.fields = merged;
                        record.updated_at = *at;
                    }
                    // A manager's or the server's own update (a lost agent marked offline)
                    // releases the record: any agent credential may take it next.
                    record.writer = by.clone();
                });
                if let Some(creator) = by.as_ref().filter(|_| new) {
                    *self.created.entry(creator.clone()).or_default() += 1;
                }
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
                    self.remove(name);
                }
            }
            Event::AgentDeleted { name } => self.remove(name),
            _ => {}
        }
    }

    /// Removes agent `name`'s record (if it has one), with what the running counts and
    /// indexes hold of it.
    fn remove(&mut self, name: &Name) {
        let Some(record) = self.agents.remove(name) else {
            return;
        };
        self.held -= record.bytes();
        if let Some(creator) = &record.creator {
            if let Some(count) = self.created.get_mut(creator) {
                *count -= 1;
                if *count == 0 {
                    self.created.remove(creator);
                }
            }
        }
        self.reindex(name, Some(record.indexed()));
    }

    /// How many of the records kept were created under agent credential `client`
    /// ([`AgentRecord::creator`]).
    pub fn created_by(&self, client: &str) -> usize {
        self.created.get(client).copied().unwrap_or(0)
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
    /// take an agent record past [`MAX_AGENT_RECORD_BYTES`] (413), add a record past
    /// `per_client` created under the posting agent credential
    /// (`--max-agents-per-client`, [`Agents::created_by`]) or past [`MAX_AGENTS`], add an
    /// advertised queue past [`MAX_ADVERTISED_QUEUES`] (507 each), or grow the partition
    /// past [`MAX_AGENT_DATA_BYTES`] (507). Only new records count against the shares:
    /// the agents that have one keep posting.
    pub fn admit(&self, event: &Event, per_client: usize) -> Result<()> {
        match event {
            Event::AgentUpdated {
                name, fields, by, ..
            } => {
                let record = self.agents.get(name);
                if let Some(client) = by.as_ref().filter(|_| record.is_none()) {
                    let created = self.created_by(client);
                    if created >= per_client {
                        return Err(Error::NoSpace(format!(
                            "agent credential {client:?} has created {created} of the agent \
                             records kept, the most one client may have \
                             (--max-agents-per-client {per_client}): a new agent's record \
                             is refused until one of them expires (--agent-expiry-secs) or \
                             an operator deletes it (DELETE /v1/agents/data/<name>); the \
                             agents that have records keep posting"
                        )));
                    }
                }
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
mod tests;
