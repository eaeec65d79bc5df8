//! What operators hold for one (service, environment), for the state query
//! (`sluice state`, and later `sluice run`'s HTTP listener): plain,
//! serializable values with no transport attached.

use serde::Serialize;

use super::alert_gate::GateView;
use crate::engine::timers::TimerQueue;
use crate::record::{Origin, Record};
use crate::state::StateBackend;

/// What a query may read.
pub struct QueryCx<'a> {
    pub backend: &'a dyn StateBackend,
    pub timers: &'a TimerQueue,
    /// The operator's index (its timers).
    pub op: usize,
    /// The engine's clock.
    pub now: u64,
}

impl QueryCx<'_> {
    /// The deadline of the operator's timer for `key`.
    pub fn deadline(&self, key: &[u8]) -> Option<u64> {
        self.timers.deadline(self.op, key)
    }
}

/// One operator's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperatorView {
    AlertGate(Box<GateView>),
    /// Records a debounce or a throttle holds back for the key.
    Debounce {
        pending: Vec<PendingView>,
    },
    Throttle {
        pending: Vec<PendingView>,
    },
}

/// A record held back, and when it goes out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingView {
    /// The record as a sink would write it.
    pub record: serde_json::Value,
    pub origin: Origin,
    /// When its timer fires; `None` when no timer is armed.
    pub deadline: Option<u64>,
}

impl PendingView {
    pub fn of(record: &Record, deadline: Option<u64>) -> Self {
        PendingView {
            record: record.payload.to_json(),
            origin: record.origin.clone(),
            deadline,
        }
    }
}

/// Whether a held record is about (service, environment).
pub fn is_about(record: &Record, service: &str, environment: &str) -> bool {
    use crate::record::Field;
    record.payload.field(Field::Service) == service
        && record.payload.field(Field::Environment) == environment
}
