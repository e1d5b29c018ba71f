//! What agents tell the server about themselves: advertised queues and images, and agent
//! records (state, queues, location, log, provision history).
//!
//! Records are JSON objects merged key by key, as Testflinger's agent-data endpoint does;
//! the `log` list and provision history keep only their newest entries so an agent that
//! runs for years cannot grow the state without bound, and a record expires once its
//! agent has not posted for `--agent-expiry-secs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event::Event;
use super::ids::Name;

/// How many `log` lines and provision entries an agent record keeps (Testflinger keeps 100).
pub const AGENT_LOG_KEEP: usize = 100;

/// One advertised queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    /// Its description.
    pub description: Box<str>,
    /// Unix seconds of the latest advertisement.
    pub updated_at: u64,
}

/// One agent's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The merged fields (`state`, `queues`, `location`, `job_id`, `log`, ...) as JSON text.
    pub fields: Bytes,
    /// Unix seconds of the latest update.
    pub updated_at: u64,
    /// Provision outcomes, newest last (at most [`AGENT_LOG_KEEP`]).
    pub provision_log: Vec<Bytes>,
    /// Consecutive provision outcomes of the same kind: ("pass"|"fail", count).
    pub provision_streak: Option<(Box<str>, u64)>,
}

impl AgentRecord {
    /// The merged fields as a JSON object.
    pub fn fields_map(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.fields).unwrap_or_default()
    }

    /// Whether the agent lists `queue` among the queues it serves (its `queues` field).
    pub fn serves(&self, queue: &str) -> bool {
        self.fields_map()
            .get("queues")
            .and_then(Value::as_array)
            .is_some_and(|qs| qs.iter().any(|q| q.as_str() == Some(queue)))
    }
}

/// All agent-reported data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Agents {
    /// Advertised queues by name.
    pub queues: BTreeMap<Name, Advertised>,
    /// Advertised images per queue: JSON object text `{image: provision data}`.
    pub images: BTreeMap<Name, Bytes>,
    /// Agent records by name.
    pub agents: BTreeMap<Name, AgentRecord>,
}

impl Agents {
    /// Folds one agents event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::QueuesAdvertised { queues, at } => {
                for (name, description) in queues {
                    self.queues.insert(
                        name.clone(),
                        Advertised {
                            description: description.clone(),
                            updated_at: *at,
                        },
                    );
                }
            }
            Event::ImagesAdvertised { queue, images } => {
                self.images.insert(queue.clone(), images.clone());
            }
            Event::AgentUpdated { name, fields, at } => {
                let record = self.agents.entry(name.clone()).or_default();
                let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(fields) else {
                    return;
                };
                let mut map = record.fields_map();
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
                record.fields = Bytes::from(serde_json::to_vec(&map).expect("map serialises"));
                record.updated_at = *at;
            }
            Event::ProvisionLogged { name, entry, .. } => {
                let record = self.agents.entry(name.clone()).or_default();
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
                let excess = record.provision_log.len().saturating_sub(AGENT_LOG_KEEP);
                record.provision_log.drain(..excess);
            }
            Event::AgentsExpired { names } => {
                for name in names {
                    self.agents.remove(name);
                }
            }
            _ => {}
        }
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
