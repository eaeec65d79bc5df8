//! `sluice bench run --only restore`: how fast fresh instances restore
//! a task's state from its changelogs. First, one large dedup store;
//! second, the tasks of `topologies/cicd.toml` after a flood, each task with
//! a changelog per store (dedup, debounce, throttle, gate, timers, clock):
//! what a restore costs when many small changelogs make up a task's state.

use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::producer::{BaseRecord, Producer};

use super::live::{send_blocking, Bench, Figures, LiveArgs};

/// Events of the flood that fills the changelogs.
const EVENTS: u64 = 200_000;

impl Bench {
    /// Fills a dedup store's changelog with `restore_keys` entries, then
    /// times how fast fresh instances restore it.
    pub(super) fn restore(&self, args: &LiveArgs) -> Result<(Figures, Figures)> {
        let app = format!("{}-restore", self.tag);
        let (input, changelog) = (format!("{app}-in"), format!("{app}-dedup-changelog"));
        self.create_topics(&[(&input, 1, false), (&changelog, 1, true)])?;
        let producer = self.producer()?;
        eprintln!("writing {} changelog records", args.restore_keys);
        for i in 0..args.restore_keys {
            let key = format!(
                "svc-{:05}\u{0}prod\u{0}registry.example.com/team-{}/svc:v1.{i}",
                i % 10_000,
                i % 40
            );
            let value = (i as u128 * 1_000_003).to_le_bytes();
            let record = BaseRecord::<[u8], [u8]>::to(&changelog)
                .partition(0)
                .key(key.as_bytes())
                .payload(&value);
            send_blocking(&producer, record)?;
        }
        producer.flush(Duration::from_secs(120))?;
        let topology = self.topology(
            &app,
            &RESTORE_TOPOLOGY
                .replace("@APP@", &app)
                .replace("@IN@", &input),
            &app,
            &[],
        )?;
        let (mut rates, mut rss) = (vec![], vec![]);
        for run in 0..args.runs {
            let (stats, peak) = self.sluice_run(
                &topology,
                &format!("{app}-{run}"),
                &["--exit-after-idle", "1s"],
            )?;
            if stats.restored_records < args.restore_keys {
                bail!(
                    "restored {} of {} records",
                    stats.restored_records,
                    args.restore_keys
                );
            }
            let rate = stats.restored_records as f64 / (stats.restore_ms.max(1) as f64 / 1000.0);
            eprintln!(
                "restore run {run}: {} records in {} ms: {rate:.0} rec/s, peak RSS {peak:.1} MiB",
                stats.restored_records, stats.restore_ms
            );
            rates.push(rate);
            rss.push(peak);
        }
        Ok((rates, rss))
    }

    /// Fills the changelogs with one run over a flood, then restores them in
    /// fresh state directories (one thread: the tasks one after another).
    /// Returns the changelog records restored per second and the mean
    /// milliseconds per task, one value per run.
    pub(super) fn restore_tasks(&self, args: &LiveArgs) -> Result<(Figures, Figures)> {
        let app = format!("{}-tasks", self.tag);
        let (images, alerts) = self.flood_inputs(&app, args, EVENTS, |_| None)?;
        let topology = self.cicd_topology(&app, &images, &alerts)?;
        let one_thread = [
            "--clock",
            "event",
            "--threads",
            "1",
            "--exit-after-idle",
            "1s",
        ];
        let (fill, _) = self.sluice_run(&topology, &format!("{app}-fill"), &one_thread)?;
        eprintln!("filled the changelogs: {} events processed", fill.processed);
        let (mut rates, mut per_task) = (vec![], vec![]);
        for run in 0..args.runs {
            let (stats, _) = self.sluice_run(&topology, &format!("{app}-{run}"), &one_thread)?;
            if stats.restored_records == 0 {
                bail!("the fresh instance restored nothing");
            }
            let ms = stats.restore_ms.max(1) as f64;
            let rate = stats.restored_records as f64 / (ms / 1000.0);
            let tasks = f64::from(args.partitions.max(1));
            eprintln!(
                "task restore run {run}: {} records in {} ms over {tasks} tasks: {rate:.0} rec/s",
                stats.restored_records, stats.restore_ms
            );
            rates.push(rate);
            per_task.push(ms / tasks);
        }
        Ok((rates, per_task))
    }
}

const RESTORE_TOPOLOGY: &str = r#"
[app]
id = "@APP@"
[[sources]]
name = "images"
topic = "@IN@"
kind = "image"
[[operators]]
name = "dedup"
type = "dedup"
input = "images"
key = ["service", "environment", "image"]
ttl = "10m"
[[sinks]]
name = "out"
input = "dedup"
topic = "@APP@-out"
"#;
