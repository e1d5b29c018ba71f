//! Fair turns for expensive reads (job searches, queue listings, the dashboard's lists):
//! at most `--max-searches` run at once, and when more wait, the next turn goes to the
//! requester (client address, an IPv6 /64 counted as one: `access::address`) whose turn
//! is longest past, not to the oldest request. A
//! client that sends a thousand searches at once then delays another client's search by
//! about one search, not by a thousand (a FIFO semaphore made it wait behind all of them).
//!
//! Waiting costs a queue entry per request; the requests themselves are bounded by the
//! connection limits, so nothing else bounds the queues.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::access::address::{address_key, AddressKey};
use crate::model::FastMap;

/// Whose turn a request takes: its client's address as limits count it (`None`:
/// unknown, such as a request made inside the server; those share one line).
pub type Requester = Option<AddressKey>;

/// The requester of a request: its client's address as `access::peer` knows it (set per
/// connection, or vouched for by the standby that forwarded it).
pub fn requester(request_extensions: &axum::http::Extensions) -> Requester {
    crate::access::peer(request_extensions).map(|peer| address_key(peer.ip()))
}

/// The turns (see the module docs).
pub struct Turns {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Turns free now.
    free: usize,
    /// Per requester with waiting requests, their wake-ups, oldest first.
    waiting: FastMap<Requester, VecDeque<oneshot::Sender<()>>>,
    /// Requesters with waiting requests, in the order their next turn comes.
    order: VecDeque<Requester>,
}

/// A turn held: the next waiting request gets it when this is dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
}

/// A request waiting for its turn. Dropped before it took one (its request was dropped),
/// it takes its place out of the line; a turn already handed to it goes on to the next.
struct Waiting<'a> {
    turns: &'a Turns,
    woken: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        // Closed first: a turn is then either handed already (and read here) or never.
        self.woken.close();
        if self.woken.try_recv().is_ok() {
            self.turns.pass();
        }
    }
}

impl Turns {
    /// `turns` at once (at least one).
    pub fn new(turns: usize) -> Turns {
        Turns {
            state: Mutex::new(State {
                free: turns.max(1),
                ..State::default()
            }),
        }
    }

    /// Waits for a turn of `requester`'s (module docs). A caller that stops waiting
    /// (its request was dropped) gives up its place; a turn handed to it goes on.
    pub async fn take(&self, requester: Requester) -> Turn<'_> {
        let woken = {
            let mut state = self.state.lock();
            if state.free > 0 && state.order.is_empty() {
                state.free -= 1;
                return Turn { turns: self };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(requester).or_default();
            let first = queue.is_empty();
            queue.push_back(tx);
            if first {
                state.order.push_back(requester);
            }
            rx
        };
        let mut waiting = Waiting {
            turns: self,
            woken,
            taken: false,
        };
        // A sender is dropped without sending only with `Turns` itself, which outlives
        // every `take` borrowing it.
        let _ = (&mut waiting.woken).await;
        waiting.taken = true;
        Turn { turns: self }
    }

    /// Passes a turn on: to the first waiter of the requester whose turn comes next (who
    /// then goes to the back of the order if it has more), else back to the free ones.
    fn pass(&self) {
        let mut state = self.state.lock();
        while let Some(requester) = state.order.pop_front() {
            let Some(queue) = state.waiting.get_mut(&requester) else {
                continue;
            };
            let mut handed = false;
            while let Some(tx) = queue.pop_front() {
                // A waiter gone (its request dropped) cannot take it: try the next.
                if tx.send(()).is_ok() {
                    handed = true;
                    break;
                }
            }
            if queue.is_empty() {
                state.waiting.remove(&requester);
            } else {
                state.order.push_back(requester);
            }
            if handed {
                return;
            }
        }
        state.free += 1;
    }

    /// Requests waiting now, gone ones not yet passed over included.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().waiting.values().map(VecDeque::len).sum()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A task that waits for a turn of `who`'s and gives it back at once.
    fn waiter(turns: &Arc<Turns>, who: Requester) -> tokio::task::JoinHandle<()> {
        let turns = turns.clone();
        tokio::spawn(async move {
            let _turn = turns.take(who).await;
        })
    }

    fn addr(n: u8) -> Requester {
        Some(address_key(std::net::IpAddr::from([10, 0, 0, n])))
    }

    /// The order in which waiting requests get their turn: one flooding requester does
    /// not keep another's single request behind all of its own.
    #[tokio::test]
    async fn a_flood_from_one_requester_delays_another_by_one_turn() {
        let turns = Arc::new(Turns::new(1));
        let held = turns.take(addr(1)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut spawn = |who: Requester, n: usize| {
            let (turns, order) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take(who).await;
                order.lock().push((who, n));
            }));
        };
        for n in 0..5 {
            spawn(addr(1), n);
        }
        // Let the flood queue up first.
        while turns.waiting() < 5 {
            tokio::task::yield_now().await;
        }
        spawn(addr(2), 0);
        while turns.waiting() < 6 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().clone();
        let second = order.iter().position(|&(who, _)| who == addr(2)).unwrap();
        assert!(
            second <= 1,
            "the other requester waited behind {second}: {order:?}"
        );
        let flood: Vec<usize> = order
            .iter()
            .filter(|(who, _)| *who == addr(1))
            .map(|&(_, n)| n)
            .collect();
        assert_eq!(
            flood,
            vec![0, 1, 2, 3, 4],
            "one requester's own stay in order"
        );
        assert_eq!(turns.waiting(), 0);
        assert_eq!(turns.state.lock().free, 1, "every turn came back");
    }

    /// A waiter that gives up does not take a turn with it.
    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_turn_on() {
        let turns = Arc::new(Turns::new(1));
        let held = turns.take(addr(1)).await;
        let gone = waiter(&turns, addr(2));
        while turns.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        let next = waiter(&turns, addr(3));
        while turns.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("the turn reached the live waiter")
            .unwrap();
        assert_eq!(turns.state.lock().free, 1);
        assert_eq!(turns.waiting(), 0);
    }

    /// A waiter dropped after its turn was handed to it, before it ran, passes it on.
    #[tokio::test]
    async fn a_turn_handed_to_a_waiter_that_is_gone_comes_back() {
        let turns = Arc::new(Turns::new(1));
        let held = turns.take(addr(1)).await;
        let gone = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take(addr(2)).await;
                unreachable!("aborted before it ran again");
            })
        };
        while turns.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        // Handed over synchronously; the waiter has not run since.
        drop(held);
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(turns.state.lock().free, 1, "the turn came back");
        drop(turns.take(addr(3)).await);
    }
}
