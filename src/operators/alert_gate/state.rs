//! What the gate keeps per (service, environment), and its encoding.
//!
//! One table holds two kinds of entries: a key's (service, environment), and
//! an environment's own (service ""), which holds an environment-wide freeze
//! and the services whose image that freeze (or a freeze window) parked.
//! Service names are never empty, so the two cannot collide.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::record::{DeployStatus, Origin};

/// The deploy that a rollback would undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LastDeploy {
    pub(super) image: String,
    /// When it was deployed (or last retried).
    pub(super) at: u64,
    /// The image that ran before it; retries do not change it.
    pub(super) previous: Option<String>,
}

/// What holds the parked image: the first rule of the handling order that
/// parked it. Only the end of that rule unparks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Hold {
    Pinned,
    Frozen,
    Approval,
    Alert,
}

/// The rollout of the current image, as deployment statuses report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Rollout {
    /// The last status reported for the current image.
    pub(super) status: Option<DeployStatus>,
    /// When that status arrived (or the rollout began).
    pub(super) since: u64,
    /// Retries of the current image so far.
    pub(super) attempts: u32,
    /// The revision the last status named.
    pub(super) revision: Option<String>,
    /// The record of the last status.
    pub(super) status_origin: Origin,
    /// A pending retry: when it fires.
    pub(super) retry_at: Option<u64>,
    /// Pending soaks: (environment promoted to, deadline).
    pub(super) soaks: Vec<(String, u64)>,
    /// Environments this image was already promoted to from here.
    pub(super) promoted: Vec<String>,
}

impl Rollout {
    /// Whether it is a default one (see [`GateState::is_empty`]).
    fn is_empty(&self) -> bool {
        let Rollout {
            status,
            since,
            attempts,
            revision,
            status_origin,
            retry_at,
            soaks,
            promoted,
        } = self;
        status.is_none()
            && *since == 0
            && *attempts == 0
            && revision.is_none()
            && *status_origin == Origin::default()
            && retry_at.is_none()
            && soaks.is_empty()
            && promoted.is_empty()
    }
}

/// A freeze asked by a person (`sluice control freeze`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Freeze {
    /// When it lifts by itself; `None`: at `unfreeze`.
    pub(super) until: Option<u64>,
    pub(super) reason: Option<String>,
    pub(super) by: Option<String>,
    pub(super) origin: Origin,
}

/// A pin: the key runs this image and no other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pin {
    pub(super) image: String,
    pub(super) reason: Option<String>,
    pub(super) by: Option<String>,
    pub(super) origin: Origin,
}

/// Everything the gate remembers about one (service, environment), or, for
/// an environment's own entry, about the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(super) struct GateState {
    /// Active alerts: identity -> severity.
    pub(super) alerts: BTreeMap<String, String>,
    pub(super) current: Option<String>,
    pub(super) last_deploy: Option<LastDeploy>,
    pub(super) parked: Option<String>,
    /// Intents emitted so far for this key; part of `intent_id`.
    pub(super) emitted: u64,
    /// When each active alert last fired: identity -> ms. Kept after the
    /// fields above, so that entries written before alerts expired still
    /// decode (see `Deserialize`); so are all the fields below, each added
    /// at the end.
    pub(super) fired: BTreeMap<String, u64>,
    /// The records behind the current image (its image record, and what
    /// released, promoted or rolled back to it).
    pub(super) current_causes: Vec<Origin>,
    /// The records behind the parked image.
    pub(super) parked_causes: Vec<Origin>,
    /// The record of each active alert's last firing: identity -> origin.
    pub(super) alert_origins: BTreeMap<String, Origin>,
    /// What holds the parked image.
    pub(super) parked_by: Option<Hold>,
    pub(super) rollout: Rollout,
    /// Images ignored on this key until a deploy (not a rollback) of another image.
    pub(super) quarantined: BTreeSet<String>,
    pub(super) pin: Option<Pin>,
    pub(super) freeze: Option<Freeze>,
    /// Images approved for this key and not deployed yet (at most [`MAX_APPROVALS`]).
    pub(super) approvals: Vec<String>,
    /// Environment entries: services whose image this environment's freeze
    /// or a freeze window parked, to handle again when it ends.
    pub(super) waiting: BTreeSet<String>,
    /// Environment entries: when the freeze window that parked `waiting` ends.
    pub(super) window_until: Option<u64>,
}

/// Approvals kept per key; an older one is forgotten past this.
pub(super) const MAX_APPROVALS: usize = 8;

/// Decodes entries of any earlier layout: an entry written before a field
/// existed ends before it (postcard has no field names; reading past the end
/// fails), and the field takes its default. Alerts recorded before expiry
/// existed get a firing time when their key is next used.
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
            "parked_by",
            "rollout",
            "quarantined",
            "pin",
            "freeze",
            "approvals",
            "waiting",
            "window_until",
        ];
        d.deserialize_struct("GateState", FIELDS, GateStateVisitor)
    }
}

pub(super) struct GateStateVisitor;

impl<'de> Visitor<'de> for GateStateVisitor {
    type Value = GateState;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an alert_gate entry")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GateState, A::Error> {
        let missing = |i| serde::de::Error::invalid_length(i, &"an alert_gate entry");
        let mut st = GateState {
            alerts: seq.next_element()?.ok_or_else(|| missing(0))?,
            current: seq.next_element()?.ok_or_else(|| missing(1))?,
            last_deploy: seq.next_element()?.ok_or_else(|| missing(2))?,
            parked: seq.next_element()?.ok_or_else(|| missing(3))?,
            emitted: seq.next_element()?.ok_or_else(|| missing(4))?,
            ..GateState::default()
        };
        // Each later field: present in newer entries, absent (the end) in older ones.
        macro_rules! later {
            ($($field:ident),*) => {$(
                match seq.next_element() {
                    Ok(Some(v)) => st.$field = v,
                    _ => return Ok(st.adopt_old()),
                }
            )*};
        }
        later!(
            fired,
            current_causes,
            parked_causes,
            alert_origins,
            parked_by,
            rollout,
            quarantined,
            pin,
            freeze,
            approvals,
            waiting,
            window_until
        );
        Ok(st)
    }
}

impl GateState {
    /// An entry from before `parked_by` existed parked its image for an alert.
    fn adopt_old(mut self) -> Self {
        if self.parked.is_some() && self.parked_by.is_none() {
            self.parked_by = Some(Hold::Alert);
        }
        self
    }

    /// Whether the entry holds nothing, as a default one: it is then
    /// deleted. Cheaper than comparing with a default entry (hundreds of
    /// bytes built and dropped for every record). Every field is named, so
    /// a new one cannot be forgotten here.
    pub(super) fn is_empty(&self) -> bool {
        let GateState {
            alerts,
            current,
            last_deploy,
            parked,
            emitted,
            fired,
            current_causes,
            parked_causes,
            alert_origins,
            parked_by,
            rollout,
            quarantined,
            pin,
            freeze,
            approvals,
            waiting,
            window_until,
        } = self;
        alerts.is_empty()
            && current.is_none()
            && last_deploy.is_none()
            && parked.is_none()
            && *emitted == 0
            && fired.is_empty()
            && current_causes.is_empty()
            && parked_causes.is_empty()
            && alert_origins.is_empty()
            && parked_by.is_none()
            && rollout.is_empty()
            && quarantined.is_empty()
            && pin.is_none()
            && freeze.is_none()
            && approvals.is_empty()
            && waiting.is_empty()
            && window_until.is_none()
    }

    /// Takes the parked image and what was behind it.
    pub(super) fn unpark(&mut self) -> Option<(String, Vec<Origin>)> {
        self.parked_by = None;
        let image = self.parked.take()?;
        Some((image, std::mem::take(&mut self.parked_causes)))
    }
}

pub(super) fn state_key(service: &str, environment: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(service.len() + environment.len() + 8);
    for part in [service, environment] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The (service, environment) a state key was made from (service "" for an
/// environment's own entry).
pub(super) fn parse_state_key(key: &[u8]) -> Option<(&str, &str)> {
    let mut rest = key;
    let mut part = || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
        rest = &rest[4 + len..];
        Some(text)
    };
    Some((part()?, part()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_empty_exactly_when_it_equals_a_default_one() {
        assert!(GateState::default().is_empty());
        let changes: Vec<fn(&mut GateState)> = vec![
            |st| {
                st.alerts.insert("a".into(), "critical".into());
            },
            |st| st.current = Some("r/a:v1".into()),
            |st| {
                st.last_deploy = Some(LastDeploy {
                    image: "r/a:v1".into(),
                    at: 0,
                    previous: None,
                })
            },
            |st| st.parked = Some("r/a:v2".into()),
            |st| st.emitted = 1,
            |st| {
                st.fired.insert("a".into(), 0);
            },
            |st| st.current_causes.push(Origin::default()),
            |st| st.parked_causes.push(Origin::default()),
            |st| {
                st.alert_origins.insert("a".into(), Origin::default());
            },
            |st| st.parked_by = Some(Hold::Alert),
            |st| st.rollout.status = Some(DeployStatus::Healthy),
            |st| st.rollout.since = 1,
            |st| st.rollout.attempts = 1,
            |st| st.rollout.revision = Some("abc".into()),
            |st| st.rollout.status_origin = Origin::line(3),
            |st| st.rollout.retry_at = Some(0),
            |st| st.rollout.soaks.push(("prod".into(), 0)),
            |st| st.rollout.promoted.push("prod".into()),
            |st| {
                st.quarantined.insert("r/a:v1".into());
            },
            |st| {
                st.pin = Some(Pin {
                    image: "r/a:v1".into(),
                    reason: None,
                    by: None,
                    origin: Origin::default(),
                })
            },
            |st| {
                st.freeze = Some(Freeze {
                    until: None,
                    reason: None,
                    by: None,
                    origin: Origin::default(),
                })
            },
            |st| st.approvals.push("r/a:v1".into()),
            |st| {
                st.waiting.insert("a".into());
            },
            |st| st.window_until = Some(0),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut st = GateState::default();
            change(&mut st);
            assert_ne!(st, GateState::default(), "change {i}");
            assert!(!st.is_empty(), "change {i} leaves a non-empty entry");
        }
    }
}
