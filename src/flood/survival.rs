//! The `survival` flood profile: traffic in which nearly every record
//! survives each stage of `topologies/cicd.toml`.
//!
//! Each service pushes about once a minute (every 40 to 80 s), always a new
//! digest, with tags cycling through a branch build (`main-<sha>`, dev), a
//! release candidate (`vX.Y.Z-rc.N`, staging) and a release (`vX.Y.Z`,
//! prod). So dedup drops next to nothing, every push arms a debounce timer
//! that fires (a key, service and environment, sees every third push, far
//! more than the 30 s quiet apart), and the throttle and gate see most keys. 3% of
//! the lines are alerts on a uniformly chosen service: a quiet service
//! starts firing (critical or warning, prod or staging), a firing one
//! re-fires or resolves. The simulation keeps one entry per service, so
//! memory follows the service count, not the flood's length.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    index, per_mille, push_hex, write_line, AlertValue, FloodConfig, ImageValue, LineSource, Value,
    ALERT_TOPIC, IMAGE_TOPIC,
};

/// Alerts per 1000 lines.
const ALERT_PER_MILLE: u32 = 30;
/// The gap between two pushes of one service.
const MIN_PUSH_GAP_MS: u64 = 40_000;
const MAX_PUSH_GAP_MS: u64 = 80_000;
/// A firing alert resolves at its next notification with this chance.
const RESOLVE_PER_MILLE: u32 = 500;
const REGISTRY: &str = "registry.example.com";
const ALERTS: [(&str, &str); 4] = [
    ("HighErrorRate", "critical"),
    ("PodCrashLooping", "critical"),
    ("HighLatency", "warning"),
    ("DiskFillingUp", "warning"),
];

struct Service {
    name: String,
    repository: String,
    /// Pushes so far: decides the next push's kind.
    pushes: u64,
    minor: u32,
    patch: u32,
    /// The alert firing on the service, as an index into `ALERTS`, and
    /// whether it is labelled staging.
    firing: Option<(usize, bool)>,
}

pub(super) struct Flood {
    rng: ChaCha8Rng,
    /// Decides which lines get broken, on its own stream.
    flaw_rng: ChaCha8Rng,
    invalid_per_mille: u32,
    services: Vec<Service>,
    /// Every service's next push, earliest first.
    next_push: BinaryHeap<Reverse<(u64, u32)>>,
    tag: String,
    digest: String,
}

impl Flood {
    pub(super) fn new(cfg: &FloodConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(2);
        let mut flaw_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        flaw_rng.set_stream(3);
        let count = cfg.services.max(1);
        let width = count.to_string().len().max(4);
        let services: Vec<Service> = (0..count)
            .map(|i| {
                let name = format!("svc-{i:0width$}");
                Service {
                    repository: format!("{REGISTRY}/team-{}/{name}", i / 8),
                    name,
                    pushes: u64::from(rng.random_range(0..3u32)),
                    minor: rng.random_range(0..25),
                    patch: rng.random_range(0..12),
                    firing: None,
                }
            })
            .collect();
        // The first push is at `start_ts`; the others spread over the first gap.
        let next_push = (0..count)
            .map(|i| {
                let offset = if i == 0 {
                    0
                } else {
                    rng.random_range(0..MAX_PUSH_GAP_MS)
                };
                Reverse((cfg.start_ts + offset, i))
            })
            .collect();
        Flood {
            rng,
            flaw_rng,
            invalid_per_mille: cfg.invalid_per_mille,
            services,
            next_push,
            tag: String::new(),
            digest: String::new(),
        }
    }

    fn broken(&mut self) -> bool {
        per_mille(&mut self.flaw_rng) < self.invalid_per_mille
    }

    fn write_push<W: Write>(&mut self, ts: u64, s: u32, out: &mut W) -> io::Result<()> {
        let mut digest = [0u8; 32];
        self.rng.fill(&mut digest);
        self.digest.clear();
        self.digest.push_str("sha256:");
        push_hex(&mut self.digest, &digest);
        let svc = &mut self.services[s as usize];
        self.tag.clear();
        // Writing to a String cannot fail.
        let _ = match svc.pushes % 3 {
            0 => write!(self.tag, "main-{}", &self.digest[7..14]),
            1 => write!(self.tag, "v1.{}.{}-rc.1", svc.minor, svc.patch + 1),
            _ => {
                svc.patch += 1;
                write!(self.tag, "v1.{}.{}", svc.minor, svc.patch)
            }
        };
        svc.pushes += 1;
        let gap = self.rng.random_range(MIN_PUSH_GAP_MS..=MAX_PUSH_GAP_MS);
        self.next_push.push(Reverse((ts + gap, s)));
        let broken = self.broken();
        let svc = &self.services[s as usize];
        let value = if broken {
            // A push notification as plain text: the source dead-letters it.
            Value::Text(format!("pushed {}:{}", svc.repository, self.tag))
        } else {
            Value::Image(ImageValue {
                service: &svc.name,
                repository: Some(&svc.repository),
                tag: Some(&self.tag),
                digest: Some(&self.digest),
                environment: None,
            })
        };
        write_line(out, IMAGE_TOPIC, ts, &svc.name, value)
    }

    fn write_alert<W: Write>(&mut self, ts: u64, out: &mut W) -> io::Result<()> {
        let s = index(&mut self.rng, self.services.len());
        let (alert, staging, status) = match self.services[s].firing {
            Some((alert, staging)) if per_mille(&mut self.rng) < RESOLVE_PER_MILLE => {
                self.services[s].firing = None;
                (alert, staging, "resolved")
            }
            Some((alert, staging)) => (alert, staging, "firing"),
            None => {
                let alert = index(&mut self.rng, ALERTS.len());
                let staging = per_mille(&mut self.rng) < 300;
                self.services[s].firing = Some((alert, staging));
                (alert, staging, "firing")
            }
        };
        let broken = self.broken();
        let svc = &self.services[s];
        let (alertname, severity) = ALERTS[alert];
        let value = if broken {
            Value::Number(u64::from(status == "firing"))
        } else {
            Value::Alert(AlertValue {
                service: &svc.name,
                alertname,
                severity,
                status,
                environment: staging.then_some("staging"),
                fingerprint: None,
            })
        };
        write_line(out, ALERT_TOPIC, ts, &svc.name, value)
    }
}

impl LineSource for Flood {
    fn write_next_line<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        // Every push schedules the service's next one, so this never fails.
        let Some(&Reverse((ts, s))) = self.next_push.peek() else {
            return Err(io::Error::other("the survival flood has no push scheduled"));
        };
        // An alert happens at the time of the next push, before it.
        if per_mille(&mut self.rng) < ALERT_PER_MILLE {
            return self.write_alert(ts, out);
        }
        self.next_push.pop();
        self.write_push(ts, s, out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::Value as Json;

    use super::super::{write_flood, FloodConfig, Profile};
    use super::*;

    fn config(events: u64, services: u32, invalid_per_mille: u32) -> FloodConfig {
        FloodConfig {
            events,
            services,
            invalid_per_mille,
            profile: Profile::Survival,
            ..FloodConfig::default()
        }
    }

    fn lines(cfg: &FloodConfig) -> Vec<Json> {
        let mut out = Vec::new();
        assert_eq!(write_flood(cfg, &mut out).unwrap(), cfg.events);
        let lines: Vec<Json> = std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, cfg.events);
        lines
    }

    fn field<'a>(line: &'a Json, name: &str) -> &'a str {
        line["value"][name].as_str().unwrap_or_default()
    }

    #[test]
    fn same_config_same_bytes_and_another_seed_other_bytes() {
        let cfg = config(2_000, 50, 5);
        let write = |cfg: &FloodConfig| {
            let mut out = Vec::new();
            write_flood(cfg, &mut out).unwrap();
            out
        };
        assert_eq!(write(&cfg), write(&cfg));
        assert_ne!(write(&cfg), write(&FloodConfig { seed: 2, ..cfg }));
    }

    #[test]
    fn every_push_is_a_new_digest_and_time_never_goes_back() {
        let all = lines(&config(20_000, 300, 0));
        let mut digests = HashSet::new();
        let mut last_ts = 0;
        for line in &all {
            let ts = line["ts"].as_u64().unwrap();
            assert!(ts >= last_ts, "{line}");
            last_ts = ts;
            if line["topic"] == IMAGE_TOPIC {
                assert!(digests.insert(field(line, "digest").to_owned()), "{line}");
            }
        }
        assert_eq!(all[0]["ts"], FloodConfig::default().start_ts);
    }

    #[test]
    fn each_service_pushes_about_once_a_minute_cycling_its_tags() {
        let all = lines(&config(30_000, 200, 0));
        let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
        let kind = |tag: &str| match tag {
            t if t.starts_with("main-") => 0,
            t if t.contains("-rc.") => 1,
            _ => 2,
        };
        for line in all.iter().filter(|l| l["topic"] == IMAGE_TOPIC) {
            let (service, tag) = (field(line, "service"), field(line, "tag"));
            let ts = line["ts"].as_u64().unwrap();
            if let Some((before, previous)) = last.insert(service, (ts, tag)) {
                let gap = ts - before;
                assert!((MIN_PUSH_GAP_MS..=MAX_PUSH_GAP_MS).contains(&gap), "{line}");
                assert_eq!(kind(tag), (kind(previous) + 1) % 3, "{previous} then {tag}");
            }
        }
        assert_eq!(last.len(), 200, "every service pushes");
    }

    #[test]
    fn three_percent_alerts_and_a_resolve_follows_its_firing() {
        let all = lines(&config(50_000, 100, 0));
        let alerts: Vec<&Json> = all.iter().filter(|l| l["topic"] == ALERT_TOPIC).collect();
        let share = alerts.len() as f64 / all.len() as f64;
        assert!((0.025..0.035).contains(&share), "alert share {share}");
        let mut firing: HashMap<&str, &str> = HashMap::new();
        for alert in alerts {
            let (service, name) = (field(alert, "service"), field(alert, "alertname"));
            match field(alert, "status") {
                "firing" => {
                    let before = firing.insert(service, name);
                    assert!(before.is_none_or(|b| b == name), "{alert}");
                }
                "resolved" => assert_eq!(firing.remove(service), Some(name), "{alert}"),
                other => panic!("status {other}"),
            }
        }
    }

    #[test]
    fn broken_records_do_not_change_the_traffic() {
        let envelope = |invalid| -> Vec<(String, u64, String)> {
            lines(&config(5_000, 100, invalid))
                .iter()
                .map(|l| {
                    let text = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
                    (text("topic"), l["ts"].as_u64().unwrap(), text("key"))
                })
                .collect()
        };
        assert_eq!(envelope(0), envelope(200));
    }

    #[test]
    fn the_invalid_share_matches_the_config() {
        let all = lines(&config(20_000, 100, 50));
        let broken = all.iter().filter(|l| !l["value"].is_object()).count();
        let share = broken as f64 / all.len() as f64;
        assert!((0.04..0.06).contains(&share), "invalid share {share}");
        assert_eq!(lines(&config(5_000, 100, 0)).len(), 5_000);
    }
}
