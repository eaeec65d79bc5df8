//! `sluice ingest CONFIG`: the webhook gateway.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use sluice::ingest::{self, IngestConfig};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Gateway config (TOML): [listen], [kafka], [[endpoints]].
    config: PathBuf,
    /// Bootstrap brokers; default: the config's [kafka] brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Only validate the config (every error with file:line:column) and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    telemetry: super::observe::TelemetryArgs,
}

pub fn run(args: IngestArgs) -> Result<ExitCode> {
    let config = IngestConfig::load(&args.config)?;
    if args.check {
        let text = format!(
            "{}: ok ({} endpoints)\n",
            args.config.display(),
            config.endpoints.len()
        );
        return super::print_stdout(&text);
    }
    let brokers = args
        .brokers
        .or_else(|| config.kafka.brokers.clone())
        .context("no brokers: pass --brokers or set brokers in the config's [kafka] table")?;
    let scheme = if config.listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let telemetry = args.telemetry.start("ingest", None)?;
    telemetry.health.set_unready("starting");
    let observe = ingest::IngestObserve {
        meter: telemetry.meter().clone(),
        tracing: telemetry.tracing.clone(),
        health: std::sync::Arc::clone(&telemetry.health),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let served = runtime.block_on(ingest::serve(config, &brokers, observe, |address| {
        // Tests and scripts read the bound address (the config may say port 0).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{address}");
        let _ = out.flush();
    }));
    telemetry.shutdown();
    served?;
    Ok(ExitCode::SUCCESS)
}
