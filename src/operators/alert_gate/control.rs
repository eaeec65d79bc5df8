//! A person's commands: freeze and unfreeze (a key or a whole
//! environment), pin and unpin, approve; and the ends of freezes (`until`,
//! a freeze window closing).

use super::image::{who, Effects, GateRules, KeyCx};
use super::state::{Freeze, GateState, Hold, Pin};
use crate::operators::Ctx;
use crate::record::{ControlAction, ControlEvent, Origin};

impl GateRules {
    /// A command for one key (it names a service).
    pub(super) fn key_control(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        c: &ControlEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let by = who(&c.by);
        match c.action {
            ControlAction::Freeze => st.freeze = Some(freeze_of(c, origin)),
            ControlAction::Unfreeze => {
                st.freeze = None;
                self.unpark_held_by(
                    k,
                    st,
                    Hold::Frozen,
                    origin,
                    format!("released: unfrozen{by}"),
                    cx,
                    effects,
                );
            }
            ControlAction::Pin => {
                let Some(image) = c.image.clone() else {
                    return;
                };
                st.pin = Some(Pin {
                    image,
                    reason: c.reason.clone(),
                    by: c.by.clone(),
                    origin: origin.clone(),
                });
                // A pin to the parked image itself lifts what held it.
                if st.parked == st.pin.as_ref().map(|p| p.image.clone()) {
                    self.unpark_held_by(
                        k,
                        st,
                        Hold::Pinned,
                        origin,
                        format!("released: pinned to it{by}"),
                        cx,
                        effects,
                    );
                }
            }
            ControlAction::Unpin => {
                st.pin = None;
                self.unpark_held_by(
                    k,
                    st,
                    Hold::Pinned,
                    origin,
                    format!("released: pin lifted{by}"),
                    cx,
                    effects,
                );
            }
            ControlAction::Approve => {
                let Some(image) = c.image.as_deref() else {
                    return;
                };
                if !self.require_approval.iter().any(|e| e == k.environment) {
                    cx.drop_record("approval_not_required");
                    return;
                }
                Self::approve(st, image);
                if st.parked.as_deref() == Some(image) {
                    self.unpark_held_by(
                        k,
                        st,
                        Hold::Approval,
                        origin,
                        format!("released: approved{by}"),
                        cx,
                        effects,
                    );
                }
            }
        }
    }

    /// A command for a whole environment (freeze or unfreeze without a
    /// service), on the environment's own entry. Returns the services to
    /// handle again (an unfreeze releases what the freeze parked).
    pub(super) fn env_control(
        &self,
        env: &mut GateState,
        c: &ControlEvent,
        origin: &Origin,
    ) -> Vec<String> {
        match c.action {
            ControlAction::Freeze => {
                env.freeze = Some(freeze_of(c, origin));
                Vec::new()
            }
            ControlAction::Unfreeze => {
                env.freeze = None;
                env.window_until = None;
                std::mem::take(&mut env.waiting).into_iter().collect()
            }
            // Validation gives pin, unpin and approve a service.
            _ => Vec::new(),
        }
    }

    /// The environment's timer is due: a freeze's `until` or a window's end.
    /// Returns the services to handle again.
    pub(super) fn env_timer(&self, env: &mut GateState, now: u64) -> Vec<String> {
        let mut ended = false;
        if env
            .freeze
            .as_ref()
            .and_then(|f| f.until)
            .is_some_and(|u| u <= now)
        {
            env.freeze = None;
            ended = true;
        }
        if env.window_until.is_some_and(|u| u <= now) {
            env.window_until = None;
            ended = true;
        }
        if !ended {
            return Vec::new();
        }
        std::mem::take(&mut env.waiting).into_iter().collect()
    }

    /// The key's own freeze reached its `until`.
    pub(super) fn freeze_due(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let now = cx.now();
        let Some(freeze) = st.freeze.take_if(|f| f.until.is_some_and(|u| u <= now)) else {
            return;
        };
        self.unpark_held_by(
            k,
            st,
            Hold::Frozen,
            &freeze.origin,
            "released: freeze ended".into(),
            cx,
            effects,
        );
    }

    /// Handles the parked image again if `hold` is what held it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unpark_held_by(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        hold: Hold,
        ended: &Origin,
        reason: String,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        if st.parked_by == Some(hold) {
            self.unpark(k, st, ended, reason, cx, effects);
        }
    }
}

fn freeze_of(c: &ControlEvent, origin: &Origin) -> Freeze {
    Freeze {
        until: c.until,
        reason: c.reason.clone(),
        by: c.by.clone(),
        origin: origin.clone(),
    }
}
