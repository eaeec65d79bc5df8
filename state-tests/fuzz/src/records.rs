//! Record decoders: replay lines, JSON image, alert, deployment and control
//! values, protobuf messages.

use std::sync::{Arc, LazyLock};

use prost::Message;
use serde_json::value::RawValue;
use serde_json::Value;
use sluice::engine::{Engine, EngineOptions};
use sluice::format::{self, DecodeOptions, Format};
use sluice::proto::{alert_to_json, image_to_json, Alert, DeploymentIntent, ImagePushed};
use sluice::record::{
    oci, parse_alert, parse_control, parse_deployment, parse_image, AlertEvent, Flat, FlatObject,
    ImageEvent, Kind, Payload,
};
use sluice::replay::{parse_line, replay, JsonLinesOutput, OutputLine, ReplayError, ReplayOptions};
use sluice::state::MemoryBackend;
use sluice::topology::Topology;

static CICD: LazyLock<Arc<Topology>> = LazyLock::new(|| {
    let src = include_str!("../../../topologies/cicd.toml");
    Arc::new(Topology::parse("cicd.toml", src).expect("cicd.toml is valid"))
});

/// A replay line that parses reads the same as the generic JSON view of it,
/// and writing it back in the replay format reads back the same. The whole
/// input, replayed through the default topology, is either run or refused
/// as an input-file error, and every line it prints is a replay line again.
pub fn replay_line(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        check_one_line(line);
    }
    let mut engine = Engine::open(
        CICD.clone(),
        Box::new(MemoryBackend::new()),
        &EngineOptions::default(),
    )
    .expect("the in-memory engine opens");
    let mut out = JsonLinesOutput::new(Vec::new(), "cicd.dead-letter".into());
    let opts = ReplayOptions {
        drain: true,
        commit_every: 7,
        line_offset: 0,
    };
    match replay(&mut engine, data, "fuzz.jsonl", &mut out, &opts, &mut ()) {
        Ok(_) | Err(ReplayError::Input { .. }) => {}
        Err(e) => panic!("a replay input caused a non-input error: {e}"),
    }
    let printed = out.into_inner();
    for line in printed.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Err(e) = parse_line(line) {
            panic!(
                "replay printed a line it cannot read back ({e}): {}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

fn check_one_line(text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let Ok(line) = parse_line(text) else {
        return;
    };
    let Some(generic) = generic_json(text) else {
        return;
    };
    assert_eq!(generic["topic"].as_str(), Some(&*line.topic));
    assert_eq!(generic["ts"].as_u64(), Some(line.ts));
    assert_eq!(
        generic.get("key").and_then(Value::as_str),
        line.key.as_deref()
    );
    let value = line
        .value
        .map(|v| serde_json::from_str::<Value>(v).expect("a line's value is JSON"));
    let generic_value = generic.get("value").filter(|v| !v.is_null());
    assert_eq!(value.as_ref(), generic_value);
    let raw = RawValue::from_string(line.value.unwrap_or("null").to_owned())
        .expect("a line's value is JSON");
    let written = serde_json::to_vec(&OutputLine {
        topic: &line.topic,
        ts: line.ts,
        key: line.key.as_deref(),
        value: &*raw,
    })
    .expect("a line serializes");
    let again = parse_line(&written).expect("a written line reads back");
    assert_eq!(again.topic, line.topic);
    assert_eq!(again.ts, line.ts);
    assert_eq!(again.key, line.key);
    assert_eq!(again.value, line.value);
}

/// An accepted image or alert holds only valid fields, matches the generic
/// JSON view of the value, and its JSON form (what sinks write) parses back
/// to the same record.
pub fn json_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for default_env in [None, Some("prod")] {
        same_from_kept_fields(text, default_env);
        if let Ok(image) = parse_image(text, default_env) {
            check_image(text, &image);
        }
        if let Ok(alert) = parse_alert(text, default_env) {
            check_alert(text, &alert);
        }
        // Deployment statuses and control records: what a sink writes reads back the same.
        if let Ok(d) = parse_deployment(text, default_env) {
            let written = Payload::Deployment(Box::new(d.clone()))
                .to_json()
                .to_string();
            assert_eq!(
                parse_deployment(&written, None).as_ref(),
                Ok(&d),
                "{written}"
            );
        }
        if let Ok(c) = parse_control(text, default_env) {
            let written = Payload::Control(Box::new(c.clone())).to_json().to_string();
            assert_eq!(parse_control(&written, None).as_ref(), Ok(&c), "{written}");
        }
    }
}

/// A flat object whose fields replay kept decodes as its text does, in
/// every kind Sluice's own JSON carries.
fn same_from_kept_fields(text: &str, default_env: Option<&str>) {
    let Flat::Kept(fields) = FlatObject::check(text) else {
        return;
    };
    let opts = DecodeOptions {
        environment: default_env.map(str::to_owned),
        ..DecodeOptions::default()
    };
    for kind in [Kind::Image, Kind::Alert, Kind::Git] {
        assert_eq!(
            format::decode_scanned(Format::Json, kind, text, Some(&fields), &opts),
            format::decode(Format::Json, kind, text, &opts),
            "{kind}: {text}"
        );
    }
}

/// The text as a JSON tree, or `None` when it is JSON that a tree cannot
/// hold (a number beyond f64, which skipping a value does not look at).
fn generic_json(text: &[u8]) -> Option<Value> {
    match serde_json::from_slice(text) {
        Ok(value) => Some(value),
        Err(_) if serde_json::from_slice::<&RawValue>(text).is_ok() => None,
        Err(e) => panic!("accepted input is not JSON: {e}"),
    }
}

fn generic_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    match generic_json(text.as_bytes())? {
        Value::Object(map) => Some(map),
        other => panic!("an accepted record is not a JSON object: {other}"),
    }
}

/// The last value of `key` as a string; JSON `null` counts as absent.
fn field<'v>(map: &'v serde_json::Map<String, Value>, key: &str) -> Option<&'v str> {
    map.get(key).and_then(Value::as_str)
}

fn check_image(text: &str, image: &ImageEvent) {
    assert!(oci::is_name(&image.service), "service {:?}", image.service);
    oci::check_repository(&image.repository).expect("accepted repository");
    image
        .tag
        .iter()
        .for_each(|t| oci::check_tag(t).expect("accepted tag"));
    image
        .digest
        .iter()
        .for_each(|d| oci::check_digest(d).expect("accepted digest"));
    assert!(image.tag.is_some() || image.digest.is_some());
    if let Some(env) = &image.environment {
        assert!(oci::is_name(env), "environment {env:?}");
    }
    let Some(map) = generic_object(text) else {
        return;
    };
    assert_eq!(field(&map, "service"), Some(image.service.as_str()));
    assert_eq!(field(&map, "repository"), Some(image.repository.as_str()));
    assert_eq!(field(&map, "tag"), image.tag.as_deref());
    assert_eq!(field(&map, "digest"), image.digest.as_deref());
    let written = Payload::Image(Box::new(image.clone()))
        .to_json()
        .to_string();
    assert_eq!(parse_image(&written, None).as_ref(), Ok(image), "{written}");
}

fn check_alert(text: &str, alert: &AlertEvent) {
    assert!(oci::is_name(&alert.service), "service {:?}", alert.service);
    assert!(
        oci::is_name(&alert.environment),
        "environment {:?}",
        alert.environment
    );
    assert!(!alert.alertname.is_empty() && !alert.severity.is_empty());
    assert!(alert.fingerprint.as_deref() != Some(""));
    let Some(map) = generic_object(text) else {
        return;
    };
    assert_eq!(field(&map, "service"), Some(alert.service.as_str()));
    assert_eq!(field(&map, "alertname"), Some(alert.alertname.as_str()));
    assert_eq!(field(&map, "status"), Some(alert.status.as_str()));
    assert_eq!(field(&map, "fingerprint"), alert.fingerprint.as_deref());
    let written = Payload::Alert(Box::new(alert.clone()))
        .to_json()
        .to_string();
    assert_eq!(parse_alert(&written, None).as_ref(), Ok(alert), "{written}");
}

/// Protobuf values: a message that decodes gives JSON that the JSON
/// decoders answer without panicking, and it decodes the same after a
/// re-encoding. Intents (the committer's protobuf input) round-trip too.
pub fn protobuf_record(data: &[u8]) {
    if let Ok(json) = image_to_json(data) {
        generic_object(&json).expect("decoded protobuf is plain JSON");
        if let Ok(image) = parse_image(&json, None) {
            check_image(&json, &image);
        }
        let message = ImagePushed::decode(data).expect("image_to_json decoded it");
        let again = image_to_json(&message.encode_to_vec()).expect("a re-encoded image decodes");
        assert_eq!(again, json);
    }
    if let Ok(json) = alert_to_json(data) {
        generic_object(&json).expect("decoded protobuf is plain JSON");
        if let Ok(alert) = parse_alert(&json, Some("prod")) {
            check_alert(&json, &alert);
        }
        let message = Alert::decode(data).expect("alert_to_json decoded it");
        let again = alert_to_json(&message.encode_to_vec()).expect("a re-encoded alert decodes");
        assert_eq!(again, json);
    }
    if let Ok(intent) = DeploymentIntent::decode(data) {
        let again = DeploymentIntent::decode(intent.encode_to_vec().as_slice())
            .expect("a re-encoded intent decodes");
        assert_eq!(again, intent);
    }
}
