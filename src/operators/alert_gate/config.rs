//! The gate's keys and their validation. The rules the keys drive are
//! documented on the module (`alert_gate/mod.rs`) and in the README.

use std::str::FromStr;

use croner::Cron;

use super::image::{GateRules, Promote, RetryRule, Window};
use super::AlertGate;
use crate::duration::DurationMs;
use crate::operators::{dur, BuildCx};
use crate::record::Kind;
use crate::topology::diag::{Diags, Located, Pos};
use crate::topology::reader::TableReader;
use crate::topology::ENVIRONMENT;

/// An `alert_gate`, keyed by (service, environment). See the module
/// documentation for its rules, in the order it applies them.
///
/// ```toml
/// [[operators]]
/// name = "gate"
/// type = "alert_gate"
/// images = "throttle"
/// alerts = "alerts"
/// status = "statuses"              # optional: deployment statuses (Argo CD, Flux)
/// control = "controls"             # optional: freeze, pin, approve commands
/// block_on = ["critical"]
/// rollback_on = ["critical"]
/// rollback_window = "15m"
/// alert_ttl = "24h"
/// retry = { max = 2, backoff = "1m" }
/// promote = [{ from = "staging", to = "prod", soak = "30m" }]
/// require_approval = ["prod"]
/// freeze_windows = [{ cron = "0 17 * * FRI", duration = "63h", timezone = "Europe/Berlin", environments = ["prod"] }]
/// ```
#[derive(Debug, Clone)]
pub struct AlertGateConfig {
    /// The node whose image records are gated.
    pub images: Located<String>,
    /// The node whose alert records hold and roll back deploys.
    pub alerts: Located<String>,
    /// The node whose deployment statuses drive retries, rollbacks and promotions.
    pub status: Option<Located<String>>,
    /// The node whose control records freeze, pin and approve.
    pub control: Option<Located<String>>,
    /// Severities that hold deploys while an alert of that severity fires.
    pub block_on: Vec<String>,
    /// Severities that roll back a recent deploy when an alert of that severity fires.
    pub rollback_on: Vec<String>,
    /// How recent a deploy must be to be rolled back (required with
    /// `rollback_on`; without it, a `degraded` status rolls nothing back).
    pub rollback_window: Option<DurationMs>,
    /// How long an alert stays active without firing again (more than zero;
    /// 24h when not given).
    pub alert_ttl: Option<DurationMs>,
    /// Retries of a failed rollout: `max` (at least 1) after `backoff`,
    /// doubling each time.
    pub retry: Option<RetryConfig>,
    /// Promotions after a healthy soak.
    pub promote: Vec<PromoteConfig>,
    /// Environments where an image needs an `approve` before it deploys.
    pub require_approval: Vec<String>,
    /// Scheduled freezes.
    pub freeze_windows: Vec<WindowConfig>,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max: u32,
    pub backoff: DurationMs,
}

#[derive(Debug, Clone)]
pub struct PromoteConfig {
    pub from: String,
    pub to: String,
    pub soak: DurationMs,
}

#[derive(Debug, Clone)]
pub struct WindowConfig {
    pub cron: String,
    pub duration: DurationMs,
    pub timezone: String,
    pub environments: Vec<String>,
}

/// Alertmanager's default `repeat_interval` is 4h: a day covers several resends.
const DEFAULT_ALERT_TTL_MS: u64 = 24 * 3_600_000;

impl AlertGateConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let images = t.required_string("images");
        let alerts = t.required_string("alerts");
        let status = t.string("status");
        let control = t.string("control");
        let block_on = severities(t, "block_on");
        let rollback_on = severities(t, "rollback_on");
        let window_given = t.contains("rollback_window");
        let rollback_window = t.duration("rollback_window");
        let alert_ttl = t.duration("alert_ttl");
        let retry = read_retry(t);
        let promote = read_promote(t);
        let require_approval = environments(t, "require_approval");
        let freeze_windows = read_windows(t);
        if rollback_on.as_ref().is_some_and(|r| !r.is_empty()) && !window_given {
            t.diags().error(
                t.pos(),
                t.key_path("rollback_window"),
                "`rollback_on` needs a `rollback_window`",
            );
            return None;
        }
        let config = AlertGateConfig {
            images: images?,
            alerts: alerts?,
            status,
            control,
            block_on: block_on?,
            rollback_on: rollback_on?,
            rollback_window: rollback_window.map(|w| w.value),
            alert_ttl: alert_ttl.map(|d| d.value),
            retry: retry?,
            promote: promote?,
            require_approval: require_approval?,
            freeze_windows: freeze_windows?,
        };
        config.check_inputs_for_keys(t).then_some(config)
    }

    /// Keys that only mean something with an input that feeds them.
    fn check_inputs_for_keys(&self, t: &TableReader<'_, '_, '_>) -> bool {
        let mut ok = true;
        let needs = [
            (
                self.retry.is_some(),
                "retry",
                self.status.is_none(),
                "status",
            ),
            (
                !self.promote.is_empty(),
                "promote",
                self.status.is_none(),
                "status",
            ),
            (
                !self.require_approval.is_empty(),
                "require_approval",
                self.control.is_none(),
                "control",
            ),
        ];
        for (used, key, missing, input) in needs {
            if used && missing {
                t.diags().error(
                    t.pos(),
                    t.key_path(key),
                    format!("`{key}` needs a `{input}` input"),
                );
                ok = false;
            }
        }
        ok
    }

    pub fn check(&self, kinds: &[Option<Kind>], diags: &Diags<'_>, path: &str) -> Option<Kind> {
        let mut ports = vec![
            ("images", &self.images, Kind::Image),
            ("alerts", &self.alerts, Kind::Alert),
        ];
        if let Some(s) = &self.status {
            ports.push(("status", s, Kind::Deployment));
        }
        if let Some(c) = &self.control {
            ports.push(("control", c, Kind::Control));
        }
        for ((key, at, wanted), kind) in ports.into_iter().zip(kinds) {
            let article = match wanted {
                Kind::Image | Kind::Alert | Kind::Intent => "an",
                _ => "a",
            };
            match kind {
                Some(kind) if *kind != wanted => diags.error(
                    at.pos,
                    format!("{path}.{key}"),
                    format!(
                        "`{key}` must be {article} {wanted} stream, but `{}` carries {kind} records",
                        at.value
                    ),
                ),
                _ => {}
            }
        }
        Some(Kind::Intent)
    }

    /// The input ports in order: images, alerts, then status and control when given.
    pub fn inputs(&self) -> Vec<(&'static str, &Located<String>)> {
        let mut ports = vec![("images", &self.images), ("alerts", &self.alerts)];
        if let Some(s) = &self.status {
            ports.push(("status", s));
        }
        if let Some(c) = &self.control {
            ports.push(("control", c));
        }
        ports
    }

    pub fn build(&self, cx: &BuildCx<'_>) -> AlertGate {
        let windows = self
            .freeze_windows
            .iter()
            .filter_map(|w| {
                Some(Window {
                    cron: Cron::from_str(&w.cron).ok()?,
                    text: w.cron.clone(),
                    duration: w.duration.as_ms(),
                    timezone: w.timezone.parse().ok()?,
                    environments: w.environments.clone(),
                })
            })
            .collect();
        AlertGate::new(
            GateRules {
                app_id: cx.app_id.to_owned(),
                name: cx.name.to_owned(),
                block_on: self.block_on.clone(),
                rollback_on: self.rollback_on.clone(),
                rollback_window: self.rollback_window.map(DurationMs::as_ms),
                alert_ttl: self
                    .alert_ttl
                    .map_or(DEFAULT_ALERT_TTL_MS, DurationMs::as_ms),
                retry: self.retry.as_ref().map(|r| RetryRule {
                    max: r.max,
                    backoff: r.backoff.as_ms(),
                }),
                promote: self
                    .promote
                    .iter()
                    .map(|p| Promote {
                        from: p.from.clone(),
                        to: p.to.clone(),
                        soak: p.soak.as_ms(),
                        soak_text: p.soak.to_string(),
                    })
                    .collect(),
                require_approval: self.require_approval.clone(),
                windows,
                env_wide: self.control.is_some() || !self.freeze_windows.is_empty(),
            },
            cx.table(),
        )
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "alert_gate block_on [{}] rollback_on [{}]",
            self.block_on.join(", "),
            self.rollback_on.join(", ")
        );
        if let Some(w) = self.rollback_window {
            out.push_str(&format!(" within {}", dur(w)));
        }
        if let Some(t) = self.alert_ttl {
            out.push_str(&format!(" alert_ttl {}", dur(t)));
        }
        if let Some(r) = &self.retry {
            out.push_str(&format!(" retry {} after {}", r.max, dur(r.backoff)));
        }
        for p in &self.promote {
            out.push_str(&format!(
                " promote {} -> {} after {}",
                p.from,
                p.to,
                dur(p.soak)
            ));
        }
        if !self.require_approval.is_empty() {
            out.push_str(&format!(" approval [{}]", self.require_approval.join(", ")));
        }
        for w in &self.freeze_windows {
            out.push_str(&format!(
                " freeze `{}` for {} ({}) [{}]",
                w.cron,
                dur(w.duration),
                w.timezone,
                w.environments.join(", ")
            ));
        }
        out
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

/// A list of environment names (empty when absent).
fn environments(t: &mut TableReader<'_, '_, '_>, key: &'static str) -> Option<Vec<String>> {
    let Some(list) = t.string_list(key) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, e) in list.value.into_iter().enumerate() {
        if !ENVIRONMENT.is_match(&e.value) {
            t.diags().error(
                e.pos,
                format!("{}[{i}]", t.key_path(key)),
                "an environment must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
            );
            ok = false;
        }
        out.push(e.value);
    }
    ok.then_some(out)
}

/// `retry = { max = N, backoff = "1m" }`.
fn read_retry(t: &mut TableReader<'_, '_, '_>) -> Option<Option<RetryConfig>> {
    let diags = t.diags();
    let Some(value) = t.take("retry") else {
        return Some(None);
    };
    let mut r = TableReader::new(diags, value, t.key_path("retry"))?;
    if !r.contains("max") {
        r.missing("max");
    }
    let max = r.integer("max", 1);
    let backoff = r.required_duration("backoff");
    r.finish();
    let max = max?;
    let Ok(max_value) = u32::try_from(max.value) else {
        diags.error(max.pos, format!("{}.max", t.key_path("retry")), "too large");
        return None;
    };
    Some(Some(RetryConfig {
        max: max_value,
        backoff: backoff?.value,
    }))
}

/// `promote = [{ from, to, soak }]`: from != to, no cycle, no pair twice.
fn read_promote(t: &mut TableReader<'_, '_, '_>) -> Option<Vec<PromoteConfig>> {
    let diags = t.diags();
    let mut out: Vec<(PromoteConfig, Pos, String)> = Vec::new();
    let mut ok = true;
    for (path, value) in t.tables("promote") {
        let Some(mut p) = TableReader::new(diags, value, path.clone()) else {
            ok = false;
            continue;
        };
        let from = p.required_string("from");
        let to = p.required_string("to");
        let soak = p.required_duration("soak");
        p.finish();
        let (Some(from), Some(to), Some(soak)) = (from, to, soak) else {
            ok = false;
            continue;
        };
        for env in [&from, &to] {
            if !ENVIRONMENT.is_match(&env.value) {
                diags.error(
                    env.pos,
                    path.clone(),
                    "an environment must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
                );
                ok = false;
            }
        }
        if from.value == to.value {
            diags.error(
                to.pos,
                format!("{path}.to"),
                format!("promotes `{}` to itself", to.value),
            );
            ok = false;
            continue;
        }
        if out
            .iter()
            .any(|(c, _, _)| c.from == from.value && c.to == to.value)
        {
            diags.error(
                to.pos,
                format!("{path}.to"),
                format!("`{}` -> `{}` is given twice", from.value, to.value),
            );
            ok = false;
            continue;
        }
        if let Some(cycle) = cycle_through(&out, &from.value, &to.value) {
            diags.error(
                to.pos,
                format!("{path}.to"),
                format!("promotions form a cycle: {}", cycle.join(" -> ")),
            );
            ok = false;
            continue;
        }
        out.push((
            PromoteConfig {
                from: from.value,
                to: to.value,
                soak: soak.value,
            },
            to.pos,
            path,
        ));
    }
    ok.then(|| out.into_iter().map(|(c, _, _)| c).collect())
}

/// The cycle that `from -> to` would close with the promotions already read.
fn cycle_through(
    rules: &[(PromoteConfig, Pos, String)],
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    // A path to -> ... -> from closes a cycle.
    let mut stack = vec![vec![to.to_owned()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("paths are never empty");
        if last == from {
            let mut cycle = vec![from.to_owned()];
            cycle.extend(path);
            return Some(cycle);
        }
        for (rule, _, _) in rules.iter().filter(|(r, _, _)| &r.from == last) {
            if !path.contains(&rule.to) {
                let mut next = path.clone();
                next.push(rule.to.clone());
                stack.push(next);
            }
        }
    }
    None
}

/// `freeze_windows = [{ cron, duration, timezone, environments }]`.
fn read_windows(t: &mut TableReader<'_, '_, '_>) -> Option<Vec<WindowConfig>> {
    let diags = t.diags();
    let mut out = Vec::new();
    let mut ok = true;
    for (path, value) in t.tables("freeze_windows") {
        let Some(mut w) = TableReader::new(diags, value, path.clone()) else {
            ok = false;
            continue;
        };
        let cron = w.required_string("cron");
        let duration = w.required_duration("duration");
        let timezone = w.required_string("timezone");
        let envs = environments(&mut w, "environments");
        let envs_pos = w.pos();
        w.finish();
        if let Some(c) = &cron {
            if let Err(e) = Cron::from_str(&c.value) {
                diags.error(
                    c.pos,
                    format!("{path}.cron"),
                    format!("not a cron expression: {e}"),
                );
                ok = false;
            }
        }
        if let Some(tz) = &timezone {
            if tz.value.parse::<chrono_tz::Tz>().is_err() {
                diags.error(
                    tz.pos,
                    format!("{path}.timezone"),
                    format!(
                        "unknown timezone `{}`; expected an IANA name such as Europe/Berlin or UTC",
                        tz.value
                    ),
                );
                ok = false;
            }
        }
        if envs.as_ref().is_some_and(Vec::is_empty) {
            diags.error(
                envs_pos,
                format!("{path}.environments"),
                "a freeze window needs at least one environment",
            );
            ok = false;
        }
        match (cron, duration, timezone, envs) {
            (Some(cron), Some(duration), Some(timezone), Some(environments)) => {
                out.push(WindowConfig {
                    cron: cron.value,
                    duration: duration.value,
                    timezone: timezone.value,
                    environments,
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
