//! `sluice acls`: the Kafka ACLs a command needs, as `kafka-acls.sh` lines or JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use sluice::commit::config::CommitConfig;
use sluice::ingest::config::IngestConfig;
use sluice::kafka::acls;
use sluice::topology::kafka::Guarantee;
use sluice::topology::Topology;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["topology", "commit", "ingest"])))]
pub struct AclsArgs {
    /// The topology `sluice run` runs.
    topology: Option<PathBuf>,
    /// A commit config instead: the ACLs of `sluice commit` reading from Kafka.
    #[arg(long, value_name = "CONFIG")]
    commit: Option<PathBuf>,
    /// An ingest config instead: the ACLs of `sluice ingest` (Write on its endpoints' topics).
    #[arg(long, value_name = "CONFIG")]
    ingest: Option<PathBuf>,
    /// The principal the command authenticates as, e.g. `User:sluice`.
    #[arg(long)]
    principal: String,
    /// For a topology: the guarantee `sluice run --guarantee` would use
    /// (default: the topology's). `at_least_once` needs no transactional id.
    #[arg(long, value_parser = super::run::parse_guarantee)]
    guarantee: Option<Guarantee>,
    /// The brokers put in the command lines; default: the config's, else `BROKERS`.
    #[arg(long)]
    brokers: Option<String>,
    /// JSON instead of command lines.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AclsArgs) -> Result<ExitCode> {
    let (set, brokers) = match (&args.topology, &args.commit, &args.ingest) {
        (Some(path), _, _) => {
            let topo = Arc::new(Topology::load(path)?);
            let guarantee = args.guarantee.unwrap_or(topo.kafka.guarantee);
            let set = acls::for_run(&topo, guarantee, &args.principal)?;
            (set, topo.kafka.brokers.clone())
        }
        (None, Some(path), _) => {
            let config = CommitConfig::load(path)?;
            let set = acls::for_commit(&config, &args.principal)?;
            (set, config.kafka.brokers.clone())
        }
        (None, None, Some(path)) => {
            let config = IngestConfig::load(path)?;
            let set = acls::for_ingest(&config, &args.principal)?;
            (set, config.kafka.brokers.clone())
        }
        (None, None, None) => anyhow::bail!("give a topology, --commit CONFIG or --ingest CONFIG"),
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&set).context("writing JSON")?;
        json.push('\n');
        json
    } else {
        let bootstrap = args.brokers.or(brokers).unwrap_or_else(|| "BROKERS".into());
        set.command_lines(&bootstrap)
    };
    super::print_stdout(&text)
}
