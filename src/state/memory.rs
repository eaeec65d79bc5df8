//! The in-memory backend: hash maps, nothing on disk. The baseline that
//! the RocksDB backend is measured and property-tested against.
//!
//! Point reads and writes are what a run does all the time, so each store is
//! a hash map; an ordered map paid a comparison of long keys (and a cache
//! miss on each) at every level of the tree. Scans, which want key order,
//! are rare (loading timers, a sweep of a store larger than a table's
//! cache): they sort the keys they visit.

use hashbrown::HashMap;

use super::{Change, StateBackend, StateError, StoreId, Visit, VisitWhile, WriteBatch};

type Entries = HashMap<Box<[u8]>, Box<[u8]>>;

#[derive(Debug, Default)]
pub struct MemoryBackend {
    names: Vec<String>,
    stores: Vec<Entries>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries of `store` whose keys come after `after`, in key order.
    fn sorted_after<'a>(
        &'a self,
        store: StoreId,
        after: Option<&[u8]>,
    ) -> Vec<(&'a [u8], &'a [u8])> {
        let mut entries: Vec<(&[u8], &[u8])> = self.stores[store]
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .filter(|(k, _)| after.is_none_or(|a| *k > a))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }
}

impl StateBackend for MemoryBackend {
    fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i);
        }
        self.names.push(name.to_owned());
        self.stores.push(Entries::default());
        Ok(self.stores.len() - 1)
    }

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.stores[store].get(key).map(|v| v.to_vec()))
    }

    fn scan(&self, store: StoreId, visit: &mut Visit<'_>) -> Result<(), StateError> {
        for (k, v) in self.sorted_after(store, None) {
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
        for (k, v) in self.sorted_after(store, after) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn is_empty(&self, store: StoreId) -> Result<bool, StateError> {
        Ok(self.stores[store].is_empty())
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StateError> {
        for (store, key, change) in batch.iter() {
            let entries = &mut self.stores[store];
            match change {
                Change::Put(value) => match entries.get_mut(key) {
                    Some(old) if old.len() == value.len() => old.copy_from_slice(value),
                    Some(old) => *old = value.into(),
                    None => {
                        entries.insert(key.into(), value.into());
                    }
                },
                Change::Delete | Change::SingleDelete => {
                    entries.remove(key);
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    fn is_scratch(&self) -> bool {
        true
    }

    fn store_name(&self, store: StoreId) -> &str {
        &self.names[store]
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_visit_keys_in_order_and_resume_after_a_key() {
        let mut m = MemoryBackend::new();
        let s = m.open_store("s").unwrap();
        let mut batch = WriteBatch::default();
        for key in [&b"b"[..], b"ab", b"c", b"a", b"gone"] {
            batch.put(s, key, key);
        }
        batch.delete(s, b"gone");
        batch.put(s, b"c", b"new");
        m.write(&batch).unwrap();
        let mut all = Vec::new();
        m.scan(s, &mut |k, v| {
            all.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            [("a", "a"), ("ab", "ab"), ("b", "b"), ("c", "new")]
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
        assert_eq!(all, expected);
        let mut after = Vec::new();
        m.scan_after(s, Some(b"ab"), &mut |k, _| {
            after.push(k.to_vec());
            Ok(after.is_empty())
        })
        .unwrap();
        assert_eq!(
            after,
            [b"b".to_vec()],
            "from after `ab`, until told to stop"
        );
        assert_eq!(m.get(s, b"gone").unwrap(), None);
    }
}
