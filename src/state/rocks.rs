//! The RocksDB backend: one database per state directory, one column family
//! per store, so that a commit across all stores is a single atomic write.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

use super::{StateBackend, StateError, StoreId, Visit, VisitWhile, WriteBatch};

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

pub struct RocksBackend {
    db: DB,
    /// One block cache shared by all column families.
    cache: rocksdb::Cache,
    /// Set when the memtable budget is shared with other databases.
    write_buffers: Option<rocksdb::WriteBufferManager>,
    dir: PathBuf,
    names: Vec<String>,
    /// False for a scratch database, whose writes skip the write-ahead log.
    wal: bool,
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir`, with every column family it already has.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, None)
    }

    /// Opens a scratch database in `dir`, one that is thrown away when the
    /// process ends (a replay's temporary state): its writes skip the
    /// write-ahead log, which exists only to recover after a crash, and
    /// `sync` does nothing. Never for state that must outlive the process.
    pub fn open_scratch(dir: &Path) -> Result<Self, StateError> {
        let mut backend = Self::open_with(dir, None)?;
        backend.wal = false;
        Ok(backend)
    }

    /// Opens the database in `dir` within a memory budget shared with others.
    pub fn open_shared(dir: &Path, shared: &SharedMemory) -> Result<Self, StateError> {
        Self::open_with(dir, Some(shared))
    }

    fn open_with(dir: &Path, shared: Option<&SharedMemory>) -> Result<Self, StateError> {
        let cache = shared.map_or_else(
            || rocksdb::Cache::new_lru_cache(8 << 20),
            |s| s.cache.clone(),
        );
        let write_buffers = shared.map(|s| s.write_buffers.clone());
        let opts = Self::options(&cache, write_buffers.as_ref());
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
            ColumnFamilyDescriptor::new(name, Self::options(&cache, write_buffers.as_ref()))
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(open_err)?;
        Ok(RocksBackend {
            db,
            cache,
            write_buffers,
            dir: dir.to_owned(),
            names: Vec::new(),
            wal: true,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // State is small and hot in the table caches: keep RocksDB's own memory modest
    // so that a process stays well under its RSS budget.
    fn options(
        cache: &rocksdb::Cache,
        write_buffers: Option<&rocksdb::WriteBufferManager>,
    ) -> Options {
        let mut opts = Options::default();
        if let Some(wbm) = write_buffers {
            opts.set_write_buffer_manager(wbm);
        }
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_size(8 << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_max_background_jobs(1);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
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
                    &Self::options(&self.cache, self.write_buffers.as_ref()),
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

    fn write(&mut self, batch: WriteBatch) -> Result<(), StateError> {
        let mut wb = rocksdb::WriteBatch::default();
        for (store, key, value) in &batch.ops {
            let cf = self.cf(*store)?;
            match value {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        let mut opts = WriteOptions::default();
        // Durability comes from the WAL, synced in `sync` at the points that need it.
        opts.set_sync(false);
        opts.disable_wal(!self.wal);
        self.db
            .write_opt(wb, &opts)
            .map_err(|cause| StateError::Rocks {
                store: "(batch)".into(),
                op: "write",
                cause,
            })
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
            batch.put(store, n.to_be_bytes().to_vec(), vec![7; 100]);
        }
        backend.write(batch).unwrap();
        backend.sync().unwrap();
        store
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
    fn a_lasting_database_logs_its_writes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut lasting = RocksBackend::open(dir.path()).unwrap();
        write_some(&mut lasting);
        assert!(wal_bytes(dir.path()) > 100_000, "the writes are in the log");
    }
}
