//! `alert_gate`: joins image and alert streams into deployment intents,
//! holding deploys while an alert fires and rolling back when one fires
//! right after a deploy.

use std::collections::BTreeMap;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use super::{dur, BuildCx, Ctx, Operator};
use crate::duration::DurationMs;
use crate::record::origin::add_cause;
use crate::record::{
    Action, AlertEvent, AlertStatus, ImageEvent, Intent, Kind, Origin, Payload, Record,
};
use crate::state::{StateBackend, StateError, Table, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// Keyed by (service, environment), the gate keeps the active alerts
/// (identity -> severity), the current image, the last deploy (image, time,
/// previous image) and a parked image, and emits intents:
///
/// - an image equal to the current one: nothing. Otherwise, while an active
///   alert has a severity in `block_on`, the image is parked (replacing any
///   parked one) and a `hold` is emitted; else a `deploy`, and it becomes current.
/// - an alert firing becomes active. If its severity is in `rollback_on` and
///   the last deploy, with a known previous image, is at most
///   `rollback_window` old, a `rollback` to that previous image is emitted;
///   the last deploy becomes (previous image, now, none), so one rollback
///   never cascades into another.
/// - an alert resolved is removed; if no blocking alert remains and an image
///   is parked, it is unparked and handled as a deploy.
/// - an alert that has not fired again for `alert_ttl` (default 24h) expires:
///   it is removed exactly as if it had resolved, at the instant its ttl runs
///   out. Alertmanager resends firing alerts (every `repeat_interval`, 4h by
///   default), so an alert that is still firing keeps refreshing; one whose
///   `resolved` was lost no longer holds deploys or state forever. Set
///   `alert_ttl` above the longest gap between notifications of a firing alert.
///
/// A key's entry is deleted once it holds nothing (no active alert, no image
/// seen), so a `resolved` for an alert never seen leaves no state behind.
///
/// An image that reaches the gate without an environment is a dead letter.
/// `intent_id` is derived from the app id, the gate, the key and the key's
/// intent count, so it is the same on every replay of the same input.
///
/// ```toml
/// [[operators]]
/// name = "gate"
/// type = "alert_gate"
/// images = "throttle"
/// alerts = "alerts"
/// block_on = ["critical"]
/// rollback_on = ["critical"]
/// rollback_window = "15m"
/// alert_ttl = "24h"
/// ```
#[derive(Debug, Clone)]
pub struct AlertGateConfig {
    /// The node whose image records are gated.
    pub images: Located<String>,
    /// The node whose alert records hold and roll back deploys.
    pub alerts: Located<String>,
    /// Severities that hold deploys while an alert of that severity fires.
    pub block_on: Vec<String>,
    /// Severities that roll back a recent deploy when an alert of that severity fires.
    pub rollback_on: Vec<String>,
    /// How recent a deploy must be to be rolled back (required with `rollback_on`).
    pub rollback_window: Option<DurationMs>,
    /// How long an alert stays active without firing again (more than zero;
    /// 24h when not given).
    pub alert_ttl: Option<DurationMs>,
}

/// Alertmanager's default `repeat_interval` is 4h: a day covers several resends.
const DEFAULT_ALERT_TTL_MS: u64 = 24 * 3_600_000;

impl AlertGateConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let images = t.required_string("images");
        let alerts = t.required_string("alerts");
        let block_on = severities(t, "block_on");
        let rollback_on = severities(t, "rollback_on");
        let window_given = t.contains("rollback_window");
        let rollback_window = t.duration("rollback_window");
        let alert_ttl = t.duration("alert_ttl");
        if rollback_on.as_ref().is_some_and(|r| !r.is_empty()) && !window_given {
            t.diags().error(
                t.pos(),
                t.key_path("rollback_window"),
                "`rollback_on` needs a `rollback_window`",
            );
            return None;
        }
        Some(AlertGateConfig {
            images: images?,
            alerts: alerts?,
            block_on: block_on?,
            rollback_on: rollback_on?,
            rollback_window: rollback_window.map(|w| w.value),
            alert_ttl: alert_ttl.map(|d| d.value),
        })
    }

    pub fn check(&self, kinds: &[Option<Kind>], diags: &Diags<'_>, path: &str) -> Option<Kind> {
        let ports = [
            ("images", &self.images, kinds[0], Kind::Image),
            ("alerts", &self.alerts, kinds[1], Kind::Alert),
        ];
        for (key, at, kind, wanted) in ports {
            match kind {
                Some(kind) if kind != wanted => diags.error(
                    at.pos,
                    format!("{path}.{key}"),
                    format!(
                        "`{key}` must be an {wanted} stream, but `{}` carries {kind} records",
                        at.value
                    ),
                ),
                _ => {}
            }
        }
        Some(Kind::Intent)
    }

    pub fn build(&self, cx: &BuildCx<'_>) -> AlertGate {
        AlertGate {
            rules: GateRules {
                app_id: cx.app_id.to_owned(),
                name: cx.name.to_owned(),
                block_on: self.block_on.clone(),
                rollback_on: self.rollback_on.clone(),
                rollback_window: self.rollback_window.map_or(0, DurationMs::as_ms),
                alert_ttl: self
                    .alert_ttl
                    .map_or(DEFAULT_ALERT_TTL_MS, DurationMs::as_ms),
            },
            state: cx.table(),
        }
    }

    pub fn summary(&self) -> String {
        let window = self
            .rollback_window
            .map(|w| format!(" within {}", dur(w)))
            .unwrap_or_default();
        let ttl = self
            .alert_ttl
            .map(|t| format!(" alert_ttl {}", dur(t)))
            .unwrap_or_default();
        format!(
            "alert_gate block_on [{}] rollback_on [{}]{window}{ttl}",
            self.block_on.join(", "),
            self.rollback_on.join(", ")
        )
    }
}

fn severities(t: &mut TableReader<'_, '_, '_>, key: &'static str) -> Option<Vec<String>> {
    let Some(list) = t.string_list(key) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for (i, s) in list.value.into_iter().enumerate() {
        if s.value.is_empty() {
            t.diags().error(
                s.pos,
                format!("{}[{i}]", t.key_path(key)),
                "a severity must not be empty",
            );
            return None;
        }
        out.push(s.value);
    }
    Some(out)
}

/// The deploy that a rollback would undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LastDeploy {
    image: String,
    at: u64,
    previous: Option<String>,
}

/// Everything the gate remembers about one (service, environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
struct GateState {
    /// Active alerts: identity -> severity.
    alerts: BTreeMap<String, String>,
    current: Option<String>,
    last_deploy: Option<LastDeploy>,
    parked: Option<String>,
    /// Intents emitted so far for this key; part of `intent_id`.
    emitted: u64,
    /// When each active alert last fired: identity -> ms. Kept after the
    /// fields above, so that entries written before alerts expired still
    /// decode (see `Deserialize`); so are the fields below.
    fired: BTreeMap<String, u64>,
    /// The records behind the current image (its image record, and what
    /// released or promoted it).
    current_causes: Vec<Origin>,
    /// The record of the parked image.
    parked_causes: Vec<Origin>,
    /// The record of each active alert's last firing: identity -> origin.
    alert_origins: BTreeMap<String, Origin>,
}

/// Decodes entries with or without `fired`: an entry written before alerts
/// expired ends after `emitted` (postcard has no field names; reading past the
/// end fails), and its alerts get a firing time when their key is next used.
impl<'de> Deserialize<'de> for GateState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &[
            "alerts",
            "current",
            "last_deploy",
            "parked",
            "emitted",
            "fired",
            "current_causes",
            "parked_causes",
            "alert_origins",
        ];
        d.deserialize_struct("GateState", FIELDS, GateStateVisitor)
    }
}

struct GateStateVisitor;

impl<'de> Visitor<'de> for GateStateVisitor {
    type Value = GateState;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an alert_gate entry")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GateState, A::Error> {
        let missing = |i| serde::de::Error::invalid_length(i, &"an alert_gate entry");
        Ok(GateState {
            alerts: seq.next_element()?.ok_or_else(|| missing(0))?,
            current: seq.next_element()?.ok_or_else(|| missing(1))?,
            last_deploy: seq.next_element()?.ok_or_else(|| missing(2))?,
            parked: seq.next_element()?.ok_or_else(|| missing(3))?,
            emitted: seq.next_element()?.ok_or_else(|| missing(4))?,
            fired: seq.next_element().ok().flatten().unwrap_or_default(),
            current_causes: seq.next_element().ok().flatten().unwrap_or_default(),
            parked_causes: seq.next_element().ok().flatten().unwrap_or_default(),
            alert_origins: seq.next_element().ok().flatten().unwrap_or_default(),
        })
    }
}

pub struct AlertGate {
    rules: GateRules,
    state: Table<GateState>,
}

/// The gate's configuration, apart from its state so both can be borrowed at once.
struct GateRules {
    app_id: String,
    name: String,
    block_on: Vec<String>,
    rollback_on: Vec<String>,
    rollback_window: u64,
    alert_ttl: u64,
}

/// Identifies the intent to build; the gate adds id and counters.
struct Draft<'a> {
    action: Action,
    service: &'a str,
    environment: &'a str,
    image: String,
    previous_image: Option<String>,
    reason: String,
    reason_code: &'static str,
    caused_by: Vec<Origin>,
}

fn state_key(service: &str, environment: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(service.len() + environment.len() + 8);
    for part in [service, environment] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

impl GateRules {
    /// The smallest (identity, severity) among active alerts that block deploys.
    fn blocking<'s>(&self, st: &'s GateState) -> Option<(&'s String, &'s String)> {
        st.alerts
            .iter()
            .find(|(_, severity)| self.block_on.contains(severity))
    }

    fn emit(&self, st: &mut GateState, draft: Draft<'_>, cx: &mut Ctx<'_>) {
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
    fn intent_id(&self, draft: &Draft<'_>, count: u64) -> String {
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
    fn deploy(&self, st: &mut GateState, draft: Draft<'_>, now: u64, cx: &mut Ctx<'_>) {
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
    /// When the earliest active alert expires, if any alert is active.
    fn next_expiry(&self, st: &GateState) -> Option<u64> {
        st.fired
            .values()
            .min()
            .map(|at| at.saturating_add(self.alert_ttl))
    }

    /// Gives alerts recorded before expiry existed a firing time: their ttl
    /// starts when their key is first used again.
    fn adopt_unfired(st: &mut GateState, now: u64) {
        for identity in st.alerts.keys() {
            if !st.fired.contains_key(identity) {
                st.fired.insert(identity.clone(), now);
            }
        }
    }

    /// Keeps the key's one timer on its earliest alert expiry.
    fn rearm(&self, st: &GateState, key: &[u8], armed: Option<u64>, cx: &mut Ctx<'_>) {
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
    fn release_parked(
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

impl GateRules {
    fn image(
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

    fn firing(&self, st: &mut GateState, alert: &AlertEvent, origin: &Origin, cx: &mut Ctx<'_>) {
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
    fn expire(&self, st: &mut GateState, service: &str, environment: &str, cx: &mut Ctx<'_>) {
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

/// The (service, environment) a state key was made from.
fn parse_state_key(key: &[u8]) -> Option<(&str, &str)> {
    let mut rest = key;
    let mut part = || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
        rest = &rest[4 + len..];
        Some(text)
    };
    Some((part()?, part()?))
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{alert, image, image_in, Harness};
    use crate::record::{Payload, Record};

    const GATE: &str = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nrollback_on = [\"critical\"]\nrollback_window = \"5m\"\n";

    /// (ts, action, image, previous_image) of each intent.
    fn intents(records: &[Record]) -> Vec<(u64, &'static str, String, Option<String>)> {
        records
            .iter()
            .map(|r| match &r.payload {
                Payload::Intent(i) => (
                    r.ts,
                    i.action.as_str(),
                    i.image.clone(),
                    i.previous_image.clone(),
                ),
                other => panic!("expected an intent, got {other:?}"),
            })
            .collect()
    }

    fn img(tag: &str) -> Payload {
        image_in("a", tag, "prod")
    }

    #[test]
    fn deploys_new_images_and_ignores_the_current_one() {
        let mut h = Harness::new(GATE);
        assert_eq!(
            intents(&h.push(0, img("v1"))),
            [(0, "deploy", "a:v1".into(), None)]
        );
        assert!(h.push(1, img("v1")).is_empty());
        assert_eq!(
            intents(&h.push(2, img("v2"))),
            [(2, "deploy", "a:v2".into(), Some("a:v1".into()))]
        );
        assert_eq!(h.dropped("already_current"), 1);
    }

    #[test]
    fn holds_while_blocked_and_deploys_the_newest_parked_image_on_resolve() {
        let mut h = Harness::new(GATE);
        h.push(0, img("v1"));
        h.push(1_000_000, alert("a", "HighLatency", "critical", true));
        assert_eq!(
            intents(&h.push(1_000_001, img("v2"))),
            [(1_000_001, "hold", "a:v2".into(), Some("a:v1".into()))]
        );
        assert_eq!(intents(&h.push(1_000_002, img("v3")))[0].1, "hold");
        let out = h.push(1_000_003, alert("a", "HighLatency", "critical", false));
        assert_eq!(
            intents(&out),
            [(1_000_003, "deploy", "a:v3".into(), Some("a:v1".into()))]
        );
        match &out[0].payload {
            Payload::Intent(i) => {
                assert_eq!(i.reason, "released: no blocking alert remains");
                assert_eq!(i.reason_code, "released");
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn warnings_neither_block_nor_roll_back() {
        let mut h = Harness::new(GATE);
        h.push(0, img("v1"));
        h.push(1, img("v2"));
        assert!(h.push(2, alert("a", "Slow", "warning", true)).is_empty());
        assert_eq!(intents(&h.push(3, img("v3")))[0].1, "deploy");
    }

    #[test]
    fn rolls_back_within_the_window_once_and_not_after_it() {
        let mut h = Harness::new(GATE);
        h.push(0, img("v1"));
        h.push(10_000, img("v2"));
        let out = h.push(310_000, alert("a", "Errors", "critical", true));
        assert_eq!(
            intents(&out),
            [(310_000, "rollback", "a:v1".into(), Some("a:v2".into()))],
            "exactly 5m after: inside"
        );
        assert!(
            h.push(310_001, alert("a", "Other", "critical", true))
                .is_empty(),
            "a rollback never cascades"
        );

        let mut h = Harness::new(GATE);
        h.push(0, img("v1"));
        h.push(10_000, img("v2"));
        assert!(
            h.push(310_001, alert("a", "Errors", "critical", true))
                .is_empty(),
            "1 ms past the window"
        );
    }

    #[test]
    fn no_rollback_without_a_known_previous_image() {
        let mut h = Harness::new(GATE);
        h.push(0, img("v1"));
        assert!(h.push(1, alert("a", "Errors", "critical", true)).is_empty());
    }

    #[test]
    fn alerts_of_other_environments_do_not_block() {
        let mut h = Harness::new(GATE);
        h.push(0, alert("a", "Errors", "critical", true));
        assert_eq!(
            intents(&h.push(1, image_in("a", "v1", "staging")))[0].1,
            "deploy"
        );
    }

    #[test]
    fn an_image_without_environment_is_a_dead_letter() {
        let mut h = Harness::new(GATE);
        assert!(h.push(0, image("a", Some("v1"))).is_empty());
        let dead = h.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].starts_with("gate: environment"), "{dead:?}");
    }

    #[test]
    fn intent_ids_are_stable_and_distinct() {
        let run = || {
            let mut h = Harness::new(GATE);
            let mut ids = Vec::new();
            for (t, tag) in [(0, "v1"), (1, "v2"), (2, "v1")] {
                for r in h.push(t, img(tag)) {
                    if let Payload::Intent(i) = r.payload {
                        ids.push(i.intent_id);
                    }
                }
            }
            ids
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert!(a[0] != a[2], "the same image deployed twice gets two ids");
        assert!(a
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())));
    }

    #[test]
    fn inputs_must_be_an_image_and_an_alert_stream() {
        let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"alerts\"\nalerts = \"images\"\n");
        assert!(
            errs.contains("operators[0].images") && errs.contains("must be an image stream"),
            "{errs}"
        );
        assert!(
            errs.contains("operators[0].alerts") && errs.contains("must be an alert stream"),
            "{errs}"
        );
        let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nrollback_on = [\"critical\"]\n");
        assert!(errs.contains("rollback_window"), "{errs}");
    }

    const GATE_TTL: &str = "[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nalert_ttl = \"1h\"\n";
    const HOUR: u64 = 3_600_000;

    #[test]
    fn an_alert_expires_after_its_ttl_without_a_refire_and_releases_the_parked_image() {
        let mut h = Harness::new(GATE_TTL);
        h.push(0, img("v1"));
        h.push(1_000, alert("a", "Errors", "critical", true));
        assert_eq!(intents(&h.push(2_000, img("v2")))[0].1, "hold");
        assert!(
            h.advance(1_000 + HOUR - 1).is_empty(),
            "still active 1 ms before"
        );
        let out = h.advance(1_000 + HOUR);
        assert_eq!(
            intents(&out),
            [(1_000 + HOUR, "deploy", "a:v2".into(), Some("a:v1".into()))]
        );
        match &out[0].payload {
            Payload::Intent(i) => assert_eq!(i.reason_code, "released"),
            _ => unreachable!(),
        }
        assert_eq!(
            intents(&h.push(2 * HOUR, img("v3")))[0].1,
            "deploy",
            "the expired alert no longer blocks"
        );
    }

    #[test]
    fn a_refire_restarts_the_alert_ttl() {
        let mut h = Harness::new(GATE_TTL);
        h.push(0, img("v1"));
        h.push(1_000, alert("a", "Errors", "critical", true));
        h.push(HOUR, alert("a", "Errors", "critical", true));
        assert_eq!(
            intents(&h.push(HOUR + 2_000, img("v2")))[0].1,
            "hold",
            "the refire at 1h keeps it active past 1h + 1s"
        );
        assert!(h.advance(2 * HOUR - 1).is_empty());
        assert_eq!(intents(&h.advance(2 * HOUR))[0].1, "deploy");
    }

    #[test]
    fn a_resolved_for_an_unknown_key_leaves_no_state() {
        let mut h = Harness::new(GATE);
        assert!(h
            .push(0, alert("b", "Errors", "critical", false))
            .is_empty());
        assert_eq!(h.stored("gate"), 0, "a resolved for an unknown key");
        h.push(1, alert("c", "Errors", "critical", true));
        h.push(2, alert("c", "Errors", "critical", false));
        assert_eq!(h.stored("gate"), 0, "an alert fired and resolved");
    }

    #[test]
    fn an_expired_alert_leaves_no_state() {
        let mut h = Harness::new(GATE_TTL);
        h.push(1, alert("c", "Errors", "critical", true));
        h.push(2, alert("c", "Other", "warning", true));
        assert_eq!(h.stored("gate"), 1);
        h.advance(2 + HOUR);
        assert_eq!(
            h.stored("gate"),
            0,
            "both alerts expired: nothing is left for c"
        );
        h.push(3 + HOUR, img("v1"));
        assert_eq!(h.stored("gate"), 1, "a key with a current image stays");
    }

    #[test]
    fn entries_written_before_alerts_expired_still_decode() {
        /// The entry layout before `fired` was added.
        #[derive(serde::Serialize)]
        struct Before {
            alerts: std::collections::BTreeMap<String, String>,
            current: Option<String>,
            last_deploy: Option<super::LastDeploy>,
            parked: Option<String>,
            emitted: u64,
        }
        let before = Before {
            alerts: [("Errors".to_owned(), "critical".to_owned())].into(),
            current: Some("a:v1".into()),
            last_deploy: None,
            parked: None,
            emitted: 1,
        };
        let bytes = postcard::to_stdvec(&before).unwrap();
        let decoded: super::GateState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded.alerts, before.alerts);
        assert_eq!(decoded.current, before.current);
        assert_eq!(decoded.emitted, 1);
        assert!(decoded.fired.is_empty());
        let mut now = decoded.clone();
        now.fired.insert("Errors".into(), 5);
        let round: super::GateState =
            postcard::from_bytes(&postcard::to_stdvec(&now).unwrap()).unwrap();
        assert_eq!(round, now);
    }

    #[test]
    fn alert_ttl_must_be_a_positive_duration() {
        let errs = Harness::errors("[[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nalert_ttl = \"0s\"\n");
        assert!(
            errs.contains("operators[0].alert_ttl") && errs.contains("greater than zero"),
            "{errs}"
        );
    }
}
