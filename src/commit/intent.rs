//! The part of a deployment intent the committer reads.
//!
//! Intents reach the topic from other producers too (another Sluice
//! version, a person's tool), so only what the committer needs is required:
//! `intent_id`, `action`, `service`, `environment` and `image`. `reason` and
//! `reason_code` are used when they are strings and are empty otherwise;
//! `caused_by` is kept for the report when it is a list (a sentence, as older
//! versions wrote, reads as none); every other field (`previous_image`, new
//! fields) is ignored.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::record::Action;

/// A deployment intent as the committer sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct CommitIntent {
    pub intent_id: String,
    pub action: Action,
    pub service: String,
    pub environment: String,
    pub image: String,
    /// For commit messages only: any non-string value reads as empty.
    #[serde(default, deserialize_with = "lenient_text")]
    pub reason: String,
    /// One word from the gate's list; `retry` makes a commit even when the
    /// files already hold the image. Any non-string value reads as empty.
    #[serde(default, deserialize_with = "lenient_text")]
    pub reason_code: String,
    /// The records behind the intent, as the intent listed them (its
    /// bytes), for the report; `None` when absent or not a list.
    #[serde(default, deserialize_with = "lenient_list")]
    pub caused_by: Option<Box<RawValue>>,
}

/// The `reason_code` of a gate's retry of a failed sync.
pub const RETRY: &str = "retry";

/// A string, or the empty string for anything else (null, a number, a list).
fn lenient_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        _ => String::new(),
    })
}

/// A list, or `None` for anything else (a sentence, null, a number).
fn lenient_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(raw.get().starts_with('[').then_some(raw))
}

impl CommitIntent {
    /// Whether the intent re-applies its image to retry a failed sync.
    pub fn is_retry(&self) -> bool {
        self.action == Action::Deploy && self.reason_code == RETRY
    }

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
    fn reason_code_and_a_caused_by_list_are_kept_and_anything_else_reads_as_none() {
        let text = format!(
            "{{{REQUIRED},\"reason_code\":\"retry\",\"caused_by\":[{{\"line\":3}},{{\"topic\":\"t\",\"partition\":0,\"offset\":7}}]}}"
        );
        let intent = CommitIntent::from_json(&text).unwrap();
        assert!(intent.is_retry());
        assert_eq!(
            intent.caused_by.map(|c| c.get().to_owned()).as_deref(),
            Some(r#"[{"line":3},{"topic":"t","partition":0,"offset":7}]"#),
            "kept as written"
        );
        let old = format!("{{{REQUIRED},\"reason_code\":4,\"caused_by\":\"alert a\"}}");
        let intent = CommitIntent::from_json(&old).unwrap();
        assert_eq!(intent.reason_code, "");
        assert!(intent.caused_by.is_none());
        assert!(!intent.is_retry());
        let rollback = format!(
            "{{{},\"reason_code\":\"retry\"}}",
            REQUIRED.replace("deploy", "rollback")
        );
        assert!(
            !CommitIntent::from_json(&rollback).unwrap().is_retry(),
            "only a deploy retries"
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
