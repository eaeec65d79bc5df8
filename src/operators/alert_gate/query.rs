//! What the gate's state says about one key: the answer to "why is my
//! deploy not going out?".

use serde::Serialize;

use super::image::{rfc3339, GateRules, KeyCx};
use super::state::GateState;
use crate::record::Origin;

/// The gate's view of one (service, environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GateView {
    pub current_image: Option<String>,
    /// When the current image was deployed, rolled back to or last retried (ms).
    pub since: Option<u64>,
    /// The image that ran before it, as a rollback would restore it.
    pub previous_image: Option<String>,
    /// The records behind the current image.
    pub caused_by: Vec<Origin>,
    pub rollout: RolloutView,
    pub parked_image: Option<String>,
    /// Every reason the parked image is held now, in the handling order
    /// (pinned, frozen, awaiting approval, each blocking alert).
    pub held_because: Vec<String>,
    pub active_alerts: Vec<AlertView>,
    pub frozen: Option<FrozenView>,
    pub pinned: Option<PinView>,
    /// Images approved and not deployed yet.
    pub approvals: Vec<String>,
    /// Images ignored on this key until another image deploys.
    pub quarantined: Vec<String>,
    /// The gate's pending timers for the key.
    pub timers: Vec<TimerView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    /// `progressing`, `healthy`, `degraded`, `failed`; none before a status came.
    pub status: Option<String>,
    pub since: Option<u64>,
    /// Retries of the current image so far.
    pub attempts: u32,
    /// The revision (commit) the last status named.
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertView {
    pub identity: String,
    pub severity: String,
    pub blocks: bool,
    pub fired_at: Option<u64>,
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrozenView {
    /// `None`: until an `unfreeze`.
    pub until: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinView {
    pub image: String,
    pub by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimerView {
    /// `alert_expiry`, `freeze_until`, `retry` or `soak`.
    pub kind: &'static str,
    pub deadline: u64,
    pub detail: String,
}

impl GateRules {
    /// The view of a key's entry at `now`.
    pub(super) fn view(&self, k: &KeyCx<'_>, st: &GateState, now: u64) -> GateView {
        let frozen = self.frozen(k, st, now);
        GateView {
            current_image: st.current.clone(),
            since: st.last_deploy.as_ref().map(|d| d.at),
            previous_image: st.last_deploy.as_ref().and_then(|d| d.previous.clone()),
            caused_by: st.current_causes.clone(),
            rollout: RolloutView {
                status: st.rollout.status.map(|s| s.as_str().to_owned()),
                since: st.current.as_ref().map(|_| st.rollout.since),
                attempts: st.rollout.attempts,
                revision: st.rollout.revision.clone(),
            },
            parked_image: st.parked.clone(),
            held_because: self.held_because(k, st, now),
            active_alerts: st
                .alerts
                .iter()
                .map(|(identity, severity)| AlertView {
                    identity: identity.clone(),
                    severity: severity.clone(),
                    blocks: self.block_on.contains(severity),
                    fired_at: st.fired.get(identity).copied(),
                    expires_at: st
                        .fired
                        .get(identity)
                        .map(|at| at.saturating_add(self.alert_ttl)),
                })
                .collect(),
            frozen: frozen.map(|f| FrozenView {
                until: f.until,
                reason: f.reason,
            }),
            pinned: st.pin.as_ref().map(|p| PinView {
                image: p.image.clone(),
                by: p.by.clone(),
                reason: p.reason.clone(),
            }),
            approvals: st.approvals.clone(),
            quarantined: st.quarantined.iter().cloned().collect(),
            timers: self.timers(st),
        }
    }

    /// Every rule that holds the parked image now.
    fn held_because(&self, k: &KeyCx<'_>, st: &GateState, now: u64) -> Vec<String> {
        let Some(parked) = &st.parked else {
            return Vec::new();
        };
        let mut why = Vec::new();
        if st.pin.as_ref().is_some_and(|p| p.image != *parked) {
            why.extend(Self::pinned_reason(st));
        }
        if let Some(f) = self.frozen(k, st, now) {
            let until = f.until.map_or_else(|| "unfrozen".to_owned(), rfc3339);
            why.push(format!("frozen until {until}: {}", f.reason));
        }
        if self.require_approval.iter().any(|e| e == k.environment)
            && !st.approvals.contains(parked)
        {
            why.push("awaiting approval".into());
        }
        for (identity, severity) in &st.alerts {
            if self.block_on.contains(severity) {
                why.push(format!("alert {identity} ({severity}) is firing"));
            }
        }
        why
    }

    fn timers(&self, st: &GateState) -> Vec<TimerView> {
        let mut timers = Vec::new();
        for (identity, at) in &st.fired {
            timers.push(TimerView {
                kind: "alert_expiry",
                deadline: at.saturating_add(self.alert_ttl),
                detail: format!("alert {identity} expires"),
            });
        }
        if let Some(until) = st.freeze.as_ref().and_then(|f| f.until) {
            timers.push(TimerView {
                kind: "freeze_until",
                deadline: until,
                detail: "the key's freeze lifts".into(),
            });
        }
        if let Some(at) = st.rollout.retry_at {
            let max = self.retry.as_ref().map_or(0, |r| r.max);
            timers.push(TimerView {
                kind: "retry",
                deadline: at,
                detail: format!("retry {} of {max}", st.rollout.attempts + 1),
            });
        }
        for (to, at) in &st.rollout.soaks {
            timers.push(TimerView {
                kind: "soak",
                deadline: *at,
                detail: format!("promotion to {to}"),
            });
        }
        timers.sort_by_key(|t| t.deadline);
        timers
    }
}
