//! The pure core: ids, job lifecycle, queue order, events and the fold over them.
//!
//! Nothing here does I/O, reads a clock or knows about actors or HTTP; the actors and
//! handlers around it only adapt. Property tests drive this module directly.

pub mod access;
pub mod agents;
pub mod cowmap;
pub mod event;
pub mod files;
pub mod ids;
pub mod index;
pub mod job;
pub mod lost;
pub mod orphans;
pub mod queue;
pub mod registry;
pub mod results;
pub mod seqlist;
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

/// `work` applied to each input on a thread of its own, the results in input order (a
/// panic in one is raised here).
pub(crate) fn on_threads<I: Send, O: Send>(inputs: Vec<I>, work: impl Fn(I) -> O + Sync) -> Vec<O> {
    let work = &work;
    std::thread::scope(|scope| {
        let running: Vec<_> = inputs
            .into_iter()
            .map(|input| scope.spawn(move || work(input)))
            .collect();
        running
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
