//! The image path: an image's handling, and the intents the gate emits.

use sha2::{Digest, Sha256};

use super::state::{GateState, LastDeploy};
use crate::operators::Ctx;
use crate::record::{Action, ImageEvent, Intent, Origin, Payload};

/// The gate's configuration, apart from its state so both can be borrowed at once.
pub(super) struct GateRules {
    pub(super) app_id: String,
    pub(super) name: String,
    pub(super) block_on: Vec<String>,
    pub(super) rollback_on: Vec<String>,
    pub(super) rollback_window: u64,
    pub(super) alert_ttl: u64,
}

/// Identifies the intent to build; the gate adds id and counters.
pub(super) struct Draft<'a> {
    pub(super) action: Action,
    pub(super) service: &'a str,
    pub(super) environment: &'a str,
    pub(super) image: String,
    pub(super) previous_image: Option<String>,
    pub(super) reason: String,
    pub(super) reason_code: &'static str,
    pub(super) caused_by: Vec<Origin>,
}

impl GateRules {
    /// The smallest (identity, severity) among active alerts that block deploys.
    pub(super) fn blocking<'s>(&self, st: &'s GateState) -> Option<(&'s String, &'s String)> {
        st.alerts
            .iter()
            .find(|(_, severity)| self.block_on.contains(severity))
    }

    pub(super) fn emit(&self, st: &mut GateState, draft: Draft<'_>, cx: &mut Ctx<'_>) {
        st.emitted += 1;
        let intent_id = self.intent_id(&draft, st.emitted);
        let key = format!("{}/{}", draft.service, draft.environment);
        let intent = Intent {
            action: draft.action,
            service: draft.service.to_owned(),
            environment: draft.environment.to_owned(),
            image: draft.image,
            previous_image: draft.previous_image,
            reason: draft.reason,
            reason_code: draft.reason_code.to_owned(),
            intent_id,
            caused_by: draft.caused_by,
        };
        cx.emit(Some(key), Payload::Intent(Box::new(intent)));
    }

    /// A stable id: the same topology and input give the same ids, and two
    /// intents of one gate never share one (the per-key count differs).
    pub(super) fn intent_id(&self, draft: &Draft<'_>, count: u64) -> String {
        let mut h = Sha256::new();
        for part in [
            self.app_id.as_str(),
            &self.name,
            draft.service,
            draft.environment,
            draft.action.as_str(),
            &draft.image,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(count.to_le_bytes());
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for b in &digest[..16] {
            id.push(HEX[usize::from(b >> 4)] as char);
            id.push(HEX[usize::from(b & 0xf)] as char);
        }
        id
    }

    /// The deploy path shared by new images and unparked ones.
    pub(super) fn deploy(&self, st: &mut GateState, draft: Draft<'_>, now: u64, cx: &mut Ctx<'_>) {
        st.last_deploy = Some(LastDeploy {
            image: draft.image.clone(),
            at: now,
            previous: st.current.clone(),
        });
        st.current = Some(draft.image.clone());
        st.current_causes = draft.caused_by.clone();
        self.emit(st, draft, cx);
    }
}

impl GateRules {
    pub(super) fn image(
        &self,
        st: &mut GateState,
        image: &ImageEvent,
        environment: &str,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) {
        let reference = image.reference();
        if st.current.as_deref() == Some(reference.as_str()) {
            cx.drop_record("already_current");
            return;
        }
        let causes = vec![origin.clone()]
            .into_iter()
            .filter(Origin::is_known)
            .collect::<Vec<_>>();
        let draft = |action, reason, reason_code| Draft {
            action,
            service: &image.service,
            environment,
            image: reference.clone(),
            previous_image: st.current.clone(),
            reason,
            reason_code,
            caused_by: causes.clone(),
        };
        if let Some((identity, severity)) = self.blocking(st) {
            let d = draft(
                Action::Hold,
                format!("held: alert {identity} ({severity}) is firing"),
                "held_alert",
            );
            st.parked = Some(reference.clone());
            st.parked_causes = causes.clone();
            self.emit(st, d, cx);
        } else {
            let d = draft(Action::Deploy, "new image".into(), "new_image");
            self.deploy(st, d, cx.now(), cx);
        }
    }
}
