//! `sluice bench ingest`: the webhook gateway against a real broker (start
//! one with `.ci/kafka-local start`). Accepted webhooks per second from many
//! kept-alive connections, latency from request to 202 at a fixed rate, and
//! the gateway's peak RSS. The gateway is a `sluice ingest` child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http::Conn;
use super::median;

#[derive(clap::Args)]
pub struct IngestBenchArgs {
    /// Bootstrap brokers; default: $SLUICE_TEST_BROKERS, else 127.0.0.1:9092.
    #[arg(long)]
    brokers: Option<String>,
    /// Concurrent kept-alive connections of the throughput runs.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Requests per second of the latency runs.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Seconds of each run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Runs per figure; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// A `sluice ingest` child on a port of its own; SIGTERMed when dropped.
struct Gateway {
    child: Child,
    address: String,
}

impl Gateway {
    fn start(config: &std::path::Path, brokers: &str) -> Result<Gateway> {
        let exe = std::env::current_exe().context("cannot find the sluice binary")?;
        let mut child = Command::new(exe)
            .args(["ingest", "--brokers", brokers])
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run sluice ingest")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(address) = line.trim().strip_prefix("listening on http://") else {
            bail!("sluice ingest did not start: {line:?}");
        };
        Ok(Gateway {
            address: address.to_owned(),
            child,
        })
    }

    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let ready = Conn::connect(&self.address)
                .and_then(|mut c| c.request("GET", "/readyz", &[], b""))
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the gateway never became ready: is a broker at the given address?");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// VmHWM of the gateway process, in bytes.
    fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        status
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

const CONFIG: &str = r#"[listen]
address = "127.0.0.1:0"

[[endpoints]]
name = "bench"
topic = "TOPIC"
format = "json"
kind = "image"
auth = { type = "bearer", token = { env = "SLUICE_BENCH_TOKEN" } }
"#;
const TOKEN: &str = "Bearer bench-token";

fn body(i: u64) -> String {
    format!(
        r#"{{"service":"svc-{}","repository":"registry.example.com/team/svc-{}","tag":"b-{i}","environment":"prod"}}"#,
        i % 500,
        i % 500
    )
}

fn post(conn: &mut Option<Conn>, address: &str, i: u64) -> bool {
    if conn.is_none() {
        *conn = Conn::connect(address).ok();
    }
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", TOKEN),
    ];
    let reply = conn
        .as_mut()
        .map(|c| c.request("POST", "/hooks/bench", &headers, body(i).as_bytes()));
    match reply {
        Some(Ok(r)) => {
            if conn.as_ref().is_some_and(Conn::is_closed) {
                *conn = None;
            }
            r.status == 202
        }
        _ => {
            *conn = None;
            false
        }
    }
}

/// Accepted requests per second from `connections` closed-loop clients.
fn throughput(address: &str, connections: u32, secs: u64, ids: &AtomicU64) -> f64 {
    let accepted = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..connections {
            let accepted = accepted.clone();
            s.spawn(move || {
                let mut conn = None;
                while Instant::now() < deadline {
                    if post(&mut conn, address, ids.fetch_add(1, Ordering::Relaxed)) {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 (ms) from each request's scheduled time to its 202, at a
/// fixed rate (open loop: a slow answer delays no later request's clock).
fn latency(address: &str, rate: u64, secs: u64, ids: &AtomicU64) -> (f64, f64, usize) {
    let total = rate * secs;
    let next = AtomicU64::new(0);
    let latencies = Mutex::new(Vec::with_capacity(total as usize));
    let failed = AtomicUsize::new(0);
    let start = Instant::now() + Duration::from_millis(100);
    let workers = (rate / 25).clamp(4, 64);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut conn = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let due = start + Duration::from_nanos(n * 1_000_000_000 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let ok = post(&mut conn, address, ids.fetch_add(1, Ordering::Relaxed));
                    let ms = due.elapsed().as_secs_f64() * 1000.0;
                    if ok {
                        latencies.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut l = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    l.sort_by(f64::total_cmp);
    let at = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
    };
    (
        at(0.50).unwrap_or(f64::NAN),
        at(0.99).unwrap_or(f64::NAN),
        failed.into_inner(),
    )
}

/// The gateway produces to a topic someone else owns: the bench creates it.
fn create_topic(brokers: &str, topic: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, 3, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in futures_executor::block_on(admin.create_topics([&new], &opts))? {
        result.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

pub fn bench_ingest(args: &IngestBenchArgs) -> Result<()> {
    let brokers = args
        .brokers
        .clone()
        .or_else(|| std::env::var("SLUICE_TEST_BROKERS").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ingest.toml");
    let topic = format!("sluice-bench-ingest-{}", std::process::id());
    std::fs::write(&config, CONFIG.replace("TOPIC", &topic))?;
    create_topic(&brokers, &topic)?;
    // The child reads the token from its environment, as a deployment would.
    std::env::set_var("SLUICE_BENCH_TOKEN", "bench-token");
    let gateway = Gateway::start(&config, &brokers)?;
    gateway.wait_ready()?;
    let ids = AtomicU64::new(0);
    // Warm up: the topic is created, connections and metadata are cached.
    throughput(&gateway.address, args.connections, 1, &ids);
    let mut rates = Vec::new();
    let (mut p50s, mut p99s, mut failures) = (Vec::new(), Vec::new(), 0);
    for run in 1..=args.runs {
        let rate = throughput(&gateway.address, args.connections, args.secs, &ids);
        let (p50, p99, failed) = latency(&gateway.address, args.rate, args.secs, &ids);
        eprintln!("run {run}: {rate:.0} accepted/s; at {}/s p50 {p50:.2} ms, p99 {p99:.2} ms, {failed} not accepted", args.rate);
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
        failures += failed;
    }
    let rss = gateway.peak_rss_bytes() as f64 / (1 << 20) as f64;
    println!(
        "ingest: {:.0} accepted webhooks/s with {} connections; at {}/s: p50 {:.2} ms, p99 {:.2} ms ({failures} not accepted); peak RSS {rss:.1} MiB (medians of {} runs)",
        median(rates),
        args.connections,
        args.rate,
        median(p50s),
        median(p99s),
        args.runs
    );
    Ok(())
}
