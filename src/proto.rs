//! Protobuf wire formats (proto/sluice.proto) and conversions to and from records.

use prost::Message;

use crate::record::origin::Place;
use crate::record::{Action, Intent, InvalidRecord, Origin};

include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));

impl From<&Intent> for DeploymentIntent {
    fn from(i: &Intent) -> Self {
        let action = match i.action {
            Action::Deploy => deployment_intent::Action::Deploy,
            Action::Hold => deployment_intent::Action::Hold,
            Action::Rollback => deployment_intent::Action::Rollback,
        };
        DeploymentIntent {
            action: action as i32,
            service: i.service.clone(),
            environment: i.environment.clone(),
            image: i.image.clone(),
            previous_image: i.previous_image.clone(),
            reason: i.reason.clone(),
            reason_code: i.reason_code.clone(),
            intent_id: i.intent_id.clone(),
            caused_by: i.caused_by.iter().filter_map(record_ref).collect(),
            ts: 0,
        }
    }
}

fn record_ref(origin: &Origin) -> Option<RecordRef> {
    let place = match &origin.place {
        Place::Unknown => return None,
        Place::Line(n) => record_ref::Place::Line(*n),
        Place::Kafka(k) => record_ref::Place::Kafka(KafkaPosition {
            topic: k.topic.clone(),
            partition: k.partition,
            offset: k.offset,
        }),
    };
    Some(RecordRef { place: Some(place) })
}

/// The origin a `RecordRef` names (unknown when it names nothing).
pub fn origin_of(r: &RecordRef) -> Origin {
    match &r.place {
        Some(record_ref::Place::Line(n)) => Origin::line(*n),
        Some(record_ref::Place::Kafka(k)) => Origin::kafka(&k.topic, k.partition, k.offset),
        None => Origin::default(),
    }
}

/// Encodes an intent emitted at `ts` as a `DeploymentIntent` message.
pub fn encode_intent(intent: &Intent, ts: u64) -> Vec<u8> {
    let mut msg = DeploymentIntent::from(intent);
    msg.ts = ts;
    msg.encode_to_vec()
}

/// Decodes a protobuf image event into the JSON form sources validate.
pub fn image_to_json(bytes: &[u8]) -> Result<String, InvalidRecord> {
    let m = ImagePushed::decode(bytes)
        .map_err(|e| InvalidRecord(format!("value: not an ImagePushed message: {e}")))?;
    let value = serde_json::json!({
        "service": m.service, "repository": m.repository, "tag": m.tag,
        "digest": m.digest, "environment": m.environment,
    });
    Ok(value.to_string())
}

/// Decodes a protobuf alert into the JSON form sources validate.
pub fn alert_to_json(bytes: &[u8]) -> Result<String, InvalidRecord> {
    let m = Alert::decode(bytes)
        .map_err(|e| InvalidRecord(format!("value: not an Alert message: {e}")))?;
    let value = serde_json::json!({
        "service": m.service, "alertname": m.alertname, "severity": m.severity,
        "status": m.status, "environment": m.environment, "fingerprint": m.fingerprint,
    });
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_image;

    #[test]
    fn intents_round_trip_through_protobuf() {
        let intent = Intent {
            action: Action::Rollback,
            service: "a".into(),
            environment: "prod".into(),
            image: "a:v1".into(),
            previous_image: Some("a:v2".into()),
            reason: "r".into(),
            reason_code: "rollback_alert".into(),
            intent_id: "id".into(),
            caused_by: vec![Origin::line(3), Origin::kafka("alerts", 2, 7)],
        };
        let msg = DeploymentIntent::decode(encode_intent(&intent, 42).as_slice()).unwrap();
        assert_eq!(msg.action(), deployment_intent::Action::Rollback);
        assert_eq!(msg.previous_image.as_deref(), Some("a:v2"));
        assert_eq!(msg.ts, 42);
        assert_eq!(msg.reason_code, "rollback_alert");
        let refs: Vec<Origin> = msg.caused_by.iter().map(origin_of).collect();
        assert_eq!(refs, intent.caused_by);
    }

    #[test]
    fn protobuf_images_validate_like_json_and_garbage_is_invalid() {
        let bytes = ImagePushed {
            service: "a".into(),
            repository: "a".into(),
            tag: Some("v1".into()),
            ..Default::default()
        }
        .encode_to_vec();
        let json = image_to_json(&bytes).unwrap();
        assert_eq!(
            parse_image(&json, Some("prod")).unwrap().reference(),
            "a:v1"
        );
        assert!(image_to_json(&[0xff, 0xff, 0xff]).is_err());
        let bad = ImagePushed {
            service: "a".into(),
            repository: "A".into(),
            tag: Some("v1".into()),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(parse_image(&image_to_json(&bad).unwrap(), None).is_err());
    }
}
