//! The RocksDB backend: one database per state directory, one column family
//! per store, so that a commit across all stores is a single atomic write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// What `sluice run` gives all its task stores: a 16 MiB block cache
    /// and 48 MiB of memtables.
    pub fn for_live_run() -> Self {
        Self::new(16 << 20, 48 << 20)
    }

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

/// A change of a batch by its place in the order of [`sorted_changes`]:
/// store, key prefix, key, and its index in the batch.
type SortedChange<'b> = (StoreId, u128, &'b [u8], u32);

/// The changes of `batch` sorted by store and key; changes of one key keep
/// the order they came in (the index breaks the tie).
fn sorted_changes(batch: &WriteBatch) -> Vec<SortedChange<'_>> {
    let mut order: Vec<SortedChange<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, (store, key, _))| (store, key_prefix(key), key, len_u32(i)))
        .collect();
    order.sort_unstable();
    order
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a commit holds fewer than 4 billion changes")
}

/// A column family's memtable size.
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// The blocks a memtable allocates at a time. RocksDB's default is an
/// eighth of the memtable (1 MiB here), and every column family with a
/// write holds at least one: the live runtime's 6 stores per task, most of
/// them (meta, timers, small operator stores) written a few hundred bytes
/// per commit, held 1 MiB each whatever they wrote.
const ARENA_BLOCK_BYTES: usize = 256 << 10;
/// RocksDB's defaults, set explicitly so that a bulk load can put them back.
const L0_SLOWDOWN: i32 = 20;
const L0_STOP: i32 = 36;

/// A column family's options while unlogged writes load it (a restore), as
/// RocksDB's `PrepareForBulkLoad` and Kafka Streams' restore do: no
/// compaction (it would rewrite what is still being loaded; it runs once
/// the load ends), so no stall on the level-0 file count either. (Larger
/// memtables were tried too: slower inserts into a deeper skip list, and
/// more memory.)
const BULK_LOAD: [(&str, &str); 3] = [
    ("disable_auto_compactions", "true"),
    ("level0_slowdown_writes_trigger", "1000000"),
    ("level0_stop_writes_trigger", "1000000"),
];

/// What makes a database's writes survive a crash of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The write-ahead log: every write survives (`sluice replay
    /// --state-dir`, `sluice state`).
    Logged,
    /// Changelog topics hold every committed write (the live runtime), so
    /// the store skips the write-ahead log, as Kafka Streams' RocksDB stores
    /// do. A crash leaves it at its last flush: column families are flushed
    /// together (RocksDB's atomic flush, never in the middle of a write
    /// batch), so the changelog positions it then holds are those of the
    /// data beside them, and a restore reads the changelogs on from there.
    Changelogged,
    /// Thrown away at the end (a replay's temporary state): no log, no sync.
    Scratch,
}

pub struct RocksBackend {
    db: DB,
    /// One block cache shared by all column families.
    cache: rocksdb::Cache,
    /// The memtable budget, this database's own or shared with others.
    write_buffers: rocksdb::WriteBufferManager,
    dir: PathBuf,
    names: Vec<String>,
    durability: Durability,
    /// A changelogged database's first write since its last flush.
    unflushed_since: Option<Instant>,
    /// How long a changelogged database keeps a write unflushed.
    flush_after: Duration,
    /// Writes skip the write-ahead log (between `begin_unlogged` and
    /// `end_unlogged`).
    unlogged: bool,
    /// The bulk load under way between `begin_unlogged` and `end_unlogged`.
    loading: Option<load::Load>,
    /// Bytes a load gathers before it writes table files (tests lower it).
    load_spill_bytes: usize,
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir`, with every column family it already has.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, None, Durability::Logged, &[])
    }

    /// Opens a scratch database in `dir`, one that is thrown away when the
    /// process ends (a replay's temporary state): its writes skip the
    /// write-ahead log, which exists only to recover after a crash, and
    /// `sync` does nothing. Never for state that must outlive the process.
    pub fn open_scratch(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, None, Durability::Scratch, &[])
    }

    /// Opens the database in `dir` for state whose every committed write is
    /// also in a changelog (the live runtime's task stores), within a memory
    /// budget shared with others. Its writes skip the write-ahead log; a
    /// crash takes it back to its last flush, a consistent point at most
    /// about 30 s old, and its changelog positions say where the restore
    /// goes on from. `sync` flushes.
    ///
    /// `stores`: the stores it will hold, created with the database if
    /// missing: RocksDB writes and reads back its options file once for
    /// them all, instead of once per store created later.
    pub fn open_changelogged(
        dir: &Path,
        shared: &SharedMemory,
        stores: &[&str],
    ) -> Result<Self, StateError> {
        Self::open_with(dir, Some(shared), Durability::Changelogged, stores)
    }

    fn open_with(
        dir: &Path,
        shared: Option<&SharedMemory>,
        durability: Durability,
        stores: &[&str],
    ) -> Result<Self, StateError> {
        let scratch = durability == Durability::Scratch;
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
        let mut opts = Self::options(&cache, &write_buffers, scratch);
        // Without the log, only flushing all column families together keeps
        // what a crash leaves consistent across them.
        opts.set_atomic_flush(durability == Durability::Changelogged);
        let open_err = |cause| StateError::Open {
            dir: dir.to_owned(),
            cause,
        };
        let mut existing = if dir.join("CURRENT").exists() {
            DB::list_cf(&opts, dir).map_err(open_err)?
        } else {
            vec!["default".to_owned()]
        };
        for store in stores {
            if !existing.iter().any(|name| name == store) {
                existing.push((*store).to_owned());
            }
        }
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
            durability,
            unflushed_since: None,
            flush_after: flush::CHANGELOGGED_FLUSH_AFTER,
            unlogged: false,
            loading: None,
            load_spill_bytes: load::SPILL_BYTES,
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
        opts.set_arena_block_size(ARENA_BLOCK_BYTES);
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
        // A logged database's durability comes from the WAL, synced in
        // `sync` at the points that need it; a changelogged one's from its
        // changelogs and flushes; unlogged writes get theirs from
        // `end_unlogged`'s flush.
        opts.set_sync(false);
        opts.disable_wal(self.durability != Durability::Logged || self.unlogged);
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
                    &Self::options(&self.cache, &self.write_buffers, self.is_scratch()),
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
        self.int_property(store, "rocksdb.estimate-num-keys")
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
        if let Some(mut load) = self.loading.take() {
            let written = self.write_loading(&mut load, batch);
            self.loading = Some(load);
            return written;
        }
        self.write_sorted(batch)
    }

    fn flush_if_due(&mut self) {
        self.start_flush_if_due();
    }

    fn is_scratch(&self) -> bool {
        self.durability == Durability::Scratch
    }

    fn begin_unlogged(&mut self) {
        if !self.is_scratch() && self.loading.is_none() {
            let load = load::Load::new(&self.dir, self.load_spill_bytes);
            // Files of a load a crash interrupted: never ingested, never needed.
            load.discard_files();
            self.loading = Some(load);
            self.unlogged = true;
        }
    }

    fn end_unlogged(&mut self) -> Result<(), StateError> {
        let Some(mut load) = self.loading.take() else {
            return Ok(());
        };
        let ingested = self.ingest(&mut load);
        let stores = load.memtable_stores();
        let flushed = self.flush(&stores, true);
        self.unlogged = false;
        // Compaction takes up what the load left in level 0 from now on.
        let (slowdown, stop) = (L0_SLOWDOWN.to_string(), L0_STOP.to_string());
        let normal = [
            ("disable_auto_compactions", "false"),
            ("level0_slowdown_writes_trigger", slowdown.as_str()),
            ("level0_stop_writes_trigger", stop.as_str()),
        ];
        // Every store gets its settings back, whatever failed before.
        let tuned = stores
            .into_iter()
            .map(|store| self.tune(store, &normal))
            .fold(Ok(()), Result::and);
        ingested.and(flushed).and(tuned)
    }

    fn sync(&mut self) -> Result<(), StateError> {
        match self.durability {
            Durability::Scratch => Ok(()),
            Durability::Logged => self.db.flush_wal(true).map_err(|cause| StateError::Rocks {
                store: "(wal)".into(),
                op: "sync",
                cause,
            }),
            Durability::Changelogged => {
                let stores = self.stores_to_flush()?;
                self.flush(&stores, true)?;
                self.unflushed_since = None;
                Ok(())
            }
        }
    }

    fn store_name(&self, store: StoreId) -> &str {
        &self.names[store]
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

impl RocksBackend {
    /// Writes `batch` through the memtables, sorted by store and key.
    fn write_sorted(&mut self, batch: &WriteBatch) -> Result<(), StateError> {
        let cfs = (0..self.names.len())
            .map(|store| self.cf(store))
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted by store and key, each memtable takes its keys in order, and
        // RocksDB's skip list inserts a key next to the previous one without
        // searching for its place. Changes of one key keep their order (the
        // index breaks the tie): later ones still win.
        let order = sorted_changes(batch);
        // Scratch state takes a large commit in slices: no copy of the whole
        // commit in RocksDB's format, and no memtable far past its size.
        let slice = if self.is_scratch() {
            SCRATCH_SLICE_BYTES
        } else {
            usize::MAX
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
        self.write_rocks(wb)?;
        if self.durability == Durability::Changelogged {
            self.unflushed_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }
}

mod flush;
mod load;
#[cfg(test)]
mod tests;
