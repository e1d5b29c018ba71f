//! [`CowMap`]: a hash map whose clone is cheap, for tables a snapshot copies.
//!
//! A snapshot copies a partition inside its actor's turn, so a copy of a million-entry hash
//! map (a reference-count bump per entry, on cold cache lines: ~170 ms at 1.2 M jobs) stalls
//! every request of that actor for as long. This map keeps its entries in [`SHARDS`] shards,
//! each behind an `Arc`: a clone bumps one count per shard, and a write to a shard a clone
//! still shares copies that shard only (1/[`SHARDS`] of the entries). The copying work is
//! the same in all, but it is spread over the writes that follow a snapshot, a fraction of
//! a millisecond each, instead of one stall. It also spreads a hash table's growth: a shard
//! rehashes its own entries, never the whole table at once.
//!
//! Serialised as one map, exactly as a `HashMap` is, so snapshots do not change layout.
//! Not here: ordering (iteration order is arbitrary, like a `HashMap`'s).

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::FastMap;

/// Number of shards: a shard copied after a snapshot holds 1/1024 of the entries (about
/// 1,000 of a million: tens of microseconds), while an empty map costs 1024 small shards.
pub const SHARDS: usize = 1024;

/// A hash map of shards shared copy-on-write (see the module docs).
#[derive(Clone)]
pub struct CowMap<K, V> {
    /// The shards; an entry lives in the one its key's hash under `router` picks.
    shards: Box<[Arc<FastMap<K, V>>]>,
    /// Picks the shard, seeded apart from the shards' own hashers (a shard whose keys all
    /// shared the bits it is picked by would probe badly with the same hasher).
    router: foldhash::fast::RandomState,
    /// Entries in all shards.
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<K, V> CowMap<K, V> {
    /// An empty map with room for about `capacity` entries before any shard grows.
    pub fn with_capacity(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        CowMap {
            shards: (0..SHARDS)
                .map(|_| {
                    Arc::new(FastMap::with_capacity_and_hasher(
                        per_shard,
                        Default::default(),
                    ))
                })
                .collect(),
            router: Default::default(),
            len: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// The entries of the `part`-th of `parts` equal runs of shards (`part` < `parts`):
    /// together the parts are [`iter`](Self::iter), to walk the map on several threads.
    pub fn iter_part(&self, part: usize, parts: usize) -> impl Iterator<Item = (&K, &V)> {
        let (shards, parts) = (self.shards.len(), parts.max(1));
        let (from, to) = (shards * part / parts, shards * (part + 1) / parts);
        self.shards[from.min(shards)..to.min(shards)]
            .iter()
            .flat_map(|shard| shard.iter())
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|shard| shard.values())
    }
}

/// The shard `router` puts `key` in.
fn shard_of<K: Hash>(router: &foldhash::fast::RandomState, key: &K) -> usize {
    // The high bits: foldhash mixes them best.
    (router.hash_one(key) >> 54) as usize % SHARDS
}

/// The first shard of run `run` of `runs` (see [`Runs`]); `runs` itself gives [`SHARDS`].
fn first_shard_of_run(run: usize, runs: usize) -> usize {
    (run * SHARDS).div_ceil(runs)
}

/// How a map's shards split into runs, one per thread that fills it
/// ([`CowMap::fill_runs`]): shard `s` is in run `s * runs / SHARDS`.
#[derive(Clone)]
pub struct Runs {
    router: foldhash::fast::RandomState,
    runs: usize,
}

impl Runs {
    /// Number of runs (at least 1, at most [`SHARDS`]).
    pub fn count(&self) -> usize {
        self.runs
    }

    /// The run whose shards hold `key` (< [`count`](Self::count)).
    pub fn of<K: Hash>(&self, key: &K) -> usize {
        shard_of(&self.router, key) * self.runs / SHARDS
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    fn shard_of(&self, key: &K) -> usize {
        shard_of(&self.router, key)
    }

    /// This map's shards in `runs` runs (clamped to 1..=[`SHARDS`]), to sort entries by
    /// the thread that will insert them ([`fill_runs`](Self::fill_runs)).
    pub fn runs(&self, runs: usize) -> Runs {
        Runs {
            router: self.router.clone(),
            runs: runs.clamp(1, SHARDS),
        }
    }

    /// Inserts `entries[r]` into the shards of run `r`, one thread per run, so filling a
    /// large map from decoded entries takes the cores there are: `entries` has one list per
    /// run of `runs` (from [`runs`](Self::runs) of this map), each list in the order its
    /// entries are to be inserted (a key given twice keeps the later value, as
    /// [`insert`](Self::insert) would). An entry outside its list's run (a `Runs` of another
    /// map), or in a list past the runs, is inserted afterwards, on this thread. A panic in
    /// a key's `Hash` or `Eq` is resumed here.
    pub fn fill_runs<I>(&mut self, runs: &Runs, entries: Vec<I>)
    where
        I: IntoIterator<Item = (K, V)> + Send,
        K: Send + Sync,
        V: Send + Sync,
    {
        let CowMap {
            shards,
            router,
            len,
        } = self;
        let mut rest: &mut [Arc<FastMap<K, V>>] = shards;
        let mut slices = Vec::with_capacity(runs.runs);
        for run in 0..runs.runs {
            let (first, end) = (
                first_shard_of_run(run, runs.runs),
                first_shard_of_run(run + 1, runs.runs),
            );
            let (slice, after) = std::mem::take(&mut rest).split_at_mut(end - first);
            slices.push((first, slice));
            rest = after;
        }
        let router = &*router;
        let mut lists = entries.into_iter();
        let inputs: Vec<_> = slices.into_iter().zip(lists.by_ref()).collect();
        let filled = super::on_threads(inputs, |((first, slice), entries)| {
            // Unshared once per shard here, not checked (an atomic operation) per entry.
            let mut shards: Vec<&mut FastMap<K, V>> = slice.iter_mut().map(Arc::make_mut).collect();
            let (mut added, mut strays) = (0, Vec::new());
            for (key, value) in entries {
                let at = shard_of(router, &key).wrapping_sub(first);
                match shards.get_mut(at) {
                    Some(shard) => {
                        if shard.insert(key, value).is_none() {
                            added += 1;
                        }
                    }
                    None => strays.push((key, value)),
                }
            }
            (added, strays)
        });
        let mut strays = Vec::new();
        for (added, mut more) in filled {
            *len += added;
            strays.append(&mut more);
        }
        for (key, value) in strays.into_iter().chain(lists.flatten()) {
            self.insert(key, value);
        }
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` to change in place; copies its shard first if a clone shares it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let shard = self.shard_of(key);
        // Only a present key is worth a copy of a shared shard.
        self.shards[shard].get(key)?;
        Arc::make_mut(&mut self.shards[shard]).get_mut(key)
    }

    /// The value of `key` to change in place, inserted by `make` first when absent; copies
    /// its shard first if a clone shares it.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        use std::collections::hash_map::Entry;
        let shard = self.shard_of(&key);
        let len = &mut self.len;
        match Arc::make_mut(&mut self.shards[shard]).entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                *len += 1;
                entry.insert(make())
            }
        }
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        let old = Arc::make_mut(&mut self.shards[shard]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let shard = self.shard_of(key);
        self.shards[shard].get(key)?;
        let old = Arc::make_mut(&mut self.shards[shard]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every value, to change in place (copies every shard a clone shares).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards
            .iter_mut()
            .flat_map(|shard| Arc::make_mut(shard).values_mut())
    }
}

/// Maps are equal when they hold the same entries (shards and routing aside).
impl<K: Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for CowMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for CowMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for CowMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Clone,
    V: Deserialize<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Deserialize<'de> + Hash + Eq + Clone,
            V: Deserialize<'de> + Clone,
        {
            type Value = CowMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // Sized for every entry at once, so a million-entry table is not rehashed
                // step by step during start-up; a lying hint only costs memory up to the cap.
                let hint = access.size_hint().unwrap_or(0).min(1 << 24);
                let mut map = CowMap::with_capacity(hint);
                while let Some((key, value)) = access.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_its_entries_while_the_original_changes() {
        let mut map: CowMap<u64, String> = CowMap::default();
        for i in 0..5000 {
            map.insert(i, i.to_string());
        }
        let copy = map.clone();
        for i in 0..2500 {
            map.remove(&i);
        }
        *map.get_mut(&4000).unwrap() = "changed".into();
        map.insert(9999, "new".into());
        assert_eq!(copy.len(), 5000);
        assert_eq!(copy.get(&4000).map(String::as_str), Some("4000"));
        assert!(copy.contains_key(&10) && !copy.contains_key(&9999));
        assert_eq!(map.len(), 2501);
        assert_eq!(map.get(&4000).map(String::as_str), Some("changed"));
        assert!(!map.contains_key(&10) && map.contains_key(&9999));
        assert_eq!(map.iter().count(), 2501);
        assert_eq!(map.remove(&10), None);
        assert_eq!(map.insert(9999, "again".into()).as_deref(), Some("new"));
        assert_eq!(map.len(), 2501);
    }

    /// Filled on threads, one run of shards each, a map holds what inserts one by one
    /// give, later values of a key winning; entries sent to the wrong run, or in a list
    /// past the runs, still arrive.
    #[test]
    fn filled_on_threads_it_holds_what_inserts_in_order_give() {
        let mut one_by_one: CowMap<u64, u64> = CowMap::default();
        let mut filled: CowMap<u64, u64> = CowMap::with_capacity(6000);
        let runs = filled.runs(3);
        let mut lists: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 4];
        for i in 0..6000u64 {
            let (key, value) = (i % 5000, i);
            one_by_one.insert(key, value);
            lists[runs.of(&key)].push((key, value));
        }
        // Misrouted: a key of run 0 in run 1's list, and one in a fourth list.
        let stray = (0..).find(|k| runs.of(k) == 0).unwrap() + 10_000;
        one_by_one.insert(stray, 1);
        let stray2 = stray + 1;
        one_by_one.insert(stray2, 2);
        lists[if runs.of(&stray) == 1 { 2 } else { 1 }].push((stray, 1));
        lists[3].push((stray2, 2));
        filled.fill_runs(&runs, lists);
        assert_eq!(filled.len(), 5002);
        assert!(filled == one_by_one);
        assert_eq!(filled.get(&10), Some(&5010));
        assert_eq!(filled.get(&4999), Some(&4999));
    }

    #[test]
    fn encodes_like_a_hash_map_and_decodes_back() {
        let mut map: CowMap<u64, u64> = CowMap::default();
        let mut plain: FastMap<u64, u64> = FastMap::default();
        for i in 0..300 {
            map.insert(i, i * 7);
            plain.insert(i, i * 7);
        }
        let bytes = rmp_serde::to_vec(&map).unwrap();
        let as_plain: FastMap<u64, u64> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(as_plain, plain);
        let back: CowMap<u64, u64> =
            rmp_serde::from_slice(&rmp_serde::to_vec(&plain).unwrap()).unwrap();
        assert_eq!(back.len(), 300);
        assert!((0..300).all(|i| back.get(&i) == Some(&(i * 7))));
    }
}
