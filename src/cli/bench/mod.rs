//! `sluice bench`: benchmarks that report medians over several runs and
//! compare against a baseline measured in the same invocation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use sluice::flood::{write_flood, FloodConfig, Profile};

mod commit_latency;
mod decode;
mod http;
mod ingest;
mod latency;
mod live;
mod restore;
mod telemetry;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Replay a generated flood through a topology with the RocksDB and the
    /// in-memory backend, alternating, each run in its own process.
    Replay {
        #[arg(long, default_value = "topologies/cicd.toml")]
        topology: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        services: u32,
        /// Runs per backend; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// The flood's shape (see `sluice flood --help`).
        #[arg(long, default_value = "releases", value_parser = super::flood::parse_profile)]
        profile: Profile,
    },
    /// Records/s through replay for sources in vendor formats (Alertmanager,
    /// Harbor) next to the native JSON format carrying the same records.
    Decode(decode::DecodeBenchArgs),
    /// The live runtime against a real broker: sustained events/s under
    /// both guarantees, end-to-end latency at a fixed rate, restore rate,
    /// peak RSS.
    Run(live::LiveArgs),
    /// The webhook gateway against a real broker: accepted webhooks/s with
    /// 64 connections, latency to 202 at a fixed rate, peak RSS.
    Ingest(ingest::IngestBenchArgs),
    /// Intents to pushed commits on a local bare repository: throughput with
    /// batching and latency from hand-in to commit visible on the remote.
    Commit {
        /// Intents per run.
        #[arg(long, default_value_t = 20_000)]
        intents: u64,
        /// Services (one manifest each) the intents are spread over.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        services: u32,
        /// Batch window, e.g. `2s`.
        #[arg(long, default_value = "2s")]
        window: String,
        /// Intents handed in per second for the latency runs.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
        rate: u64,
        /// Runs of each kind; medians are reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
    },
}

pub fn run(cmd: BenchCommand) -> Result<std::process::ExitCode> {
    match cmd {
        BenchCommand::Replay {
            topology,
            events,
            services,
            runs,
            profile,
        } => bench_replay(&topology, events, services, profile, runs)?,
        BenchCommand::Decode(args) => decode::bench_decode(&args)?,
        BenchCommand::Run(args) => live::bench_live(&args)?,
        BenchCommand::Ingest(args) => ingest::bench_ingest(&args)?,
        BenchCommand::Commit {
            intents,
            services,
            window,
            rate,
            runs,
        } => bench_commit(intents, services, &window, rate, runs)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct RunStats {
    events_per_sec: f64,
    peak_rss_bytes: f64,
}

fn one_run(topology: &Path, input: &Path, backend: &str, stats: &Path) -> Result<RunStats> {
    let exe = std::env::current_exe().context("cannot find the sluice binary")?;
    let status = Command::new(exe)
        .arg("replay")
        .arg(topology)
        .args([
            "--input",
            &input.display().to_string(),
            "--output",
            "/dev/null",
            "--drain",
            "--quiet",
            "--backend",
            backend,
        ])
        .arg("--stats-json")
        .arg(stats)
        .status()
        .context("cannot run sluice replay")?;
    if !status.success() {
        bail!("sluice replay --backend {backend} failed: {status}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stats)?)?;
    let num = |k: &str| {
        json[k]
            .as_f64()
            .with_context(|| format!("stats lack `{k}`"))
    };
    Ok(RunStats {
        events_per_sec: num("events_per_sec")?,
        peak_rss_bytes: num("peak_rss_bytes")?,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn bench_replay(
    topology: &Path,
    events: u64,
    services: u32,
    profile: Profile,
    runs: u32,
) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let input = dir.path().join("flood.jsonl");
    let file = std::fs::File::create(&input)?;
    let cfg = FloodConfig {
        events,
        services,
        profile,
        ..FloodConfig::default()
    };
    write_flood(&cfg, std::io::BufWriter::new(file)).context("writing the flood")?;
    let stats = dir.path().join("stats.json");
    let backends = ["rocksdb", "memory"];
    let mut results: Vec<Vec<RunStats>> = vec![Vec::new(), Vec::new()];
    for run in 1..=runs {
        for (i, backend) in backends.iter().enumerate() {
            let r = one_run(topology, &input, backend, &stats)?;
            eprintln!(
                "run {run}/{runs} {backend:<8} {:>10.0} events/s  peak RSS {:>6.1} MiB",
                r.events_per_sec,
                r.peak_rss_bytes / 1048576.0
            );
            results[i].push(r);
        }
    }
    println!(
        "replay of a {profile} flood of {events} events over {services} services through {}, {runs} runs each (median):",
        topology.display()
    );
    let mut rates = Vec::new();
    for (backend, rs) in backends.iter().zip(&results) {
        let rate = median(rs.iter().map(|r| r.events_per_sec).collect());
        let rss = median(rs.iter().map(|r| r.peak_rss_bytes).collect());
        let max_rss = rs.iter().map(|r| r.peak_rss_bytes).fold(0.0, f64::max);
        println!(
            "  {backend:<8} {rate:>10.0} events/s   peak RSS median {:.1} MiB, max {:.1} MiB",
            rss / 1048576.0,
            max_rss / 1048576.0
        );
        rates.push(rate);
    }
    let per_run_ratio = median(
        results[0]
            .iter()
            .zip(&results[1])
            .map(|(a, b)| a.events_per_sec / b.events_per_sec)
            .collect(),
    );
    println!(
        "  rocksdb / memory: {:.2} (median of per-run ratios {per_run_ratio:.2})",
        rates[0] / rates[1]
    );
    Ok(())
}

fn bench_commit(intents: u64, services: u32, window: &str, rate: u64, runs: u32) -> Result<()> {
    use sluice::commit::bench::{run_once, BenchOptions};
    let window = std::time::Duration::from_millis(
        sluice::duration::parse_duration(window)
            .map_err(anyhow::Error::msg)
            .context("--window")?
            .as_ms(),
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut steady = Vec::new();
    let mut burst = Vec::new();
    for run in 1..=runs {
        let opts = BenchOptions {
            intents,
            services,
            window,
            rate,
        };
        let r = run_once(&opts)?;
        eprintln!(
            "run {run}/{runs} steady {rate}/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} commits",
            ms(r.p50), ms(r.p99), ms(r.max), r.counters.commits
        );
        steady.push(r);
        let r = run_once(&BenchOptions { rate: 0, ..opts })?;
        eprintln!(
            "run {run}/{runs} burst: {:.0} intents/s applied; {} commits",
            r.intents_per_sec, r.counters.commits
        );
        burst.push(r);
    }
    let window_ms = ms(window);
    let p50 = median(steady.iter().map(|r| ms(r.p50)).collect());
    let p99 = median(steady.iter().map(|r| ms(r.p99)).collect());
    let sustained = median(steady.iter().map(|r| r.intents_per_sec).collect());
    let throughput = median(burst.iter().map(|r| r.intents_per_sec).collect());
    println!(
        "commit of {intents} intents over {services} services, window {window_ms:.0} ms, {runs} runs each (median):"
    );
    println!(
        "  handed in at {rate}/s: latency to visible on the remote p50 {p50:.0} ms, p99 {p99:.0} ms \
         (p99 beyond the window {:.0} ms; target <= 500 ms); {sustained:.0} intents/s applied",
        p99 - window_ms
    );
    println!("  all at once: {throughput:.0} intents/s applied with batching (target >= 1000)");
    Ok(())
}
