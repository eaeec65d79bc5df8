use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use super::alerts::{CRITICAL_REPEAT_MS, MIN_RESOLVE_GAP_MS, RULES};
use super::{Flood, MAX_LATENESS_MS};
use crate::flood::{write_flood, FloodConfig, LineSource, ALERT_TOPIC, IMAGE_TOPIC};
use regex::Regex;
use serde_json::Value as Json;

fn config(events: u64, seed: u64) -> FloodConfig {
    FloodConfig {
        events,
        seed,
        ..FloodConfig::default()
    }
}

fn generate(cfg: &FloodConfig) -> Vec<u8> {
    let mut out = Vec::new();
    let written = write_flood(cfg, &mut out).unwrap();
    assert_eq!(written, cfg.events);
    out
}

fn lines(cfg: &FloodConfig) -> Vec<Json> {
    let out = generate(cfg);
    std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The record rules the topology's sources enforce.
struct Rules {
    service: Regex,
    repository: Regex,
    tag: Regex,
    digest: Regex,
    fingerprint: Regex,
}

impl Rules {
    fn new() -> Self {
        let domain = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]+)?";
        let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        Self {
            service: Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$").unwrap(),
            repository: Regex::new(&format!(r"^(?:{domain}/)?{component}(?:/{component})*$"))
                .unwrap(),
            tag: Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap(),
            digest: Regex::new(r"^sha256:[0-9a-f]{64}$").unwrap(),
            fingerprint: Regex::new(r"^[0-9a-f]{16}$").unwrap(),
        }
    }

    /// Checks the envelope (always well-formed) and returns why the record is invalid.
    fn check(&self, line: &Json) -> Result<(), String> {
        let object = line.as_object().expect("line is an object");
        assert_eq!(object.len(), 4, "{line}");
        let topic = object["topic"].as_str().expect("topic");
        object["ts"].as_u64().expect("ts");
        let key = object["key"].as_str().expect("key");
        assert!(self.service.is_match(key), "{line}");
        let Some(value) = object["value"].as_object() else {
            return Err("value is not an object".into());
        };
        let field = |name: &str| value.get(name).map(|v| v.as_str().expect("string field"));
        let service = field("service").expect("service");
        assert_eq!(service, key, "{line}");
        match topic {
            IMAGE_TOPIC => {
                let allowed = ["service", "repository", "tag", "digest", "environment"];
                assert!(
                    value.keys().all(|k| allowed.contains(&k.as_str())),
                    "{line}"
                );
                let repository = field("repository").ok_or("missing repository")?;
                if !self.repository.is_match(repository) {
                    return Err("bad repository".into());
                }
                let (tag, digest) = (field("tag"), field("digest"));
                if tag.is_some_and(|t| !self.tag.is_match(t)) {
                    return Err("bad tag".into());
                }
                if digest.is_some_and(|d| !self.digest.is_match(d)) {
                    return Err("bad digest".into());
                }
                assert!(tag.is_some() || digest.is_some(), "{line}");
                let env = field("environment");
                assert!(env.is_none_or(|e| ["dev", "staging", "prod"].contains(&e)));
            }
            ALERT_TOPIC => {
                let allowed = [
                    "service",
                    "alertname",
                    "severity",
                    "status",
                    "environment",
                    "fingerprint",
                ];
                assert!(
                    value.keys().all(|k| allowed.contains(&k.as_str())),
                    "{line}"
                );
                let alertname = field("alertname").expect("alertname");
                assert!(RULES.iter().any(|r| r.0 == alertname), "{line}");
                let severity = field("severity").expect("severity");
                assert!(["critical", "warning"].contains(&severity), "{line}");
                let status = field("status").expect("status");
                if !["firing", "resolved"].contains(&status) {
                    return Err(format!("status {status}"));
                }
                let env = field("environment");
                assert!(env.is_none_or(|e| ["prod", "staging"].contains(&e)));
                let fp = field("fingerprint");
                assert!(fp.is_none_or(|f| self.fingerprint.is_match(f)), "{line}");
            }
            other => panic!("unexpected topic {other}"),
        }
        Ok(())
    }
}

fn value_str<'a>(line: &'a Json, name: &str) -> Option<&'a str> {
    line["value"].get(name).and_then(Json::as_str)
}

#[test]
fn same_config_same_bytes() {
    let cfg = config(20_000, 7);
    let first = generate(&cfg);
    assert_eq!(first, generate(&cfg));
    assert_ne!(first, generate(&config(20_000, 8)));
}

#[test]
fn invalid_share_does_not_change_the_traffic() {
    // Flaws come from their own random stream: timestamps and keys stay put.
    let envelope = |per_mille| {
        let cfg = FloodConfig {
            invalid_per_mille: per_mille,
            ..config(10_000, 3)
        };
        lines(&cfg)
            .iter()
            .map(|l| {
                (
                    l["ts"].as_u64().unwrap(),
                    l["key"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(envelope(0), envelope(50));
}

#[test]
fn writes_exactly_the_requested_lines() {
    for events in [0, 1, 2, 7, 12_345] {
        let out = generate(&config(events, 1));
        let newlines = out.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(newlines, events);
        assert!(out.is_empty() || out.ends_with(b"\n"));
    }
}

#[test]
fn every_line_is_a_keyed_record() {
    let cfg = config(50_000, 11);
    let rules = Rules::new();
    let all = lines(&cfg);
    assert_eq!(all.len(), 50_000);
    assert_eq!(all[0]["ts"].as_u64(), Some(cfg.start_ts));
    for line in &all {
        assert!(line["ts"].as_u64().unwrap() >= cfg.start_ts);
        let _ = rules.check(line);
    }
}

#[test]
fn valid_records_follow_the_rules() {
    let cfg = FloodConfig {
        invalid_per_mille: 0,
        ..config(100_000, 5)
    };
    let rules = Rules::new();
    for line in lines(&cfg) {
        if let Err(why) = rules.check(&line) {
            panic!("{why}: {line}");
        }
    }
}

#[test]
fn invalid_share_matches_the_config() {
    let rules = Rules::new();
    let invalid = |per_mille, events| {
        let cfg = FloodConfig {
            invalid_per_mille: per_mille,
            ..config(events, 9)
        };
        lines(&cfg)
            .iter()
            .filter(|l| rules.check(l).is_err())
            .count()
    };
    let one = invalid(1, 100_000);
    assert!(
        (60..=140).contains(&one),
        "{one} invalid of 100k at 1 per mille"
    );
    let twenty = invalid(20, 100_000);
    assert!(
        (1_700..=2_300).contains(&twenty),
        "{twenty} invalid at 20 per mille"
    );
}

#[test]
fn every_flaw_is_detectable() {
    let cfg = FloodConfig {
        invalid_per_mille: 1000,
        ..config(20_000, 4)
    };
    let rules = Rules::new();
    let mut reasons = BTreeMap::new();
    for line in lines(&cfg) {
        let why = rules.check(&line).expect_err("every line is broken");
        *reasons.entry(why).or_insert(0) += 1;
    }
    let kinds: Vec<_> = reasons.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "bad digest",
            "bad repository",
            "bad tag",
            "missing repository",
            "status pending",
            "value is not an object"
        ],
        "{reasons:?}"
    );
}

#[test]
fn late_events_are_rare_and_bounded() {
    let cfg = config(100_000, 13);
    let mut newest = 0;
    let mut late = 0;
    for line in lines(&cfg) {
        let ts = line["ts"].as_u64().unwrap();
        if ts < newest {
            late += 1;
            assert!(newest - ts <= MAX_LATENESS_MS, "{} ms late", newest - ts);
        }
        newest = newest.max(ts);
    }
    assert!((500..=1_500).contains(&late), "{late} late of 100k");
    // Many hours of traffic per million events.
    let hours = (newest - cfg.start_ts) as f64 / 3_600_000.0;
    assert!((1.5..=5.0).contains(&hours), "100k events span {hours} h");
}

#[test]
fn mostly_images_some_alerts() {
    let all = lines(&config(100_000, 17));
    let images = all.iter().filter(|l| l["topic"] == IMAGE_TOPIC).count();
    let share = images as f64 / all.len() as f64;
    assert!((0.70..=0.85).contains(&share), "image share {share}");
}

#[test]
fn service_names_are_padded_and_popularity_skewed() {
    let names = |services, events| {
        let mut counts = BTreeMap::<String, u64>::new();
        let cfg = FloodConfig {
            services,
            ..config(events, 21)
        };
        for line in lines(&cfg) {
            *counts
                .entry(line["key"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    };
    let counts = names(100, 100_000);
    assert_eq!(counts.len(), 100);
    let expected: BTreeSet<_> = (0..100).map(|i| format!("svc-{i:04}")).collect();
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let mut sorted: Vec<_> = counts.values().copied().collect();
    sorted.sort_unstable();
    assert!(
        sorted[99] > 8 * sorted[49],
        "busiest {} vs median {}",
        sorted[99],
        sorted[49]
    );

    assert!(names(12_345, 2_000)
        .keys()
        .all(|k| k.len() == "svc-00000".len()));
    assert_eq!(names(0, 100).keys().collect::<Vec<_>>(), ["svc-0000"]);
    assert_eq!(names(1, 100).keys().collect::<Vec<_>>(), ["svc-0000"]);
}

#[test]
fn releases_are_bursts_with_increasing_versions() {
    let cfg = FloodConfig {
        invalid_per_mille: 0,
        ..config(100_000, 23)
    };
    let all = lines(&cfg);
    let release = Regex::new(r"^v(\d+)\.(\d+)\.(\d+)$").unwrap();
    let mut first_seen = BTreeMap::<(String, (u64, u64, u64)), u64>::new();
    let mut tags_per_digest = BTreeMap::<&str, BTreeSet<&str>>::new();
    let mut identical = BTreeMap::<String, u32>::new();
    for line in all.iter().filter(|l| l["topic"] == IMAGE_TOPIC) {
        let ts = line["ts"].as_u64().unwrap();
        *identical.entry(line["value"].to_string()).or_default() += 1;
        if let (Some(tag), Some(digest)) = (value_str(line, "tag"), value_str(line, "digest")) {
            tags_per_digest.entry(digest).or_default().insert(tag);
        }
        let Some(caps) = value_str(line, "tag").and_then(|t| release.captures(t)) else {
            continue;
        };
        let n = |i: usize| caps[i].parse::<u64>().unwrap();
        let key = (
            value_str(line, "service").unwrap().to_owned(),
            (n(1), n(2), n(3)),
        );
        let seen = first_seen.entry(key).or_insert(ts);
        *seen = (*seen).min(ts);
    }
    // Several tags per build, and the very same push reported more than once.
    assert!(
        tags_per_digest
            .values()
            .filter(|tags| tags.len() >= 2)
            .count()
            > 1_000
    );
    assert!(identical.values().filter(|&&n| n >= 2).count() > 5_000);
    assert!(tags_per_digest
        .values()
        .any(|tags| tags.iter().any(|t| t.contains("-rc."))
            && tags.iter().any(|t| t.starts_with("main-"))));

    // Per service, release versions only go up over time.
    let mut by_service = BTreeMap::<&str, Vec<(u64, (u64, u64, u64))>>::new();
    for ((service, version), ts) in &first_seen {
        by_service.entry(service).or_default().push((*ts, *version));
    }
    let mut releases = 0;
    for (service, mut history) in by_service {
        history.sort_unstable();
        releases += history.len();
        assert!(
            history.windows(2).all(|w| w[0].1 < w[1].1),
            "{service}: {history:?}"
        );
    }
    assert!(releases > 1_000, "{releases} releases");
}

#[test]
fn alerts_repeat_until_resolved_and_follow_releases() {
    let cfg = FloodConfig {
        invalid_per_mille: 0,
        ..config(200_000, 29)
    };
    let release = Regex::new(r"^v\d+\.\d+\.\d+$").unwrap();
    let mut last_release = BTreeMap::<String, u64>::new();
    let mut firing_since = BTreeMap::<(String, String, String, String), (u64, u32)>::new();
    let (mut repeated, mut resolved, mut after_release) = (0, 0, 0);
    let mut severities = BTreeMap::<String, u32>::new();
    for line in lines(&cfg) {
        let ts = line["ts"].as_u64().unwrap();
        let service = value_str(&line, "service").unwrap().to_owned();
        if line["topic"] == IMAGE_TOPIC {
            if value_str(&line, "tag").is_some_and(|t| release.is_match(t)) {
                last_release.insert(service, ts);
            }
            continue;
        }
        let severity = value_str(&line, "severity").unwrap().to_owned();
        *severities.entry(severity.clone()).or_default() += 1;
        let env = value_str(&line, "environment").unwrap_or("prod").to_owned();
        let alertname = value_str(&line, "alertname").unwrap().to_owned();
        let key = (service.clone(), alertname, severity.clone(), env.clone());
        match value_str(&line, "status").unwrap() {
            "firing" => match firing_since.get_mut(&key) {
                Some((last, count)) => {
                    // Repeat notifications come minutes apart, never in a burst.
                    assert!(ts >= *last + CRITICAL_REPEAT_MS - MAX_LATENESS_MS, "{line}");
                    *last = ts;
                    *count += 1;
                    repeated += 1;
                }
                None => {
                    firing_since.insert(key, (ts, 1));
                    let recent = last_release
                        .get(&service)
                        .is_some_and(|&r| ts < r + 15 * 60_000);
                    if severity == "critical" && env == "prod" && recent {
                        after_release += 1;
                    }
                }
            },
            "resolved" => {
                let (last, _) = firing_since.remove(&key).expect("resolved after firing");
                assert!(ts >= last + MIN_RESOLVE_GAP_MS - MAX_LATENESS_MS, "{line}");
                resolved += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(
        resolved > 1_000 && repeated > resolved,
        "{repeated} repeats, {resolved} resolved"
    );
    assert!(
        after_release > 20,
        "{after_release} critical alerts after a release"
    );
    assert!(
        severities["warning"] > 5 * severities["critical"],
        "{severities:?}"
    );
}

#[test]
fn memory_does_not_grow_with_the_flood() {
    let cfg = config(0, 31);
    let mut flood = Flood::new(&cfg);
    let mut sink = io::sink();
    let mut peak = 0;
    for _ in 0..300_000 {
        flood.write_next_line(&mut sink).unwrap();
        peak = peak.max(flood.queue.len());
    }
    // Only the pipelines and alerts in flight are queued.
    assert!(peak < 5_000, "queue peaked at {peak}");
}

#[test]
fn write_errors_propagate() {
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 < buf.len() {
                return Err(io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = write_flood(&config(10_000, 1), Failing(100_000)).unwrap_err();
    assert_eq!(err.to_string(), "disk full");
    // Even a tiny flood that fits the buffer reports a failing flush.
    assert!(write_flood(&config(3, 1), Failing(10)).is_err());
}
