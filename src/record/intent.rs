//! The two serde forms of an [`Intent`].
//!
//! - JSON (sinks, the committer's input): the fields by name, `caused_by` a
//!   list of record references. Reading JSON also takes intents written
//!   before references existed, whose `caused_by` was a sentence: it reads
//!   as no reference.
//! - State (postcard, an intent held by a debounce or throttle after a
//!   gate): the layout of older versions, whose eighth field was the
//!   `caused_by` sentence, followed by `reason_code` and the references.
//!   An entry written by an older version ends after the sentence and
//!   decodes with an empty code and no reference.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Action, Intent, Origin};

#[derive(Serialize)]
struct JsonOut<'a> {
    action: Action,
    service: &'a str,
    environment: &'a str,
    image: &'a str,
    previous_image: Option<&'a str>,
    reason: &'a str,
    reason_code: &'a str,
    intent_id: &'a str,
    caused_by: &'a [Origin],
}

#[derive(Deserialize)]
struct JsonIn {
    action: Action,
    service: String,
    environment: String,
    image: String,
    previous_image: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    reason_code: String,
    intent_id: String,
    #[serde(default, deserialize_with = "references")]
    caused_by: Vec<Origin>,
}

/// A list of references; a sentence (older intents) or null reads as none.
fn references<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Origin>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(de::Error::custom))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

impl Serialize for Intent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return JsonOut {
                action: self.action,
                service: &self.service,
                environment: &self.environment,
                image: &self.image,
                previous_image: self.previous_image.as_deref(),
                reason: &self.reason,
                reason_code: &self.reason_code,
                intent_id: &self.intent_id,
                caused_by: &self.caused_by,
            }
            .serialize(s);
        }
        // The eighth field held the `caused_by` sentence; it stays, empty.
        (
            self.action,
            &self.service,
            &self.environment,
            &self.image,
            &self.previous_image,
            &self.reason,
            &self.intent_id,
            "",
            &self.reason_code,
            &self.caused_by,
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Intent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let j = JsonIn::deserialize(d)?;
            return Ok(Intent {
                action: j.action,
                service: j.service,
                environment: j.environment,
                image: j.image,
                previous_image: j.previous_image,
                reason: j.reason,
                reason_code: j.reason_code,
                intent_id: j.intent_id,
                caused_by: j.caused_by,
            });
        }
        d.deserialize_tuple(10, StoredVisitor)
    }
}

struct StoredVisitor;

impl<'de> Visitor<'de> for StoredVisitor {
    type Value = Intent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored intent")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Intent, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &"a stored intent");
        let action = seq.next_element()?.ok_or_else(|| missing(0))?;
        let service = seq.next_element()?.ok_or_else(|| missing(1))?;
        let environment = seq.next_element()?.ok_or_else(|| missing(2))?;
        let image = seq.next_element()?.ok_or_else(|| missing(3))?;
        let previous_image = seq.next_element()?.ok_or_else(|| missing(4))?;
        let reason = seq.next_element()?.ok_or_else(|| missing(5))?;
        let intent_id = seq.next_element()?.ok_or_else(|| missing(6))?;
        let _sentence: String = seq.next_element()?.ok_or_else(|| missing(7))?;
        // An older entry ends here.
        let reason_code = seq.next_element().ok().flatten().unwrap_or_default();
        let caused_by = seq.next_element().ok().flatten().unwrap_or_default();
        Ok(Intent {
            action,
            service,
            environment,
            image,
            previous_image,
            reason,
            reason_code,
            intent_id,
            caused_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Payload, Record};

    fn intent() -> Intent {
        Intent {
            action: Action::Rollback,
            service: "a".into(),
            environment: "prod".into(),
            image: "a:v1".into(),
            previous_image: Some("a:v2".into()),
            reason: "rollback".into(),
            reason_code: "rollback_alert".into(),
            intent_id: "id".into(),
            caused_by: vec![Origin::line(4), Origin::kafka("alerts", 1, 9)],
        }
    }

    #[test]
    fn both_forms_round_trip() {
        let i = intent();
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Intent>(&json).unwrap(), i);
        let bytes = postcard::to_stdvec(&i).unwrap();
        assert_eq!(postcard::from_bytes::<Intent>(&bytes).unwrap(), i);
    }

    #[test]
    fn a_record_holding_an_intent_stored_by_the_previous_version_still_decodes() {
        /// The intent's layout before reason codes and references.
        #[derive(Serialize)]
        struct OldIntent {
            action: Action,
            service: String,
            environment: String,
            image: String,
            previous_image: Option<String>,
            reason: String,
            intent_id: String,
            caused_by: String,
        }
        /// `Payload::Intent` is variant 3, as before.
        #[derive(Serialize)]
        enum OldPayload {
            _Image,
            _Alert,
            _Git,
            Intent(OldIntent),
        }
        #[derive(Serialize)]
        struct OldRecord {
            ts: u64,
            key: Option<String>,
            payload: OldPayload,
        }
        let old = OldRecord {
            ts: 5,
            key: Some("a/prod".into()),
            payload: OldPayload::Intent(OldIntent {
                action: Action::Deploy,
                service: "a".into(),
                environment: "prod".into(),
                image: "a:v1".into(),
                previous_image: None,
                reason: "new image".into(),
                intent_id: "id".into(),
                caused_by: "image a:v1".into(),
            }),
        };
        let bytes = postcard::to_stdvec(&(7u64, &old)).unwrap();
        let (first, record): (u64, Record) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((first, record.ts, record.origin.is_known()), (7, 5, false));
        match record.payload {
            Payload::Intent(i) => {
                assert_eq!((i.image.as_str(), i.reason.as_str()), ("a:v1", "new image"));
                assert!(i.caused_by.is_empty() && i.reason_code.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_written_before_references_reads_with_none() {
        let text = r#"{"action":"deploy","service":"a","environment":"p","image":"a:v1","previous_image":null,"reason":"new image","intent_id":"x","caused_by":"image a:v1"}"#;
        let i: Intent = serde_json::from_str(text).unwrap();
        assert!(i.caused_by.is_empty());
    }
}
