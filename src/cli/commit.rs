//! `sluice commit`: deployment intents to batched GitOps commits, from the
//! Kafka topic of the config's [kafka] table or from a replay output file.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use sluice::commit::config::CommitConfig;
use sluice::commit::dead_letter::{DeadLetters, FileDeadLetters, KafkaDeadLetters};
use sluice::commit::metrics::CommitMetrics;
use sluice::commit::report::{FileReports, KafkaReports, Reports, DEFAULT_FILE_TOPIC};
use sluice::commit::source::{FileSource, IntentSource, KafkaSource};
use sluice::commit::{committer, git::Remote};

#[derive(clap::Args)]
pub struct CommitArgs {
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
    /// Append a report per intent a commit accounts for to this JSON Lines
    /// file (replay format) instead of the config's [kafka] report_topic.
    #[arg(long)]
    report: Option<PathBuf>,
    /// With Kafka: stop after this long without an intent (e.g. `30s`).
    #[arg(long)]
    idle_exit: Option<String>,
    /// Only check the config, print `ok` and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    telemetry: super::observe::TelemetryArgs,
}

/// Set by SIGINT or SIGTERM: the committer finishes its batch and stops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: CommitArgs) -> Result<ExitCode> {
    let config = CommitConfig::load(&args.config)?;
    if args.check {
        return super::print_stdout(&format!("{}: ok\n", args.config.display()));
    }
    let idle_exit = args
        .idle_exit
        .as_deref()
        .map(|d| sluice::duration::parse_duration(d).map_err(anyhow::Error::msg))
        .transpose()
        .context("--idle-exit")?
        .map(|d| Duration::from_millis(d.as_ms()));
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| config.work_dir.clone())
        .unwrap_or_else(|| PathBuf::from(".sluice-commit"));
    let telemetry = args.telemetry.start("commit", None)?;
    telemetry.health.set_unready("opening the clones");
    // Inputs first: a missing file or broker setting fails before any clone.
    let mut source = open_intent_source(&args, &config)?;
    let (mut dead, dead_file) = open_dead_letters(&args, &config, &work_dir)?;
    let reports = open_reports(&args, &config)?;
    let remote = Remote::new(&config.repository, &config.author, config.signing.as_ref())?;
    let committer = committer::Committer::open(&config, &remote, &work_dir)?;
    let metrics = CommitMetrics::new(telemetry.meter(), &committer.branches());
    let mut committer = committer
        .with_metrics(metrics)
        .with_tracing(telemetry.tracing.clone());
    if let Some(reports) = reports {
        committer = committer.with_reports(reports);
    }
    telemetry.health.set_ready();
    stop_on_signals();
    let opts = committer::RunOptions {
        stop: &STOP,
        idle_exit,
        on_batch: &mut |_, _| {},
    };
    let result = committer.run(source.as_mut(), dead.as_mut(), opts);
    telemetry.shutdown();
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

fn kafka_client(args: &CommitArgs, config: &CommitConfig) -> Result<rdkafka::ClientConfig> {
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
fn open_intent_source(args: &CommitArgs, config: &CommitConfig) -> Result<Box<dyn IntentSource>> {
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
            kafka_client(args, config)?,
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
    config: &CommitConfig,
    work_dir: &Path,
) -> Result<(Box<dyn DeadLetters>, Option<PathBuf>)> {
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
            Box::new(KafkaDeadLetters::new(kafka_client(args, config)?, topic)?),
            None,
        ),
    })
}

/// `--report FILE`, else with Kafka the config's `report_topic`, else none.
fn open_reports(args: &CommitArgs, config: &CommitConfig) -> Result<Option<Box<dyn Reports>>> {
    let topic = config.kafka.report_topic.as_deref();
    if let Some(path) = &args.report {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let topic = topic.unwrap_or(DEFAULT_FILE_TOPIC);
        return Ok(Some(Box::new(FileReports::open(path, topic)?)));
    }
    match topic {
        Some(topic) if args.input.is_none() => Ok(Some(Box::new(KafkaReports::new(
            kafka_client(args, config)?,
            topic,
        )?))),
        _ => Ok(None),
    }
}
