//! Removals under way: ids whose job the registry has removed (deleted by an operator,
//! expired by retention) while their results, logs, files and event outbox are still
//! being removed from the other partitions, one after another.
//!
//! Until the last partition is done, a job submitted with such an id would be a new job
//! sharing the id with what is left of the old one: it would show the old job's results
//! (a leak from one job to another), and the removals still to come, keyed by the id
//! alone, would remove what the new job was given meanwhile (its attachments, its first
//! results). So a submission of an id under removal waits until the removal is done
//! (`http::jobs::job_post`), and the registry refuses one that reaches it in that window
//! anyway (both in the registry's turn: the removal begins in the turn that records it).
//!
//! A removal ends when its [`Purge`] is dropped, whatever happened to the partitions: a
//! waiting submission is never stuck behind a removal that failed or whose task died.
//! Not kept across restarts: a removal cut short by a crash leaves data of an id no job
//! has, as a removal that failed does (see README "Data of ids no job has").

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::model::{FastMap, JobId};

/// The ids under removal, each with how many removals of it are under way (two
/// operators may delete the same id at once) and what wakes the submissions waiting.
#[derive(Default)]
pub struct Purges {
    under_way: Mutex<FastMap<JobId, (usize, Arc<Notify>)>>,
}

/// One removal of some ids, under way until dropped.
#[must_use = "the removal ends when this is dropped"]
pub struct Purge {
    ids: Vec<JobId>,
    purges: Arc<Purges>,
}

impl Purges {
    /// Marks `ids` as under removal until the returned [`Purge`] is dropped. Called by
    /// the registry in the turn that records their removal.
    pub fn begin(self: &Arc<Self>, ids: Vec<JobId>) -> Purge {
        let mut under_way = self.under_way.lock();
        for id in &ids {
            under_way.entry(*id).or_default().0 += 1;
        }
        Purge {
            ids,
            purges: self.clone(),
        }
    }

    /// Whether a removal of `id` is under way.
    pub fn contains(&self, id: JobId) -> bool {
        self.under_way.lock().contains_key(&id)
    }

    /// Waits until no removal of `id` is under way.
    pub async fn settled(&self, id: JobId) {
        loop {
            let Some(notify) = self.under_way.lock().get(&id).map(|(_, n)| n.clone()) else {
                return;
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before looking again: an end between the look and the wait
            // still wakes it.
            notified.as_mut().enable();
            if !self.contains(id) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Purge {
    fn drop(&mut self) {
        let mut under_way = self.purges.under_way.lock();
        for id in &self.ids {
            let Some((count, notify)) = under_way.get_mut(id) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                notify.notify_waiters();
                under_way.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_submission_waits_until_every_removal_of_its_id_has_ended() {
        let purges = Arc::new(Purges::default());
        let (id, other) = (JobId::random(), JobId::random());
        purges.settled(id).await; // nothing under way: at once
        let first = purges.begin(vec![id, other]);
        let second = purges.begin(vec![id]);
        let waiter = {
            let purges = purges.clone();
            tokio::spawn(async move { purges.settled(id).await })
        };
        drop(first);
        assert!(purges.contains(id) && !purges.contains(other));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woken while a removal was under way");
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last removal ended")
            .unwrap();
        assert!(!purges.contains(id));
    }
}
