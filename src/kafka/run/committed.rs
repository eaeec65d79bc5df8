//! The group's committed offsets, which a run reads when tasks open and
//! when it rewinds.
//!
//! librdkafka sends the OffsetFetch through its group coordinator, and a
//! client can stay stuck looking for a coordinator that went away (a broker
//! restart; confluentinc/librdkafka#5511, and the open PR #3847 "re-query
//! coordinator to avoid getting stuck"): `rd_kafka_committed` then times out
//! call after call while the broker is back and serving everyone else. The
//! suite saw both processing threads of a run stuck so for three minutes
//! after a restart. So a fetch that times out is asked again of a new
//! client of the same group, which looks the coordinator up afresh; it never
//! subscribes, so it never joins the group nor fences a member
//! (`clients::create_offsets_reader`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::clients;
use super::consumer::Shared;
use super::producer::CALL_TIMEOUT;
use super::rebalance::RunContext;
use super::RunError;

/// How long the new client is given: it must find the coordinator first.
const FRESH_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The committed offsets of `partitions`, retried through an outage as any
/// call of the run is (see [`super::retry_kafka`]).
pub(super) fn fetch(
    shared: &Shared,
    consumer: &BaseConsumer<RunContext>,
    partitions: &TopicPartitionList,
) -> Result<TopicPartitionList, RunError> {
    super::retry_kafka("fetch the committed offsets", &shared.stop, || {
        match ask(consumer, partitions) {
            Err(e) if is_timeout(&e) => {
                tracing::warn!(error = %e, "fetching the committed offsets timed out; asking a new client of the group");
                let answer = ask_fresh_client(shared, partitions);
                shared.metrics.offsets_from_new_client(answer.is_ok());
                answer
            }
            answer => answer,
        }
    })
}

fn ask(
    consumer: &BaseConsumer<RunContext>,
    partitions: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    if crate::fault::reached("consumer.committed") == Some(crate::fault::Fault::Fail) {
        // What a stuck coordinator lookup answers.
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::OperationTimedOut,
        ));
    }
    consumer.committed_offsets(partitions.clone(), CALL_TIMEOUT)
}

fn is_timeout(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut)
    )
}

fn ask_fresh_client(
    shared: &Shared,
    partitions: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    clients::create_offsets_reader(shared)?
        .committed_offsets(partitions.clone(), FRESH_CLIENT_TIMEOUT)
}
