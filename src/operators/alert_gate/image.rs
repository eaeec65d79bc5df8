//! The image path: an image handled "from the top" for a key (new images,
//! unparked ones, promotions), and the intents the gate emits.

use chrono_tz::Tz;
use croner::Cron;
use sha2::{Digest, Sha256};

use super::state::{Freeze, GateState, Hold, LastDeploy, Rollout, MAX_APPROVALS};
use crate::operators::Ctx;
use crate::record::origin::add_cause;
use crate::record::{Action, Intent, Origin, Payload};

/// The gate's configuration, apart from its state so both can be borrowed at once.
pub(super) struct GateRules {
    pub(super) app_id: String,
    pub(super) name: String,
    pub(super) block_on: Vec<String>,
    pub(super) rollback_on: Vec<String>,
    /// `None`: nothing is rolled back for being recent.
    pub(super) rollback_window: Option<u64>,
    pub(super) alert_ttl: u64,
    pub(super) retry: Option<RetryRule>,
    pub(super) promote: Vec<Promote>,
    pub(super) require_approval: Vec<String>,
    pub(super) windows: Vec<Window>,
    /// Whether environment-wide holds can exist (a control input or freeze
    /// windows): only then does a key read its environment's entry.
    pub(super) env_wide: bool,
}

pub(super) struct RetryRule {
    pub(super) max: u32,
    pub(super) backoff: u64,
}

pub(super) struct Promote {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) soak: u64,
    /// The soak as written (`30m`), for reasons.
    pub(super) soak_text: String,
}

pub(super) struct Window {
    pub(super) cron: Cron,
    pub(super) text: String,
    pub(super) duration: u64,
    pub(super) timezone: Tz,
    pub(super) environments: Vec<String>,
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

/// An image to handle from the top for a key.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    pub(super) image: String,
    /// The records behind it.
    pub(super) causes: Vec<Origin>,
    /// Why it deploys, if it does (`new image`, `released: ...`, `promoted ...`).
    pub(super) reason: String,
    pub(super) code: &'static str,
    /// It is a record (not an unparked image): dropping it is counted.
    pub(super) from_record: bool,
}

/// A key being handled: its names and what its environment's own entry says.
pub(super) struct KeyCx<'a> {
    pub(super) service: &'a str,
    pub(super) environment: &'a str,
    /// The environment-wide freeze, if any.
    pub(super) env_freeze: Option<&'a Freeze>,
}

/// What handling a key asks of other entries.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Images to handle from the top for the same service in another
    /// environment (promotions): (environment, image).
    pub(super) promote: Vec<(String, Incoming)>,
    /// The key's image was parked by an environment-wide freeze: the
    /// environment's entry must handle it again when that ends (and, for a
    /// freeze window, at the window's end).
    pub(super) wait_on_env: Option<Option<u64>>,
}

/// Why a key is frozen right now.
pub(super) struct Frozen {
    /// When the last of its freezes ends; `None`: at an `unfreeze`.
    pub(super) until: Option<u64>,
    pub(super) reason: String,
    /// An environment-wide freeze or a window applies.
    pub(super) env_wide: bool,
    /// When the latest freeze window over it ends.
    pub(super) window_end: Option<u64>,
}

/// `1767225600000` as `2026-01-01T00:00:00Z`.
pub(super) fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// " by NAME" when a command names who gave it, else nothing.
pub(super) fn who(by: &Option<String>) -> String {
    by.as_deref()
        .map_or_else(String::new, |by| format!(" by {by}"))
}

/// The records behind a consequence: the record that triggered it, then
/// those behind the image the key runs.
pub(super) fn consequence_causes(trigger: &Origin, st: &GateState) -> Vec<Origin> {
    let mut causes = Vec::new();
    add_cause(&mut causes, trigger);
    for c in &st.current_causes {
        add_cause(&mut causes, c);
    }
    causes
}

impl GateRules {
    /// The smallest (identity, severity) among active alerts that block deploys.
    pub(super) fn blocking<'s>(&self, st: &'s GateState) -> Option<(&'s String, &'s String)> {
        st.alerts
            .iter()
            .find(|(_, severity)| self.block_on.contains(severity))
    }

    /// When the freeze window over `environment` that is open at `now`
    /// ends, if one is: the latest end among them. A window opens at each
    /// time its cron matches, in its timezone, and lasts its duration.
    pub(super) fn window_end(&self, environment: &str, now: u64) -> Option<(u64, &Window)> {
        let at = chrono::DateTime::from_timestamp_millis(i64::try_from(now).ok()?)?;
        self.windows
            .iter()
            .filter(|w| w.environments.iter().any(|e| e == environment))
            .filter_map(|w| {
                let local = at.with_timezone(&w.timezone);
                let opened = w.cron.find_previous_occurrence(&local, true).ok()?;
                let opened = u64::try_from(opened.timestamp_millis()).ok()?;
                let end = opened.saturating_add(w.duration);
                (now < end).then_some((end, w))
            })
            .max_by_key(|(end, _)| *end)
    }

    /// Why the key is frozen at `now`, if it is: its own freeze, its
    /// environment's, or a freeze window; the one that ends last speaks.
    pub(super) fn frozen(&self, k: &KeyCx<'_>, st: &GateState, now: u64) -> Option<Frozen> {
        let control = |f: &Freeze| {
            (
                f.until,
                format!("{}{}", f.reason.as_deref().unwrap_or("frozen"), who(&f.by)),
            )
        };
        let window = self.window_end(k.environment, now);
        let mut candidates: Vec<(Option<u64>, String, bool)> = Vec::new();
        if let Some(f) = &st.freeze {
            let (until, reason) = control(f);
            candidates.push((until, reason, false));
        }
        if let Some(f) = k.env_freeze {
            let (until, reason) = control(f);
            candidates.push((
                until,
                format!("{reason} (environment {})", k.environment),
                true,
            ));
        }
        if let Some((end, w)) = window {
            let reason = format!("freeze window `{}` ({})", w.text, w.timezone);
            candidates.push((Some(end), reason, true));
        }
        let env_wide = candidates.iter().any(|c| c.2);
        // `None` (until unfrozen) ends last.
        let (until, reason, _) = candidates
            .into_iter()
            .max_by_key(|(until, _, _)| until.map_or(u128::MAX, u128::from))?;
        Some(Frozen {
            until,
            reason,
            env_wide,
            window_end: window.map(|(end, _)| end),
        })
    }

    /// The reason a pinned key gives.
    pub(super) fn pinned_reason(st: &GateState) -> Option<String> {
        let pin = st.pin.as_ref()?;
        let why = pin
            .reason
            .as_deref()
            .map_or_else(String::new, |r| format!(": {r}"));
        Some(format!("pinned to {}{}{why}", pin.image, who(&pin.by)))
    }

    /// Handles an image from the top, in the documented order: equal to the
    /// current image, quarantined, pinned to another image, frozen, awaiting
    /// approval, a blocking alert, else deploy.
    pub(super) fn handle(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        incoming: Incoming,
        cx: &mut Ctx<'_>,
        effects: &mut Effects,
    ) {
        let now = cx.now();
        if st.current.as_deref() == Some(incoming.image.as_str()) {
            if incoming.from_record {
                cx.drop_record("already_current");
            }
            return;
        }
        if st.quarantined.contains(&incoming.image) {
            cx.drop_record("quarantined");
            return;
        }
        if let Some(pin) = st.pin.as_ref().filter(|p| p.image != incoming.image) {
            let mut incoming = incoming;
            add_cause(&mut incoming.causes, &pin.origin);
            let reason = Self::pinned_reason(st).unwrap_or_default();
            return self.park(k, st, incoming, Hold::Pinned, reason, "held_pinned", cx);
        }
        if let Some(frozen) = self.frozen(k, st, now) {
            if frozen.env_wide {
                effects.wait_on_env = Some(frozen.window_end);
            }
            let mut incoming = incoming;
            for f in [st.freeze.as_ref(), k.env_freeze].into_iter().flatten() {
                add_cause(&mut incoming.causes, &f.origin);
            }
            let until = frozen.until.map_or_else(|| "unfrozen".to_owned(), rfc3339);
            let reason = format!("frozen until {until}: {}", frozen.reason);
            return self.park(k, st, incoming, Hold::Frozen, reason, "held_frozen", cx);
        }
        if self.require_approval.iter().any(|e| e == k.environment)
            && !st.approvals.contains(&incoming.image)
        {
            let reason = "awaiting approval".to_owned();
            return self.park(k, st, incoming, Hold::Approval, reason, "held_approval", cx);
        }
        if let Some((identity, severity)) = self.blocking(st) {
            let reason = format!("held: alert {identity} ({severity}) is firing");
            return self.park(k, st, incoming, Hold::Alert, reason, "held_alert", cx);
        }
        self.deploy(k, st, incoming, cx);
    }

    /// Parks the image (replacing any parked one) and emits a `hold`.
    #[allow(clippy::too_many_arguments)]
    fn park(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        incoming: Incoming,
        hold: Hold,
        reason: String,
        code: &'static str,
        cx: &mut Ctx<'_>,
    ) {
        st.parked = Some(incoming.image.clone());
        st.parked_causes = incoming.causes.clone();
        st.parked_by = Some(hold);
        let draft = Draft {
            action: Action::Hold,
            service: k.service,
            environment: k.environment,
            image: incoming.image,
            previous_image: st.current.clone(),
            reason,
            reason_code: code,
            caused_by: incoming.causes,
        };
        self.emit(st, draft, cx);
    }

    /// Deploys: the image becomes current with a new rollout. A deploy
    /// discards the parked image (older than this one), ends every
    /// quarantine of the key, and uses up the image's approval.
    fn deploy(&self, k: &KeyCx<'_>, st: &mut GateState, incoming: Incoming, cx: &mut Ctx<'_>) {
        st.parked = None;
        st.parked_causes.clear();
        st.parked_by = None;
        st.quarantined.clear();
        st.approvals.retain(|a| *a != incoming.image);
        st.last_deploy = Some(LastDeploy {
            image: incoming.image.clone(),
            at: cx.now(),
            // Set again just below.
            previous: st.current.take(),
        });
        st.rollout = Rollout {
            since: cx.now(),
            ..Rollout::default()
        };
        st.current = Some(incoming.image.clone());
        // Into the allocation the previous causes had, most often enough.
        st.current_causes.clone_from(&incoming.causes);
        let draft = Draft {
            action: Action::Deploy,
            service: k.service,
            environment: k.environment,
            image: incoming.image,
            previous_image: st.last_deploy.as_ref().and_then(|d| d.previous.clone()),
            reason: incoming.reason,
            reason_code: incoming.code,
            caused_by: incoming.causes,
        };
        self.emit(st, draft, cx);
    }

    /// Rolls the key back to `target`, or, on a pinned key, holds it where
    /// it is and says so. A rollback keeps the parked image, and is allowed
    /// during a freeze. Returns whether it rolled back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rollback(
        &self,
        k: &KeyCx<'_>,
        st: &mut GateState,
        target: String,
        reason: String,
        code: &'static str,
        causes: Vec<Origin>,
        cx: &mut Ctx<'_>,
    ) -> bool {
        let Some(failing) = st.current.clone() else {
            return false;
        };
        if let Some(pinned) = Self::pinned_reason(st) {
            let draft = Draft {
                action: Action::Hold,
                service: k.service,
                environment: k.environment,
                image: failing.clone(),
                previous_image: Some(failing),
                reason: format!("rollback to {target} skipped: {pinned}"),
                reason_code: "pinned_no_rollback",
                caused_by: causes,
            };
            self.emit(st, draft, cx);
            return false;
        }
        st.current = Some(target.clone());
        st.current_causes = causes.clone();
        st.last_deploy = Some(LastDeploy {
            image: target.clone(),
            at: cx.now(),
            previous: None,
        });
        st.rollout = Rollout {
            since: cx.now(),
            ..Rollout::default()
        };
        let draft = Draft {
            action: Action::Rollback,
            service: k.service,
            environment: k.environment,
            image: target,
            previous_image: Some(failing),
            reason,
            reason_code: code,
            caused_by: causes,
        };
        self.emit(st, draft, cx);
        true
    }

    /// Records an approval of `image` for the key (newest kept).
    pub(super) fn approve(st: &mut GateState, image: &str) {
        st.approvals.retain(|a| a != image);
        st.approvals.push(image.to_owned());
        if st.approvals.len() > MAX_APPROVALS {
            st.approvals.remove(0);
        }
    }

    pub(super) fn emit(&self, st: &mut GateState, draft: Draft<'_>, cx: &mut Ctx<'_>) {
        st.emitted += 1;
        let intent_id = self.intent_id(&draft, st.emitted);
        // Not `format!`: its machinery cost about as much as the rest of
        // building the intent (replay of the survival flood, callgrind).
        let key = [draft.service, draft.environment].join("/");
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
}
