//! What the engine gets from an input record: its value decoded to JSON
//! text, or a refusal shaped as a dead letter; and the service key a
//! repartitioned record is keyed by.

use std::borrow::Cow;

use rdkafka::message::{Message, OwnedMessage};
use serde_json::value::RawValue;

use super::topics::Plan;
use crate::engine::{DeadLetter, Output};
use crate::record::{Field, Kind, TraceContext, TRACEPARENT};
use crate::topology::{Format, Topology};

/// Header marking a repartition record as a record already decoded from the
/// source's vendor format into Sluice's own JSON.
pub(super) const DECODED_HEADER: &str = "sluice.decoded";

/// Header of the first record of a split payload: the payload's ignored
/// entries, as a JSON array of their types, so that the task counts them.
pub(super) const IGNORED_HEADER: &str = "sluice.ignored";

/// What one record of a repartitioned input becomes in its repartition topic.
pub(super) struct Forward {
    pub key: Option<String>,
    /// `None`: the input record's own bytes.
    pub value: Option<Vec<u8>>,
    /// The value is Sluice's JSON of the source's kind (see [`DECODED_HEADER`]).
    pub decoded: bool,
    /// The split payload's ignored entries (see [`IGNORED_HEADER`]).
    pub ignored: Option<String>,
}

/// How a repartitioned input record is re-keyed by service. A payload of
/// one service goes as it is, keyed by that service; a vendor payload that
/// yields records of several services (an Alertmanager group spanning
/// services) is split into one decoded record per service's partition, so
/// each task sees only its own services. A record without a readable
/// service goes unkeyed, as it is: the task that gets it dead-letters it
/// (or counts it as ignored).
pub(super) fn repartition_records(
    topo: &Topology,
    source: usize,
    value: Option<&[u8]>,
) -> Vec<Forward> {
    let src = &topo.sources[source];
    let raw = |key: Option<String>| Forward {
        key,
        value: None,
        decoded: false,
        ignored: None,
    };
    if src.format.is_native() {
        return vec![raw(service_key(topo, source, value))];
    }
    let decoded = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|text| src.decode(text).ok());
    let Some(decoded) = decoded.filter(|d| !d.records.is_empty()) else {
        return vec![raw(None)];
    };
    let first = decoded.records[0].field(Field::Service).into_owned();
    if decoded
        .records
        .iter()
        .all(|r| r.field(Field::Service) == first)
    {
        return vec![raw((!first.is_empty()).then_some(first))];
    }
    let values: Option<Vec<Vec<u8>>> = decoded
        .records
        .iter()
        .map(|r| serde_json::to_vec(&r.json()).ok())
        .collect();
    // Plain structs of strings always serialize; were one not to, the task
    // would decode the payload as it is rather than lose a record.
    let Some(values) = values else {
        return vec![raw(None)];
    };
    let ignored = (!decoded.ignored.is_empty())
        .then(|| serde_json::to_string(&decoded.ignored).unwrap_or_default());
    decoded
        .records
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (r, value))| Forward {
            key: Some(r.field(Field::Service).into_owned()),
            value: Some(value),
            decoded: true,
            ignored: if i == 0 { ignored.clone() } else { None },
        })
        .collect()
}

/// The service of a record in one of Sluice's own formats, read from its value.
fn service_key(topo: &Topology, source: usize, value: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ServiceOnly {
        service: String,
    }
    use prost::Message as _;
    let src = &topo.sources[source];
    let bytes = value?;
    let service = match (src.format, src.kind) {
        (Format::Protobuf, Kind::Image) => crate::proto::ImagePushed::decode(bytes).ok()?.service,
        (Format::Protobuf, Kind::Alert) => crate::proto::Alert::decode(bytes).ok()?.service,
        _ => serde_json::from_slice::<ServiceOnly>(bytes).ok()?.service,
    };
    (!service.is_empty()).then_some(service)
}

/// For a record of a repartition topic that carries [`DECODED_HEADER`]:
/// the ignored entries of its payload (empty when none). `None` for any
/// other record: the header means nothing on a topic others produce to.
pub(super) fn decoded_ignored(plan: &Plan, m: &OwnedMessage) -> Option<Vec<String>> {
    use rdkafka::message::Headers;
    if !plan.repartitions.iter().any(|r| r.to == m.topic()) {
        return None;
    }
    let headers = m.headers()?;
    let mut decoded = false;
    let mut ignored = Vec::new();
    for h in headers.iter() {
        if h.key == DECODED_HEADER {
            decoded = true;
        } else if h.key == IGNORED_HEADER {
            ignored = h
                .value
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
        }
    }
    decoded.then_some(ignored)
}

/// Why a record is refused before the engine sees it.
pub(super) struct Rejected {
    error: String,
    /// What the dead letter carries as the value: the text, or a JSON string.
    value: Box<RawValue>,
}

impl Rejected {
    pub(super) fn send(
        &self,
        topo: &Topology,
        topic: &str,
        m: &OwnedMessage,
        key: Option<&str>,
        ts: u64,
        out: &mut dyn Output,
    ) -> Result<(), crate::engine::OutputError> {
        let node = topo
            .sources_for(topic)
            .and_then(|s| s.first())
            .map(|&s| topo.sources[s].name.as_str())
            .unwrap_or("run");
        tracing::debug!(topic = m.topic(), offset = m.offset(), reason = %self.error, "record refused");
        out.dead_letter(DeadLetter {
            ts,
            key,
            node,
            source_topic: Some(topic),
            error: &self.error,
            value: &self.value,
        })
    }
}

/// The value as JSON text for the engine: protobuf sources are decoded;
/// oversized values and undecodable protobuf are refused here.
/// Borrows the record's bytes when they are text already: this runs for every record.
/// `topic` is the topic the engine's sources read: for a repartitioned
/// source, its own topic, not the repartition topic the record came from.
pub(super) fn input_value<'m>(
    topo: &Topology,
    topic: &str,
    m: &'m OwnedMessage,
    max_bytes: usize,
) -> Result<Cow<'m, str>, Rejected> {
    let bytes = m.payload().unwrap_or_default();
    let as_string = |text: &str| {
        serde_json::value::to_raw_value(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
    };
    if bytes.len() > max_bytes {
        let prefix = String::from_utf8_lossy(&bytes[..1024.min(bytes.len())]).into_owned();
        return Err(Rejected {
            error: format!(
                "value of {} bytes is larger than the limit of {max_bytes}",
                bytes.len()
            ),
            value: as_string(&prefix),
        });
    }
    if m.payload().is_none() {
        return Ok(Cow::Borrowed("null"));
    }
    let protobuf = topo
        .sources_for(topic)
        .and_then(|s| s.first())
        .map(|&s| &topo.sources[s])
        .filter(|s| s.format == Format::Protobuf)
        .map(|s| s.kind);
    let decoded = match protobuf {
        Some(Kind::Image) => Some(crate::proto::image_to_json(bytes)),
        Some(Kind::Alert) => Some(crate::proto::alert_to_json(bytes)),
        _ => None,
    };
    match decoded {
        Some(Ok(json)) => Ok(Cow::Owned(json)),
        Some(Err(e)) => Err(Rejected {
            error: e.0,
            value: as_string(&String::from_utf8_lossy(bytes)),
        }),
        None => Ok(text_of(bytes)),
    }
}

/// The bytes as text, borrowed when they are valid UTF-8 (nearly always):
/// `str::from_utf8` checks them several times faster than
/// `String::from_utf8_lossy`, which took 2% of a live processing thread.
fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The trace context a record carries in its `traceparent` header.
pub(super) fn traceparent(m: &OwnedMessage) -> Option<TraceContext> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    let header = headers.iter().find(|h| h.key == TRACEPARENT)?;
    TraceContext::parse(std::str::from_utf8(header.value?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(format: &str) -> Topology {
        let text = format!("[app]\nid = \"t\"\n[[sources]]\nname = \"alerts\"\ntopic = \"am\"\nkind = \"alert\"\nformat = \"{format}\"\nenvironment = \"prod\"\nrepartition = true\n[[sinks]]\nname = \"out\"\ninput = \"alerts\"\ntopic = \"out\"\n");
        Topology::parse("t.toml", &text).unwrap()
    }

    fn group(services: &[&str], truncated: u32) -> String {
        let alerts: Vec<String> = services
            .iter()
            .map(|s| format!(r#"{{"status":"firing","labels":{{"alertname":"Down","service":"{s}","severity":"critical"}},"fingerprint":"f-{s}"}}"#))
            .collect();
        format!(
            r#"{{"version":"4","status":"firing","truncatedAlerts":{truncated},"commonLabels":{{}},"alerts":[{}]}}"#,
            alerts.join(",")
        )
    }

    #[test]
    fn a_payload_of_one_service_goes_as_it_is_keyed_by_it() {
        let t = topology("alertmanager");
        let payload = group(&["api", "api"], 0);
        let f = repartition_records(&t, 0, Some(payload.as_bytes()));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key.as_deref(), Some("api"));
        assert!(f[0].value.is_none() && !f[0].decoded);
    }

    #[test]
    fn a_payload_of_several_services_is_split_and_keeps_its_ignored_entries() {
        let t = topology("alertmanager");
        let payload = group(&["api", "web", "api"], 2);
        let f = repartition_records(&t, 0, Some(payload.as_bytes()));
        let keys: Vec<_> = f.iter().map(|f| f.key.as_deref().unwrap()).collect();
        assert_eq!(keys, ["api", "web", "api"]);
        assert!(f.iter().all(|f| f.decoded));
        let first: serde_json::Value =
            serde_json::from_slice(f[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(first["fingerprint"], "f-api");
        assert_eq!(first["environment"], "prod");
        // The truncated alerts are counted once, on the first record.
        assert_eq!(f[0].ignored.as_deref(), Some(r#"["truncatedAlerts:2"]"#));
        assert!(f[1].ignored.is_none() && f[2].ignored.is_none());
    }

    #[test]
    fn an_undecodable_payload_goes_unkeyed_as_it_is() {
        let t = topology("alertmanager");
        let f = repartition_records(&t, 0, Some(b"not json"));
        assert_eq!(f.len(), 1);
        assert!(f[0].key.is_none() && f[0].value.is_none() && !f[0].decoded);
    }
}
