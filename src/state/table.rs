//! A typed, write-back cached view of one store.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{show_key, StateBackend, StateError, StoreId, WriteBatch};

/// Entries of one store, decoded, cached and written back on commit.
///
/// Reads go to the cache first and load from the backend on a miss (a miss
/// that finds nothing is cached too). Writes only touch the cache and mark
/// the entry dirty; [`Table::commit`] encodes the dirty entries into the
/// commit's batch. After a commit, when the cache holds more than its
/// capacity, clean entries are dropped, which bounds memory whatever the
/// number of keys.
pub struct Table<V> {
    store: StoreId,
    name: String,
    cache: HashMap<Vec<u8>, Slot<V>>,
    dirty: Vec<Vec<u8>>,
    capacity: usize,
}

struct Slot<V> {
    value: Option<V>,
    dirty: bool,
}

impl<V: Serialize + DeserializeOwned> Table<V> {
    pub fn new(store: StoreId, name: &str, capacity: usize) -> Self {
        Table {
            store,
            name: name.to_owned(),
            cache: HashMap::new(),
            dirty: Vec::new(),
            capacity,
        }
    }

    fn load<'t>(
        cache: &'t mut HashMap<Vec<u8>, Slot<V>>,
        store: StoreId,
        name: &str,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<&'t mut Slot<V>, StateError> {
        if !cache.contains_key(key) {
            let value = match backend.get(store, key)? {
                Some(bytes) => {
                    Some(
                        postcard::from_bytes(&bytes).map_err(|cause| StateError::Decode {
                            store: name.to_owned(),
                            key: show_key(key),
                            cause,
                        })?,
                    )
                }
                None => None,
            };
            cache.insert(
                key.to_vec(),
                Slot {
                    value,
                    dirty: false,
                },
            );
        }
        Ok(cache.get_mut(key).expect("the entry was just inserted"))
    }

    /// The entry for `key`, if any.
    pub fn get(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<Option<&V>, StateError> {
        Ok(
            Self::load(&mut self.cache, self.store, &self.name, backend, key)?
                .value
                .as_ref(),
        )
    }

    /// The entry for `key`, to read and change; it is written back on commit.
    pub fn get_mut(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<&mut Option<V>, StateError> {
        let slot = Self::load(&mut self.cache, self.store, &self.name, backend, key)?;
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key.to_vec());
        }
        Ok(&mut slot.value)
    }

    /// Writes every dirty entry into `batch` and trims the cache.
    pub fn commit(&mut self, batch: &mut WriteBatch) -> Result<(), StateError> {
        for key in self.dirty.drain(..) {
            let Some(slot) = self.cache.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            match &slot.value {
                Some(v) => {
                    let bytes = postcard::to_stdvec(v).map_err(|cause| StateError::Encode {
                        store: self.name.clone(),
                        cause,
                    })?;
                    batch.put(self.store, key, bytes);
                }
                None => batch.delete(self.store, key),
            }
        }
        if self.cache.len() > self.capacity {
            self.cache.clear();
        }
        Ok(())
    }

    /// Entries currently cached (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryBackend;

    #[test]
    fn writes_back_only_on_commit_and_reloads_after_eviction() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 1);
        *table.get_mut(&backend, b"a").unwrap() = Some(7);
        *table.get_mut(&backend, b"b").unwrap() = Some(8);
        assert_eq!(
            backend.get(store, b"a").unwrap(),
            None,
            "nothing written before commit"
        );
        let mut batch = WriteBatch::default();
        table.commit(&mut batch).unwrap();
        assert_eq!(batch.len(), 2);
        backend.write(batch).unwrap();
        assert_eq!(table.cached(), 0, "over capacity: clean entries evicted");
        assert_eq!(table.get(&backend, b"a").unwrap(), Some(&7));
        *table.get_mut(&backend, b"a").unwrap() = None;
        let mut batch = WriteBatch::default();
        table.commit(&mut batch).unwrap();
        backend.write(batch).unwrap();
        assert_eq!(backend.get(store, b"a").unwrap(), None, "deleted on commit");
        assert_eq!(table.get(&backend, b"b").unwrap(), Some(&8));
    }

    #[test]
    fn undecodable_entries_name_the_store_and_key() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("op/x").unwrap();
        let mut batch = WriteBatch::default();
        batch.put(store, b"k".to_vec(), vec![0xff; 12]);
        backend.write(batch).unwrap();
        let mut table: Table<(u64, String)> = Table::new(store, "op/x", 10);
        let err = table.get(&backend, b"k").unwrap_err().to_string();
        assert!(err.contains("op/x") && err.contains('k'), "{err}");
    }
}
