//! The agents actor: owns the [`Agents`] partition (advertised queues and images, agent
//! records and provision history).
//!
//! Reads do not come here: the partition is [`Shared`], this actor its only writer
//! (holding the write lock only while it applies an event), and handlers read it under
//! the read lock (`http::agents::read_agents`), so a dashboard page or an agent listing
//! never waits behind writes queued in this mailbox.

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{now, reply, PendingSnapshot, Recorder, Shared};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::agents::Agents;
use crate::model::{Event, JobId, Name};

/// Messages to the agents actor.
pub enum AgentMsg {
    /// Merge `{name: description}` pairs into the advertised queues.
    AdvertiseQueues(Vec<(Name, Box<str>)>, RpcReplyPort<Result<Ticket>>),
    /// Replace the images of each queue (`{image: data}` object text per queue).
    AdvertiseImages(Vec<(Name, Bytes)>, RpcReplyPort<Result<Ticket>>),
    /// Merge fields (JSON object text) into an agent's record, posted by this agent
    /// credential (`None`: not an agent credential, or access control off).
    Update(Name, Bytes, Option<Name>, RpcReplyPort<Result<Ticket>>),
    /// Merge `fields` (JSON object text: `offline` and why) into the record of the agent
    /// lost with `job`, as the server, unless the record shows that the agent left that
    /// job after it was last heard about it (`AgentRecord::left_job`), or the agent has
    /// no record (an operator deleted it, or it expired: marking it would make it again):
    /// then nothing is recorded, and the reply's `Err` says which ([`Unmarked`]).
    MarkLost {
        name: Name,
        job: JobId,
        last_heard: u64,
        fields: Bytes,
        port: RpcReplyPort<Result<std::result::Result<Ticket, Unmarked>>>,
    },
    /// Append a provision outcome (JSON object text) to a known agent's history (404 for
    /// an unknown agent: recording it would create an agent that never registered).
    ProvisionLog(Name, Bytes, RpcReplyPort<Result<Ticket>>),
    /// Remove an agent's record as an operator asked (404 for an unknown agent).
    Delete(Name, RpcReplyPort<Result<Ticket>>),
    /// Remove the records of agents silent since before `cutoff` (unix seconds): how
    /// many, and the ticket.
    Expire(u64, RpcReplyPort<Result<Option<(usize, Ticket)>>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// Why [`AgentMsg::MarkLost`] left a lost job's agent unmarked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmarked {
    /// Its record shows it left the job since (restarted, or took another).
    LeftJob,
    /// It has no record.
    NoRecord,
}

/// The agents actor (its settings come in [`AgentArgs`]).
pub struct AgentActor;

/// The agents actor's start-up inputs.
pub struct AgentArgs {
    /// The partition, shared with readers.
    pub agents: Shared<Agents>,
    /// The journal.
    pub journal: Journal,
    /// Most records kept that one agent credential created (`--max-agents-per-client`).
    pub per_client: usize,
}

/// The agents actor's state.
pub struct AgentState {
    /// The partition (this actor is its only writer), shared with readers.
    agents: Shared<Agents>,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// [`AgentArgs::per_client`].
    per_client: usize,
}

impl AgentState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        if self.agents.read().repeats(&event) {
            // Nothing to write; the acknowledgement still waits for whatever recorded
            // what it repeats (it may not be durable yet).
            return Ok(self.recorder.journal().settled());
        }
        self.agents.read().admit(&event, self.per_client)?;
        let ticket = self.recorder.append(&event)?;
        self.agents.write().apply(&event);
        Ok(ticket)
    }
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        Ok(AgentState {
            agents: args.agents,
            recorder: Recorder::new(args.journal),
            per_client: args.per_client,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::AdvertiseQueues(queues, port) => {
                let result = state.record(Event::QueuesAdvertised { queues, at: now() });
                reply(port, result);
            }
            AgentMsg::AdvertiseImages(sets, port) => {
                // The whole post within the bound first, so a refusal changes nothing.
                if let Err(e) = state
                    .agents
                    .read()
                    .admit_images(sets.iter().map(|(queue, _)| queue))
                {
                    reply(port, Err(e));
                    return Ok(());
                }
                // Records are durable in log order: the last one's ticket covers all.
                let mut result = Err(crate::error::Error::InvalidInput("no images given".into()));
                for (queue, images) in sets {
                    result = state.record(Event::ImagesAdvertised { queue, images });
                    if result.is_err() {
                        break;
                    }
                }
                reply(port, result);
            }
            AgentMsg::Update(name, fields, by, port) => {
                let result = state.record(Event::AgentUpdated {
                    name,
                    fields,
                    at: now(),
                    by,
                });
                reply(port, result);
            }
            AgentMsg::MarkLost {
                name,
                job,
                last_heard,
                fields,
                port,
            } => {
                let unmarked = match state.agents.read().agents.get(&name) {
                    None => Some(Unmarked::NoRecord),
                    Some(record) if record.left_job(job, last_heard) => Some(Unmarked::LeftJob),
                    Some(_) => None,
                };
                let result = match unmarked {
                    Some(why) => Ok(Err(why)),
                    None => state
                        .record(Event::AgentUpdated {
                            name,
                            fields,
                            at: now(),
                            by: None,
                        })
                        .map(Ok),
                };
                reply(port, result);
            }
            AgentMsg::ProvisionLog(name, entry, port) => {
                let result = if state.agents.read().agents.contains_key(&name) {
                    state.record(Event::ProvisionLogged {
                        name,
                        entry,
                        at: now(),
                    })
                } else {
                    Err(crate::error::Error::NotFound("Agent not found".into()))
                };
                reply(port, result);
            }
            AgentMsg::Delete(name, port) => {
                let result = if state.agents.read().agents.contains_key(&name) {
                    state.record(Event::AgentDeleted { name })
                } else {
                    Err(crate::error::Error::NotFound(format!(
                        "Agent {name:?} has no record"
                    )))
                };
                reply(port, result);
            }
            AgentMsg::Expire(cutoff, port) => {
                let names = state.agents.read().silent_since(cutoff);
                let result = if names.is_empty() {
                    Ok(None)
                } else {
                    let count = names.len();
                    state
                        .record(Event::AgentsExpired { names })
                        .map(|t| Some((count, t)))
                };
                reply(port, result);
            }
            AgentMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&*state.agents.read()));
            }
        }
        Ok(())
    }
}
