//! The gate's keys and their validation.

use super::image::GateRules;
use super::AlertGate;
use crate::duration::DurationMs;
use crate::operators::{dur, BuildCx};
use crate::record::Kind;
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

pub(super) fn severities(
    t: &mut TableReader<'_, '_, '_>,
    key: &'static str,
) -> Option<Vec<String>> {
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
