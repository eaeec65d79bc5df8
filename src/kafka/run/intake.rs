//! Intake: fetched records on their way to the tasks. Each assigned
//! partition's queue is read into its task's buffer within the process's
//! byte budget (a partition above its share is paused until half of it is
//! processed), and the records of a repartitioned input are re-keyed and
//! forwarded to their repartition topic in the open transaction instead.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::BaseRecord;
use rdkafka::TopicPartitionList;

use super::consumer::{Inner, PROCESS_BUDGET};
use super::input::{repartition_records, DECODED_HEADER, IGNORED_HEADER};
use super::producer::{self, TxnFailure};
use super::rebalance::RunContext;
use super::task::{self, Task};
use super::transaction;
use super::RunError;

/// What became of a batch of fetched records.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Enqueued {
    All,
    /// A forward failed: the run rewound and the rest was dropped.
    Rewound,
}

/// Test seam: `fetch.hold.<topic>=fail` leaves a topic's fetched records
/// (and its end) in librdkafka's queue, as if that input lagged.
fn fetch_held(topic: &str) -> bool {
    cfg!(feature = "fault-injection")
        && crate::fault::reached(&format!("fetch.hold.{topic}")).is_some()
}

impl Inner {
    /// Hands fetched records to their tasks (or forwards them), in order.
    /// A failed forward aborts and rewinds, and the records after it are
    /// dropped: the consumer fetches them again from the rewind point, and
    /// forwarding them now would put them twice in the repartition topic.
    pub(super) fn enqueue_all(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
        fetched: Vec<OwnedMessage>,
    ) -> Result<Enqueued, RunError> {
        for m in fetched {
            // Usually empty: skip building a key for it per record.
            if !self.raw_waiting.is_empty() {
                self.raw_waiting
                    .remove(&(m.topic().to_owned(), m.partition()));
            }
            if let Err(e) = self.enqueue(m) {
                tracing::warn!(error = %e, "forwarding to a repartition topic failed; aborting the transaction");
                self.abort_and_rewind(consumer, "forward")?;
                return Ok(Enqueued::Rewound);
            }
        }
        Ok(Enqueued::All)
    }

    fn enqueue(&mut self, m: OwnedMessage) -> Result<(), TxnFailure> {
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
    fn forward(&mut self, m: &OwnedMessage) -> Result<(), TxnFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(r) = shared.plan.repartition_of(m.topic()) else {
            return Ok(());
        };
        transaction::begin_if_none_open(&self.producer, &mut self.txn_open, shared.exactly_once())
            .map_err(TxnFailure::abortable)?;
        if crate::fault::reached("run.forward") == Some(crate::fault::Fault::Fail) {
            return Err(TxnFailure::abortable(
                "injected failure forwarding a record",
            ));
        }
        // The record's trace goes along to the task that processes it.
        let traceparent = super::input::traceparent(m).map(|t| t.to_string());
        for forward in repartition_records(&shared.topo, r.source, m.payload()) {
            let mut record = BaseRecord::<[u8], [u8]>::to(&r.to);
            if let Some(ts) = m.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            if let Some(k) = &forward.key {
                record = record.key(k.as_bytes());
            }
            if let Some(v) = forward.value.as_deref().or(m.payload()) {
                record = record.payload(v);
            }
            let mut headers = OwnedHeaders::new();
            if forward.decoded {
                headers = headers.insert(Header {
                    key: DECODED_HEADER,
                    value: Some("1"),
                });
                if let Some(ignored) = &forward.ignored {
                    headers = headers.insert(Header {
                        key: IGNORED_HEADER,
                        value: Some(ignored.as_str()),
                    });
                }
            }
            if let Some(tp) = &traceparent {
                headers = headers.insert(Header {
                    key: crate::record::TRACEPARENT,
                    value: Some(tp.as_str()),
                });
            }
            if rdkafka::message::Headers::count(&headers) > 0 {
                record = record.headers(headers);
            }
            producer::send(&self.producer, record).map_err(TxnFailure::abortable)?;
        }
        self.raw_offsets
            .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        self.raw_dirty = true;
        Ok(())
    }

    /// Moves fetched records from the partition queues into the task
    /// buffers (or, for repartitioned inputs, on to their repartition topic).
    /// Returns how many records it moved.
    pub(super) fn fill_queues(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
    ) -> Result<usize, RunError> {
        let mut fetched: Vec<OwnedMessage> = Vec::new();
        let mut ended: Vec<(String, i32)> = Vec::new();
        let share = self.buffer_share();
        for split in &self.queues {
            // Beyond its share, a partition's records wait in librdkafka's
            // queue (bounded too), and fetching pauses (`flow_control`).
            let mut room = self.buffer_room(&split.topic, split.partition, share);
            for _ in 0..PROCESS_BUDGET {
                if room == 0 || fetch_held(&split.topic) {
                    break;
                }
                match split.queue.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        let m = m.detach();
                        room = room.saturating_sub(task::buffered_size(&m));
                        fetched.push(m);
                    }
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
        if self.enqueue_all(consumer, fetched)? == Enqueued::Rewound {
            return Ok(moved);
        }
        for (topic, partition) in ended {
            self.mark_caught_up(&topic, partition);
        }
        let buffered: usize = self.tasks.values().map(Task::buffered_bytes).sum();
        self.summary.max_buffered_bytes = self.summary.max_buffered_bytes.max(buffered as u64);
        Ok(moved)
    }

    /// Each task input partition's share of the process's buffer budget.
    fn buffer_share(&self) -> usize {
        let partitions: usize = self.tasks.values().map(|t| t.queues.len()).sum();
        self.shared.opts.max_buffer_bytes / partitions.max(1)
    }

    /// How many more bytes partition `partition` of `topic` may buffer. A
    /// repartitioned input's records are forwarded, never buffered; a task
    /// not open yet takes nothing (its records stay in librdkafka's queue).
    fn buffer_room(&self, topic: &str, partition: i32, share: usize) -> usize {
        if self.shared.plan.repartition_of(topic).is_some() {
            return usize::MAX;
        }
        self.tasks
            .get(&partition)
            .and_then(|t| t.queues.iter().find(|q| q.topic == topic))
            .map_or(0, |q| share.saturating_sub(q.buffered_bytes))
    }

    fn mark_caught_up(&mut self, topic: &str, partition: i32) {
        self.raw_waiting.remove(&(topic.to_owned(), partition));
        if let Some(q) = self
            .tasks
            .get_mut(&partition)
            .and_then(|t| t.queue_mut(topic))
        {
            if !q.caught_up {
                tracing::debug!(topic, partition, consumed = ?q.consumed, "caught up with the partition's end");
            }
            q.caught_up = true;
        }
    }

    /// Pauses partitions that buffer their share of the byte budget, resumes
    /// them once half of it is processed.
    pub(super) fn flow_control(&mut self, consumer: &BaseConsumer<RunContext>) {
        let share = self.buffer_share();
        for task in self.tasks.values_mut() {
            for q in &mut task.queues {
                let pause = !q.paused && q.buffered_bytes >= share;
                let resume = q.paused && q.buffered_bytes < share / 2;
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
}
