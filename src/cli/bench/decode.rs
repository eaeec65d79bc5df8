//! `sluice bench decode`: records/s through `sluice replay` for a source in
//! a vendor format (Alertmanager, Harbor), next to the native JSON format
//! carrying the same records, each run in its own process, alternating.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{median, one_run};

#[derive(clap::Args)]
pub struct DecodeBenchArgs {
    /// Payloads per run (one record each).
    #[arg(long, default_value_t = 500_000)]
    payloads: u64,
    /// Runs per format; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// One benchmarked source: its kind, format, and a payload generator.
struct Case {
    label: &'static str,
    kind: &'static str,
    format: &'static str,
    payload: fn(u64) -> String,
}

const CASES: &[Case] = &[
    Case {
        label: "alert, json",
        kind: "alert",
        format: "json",
        payload: native_alert,
    },
    Case {
        label: "alert, alertmanager",
        kind: "alert",
        format: "alertmanager",
        payload: alertmanager,
    },
    Case {
        label: "image, json",
        kind: "image",
        format: "json",
        payload: native_image,
    },
    Case {
        label: "image, harbor",
        kind: "image",
        format: "harbor",
        payload: harbor,
    },
];

pub fn bench_decode(args: &DecodeBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let stats = dir.path().join("stats.json");
    let mut inputs = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let topology = dir.path().join(format!("t{i}.toml"));
        std::fs::write(&topology, topology_text(case))?;
        let input = dir.path().join(format!("in{i}.jsonl"));
        write_input(&input, case, args.payloads)?;
        inputs.push((topology, input));
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for run in 1..=args.runs {
        for (i, (topology, input)) in inputs.iter().enumerate() {
            let r = one_run(topology, input, "memory", &stats)?;
            eprintln!(
                "run {run}/{} {:<20} {:>10.0} records/s",
                args.runs, CASES[i].label, r.events_per_sec
            );
            rates[i].push(r.events_per_sec);
        }
    }
    println!(
        "replay of {} payloads (one record each), source -> sink, memory backend, {} runs each (median):",
        args.payloads, args.runs
    );
    for (i, case) in CASES.iter().enumerate() {
        let rate = median(rates[i].clone());
        // The native format of the same kind is the case just before a vendor one.
        let versus = if case.format == "json" {
            String::new()
        } else {
            let per_run: Vec<f64> = rates[i]
                .iter()
                .zip(&rates[i - 1])
                .map(|(v, n)| v / n)
                .collect();
            format!("   {:.2} of native json", median(per_run))
        };
        println!("  {:<20} {rate:>10.0} records/s{versus}", case.label);
    }
    Ok(())
}

fn topology_text(case: &Case) -> String {
    format!(
        "[app]\nid = \"bench-decode\"\n\n[[sources]]\nname = \"in\"\ntopic = \"t\"\nkind = \"{}\"\nformat = \"{}\"\nenvironment = \"prod\"\n\n[[sinks]]\nname = \"out\"\ninput = \"in\"\ntopic = \"out\"\n",
        case.kind, case.format
    )
}

fn write_input(path: &Path, case: &Case, payloads: u64) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = String::new();
    for i in 0..payloads {
        line.clear();
        let _ = writeln!(
            line,
            "{{\"ts\":{},\"topic\":\"t\",\"key\":\"svc-{}\",\"value\":{}}}",
            1_767_225_600_000 + i,
            i % 1000,
            (case.payload)(i)
        );
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn digest(i: u64) -> String {
    format!("sha256:{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn native_alert(i: u64) -> String {
    let status = if i.is_multiple_of(2) {
        "firing"
    } else {
        "resolved"
    };
    format!(
        r#"{{"service":"svc-{}","alertname":"HighErrorRate","severity":"critical","status":"{status}","environment":"prod","fingerprint":"{:016x}"}}"#,
        i % 1000,
        i
    )
}

/// An Alertmanager v4 webhook with one alert, as Alertmanager sends it.
fn alertmanager(i: u64) -> String {
    let status = if i.is_multiple_of(2) {
        "firing"
    } else {
        "resolved"
    };
    let svc = i % 1000;
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"HighErrorRate\"}}","truncatedAlerts":0,"status":"{status}","receiver":"sluice","groupLabels":{{"alertname":"HighErrorRate"}},"commonLabels":{{"alertname":"HighErrorRate","severity":"critical"}},"commonAnnotations":{{}},"externalURL":"http://alertmanager:9093","alerts":[{{"status":"{status}","labels":{{"alertname":"HighErrorRate","service":"svc-{svc}","environment":"prod","severity":"critical","instance":"10.0.0.{}:8080"}},"annotations":{{"summary":"error rate above 5%"}},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph","fingerprint":"{i:016x}"}}]}}"#,
        i % 250
    )
}

fn native_image(i: u64) -> String {
    format!(
        r#"{{"service":"svc-{0}","repository":"harbor.example.com/team/svc-{0}","tag":"v1.{1}","digest":"{2}"}}"#,
        i % 1000,
        i,
        digest(i)
    )
}

/// A Harbor PUSH_ARTIFACT webhook (default payload format) with one resource.
fn harbor(i: u64) -> String {
    let svc = i % 1000;
    format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1767225600,"operator":"robot$ci","event_data":{{"resources":[{{"digest":"{d}","tag":"v1.{i}","resource_url":"harbor.example.com/team/svc-{svc}:v1.{i}"}}],"repository":{{"date_created":1767225600,"name":"svc-{svc}","namespace":"team","repo_full_name":"team/svc-{svc}","repo_type":"private"}}}}}}"#,
        d = digest(i)
    )
}
