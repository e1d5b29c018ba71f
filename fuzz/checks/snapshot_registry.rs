//! `snapshot_registry`: a snapshot's registry partition through
//! `flinger::model::registry::Registry::decode_on`, which decodes a large job table in parts
//! on several threads after walking it with its own msgpack skipper. Shared by the fuzz
//! target and the stable seed replay.
//!
//! Input: byte 0 = threads (2 + byte % 4), byte 1 = jobs each thread is given at least
//! (1 + byte % 8), the rest = the partition's bytes.
//! Properties:
//! - decoding never panics, whatever the bytes;
//! - decoded in parts, the partition fails exactly when it fails decoded whole on one
//!   thread, and otherwise gives an equal registry (the same jobs, fields and names) with
//!   the same read indexes (filed as each part decodes, or rebuilt after a job id twice)
//!   when no two jobs share a `seq` (which the server never writes).

use flinger::model::registry::Registry;

pub fn check(data: &[u8]) {
    let [threads, share, bytes @ ..] = data else {
        return;
    };
    let threads = 2 + usize::from(*threads % 4);
    let share = 1 + usize::from(*share % 8);
    let whole = Registry::decode_on(bytes, 1, 1);
    let parts = Registry::decode_on(bytes, threads, share);
    match (whole, parts) {
        (Ok(whole), Ok(parts)) => {
            assert!(
                whole == parts,
                "decoded in parts ({threads} threads, {share} jobs each), the registry differs"
            );
            // Lists are keyed by `seq`: of two jobs with one (never written), which a list
            // keeps depends on the order they were filed in.
            let mut seqs: Vec<u64> = whole.iter().map(|(_, job)| job.seq).collect();
            seqs.sort_unstable();
            seqs.dedup();
            assert!(
                seqs.len() < whole.len() || whole.index() == parts.index(),
                "decoded in parts ({threads} threads, {share} jobs each), the read indexes differ"
            );
        }
        (Err(_), Err(_)) => {}
        (whole, parts) => panic!(
            "decoded whole: {:?}; in parts ({threads} threads, {share} jobs each): {:?}",
            whole.err(),
            parts.err()
        ),
    }
}
