//! A restore's writes into the store, on a thread of their own.
//!
//! Reading a changelog (librdkafka's queue, the check of each record) and
//! writing the store (RocksDB's memtable inserts, or for an empty store
//! sorting its changes into table files) each take about half of a
//! restore's time. With the writes on a second thread they overlap: while
//! the store takes one batch, the reader fills the next.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use crate::state::{StateBackend, StateError, StoreId, WriteBatch};

/// Entries per batch handed to the writer.
pub(super) const BATCH_ENTRIES: usize = 20_000;

/// Batches the reader may fill ahead of the writer (about 2 MiB each for
/// a dedup store's changelog). An empty store's load writes a table file
/// every few MiB of changes, a sort and a write that take several
/// batches' time: with two batches in all the reader stood still
/// meanwhile, and the table files gained nothing (a 1,000,000-key
/// restore with 16 MiB files: 1.2 to 1.35 million records/s, as through
/// the memtable).
const IN_FLIGHT: usize = 6;

/// The reader's end: fills a batch, hands it over when full, and gets
/// emptied batches back to fill again ([`IN_FLIGHT`] in all, so some are
/// filled while another is written).
pub(super) struct BatchWriter<'scope> {
    filling: WriteBatch,
    to_writer: Option<SyncSender<WriteBatch>>,
    emptied: Receiver<WriteBatch>,
    writer: ScopedJoinHandle<'scope, Result<(), StateError>>,
}

/// The writer stopped (its store refused a write): [`BatchWriter::finish`]
/// says why.
#[derive(Debug)]
pub(super) struct WriterGone;

impl<'scope> BatchWriter<'scope> {
    /// Starts the writing thread on `backend`.
    pub(super) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        backend: &'scope mut dyn StateBackend,
    ) -> std::io::Result<Self> {
        let (to_writer, full) = mpsc::sync_channel::<WriteBatch>(IN_FLIGHT);
        let (give_back, emptied) = mpsc::sync_channel::<WriteBatch>(IN_FLIGHT + 1);
        for _ in 0..IN_FLIGHT {
            give_back
                .send(WriteBatch::default())
                .expect("the receiver is held right here");
        }
        let writer = std::thread::Builder::new()
            .name("sluice-restore-write".into())
            .spawn_scoped(scope, move || write_batches(backend, &full, &give_back))?;
        Ok(BatchWriter {
            filling: WriteBatch::default(),
            to_writer: Some(to_writer),
            emptied,
            writer,
        })
    }

    pub(super) fn put(
        &mut self,
        store: StoreId,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriterGone> {
        self.filling.put(store, key, value);
        self.hand_over_if_full()
    }

    pub(super) fn delete(&mut self, store: StoreId, key: &[u8]) -> Result<(), WriterGone> {
        self.filling.delete(store, key);
        self.hand_over_if_full()
    }

    fn hand_over_if_full(&mut self) -> Result<(), WriterGone> {
        if self.filling.len() < BATCH_ENTRIES {
            return Ok(());
        }
        self.hand_over()
    }

    fn hand_over(&mut self) -> Result<(), WriterGone> {
        let next = self.emptied.recv().map_err(|_| WriterGone)?;
        let full = std::mem::replace(&mut self.filling, next);
        let sender = self.to_writer.as_ref().ok_or(WriterGone)?;
        sender.send(full).map_err(|_| WriterGone)
    }

    /// Writes what is left and waits until the store holds every batch.
    pub(super) fn finish(mut self) -> Result<(), StateError> {
        let handed = match self.filling.is_empty() {
            true => Ok(()),
            false => self.hand_over(),
        };
        // The writer ends once its queue is closed and drained.
        self.to_writer = None;
        let written = match self.writer.join() {
            Ok(written) => written,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        written?;
        // Without a write error the writer takes every batch it is given.
        debug_assert!(handed.is_ok());
        Ok(())
    }
}

fn write_batches(
    backend: &mut dyn StateBackend,
    full: &Receiver<WriteBatch>,
    give_back: &SyncSender<WriteBatch>,
) -> Result<(), StateError> {
    for mut batch in full {
        backend.write(&batch)?;
        batch.clear();
        // The reader may have finished and gone; nothing to give back then.
        let _ = give_back.send(batch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::state::{MemoryBackend, RocksBackend};

    /// Writes `n` changes through a writer: puts of `k{i}`, every third
    /// change deleting the key put just before it. Returns what the store
    /// must hold.
    fn write_keys(
        backend: &mut dyn StateBackend,
        n: usize,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StateError> {
        let store = backend.open_store("s")?;
        let mut model = BTreeMap::new();
        std::thread::scope(|scope| {
            let mut writer = BatchWriter::start(scope, backend).expect("spawn");
            for i in 0..n {
                let done = match i % 3 {
                    2 => {
                        let key = format!("k{:07}", i - 1).into_bytes();
                        model.remove(&key);
                        writer.delete(store, &key)
                    }
                    _ => {
                        let key = format!("k{i:07}").into_bytes();
                        model.insert(key.clone(), i.to_le_bytes().to_vec());
                        writer.put(store, &key, &i.to_le_bytes())
                    }
                };
                if done.is_err() {
                    break;
                }
            }
            writer.finish()
        })?;
        Ok(model)
    }

    #[test]
    fn every_batch_reaches_the_store_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = RocksBackend::open_scratch(dir.path()).unwrap();
        // Several full batches and a partial last one.
        let expected = write_keys(&mut backend, BATCH_ENTRIES * 3 + 7).unwrap();
        let store = backend.open_store("s").unwrap();
        let mut found = BTreeMap::new();
        backend
            .scan(store, &mut |k, v| {
                found.insert(k.to_vec(), v.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(found.len(), expected.len());
        assert!(found == expected, "the store differs from what was written");
    }

    /// A backend whose writes fail after the first.
    struct Refusing(MemoryBackend, u32);

    #[test]
    fn a_refused_write_is_the_answer_and_nothing_hangs() {
        let mut backend = Refusing(MemoryBackend::new(), 0);
        let err = write_keys(&mut backend, BATCH_ENTRIES * 5).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(backend.1, 2, "the writer stops at the refused batch");
    }

    impl StateBackend for Refusing {
        fn open_store(&mut self, name: &str) -> Result<StoreId, StateError> {
            self.0.open_store(name)
        }
        fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            self.0.get(store, key)
        }
        fn scan(
            &self,
            store: StoreId,
            visit: &mut crate::state::Visit<'_>,
        ) -> Result<(), StateError> {
            self.0.scan(store, visit)
        }
        fn scan_after(
            &self,
            store: StoreId,
            after: Option<&[u8]>,
            visit: &mut crate::state::VisitWhile<'_>,
        ) -> Result<(), StateError> {
            self.0.scan_after(store, after, visit)
        }
        fn is_empty(&self, store: StoreId) -> Result<bool, StateError> {
            self.0.is_empty(store)
        }
        fn write(&mut self, batch: &WriteBatch) -> Result<(), StateError> {
            self.1 += 1;
            if self.1 > 1 {
                return Err(StateError::Corrupt {
                    dir: "(test)".into(),
                    message: "disk full".into(),
                });
            }
            self.0.write(batch)
        }
        fn sync(&mut self) -> Result<(), StateError> {
            self.0.sync()
        }
        fn store_name(&self, store: StoreId) -> &str {
            self.0.store_name(store)
        }
        fn location(&self) -> String {
            self.0.location()
        }
    }
}
