//! Restoring a task's store from its changelogs, reading and writing the
//! bookkeeping of `positions.rs` (where the store is in each changelog, and
//! its checkpoint).
//!
//! - A store restored before resumes from its recorded positions. One never
//!   completed starts over, empty, from the beginning; so does one that
//!   turns out to be behind its changelogs while its checkpoint is older
//!   than their `delete.retention.ms` (compaction may have removed
//!   tombstones it never saw, which would bring deleted state back).
//! - A record the store cannot hold (malformed) is skipped with an error log
//!   and counted, as a dead letter is for input: one bad record must not
//!   keep a task from opening.
//! - Under at-least-once the changelog can be ahead of the committed input
//!   offsets (a crash after the flush, before the offset commit). Each record
//!   carries the input positions it follows from; records past the committed
//!   offsets are skipped, so that the input processed again meets the state
//!   it met the first time and gives the same output again, instead of being
//!   deduplicated or debounced away.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use self::reading::{ChangelogRead, Reading, Start};
use super::clients::RestoreContext;
use super::positions::{
    checkpoint_entry, now_ms, position_note, Position, CHECKPOINT_NOTE, READY_NOTE,
};
use super::task::TaskSetup;
use super::RunError;
use crate::engine::Engine;
use crate::state::{MemoryBackend, RocksBackend, StateBackend};

mod clock;
mod queue;
mod reading;
mod writer;

/// How long a changelog read may go without progress (a broker outage)
/// before the restore gives up.
const RESTORE_PATIENCE: Duration = Duration::from_secs(300);

/// Statistics of one restore.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub records: u64,
    pub elapsed: Duration,
    pub from_beginning: bool,
    /// Changelog partitions that had to be read (the others were up to date).
    pub changelogs_read: u32,
    /// Records skipped because the store cannot hold them.
    pub malformed: u64,
    /// Records skipped because they follow from uncommitted input.
    pub uncommitted: u64,
}

impl RestoreStats {
    /// Whether the changelogs held any record past the store's positions.
    fn found_records(&self) -> bool {
        self.records + self.malformed + self.uncommitted > 0
    }

    fn add(&mut self, read: ChangelogRead) {
        self.records += read.applied;
        self.malformed += read.malformed;
        self.uncommitted += read.uncommitted.len() as u64;
        self.changelogs_read += u32::from(read.was_read);
    }
}

/// What a restore needs from the run besides the task's setup.
pub struct RestoreEnv<'a> {
    pub restorer: &'a Arc<BaseConsumer<RestoreContext>>,
    /// At-least-once: the group's committed offsets of the task's input
    /// partitions by topic (`None` when nothing was committed yet).
    pub committed: Option<HashMap<String, Option<i64>>>,
    /// Called every little while during a long restore, so that the group
    /// member stays alive (the main consumer is polled).
    pub keep_alive: &'a mut dyn FnMut() -> Result<(), RunError>,
}

/// A restored store.
pub struct Restored {
    pub backend: Box<dyn StateBackend>,
    pub stats: RestoreStats,
    /// (store, key) of the records skipped as uncommitted.
    pub superseded: Vec<(String, Vec<u8>)>,
}

/// How long a task waits for its store's lock: the thread of this instance
/// that owned the task before a rebalance closes it at its next poll, or
/// after the commit it is in (a lost assignment).
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

/// Opens task `id`'s store, waiting (and keeping the member in its group)
/// while another thread of this instance still holds it.
fn open_store(
    dir: &Path,
    id: i32,
    setup: &TaskSetup<'_>,
    env: &mut RestoreEnv<'_>,
) -> Result<RocksBackend, RunError> {
    let give_up = Instant::now() + LOCK_PATIENCE;
    let mut logged = false;
    let stores: Vec<&str> = setup.plan.stores.iter().map(String::as_str).collect();
    loop {
        match RocksBackend::open_changelogged(dir, setup.memory, &stores) {
            Err(e)
                if e.is_lock_held()
                    && Instant::now() < give_up
                    && !setup.stop.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                if !std::mem::replace(&mut logged, true) {
                    tracing::info!(
                        task = id,
                        "the store is still open elsewhere; waiting for it"
                    );
                }
                (env.keep_alive)()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.map_err(RunError::from),
        }
    }
}

/// Opens the store in `dir` and brings it to the end of its changelogs:
/// from the positions it recorded at its last commit when it has them and
/// they are safe to use, else from an empty store and the beginning.
pub fn restore_store(
    dir: &Path,
    id: i32,
    setup: &TaskSetup<'_>,
    env: &mut RestoreEnv<'_>,
) -> Result<Restored, RunError> {
    let started = Instant::now();
    let created = is_missing_or_empty(dir);
    let mut backend: Box<dyn StateBackend> = Box::new(open_store(dir, id, setup, env)?);
    let ends = changelog_ends(setup, id, env.restorer)?;
    let from_beginning = Engine::read_note(backend.as_mut(), READY_NOTE)?.is_none();
    // A store without the note may hold part of an interrupted restore; one
    // this call created holds nothing, and needs no second opening.
    if from_beginning && !created {
        drop(backend);
        wipe(dir)?;
        backend = Box::new(open_store(dir, id, setup, env)?);
    }
    let stale = match from_beginning {
        true => None,
        false => stale_checkpoint(backend.as_mut(), setup)?,
    };
    let checker = Checker::new(setup)?;
    let mut stats = RestoreStats {
        from_beginning,
        ..RestoreStats::default()
    };
    let mut readings = Vec::new();
    for (changelog, &ends) in setup.plan.changelogs.iter().zip(&ends) {
        let from = recorded_position(backend.as_mut(), &changelog.topic)?;
        match Start::new(from, ends) {
            Start::Nothing => {}
            Start::From(from) => readings.push(Reading {
                changelog,
                id,
                checker: &checker,
                from,
            }),
            Start::Gone => return restore_again(backend, dir, id, setup, env, &changelog.topic),
        }
    }
    let mut superseded = Vec::new();
    match reading::read_all(backend.as_mut(), &readings, env) {
        Ok(reads) => {
            for (reading, read) in readings.iter().zip(reads) {
                let store = &reading.changelog.store;
                superseded.extend(
                    read.uncommitted
                        .iter()
                        .map(|key| (store.clone(), key.clone())),
                );
                stats.add(read);
            }
        }
        Err(RestoreError::OutOfRange(topic)) => {
            return restore_again(backend, dir, id, setup, env, &topic)
        }
        Err(RestoreError::Run(e)) => return Err(e),
    }
    if let Some(reason) = stale.filter(|_| stats.found_records()) {
        // Behind its changelogs for longer than tombstones are kept: what it
        // missed may include deletions that compaction has removed since.
        tracing::info!(task = id, reason, "restoring the store from the beginning");
        drop(backend);
        wipe(dir)?;
        return restore_store(dir, id, setup, env);
    }
    Engine::write_note(backend.as_mut(), READY_NOTE, vec![1])?;
    let (key, value) = checkpoint_entry();
    Engine::write_note(backend.as_mut(), &key, value)?;
    backend.sync()?;
    stats.elapsed = started.elapsed();
    tracing::info!(
        task = id,
        records = stats.records,
        ms = stats.elapsed.as_millis() as u64,
        from_beginning = stats.from_beginning,
        changelogs_read = stats.changelogs_read,
        malformed = stats.malformed,
        uncommitted = stats.uncommitted,
        "task restored"
    );
    Ok(Restored {
        backend,
        stats,
        superseded,
    })
}

/// The changelog `topic` was recreated or truncated behind the store's back:
/// only a restore from scratch is trustworthy.
fn restore_again(
    backend: Box<dyn StateBackend>,
    dir: &Path,
    id: i32,
    setup: &TaskSetup<'_>,
    env: &mut RestoreEnv<'_>,
    topic: &str,
) -> Result<Restored, RunError> {
    tracing::warn!(
        task = id,
        topic,
        "recorded changelog position is gone; restoring from the beginning"
    );
    drop(backend);
    wipe(dir)?;
    restore_store(dir, id, setup, env)
}

/// The (low, high) watermarks of partition `id` of each changelog, asked
/// for all at once: each is a round trip to the broker, and a task has a
/// changelog per store.
fn changelog_ends(
    setup: &TaskSetup<'_>,
    id: i32,
    restorer: &BaseConsumer<RestoreContext>,
) -> Result<Vec<(i64, i64)>, RunError> {
    let stop = setup.stop;
    let ends_of = |topic: &str| {
        super::retry_kafka("read a changelog's offsets", stop, || {
            let ends = restorer.fetch_watermarks(topic, id, Duration::from_secs(10));
            if ends.as_ref().is_err_and(is_unknown_partition) {
                refresh_metadata(restorer, topic);
            }
            ends
        })
    };
    std::thread::scope(|scope| {
        let asks: Vec<_> = setup
            .plan
            .changelogs
            .iter()
            .map(|c| scope.spawn(|| ends_of(&c.topic)))
            .collect();
        asks.into_iter()
            .map(|ask| {
                ask.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Whether librdkafka's metadata lacks the partition: right after a broker
/// restart it can cache a topic without its partitions, and keep that until
/// the next periodic refresh (five minutes by default).
fn is_unknown_partition(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownPartition | C::UnknownTopicOrPartition | C::UnknownTopic)
    )
}

/// Asks the cluster for `topic`'s metadata now, so that the next attempt
/// sees its partitions; a failure only means the next attempt fails too.
fn refresh_metadata(restorer: &BaseConsumer<RestoreContext>, topic: &str) {
    if let Err(e) = restorer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        tracing::debug!(topic, error = %e, "metadata refresh failed");
    }
}

fn recorded_position(
    backend: &mut dyn StateBackend,
    topic: &str,
) -> Result<Option<Position>, RunError> {
    Ok(Engine::read_note(backend, &position_note(topic))?.and_then(|b| Position::decode(&b)))
}

/// Why the store's recorded positions cannot be trusted if it turns out to
/// be behind its changelogs: its checkpoint is older than the changelogs'
/// `delete.retention.ms`, or it has none.
fn stale_checkpoint(
    backend: &mut dyn StateBackend,
    setup: &TaskSetup<'_>,
) -> Result<Option<&'static str>, RunError> {
    let Some(retention) = setup.layout.changelog_retention else {
        return Ok(None);
    };
    let checkpoint = Engine::read_note(backend, CHECKPOINT_NOTE)?
        .and_then(|b| Some(u64::from_be_bytes(b.as_slice().try_into().ok()?)));
    Ok(match checkpoint {
        None => Some("the store has no checkpoint time"),
        Some(at) if now_ms().saturating_sub(at) > retention.as_millis() as u64 => {
            Some("the store's checkpoint is older than the changelogs' delete.retention.ms: deletions since may have been compacted away")
        }
        Some(_) => None,
    })
}

/// Whether `dir` does not exist or holds nothing (an unreadable one counts
/// as holding something: it is wiped, as before).
fn is_missing_or_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn wipe(dir: &Path) -> Result<(), RunError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RunError::Setup(format!(
            "cannot clear state directory {}: {e}",
            dir.display()
        ))),
    }
}

enum RestoreError {
    /// A changelog's recorded position is gone.
    OutOfRange(String),
    Run(RunError),
}

impl From<RunError> for RestoreError {
    fn from(e: RunError) -> Self {
        RestoreError::Run(e)
    }
}

impl From<crate::state::StateError> for RestoreError {
    fn from(e: crate::state::StateError) -> Self {
        RestoreError::Run(e.into())
    }
}

/// Checks changelog records against the stores' formats, with an engine of
/// the topology on an empty in-memory store.
struct Checker(Engine);

impl Checker {
    fn new(setup: &TaskSetup<'_>) -> Result<Checker, RunError> {
        let probe = Engine::open(
            Arc::clone(setup.topo),
            Box::new(MemoryBackend::default()),
            setup.engine_options,
        )?;
        Ok(Checker(probe))
    }
}

#[cfg(test)]
mod tests {
    use super::is_missing_or_empty;

    /// Only a store that a restore creates skips the wipe: a directory
    /// holding anything (part of an interrupted restore) is still wiped.
    #[test]
    fn only_a_missing_or_empty_directory_counts_as_created() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("task-0");
        assert!(is_missing_or_empty(&store), "missing");
        std::fs::create_dir(&store).unwrap();
        assert!(is_missing_or_empty(&store), "empty");
        std::fs::write(store.join("CURRENT"), b"MANIFEST-000001\n").unwrap();
        assert!(!is_missing_or_empty(&store), "holds a file");
    }
}
