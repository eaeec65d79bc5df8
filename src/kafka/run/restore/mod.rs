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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use self::clock::Clock;
use self::writer::{BatchWriter, WriterGone};
use super::clients::RestoreContext;
use super::positions::{
    checkpoint_entry, decode_inputs, now_ms, position_note, Position, CHECKPOINT_NOTE,
    INPUTS_HEADER, READY_NOTE,
};
use super::task::TaskSetup;
use super::topics::Changelog;
use super::RunError;
use crate::engine::Engine;
use crate::state::{MemoryBackend, RocksBackend, StateBackend};

mod clock;
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
    pub restorer: &'a BaseConsumer<RestoreContext>,
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
    loop {
        match RocksBackend::open_shared(dir, setup.memory) {
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
    let mut backend: Box<dyn StateBackend> = Box::new(open_store(dir, id, setup, env)?);
    let ends = changelog_ends(setup, id, env.restorer)?;
    let from_beginning = Engine::read_note(backend.as_mut(), READY_NOTE)?.is_none();
    if from_beginning {
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
    let mut superseded = Vec::new();
    for (changelog, &(low, high)) in setup.plan.changelogs.iter().zip(&ends) {
        let from = recorded_position(backend.as_mut(), &changelog.topic)?;
        let reading = Reading {
            changelog,
            id,
            checker: &checker,
        };
        match reading.restore(backend.as_mut(), from, (low, high), env) {
            Ok(read) => {
                superseded.extend(
                    read.uncommitted
                        .iter()
                        .map(|key| (changelog.store.clone(), key.clone())),
                );
                stats.add(read);
            }
            Err(RestoreError::OutOfRange) => {
                // The changelog was recreated or truncated behind the store's
                // back: only a restore from scratch is trustworthy.
                tracing::warn!(task = id, topic = %changelog.topic, "recorded changelog position is gone; restoring from the beginning");
                drop(backend);
                wipe(dir)?;
                return restore_store(dir, id, setup, env);
            }
            Err(RestoreError::Run(e)) => return Err(e),
        }
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

/// The (low, high) watermarks of partition `id` of each changelog.
fn changelog_ends(
    setup: &TaskSetup<'_>,
    id: i32,
    restorer: &BaseConsumer<RestoreContext>,
) -> Result<Vec<(i64, i64)>, RunError> {
    setup
        .plan
        .changelogs
        .iter()
        .map(|c| {
            super::retry_kafka("read a changelog's offsets", setup.stop, || {
                let ends = restorer.fetch_watermarks(&c.topic, id, Duration::from_secs(10));
                if ends.as_ref().is_err_and(is_unknown_partition) {
                    refresh_metadata(restorer, &c.topic);
                }
                ends
            })
        })
        .collect()
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
    OutOfRange,
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

/// What reading one changelog partition did.
#[derive(Default)]
struct ChangelogRead {
    applied: u64,
    malformed: u64,
    /// Keys of the records skipped as uncommitted.
    uncommitted: Vec<Vec<u8>>,
    was_read: bool,
}

/// How often a long restore lets the run serve the group.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);

/// How long a restore may see neither a record nor the end of a changelog
/// before it asks for the changelog's metadata again.
const STALL_REFRESH: Duration = Duration::from_secs(5);

/// The reading of partition `id` of one changelog.
struct Reading<'a> {
    changelog: &'a Changelog,
    id: i32,
    checker: &'a Checker,
}

/// Whether a changelog read goes on after an error.
enum Flow {
    Go,
    End,
}

/// What to do with one changelog record.
enum Verdict {
    Apply,
    Malformed(String),
    Uncommitted,
}

impl Reading<'_> {
    /// Applies the partition from `from` (or the beginning) to its end,
    /// read_committed, and records the new position.
    fn restore(
        &self,
        backend: &mut dyn StateBackend,
        from: Option<Position>,
        (low, high): (i64, i64),
        env: &mut RestoreEnv<'_>,
    ) -> Result<ChangelogRead, RestoreError> {
        match from {
            // Compaction keeps offsets; a start past our position means records
            // we never saw were deleted.
            Some(f) if f.next < low || f.next > high => return Err(RestoreError::OutOfRange),
            Some(f) if f.is_end(high) => return Ok(ChangelogRead::default()),
            None if high == low => return Ok(ChangelogRead::default()),
            _ => {}
        }
        let topic = &self.changelog.topic;
        let mut tpl = TopicPartitionList::new();
        let offset = from.map_or(Offset::Beginning, |f| Offset::Offset(f.next));
        tpl.add_partition_offset(topic, self.id, offset)
            .map_err(|e| RunError::kafka("assign a changelog partition", e))?;
        env.restorer
            .assign(&tpl)
            .map_err(|e| RunError::kafka("assign a changelog partition", e))?;
        let store = backend.open_store(&self.changelog.store)?;
        // The changelog can give every record again: no need to log them.
        backend.begin_unlogged();
        let result = std::thread::scope(|scope| {
            let mut writer = BatchWriter::start(scope, &mut *backend, store).map_err(|e| {
                RunError::Setup(format!("cannot start the restore's writing thread: {e}"))
            })?;
            let read = self.read_to_end(&mut writer, env);
            // The writer's error, if it stopped, is the cause of the read's.
            let written = writer.finish();
            written.map_err(RestoreError::from).and(read)
        });
        let _ = env.restorer.unassign();
        // Durable before the position says they are there; and on a failed
        // read too, so that the backend logs its writes again.
        let ended = backend.end_unlogged();
        let (read, next) = result?;
        ended?;
        // Nothing read: the recorded position stands as it is.
        if let Some(next) = next {
            let position = Position {
                next,
                marker_follows: false,
            };
            Engine::write_note(backend, &position_note(topic), position.encode())?;
        }
        Ok(read)
    }

    /// Returns what was read and the position to record: after the last
    /// record, or at the first one skipped as uncommitted, so that the next
    /// restore judges those again until a commit has written over them.
    fn read_to_end(
        &self,
        writer: &mut BatchWriter<'_>,
        env: &mut RestoreEnv<'_>,
    ) -> Result<(ChangelogRead, Option<i64>), RestoreError> {
        let mut read = ChangelogRead {
            was_read: true,
            ..ChangelogRead::default()
        };
        let mut next = None;
        let mut first_skipped = None;
        let mut skipped_keys = HashSet::new();
        let mut clock = Clock::new();
        loop {
            if let Some(now) = clock.due() {
                self.look_after(&mut clock, now, env)?;
            }
            let polled = env.restorer.poll(Duration::from_millis(100));
            let Some(Ok(m)) = polled else {
                // Nothing new or an error: the clock is read now, for the
                // patience below, and again before the next poll.
                let idle = clock.idle();
                match polled {
                    Some(Err(e)) => match self.answer(e, idle)? {
                        Flow::End => break,
                        Flow::Go => {}
                    },
                    None if idle > RESTORE_PATIENCE => {
                        return Err(RunError::Setup(format!(
                            "changelog `{}` gave no record and no end for {RESTORE_PATIENCE:?}",
                            self.changelog.topic
                        ))
                        .into());
                    }
                    None | Some(Ok(_)) => {}
                }
                continue;
            };
            clock.progressed();
            next = Some(m.offset() + 1);
            let _ = crate::fault::reached("restore.record");
            match self.judge(&m, env.committed.as_ref()) {
                Verdict::Apply => {
                    let key = m.key().unwrap_or_default();
                    let written = match m.payload() {
                        Some(value) => writer.put(key, value),
                        None => writer.delete(key),
                    };
                    // The writer's error is the answer (see `restore`).
                    if let Err(WriterGone) = written {
                        break;
                    }
                    read.applied += 1;
                }
                Verdict::Malformed(reason) => {
                    read.malformed += 1;
                    tracing::error!(
                        topic = %self.changelog.topic,
                        partition = self.id,
                        offset = m.offset(),
                        reason = %reason,
                        "malformed changelog record skipped"
                    );
                }
                Verdict::Uncommitted => {
                    first_skipped.get_or_insert(m.offset());
                    let key = m.key().unwrap_or_default().to_vec();
                    if skipped_keys.insert(key.clone()) {
                        read.uncommitted.push(key);
                    }
                }
            }
        }
        Ok((read, first_skipped.or(next)))
    }

    /// What a long restore does every little while: lets the run serve the
    /// group, and asks for metadata again when nothing comes.
    fn look_after(
        &self,
        clock: &mut Clock,
        now: Instant,
        env: &mut RestoreEnv<'_>,
    ) -> Result<(), RunError> {
        if now - clock.last_keep_alive >= KEEP_ALIVE_EVERY {
            (env.keep_alive)()?;
            clock.last_keep_alive = now;
        }
        // No record and no end for a while: after a broker restart the
        // restorer may hold metadata without the partition's leader, and
        // would fetch nothing until its next periodic refresh.
        if now - clock.last_progress >= STALL_REFRESH && now - clock.last_refresh >= STALL_REFRESH {
            tracing::debug!(topic = %self.changelog.topic, "restore stalled; refreshing metadata");
            refresh_metadata(env.restorer, &self.changelog.topic);
            clock.last_refresh = now;
        }
        Ok(())
    }

    /// The answer to an error of the changelog read, `idle` after its last
    /// record: the end of the partition, one to wait out, or a failure.
    fn answer(&self, e: KafkaError, idle: Duration) -> Result<Flow, RestoreError> {
        match e {
            KafkaError::PartitionEOF(_) => Ok(Flow::End),
            e if is_out_of_range(&e) => Err(RestoreError::OutOfRange),
            // The restorer's group is never used (see RestoreContext).
            e if e.rdkafka_error_code()
                == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed) =>
            {
                Ok(Flow::Go)
            }
            e if crate::kafka::acls::authorization_code(&e).is_some() => {
                let denied = crate::kafka::acls::topic_denied(
                    crate::kafka::acls::Operation::Read,
                    &self.changelog.topic,
                    &e,
                );
                Err(RunError::from(denied).into())
            }
            // Connection trouble (a broker restarting): librdkafka
            // reconnects by itself, with its own backoff. No sleep here:
            // the long-lived restorer queues an error per failed connect
            // during an outage, and a pause for each of that backlog
            // kept a restore after a 60 s outage waiting 76 s more.
            e if idle < RESTORE_PATIENCE => {
                let kind = format!("changelog read {}: {e}", self.changelog.topic);
                if let Some(held_back) = super::repeats::CLIENT_ERRORS.admit(&kind) {
                    tracing::warn!(topic = %self.changelog.topic, error = %e, held_back, "changelog read error; retrying");
                }
                Ok(Flow::Go)
            }
            e => Err(RunError::kafka("read a changelog", e).into()),
        }
    }

    fn judge(
        &self,
        m: &BorrowedMessage<'_>,
        committed: Option<&HashMap<String, Option<i64>>>,
    ) -> Verdict {
        let Some(key) = m.key().filter(|k| !k.is_empty()) else {
            return Verdict::Malformed("the record has no key".into());
        };
        if let Err(reason) = self
            .checker
            .0
            .check_entry(&self.changelog.store, key, m.payload())
        {
            return Verdict::Malformed(reason);
        }
        let Some(committed) = committed else {
            return Verdict::Apply;
        };
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == INPUTS_HEADER))
            .map(|h| h.value.unwrap_or_default());
        let Some(header) = header else {
            return Verdict::Apply; // written by exactly-once, or by an older version
        };
        let Some(inputs) = std::str::from_utf8(header).ok().and_then(decode_inputs) else {
            return Verdict::Malformed(format!("unreadable {INPUTS_HEADER} header"));
        };
        let is_committed = |(topic, next): &(&str, i64)| match committed.get(*topic) {
            Some(Some(done)) => next <= done,
            Some(None) => false,
            None => true, // no longer an input of this task
        };
        if inputs.iter().all(is_committed) {
            Verdict::Apply
        } else {
            Verdict::Uncommitted
        }
    }
}

fn is_out_of_range(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange)
        || e.to_string().contains("out of range")
}
