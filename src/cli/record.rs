//! `sluice record`: a slice of real topics in the replay format.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use sluice::kafka::record::{record, RecordOptions};
use sluice::topology::Topology;

#[derive(clap::Args)]
pub struct RecordArgs {
    /// Bootstrap brokers; default: the topology's [kafka] brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Topics to record, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    /// First timestamp to record: ms since the epoch, RFC 3339, `now` or `-1h`.
    #[arg(long)]
    from: String,
    /// Last timestamp to record (inclusive); default: what the topics hold now.
    #[arg(long, default_value = "now")]
    to: String,
    /// Where to write the slice, `-` for stdout.
    #[arg(long, default_value = "-")]
    output: String,
    /// A topology: its [kafka] client settings and the formats of its sources.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Seconds to wait for the cluster on each call.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

pub fn run(args: RecordArgs) -> Result<ExitCode> {
    let topo = args.topology.as_deref().map(Topology::load).transpose()?;
    let kafka = topo.as_ref().map(|t| t.kafka.clone()).unwrap_or_default();
    let brokers = args
        .brokers
        .or_else(|| kafka.brokers.clone())
        .context("no brokers: pass --brokers or set brokers in the topology's [kafka] table")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let from_ms = sluice::kafka::parse_time(&args.from, now)
        .map_err(anyhow::Error::msg)
        .context("--from")?;
    let to_ms = sluice::kafka::parse_time(&args.to, now)
        .map_err(anyhow::Error::msg)
        .context("--to")?;
    if to_ms < from_ms {
        bail!("--to ({to_ms}) is before --from ({from_ms})");
    }
    let config = sluice::kafka::client_config(&kafka, &brokers)?;
    let opts = RecordOptions {
        topics: args.topics,
        from_ms,
        to_ms,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let mut out = super::open_output(&args.output)?;
    let n = record(&config, topo.as_ref(), &opts, &mut out)?;
    eprintln!(
        "recorded {n} records from {} into {}",
        opts.topics.join(","),
        args.output
    );
    Ok(ExitCode::SUCCESS)
}
