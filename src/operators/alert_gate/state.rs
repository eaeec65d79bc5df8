//! What the gate keeps per (service, environment), and its encoding.

use std::collections::BTreeMap;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::record::Origin;

/// The deploy that a rollback would undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LastDeploy {
    pub(super) image: String,
    pub(super) at: u64,
    pub(super) previous: Option<String>,
}

/// Everything the gate remembers about one (service, environment).
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
    /// decode (see `Deserialize`); so are the fields below.
    pub(super) fired: BTreeMap<String, u64>,
    /// The records behind the current image (its image record, and what
    /// released or promoted it).
    pub(super) current_causes: Vec<Origin>,
    /// The record of the parked image.
    pub(super) parked_causes: Vec<Origin>,
    /// The record of each active alert's last firing: identity -> origin.
    pub(super) alert_origins: BTreeMap<String, Origin>,
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

pub(super) struct GateStateVisitor;

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

pub(super) fn state_key(service: &str, environment: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(service.len() + environment.len() + 8);
    for part in [service, environment] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The (service, environment) a state key was made from.
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
