//! Intents the committer refuses, with the reason: to a Kafka topic or to a
//! JSON Lines file, in the replay output format
//! (`{"topic", "ts", "key", "value": {"error", "origin", "value"}}`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;
use serde_json::value::RawValue;

use super::batch::Delivery;
use crate::replay::OutputLine;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter file {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("dead-letter topic {topic}: {cause}")]
    Kafka {
        topic: String,
        cause: rdkafka::error::KafkaError,
    },
    #[error("dead-letter topic {topic}: {count} records were not delivered")]
    Undelivered { topic: String, count: u64 },
}

pub trait DeadLetters {
    /// Queues one refused intent.
    fn send(
        &mut self,
        delivery: &Delivery,
        kind: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError>;
    /// Makes everything queued durable; called before offsets are committed.
    fn flush(&mut self) -> Result<(), DeadLetterError>;
}

#[derive(Serialize)]
struct Value<'a> {
    error: &'a str,
    /// The kind of refusal, e.g. `no_marker` or `invalid_image`.
    kind: &'a str,
    origin: &'a str,
    /// The intent as received: JSON when it was JSON, else a string.
    value: Kept<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Kept<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

fn value_json(delivery: &Delivery, kind: &str, reason: &str) -> String {
    let raw: Option<&RawValue> = serde_json::from_str(&delivery.value).ok();
    let value = Value {
        error: reason,
        kind,
        origin: &delivery.origin,
        value: raw.map_or(Kept::Text(&delivery.value), Kept::Json),
    };
    serde_json::to_string(&value).unwrap_or_default()
}

/// Appends to a JSON Lines file.
pub struct FileDeadLetters {
    out: BufWriter<File>,
    path: String,
    topic: String,
}

impl FileDeadLetters {
    pub fn open(path: &Path, topic: &str) -> Result<FileDeadLetters, DeadLetterError> {
        let shown = path.display().to_string();
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|cause| DeadLetterError::Io {
                path: shown.clone(),
                cause,
            })?;
        Ok(FileDeadLetters {
            out: BufWriter::new(file),
            path: shown,
            topic: topic.to_owned(),
        })
    }

    fn io(&self, cause: std::io::Error) -> DeadLetterError {
        DeadLetterError::Io {
            path: self.path.clone(),
            cause,
        }
    }
}

impl DeadLetters for FileDeadLetters {
    fn send(
        &mut self,
        delivery: &Delivery,
        kind: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let value = value_json(delivery, kind, reason);
        let raw: &RawValue = serde_json::from_str(&value).map_err(|e| self.io(e.into()))?;
        let line = OutputLine {
            topic: &self.topic,
            ts: delivery.ts,
            key: delivery.key.as_deref(),
            value: raw,
        };
        let text = serde_json::to_string(&line).map_err(|e| self.io(e.into()))?;
        writeln!(self.out, "{text}").map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), DeadLetterError> {
        self.out.flush().map_err(|e| self.io(e))?;
        self.out.get_ref().sync_data().map_err(|e| self.io(e))
    }
}

/// Counts records the broker did not take, so that `flush` can fail.
pub(super) struct Deliveries {
    failed: AtomicU64,
    /// What the records are, for the log: `dead letter`, `report`.
    what: &'static str,
}

impl Deliveries {
    pub(super) fn new(what: &'static str) -> Deliveries {
        Deliveries {
            failed: AtomicU64::new(0),
            what,
        }
    }

    /// How many records failed since the last call.
    pub(super) fn take_failed(&self) -> u64 {
        self.failed.swap(0, Ordering::Relaxed)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, what = self.what, "record not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces to the dead-letter topic; `flush` waits for every acknowledgement.
pub struct KafkaDeadLetters {
    producer: BaseProducer<Deliveries>,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn new(mut config: ClientConfig, topic: &str) -> Result<KafkaDeadLetters, DeadLetterError> {
        let producer = config
            .set("enable.idempotence", "true")
            .create_with_context(Deliveries::new("dead letter"))
            .map_err(|cause| DeadLetterError::Kafka {
                topic: topic.to_owned(),
                cause,
            })?;
        Ok(KafkaDeadLetters {
            producer,
            topic: topic.to_owned(),
        })
    }

    fn err(&self, cause: rdkafka::error::KafkaError) -> DeadLetterError {
        DeadLetterError::Kafka {
            topic: self.topic.clone(),
            cause,
        }
    }
}

impl DeadLetters for KafkaDeadLetters {
    fn send(
        &mut self,
        delivery: &Delivery,
        kind: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let value = value_json(delivery, kind, reason);
        let mut record = BaseRecord::to(&self.topic).payload(&value);
        if let Some(key) = &delivery.key {
            record = record.key(key);
        }
        // Waits while librdkafka's queue is full instead of failing the batch.
        crate::kafka::run::producer::send(&self.producer, record)
            .map_err(|cause| self.err(cause))?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeadLetterError> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|cause| self.err(cause))?;
        match self.producer.context().take_failed() {
            0 => Ok(()),
            n => Err(DeadLetterError::Undelivered {
                topic: self.topic.clone(),
                count: n,
            }),
        }
    }
}
