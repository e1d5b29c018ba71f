//! The whole server state and THE fold: [`State::apply`] is what start-up replay runs
//! over the log, and what each actor runs (on its own partition) for live writes.
//!
//! Invariant: a partition's state is a pure function of the sequence of that partition's
//! events; no partition reads another while applying.

use serde::{Deserialize, Serialize};

use super::access::Access;
use super::agents::Agents;
use super::event::{Event, Partition};
use super::files::Files;
use super::registry::{IndexChange, Registry};
use super::results::Results;
use super::webhooks::Webhooks;

/// Everything the log records, split by owning actor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Jobs and lifecycle (registry actor).
    pub registry: Registry,
    /// Result documents and logs (result actor).
    pub results: Results,
    /// Stored files (artifact actor).
    pub files: Files,
    /// Advertised queues/images and agent records (agents actor).
    pub agents: Agents,
    /// Clients, refresh tokens, restricted queues and secrets (`access::store`).
    pub access: Access,
    /// Job event outboxes (webhooks actor). Last, with a default: older snapshots lack it.
    #[serde(default)]
    pub webhooks: Webhooks,
}

/// What applying an event asks of the shell, beyond the state change itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A queue index change (registry events).
    pub index: Option<IndexChange>,
    /// Files no longer referenced (files events).
    pub unreferenced: Vec<Box<str>>,
}

impl State {
    /// Folds one event into the partition it belongs to.
    pub fn apply(&mut self, lsn: u64, event: &Event) -> Effects {
        let mut effects = Effects::default();
        match event.partition() {
            Partition::Registry => effects.index = self.registry.apply(lsn, event),
            Partition::Results => self.results.apply(event),
            Partition::Artifacts => effects.unreferenced = self.files.apply(event),
            Partition::Agents => self.agents.apply(event),
            Partition::Access => self.access.apply(event),
            Partition::Webhooks => self.webhooks.apply(event),
        }
        effects
    }
}
