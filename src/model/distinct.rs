//! [`Distinct`]: values kept once each, in the order first given, at a cost linear in how
//! many arrive however many of them repeat (a pop's `queue=` parameters, a job's tags).

use std::borrow::Borrow;
use std::hash::Hash;

use super::FastSet;

/// Up to this many values are found by a look through them, which is cheaper than hashing
/// for the few a request usually names (a pop names one to three queues: building a set
/// cost it ~670 instructions); past it, through a set of them, so thousands (a URL of
/// repeated parameters, a job of 1,024 tags) cost linear time rather than their square.
const SCANNED: usize = 8;

/// Values in the order first given, each once.
#[derive(Debug, Default)]
pub struct Distinct<T> {
    items: Vec<T>,
    /// Every item, once there are more than [`SCANNED`].
    set: Option<FastSet<T>>,
}

impl<T: Eq + Hash + Clone> Distinct<T> {
    /// Empty, with room for `n` values before the list grows.
    pub fn with_capacity(n: usize) -> Distinct<T> {
        Distinct {
            items: Vec::with_capacity(n),
            set: None,
        }
    }

    /// Whether `value` is kept.
    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match &self.set {
            Some(set) => set.contains(value),
            None => self.items.iter().any(|t| t.borrow() == value),
        }
    }

    /// Keeps `value` unless an equal one is kept already; whether it was new.
    pub fn insert(&mut self, value: T) -> bool {
        if self.contains(&value) {
            return false;
        }
        self.push_new(value);
        true
    }

    /// Keeps the value `make` gives unless one equal to `key` is kept already (so a
    /// repeat makes nothing: no allocation for a name given twice); whether it was new.
    pub fn insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> T) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if self.contains(key) {
            return false;
        }
        self.push_new(make());
        true
    }

    /// Keeps `value`, which no kept value equals.
    fn push_new(&mut self, value: T) {
        match &mut self.set {
            Some(set) => _ = set.insert(value.clone()),
            None if self.items.len() == SCANNED => {
                self.set = Some(self.items.iter().cloned().chain([value.clone()]).collect());
            }
            None => {}
        }
        self.items.push(value);
    }

    /// How many values are kept.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The values, in the order first given.
    pub fn into_vec(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever repeats, across the switch to a set: the first occurrence of each
        /// value, in order, as a plain de-duplication gives, and `contains` agrees.
        #[test]
        fn keeps_each_value_once_in_first_order(values in proptest::collection::vec(0u8..24, 0..64)) {
            let mut distinct = Distinct::with_capacity(4);
            let mut want: Vec<u8> = Vec::new();
            for (n, v) in values.iter().enumerate() {
                let new = !want.contains(v);
                let kept = if n % 2 == 0 {
                    distinct.insert(*v)
                } else {
                    distinct.insert_with(v, || *v)
                };
                prop_assert_eq!(kept, new);
                if new {
                    want.push(*v);
                }
                prop_assert_eq!(distinct.len(), want.len());
            }
            for v in 0u8..24 {
                prop_assert_eq!(distinct.contains(&v), want.contains(&v));
            }
            prop_assert_eq!(distinct.into_vec(), want);
        }
    }
}
