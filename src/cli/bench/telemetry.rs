//! `sluice bench run --only telemetry`: what metrics and tracing cost a
//! run. The same flood, through `cicd.toml` under exactly-once, is read by
//! runs that alternate between four settings: nothing exported; metrics
//! served and scraped every second; tracing with 1% of the records' traces
//! sampled (their senders sampled at 0.01, as `sluice ingest --trace-ratio
//! 0.01` would); tracing with every trace sampled. Spans go to an OTLP
//! receiver in this process that discards them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::message::{Header, OwnedHeaders};

use super::live::{Bench, LiveArgs, Row, CICD};

/// One setting of the comparison.
struct Setting {
    name: &'static str,
    /// Read the flood whose every trace is sampled.
    all_sampled: bool,
    metrics: bool,
    trace_ratio: Option<&'static str>,
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "off",
        all_sampled: false,
        metrics: false,
        trace_ratio: None,
    },
    Setting {
        name: "metrics",
        all_sampled: false,
        metrics: true,
        trace_ratio: None,
    },
    Setting {
        name: "tracing 0.01",
        all_sampled: false,
        metrics: false,
        trace_ratio: Some("0.01"),
    },
    Setting {
        name: "tracing 1.0",
        all_sampled: true,
        metrics: false,
        trace_ratio: Some("1.0"),
    },
];

pub(super) fn overhead(bench: &Bench, args: &LiveArgs) -> Result<Vec<Row>> {
    let floods = [produce(bench, args, false)?, produce(bench, args, true)?];
    let sink = DiscardOtlp::start()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SETTINGS.len()];
    for run in 0..args.runs {
        for (i, setting) in SETTINGS.iter().enumerate() {
            let (images, alerts) = &floods[usize::from(setting.all_sampled)];
            let rate = run_once(bench, &sink, setting, images, alerts, run)?;
            eprintln!("telemetry {} run {run}: {rate:.0} ev/s", setting.name);
            rates[i].push(rate);
        }
    }
    let mut rows = Vec::new();
    for (i, setting) in SETTINGS.iter().enumerate() {
        rows.push((
            format!("ev/s, exactly_once, {}", setting.name),
            "",
            rates[i].clone(),
            "ev/s",
        ));
    }
    for (i, setting) in SETTINGS.iter().enumerate().skip(1) {
        let ratios: Vec<f64> = rates[i]
            .iter()
            .zip(&rates[0])
            .map(|(r, off)| r / off)
            .collect();
        let target = match setting.name {
            "metrics" => "≥ 0.97",
            "tracing 0.01" => "≥ 0.95",
            _ => "",
        };
        rows.push((
            format!("{} / off (per-run ratios)", setting.name),
            target,
            ratios,
            "x",
        ));
    }
    eprintln!("the OTLP receiver took {} exports", sink.exports());
    Ok(rows)
}

/// Produces the throughput flood to topics of its own, each record with a
/// `traceparent` (sampled for every record, or for one in a hundred).
fn produce(bench: &Bench, args: &LiveArgs, all_sampled: bool) -> Result<(String, String)> {
    let kind = if all_sampled { "all" } else { "some" };
    let prefix = format!("{}-traced-{kind}", bench.tag);
    bench.flood_inputs(&prefix, args, args.events, |n| {
        let sampled = all_sampled || n % 100 == 0;
        let traceparent = format!(
            "00-{:032x}-{:016x}-{}",
            n + 1,
            n + 1,
            if sampled { "01" } else { "00" }
        );
        Some(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(traceparent.as_str()),
        }))
    })
}

fn run_once(
    bench: &Bench,
    sink: &DiscardOtlp,
    setting: &Setting,
    images: &str,
    alerts: &str,
    run: u32,
) -> Result<f64> {
    let app = format!(
        "{}-telemetry-{}-{run}",
        bench.tag,
        setting.name.replace([' ', '.'], "-")
    );
    let out = format!("{app}-out");
    let topology = bench.topology(
        &app,
        CICD,
        &app,
        &[
            ("docker-events", images),
            ("alert-events", alerts),
            ("deploy-intents", &out),
        ],
    )?;
    let mut extra: Vec<String> = ["--clock", "event", "--exit-after-idle", "2s"]
        .map(String::from)
        .to_vec();
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut scraper = None;
    if setting.metrics {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        extra.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
        scraper = Some(Scraper::start(port));
    }
    if let Some(ratio) = setting.trace_ratio {
        extra.extend(["--trace-ratio".into(), ratio.into()]);
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", sink.endpoint),
        ));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (stats, _) = bench.sluice_run_with(&topology, &app, &extra, &env)?;
    if let Some(s) = scraper {
        eprintln!("  {} scrapes", s.stop());
    }
    Ok(stats.processed as f64 / (stats.active_ms.max(1) as f64 / 1000.0))
}

/// Scrapes `/metrics` every second, as Prometheus would.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Scraper {
    fn start(port: u16) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let address = format!("127.0.0.1:{port}");
            let mut scrapes = 0;
            let mut conn = None;
            while !flag.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = super::http::Conn::connect(&address).ok();
                }
                let answered = conn
                    .as_mut()
                    .map(|c| c.request("GET", "/metrics", &[], b""));
                match answered {
                    Some(Ok(reply)) if reply.status == 200 => scrapes += 1,
                    _ => conn = None,
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            scrapes
        });
        Scraper { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// An OTLP/HTTP receiver that answers 200 and keeps nothing.
struct DiscardOtlp {
    endpoint: String,
    exports: Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl DiscardOtlp {
    fn start() -> Result<DiscardOtlp> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")?;
        let exports = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&exports);
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { "" }
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DiscardOtlp {
            endpoint: format!("http://{addr}"),
            exports,
            _runtime: runtime,
        })
    }

    fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }
}
