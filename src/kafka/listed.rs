//! Topics that must exist before a command starts, given a moment to appear.
//!
//! A topic created just before Sluice starts (a deployment that applies its
//! topics and Sluice together, or a test) can be missing from the metadata
//! for a moment: the brokers learn it from the controller after the create
//! has returned, and a topic without a leader yet is listed with an error.
//! Every command that refuses a missing topic asks here first.

use std::time::{Duration, Instant};

use rdkafka::client::Client;
use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;
use rdkafka::ClientContext;

/// How long a missing topic is waited for before the command gives up.
pub const TOPIC_GRACE: Duration = Duration::from_secs(10);
const RECHECK: Duration = Duration::from_millis(500);

/// The cluster's metadata once every topic of `wanted` is listed with its
/// partitions, and the topics still missing when [`TOPIC_GRACE`] ran out or
/// `wait_more` (given the missing ones) said not to wait.
///
/// `scope` is the topic the metadata request asks about (`None`: all), as
/// the caller would have fetched it.
pub fn metadata_listing<C: ClientContext>(
    client: &Client<C>,
    scope: Option<&str>,
    wanted: &[&str],
    timeout: Duration,
    mut wait_more: impl FnMut(&[&str]) -> bool,
) -> KafkaResult<(Metadata, Vec<String>)> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let metadata = client.fetch_metadata(scope, timeout)?;
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|topic| !usable(&metadata, topic))
            .collect();
        if missing.is_empty() || started.elapsed() >= TOPIC_GRACE || !wait_more(&missing) {
            let missing = missing.into_iter().map(str::to_owned).collect();
            return Ok((metadata, missing));
        }
        if !told {
            tracing::info!(topics = ?missing, grace = ?TOPIC_GRACE, "waiting for topic(s) to appear");
            told = true;
        }
        std::thread::sleep(RECHECK);
    }
}

/// Whether `topic` is listed without error and with partitions.
fn usable(metadata: &Metadata, topic: &str) -> bool {
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}
