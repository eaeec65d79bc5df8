//! Where a record came from, so that a person can walk from an intent back
//! to the webhooks behind it: the input line in replay, the topic, partition
//! and offset live.
//!
//! Every record carries an [`Origin`]. Operators keep it with the records
//! they hold (debounce's pending record, throttle's delayed one, the gate's
//! parked image), and the gate turns the origins of the records an intent
//! joins into its `caused_by` list. An origin is small and cheap to clone:
//! a replay line number is stored inline (no allocation per record), a
//! Kafka position behind an `Arc`.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TraceContext;

/// Where a record came from. A struct, so that more can be carried later
/// (a trace context) without touching every place that passes one on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    pub place: Place,
}

/// The position of a record in its input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Place {
    /// Not known: records made before origins existed, or by a test.
    #[default]
    Unknown,
    /// The line of the replay input (counted from 1, as replay's errors count).
    Line(u64),
    /// A record of a Kafka topic.
    Kafka(Arc<KafkaPosition>),
}

/// A record's position in Kafka, with what the live runtime knows of it
/// besides: its timestamp (when the event happened, whatever the run's
/// clock) and its trace, so that what it causes can continue that trace and
/// measure the event-to-intent latency. Those two are kept in state but
/// not written into intents' JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KafkaPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip)]
    pub at: Option<u64>,
    #[serde(skip)]
    pub trace: Option<TraceContext>,
}

impl Origin {
    pub fn line(line: u64) -> Self {
        Origin {
            place: Place::Line(line),
        }
    }

    pub fn kafka(topic: &str, partition: i32, offset: i64) -> Self {
        Self::kafka_at(topic, partition, offset, None, None)
    }

    /// A Kafka record with its timestamp and trace.
    pub fn kafka_at(
        topic: &str,
        partition: i32,
        offset: i64,
        at: Option<u64>,
        trace: Option<TraceContext>,
    ) -> Self {
        Origin {
            place: Place::Kafka(Arc::new(KafkaPosition {
                topic: topic.to_owned(),
                partition,
                offset,
                at,
                trace,
            })),
        }
    }

    /// The trace the record belongs to, if it came with one.
    pub fn trace(&self) -> Option<&TraceContext> {
        match &self.place {
            Place::Kafka(k) => k.trace.as_ref(),
            _ => None,
        }
    }

    /// When the record's event happened (its Kafka timestamp), if known.
    pub fn event_time(&self) -> Option<u64> {
        match &self.place {
            Place::Kafka(k) => k.at,
            _ => None,
        }
    }

    pub fn is_known(&self) -> bool {
        self.place != Place::Unknown
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::Unknown => f.write_str("unknown"),
            Place::Line(n) => write!(f, "line {n}"),
            Place::Kafka(k) => write!(f, "{}/{}@{}", k.topic, k.partition, k.offset),
        }
    }
}

/// The most references an intent or a kept image carries: an intent joins a
/// handful of records (an image, a status, an alert, a command).
pub const MAX_CAUSES: usize = 6;

/// Adds `origin` to `list` unless it is unknown, already there, or the list is full.
pub fn add_cause(list: &mut Vec<Origin>, origin: &Origin) {
    if origin.is_known() && list.len() < MAX_CAUSES && !list.contains(origin) {
        list.push(origin.clone());
    }
}

/// In JSON (intents' `caused_by`): `{"line": 12}` or
/// `{"topic": "t", "partition": 0, "offset": 42}`, `null` when unknown. In
/// state (postcard): a compact tagged form.
impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return Stored::from(self).serialize(s);
        }
        match &self.place {
            Place::Unknown => s.serialize_none(),
            Place::Line(n) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("line", n)?;
                map.end()
            }
            Place::Kafka(k) => k.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return Stored::deserialize(d).map(Origin::from);
        }
        d.deserialize_any(OriginVisitor)
    }
}

/// The form kept in state. Variants are only ever appended (postcard
/// stores their index), so entries of earlier versions still decode.
#[derive(Serialize, Deserialize)]
enum Stored {
    Unknown,
    Line(u64),
    Kafka(String, i32, i64),
    /// A Kafka position with its timestamp and trace.
    KafkaAt(String, i32, i64, Option<u64>, Option<TraceContext>),
}

impl From<&Origin> for Stored {
    fn from(o: &Origin) -> Self {
        match &o.place {
            Place::Unknown => Stored::Unknown,
            Place::Line(n) => Stored::Line(*n),
            Place::Kafka(k) if k.at.is_none() && k.trace.is_none() => {
                Stored::Kafka(k.topic.clone(), k.partition, k.offset)
            }
            Place::Kafka(k) => {
                Stored::KafkaAt(k.topic.clone(), k.partition, k.offset, k.at, k.trace)
            }
        }
    }
}

impl From<Stored> for Origin {
    fn from(s: Stored) -> Self {
        match s {
            Stored::Unknown => Origin::default(),
            Stored::Line(n) => Origin::line(n),
            Stored::Kafka(topic, partition, offset) => Origin::kafka(&topic, partition, offset),
            Stored::KafkaAt(topic, partition, offset, at, trace) => {
                Origin::kafka_at(&topic, partition, offset, at, trace)
            }
        }
    }
}

struct OriginVisitor;

impl<'de> Visitor<'de> for OriginVisitor {
    type Value = Origin;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"line": N} or {"topic": T, "partition": P, "offset": O}"#)
    }

    fn visit_unit<E>(self) -> Result<Origin, E> {
        Ok(Origin::default())
    }

    fn visit_none<E>(self) -> Result<Origin, E> {
        Ok(Origin::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Origin, A::Error> {
        let (mut line, mut topic, mut partition, mut offset) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "line" => line = Some(map.next_value::<u64>()?),
                "topic" => topic = Some(map.next_value::<String>()?),
                "partition" => partition = Some(map.next_value::<i32>()?),
                "offset" => offset = Some(map.next_value::<i64>()?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        match (line, topic, partition, offset) {
            (Some(n), None, None, None) => Ok(Origin::line(n)),
            (None, Some(t), Some(p), Some(o)) => Ok(Origin::kafka(&t, p, o)),
            _ => Err(de::Error::custom(
                "a record reference is {\"line\"} or {\"topic\", \"partition\", \"offset\"}",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_state_forms_round_trip() {
        let trace = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        for origin in [
            Origin::default(),
            Origin::line(12),
            Origin::kafka("images", 3, 42),
        ] {
            let json = serde_json::to_string(&origin).unwrap();
            assert_eq!(
                serde_json::from_str::<Origin>(&json).unwrap(),
                origin,
                "{json}"
            );
        }
        for origin in [
            Origin::default(),
            Origin::line(12),
            Origin::kafka("images", 3, 42),
            Origin::kafka_at("images", 3, 42, Some(1_767_225_600_000), trace),
        ] {
            let bytes = postcard::to_stdvec(&origin).unwrap();
            assert_eq!(postcard::from_bytes::<Origin>(&bytes).unwrap(), origin);
        }
        // State keeps the time and the trace; intents' JSON leaves them out.
        let live = Origin::kafka_at("t", 0, 5, Some(9), trace);
        assert_eq!(
            serde_json::to_string(&live).unwrap(),
            r#"{"topic":"t","partition":0,"offset":5}"#
        );
        let stored: Origin = postcard::from_bytes(&postcard::to_stdvec(&live).unwrap()).unwrap();
        assert_eq!(
            (stored.event_time(), stored.trace()),
            (Some(9), trace.as_ref())
        );
        // An entry of the previous version (no time, no trace) still decodes.
        let old = postcard::to_stdvec(&Stored::Kafka("t".into(), 0, 5)).unwrap();
        assert_eq!(
            postcard::from_bytes::<Origin>(&old).unwrap(),
            Origin::kafka("t", 0, 5)
        );
        assert_eq!(
            serde_json::to_string(&Origin::line(7)).unwrap(),
            r#"{"line":7}"#
        );
        assert_eq!(
            serde_json::to_string(&Origin::kafka("t", 0, 5)).unwrap(),
            r#"{"topic":"t","partition":0,"offset":5}"#
        );
    }

    #[test]
    fn an_origin_is_small_and_a_line_needs_no_allocation() {
        assert!(std::mem::size_of::<Origin>() <= 16);
        let line = Origin::line(3);
        assert!(matches!(line.clone().place, Place::Line(3)));
    }

    #[test]
    fn causes_skip_unknown_and_repeated_origins_and_stay_bounded() {
        let mut list = Vec::new();
        add_cause(&mut list, &Origin::default());
        add_cause(&mut list, &Origin::line(1));
        add_cause(&mut list, &Origin::line(1));
        assert_eq!(list, [Origin::line(1)]);
        for n in 2..20 {
            add_cause(&mut list, &Origin::line(n));
        }
        assert_eq!(list.len(), MAX_CAUSES);
    }
}
