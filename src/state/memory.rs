//! The in-memory backend: ordered maps, nothing on disk. The baseline that
//! the RocksDB backend is measured and property-tested against.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{StateBackend, StateError, StoreId, Visit, VisitWhile, WriteBatch};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    names: Vec<String>,
    stores: Vec<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateBackend for MemoryBackend {
    fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i);
        }
        self.names.push(name.to_owned());
        self.stores.push(BTreeMap::new());
        Ok(self.stores.len() - 1)
    }

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.stores[store].get(key).cloned())
    }

    fn scan(&self, store: StoreId, visit: &mut Visit<'_>) -> Result<(), StateError> {
        for (k, v) in &self.stores[store] {
            visit(k, v)?;
        }
        Ok(())
    }

    fn scan_after(
        &self,
        store: StoreId,
        after: Option<&[u8]>,
        visit: &mut VisitWhile<'_>,
    ) -> Result<(), StateError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        for (k, v) in self.stores[store].range::<[u8], _>((start, Bound::Unbounded)) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn is_empty(&self, store: StoreId) -> Result<bool, StateError> {
        Ok(self.stores[store].is_empty())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StateError> {
        for (store, key, value) in batch.ops {
            match value {
                Some(v) => self.stores[store].insert(key, v),
                None => self.stores[store].remove(&key),
            };
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    fn store_name(&self, store: StoreId) -> &str {
        &self.names[store]
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
