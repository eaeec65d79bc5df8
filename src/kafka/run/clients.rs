//! Building the run's clients: the group consumer, the restore consumer,
//! the (transactional) producer, and the instance id they are named by.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

use super::consumer::{is_end_of_partition, Shared};
use super::producer::{self, TxnProducer};
use super::rebalance::RunContext;
use super::RunError;

/// The instance id kept in the state directory, created on first use, so
/// that a restarted instance reuses its transactional id and aborts what
/// its predecessor left open.
pub fn stored_instance_id(state_root: &Path) -> Result<String, RunError> {
    let path = state_root.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RunError::Setup(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id)
        .map_err(|e| RunError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

pub(super) fn create_consumer(shared: &Shared) -> Result<BaseConsumer<RunContext>, RunError> {
    let mut config = shared.base.clone();
    config
        .set("group.id", &shared.topo.app_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // Range gives partition p of every input to the same member: co-partitioning.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // With the default (1 s) fetching pauses a whole second whenever the
        // local queue is full, which stalls a busy run.
        .set("fetch.queue.backoff.ms", "10")
        // Prefetch less than librdkafka's default (64 MiB and 100k records
        // per partition, since each has its own queue here): the task
        // buffers hold records too, and all must fit the RSS budget.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "5000")
        .set_log_level(super::librdkafka_log_level());
    if shared.opts.observe.metrics_on {
        // Consumer lag per partition, for the metrics.
        config.set("statistics.interval.ms", "5000");
    }
    if let Some(id) = &shared.opts.instance_id {
        // Static membership: a restarted instance gets its partitions back
        // without a rebalance or a session timeout.
        config.set("group.instance.id", id);
    }
    config
        .create_with_context(RunContext::new(shared.thread))
        .map_err(|e| RunError::kafka("create the consumer", e))
}

/// The restore consumer's context: logs through tracing; reaching the end
/// of a changelog is the expected outcome, not an error.
#[derive(Default)]
pub struct RestoreContext {
    /// A refused read of a changelog, for the restore to answer: librdkafka
    /// reports it on the partition's own queue, and the batch call the
    /// restore reads with (`restore/queue.rs`) hands such errors to this
    /// callback instead of returning them.
    refused: std::sync::Mutex<Option<KafkaError>>,
}

impl RestoreContext {
    /// The refusal reported since the last call, if any.
    pub fn take_refusal(&self) -> Option<KafkaError> {
        self.refused.lock().ok()?.take()
    }
}

impl ClientContext for RestoreContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("restore", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka looks up the coordinator of any group.id, but the
        // restorer only assigns and never commits: it needs no ACL on its group.
        let group_refused = error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed);
        if group_refused {
            tracing::debug!(client = "restore", error = %error, reason, "restore group not authorized (not needed)");
        } else if !is_end_of_partition(&error) {
            super::repeats::client_error("restore", &error, reason);
            if crate::kafka::acls::authorization_code(&error).is_some() {
                if let Ok(mut refused) = self.refused.lock() {
                    *refused = Some(error);
                }
            }
        }
    }
}

impl ConsumerContext for RestoreContext {}

pub(super) fn create_restorer(shared: &Shared) -> Result<BaseConsumer<RestoreContext>, RunError> {
    let mut config = shared.base.clone();
    config
        .set("group.id", format!("{}-restore", shared.topo.app_id))
        // Never joins its group; matches the main consumer so that a
        // topology's max.poll.interval.ms (at least this) suits both.
        .set("session.timeout.ms", "10000")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // A recorded position past the end means the changelog is not the
        // one the store was built from: fail, and restore from scratch.
        .set("auto.offset.reset", "error")
        .set("fetch.queue.backoff.ms", "10")
        // The end of a changelog is only known when an empty fetch returns:
        // do not let the broker hold it for the default 500 ms.
        .set("fetch.wait.max.ms", "10")
        .set("queued.max.messages.kbytes", "16384")
        .set_log_level(super::librdkafka_log_level());
    config
        .create_with_context(RestoreContext::default())
        .map_err(|e| RunError::kafka("create the restore consumer", e))
}

/// A short-lived client of the run's group that only fetches its committed
/// offsets (see `committed.rs`): it never subscribes, so it never joins the
/// group, and has no `group.instance.id`, so it fences no member.
pub(super) fn create_offsets_reader(
    shared: &Shared,
) -> Result<BaseConsumer<OffsetsContext>, KafkaError> {
    let mut config = shared.base.clone();
    config
        .set("group.id", &shared.topo.app_id)
        .set("enable.auto.commit", "false")
        // librdkafka asks for stable offsets under read_committed (KIP-447):
        // a pending transaction's offsets are waited for, as the run's own
        // consumer does.
        .set("isolation.level", "read_committed")
        .set_log_level(super::librdkafka_log_level());
    config.create_with_context(OffsetsContext)
}

/// The offsets reader's context: logs through tracing.
pub(super) struct OffsetsContext;

impl ClientContext for OffsetsContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("offsets", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::repeats::client_error("offsets", &error, reason);
    }
}

impl ConsumerContext for OffsetsContext {}

pub(super) fn new_producer(shared: &Shared) -> Result<Arc<TxnProducer>, RunError> {
    let mut config = shared.base.clone();
    config.set_log_level(super::librdkafka_log_level());
    let changelogs = shared.plan.changelog_topics().map(str::to_owned);
    producer::create(&config, shared.transactional_id().as_deref(), changelogs)
}

/// A new producer, retried while the cluster is away (a broker restart):
/// the run carries on by itself once it is back.
pub(super) fn new_producer_patiently(shared: &Shared) -> Result<Arc<TxnProducer>, RunError> {
    let mut backoff = Duration::from_millis(200);
    let give_up = Instant::now() + super::OUTAGE_PATIENCE;
    loop {
        if let Some(stranded) = super::bounded::too_many_stranded() {
            return Err(RunError::ProducerFatal(format!(
                "{stranded} transactional calls never returned (librdkafka lost its coordinator); \
                 ending the run so that a restart frees their producers"
            )));
        }
        match new_producer(shared) {
            Ok(p) => return Ok(p),
            // A fence or a refused ACL does not pass with time.
            Err(e @ (RunError::Fenced(_) | RunError::Denied(_))) => return Err(e),
            Err(e)
                if Instant::now() < give_up
                    && !shared.stop.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot build the producer yet");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
