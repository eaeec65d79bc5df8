//! Every metric Sluice exports, defined once: the instruments are built from
//! these definitions and the Grafana dashboard (`sluice dashboard`) queries
//! them by the same definitions, so a renamed metric cannot leave a panel
//! without data.
//!
//! Names follow Kafka Streams' metrics where one exists, with a `sluice_`
//! prefix. The Prometheus name adds the unit and, for counters, `_total`
//! (OpenMetrics): `sluice_commit_duration` in seconds is scraped as
//! `sluice_commit_duration_seconds`, `sluice_commits` as
//! `sluice_commits_total`. Labels are bounded: topology nodes, partitions,
//! reasons, outcomes, environments and endpoints from the configs, never a
//! service or an image (those go to traces, logs and the state query).

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A monotonic count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution, with these bucket bounds.
    Histogram(&'static [f64]),
}

/// A metric's unit, as OpenTelemetry spells it and as the Prometheus name ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    None,
    Seconds,
    Bytes,
}

impl Unit {
    /// The UCUM unit OpenTelemetry instruments carry.
    pub fn otel(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Seconds => "s",
            Unit::Bytes => "By",
        }
    }

    /// The unit back from an instrument's UCUM string.
    pub fn from_otel(unit: &str) -> Unit {
        match unit {
            "s" => Unit::Seconds,
            "By" => Unit::Bytes,
            _ => Unit::None,
        }
    }

    /// The suffix of the Prometheus name.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Unit::None => None,
            Unit::Seconds => Some("seconds"),
            Unit::Bytes => Some("bytes"),
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Def {
    /// The instrument's name, without unit or `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    /// Every label its points may carry.
    pub labels: &'static [&'static str],
}

impl Def {
    /// The name Prometheus stores samples under (histograms add `_bucket`,
    /// `_sum` and `_count` to it).
    pub fn prom_name(&self) -> String {
        let mut name = self.name.to_owned();
        if let Some(unit) = self.unit.suffix() {
            name.push('_');
            name.push_str(unit);
        }
        if self.kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }
}

/// Bounds for latencies from a millisecond to a few minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Bounds for event-to-intent latencies, which include debounce and throttle
/// delays: seconds to hours.
pub const PIPELINE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Def {
    Def {
        name,
        help,
        unit: Unit::None,
        kind: Kind::Counter,
        labels,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Def {
    Def {
        name,
        help,
        unit: Unit::None,
        kind: Kind::Gauge,
        labels,
    }
}

const fn seconds(
    name: &'static str,
    help: &'static str,
    buckets: &'static [f64],
    labels: &'static [&'static str],
) -> Def {
    Def {
        name,
        help,
        unit: Unit::Seconds,
        kind: Kind::Histogram(buckets),
        labels,
    }
}

// --- the topology's nodes (sluice run) ---

pub const NODE_RECORDS_IN: Def = counter(
    "sluice_node_records_in",
    "Records a topology node received (sources: payloads read).",
    &["node"],
);
pub const NODE_RECORDS_OUT: Def = counter(
    "sluice_node_records_out",
    "Records a topology node emitted.",
    &["node"],
);
pub const NODE_RECORDS_DROPPED: Def = counter(
    "sluice_node_records_dropped",
    "Records a topology node dropped, by reason (duplicate, superseded, rate_limited, invalid_record, ...).",
    &["node", "reason"],
);
pub const SOURCE_ENTRIES_IGNORED: Def = counter(
    "sluice_source_entries_ignored",
    "Payload entries a source skipped by the vendor's event type (a pull, a scan, a pull request opened).",
    &["node", "event"],
);
pub const OPERATOR_TIMERS_PENDING: Def = gauge(
    "sluice_operator_timers_pending",
    "Timers an operator has armed that have not fired yet.",
    &["operator"],
);
pub const STATE_ENTRIES: Def = gauge(
    "sluice_state_entries",
    "Entries in an operator's state store (RocksDB's estimate).",
    &["operator"],
);
pub const GATE_HELD_KEYS: Def = gauge(
    "sluice_gate_held_keys",
    "(service, environment) keys of alert gates with an image parked.",
    &["operator"],
);
pub const GATE_ACTIVE_ALERTS: Def = gauge(
    "sluice_gate_active_alerts",
    "Alerts an alert gate holds as active.",
    &["operator"],
);
pub const INTENTS: Def = counter(
    "sluice_intents",
    "Deployment intents produced, by action and environment.",
    &["action", "environment"],
);

// --- tasks and the transaction loop (sluice run) ---

pub const TASK_RECORDS_PROCESSED: Def = counter(
    "sluice_task_records_processed",
    "Input records a task processed and committed (rate() gives Kafka Streams' process-rate).",
    &["task"],
);
pub const TASK_PUNCTUATIONS: Def = counter(
    "sluice_task_punctuations",
    "Wall-clock timers fired with no record to move the clock (Kafka Streams' punctuate).",
    &["task"],
);
pub const RECORD_E2E_LATENCY: Def = seconds(
    "sluice_record_e2e_latency",
    "Wall clock minus the record's time when it reaches a sink (KIP-613).",
    LATENCY_BUCKETS,
    &["sink"],
);
pub const EVENT_TO_INTENT_LATENCY: Def = seconds(
    "sluice_event_to_intent_latency",
    "Wall clock at an intent's output minus the time of the earliest input record that caused it.",
    PIPELINE_BUCKETS,
    &["action"],
);
pub const CONSUMER_LAG: Def = gauge(
    "sluice_consumer_lag_records",
    "Records of an input partition not yet consumed (its last stable offset minus the consumer position).",
    &["topic", "partition"],
);
pub const RESTORED_RECORDS: Def = counter(
    "sluice_restore_records",
    "Changelog records restored into task stores.",
    &["task"],
);
pub const RESTORE_DURATION: Def = seconds(
    "sluice_restore_duration",
    "Time to restore a task's stores from its changelogs.",
    LATENCY_BUCKETS,
    &[],
);
pub const COMMIT_DURATION: Def = seconds(
    "sluice_commit_duration",
    "Time of one commit: flush, offsets, transaction commit and the local stores.",
    LATENCY_BUCKETS,
    &[],
);
pub const COMMITS: Def = counter(
    "sluice_commits",
    "Commits (transactions under exactly_once) that succeeded.",
    &[],
);
pub const ABORTS: Def = counter(
    "sluice_transaction_aborts",
    "Transactions aborted and rewound, by error class.",
    &["class"],
);
pub const PRODUCER_REBUILDS: Def = counter(
    "sluice_producer_rebuilds",
    "Producers rebuilt after a fatal error or an unknown commit outcome, by error class.",
    &["class"],
);
pub const FENCED: Def = counter(
    "sluice_fenced",
    "Times this instance was fenced by another with the same transactional id.",
    &[],
);
pub const OFFSET_FETCH_FALLBACKS: Def = counter(
    "sluice_offset_fetch_fallbacks",
    "Fetches of the group's committed offsets that timed out on a processing thread's consumer and were asked of a new client of the group, by what that client answered (answered, failed).",
    &["outcome"],
);
pub const ENFORCED_PROCESSING: Def = counter(
    "sluice_enforced_processing",
    "Times a task stopped waiting max_task_idle for an empty input and went on without it (Kafka Streams' enforced processing): that input's next records are late.",
    &[],
);
pub const DEAD_LETTERS: Def = counter(
    "sluice_dead_letters",
    "Records sent to the dead-letter topic.",
    &[],
);

// --- the committer (sluice commit) ---

pub const COMMITTER_INTENTS: Def = counter(
    "sluice_committer_intents",
    "Intents the committer handled, by outcome (applied, superseded, already_committed, already_applied, retried, outdated, held, dead_letter).",
    &["outcome"],
);
pub const COMMITTER_REFUSALS: Def = counter(
    "sluice_committer_refusals",
    "Intents refused to the dead letters, by kind.",
    &["kind"],
);
pub const COMMITTER_COMMITS: Def = counter(
    "sluice_committer_commits",
    "Commits pushed to the remote.",
    &["branch"],
);
pub const COMMITTER_PUSHES: Def = counter(
    "sluice_committer_pushes",
    "Push attempts, by result (pushed, rejected: the remote moved, failed).",
    &["result"],
);
pub const COMMITTER_BATCH_DURATION: Def = seconds(
    "sluice_committer_batch_duration",
    "Time to apply one batch: plan, commit and push every branch.",
    LATENCY_BUCKETS,
    &[],
);
pub const COMMITTER_VISIBLE_LATENCY: Def = seconds(
    "sluice_committer_intent_visible_latency",
    "From an intent's time to its commit being visible on the remote.",
    LATENCY_BUCKETS,
    &[],
);

// --- the webhook gateway (sluice ingest) ---

pub const INGEST_REQUESTS: Def = counter(
    "sluice_ingest_requests",
    "Webhook requests answered, by endpoint and status code.",
    &["endpoint", "code"],
);
pub const INGEST_PRODUCE_DURATION: Def = seconds(
    "sluice_ingest_produce_duration",
    "From a webhook's body read to the broker's acknowledgement.",
    LATENCY_BUCKETS,
    &["endpoint"],
);
pub const INGEST_RECEIVED_BYTES: Def = Def {
    name: "sluice_ingest_received",
    help: "Webhook body bytes accepted.",
    unit: Unit::Bytes,
    kind: Kind::Counter,
    labels: &["endpoint"],
};
pub const INGEST_IGNORED: Def = counter(
    "sluice_ingest_ignored",
    "Payload entries decoded and skipped by event type (still stored raw).",
    &["endpoint", "event"],
);

// --- every process ---

pub const PROCESS_RSS: Def = Def {
    name: "sluice_process_resident_memory",
    help: "Resident memory of the process.",
    unit: Unit::Bytes,
    kind: Kind::Gauge,
    labels: &[],
};
pub const PROCESS_CPU: Def = Def {
    name: "sluice_process_cpu",
    help: "CPU time the process used (user and system).",
    unit: Unit::Seconds,
    kind: Kind::Counter,
    labels: &[],
};
pub const PROCESS_OPEN_FDS: Def = gauge("sluice_process_open_fds", "Open file descriptors.", &[]);
pub const BUILD_INFO: Def = gauge(
    "sluice_build_info",
    "Always 1; the labels name the build.",
    &["version", "commit", "command"],
);
pub const READY: Def = gauge(
    "sluice_ready",
    "1 when /readyz says ready, else 0.",
    &["command"],
);

/// Every definition, for the dashboard's checks and the tests.
pub const ALL: &[Def] = &[
    NODE_RECORDS_IN,
    NODE_RECORDS_OUT,
    NODE_RECORDS_DROPPED,
    SOURCE_ENTRIES_IGNORED,
    OPERATOR_TIMERS_PENDING,
    STATE_ENTRIES,
    GATE_HELD_KEYS,
    GATE_ACTIVE_ALERTS,
    INTENTS,
    TASK_RECORDS_PROCESSED,
    TASK_PUNCTUATIONS,
    RECORD_E2E_LATENCY,
    EVENT_TO_INTENT_LATENCY,
    CONSUMER_LAG,
    RESTORED_RECORDS,
    RESTORE_DURATION,
    COMMIT_DURATION,
    COMMITS,
    ABORTS,
    PRODUCER_REBUILDS,
    FENCED,
    OFFSET_FETCH_FALLBACKS,
    ENFORCED_PROCESSING,
    DEAD_LETTERS,
    COMMITTER_INTENTS,
    COMMITTER_REFUSALS,
    COMMITTER_COMMITS,
    COMMITTER_PUSHES,
    COMMITTER_BATCH_DURATION,
    COMMITTER_VISIBLE_LATENCY,
    INGEST_REQUESTS,
    INGEST_PRODUCE_DURATION,
    INGEST_RECEIVED_BYTES,
    INGEST_IGNORED,
    PROCESS_RSS,
    PROCESS_CPU,
    PROCESS_OPEN_FDS,
    BUILD_INFO,
    READY,
];

/// The definition of an instrument name, if it is one of ours.
pub fn find(name: &str) -> Option<&'static Def> {
    ALL.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_carry_unit_and_total() {
        assert_eq!(
            COMMIT_DURATION.prom_name(),
            "sluice_commit_duration_seconds"
        );
        assert_eq!(COMMITS.prom_name(), "sluice_commits_total");
        assert_eq!(
            INGEST_RECEIVED_BYTES.prom_name(),
            "sluice_ingest_received_bytes_total"
        );
        assert_eq!(PROCESS_CPU.prom_name(), "sluice_process_cpu_seconds_total");
        assert_eq!(CONSUMER_LAG.prom_name(), "sluice_consumer_lag_records");
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        for d in ALL {
            assert!(
                readme.contains(&format!("`{}`", d.prom_name())),
                "README lacks {}",
                d.prom_name()
            );
        }
    }

    #[test]
    fn names_are_unique_prefixed_and_labels_bounded() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name is defined twice");
        for d in ALL {
            assert!(d.name.starts_with("sluice_"), "{}", d.name);
            assert!(
                !d.name.ends_with("_total"),
                "{}: the bridge adds _total",
                d.name
            );
            for label in d.labels {
                assert!(
                    !matches!(*label, "service" | "image" | "intent_id" | "repository"),
                    "{}: label {label} is unbounded",
                    d.name
                );
            }
        }
    }
}
