//! A typed, write-back cached view of one store.

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::key::Key;
use super::{show_key, Committed, StateBackend, StateError, StoreId, WriteBatch};

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
    /// A commit stopped at its batch's limit and has entries left to write.
    commit_unfinished: bool,
    /// The last stored key the previous sweep looked at: the next one resumes
    /// after it (`None`: from the first key).
    sweep_cursor: Option<Vec<u8>>,
    /// A reopened store not looked at yet: the first access loads it whole
    /// when it fits the cache (see [`Table::load_if_it_fits`]).
    load_pending: bool,
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
            commit_unfinished: false,
            sweep_cursor: None,
            load_pending: !store_is_empty,
        }
    }

    /// Loads a reopened store (a restart, a restore, a task moved between
    /// threads) whole when it holds at most `capacity` entries: the cache is
    /// then complete again, as it would be had the process never stopped.
    /// Without this, a table over a non-empty store stayed incomplete for
    /// good: every miss a backend read and every sweep a walk of the store,
    /// which took a live run's CPU per event from about 6 to 11 s per
    /// 1,000,000 events after a rebalance. A larger store costs one look at
    /// `capacity + 1` entries, once, without decoding them. Called once,
    /// at the first access (`load_pending`; the table is incomplete then).
    fn load_if_it_fits(&mut self, backend: &dyn StateBackend) -> Result<(), StateError> {
        self.load_pending = false;
        let capacity = self.capacity;
        let mut stored = 0;
        backend.scan_after(self.store, None, &mut |_, _| {
            stored += 1;
            Ok(stored <= capacity)
        })?;
        if stored > capacity {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(stored);
        let name = &self.name;
        backend.scan_after(self.store, None, &mut |key, bytes| {
            let value: V = postcard::from_bytes(bytes).map_err(|cause| StateError::Decode {
                store: name.clone(),
                key: show_key(key),
                cause,
            })?;
            entries.push((Key::from(key), value));
            Ok(true)
        })?;
        for (key, value) in entries {
            // A slot already cached (a sweep's deletion) is newer than the store.
            self.cache.entry(key).or_insert(Slot {
                value: Some(value),
                dirty: false,
                stored: Stored::Yes,
            });
        }
        self.complete = true;
        Ok(())
    }

    fn slot(&mut self, backend: &dyn StateBackend, key: &[u8]) -> Result<&mut Slot<V>, StateError> {
        if self.load_pending {
            self.load_if_it_fits(backend)?;
        }
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

    /// The entry for `key`, to read and, if need be, change, with one lookup:
    /// only [`Entry::change`] marks it to be written back on commit.
    pub fn entry(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<Entry<'_, V>, StateError> {
        Ok(Entry {
            slot: self.slot(backend, key)?,
        })
    }

    /// The entry for `key`, to read and change; it is written back on commit.
    pub fn get_mut(
        &mut self,
        backend: &dyn StateBackend,
        key: &[u8],
    ) -> Result<&mut Option<V>, StateError> {
        Ok(self.entry(backend, key)?.change())
    }

    /// Deletes every entry for which `keep` says no: the cached ones always,
    /// and, while the cache is incomplete, the stored ones a bounded slice at
    /// a time (see [`STORE_SWEEP_MIN`]), every entry within a few sweeps.
    /// Operators purge expired state this way instead of arming a timer per key;
    /// `keep` must say no only to entries that act exactly as absent ones.
    ///
    /// While a commit is unfinished (it stopped at its batch's limit), a
    /// sweep does nothing: the one before that commit's first part judged
    /// every entry, and nothing has changed since.
    pub fn sweep(
        &mut self,
        backend: &dyn StateBackend,
        mut keep: impl FnMut(&V) -> bool,
    ) -> Result<(), StateError> {
        if self.commit_unfinished {
            return Ok(());
        }
        if self.load_pending {
            self.load_if_it_fits(backend)?;
        }
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

    /// Writes every dirty entry into `batch` and trims the cache; or, once
    /// the batch is full ([`WriteBatch::is_full`]), stops there and says so:
    /// the caller writes and empties the batch and calls again for the rest.
    /// Each call writes at least one entry, so a batch that is not emptied
    /// only grows past its limit.
    ///
    /// A batch that keeps changes cached ([`WriteBatch::keeps_cached`]) gets
    /// nothing from a complete cache within its capacity: the changes stay
    /// in it, dirty, until a commit that must write them (the cache grew past
    /// its capacity, or the batch does not keep changes cached).
    pub fn commit(&mut self, batch: &mut WriteBatch) -> Result<Committed, StateError> {
        if batch.keeps_cached()
            && self.complete
            && !self.commit_unfinished
            && self.cache.len() <= self.capacity
        {
            self.keep_changes_cached();
            return Ok(Committed::All);
        }
        let mut failure = None;
        let mut stopped = false;
        let mut written = 0usize;
        let (store, name) = (self.store, &self.name);
        self.cache.retain(|key, slot| {
            if slot.dirty && failure.is_none() && !stopped {
                if written > 0 && batch.is_full() {
                    stopped = true;
                    return true;
                }
                written += 1;
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
        self.commit_unfinished = stopped && failure.is_none();
        if let Some(err) = failure {
            return Err(err);
        }
        if stopped {
            return Ok(Committed::Partly);
        }
        if self.cache.len() > self.capacity {
            self.cache.clear();
            self.complete = false;
        }
        Ok(Committed::All)
    }

    /// Drops the slots of deleted entries that the backend does not hold;
    /// every change stays dirty, to be written by a later commit.
    fn keep_changes_cached(&mut self) {
        self.cache
            .retain(|_, slot| slot.value.is_some() || (slot.dirty && slot.stored == Stored::Yes));
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

/// An entry of a [`Table`], read without marking it dirty: an operator that
/// finds nothing to change leaves nothing for the commit to write.
pub struct Entry<'a, V> {
    slot: &'a mut Slot<V>,
}

impl<'a, V> Entry<'a, V> {
    pub fn value(&self) -> Option<&V> {
        self.slot.value.as_ref()
    }

    /// The value to change; the entry is written back on commit.
    pub fn change(self) -> &'a mut Option<V> {
        self.slot.dirty = true;
        &mut self.slot.value
    }
}

#[cfg(test)]
mod tests;
