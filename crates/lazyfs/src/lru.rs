//! A weighted least-recently-used order, the bookkeeping behind both cache tiers.
//! Not thread-safe: callers hold it under a lock and do no I/O while they do.

use std::collections::{BTreeMap, HashMap};

pub(crate) struct Lru<V> {
    map: HashMap<String, Slot<V>>,
    /// Use tick -> key; the first entry is the least recently used.
    order: BTreeMap<u64, String>,
    tick: u64,
    weight: u64,
}

struct Slot<V> {
    value: V,
    tick: u64,
    weight: u64,
}

impl<V: Clone> Lru<V> {
    pub fn new() -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            weight: 0,
        }
    }

    /// Total weight of all entries.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The value, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let tick = self.next_tick();
        let slot = self.map.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, key.to_string());
        Some(slot.value.clone())
    }

    /// Insert or replace, as most recently used.
    pub fn insert(&mut self, key: &str, value: V, weight: u64) {
        self.remove(key);
        let tick = self.next_tick();
        self.order.insert(tick, key.to_string());
        self.map.insert(
            key.to_string(),
            Slot {
                value,
                tick,
                weight,
            },
        );
        self.weight += weight;
    }

    pub fn remove(&mut self, key: &str) -> Option<(V, u64)> {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.tick);
        self.weight -= slot.weight;
        Some((slot.value, slot.weight))
    }

    /// Remove and return the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(String, V, u64)> {
        let (_, key) = self.order.pop_first()?;
        let slot = self.map.remove(&key).expect("order and map agree");
        self.weight -= slot.weight;
        Some((key, slot.value, slot.weight))
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let mut l = Lru::new();
        l.insert("a", 1, 10);
        l.insert("b", 2, 20);
        l.insert("c", 3, 30);
        assert_eq!(l.weight(), 60);
        assert_eq!(l.get("a"), Some(1)); // a is now newest
        assert_eq!(l.pop_oldest().map(|e| e.0), Some("b".to_string()));
        assert_eq!(l.pop_oldest().map(|e| e.0), Some("c".to_string()));
        assert_eq!(l.weight(), 10);
        l.insert("a", 5, 7); // replace keeps weight right
        assert_eq!(l.weight(), 7);
        assert_eq!(l.len(), 1);
        assert_eq!(l.remove("a"), Some((5, 7)));
        assert!(l.pop_oldest().is_none());
        assert_eq!(l.weight(), 0);
    }
}
