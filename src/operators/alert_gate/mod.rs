//! `alert_gate`: turns images into deployment intents for each (service,
//! environment), holding them while something says not now, and closing
//! the loop on what became of each rollout. Everything runs on the engine's
//! clock (virtual in replay, wall or stream time live).
//!
//! **An image** for a key (a new image, an unparked one, a promotion) is
//! handled in this order:
//! 1. equal to the current image: nothing (`already_current` when a record);
//! 2. quarantined on the key: nothing (`quarantined`);
//! 3. pinned to another image: parked, `hold` "pinned to X by Y" (`held_pinned`);
//! 4. frozen (the key's freeze, its environment's, or an open freeze
//!    window): parked, `hold` "frozen until T: reason" (`held_frozen`);
//! 5. the environment is in `require_approval` and the image is not
//!    approved: parked, `hold` "awaiting approval" (`held_approval`);
//! 6. an active alert whose severity is in `block_on`: parked, `hold`
//!    "held: alert X (sev) is firing" (`held_alert`);
//! 7. else `deploy`: it becomes current with a new rollout. A deploy
//!    discards the parked image (older than the one deployed), ends every
//!    quarantine of the key and uses up the image's approval.
//!
//! Parking replaces any parked image and remembers which rule parked it.
//! **Unparking** happens only when that rule ends: the last blocking alert
//! resolves, expires, or fires again at a severity that no longer blocks;
//! the key or its environment is unfrozen, or its freeze (`until`) or
//! freeze window ends; the pin is lifted (or moved to the parked image); the
//! parked image is approved. The parked image is then handled from the top
//! again, so it may be held again by a later rule (a new `hold` says which).
//! A `resolved` for an alert that is not active changes nothing.
//!
//! **Alerts.** A firing alert becomes active (identity -> severity). If its
//! severity is in `rollback_on` and the last deploy, with a known previous
//! image, is at most `rollback_window` old, the key is rolled back to that
//! image (`rollback_alert`); the last deploy becomes (previous image, now,
//! none), so one rollback never cascades. An alert that has not fired again
//! for `alert_ttl` expires exactly as if it had resolved.
//!
//! **Statuses** (the `status` input) for the current image; a status
//! naming another image, or for a key with no image, is stale (ignored,
//! `stale_status`):
//! - `healthy`: cancels a pending retry; for each `promote` rule from this
//!   environment a soak timer is armed at now + soak, unless one is pending
//!   or the image was already promoted there. When it fires and the key
//!   still runs the image, healthy, with no blocking alert, the image is
//!   handled from the top for (service, `to`), reason "promoted from
//!   staging after 30m healthy" (`promoted`). Otherwise the soak is dropped
//!   and the next `healthy` arms it again.
//! - `progressing`: the rollout is no longer healthy: pending soaks are dropped.
//! - `degraded`: soaks dropped; within `rollback_window` of the deploy
//!   (or of its last retry), a rollback as a `rollback_on` alert does
//!   (`rollback_degraded`), and the image is quarantined on the key.
//! - `failed`: soaks dropped; with `retry` attempts left, a retry timer at
//!   now + backoff x 2^(retries so far); when it fires the same image is
//!   deployed again, "retry n of max after failed sync" (`retry`), a new
//!   intent id. Without attempts left: a rollback to the image that ran
//!   before the failing one (retries do not change it; `rollback_failed`),
//!   or, when it is not known, a `hold` (`failed_no_rollback`); the image is
//!   quarantined either way. A status arriving while a retry is pending is
//!   handled as usual (a `healthy` cancels it, a `failed` re-arms it).
//!
//! **Commands** (the `control` input): `freeze` (a key, or a whole
//! environment without `service`; `until` lifts it by itself), `unfreeze`,
//! `pin` (the key takes no other image; a pin deploys nothing by itself),
//! `unpin`, `approve` (counted `approval_not_required` where no approval is
//! required; at most 8 pending approvals are kept per key). Freeze windows
//! (`freeze_windows`) open at each time their cron matches in their
//! timezone and last `duration`; an `unfreeze` does not close a window.
//!
//! **Safety before calm.** Rollbacks happen during a freeze, with pins
//! aside: a pinned key is never rolled back; a `hold` of the current image
//! says "rollback to X skipped: pinned to P by Y" (`pinned_no_rollback`).
//! A retry re-applies the image already there: freezes and alerts do not
//! hold it, but a pin to another image does ("retry skipped: pinned ...",
//! `held_pinned`), and the retries stop.
//!
//! **Ties.** Timers of one key fire together at their deadline, in this
//! order: alert expiries, the key's freeze `until`, the retry, the soaks.
//! Timers of different keys at one deadline fire in the order they were
//! armed (the engine's rule), and every timer due at or before a record's
//! time fires before the record. A status and an alert at the same time are
//! handled in input order. A freeze window that opens on a parked key
//! changes nothing at once: when what parked the image ends, the image is
//! held again as frozen, and released when the window closes.
//!
//! Every intent carries `reason` (for people), `reason_code` (one word,
//! above) and `caused_by`: the records behind it (replay: input lines; live:
//! topic, partition, offset) — an image's own record; for a release the
//! parked image's then the record that ended the hold; for a rollback,
//! retry or promotion the status or alert, then the records behind the image.
//!
//! A key's entry is deleted once it holds nothing, so a `resolved` for an
//! alert never seen leaves no state; an environment's entry once no freeze
//! and no waiting service is left.
//!
//! One concern per file: `config` (keys and validation), `state` (what is
//! kept and its encoding), `image` (the handling order and the intents),
//! `alerts`, `rollout` (statuses, retries, soaks), `control` (commands and
//! freezes), `query` (what a key's state says), `tests`.

mod alerts;
mod config;
mod control;
mod image;
mod query;
mod rollout;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_loop;

use super::view::{OperatorView, QueryCx};
use super::{Ctx, Gauge, Operator};
use crate::record::{Origin, Payload, Record};
use crate::state::{Committed, StateBackend, StateError, Table, WriteBatch};
pub use config::AlertGateConfig;
use image::{Effects, GateRules, Incoming, KeyCx};
pub use query::GateView;
use state::{parse_state_key, state_key, GateState, Hold};

pub struct AlertGate {
    rules: GateRules,
    /// Boxed: an entry is hundreds of bytes, and the table's hash map has
    /// up to twice as many buckets as entries; a bucket holds a pointer.
    state: Table<Box<GateState>>,
}

/// Work left for other keys once one is handled.
enum Next {
    /// Handle an image from the top for (service, environment).
    Handle(String, String, Incoming),
    /// The environment-wide freeze that parked this service's image ended.
    Release(String, String, Origin, String),
}

impl AlertGate {
    fn new(rules: GateRules, state: Table<Box<GateState>>) -> Self {
        AlertGate { rules, state }
    }

    /// The environment's own freeze, when environment-wide holds can exist.
    fn env_freeze(
        &mut self,
        environment: &str,
        cx: &Ctx<'_>,
    ) -> Result<Option<state::Freeze>, StateError> {
        if !self.rules.env_wide {
            return Ok(None);
        }
        let key = state_key("", environment);
        Ok(self
            .state
            .get(cx.backend(), &key)?
            .and_then(|e| e.freeze.clone()))
    }

    /// Runs `handle` on the entry of (service, environment), keeps the key's
    /// timer on its earliest deadline, drops the entry if nothing is left in
    /// it, then does what the handling asked of other entries. `fired`: the
    /// key's timer has just fired (nothing is armed any more).
    fn with_key(
        &mut self,
        service: &str,
        environment: &str,
        fired: bool,
        cx: &mut Ctx<'_>,
        handle: impl FnOnce(&GateRules, &KeyCx<'_>, &mut GateState, &mut Ctx<'_>, &mut Effects),
    ) -> Result<(), StateError> {
        let env_freeze = self.env_freeze(environment, cx)?;
        let key = state_key(service, environment);
        let k = KeyCx {
            service,
            environment,
            env_freeze: env_freeze.as_ref(),
        };
        let mut effects = Effects::default();
        let rules = &self.rules;
        let slot = self.state.get_mut(cx.backend(), &key)?;
        let st: &mut GateState = slot.get_or_insert_with(Box::default);
        let armed = if fired { None } else { rules.next_deadline(st) };
        GateRules::adopt_unfired(st, cx.now());
        handle(rules, &k, st, cx, &mut effects);
        rules.rearm(st, &key, armed, cx);
        if st.is_empty() {
            *slot = None;
        }
        self.follow(service, environment, effects, cx)
    }

    /// Does what a key's handling asked of others: register the key with
    /// its environment's freeze, then the promotions.
    fn follow(
        &mut self,
        service: &str,
        environment: &str,
        effects: Effects,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        if let Some(window_end) = effects.wait_on_env {
            self.with_env(environment, false, cx, |_, env| {
                env.waiting.insert(service.to_owned());
                if let Some(end) = window_end {
                    env.window_until = Some(env.window_until.map_or(end, |u| u.max(end)));
                }
            })?;
        }
        let next = effects
            .promote
            .into_iter()
            .map(|(to, incoming)| Next::Handle(service.to_owned(), to, incoming))
            .collect();
        self.run(next, cx)
    }

    /// Runs `change` on an environment's own entry, keeping its timer.
    fn with_env<T>(
        &mut self,
        environment: &str,
        fired: bool,
        cx: &mut Ctx<'_>,
        change: impl FnOnce(&GateRules, &mut GateState) -> T,
    ) -> Result<T, StateError> {
        let key = state_key("", environment);
        let rules = &self.rules;
        let slot = self.state.get_mut(cx.backend(), &key)?;
        let env: &mut GateState = slot.get_or_insert_with(Box::default);
        let armed = if fired {
            None
        } else {
            rules.next_deadline(env)
        };
        let out = change(rules, env);
        rules.rearm(env, &key, armed, cx);
        if env.is_empty() {
            *slot = None;
        }
        Ok(out)
    }

    fn run(&mut self, mut work: Vec<Next>, cx: &mut Ctx<'_>) -> Result<(), StateError> {
        work.reverse();
        while let Some(next) = work.pop() {
            match next {
                Next::Handle(service, environment, incoming) => {
                    self.with_key(&service, &environment, false, cx, |rules, k, st, cx, fx| {
                        rules.handle(k, st, incoming, cx, fx)
                    })?
                }
                Next::Release(service, environment, origin, reason) => {
                    self.with_key(&service, &environment, false, cx, |rules, k, st, cx, fx| {
                        rules.unpark_held_by(k, st, Hold::Frozen, &origin, reason, cx, fx)
                    })?
                }
            }
        }
        Ok(())
    }

    /// Releases the services an environment-wide freeze parked.
    fn release(
        &mut self,
        environment: &str,
        services: Vec<String>,
        origin: &Origin,
        reason: &str,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let work = services
            .into_iter()
            .map(|s| Next::Release(s, environment.to_owned(), origin.clone(), reason.to_owned()))
            .collect();
        self.run(work, cx)
    }
}

impl GateRules {
    /// The earliest deadline of an entry: alert expiries, retry, soaks,
    /// freeze `until`, a freeze window's end.
    pub(super) fn next_deadline(&self, st: &GateState) -> Option<u64> {
        [
            self.next_expiry(st),
            st.rollout.retry_at,
            st.rollout.soaks.iter().map(|(_, at)| *at).min(),
            st.freeze.as_ref().and_then(|f| f.until),
            st.window_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Keeps the entry's one timer on its earliest deadline.
    fn rearm(&self, st: &GateState, key: &[u8], armed: Option<u64>, cx: &mut Ctx<'_>) {
        let next = self.next_deadline(st);
        if next == armed {
            return;
        }
        match next {
            Some(at) => cx.arm_timer(key, at),
            None => cx.cancel_timer(key),
        }
    }

    /// The key's timer is due: whatever is due fires, in the documented
    /// order (expiries, the freeze's `until`, the retry, the soaks).
    fn key_timer(&self, k: &KeyCx<'_>, st: &mut GateState, cx: &mut Ctx<'_>, fx: &mut Effects) {
        let now = cx.now();
        if self.next_expiry(st).is_some_and(|at| at <= now) {
            self.expire(k, st, cx, fx);
        }
        self.freeze_due(k, st, cx, fx);
        if st.rollout.retry_at.is_some_and(|at| at <= now) {
            self.retry_due(k, st, cx);
        }
        if st.rollout.soaks.iter().any(|(_, at)| *at <= now) {
            self.soaks_due(k, st, cx, fx);
        }
    }
}

impl Operator for AlertGate {
    fn on_record(
        &mut self,
        _port: usize,
        record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let origin = &record.origin;
        match &record.payload {
            Payload::Image(image) => {
                let Some(environment) = image.environment.as_deref() else {
                    cx.dead_letter(&record, "environment: an image needs an environment at an alert_gate (set one on the source or route it)".into());
                    return Ok(());
                };
                let incoming = Incoming {
                    image: image.reference(),
                    causes: origin
                        .is_known()
                        .then(|| origin.clone())
                        .into_iter()
                        .collect(),
                    reason: "new image".into(),
                    code: "new_image",
                    from_record: true,
                };
                self.with_key(
                    &image.service,
                    environment,
                    false,
                    cx,
                    |rules, k, st, cx, fx| rules.handle(k, st, incoming, cx, fx),
                )
            }
            Payload::Alert(alert) => self.with_key(
                &alert.service,
                &alert.environment,
                false,
                cx,
                |rules, k, st, cx, fx| rules.alert(k, st, alert, origin, cx, fx),
            ),
            Payload::Deployment(d) => self.with_key(
                &d.service,
                &d.environment,
                false,
                cx,
                |rules, k, st, cx, _| rules.status(k, st, d, origin, cx),
            ),
            Payload::Control(c) => match &c.service {
                Some(service) => self.with_key(
                    service,
                    &c.environment,
                    false,
                    cx,
                    |rules, k, st, cx, fx| rules.key_control(k, st, c, origin, cx, fx),
                ),
                None => {
                    let services = self.with_env(&c.environment, false, cx, |rules, env| {
                        rules.env_control(env, c, origin)
                    })?;
                    let by =
                        c.by.as_deref()
                            .map_or_else(String::new, |b| format!(" by {b}"));
                    let reason = format!("released: environment unfrozen{by}");
                    self.release(&c.environment, services, origin, &reason, cx)
                }
            },
            // Validation only connects these four kinds to a gate.
            Payload::Git(_) | Payload::Intent(_) => Ok(()),
        }
    }

    /// A key's (or an environment's) earliest deadline has come.
    fn on_timer(&mut self, key: &[u8], cx: &mut Ctx<'_>) -> Result<(), StateError> {
        let Some((service, environment)) = parse_state_key(key) else {
            return Ok(());
        };
        let (service, environment) = (service.to_owned(), environment.to_owned());
        if service.is_empty() {
            let now = cx.now();
            let (services, origin) = self.with_env(&environment, true, cx, |rules, env| {
                let origin = env
                    .freeze
                    .as_ref()
                    .map(|f| f.origin.clone())
                    .unwrap_or_default();
                (rules.env_timer(env, now), origin)
            })?;
            return self.release(
                &environment,
                services,
                &origin,
                "released: freeze ended",
                cx,
            );
        }
        self.with_key(&service, &environment, true, cx, |rules, k, st, cx, fx| {
            rules.key_timer(k, st, cx, fx)
        })
    }

    /// The key's view: current image and rollout, the parked image and
    /// every reason it is held, the gate's timers. Environment-wide
    /// freezes and windows count.
    fn query(
        &mut self,
        service: &str,
        environment: &str,
        cx: &QueryCx<'_>,
    ) -> Result<Option<OperatorView>, StateError> {
        let env_freeze = if self.rules.env_wide {
            let key = state_key("", environment);
            self.state
                .get(cx.backend, &key)?
                .and_then(|e| e.freeze.clone())
        } else {
            None
        };
        let key = state_key(service, environment);
        let st = self
            .state
            .get(cx.backend, &key)?
            .cloned()
            .unwrap_or_default();
        let k = KeyCx {
            service,
            environment,
            env_freeze: env_freeze.as_ref(),
        };
        let view = self.rules.view(&k, &st, cx.now);
        Ok(Some(OperatorView::AlertGate(Box::new(view))))
    }

    fn accepts_entry(&self, value: &[u8]) -> bool {
        self.state.accepts(value)
    }

    /// Keys with an image parked and alerts held active, as committed.
    fn gauges(&self, backend: &dyn StateBackend) -> Result<Vec<(Gauge, u64)>, StateError> {
        let (mut held, mut alerts) = (0, 0);
        self.state.scan_committed(backend, &mut |st| {
            held += u64::from(st.parked.is_some());
            alerts += st.alerts.len() as u64;
        })?;
        Ok(vec![(Gauge::HeldKeys, held), (Gauge::ActiveAlerts, alerts)])
    }

    fn commit(
        &mut self,
        _now: u64,
        _backend: &dyn StateBackend,
        batch: &mut WriteBatch,
    ) -> Result<Committed, StateError> {
        self.state.commit(batch)
    }
}
