//! `sluice decode`: the records a webhook payload yields, or why it yields
//! none, so a payload can be checked before a source is wired to it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use sluice::format::{self, DecodeOptions, Format};
use sluice::record::Kind;
use sluice::topology::Topology;

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// The payload's format: alertmanager, distribution, dockerhub, harbor,
    /// quay, github_package, ecr, gar, cloudevents, github, gitlab, json.
    #[arg(long, required_unless_present = "source")]
    format: Option<String>,
    /// Decode as this source of --topology does: its format, kind,
    /// environment and service_from / environment_from / severity_from.
    #[arg(long, requires = "topology", conflicts_with_all = ["format", "kind", "environment"])]
    source: Option<String>,
    /// The topology holding --source.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// The record kind, for `json` (vendor formats carry one kind each).
    #[arg(long)]
    kind: Option<String>,
    /// Environment for records whose payload names none.
    #[arg(long)]
    environment: Option<String>,
    /// The payload file (`-` for stdin).
    file: PathBuf,
}

/// Prints one JSON line per record, then one `ignored` line per skipped
/// entry. Exits 1 when the payload cannot be decoded (the error names the field).
pub fn run(args: DecodeArgs) -> Result<ExitCode> {
    let (format, kind, opts) = match (&args.topology, &args.source) {
        (Some(topology), Some(name)) => from_source(topology, name)?,
        _ => from_flags(&args)?,
    };
    let text = read_payload(&args.file)?;
    match format::decode(format, kind, &text, &opts) {
        Ok(decoded) => {
            let mut out = String::new();
            for record in &decoded.records {
                out.push_str(&serde_json::to_string(&record.json())?);
                out.push('\n');
            }
            for event in &decoded.ignored {
                out.push_str(&serde_json::json!({ "ignored": event }).to_string());
                out.push('\n');
            }
            super::print_stdout(&out)
        }
        Err(e) => {
            eprintln!("{}: cannot decode as {format}: {e}", args.file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn from_source(topology: &Path, name: &str) -> Result<(Format, Kind, DecodeOptions)> {
    let topo = Topology::load(topology)?;
    let Some(source) = topo.sources.iter().find(|s| s.name == name) else {
        let names: Vec<_> = topo.sources.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "{} has no source `{name}`; its sources: {}",
            topology.display(),
            names.join(", ")
        );
    };
    Ok((source.format, source.kind, source.decode.clone()))
}

fn from_flags(args: &DecodeArgs) -> Result<(Format, Kind, DecodeOptions)> {
    let name = args.format.as_deref().unwrap_or_default();
    let Some(format) = Format::from_name(name) else {
        let names: Vec<_> = format::FORMATS.iter().map(|f| f.name()).collect();
        bail!(
            "unknown format `{name}`; expected one of: {}",
            names.join(", ")
        );
    };
    let kind = kind_of(format, args.kind.as_deref())?;
    let opts = DecodeOptions {
        environment: args.environment.clone(),
        ..DecodeOptions::default()
    };
    Ok((format, kind, opts))
}

fn kind_of(format: Format, kind: Option<&str>) -> Result<Kind> {
    let kinds = format.kinds();
    match kind {
        None if format.is_native() => bail!("--kind is required with --format {format}"),
        None => Ok(kinds[0]),
        Some(name) => match kinds.iter().find(|k| k.as_str() == name) {
            Some(k) => Ok(*k),
            None => bail!("format {format} does not carry {name} records"),
        },
    }
}

fn read_payload(file: &PathBuf) -> Result<String> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", file.display()))
}
