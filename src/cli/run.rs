//! `sluice run`: argument handling and signals for the live runtime.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use sluice::engine::EngineOptions;
use sluice::kafka::run::state_http::{StateQuerying, StateService};
use sluice::kafka::run::{self, ClockMode, RunError, RunOptions};
use sluice::topology::kafka::Guarantee;
use sluice::topology::Topology;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Topology file.
    topology: PathBuf,
    /// Bootstrap brokers; default: the topology's [kafka] brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Where tasks keep their RocksDB stores (`<dir>/<app.id>/task-<n>`).
    #[arg(long, default_value = "sluice-state")]
    state_dir: PathBuf,
    /// `wall`: system time, timers fire at their deadline by themselves.
    /// `event`: stream time per task, as `sluice replay` does.
    #[arg(long, value_enum, default_value = "wall")]
    clock: ClockMode,
    /// A stable name for this instance: static group membership (a restart
    /// resumes without a rebalance) and the transactional id's suffix.
    /// Default: an id kept in the state directory.
    #[arg(long)]
    instance_id: Option<String>,
    /// Override the topology's processing_guarantee.
    #[arg(long, value_parser = parse_guarantee)]
    guarantee: Option<Guarantee>,
    /// Override the topology's commit_interval, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    commit_interval_ms: Option<u64>,
    /// Override the topology's max_task_idle (`--clock event`: how long a
    /// task waits for an input that is caught up but empty), e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_task_idle: Option<Duration>,
    /// Exit once no record has arrived for this long and all is committed
    /// (catch-up jobs, tests and benchmarks), e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    exit_after_idle: Option<Duration>,
    /// Input values larger than this go to the dead-letter topic unparsed.
    #[arg(long, default_value_t = 256 * 1024)]
    max_value_bytes: usize,
    /// One budget for the input records buffered by all tasks, in bytes:
    /// each input partition may buffer its share, then its fetching pauses.
    #[arg(long, default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_buffer_bytes: u64,
    /// Processing threads (Kafka Streams' num.stream.threads): each is a
    /// member of the group with its own transactional producer, and the
    /// tasks are spread over them. Default: the number of cores; never more
    /// than the tasks (input partitions).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Write the run's summary as JSON to this file when it ends.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    #[command(flatten)]
    telemetry: super::observe::TelemetryArgs,
    /// The address other instances reach this one's --metrics-addr listener
    /// at, to forward state queries (`GET /v1/state/SERVICE/ENVIRONMENT`)
    /// to the owner of the key's partition. Default: the bound address,
    /// unless it is a wildcard (0.0.0.0), which needs this.
    #[arg(long, value_name = "HOST:PORT")]
    advertise_addr: Option<String>,
}

/// Where other instances reach this one: `--advertise-addr`, else the
/// listener's bound address when it names a host.
fn advertised(given: Option<&str>, bound: std::net::SocketAddr) -> Result<String> {
    match given {
        Some(a) => Ok(a.to_owned()),
        None if bound.ip().is_unspecified() => anyhow::bail!(
            "--metrics-addr {bound} listens on every interface: pass --advertise-addr HOST:PORT, the address other instances reach this one at"
        ),
        None => Ok(bound.to_string()),
    }
}

pub(super) fn parse_guarantee(text: &str) -> Result<Guarantee, String> {
    match text {
        "exactly_once" => Ok(Guarantee::ExactlyOnce),
        "at_least_once" => Ok(Guarantee::AtLeastOnce),
        _ => Err("use exactly_once or at_least_once".into()),
    }
}

/// One processing thread per core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    // Only an atomic store: safe in a signal handler.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn run_live(args: RunArgs) -> Result<ExitCode> {
    let topo = Arc::new(Topology::load(&args.topology)?);
    let brokers = args
        .brokers
        .or_else(|| topo.kafka.brokers.clone())
        .context("no brokers: pass --brokers or set brokers in the topology's [kafka] table")?;
    let service = StateService::new();
    let telemetry = args.telemetry.start("run", Some(service.router()))?;
    let observe = run::Observe::from_telemetry(&telemetry, args.telemetry.metrics_on());
    let state_query = match telemetry.bound_address() {
        None => None,
        Some(bound) => Some(StateQuerying {
            service,
            advertise: advertised(args.advertise_addr.as_deref(), bound)?,
        }),
    };
    let opts = RunOptions {
        observe,
        state_query,
        brokers,
        state_dir: args.state_dir,
        clock: args.clock,
        instance_id: args.instance_id,
        guarantee: args.guarantee.unwrap_or(topo.kafka.guarantee),
        commit_interval: args
            .commit_interval_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| Duration::from_millis(topo.kafka.commit_interval.as_ms())),
        exit_after_idle: args.exit_after_idle,
        max_task_idle: args.max_task_idle.unwrap_or_else(|| {
            Duration::from_millis(topo.kafka.max_task_idle.map_or(0, |d| d.as_ms()))
        }),
        max_value_bytes: args.max_value_bytes,
        threads: args.threads.map_or_else(default_threads, usize::from),
        max_buffer_bytes: usize::try_from(args.max_buffer_bytes).unwrap_or(usize::MAX),
        engine: EngineOptions::default(),
    };
    install_signal_handlers();
    let result = run::run(topo, opts, &STOP);
    telemetry.shutdown();
    match result {
        Ok(summary) => {
            eprintln!(
                "processed {} records: {} output records, {} dead letters, {} commits, {} aborts, {} restored records",
                summary.processed,
                summary.records,
                summary.dead_letters,
                summary.commits,
                summary.aborts,
                summary.restored_records
            );
            if summary.enforced_waits > 0 {
                eprintln!(
                    "{} times a task stopped waiting for an empty input (max_task_idle): what that input received next was processed late",
                    summary.enforced_waits
                );
            }
            if let Some(path) = args.stats_json {
                let mut json = serde_json::to_value(&summary)?;
                json["peak_rss_bytes"] = crate::cli::bench::peak_rss_bytes().into();
                json["cpu_seconds"] = sluice::telemetry::process::cpu_seconds().into();
                std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ RunError::Fenced(_)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}
