//! A typed, write-back cached view of one store.

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::key::Key;
use super::{show_key, StateBackend, StateError, StoreId, WriteBatch};

/// Entries of one store, decoded, cached and written back on commit.
///
/// Reads go to the cache first and load from the backend on a miss. Writes
/// only touch the cache and mark the entry dirty; [`Table::commit`] encodes
/// the dirty entries into the commit's batch.
///
/// While the cache is *complete* (it holds every entry of the store, which
/// is true from the start for an empty store and stays true until the first
/// eviction), a miss means "absent" and costs no backend read at all. After a
/// commit, deleted entries leave the cache, and when it holds more than its
/// capacity it is emptied (and no longer complete): memory stays bounded
/// whatever the number of keys.
pub struct Table<V> {
    store: StoreId,
    name: String,
    cache: HashMap<Key, Slot<V>>,
    capacity: usize,
    complete: bool,
    /// The last stored key the previous sweep looked at: the next one resumes
    /// after it (`None`: from the first key).
    sweep_cursor: Option<Vec<u8>>,
}

/// While the cache is incomplete, each sweep also looks at a slice of the
/// entries that are only in the store, resuming where the last one stopped,
/// so that no commit pays for a scan of the whole store: at least this many
/// entries,
const STORE_SWEEP_MIN: usize = 1_024;
/// and this many per entry changed since the last commit. The store grows by
/// at most one entry per change, so a pass over it always outruns its growth:
/// expired entries take at most a quarter of it in steady state.
const STORE_SWEEP_PER_CHANGE: usize = 4;

struct Slot<V> {
    value: Option<V>,
    dirty: bool,
    /// Whether the backend holds an entry for the key as of the last commit:
    /// an entry created and deleted between two commits costs no write at all.
    stored: Stored,
}

/// What the backend holds for a key as of the last commit.
///
/// Its deletion is always a plain [`WriteBatch::delete`], never a single
/// delete: RocksDB's `SingleDelete` is defined only when the key was put
/// once since its previous *single* delete, and no writer here can know
/// that. A key absent now may have been deleted with a plain tombstone
/// (a restore writes a changelog's deletions so, and so does a table for an
/// entry it loaded or overwrote), with older puts still below it; a flush
/// or compaction drops such a tombstone behind a newer put or single
/// delete, and the single delete, cancelling only the newest put, brings
/// the older value back (see the RocksDB backend's tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Nothing.
    No,
    /// An entry.
    Yes,
}

impl Stored {
    /// After a put of the key.
    pub(crate) fn put(self) -> Stored {
        Stored::Yes
    }

    /// Writes the deletion of `key` that this state calls for, if any.
    pub(crate) fn delete(self, batch: &mut WriteBatch, store: StoreId, key: &[u8]) {
        match self {
            Stored::No => {}
            Stored::Yes => batch.delete(store, key),
        }
    }
}

impl<V: Serialize + DeserializeOwned> Table<V> {
    /// A table over `store`; `store_is_empty` says whether the store holds nothing yet.
    pub fn new(store: StoreId, name: &str, capacity: usize, store_is_empty: bool) -> Self {
        Table {
            store,
            name: name.to_owned(),
            cache: HashMap::new(),
            capacity,
            complete: store_is_empty,
            sweep_cursor: None,
        }
    }

    fn slot(&mut self, backend: &dyn StateBackend, key: &[u8]) -> Result<&mut Slot<V>, StateError> {
        match self.cache.entry_ref(key) {
            EntryRef::Occupied(e) => Ok(e.into_mut()),
            EntryRef::Vacant(e) => {
                let value = if self.complete {
                    None
                } else {
                    decode(backend, self.store, &self.name, key)?
                };
                let stored = if value.is_some() {
                    Stored::Yes
                } else {
                    Stored::No
                };
                Ok(e.insert_with_key(
                    Key::from(key),
                    Slot {
                        value,
                        dirty: false,
                        stored,
                    },
                ))
            }
        }
    }

    /// The entry for `key`, if any.
    pub fn get(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<Option<&V>, StateError> {
        Ok(self.slot(backend, key)?.value.as_ref())
    }

    /// The entry for `key`, to read and change; it is written back on commit.
    pub fn get_mut(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<&mut Option<V>, StateError> {
        let slot = self.slot(backend, key)?;
        slot.dirty = true;
        Ok(&mut slot.value)
    }

    /// Deletes every entry for which `keep` says no: the cached ones always,
    /// and, while the cache is incomplete, the stored ones a bounded slice at
    /// a time (see [`STORE_SWEEP_MIN`]), every entry within a few sweeps.
    /// Operators purge expired state this way instead of arming a timer per key;
    /// `keep` must say no only to entries that act exactly as absent ones.
    pub fn sweep(
        &mut self,
        backend: &dyn StateBackend,
        mut keep: impl FnMut(&V) -> bool,
    ) -> Result<(), StateError> {
        let mut changed = 0;
        for slot in self.cache.values_mut() {
            changed += usize::from(slot.dirty);
            if slot.value.as_ref().is_some_and(|v| !keep(v)) {
                slot.value = None;
                slot.dirty = true;
            }
        }
        if self.complete {
            return Ok(());
        }
        let budget = STORE_SWEEP_MIN.max(changed.saturating_mul(STORE_SWEEP_PER_CHANGE));
        self.sweep_stored(backend, budget, keep)
    }

    /// Looks at up to `budget` stored entries after the cursor, deleting the
    /// expired ones that are not cached (cached ones were judged already).
    fn sweep_stored(
        &mut self,
        backend: &dyn StateBackend,
        budget: usize,
        mut keep: impl FnMut(&V) -> bool,
    ) -> Result<(), StateError> {
        let mut expired = Vec::new();
        let mut seen = 0;
        let mut stopped_at = None;
        let (cache, store, name) = (&self.cache, self.store, &self.name);
        backend.scan_after(store, self.sweep_cursor.as_deref(), &mut |key, bytes| {
            if !cache.contains_key(key) {
                let value: V = postcard::from_bytes(bytes).map_err(|cause| StateError::Decode {
                    store: name.clone(),
                    key: show_key(key),
                    cause,
                })?;
                if !keep(&value) {
                    expired.push(key.to_vec());
                }
            }
            seen += 1;
            if seen < budget {
                return Ok(true);
            }
            stopped_at = Some(key.to_vec());
            Ok(false)
        })?;
        // At the end of the store, the next sweep starts over from the first key.
        self.sweep_cursor = stopped_at;
        for key in expired {
            self.cache.insert(
                Key::from(&key[..]),
                Slot {
                    value: None,
                    dirty: true,
                    stored: Stored::Yes,
                },
            );
        }
        Ok(())
    }

    /// Writes every dirty entry into `batch` and trims the cache.
    pub fn commit(&mut self, batch: &mut WriteBatch) -> Result<(), StateError> {
        let mut failure = None;
        let (store, name) = (self.store, &self.name);
        self.cache.retain(|key, slot| {
            if slot.dirty && failure.is_none() {
                slot.dirty = false;
                match &slot.value {
                    Some(v) => match batch.put_encoded(store, key.as_slice(), v) {
                        Ok(()) => slot.stored = slot.stored.put(),
                        Err(cause) => {
                            failure = Some(StateError::Encode {
                                store: name.clone(),
                                cause,
                            })
                        }
                    },
                    None => {
                        slot.stored.delete(batch, store, key.as_slice());
                        slot.stored = Stored::No;
                    }
                }
            }
            // A deleted entry is known absent without a slot while the cache is
            // complete, and otherwise costs one read when next needed.
            slot.value.is_some() || slot.dirty
        });
        if let Some(err) = failure {
            return Err(err);
        }
        if self.cache.len() > self.capacity {
            self.cache.clear();
            self.complete = false;
        }
        Ok(())
    }

    /// Every entry (uncommitted changes included) that `pick` chooses, in
    /// no particular order. It reads the whole store: for queries, not for
    /// the hot path.
    pub fn find(
        &self,
        backend: &dyn StateBackend,
        mut pick: impl FnMut(&V) -> bool,
    ) -> Result<Vec<(Vec<u8>, V)>, StateError>
    where
        V: Clone,
    {
        let mut found = Vec::new();
        backend.scan(self.store, &mut |key, bytes| {
            if !self.cache.contains_key(key) {
                let value: V = postcard::from_bytes(bytes).map_err(|cause| StateError::Decode {
                    store: self.name.clone(),
                    key: show_key(key),
                    cause,
                })?;
                if pick(&value) {
                    found.push((key.to_vec(), value));
                }
            }
            Ok(())
        })?;
        for (key, slot) in &self.cache {
            if let Some(value) = slot.value.as_ref().filter(|v| pick(v)) {
                found.push((key.as_slice().to_vec(), value.clone()));
            }
        }
        Ok(found)
    }

    /// Whether `value` decodes as an entry of this table (a restore checks
    /// changelog records with it).
    pub fn accepts(&self, value: &[u8]) -> bool {
        postcard::from_bytes::<V>(value).is_ok()
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Calls `visit` with every committed entry of the store (what the
    /// backend holds, not the uncommitted cache): for metrics read right
    /// after a commit. Entries that do not decode are skipped.
    pub fn scan_committed(
        &self,
        backend: &dyn StateBackend,
        visit: &mut dyn FnMut(&V),
    ) -> Result<(), StateError> {
        backend.scan(self.store, &mut |_, bytes| {
            if let Ok(v) = postcard::from_bytes::<V>(bytes) {
                visit(&v);
            }
            Ok(())
        })
    }
}

fn decode<V: DeserializeOwned>(
    backend: &dyn StateBackend,
    store: StoreId,
    name: &str,
    key: &[u8],
) -> Result<Option<V>, StateError> {
    let Some(bytes) = backend.get(store, key)? else {
        return Ok(None);
    };
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|cause| StateError::Decode {
            store: name.to_owned(),
            key: show_key(key),
            cause,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryBackend;

    fn commit<V: Serialize + DeserializeOwned>(
        table: &mut Table<V>,
        backend: &mut MemoryBackend,
    ) -> usize {
        let mut batch = WriteBatch::default();
        table.commit(&mut batch).unwrap();
        let n = batch.len();
        backend.write(&batch).unwrap();
        n
    }

    #[test]
    fn writes_back_only_on_commit_and_reloads_after_eviction() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 1, true);
        *table.get_mut(&backend, b"a").unwrap() = Some(7);
        *table.get_mut(&backend, b"b").unwrap() = Some(8);
        assert_eq!(
            backend.get(store, b"a").unwrap(),
            None,
            "nothing written before commit"
        );
        assert_eq!(commit(&mut table, &mut backend), 2);
        assert_eq!(table.cached(), 0, "over capacity: clean entries evicted");
        assert_eq!(
            table.get(&backend, b"a").unwrap(),
            Some(&7),
            "reloaded from the backend"
        );
        *table.get_mut(&backend, b"a").unwrap() = None;
        assert_eq!(commit(&mut table, &mut backend), 1);
        assert_eq!(backend.get(store, b"a").unwrap(), None, "deleted on commit");
        assert_eq!(table.get(&backend, b"b").unwrap(), Some(&8));
    }

    #[test]
    fn a_complete_cache_does_not_read_the_backend_and_drops_deleted_entries() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        // Something the table must not see while it believes the store empty.
        let mut batch = WriteBatch::default();
        batch.put(store, b"x", &postcard::to_stdvec(&1u64).unwrap());
        backend.write(&batch).unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 10, true);
        assert_eq!(table.get(&backend, b"x").unwrap(), None);
        *table.get_mut(&backend, b"y").unwrap() = Some(1);
        commit(&mut table, &mut backend);
        *table.get_mut(&backend, b"y").unwrap() = None;
        commit(&mut table, &mut backend);
        assert_eq!(
            table.cached(),
            0,
            "neither the absent x nor the deleted y keeps a slot"
        );
        let mut incomplete: Table<u64> = Table::new(store, "t", 10, false);
        assert_eq!(incomplete.get(&backend, b"x").unwrap(), Some(&1));
    }

    #[test]
    fn an_entry_born_and_deleted_between_commits_writes_nothing() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 10, true);
        *table.get_mut(&backend, b"a").unwrap() = Some(1);
        *table.get_mut(&backend, b"a").unwrap() = None;
        assert_eq!(commit(&mut table, &mut backend), 0);
        *table.get_mut(&backend, b"b").unwrap() = Some(1);
        assert_eq!(commit(&mut table, &mut backend), 1);
        *table.get_mut(&backend, b"b").unwrap() = None;
        assert_eq!(
            commit(&mut table, &mut backend),
            1,
            "a stored entry is deleted"
        );
    }

    /// The kinds of deletion a commit writes, in order.
    fn deletions<V: Serialize + DeserializeOwned>(
        table: &mut Table<V>,
        backend: &mut MemoryBackend,
    ) -> Vec<crate::state::Change<'static>> {
        let mut batch = WriteBatch::default();
        table.commit(&mut batch).unwrap();
        backend.write(&batch).unwrap();
        batch
            .iter()
            .filter_map(|(_, _, c)| match c {
                crate::state::Change::Put(_) => None,
                crate::state::Change::Delete => Some(crate::state::Change::Delete),
                crate::state::Change::SingleDelete => Some(crate::state::Change::SingleDelete),
            })
            .collect()
    }

    /// The pattern that brought deleted entries back after a restore: put
    /// twice, deleted (a plain tombstone), put once more and deleted again.
    /// A single delete for the last deletion would cancel only the last put
    /// and, once a flush drops the tombstone between, uncover the first ones.
    #[test]
    fn every_deletion_is_a_plain_delete() {
        use crate::state::Change::Delete;
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 10, true);
        *table.get_mut(&backend, b"once").unwrap() = Some(1);
        *table.get_mut(&backend, b"twice").unwrap() = Some(1);
        commit(&mut table, &mut backend);
        *table.get_mut(&backend, b"twice").unwrap() = Some(2);
        commit(&mut table, &mut backend);
        *table.get_mut(&backend, b"once").unwrap() = None;
        assert_eq!(deletions(&mut table, &mut backend), [Delete]);
        *table.get_mut(&backend, b"twice").unwrap() = None;
        assert_eq!(deletions(&mut table, &mut backend), [Delete]);
        *table.get_mut(&backend, b"twice").unwrap() = Some(3);
        commit(&mut table, &mut backend);
        *table.get_mut(&backend, b"twice").unwrap() = None;
        assert_eq!(
            deletions(&mut table, &mut backend),
            [Delete],
            "put once since a plain delete: the older puts may still be below it"
        );
        *table.get_mut(&backend, b"loaded").unwrap() = Some(4);
        commit(&mut table, &mut backend);
        let mut reopened: Table<u64> = Table::new(store, "t", 10, false);
        *reopened.get_mut(&backend, b"loaded").unwrap() = None;
        assert_eq!(deletions(&mut reopened, &mut backend), [Delete]);
    }

    #[test]
    fn sweep_deletes_cached_and_eventually_stored_entries() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("t").unwrap();
        let mut table: Table<u64> = Table::new(store, "t", 2, true);
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            *table.get_mut(&backend, *k).unwrap() = Some(i as u64);
        }
        commit(&mut table, &mut backend);
        assert_eq!(table.cached(), 0, "evicted: the cache is incomplete now");
        *table.get_mut(&backend, b"c").unwrap() = Some(2);
        let mut sweeps = 0;
        while backend.get(store, b"a").unwrap().is_some() {
            table.sweep(&backend, |v| *v >= 1).unwrap();
            commit(&mut table, &mut backend);
            sweeps += 1;
            assert!(sweeps <= 16, "stored entries are swept within 16 sweeps");
        }
        assert!(
            backend.get(store, b"b").unwrap().is_some(),
            "kept entries stay"
        );
        assert!(backend.get(store, b"c").unwrap().is_some());
    }

    #[test]
    fn undecodable_entries_name_the_store_and_key() {
        let mut backend = MemoryBackend::new();
        let store = backend.open_store("op/x").unwrap();
        let mut batch = WriteBatch::default();
        batch.put(store, b"k", &[0xff; 12]);
        backend.write(&batch).unwrap();
        let mut table: Table<(u64, String)> = Table::new(store, "op/x", 10, false);
        let err = table.get(&backend, b"k").unwrap_err().to_string();
        assert!(err.contains("op/x") && err.contains('k'), "{err}");
    }

    /// The in-memory backend, counting the entries its scans hand out: how
    /// much of the store a sweep reads on the processing thread.
    struct Counting {
        inner: MemoryBackend,
        visited: std::cell::Cell<usize>,
    }

    impl StateBackend for Counting {
        fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
            self.inner.open_store(name)
        }
        fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            self.inner.get(store, key)
        }
        fn scan(
            &self,
            store: StoreId,
            visit: &mut crate::state::Visit<'_>,
        ) -> Result<(), StateError> {
            self.inner.scan(store, &mut |k, v| {
                self.visited.set(self.visited.get() + 1);
                visit(k, v)
            })
        }
        fn scan_after(
            &self,
            store: StoreId,
            after: Option<&[u8]>,
            visit: &mut crate::state::VisitWhile<'_>,
        ) -> Result<(), StateError> {
            self.inner.scan_after(store, after, &mut |k, v| {
                self.visited.set(self.visited.get() + 1);
                visit(k, v)
            })
        }
        fn is_empty(&self, store: StoreId) -> Result<bool, StateError> {
            self.inner.is_empty(store)
        }
        fn write(&mut self, batch: &WriteBatch) -> Result<(), StateError> {
            self.inner.write(batch)
        }
        fn sync(&mut self) -> Result<(), StateError> {
            Ok(())
        }
        fn store_name(&self, store: StoreId) -> &str {
            self.inner.store_name(store)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
    }

    #[test]
    fn no_sweep_reads_the_whole_store_and_every_expired_entry_still_goes() {
        const KEYS: u64 = 20_000;
        let mut backend = Counting {
            inner: MemoryBackend::new(),
            visited: std::cell::Cell::new(0),
        };
        let store = backend.open_store("t").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..KEYS {
            let key = format!("k{i:06}").into_bytes();
            batch.put(store, &key, &postcard::to_stdvec(&i).unwrap());
        }
        backend.write(&batch).unwrap();
        let stored = |b: &Counting| {
            let mut n = 0;
            b.inner
                .scan(store, &mut |_, _| {
                    n += 1;
                    Ok(())
                })
                .unwrap();
            n
        };
        // Entries below KEYS / 2 have expired; the cache holds a few of them.
        let mut table: Table<u64> = Table::new(store, "t", 100, false);
        assert_eq!(table.get(&backend, b"k000001").unwrap(), Some(&1));
        let (mut sweeps, mut most) = (0, 0);
        while stored(&backend) > KEYS / 2 {
            backend.visited.set(0);
            table.sweep(&backend, |v| *v >= KEYS / 2).unwrap();
            most = most.max(backend.visited.get());
            let mut batch = WriteBatch::default();
            table.commit(&mut batch).unwrap();
            backend.write(&batch).unwrap();
            sweeps += 1;
            assert!(sweeps <= 64, "expired entries left after {sweeps} sweeps");
        }
        assert!(
            most <= 4_096,
            "a sweep read {most} of the {KEYS} stored entries"
        );
        assert_eq!(
            table.get(&backend, b"k019999").unwrap(),
            Some(&19_999),
            "kept entries stay"
        );
    }
}
