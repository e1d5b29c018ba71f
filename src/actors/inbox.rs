//! An actor's inbox: messages put in beside its ractor mailbox and taken, all that wait,
//! at the start of each of the actor's turns, with a ractor message sent only to wake
//! it when no wake-up is already on its way.
//!
//! A message's trip through ractor (boxing, the mailbox's channel, the wake-up, the
//! actor's `select!` over its ports, the turn) is ~1,500–1,900 instructions; requests that
//! arrive together (the connections one poll of the sockets finds ready) then cost the
//! actor one turn, not one each. Whatever reaches the actor through its mailbox after a
//! message was put in the inbox sees it handled first, as if both had been messages.

use std::sync::Arc;

use parking_lot::Mutex;

/// Messages not yet taken by the actor, oldest first; whether a wake-up was sent since
/// the actor last took them; whether the actor has stopped.
struct Pending<M> {
    messages: Vec<M>,
    woken: bool,
    closed: bool,
}

/// See the module documentation. The owner sends the wake-up message itself when
/// [`Inbox::put`] says so, and closes the inbox when its actor stops
/// ([`Inbox::close`]), so no message is left where no turn will take it.
pub struct Inbox<M> {
    pending: Mutex<Pending<M>>,
}

/// What [`Inbox::put`] did with a message.
pub enum Put<M> {
    /// Put in; the actor must be woken (no wake-up is on its way).
    Wake,
    /// Put in; a wake-up is on its way, or the message does not need one yet.
    Queued,
    /// Not put in: the actor has stopped. The message is handed back.
    Closed(M),
}

impl<M> Default for Inbox<M> {
    fn default() -> Self {
        Inbox {
            pending: Mutex::new(Pending {
                messages: Vec::new(),
                woken: false,
                closed: false,
            }),
        }
    }
}

impl<M> Inbox<M> {
    /// Puts `message` in. A `prompt` message asks for a wake-up unless one is on its
    /// way; a message that is not prompt waits for the actor's next turn (whatever
    /// brings it) unless `max_unwoken` messages are then waiting.
    pub fn put(&self, message: M, prompt: bool, max_unwoken: usize) -> Put<M> {
        let mut pending = self.pending.lock();
        if pending.closed {
            return Put::Closed(message);
        }
        pending.messages.push(message);
        let wake = !pending.woken && (prompt || pending.messages.len() >= max_unwoken);
        pending.woken |= wake;
        if wake {
            Put::Wake
        } else {
            Put::Queued
        }
    }

    /// Takes every waiting message, oldest first, into the empty `into` (the two vectors
    /// are swapped, so neither side allocates once both have grown to the usual burst).
    /// The next prompt message wakes the actor again.
    pub fn take(&self, into: &mut Vec<M>) {
        let mut pending = self.pending.lock();
        std::mem::swap(&mut pending.messages, into);
        pending.woken = false;
    }

    /// The actor stopped: nothing more is put in, and what waits is handed back (to be
    /// dropped outside the lock: a message's drop may put into another inbox).
    pub fn close(&self) -> Vec<M> {
        let mut pending = self.pending.lock();
        pending.closed = true;
        std::mem::take(&mut pending.messages)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.pending.lock().messages.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An actor's end of its inbox, kept in the actor's state: takes what waits at the
/// start of each turn, and closes the inbox when the state is dropped (the actor stopped,
/// whatever stopped it), so no message is left where no turn will take it and those put
/// in afterwards are handed back to their senders.
pub struct Receiver<M> {
    inbox: Arc<Inbox<M>>,
    /// A spare vector the messages are swapped with (see [`Inbox::take`]).
    spare: Vec<M>,
}

impl<M> Receiver<M> {
    /// The receiving end of `inbox`.
    pub fn new(inbox: Arc<Inbox<M>>) -> Self {
        Receiver {
            inbox,
            spare: Vec::new(),
        }
    }

    /// Every waiting message, oldest first. Hand the emptied vector back with
    /// [`Receiver::reuse`], so a turn allocates nothing once bursts have grown it.
    pub fn take(&mut self) -> Vec<M> {
        let mut taken = std::mem::take(&mut self.spare);
        self.inbox.take(&mut taken);
        taken
    }

    /// Keeps `emptied` (drained by the turn) for the next [`Receiver::take`].
    pub fn reuse(&mut self, emptied: Vec<M>) {
        debug_assert!(emptied.is_empty());
        self.spare = emptied;
    }

    /// The inbox, for senders the actor makes (a queue actor's reservation).
    pub fn inbox(&self) -> &Arc<Inbox<M>> {
        &self.inbox
    }
}

impl<M> Drop for Receiver<M> {
    /// What waits is dropped here, outside the inbox's lock: dropping a message answers
    /// its request's port closed (the server is stopping, or a pop retries elsewhere).
    fn drop(&mut self) {
        drop(self.inbox.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_is_asked_for_once_per_turn_and_a_closed_inbox_hands_messages_back() {
        let inbox = Inbox::default();
        assert!(matches!(inbox.put(1, false, 3), Put::Queued));
        assert!(matches!(inbox.put(2, true, 3), Put::Wake));
        assert!(
            matches!(inbox.put(3, true, 3), Put::Queued),
            "one on its way"
        );
        let mut taken = Vec::new();
        inbox.take(&mut taken);
        assert_eq!(taken, [1, 2, 3]);
        assert!(inbox.is_empty());
        taken.clear();
        // Messages that are not prompt ask for a wake-up once `max_unwoken` wait.
        assert!(matches!(inbox.put(4, false, 2), Put::Queued));
        assert!(matches!(inbox.put(5, false, 2), Put::Wake));
        assert!(matches!(inbox.put(6, true, 2), Put::Queued));
        assert_eq!(inbox.close(), [4, 5, 6]);
        assert!(matches!(inbox.put(7, true, 2), Put::Closed(7)));
        assert!(inbox.is_empty());
    }

    /// The receiving end takes what waits in order, reuses its vector, and closes the
    /// inbox when dropped: what waited is dropped, and later messages are handed back.
    #[test]
    fn a_receiver_takes_in_order_and_closes_the_inbox_when_dropped() {
        let inbox = Arc::new(Inbox::default());
        let mut receiver = Receiver::new(inbox.clone());
        assert!(matches!(inbox.put(1, true, 8), Put::Wake));
        assert!(matches!(inbox.put(2, true, 8), Put::Queued));
        let mut taken = receiver.take();
        assert_eq!(taken, [1, 2]);
        taken.clear();
        receiver.reuse(taken);
        assert!(
            matches!(inbox.put(3, true, 8), Put::Wake),
            "taken: woken again"
        );
        assert_eq!(receiver.take(), [3]);
        let waiting = Arc::new(());
        let inbox = Arc::new(Inbox::default());
        let receiver = Receiver::new(inbox.clone());
        assert!(matches!(inbox.put(waiting.clone(), true, 8), Put::Wake));
        drop(receiver);
        assert_eq!(Arc::strong_count(&waiting), 1, "what waited was dropped");
        assert!(matches!(
            inbox.put(waiting.clone(), true, 8),
            Put::Closed(_)
        ));
    }
}
