//! Processing: records from the task buffers through each task's engine,
//! and wall-clock timers, with output produced in the open transaction. A
//! failed produce aborts and rewinds to the last commit.

use std::sync::Arc;
use std::time::Instant;

use crate::duration::now_ms;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Message, OwnedMessage};

use super::consumer::{Inner, PROCESS_BUDGET};
use super::input::{decoded_ignored, input_value, traceparent};
use super::output::{KafkaOutput, Origin};
use super::producer::TxnFailure;
use super::rebalance::RunContext;
use super::{ClockMode, RunError};
use crate::engine::{InputOrigin, SourceInput};
use crate::record::TraceContext;
use crate::telemetry::trace::{Kind as SpanKind, Span, Tracing};

impl Inner {
    /// Processes ready records of every task, up to a budget each.
    pub(super) fn process(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
    ) -> Result<usize, RunError> {
        let mut total = 0;
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        for id in ids {
            for _ in 0..PROCESS_BUDGET {
                let event_time = self.event_time();
                let Some(task) = self.tasks.get_mut(&id) else {
                    break;
                };
                let Some(qi) = task.next_queue(event_time, self.shared.opts.max_task_idle) else {
                    break;
                };
                let Some(m) = task.queues[qi].pop() else {
                    break;
                };
                match self.process_record(id, qi, &m) {
                    Ok(()) => total += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "producing output failed; aborting the transaction");
                        self.abort_and_rewind(consumer, "output")?;
                        return Ok(total);
                    }
                }
            }
            self.count_enforced(id);
        }
        if total > 0 {
            self.first_record.get_or_insert_with(Instant::now);
            self.summary.processed += total as u64;
        }
        Ok(total)
    }

    /// Counts the waits for empty inputs that task `id` gave up on
    /// (`max_task_idle`): read once per task and pass, not per record.
    fn count_enforced(&mut self, id: i32) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let enforced = task.take_enforced();
        if enforced > 0 {
            self.summary.enforced_waits += enforced;
            self.shared.metrics.enforced(enforced);
        }
    }

    fn process_record(&mut self, id: i32, qi: usize, m: &OwnedMessage) -> Result<(), TxnFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let at = match shared.opts.clock {
            ClockMode::Event => m.timestamp().to_millis().unwrap_or(0).max(0) as u64,
            ClockMode::Wall => now_ms(),
        };
        let tracing = &shared.opts.observe.tracing;
        let span = tracing
            .is_on()
            .then(|| traceparent(m))
            .flatten()
            // An unsampled parent's child records nothing: skip building it.
            .filter(|parent| parent.sampled())
            .map(|parent| process_span(tracing, &parent, m));
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
            txn_counts: &mut self.txn_counts,
            metrics: &shared.metrics,
            tracing,
        };
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        let engine_topic = task.queues[qi].engine_topic.as_str();
        let decoded = decoded_ignored(&shared.plan, m);
        if let Some(ignored) = decoded.as_deref().filter(|i| !i.is_empty()) {
            task.engine.count_ignored(engine_topic, ignored);
        }
        match input_value(&shared.topo, engine_topic, m, shared.opts.max_value_bytes) {
            Ok(value) => {
                let input = SourceInput {
                    topic: &task.queues[qi].engine_topic,
                    key,
                    value: &value,
                    fields: None,
                    decoded: decoded.is_some(),
                    origin: InputOrigin::Kafka {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        at: m
                            .timestamp()
                            .to_millis()
                            .and_then(|t| u64::try_from(t).ok()),
                        // What this record causes continues its trace.
                        trace: span.as_ref().and_then(Span::context),
                    },
                };
                task.engine
                    .process(input, at, &mut out)
                    .map_err(TxnFailure::abortable)?;
            }
            Err(rejected) => {
                task.engine
                    .advance_to(at, &mut out)
                    .map_err(TxnFailure::abortable)?;
                rejected
                    .send(
                        &shared.topo,
                        engine_topic,
                        m,
                        key,
                        task.engine.clock(),
                        &mut out,
                    )
                    .map_err(TxnFailure::abortable)?;
            }
        }
        task.queues[qi].consumed = Some(m.offset() + 1);
        task.processed += 1;
        task.dirty = true;
        task.note_timers();
        Ok(())
    }

    /// Wall clock: fires every timer whose deadline has passed, whether or
    /// not a record arrived.
    pub(super) fn punctuate(
        &mut self,
        consumer: &BaseConsumer<RunContext>,
    ) -> Result<(), RunError> {
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
                txn_counts: &mut self.txn_counts,
                metrics: &shared.metrics,
                tracing: &shared.opts.observe.tracing,
            };
            let fired_before = task.engine.timers_fired();
            if let Err(e) = task.engine.advance_to(now, &mut out) {
                tracing::warn!(error = %e, "producing timer output failed; aborting the transaction");
                return self.abort_and_rewind(consumer, "output");
            }
            let fired = task.engine.timers_fired() - fired_before;
            shared.metrics.punctuated(task.id, fired);
            task.note_timers();
        }
        Ok(())
    }
}

/// The span of processing one input record, in the trace its sender began.
fn process_span(tracing: &Tracing, parent: &TraceContext, m: &OwnedMessage) -> Span {
    let mut span = tracing.start("sluice.run process", SpanKind::Consumer, Some(parent), &[]);
    span.set_attribute("messaging.destination.name", m.topic().to_owned());
    span.set_attribute("messaging.kafka.partition", i64::from(m.partition()));
    span.set_attribute("messaging.kafka.offset", m.offset());
    span
}
