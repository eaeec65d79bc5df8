//! Alerts: firing (and the rollback it may cause), resolved, expired.

use super::image::{Draft, GateRules};
use super::state::{GateState, LastDeploy};
use crate::operators::Ctx;
use crate::record::origin::add_cause;
use crate::record::{Action, AlertEvent, Origin};

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

    /// Keeps the key's one timer on its earliest alert expiry.
    pub(super) fn rearm(&self, st: &GateState, key: &[u8], armed: Option<u64>, cx: &mut Ctx<'_>) {
        let next = self.next_expiry(st);
        if next == armed {
            return;
        }
        match next {
            Some(at) => cx.arm_timer(key, at),
            None => cx.cancel_timer(key),
        }
    }

    /// Deploys the parked image once no blocking alert remains.
    pub(super) fn release_parked(
        &self,
        st: &mut GateState,
        service: &str,
        environment: &str,
        ended: &Origin,
        cx: &mut Ctx<'_>,
    ) {
        if self.blocking(st).is_some() {
            return;
        }
        let Some(parked) = st.parked.take() else {
            return;
        };
        let mut caused_by = std::mem::take(&mut st.parked_causes);
        if st.current.as_deref() == Some(parked.as_str()) {
            return;
        }
        add_cause(&mut caused_by, ended);
        let draft = Draft {
            action: Action::Deploy,
            service,
            environment,
            image: parked,
            previous_image: st.current.clone(),
            reason: "released: no blocking alert remains".into(),
            reason_code: "released",
            caused_by,
        };
        self.deploy(st, draft, cx.now(), cx);
    }
}

impl GateRules {
    pub(super) fn firing(
        &self,
        st: &mut GateState,
        alert: &AlertEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) {
        let now = cx.now();
        let identity = alert.identity();
        st.alerts
            .insert(identity.to_owned(), alert.severity.clone());
        st.fired.insert(identity.to_owned(), now);
        if origin.is_known() {
            st.alert_origins.insert(identity.to_owned(), origin.clone());
        }
        if !self.rollback_on.contains(&alert.severity) {
            return;
        }
        let Some(last) = st.last_deploy.clone() else {
            return;
        };
        let Some(previous) = last
            .previous
            .filter(|_| now.saturating_sub(last.at) <= self.rollback_window)
        else {
            return;
        };
        let draft = Draft {
            action: Action::Rollback,
            service: &alert.service,
            environment: &alert.environment,
            image: previous.clone(),
            previous_image: Some(last.image),
            reason: format!(
                "rollback: alert {identity} ({}) fired {} ms after deploy",
                alert.severity,
                now.saturating_sub(last.at)
            ),
            reason_code: "rollback_alert",
            caused_by: {
                let mut causes = Vec::new();
                add_cause(&mut causes, origin);
                for c in &st.current_causes {
                    add_cause(&mut causes, c);
                }
                causes
            },
        };
        st.current = Some(previous.clone());
        st.current_causes = draft.caused_by.clone();
        st.last_deploy = Some(LastDeploy {
            image: previous,
            at: now,
            previous: None,
        });
        self.emit(st, draft, cx);
    }

    /// Removes the alerts whose ttl has run out (the key's timer is due),
    /// then releases a parked image exactly as a `resolved` would.
    pub(super) fn expire(
        &self,
        st: &mut GateState,
        service: &str,
        environment: &str,
        cx: &mut Ctx<'_>,
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
                service,
                environment,
                expired = expired.len(),
                "alerts expired without firing again"
            );
            self.release_parked(st, service, environment, &last_firing, cx);
        }
    }
}
