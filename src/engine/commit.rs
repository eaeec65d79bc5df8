//! Commits: collecting the changes of every store, the timers and the
//! clock, writing them (whole, or in parts for scratch state) or handing
//! them to the live runtime as changelog entries; the driver's notes in the
//! meta store; and the checks a restore makes of changelog records.

use crate::state::{Committed, StateBackend, StateError, WriteBatch};

use super::{timers, Engine, EngineError, META_STORE, STATE_FORMAT, TIMER_STORE};

/// State changes collected for one commit.
#[derive(Debug)]
pub struct Changes {
    batch: WriteBatch,
    /// Driver bookkeeping written with the batch but not part of the changelog.
    local: WriteBatch,
}

impl Changes {
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// Writes changelog entries, as [`Engine::changelog`] yields them, into a
/// backend before an engine is opened on it: how a task's state is restored
/// from its changelog topics.
pub fn restore<'e>(
    backend: &mut dyn StateBackend,
    entries: impl IntoIterator<Item = (&'e str, &'e [u8], Option<&'e [u8]>)>,
) -> Result<usize, StateError> {
    let mut batch = WriteBatch::default();
    for (store, key, value) in entries {
        let id = backend.open_store(store)?;
        match value {
            Some(v) => batch.put(id, key, v),
            None => batch.delete(id, key),
        }
    }
    let n = batch.len();
    backend.write(&batch)?;
    Ok(n)
}

impl Engine {
    /// Adds a driver's own bookkeeping entry (such as the changelog position
    /// the state reflects) to a commit, in the engine's meta store. It is
    /// written with the commit but is not a changelog entry.
    pub fn note_in_commit(&self, changes: &mut Changes, key: &[u8], value: Vec<u8>) {
        changes.local.put(self.meta, key, &value);
    }

    /// Reads a driver's bookkeeping entry from a backend's meta store
    /// (before an engine is opened on it).
    pub fn read_note(
        backend: &mut dyn StateBackend,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let meta = backend.open_store(META_STORE)?;
        backend.get(meta, key)
    }

    /// Writes a driver's bookkeeping entry straight into a backend's meta
    /// store (after a restore, before an engine is opened on it).
    pub fn write_note(
        backend: &mut dyn StateBackend,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let meta = backend.open_store(META_STORE)?;
        let mut batch = WriteBatch::default();
        batch.put(meta, key, &value);
        backend.write(&batch)
    }

    /// Whether a changelog record of `store` is one the store can hold: a
    /// restore skips those it cannot (one bad record must not keep a task
    /// from opening). Deletions always can.
    pub fn check_entry(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let Some(value) = value else {
            return Ok(());
        };
        match store {
            META_STORE => check_meta_entry(&self.topo.app_id, key, value),
            TIMER_STORE => timers::check_entry(key, value),
            _ => match self.op_index(store) {
                Some(op) if !self.ops[op].accepts_entry(value) => Err(format!(
                    "not a state entry of operator `{}`",
                    self.op_names[op]
                )),
                _ => Ok(()),
            },
        }
    }

    /// The committed value of `key` in the store named `store`.
    pub fn committed_entry(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let id = match store {
            META_STORE => self.meta,
            TIMER_STORE => self.timer_store,
            _ => match self.op_index(store) {
                Some(op) => self.op_stores[op],
                None => return Ok(None),
            },
        };
        self.backend.get(id, key)
    }

    fn op_index(&self, store: &str) -> Option<usize> {
        let name = store.strip_prefix("op/")?;
        self.op_names.iter().position(|n| n == name)
    }

    /// Writes all state changed since the last commit, the timers and the clock, atomically.
    ///
    /// State that nothing reads after this process (see
    /// [`StateBackend::is_scratch`]) takes the commit in parts instead, each
    /// written once the batch holds
    /// [`EngineOptions::scratch_commit_part_bytes`](super::EngineOptions::scratch_commit_part_bytes)
    /// (a table or the timers stop there and go on after it): the batch never
    /// holds a whole commit, and the commit is not atomic.
    ///
    /// Its tables also keep their changes in their caches while those hold
    /// the whole store (see [`WriteBatch::set_keep_cached`]): a replay whose
    /// state fits them writes no operator state at all.
    /// [`Engine::into_backend`] writes it.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        self.commit_keeping_cached(true)
    }

    /// Commits every change, scratch state's cached ones too: for a caller
    /// that reads the backend next (tests count stored entries so).
    pub fn commit_all(&mut self) -> Result<(), EngineError> {
        self.commit_keeping_cached(false)
    }

    fn commit_keeping_cached(&mut self, keep_cached: bool) -> Result<(), EngineError> {
        if !self.backend.is_scratch() {
            let changes = self.prepare_commit()?;
            return self.apply_commit(changes);
        }
        let mut batch = std::mem::take(&mut self.spare_batch);
        batch.clear();
        batch.set_limit(Some(self.scratch_part_bytes));
        batch.set_keep_cached(keep_cached);
        self.collect_changes(&mut batch, &mut |backend, part| {
            backend.write(part)?;
            part.clear();
            Ok(())
        })?;
        self.spare_batch = batch;
        Ok(())
    }

    /// Collects every change since the last commit (operator stores, timers,
    /// clock) without writing it. The live runtime produces these to the
    /// changelog inside its transaction and only then calls
    /// [`Engine::apply_commit`]; if the transaction fails, it drops this
    /// engine and opens a new one on the store, which is still at the last
    /// commit, so no aborted write ever reaches it.
    pub fn prepare_commit(&mut self) -> Result<Changes, EngineError> {
        // The last commit's batch, emptied: its memory is reused, not
        // allocated (and faulted in) afresh on every commit.
        let mut batch = std::mem::take(&mut self.spare_batch);
        batch.clear();
        batch.set_limit(None);
        batch.set_keep_cached(false);
        self.collect_changes(&mut batch, &mut |_, _| Ok(()))?;
        Ok(Changes {
            batch,
            local: WriteBatch::default(),
        })
    }

    /// Adds the changes of each store to `batch` in turn, calling
    /// `after_store` after each, and whenever a store stops at the batch's
    /// limit (only a batch that `after_store` empties has one).
    fn collect_changes(
        &mut self,
        batch: &mut WriteBatch,
        after_store: &mut dyn FnMut(
            &mut dyn StateBackend,
            &mut WriteBatch,
        ) -> Result<(), StateError>,
    ) -> Result<(), EngineError> {
        for op in &mut self.ops {
            while op.commit(self.clock, self.backend.as_ref(), batch)? == Committed::Partly {
                after_store(self.backend.as_mut(), batch)?;
            }
            after_store(self.backend.as_mut(), batch)?;
        }
        while self
            .timers
            .commit(batch, self.timer_store, &self.op_names)?
            == Committed::Partly
        {
            after_store(self.backend.as_mut(), batch)?;
        }
        batch.put(self.meta, b"clock", &self.clock.to_be_bytes());
        batch.put(
            self.meta,
            b"timer_seq",
            &self.timers.next_seq().to_be_bytes(),
        );
        after_store(self.backend.as_mut(), batch)?;
        Ok(())
    }

    /// Writes changes collected by [`Engine::prepare_commit`].
    pub fn apply_commit(&mut self, changes: Changes) -> Result<(), EngineError> {
        let Changes { mut batch, local } = changes;
        batch.append(&local);
        self.backend.write(&batch)?;
        self.spare_batch = batch;
        Ok(())
    }

    /// The changes as changelog entries: (store name, key, value or deletion).
    pub fn changelog<'c>(
        &'c self,
        changes: &'c Changes,
    ) -> impl Iterator<Item = (&'c str, &'c [u8], Option<&'c [u8]>)> + 'c {
        changes
            .batch
            .iter()
            .map(|(store, key, change)| (self.backend.store_name(store), key, change.value()))
    }

    /// Commits and makes the state durable. Scratch state is read by
    /// nothing after this, so what its caches kept stays unwritten.
    pub fn close(mut self) -> Result<(), EngineError> {
        self.commit()?;
        self.backend.sync()?;
        Ok(())
    }

    /// Commits every change, makes the state durable and hands the backend
    /// back, so that another engine can continue from it (tests split runs
    /// this way).
    pub fn into_backend(mut self) -> Result<Box<dyn StateBackend>, EngineError> {
        self.commit_all()?;
        self.backend.sync()?;
        Ok(self.backend)
    }
}

/// Checks a meta entry's value the way [`Engine::open`] reads it.
fn check_meta_entry(app_id: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    match key {
        b"clock" | b"timer_seq" if value.len() != 8 => Err(format!(
            "meta entry `{}` is not a u64",
            String::from_utf8_lossy(key)
        )),
        b"app_id" if value != app_id.as_bytes() => {
            Err("meta entry `app_id` names another app".into())
        }
        b"format" if value != STATE_FORMAT.to_be_bytes() => {
            Err("meta entry `format` is another state format".into())
        }
        _ => Ok(()),
    }
}
