//! `sluice record`: writes a slice of real topics in the replay format, so a
//! topology change can be tested against production traffic.
//!
//! Every partition of every topic is read from the first offset at or after
//! `--from` up to `--to` (or up to the end it had when recording began, so a
//! recording always ends), with `read_committed`, and the records are written
//! in timestamp order. Values of protobuf sources (from `--topology`) are
//! decoded to JSON; other values are written as JSON when they are JSON, and
//! as a JSON string otherwise, so that replay sends them to the dead letters
//! exactly as `sluice run` would.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::value::RawValue;

use crate::record::Kind;
use crate::replay::OutputLine;
use crate::topology::{Format, Topology};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub topics: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// How long to wait for the cluster before giving up on a call.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("kafka: {what}: {cause}")]
    Kafka {
        what: String,
        cause: rdkafka::error::KafkaError,
    },
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error("cannot write the recording: {0}")]
    Write(#[from] std::io::Error),
}

struct Recorded {
    ts: u64,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Box<RawValue>,
}

/// Protobuf-encoded topics and the kind of record they carry.
fn protobuf_topics(topology: Option<&Topology>) -> HashMap<String, Kind> {
    topology
        .map(|t| {
            t.sources
                .iter()
                .filter(|s| s.format == Format::Protobuf)
                .map(|s| (s.topic.clone(), s.kind))
                .collect()
        })
        .unwrap_or_default()
}

fn decode_value(bytes: Option<&[u8]>, protobuf: Option<Kind>) -> Box<RawValue> {
    let as_string =
        |text: &str| serde_json::value::to_raw_value(text).expect("a string serializes");
    let Some(bytes) = bytes else {
        return RawValue::from_string("null".into()).expect("null is JSON");
    };
    let decoded = match protobuf {
        Some(Kind::Image) => crate::proto::image_to_json(bytes).ok(),
        Some(Kind::Alert) => crate::proto::alert_to_json(bytes).ok(),
        _ => None,
    };
    if let Some(json) = decoded {
        return RawValue::from_string(json).expect("decoded protobuf is JSON");
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<Box<RawValue>>(text).unwrap_or_else(|_| as_string(text)),
        // Bytes that are not text are kept as lossy text: replay will refuse them as it should.
        Err(_) => as_string(&String::from_utf8_lossy(bytes)),
    }
}

/// Records the slice into `out`; returns the number of records written.
pub fn record(
    config: &ClientConfig,
    topology: Option<&Topology>,
    opts: &RecordOptions,
    out: &mut dyn Write,
) -> Result<u64, RecordError> {
    let kafka = |what: &str| {
        let what = what.to_owned();
        move |cause| RecordError::Kafka {
            what: what.clone(),
            cause,
        }
    };
    let mut config = config.clone();
    config
        .set("group.id", "sluice-record")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().map_err(kafka("creating the consumer"))?;
    let metadata = consumer
        .fetch_metadata(None, opts.timeout)
        .map_err(kafka("fetching metadata"))?;
    let mut starts = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &opts.topics {
        let meta = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .ok_or_else(|| RecordError::NoSuchTopic(topic.clone()))?;
        for p in meta.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), opts.timeout)
                .map_err(kafka("fetching watermarks"))?;
            ends.insert((topic.clone(), p.id()), high);
            starts
                .add_partition_offset(topic, p.id(), Offset::Offset(opts.from_ms as i64))
                .map_err(kafka("listing partitions"))?;
        }
    }
    let starts = consumer
        .offsets_for_times(starts, opts.timeout)
        .map_err(kafka("finding offsets for --from"))?;
    let mut assignment = TopicPartitionList::new();
    for e in starts.elements() {
        let end = ends[&(e.topic().to_owned(), e.partition())];
        // No offset at or after --from (Offset::End) means nothing to read there.
        if let Offset::Offset(start) = e.offset() {
            if start < end {
                assignment
                    .add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
                    .map_err(kafka("assigning"))?;
                continue;
            }
        }
        ends.remove(&(e.topic().to_owned(), e.partition()));
    }
    consumer
        .assign(&assignment)
        .map_err(kafka("assigning partitions"))?;
    let protobuf = protobuf_topics(topology);
    let mut records = Vec::new();
    while !ends.is_empty() {
        let Some(message) = consumer.poll(opts.timeout) else {
            continue;
        };
        let m = message.map_err(kafka("reading"))?;
        let id = (m.topic().to_owned(), m.partition());
        let ts = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
        if ts >= opts.from_ms && ts <= opts.to_ms {
            records.push(Recorded {
                ts,
                topic: id.0.clone(),
                partition: id.1,
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: decode_value(m.payload(), protobuf.get(&id.0).copied()),
            });
        }
        // Transaction markers take offsets too, so the end is reached at or past high - 1.
        if m.offset() + 1 >= ends[&id] {
            ends.remove(&id);
        }
    }
    records.sort_by(|a, b| {
        (a.ts, &a.topic, a.partition, a.offset).cmp(&(b.ts, &b.topic, b.partition, b.offset))
    });
    for r in &records {
        serde_json::to_writer(
            &mut *out,
            &OutputLine {
                topic: &r.topic,
                ts: r.ts,
                key: r.key.as_deref(),
                value: &r.value,
            },
        )
        .map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(records.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn values_are_json_when_they_can_be_and_strings_otherwise() {
        assert_eq!(decode_value(Some(br#"{"a":1}"#), None).get(), r#"{"a":1}"#);
        assert_eq!(decode_value(Some(b"not json"), None).get(), r#""not json""#);
        assert_eq!(
            decode_value(Some(&[0xff, 0x00]), None).get(),
            "\"\u{fffd}\\u0000\""
        );
        assert_eq!(decode_value(None, None).get(), "null");
        let img = crate::proto::ImagePushed {
            service: "a".into(),
            repository: "a".into(),
            tag: Some("v1".into()),
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(decode_value(Some(&img.encode_to_vec()), Some(Kind::Image)).get())
                .unwrap();
        assert_eq!(json["tag"], "v1");
    }
}
