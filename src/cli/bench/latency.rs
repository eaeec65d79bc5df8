//! `sluice bench run --only latency`: unique images at a fixed rate through
//! a topology without debounce, timed from the producer's send to the
//! intent being readable with `read_committed`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::live::{send_blocking, Bench, Figures, LiveArgs, Stats};

/// The latency runs' figures, one value per run.
#[derive(Default)]
pub(super) struct Latency {
    pub(super) p50: Figures,
    pub(super) p99: Figures,
    pub(super) commit_p50: Figures,
    pub(super) commit_p99: Figures,
}

impl Bench {
    /// Produces unique images at a fixed rate through a topology without
    /// debounce (so every image becomes an intent at once) and measures
    /// from produce to the intent being readable with read_committed; also
    /// the commits' own p50/p99 at that rate (the run's `--stats-json`).
    pub(super) fn latency(&self, args: &LiveArgs) -> Result<Latency> {
        let mut figures = Latency::default();
        for run in 0..args.runs {
            let app = format!("{}-latency-{run}", self.tag);
            let (images, alerts, out) = (
                format!("{app}-images"),
                format!("{app}-alerts"),
                format!("{app}-out"),
            );
            self.create_topics(&[
                (&images, args.partitions, false),
                (&alerts, args.partitions, false),
                (&out, args.partitions, false),
            ])?;
            let topology = self.topology(
                &app,
                LATENCY_TOPOLOGY,
                &app,
                &[
                    ("images-in", &images),
                    ("alerts-in", &alerts),
                    ("intents-out", &out),
                ],
            )?;
            let exe = std::env::current_exe()?;
            let stats_path = self.dir.join(format!("{app}.stats.json"));
            let mut child = Command::new(exe)
                .arg("run")
                .arg(&topology)
                .args(["--brokers", &self.brokers, "--clock", "wall"])
                .args(self.threads_arg())
                .arg("--state-dir")
                .arg(self.dir.join(format!("{app}.state")))
                .arg("--stats-json")
                .arg(&stats_path)
                .spawn()?;
            let samples = self.measure_latency(&images, &out, args);
            // SAFETY: a plain signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait()?;
            let mut samples = samples?;
            // A run stopped by SIGTERM writes its statistics as it exits.
            if !status.success() {
                bail!("the latency run's `sluice run` ended with {status}");
            }
            let stats = std::fs::read(&stats_path).with_context(|| {
                format!(
                    "`sluice run` wrote no statistics to {}",
                    stats_path.display()
                )
            })?;
            let stats: Stats = serde_json::from_slice(&stats)?;
            samples.sort_by(f64::total_cmp);
            let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
            eprintln!(
                "latency run {run}: {} intents, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} commits, p50 {:.1} ms, p99 {:.1} ms",
                samples.len(),
                pct(0.5),
                pct(0.99),
                pct(1.0),
                stats.commits,
                stats.commit_ms_p50,
                stats.commit_ms_p99,
            );
            figures.p50.push(pct(0.5));
            figures.p99.push(pct(0.99));
            figures.commit_p50.push(stats.commit_ms_p50);
            figures.commit_p99.push(stats.commit_ms_p99);
        }
        Ok(figures)
    }

    fn measure_latency(&self, images: &str, out: &str, args: &LiveArgs) -> Result<Vec<f64>> {
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("{}-measure", self.tag))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..args.partitions {
            tpl.add_partition_offset(out, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        // Warm up: one image, then wait until its intent comes out.
        let producer = self.producer_low_latency()?;
        send_image(&producer, images, u64::MAX)?;
        let warm = Instant::now();
        while poll_seq(&consumer).is_none_or(|s| s != u64::MAX) {
            if warm.elapsed() > Duration::from_secs(60) {
                bail!("the latency run never produced its warm-up intent");
            }
        }
        let done = Arc::new(AtomicBool::new(false));
        let sender = {
            let (sent, done, images) = (Arc::clone(&sent), Arc::clone(&done), images.to_owned());
            let (rate, secs) = (args.rate as u64, args.latency_secs);
            std::thread::spawn(move || -> Result<()> {
                let start = Instant::now();
                for seq in 0..rate * secs {
                    let due = start + Duration::from_micros(seq * 1_000_000 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    sent.lock()
                        .map_err(|_| anyhow::anyhow!("lock"))?
                        .insert(seq, Instant::now());
                    send_image(&producer, &images, seq)?;
                    producer.poll(Duration::ZERO);
                }
                producer.flush(Duration::from_secs(30))?;
                done.store(true, Ordering::SeqCst);
                Ok(())
            })
        };
        let expected = args.rate as u64 * args.latency_secs;
        let mut latencies = Vec::with_capacity(expected as usize);
        let deadline = Instant::now() + Duration::from_secs(args.latency_secs + 60);
        while (latencies.len() as u64) < expected && Instant::now() < deadline {
            if let Some(seq) = poll_seq(&consumer) {
                let at = Instant::now();
                if let Some(t) = sent.lock().map_err(|_| anyhow::anyhow!("lock"))?.get(&seq) {
                    latencies.push(at.duration_since(*t).as_secs_f64() * 1000.0);
                }
            }
        }
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        if (latencies.len() as u64) < expected {
            bail!("only {} of {expected} intents came out", latencies.len());
        }
        Ok(latencies)
    }

    fn producer_low_latency(&self) -> Result<BaseProducer> {
        Ok(self
            .config()
            .set("linger.ms", "0")
            .set("partitioner", "murmur2_random")
            .create()?)
    }
}

/// Every new image is an intent at once: what end-to-end latency measures.
const LATENCY_TOPOLOGY: &str = r#"
[app]
id = "cicd"
[[sources]]
name = "images"
topic = "images-in"
kind = "image"
environment = "prod"
[[sources]]
name = "alerts"
topic = "alerts-in"
kind = "alert"
environment = "prod"
[[operators]]
name = "dedup"
type = "dedup"
input = "images"
key = ["service", "image"]
ttl = "10m"
[[operators]]
name = "gate"
type = "alert_gate"
images = "dedup"
alerts = "alerts"
block_on = ["critical"]
[[sinks]]
name = "intents"
input = "gate"
topic = "intents-out"
"#;

fn send_image(producer: &BaseProducer, topic: &str, seq: u64) -> Result<()> {
    let service = format!("svc-{}", seq % 100);
    let value = format!(
        r#"{{"service":"{service}","repository":"registry.example.com/{service}","tag":"t{seq}"}}"#
    );
    send_blocking(
        producer,
        BaseRecord::<str, str>::to(topic)
            .key(&service)
            .payload(&value),
    )
}

/// The sequence number in the tag of the next intent read, if any.
fn poll_seq(consumer: &BaseConsumer) -> Option<u64> {
    let m = consumer.poll(Duration::from_millis(5))?.ok()?;
    let v: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
    let image = v["image"].as_str()?;
    image.rsplit_once(":t")?.1.parse().ok()
}
