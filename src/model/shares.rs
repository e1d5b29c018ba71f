//! Bytes summed in all and by owner: what a bound on the whole and a per-submitter share
//! of it both read. Job documents (`--max-jobs-bytes`) and attachment files
//! (`--max-attachments-bytes`) are each such a [`Tally`], and each submitter's part of
//! them is held to the same `--max-jobs-share-percent` ([`share`]), an owner being the
//! client that submitted the job with a token, `None` for every job submitted without
//! one (all anonymous callers together count as one owner, so none of them can take the
//! room of everyone else).
//!
//! Nothing here is recorded: a tally is derived from the jobs and files it sums, rebuilt
//! at start-up and kept by whoever adds and removes them.

use super::{FastMap, Name};

/// Bytes in all and by owner (`None`: jobs submitted without a token). Owners whose
/// bytes are all gone have no entry.
///
/// Invariant: `total` is the sum of `by_owner`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    total: u64,
    by_owner: FastMap<Option<Name>, u64>,
}

impl Tally {
    /// Counts `bytes` more of `owner`'s.
    pub fn add(&mut self, owner: Option<&Name>, bytes: u64) {
        self.total += bytes;
        *self.by_owner.entry(owner.cloned()).or_default() += bytes;
    }

    /// Stops counting `bytes` of `owner`'s (at most what it has).
    pub fn remove(&mut self, owner: Option<&Name>, bytes: u64) {
        let key = owner.cloned();
        if let Some(held) = self.by_owner.get_mut(&key) {
            let gone = bytes.min(*held);
            *held -= gone;
            self.total -= gone;
            if *held == 0 {
                self.by_owner.remove(&key);
            }
        }
    }

    /// Adds the counts of `other` (another part of the same things).
    pub fn merge(&mut self, other: Tally) {
        for (owner, bytes) in other.by_owner {
            self.add(owner.as_ref(), bytes);
        }
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// `owner`'s bytes.
    pub fn of(&self, owner: Option<&Name>) -> u64 {
        self.by_owner.get(&owner.cloned()).copied().unwrap_or(0)
    }

    /// How many owners hold bytes.
    pub fn owners(&self) -> usize {
        self.by_owner.len()
    }
}

/// One submitter's share of `limit` when `percent` (`--max-jobs-share-percent`) of it is
/// theirs: `None` (no share) at 100 or with access control off, where every caller is
/// the same anonymous one.
pub fn share(limit: u64, percent: u64, access_on: bool) -> Option<u64> {
    (access_on && percent < 100).then(|| limit / 100 * percent)
}

/// Whose bytes a share refusal is about: `owner`'s `what` (e.g. "jobs"), or for the
/// anonymous owner `anonymous` (e.g. "the jobs submitted without a token").
pub fn whose(owner: Option<&Name>, what: &str, anonymous: &str) -> String {
    match owner {
        Some(client) => format!("client {client:?}'s {what}"),
        None => format!("{anonymous} (all such clients together)"),
    }
}

/// What a refusal of the anonymous owner's share adds: where more room is.
pub fn elsewhere(owner: Option<&Name>) -> &'static str {
    match owner {
        Some(_) => "",
        None => ", and a client with a token has a share of its own",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_sum_to_the_total_and_leave_when_empty() {
        let (alice, bob) = (Name::from("alice"), Name::from("bob"));
        let mut tally = Tally::default();
        tally.add(Some(&alice), 10);
        tally.add(None, 5);
        tally.add(Some(&alice), 1);
        assert_eq!(
            (tally.total(), tally.of(Some(&alice)), tally.of(None)),
            (16, 11, 5)
        );
        // Removing more than an owner holds takes only what it holds, from the total too.
        tally.remove(None, 9);
        assert_eq!((tally.total(), tally.of(None), tally.owners()), (11, 0, 1));
        tally.remove(Some(&bob), 3);
        assert_eq!(tally.total(), 11, "bob held nothing");
        tally.remove(Some(&alice), 11);
        assert_eq!(tally, Tally::default());
    }

    #[test]
    fn merged_parts_equal_one_tally() {
        let alice = Name::from("alice");
        let (mut whole, mut a, mut b) = (Tally::default(), Tally::default(), Tally::default());
        for (n, owner) in [Some(&alice), None, Some(&alice), None]
            .into_iter()
            .enumerate()
        {
            whole.add(owner, n as u64 + 1);
            if n % 2 == 0 { &mut a } else { &mut b }.add(owner, n as u64 + 1);
        }
        a.merge(b);
        assert_eq!(a, whole);
    }

    #[test]
    fn a_share_needs_access_control_and_less_than_all() {
        assert_eq!(share(1000, 25, true), Some(250));
        assert_eq!(share(1000, 100, true), None);
        assert_eq!(share(1000, 25, false), None);
        let anonymous = "the jobs submitted without a token";
        assert!(whose(None, "jobs", anonymous).starts_with(anonymous));
        assert_eq!(
            whose(Some(&Name::from("a")), "jobs", anonymous),
            "client \"a\"'s jobs"
        );
    }
}
