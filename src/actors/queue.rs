//! One queue's actor: the waiting order of that queue (a [`QueueIndex`]).
//!
//! It records nothing: its index is derived from the registry, which tells it about every
//! change in order. Pops reserve a candidate here, claim it at the registry, and the
//! registry's removal (or the pop's release) settles the reservation. A pop of this one
//! queue ([`QueueMsg::Pop`]) has its claim forwarded from here, so the registry answers
//! it directly.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::registry::{Claim, Claimed, RegistryMsg};
use super::{gone, reply};
use crate::error::Result;
use crate::model::queue::{Candidate, Entry, QueueIndex};
use crate::model::{JobId, Name};

/// Messages to a queue actor.
pub enum QueueMsg {
    /// A job started waiting (registry).
    Insert(Entry),
    /// A job stopped waiting (registry).
    Remove(JobId),
    /// A job's attachments arrived (registry).
    Ready(JobId),
    /// Reserve the best job this agent may receive.
    Take(Option<Name>, RpcReplyPort<Option<Candidate>>),
    /// A pop chose another queue's job: free the reservation.
    Release(JobId),
    /// A pop of this queue alone: reserve the best job the agent may receive and
    /// forward its claim to the registry, which answers (and settles the reservation
    /// when it does not dispatch the job); [`Claimed::Nothing`] from here when there is
    /// no such job.
    Pop(Pop),
    /// How many waiting jobs are ahead of this one.
    Position(JobId, RpcReplyPort<Option<usize>>),
    /// The first `n` waiting jobs in dispatch order (the dashboard's queue page): this
    /// actor holds the order, so the answer is exact however many jobs wait.
    Head(usize, RpcReplyPort<Vec<JobId>>),
}

/// A pop of one queue (see [`QueueMsg::Pop`]).
pub struct Pop {
    /// This queue's name.
    pub queue: Name,
    /// The agent's name (its `agent_name` cookie), if it gave one.
    pub agent: Option<Name>,
    /// The agent's credential (access control on).
    pub client: Option<Name>,
    /// Where the claim goes.
    pub registry: ActorRef<RegistryMsg>,
    /// The answer (the registry's, or [`Claimed::Nothing`]).
    pub port: RpcReplyPort<Result<Claimed>>,
}

/// The queue actor (no configuration).
pub struct QueueActor;

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueIndex;
    type Arguments = QueueIndex;

    async fn pre_start(
        &self,
        _: ActorRef<QueueMsg>,
        index: QueueIndex,
    ) -> Result<QueueIndex, ActorProcessingErr> {
        Ok(index)
    }

    async fn handle(
        &self,
        _: ActorRef<QueueMsg>,
        msg: QueueMsg,
        index: &mut QueueIndex,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            QueueMsg::Insert(entry) => index.insert(entry),
            QueueMsg::Remove(id) => {
                index.remove(id);
            }
            QueueMsg::Ready(id) => index.set_ready(id),
            QueueMsg::Take(agent, port) => reply(port, index.take(agent.as_deref())),
            QueueMsg::Release(id) => index.release(id),
            QueueMsg::Pop(pop) => {
                if gone(&pop.port) {
                    return Ok(());
                }
                let Some(candidate) = index.take(pop.agent.as_deref()) else {
                    reply(pop.port, Ok(Claimed::Nothing));
                    return Ok(());
                };
                let claim = Claim {
                    id: candidate.id,
                    agent: pop.agent,
                    queues: vec![pop.queue.clone()],
                    client: pop.client,
                    reserved: Some(pop.queue),
                    port: pop.port,
                };
                // A registry that is gone (shutdown) drops the claim and with it the
                // port: the pop finds nothing, as when this actor itself has stopped
                // (`dispatch::pop_one`).
                if pop.registry.cast(RegistryMsg::Claim(claim)).is_err() {
                    index.release(candidate.id);
                }
            }
            QueueMsg::Position(id, port) => reply(port, index.position(id)),
            QueueMsg::Head(n, port) => reply(port, index.entries().take(n).map(|e| e.id).collect()),
        }
        Ok(())
    }
}
