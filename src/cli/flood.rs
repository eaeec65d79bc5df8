//! `sluice flood`: a realistic, seeded flood of CI/CD events in the replay format.

use std::io;
use std::process::ExitCode;

use anyhow::{Context, Result};

use sluice::flood::{write_flood, FloodConfig, Profile};

#[derive(clap::Args)]
pub struct FloodArgs {
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    services: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timestamp (ms) of the first event (at most 2^52, leaving room for the flood to run).
    #[arg(long, default_value_t = FloodConfig::default().start_ts, value_parser = clap::value_parser!(u64).range(..=(1u64 << 52)))]
    start_ts: u64,
    /// Deliberately invalid records per 1000.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    invalid_per_mille: u32,
    /// The traffic's shape: `releases` (release pipelines, mostly duplicate
    /// pushes) or `survival` (a new digest on every push, about one push per
    /// service per minute: nearly every record survives each stage).
    #[arg(long, default_value = "releases", value_parser = parse_profile)]
    profile: Profile,
    /// Output file, `-` (the default) for stdout.
    #[arg(long, default_value = "-")]
    output: String,
}

pub fn run(args: FloodArgs) -> Result<ExitCode> {
    let cfg = FloodConfig {
        events: args.events,
        services: args.services,
        seed: args.seed,
        start_ts: args.start_ts,
        invalid_per_mille: args.invalid_per_mille,
        profile: args.profile,
    };
    let out = super::open_output(&args.output)?;
    match write_flood(&cfg, out) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // `sluice flood | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the flood"),
    }
}

/// A flood profile by name, for `--profile`.
pub fn parse_profile(name: &str) -> Result<Profile, String> {
    Profile::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown profile `{name}`: expected one of {}",
            names.join(", ")
        )
    })
}
