//! The producer side of a run: delivery bookkeeping, and the transaction
//! calls wrapped with what librdkafka's error classes ask for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message};

use super::bounded::{self, CallError, TxnCall};
use super::RunError;
use crate::kafka::acls::{self, Denied, Operation, ResourceType};

pub type TxnProducer = BaseProducer<Deliveries>;

/// How long a transactional call may take before the run gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `transaction.timeout.ms`: short enough that a crashed instance's open
/// transaction does not block read_committed readers for long when no
/// successor with the same id comes up to abort it.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts delivery reports, keeps the first failure and the last offset
/// written to each changelog partition (the position a store reflects once
/// the transaction commits).
pub struct Deliveries {
    changelogs: HashSet<String>,
    state: Mutex<DeliveryState>,
    /// The first write the broker refused for lack of an ACL: retrying
    /// cannot help, so [`drain`] ends the run with it.
    denied: Mutex<Option<Denied>>,
}

#[derive(Default)]
pub struct DeliveryState {
    pub failed: u64,
    pub first_error: Option<String>,
    /// Next offset after the last changelog record delivered, per (topic, partition).
    pub changelog_ends: HashMap<(String, i32), i64>,
}

impl Deliveries {
    pub fn new(changelogs: impl IntoIterator<Item = String>) -> Self {
        Deliveries {
            changelogs: changelogs.into_iter().collect(),
            state: Mutex::new(DeliveryState::default()),
            denied: Mutex::new(None),
        }
    }

    fn note_denied(&self, denied: Denied) {
        let mut slot = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(denied);
    }

    fn denied(&self) -> Option<Denied> {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes what was reported since the last call.
    pub fn take(&self) -> DeliveryState {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliveryState> {
        // A panic while holding this lock cannot leave the counters half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if let Some(topic) = refused_txn_partition(fac, log_message) {
            self.note_denied(Denied::new(
                Operation::Write,
                ResourceType::Topic,
                topic,
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ));
        }
        super::log_librdkafka("producer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::repeats::client_error("producer", &error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.lock();
        match result {
            Ok(m) => {
                if self.changelogs.contains(m.topic()) {
                    let end = state
                        .changelog_ends
                        .entry((m.topic().to_owned(), m.partition()))
                        .or_insert(0);
                    *end = (*end).max(m.offset() + 1);
                }
            }
            Err((e, m)) => {
                if let Some(code) = acls::authorization_code(e) {
                    self.note_denied(acls::write_denied(code, m.topic()));
                }
                state.failed += 1;
                if state.first_error.is_none() {
                    state.first_error = Some(format!("{e} on {}[{}]", m.topic(), m.partition()));
                }
            }
        }
    }
}

/// The topic of a partition the transaction coordinator refused to add for
/// lack of Write on it. librdkafka says which topic only in this log line
/// (the transaction's error carries the code alone, and the queued records
/// fail as purged); its text is librdkafka's `rdkafka_txnmgr.c`:
/// `Failed to add partition "TOPIC" [P] to transaction: Broker: Topic authorization failed`.
/// `state-tests/security.rs` checks it against the librdkafka Sluice builds with.
fn refused_txn_partition<'m>(fac: &str, message: &'m str) -> Option<&'m str> {
    if fac != "ADDPARTS" || !message.ends_with("Topic authorization failed") {
        return None;
    }
    // librdkafka puts the broker's name first: `TxnCoordinator/1: Failed ...`.
    const START: &str = "Failed to add partition \"";
    let rest = &message[message.find(START)? + START.len()..];
    rest.split_once('"').map(|(topic, _)| topic)
}

/// Producer properties Sluice picks unless `[kafka.properties]` sets them.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Every commit sends what lingers (`send_lingering`), so a longer
    // linger delays no intent past its commit; it only makes fewer,
    // larger batches between commits (about 12% less CPU per event
    // than 5 ms in `sluice bench run`, the same latency p99).
    ("linger.ms", "25"),
    ("compression.type", "lz4"),
    // Backpressure instead of buffering up to librdkafka's default 1 GiB.
    ("queue.buffering.max.kbytes", "65536"),
];

/// The producer's properties: the topology's, Sluice's defaults where it
/// sets none, and what exactly-once and co-partitioning require.
fn producer_config(base: &ClientConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut config = base.clone();
    for (name, value) in PRODUCER_DEFAULTS {
        if config.get(name).is_none() {
            config.set(*name, *value);
        }
    }
    config
        .set("enable.idempotence", "true")
        // Keys land on the partitions the Java clients (and Kafka Streams)
        // would pick, which `query::partition_of` also assumes.
        .set("partitioner", "murmur2_random");
    if let Some(id) = transactional_id {
        let timeout_ms = TRANSACTION_TIMEOUT.as_millis().to_string();
        config
            .set("transactional.id", id)
            .set("transaction.timeout.ms", &timeout_ms);
    }
    config
}

/// Builds the producer; transactional when `transactional_id` is given.
pub fn create(
    base: &ClientConfig,
    transactional_id: Option<&str>,
    changelogs: impl IntoIterator<Item = String>,
) -> Result<Arc<TxnProducer>, RunError> {
    let config = producer_config(base, transactional_id);
    let producer: Arc<TxnProducer> = Arc::new(
        config
            .create_with_context(Deliveries::new(changelogs))
            .map_err(|e| RunError::kafka("create the producer", e))?,
    );
    if let Some(id) = transactional_id {
        retry_retriable(|| {
            bounded::call(&producer, TxnCall::Init, |p| {
                p.init_transactions(CALL_TIMEOUT)
            })
        })
        .map_err(|e| init_refused(e, id))?;
    }
    Ok(producer)
}

/// What a failed `init_transactions` means: a missing ACL (which says
/// which), a fence, or a failure to retry with a new producer.
fn init_refused(error: CallError, id: &str) -> RunError {
    let CallError::Kafka(e) = error else {
        return RunError::ProducerFatal(error.to_string());
    };
    match acls::authorization_code(&e) {
        Some(code @ RDKafkaErrorCode::ClusterAuthorizationFailed) => {
            acls::write_denied(code, id).into()
        }
        Some(code) => Denied::new(Operation::Write, ResourceType::TransactionalId, id, code).into(),
        None => classify(e, "initialize transactions"),
    }
}

/// Sends, serving delivery reports while the local queue is full.
pub fn send<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits until every message has its delivery report served. rdkafka's own
/// `flush` polls in 100 ms slices, which would put 100 ms on every commit.
/// No deadline of its own: librdkafka reports every message by
/// `message.timeout.ms` (delivered or failed), and a broker outage must not
/// end the run; a failed delivery then aborts or rewinds.
/// A write the broker refused for lack of an ACL ends the run here.
pub fn drain(producer: &TxnProducer) -> Result<(), RunError> {
    let mut next_note = Instant::now() + CALL_TIMEOUT;
    loop {
        if let Some(denied) = producer.context().denied() {
            return Err(denied.into());
        }
        if Instant::now() > next_note {
            tracing::warn!(
                in_flight = producer.in_flight_count(),
                "deliveries are slow (is the broker away?); still waiting"
            );
            next_note = Instant::now() + CALL_TIMEOUT;
        }
        let delivered = send_lingering(producer);
        serve_ready(producer);
        if delivered {
            break;
        }
    }
    match producer.context().denied() {
        Some(denied) => Err(denied.into()),
        None => Ok(()),
    }
}

/// Serves every event that is ready, without waiting: a poll with no time
/// to wait serves one event, and there is a delivery report per partition
/// and produce request.
fn serve_ready(producer: &TxnProducer) {
    loop {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() >= before {
            return;
        }
    }
}

/// Has the broker threads send what `linger.ms` still holds back, and waits
/// up to a millisecond for the messages in flight; true once every message
/// is delivered and its report served. A commit waits for every record, so
/// batching longer only delays it: the changelog records, produced as the
/// commit starts, waited the whole linger.
///
/// librdkafka ignores `linger.ms` while a flush runs; rust-rdkafka's
/// `flush` calls it with no time to wait, and the broker threads may not
/// wake before it returns. The delivery reports are events here, which only
/// a poll serves, so the wait runs out while any is due. The end is the
/// flush's answer, not the queue's length: that counts librdkafka's log
/// lines too, and with its debug logging on, each flush logs one.
fn send_lingering(producer: &TxnProducer) -> bool {
    // SAFETY: the handle is valid while `producer` lives; rd_kafka_flush is
    // thread-safe and only wakes broker threads and waits.
    let answer = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), 1) };
    answer == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}

/// Aborts the open transaction. Delivery reports are served first: librdkafka
/// waits for them inside the abort, and nothing else would serve them.
/// (Purging the queue instead leaves sequence gaps that fail the next transaction.)
pub fn abort(producer: &Arc<TxnProducer>) -> Result<(), RunError> {
    drain(producer)?;
    retry_retriable(|| {
        bounded::call(producer, TxnCall::Abort, |p| {
            p.abort_transaction(CALL_TIMEOUT)
        })
    })
    .map_err(|e| classify_call(e, "abort the transaction"))
}

/// Calls `f` again while librdkafka says the error is retriable.
pub fn retry_retriable(mut f: impl FnMut() -> Result<(), CallError>) -> Result<(), CallError> {
    let retry_until = Instant::now() + CALL_TIMEOUT;
    let first = f();
    retry_retriable_after(first, retry_until, f)
}

/// [`retry_retriable`] for a call whose first answer is already in (a call
/// started earlier, see `bounded::start`): retries until `retry_until`,
/// [`CALL_TIMEOUT`] after that first call started.
pub fn retry_retriable_after(
    first: Result<(), CallError>,
    retry_until: Instant,
    mut f: impl FnMut() -> Result<(), CallError>,
) -> Result<(), CallError> {
    let mut backoff = Duration::from_millis(10);
    let mut answer = first;
    loop {
        match answer {
            Err(CallError::Kafka(KafkaError::Transaction(e)))
                if e.is_retriable() && Instant::now() < retry_until =>
            {
                tracing::debug!(error = %e, "retriable transaction error; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
                answer = f();
            }
            other => return other,
        }
    }
}

/// What a failed call means for the run: the one error class of the loop's
/// commits, aborts and output.
#[derive(Debug, thiserror::Error)]
pub enum TxnFailure {
    /// Abort, rewind to the committed offsets, restore state, go on.
    #[error("{0}")]
    Abortable(String),
    /// Another instance took over our transactional id: stop writing.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The producer is unusable: drop it and build a new one.
    #[error("fatal: {0}")]
    Fatal(String),
    /// A call on the producer never returned (see `bounded`): build a new
    /// one, as for a fatal error.
    #[error("stuck: {0}")]
    Stuck(String),
}

impl TxnFailure {
    /// A failure producing output or committing offsets: the open
    /// transaction (or batch) is abandoned and the run rewinds.
    pub fn abortable(error: impl std::fmt::Display) -> Self {
        TxnFailure::Abortable(error.to_string())
    }
}

impl From<KafkaError> for TxnFailure {
    fn from(error: KafkaError) -> Self {
        failure_class(&error)
    }
}

impl From<CallError> for TxnFailure {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Kafka(e) => failure_class(&e),
            stuck => TxnFailure::Stuck(stuck.to_string()),
        }
    }
}

/// Sorts an error into librdkafka's documented classes.
pub fn failure_class(error: &KafkaError) -> TxnFailure {
    let text = error.to_string();
    match error {
        KafkaError::Transaction(e) if is_fencing(e.code()) => TxnFailure::Fenced(text),
        KafkaError::Transaction(e) if e.is_fatal() => TxnFailure::Fatal(text),
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnFailure::Abortable(text),
        _ => match error.rdkafka_error_code() {
            Some(code) if is_fencing(code) => TxnFailure::Fenced(text),
            _ => TxnFailure::Fatal(text),
        },
    }
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::FencedInstanceId
    )
}

/// [`classify`] for a call made through `bounded`.
pub fn classify_call(error: CallError, what: &'static str) -> RunError {
    match error {
        CallError::Kafka(e) => classify(e, what),
        stuck => RunError::ProducerFatal(stuck.to_string()),
    }
}

/// The error a failed call becomes when it cannot be handled in place.
pub fn classify(error: KafkaError, what: &'static str) -> RunError {
    match failure_class(&error) {
        TxnFailure::Fenced(reason) => RunError::Fenced(reason),
        _ => RunError::kafka(what, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topologys_producer_properties_win_over_sluices_defaults() {
        let mut base = ClientConfig::new();
        base.set("compression.type", "zstd").set("linger.ms", "5");
        let config = producer_config(&base, Some("app-0"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("65536"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("transactional.id"), Some("app-0"));
        let plain = producer_config(&ClientConfig::new(), None);
        assert_eq!(plain.get("compression.type"), Some("lz4"));
        assert_eq!(plain.get("linger.ms"), Some("25"));
        assert_eq!(plain.get("transactional.id"), None);
    }

    #[test]
    fn a_refused_partition_is_read_from_librdkafkas_log_line() {
        let line = r#"TxnCoordinator/1: Failed to add partition "app-dedup-changelog" [0] to transaction: Broker: Topic authorization failed"#;
        assert_eq!(
            refused_txn_partition("ADDPARTS", line),
            Some("app-dedup-changelog")
        );
        assert_eq!(refused_txn_partition("TXNERR", line), None);
        let other = r#"TxnCoordinator/1: Failed to add partition "t" [0] to transaction: Broker: Not coordinator"#;
        assert_eq!(refused_txn_partition("ADDPARTS", other), None);
    }
}
