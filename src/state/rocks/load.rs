//! A bulk load (a restore) into stores that start empty: their changes
//! become sorted table files that RocksDB takes whole (`IngestExternalFile`,
//! the way RocksDB's documentation recommends for bulk loads), instead of
//! memtable inserts and a flush that writes the same table files later.
//!
//! A profile of a 1,000,000-key restore put about a quarter of the
//! process's CPU in the memtable (skip-list inserts comparing keys of about
//! 70 bytes) and another in the flush; a table file is written in key order
//! with no search at all. Stores that already hold something (a restore
//! that resumes from a recorded position) take the memtable path as
//! before: their memtables may hold keys in the files' ranges, and
//! RocksDB would flush them before an ingestion.

use std::path::{Path, PathBuf};

use super::{sorted_changes, RocksBackend, SortedChange, BULK_LOAD};
use crate::state::{Change, StateBackend, StateError, StoreId, WriteBatch};

/// Bytes of keys and values (of all the empty stores together) gathered
/// before they are sorted into table files, one per store they touch.
/// RocksDB puts a store's first file in its bottom level and the others,
/// which overlap it, in level 0, where it slows writes from 20 files and
/// stops them at 36 until compaction merges them: a load of 100 MiB (a
/// 1,000,000-key store) makes about 12, as the 8 MiB memtables' flushes
/// did, not one per 20,000-entry batch.
pub(super) const SPILL_BYTES: usize = 8 << 20;

/// How a store takes the changes of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// It was empty when the load began: table files, ingested at the end.
    Files,
    /// It held something: memtable inserts, compaction held off (see
    /// [`BULK_LOAD`]) until the load ends.
    Memtable,
}

/// A load under way, from `begin_unlogged` to `end_unlogged`.
pub(super) struct Load {
    /// Every store written since the load began, and how.
    stores: Vec<(StoreId, Via)>,
    /// Changes of [`Via::Files`] stores not in a file yet, in the order
    /// they came.
    pending: WriteBatch,
    /// Files written, oldest first: ingested in this order, so that a later
    /// change of a key wins.
    files: Vec<(StoreId, PathBuf)>,
    /// Where the files wait for their ingestion: beside the database's own.
    dir: PathBuf,
    /// Pending bytes that make a spill ([`SPILL_BYTES`]).
    spill_bytes: usize,
}

impl Load {
    pub(super) fn new(db_dir: &Path, spill_bytes: usize) -> Self {
        Load {
            spill_bytes,
            stores: Vec::new(),
            pending: WriteBatch::default(),
            files: Vec::new(),
            dir: db_dir.join("loading"),
        }
    }

    /// The stores that took memtable writes: theirs to flush and to tune back.
    pub(super) fn memtable_stores(&self) -> Vec<StoreId> {
        self.stores
            .iter()
            .filter(|(_, via)| *via == Via::Memtable)
            .map(|(store, _)| *store)
            .collect()
    }

    /// Removes the directory of the load's files with whatever it holds.
    pub(super) fn discard_files(&self) {
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn via(&self, store: StoreId) -> Option<Via> {
        self.stores
            .iter()
            .find(|(s, _)| *s == store)
            .map(|(_, via)| *via)
    }
}

impl RocksBackend {
    /// Writes `batch` during a load: the changes of empty stores gather for
    /// table files, the others go through the memtables.
    pub(super) fn write_loading(
        &mut self,
        load: &mut Load,
        batch: &WriteBatch,
    ) -> Result<(), StateError> {
        for (store, _, _) in batch.iter() {
            if load.via(store).is_none() {
                let via = self.choose_via(store)?;
                load.stores.push((store, via));
            }
        }
        if batch
            .iter()
            .all(|(s, _, _)| load.via(s) == Some(Via::Memtable))
        {
            return self.write_sorted(batch);
        }
        let mut through_memtable = WriteBatch::default();
        for (store, key, change) in batch.iter() {
            let target = match load.via(store) {
                Some(Via::Files) => &mut load.pending,
                _ => &mut through_memtable,
            };
            match change {
                Change::Put(value) => target.put(store, key, value),
                Change::Delete | Change::SingleDelete => target.delete(store, key),
            }
        }
        self.write_sorted(&through_memtable)?;
        if load.pending.bytes_len() >= load.spill_bytes {
            self.spill(load)?;
        }
        Ok(())
    }

    fn choose_via(&self, store: StoreId) -> Result<Via, StateError> {
        if StateBackend::is_empty(self, store)? {
            return Ok(Via::Files);
        }
        self.tune(store, &BULK_LOAD)?;
        Ok(Via::Memtable)
    }

    /// Sorts the pending changes into one table file per store, the last
    /// change of a key winning.
    pub(super) fn spill(&self, load: &mut Load) -> Result<(), StateError> {
        if load.pending.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&load.dir).map_err(|e| self.load_error(e))?;
        let batch = &load.pending;
        let order = sorted_changes(batch);
        let mut written = Vec::new();
        let mut at = 0;
        while at < order.len() {
            let store = order[at].0;
            let end = at + order[at..].partition_point(|o| o.0 == store);
            let path = load
                .dir
                .join(format!("{}.sst", load.files.len() + written.len()));
            self.write_file(&path, store, batch, &order[at..end])?;
            written.push((store, path));
            at = end;
        }
        load.files.extend(written);
        load.pending.clear();
        Ok(())
    }

    /// One store's changes, sorted by key (ties in the order they came), as
    /// a table file with the store's own table options.
    fn write_file(
        &self,
        path: &Path,
        store: StoreId,
        batch: &WriteBatch,
        sorted: &[SortedChange<'_>],
    ) -> Result<(), StateError> {
        let opts = Self::options(&self.cache, &self.write_buffers, false);
        let mut file = rocksdb::SstFileWriter::create(&opts);
        let fail = |cause| self.rocks_error(store, "write a table file to load", cause);
        file.open(path).map_err(fail)?;
        for (i, entry) in sorted.iter().enumerate() {
            // A table file holds a key once: the last of its changes.
            if sorted.get(i + 1).is_some_and(|next| next.2 == entry.2) {
                continue;
            }
            match batch.get(entry.3 as usize).2 {
                Change::Put(value) => file.put(entry.2, value),
                Change::Delete | Change::SingleDelete => file.delete(entry.2),
            }
            .map_err(fail)?;
        }
        file.finish().map_err(fail)
    }

    /// Ends a load: what is pending becomes files, and each store takes its
    /// files in one ingestion (they may overlap: RocksDB gives the later
    /// ones the higher sequence numbers). The files are moved, not copied.
    pub(super) fn ingest(&self, load: &mut Load) -> Result<(), StateError> {
        let spilled = self.spill(load);
        let ingested = spilled.and_then(|()| self.ingest_files(load));
        // Files of a failed load must not wait for a later one to take them.
        load.discard_files();
        ingested
    }

    fn ingest_files(&self, load: &Load) -> Result<(), StateError> {
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        for (store, _) in load.stores.iter().filter(|(_, via)| *via == Via::Files) {
            let paths: Vec<&PathBuf> = load
                .files
                .iter()
                .filter(|(s, _)| s == store)
                .map(|(_, path)| path)
                .collect();
            if paths.is_empty() {
                continue;
            }
            self.db
                .ingest_external_file_cf_opts(self.cf(*store)?, &opts, paths)
                .map_err(|cause| self.rocks_error(*store, "ingest loaded table files", cause))?;
        }
        Ok(())
    }

    fn rocks_error(&self, store: StoreId, op: &'static str, cause: rocksdb::Error) -> StateError {
        StateError::Rocks {
            store: self.names[store].clone(),
            op,
            cause,
        }
    }

    fn load_error(&self, e: std::io::Error) -> StateError {
        StateError::Io {
            dir: self.dir.display().to_string(),
            op: "create the directory of a load's table files",
            cause: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::SharedMemory;
    use super::*;

    fn property(db: &RocksBackend, store: StoreId, name: &str) -> u64 {
        db.int_property(store, name).unwrap()
    }

    fn contents(db: &RocksBackend, store: StoreId) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut found = BTreeMap::new();
        db.scan(store, &mut |k, v| {
            found.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
        found
    }

    type Model = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Loads `rounds` batches of changes, each batch holding changes of
    /// every store of `stores`: puts of keys that come back in later
    /// batches with new values, and deletions of keys put in an earlier
    /// batch or earlier in the same one. `models` (one per store) become
    /// what each store must hold.
    fn load_into(db: &mut RocksBackend, stores: &[StoreId], rounds: u32, models: &mut [Model]) {
        for round in 0..rounds {
            let mut batch = WriteBatch::default();
            for n in 0..500u32 {
                for (&store, model) in stores.iter().zip(models.iter_mut()) {
                    // Keys repeat across rounds (and twice within one).
                    let key = format!("svc-{:04}", (n * 7 + round * 131) % 900).into_bytes();
                    let value = format!("{store}/{round}/{n}").into_bytes();
                    batch.put(store, &key, &value);
                    model.insert(key.clone(), value);
                    if n % 5 == 0 {
                        batch.delete(store, &key);
                        model.remove(&key);
                    }
                    if n % 11 == 0 {
                        let old = format!("svc-{:04}", (n * 13 + round) % 900).into_bytes();
                        batch.delete(store, &old);
                        model.remove(&old);
                    }
                }
            }
            db.write(&batch).unwrap();
        }
    }

    /// [`load_into`] for one store, from an empty model.
    fn load(db: &mut RocksBackend, store: StoreId, rounds: u32) -> Model {
        let mut models = [Model::new()];
        load_into(db, &[store], rounds, &mut models);
        let [model] = models;
        model
    }

    fn changelogged(dir: &Path) -> RocksBackend {
        let shared = SharedMemory::new(8 << 20, 48 << 20);
        let mut db = RocksBackend::open_changelogged(dir, &shared, &[]).unwrap();
        // A spill every few batches: several overlapping files per store.
        db.load_spill_bytes = 16 << 10;
        db
    }

    #[test]
    fn an_empty_store_is_loaded_as_table_files_where_the_last_change_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = changelogged(dir.path());
        let store = db.open_store("dedup").unwrap();
        db.begin_unlogged();
        let model = load(&mut db, store, 12);
        assert_eq!(
            property(&db, store, "rocksdb.num-entries-active-mem-table"),
            0,
            "nothing went through the memtable"
        );
        db.end_unlogged().unwrap();
        let files = property(&db, store, "rocksdb.num-files-at-level0");
        assert!(files > 1, "several overlapping files ingested: {files}");
        assert!(
            contents(&db, store) == model,
            "the store differs from the changes"
        );
    }

    #[test]
    fn a_store_holding_something_is_loaded_through_its_memtable_beside_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = changelogged(dir.path());
        let (held, fresh) = (
            db.open_store("held").unwrap(),
            db.open_store("fresh").unwrap(),
        );
        let before = load(&mut db, held, 2);
        db.sync().unwrap();
        db.begin_unlogged();
        // Every batch holds changes of both stores.
        let mut models = [before, Model::new()];
        load_into(&mut db, &[held, fresh], 6, &mut models);
        let [held_model, fresh_model] = models;
        assert!(
            property(&db, held, "rocksdb.num-entries-active-mem-table") > 0,
            "the store holding something takes memtable writes"
        );
        db.end_unlogged().unwrap();
        assert!(contents(&db, held) == held_model, "the held store differs");
        assert!(
            contents(&db, fresh) == fresh_model,
            "the fresh store differs"
        );
        // After the load, writes go through the memtable again.
        let mut batch = WriteBatch::default();
        batch.put(fresh, b"svc-0001", b"after");
        db.write(&batch).unwrap();
        assert_eq!(db.get(fresh, b"svc-0001").unwrap(), Some(b"after".to_vec()));
    }

    #[test]
    fn the_files_of_an_interrupted_load_are_discarded_when_the_next_begins() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = changelogged(dir.path());
        let store = db.open_store("dedup").unwrap();
        let stale = dir.path().join("loading");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("7.sst"), b"left by a crash").unwrap();
        db.begin_unlogged();
        assert!(!stale.exists(), "the stale files are gone");
        let model = load(&mut db, store, 3);
        db.end_unlogged().unwrap();
        assert!(contents(&db, store) == model, "the store differs");
    }

    #[test]
    fn a_store_loaded_from_files_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let model = {
            let mut db = changelogged(dir.path());
            let store = db.open_store("dedup").unwrap();
            db.begin_unlogged();
            let model = load(&mut db, store, 5);
            db.end_unlogged().unwrap();
            model
        };
        let mut db = changelogged(dir.path());
        let store = db.open_store("dedup").unwrap();
        assert!(contents(&db, store) == model, "the reopened store differs");
    }
}
