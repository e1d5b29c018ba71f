//! One queue's actor: the waiting order of that queue (a [`QueueIndex`]).
//!
//! It records nothing: its index is derived from the registry, which tells it about every
//! change in order. Pops reserve a candidate here, claim it at the registry, and the
//! registry's removal (or the pop's release) settles the reservation.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::reply;
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
    /// How many waiting jobs are ahead of this one.
    Position(JobId, RpcReplyPort<Option<usize>>),
    /// The first `n` waiting jobs in dispatch order (the dashboard's queue page): this
    /// actor holds the order, so the answer is exact however many jobs wait.
    Head(usize, RpcReplyPort<Vec<JobId>>),
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
            QueueMsg::Position(id, port) => reply(port, index.position(id)),
            QueueMsg::Head(n, port) => reply(port, index.entries().take(n).map(|e| e.id).collect()),
        }
        Ok(())
    }
}
