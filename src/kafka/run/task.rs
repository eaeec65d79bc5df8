//! A task: one input partition number, its engine and RocksDB store, its
//! buffered input, and the restore of its store from the changelog.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::RestoreContext;
use super::topics::{Changelog, Layout, Plan};
use super::RunError;
use crate::engine::{self, Engine, EngineOptions};
use crate::kafka::acls::Operation;
use crate::state::{RocksBackend, SharedMemory, StateBackend};
use crate::topology::Topology;

/// The meta entry saying a store was restored and its positions are kept.
const READY_NOTE: &[u8] = b"changelog:ready";

fn position_note(topic: &str) -> Vec<u8> {
    format!("changelog:{topic}").into_bytes()
}

/// One input partition's records waiting to be processed.
pub struct InputQueue {
    pub topic: String,
    /// The topic the engine's sources read: the source topic of a repartition topic.
    pub engine_topic: String,
    pub buffer: VecDeque<OwnedMessage>,
    /// The fetcher reached the end of the partition and nothing came since.
    pub caught_up: bool,
    pub paused: bool,
    /// Next offset to commit (after the last processed record), if any was processed.
    pub consumed: Option<i64>,
}

impl InputQueue {
    fn new(topic: &str, engine_topic: &str) -> Self {
        InputQueue {
            topic: topic.to_owned(),
            engine_topic: engine_topic.to_owned(),
            buffer: VecDeque::new(),
            caught_up: false,
            paused: false,
            consumed: None,
        }
    }

    /// Adds a fetched record, keeping offset order (a few records can reach
    /// the main queue before a partition's own queue is split off).
    pub fn push(&mut self, m: OwnedMessage) {
        self.caught_up = false;
        if self.consumed.is_some_and(|next| m.offset() < next) {
            return; // already processed: a re-fetch after a seek
        }
        match self.buffer.back() {
            Some(last) if last.offset() >= m.offset() => {
                let at = self.buffer.partition_point(|b| b.offset() < m.offset());
                if self.buffer.get(at).is_none_or(|b| b.offset() != m.offset()) {
                    self.buffer.insert(at, m);
                }
            }
            _ => self.buffer.push_back(m),
        }
    }
}

pub struct Task {
    pub id: i32,
    pub engine: Engine,
    pub queues: Vec<InputQueue>,
    /// Something changed since the last commit.
    pub dirty: bool,
    fired_seen: u64,
    pub prepared: Option<engine::Changes>,
}

/// Statistics of one restore.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub records: u64,
    pub elapsed: Duration,
    pub from_beginning: bool,
}

/// What a task needs to open.
pub struct TaskSetup<'a> {
    pub topo: &'a Arc<Topology>,
    pub plan: &'a Plan,
    pub layout: &'a Layout,
    pub state_root: &'a Path,
    pub engine_options: &'a EngineOptions,
    pub memory: &'a SharedMemory,
}

impl TaskSetup<'_> {
    pub fn dir(&self, id: i32) -> PathBuf {
        self.state_root.join(format!("task-{id}"))
    }
}

impl Task {
    /// Opens task `id`: its store, brought up to date from the changelog.
    pub fn open(
        id: i32,
        setup: &TaskSetup<'_>,
        restorer: &BaseConsumer<RestoreContext>,
    ) -> Result<(Task, RestoreStats), RunError> {
        let dir = setup.dir(id);
        let (backend, stats) = restore_store(&dir, id, setup, restorer)?;
        let engine = Engine::open(Arc::clone(setup.topo), backend, setup.engine_options)?;
        let queues = setup
            .plan
            .inputs
            .iter()
            .filter(|t| setup.layout.has_partition(t, id))
            .map(|t| InputQueue::new(t, setup.plan.engine_topic(t)))
            .collect();
        let fired_seen = engine.timers_fired();
        let task = Task {
            id,
            engine,
            queues,
            dirty: false,
            fired_seen,
            prepared: None,
        };
        Ok((task, stats))
    }

    /// Drops everything since the last commit: the engine reopens on its
    /// store, and buffered input is forgotten (the consumer re-fetches it).
    pub fn reset(&mut self, topo: &Arc<Topology>, opts: &EngineOptions) -> Result<(), RunError> {
        let placeholder = Engine::open(
            Arc::clone(topo),
            Box::new(crate::state::MemoryBackend::default()),
            opts,
        )?;
        let engine = std::mem::replace(&mut self.engine, placeholder);
        self.engine = Engine::open(Arc::clone(topo), engine.discard(), opts)?;
        self.fired_seen = self.engine.timers_fired();
        self.dirty = false;
        self.prepared = None;
        for q in &mut self.queues {
            q.buffer.clear();
            q.caught_up = false;
            q.consumed = None;
        }
        Ok(())
    }

    pub fn queue_mut(&mut self, topic: &str) -> Option<&mut InputQueue> {
        self.queues.iter_mut().find(|q| q.topic == topic)
    }

    /// Notes timers fired by a clock advance as a change to commit.
    pub fn note_timers(&mut self) {
        let fired = self.engine.timers_fired();
        if fired != self.fired_seen {
            self.fired_seen = fired;
            self.dirty = true;
        }
    }

    /// The queue whose head goes next. Under event time that is the oldest
    /// head, and only once every input partition has a record buffered or is
    /// known to be caught up, as Kafka Streams orders a task's partitions:
    /// that makes the order, and so the output, independent of fetch timing.
    /// Under wall-clock time any buffered record may go.
    pub fn next_queue(&self, event_time: bool) -> Option<usize> {
        let mut best: Option<(i64, usize)> = None;
        for (i, q) in self.queues.iter().enumerate() {
            match q.buffer.front() {
                Some(m) => {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    if best.is_none_or(|(b, _)| ts < b) {
                        best = Some((ts, i));
                    }
                }
                None if event_time && !q.caught_up => return None,
                None => {}
            }
        }
        best.map(|(_, i)| i)
    }
}

/// Opens the store in `dir` and brings it to the end of its changelogs:
/// from the positions it recorded at its last commit when it has them (it
/// then holds exactly what those transactions committed), else from an
/// empty store and the beginning of each changelog.
fn restore_store(
    dir: &Path,
    id: i32,
    setup: &TaskSetup<'_>,
    restorer: &BaseConsumer<RestoreContext>,
) -> Result<(Box<dyn StateBackend>, RestoreStats), RunError> {
    let started = Instant::now();
    let open = || RocksBackend::open_shared(dir, setup.memory);
    let mut backend: Box<dyn StateBackend> = Box::new(open()?);
    let ready = Engine::read_note(backend.as_mut(), READY_NOTE)?.is_some();
    if !ready {
        drop(backend);
        wipe(dir)?;
        backend = Box::new(open()?);
    }
    let mut stats = RestoreStats {
        from_beginning: !ready,
        ..RestoreStats::default()
    };
    for changelog in &setup.plan.changelogs {
        let note = position_note(&changelog.topic);
        let from = match Engine::read_note(backend.as_mut(), &note)? {
            Some(bytes) => decode_offset(&bytes),
            None => None,
        };
        match restore_changelog(backend.as_mut(), changelog, id, from, restorer) {
            Ok(n) => stats.records += n,
            Err(RestoreError::OutOfRange) => {
                // The changelog was recreated or truncated behind the store's
                // back: only a restore from scratch is trustworthy.
                tracing::warn!(task = id, topic = %changelog.topic, "recorded changelog position is gone; restoring from the beginning");
                drop(backend);
                wipe(dir)?;
                return restore_store(dir, id, setup, restorer);
            }
            Err(RestoreError::Run(e)) => return Err(e),
        }
    }
    Engine::write_note(backend.as_mut(), READY_NOTE, vec![1])?;
    backend.sync()?;
    stats.elapsed = started.elapsed();
    tracing::info!(
        task = id,
        records = stats.records,
        ms = stats.elapsed.as_millis() as u64,
        from_beginning = stats.from_beginning,
        "task restored"
    );
    Ok((backend, stats))
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

fn decode_offset(bytes: &[u8]) -> Option<i64> {
    bytes.try_into().ok().map(i64::from_be_bytes)
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

/// Entries written per RocksDB batch during a restore.
const RESTORE_BATCH: usize = 20_000;

/// Applies changelog partition `id` of `changelog` from offset `from` (or
/// the beginning) to its end, read_committed; records the new position.
fn restore_changelog(
    backend: &mut dyn StateBackend,
    changelog: &Changelog,
    id: i32,
    from: Option<i64>,
    restorer: &BaseConsumer<RestoreContext>,
) -> Result<u64, RestoreError> {
    let (low, high) = super::retry_kafka("read a changelog's offsets", || {
        restorer.fetch_watermarks(&changelog.topic, id, Duration::from_secs(10))
    })?;
    match from {
        // Compaction keeps offsets; a start past our position means records
        // we never saw were deleted.
        Some(f) if f < low || f > high => return Err(RestoreError::OutOfRange),
        Some(f) if f == high => return Ok(0),
        None if high == low => return Ok(0),
        _ => {}
    }
    let mut tpl = TopicPartitionList::new();
    let offset = from.map_or(Offset::Beginning, Offset::Offset);
    tpl.add_partition_offset(&changelog.topic, id, offset)
        .map_err(|e| RunError::kafka("assign a changelog partition", e))?;
    restorer
        .assign(&tpl)
        .map_err(|e| RunError::kafka("assign a changelog partition", e))?;
    let result = read_to_end(backend, changelog, restorer);
    let _ = restorer.unassign();
    let (records, next) = result?;
    if let Some(next) = next.or(from) {
        Engine::write_note(
            backend,
            &position_note(&changelog.topic),
            next.to_be_bytes().to_vec(),
        )?;
    }
    Ok(records)
}

fn read_to_end(
    backend: &mut dyn StateBackend,
    changelog: &Changelog,
    restorer: &BaseConsumer<RestoreContext>,
) -> Result<(u64, Option<i64>), RestoreError> {
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(RESTORE_BATCH);
    let mut records = 0u64;
    let mut next = None;
    let deadline_idle = Duration::from_secs(60);
    let mut last_progress = Instant::now();
    loop {
        match restorer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                next = Some(m.offset() + 1);
                let key = m.key().unwrap_or_default().to_vec();
                pending.push((key, m.payload().map(<[u8]>::to_vec)));
                records += 1;
                if pending.len() >= RESTORE_BATCH {
                    flush(backend, &changelog.store, &mut pending)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) if is_out_of_range(&e) => return Err(RestoreError::OutOfRange),
            // The restorer's group is never used (see RestoreContext).
            Some(Err(e))
                if e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed) => {}
            Some(Err(e)) if crate::kafka::acls::authorization_code(&e).is_some() => {
                let denied =
                    crate::kafka::acls::topic_denied(Operation::Read, &changelog.topic, &e);
                return Err(RunError::from(denied).into());
            }
            // Connection trouble (a broker restarting): librdkafka reconnects by itself.
            Some(Err(e)) if last_progress.elapsed() < deadline_idle => {
                tracing::warn!(topic = %changelog.topic, error = %e, "changelog read error; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(Err(e)) => {
                return Err(RunError::kafka("read a changelog", e).into());
            }
            None if last_progress.elapsed() > deadline_idle => {
                return Err(RunError::Setup(format!(
                    "changelog `{}` gave no record and no end for {deadline_idle:?}",
                    changelog.topic
                ))
                .into());
            }
            None => {}
        }
    }
    flush(backend, &changelog.store, &mut pending)?;
    Ok((records, next))
}

fn is_out_of_range(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange)
        || e.to_string().contains("out of range")
}

fn flush(
    backend: &mut dyn StateBackend,
    store: &str,
    pending: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), RestoreError> {
    let entries = pending
        .iter()
        .map(|(k, v)| (store, k.as_slice(), v.as_deref()));
    engine::restore(backend, entries)?;
    pending.clear();
    Ok(())
}

/// The meta entry to write with a commit: the changelog position the store
/// will reflect once the commit is applied.
pub fn position_entry(topic: &str, next_offset: i64) -> (Vec<u8>, Vec<u8>) {
    (position_note(topic), next_offset.to_be_bytes().to_vec())
}
