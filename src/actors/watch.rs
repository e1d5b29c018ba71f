//! The watch on dispatched jobs: when each one's agent was last heard, for lost-agent
//! recovery (the rule is in `model::lost`).
//!
//! It is a shell over the clock: the registry actor starts watching a job when it records
//! its dispatch (and every active job at start-up, as heard *then*: after a restart the
//! agent gets a whole allowance again, so a restart never ends a job early); handlers
//! note every agent request about a job; the lost-agent chore reads it and asks the
//! registry to record the outcome. Last-heard times are not logged (an agent's every
//! request would then be a write); only the decision is, as `Event::JobLost`.
//!
//! Bounded by the number of running jobs: noting a request about a job that is not
//! watched does nothing, and the registry stops watching a job in the turn that takes it
//! out of the running states (finished, requeued, resubmitted, deleted).

use parking_lot::Mutex;

use crate::model::cowmap::CowMap;
use crate::model::lost::{self, Watched};
use crate::model::JobId;

/// Slices of [`Watch::part`]: one per shard of the table.
pub const PARTS: usize = crate::model::cowmap::SHARDS;

/// Dispatched jobs and when their agents were last heard.
#[derive(Default)]
pub struct Watch {
    /// Watched jobs. Sharded so that the table grows a shard at a time: as one hash
    /// table of 400,000 dispatched jobs its doubling held the registry's turn (which
    /// starts the watch) for 92 ms, stalling every request.
    jobs: Mutex<CowMap<JobId, Watched>>,
}

impl Watch {
    /// Starts watching a job handed out at `now` (unix seconds), with the timeouts its
    /// document `body` sets.
    pub fn dispatched(&self, id: JobId, body: &[u8], now: u64) {
        let (global_timeout, output_timeout) = lost::timeouts(body);
        self.jobs.lock().insert(
            id,
            Watched {
                last_heard: now,
                global_timeout,
                output_timeout,
            },
        );
    }

    /// The agent made a request about `id` at `now` (ignored unless `id` is watched).
    pub fn heard(&self, id: JobId, now: u64) {
        if let Some(watched) = self.jobs.lock().get_mut(&id) {
            watched.last_heard = watched.last_heard.max(now);
        }
    }

    /// When the agent of `id` was last heard about it (unix seconds), if `id` is watched.
    pub fn last_heard(&self, id: JobId) -> Option<u64> {
        self.jobs.lock().get(&id).map(|w| w.last_heard)
    }

    /// Stops watching `id` (finished, requeued, gone).
    pub fn forget(&self, id: JobId) {
        self.jobs.lock().remove(&id);
    }

    /// A copy of the watched jobs of the `part`-th of [`PARTS`] slices (`part` < `PARTS`):
    /// the slices together hold every watched job once. A pass reads one slice at a time,
    /// so the lock is held for ~1/1024 of the jobs and the pass can yield between slices.
    pub fn part(&self, part: usize) -> Vec<(JobId, Watched)> {
        self.jobs
            .lock()
            .iter_part(part, PARTS)
            .map(|(id, w)| (*id, *w))
            .collect()
    }

    /// How many jobs are watched.
    pub fn len(&self) -> usize {
        self.jobs.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.jobs.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! The slices a pass reads.

    use super::*;

    #[test]
    fn the_parts_hold_every_watched_job_once() {
        let watch = Watch::default();
        let ids: Vec<JobId> = (0..5000).map(|_| JobId::random()).collect();
        for (n, id) in ids.iter().enumerate() {
            watch.dispatched(*id, b"{}", n as u64);
        }
        watch.forget(ids[7]);
        let mut seen: Vec<(JobId, u64)> = (0..PARTS)
            .flat_map(|part| watch.part(part))
            .map(|(id, w)| (id, w.last_heard))
            .collect();
        seen.sort();
        let mut expected: Vec<(JobId, u64)> = ids
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != 7)
            .map(|(n, id)| (*id, n as u64))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
        assert!(
            (0..PARTS).all(|part| watch.part(part).len() < 100),
            "a slice holds a small share of the jobs"
        );
    }
}
