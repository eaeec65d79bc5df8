//! Deterministic generators of CI/CD event floods in the replay format.
//!
//! Two profiles shape the traffic differently, so that a topology (and
//! Sluice itself) is measured on more than one kind of flood:
//!
//! - [`Profile::Releases`] (`releases/`, the default) simulates release
//!   pipelines: bursts of tags of one build, the same digest pushed again
//!   and again, skewed popularity, alerts that re-fire until resolved. Most
//!   pushes are duplicates that `dedup` drops, and few timers fire.
//! - [`Profile::Survival`] (`survival.rs`) is a flood where nearly every
//!   record survives each stage: every push carries a new digest, each
//!   service pushes about once a minute, tags cycle among release,
//!   release-candidate and branch builds, and 3% of the lines are alerts.
//!   Through `topologies/cicd.toml` most pushes pass dedup, arm a debounce
//!   timer that fires, and many become intents.
//!
//! Everything random comes from seeded `ChaCha8` streams and integer
//! arithmetic, so the same [`FloodConfig`] gives byte-identical output on
//! every platform.

mod releases;
mod survival;

use std::io::{self, BufWriter, Write};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::replay::OutputLine;

const IMAGE_TOPIC: &str = "docker-events";
const ALERT_TOPIC: &str = "alert-events";

/// The shape of a flood's traffic (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Release pipelines: mostly duplicate pushes, few timers firing.
    #[default]
    Releases,
    /// A new digest on every push: nearly every record survives each stage.
    Survival,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Releases, Profile::Survival];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Releases => "releases",
            Profile::Survival => "survival",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a generated flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Total number of lines written.
    pub events: u64,
    /// Number of distinct services; 0 is treated as 1.
    pub services: u32,
    /// Seed of every random choice: the same config always yields the same bytes.
    pub seed: u64,
    /// Timestamp (ms since the Unix epoch) of the first event.
    pub start_ts: u64,
    /// Share of deliberately invalid records, per 1000 lines (values above 1000 mean all).
    pub invalid_per_mille: u32,
    /// The shape of the traffic.
    pub profile: Profile,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            events: 100_000,
            services: 100,
            seed: 1,
            // 2026-01-01T00:00:00Z
            start_ts: 1_767_225_600_000,
            invalid_per_mille: 1,
            profile: Profile::Releases,
        }
    }
}

/// Writes `cfg.events` JSON Lines to `out`; returns the number of lines written.
///
/// Output is buffered internally and flushed before returning, so any write error surfaces
/// here. Both profiles write lines of the same shape: each is `{"topic", "ts", "key", "value"}` with topic `docker-events` (image
/// pushes) or `alert-events` (Alertmanager notifications) and key = the service name.
///
/// # Errors
///
/// Returns the first error `out` reports while writing or flushing.
pub fn write_flood<W: Write>(cfg: &FloodConfig, out: W) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let written = match cfg.profile {
        Profile::Releases => write_lines(&mut releases::Flood::new(cfg), cfg.events, &mut out)?,
        Profile::Survival => write_lines(&mut survival::Flood::new(cfg), cfg.events, &mut out)?,
    };
    out.flush()?;
    Ok(written)
}

/// A simulation that delivers one line at a time.
trait LineSource {
    fn write_next_line<W: Write>(&mut self, out: &mut W) -> io::Result<()>;
}

fn write_lines<S: LineSource, W: Write>(
    source: &mut S,
    events: u64,
    out: &mut W,
) -> io::Result<u64> {
    for _ in 0..events {
        source.write_next_line(out)?;
    }
    Ok(events)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Value<'a> {
    Image(ImageValue<'a>),
    Alert(AlertValue<'a>),
    Text(String),
    Number(u64),
}

#[derive(Serialize)]
struct ImageValue<'a> {
    service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'static str>,
}

#[derive(Serialize)]
struct AlertValue<'a> {
    service: &'a str,
    alertname: &'static str,
    severity: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
}

fn write_line<W: Write>(
    out: &mut W,
    topic: &'static str,
    ts: u64,
    key: &str,
    value: Value<'_>,
) -> io::Result<()> {
    let line = OutputLine {
        topic,
        ts,
        key: Some(key),
        value,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// A uniform number in 0..1000, for per-mille chances.
fn per_mille(rng: &mut ChaCha8Rng) -> u32 {
    rng.random_range(0..1000)
}

/// A uniform index below `len`, sampled as u64 so the stream does not depend on the platform's
/// pointer width.
fn index(rng: &mut ChaCha8Rng, len: usize) -> usize {
    rng.random_range(0..len as u64) as usize
}

fn push_hex(buf: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        buf.push(char::from(HEX[usize::from(byte >> 4)]));
        buf.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
}
