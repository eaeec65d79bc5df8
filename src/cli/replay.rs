//! `sluice replay`: a topology over a recorded event file under a virtual
//! clock, optionally compared with a baseline (`--diff`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use sluice::engine::stats::NodeStats;
use sluice::engine::{Engine, EngineOptions};
use sluice::replay::{replay, JsonLinesOutput, Progress, ReplayOptions, ReplaySummary};
use sluice::state::{BackendKind, MemoryBackend, RocksBackend, StateBackend};
use sluice::topology::Topology;

#[derive(clap::Args)]
pub struct ReplayArgs {
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
    /// Lines that came before this input: records name their line as
    /// N + their line here in intents' `caused_by`, so the second part of a
    /// split file keeps the whole file's numbering.
    #[arg(long, default_value_t = 0)]
    line_offset: u64,
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

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
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
        _ => super::open_output(&args.output)?,
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
        line_offset: args.line_offset,
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
        write_stats(path, &summary, engine.stats())?;
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
            super::print_stdout(&d.render(&path.display().to_string(), &shown))?;
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

pub(super) fn render_summary(s: &ReplaySummary, engine: &Engine) -> String {
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

fn write_stats(path: &Path, s: &ReplaySummary, nodes: &[NodeStats]) -> Result<()> {
    let secs = s.elapsed.as_secs_f64();
    let stats = serde_json::json!({
        "lines": s.lines,
        "seconds": secs,
        "events_per_sec": if secs > 0.0 { s.lines as f64 / secs } else { 0.0 },
        "records_out": s.records_out,
        "dead_letters": s.dead_letters,
        "peak_rss_bytes": super::bench::peak_rss_bytes(),
        // Per node, as the metrics of `sluice run` count them.
        "nodes": nodes,
    });
    std::fs::write(path, stats.to_string())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Holds a temporary state directory for as long as the run needs it.
pub(super) struct StateLocation {
    _temp: Option<tempfile::TempDir>,
}

pub(super) fn open_backend(
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
            // Removed when the replay ends: nothing to recover after a
            // crash, so its writes need no write-ahead log.
            let backend = RocksBackend::open_scratch(temp.path())?;
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
const DEFAULT_TOPOLOGY: &str = include_str!("../../topologies/cicd.toml");

pub(super) fn load_topology(path: Option<&Path>) -> Result<Topology> {
    Ok(match path {
        Some(p) => Topology::load(p)?,
        None => Topology::parse("topologies/cicd.toml (embedded)", DEFAULT_TOPOLOGY)?,
    })
}
