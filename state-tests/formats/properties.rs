//! Property tests of the webhook decoders: no input panics any of them.

use std::path::PathBuf;

use proptest::prelude::*;
use regex::Regex;
use serde_json::Value;
use sluice::format::{decode, DecodeOptions, FieldFrom, Format, FORMATS};
use sluice::record::Kind;

#[path = "../fuzz/src/formats.rs"]
mod fuzz_check;

/// Every vendor format with each kind it carries, and options that make
/// every path of the decoders reachable.
fn vendor_formats() -> Vec<(Format, Kind)> {
    FORMATS
        .iter()
        .filter(|f| !f.is_native())
        .flat_map(|f| f.kinds().iter().map(move |k| (*f, *k)))
        .collect()
}

fn all_options() -> [DecodeOptions; 2] {
    let regex = |r: &str| Some(FieldFrom::Regex(Regex::new(r).expect("regex")));
    [
        DecodeOptions::default(),
        DecodeOptions {
            environment: Some("prod".into()),
            service_from: regex("(?P<service>[a-z]+)$"),
            environment_from: regex("^(?P<environment>[a-z]+)"),
            severity_from: None,
        },
    ]
}

fn decode_everywhere(json: &str) {
    for (format, kind) in vendor_formats() {
        for opts in &all_options() {
            let _ = decode(format, kind, json, opts);
        }
    }
}

/// The vendors' field names, so that random objects reach past the first lookups.
const KEYS: &str = "alerts|labels|status|alertname|service|severity|env|version|events|action|\
    target|mediaType|repository|request|host|tag|digest|push_data|repo_name|type|event_data|\
    resources|resource_url|specversion|data|data_base64|docker_url|updated_tags|package|\
    registry_package|package_type|package_version|container_metadata|name|detail-type|detail|\
    action-type|result|message|ref|after|deleted|pull_request|merged|merge_commit_sha|base|\
    object_kind|object_attributes|project|path_with_namespace|full_name|number|iid";

/// Values the decoders look for.
const WORDS: &str = "push|pull|firing|resolved|4|1.0|PUSH_ARTIFACT|harbor.artifact.pushed|\
    application/vnd.oci.image.manifest.v1+json|refs/heads/main|closed|merge|INSERT|PUSH|SUCCESS|\
    ECR Image Action|published|CONTAINER|a1b2c3d4|reg.io/a/b:v1|e30=";

fn words(list: &'static str) -> Vec<&'static str> {
    list.split('|').map(str::trim).collect()
}

/// JSON values built from the vendors' own field names and values.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(words(KEYS));
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(words(WORDS)).prop_map(Value::from),
        ".*".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

/// The fuzz seeds' payloads (one per format, `FORMAT` line first): real
/// shapes for random edits to start from.
fn templates() -> Vec<Value> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("state-tests/fuzz/seeds/webhook_decode");
    let entries = std::fs::read_dir(&dir).expect("the webhook_decode seeds");
    let mut payloads: Vec<Value> = entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|text| {
            let payload = text
                .split_once('\n')
                .map_or(text.as_str(), |(first, rest)| {
                    if Format::from_name(first.trim()).is_some() {
                        rest
                    } else {
                        text.as_str()
                    }
                });
            serde_json::from_str(payload).ok()
        })
        .collect();
    payloads.sort_by_key(Value::to_string);
    assert!(payloads.len() >= 10, "too few seeds in {}", dir.display());
    payloads
}

/// Replaces the `n`-th node of `value` (pre-order) with `new`; returns how
/// many nodes remain to skip when `value` holds fewer.
fn replace_node(value: &mut Value, n: usize, new: &mut Option<Value>) -> usize {
    if n == 0 {
        if let Some(new) = new.take() {
            *value = new;
        }
        return 0;
    }
    let mut left = n - 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => Vec::new(),
    };
    for child in children {
        if new.is_none() {
            break;
        }
        left = replace_node(child, left, new);
    }
    left
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// A template with a few of its nodes replaced by random values.
fn edited_template() -> impl Strategy<Value = Value> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), json_value()), 1..4);
    (prop::sample::select(templates()), edits).prop_map(|(mut value, edits)| {
        for (index, new) in edits {
            let n = index.index(count_nodes(&value));
            replace_node(&mut value, n, &mut Some(new));
        }
        value
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everywhere(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_never_panics_a_decoder(value in json_value()) {
        decode_everywhere(&value.to_string());
    }

    #[test]
    fn edited_vendor_payloads_never_panic_a_decoder(value in edited_template()) {
        let json = value.to_string();
        decode_everywhere(&json);
        // The fuzz target's oracle: records of the kind, valid, round-tripping.
        fuzz_check::webhook_decode(json.as_bytes());
    }
}
