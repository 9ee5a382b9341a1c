//! A map that is a vector while small.
//!
//! Much of what the gateway keeps per connection is a map with one or two
//! entries (the channels with history a connection follows, a user's
//! connections, a user's presence entries on this gateway), and a hash map
//! costs a table of at least four slots for one; a few have many (an
//! anonymous crowd, a busy channel). This is a vector of pairs, allocated
//! to the exact size, up to [`SPILL`] values, and a hash map beyond.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

/// Values kept in a vector; one more moves them to a hash map.
const SPILL: usize = 16;

/// A map: a vector of pairs while small, a hash map beyond. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub enum SmallMap<K, V> {
    /// Up to the spill size, in an exactly sized vector.
    Few(Vec<(K, V)>),
    /// Beyond it.
    Many(HashMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    /// Inserts or replaces `key`'s value.
    pub fn insert(&mut self, key: K, value: V) {
        match self {
            Self::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = value;
                } else if v.len() < SPILL {
                    v.reserve_exact(1);
                    v.push((key, value));
                } else {
                    let mut map: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    map.insert(key, value);
                    *self = Self::Many(map);
                }
            }
            Self::Many(m) => {
                m.insert(key, value);
            }
        }
    }

    /// Removes `key`'s value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = v.swap_remove(i);
                if v.len() * 2 < v.capacity() {
                    v.shrink_to_fit();
                }
                Some(value)
            }
            Self::Many(m) => {
                let value = m.remove(key);
                if m.len() <= SPILL / 2 {
                    *self = Self::Few(std::mem::take(m).into_iter().collect());
                }
                value
            }
        }
    }

    /// `key`'s value, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            Self::Many(m) => m.get_mut(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// `key`'s value.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Self::Few(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            Self::Many(m) => m.get(key),
        }
    }

    /// The values.
    pub fn values(&self) -> Box<dyn Iterator<Item = &V> + '_> {
        match self {
            Self::Few(v) => Box::new(v.iter().map(|(_, v)| v)),
            Self::Many(m) => Box::new(m.values()),
        }
    }

    /// The keys, consuming the map.
    pub fn into_keys(self) -> Vec<K> {
        match self {
            Self::Few(v) => v.into_iter().map(|(k, _)| k).collect(),
            Self::Many(m) => m.into_keys().collect(),
        }
    }

    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_on_both_sides_of_the_spill() {
        let mut m = SmallMap::default();
        let mut reference = HashMap::new();
        // Up past the spill and back down, with replacements on the way.
        for round in 0..3u32 {
            for k in 0..40u32 {
                m.insert(k, k * 10 + round);
                reference.insert(k, k * 10 + round);
                assert_eq!(m.len(), reference.len());
            }
            for k in (0..40u32).step_by(3) {
                assert_eq!(m.remove(&k), reference.remove(&k));
                assert_eq!(m.remove(&k), None);
            }
            for k in 0..40u32 {
                assert_eq!(m.get(&k), reference.get(&k));
            }
            let mut got: Vec<_> = m.values().copied().collect();
            let mut want: Vec<_> = reference.values().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
            for k in 0..40u32 {
                m.remove(&k);
                reference.remove(&k);
            }
            assert!(m.is_empty());
            assert!(matches!(m, SmallMap::Few(_)), "back to a vector when small");
        }
    }

    #[test]
    fn a_single_value_costs_one_exact_allocation() {
        let mut m = SmallMap::default();
        m.insert("conn-1".to_owned(), 1u64);
        match &m {
            SmallMap::Few(v) => assert_eq!(v.capacity(), 1),
            SmallMap::Many(_) => panic!("one value is few"),
        }
    }
}
