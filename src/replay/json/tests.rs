use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::*;
use crate::record::{Action, AlertEvent, AlertStatus, ImageEvent, Intent, Origin, Payload};
use crate::replay::{DeadLetterValue, OutputLine};

/// What the fast writer and serde_json make of `value`: the same bytes,
/// or the fast writer declines.
fn same_as_serde_json<T: Serialize>(value: &T) -> Result<String, String> {
    let expected = serde_json::to_string(value).unwrap();
    let mut out = Vec::new();
    match write(&mut out, value) {
        Ok(()) => {
            let actual = String::from_utf8(out).unwrap();
            if actual == expected {
                Ok(actual)
            } else {
                Err(format!("fast {actual}\nserde_json {expected}"))
            }
        }
        Err(Unsupported) => Err("unsupported".into()),
    }
}

fn image(text: &str) -> Payload {
    Payload::Image(Box::new(ImageEvent {
        service: text.into(),
        repository: "registry.example.com/team-1/a".into(),
        tag: Some("v1.2.3".into()),
        digest: None,
        environment: Some("prod".into()),
    }))
}

#[test]
fn output_lines_of_every_kind_come_out_as_serde_json_writes_them() {
    let intent = Payload::Intent(Box::new(Intent {
        action: Action::Rollback,
        service: "svc-1".into(),
        environment: "prod".into(),
        image: "r/a:v1@sha256:00".into(),
        previous_image: None,
        reason: "rollback: alert \"X\" (critical) fired 5 ms after deploy".into(),
        reason_code: "alert_after_deploy".into(),
        intent_id: "0123456789abcdef".into(),
        caused_by: vec![Origin::line(7), Origin::kafka("alerts\n", 2, 41)],
    }));
    let alert = Payload::Alert(Box::new(AlertEvent {
        service: "a".into(),
        alertname: "HighLatency".into(),
        severity: "warning".into(),
        status: AlertStatus::Resolved,
        environment: "staging".into(),
        fingerprint: Some("ab\u{1}c".into()),
    }));
    for payload in [intent, alert, image("svc-é-\\-\u{7f}")] {
        let line = OutputLine {
            topic: "deploy-intents",
            ts: u64::MAX,
            key: Some("svc-1/prod"),
            value: payload.json(),
        };
        same_as_serde_json(&line).unwrap();
    }
    let raw = RawValue::from_string(r#"{"x": [1, 2.5, "y"] }"#.into()).unwrap();
    let letter = OutputLine {
        topic: "cicd.dead-letter",
        ts: 0,
        key: None,
        value: DeadLetterValue {
            error: "value: expected a JSON object",
            node: "images",
            topic: None,
            value: &raw,
            truncated_from_bytes: Some(12),
        },
    };
    let text = same_as_serde_json(&letter).unwrap();
    assert!(
        text.contains(r#""value":{"x": [1, 2.5, "y"] }"#),
        "raw text kept: {text}"
    );
}

#[derive(Serialize)]
enum Shape {
    Unit,
    Newtype(u8),
    Tuple(i32, bool),
    Struct { a: Vec<u16>, b: Option<char> },
}

#[test]
fn containers_variants_and_numbers_match_too() {
    same_as_serde_json(&(Shape::Unit, Shape::Newtype(7), Shape::Tuple(-42, false))).unwrap();
    same_as_serde_json(&Shape::Struct {
        a: vec![],
        b: Some('"'),
    })
    .unwrap();
    same_as_serde_json(&Shape::Struct {
        a: vec![1, 65_535],
        b: None,
    })
    .unwrap();
    let map: BTreeMap<&str, Vec<i64>> = [("k", vec![i64::MIN, 0, i64::MAX]), ("", vec![])].into();
    same_as_serde_json(&map).unwrap();
    same_as_serde_json(&((), [0u8; 0], "", u64::MAX)).unwrap();
}

#[test]
fn floats_and_other_map_keys_are_left_to_serde_json() {
    assert_eq!(same_as_serde_json(&1.5f64), Err("unsupported".into()));
    let map: BTreeMap<u32, u32> = [(1, 2)].into();
    assert_eq!(same_as_serde_json(&map), Err("unsupported".into()));
}

proptest! {
    #[test]
    fn any_string_is_written_as_serde_json_writes_it(s in any::<String>(), t in "[ -~\\x00-\\x1f]{0,40}") {
        prop_assert!(same_as_serde_json(&(&s, &t, &[&s, &t])).is_ok());
    }
}
