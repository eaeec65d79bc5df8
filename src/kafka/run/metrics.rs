//! The metrics of `sluice run`.
//!
//! Counters count committed work: the processing thread adds up what a
//! transaction did (per-node counters, records, intents, dead letters) and
//! publishes it only when the transaction commits, so an abort and its
//! replay are not counted twice and the totals equal what the output
//! holds. A scrape reads the published totals through OpenTelemetry's
//! observable instruments and never waits for the processing thread.
//! Histograms (latencies, commit and restore times) are recorded as they
//! happen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use crate::engine::stats::NodeStats;
use crate::engine::OperatorGauges;
use crate::operators::Gauge;
use crate::record::{Payload, Record};

use super::output::earliest_cause;
use crate::telemetry::catalog as c;
use crate::telemetry::instruments::{counter, histogram, observable_counter, observable_gauge};

/// What one transaction did, published at its commit.
#[derive(Debug, Default)]
pub struct TxnCounts {
    intents: BTreeMap<(&'static str, String), u64>,
    dead_letters: u64,
}

impl TxnCounts {
    pub fn sink_record(&mut self, record: &Record) {
        if let Payload::Intent(intent) = &record.payload {
            *self
                .intents
                .entry((intent.action.as_str(), intent.environment.clone()))
                .or_default() += 1;
        }
    }

    pub fn dead_letter(&mut self) {
        self.dead_letters += 1;
    }
}

/// Per-node counters summed over tasks and commits.
#[derive(Debug, Default, Clone)]
struct NodeTotals {
    received: u64,
    emitted: u64,
    dropped: BTreeMap<&'static str, u64>,
    ignored: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Totals {
    nodes: BTreeMap<String, NodeTotals>,
    processed: BTreeMap<i32, u64>,
    punctuations: BTreeMap<i32, u64>,
    restored: BTreeMap<i32, u64>,
    intents: BTreeMap<(&'static str, String), u64>,
    dead_letters: u64,
    commits: u64,
    /// Each open task's operator gauges, refreshed every few seconds.
    tasks: BTreeMap<i32, Vec<OperatorGauges>>,
    /// By processing thread: each consumer reports its own partitions.
    lag: BTreeMap<usize, BTreeMap<(String, i32), i64>>,
}

/// The instruments of a run and the totals they read.
pub struct RunMetrics {
    totals: Arc<Mutex<Totals>>,
    commit_duration: Histogram<f64>,
    restore_duration: Histogram<f64>,
    e2e: Histogram<f64>,
    event_to_intent: Histogram<f64>,
    aborts: Counter<u64>,
    rebuilds: Counter<u64>,
    fenced: Counter<u64>,
    offset_fallbacks: Counter<u64>,
    enforced: Counter<u64>,
    sinks: Vec<KeyValue>,
}

/// Distinct event-type labels per source node; the rest count as `other`.
const MAX_EVENT_LABELS: usize = 64;

/// Abort reasons, rebuild classes and the outcomes of asking a new client
/// for the committed offsets, published at zero from the start so that a
/// dashboard shows a flat line rather than no data.
pub const ABORT_CLASSES: &[&str] = &["output", "changelog", "delivery", "commit", "forward"];
pub const REBUILD_CLASSES: &[&str] =
    &["fatal", "abort_failed", "coordinator_timeout", "stuck_call"];
pub const OFFSET_FALLBACK_OUTCOMES: &[&str] = &[ANSWERED, FAILED];
const ANSWERED: &str = "answered";
const FAILED: &str = "failed";

fn lock(totals: &Mutex<Totals>) -> MutexGuard<'_, Totals> {
    totals.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunMetrics {
    /// Registers the instruments; `sinks` names the topology's sinks.
    pub fn new(meter: &Meter, sinks: &[String]) -> Arc<Self> {
        let totals = Arc::new(Mutex::new(Totals::default()));
        register_observables(meter, &totals);
        let metrics = RunMetrics {
            commit_duration: histogram(meter, &c::COMMIT_DURATION),
            restore_duration: histogram(meter, &c::RESTORE_DURATION),
            e2e: histogram(meter, &c::RECORD_E2E_LATENCY),
            event_to_intent: histogram(meter, &c::EVENT_TO_INTENT_LATENCY),
            aborts: counter(meter, &c::ABORTS),
            rebuilds: counter(meter, &c::PRODUCER_REBUILDS),
            fenced: counter(meter, &c::FENCED),
            offset_fallbacks: counter(meter, &c::OFFSET_FETCH_FALLBACKS),
            enforced: counter(meter, &c::ENFORCED_PROCESSING),
            sinks: sinks
                .iter()
                .map(|s| KeyValue::new("sink", s.clone()))
                .collect(),
            totals,
        };
        for class in ABORT_CLASSES {
            metrics.aborts.add(0, &[KeyValue::new("class", *class)]);
        }
        for class in REBUILD_CLASSES {
            metrics.rebuilds.add(0, &[KeyValue::new("class", *class)]);
        }
        metrics.fenced.add(0, &[]);
        for outcome in OFFSET_FALLBACK_OUTCOMES {
            metrics
                .offset_fallbacks
                .add(0, &[KeyValue::new("outcome", *outcome)]);
        }
        metrics.enforced.add(0, &[]);
        Arc::new(metrics)
    }

    /// A record reached the sink named `sink`: its end-to-end latency, and
    /// for an intent the time since the earliest event behind it.
    pub fn sink_record(&self, sink: &str, record: &Record, now_ms: u64) {
        let seconds = |since: u64| now_ms.saturating_sub(since) as f64 / 1000.0;
        if let Some(label) = self.sinks.iter().find(|kv| kv.value.as_str() == sink) {
            self.e2e
                .record(seconds(record.ts), std::slice::from_ref(label));
        }
        if let (Payload::Intent(intent), Some(first)) = (&record.payload, earliest_cause(record)) {
            self.event_to_intent.record(
                seconds(first),
                &[KeyValue::new("action", intent.action.as_str())],
            );
        }
    }

    /// A transaction committed: publishes what it did.
    pub fn committed(
        &self,
        took: Duration,
        txn: TxnCounts,
        tasks: Vec<(i32, u64, Vec<NodeStats>)>,
    ) {
        self.commit_duration.record(took.as_secs_f64(), &[]);
        let mut totals = lock(&self.totals);
        totals.commits += 1;
        totals.dead_letters += txn.dead_letters;
        for (key, n) in txn.intents {
            *totals.intents.entry(key).or_default() += n;
        }
        for (task, processed, nodes) in tasks {
            *totals.processed.entry(task).or_default() += processed;
            for node in nodes {
                let t = totals.nodes.entry(node.name.clone()).or_default();
                t.received += node.received;
                t.emitted += node.emitted;
                for (reason, n) in node.dropped {
                    *t.dropped.entry(reason).or_default() += n;
                }
                for (event, n) in node.ignored {
                    // Event types come from payloads: keep the label set bounded.
                    let label =
                        if t.ignored.contains_key(&event) || t.ignored.len() < MAX_EVENT_LABELS {
                            event
                        } else {
                            "other".to_owned()
                        };
                    *t.ignored.entry(label).or_default() += n;
                }
            }
        }
    }

    pub fn aborted(&self, class: &'static str) {
        self.aborts.add(1, &[KeyValue::new("class", class)]);
    }

    pub fn rebuilt(&self, class: &'static str) {
        self.rebuilds.add(1, &[KeyValue::new("class", class)]);
    }

    pub fn fenced(&self) {
        self.fenced.add(1, &[]);
    }

    /// A fetch of the committed offsets was asked of a new client of the
    /// group; `answered` says whether that client answered.
    pub fn offsets_from_new_client(&self, answered: bool) {
        let outcome = if answered { ANSWERED } else { FAILED };
        self.offset_fallbacks
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// Waits for empty inputs that ran out (see `Task::next_queue`).
    pub fn enforced(&self, waits: u64) {
        self.enforced.add(waits, &[]);
    }

    pub fn restored(&self, task: i32, records: u64, took: Duration) {
        self.restore_duration.record(took.as_secs_f64(), &[]);
        *lock(&self.totals).restored.entry(task).or_default() += records;
    }

    pub fn punctuated(&self, task: i32, fired: u64) {
        *lock(&self.totals).punctuations.entry(task).or_default() += fired;
    }

    pub fn task_gauges(&self, task: i32, gauges: Vec<OperatorGauges>) {
        lock(&self.totals).tasks.insert(task, gauges);
    }

    /// A task closed: its gauges no longer count.
    pub fn task_closed(&self, task: i32) {
        lock(&self.totals).tasks.remove(&task);
    }

    /// Consumer lag per input partition, from librdkafka's statistics.
    pub fn lag(&self, thread: usize, lag: BTreeMap<(String, i32), i64>) {
        lock(&self.totals).lag.insert(thread, lag);
    }
}

fn register_observables(meter: &Meter, totals: &Arc<Mutex<Totals>>) {
    let t = Arc::clone(totals);
    observable_counter(meter, &c::NODE_RECORDS_IN, move |o| {
        for (node, n) in &lock(&t).nodes {
            o.observe(n.received, &[KeyValue::new("node", node.clone())]);
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::NODE_RECORDS_OUT, move |o| {
        for (node, n) in &lock(&t).nodes {
            o.observe(n.emitted, &[KeyValue::new("node", node.clone())]);
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::NODE_RECORDS_DROPPED, move |o| {
        for (node, n) in &lock(&t).nodes {
            for (reason, v) in &n.dropped {
                o.observe(
                    *v,
                    &[
                        KeyValue::new("node", node.clone()),
                        KeyValue::new("reason", *reason),
                    ],
                );
            }
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::SOURCE_ENTRIES_IGNORED, move |o| {
        for (node, n) in &lock(&t).nodes {
            for (event, v) in &n.ignored {
                o.observe(
                    *v,
                    &[
                        KeyValue::new("node", node.clone()),
                        KeyValue::new("event", event.clone()),
                    ],
                );
            }
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::TASK_RECORDS_PROCESSED, move |o| {
        for (task, n) in &lock(&t).processed {
            o.observe(*n, &[KeyValue::new("task", i64::from(*task))]);
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::TASK_PUNCTUATIONS, move |o| {
        for (task, n) in &lock(&t).punctuations {
            o.observe(*n, &[KeyValue::new("task", i64::from(*task))]);
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::RESTORED_RECORDS, move |o| {
        for (task, n) in &lock(&t).restored {
            o.observe(*n, &[KeyValue::new("task", i64::from(*task))]);
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::INTENTS, move |o| {
        for ((action, env), n) in &lock(&t).intents {
            o.observe(
                *n,
                &[
                    KeyValue::new("action", *action),
                    KeyValue::new("environment", env.clone()),
                ],
            );
        }
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::DEAD_LETTERS, move |o| {
        o.observe(lock(&t).dead_letters, &[])
    });
    let t = Arc::clone(totals);
    observable_counter(meter, &c::COMMITS, move |o| {
        o.observe(lock(&t).commits, &[])
    });
    let t = Arc::clone(totals);
    observable_gauge(meter, &c::OPERATOR_TIMERS_PENDING, move |o| {
        for (op, sums) in operator_sums(&lock(&t)) {
            o.observe(sums.timers as f64, &[KeyValue::new("operator", op)]);
        }
    });
    let t = Arc::clone(totals);
    observable_gauge(meter, &c::STATE_ENTRIES, move |o| {
        for (op, sums) in operator_sums(&lock(&t)) {
            o.observe(sums.entries as f64, &[KeyValue::new("operator", op)]);
        }
    });
    for (def, gauge) in [
        (&c::GATE_HELD_KEYS, Gauge::HeldKeys),
        (&c::GATE_ACTIVE_ALERTS, Gauge::ActiveAlerts),
    ] {
        let t = Arc::clone(totals);
        observable_gauge(meter, def, move |o| {
            for (op, sums) in operator_sums(&lock(&t)) {
                if let Some(v) = sums.gauges.get(&gauge) {
                    o.observe(*v as f64, &[KeyValue::new("operator", op)]);
                }
            }
        });
    }
    let t = Arc::clone(totals);
    observable_gauge(meter, &c::CONSUMER_LAG, move |o| {
        for ((topic, partition), lag) in lock(&t).lag.values().flatten() {
            o.observe(
                *lag as f64,
                &[
                    KeyValue::new("topic", topic.clone()),
                    KeyValue::new("partition", i64::from(*partition)),
                ],
            );
        }
    });
}

#[derive(Default)]
struct OperatorSums {
    timers: u64,
    entries: u64,
    gauges: BTreeMap<Gauge, u64>,
}

/// Each operator's gauges summed over the open tasks.
fn operator_sums(totals: &Totals) -> BTreeMap<String, OperatorSums> {
    let mut sums: BTreeMap<String, OperatorSums> = BTreeMap::new();
    for ops in totals.tasks.values() {
        for op in ops {
            let s = sums.entry(op.name.clone()).or_default();
            s.timers += op.timers_pending;
            s.entries += op.entries;
            for (gauge, v) in &op.gauges {
                *s.gauges.entry(*gauge).or_default() += v;
            }
        }
    }
    sums
}
