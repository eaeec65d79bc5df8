//! What the engine gets from an input record: its value decoded to JSON
//! text, or a refusal shaped as a dead letter; and the service key a
//! repartitioned record is keyed by.

use std::borrow::Cow;

use rdkafka::message::{Message, OwnedMessage};
use serde_json::value::RawValue;

use crate::engine::{DeadLetter, Output};
use crate::record::Kind;
use crate::topology::{Format, Topology};

/// The service a repartitioned record belongs to, read from its value.
pub(super) fn service_key(topo: &Topology, source: usize, value: Option<&[u8]>) -> Option<String> {
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
        None => Ok(String::from_utf8_lossy(bytes)),
    }
}
