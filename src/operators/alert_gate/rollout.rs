//! Deployment statuses: a rollout turns healthy (and soaks towards a
//! promotion), degraded (and rolls back), or failed (and is retried, then
//! rolled back); and the retry and soak timers.

use super::image::{consequence_causes, Effects, GateRules, Incoming, KeyCx};
use super::state::GateState;
use crate::operators::Ctx;
use crate::record::origin::add_cause;
use crate::record::{Action, DeployStatus, DeploymentEvent, Origin};

impl GateRules {
    pub(super) fn status(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        d: &DeploymentEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) {
        let Some(current) = st.current.clone() else {
            cx.drop_record("stale_status");
            return;
        };
        if d.image.as_ref().is_some_and(|i| *i != current) {
            cx.drop_record("stale_status");
            return;
        }
        let now = cx.now();
        let rollout = &mut st.rollout;
        rollout.status = Some(d.status);
        rollout.since = now;
        rollout.status_origin = origin.clone();
        if d.revision.is_some() {
            rollout.revision = d.revision.clone();
        }
        match d.status {
            DeployStatus::Healthy => {
                rollout.retry_at = None;
                self.arm_soaks(k, st, now);
            }
            DeployStatus::Progressing => rollout.soaks.clear(),
            DeployStatus::Degraded => {
                rollout.soaks.clear();
                self.degraded(k, st, &current, cx);
            }
            DeployStatus::Failed => {
                rollout.soaks.clear();
                self.failed(k, st, &current, cx);
            }
        }
    }

    /// Arms a soak for each promotion from this environment, unless one is
    /// pending or the image was already promoted there.
    fn arm_soaks(&self, k: &KeyCx<'_>, st: &mut GateState, now: u64) {
        let rollout = &mut st.rollout;
        for rule in self.promote.iter().filter(|p| p.from == k.environment) {
            let pending = rollout.soaks.iter().any(|(to, _)| *to == rule.to);
            if !pending && !rollout.promoted.contains(&rule.to) {
                rollout
                    .soaks
                    .push((rule.to.clone(), now.saturating_add(rule.soak)));
            }
        }
    }

    /// The records behind a status's consequence: the status, then the image's.
    fn status_causes(st: &GateState) -> Vec<Origin> {
        consequence_causes(&st.rollout.status_origin, st)
    }

    /// Within `rollback_window` of the deploy: roll back as a `rollback_on`
    /// alert does, and quarantine the image on this key.
    fn degraded(&self, k: &KeyCx<'_>, st: &mut GateState, current: &str, cx: &mut Ctx<'_>) {
        let Some((target, age)) = self.recent_previous(st, cx.now()) else {
            return;
        };
        let reason = format!("rollback: degraded {age} ms after deploy");
        let causes = Self::status_causes(st);
        if self.rollback(k, st, target, reason, "rollback_degraded", causes, cx) {
            st.quarantined.insert(current.to_owned());
        }
    }

    /// With attempts left: a retry after backoff x 2^(attempts so far).
    /// Without: a rollback to the image that ran before the failing one, or
    /// a hold when it is not known; the image is quarantined either way.
    fn failed(&self, k: &KeyCx<'_>, st: &mut GateState, current: &str, cx: &mut Ctx<'_>) {
        let now = cx.now();
        let attempts = st.rollout.attempts;
        if let Some(retry) = self.retry.as_ref().filter(|r| attempts < r.max) {
            let factor = 1u64.checked_shl(attempts).unwrap_or(u64::MAX);
            let delay = retry.backoff.saturating_mul(factor);
            st.rollout.retry_at = Some(now.saturating_add(delay));
            return;
        }
        st.rollout.retry_at = None;
        let causes = Self::status_causes(st);
        let previous = st
            .last_deploy
            .as_ref()
            .filter(|d| d.image == current)
            .and_then(|d| d.previous.clone());
        match previous {
            Some(target) => {
                let reason = format!("rollback: failed after {attempts} retries");
                if self.rollback(k, st, target, reason, "rollback_failed", causes, cx) {
                    st.quarantined.insert(current.to_owned());
                }
            }
            None => {
                st.quarantined.insert(current.to_owned());
                let draft = super::image::Draft {
                    action: Action::Hold,
                    service: k.service,
                    environment: k.environment,
                    image: current.to_owned(),
                    previous_image: Some(current.to_owned()),
                    reason: format!(
                        "failed after {attempts} retries and no earlier image is known: holding"
                    ),
                    reason_code: "failed_no_rollback",
                    caused_by: causes,
                };
                self.emit(st, draft, cx);
            }
        }
    }

    /// The key's retry is due: the same image is deployed again, unless the
    /// key is pinned to another image.
    pub(super) fn retry_due(&self, k: &KeyCx<'_>, st: &mut GateState, cx: &mut Ctx<'_>) {
        st.rollout.retry_at = None;
        let (Some(current), Some(retry)) = (st.current.clone(), self.retry.as_ref()) else {
            return;
        };
        let mut causes = Self::status_causes(st);
        if let Some(pin) = st.pin.as_ref().filter(|p| p.image != current) {
            add_cause(&mut causes, &pin.origin);
            let pinned = Self::pinned_reason(st).unwrap_or_default();
            let draft = super::image::Draft {
                action: Action::Hold,
                service: k.service,
                environment: k.environment,
                image: current.clone(),
                previous_image: Some(current),
                reason: format!("retry skipped: {pinned}"),
                reason_code: "held_pinned",
                caused_by: causes,
            };
            return self.emit(st, draft, cx);
        }
        st.rollout.attempts += 1;
        st.rollout.status = None;
        st.rollout.since = cx.now();
        if let Some(last) = st.last_deploy.as_mut().filter(|d| d.image == current) {
            last.at = cx.now();
        }
        let draft = super::image::Draft {
            action: Action::Deploy,
            service: k.service,
            environment: k.environment,
            image: current.clone(),
            previous_image: Some(current),
            reason: format!(
                "retry {} of {} after failed sync",
                st.rollout.attempts, retry.max
            ),
            reason_code: "retry",
            caused_by: causes,
        };
        self.emit(st, draft, cx);
    }

    /// The soaks due at `now`: each promotes the image when the key still
    /// runs it, healthy, with no blocking alert; else it is dropped (a later
    /// `healthy` arms it again).
    pub(super) fn soaks_due(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let now = cx.now();
        let (due, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut st.rollout.soaks)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        st.rollout.soaks = pending;
        let Some(current) = st.current.clone() else {
            return;
        };
        let healthy = st.rollout.status == Some(DeployStatus::Healthy);
        if !healthy || self.blocking(st).is_some() {
            return;
        }
        for (to, _) in due {
            let Some(rule) = self
                .promote
                .iter()
                .find(|p| p.from == k.environment && p.to == to)
            else {
                continue;
            };
            st.rollout.promoted.push(to.clone());
            let incoming = Incoming {
                image: current.clone(),
                causes: Self::status_causes(st),
                reason: format!(
                    "promoted from {} after {} healthy",
                    k.environment, rule.soak_text
                ),
                code: "promoted",
                from_record: false,
            };
            effects.promote.push((to, incoming));
        }
    }
}
