//! `sluice validate`: check a topology, every error with file:line:column.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use sluice::topology::Topology;

#[derive(clap::Args)]
pub struct ValidateArgs {
    topology: PathBuf,
}

pub fn run(args: ValidateArgs) -> Result<ExitCode> {
    let topo = Topology::load(&args.topology)?;
    let text = format!(
        "{}: ok ({} sources, {} operators, {} sinks)\n",
        args.topology.display(),
        topo.sources.len(),
        topo.operators.len(),
        topo.sinks.len()
    );
    super::print_stdout(&text)
}
