//! Reading a task's changelog partitions into its store, all at once.
//!
//! The partitions a restore must read are assigned together, each split
//! off onto a queue of its own (its end-of-partition event then says which
//! changelog ended: librdkafka's carries only the partition number, the
//! same for every changelog of a task). librdkafka fetches them in the same
//! requests; the reading thread takes a run of records from each queue in
//! turn, in one call (see `queue.rs`), and one writing thread puts them into
//! their stores. The stores are
//! independent (one column family each), so their order does not matter,
//! and a small store no longer waits behind a large one: each changelog's
//! end costs one fetch wait for all of them, not one each.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::clock::Clock;
use super::queue::{ChangelogQueue, Record, Run};
use super::writer::{BatchWriter, WriterGone};
use super::{refresh_metadata, Checker, RestoreEnv, RestoreError, RESTORE_PATIENCE};
use crate::engine::Engine;
use crate::kafka::run::positions::{
    decode_inputs, position_note, Position, INPUTS_HEADER, INPUTS_HEADER_C,
};
use crate::kafka::run::topics::Changelog;
use crate::kafka::run::RunError;
use crate::state::{StateBackend, StoreId};

/// What reading one changelog partition did.
#[derive(Default)]
pub(super) struct ChangelogRead {
    pub(super) applied: u64,
    pub(super) malformed: u64,
    /// Keys of the records skipped as uncommitted.
    pub(super) uncommitted: Vec<Vec<u8>>,
    pub(super) was_read: bool,
    /// After the last record read.
    position: Option<i64>,
    /// The first record skipped as uncommitted: the position to record
    /// then, so that the next restore judges those again until a commit
    /// has written over them.
    first_skipped: Option<i64>,
    skipped_keys: HashSet<Vec<u8>>,
    ended: bool,
}

/// How often a long restore lets the run serve the group.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);

/// How long a restore may see neither a record nor the end of a changelog
/// before it asks for the changelogs' metadata again.
const STALL_REFRESH: Duration = Duration::from_secs(5);

/// Records taken from one partition's queue before the next one's turn.
const RUN_PER_QUEUE: usize = 1_024;

/// How long the reader waits on the restorer's own queue (its errors) when
/// no partition had a record: records on the partitions' queues do not
/// wake it, so this bounds what they wait.
const IDLE_WAIT: Duration = Duration::from_millis(2);

/// Where a changelog's reading starts, from the store's recorded position
/// and the partition's (low, high) watermarks.
pub(super) enum Start {
    /// The store is at the end already (or the partition is empty).
    Nothing,
    From(Offset),
    /// The recorded position is gone (the changelog was recreated or
    /// truncated): only a restore from scratch is trustworthy.
    Gone,
}

impl Start {
    pub(super) fn new(from: Option<Position>, (low, high): (i64, i64)) -> Start {
        match from {
            // Compaction keeps offsets; a start past our position means
            // records we never saw were deleted.
            Some(f) if f.next < low || f.next > high => Start::Gone,
            Some(f) if f.is_end(high) => Start::Nothing,
            None if high == low => Start::Nothing,
            Some(f) => Start::From(Offset::Offset(f.next)),
            None => Start::From(Offset::Beginning),
        }
    }
}

/// The reading of partition `id` of one changelog.
pub(super) struct Reading<'a> {
    pub(super) changelog: &'a Changelog,
    pub(super) id: i32,
    pub(super) checker: &'a Checker,
    pub(super) from: Offset,
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

/// Reads every changelog partition of `readings` to its end, read_committed,
/// into `backend`, and records the positions reached. The results come in
/// the order of `readings`.
pub(super) fn read_all(
    backend: &mut dyn StateBackend,
    readings: &[Reading<'_>],
    env: &mut RestoreEnv<'_>,
) -> Result<Vec<ChangelogRead>, RestoreError> {
    if readings.is_empty() {
        return Ok(Vec::new());
    }
    // A refusal reported before this restore is not about its reads.
    let _ = env.restorer.context().take_refusal();
    // Split before the assignment: no record may reach the restorer's queue.
    let queues = readings
        .iter()
        .map(|r| {
            ChangelogQueue::split(env.restorer, &r.changelog.topic, r.id).ok_or_else(|| {
                RunError::Setup(format!(
                    "cannot read partition {} of {}",
                    r.id, r.changelog.topic
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tpl = TopicPartitionList::new();
    for r in readings {
        tpl.add_partition_offset(&r.changelog.topic, r.id, r.from)
            .map_err(|e| RunError::kafka("assign a changelog partition", e))?;
    }
    env.restorer
        .assign(&tpl)
        .map_err(|e| RunError::kafka("assign the changelog partitions", e))?;
    let stores = readings
        .iter()
        .map(|r| backend.open_store(&r.changelog.store))
        .collect::<Result<Vec<_>, _>>()?;
    // The changelogs can give every record again: no need to log them.
    backend.begin_unlogged();
    let result = std::thread::scope(|scope| {
        let mut writer = BatchWriter::start(scope, &mut *backend).map_err(|e| {
            RunError::Setup(format!("cannot start the restore's writing thread: {e}"))
        })?;
        let mut reader = Reader {
            readings,
            queues: &queues,
            stores: &stores,
            run: Run::default(),
            reads: readings.iter().map(|_| ChangelogRead::default()).collect(),
            clock: Clock::new(),
        };
        let read = reader.read(&mut writer, env).map(|()| reader.reads);
        // The writer's error, if it stopped, is the cause of the read's.
        let written = writer.finish();
        written.map_err(RestoreError::from).and(read)
    });
    let _ = env.restorer.unassign();
    drop(queues);
    // Durable before the positions say they are there; and on a failed
    // read too, so that the backend logs its writes again.
    let ended = backend.end_unlogged();
    let reads = result?;
    ended?;
    for (r, read) in readings.iter().zip(&reads) {
        // Nothing read: the recorded position stands as it is.
        if let Some(next) = read.first_skipped.or(read.position) {
            let position = Position {
                next,
                marker_follows: false,
            };
            Engine::write_note(
                backend,
                &position_note(&r.changelog.topic),
                position.encode(),
            )?;
        }
    }
    Ok(reads)
}

/// The reading thread's state.
struct Reader<'r, 'a> {
    readings: &'r [Reading<'a>],
    queues: &'r [ChangelogQueue],
    stores: &'r [StoreId],
    /// The records taken last, kept for its buffer.
    run: Run,
    reads: Vec<ChangelogRead>,
    clock: Clock,
}

impl Reader<'_, '_> {
    /// Until every partition has ended (or the writer stopped: its error is
    /// the answer, see [`read_all`]).
    fn read(
        &mut self,
        writer: &mut BatchWriter<'_>,
        env: &mut RestoreEnv<'_>,
    ) -> Result<(), RestoreError> {
        for read in &mut self.reads {
            read.was_read = true;
        }
        while self.reads.iter().any(|r| !r.ended) {
            let mut took = 0;
            for i in 0..self.queues.len() {
                match self.take_run(i, writer, env)? {
                    Some(n) => took += n,
                    None => return Ok(()),
                }
            }
            if took == 0 {
                self.wait(env)?;
            }
        }
        Ok(())
    }

    /// Takes up to [`RUN_PER_QUEUE`] records of partition `i`; `None` once
    /// the writer has stopped.
    fn take_run(
        &mut self,
        i: usize,
        writer: &mut BatchWriter<'_>,
        env: &mut RestoreEnv<'_>,
    ) -> Result<Option<usize>, RestoreError> {
        if self.reads[i].ended {
            return Ok(Some(0));
        }
        let reading = &self.readings[i];
        self.queues[i].take(&mut self.run, RUN_PER_QUEUE);
        for j in 0..self.run.len() {
            if let Some(now) = self.clock.due() {
                self.look_after(now, env)?;
            }
            let record = match self.run.get(j) {
                Ok(record) => record,
                Err(e) => match reading.answer(e, self.clock.idle())? {
                    // Records queued after the end are not this restore's.
                    Flow::End => {
                        self.reads[i].ended = true;
                        break;
                    }
                    Flow::Go => continue,
                },
            };
            self.clock.progressed();
            let _ = crate::fault::reached("restore.record");
            let taken = reading.take(&record, self.stores[i], writer, env, &mut self.reads[i]);
            if let Err(WriterGone) = taken {
                return Ok(None);
            }
        }
        Ok(Some(self.run.len()))
    }

    /// No partition had a record: serves the restorer's own queue (its
    /// errors: a broker away) for a moment, and gives up after
    /// [`RESTORE_PATIENCE`] without progress.
    fn wait(&mut self, env: &mut RestoreEnv<'_>) -> Result<(), RestoreError> {
        let waiting = self
            .reads
            .iter()
            .position(|r| !r.ended)
            .map_or(&self.readings[0], |i| &self.readings[i]);
        // No partition of the restorer reaches its own queue: only errors.
        if let Some(Err(e)) = env.restorer.poll(IDLE_WAIT) {
            waiting.answer(e, self.clock.idle())?;
        }
        if let Some(refused) = env.restorer.context().take_refusal() {
            waiting.answer(refused, self.clock.idle())?;
        }
        let idle = self.clock.idle();
        if idle > RESTORE_PATIENCE {
            return Err(RunError::Setup(format!(
                "changelog `{}` gave no record and no end for {RESTORE_PATIENCE:?}",
                waiting.changelog.topic
            ))
            .into());
        }
        if let Some(now) = self.clock.due() {
            self.look_after(now, env)?;
        }
        Ok(())
    }

    /// What a long restore does every little while: lets the run serve the
    /// group, and asks for metadata again when nothing comes.
    fn look_after(&mut self, now: Instant, env: &mut RestoreEnv<'_>) -> Result<(), RunError> {
        let clock = &mut self.clock;
        if now - clock.last_keep_alive >= KEEP_ALIVE_EVERY {
            (env.keep_alive)()?;
            clock.last_keep_alive = now;
        }
        // No record and no end for a while: after a broker restart the
        // restorer may hold metadata without a partition's leader, and
        // would fetch nothing until its next periodic refresh.
        if now - clock.last_progress >= STALL_REFRESH && now - clock.last_refresh >= STALL_REFRESH {
            for (r, read) in self.readings.iter().zip(&self.reads) {
                if !read.ended {
                    tracing::debug!(topic = %r.changelog.topic, "restore stalled; refreshing metadata");
                    refresh_metadata(env.restorer, &r.changelog.topic);
                }
            }
            clock.last_refresh = now;
        }
        Ok(())
    }
}

impl Reading<'_> {
    /// Applies, skips or counts one record.
    fn take(
        &self,
        m: &Record<'_>,
        store: StoreId,
        writer: &mut BatchWriter<'_>,
        env: &RestoreEnv<'_>,
        read: &mut ChangelogRead,
    ) -> Result<(), WriterGone> {
        read.position = Some(m.offset() + 1);
        match self.judge(m, env.committed.as_ref()) {
            Verdict::Apply => {
                let key = m.key().unwrap_or_default();
                match m.payload() {
                    Some(value) => writer.put(store, key, value)?,
                    None => writer.delete(store, key)?,
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
                read.first_skipped.get_or_insert(m.offset());
                let key = m.key().unwrap_or_default().to_vec();
                if read.skipped_keys.insert(key.clone()) {
                    read.uncommitted.push(key);
                }
            }
        }
        Ok(())
    }

    /// The answer to an error of the changelog read, `idle` after its last
    /// record: the end of the partition, one to wait out, or a failure.
    fn answer(&self, e: KafkaError, idle: Duration) -> Result<Flow, RestoreError> {
        match e {
            KafkaError::PartitionEOF(_) => Ok(Flow::End),
            e if is_out_of_range(&e) => Err(RestoreError::OutOfRange(self.changelog.topic.clone())),
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
                if let Some(held_back) = crate::kafka::run::repeats::CLIENT_ERRORS.admit(&kind) {
                    tracing::warn!(topic = %self.changelog.topic, error = %e, held_back, "changelog read error; retrying");
                }
                Ok(Flow::Go)
            }
            e => Err(RunError::kafka("read a changelog", e).into()),
        }
    }

    fn judge(&self, m: &Record<'_>, committed: Option<&HashMap<String, Option<i64>>>) -> Verdict {
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
        let Some(header) = m.header(INPUTS_HEADER_C) else {
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
