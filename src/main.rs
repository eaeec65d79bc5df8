//! The `sluice` command line.

// The engine allocates many small strings per record; mimalloc serves them
// faster than glibc's allocator and returns memory more readily.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_live;
mod describe;
mod run_cmd;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use sluice::engine::{Engine, EngineOptions};
use sluice::flood::{write_flood, FloodConfig};
use sluice::replay::{
    replay, JsonLinesOutput, Progress, ReplayError, ReplayOptions, ReplaySummary,
};
use sluice::state::{BackendKind, MemoryBackend, RocksBackend, StateBackend};
use sluice::topology::Topology;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology over a recorded event file under a virtual clock.
    Replay(ReplayArgs),
    /// The main job on its embedded default: a generated flood replayed
    /// through topologies/cicd.toml, printing deployment intents. No broker needed.
    Demo {
        /// Events in the flood.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Distinct services in the flood.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        services: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Check a topology and report every error with file:line:column.
    Validate { topology: PathBuf },
    /// Print a topology's graph (text, or Graphviz with --dot).
    Describe {
        topology: PathBuf,
        #[arg(long)]
        dot: bool,
    },
    /// Write a realistic, seeded flood of CI/CD events in the replay format.
    Flood(FloodArgs),
    /// Run a topology live on Kafka: consumer group `app.id`, exactly-once
    /// transactions, state in RocksDB with changelog topics.
    Run(run_cmd::RunArgs),
    /// Write a slice of real topics in the replay format (timestamps, keys,
    /// JSON values; protobuf values of the topology's sources decoded).
    Record(RecordArgs),
    /// Turn deployment intents into GitOps commits: from the Kafka topic of
    /// the config's [kafka] table, or from a replay output file (--input).
    Commit(CommitArgs),
    /// Benchmarks (not tests): print medians of several runs.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Topology file; default: the embedded topologies/cicd.toml.
    topology: Option<PathBuf>,
    /// JSON Lines input, `-` for stdin.
    #[arg(long)]
    input: String,
    /// Where to write output records, `-` (the default) for stdout.
    #[arg(long, default_value = "-")]
    output: String,
    /// Fire every remaining timer at the end of the input.
    #[arg(long)]
    drain: bool,
    /// Keep state here, to continue in a later run; default: a temporary directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// State backend.
    #[arg(long, value_enum, default_value = "rocksdb")]
    backend: BackendKind,
    /// Commit state every N input lines.
    #[arg(long, default_value_t = ReplayOptions::default().commit_every, value_parser = clap::value_parser!(u64).range(1..))]
    commit_every: u64,
    /// Compare the intents with a baseline replay output: print what is
    /// missing, extra or changed, and exit 1 when they differ. The records
    /// themselves are then only written with an explicit --output FILE.
    #[arg(long, value_name = "BASELINE.jsonl")]
    diff: Option<PathBuf>,
    /// Write run statistics as JSON to this file (used by `sluice bench`).
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// No summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct RecordArgs {
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

#[derive(clap::Args)]
struct CommitArgs {
    /// The committer's config (repository, author, environments, ...).
    config: PathBuf,
    /// Read intents from this replay output file (`-` for stdin) instead of Kafka.
    #[arg(long)]
    input: Option<String>,
    /// Bootstrap brokers; default: the config's [kafka] brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Where clones are kept; default: the config's work_dir, else ./.sluice-commit.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write dead letters to this JSON Lines file (default with --input:
    /// the config's dead_letter_file, else WORK_DIR/dead-letters.jsonl;
    /// with Kafka: the dead-letter topic).
    #[arg(long)]
    dead_letters: Option<PathBuf>,
    /// With Kafka: stop after this long without an intent (e.g. `30s`).
    #[arg(long)]
    idle_exit: Option<String>,
    /// Only check the config, print `ok` and exit.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
struct FloodArgs {
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
    /// Output file, `-` (the default) for stdout.
    #[arg(long, default_value = "-")]
    output: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Demo {
            events,
            services,
            seed,
        } => run_demo(events, services, seed),
        Command::Validate { topology } => {
            let topo = Topology::load(&topology)?;
            let text = format!(
                "{}: ok ({} sources, {} operators, {} sinks)\n",
                topology.display(),
                topo.sources.len(),
                topo.operators.len(),
                topo.sinks.len()
            );
            print_stdout(&text)
        }
        Command::Describe { topology, dot } => {
            let topo = Topology::load(&topology)?;
            let text = if dot {
                describe::dot(&topo)
            } else {
                describe::text(&topo)
            };
            print_stdout(&text)
        }
        Command::Flood(args) => run_flood(args),
        Command::Record(args) => run_record(args),
        Command::Run(args) => run_cmd::run_live(args),
        Command::Commit(args) => run_commit(args),
        Command::Bench(cmd) => bench::run(cmd),
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

fn run_record(args: RecordArgs) -> Result<ExitCode> {
    let topo = args.topology.as_deref().map(Topology::load).transpose()?;
    let kafka = topo.as_ref().map(|t| t.kafka.clone()).unwrap_or_default();
    let brokers = args
        .brokers
        .or_else(|| kafka.brokers.clone())
        .context("no brokers: pass --brokers or set brokers in the topology's [kafka] table")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
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
    let opts = sluice::kafka::record::RecordOptions {
        topics: args.topics,
        from_ms,
        to_ms,
        timeout: std::time::Duration::from_secs(args.timeout_secs),
    };
    let mut out = open_output(&args.output)?;
    let n = sluice::kafka::record::record(&config, topo.as_ref(), &opts, &mut out)?;
    eprintln!(
        "recorded {n} records from {} into {}",
        opts.topics.join(","),
        args.output
    );
    Ok(ExitCode::SUCCESS)
}

/// Set by SIGINT or SIGTERM: the committer finishes its batch and stops.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn run_commit(args: CommitArgs) -> Result<ExitCode> {
    use sluice::commit::{committer, config::CommitConfig, git::Remote};
    let config = CommitConfig::load(&args.config)?;
    if args.check {
        return print_stdout(&format!("{}: ok\n", args.config.display()));
    }
    let idle_exit = args
        .idle_exit
        .as_deref()
        .map(|d| sluice::duration::parse_duration(d).map_err(anyhow::Error::msg))
        .transpose()
        .context("--idle-exit")?
        .map(|d| std::time::Duration::from_millis(d.as_ms()));
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| config.work_dir.clone())
        .unwrap_or_else(|| PathBuf::from(".sluice-commit"));
    // Inputs first: a missing file or broker setting fails before any clone.
    let mut source = open_intent_source(&args, &config)?;
    let (mut dead, dead_file) = open_dead_letters(&args, &config, &work_dir)?;
    let remote = Remote::new(&config.repository, &config.author, config.signing.as_ref())?;
    let mut committer = committer::Committer::open(&config, &remote, &work_dir)?;
    stop_on_signals();
    let opts = committer::RunOptions {
        stop: &STOP,
        idle_exit,
        on_batch: &mut |_, _| {},
    };
    let result = committer.run(source.as_mut(), dead.as_mut(), opts);
    eprintln!("sluice commit: {}", committer.counters.render());
    if let Some(path) = dead_file.filter(|_| committer.counters.dead_letters > 0) {
        eprintln!("sluice commit: dead letters in {}", path.display());
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM let the committer finish its batch, then stop.
fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
}

fn commit_kafka_client(
    args: &CommitArgs,
    config: &sluice::commit::config::CommitConfig,
) -> Result<rdkafka::ClientConfig> {
    let brokers = args
        .brokers
        .clone()
        .or_else(|| config.kafka.brokers.clone())
        .context("no brokers: pass --brokers or --input, or set brokers in [kafka]")?;
    Ok(sluice::kafka::client_config(
        &config.kafka.client,
        &brokers,
    )?)
}

/// `--input` (a replay output file, `-` for stdin), else the Kafka topic.
fn open_intent_source(
    args: &CommitArgs,
    config: &sluice::commit::config::CommitConfig,
) -> Result<Box<dyn sluice::commit::source::IntentSource>> {
    use sluice::commit::source::{FileSource, KafkaSource};
    let topic = config.kafka.topic.clone();
    Ok(match args.input.as_deref() {
        Some("-") => Box::new(FileSource::new(
            Box::new(BufReader::new(io::stdin().lock())),
            "<stdin>".into(),
            topic,
        )),
        Some(path) => {
            let file = File::open(path).with_context(|| format!("cannot open input {path}"))?;
            Box::new(FileSource::new(
                Box::new(BufReader::new(file)),
                path.into(),
                topic,
            ))
        }
        None => Box::new(KafkaSource::new(
            commit_kafka_client(args, config)?,
            &config.kafka.group,
            &topic,
            config.kafka.format,
        )?),
    })
}

/// A dead-letter file (`--dead-letters`, or with `--input` the config's
/// file or one in the work directory), else the dead-letter topic.
fn open_dead_letters(
    args: &CommitArgs,
    config: &sluice::commit::config::CommitConfig,
    work_dir: &Path,
) -> Result<(
    Box<dyn sluice::commit::dead_letter::DeadLetters>,
    Option<PathBuf>,
)> {
    use sluice::commit::dead_letter::{FileDeadLetters, KafkaDeadLetters};
    let file = args.dead_letters.clone().or_else(|| {
        args.input.as_ref().map(|_| {
            config
                .dead_letter_file
                .clone()
                .unwrap_or_else(|| work_dir.join("dead-letters.jsonl"))
        })
    });
    let topic = &config.kafka.dead_letter_topic;
    Ok(match &file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            (Box::new(FileDeadLetters::open(path, topic)?), file)
        }
        None => (
            Box::new(KafkaDeadLetters::new(
                commit_kafka_client(args, config)?,
                topic,
            )?),
            None,
        ),
    })
}

fn run_flood(args: FloodArgs) -> Result<ExitCode> {
    let cfg = FloodConfig {
        events: args.events,
        services: args.services,
        seed: args.seed,
        start_ts: args.start_ts,
        invalid_per_mille: args.invalid_per_mille,
    };
    let out = open_output(&args.output)?;
    match write_flood(&cfg, out) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // `sluice flood | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the flood"),
    }
}

fn open_output(path: &str) -> Result<Box<dyn Write>> {
    Ok(if path == "-" {
        Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()))
    } else {
        let file = File::create(path).with_context(|| format!("cannot create {path}"))?;
        Box::new(BufWriter::with_capacity(1 << 16, file))
    })
}

/// Holds a temporary state directory for as long as the run needs it.
struct StateLocation {
    _temp: Option<tempfile::TempDir>,
}

fn open_backend(
    kind: BackendKind,
    state_dir: Option<&Path>,
) -> Result<(Box<dyn StateBackend>, StateLocation)> {
    match (kind, state_dir) {
        (BackendKind::Memory, Some(_)) => {
            bail!("--state-dir needs the rocksdb backend; the memory backend keeps nothing")
        }
        (BackendKind::Memory, None) => Ok((
            Box::new(MemoryBackend::new()),
            StateLocation { _temp: None },
        )),
        (BackendKind::Rocksdb, Some(dir)) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
            Ok((
                Box::new(RocksBackend::open(dir)?),
                StateLocation { _temp: None },
            ))
        }
        (BackendKind::Rocksdb, None) => {
            let temp = tempfile::Builder::new()
                .prefix("sluice-state-")
                .tempdir()
                .context("cannot create a temporary state directory")?;
            let backend = RocksBackend::open(temp.path())?;
            Ok((Box::new(backend), StateLocation { _temp: Some(temp) }))
        }
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&mut self, bytes: u64) {
        self.0.set_position(bytes);
    }
}

fn progress_bar(input: &str) -> Option<Bar> {
    if input == "-" || !io::stderr().is_terminal() {
        return None;
    }
    let len = std::fs::metadata(input).ok()?.len();
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{spinner} replay [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .ok()?
    .progress_chars("=> ");
    bar.set_style(style);
    Some(Bar(bar))
}

/// The default topology, built into the binary.
const DEFAULT_TOPOLOGY: &str = include_str!("../topologies/cicd.toml");

fn load_topology(path: Option<&Path>) -> Result<Topology> {
    Ok(match path {
        Some(p) => Topology::load(p)?,
        None => Topology::parse("topologies/cicd.toml (embedded)", DEFAULT_TOPOLOGY)?,
    })
}

fn run_demo(events: u64, services: u32, seed: u64) -> Result<ExitCode> {
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
    let mut out = JsonLinesOutput::new(open_output("-")?, topo.dead_letter_topic());
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

fn run_replay(args: ReplayArgs) -> Result<ExitCode> {
    let topo = Arc::new(load_topology(args.topology.as_deref())?);
    let (backend, _location) = open_backend(args.backend, args.state_dir.as_deref())?;
    let mut engine = Engine::open(Arc::clone(&topo), backend, &EngineOptions::default())?;
    let input: Box<dyn BufRead> = if args.input == "-" {
        Box::new(BufReader::with_capacity(1 << 16, io::stdin().lock()))
    } else {
        let file =
            File::open(&args.input).with_context(|| format!("cannot open input {}", args.input))?;
        // Not memory-mapped: a mapped recording counts in full towards the
        // process's resident memory, for a gain of a few percent.
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let baseline = match &args.diff {
        Some(path) => Some(read_baseline(path)?),
        None => None,
    };
    // With --diff the output is kept to compare it; it is written out only to a named file.
    let writer: Box<dyn Write> = match (&baseline, args.output.as_str()) {
        (Some(_), "-") => Box::new(io::sink()),
        _ => open_output(&args.output)?,
    };
    let mut out = JsonLinesOutput::new(
        Tee {
            out: writer,
            keep: baseline.as_ref().map(|_| Vec::new()),
        },
        topo.dead_letter_topic(),
    );
    let opts = ReplayOptions {
        drain: args.drain,
        commit_every: args.commit_every,
    };
    let mut bar = progress_bar(&args.input);
    let progress: &mut dyn Progress = match &mut bar {
        Some(b) => b,
        None => &mut (),
    };
    let shown = if args.input == "-" {
        "<stdin>"
    } else {
        args.input.as_str()
    };
    let result = replay(&mut engine, input, shown, &mut out, &opts, progress);
    if let Some(b) = bar {
        b.0.finish_and_clear();
    }
    let _ = out.flush();
    let summary = result?;
    if !args.quiet {
        eprint!("{}", render_summary(&summary, &engine));
    }
    if let Some(path) = &args.stats_json {
        write_stats(path, &summary)?;
    }
    engine.close()?;
    match (baseline, args.diff) {
        (Some(base), Some(path)) => {
            let kept = out.into_inner().keep.unwrap_or_default();
            let new = sluice::diff::read_intents(&String::from_utf8_lossy(&kept), "<this run>")?;
            let d = sluice::diff::diff(&base, &new);
            let shown = args
                .topology
                .as_ref()
                .map_or("topologies/cicd.toml (embedded)".into(), |t| {
                    t.display().to_string()
                });
            print_stdout(&d.render(&path.display().to_string(), &shown))?;
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn read_baseline(path: &Path) -> Result<Vec<sluice::diff::IntentLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read baseline {}", path.display()))?;
    Ok(sluice::diff::read_intents(
        &text,
        &path.display().to_string(),
    )?)
}

/// Writes through, and keeps a copy when asked (for --diff).
struct Tee {
    out: Box<dyn Write>,
    keep: Option<Vec<u8>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(keep) = &mut self.keep {
            keep.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn render_summary(s: &ReplaySummary, engine: &Engine) -> String {
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.lines as f64 / secs
    } else {
        0.0
    };
    format!(
        "replayed {} lines in {:.2}s ({:.0} lines/s): {} records out, {} dead letters, {} lines skipped (no source reads their topic)\n{}",
        s.lines,
        secs,
        rate,
        s.records_out,
        s.dead_letters,
        s.skipped,
        sluice::engine::stats::render(engine.stats())
    )
}

fn write_stats(path: &Path, s: &ReplaySummary) -> Result<()> {
    let secs = s.elapsed.as_secs_f64();
    let stats = serde_json::json!({
        "lines": s.lines,
        "seconds": secs,
        "events_per_sec": if secs > 0.0 { s.lines as f64 / secs } else { 0.0 },
        "records_out": s.records_out,
        "dead_letters": s.dead_letters,
        "peak_rss_bytes": bench::peak_rss_bytes(),
    });
    std::fs::write(path, stats.to_string())
        .with_context(|| format!("cannot write {}", path.display()))
}
