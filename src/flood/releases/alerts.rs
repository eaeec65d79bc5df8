//! Alert incidents, as Alertmanager reports them: started by a bad release or out of the
//! blue, re-sent on every repeat interval while they fire, then resolved.

use std::io::{self, Write};

use rand::Rng;

use super::model::{AlertEnv, Event, Incident, Phase};
use super::Flood;
use crate::flood::{index, per_mille};

/// Alertmanager `repeat_interval` for warnings and criticals (criticals page more often).
const WARNING_REPEAT_MS: u64 = 4 * 60_000;
pub(super) const CRITICAL_REPEAT_MS: u64 = 2 * 60_000;
/// Notifications of one group are sent on a timer tick, not exactly on the interval.
const REPEAT_JITTER_MS: u64 = 15_000;
/// Gap kept between the last "firing" and the "resolved" notification; larger than the worst
/// lateness, so a late "firing" never overtakes its own "resolved".
pub(super) const MIN_RESOLVE_GAP_MS: u64 = 10_000;

/// Alert rules: name, per-mille chance that an incident is the critical variant, and relative
/// frequency.
pub(super) const RULES: [(&str, u32, u32); 6] = [
    ("HighLatency", 25, 30),
    ("ErrorRate", 50, 25),
    ("PodCrashLooping", 80, 15),
    ("SLOBurn", 60, 12),
    ("HighMemoryUsage", 10, 10),
    ("ReplicasMismatch", 20, 8),
];
/// The rules a bad release trips (indexes into `RULES`).
const RELEASE_RULES: [u8; 4] = [0, 1, 2, 3];

/// A service that broke after a release gets careful for a while: no release-triggered alert
/// within this long of the previous one (otherwise the busiest services would never deploy).
const RELEASE_ALERT_COOLDOWN_MS: u64 = 60 * 60_000;
/// Per-mille chance that a post-release alert is critical (this is what triggers rollbacks).
const RELEASE_ALERT_CRITICAL_PER_MILLE: u32 = 550;

impl Flood {
    /// A bad rollout: the service alerts a few minutes after the new version went live.
    pub(super) fn release_alert(&mut self, service: u32, env: AlertEnv, released: u64) {
        let svc = &mut self.services[service as usize];
        if svc
            .last_release_alert
            .is_some_and(|last| released < last + RELEASE_ALERT_COOLDOWN_MS)
        {
            return;
        }
        svc.last_release_alert = Some(released);
        let rule = RELEASE_RULES[index(&mut self.rng, RELEASE_RULES.len())];
        let critical = per_mille(&mut self.rng) < RELEASE_ALERT_CRITICAL_PER_MILLE;
        let start = released + self.rng.random_range(45_000..8 * 60_000);
        let incident = self.incident(service, rule, critical, env, start);
        self.schedule(start, Event::Alert(incident, Phase::Start));
    }

    /// An alert unrelated to releases (load, noisy neighbours, capacity).
    pub(super) fn start_incident(&mut self, at: u64) {
        // Busy services alert somewhat more, but alerts come from the whole fleet.
        let service = if per_mille(&mut self.rng) < 200 {
            self.popular_service()
        } else {
            self.any_service()
        };
        let total: u32 = RULES.iter().map(|r| r.2).sum();
        let mut x = self.rng.random_range(0..total);
        let mut rule = 0;
        for (i, r) in (0..).zip(RULES) {
            if x < r.2 {
                rule = i;
                break;
            }
            x -= r.2;
        }
        let critical = per_mille(&mut self.rng) < RULES[usize::from(rule)].1;
        let env = match per_mille(&mut self.rng) {
            0..=299 => AlertEnv::Unlabelled,
            300..=749 => AlertEnv::Prod,
            _ => AlertEnv::Staging,
        };
        let incident = self.incident(service, rule, critical, env, at);
        self.schedule(at, Event::Alert(incident, Phase::Start));
    }

    fn incident(
        &mut self,
        service: u32,
        rule: u8,
        critical: bool,
        env: AlertEnv,
        start: u64,
    ) -> Incident {
        let minutes = if critical {
            // Criticals get attention (or a rollback) quickly.
            match per_mille(&mut self.rng) {
                0..=699 => self.rng.random_range(2..6),
                _ => self.rng.random_range(6..15),
            }
        } else {
            match per_mille(&mut self.rng) {
                0..=599 => self.rng.random_range(2..10),
                600..=899 => self.rng.random_range(10..30),
                _ => self.rng.random_range(30..90),
            }
        };
        let duration = minutes * 60_000 + self.rng.random_range(0..60_000);
        let mut incident = Incident {
            service,
            rule,
            critical,
            env,
            fingerprint: None,
            resolve_at: start + duration,
        };
        // Some receivers drop the fingerprint; when present it is stable per label set.
        if per_mille(&mut self.rng) < 920 {
            incident.fingerprint = Some(fingerprint(
                &self.services[service as usize].name,
                &incident,
            ));
        }
        incident
    }

    /// Writes an incident's notification, unless Alertmanager folds it into an identical alert
    /// already firing, and schedules the next one; returns whether a line was written.
    pub(super) fn deliver_alert<W: Write>(
        &mut self,
        ts: u64,
        incident: Incident,
        phase: Phase,
        out: &mut W,
    ) -> io::Result<bool> {
        let s = incident.service as usize;
        let slot = incident.slot();
        match phase {
            Phase::Start if self.services[s].firing & slot != 0 => {
                // Same labels already firing: Alertmanager folds it into that alert.
                return Ok(false);
            }
            Phase::Start => self.services[s].firing |= slot,
            Phase::Repeat => {}
            Phase::Resolve => self.services[s].firing &= !slot,
        }
        let resolved = phase == Phase::Resolve;
        self.write_alert(ts, &incident, resolved, out)?;
        if !resolved {
            let repeat = if incident.critical {
                CRITICAL_REPEAT_MS
            } else {
                WARNING_REPEAT_MS
            };
            let next = ts + repeat + self.rng.random_range(0..REPEAT_JITTER_MS);
            if next < incident.resolve_at {
                self.schedule(next, Event::Alert(incident, Phase::Repeat));
            } else {
                let at = incident.resolve_at.max(ts + MIN_RESOLVE_GAP_MS);
                self.schedule(at, Event::Alert(incident, Phase::Resolve));
            }
        }
        Ok(true)
    }
}

/// FNV-1a over the alert's labels: like Alertmanager's fingerprint, stable per label set.
fn fingerprint(service: &str, incident: &Incident) -> u64 {
    let env = match incident.env {
        AlertEnv::Staging => "staging",
        AlertEnv::Prod | AlertEnv::Unlabelled => "prod",
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [service, incident.alertname(), incident.severity(), env] {
        for &byte in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
