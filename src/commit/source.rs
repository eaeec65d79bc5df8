//! Where intents come from: a Kafka topic (read_committed, the committer's
//! own consumer group, offsets committed only after the batch was pushed),
//! a JSON Lines file in the replay output format, or a channel (benchmarks).
//!
//! Delivery guarantee: at least once. An offset is committed only after
//! every intent up to it was pushed, held or dead-lettered; a crash before
//! that redelivers them, and the `Sluice-Intent` trailers turn the
//! redelivery into no-ops.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Deserialize;

use super::batch::Delivery;
use crate::record::{Action, Intent, TraceContext, TRACEPARENT};
use crate::replay::MAX_LINE_BYTES;
use crate::topology::Format;

/// A source that failed; nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What the next call to [`IntentSource::next`] found.
pub enum Next {
    Intent(Delivery),
    /// Nothing arrived before the deadline.
    Timeout,
    /// The input is exhausted (files and channels only).
    End,
}

pub trait IntentSource {
    /// The next intent, waiting at most until `deadline` (forever if `None`,
    /// though sources return `Timeout` now and then so that a stop request is seen).
    fn next(&mut self, deadline: Option<Instant>) -> Result<Next, SourceError>;
    /// Acknowledges every intent returned so far.
    fn commit(&mut self) -> Result<(), SourceError>;
    /// Whether intents can arrive at all yet (Kafka: partitions are
    /// assigned); idling counts only from then on.
    fn ready(&self) -> bool {
        true
    }
}

/// One line of replay output.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    key: Option<String>,
    value: Box<serde_json::value::RawValue>,
}

/// Reads the lines of one topic from a replay output file (`-` for stdin);
/// other topics (the replay's dead letters) are skipped.
pub struct FileSource {
    lines: Box<dyn BufRead>,
    path: String,
    topic: String,
    line_no: u64,
    pub skipped_lines: u64,
}

impl FileSource {
    pub fn new(lines: Box<dyn BufRead>, path: String, topic: String) -> FileSource {
        FileSource {
            lines,
            path,
            topic,
            line_no: 0,
            skipped_lines: 0,
        }
    }
}

impl IntentSource for FileSource {
    fn next(&mut self, _deadline: Option<Instant>) -> Result<Next, SourceError> {
        let mut buf = String::new();
        loop {
            buf.clear();
            // Bounded, so that a file without line breaks cannot exhaust memory.
            let n = (&mut self.lines)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_line(&mut buf)
                .map_err(|cause| SourceError::Io {
                    path: self.path.clone(),
                    cause,
                })?;
            if n == 0 {
                if self.skipped_lines > 0 {
                    tracing::info!(lines = self.skipped_lines, topic = %self.topic, "lines of other topics skipped");
                }
                return Ok(Next::End);
            }
            self.line_no += 1;
            if buf.len() > MAX_LINE_BYTES {
                return Err(SourceError::Io {
                    path: self.path.clone(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "line {} is longer than {MAX_LINE_BYTES} bytes",
                            self.line_no
                        ),
                    ),
                });
            }
            let text = buf.trim_end();
            if text.is_empty() {
                continue;
            }
            let origin = format!("{}:{}", self.path, self.line_no);
            let line = if crate::replay::is_array_line(text) {
                Err(())
            } else {
                serde_json::from_str::<Line<'_>>(text).map_err(drop)
            };
            let delivery = match line {
                Ok(line) if line.topic != self.topic => {
                    self.skipped_lines += 1;
                    continue;
                }
                Ok(line) => Delivery {
                    value: line.value.get().to_owned(),
                    key: line.key,
                    ts: line.ts,
                    received: Instant::now(),
                    origin,
                    trace: None,
                },
                // Not a replay line at all: a dead letter, with the line as its value.
                Err(_) => Delivery {
                    value: text.to_owned(),
                    key: None,
                    ts: 0,
                    received: Instant::now(),
                    origin,
                    trace: None,
                },
            };
            return Ok(Next::Intent(delivery));
        }
    }

    /// A file has no offsets to commit: a rerun reads it again, and the
    /// trailers make that a no-op.
    fn commit(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Intents from a channel, for the benchmark.
pub struct ChannelSource(pub Receiver<Delivery>);

impl IntentSource for ChannelSource {
    fn next(&mut self, deadline: Option<Instant>) -> Result<Next, SourceError> {
        let wait = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        Ok(match self.0.recv_timeout(wait) {
            Ok(d) => Next::Intent(d),
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => Next::End,
        })
    }

    fn commit(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// The longest single poll, so that stop requests are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Intents from a Kafka topic.
pub struct KafkaSource {
    consumer: BaseConsumer,
    topic: String,
    format: Format,
    /// Next offset to commit per partition (last delivered + 1).
    pending: HashMap<i32, i64>,
}

impl KafkaSource {
    /// Subscribes `group` to `topic`, reading only committed transactions.
    pub fn new(
        mut config: ClientConfig,
        group: &str,
        topic: &str,
        format: Format,
    ) -> Result<KafkaSource, SourceError> {
        let consumer: BaseConsumer = config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSource {
            consumer,
            topic: topic.to_owned(),
            format,
            pending: HashMap::new(),
        })
    }
}

impl IntentSource for KafkaSource {
    fn next(&mut self, deadline: Option<Instant>) -> Result<Next, SourceError> {
        let wait = deadline.map_or(POLL_SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(POLL_SLICE)
        });
        let Some(result) = self.consumer.poll(wait) else {
            return Ok(Next::Timeout);
        };
        let msg = match result {
            Ok(m) => m,
            Err(e) => {
                // librdkafka reports transient broker trouble here and recovers by itself.
                tracing::warn!(error = %e, "kafka consumer error");
                return Ok(Next::Timeout);
            }
        };
        self.pending.insert(msg.partition(), msg.offset() + 1);
        let payload = msg.payload().unwrap_or_default();
        let value = match self.format {
            // Not decodable: kept as text, it becomes a dead letter.
            Format::Protobuf => protobuf_to_json(payload)
                .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned()),
            // The config only takes json or protobuf for intents.
            _ => String::from_utf8_lossy(payload).into_owned(),
        };
        Ok(Next::Intent(Delivery {
            value,
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            ts: msg.timestamp().to_millis().map_or(0, |t| t.max(0) as u64),
            received: Instant::now(),
            origin: format!("{}/{}@{}", self.topic, msg.partition(), msg.offset()),
            trace: traceparent(&msg),
        }))
    }

    fn ready(&self) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    fn commit(&mut self) -> Result<(), SourceError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &self.pending {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&list, CommitMode::Sync)?;
        self.pending.clear();
        Ok(())
    }
}

/// A `sluice.v1.DeploymentIntent` as the intent JSON the committer checks.
fn protobuf_to_json(bytes: &[u8]) -> Option<String> {
    use crate::proto::{deployment_intent, DeploymentIntent};
    use prost::Message as _;
    let m = DeploymentIntent::decode(bytes).ok()?;
    let action = match deployment_intent::Action::try_from(m.action).ok()? {
        deployment_intent::Action::Deploy => Action::Deploy,
        deployment_intent::Action::Hold => Action::Hold,
        deployment_intent::Action::Rollback => Action::Rollback,
        deployment_intent::Action::Unspecified => return None,
    };
    let intent = Intent {
        action,
        service: m.service,
        environment: m.environment,
        image: m.image,
        previous_image: m.previous_image,
        reason: m.reason,
        reason_code: m.reason_code,
        intent_id: m.intent_id,
        caused_by: m.caused_by.iter().map(crate::proto::origin_of).collect(),
    };
    serde_json::to_string(&intent).ok()
}

/// The W3C trace context a record carries in its `traceparent` header.
fn traceparent(msg: &impl Message) -> Option<TraceContext> {
    let headers = msg.headers()?;
    let header = headers.iter().find(|h| h.key == TRACEPARENT)?;
    TraceContext::parse(std::str::from_utf8(header.value?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_intents_read_as_json_intents() {
        let intent = Intent {
            action: Action::Rollback,
            service: "api".into(),
            environment: "prod".into(),
            image: "api:v1".into(),
            previous_image: Some("api:v2".into()),
            reason: "alert".into(),
            reason_code: "rollback_alert".into(),
            intent_id: "id-1".into(),
            caused_by: vec![crate::record::Origin::line(9)],
        };
        let bytes = crate::proto::encode_intent(&intent, 42);
        let json = protobuf_to_json(&bytes).unwrap();
        assert_eq!(serde_json::from_str::<Intent>(&json).unwrap(), intent);
        assert!(protobuf_to_json(b"\xff\xff").is_none());
    }

    #[test]
    fn a_line_given_as_an_array_is_a_dead_letter_not_an_intent() {
        let text = "[\"deploy-intents\", 5, null, {\"intent_id\": \"i\"}]\n\
                    {\"topic\":\"deploy-intents\",\"ts\":5,\"value\":{\"intent_id\":\"i\"}}\n";
        let mut source = FileSource::new(
            Box::new(text.as_bytes()),
            "in.jsonl".into(),
            "deploy-intents".into(),
        );
        let mut values = Vec::new();
        while let Ok(Next::Intent(d)) = source.next(None) {
            values.push((d.ts, d.value));
        }
        assert_eq!(
            values,
            [
                (0, text.lines().next().unwrap_or_default().to_owned()),
                (5, r#"{"intent_id":"i"}"#.to_owned()),
            ]
        );
    }
}
