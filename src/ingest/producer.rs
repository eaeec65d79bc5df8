//! The gateway's Kafka producer: idempotent, acks=all, and every send
//! bounded by the delivery timeout, so that a request is answered 202 only
//! once the broker has the record, and 503 when it cannot within the bound.
//!
//! `FutureProducer` enqueues without blocking (a full queue is an immediate
//! error) and delivers its reports on librdkafka's own polling thread, so no
//! tokio worker ever waits on the broker; the calls that do block (metadata,
//! flush) run on the blocking pool.

use crate::telemetry::Health;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::acls;
use crate::topology::kafka::{KafkaConfig, SecretError};

/// The record the gateway writes for one accepted webhook.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    /// The service of the first decoded record, if any.
    pub key: Option<&'a str>,
    /// The exact bytes received.
    pub body: &'a [u8],
    pub received_at_ms: i64,
    pub headers: Vec<(&'static str, &'a str)>,
    /// Write it to every partition of the topic (a control command about a
    /// whole environment: every task gates some of its services).
    pub every_partition: bool,
}

/// Why Kafka did not take a record.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Not within the bound (an outage, a full queue): the sender should retry.
    #[error("kafka did not acknowledge the record: {0}")]
    Retry(String),
    /// The record can never be stored as it is (too large for the cluster,
    /// a topic that does not exist or may not be written): a retry would
    /// fail the same way.
    #[error("kafka refuses the record: {0}")]
    Refused(String),
    /// The record is larger than the broker or topic takes.
    #[error("kafka refuses a record this large: {0}")]
    TooLarge(String),
}

impl Unavailable {
    /// What a refusal of a record for `topic` means for its sender. A
    /// refusal for lack of an ACL names the one missing, as `sluice run`'s do.
    fn from_kafka(e: &KafkaError, topic: &str) -> Unavailable {
        use RDKafkaErrorCode as Code;
        if let Some(code) = acls::authorization_code(e) {
            return Unavailable::Refused(acls::write_denied(code, topic).to_string());
        }
        match e.rdkafka_error_code() {
            Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => {
                Unavailable::TooLarge(e.to_string())
            }
            Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::InvalidRecord) => {
                Unavailable::Refused(e.to_string())
            }
            _ => Unavailable::Retry(e.to_string()),
        }
    }
}

/// Room above the largest body for the record's headers and framing.
const RECORD_OVERHEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[from] KafkaError),
}

/// The producer and the bound on each delivery.
#[derive(Clone)]
pub struct GatewayProducer {
    producer: FutureProducer,
    delivery_timeout: Duration,
}

impl GatewayProducer {
    /// `max_body` is the largest body an endpoint accepts: the producer
    /// takes records that large (the brokers' and topics'
    /// `max.message.bytes` must too, or such a record is answered 413).
    pub fn new(
        kafka: &KafkaConfig,
        brokers: &str,
        delivery_timeout: Duration,
        max_body: usize,
    ) -> Result<GatewayProducer, ProducerError> {
        let mut config = crate::kafka::client_config(kafka, brokers)?;
        // Defaults a user may override in [kafka.properties]: a short linger
        // (webhooks are latency-bound), and a queue small enough that a long
        // outage answers 503 instead of growing memory.
        for (name, value) in [
            ("linger.ms", "2"),
            ("queue.buffering.max.kbytes", "16384"),
            ("queue.buffering.max.messages", "50000"),
        ] {
            if !kafka.properties.iter().any(|(n, _)| n == name) {
                config.set(name, value);
            }
        }
        if !kafka
            .properties
            .iter()
            .any(|(n, _)| n == "message.max.bytes")
        {
            // librdkafka's default (1,000,000) is below the default max_body.
            let largest = (max_body + RECORD_OVERHEAD).max(1_000_000);
            config.set("message.max.bytes", largest.to_string());
        }
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            )
            // The Java clients' partitioner: a key lands where `sluice run`
            // (and Kafka Streams) expect it.
            .set("partitioner", "murmur2_random");
        Ok(GatewayProducer {
            producer: config.create()?,
            delivery_timeout,
        })
    }

    /// Sends the record (to every partition when the record asks) and
    /// waits for the broker's acknowledgement of each.
    pub async fn send(&self, out: Outgoing<'_>) -> Result<(), Unavailable> {
        if !out.every_partition {
            return self.send_one(&out, None).await;
        }
        let count = self.partition_count(out.topic).await?;
        for partition in 0..count {
            self.send_one(&out, Some(partition)).await?;
        }
        Ok(())
    }

    /// The topic's partition count, from the cluster.
    async fn partition_count(&self, topic: &str) -> Result<i32, Unavailable> {
        let producer = self.producer.clone();
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
        })
        .await
        .map_err(|_| Unavailable::Retry("the metadata lookup failed".into()))?
        .map_err(|e| Unavailable::from_kafka(&e, topic))?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        match i32::try_from(count) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Unavailable::Retry(format!(
                "no partitions of {topic} known yet"
            ))),
        }
    }

    async fn send_one(
        &self,
        out: &Outgoing<'_>,
        partition: Option<i32>,
    ) -> Result<(), Unavailable> {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for &(key, value) in &out.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(out.topic)
            .payload(out.body)
            .timestamp(out.received_at_ms)
            .headers(headers);
        if let Some(key) = out.key {
            record = record.key(key);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if crate::fault::reached("ingest.send").is_some() {
            return Err(Unavailable::Retry("injected failure".into()));
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| Unavailable::from_kafka(&e, out.topic))?;
        // librdkafka fails the delivery at message.timeout.ms by itself; the
        // extra second only guards against a report that never comes.
        let bound = self.delivery_timeout + Duration::from_secs(1);
        match tokio::time::timeout(bound, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(Unavailable::from_kafka(&e, out.topic)),
            Ok(Err(_canceled)) => Err(Unavailable::Retry("the producer went away".into())),
            Err(_) => Err(Unavailable::Retry("no delivery report in time".into())),
        }
    }

    /// Whether records can be produced: the producer has not hit a fatal
    /// error (an idempotent producer that has fails every send), and the
    /// cluster answers for every topic, each with a partition and no error.
    /// `Err` says why not, naming the topic (and the ACL, when refused).
    pub async fn reachable(&self, topics: Vec<String>) -> Result<(), String> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            return Err(format!(
                "the producer has failed for good ({code:?}): {reason}"
            ));
        }
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            topics
                .iter()
                .try_for_each(|topic| topic_writable(&producer, topic))
        })
        .await
        .unwrap_or_else(|_| Err("the readiness probe failed".into()))
    }

    /// Whether the producer has failed for good (it must be restarted).
    pub fn failed(&self) -> bool {
        self.producer.client().fatal_error().is_some()
    }

    /// Waits for every queued record's report (at most `timeout`).
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

/// `/readyz`'s answer, kept up to date by a background probe: the same
/// flag the telemetry listener's `/readyz` and `sluice_ready` read.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Health>);

impl Readiness {
    pub fn new(health: Arc<Health>) -> Self {
        Readiness(health)
    }

    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    pub(super) fn set(&self, ready: bool) {
        if ready {
            self.0.set_ready();
        } else {
            self.0.set_unready("kafka cannot take records");
        }
    }

    /// Probes the cluster every `period` until `stopping` (a shutdown has
    /// begun: from then on the gateway answers unready, so that a load
    /// balancer sends no more).
    pub fn spawn_probe(
        &self,
        producer: GatewayProducer,
        topics: Vec<String>,
        period: Duration,
        stopping: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stopping);
            // The last verdict logged (none yet): said once per change, not on every probe.
            let mut said: Option<Result<(), String>> = None;
            loop {
                let reachable = tokio::select! {
                    reachable = producer.reachable(topics.clone()) => reachable,
                    () = &mut stopping => break,
                };
                me.set(reachable.is_ok());
                if said.as_ref() != Some(&reachable) {
                    match &reachable {
                        Ok(()) => tracing::info!("kafka is reachable: ready"),
                        Err(why) => tracing::warn!(%why, "kafka cannot take records: not ready"),
                    }
                    said = Some(reachable);
                }
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = &mut stopping => break,
                }
            }
            me.set(false);
        });
    }
}

/// Whether the cluster answers for `topic` with partitions and no error.
fn topic_writable(producer: &FutureProducer, topic: &str) -> Result<(), String> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(2))
        .map_err(|e| format!("no metadata for topic `{topic}`: {e}"))?;
    if md.brokers().is_empty() {
        return Err("no broker answers".into());
    }
    for t in md.topics() {
        match t.error().map(RDKafkaErrorCode::from) {
            Some(code) if acls::is_authorization(code) => {
                return Err(acls::write_denied(code, topic).to_string());
            }
            Some(code) => return Err(format!("topic `{topic}`: {code}")),
            None if t.partitions().is_empty() => {
                return Err(format!("topic `{topic}` has no partitions"))
            }
            None => {}
        }
    }
    Ok(())
}
