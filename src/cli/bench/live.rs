//! `sluice bench run`: the live runtime against a real broker (start one
//! with `.ci/kafka-local start`). Each figure is the median of several
//! runs, each run a separate `sluice run` process, except the commit
//! latency, which runs the engine in this process (see `commit_latency`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(super) use sluice::duration::now_ms;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use sluice::flood::{write_flood, FloodConfig};

use super::commit_latency::CommitBench;

#[derive(clap::Args)]
pub struct LiveArgs {
    /// Bootstrap brokers; default: $SLUICE_TEST_BROKERS, else 127.0.0.1:9092.
    #[arg(long)]
    pub(super) brokers: Option<String>,
    /// Events in the throughput flood.
    #[arg(long, default_value_t = 500_000)]
    pub(super) events: u64,
    #[arg(long, default_value_t = 10_000)]
    pub(super) services: u32,
    /// Partitions of the input topics (tasks).
    #[arg(long, default_value_t = 4)]
    pub(super) partitions: i32,
    /// Runs per figure; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) runs: u32,
    /// Events per second of the latency run.
    #[arg(long, default_value_t = 1_000)]
    pub(super) rate: u32,
    /// Seconds each latency run produces for.
    #[arg(long, default_value_t = 20)]
    pub(super) latency_secs: u64,
    /// Keys in the store of the restore run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) restore_keys: u64,
    /// Keys in the dedup store of the commit-latency run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) dedup_keys: u64,
    /// Timed commits per commit-latency run.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) commits: u32,
    /// `sluice run --threads` of the throughput and latency runs (default:
    /// run's own, one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(super) threads: Option<u16>,
    /// Figures to measure, comma separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    Throughput,
    Latency,
    Restore,
    Commit,
    /// The cost of metrics and tracing (not in the default set).
    Telemetry,
}

/// A line of the table: name, target, the runs' values, unit.
pub(super) type Row = (String, &'static str, Vec<f64>, &'static str);

pub fn bench_live(args: &LiveArgs) -> Result<()> {
    let brokers = args.brokers.clone().unwrap_or_else(|| {
        std::env::var("SLUICE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
    });
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let bench = Bench {
        brokers,
        dir: dir.path().to_owned(),
        tag: format!("bench-{}", now_ms()),
        threads: args.threads,
    };
    let wants =
        |f: Figure| (args.only.is_empty() && f != Figure::Telemetry) || args.only.contains(&f);
    let row = |name: &str, target: &'static str, runs: &Figures, unit: &'static str| -> Row {
        (name.to_owned(), target, runs.clone(), unit)
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut last_rows = Vec::new();
    if wants(Figure::Throughput) {
        let t = bench.throughput(args)?;
        rows.push(row(
            "sustained ev/s, exactly_once",
            "≥ 100,000",
            &t.eos,
            "ev/s",
        ));
        rows.push(row("sustained ev/s, at_least_once", "", &t.alo, "ev/s"));
        rows.push(row(
            "process CPU-s per 1,000,000 events, exactly_once",
            "",
            &t.cpu_eos,
            "s",
        ));
        rows.push(row(
            "process CPU-s per 1,000,000 events, at_least_once",
            "",
            &t.cpu_alo,
            "s",
        ));
        rows.push(row("commit p50, exactly_once", "", &t.commit_p50, "ms"));
        rows.push(row("commit p99, exactly_once", "", &t.commit_p99, "ms"));
        last_rows.push(row("peak RSS, throughput runs", "< 256 MiB", &t.rss, "MiB"));
    }
    if wants(Figure::Latency) {
        let l = bench.latency(args)?;
        rows.push(row("latency p50 at the fixed rate", "", &l.p50, "ms"));
        rows.push(row(
            "latency p99 at the fixed rate",
            "≤ 125 (interval + 25)",
            &l.p99,
            "ms",
        ));
        rows.push(row("commit p50 at the fixed rate", "", &l.commit_p50, "ms"));
        rows.push(row("commit p99 at the fixed rate", "", &l.commit_p99, "ms"));
    }
    if wants(Figure::Restore) {
        let (rate, rss) = bench.restore(args)?;
        rows.push(row(
            "restore, changelog records/s",
            "≥ 1,500,000",
            &rate,
            "rec/s",
        ));
        rows.push(row(
            "peak RSS, restore of the store",
            "< 256 MiB",
            &rss,
            "MiB",
        ));
        let (rate, per_task) = bench.restore_tasks(args)?;
        rows.push(row(
            "restore of cicd.toml's tasks (6 changelogs each), records/s",
            "",
            &rate,
            "rec/s",
        ));
        rows.push(row("restore, ms per task", "", &per_task, "ms"));
    }
    rows.extend(last_rows);
    if wants(Figure::Telemetry) {
        rows.extend(super::telemetry::overhead(&bench, args)?);
    }
    if wants(Figure::Commit) {
        let (p99, max) = bench.commit_latency(args)?;
        let keys = args.dedup_keys;
        rows.push((
            format!("commit p99, {keys} dedup keys (state work)"),
            "",
            p99,
            "ms",
        ));
        rows.push((
            format!("commit max, {keys} dedup keys (state work)"),
            "",
            max,
            "ms",
        ));
    }
    println!("\n| figure | target | median | runs |\n|---|---|---|---|");
    for (name, target, runs, unit) in rows {
        let precision = match unit {
            "ms" | "s" => 1,
            "x" => 3,
            _ => 0,
        };
        println!(
            "| {name} | {target} | {:.precision$} {unit} | {} |",
            median(runs.clone()),
            runs.iter()
                .map(|v| format!("{v:.precision$}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub(super) struct Bench {
    pub(super) brokers: String,
    pub(super) dir: PathBuf,
    pub(super) tag: String,
    /// `--threads` for the runs, when given.
    pub(super) threads: Option<u16>,
}

pub(super) type Figures = Vec<f64>;

impl Bench {
    /// `--threads N` when the bench was given it.
    pub(super) fn threads_arg(&self) -> Vec<String> {
        self.threads
            .map(|n| vec!["--threads".to_owned(), n.to_string()])
            .unwrap_or_default()
    }

    pub(super) fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    pub(super) fn create_topics(&self, topics: &[(&str, i32, bool)]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, parts, compact)| {
                let t = NewTopic::new(name, *parts, TopicReplication::Fixed(1));
                if *compact {
                    t.set("cleanup.policy", "compact")
                } else {
                    // The flood's timestamps must not be deleted by retention mid-run.
                    t.set("retention.ms", "-1")
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in futures_executor::block_on(admin.create_topics(&new, &opts))? {
            r.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn producer(&self) -> Result<BaseProducer> {
        Ok(self
            .config()
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("partitioner", "murmur2_random")
            .create()?)
    }

    /// The default topology with this run's topics and app id.
    pub(super) fn topology(
        &self,
        name: &str,
        text: &str,
        app: &str,
        topics: &[(&str, &str)],
    ) -> Result<PathBuf> {
        let mut text = text.replace("id = \"cicd\"", &format!("id = \"{app}\""));
        for (from, to) in topics {
            text = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
        }
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Creates `<prefix>-images` and `<prefix>-alerts` with the bench's
    /// partitions and produces a flood of `events` to them; `headers(n)`
    /// gives the n-th record's headers. Returns the two topics.
    pub(super) fn flood_inputs(
        &self,
        prefix: &str,
        args: &LiveArgs,
        events: u64,
        headers: impl Fn(u64) -> Option<rdkafka::message::OwnedHeaders>,
    ) -> Result<(String, String)> {
        let (images, alerts) = (format!("{prefix}-images"), format!("{prefix}-alerts"));
        self.create_topics(&[
            (&images, args.partitions, false),
            (&alerts, args.partitions, false),
        ])?;
        let mut flood = Vec::new();
        // Recent timestamps: Kafka 4 refuses records over an hour in the future,
        // and retention would delete ones older than a week.
        let cfg = FloodConfig {
            events,
            services: args.services,
            start_ts: now_ms() - 3 * 86_400_000,
            ..FloodConfig::default()
        };
        write_flood(&cfg, &mut flood)?;
        let renames = HashMap::from([
            ("docker-events", images.as_str()),
            ("alert-events", alerts.as_str()),
        ]);
        eprintln!("producing {events} events to {images} and {alerts}");
        produce_flood_with(&self.producer()?, &flood, &renames, headers)?;
        Ok((images, alerts))
    }

    /// `cicd.toml` as app `app`, reading `images` and `alerts`.
    pub(super) fn cicd_topology(&self, app: &str, images: &str, alerts: &str) -> Result<PathBuf> {
        self.topology(
            app,
            CICD,
            app,
            &[
                ("docker-events", images),
                ("alert-events", alerts),
                ("deploy-intents", &format!("{app}-out")),
            ],
        )
    }

    /// Runs a flood through cicd.toml under both guarantees, alternating.
    fn throughput(&self, args: &LiveArgs) -> Result<Throughput> {
        let (images, alerts) = self.flood_inputs(&self.tag, args, args.events, |_| None)?;
        let mut t = Throughput::default();
        for run in 0..args.runs {
            for guarantee in ["exactly_once", "at_least_once"] {
                let app = format!("{}-{guarantee}-{run}", self.tag);
                let topology = self.cicd_topology(&app, &images, &alerts)?;
                let (stats, peak) = self.sluice_run(
                    &topology,
                    &app,
                    &[
                        "--clock",
                        "event",
                        "--guarantee",
                        guarantee,
                        "--exit-after-idle",
                        "2s",
                    ],
                )?;
                let rate = stats.processed as f64 / (stats.active_ms.max(1) as f64 / 1000.0);
                eprintln!(
                    "{guarantee} run {run}: {} events in {} ms: {rate:.0} ev/s, {:.1} CPU-s, {} commits, {} rebalances, {} restored records, input buffered at most {:.1} MiB, peak RSS {peak:.1} MiB",
                    stats.processed, stats.active_ms, stats.cpu_seconds, stats.commits, stats.rebalances, stats.restored_records,
                    stats.max_buffered_bytes as f64 / 1_048_576.0
                );
                if stats.processed < args.events {
                    bail!(
                        "the run processed {} of {} events",
                        stats.processed,
                        args.events
                    );
                }
                let cpu_per_million = stats.cpu_seconds / stats.processed.max(1) as f64 * 1e6;
                if guarantee == "exactly_once" {
                    t.eos.push(rate);
                    t.cpu_eos.push(cpu_per_million);
                    t.commit_p50.push(stats.commit_ms_p50);
                    t.commit_p99.push(stats.commit_ms_p99);
                } else {
                    t.alo.push(rate);
                    t.cpu_alo.push(cpu_per_million);
                }
                t.rss.push(peak);
            }
        }
        Ok(t)
    }

    /// Runs `sluice run` to its idle exit; returns its stats and peak RSS (MiB).
    pub(super) fn sluice_run(
        &self,
        topology: &Path,
        name: &str,
        extra: &[&str],
    ) -> Result<(Stats, f64)> {
        self.sluice_run_with(topology, name, extra, &[])
    }

    /// As [`Bench::sluice_run`], with environment variables.
    pub(super) fn sluice_run_with(
        &self,
        topology: &Path,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(Stats, f64)> {
        let stats_path = self.dir.join(format!("{name}.stats.json"));
        let exe = std::env::current_exe().context("cannot find the sluice binary")?;
        let child = Command::new(exe)
            .envs(env.iter().copied())
            .arg("run")
            .arg(topology)
            .stdout(std::process::Stdio::null())
            .args(["--brokers", &self.brokers])
            .arg("--state-dir")
            .arg(self.dir.join(format!("{name}.state")))
            .arg("--stats-json")
            .arg(&stats_path)
            .args(self.threads_arg())
            .args(extra)
            .spawn()
            .context("cannot start sluice run")?;
        let status = child.wait_with_output()?.status;
        if !status.success() {
            bail!("sluice run failed: {status}");
        }
        // The run's own VmHWM: a fork's rusage would count the pages it
        // shared with this (large) process before exec.
        let stats: Stats = serde_json::from_slice(&std::fs::read(&stats_path)?)?;
        let peak = stats.peak_rss_bytes as f64 / 1_048_576.0;
        Ok((stats, peak))
    }

    /// Times the commits of a task whose dedup store holds `dedup_keys`
    /// entries, most of them only in RocksDB; returns each run's p99 and max.
    fn commit_latency(&self, args: &LiveArgs) -> Result<(Figures, Figures)> {
        let bench = CommitBench {
            keys: args.dedup_keys,
            commits: args.commits,
            per_commit: 1_000,
            cache_capacity: 50_000,
        };
        let (mut p99s, mut maxes) = (vec![], vec![]);
        for run in 0..args.runs {
            let dir = self.dir.join(format!("commit-latency-{run}"));
            let r = bench.run_once(&dir)?;
            eprintln!(
                "commit run {run}: {} commits over {} keys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                args.commits, args.dedup_keys, r.p50_ms, r.p99_ms, r.max_ms
            );
            p99s.push(r.p99_ms);
            maxes.push(r.max_ms);
            std::fs::remove_dir_all(&dir).ok();
        }
        Ok((p99s, maxes))
    }
}

#[derive(serde::Deserialize)]
pub(super) struct Stats {
    pub(super) processed: u64,
    pub(super) commits: u64,
    pub(super) restored_records: u64,
    pub(super) restore_ms: u64,
    pub(super) active_ms: u64,
    pub(super) peak_rss_bytes: u64,
    /// Rebalances the run's members went through (a second member joining
    /// after the first started moves tasks, whose stores then reopen).
    #[serde(default)]
    pub(super) rebalances: u64,
    /// The run's CPU time, user and system, for the whole process.
    #[serde(default)]
    pub(super) cpu_seconds: f64,
    #[serde(default)]
    pub(super) commit_ms_p50: f64,
    #[serde(default)]
    pub(super) commit_ms_p99: f64,
    /// The most input the run's tasks buffered at once.
    #[serde(default)]
    pub(super) max_buffered_bytes: u64,
}

/// The throughput runs' figures, one value per run.
#[derive(Default)]
struct Throughput {
    eos: Figures,
    alo: Figures,
    rss: Figures,
    cpu_eos: Figures,
    cpu_alo: Figures,
    commit_p50: Figures,
    commit_p99: Figures,
}

pub(super) const CICD: &str = include_str!("../../../topologies/cicd.toml");

/// Sends, serving delivery reports while the local queue is full.
pub(super) fn send_blocking<K, P>(
    producer: &BaseProducer,
    record: BaseRecord<'_, K, P>,
) -> Result<()>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    sluice::kafka::run::producer::send(producer, record).context("cannot produce")
}

/// Produces a flood; `headers(n)` gives the n-th record's headers, if any.
pub(super) fn produce_flood_with(
    producer: &BaseProducer,
    flood: &[u8],
    topics: &HashMap<&str, &str>,
    headers: impl Fn(u64) -> Option<rdkafka::message::OwnedHeaders>,
) -> Result<()> {
    for (n, line) in flood
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        let topic = topics[v["topic"].as_str().context("topic")?];
        let value = v["value"].to_string();
        let mut record = BaseRecord::<str, str>::to(topic)
            .payload(&value)
            .timestamp(v["ts"].as_i64().context("ts")?);
        let key = v["key"].as_str().map(str::to_owned);
        if let Some(k) = &key {
            record = record.key(k);
        }
        if let Some(h) = headers(n as u64) {
            record = record.headers(h);
        }
        send_blocking(producer, record)?;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
