//! Durable operator state behind one trait, with a RocksDB implementation and
//! an in-memory twin that tests and benchmarks compare it with.
//!
//! Operators never talk to a backend directly on their hot path: they read and
//! write a [`Table`], a write-back cache that loads entries on first use and
//! hands its changes to the backend in one atomic [`WriteBatch`] per commit.
//! A commit therefore moves every store, the timers and the clock together,
//! which is what makes a state directory consistent at every commit point.
//! Scratch state, which nothing recovers, takes a commit in parts instead
//! (see [`Committed`]), so that no batch holds a whole commit.

mod batch;
mod key;
mod memory;
mod rocks;
mod table;

use std::path::PathBuf;

pub use batch::{Change, WriteBatch};
pub(crate) use key::Key;
pub use memory::MemoryBackend;
pub use rocks::{RocksBackend, SharedMemory};
pub(crate) use table::Stored;
pub use table::Table;

/// How far a commit of a table (or an operator's tables) went.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Every change is in the batch.
    All,
    /// The batch reached its limit first ([`WriteBatch::is_full`]): write and
    /// empty it, then commit again for the rest.
    Partly,
}

/// A visitor of store entries, for [`StateBackend::scan`].
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// A visitor that says whether to go on, for [`StateBackend::scan_after`].
pub type VisitWhile<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StateError> + 'a;

/// Identifies a store (one per operator, plus the engine's own) within a backend.
pub type StoreId = usize;

/// A key-value state backend with named stores.
///
/// Calls block (RocksDB does I/O): the live runtime calls them from a
/// dedicated thread, never from an async worker.
pub trait StateBackend: Send {
    /// Opens (creating if needed) the store called `name`.
    fn open_store(&mut self, name: &str) -> Result<StoreId, StateError>;

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Calls `visit` for every entry of `store`, in key order.
    fn scan(&self, store: StoreId, visit: &mut Visit<'_>) -> Result<(), StateError>;

    /// Calls `visit` for the entries of `store` whose keys come after `after`
    /// (all of them for `None`), in key order, until it returns `false`: how
    /// a sweep resumes where the previous one stopped.
    fn scan_after(
        &self,
        store: StoreId,
        after: Option<&[u8]>,
        visit: &mut VisitWhile<'_>,
    ) -> Result<(), StateError>;

    /// Whether `store` holds no entry.
    fn is_empty(&self, store: StoreId) -> Result<bool, StateError>;

    /// About how many entries `store` holds (a metric, not a fact to rely
    /// on): exact by default, RocksDB's estimate where it keeps one.
    fn approximate_len(&self, store: StoreId) -> Result<u64, StateError> {
        let mut n = 0;
        self.scan(store, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Applies `batch` atomically. Later changes of a key override earlier ones.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StateError>;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), StateError>;

    /// Makes older writes durable if they have waited long enough, without
    /// waiting for it: for a backend that does not log its writes (the
    /// live runtime's, whose changelogs hold them), called on every commit
    /// tick, busy or idle.
    fn flush_if_due(&mut self) {}

    /// From now on writes may skip the write-ahead log, until
    /// [`StateBackend::end_unlogged`]: for writes that can be made again
    /// from elsewhere after a crash (a restore, from its changelog), where
    /// the log only costs time. RocksDB also loads stores that are empty
    /// when first written as table files: their writes are neither read
    /// back nor made durable by [`StateBackend::sync`] until the load ends.
    fn begin_unlogged(&mut self) {}

    /// Makes the writes since [`StateBackend::begin_unlogged`] durable
    /// (RocksDB ingests the loaded table files and flushes the memtables)
    /// and logs writes again. Call it before writing anything that says
    /// those writes happened.
    fn end_unlogged(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Whether nothing reads this state after the process ends (the
    /// in-memory backend, a replay's temporary RocksDB state). A commit may
    /// then reach it in several writes: a commit is atomic so that a crash
    /// leaves the state at a commit point, and after a crash there is no
    /// state to look at.
    fn is_scratch(&self) -> bool {
        false
    }

    /// The name of a store, for diagnostics.
    fn store_name(&self, store: StoreId) -> &str;

    /// Where the state lives (a directory, or `memory`), for error messages.
    fn location(&self) -> String;
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Rocksdb,
    Memory,
}

/// Failures of state storage. Each names the store or directory involved and
/// carries its cause in the message (the field is not a `source`, so that a
/// chain printer does not print the cause twice).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open state directory {dir}: {cause}")]
    Open { dir: PathBuf, cause: rocksdb::Error },
    #[error("state store `{store}`: {op} failed: {cause}")]
    Rocks {
        store: String,
        op: &'static str,
        cause: rocksdb::Error,
    },
    #[error("state store `{store}`: cannot decode the entry for key {key}: {cause}")]
    Decode {
        store: String,
        key: String,
        cause: postcard::Error,
    },
    #[error("state store `{store}`: cannot encode an entry: {cause}")]
    Encode {
        store: String,
        cause: postcard::Error,
    },
    #[error(
        "state directory {dir} belongs to app `{found}`, not `{expected}`; use another --state-dir"
    )]
    AppMismatch {
        dir: String,
        found: String,
        expected: String,
    },
    #[error("state directory {dir}: {message}")]
    Corrupt { dir: String, message: String },
    #[error("state directory {dir}: cannot {op}: {cause}")]
    Io {
        dir: String,
        op: &'static str,
        cause: std::io::Error,
    },
}

impl StateError {
    /// Whether opening failed because another owner holds the directory's
    /// lock (RocksDB's `LOCK` file): another thread of this process that
    /// has not closed the store yet, or another process.
    pub fn is_lock_held(&self) -> bool {
        match self {
            StateError::Open { cause, .. } => {
                cause.kind() == rocksdb::ErrorKind::IOError
                    && cause.as_ref().to_ascii_lowercase().contains("lock")
            }
            _ => false,
        }
    }
}

/// Renders a binary key for an error message.
pub(crate) fn show_key(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    crate::record::oci::printable(&text)
}
