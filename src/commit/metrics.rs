//! The committer's metrics: intents by outcome, refusals by kind, commits
//! and pushes, batch duration and the latency from an intent to its commit
//! being visible on the remote.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use super::batch::{Outcome, RefusalKind};
use crate::telemetry::catalog as c;
use crate::telemetry::instruments::{counter, histogram};

/// Every outcome label, published at zero from the start.
const OUTCOMES: &[&str] = &[
    "applied",
    "superseded",
    "already_committed",
    "already_applied",
    "retried",
    "outdated",
    "held",
    "dead_letter",
];
const REFUSALS: &[RefusalKind] = &[
    RefusalKind::NotAnIntent,
    RefusalKind::InvalidIntentId,
    RefusalKind::UnknownEnvironment,
    RefusalKind::InvalidService,
    RefusalKind::InvalidImage,
    RefusalKind::NoMarker,
    RefusalKind::DirectoryUnusable,
    RefusalKind::FileNotEditable,
];
const PUSH_RESULTS: &[&str] = &["pushed", "rejected", "failed"];

pub struct CommitMetrics {
    intents: Counter<u64>,
    refusals: Counter<u64>,
    commits: Counter<u64>,
    pushes: Counter<u64>,
    batch: Histogram<f64>,
    visible: Histogram<f64>,
}

impl CommitMetrics {
    /// Registers the instruments; `branches` get their commit counters at zero.
    pub fn new(meter: &Meter, branches: &[&str]) -> Self {
        let m = CommitMetrics {
            intents: counter(meter, &c::COMMITTER_INTENTS),
            refusals: counter(meter, &c::COMMITTER_REFUSALS),
            commits: counter(meter, &c::COMMITTER_COMMITS),
            pushes: counter(meter, &c::COMMITTER_PUSHES),
            batch: histogram(meter, &c::COMMITTER_BATCH_DURATION),
            visible: histogram(meter, &c::COMMITTER_VISIBLE_LATENCY),
        };
        for outcome in OUTCOMES {
            m.intents.add(0, &[KeyValue::new("outcome", *outcome)]);
        }
        for kind in REFUSALS {
            m.refusals.add(0, &[KeyValue::new("kind", kind.as_str())]);
        }
        for result in PUSH_RESULTS {
            m.pushes.add(0, &[KeyValue::new("result", *result)]);
        }
        for branch in branches {
            m.commits
                .add(0, &[KeyValue::new("branch", branch.to_string())]);
        }
        m
    }

    pub fn outcome(&self, outcome: &Outcome) {
        self.intents
            .add(1, &[KeyValue::new("outcome", outcome.label())]);
        if let Outcome::DeadLetter(r) = outcome {
            self.refusals
                .add(1, &[KeyValue::new("kind", r.kind.as_str())]);
        }
    }

    /// A push attempt's result: `pushed`, `rejected` or `failed`.
    pub fn push(&self, result: &'static str) {
        self.pushes.add(1, &[KeyValue::new("result", result)]);
    }

    /// A commit reached the remote; `intent_times` are the times (ms) of
    /// the intents it applied.
    pub fn pushed(&self, branch: &str, intent_times: impl Iterator<Item = u64>) {
        self.commits
            .add(1, &[KeyValue::new("branch", branch.to_owned())]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for ts in intent_times {
            self.visible
                .record(now.saturating_sub(ts) as f64 / 1000.0, &[]);
        }
    }

    pub fn batch_done(&self, took: Duration) {
        self.batch.record(took.as_secs_f64(), &[]);
    }
}
