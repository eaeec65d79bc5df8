//! `sluice run`: the topology live on Kafka.
//!
//! Delivery guarantee: with `exactly_once` (the default) each commit is one
//! Kafka transaction holding the sink records, the dead letters, the
//! changelog records of every state change, and the consumed offsets (sent
//! with the consumer's group metadata, KIP-447). The local RocksDB stores are
//! written only after the transaction committed, together with the
//! changelog position they then reflect; an aborted transaction never
//! reaches them. With `at_least_once`, output and changelog are flushed
//! before the offsets are committed, so a crash can repeat output but never
//! lose it.
//!
//! Work is split into tasks, one per input partition number; each task owns
//! an engine, a RocksDB store under `--state-dir`, and partition `p` of every
//! changelog. The engine is the one replay uses: only the clock differs.
//! An instance runs its tasks on `--threads` processing threads, each a
//! member of the group of its own ([`threads`]).

mod bounded;
mod clients;
mod committed;
mod consumer;
pub mod directory;
mod input;
mod intake;
pub mod metrics;
mod observe;
pub mod output;
mod partitioning;
mod positions;
mod process;
pub mod producer;
mod purge;
pub mod query;
mod rebalance;
mod repeats;
mod restore;
pub mod state_http;
pub mod task;
pub mod threads;
pub mod topics;
mod transaction;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use serde::Serialize;

use crate::engine::{Engine, EngineError, EngineOptions};
use crate::state::{MemoryBackend, SharedMemory, StateError};
use crate::topology::kafka::{Guarantee, SecretError};
use crate::topology::Topology;

/// Which clock drives the operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockMode {
    /// System time; timers fire at their deadline even when no record comes.
    Wall,
    /// Per-task stream time (the largest record timestamp seen), as replay does.
    Event,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub brokers: String,
    /// Tasks keep their stores under `<state_dir>/<app.id>/task-<n>`.
    pub state_dir: PathBuf,
    pub clock: ClockMode,
    /// Static group membership and a stable transactional id; default: an
    /// id kept in the state directory.
    pub instance_id: Option<String>,
    pub guarantee: Guarantee,
    pub commit_interval: Duration,
    /// Stop once nothing has arrived for this long and all is committed.
    pub exit_after_idle: Option<Duration>,
    /// Input values above this size go to the dead-letter topic unparsed.
    pub max_value_bytes: usize,
    /// One budget, in bytes, for the input records buffered by all tasks.
    pub max_buffer_bytes: usize,
    /// Under event time, how long a task waits for an input that is caught
    /// up but empty while another has records (see `KafkaConfig`).
    pub max_task_idle: Duration,
    /// Processing threads (at least 1; no more than the tasks are used).
    pub threads: usize,
    pub engine: EngineOptions,
    /// Metrics, traces and readiness.
    pub observe: Observe,
    /// Serve `/v1/state/...` (needs the telemetry listener).
    pub state_query: Option<state_http::StateQuerying>,
}

/// Where a run reports what it does: the meter its metrics register with,
/// the tracer (off unless traces are exported), and the readiness flag of
/// `/readyz`.
#[derive(Clone)]
pub struct Observe {
    pub meter: opentelemetry::metrics::Meter,
    pub tracing: crate::telemetry::Tracing,
    pub health: Arc<crate::telemetry::Health>,
    /// Whether anyone reads the metrics (turns librdkafka's statistics on,
    /// for consumer lag).
    pub metrics_on: bool,
}

impl Observe {
    /// From a process's telemetry.
    pub fn from_telemetry(t: &crate::telemetry::Telemetry, metrics_on: bool) -> Self {
        Observe {
            meter: t.meter().clone(),
            tracing: t.tracing.clone(),
            health: Arc::clone(&t.health),
            metrics_on,
        }
    }

    /// Nothing is exported (benchmarks, tests of the library).
    pub fn off() -> Self {
        Self::from_telemetry(&crate::telemetry::Telemetry::off(), false)
    }
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("tracing", &self.tracing)
            .field("metrics_on", &self.metrics_on)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot {what}: {cause}")]
    Kafka {
        what: &'static str,
        cause: KafkaError,
    },
    #[error("{0}")]
    Setup(String),
    #[error("fenced: another instance with the same transactional id or group instance id took over, so this one stops writing ({0})")]
    Fenced(String),
    #[error("the producer failed fatally: {0}")]
    ProducerFatal(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The broker refused an operation for lack of an ACL.
    #[error(transparent)]
    Denied(#[from] crate::kafka::acls::Denied),
}

impl RunError {
    pub fn kafka(what: &'static str, cause: KafkaError) -> Self {
        RunError::Kafka { what, cause }
    }
}

/// What a run did, for the summary line and `--stats-json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunSummary {
    pub processed: u64,
    pub records: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub aborts: u64,
    pub producer_rebuilds: u64,
    pub rebalances: u64,
    pub restored_records: u64,
    pub restore_ms: u64,
    /// Changelog records a restore skipped because the store cannot hold them.
    pub restore_malformed: u64,
    /// Changelog records a restore skipped because they follow from input
    /// that was never committed (at-least-once).
    pub restore_uncommitted: u64,
    /// Waits for an empty input that ran out (`max_task_idle`): what that
    /// input received next was processed late.
    pub enforced_waits: u64,
    /// The most input buffered by the tasks at once, in bytes.
    pub max_buffered_bytes: u64,
    /// Milliseconds from the first record processed to the last commit.
    pub active_ms: u64,
    pub commit_ms_max: u64,
    /// The median and 99th percentile of the commits' durations.
    pub commit_ms_p50: f64,
    pub commit_ms_p99: f64,
    /// Processing threads that ran.
    pub threads: usize,
    /// Records processed by each thread.
    pub thread_processed: Vec<u64>,
    /// Each commit's duration in ms (the first [`COMMIT_SAMPLES`]).
    #[serde(skip)]
    pub commit_ms: Vec<u32>,
}

/// Commit durations a run keeps for its percentiles.
pub const COMMIT_SAMPLES: usize = 1_000_000;

impl RunSummary {
    /// Fills in the percentiles from the durations kept.
    pub fn finish_percentiles(&mut self) {
        let mut ms = self.commit_ms.clone();
        ms.sort_unstable();
        let pick = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let at = ((ms.len() - 1) as f64 * q).round() as usize;
            f64::from(ms[at.min(ms.len() - 1)])
        };
        self.commit_ms_p50 = pick(0.5);
        self.commit_ms_p99 = pick(0.99);
    }
}

/// librdkafka's periodic metadata refresh (see [`run`]).
const METADATA_REFRESH: &str = "topic.metadata.refresh.interval.ms";
/// How long librdkafka trusts cached metadata (see [`run`]).
const METADATA_MAX_AGE: &str = "metadata.max.age.ms";

/// Runs the topology until `stop` is set (or it has been idle long enough).
pub fn run(
    topo: Arc<Topology>,
    opts: RunOptions,
    outside_stop: &'static AtomicBool,
) -> Result<RunSummary, RunError> {
    let mut base = crate::kafka::client_config(&topo.kafka, &opts.brokers)?;
    if base.get(METADATA_REFRESH).is_none() {
        // librdkafka refreshes metadata every 5 minutes by default, and
        // right after a broker restart it can cache a topic's partitions
        // without a leader (or without partitions): a client that relies on
        // that cache then waits for the next refresh. 10 s bounds the wait
        // for one small request per client.
        base.set(METADATA_REFRESH, "10000");
        if base.get(METADATA_MAX_AGE).is_none() {
            // Its default follows the refresh (3 times it): 30 s would let
            // the cache expire during a broker outage, and a producer whose
            // topic expired holds its records unpartitioned until
            // message.timeout.ms (5 minutes without transactions). Keep
            // librdkafka's own default, 15 minutes.
            base.set(METADATA_MAX_AGE, "900000");
        }
    }
    let stores = store_names(&topo, &opts.engine)?;
    let plan = topics::Plan::new(&topo, &stores)?;
    let layout = topics::prepare(&base, &topo, &plan, outside_stop)?;
    let state_root = opts.state_dir.join(&topo.app_id);
    std::fs::create_dir_all(&state_root).map_err(|e| {
        RunError::Setup(format!(
            "cannot create state directory {}: {e}",
            state_root.display()
        ))
    })?;
    let mut opts = opts;
    // One cache budget for all tasks, not one per task.
    let per_task = opts.engine.cache_capacity / layout.tasks.max(1) as usize;
    opts.engine.cache_capacity = per_task.max(20_000);
    let threads = thread_count(opts.threads, layout.tasks);
    // One buffer budget for the instance: each thread takes its share.
    opts.max_buffer_bytes = (opts.max_buffer_bytes / threads).max(1);
    let instance = match &opts.instance_id {
        Some(id) => id.clone(),
        None => clients::stored_instance_id(&state_root)?,
    };
    tracing::info!(app = %topo.app_id, instance = %instance, tasks = layout.tasks, threads, guarantee = ?opts.guarantee, clock = ?opts.clock, "starting");
    let sinks: Vec<String> = topo.sinks.iter().map(|s| s.name.clone()).collect();
    let metrics = metrics::RunMetrics::new(&opts.observe.meter, &sinks);
    let board = Arc::new(threads::Board::new(
        threads,
        Arc::clone(&opts.observe.health),
    ));
    let directory = observe::start_directory(&base, &topo.app_id, &instance, &layout, &opts)?;
    let memory = SharedMemory::for_live_run();
    let stop = Arc::new(AtomicBool::new(
        outside_stop.load(std::sync::atomic::Ordering::SeqCst),
    ));
    let members = (0..threads)
        .map(|k| {
            let mut opts = opts.clone();
            opts.instance_id = opts.instance_id.map(|id| threads::member_name(&id, k));
            consumer::Shared {
                metrics: Arc::clone(&metrics),
                topo: Arc::clone(&topo),
                plan: plan.clone(),
                layout: layout.clone(),
                state_root: state_root.clone(),
                base: base.clone(),
                instance: threads::member_name(&instance, k),
                opts,
                memory: memory.clone(),
                stop: Arc::clone(&stop),
                thread: k,
                board: Arc::clone(&board),
                directory: directory.clone(),
            }
        })
        .collect();
    threads::run_all(members, outside_stop)
}

/// The threads a run starts: as asked, but no more than there are tasks
/// (a thread the group gives no partition to would only idle).
fn thread_count(asked: usize, tasks: i32) -> usize {
    let tasks = usize::try_from(tasks).unwrap_or(1).max(1);
    let threads = asked.clamp(1, tasks);
    if threads < asked {
        tracing::info!(
            asked,
            threads,
            "fewer processing threads than asked: one per task at most"
        );
    }
    threads
}

fn store_names(topo: &Arc<Topology>, opts: &EngineOptions) -> Result<Vec<String>, RunError> {
    let probe = Engine::open(Arc::clone(topo), Box::new(MemoryBackend::default()), opts)?;
    Ok(probe.store_names())
}

/// How long a run waits out a cluster that is away (a broker restart, a
/// network partition) before it ends with an error: Kafka Streams'
/// `task.timeout.ms` default. An outage is longer than it looks from the
/// outside: a broker's shutdown, its restart and the group's recovery add
/// up to a minute to the time it was down.
pub(crate) const OUTAGE_PATIENCE: Duration = Duration::from_secs(300);

/// Retries a Kafka call through connection trouble (a broker restart) for
/// up to [`OUTAGE_PATIENCE`], or until a stop is asked for; librdkafka
/// reconnects by itself meanwhile.
pub(crate) fn retry_kafka<T>(
    what: &'static str,
    stop: &AtomicBool,
    mut call: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, RunError> {
    let give_up = std::time::Instant::now() + OUTAGE_PATIENCE;
    let mut backoff = Duration::from_millis(100);
    loop {
        match call() {
            Ok(v) => return Ok(v),
            Err(e)
                if std::time::Instant::now() < give_up
                    && !is_permanent(&e)
                    && !stop.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                tracing::warn!(what, error = %e, retry_in = ?backoff, "kafka call failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(RunError::kafka(what, e)),
        }
    }
}

fn is_permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fenced
                | C::FencedInstanceId
                | C::ProducerFenced
                // The group moved on: a retry cannot succeed.
                | C::IllegalGeneration
                | C::UnknownMemberId
                | C::RebalanceInProgress
                | C::GroupAuthorizationFailed
                | C::TopicAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
        )
    )
}

/// librdkafka's own log lines, through tracing. Its config dumps mark
/// secret properties as sensitive and never print them.
pub(crate) fn log_librdkafka(
    client: &'static str,
    level: RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(client, fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(client, fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(client, fac, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(client, fac, "{message}"),
    }
}

/// The librdkafka log level matching what tracing lets through.
pub(crate) fn librdkafka_log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}
