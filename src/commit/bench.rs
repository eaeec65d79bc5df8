//! `sluice bench commit`: intents to pushed commits on a local bare
//! repository. Intents are handed in at a steady rate through a channel;
//! latency runs from hand-in to the push that made the commit visible on
//! the remote, and throughput is intents applied per second.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::batch::Delivery;
use super::committer::{CommitError, Committer, Counters, RunOptions};
use super::config::CommitConfig;
use super::dead_letter::FileDeadLetters;
use super::git::Remote;
use super::source::ChannelSource;

/// One benchmark run's settings.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub intents: u64,
    pub services: u32,
    pub window: Duration,
    /// Intents handed in per second; 0 hands them all in at once.
    pub rate: u64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub intents_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub counters: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setting up the repository: {0}")]
    Setup(String),
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Runs once in a fresh temporary repository.
pub fn run_once(opts: &BenchOptions) -> Result<BenchResult, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    seed_repository(dir.path(), opts.services)?;
    let config = config(dir.path(), opts.window)?;
    let remote = Remote::new(&config.repository, &config.author, None)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut committer = Committer::open(&config, &remote, &dir.path().join("work"))?;
    let mut dead = FileDeadLetters::open(&dir.path().join("dead.jsonl"), "bench.dead-letter")
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let opts_copy = *opts;
    let producer = std::thread::spawn(move || produce(&opts_copy, &tx));
    let mut latencies: Vec<Duration> = Vec::with_capacity(opts.intents as usize);
    let mut first_in: Option<Instant> = None;
    let mut last_out = Instant::now();
    let stop = AtomicBool::new(false);
    let mut on_batch = |batch: &[Delivery], pushed: Instant| {
        for d in batch {
            first_in = Some(first_in.map_or(d.received, |f| f.min(d.received)));
            latencies.push(pushed.saturating_duration_since(d.received));
        }
        last_out = pushed;
    };
    committer.run(
        &mut ChannelSource(rx),
        &mut dead,
        RunOptions {
            stop: &stop,
            idle_exit: None,
            on_batch: &mut on_batch,
        },
    )?;
    let _ = producer.join();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let span = first_in.map_or(Duration::ZERO, |f| last_out.saturating_duration_since(f));
    let applied = committer.counters.applied + committer.counters.superseded;
    Ok(BenchResult {
        intents_per_sec: applied as f64 / span.as_secs_f64().max(1e-9),
        p50: pick(0.5),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        counters: committer.counters.clone(),
    })
}

/// Hands in `intents` deploys round-robin over the services, each with a
/// new image, paced at `rate` per second.
fn produce(opts: &BenchOptions, tx: &mpsc::Sender<Delivery>) {
    let start = Instant::now();
    for i in 0..opts.intents {
        if opts.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / opts.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let service = format!("svc-{:05}", i % u64::from(opts.services));
        let value = serde_json::json!({
            "action": "deploy", "service": service, "environment": "prod",
            "image": format!("registry.example.com/team/{service}:1.0.{i}"),
            "previous_image": null, "reason": "bench", "intent_id": format!("bench-{i:08}"),
            "caused_by": "bench",
        });
        let d = Delivery {
            value: value.to_string(),
            key: Some(service),
            ts: i,
            received: Instant::now(),
            origin: format!("bench:{i}"),
            trace: None,
        };
        if tx.send(d).is_err() {
            return;
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .output()
        .map_err(|e| BenchError::Setup(format!("git: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A bare repository with one Deployment per service in `envs/prod`.
fn seed_repository(dir: &Path, services: u32) -> Result<(), BenchError> {
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
    )?;
    git(dir, &["clone", "--quiet", "remote.git", "seed"])?;
    let seed = dir.join("seed");
    let env = seed.join("envs/prod");
    std::fs::create_dir_all(&env).map_err(|e| BenchError::Setup(e.to_string()))?;
    for s in 0..services {
        let name = format!("svc-{s:05}");
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n        - name: app\n          image: registry.example.com/team/{name}:1.0.0 # {{\"sluice\": \"{name}\"}}\n          ports:\n            - containerPort: 8080\n"
        );
        std::fs::write(env.join(format!("{name}.yaml")), text)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    git(&seed, &["add", "-A"])?;
    git(&seed, &["commit", "--quiet", "-m", "seed"])?;
    git(&seed, &["push", "--quiet", "origin", "main"])
}

fn config(dir: &Path, window: Duration) -> Result<CommitConfig, BenchError> {
    let text = format!(
        "[repository]\nurl = \"file://{}\"\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n[batch]\nwindow = \"{}ms\"\n[push]\nper_second = 100\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
        dir.join("remote.git").display(),
        window.as_millis()
    );
    CommitConfig::parse("bench.toml", &text).map_err(|e| BenchError::Setup(e.to_string()))
}
