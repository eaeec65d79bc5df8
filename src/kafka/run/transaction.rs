//! The transaction state machine of a run: begin when the first record of a
//! transaction is produced, commit (changelog, offsets, then the local
//! stores), abort and rewind to the last commit, and rebuild a producer that
//! failed fatally. Under `at_least_once` the same steps flush and commit
//! offsets instead.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::bounded::{self, CallError, TxnCall};
use super::clients;
use super::consumer::Inner;
use super::producer::{self, TxnFailure, TxnProducer, CALL_TIMEOUT, TRANSACTION_TIMEOUT};
use super::rebalance::RunContext;
use super::RunError;

/// Whether a transaction is open, and since when.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenTxn {
    began: Option<Instant>,
}

impl OpenTxn {
    pub fn is_open(&self) -> bool {
        self.began.is_some()
    }

    pub fn close(&mut self) {
        self.began = None;
    }

    /// Whether the coordinator may have aborted it on its own: a broker
    /// outage longer than the transaction timeout does that, and the
    /// producer then reports a fence (its epoch was bumped) although no
    /// other instance took over. The coordinator only times out a
    /// transaction older than the timeout, counted from its first partition,
    /// which is after `began`.
    fn may_have_timed_out(&self) -> bool {
        self.began
            .is_some_and(|t| t.elapsed() >= TRANSACTION_TIMEOUT)
    }
}

/// Begins a transaction unless one is open (or the run is not transactional):
/// the one place a transaction starts, called before anything is produced.
pub fn begin_if_none_open(
    producer: &TxnProducer,
    txn: &mut OpenTxn,
    transactional: bool,
) -> Result<(), KafkaError> {
    if transactional && !txn.is_open() {
        producer.begin_transaction()?;
        txn.began = Some(Instant::now());
    }
    Ok(())
}

impl Inner {
    /// Commits: changelog records for every changed store, then offsets and
    /// output atomically (a transaction, or flush-then-commit), then the
    /// local stores.
    pub(super) fn commit(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        // Idle tasks too: their last writes must reach table files in time.
        for task in self.tasks.values_mut() {
            task.engine.flush_state_if_due();
        }
        let dirty = self.raw_dirty || self.tasks.values().any(|t| t.dirty);
        if !dirty && !self.txn_open.is_open() {
            return Ok(());
        }
        let started = Instant::now();
        begin_if_none_open(
            &self.producer,
            &mut self.txn_open,
            self.shared.exactly_once(),
        )
        .map_err(|e| producer::classify(e, "begin a transaction"))?;
        if let Err(e) = self.produce_changelogs() {
            tracing::warn!(error = %e, "producing the changelog failed; aborting");
            return self.abort_and_rewind(consumer, "changelog");
        }
        let offsets = self.offsets();
        // The offsets go to the group coordinator while the changelog's
        // records are still on their way: their two round trips overlap the
        // drain instead of following it. Offsets sent in a transaction count
        // only once it commits, which is after every delivery; a failed
        // delivery aborts them with the rest of the transaction.
        let sending = match self.start_sending_offsets(consumer, &offsets) {
            Ok(sending) => sending,
            Err(failure) => return self.on_commit_failure(consumer, failure),
        };
        let drained = producer::drain(&self.producer);
        // librdkafka takes one transactional call at a time: the offsets'
        // answer comes first, whatever the drain found.
        let sent = sending.map_or(Ok(()), |s| s.finish(&self.producer));
        drained?;
        let deliveries = self.producer.context().take();
        match sent {
            // The failed deliveries below abort it anyway, and say why.
            Err(TxnFailure::Abortable(_)) if deliveries.failed > 0 => {}
            Err(failure) => return self.on_commit_failure(consumer, failure),
            Ok(()) => {}
        }
        if deliveries.failed > 0 {
            tracing::warn!(failed = deliveries.failed, first = ?deliveries.first_error, "deliveries failed; aborting");
            return self.abort_and_rewind(consumer, "delivery");
        }
        // Tests widen the moment between the changelog being written and
        // the transaction committing, so that crash tests' kills land there.
        crate::fault::reached("txn.before-commit");
        let committed = if self.shared.exactly_once() {
            self.end_transaction()
        } else {
            self.commit_offsets(consumer, &offsets)
        };
        if let Err(failure) = committed {
            return self.on_commit_failure(consumer, failure);
        }
        for e in offsets.elements() {
            if let Offset::Offset(next) = e.offset() {
                self.committed
                    .insert((e.topic().to_owned(), e.partition()), next);
            }
        }
        self.apply(&deliveries.changelog_ends)?;
        self.publish_commit(started.elapsed());
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
        if self.summary.commit_ms.len() < super::COMMIT_SAMPLES {
            self.summary
                .commit_ms
                .push(u32::try_from(ms).unwrap_or(u32::MAX));
        }
        self.last_commit_done = Some(Instant::now());
        Ok(())
    }

    /// Hands what the committed transaction did to the metrics.
    fn publish_commit(&mut self, took: std::time::Duration) {
        let txn = std::mem::take(&mut self.txn_counts);
        let tasks = self
            .tasks
            .values_mut()
            .map(|t| {
                let (processed, nodes) = t.take_committed_counts();
                (t.id, processed, nodes)
            })
            .collect();
        self.shared.metrics.committed(took, txn, tasks);
        self.refresh_gauges();
    }

    pub(super) fn produce_changelogs(&mut self) -> Result<(), RunError> {
        let shared = Arc::clone(&self.shared);
        let producer = &self.producer;
        for task in self.tasks.values_mut().filter(|t| t.dirty) {
            // At-least-once: the input positions this state follows from,
            // so that a restore can leave out what was never committed.
            let inputs = (!shared.exactly_once()).then(|| task.input_positions());
            let id = task.id;
            task.produce_changelog(&shared.plan.changelogs, &mut |r| {
                let mut record = BaseRecord::<[u8], [u8]>::to(r.topic)
                    .partition(id)
                    .key(r.key);
                if let Some(v) = r.value {
                    record = record.payload(v);
                }
                if let Some(inputs) = &inputs {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: super::positions::INPUTS_HEADER,
                        value: Some(inputs.as_str()),
                    }));
                }
                producer::send(producer, record)
                    .map_err(|e| RunError::kafka("produce a changelog record", e))
            })?;
        }
        Ok(())
    }

    /// The offsets the commit carries: every task partition's, consumed or,
    /// when nothing was consumed since the task opened, committed before.
    /// Always sending them makes each transaction pass KIP-447's group
    /// generation check, which alone fences an instance whose partitions
    /// moved while it was paused: a task firing only wall-clock timers would
    /// otherwise commit output its partition's new owner also produces.
    pub(super) fn offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.raw_offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        for task in self.tasks.values() {
            for q in &task.queues {
                let committed = self.committed.get(&(q.topic.clone(), task.id)).copied();
                if let Some(next) = q.consumed.or(committed) {
                    // Only fails for a negative partition, which no task has.
                    let _ = tpl.add_partition_offset(&q.topic, task.id, Offset::Offset(next));
                }
            }
        }
        tpl
    }

    /// What a failed commit leads to: an abort, or a new producer.
    fn on_commit_failure(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        failure: TxnFailure,
    ) -> Result<(), RunError> {
        match failure {
            TxnFailure::Abortable(reason) => {
                tracing::warn!(%reason, "commit failed; aborting and rewinding");
                self.abort_and_rewind(consumer, "commit")
            }
            TxnFailure::Fatal(reason) => self.rebuild_producer(consumer, &reason, "fatal"),
            TxnFailure::Stuck(reason) => self.rebuild_producer(consumer, &reason, "stuck_call"),
            TxnFailure::Fenced(reason) => self.on_fenced(consumer, reason),
        }
    }

    /// Starts `send_offsets_to_transaction` on its helper thread (none
    /// under at-least-once, or without offsets).
    fn start_sending_offsets(
        &self,
        consumer: &BaseConsumer<RunContext>,
        offsets: &TopicPartitionList,
    ) -> Result<Option<SendingOffsets>, TxnFailure> {
        if !self.shared.exactly_once() || offsets.count() == 0 {
            return Ok(None);
        }
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| TxnFailure::Abortable("no consumer group metadata yet".into()))?;
        // The helper thread a call runs on may outlive this commit.
        let (offsets, metadata) = (Arc::new(offsets.clone()), Arc::new(metadata));
        let retry_until = Instant::now() + CALL_TIMEOUT;
        let started =
            send_offsets(&self.producer, &offsets, &metadata).map_err(TxnFailure::from)?;
        Ok(Some(SendingOffsets {
            offsets,
            metadata,
            started,
            retry_until,
        }))
    }

    /// Commits the transaction, whose offsets were sent.
    fn end_transaction(&mut self) -> Result<(), TxnFailure> {
        producer::retry_retriable(|| {
            bounded::call(&self.producer, TxnCall::Commit, |p| {
                p.commit_transaction(CALL_TIMEOUT)
            })
        })
        .map_err(TxnFailure::from)?;
        if crate::fault::reached("txn.after-end-txn") == Some(crate::fault::Fault::Fail) {
            // As if the call timed out after EndTxn reached the coordinator:
            // committed, but this run cannot know it.
            return Err(TxnFailure::Fatal(
                "commit_transaction timed out (injected after EndTxn)".into(),
            ));
        }
        self.txn_open.close();
        Ok(())
    }

    pub(super) fn commit_offsets(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        offsets: &TopicPartitionList,
    ) -> Result<(), TxnFailure> {
        if offsets.count() == 0 {
            return Ok(());
        }
        // The output is out already: rewinding now would repeat it. Retry
        // through a broker outage; a rebalance (the generation moved on)
        // refuses the commit for good, and then the batch is processed again.
        super::retry_kafka("commit the offsets", &self.shared.stop, || {
            consumer.commit(offsets, CommitMode::Sync)
        })
        .map_err(TxnFailure::abortable)
    }

    /// Writes the committed changes to the local stores, with the changelog
    /// position each store now reflects.
    pub(super) fn apply(
        &mut self,
        ends: &std::collections::HashMap<(String, i32), i64>,
    ) -> Result<(), RunError> {
        let transactional = self.shared.exactly_once();
        for task in self.tasks.values_mut().filter(|t| t.dirty) {
            task.applied(ends, transactional)?;
        }
        Ok(())
    }

    /// Abandons everything since the last commit: the transaction, the
    /// tasks' uncommitted state, and the consumer positions.
    /// `class` says what failed (see `metrics::ABORT_CLASSES`).
    pub(super) fn abort_and_rewind(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        class: &'static str,
    ) -> Result<(), RunError> {
        self.summary.aborts += 1;
        self.shared.metrics.aborted(class);
        if self.txn_open.is_open() {
            match producer::abort(&self.producer) {
                Ok(()) => self.txn_open.close(),
                Err(RunError::Fenced(r)) => return self.on_fenced(consumer, r),
                Err(e) => return self.rebuild_producer(consumer, &e.to_string(), "abort_failed"),
            }
        }
        self.reset_tasks()?;
        self.rewind(consumer)
    }

    /// Aborts the open transaction without rewinding (the partitions are
    /// being revoked); a producer that cannot abort is replaced.
    pub(super) fn abandon_transaction(&mut self) -> Result<(), RunError> {
        if !self.txn_open.is_open() {
            return Ok(());
        }
        match producer::abort(&self.producer) {
            Ok(()) => {
                self.txn_open.close();
                Ok(())
            }
            Err(RunError::Fenced(r)) if !self.txn_open.may_have_timed_out() => {
                self.shared.metrics.fenced();
                Err(RunError::Fenced(r))
            }
            Err(e) => {
                self.shared.metrics.rebuilt("abort_failed");
                self.replace_producer(&e.to_string())
            }
        }
    }

    /// A fence: from another instance with our transactional id, so stop;
    /// unless the open transaction outlived the transaction timeout, when
    /// the coordinator's own abort of it looks the same (a broker outage).
    /// Then only the producer is lost: rebuild it.
    fn on_fenced(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        reason: String,
    ) -> Result<(), RunError> {
        if !self.txn_open.may_have_timed_out() {
            self.shared.metrics.fenced();
            return Err(RunError::Fenced(reason));
        }
        tracing::warn!(%reason, timeout = ?TRANSACTION_TIMEOUT, "fenced with a transaction older than the transaction timeout: the coordinator aborted it; rebuilding the producer");
        self.rebuild_producer(consumer, &reason, "coordinator_timeout")
    }

    pub(super) fn reset_tasks(&mut self) -> Result<(), RunError> {
        let shared = Arc::clone(&self.shared);
        self.txn_counts = Default::default();
        self.producer.context().take();
        self.raw_offsets.clear();
        self.raw_dirty = false;
        for task in self.tasks.values_mut() {
            task.reset(&shared.topo, &shared.opts.engine)?;
        }
        Ok(())
    }

    /// Puts every assigned partition back at its committed offset, and
    /// takes those offsets as the ones the next transaction builds on: after
    /// a producer rebuild the last commit's outcome was decided by the new
    /// producer, so what this run last committed may not be what the group
    /// holds. A partition that consumes nothing before the next commit is
    /// committed at the offset kept here; a stale one would move the
    /// group's offset backwards.
    pub(super) fn rewind(&mut self, consumer: &BaseConsumer<RunContext>) -> Result<(), RunError> {
        let assigned = consumer
            .assignment()
            .map_err(|e| RunError::kafka("read the assignment", e))?;
        if assigned.count() == 0 {
            return Ok(());
        }
        let committed = super::committed::fetch(&self.shared, consumer, &assigned)?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let offset = match e.offset() {
                Offset::Offset(o) => {
                    self.committed.insert(key, o);
                    Offset::Offset(o)
                }
                _ => {
                    self.committed.remove(&key);
                    Offset::Beginning
                }
            };
            let _ = seek.add_partition_offset(e.topic(), e.partition(), offset);
        }
        let result =
            super::retry_kafka("rewind to the committed offsets", &self.shared.stop, || {
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
    pub(super) fn rebuild_producer(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        reason: &str,
        class: &'static str,
    ) -> Result<(), RunError> {
        tracing::warn!(%reason, "producer failed fatally; rebuilding it and rewinding to the last commit");
        self.shared.metrics.rebuilt(class);
        self.set_ready(false, "rebuilding the producer");
        self.replace_producer(reason)?;
        // The reopened tasks' queues start unpaused.
        self.resume_paused(consumer);
        // Rewind before reopening: it reads the group's committed offsets,
        // which the reopened tasks' restores judge changelog records by.
        self.rewind(consumer)?;
        self.reopen_tasks()
    }

    /// Drops the producer for a new one, whose `init_transactions` decides
    /// what the old one left open: commits it if the coordinator had logged
    /// the commit, else aborts it.
    fn replace_producer(&mut self, reason: &str) -> Result<(), RunError> {
        self.summary.producer_rebuilds += 1;
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer = clients::new_producer_patiently(&self.shared)?;
        tracing::info!(%reason, "producer rebuilt");
        self.txn_open.close();
        Ok(())
    }

    /// After a producer rebuild the last transaction's outcome is whatever
    /// the new producer's init decided, maybe a commit whose changes never
    /// reached the local stores: each task reopens from the changelog,
    /// which holds the outcome (a restore from the positions the store
    /// recorded, usually short).
    fn reopen_tasks(&mut self) -> Result<(), RunError> {
        self.txn_counts = Default::default();
        self.producer.context().take();
        self.raw_offsets.clear();
        self.raw_dirty = false;
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        self.close_tasks(None);
        for id in ids {
            self.open_task(id)?;
        }
        self.set_ready(true, "");
        Ok(())
    }
}

/// A transaction's offsets on their way to the group coordinator.
struct SendingOffsets {
    offsets: Arc<TopicPartitionList>,
    metadata: Arc<ConsumerGroupMetadata>,
    started: bounded::Started,
    /// Retriable answers are retried until then, as for a call made at once.
    retry_until: Instant,
}

impl SendingOffsets {
    /// Waits for the answer, and sends again while it is retriable.
    fn finish(self, producer: &Arc<TxnProducer>) -> Result<(), TxnFailure> {
        let SendingOffsets {
            offsets,
            metadata,
            started,
            retry_until,
        } = self;
        producer::retry_retriable_after(started.wait(), retry_until, || {
            send_offsets(producer, &offsets, &metadata)?.wait()
        })
        .map_err(TxnFailure::from)
    }
}

fn send_offsets(
    producer: &Arc<TxnProducer>,
    offsets: &Arc<TopicPartitionList>,
    metadata: &Arc<ConsumerGroupMetadata>,
) -> Result<bounded::Started, CallError> {
    let (offsets, metadata) = (Arc::clone(offsets), Arc::clone(metadata));
    bounded::start(producer, TxnCall::SendOffsets, move |p| {
        p.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)
    })
}
