//! The commit-latency figure of `sluice bench run`: how long a task's commit
//! takes on the processing thread when a dedup store holds far more keys
//! than its table cache, so that expiry has to reach entries that live only
//! in RocksDB.
//!
//! It runs the engine in this process on a RocksDB store (no broker: the
//! figure is the state work of a commit, `prepare_commit` plus the write,
//! which is what runs on the processing thread between polls).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sluice::engine::{DeadLetter, Engine, EngineOptions, Output, OutputError, SourceInput};
use sluice::record::Record;
use sluice::state::{RocksBackend, SharedMemory, StateBackend};
use sluice::topology::{Sink, Topology};

/// How one run went: per-commit latencies in ms.
pub struct CommitRun {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a run measures.
pub struct CommitBench {
    /// Entries in the dedup store before the timed commits.
    pub keys: u64,
    /// Timed commits.
    pub commits: u32,
    /// New keys processed between two commits.
    pub per_commit: u32,
    /// Table cache entries, as a live task of a 4-partition run gets by default.
    pub cache_capacity: usize,
}

const TTL_MS: u64 = 600_000;
/// Stream time between two commits (the live runtime's default commit interval).
const COMMIT_INTERVAL_MS: u64 = 100;

const TOPOLOGY: &str = r#"
[app]
id = "bench-commit"
[[sources]]
name = "images"
topic = "images"
kind = "image"
environment = "prod"
[[operators]]
name = "dedup"
type = "dedup"
input = "images"
key = ["service", "environment", "image"]
ttl = "10m"
[[sinks]]
name = "out"
input = "dedup"
topic = "out"
"#;

/// Discards the output: only the commits are measured.
struct Discard;

impl Output for Discard {
    fn record(&mut self, _sink: &Sink, _record: &Record) -> Result<(), OutputError> {
        Ok(())
    }
    fn dead_letter(&mut self, _letter: DeadLetter<'_>) -> Result<(), OutputError> {
        Ok(())
    }
}

impl CommitBench {
    /// One run in a fresh state directory under `dir`.
    pub fn run_once(&self, dir: &Path) -> Result<CommitRun> {
        let topo = Arc::new(Topology::parse("bench-commit.toml", TOPOLOGY)?);
        // As a live task's store: no write-ahead log, the run's memory budget.
        let memory = SharedMemory::for_live_run();
        let mut backend = RocksBackend::open_changelogged(dir, &memory, &[])
            .context("opening the bench store")?;
        let start = self.fill(&mut backend)?;
        let opts = EngineOptions {
            cache_capacity: self.cache_capacity,
            ..EngineOptions::default()
        };
        let mut engine = Engine::open(topo, Box::new(backend), &opts)?;
        let mut latencies = Vec::with_capacity(self.commits as usize);
        let mut seq = 0u64;
        for commit in 0..u64::from(self.commits) {
            let now = start + commit * COMMIT_INTERVAL_MS;
            for _ in 0..self.per_commit {
                let value = format!(
                    r#"{{"service":"svc-{}","repository":"registry.example.com/svc","tag":"n{seq}"}}"#,
                    seq % 10_000
                );
                seq += 1;
                let input = SourceInput {
                    topic: "images",
                    key: None,
                    value: &value,
                    fields: None,
                    decoded: false,
                    origin: Default::default(),
                };
                engine.process(input, now, &mut Discard)?;
            }
            let began = Instant::now();
            engine.commit()?;
            latencies.push(began.elapsed().as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
        Ok(CommitRun {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        })
    }

    /// Writes `keys` dedup entries last passed over the two ttls before the
    /// returned start time: half have expired when the timed commits begin.
    fn fill(&self, backend: &mut RocksBackend) -> Result<u64> {
        let span = 2 * TTL_MS;
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(100_000);
        let mut written = 0;
        for i in 0..self.keys {
            let key = format!(
                "svc-{:05}\u{0}prod\u{0}registry.example.com/svc:v{i}",
                i % 10_000
            );
            let passed_at = i * span / self.keys.max(1);
            entries.push((key.into_bytes(), postcard::to_stdvec(&passed_at)?));
            if entries.len() == entries.capacity() || i + 1 == self.keys {
                written += sluice::engine::restore(
                    backend as &mut dyn StateBackend,
                    entries
                        .iter()
                        .map(|(k, v)| ("op/dedup", k.as_slice(), Some(v.as_slice()))),
                )?;
                entries.clear();
            }
        }
        backend.sync()?;
        anyhow::ensure!(
            written as u64 == self.keys,
            "filled {written} of {} keys",
            self.keys
        );
        Ok(span)
    }
}
