//! The run loop: one consumer in the group `app.id`, one producer, and the
//! tasks of the partitions this instance is assigned.
//!
//! Everything happens on one thread. The rebalance callbacks run inside
//! `consumer.poll`, and share the tasks with the loop through a mutex the
//! loop never holds while polling.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde_json::value::RawValue;

use super::output::{KafkaOutput, Origin, OutputCounts};
use super::producer::{self, TxnFailure, TxnProducer, CALL_TIMEOUT};
use super::task::{self, Task, TaskSetup};
use super::topics::{Layout, Plan};
use super::{ClockMode, RunError, RunOptions, RunSummary};
use crate::engine::{DeadLetter, Output, SourceInput};
use crate::record::Kind;
use crate::state::SharedMemory;
use crate::topology::kafka::Guarantee;
use crate::topology::{Format, Topology};
use rdkafka::consumer::base_consumer::PartitionQueue;

/// What every part of a run reads and nothing changes.
pub struct Shared {
    pub topo: Arc<Topology>,
    pub plan: Plan,
    pub layout: Layout,
    pub state_root: PathBuf,
    pub base: ClientConfig,
    pub instance: String,
    pub opts: RunOptions,
    pub memory: SharedMemory,
}

impl Shared {
    fn exactly_once(&self) -> bool {
        self.opts.guarantee == Guarantee::ExactlyOnce
    }

    fn transactional_id(&self) -> Option<String> {
        self.exactly_once()
            .then(|| format!("{}-{}", self.topo.app_id, self.instance))
    }

    fn task_setup(&self) -> TaskSetup<'_> {
        TaskSetup {
            topo: &self.topo,
            plan: &self.plan,
            layout: &self.layout,
            state_root: &self.state_root,
            engine_options: &self.opts.engine,
            memory: &self.memory,
        }
    }

    fn changelog_of(&self, store: &str) -> Option<&str> {
        self.plan
            .changelogs
            .iter()
            .find(|c| c.store == store)
            .map(|c| c.topic.as_str())
    }
}

/// The instance id kept in the state directory, created on first use, so
/// that a restarted instance reuses its transactional id and aborts what
/// its predecessor left open.
pub fn stored_instance_id(state_root: &Path) -> Result<String, RunError> {
    let path = state_root.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RunError::Setup(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id)
        .map_err(|e| RunError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

/// A partition's own fetch queue, split off the consumer's main queue so
/// that its end-of-partition events say which topic they are about.
struct SplitQueue {
    topic: String,
    partition: i32,
    queue: PartitionQueue<RunContext>,
}

/// Mutable state of the run, shared with the rebalance callbacks.
struct Inner {
    shared: Arc<Shared>,
    producer: TxnProducer,
    txn_open: bool,
    tasks: BTreeMap<i32, Task>,
    queues: Vec<SplitQueue>,
    /// Partitions assigned by the last rebalance, not yet opened.
    assigned: Option<Vec<(String, i32)>>,
    /// Next offset to commit of each repartitioned input partition.
    raw_offsets: BTreeMap<(String, i32), i64>,
    /// Records were forwarded to a repartition topic since the last commit.
    raw_dirty: bool,
    /// Repartitioned input partitions not yet read to their end.
    raw_waiting: HashSet<(String, i32)>,
    /// An error raised inside a callback, surfaced by the loop.
    failure: Option<RunError>,
    counts: OutputCounts,
    summary: RunSummary,
    restorer: BaseConsumer<RestoreContext>,
    first_record: Option<Instant>,
    last_commit_done: Option<Instant>,
    /// Deletes consumed records of repartition topics (none without them).
    purger: Option<Purger>,
}

/// Repartition topics are never deleted by time (their records carry event
/// timestamps), so, as Kafka Streams does, the run deletes what it has
/// committed past, every little while.
struct Purger {
    admin: rdkafka::admin::AdminClient<super::topics::LogContext>,
    next: Instant,
}

const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Purger {
    fn new(shared: &Shared) -> Result<Option<Purger>, RunError> {
        if shared.plan.repartitions.is_empty() {
            return Ok(None);
        }
        let mut config = shared.base.clone();
        config.set_log_level(super::librdkafka_log_level());
        let admin = config
            .create_with_context(super::topics::LogContext)
            .map_err(|e| RunError::kafka("create the admin client", e))?;
        Ok(Some(Purger {
            admin,
            next: Instant::now() + PURGE_EVERY,
        }))
    }

    /// After a commit: deletes the records before the committed positions.
    fn after_commit(&mut self, committed: &TopicPartitionList) {
        if Instant::now() < self.next || committed.count() == 0 {
            return;
        }
        self.next = Instant::now() + PURGE_EVERY;
        let opts = rdkafka::admin::AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        match futures_executor::block_on(self.admin.delete_records(committed, &opts)) {
            Ok(result) => {
                for e in result.elements() {
                    if let Err(err) = e.error() {
                        tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "cannot purge a repartition partition");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge the repartition topics"),
        }
    }
}

pub struct RunContext {
    inner: Mutex<Option<Inner>>,
    consumer: OnceLock<Weak<BaseConsumer<RunContext>>>,
}

impl RunContext {
    fn lock(&self) -> MutexGuard<'_, Option<Inner>> {
        // A panic with the lock held already ends the run; the data is not reused.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for RunContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("consumer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_end_of_partition(&error) {
            return; // reported on the partition queues
        }
        tracing::warn!(client = "consumer", error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut guard = self.lock();
        let Some(inner) = guard.as_mut() else {
            return;
        };
        inner.summary.rebalances += 1;
        let lost = consumer.assignment_lost();
        tracing::info!(partitions = tpl.count(), lost, "partitions revoked");
        if let Err(e) = inner.on_revoke(consumer, tpl, lost) {
            inner.failure.get_or_insert(e);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let mut guard = self.lock();
        let Some(inner) = guard.as_mut() else {
            return;
        };
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::info!(partitions = partitions.len(), "partitions assigned");
        // Split before returning to the poll loop: the fetcher starts now.
        if let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) {
            for (topic, partition) in &partitions {
                if let Some(queue) = consumer.split_partition_queue(topic, *partition) {
                    inner.queues.push(SplitQueue {
                        topic: topic.clone(),
                        partition: *partition,
                        queue,
                    });
                }
            }
        }
        for (topic, partition) in &partitions {
            if inner.shared.plan.repartition_of(topic).is_some() {
                inner.raw_waiting.insert((topic.clone(), *partition));
            }
        }
        inner.assigned = Some(partitions);
    }
}

pub struct Runtime {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<RunContext>>,
}

/// How often the loop logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Records processed per task before the loop serves the consumer again.
const PROCESS_BUDGET: usize = 2_000;
/// Buffered records per partition above which its fetching pauses.
const PAUSE_ABOVE: usize = 5_000;
const RESUME_BELOW: usize = 1_000;

impl Runtime {
    pub fn new(shared: Arc<Shared>) -> Result<Self, RunError> {
        let consumer = Arc::new(create_consumer(&shared)?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let inner = Inner {
            producer: new_producer(&shared)?,
            restorer: create_restorer(&shared)?,
            shared: Arc::clone(&shared),
            txn_open: false,
            tasks: BTreeMap::new(),
            queues: Vec::new(),
            assigned: None,
            raw_offsets: BTreeMap::new(),
            raw_dirty: false,
            raw_waiting: HashSet::new(),
            failure: None,
            counts: OutputCounts::default(),
            summary: RunSummary::default(),
            first_record: None,
            last_commit_done: None,
            purger: Purger::new(&shared)?,
        };
        *consumer.context().lock() = Some(inner);
        let topics = shared.plan.subscriptions();
        consumer
            .subscribe(&topics)
            .map_err(|e| RunError::kafka("subscribe to the input topics", e))?;
        Ok(Runtime { shared, consumer })
    }

    /// The loop; returns when `stop` is set, when idle long enough, or on an
    /// error it cannot handle in place.
    pub fn run(self, stop: &AtomicBool) -> Result<RunSummary, RunError> {
        let result = self.run_loop(stop);
        let summary = self.shutdown(result.is_ok());
        result.map(|()| summary)
    }

    fn run_loop(&self, stop: &AtomicBool) -> Result<(), RunError> {
        let interval = self.shared.opts.commit_interval;
        let mut next_commit = Instant::now() + interval;
        let mut last_activity = Instant::now();
        let mut next_report = Instant::now() + PROGRESS_EVERY;
        let mut busy = false;
        while !stop.load(Ordering::Relaxed) {
            let wait = if busy {
                Duration::ZERO
            } else {
                Duration::from_millis(5)
            };
            let stray = self.poll_main(wait)?;
            let mut guard = self.consumer.context().lock();
            let inner = guard
                .as_mut()
                .ok_or_else(|| RunError::Setup("run state gone".into()))?;
            inner.handle_failure(&self.consumer)?;
            inner.open_assigned(&self.consumer)?;
            for m in stray {
                if let Err(OutputFailure(e)) = inner.enqueue(m) {
                    tracing::warn!(error = %e, "forwarding failed; aborting the transaction");
                    inner.abort_and_rewind(&self.consumer)?;
                }
            }
            let moved = inner.fill_queues(&self.consumer)?;
            let processed = inner.process(&self.consumer)? + moved;
            inner.punctuate(&self.consumer)?;
            inner.flow_control(&self.consumer);
            busy = processed > 0;
            if busy || inner.assigned.is_some() {
                last_activity = Instant::now();
            }
            // A fixed cadence, not "interval after the last commit ended": a
            // record waits at most one interval plus one commit for its output.
            if Instant::now() >= next_commit {
                inner.commit(&self.consumer)?;
                next_commit += interval;
                if next_commit < Instant::now() {
                    next_commit = Instant::now() + interval;
                }
            }
            if Instant::now() >= next_report {
                inner.report_progress();
                next_report += PROGRESS_EVERY;
            }
            if inner.idle_done(last_activity.elapsed()) {
                tracing::info!("idle: everything committed; exiting");
                break;
            }
        }
        Ok(())
    }

    /// Serves callbacks; returns records that reached the main queue before
    /// their partition's queue was split off.
    fn poll_main(&self, wait: Duration) -> Result<Vec<OwnedMessage>, RunError> {
        let mut stray = Vec::new();
        let mut timeout = wait;
        loop {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => stray.push(m.detach()),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => consumer_error(e, &self.shared.topo.app_id)?,
                None => return Ok(stray),
            }
            timeout = Duration::ZERO;
        }
    }

    /// Commits what is open (when the run ends cleanly), closes the tasks
    /// and leaves the group.
    fn shutdown(self, clean: bool) -> RunSummary {
        let mut summary = RunSummary::default();
        {
            let mut guard = self.consumer.context().lock();
            if let Some(inner) = guard.as_mut() {
                if clean {
                    match inner.commit(&self.consumer) {
                        Ok(()) => inner.final_purge(),
                        Err(e) => tracing::warn!(error = %e, "final commit failed"),
                    }
                }
                inner.close_tasks(None);
                inner.queues.clear();
                summary = inner.finish_summary();
            }
        }
        self.consumer.unsubscribe();
        // Drop the state (and its producer) before the consumer itself.
        let inner = self.consumer.context().lock().take();
        drop(inner);
        summary
    }
}

pub(super) fn is_end_of_partition(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

fn consumer_error(e: KafkaError, group: &str) -> Result<(), RunError> {
    if let Some(denied) = crate::kafka::acls::consumer_denied(&e, group) {
        return Err(denied.into());
    }
    match producer::failure_class(&e) {
        TxnFailure::Fenced(reason) => Err(RunError::Fenced(reason)),
        _ => {
            tracing::warn!(error = %e, "consumer error");
            Ok(())
        }
    }
}

fn create_consumer(shared: &Shared) -> Result<BaseConsumer<RunContext>, RunError> {
    let mut config = shared.base.clone();
    config
        .set("group.id", &shared.topo.app_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // Range gives partition p of every input to the same member: co-partitioning.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // With the default (1 s) fetching pauses a whole second whenever the
        // local queue is full, which stalls a busy run.
        .set("fetch.queue.backoff.ms", "10")
        // Prefetch less than librdkafka's default (64 MiB and 100k records
        // per partition, since each has its own queue here): the task
        // buffers hold records too, and all must fit the RSS budget.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "5000")
        .set_log_level(super::librdkafka_log_level());
    if let Some(id) = &shared.opts.instance_id {
        // Static membership: a restarted instance gets its partitions back
        // without a rebalance or a session timeout.
        config.set("group.instance.id", id);
    }
    let context = RunContext {
        inner: Mutex::new(None),
        consumer: OnceLock::new(),
    };
    config
        .create_with_context(context)
        .map_err(|e| RunError::kafka("create the consumer", e))
}

/// The restore consumer's context: logs through tracing; reaching the end
/// of a changelog is the expected outcome, not an error.
pub struct RestoreContext;

impl ClientContext for RestoreContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("restore", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka looks up the coordinator of any group.id, but the
        // restorer only assigns and never commits: it needs no ACL on its group.
        let group_refused = error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed);
        if group_refused {
            tracing::debug!(client = "restore", error = %error, reason, "restore group not authorized (not needed)");
        } else if !is_end_of_partition(&error) {
            tracing::warn!(client = "restore", error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

fn create_restorer(shared: &Shared) -> Result<BaseConsumer<RestoreContext>, RunError> {
    let mut config = shared.base.clone();
    config
        .set("group.id", format!("{}-restore", shared.topo.app_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // A recorded position past the end means the changelog is not the
        // one the store was built from: fail, and restore from scratch.
        .set("auto.offset.reset", "error")
        .set("fetch.queue.backoff.ms", "10")
        // The end of a changelog is only known when an empty fetch returns:
        // do not let the broker hold it for the default 500 ms.
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "16384")
        .set_log_level(super::librdkafka_log_level());
    config
        .create_with_context(RestoreContext)
        .map_err(|e| RunError::kafka("create the restore consumer", e))
}

fn new_producer(shared: &Shared) -> Result<TxnProducer, RunError> {
    let mut config = shared.base.clone();
    config.set_log_level(super::librdkafka_log_level());
    let changelogs = shared.plan.changelog_topics().map(str::to_owned);
    producer::create(&config, shared.transactional_id().as_deref(), changelogs)
}

/// A new producer, retried while the cluster is away (a broker restart):
/// the run carries on by itself once it is back.
fn new_producer_patiently(shared: &Shared) -> Result<TxnProducer, RunError> {
    let mut backoff = Duration::from_millis(200);
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        match new_producer(shared) {
            Ok(p) => return Ok(p),
            Err(e @ RunError::Fenced(_)) => return Err(e),
            Err(e) if Instant::now() < give_up => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot build the producer yet");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Inner {
    fn event_time(&self) -> bool {
        self.shared.opts.clock == ClockMode::Event
    }

    /// Errors raised in callbacks: fencing ends the run, a dead producer is rebuilt.
    fn handle_failure(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        match self.failure.take() {
            None => Ok(()),
            Some(RunError::ProducerFatal(reason)) => self.rebuild_producer(consumer, &reason),
            Some(e) => Err(e),
        }
    }

    /// Opens the tasks of newly assigned partitions, after the group's
    /// committed offsets for them are stable: a predecessor's pending
    /// transaction is then decided, and the changelog read below holds it.
    fn open_assigned(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        let Some(assigned) = self.assigned.take() else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &assigned {
            tpl.add_partition(topic, *p);
        }
        super::retry_kafka("fetch the committed offsets", || {
            consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT)
        })?;
        let plan = &self.shared.plan;
        let mut ids: Vec<i32> = assigned
            .iter()
            .filter(|(t, _)| plan.inputs.contains(t))
            .map(|(_, p)| *p)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let (task, stats) = Task::open(id, &self.shared.task_setup(), &self.restorer)?;
            self.summary.restored_records += stats.records;
            self.summary.restore_ms += stats.elapsed.as_millis() as u64;
            self.tasks.insert(id, task);
        }
        Ok(())
    }

    fn enqueue(&mut self, m: OwnedMessage) -> Result<(), OutputFailure> {
        if self.shared.plan.repartition_of(m.topic()).is_some() {
            return self.forward(&m);
        }
        let Some(task) = self.tasks.get_mut(&m.partition()) else {
            tracing::debug!(
                topic = m.topic(),
                partition = m.partition(),
                "record for a partition without a task; it will be fetched again"
            );
            return Ok(());
        };
        if let Some(q) = task.queue_mut(m.topic()) {
            q.push(m);
        }
        Ok(())
    }

    /// Re-keys a record of a repartitioned input by service and produces it
    /// to the repartition topic, in the open transaction. A record without a
    /// readable service goes unkeyed: the task that gets it dead-letters it.
    fn forward(&mut self, m: &OwnedMessage) -> Result<(), OutputFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(r) = shared.plan.repartition_of(m.topic()) else {
            return Ok(());
        };
        if shared.exactly_once() && !self.txn_open {
            self.producer
                .begin_transaction()
                .map_err(|e| OutputFailure(e.to_string()))?;
            self.txn_open = true;
        }
        let key = service_key(&shared.topo, r.source, m.payload());
        let mut record = BaseRecord::<[u8], [u8]>::to(&r.to);
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        producer::send(&self.producer, record).map_err(|e| OutputFailure(e.to_string()))?;
        self.raw_offsets
            .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        self.raw_dirty = true;
        Ok(())
    }

    /// Moves fetched records from the partition queues into the task
    /// buffers (or, for repartitioned inputs, on to their repartition topic).
    /// Returns how many records it moved.
    fn fill_queues(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<usize, RunError> {
        let mut fetched: Vec<OwnedMessage> = Vec::new();
        let mut ended: Vec<(String, i32)> = Vec::new();
        for split in &self.queues {
            for _ in 0..PROCESS_BUDGET {
                match split.queue.poll(Duration::ZERO) {
                    Some(Ok(m)) => fetched.push(m.detach()),
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        ended.push((split.topic.clone(), split.partition));
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = %split.topic, partition = split.partition, error = %e, "fetch error");
                        break;
                    }
                    None => break,
                }
            }
        }
        let moved = fetched.len();
        for m in fetched {
            self.raw_waiting
                .remove(&(m.topic().to_owned(), m.partition()));
            if let Err(OutputFailure(e)) = self.enqueue(m) {
                tracing::warn!(error = %e, "forwarding to a repartition topic failed; aborting the transaction");
                self.abort_and_rewind(consumer)?;
                return Ok(moved);
            }
        }
        for (topic, partition) in ended {
            self.mark_caught_up(&topic, partition);
        }
        Ok(moved)
    }

    fn mark_caught_up(&mut self, topic: &str, partition: i32) {
        self.raw_waiting.remove(&(topic.to_owned(), partition));
        if let Some(q) = self
            .tasks
            .get_mut(&partition)
            .and_then(|t| t.queue_mut(topic))
        {
            q.caught_up = true;
        }
    }

    /// Processes ready records of every task, up to a budget each.
    fn process(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<usize, RunError> {
        let mut total = 0;
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        for id in ids {
            for _ in 0..PROCESS_BUDGET {
                let event_time = self.event_time();
                let Some(task) = self.tasks.get_mut(&id) else {
                    break;
                };
                let Some(qi) = task.next_queue(event_time) else {
                    break;
                };
                let Some(m) = task.queues[qi].buffer.pop_front() else {
                    break;
                };
                match self.process_record(id, qi, &m) {
                    Ok(()) => total += 1,
                    Err(OutputFailure(e)) => {
                        tracing::warn!(error = %e, "producing output failed; aborting the transaction");
                        self.abort_and_rewind(consumer)?;
                        return Ok(total);
                    }
                }
            }
        }
        if total > 0 {
            self.first_record.get_or_insert_with(Instant::now);
            self.summary.processed += total as u64;
        }
        Ok(total)
    }

    fn process_record(
        &mut self,
        id: i32,
        qi: usize,
        m: &OwnedMessage,
    ) -> Result<(), OutputFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let at = match shared.opts.clock {
            ClockMode::Event => m.timestamp().to_millis().unwrap_or(0).max(0) as u64,
            ClockMode::Wall => now_ms(),
        };
        let mut out = KafkaOutput {
            producer: &self.producer,
            txn_open: &mut self.txn_open,
            transactional: shared.exactly_once(),
            dead_letter_topic: &shared.plan.dead_letter,
            origin: Some(Origin {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
            }),
            counts: &mut self.counts,
        };
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        match input_value(&shared.topo, m, shared.opts.max_value_bytes) {
            Ok(value) => {
                let input = SourceInput {
                    topic: &task.queues[qi].engine_topic,
                    key,
                    value: &value,
                };
                task.engine
                    .process(input, at, &mut out)
                    .map_err(|e| OutputFailure(e.to_string()))?;
            }
            Err(rejected) => {
                task.engine
                    .advance_to(at, &mut out)
                    .map_err(|e| OutputFailure(e.to_string()))?;
                rejected
                    .send(&shared.topo, m, key, task.engine.clock(), &mut out)
                    .map_err(|e| OutputFailure(e.to_string()))?;
            }
        }
        task.queues[qi].consumed = Some(m.offset() + 1);
        task.dirty = true;
        task.note_timers();
        Ok(())
    }

    /// Wall clock: fires every timer whose deadline has passed, whether or
    /// not a record arrived.
    fn punctuate(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        if self.event_time() {
            return Ok(());
        }
        let now = now_ms();
        let shared = Arc::clone(&self.shared);
        for task in self.tasks.values_mut() {
            if task.engine.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let mut out = KafkaOutput {
                producer: &self.producer,
                txn_open: &mut self.txn_open,
                transactional: shared.exactly_once(),
                dead_letter_topic: &shared.plan.dead_letter,
                origin: None,
                counts: &mut self.counts,
            };
            if let Err(e) = task.engine.advance_to(now, &mut out) {
                tracing::warn!(error = %e, "producing timer output failed; aborting the transaction");
                return self.abort_and_rewind(consumer);
            }
            task.note_timers();
        }
        Ok(())
    }

    /// Pauses partitions whose buffer is far ahead, resumes them once drained.
    fn flow_control(&mut self, consumer: &BaseConsumer<RunContext>) {
        for task in self.tasks.values_mut() {
            for q in &mut task.queues {
                let pause = !q.paused && q.buffer.len() > PAUSE_ABOVE;
                let resume = q.paused && q.buffer.len() < RESUME_BELOW;
                if !(pause || resume) {
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&q.topic, task.id);
                let result = if pause {
                    consumer.pause(&tpl)
                } else {
                    consumer.resume(&tpl)
                };
                match result {
                    Ok(()) => q.paused = pause,
                    Err(e) => {
                        tracing::warn!(topic = %q.topic, error = %e, "cannot pause or resume")
                    }
                }
            }
        }
    }

    fn report_progress(&self) {
        let buffered: usize = self
            .tasks
            .values()
            .flat_map(|t| t.queues.iter())
            .map(|q| q.buffer.len())
            .sum();
        let waiting: Vec<String> = self
            .tasks
            .values()
            .flat_map(|t| t.queues.iter().map(move |q| (t.id, q)))
            .filter(|(_, q)| q.buffer.is_empty() && !q.caught_up)
            .map(|(id, q)| format!("{}[{id}]", q.topic))
            .collect();
        tracing::info!(
            processed = self.summary.processed,
            outputs = self.counts.records,
            dead_letters = self.counts.dead_letters,
            commits = self.summary.commits,
            aborts = self.summary.aborts,
            tasks = self.tasks.len(),
            buffered,
            waiting_for = %waiting.join(","),
            "progress"
        );
    }

    fn idle_done(&self, idle: Duration) -> bool {
        let Some(limit) = self.shared.opts.exit_after_idle else {
            return false;
        };
        idle >= limit
            && !self.tasks.is_empty()
            && !self.txn_open
            && !self.raw_dirty
            && self.raw_waiting.is_empty()
            && self
                .tasks
                .values()
                .all(|t| !t.dirty && t.queues.iter().all(|q| q.caught_up && q.buffer.is_empty()))
    }

    /// Commits: changelog records for every changed store, then offsets and
    /// output atomically (a transaction, or flush-then-commit), then the
    /// local stores.
    fn commit(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        let dirty = self.raw_dirty || self.tasks.values().any(|t| t.dirty);
        if !dirty && !self.txn_open {
            return Ok(());
        }
        let started = Instant::now();
        if self.shared.exactly_once() && !self.txn_open {
            self.producer
                .begin_transaction()
                .map_err(|e| producer::classify(e, "begin a transaction"))?;
            self.txn_open = true;
        }
        if let Err(e) = self.produce_changelogs() {
            tracing::warn!(error = %e, "producing the changelog failed; aborting");
            return self.abort_and_rewind(consumer);
        }
        producer::drain(&self.producer)?;
        let deliveries = self.producer.context().take();
        if deliveries.failed > 0 {
            tracing::warn!(failed = deliveries.failed, first = ?deliveries.first_error, "deliveries failed; aborting");
            return self.abort_and_rewind(consumer);
        }
        let offsets = self.offsets();
        fault_injection_pause();
        let committed = if self.shared.exactly_once() {
            self.commit_transaction(consumer, &offsets)
        } else {
            self.commit_offsets(consumer, &offsets)
        };
        match committed {
            Ok(()) => {}
            Err(Committed::Abortable(reason)) => {
                tracing::warn!(%reason, "commit failed; aborting and rewinding");
                return self.abort_and_rewind(consumer);
            }
            Err(Committed::Fatal(reason)) => return self.rebuild_producer(consumer, &reason),
            Err(Committed::Fenced(reason)) => return Err(RunError::Fenced(reason)),
        }
        self.apply(&deliveries.changelog_ends)?;
        self.raw_dirty = false;
        if self.purger.is_some() {
            let positions = self.repartition_positions();
            if let Some(purger) = &mut self.purger {
                purger.after_commit(&positions);
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        self.summary.commits += 1;
        self.summary.commit_ms_max = self.summary.commit_ms_max.max(ms);
        self.last_commit_done = Some(Instant::now());
        Ok(())
    }

    fn produce_changelogs(&mut self) -> Result<(), RunError> {
        let shared = Arc::clone(&self.shared);
        for task in self.tasks.values_mut().filter(|t| t.dirty) {
            let changes = task.engine.prepare_commit()?;
            for (store, key, value) in task.engine.changelog(&changes) {
                let Some(topic) = shared.changelog_of(store) else {
                    continue;
                };
                let mut record = BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(task.id)
                    .key(key);
                if let Some(v) = value {
                    record = record.payload(v);
                }
                producer::send(&self.producer, record)
                    .map_err(|e| RunError::kafka("produce a changelog record", e))?;
            }
            task.prepared = Some(changes);
        }
        Ok(())
    }

    /// On a clean stop, purges the repartition topics up to what is committed.
    fn final_purge(&mut self) {
        let positions = self.repartition_positions();
        if let Some(purger) = &mut self.purger {
            purger.next = Instant::now();
            purger.after_commit(&positions);
        }
    }

    /// The consumed positions of the tasks' repartition partitions.
    fn repartition_positions(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values() {
            // A queue whose engine topic differs reads a repartition topic.
            for q in task.queues.iter().filter(|q| q.topic != q.engine_topic) {
                if let Some(next) = q.consumed {
                    let _ = tpl.add_partition_offset(&q.topic, task.id, Offset::Offset(next));
                }
            }
        }
        tpl
    }

    fn offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.raw_offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        for task in self.tasks.values() {
            for q in &task.queues {
                if let Some(next) = q.consumed {
                    // Only fails for a negative partition, which no task has.
                    let _ = tpl.add_partition_offset(&q.topic, task.id, Offset::Offset(next));
                }
            }
        }
        tpl
    }

    fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        offsets: &TopicPartitionList,
    ) -> Result<(), Committed> {
        if offsets.count() > 0 {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| Committed::Abortable("no consumer group metadata yet".into()))?;
            producer::retry_retriable(|| {
                self.producer
                    .send_offsets_to_transaction(offsets, &metadata, CALL_TIMEOUT)
            })
            .map_err(Committed::from_error)?;
        }
        producer::retry_retriable(|| self.producer.commit_transaction(CALL_TIMEOUT))
            .map_err(Committed::from_error)?;
        self.txn_open = false;
        Ok(())
    }

    fn commit_offsets(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        offsets: &TopicPartitionList,
    ) -> Result<(), Committed> {
        if offsets.count() == 0 {
            return Ok(());
        }
        consumer
            .commit(offsets, CommitMode::Sync)
            .map_err(|e| Committed::Abortable(e.to_string()))
    }

    /// Writes the committed changes to the local stores, with the changelog
    /// position each store now reflects.
    fn apply(
        &mut self,
        ends: &std::collections::HashMap<(String, i32), i64>,
    ) -> Result<(), RunError> {
        for task in self.tasks.values_mut().filter(|t| t.dirty) {
            let Some(mut changes) = task.prepared.take() else {
                continue;
            };
            for ((topic, partition), next) in ends {
                if *partition == task.id {
                    let (key, value) = task::position_entry(topic, *next);
                    task.engine.note_in_commit(&mut changes, &key, value);
                }
            }
            task.engine.apply_commit(changes)?;
            task.dirty = false;
        }
        Ok(())
    }

    /// Abandons everything since the last commit: the transaction, the
    /// tasks' uncommitted state, and the consumer positions.
    fn abort_and_rewind(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        self.summary.aborts += 1;
        if self.txn_open {
            match producer::abort(&self.producer) {
                Ok(()) => self.txn_open = false,
                Err(RunError::Fenced(r)) => return Err(RunError::Fenced(r)),
                Err(e) => return self.rebuild_producer(consumer, &e.to_string()),
            }
        }
        self.reset_tasks()?;
        self.rewind(consumer)
    }

    fn reset_tasks(&mut self) -> Result<(), RunError> {
        let shared = Arc::clone(&self.shared);
        self.producer.context().take();
        self.raw_offsets.clear();
        self.raw_dirty = false;
        for task in self.tasks.values_mut() {
            task.reset(&shared.topo, &shared.opts.engine)?;
        }
        Ok(())
    }

    /// Puts every assigned partition back at its committed offset.
    fn rewind(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        let assigned = consumer
            .assignment()
            .map_err(|e| RunError::kafka("read the assignment", e))?;
        if assigned.count() == 0 {
            return Ok(());
        }
        let committed = super::retry_kafka("fetch the committed offsets", || {
            consumer.committed_offsets(assigned.clone(), CALL_TIMEOUT)
        })?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            let _ = seek.add_partition_offset(e.topic(), e.partition(), offset);
        }
        let result = super::retry_kafka("rewind to the committed offsets", || {
            consumer.seek_partitions(seek.clone(), CALL_TIMEOUT)
        })?;
        for e in result.elements() {
            if let Err(err) = e.error() {
                return Err(RunError::kafka("rewind a partition", err));
            }
        }
        Ok(())
    }

    /// A fatal producer error: build a new producer (its init aborts what
    /// the old one left open) and go back to the last commit.
    fn rebuild_producer(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        reason: &str,
    ) -> Result<(), RunError> {
        tracing::warn!(%reason, "producer failed fatally; rebuilding it and rewinding to the last commit");
        self.summary.producer_rebuilds += 1;
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer = new_producer_patiently(&self.shared)?;
        self.txn_open = false;
        self.reset_tasks()?;
        self.rewind(consumer)
    }

    /// Revocation: commit what the tasks hold (or abort it), then close the
    /// tasks of the revoked partitions; their stores keep the committed state.
    fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        revoked: &TopicPartitionList,
        lost: bool,
    ) -> Result<(), RunError> {
        if lost {
            // Another member may own them already: our offsets would be refused.
            if self.txn_open {
                producer::abort(&self.producer)?;
                self.txn_open = false;
            }
            self.reset_tasks()?;
        } else {
            self.commit(consumer)?;
        }
        let plan = &self.shared.plan;
        let ids: Vec<i32> = revoked
            .elements()
            .iter()
            .filter(|e| plan.inputs.iter().any(|t| t == e.topic()))
            .map(|e| e.partition())
            .collect();
        self.close_tasks(Some(&ids));
        self.queues.clear();
        self.raw_offsets.clear();
        self.raw_waiting.clear();
        Ok(())
    }

    /// Closes the tasks `ids` (all when `None`), discarding uncommitted changes.
    fn close_tasks(&mut self, ids: Option<&[i32]>) {
        let closing: Vec<i32> = match ids {
            Some(ids) => ids.to_vec(),
            None => self.tasks.keys().copied().collect(),
        };
        for id in closing {
            if let Some(task) = self.tasks.remove(&id) {
                let mut backend = task.engine.discard();
                if let Err(e) = backend.sync() {
                    tracing::warn!(task = id, error = %e, "cannot sync the store on close");
                }
            }
        }
    }

    fn finish_summary(&mut self) -> RunSummary {
        let mut summary = self.summary.clone();
        summary.records = self.counts.records;
        summary.dead_letters = self.counts.dead_letters;
        if let (Some(first), Some(last)) = (self.first_record, self.last_commit_done) {
            summary.active_ms = last.saturating_duration_since(first).as_millis() as u64;
        }
        summary
    }
}

/// Test hook: `SLUICE_TEST_COMMIT_DELAY_MS` widens the moment between the
/// changelog being written and the transaction committing, so that the
/// crash tests' kills land there often. Unset in production.
fn fault_injection_pause() {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("SLUICE_TEST_COMMIT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

struct OutputFailure(String);

enum Committed {
    Abortable(String),
    Fatal(String),
    Fenced(String),
}

impl Committed {
    fn from_error(e: KafkaError) -> Self {
        match producer::failure_class(&e) {
            TxnFailure::Abortable(r) => Committed::Abortable(r),
            TxnFailure::Fatal(r) => Committed::Fatal(r),
            TxnFailure::Fenced(r) => Committed::Fenced(r),
        }
    }
}

/// The service a repartitioned record belongs to, read from its value.
fn service_key(topo: &Topology, source: usize, value: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ServiceOnly {
        service: String,
    }
    use prost::Message as _;
    let src = &topo.sources[source];
    let bytes = value?;
    let service = match (src.format, src.kind) {
        (Format::Protobuf, Kind::Image) => crate::proto::ImagePushed::decode(bytes).ok()?.service,
        (Format::Protobuf, Kind::Alert) => crate::proto::Alert::decode(bytes).ok()?.service,
        _ => serde_json::from_slice::<ServiceOnly>(bytes).ok()?.service,
    };
    (!service.is_empty()).then_some(service)
}

/// Why a record is refused before the engine sees it.
struct Rejected {
    error: String,
    /// What the dead letter carries as the value: the text, or a JSON string.
    value: Box<RawValue>,
}

impl Rejected {
    fn send(
        &self,
        topo: &Topology,
        m: &OwnedMessage,
        key: Option<&str>,
        ts: u64,
        out: &mut dyn Output,
    ) -> Result<(), crate::engine::OutputError> {
        let node = topo
            .sources_for(m.topic())
            .and_then(|s| s.first())
            .map(|&s| topo.sources[s].name.as_str())
            .unwrap_or("run");
        tracing::debug!(topic = m.topic(), offset = m.offset(), reason = %self.error, "record refused");
        out.dead_letter(DeadLetter {
            ts,
            key,
            node,
            source_topic: Some(m.topic()),
            error: &self.error,
            value: &self.value,
        })
    }
}

/// The value as JSON text for the engine: protobuf sources are decoded;
/// oversized values and undecodable protobuf are refused here.
/// Borrows the record's bytes when they are text already: this runs for every record.
fn input_value<'m>(
    topo: &Topology,
    m: &'m OwnedMessage,
    max_bytes: usize,
) -> Result<Cow<'m, str>, Rejected> {
    let bytes = m.payload().unwrap_or_default();
    let as_string = |text: &str| {
        serde_json::value::to_raw_value(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
    };
    if bytes.len() > max_bytes {
        let prefix = String::from_utf8_lossy(&bytes[..1024.min(bytes.len())]).into_owned();
        return Err(Rejected {
            error: format!(
                "value of {} bytes is larger than the limit of {max_bytes}",
                bytes.len()
            ),
            value: as_string(&prefix),
        });
    }
    if m.payload().is_none() {
        return Ok(Cow::Borrowed("null"));
    }
    let protobuf = topo
        .sources_for(m.topic())
        .and_then(|s| s.first())
        .map(|&s| &topo.sources[s])
        .filter(|s| s.format == Format::Protobuf)
        .map(|s| s.kind);
    let decoded = match protobuf {
        Some(Kind::Image) => Some(crate::proto::image_to_json(bytes)),
        Some(Kind::Alert) => Some(crate::proto::alert_to_json(bytes)),
        _ => None,
    };
    match decoded {
        Some(Ok(json)) => Ok(Cow::Owned(json)),
        Some(Err(e)) => Err(Rejected {
            error: e.0,
            value: as_string(&String::from_utf8_lossy(bytes)),
        }),
        None => Ok(String::from_utf8_lossy(bytes)),
    }
}
