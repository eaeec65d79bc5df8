//! When and how a changelogged database flushes its memtables: it writes
//! no log, so a flush is what makes its writes survive a crash.

use std::time::{Duration, Instant};

use super::{RocksBackend, L0_SLOWDOWN};
use crate::state::{StateError, StoreId};

/// How long a changelogged database keeps a write only in its memtables
/// before it flushes it: a crash takes the store back at most about this
/// far, and its checkpoint time (see `delete.retention.ms` in the restore)
/// is then at most about this old.
pub(super) const CHANGELOGGED_FLUSH_AFTER: Duration = Duration::from_secs(30);

impl RocksBackend {
    pub(super) fn int_property(&self, store: StoreId, name: &str) -> Result<u64, StateError> {
        let value = self
            .db
            .property_int_value_cf(self.cf(store)?, name)
            .map_err(|cause| StateError::Rocks {
                store: self.names[store].clone(),
                op: "read a property",
                cause,
            })?;
        Ok(value.unwrap_or(0))
    }

    /// The stores whose memtables hold writes that are not in table files
    /// yet. Atomic flush needs all of them flushed together; the others are
    /// left out, so that a flush never waits on their level 0.
    pub(super) fn stores_to_flush(&self) -> Result<Vec<StoreId>, StateError> {
        let mut stores = Vec::new();
        for store in 0..self.names.len() {
            if self.int_property(store, "rocksdb.num-entries-active-mem-table")? > 0
                || self.int_property(store, "rocksdb.num-immutable-mem-table")? > 0
            {
                stores.push(store);
            }
        }
        Ok(stores)
    }

    /// Whether RocksDB would make a flush of `stores` wait (even one that
    /// is not asked to): for a memtable already being flushed, or for
    /// compaction while level 0 is near its slowdown trigger.
    pub(super) fn flush_would_wait(&self, stores: &[StoreId]) -> Result<bool, StateError> {
        for &store in stores {
            if self.int_property(store, "rocksdb.num-immutable-mem-table")? > 0
                || self.int_property(store, "rocksdb.num-files-at-level0")? + 1
                    >= L0_SLOWDOWN as u64
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Flushes the memtables of `stores` together (atomic flush); `wait`:
    /// until the table files are written.
    pub(super) fn flush(&self, stores: &[StoreId], wait: bool) -> Result<(), StateError> {
        let cfs = stores
            .iter()
            .map(|&store| self.cf(store))
            .collect::<Result<Vec<_>, _>>()?;
        if cfs.is_empty() {
            return Ok(());
        }
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(wait);
        self.db
            .flush_cfs_opt(&cfs, &opts)
            .map_err(|cause| StateError::Rocks {
                store: "(stores flushed together)".into(),
                op: "flush",
                cause,
            })
    }

    /// Starts a flush in the background (the caller does not wait) once a
    /// write has waited [`CHANGELOGGED_FLUSH_AFTER`] in the memtables, so
    /// that a crash never takes the store far back: memtables fill and
    /// flush by themselves only under heavy writes. A flush that RocksDB
    /// would hold up, or that fails, is tried again later: the changelogs
    /// still hold everything.
    pub(super) fn start_flush_if_due(&mut self) {
        // Only a changelogged database ever has unflushed writes counted.
        let due = self
            .unflushed_since
            .is_some_and(|since| since.elapsed() >= self.flush_after);
        if !due || self.unlogged {
            return;
        }
        let started = self.stores_to_flush().and_then(|stores| {
            if self.flush_would_wait(&stores)? {
                return Ok(false);
            }
            self.flush(&stores, false).map(|()| true)
        });
        match started {
            Ok(true) => self.unflushed_since = None,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "flushing the store failed; trying again later");
                self.unflushed_since = Some(Instant::now());
            }
        }
    }
}
