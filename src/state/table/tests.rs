//! The table's tests: write-back, eviction, sweeps, deletions and commits
//! in parts.

use super::*;
use crate::state::MemoryBackend;

fn commit<V: Serialize + DeserializeOwned>(
    table: &mut Table<V>,
    backend: &mut MemoryBackend,
) -> usize {
    commit_with(table, backend, false)
}

/// Commits with a batch that keeps changes cached or not; the number written.
fn commit_with<V: Serialize + DeserializeOwned>(
    table: &mut Table<V>,
    backend: &mut MemoryBackend,
    keep_cached: bool,
) -> usize {
    let mut batch = WriteBatch::default();
    batch.set_keep_cached(keep_cached);
    assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
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
    assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
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
    gets: std::cell::Cell<usize>,
}

impl Counting {
    /// A store `t` holding `k000000`.. `k{n-1}`, each with its number.
    fn with_keys(n: u64) -> (Counting, StoreId) {
        let mut backend = Counting {
            inner: MemoryBackend::new(),
            visited: std::cell::Cell::new(0),
            gets: std::cell::Cell::new(0),
        };
        let store = backend.open_store("t").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..n {
            let key = format!("k{i:06}").into_bytes();
            batch.put(store, &key, &postcard::to_stdvec(&i).unwrap());
        }
        backend.write(&batch).unwrap();
        (backend, store)
    }
}

impl StateBackend for Counting {
    fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
        self.inner.open_store(name)
    }
    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.gets.set(self.gets.get() + 1);
        self.inner.get(store, key)
    }
    fn scan(&self, store: StoreId, visit: &mut crate::state::Visit<'_>) -> Result<(), StateError> {
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
    let (mut backend, store) = Counting::with_keys(KEYS);
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
        assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
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

/// A batch with a limit takes a commit in parts: each call stops once the
/// batch is full, the next goes on where it stopped, every dirty entry is
/// written exactly once, and a sweep between two parts changes nothing.
#[test]
fn a_commit_stops_at_the_batch_limit_and_goes_on_where_it_stopped() {
    let mut backend = MemoryBackend::new();
    let store = backend.open_store("t").unwrap();
    let mut table: Table<u64> = Table::new(store, "t", 1_000, true);
    let key = |i: u64| format!("key-{i:03}").into_bytes();
    for i in 0..100 {
        *table.get_mut(&backend, &key(i)).unwrap() = Some(i);
    }
    let mut batch = WriteBatch::default();
    // A key of 7 bytes and a value of 1: 8 entries fill 64 bytes.
    batch.set_limit(Some(64));
    let (mut parts, mut written) = (0, Vec::new());
    loop {
        let committed = table.commit(&mut batch).unwrap();
        parts += 1;
        assert!(
            batch.len() <= 8,
            "part {parts} holds {} entries",
            batch.len()
        );
        written.extend(batch.iter().map(|(_, k, _)| k.to_vec()));
        backend.write(&batch).unwrap();
        batch.clear();
        if committed == Committed::All {
            break;
        }
        // Would delete every entry, were it not between two parts.
        table.sweep(&backend, |_| false).unwrap();
    }
    assert!(
        parts >= 13,
        "100 entries of 8 bytes in parts of 64: {parts} parts"
    );
    written.sort();
    assert_eq!(
        written,
        (0..100).map(key).collect::<Vec<_>>(),
        "each entry once"
    );
    for i in 0..100 {
        let stored = backend.get(store, &key(i)).unwrap();
        assert_eq!(stored, Some(postcard::to_stdvec(&i).unwrap()));
    }
    assert_eq!(commit(&mut table, &mut backend), 0, "nothing left dirty");
    // Once the commit is done, sweeps work again.
    table.sweep(&backend, |&v| v >= 50).unwrap();
    assert_eq!(commit(&mut table, &mut backend), 50);
    assert_eq!(backend.get(store, &key(49)).unwrap(), None);
}

/// A reopened store that fits the cache is loaded whole at the first
/// access: the cache is complete again, so a miss reads nothing and a sweep
/// walks no store.
#[test]
fn a_reopened_store_that_fits_the_cache_is_loaded_whole() {
    let (mut backend, store) = Counting::with_keys(50);
    let mut table: Table<u64> = Table::new(store, "t", 50, false);
    assert_eq!(table.get(&backend, b"k000007").unwrap(), Some(&7));
    assert_eq!(table.cached(), 50, "loaded whole");
    assert_eq!(table.get(&backend, b"absent").unwrap(), None);
    assert_eq!(backend.gets.get(), 0, "a complete cache reads nothing");
    backend.visited.set(0);
    table.sweep(&backend, |v| *v >= 25).unwrap();
    assert_eq!(backend.visited.get(), 0, "no store walk once complete");
    let mut batch = WriteBatch::default();
    assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
    assert_eq!(batch.len(), 25, "the swept entries are deleted");
    backend.write(&batch).unwrap();
    assert_eq!(table.get(&backend, b"k000049").unwrap(), Some(&49));
    assert_eq!(table.get(&backend, b"k000001").unwrap(), None);
}

/// A reopened store larger than the cache is looked at once, up to one
/// entry past the capacity, and then read key by key as before.
#[test]
fn a_reopened_store_larger_than_the_cache_is_read_key_by_key() {
    let (backend, store) = Counting::with_keys(51);
    let mut table: Table<u64> = Table::new(store, "t", 50, false);
    assert_eq!(table.get(&backend, b"k000050").unwrap(), Some(&50));
    assert_eq!(backend.visited.get(), 51, "one look, then no more");
    assert_eq!(table.cached(), 1);
    assert_eq!(table.get(&backend, b"absent").unwrap(), None);
    assert_eq!(backend.gets.get(), 2, "each miss reads the store");
    assert_eq!(table.get(&backend, b"k000003").unwrap(), Some(&3));
    assert_eq!(backend.visited.get(), 51);
}

/// A sweep as the first access loads the store too, and judges its entries.
#[test]
fn a_reopened_table_swept_first_deletes_the_expired_stored_entries() {
    let (mut backend, store) = Counting::with_keys(50);
    let mut table: Table<u64> = Table::new(store, "t", 50, false);
    table.sweep(&backend, |v| *v >= 25).unwrap();
    let mut batch = WriteBatch::default();
    assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
    assert_eq!(batch.len(), 25);
    backend.write(&batch).unwrap();
    assert_eq!(table.get(&backend, b"k000001").unwrap(), None);
    assert_eq!(table.get(&backend, b"k000030").unwrap(), Some(&30));
    assert_eq!(backend.gets.get(), 0, "complete: no read");
}

/// A loaded table that grows past its capacity is emptied at the commit, as
/// any other, and reads the store again.
#[test]
fn a_loaded_table_that_outgrows_the_cache_reads_the_store_again() {
    let (mut backend, store) = Counting::with_keys(50);
    let mut table: Table<u64> = Table::new(store, "t", 50, false);
    *table.get_mut(&backend, b"new").unwrap() = Some(99);
    let mut batch = WriteBatch::default();
    assert_eq!(table.commit(&mut batch).unwrap(), Committed::All);
    backend.write(&batch).unwrap();
    assert_eq!(table.cached(), 0, "over capacity: emptied");
    assert_eq!(table.get(&backend, b"k000010").unwrap(), Some(&10));
    assert_eq!(table.get(&backend, b"new").unwrap(), Some(&99));
    assert_eq!(backend.gets.get(), 2, "each read from the store again");
}

fn commit_keeping_cached(table: &mut Table<u64>, backend: &mut MemoryBackend) -> usize {
    commit_with(table, backend, true)
}

#[test]
fn a_complete_cache_keeps_its_changes_until_a_commit_that_writes_them() {
    let mut backend = MemoryBackend::new();
    let store = backend.open_store("t").unwrap();
    let mut table: Table<u64> = Table::new(store, "t", 10, true);
    *table.get_mut(&backend, b"a").unwrap() = Some(1);
    *table.get_mut(&backend, b"b").unwrap() = Some(2);
    assert_eq!(commit_keeping_cached(&mut table, &mut backend), 0);
    assert_eq!(backend.get(store, b"a").unwrap(), None);
    assert_eq!(table.get(&backend, b"a").unwrap(), Some(&1), "still cached");
    // A plain commit writes what the cache kept.
    assert_eq!(commit(&mut table, &mut backend), 2);
    assert!(backend.get(store, b"b").unwrap().is_some());
    // A stored entry deleted while changes are kept stays a slot to delete;
    // an entry born and deleted in between leaves none.
    *table.get_mut(&backend, b"b").unwrap() = None;
    *table.get_mut(&backend, b"c").unwrap() = Some(3);
    *table.get_mut(&backend, b"c").unwrap() = None;
    assert_eq!(commit_keeping_cached(&mut table, &mut backend), 0);
    assert_eq!(table.cached(), 2, "a, and b's deletion");
    assert_eq!(table.get(&backend, b"b").unwrap(), None);
    assert_eq!(commit(&mut table, &mut backend), 1, "b is deleted");
    assert_eq!(backend.get(store, b"b").unwrap(), None);
    assert_eq!(table.cached(), 1);
}

#[test]
fn a_cache_past_its_capacity_writes_everything_it_kept_before_letting_go() {
    let mut backend = MemoryBackend::new();
    let store = backend.open_store("t").unwrap();
    let mut table: Table<u64> = Table::new(store, "t", 2, true);
    *table.get_mut(&backend, b"a").unwrap() = Some(1);
    assert_eq!(commit_keeping_cached(&mut table, &mut backend), 0);
    *table.get_mut(&backend, b"b").unwrap() = Some(2);
    *table.get_mut(&backend, b"c").unwrap() = Some(3);
    assert_eq!(
        commit_keeping_cached(&mut table, &mut backend),
        3,
        "past its capacity, the cache writes the kept change too"
    );
    assert_eq!(table.cached(), 0);
    for (key, value) in [(b"a", 1), (b"b", 2), (b"c", 3)] {
        assert_eq!(table.get(&backend, key).unwrap(), Some(&value), "reloaded");
    }
    // Incomplete now: every commit writes.
    *table.get_mut(&backend, b"a").unwrap() = Some(4);
    assert_eq!(commit_keeping_cached(&mut table, &mut backend), 1);
}
