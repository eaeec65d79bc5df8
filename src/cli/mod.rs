//! The subcommands, one file each, and what they share: logging, stdout,
//! output files.

mod acls;
mod bench;
mod commit;
mod control;
mod dashboard;
mod decode;
mod demo;
mod describe;
mod flood;
mod heap;
mod ingest;
mod observe;
mod record;
mod replay;
mod run;
mod state;
mod status;
mod validate;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use sluice::replay::ReplayError;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Stateful stream processing for event-driven CI/CD"
)]
struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace); SLUICE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log lines as human-readable text, or as one JSON object per line
    /// (for log collectors).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology over a recorded event file under a virtual clock.
    Replay(replay::ReplayArgs),
    /// The main job on its embedded default: a generated flood replayed
    /// through topologies/cicd.toml, printing deployment intents. No broker needed.
    Demo(demo::DemoArgs),
    /// Check a topology and report every error with file:line:column.
    Validate(validate::ValidateArgs),
    /// Print the records a webhook payload yields in a format, or the
    /// error naming the field at fault.
    Decode(decode::DecodeArgs),
    /// Send a person's command to the gates (freeze, unfreeze, pin, unpin,
    /// approve): append it to a replay file, or produce it to Kafka.
    Control(control::ControlArgs),
    /// Print what a replay's state directory holds for one service and
    /// environment: current image and rollout, the parked image and every
    /// reason it is held, pending timers with their deadlines (JSON).
    State(state::StateArgs),
    /// Why a deploy is (not) going out: ask a running app's instance (any
    /// one: it forwards to the owner of the key's partition).
    Status(status::StatusArgs),
    /// Print a topology's graph (text, or Graphviz with --dot).
    Describe(describe::DescribeArgs),
    /// Write a realistic, seeded flood of CI/CD events in the replay format.
    Flood(flood::FloodArgs),
    /// Run a topology live on Kafka: consumer group `app.id`, exactly-once
    /// transactions, state in RocksDB with changelog topics.
    Run(run::RunArgs),
    /// Write a slice of real topics in the replay format (timestamps, keys,
    /// JSON values; protobuf values of the topology's sources decoded).
    Record(record::RecordArgs),
    /// Turn deployment intents into GitOps commits: from the Kafka topic of
    /// the config's [kafka] table, or from a replay output file (--input).
    Commit(commit::CommitArgs),
    /// Receive webhooks over HTTP, decode each with its endpoint's format and
    /// produce it raw to Kafka; 202 only once the broker acknowledged it.
    Ingest(ingest::IngestArgs),
    /// Print the Kafka ACLs `sluice run TOPOLOGY` (or `sluice commit` with
    /// --commit CONFIG) needs, as kafka-acls.sh command lines or JSON.
    Acls(acls::AclsArgs),
    /// Print the Grafana dashboard of Sluice's metrics (JSON).
    Dashboard(dashboard::DashboardArgs),
    /// Benchmarks (not tests): print medians of several runs.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            if let Some(ReplayError::Input { .. }) = err.downcast_ref::<ReplayError>() {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    if matches!(
        command,
        Command::Run(_) | Command::Commit(_) | Command::Ingest(_) | Command::Record(_)
    ) {
        heap::keep_service_heap_small();
    }
    match command {
        Command::Replay(args) => replay::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Describe(args) => describe::run(args),
        Command::State(args) => state::run(args),
        Command::Status(args) => status::run(args),
        Command::Control(args) => control::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Flood(args) => flood::run(args),
        Command::Record(args) => record::run(args),
        Command::Run(args) => run::run_live(args),
        Command::Commit(args) => commit::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Acls(args) => acls::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).init(),
        // One object per line: timestamp, level, target, fields, message.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<ExitCode> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A buffered output file, `-` for stdout.
fn open_output(path: &str) -> Result<Box<dyn Write>> {
    Ok(if path == "-" {
        Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()))
    } else {
        let file = File::create(path).with_context(|| format!("cannot create {path}"))?;
        Box::new(BufWriter::with_capacity(1 << 16, file))
    })
}
