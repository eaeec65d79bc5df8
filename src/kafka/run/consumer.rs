//! The run loop: one consumer in the group `app.id`, one producer, and the
//! tasks of the partitions this instance is assigned.
//!
//! Everything happens on one thread. The rebalance callbacks
//! ([`super::rebalance`]) run inside `consumer.poll`, and share the tasks with
//! the loop through a mutex the loop never holds while polling. Commits,
//! aborts and producer rebuilds are in [`super::transaction`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use super::clients::{self, RestoreContext};
use super::output::OutputCounts;
use super::producer::{self, TxnFailure, TxnProducer};
use super::purge::Purger;
use super::rebalance::{current_strays, RunContext, SplitQueue, Stray};
use super::restore::RestoreEnv;
use super::task::{Task, TaskSetup};
use super::topics::{Layout, Plan};
use super::transaction::OpenTxn;
use super::{ClockMode, RunError, RunOptions, RunSummary};
use crate::state::SharedMemory;
use crate::topology::kafka::Guarantee;
use crate::topology::Topology;

/// What every part of a run reads and nothing changes.
pub struct Shared {
    pub metrics: Arc<super::metrics::RunMetrics>,
    pub topo: Arc<Topology>,
    pub plan: Plan,
    pub layout: Layout,
    pub state_root: PathBuf,
    pub base: ClientConfig,
    pub instance: String,
    pub opts: RunOptions,
    pub memory: SharedMemory,
    /// Set when the run is asked to stop (or a sibling thread failed): also
    /// ends waits on an absent cluster.
    pub stop: Arc<AtomicBool>,
    /// This thread's index among the instance's processing threads.
    pub thread: usize,
    /// Readiness and the idle exit, shared by the instance's threads.
    pub board: Arc<super::threads::Board>,
    /// The instance's entry in the directory (with `state_query`).
    pub directory: Option<Arc<super::directory::Publisher>>,
}

impl Shared {
    pub(super) fn exactly_once(&self) -> bool {
        self.opts.guarantee == Guarantee::ExactlyOnce
    }

    pub(super) fn transactional_id(&self) -> Option<String> {
        self.exactly_once()
            .then(|| format!("{}-{}", self.topo.app_id, self.instance))
    }

    pub(super) fn task_setup(&self) -> TaskSetup<'_> {
        TaskSetup {
            topo: &self.topo,
            plan: &self.plan,
            layout: &self.layout,
            state_root: &self.state_root,
            engine_options: &self.opts.engine,
            memory: &self.memory,
            stop: &self.stop,
        }
    }
}

/// Mutable state of the run, shared with the rebalance callbacks.
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) producer: Arc<TxnProducer>,
    pub(super) txn_open: OpenTxn,
    pub(super) tasks: BTreeMap<i32, Task>,
    pub(super) queues: Vec<SplitQueue>,
    /// Partitions assigned by the last rebalance, not yet opened.
    pub(super) assigned: Option<Vec<(String, i32)>>,
    /// Next offset to commit of each repartitioned input partition.
    pub(super) raw_offsets: BTreeMap<(String, i32), i64>,
    /// Records were forwarded to a repartition topic since the last commit.
    pub(super) raw_dirty: bool,
    /// The committed offset of each assigned input partition, as found at
    /// assignment and then as committed: what a transaction carries for a
    /// partition with nothing consumed since, so that KIP-447's generation
    /// check fences this instance once the partition has moved.
    pub(super) committed: BTreeMap<(String, i32), i64>,
    /// Repartitioned input partitions not yet read to their end.
    pub(super) raw_waiting: HashSet<(String, i32)>,
    /// Partitions paused when they were assigned because the instance's
    /// other threads had not joined the group yet: their records would be
    /// fetched only to be dropped at the rebalance that the next join
    /// brings. Resumed once the wait is over, or at a revocation
    /// (librdkafka keeps a partition paused across assignments).
    pub(super) held_for_siblings: Vec<(String, i32)>,
    /// An error raised inside a callback, surfaced by the loop.
    pub(super) failure: Option<RunError>,
    pub(super) counts: OutputCounts,
    /// What the open transaction did, published to the metrics at its commit.
    pub(super) txn_counts: super::metrics::TxnCounts,
    /// When the tasks' gauges (timers, entries) are next refreshed.
    pub(super) gauges_due: Instant,
    pub(super) summary: RunSummary,
    pub(super) restorer: Arc<BaseConsumer<RestoreContext>>,
    /// Revocations so far, so that a restore done outside the lock can tell
    /// whether its partitions stayed.
    pub(super) revocations: u64,
    pub(super) first_record: Option<Instant>,
    pub(super) last_commit_done: Option<Instant>,
    /// Deletes consumed records of repartition topics (none without them).
    pub(super) purger: Option<Purger>,
    /// State queries waiting for the loop (with `state_query`).
    pub(super) queries: Option<super::state_http::StateQueries>,
}

pub struct Runtime {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<RunContext>>,
    /// When this thread subscribed: it waits for its siblings to join the
    /// group from then on, for at most [`JOIN_WAIT`].
    subscribed: Instant,
}

/// How long a thread waits for the instance's other threads to join the
/// group before it opens the tasks it was assigned (see
/// [`super::threads::Board::all_joined`]). A sibling that takes longer
/// (its clients slow to start) only costs a rebalance, as before.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// How often the loop logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long an idle loop waits in the main queue's poll, which records (on
/// the partitions' own queues) do not wake: the most a record waits there.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Records processed per task before the loop serves the consumer again.
pub(super) const PROCESS_BUDGET: usize = 2_000;

impl Runtime {
    pub fn new(shared: Arc<Shared>) -> Result<Self, RunError> {
        let consumer = Arc::new(clients::create_consumer(&shared)?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let _ = consumer.context().metrics.set(Arc::clone(&shared.metrics));
        let mut inner = Inner {
            producer: clients::new_producer_patiently(&shared)?,
            restorer: Arc::new(clients::create_restorer(&shared)?),
            revocations: 0,
            shared: Arc::clone(&shared),
            txn_open: OpenTxn::default(),
            tasks: BTreeMap::new(),
            queues: Vec::new(),
            assigned: None,
            raw_offsets: BTreeMap::new(),
            committed: BTreeMap::new(),
            raw_dirty: false,
            raw_waiting: HashSet::new(),
            held_for_siblings: Vec::new(),
            failure: None,
            counts: OutputCounts::default(),
            txn_counts: Default::default(),
            gauges_due: Instant::now(),
            summary: RunSummary::default(),
            first_record: None,
            last_commit_done: None,
            purger: Purger::new(&shared)?,
            queries: None,
        };
        inner.start_state_query();
        *consumer.context().lock() = Some(inner);
        let topics = shared.plan.subscriptions();
        shared
            .board
            .subscribe_together(shared.thread, JOIN_WAIT, &shared.stop);
        // A sibling failed meanwhile: joining only to leave at once would
        // cost the group's other members two rebalances.
        if !shared.stop.load(Ordering::SeqCst) {
            consumer
                .subscribe(&topics)
                .map_err(|e| RunError::kafka("subscribe to the input topics", e))?;
        }
        Ok(Runtime {
            shared,
            consumer,
            subscribed: Instant::now(),
        })
    }

    /// The loop; returns when a stop is asked for, when idle long enough, or on an
    /// error it cannot handle in place.
    pub fn run(self) -> Result<RunSummary, RunError> {
        let result = self.run_loop(&self.shared.stop);
        let summary = self.shutdown(result.is_ok());
        result.map(|()| summary)
    }

    fn run_loop(&self, stop: &AtomicBool) -> Result<(), RunError> {
        let interval = self.shared.opts.commit_interval;
        let mut next_commit = Instant::now() + interval;
        let mut last_activity = Instant::now();
        let mut next_report = Instant::now() + PROGRESS_EVERY;
        let mut busy = false;
        let mut held: Vec<Stray> = Vec::new();
        let mut joining = true;
        while !stop.load(Ordering::Relaxed) {
            // Idle: wait for input, but not past the next commit's due time.
            let wait = match busy {
                true => Duration::ZERO,
                false => IDLE_POLL.min(next_commit.saturating_duration_since(Instant::now())),
            };
            let mut stray = std::mem::take(&mut held);
            stray.extend(self.poll_main(wait)?);
            joining = joining && self.siblings_joining();
            if joining {
                // Nothing is opened, fetched, forwarded or committed yet;
                // records that reached the main queue wait for their tasks.
                held = stray;
                last_activity = Instant::now();
                next_commit = Instant::now() + interval;
                continue;
            }
            self.open_assigned(&mut stray)?;
            let mut guard = self.consumer.context().lock();
            let inner = guard
                .as_mut()
                .ok_or_else(|| RunError::Setup("run state gone".into()))?;
            inner.handle_failure(&self.consumer)?;
            let stray = current_strays(stray, self.consumer.context().revocations());
            inner.enqueue_all(&self.consumer, stray)?;
            let moved = inner.fill_queues(&self.consumer)?;
            let processed = inner.process(&self.consumer)? + moved;
            inner.punctuate(&self.consumer)?;
            inner.answer_queries();
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
                // From now, not from the missed due time: after a long
                // block (a restore through an outage) one line, not a burst.
                next_report = Instant::now() + PROGRESS_EVERY;
            }
            if inner.idle_exit(last_activity.elapsed()) {
                tracing::info!(
                    thread = self.shared.thread,
                    "idle: everything committed; exiting"
                );
                break;
            }
        }
        Ok(())
    }

    /// Whether this thread still waits for the instance's other threads to
    /// join the group before it opens its tasks (at most [`JOIN_WAIT`]).
    fn siblings_joining(&self) -> bool {
        self.subscribed.elapsed() < JOIN_WAIT
            && !self.shared.board.others_joined(self.shared.thread)
    }

    /// Opens the tasks of newly assigned partitions. Restores run without
    /// the run state's lock and keep polling the consumer, so that a restore
    /// longer than `max.poll.interval.ms` keeps the member in the group; a
    /// rebalance meanwhile is served as usual, and a task whose partitions
    /// were revoked during its restore is closed again.
    fn open_assigned(&self, stray: &mut Vec<Stray>) -> Result<(), RunError> {
        let opening = {
            let mut guard = self.consumer.context().lock();
            let inner = guard
                .as_mut()
                .ok_or_else(|| RunError::Setup("run state gone".into()))?;
            inner.resume_held_for_siblings(&self.consumer);
            inner.take_assignment(&self.consumer)?
        };
        let Some(opening) = opening else {
            return Ok(());
        };
        let setup = self.shared.task_setup();
        for (id, committed) in opening.tasks {
            let mut keep_alive = || {
                stray.extend(self.poll_main(Duration::ZERO)?);
                Ok(())
            };
            let mut env = RestoreEnv {
                restorer: &opening.restorer,
                committed,
                keep_alive: &mut keep_alive,
            };
            let (task, stats) = Task::open_with(id, &setup, &mut env)?;
            let mut guard = self.consumer.context().lock();
            let inner = guard
                .as_mut()
                .ok_or_else(|| RunError::Setup("run state gone".into()))?;
            inner.adopt(task, stats, opening.revocations);
        }
        let guard = self.consumer.context().lock();
        if let Some(inner) = guard.as_ref() {
            if inner.assigned.is_none() {
                inner.set_ready(true, "");
                inner.publish_partitions();
            }
        }
        Ok(())
    }

    /// Serves callbacks; returns records that reached the main queue before
    /// their partition's queue was split off.
    fn poll_main(&self, wait: Duration) -> Result<Vec<Stray>, RunError> {
        let mut stray = Vec::new();
        let mut timeout = wait;
        loop {
            match self.consumer.poll(timeout) {
                // Stamped after the poll: a revocation served within it
                // came before this record in the queue.
                Some(Ok(m)) => stray.push(Stray {
                    revocations: self.consumer.context().revocations(),
                    message: m.detach(),
                }),
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
            let kind = format!("consumer poll: {e}");
            if let Some(held_back) = super::repeats::CLIENT_ERRORS.admit(&kind) {
                tracing::warn!(error = %e, held_back, "consumer error");
            }
            Ok(())
        }
    }
}

impl Inner {
    pub(super) fn event_time(&self) -> bool {
        self.shared.opts.clock == ClockMode::Event
    }

    /// Errors raised in callbacks: fencing ends the run, a dead producer is rebuilt.
    fn handle_failure(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        match self.failure.take() {
            None => Ok(()),
            Some(RunError::ProducerFatal(reason)) => {
                self.rebuild_producer(consumer, &reason, "fatal")
            }
            Some(e) => Err(e),
        }
    }

    fn finish_summary(&mut self) -> RunSummary {
        let mut summary = self.summary.clone();
        summary.records = self.counts.records;
        summary.dead_letters = self.counts.dead_letters;
        if let (Some(first), Some(last)) = (self.first_record, self.last_commit_done) {
            summary.active_ms = last.saturating_duration_since(first).as_millis() as u64;
        }
        summary.finish_percentiles();
        summary
    }
}
