//! The part of a deployment intent the committer reads.
//!
//! Intents reach the topic from other producers too (another Sluice
//! version, a person's tool), so only what the committer needs is required:
//! `intent_id`, `action`, `service`, `environment` and `image`. `reason` is
//! used in messages when it is a string and is empty otherwise; every other
//! field (`caused_by` as a string, a list or absent, `previous_image`, new
//! fields) is ignored.

use serde::Deserialize;

use crate::record::Action;

/// A deployment intent as the committer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommitIntent {
    pub intent_id: String,
    pub action: Action,
    pub service: String,
    pub environment: String,
    pub image: String,
    /// For commit messages only: any non-string value reads as empty.
    #[serde(default, deserialize_with = "lenient_text")]
    pub reason: String,
}

/// A string, or the empty string for anything else (null, a number, a list).
fn lenient_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        _ => String::new(),
    })
}

impl CommitIntent {
    /// Reads an intent from its JSON text.
    pub fn from_json(text: &str) -> Result<CommitIntent, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str = r#""intent_id":"i1","action":"deploy","service":"api","environment":"prod","image":"api:v2""#;

    #[test]
    fn only_the_fields_the_committer_uses_are_required() {
        for extra in [
            r#","caused_by":["alert a","alert b"],"reason":"r""#,
            r#","caused_by":"alert a""#,
            r#","reason":null,"previous_image":null"#,
            r#","reason":7,"schema":2,"labels":{"team":"x"}"#,
            "",
        ] {
            let text = format!("{{{REQUIRED}{extra}}}");
            let intent = CommitIntent::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(intent.intent_id, "i1");
            assert_eq!(intent.image, "api:v2");
        }
        let with_reason = format!("{{{REQUIRED},\"reason\":\"new image\"}}");
        assert_eq!(
            CommitIntent::from_json(&with_reason).unwrap().reason,
            "new image"
        );
    }

    #[test]
    fn a_missing_required_field_or_an_unknown_action_is_refused() {
        for field in ["intent_id", "action", "service", "environment", "image"] {
            let text: Vec<&str> = REQUIRED
                .split(',')
                .filter(|f| !f.starts_with(&format!("\"{field}\"")))
                .collect();
            let text = format!("{{{}}}", text.join(","));
            let err = CommitIntent::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let promote = format!("{{{}}}", REQUIRED.replace("deploy", "promote"));
        assert!(CommitIntent::from_json(&promote).is_err());
    }
}
