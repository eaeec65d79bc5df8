//! `alert_gate`: joins image and alert streams into deployment intents,
//! holding deploys while an alert fires and rolling back when one fires
//! right after a deploy.
//!
//! One concern per file: `config` (keys and their validation), `state` (what
//! the gate keeps per key and its encoding), `image` (the image path and the
//! intents it emits), `alerts` (firing, resolved, expiry), `tests`.

mod alerts;
mod config;
mod image;
mod state;
#[cfg(test)]
mod tests;

use super::{Ctx, Operator};
use crate::record::{AlertEvent, AlertStatus, ImageEvent, Origin, Payload, Record};
use crate::state::{StateBackend, StateError, Table, WriteBatch};
pub use config::AlertGateConfig;
use image::GateRules;
use state::{parse_state_key, state_key, GateState};

pub struct AlertGate {
    rules: GateRules,
    state: Table<GateState>,
}

impl AlertGate {
    /// Runs `handle` on the entry of (service, environment), then keeps the
    /// key's expiry timer in step and drops the entry if nothing is left in it.
    fn with_state(
        &mut self,
        service: &str,
        environment: &str,
        cx: &mut Ctx<'_>,
        handle: impl FnOnce(&GateRules, &mut GateState, &mut Ctx<'_>),
    ) -> Result<(), StateError> {
        let key = state_key(service, environment);
        let rules = &self.rules;
        let slot = self.state.get_mut(cx.backend(), &key)?;
        let st = slot.get_or_insert_with(GateState::default);
        let armed = rules.next_expiry(st);
        GateRules::adopt_unfired(st, cx.now());
        handle(rules, st, cx);
        rules.rearm(st, &key, armed, cx);
        if *st == GateState::default() {
            *slot = None;
        }
        Ok(())
    }

    /// Handles an image; `on_record` has already dead-lettered images without an environment.
    fn on_image(
        &mut self,
        image: &ImageEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let Some(environment) = image.environment.as_deref() else {
            return Ok(());
        };
        self.with_state(&image.service, environment, cx, |rules, st, cx| {
            rules.image(st, image, environment, origin, cx)
        })
    }

    fn on_alert(
        &mut self,
        alert: &AlertEvent,
        origin: &Origin,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        self.with_state(
            &alert.service,
            &alert.environment,
            cx,
            |rules, st, cx| match alert.status {
                AlertStatus::Firing => rules.firing(st, alert, origin, cx),
                AlertStatus::Resolved => {
                    let identity = alert.identity();
                    st.alerts.remove(identity);
                    st.fired.remove(identity);
                    st.alert_origins.remove(identity);
                    rules.release_parked(st, &alert.service, &alert.environment, origin, cx);
                }
            },
        )
    }
}

impl Operator for AlertGate {
    fn on_record(
        &mut self,
        _port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        match &record.payload {
            Payload::Image(image) if image.environment.is_none() => {
                cx.dead_letter(&record, "environment: an image needs an environment at an alert_gate (set one on the source or route it)".into());
                Ok(())
            }
            Payload::Image(image) => self.on_image(image, &record.origin, cx),
            Payload::Alert(alert) => self.on_alert(alert, &record.origin, cx),
            // Validation only connects image and alert streams to a gate.
            Payload::Git(_) | Payload::Intent(_) | Payload::Deployment(_) | Payload::Control(_) => {
                Ok(())
            }
        }
    }

    /// The earliest alert of the key has reached its ttl.
    fn on_timer(&mut self, key: &[u8], cx: &mut Ctx<'_>) -> Result<(), StateError> {
        let Some((service, environment)) = parse_state_key(key) else {
            return Ok(());
        };
        let (service, environment) = (service.to_owned(), environment.to_owned());
        self.with_state(&service, &environment, cx, |rules, st, cx| {
            rules.expire(st, &service, &environment, cx)
        })
    }

    fn accepts_entry(&self, value: &[u8]) -> bool {
        self.state.accepts(value)
    }

    fn commit(
        &mut self,
        _now: u64,
        _backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<(), StateError> {
        self.state.commit(batch)
    }
}
