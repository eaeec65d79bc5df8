//! Where the engine's output goes in a live run: sink records and dead
//! letters, produced inside the open transaction.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::metrics::{RunMetrics, TxnCounts};
use super::producer::{self, TxnProducer};
use crate::engine::{DeadLetter, Output, OutputError};
use crate::record::{Payload, Record, TraceContext, TRACEPARENT};
use crate::replay::DeadLetterValue;
use crate::telemetry::trace::{Kind as SpanKind, Tracing};
use crate::topology::{Format, Sink};

/// Dead-letter values above this size keep only a prefix of the original
/// value, so that the letter itself still fits in a Kafka message.
pub const MAX_DEAD_LETTER_VALUE: usize = 64 * 1024;

/// The input record being processed, named in dead-letter headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct OutputCounts {
    pub records: u64,
    pub dead_letters: u64,
}

pub struct KafkaOutput<'a> {
    pub producer: &'a TxnProducer,
    /// Whether a transaction is open; one is begun before the first send.
    pub txn_open: &'a mut super::transaction::OpenTxn,
    pub transactional: bool,
    pub dead_letter_topic: &'a str,
    pub origin: Option<Origin<'a>>,
    pub counts: &'a mut OutputCounts,
    pub txn_counts: &'a mut TxnCounts,
    pub metrics: &'a RunMetrics,
    pub tracing: &'a Tracing,
}

impl KafkaOutput<'_> {
    fn ensure_txn(&mut self) -> Result<(), OutputError> {
        super::transaction::begin_if_none_open(self.producer, self.txn_open, self.transactional)?;
        Ok(())
    }

    fn headers(&self, letter: &DeadLetter<'_>) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "sluice.error",
                value: Some(letter.error),
            })
            .insert(Header {
                key: "sluice.node",
                value: Some(letter.node),
            });
        if let Some(o) = self.origin {
            let (partition, offset) = (o.partition.to_string(), o.offset.to_string());
            headers = headers
                .insert(Header {
                    key: "sluice.topic",
                    value: Some(o.topic),
                })
                .insert(Header {
                    key: "sluice.partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "sluice.offset",
                    value: Some(&offset),
                });
        }
        headers
    }
}

/// The dead letter's JSON value, with the original value cut to a prefix
/// (kept as a JSON string) when it is too large to carry whole.
pub fn dead_letter_value(letter: &DeadLetter<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let original = letter.value.get();
    let mut value = DeadLetterValue {
        error: letter.error,
        node: letter.node,
        topic: letter.source_topic,
        value: letter.value,
        truncated_from_bytes: None,
    };
    if original.len() <= MAX_DEAD_LETTER_VALUE {
        return serde_json::to_vec(&value);
    }
    let mut cut = MAX_DEAD_LETTER_VALUE;
    while !original.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = serde_json::value::to_raw_value(&original[..cut])?;
    value.value = &prefix;
    value.truncated_from_bytes = Some(original.len());
    serde_json::to_vec(&value)
}

/// The traces behind a sink record: an intent's causes (the first traced
/// one is the parent, the others are linked), or the record's own origin.
fn causes_traces(record: &Record) -> Vec<TraceContext> {
    match &record.payload {
        Payload::Intent(intent) => {
            let mut traces: Vec<TraceContext> = intent
                .caused_by
                .iter()
                .filter_map(|o| o.trace().copied())
                .collect();
            traces.dedup();
            traces
        }
        _ => record.origin.trace().copied().into_iter().collect(),
    }
}

/// The time of the earliest event behind an intent, if known.
pub fn earliest_cause(record: &Record) -> Option<u64> {
    match &record.payload {
        Payload::Intent(intent) => intent.caused_by.iter().filter_map(|o| o.event_time()).min(),
        _ => None,
    }
}

impl KafkaOutput<'_> {
    /// The span of a sink record in the trace of what caused it, if traced.
    fn output_span(&self, sink: &Sink, record: &Record) -> Option<crate::telemetry::trace::Span> {
        if !self.tracing.is_on() {
            return None;
        }
        let traces = causes_traces(record);
        let (parent, links) = traces.split_first()?;
        let name = match record.payload {
            Payload::Intent(_) => "sluice.run intent",
            _ => "sluice.run output",
        };
        let mut span = self
            .tracing
            .start(name, SpanKind::Producer, Some(parent), links);
        span.set_attribute("sluice.sink", sink.name.clone());
        if let Payload::Intent(i) = &record.payload {
            span.set_attribute("sluice.action", i.action.as_str());
            span.set_attribute("sluice.intent_id", i.intent_id.clone());
        }
        Some(span)
    }
}

impl Output for KafkaOutput<'_> {
    fn record(&mut self, sink: &Sink, record: &Record) -> Result<(), OutputError> {
        self.ensure_txn()?;
        let value = match (sink.format, &record.payload) {
            (Format::Protobuf, Payload::Intent(intent)) => {
                crate::proto::encode_intent(intent, record.ts)
            }
            _ => serde_json::to_vec(&record.payload.json())?,
        };
        let key = record.key.as_deref().map(str::as_bytes);
        let mut out = BaseRecord::<[u8], [u8]>::to(&sink.topic)
            .payload(&value)
            .timestamp(record.ts as i64);
        if let Some(k) = key {
            out = out.key(k);
        }
        let span = self.output_span(sink, record);
        let traceparent = span
            .as_ref()
            .and_then(|s| s.context())
            .map(|c| c.to_string());
        if let Some(tp) = &traceparent {
            out = out.headers(OwnedHeaders::new().insert(Header {
                key: TRACEPARENT,
                value: Some(tp.as_str()),
            }));
        }
        producer::send(self.producer, out)?;
        self.producer.poll(std::time::Duration::ZERO);
        self.counts.records += 1;
        self.txn_counts.sink_record(record);
        self.metrics
            .sink_record(&sink.name, record, crate::duration::now_ms());
        Ok(())
    }

    fn dead_letter(&mut self, letter: DeadLetter<'_>) -> Result<(), OutputError> {
        self.ensure_txn()?;
        let value = dead_letter_value(&letter)?;
        let headers = self.headers(&letter);
        let mut out = BaseRecord::<[u8], [u8]>::to(self.dead_letter_topic)
            .payload(&value)
            .headers(headers)
            .timestamp(letter.ts as i64);
        if let Some(k) = letter.key {
            out = out.key(k.as_bytes());
        }
        producer::send(self.producer, out)?;
        self.counts.dead_letters += 1;
        self.txn_counts.dead_letter();
        tracing::debug!(node = letter.node, error = letter.error, "dead letter");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn oversized_dead_letter_values_keep_a_prefix_and_say_so() {
        let big = format!("\"{}\"", "é".repeat(MAX_DEAD_LETTER_VALUE));
        let raw = RawValue::from_string(big.clone()).expect("json");
        let letter = DeadLetter {
            ts: 1,
            key: None,
            node: "images",
            source_topic: Some("docker-events"),
            error: "value too large",
            value: &raw,
        };
        let bytes = dead_letter_value(&letter).expect("serializes");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(v["truncated_from_bytes"], big.len());
        let kept = v["value"].as_str().expect("prefix as a string");
        assert!(kept.len() <= MAX_DEAD_LETTER_VALUE && big.starts_with(kept));
        assert_eq!(v["error"], "value too large");
    }
}
