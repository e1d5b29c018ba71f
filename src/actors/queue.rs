//! One queue's actor: the waiting order of that queue (a [`QueueIndex`]).
//!
//! It records nothing: its index is derived from the registry, which tells it about every
//! change in order through the queue's [`Feed`]: an inbox the actor empties at the start
//! of each of its turns, and a message to wake it for a new job only when no wake-up is
//! already on its way. A burst of submits to one queue then costs one actor turn, not one
//! per job, and a dispatched job's removal none (a message's trip through ractor, its
//! send, wake-up and turn, is ~1,900 instructions, 4 % of a submit's or a pop's work). A
//! reservation a pop gives back goes through the same inbox, also without a wake-up. A
//! pop ([`Pop`], [`Feed::pop`]) visits the actors of the queues it names one after the
//! other, through the same inbox (with a wake-up unless one is on its way, so the pops of
//! many agents that arrive together cost each actor one turn): each compares its best job
//! for the agent with the best found so far and keeps the better reserved, and the last
//! forwards the claim to the registry, which answers the pop and settles the reservation.
//! The request waits for one reply however many queues it names.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::inbox::{Inbox, Put, Receiver};
use super::registry::{Claim, Claimed, RegistryMsg};
use super::{gone, reply, Post};
use crate::dispatch::Waiters;
use crate::error::Result;
use crate::model::queue::{Candidate, Entry, QueueIndex};
use crate::model::{JobId, Name};

/// Messages to a queue actor.
pub enum QueueMsg {
    /// Changes or pops were put in the inbox (see [`Feed`]); every turn takes them
    /// first, so this message only wakes the actor.
    Changes,
    /// How many waiting jobs are ahead of this one.
    Position(JobId, RpcReplyPort<Option<usize>>),
    /// The first `n` waiting jobs in dispatch order (the dashboard's queue page): this
    /// actor holds the order, so the answer is exact however many jobs wait.
    Head(usize, RpcReplyPort<Vec<JobId>>),
}

/// A pop on its way through the actors of the queues it names ([`Feed::pop`]). Each queue
/// is looked at in its own actor's turn, as when every queue was asked at once and the
/// answers compared (what it replaced, measured 19–31 % slower for a pop of three
/// queues: three replies to wait for, a claim, and releases). [`Claimed::Nothing`] is
/// answered when none of its queues has a job the agent may receive; the port is dropped
/// unanswered when the pop reaches a queue whose actor stopped, idle, after the pop
/// looked it up (the request retries with the queues' actors of the moment).
pub struct Pop {
    /// The queue whose actor receives this pop.
    pub queue: Name,
    /// The queues still to visit after it, in order.
    pub rest: VecDeque<(Name, Feed)>,
    /// Every queue the pop names (a job the agent already holds in one of them is its
    /// answer, see [`Claim::queues`]).
    pub queues: Vec<Name>,
    /// The best job found so far, reserved in its queue.
    pub best: Option<Reserved>,
    /// The agent's name (its `agent_name` cookie), if it gave one.
    pub agent: Option<Name>,
    /// The agent's credential (access control on).
    pub client: Option<Name>,
    /// Where the claim goes.
    pub registry: Post<RegistryMsg>,
    /// Agents waiting for jobs (long poll), told when a reservation is released.
    pub waiters: Arc<Waiters>,
    /// The answer (the registry's, or [`Claimed::Nothing`]).
    pub port: RpcReplyPort<Result<Claimed>>,
}

/// A reservation on a queue's candidate, released if no claim takes it over (also when
/// the pop carrying it is dropped on its way, so no job stays reserved forever); a
/// release tells waiting agents that the job is available again.
pub struct Reserved {
    queue: Feed,
    name: Name,
    waiters: Arc<Waiters>,
    candidate: Candidate,
    armed: bool,
}

impl Reserved {
    /// The queue the job is reserved in.
    pub fn queue(&self) -> &Name {
        &self.name
    }

    /// The job left its queue (dispatched): there is nothing to give back.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.armed {
            self.queue.send(Change::Release(self.candidate.id));
            self.waiters.arrived(&self.name);
        }
    }
}

/// A change to a queue's waiting jobs: from the registry, in the order it applied them,
/// or a reservation given back.
#[derive(Debug)]
pub enum Change {
    /// A job started waiting.
    Insert(Entry),
    /// A job stopped waiting.
    Remove(JobId),
    /// A job's attachments arrived.
    Ready(JobId),
    /// A reservation was not claimed (see [`Reserved`]): the job may be taken again.
    Release(JobId),
}

/// At most this many changes wait in an inbox without a wake-up on its way (removals and
/// releases, which wake nobody, see [`Feed::send`]).
const MAX_UNWOKEN: usize = 1024;

/// What a queue actor's inbox holds, in the order put in.
enum Item {
    Change(Change),
    /// Boxed: it moves from inbox to inbox as a pointer.
    Pop(Box<Pop>),
}

/// The registry's way to a queue actor's index, and a pop's way to the actor: changes
/// and pops go into an inbox, which every turn of the actor empties before its message,
/// so whatever reaches the actor after a change (a pop woken by a new job, a position
/// query) sees it, as when each change was a message of its own. See [`Feed::send`] and
/// [`Feed::pop`] for when the actor is woken.
#[derive(Clone)]
pub struct Feed {
    actor: ActorRef<QueueMsg>,
    inbox: Arc<Inbox<Item>>,
}

impl Feed {
    /// Starts the actor of a queue holding `index`, linked to `supervisor`.
    pub async fn spawn(
        index: QueueIndex,
        supervisor: ractor::ActorCell,
    ) -> Result<Feed, ractor::SpawnErr> {
        let inbox = Arc::new(Inbox::default());
        let state = QueueState {
            index,
            inbox: Receiver::new(inbox.clone()),
        };
        // Boxed: ractor's spawn future is nearly a kilobyte, and inline it would enlarge
        // every future that can reach here (the registry's `record`, `handle`, ractor's
        // per-message futures), which are moved (copied whole) for every message, while a
        // queue is spawned once.
        let (actor, _) = Box::pin(Actor::spawn_linked(None, QueueActor, state, supervisor)).await?;
        Ok(Feed { actor, inbox })
    }

    /// The queue's actor (for queries, which go to it as messages).
    pub fn actor(&self) -> &ActorRef<QueueMsg> {
        &self.actor
    }

    /// Hands `pop` to the actor, waking it unless a wake-up is already on its way: the
    /// pops that arrive before its next turn are all visited in that turn, in order
    /// with the changes. Gives the pop back when the actor has stopped (its queue had no
    /// job: the pop goes on to the next queue it names).
    pub fn pop(&self, pop: Box<Pop>) -> Result<(), Box<Pop>> {
        match self.inbox.put(Item::Pop(pop), true, MAX_UNWOKEN) {
            Put::Wake => self.wake(),
            Put::Queued => {}
            Put::Closed(Item::Pop(pop)) => return Err(pop),
            Put::Closed(Item::Change(_)) => {}
        }
        Ok(())
    }

    /// Hands `change` to the actor, waking it ([`QueueMsg::Changes`]) unless a wake-up is
    /// already on its way. A removal or a release wakes it only once `MAX_UNWOKEN`
    /// changes wait: the index answers nothing without a message, which takes them first,
    /// and the common ones (a dispatched job's removal, a pop's release of a job another
    /// queue beat) follow a pop of the same queue, whose next pop comes soon; an agent
    /// waiting for a job is told of a release (`Waiters::arrived`) and pops. An insert or
    /// a job made ready wakes it, so the index keeps up with a burst of submits rather
    /// than taking it whole in the next pop's turn. A change to an actor that has stopped
    /// is dropped, as a message to it would be (a queue started again is rebuilt from the
    /// registry).
    pub fn send(&self, change: Change) {
        let prompt = matches!(change, Change::Insert(_) | Change::Ready(_));
        if let Put::Wake = self.inbox.put(Item::Change(change), prompt, MAX_UNWOKEN) {
            self.wake();
        }
    }

    fn wake(&self) {
        // A stopped actor's inbox is closed with its state (the pops in it are dropped,
        // their requests retry).
        let _ = self.actor.cast(QueueMsg::Changes);
    }
}

/// A queue actor's state: its index and its end of the inbox. When the actor stops (idle,
/// or the server is shutting down) the inbox closes with it: the pops in it are dropped,
/// which answers their requests with nothing (they retry) and gives back what they
/// reserved in other queues, and a pop handed over later is given back. A pop is never
/// left in an inbox no turn will take.
pub struct QueueState {
    index: QueueIndex,
    inbox: Receiver<Item>,
}

impl QueueState {
    /// Applies every change and visits every pop waiting in the inbox, oldest first.
    fn catch_up(&mut self, myself: &ActorRef<QueueMsg>) {
        let mut taken = self.inbox.take();
        for item in taken.drain(..) {
            match item {
                Item::Change(Change::Insert(entry)) => self.index.insert(entry),
                Item::Change(Change::Remove(id)) => {
                    self.index.remove(id);
                }
                Item::Change(Change::Ready(id)) => self.index.set_ready(id),
                Item::Change(Change::Release(id)) => self.index.release(id),
                Item::Pop(pop) => visit(myself, self, pop),
            }
        }
        self.inbox.reuse(taken);
    }
}

/// The queue actor (no configuration).
pub struct QueueActor;

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = QueueState;

    async fn pre_start(
        &self,
        _: ActorRef<QueueMsg>,
        state: QueueState,
    ) -> Result<QueueState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        state.catch_up(&myself);
        match msg {
            QueueMsg::Changes => {}
            QueueMsg::Position(id, port) => reply(port, state.index.position(id)),
            QueueMsg::Head(n, port) => {
                reply(port, state.index.entries().take(n).map(|e| e.id).collect())
            }
        }
        Ok(())
    }
}

/// This queue's turn in `pop`: keep the better of its best candidate and this queue's,
/// then pass the pop on, or claim.
fn visit(myself: &ActorRef<QueueMsg>, state: &mut QueueState, mut pop: Box<Pop>) {
    let index = &mut state.index;
    if gone(&pop.port) {
        // Dropping the pop releases what it reserved.
        return;
    }
    if let Some(mine) = index.take(pop.agent.as_deref()) {
        if pop
            .best
            .as_ref()
            .is_none_or(|best| mine.key() < best.candidate.key())
        {
            // Replacing the best releases the one it had.
            pop.best = Some(Reserved {
                queue: Feed {
                    actor: myself.clone(),
                    inbox: state.inbox.inbox().clone(),
                },
                name: pop.queue.clone(),
                waiters: pop.waiters.clone(),
                candidate: mine,
                armed: true,
            });
        } else {
            index.release(mine.id);
        }
    }
    while let Some((queue, next)) = pop.rest.pop_front() {
        pop.queue = queue;
        match next.pop(pop) {
            Ok(()) => return,
            // A queue actor that stopped as idle had no job: go on to the next one.
            Err(returned) => pop = returned,
        }
    }
    let Some(best) = pop.best.take() else {
        reply(pop.port, Ok(Claimed::Nothing));
        return;
    };
    let claim = Claim {
        id: best.candidate.id,
        agent: pop.agent,
        queues: pop.queues,
        client: pop.client,
        reserved: best,
        port: pop.port,
    };
    // A registry that is gone (shutdown) drops the claim, and with it the reservation
    // (given back) and the port: the pop finds nothing.
    pop.registry.send(RegistryMsg::Claim(claim));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent for the queue actor under test (queue actors are always linked).
    struct Parent;

    impl Actor for Parent {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    fn entry(n: u128, seq: u64, ready: bool) -> Entry {
        Entry {
            id: JobId::parse(&format!("{n:032x}")).unwrap(),
            priority: 0,
            seq,
            exclude: Arc::new([]),
            ready,
        }
    }

    /// A burst of changes reaches the index in the order sent: the first wakes the actor,
    /// which takes the whole burst, and queries after it see all of it.
    #[tokio::test]
    async fn a_message_after_a_burst_of_changes_sees_them_all_in_order() {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let feed = Feed::spawn(QueueIndex::default(), parent.get_cell())
            .await
            .unwrap();
        let (a, b, c, d) = (
            entry(1, 1, true),
            entry(2, 2, true),
            entry(3, 3, true),
            entry(4, 4, false),
        );
        let ids = [a.id, b.id, c.id, d.id];
        feed.send(Change::Insert(a));
        feed.send(Change::Insert(b));
        feed.send(Change::Insert(c));
        feed.send(Change::Remove(ids[0]));
        feed.send(Change::Insert(d));
        feed.send(Change::Ready(ids[3]));
        assert_eq!(feed.inbox.len(), 6, "nothing is taken before a turn");
        // The first change woke the actor, which takes them all with no other message.
        assert!(settles(&feed).await, "the actor was not woken");
        let head = feed
            .actor()
            .call(|port| QueueMsg::Head(10, port), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head, ids[1..]);
        let position = |id| {
            feed.actor()
                .call(move |port| QueueMsg::Position(id, port), None)
        };
        assert_eq!(position(ids[0]).await.unwrap().unwrap(), None);
        assert_eq!(position(ids[3]).await.unwrap().unwrap(), Some(2));
        assert!(feed.inbox.is_empty());
        // A removal waits for the next message, which takes it first.
        feed.send(Change::Remove(ids[1]));
        assert!(!settles(&feed).await, "a removal woke the actor");
        assert_eq!(position(ids[3]).await.unwrap().unwrap(), Some(1));
        // An insert after the inbox was emptied wakes the actor again, also behind a
        // removal.
        feed.send(Change::Remove(ids[2]));
        feed.send(Change::Insert(entry(5, 5, true)));
        assert!(settles(&feed).await, "an insert did not wake the actor");
        // Removals wake it once MAX_UNWOKEN of them wait.
        let many: Vec<Entry> = (0..MAX_UNWOKEN as u128)
            .map(|n| entry(100 + n, 100 + n as u64, true))
            .collect();
        let many_ids: Vec<JobId> = many.iter().map(|e| e.id).collect();
        for e in many {
            feed.send(Change::Insert(e));
        }
        assert!(settles(&feed).await);
        for id in &many_ids[..MAX_UNWOKEN - 1] {
            feed.send(Change::Remove(*id));
        }
        assert!(
            !settles(&feed).await,
            "fewer than MAX_UNWOKEN removals woke it"
        );
        feed.send(Change::Remove(many_ids[MAX_UNWOKEN - 1]));
        assert!(settles(&feed).await, "MAX_UNWOKEN removals did not wake it");
        assert_eq!(position(ids[3]).await.unwrap().unwrap(), Some(0));
        // A release waits for the next message, as a removal does.
        feed.send(Change::Release(ids[3]));
        assert!(!settles(&feed).await, "a release woke the actor");
        parent.stop(None);
    }

    /// Stands in for the registry: hands every claim it gets to the test.
    struct StandIn;

    impl Actor for StandIn {
        type Msg = RegistryMsg;
        type State = tokio::sync::mpsc::UnboundedSender<Claim>;
        type Arguments = Self::State;

        async fn pre_start(
            &self,
            _: ActorRef<RegistryMsg>,
            claims: Self::State,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(claims)
        }

        async fn handle(
            &self,
            _: ActorRef<RegistryMsg>,
            msg: RegistryMsg,
            claims: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let RegistryMsg::Claim(claim) = msg {
                let _ = claims.send(claim);
            }
            Ok(())
        }
    }

    /// A pop of the one queue `q`, claiming through `registry`, with the receiver of its
    /// answer.
    fn one_queue_pop(
        registry: &ActorRef<RegistryMsg>,
    ) -> (Box<Pop>, tokio::sync::oneshot::Receiver<Result<Claimed>>) {
        let (port, answer) = tokio::sync::oneshot::channel();
        let pop = Box::new(Pop {
            queue: "q".into(),
            rest: VecDeque::new(),
            queues: vec!["q".into()],
            best: None,
            agent: None,
            client: None,
            registry: registry.clone().into(),
            waiters: Arc::new(Waiters::new(16)),
            port: port.into(),
        });
        (pop, answer)
    }

    /// Pops handed over before the actor's turn are all visited in that turn, in order
    /// with the changes sent around them: each reserves the best job there then, and one
    /// finding none is answered `Nothing`.
    #[tokio::test]
    async fn pops_handed_over_together_are_visited_in_order_with_the_changes() {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let (claims, mut claimed) = tokio::sync::mpsc::unbounded_channel();
        let (registry, _) = Actor::spawn(None, StandIn, claims).await.unwrap();
        let feed = Feed::spawn(QueueIndex::default(), parent.get_cell())
            .await
            .unwrap();
        // `a` comes later (jobs enter a queue in the order of their sequence numbers)
        // with a higher priority: the better job.
        let a = Entry {
            priority: 5,
            ..entry(1, 2, true)
        };
        let b = entry(2, 1, true);
        let ids = [a.id, b.id];
        // Sent in this order with no turn of the actor in between (one thread).
        feed.send(Change::Insert(b));
        let (first, _keep_first) = one_queue_pop(&registry);
        assert!(feed.pop(first).is_ok());
        feed.send(Change::Insert(a));
        let (second, _keep_second) = one_queue_pop(&registry);
        let (third, third_answer) = one_queue_pop(&registry);
        assert!(feed.pop(second).is_ok());
        assert!(feed.pop(third).is_ok());
        assert_eq!(feed.inbox.len(), 5, "nothing is taken before a turn");
        let first = claimed.recv().await.unwrap();
        let second = claimed.recv().await.unwrap();
        // The first pop saw only the job inserted before it; the second, the better job
        // inserted between them.
        assert_eq!([first.id, second.id], [ids[1], ids[0]]);
        assert!(matches!(third_answer.await, Ok(Ok(Claimed::Nothing))));
        // Both jobs still wait, reserved while their claims are held: a fourth pop
        // finds nothing.
        assert_eq!(position(&feed, ids[0]).await, Some(0));
        let (fourth, fourth_answer) = one_queue_pop(&registry);
        assert!(feed.pop(fourth).is_ok());
        assert!(matches!(fourth_answer.await, Ok(Ok(Claimed::Nothing))));
        // A claim dropped unhandled gives its job back.
        drop(second);
        let (fifth, _keep_fifth) = one_queue_pop(&registry);
        assert!(feed.pop(fifth).is_ok());
        assert_eq!(claimed.recv().await.unwrap().id, ids[0]);
        parent.stop(None);
        registry.stop(None);
    }

    /// A queue actor that stops drops the pops in its inbox (their requests see the
    /// answer port closed and retry), and gives back every pop handed to it afterwards.
    #[tokio::test]
    async fn a_stopped_queue_actor_drops_its_pending_pops_and_refuses_new_ones() {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let (claims, _claimed) = tokio::sync::mpsc::unbounded_channel();
        let (registry, _) = Actor::spawn(None, StandIn, claims).await.unwrap();
        let mut index = QueueIndex::default();
        index.insert(entry(1, 1, true));
        let feed = Feed::spawn(index, parent.get_cell()).await.unwrap();
        let (pending, answer) = one_queue_pop(&registry);
        assert!(feed.pop(pending).is_ok());
        // The stop overtakes the wake-up, so no turn takes the pop.
        feed.actor().stop(None);
        assert!(
            answer.await.is_err(),
            "the pending pop was dropped unanswered"
        );
        let (late, _) = one_queue_pop(&registry);
        let returned = feed.pop(late).expect_err("a stopped actor takes no pop");
        assert_eq!(&*returned.queue, "q");
        assert!(feed.inbox.is_empty());
        parent.stop(None);
        registry.stop(None);
    }

    async fn position(feed: &Feed, id: JobId) -> Option<usize> {
        feed.actor()
            .call(move |port| QueueMsg::Position(id, port), None)
            .await
            .unwrap()
            .unwrap()
    }

    /// Whether the actor empties the inbox within half a second with no other message.
    async fn settles(feed: &Feed) -> bool {
        for _ in 0..50 {
            if feed.inbox.is_empty() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }
}
