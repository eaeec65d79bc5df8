//! `sluice state`: what a replay's state directory holds for one (service,
//! environment): the gate's current image and rollout, the parked image and
//! every reason it is held, and the pending timers of every operator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use sluice::engine::{Engine, EngineOptions};
use sluice::state::RocksBackend;

use super::print_stdout;
use super::replay::load_topology;

#[derive(Args)]
pub struct StateArgs {
    /// The state directory of a replay (`sluice replay --state-dir DIR`).
    #[arg(long)]
    state_dir: PathBuf,
    /// The topology the state belongs to; default: the embedded topologies/cicd.toml.
    #[arg(long)]
    topology: Option<PathBuf>,
    service: String,
    environment: String,
}

pub fn run(args: StateArgs) -> Result<ExitCode> {
    if !args.state_dir.is_dir() {
        bail!("no state directory at {}", args.state_dir.display());
    }
    let topo = Arc::new(load_topology(args.topology.as_deref())?);
    let backend = RocksBackend::open(&args.state_dir)?;
    let mut engine = Engine::open(topo, Box::new(backend), &EngineOptions::default())?;
    let answer = engine.query(&args.service, &args.environment)?;
    let mut text = serde_json::to_string_pretty(&answer).context("encoding the answer")?;
    text.push('\n');
    print_stdout(&text)
}
