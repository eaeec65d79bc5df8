//! Purging repartition topics up to the committed positions.

use std::time::{Duration, Instant};

use rdkafka::{Offset, TopicPartitionList};

use super::consumer::{Inner, Shared};
use super::RunError;

/// Repartition topics are never deleted by time (their records carry event
/// timestamps), so, as Kafka Streams does, the run deletes what it has
/// committed past, every little while.
pub(super) struct Purger {
    admin: rdkafka::admin::AdminClient<super::topics::LogContext>,
    next: Instant,
}

const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Purger {
    pub(super) fn new(shared: &Shared) -> Result<Option<Purger>, RunError> {
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
    pub(super) fn after_commit(&mut self, committed: &TopicPartitionList) {
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

impl Inner {
    /// On a clean stop, purges the repartition topics up to what is committed.
    pub(super) fn final_purge(&mut self) {
        let positions = self.repartition_positions();
        if let Some(purger) = &mut self.purger {
            purger.next = Instant::now();
            purger.after_commit(&positions);
        }
    }

    /// The consumed positions of the tasks' repartition partitions.
    pub(super) fn repartition_positions(&self) -> TopicPartitionList {
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
}
