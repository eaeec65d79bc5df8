//! `sluice demo`: the main job on its embedded default, no broker needed: a
//! generated flood replayed through topologies/cicd.toml.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use sluice::engine::{Engine, EngineOptions};
use sluice::flood::{write_flood, FloodConfig};
use sluice::replay::{replay, JsonLinesOutput, ReplayOptions};
use sluice::state::BackendKind;

use super::replay::{load_topology, open_backend, render_summary};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Events in the flood.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Distinct services in the flood.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    services: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let DemoArgs {
        events,
        services,
        seed,
    } = args;
    let topo = Arc::new(load_topology(None)?);
    let cfg = FloodConfig {
        events,
        services,
        seed,
        ..FloodConfig::default()
    };
    let mut flood = Vec::new();
    write_flood(&cfg, &mut flood).context("generating the flood")?;
    let (backend, _location) = open_backend(BackendKind::Rocksdb, None)?;
    let mut engine = Engine::open(Arc::clone(&topo), backend, &EngineOptions::default())?;
    let mut out = JsonLinesOutput::new(super::open_output("-")?, topo.dead_letter_topic());
    let opts = ReplayOptions {
        drain: true,
        ..ReplayOptions::default()
    };
    eprintln!(
        "sluice demo: {events} generated events over {services} services through {} (seed {seed})",
        topo.file
    );
    let summary = replay(
        &mut engine,
        flood.as_slice(),
        "<flood>",
        &mut out,
        &opts,
        &mut (),
    )?;
    eprint!("{}", render_summary(&summary, &engine));
    engine.close()?;
    Ok(ExitCode::SUCCESS)
}
