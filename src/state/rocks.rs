//! The RocksDB backend: one database per state directory, one column family
//! per store, so that a commit across all stores is a single atomic write.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

use super::{Change, StateBackend, StateError, StoreId, Visit, VisitWhile, WriteBatch};

/// Memory that several databases of one process share: the live runtime
/// opens one store per task, and their memtables and block caches together
/// must stay within one budget.
#[derive(Clone)]
pub struct SharedMemory {
    cache: rocksdb::Cache,
    write_buffers: rocksdb::WriteBufferManager,
}

impl SharedMemory {
    /// A block cache of `cache_bytes` and at most `memtable_bytes` of memtables in all.
    pub fn new(cache_bytes: usize, memtable_bytes: usize) -> Self {
        SharedMemory {
            cache: rocksdb::Cache::new_lru_cache(cache_bytes),
            write_buffers: rocksdb::WriteBufferManager::new_write_buffer_manager(
                memtable_bytes,
                false,
            ),
        }
    }
}

/// Bytes a RocksDB write batch adds to each change: a tag, a column family
/// id and two varint lengths.
const WRITE_BATCH_OVERHEAD: usize = 12;

/// Memtable bytes of all column families of a database that shares no
/// budget with others (replay's): RocksDB flushes the largest memtable when
/// they exceed it.
const OWN_MEMTABLE_BYTES: usize = 24 << 20;

/// Bytes of RocksDB write batch a scratch database takes in one write.
const SCRATCH_SLICE_BYTES: usize = 4 << 20;

/// The first 16 bytes of a key as a number that orders as the bytes do:
/// most comparisons of a sort end there, without reading the key itself.
fn key_prefix(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a commit holds fewer than 4 billion changes")
}

/// A column family's memtable size, outside of a bulk load.
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// RocksDB's defaults, set explicitly so that a bulk load can put them back.
const L0_SLOWDOWN: i32 = 20;
const L0_STOP: i32 = 36;

/// A column family's options while unlogged writes load it (a restore), as
/// RocksDB's `PrepareForBulkLoad` and Kafka Streams' restore do: no
/// compaction (it would rewrite what is still being loaded; it runs once
/// the load ends), so no stall on the level-0 file count, and larger
/// memtables (fewer, larger level-0 files; the shared write-buffer budget
/// still bounds them all).
const BULK_LOAD: [(&str, &str); 3] = [
    ("disable_auto_compactions", "true"),
    ("level0_slowdown_writes_trigger", "1000000"),
    ("level0_stop_writes_trigger", "1000000"),
];

pub struct RocksBackend {
    db: DB,
    /// One block cache shared by all column families.
    cache: rocksdb::Cache,
    /// The memtable budget, this database's own or shared with others.
    write_buffers: rocksdb::WriteBufferManager,
    dir: PathBuf,
    names: Vec<String>,
    /// False for a scratch database, whose writes skip the write-ahead log.
    wal: bool,
    /// Stores written without the write-ahead log since `begin_unlogged`
    /// (`None` outside of it).
    unlogged: Option<Vec<StoreId>>,
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir`, with every column family it already has.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, None, false)
    }

    /// Opens a scratch database in `dir`, one that is thrown away when the
    /// process ends (a replay's temporary state): its writes skip the
    /// write-ahead log, which exists only to recover after a crash, and
    /// `sync` does nothing. Never for state that must outlive the process.
    pub fn open_scratch(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, None, true)
    }

    /// Opens the database in `dir` within a memory budget shared with others.
    pub fn open_shared(dir: &Path, shared: &SharedMemory) -> Result<Self, StateError> {
        Self::open_with(dir, Some(shared), false)
    }

    fn open_with(
        dir: &Path,
        shared: Option<&SharedMemory>,
        scratch: bool,
    ) -> Result<Self, StateError> {
        let cache = shared.map_or_else(
            || rocksdb::Cache::new_lru_cache(8 << 20),
            |s| s.cache.clone(),
        );
        // One budget for the memtables of all column families: each store's
        // memtable would otherwise fill up to its own size and stay there,
        // however little the store is written, and a long run would hold
        // them all.
        let write_buffers = shared.map_or_else(
            || rocksdb::WriteBufferManager::new_write_buffer_manager(OWN_MEMTABLE_BYTES, false),
            |s| s.write_buffers.clone(),
        );
        let opts = Self::options(&cache, &write_buffers, scratch);
        let open_err = |cause| StateError::Open {
            dir: dir.to_owned(),
            cause,
        };
        let existing = if dir.join("CURRENT").exists() {
            DB::list_cf(&opts, dir).map_err(open_err)?
        } else {
            vec!["default".to_owned()]
        };
        let cfs = existing.iter().map(|name| {
            ColumnFamilyDescriptor::new(name, Self::options(&cache, &write_buffers, scratch))
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(open_err)?;
        Ok(RocksBackend {
            db,
            cache,
            write_buffers,
            dir: dir.to_owned(),
            names: Vec::new(),
            wal: !scratch,
            unlogged: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // State is small and hot in the table caches: keep RocksDB's own memory modest
    // so that a process stays well under its RSS budget.
    fn options(
        cache: &rocksdb::Cache,
        write_buffers: &rocksdb::WriteBufferManager,
        scratch: bool,
    ) -> Options {
        let mut opts = Options::default();
        opts.set_write_buffer_manager(write_buffers);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
        opts.set_max_write_buffer_number(2);
        opts.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN);
        opts.set_level_zero_stop_writes_trigger(L0_STOP);
        opts.set_max_background_jobs(1);
        // Scratch state is removed at the end: compressing it only costs time.
        opts.set_compression_type(if scratch {
            rocksdb::DBCompressionType::None
        } else {
            rocksdb::DBCompressionType::Lz4
        });
        opts.set_keep_log_file_num(2);
        // Reads are for keys missing from a table's cache, often absent from the
        // store as well: a bloom filter answers those without touching a block.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(cache);
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        opts
    }

    fn write_rocks(&self, wb: rocksdb::WriteBatch) -> Result<(), StateError> {
        if wb.is_empty() {
            return Ok(());
        }
        let mut opts = WriteOptions::default();
        // Durability comes from the WAL, synced in `sync` at the points that
        // need it; unlogged writes get theirs from `end_unlogged`'s flush.
        opts.set_sync(false);
        opts.disable_wal(!self.wal || self.unlogged.is_some());
        self.db
            .write_opt(wb, &opts)
            .map_err(|cause| StateError::Rocks {
                store: "(batch)".into(),
                op: "write",
                cause,
            })
    }

    /// Sets mutable options of `store`'s column family.
    fn tune(&self, store: StoreId, options: &[(&str, &str)]) -> Result<(), StateError> {
        self.db
            .set_options_cf(self.cf(store)?, options)
            .map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "set options",
                cause,
            })
    }

    fn cf(&self, store: StoreId) -> Result<&rocksdb::ColumnFamily, StateError> {
        let name = &self.names[store];
        self.db.cf_handle(name).ok_or_else(|| StateError::Corrupt {
            dir: self.dir.display().to_string(),
            message: format!("column family `{name}` disappeared"),
        })
    }
}

impl StateBackend for RocksBackend {
    fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i);
        }
        if self.db.cf_handle(name).is_none() {
            self.db
                .create_cf(
                    name,
                    &Self::options(&self.cache, &self.write_buffers, !self.wal),
                )
                .map_err(|cause| StateError::Rocks {
                    store: name.to_owned(),
                    op: "create",
                    cause,
                })?;
        }
        self.names.push(name.to_owned());
        Ok(self.names.len() - 1)
    }

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.cf(store)?, key)
            .map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "get",
                cause,
            })
    }

    fn scan(&self, store: StoreId, visit: &mut Visit<'_>) -> Result<(), StateError> {
        for item in self
            .db
            .iterator_cf(self.cf(store)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "scan",
                cause,
            })?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn scan_after(
        &self,
        store: StoreId,
        after: Option<&[u8]>,
        visit: &mut VisitWhile<'_>,
    ) -> Result<(), StateError> {
        let mode = match after {
            Some(key) => rocksdb::IteratorMode::From(key, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        for item in self.db.iterator_cf(self.cf(store)?, mode) {
            let (k, v) = item.map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "scan",
                cause,
            })?;
            // `From` starts at the key itself when it is still there.
            if after == Some(&*k) {
                continue;
            }
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn approximate_len(&self, store: StoreId) -> Result<u64, StateError> {
        let estimate = self
            .db
            .property_int_value_cf(self.cf(store)?, "rocksdb.estimate-num-keys")
            .map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "estimate entries",
                cause,
            })?;
        Ok(estimate.unwrap_or(0))
    }

    fn is_empty(&self, store: StoreId) -> Result<bool, StateError> {
        let mut iter = self
            .db
            .iterator_cf(self.cf(store)?, rocksdb::IteratorMode::Start);
        match iter.next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(cause)) => Err(StateError::Rocks {
                store: self.names[store].clone(),
                op: "scan",
                cause,
            }),
        }
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StateError> {
        if let Some(stores) = self.unlogged.as_mut() {
            let mut loading = Vec::new();
            for (store, _, _) in batch.iter() {
                if !stores.contains(&store) {
                    stores.push(store);
                    loading.push(store);
                }
            }
            for store in loading {
                self.tune(store, &BULK_LOAD)?;
            }
        }
        let cfs = (0..self.names.len())
            .map(|store| self.cf(store))
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted by store and key, each memtable takes its keys in order, and
        // RocksDB's skip list inserts a key next to the previous one without
        // searching for its place. Changes of one key keep their order (the
        // index breaks the tie): later ones still win.
        let mut order: Vec<(StoreId, u128, &[u8], u32)> = batch
            .iter()
            .enumerate()
            .map(|(i, (store, key, _))| (store, key_prefix(key), key, len_u32(i)))
            .collect();
        order.sort_unstable();
        // Scratch state takes a large commit in slices: no copy of the whole
        // commit in RocksDB's format, and no memtable far past its size.
        let slice = if self.wal {
            usize::MAX
        } else {
            SCRATCH_SLICE_BYTES
        };
        let capacity = (batch.bytes_len() + batch.len() * WRITE_BATCH_OVERHEAD)
            .min(slice.saturating_add(4096));
        let mut wb = rocksdb::WriteBatch::with_capacity_bytes(capacity);
        for (_, _, _, i) in order {
            let (store, key, change) = batch.get(i as usize);
            let cf = cfs[store];
            match change {
                Change::Put(v) => wb.put_cf(cf, key, v),
                Change::Delete => wb.delete_cf(cf, key),
                Change::SingleDelete => wb.single_delete_cf(cf, key),
            }
            if wb.size_in_bytes() >= slice {
                let full =
                    std::mem::replace(&mut wb, rocksdb::WriteBatch::with_capacity_bytes(capacity));
                self.write_rocks(full)?;
            }
        }
        self.write_rocks(wb)
    }

    fn is_scratch(&self) -> bool {
        !self.wal
    }

    fn begin_unlogged(&mut self) {
        if self.wal {
            self.unlogged.get_or_insert_with(Vec::new);
        }
    }

    fn end_unlogged(&mut self) -> Result<(), StateError> {
        let Some(stores) = self.unlogged.take() else {
            return Ok(());
        };
        let cfs = stores
            .iter()
            .map(|&store| self.cf(store))
            .collect::<Result<Vec<_>, _>>()?;
        if cfs.is_empty() {
            return Ok(());
        }
        let mut wait = rocksdb::FlushOptions::default();
        wait.set_wait(true);
        let flushed = self
            .db
            .flush_cfs_opt(&cfs, &wait)
            .map_err(|cause| StateError::Rocks {
                store: "(unlogged writes)".into(),
                op: "flush",
                cause,
            });
        // Compaction takes up what the load left in level 0 from now on.
        let write_buffer = WRITE_BUFFER_BYTES.to_string();
        let (slowdown, stop) = (L0_SLOWDOWN.to_string(), L0_STOP.to_string());
        let normal = [
            ("disable_auto_compactions", "false"),
            ("level0_slowdown_writes_trigger", slowdown.as_str()),
            ("level0_stop_writes_trigger", stop.as_str()),
            ("write_buffer_size", write_buffer.as_str()),
        ];
        for store in stores {
            self.tune(store, &normal)?;
        }
        flushed
    }

    fn sync(&mut self) -> Result<(), StateError> {
        if !self.wal {
            return Ok(());
        }
        self.db.flush_wal(true).map_err(|cause| StateError::Rocks {
            store: "(wal)".into(),
            op: "sync",
            cause,
        })
    }

    fn store_name(&self, store: StoreId) -> &str {
        &self.names[store]
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes in the database's write-ahead log files.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    fn write_some(backend: &mut RocksBackend) -> StoreId {
        let store = backend.open_store("dedup").unwrap();
        let mut batch = WriteBatch::default();
        for n in 0..1_000u32 {
            batch.put(store, &n.to_be_bytes(), &[7; 100]);
        }
        backend.write(&batch).unwrap();
        backend.sync().unwrap();
        store
    }

    #[test]
    fn a_store_open_elsewhere_in_the_process_reports_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = RocksBackend::open(dir.path()).unwrap();
        let second = RocksBackend::open(dir.path());
        assert!(
            second.as_ref().err().is_some_and(StateError::is_lock_held),
            "{:?}",
            second.err()
        );
        drop(first);
        assert!(RocksBackend::open(dir.path()).is_ok(), "free once closed");
        let other = StateError::Open {
            dir: dir.path().to_owned(),
            cause: RocksBackend::open(&dir.path().join("CURRENT").join("x"))
                .err()
                .and_then(|e| match e {
                    StateError::Open { cause, .. } => Some(cause),
                    _ => None,
                })
                .unwrap(),
        };
        assert!(!other.is_lock_held(), "{other}");
    }

    #[test]
    fn a_scratch_database_reads_its_writes_and_logs_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = RocksBackend::open_scratch(dir.path()).unwrap();
        let store = write_some(&mut scratch);
        assert_eq!(
            scratch.get(store, &999u32.to_be_bytes()).unwrap(),
            Some(vec![7; 100])
        );
        assert_eq!(wal_bytes(dir.path()), 0, "no write-ahead log");
    }

    #[test]
    fn a_batch_is_written_in_key_order_but_later_changes_of_a_key_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RocksBackend::open(dir.path()).unwrap();
        let a = db.open_store("a").unwrap();
        let b = db.open_store("b").unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b, b"z", b"1");
        batch.put(a, b"k", b"first");
        batch.put(b, b"a", b"2");
        batch.delete(a, b"k");
        batch.put(a, b"k", b"last");
        batch.put(a, b"gone", b"x");
        batch.single_delete(a, b"gone");
        db.write(&batch).unwrap();
        assert_eq!(db.get(a, b"k").unwrap().as_deref(), Some(&b"last"[..]));
        assert_eq!(db.get(a, b"gone").unwrap(), None);
        assert_eq!(db.get(b, b"a").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(b, b"z").unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// Why a deletion after a plain delete can never be a single delete:
    /// RocksDB's contract counts the puts since the previous *single*
    /// delete, and a plain delete in between does not hold the older puts
    /// down. Flushed together, the single delete cancels the last put, and
    /// the tombstone, hidden behind them, is dropped; the put flushed before
    /// comes back. (A restore writes a changelog's deletions as plain ones.)
    #[test]
    fn a_single_delete_after_a_plain_delete_brings_an_older_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RocksBackend::open(dir.path()).unwrap();
        let s = db.open_store("s").unwrap();
        let write = |db: &mut RocksBackend, change: &dyn Fn(&mut WriteBatch)| {
            let mut batch = WriteBatch::default();
            change(&mut batch);
            db.write(&batch).unwrap();
        };
        let flush = |db: &RocksBackend| db.db.flush_cf(db.cf(s).unwrap()).unwrap();
        write(&mut db, &|w| w.put(s, b"k", b"old"));
        flush(&db);
        write(&mut db, &|w| w.delete(s, b"k"));
        write(&mut db, &|w| w.put(s, b"k", b"new"));
        write(&mut db, &|w| w.single_delete(s, b"k"));
        assert_eq!(db.get(s, b"k").unwrap(), None, "before the flush");
        flush(&db);
        assert_eq!(
            db.get(s, b"k").unwrap().as_deref(),
            Some(&b"old"[..]),
            "after the flush, the put below the tombstone is back"
        );
    }

    #[test]
    fn a_scratch_database_takes_a_large_batch_in_slices_and_keeps_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = RocksBackend::open_scratch(dir.path()).unwrap();
        let store = scratch.open_store("big").unwrap();
        let mut batch = WriteBatch::default();
        for n in 0..12_000u32 {
            batch.put(store, &n.to_be_bytes(), &[n as u8; 1_000]);
        }
        assert!(batch.bytes_len() > 2 * SCRATCH_SLICE_BYTES);
        scratch.write(&batch).unwrap();
        let mut seen = 0u32;
        scratch
            .scan(store, &mut |key, value| {
                assert_eq!(key, seen.to_be_bytes());
                assert_eq!(value, [seen as u8; 1_000]);
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 12_000);
    }

    proptest::proptest! {
        #[test]
        fn keys_sort_by_their_prefix_number_as_by_their_bytes(keys in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24), 0..40)) {
            let mut by_bytes = keys.clone();
            by_bytes.sort();
            let mut by_prefix = keys;
            by_prefix.sort_by(|a, b| (key_prefix(a), a).cmp(&(key_prefix(b), b)));
            proptest::prop_assert_eq!(by_prefix, by_bytes);
        }
    }

    fn table_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
            .count()
    }

    #[test]
    fn unlogged_writes_are_in_table_files_once_they_end_and_later_ones_are_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut lasting = RocksBackend::open(dir.path()).unwrap();
        lasting.begin_unlogged();
        let store = write_some(&mut lasting);
        assert!(
            wal_bytes(dir.path()) < 1_000,
            "unlogged writes stay out of the log"
        );
        assert_eq!(table_files(dir.path()), 0, "still in the memtable");
        lasting.end_unlogged().unwrap();
        assert_eq!(
            table_files(dir.path()),
            1,
            "flushed when the unlogged writes end"
        );
        write_some(&mut lasting);
        assert!(wal_bytes(dir.path()) > 100_000, "later writes are logged");
        assert_eq!(
            lasting.get(store, &7u32.to_be_bytes()).unwrap(),
            Some(vec![7; 100])
        );
    }

    fn level0_files(db: &RocksBackend, store: StoreId) -> u64 {
        let cf = db.cf(store).unwrap();
        db.db
            .property_int_value_cf(cf, "rocksdb.num-files-at-level0")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_bulk_load_compacts_nothing_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RocksBackend::open(dir.path()).unwrap();
        db.begin_unlogged();
        let mut store = 0;
        // More level-0 files than the compaction trigger (4).
        for _ in 0..6 {
            store = write_some(&mut db);
            db.db.flush_cf(db.cf(store).unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(level0_files(&db, store), 6, "no compaction while loading");
        db.end_unlogged().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while level0_files(&db, store) >= 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "compaction should take up level 0 once the load ends"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            db.get(store, &7u32.to_be_bytes()).unwrap(),
            Some(vec![7; 100])
        );
    }

    #[test]
    fn a_lasting_database_logs_its_writes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut lasting = RocksBackend::open(dir.path()).unwrap();
        write_some(&mut lasting);
        assert!(wal_bytes(dir.path()) > 100_000, "the writes are in the log");
    }
}
