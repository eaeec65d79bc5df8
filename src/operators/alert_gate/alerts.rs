//! Alerts: firing (and the rollback it may cause), resolved, expired, and
//! the unparking that the end of a blocking alert brings.

use super::image::{consequence_causes, Effects, GateRules, Incoming, KeyCx};
use super::state::{GateState, Hold};
use crate::operators::Ctx;
use crate::record::origin::add_cause;
use crate::record::{AlertEvent, AlertStatus, Origin};

impl GateRules {
    /// When the earliest active alert expires, if any alert is active.
    pub(super) fn next_expiry(&self, st: &GateState) -> Option<u64> {
        st.fired
            .values()
            .min()
            .map(|at| at.saturating_add(self.alert_ttl))
    }

    /// Gives alerts recorded before expiry existed a firing time: their ttl
    /// starts when their key is first used again.
    pub(super) fn adopt_unfired(st: &mut GateState, now: u64) {
        for identity in st.alerts.keys() {
            if !st.fired.contains_key(identity) {
                st.fired.insert(identity.clone(), now);
            }
        }
    }

    pub(super) fn alert(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        alert: &AlertEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        match alert.status {
            AlertStatus::Firing => self.firing(k, st, alert, origin, cx, effects),
            AlertStatus::Resolved => {
                let identity = alert.identity();
                // A `resolved` for an alert that is not active changes nothing.
                if st.alerts.remove(identity).is_none() {
                    return;
                }
                st.fired.remove(identity);
                st.alert_origins.remove(identity);
                self.unpark_if_unblocked(k, st, origin, cx, effects);
            }
        }
    }

    fn firing(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        alert: &AlertEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let now = cx.now();
        let identity = alert.identity();
        st.alerts
            .insert(identity.to_owned(), alert.severity.clone());
        st.fired.insert(identity.to_owned(), now);
        if origin.is_known() {
            st.alert_origins.insert(identity.to_owned(), origin.clone());
        }
        if self.rollback_on.contains(&alert.severity) {
            self.rollback_recent(k, st, alert, origin, cx);
        }
        // Firing again at a severity that no longer blocks ends the hold.
        self.unpark_if_unblocked(k, st, origin, cx, effects);
    }

    /// Rolls back the last deploy if it is within `rollback_window` and its
    /// previous image is known; one rollback never cascades into another.
    fn rollback_recent(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        alert: &AlertEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) {
        let now = cx.now();
        let Some((target, age)) = self.recent_previous(st, now) else {
            return;
        };
        let causes = consequence_causes(origin, st);
        let reason = format!(
            "rollback: alert {} ({}) fired {age} ms after deploy",
            alert.identity(),
            alert.severity
        );
        self.rollback(k, st, target, reason, "rollback_alert", causes, cx);
    }

    /// The previous image of the last deploy, and the deploy's age, when it
    /// is at most `rollback_window` old.
    pub(super) fn recent_previous(&self, st: &GateState, now: u64) -> Option<(String, u64)> {
        let window = self.rollback_window?;
        let last = st.last_deploy.as_ref()?;
        let age = now.saturating_sub(last.at);
        let previous = last.previous.clone().filter(|_| age <= window)?;
        Some((previous, age))
    }

    /// Removes the alerts whose ttl has run out (the key's timer is due),
    /// then unparks exactly as a `resolved` would.
    pub(super) fn expire(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let now = cx.now();
        let expired: Vec<String> = st
            .fired
            .iter()
            .filter(|(_, at)| at.saturating_add(self.alert_ttl) <= now)
            .map(|(identity, _)| identity.clone())
            .collect();
        let mut last_firing = Origin::default();
        for identity in &expired {
            st.alerts.remove(identity);
            st.fired.remove(identity);
            if let Some(origin) = st.alert_origins.remove(identity) {
                if !last_firing.is_known() {
                    last_firing = origin;
                }
            }
        }
        if !expired.is_empty() {
            tracing::debug!(
                service = k.service,
                environment = k.environment,
                expired = expired.len(),
                "alerts expired without firing again"
            );
            self.unpark_if_unblocked(k, st, &last_firing, cx, effects);
        }
    }

    /// Handles the parked image again when an alert held it and no blocking
    /// alert remains.
    fn unpark_if_unblocked(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        ended: &Origin,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        if self.blocking(st).is_none() {
            let reason = "released: no blocking alert remains".to_owned();
            self.unpark_held_by(k, st, Hold::Alert, ended, reason, cx, effects);
        }
    }

    /// Takes the parked image and handles it from the top again.
    pub(super) fn unpark(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        ended: &Origin,
        reason: String,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let Some((image, mut causes)) = st.unpark() else {
            return;
        };
        add_cause(&mut causes, ended);
        let incoming = Incoming {
            image,
            causes,
            reason,
            code: "released",
            from_record: false,
        };
        self.handle(k, st, incoming, cx, effects);
    }
}
