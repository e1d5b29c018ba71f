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

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    fn shard_of(&self, key: &K) -> usize {
        // The high bits: foldhash mixes them best.
        (self.router.hash_one(key) >> 54) as usize % SHARDS
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
