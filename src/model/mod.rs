//! The pure core: ids, job lifecycle, queue order, events and the fold over them.
//!
//! Nothing here does I/O, reads a clock or knows about actors or HTTP; the actors and
//! handlers around it only adapt. Property tests drive this module directly.

pub mod access;
pub mod agents;
pub mod cowmap;
pub mod distinct;
pub mod event;
pub mod files;
pub mod ids;
pub mod index;
pub mod job;
pub mod logtail;
pub mod lost;
pub mod orphans;
pub mod queue;
pub mod registry;
pub mod results;
pub mod seqlist;
pub mod shares;
pub mod state;
pub mod webhooks;

pub use event::{Event, FileKind, LogKind, Partition};

/// The hash map the core uses: a fast seeded hasher (foldhash) instead of SipHash. Keys
/// include client-chosen job ids, so the hasher stays randomly seeded per process.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The hash set counterpart of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
pub use ids::{JobId, Name};
pub use state::State;

/// `work` applied to each input, the results in input order (a panic in one is raised
/// here): the last input on the calling thread, which would otherwise only wait, each
/// other on a thread of its own (one input spawns no thread).
pub(crate) fn on_threads<I: Send, O: Send>(
    mut inputs: Vec<I>,
    work: impl Fn(I) -> O + Sync,
) -> Vec<O> {
    let work = &work;
    let last = inputs.pop();
    std::thread::scope(|scope| {
        let running: Vec<_> = inputs
            .into_iter()
            .map(|input| scope.spawn(move || work(input)))
            .collect();
        let mine = last.map(work);
        let mut out: Vec<O> = running
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        out.extend(mine);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::on_threads;

    /// Results come back in input order, whatever the count; the last input runs on the
    /// calling thread and each other on a thread of its own.
    #[test]
    fn on_threads_answers_in_order_and_works_the_last_input_itself() {
        let me = std::thread::current().id();
        let empty: Vec<u32> = on_threads(Vec::<u32>::new(), |n| n);
        assert!(empty.is_empty());
        let one = on_threads(vec![7], |n| (n, std::thread::current().id()));
        assert_eq!(one, [(7, me)]);
        let five = on_threads((0..5).collect(), |n| (n * 10, std::thread::current().id()));
        assert_eq!(
            five.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [0, 10, 20, 30, 40]
        );
        assert_eq!(five[4].1, me);
        assert!(five[..4].iter().all(|(_, thread)| *thread != me));
    }
}
