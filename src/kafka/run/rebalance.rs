//! Rebalances: the consumer's callbacks, the pending assignment they leave
//! for the loop, and opening and closing the tasks of moved partitions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::clients::RestoreContext;
use super::consumer::{is_end_of_partition, Inner};
use super::restore::{RestoreEnv, RestoreStats};
use super::task::Task;
use super::RunError;

/// A partition's own fetch queue, split off the consumer's main queue so
/// that its end-of-partition events say which topic they are about.
pub(super) struct SplitQueue {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) queue: PartitionQueue<RunContext>,
}

pub struct RunContext {
    inner: Mutex<Option<Inner>>,
    pub(super) consumer: OnceLock<Weak<BaseConsumer<RunContext>>>,
    /// Where librdkafka's statistics (consumer lag) go.
    pub(super) metrics: OnceLock<Arc<super::metrics::RunMetrics>>,
    /// Revocations served so far, readable without the lock: each record
    /// taken from the main queue is stamped with it (see [`Stray`]).
    revocations: AtomicU64,
    /// The processing thread this consumer serves (its lag is reported apart).
    thread: usize,
}

impl RunContext {
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<Inner>> {
        // A panic with the lock held already ends the run; the data is not reused.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }
}

/// A record that reached the consumer's main queue before its partition's
/// queue was split off, with the revocations served when it was taken.
pub(super) struct Stray {
    pub(super) revocations: u64,
    pub(super) message: OwnedMessage,
}

/// The strays still owed to the run: those taken before a revocation since
/// are dropped. The partitions were revoked (the protocol is eager: all of
/// them), and whoever owns them now fetches them again from the committed
/// offsets: forwarding or buffering them too would repeat them.
pub(super) fn current_strays(strays: Vec<Stray>, revocations: u64) -> Vec<OwnedMessage> {
    let taken = strays.len();
    let current: Vec<OwnedMessage> = strays
        .into_iter()
        .filter(|s| s.revocations == revocations)
        .map(|s| s.message)
        .collect();
    if current.len() < taken {
        tracing::debug!(
            dropped = taken - current.len(),
            "records taken before a revocation; they will be fetched again"
        );
    }
    current
}

impl ClientContext for RunContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("consumer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_end_of_partition(&error) {
            return; // reported on the partition queues
        }
        super::repeats::client_error("consumer", &error, reason);
    }

    /// librdkafka's statistics (every few seconds when metrics are on):
    /// the lag of each assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        let mut lag = std::collections::BTreeMap::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition.
                if *partition < 0 || !p.desired {
                    continue;
                }
                if let Some(n) = partition_lag(p) {
                    lag.insert((topic.clone(), *partition), n);
                }
            }
        }
        metrics.lag(self.thread, lag);
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
        inner.revocations += 1;
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let lost = consumer.assignment_lost();
        tracing::info!(partitions = tpl.count(), lost, "partitions revoked");
        inner.set_ready(false, "rebalancing");
        if let Err(e) = inner.on_revoke(consumer, tpl, lost) {
            inner.failure.get_or_insert(e);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
        inner.shared.board.joined(inner.shared.thread);
        // Tests widen the moment in which fetched records reach the main
        // queue before their partition's queue is split off.
        crate::fault::reached("rebalance.before-split");
        // Split before returning to the poll loop: the fetcher starts now.
        if let Some(owned) = self.consumer.get().and_then(Weak::upgrade) {
            for (topic, partition) in &partitions {
                if let Some(queue) = owned.split_partition_queue(topic, *partition) {
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
        if !inner.shared.board.all_joined() {
            inner.hold_for_siblings(consumer, &partitions);
        }
        inner.assigned = Some(partitions);
    }
}

impl RunContext {
    pub(super) fn new(thread: usize) -> Self {
        RunContext {
            thread,
            inner: Mutex::new(None),
            consumer: OnceLock::new(),
            metrics: OnceLock::new(),
            revocations: AtomicU64::new(0),
        }
    }
}

/// The group's committed offset of each input topic's partition of a task
/// (`None`: nothing committed yet).
pub(super) type CommittedInputs = HashMap<String, Option<i64>>;

/// Tasks to open after a rebalance.
pub(super) struct Opening {
    /// Each task, with its inputs' committed offsets under at-least-once.
    pub tasks: Vec<(i32, Option<CommittedInputs>)>,
    pub restorer: Arc<BaseConsumer<RestoreContext>>,
    /// Revocations seen so far: one more by the time a task is restored
    /// means its partitions may have gone.
    pub revocations: u64,
}

impl Inner {
    /// Takes the partitions assigned by the last rebalance, once the group's
    /// committed offsets for them are stable: a predecessor's pending
    /// transaction is then decided, and the changelogs hold it. Returns the
    /// tasks to open; the run restores them without holding this state.
    pub(super) fn take_assignment(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
    ) -> Result<Option<Opening>, RunError> {
        let Some(assigned) = self.assigned.take() else {
            return Ok(None);
        };
        let tpl = partition_list(&assigned);
        let committed = super::committed::fetch(&self.shared, consumer, &tpl)?;
        for e in committed.elements() {
            if let Offset::Offset(next) = e.offset() {
                self.committed
                    .insert((e.topic().to_owned(), e.partition()), next);
            }
        }
        let plan = &self.shared.plan;
        let mut ids: Vec<i32> = assigned
            .iter()
            .filter(|(t, _)| plan.inputs.contains(t))
            .map(|(_, p)| *p)
            .filter(|p| !self.tasks.contains_key(p))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let committed = ids
            .iter()
            .map(|&id| {
                let inputs = (!self.shared.exactly_once())
                    .then(|| Self::committed_inputs(plan, &committed, id));
                (id, inputs)
            })
            .collect();
        Ok(Some(Opening {
            tasks: committed,
            restorer: Arc::clone(&self.restorer),
            revocations: self.revocations,
        }))
    }

    /// Takes in a task restored outside the lock, unless its partitions
    /// were revoked meanwhile (a newer assignment then opens it again).
    pub(super) fn adopt(&mut self, task: Task, stats: RestoreStats, revocations: u64) {
        self.shared
            .metrics
            .restored(task.id, stats.records, stats.elapsed);
        self.summary.restored_records += stats.records;
        self.summary.restore_ms += stats.elapsed.as_millis() as u64;
        self.summary.restore_malformed += stats.malformed;
        self.summary.restore_uncommitted += stats.uncommitted;
        if self.revocations != revocations {
            tracing::info!(
                task = task.id,
                "partitions revoked during the restore; closing the task"
            );
            let mut backend = task.engine.discard();
            if let Err(e) = backend.sync() {
                tracing::warn!(error = %e, "cannot sync the store on close");
            }
            return;
        }
        self.tasks.insert(task.id, task);
    }

    /// Opens task `id` while holding the run state (after a producer
    /// rebuild: the store may be one commit behind its changelogs, and the
    /// restore reads from its recorded positions, usually little).
    pub(super) fn open_task(&mut self, id: i32) -> Result<(), RunError> {
        let committed = (!self.shared.exactly_once()).then(|| {
            self.shared
                .plan
                .inputs
                .iter()
                .map(|t| (t.clone(), self.committed.get(&(t.clone(), id)).copied()))
                .collect()
        });
        let restorer = Arc::clone(&self.restorer);
        // The group cannot be polled from here: its callbacks take this state.
        let mut keep_alive = || Ok(());
        let mut env = RestoreEnv {
            restorer: &restorer,
            committed,
            keep_alive: &mut keep_alive,
        };
        let (task, stats) = Task::open_with(id, &self.shared.task_setup(), &mut env)?;
        let revocations = self.revocations;
        self.adopt(task, stats, revocations);
        Ok(())
    }

    /// The group's committed offsets of task `id`'s inputs, by topic.
    fn committed_inputs(
        plan: &super::topics::Plan,
        committed: &TopicPartitionList,
        id: i32,
    ) -> CommittedInputs {
        plan.inputs
            .iter()
            .map(|topic| {
                let next = committed
                    .find_partition(topic, id)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                (topic.clone(), next)
            })
            .collect()
    }

    /// Revocation: commit what the tasks hold (or abort it), then close the
    /// tasks of the revoked partitions; their stores keep the committed state.
    pub(super) fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        revoked: &TopicPartitionList,
        lost: bool,
    ) -> Result<(), RunError> {
        forget_revoked(&mut self.assigned, revoked);
        self.resume_paused(consumer);
        if lost {
            // Another member may own them already: our offsets would be refused.
            self.abandon_transaction()?;
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
        self.publish_partitions();
        self.queues.clear();
        self.raw_offsets.clear();
        self.raw_waiting.clear();
        self.committed.clear();
        Ok(())
    }

    /// Resumes every partition that flow control paused, before its queue
    /// is dropped: librdkafka keeps a pause across a revocation and the
    /// next assignment, and a reopened or reassigned task starts with
    /// queues that are not paused, which flow control never resumes, so
    /// the partition would not be fetched again. Called before a seek too:
    /// a resume right after a seek can make librdkafka ignore the seek
    /// (librdkafka#2190).
    pub(super) fn resume_paused(&mut self, consumer: &BaseConsumer<RunContext>) {
        self.resume_held_for_siblings(consumer);
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values() {
            for q in task.queues.iter().filter(|q| q.paused) {
                tpl.add_partition(&q.topic, task.id);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.resume(&tpl) {
            Ok(()) => self
                .tasks
                .values_mut()
                .flat_map(|t| t.queues.iter_mut())
                .for_each(|q| q.paused = false),
            Err(e) => tracing::warn!(error = %e, "cannot resume the paused partitions"),
        }
    }

    /// Pauses newly assigned partitions while the instance's other threads
    /// join the group (see [`Inner::held_for_siblings`]).
    fn hold_for_siblings(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        partitions: &[(String, i32)],
    ) {
        match consumer.pause(&partition_list(partitions)) {
            Ok(()) => {
                // Added to, not replaced: an assignment that ended without
                // a revocation (a rebalance error) may have left some.
                self.held_for_siblings.extend_from_slice(partitions);
                self.held_for_siblings.sort_unstable();
                self.held_for_siblings.dedup();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot pause the partitions assigned before the other threads joined")
            }
        }
    }

    /// Resumes what [`Inner::hold_for_siblings`] paused, if anything.
    pub(super) fn resume_held_for_siblings(&mut self, consumer: &BaseConsumer<RunContext>) {
        if self.held_for_siblings.is_empty() {
            return;
        }
        // Kept on a failure: the next call tries again.
        match consumer.resume(&partition_list(&self.held_for_siblings)) {
            Ok(()) => self.held_for_siblings.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume the partitions held for the other threads")
            }
        }
    }

    /// Closes the tasks `ids` (all when `None`), discarding uncommitted changes.
    pub(super) fn close_tasks(&mut self, ids: Option<&[i32]>) {
        let closing: Vec<i32> = match ids {
            Some(ids) => ids.to_vec(),
            None => self.tasks.keys().copied().collect(),
        };
        for id in closing {
            self.shared.metrics.task_closed(id);
            if let Some(task) = self.tasks.remove(&id) {
                let mut backend = task.engine.discard();
                if let Err(e) = backend.sync() {
                    tracing::warn!(task = id, error = %e, "cannot sync the store on close");
                }
            }
        }
    }
}

/// Records of a partition not consumed yet: its last stable offset (what
/// read_committed can reach) minus the consumer's position. librdkafka's own
/// `consumer_lag` uses the consumer's committed offset, which transactions
/// (the producer commits the offsets) never update.
fn partition_lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = [p.ls_offset, p.hi_offset].into_iter().find(|o| *o >= 0)?;
    let position = [p.app_offset, p.committed_offset]
        .into_iter()
        .find(|o| *o >= 0)?;
    Some((end - position).max(0))
}

/// An assignment not opened yet, served in the same poll as a revoke of
/// some of its partitions: those are no longer ours, and a task opened for
/// one would fire its wall-clock timers beside their new owner's.
fn forget_revoked(assigned: &mut Option<Vec<(String, i32)>>, revoked: &TopicPartitionList) {
    let Some(pending) = assigned else {
        return;
    };
    pending.retain(|(topic, p)| {
        !revoked
            .elements()
            .iter()
            .any(|e| e.topic() == topic && e.partition() == *p)
    });
    if pending.is_empty() {
        *assigned = None;
    }
}

/// A partition list of (topic, partition) pairs.
fn partition_list<T: AsRef<str>>(partitions: &[(T, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic.as_ref(), *partition);
    }
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(partitions: &[(&str, i32)]) -> TopicPartitionList {
        partition_list(partitions)
    }

    /// Item 5: assign and revoke inside one poll, before the loop opens
    /// the assignment: the loop must find nothing of what was revoked.
    #[test]
    fn a_revoke_in_the_same_poll_takes_back_the_pending_assignment() {
        let mut assigned = Some(vec![("img".to_owned(), 0), ("img".to_owned(), 1)]);
        forget_revoked(&mut assigned, &tpl(&[("img", 1), ("other", 0)]));
        assert_eq!(assigned, Some(vec![("img".to_owned(), 0)]));
        forget_revoked(&mut assigned, &tpl(&[("img", 0)]));
        assert_eq!(assigned, None, "nothing left to open");
        forget_revoked(&mut assigned, &tpl(&[("img", 0)]));
        assert_eq!(assigned, None);
    }

    #[test]
    fn a_revoke_of_other_partitions_keeps_the_pending_assignment() {
        let mut assigned = Some(vec![("img".to_owned(), 2)]);
        forget_revoked(&mut assigned, &tpl(&[("img", 0), ("alerts", 2)]));
        assert_eq!(assigned, Some(vec![("img".to_owned(), 2)]));
    }
}
