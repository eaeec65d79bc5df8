//! The `releases` flood profile, `sluice flood`'s default: realistic release
//! pipelines.
//!
//! It feeds the `cicd` topology (`topologies/cicd.toml`) with JSON Lines that look
//! like what a container registry's push webhook and Alertmanager produce for a fleet of
//! services: release pipelines that push several tags of one build within seconds, the same
//! digest pushed again and again (multi-arch manifests, CI retries, pipeline re-runs), skewed
//! service popularity, alerts that keep re-firing until they resolve, alerts right after a
//! release (rollback triggers), a little out-of-order delivery and a few broken records.
//!
//! The flood is a discrete-event simulation: release pipelines and alert incidents start at
//! random times, each schedules its notifications into a priority queue ordered by delivery
//! time, and lines are written as they are delivered. Memory therefore stays proportional to
//! the number of services plus the handful of pipelines and alerts in flight, never to the
//! number of events. Everything random comes from seeded `ChaCha8` streams and integer
//! arithmetic only, so the same [`FloodConfig`] gives byte-identical output on every platform.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::{
    index, per_mille, push_hex, write_line, AlertValue, FloodConfig, ImageValue, LineSource, Value,
    ALERT_TOPIC, IMAGE_TOPIC,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// Rates are global rather than per service so that a flood of N events always covers roughly
// the same span of simulated time (about 100 ms per event: 1,000,000 events span a little over
// a day); the service count only decides how thinly that traffic is spread.

/// Mean gap between two release pipelines starting anywhere in the fleet.
const RELEASE_MEAN_GAP_MS: u64 = 420;
/// Mean gap between two alert incidents not caused by a release.
const INCIDENT_MEAN_GAP_MS: u64 = 1_800;

/// Share of notifications (per 1000) that a slow producer delivers late.
const LATE_PER_MILLE: u32 = 10;
/// Shortest delay of a late notification.
const MIN_LATENESS_MS: u64 = 300;
/// A late notification is never more than this far behind the newest one already delivered.
const MAX_LATENESS_MS: u64 = 5_000;

/// Alertmanager `repeat_interval` for warnings and criticals (criticals page more often).
const WARNING_REPEAT_MS: u64 = 4 * 60_000;
const CRITICAL_REPEAT_MS: u64 = 2 * 60_000;
/// Notifications of one group are sent on a timer tick, not exactly on the interval.
const REPEAT_JITTER_MS: u64 = 15_000;
/// Gap kept between the last "firing" and the "resolved" notification; larger than the worst
/// lateness, so a late "firing" never overtakes its own "resolved".
const MIN_RESOLVE_GAP_MS: u64 = 10_000;

/// Registries a team may push to; "" stands for the Docker Hub default (no host in the path).
const REGISTRIES: [&str; 6] = [
    "registry.example.com:5000",
    "ghcr.io",
    "registry.gitlab.example.com",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "harbor.internal:8443",
    "",
];
/// Where a mirrored service's images are copied to as well.
const MIRROR_REGISTRY: &str = "mirror.example.net";

/// Alert rules: name, per-mille chance that an incident is the critical variant, and relative
/// frequency.
const RULES: [(&str, u32, u32); 6] = [
    ("HighLatency", 25, 30),
    ("ErrorRate", 50, 25),
    ("PodCrashLooping", 80, 15),
    ("SLOBurn", 60, 12),
    ("HighMemoryUsage", 10, 10),
    ("ReplicasMismatch", 20, 8),
];
/// The rules a bad release trips (indexes into `RULES`).
const RELEASE_RULES: [u8; 4] = [0, 1, 2, 3];

/// Per-mille chance that the prod/staging deployment of a release fires an alert soon after.
const RELEASE_ALERT_PER_MILLE: u32 = 60;
const CANDIDATE_ALERT_PER_MILLE: u32 = 40;
/// A service that broke after a release gets careful for a while: no release-triggered alert
/// within this long of the previous one (otherwise the busiest services would never deploy).
const RELEASE_ALERT_COOLDOWN_MS: u64 = 60 * 60_000;
/// Per-mille chance that a post-release alert is critical (this is what triggers rollbacks).
const RELEASE_ALERT_CRITICAL_PER_MILLE: u32 = 550;

/// Zipf offset: service of popularity rank r is picked with weight 1 / (r + offset). An offset
/// above 1 flattens the head so the busiest service gets roughly 10% of the pipelines.
const ZIPF_OFFSET: u64 = 3;

/// A version number `v{major}.{minor}.{patch}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version {
    major: u32,
    minor: u32,
    patch: u32,
}

impl Version {
    /// The next version, mostly a patch bump as in real release trains.
    fn bump(self, rng: &mut ChaCha8Rng) -> Self {
        match per_mille(rng) {
            0..=749 => Self {
                patch: self.patch + 1,
                ..self
            },
            750..=959 => Self {
                minor: self.minor + 1,
                patch: 0,
                ..self
            },
            _ => Self {
                major: self.major + 1,
                minor: 0,
                patch: 0,
            },
        }
    }
}

/// An image digest (the 32 bytes of a sha256).
type Digest = [u8; 32];

/// A release candidate waiting to be promoted.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    version: Version,
    rc: u32,
    digest: Digest,
}

/// One service of the fleet and its release history.
#[derive(Debug)]
struct Service {
    name: String,
    repository: String,
    /// Second repository every push is replicated to, for some services.
    mirror: Option<String>,
    /// Builds for several platforms, so the registry reports each push once per manifest.
    multi_arch: bool,
    /// Last released version.
    version: Version,
    /// Pending release candidate, if any.
    candidate: Option<Candidate>,
    /// Last pull request number built.
    pull_request: u32,
    /// When the last release-triggered alert fired, if any.
    last_release_alert: Option<u64>,
    /// Bit per alert slot (see [`Incident::slot`]) that currently fires.
    firing: u32,
}

/// A tag, kept unformatted until the line is written.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// `v1.4.2`, routed to prod.
    Release(Version),
    /// `v1.4.2-rc.3`, routed to staging.
    Candidate(Version, u32),
    /// `v1.4`, a floating tag moved by each release.
    Minor(Version),
    /// `main-1a2b3c4`, a branch build.
    Branch(u32),
    /// `pr-123`, a pull request build.
    PullRequest(u32),
    /// `latest`.
    Latest,
}

impl Tag {
    fn write_into(self, buf: &mut String) {
        buf.clear();
        // Writing to a String cannot fail.
        let _ = match self {
            Tag::Release(v) => write!(buf, "v{}.{}.{}", v.major, v.minor, v.patch),
            Tag::Candidate(v, rc) => write!(buf, "v{}.{}.{}-rc.{rc}", v.major, v.minor, v.patch),
            Tag::Minor(v) => write!(buf, "v{}.{}", v.major, v.minor),
            Tag::Branch(sha) => write!(buf, "main-{sha:07x}"),
            Tag::PullRequest(n) => write!(buf, "pr-{n}"),
            Tag::Latest => write!(buf, "latest"),
        };
    }
}

/// One registry push notification.
#[derive(Debug, Clone, Copy)]
struct Push {
    service: u32,
    /// Pushed to the service's mirror repository instead of its main one.
    mirror: bool,
    tag: Option<Tag>,
    digest: Option<Digest>,
    /// Explicit environment; most webhooks carry none and the topology routes by tag.
    environment: Option<&'static str>,
}

/// Environment label of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertEnv {
    /// Prod, but the rule sets no `environment` label (the source defaults it to prod).
    Unlabelled,
    Prod,
    Staging,
}

impl AlertEnv {
    fn label(self) -> Option<&'static str> {
        match self {
            AlertEnv::Unlabelled => None,
            AlertEnv::Prod => Some("prod"),
            AlertEnv::Staging => Some("staging"),
        }
    }
}

/// One alert from first firing to resolution.
#[derive(Debug, Clone, Copy)]
struct Incident {
    service: u32,
    /// Index into `RULES`.
    rule: u8,
    critical: bool,
    env: AlertEnv,
    /// Alertmanager fingerprint, when the receiver passes it on.
    fingerprint: Option<u64>,
    resolve_at: u64,
}

impl Incident {
    /// Alertmanager merges alerts with the same labels, so at most one incident per
    /// (rule, severity, environment) of a service fires at a time; this is its bit.
    fn slot(&self) -> u32 {
        let env = u32::from(self.env == AlertEnv::Staging);
        1 << (u32::from(self.rule) * 4 + u32::from(self.critical) * 2 + env)
    }

    fn severity(&self) -> &'static str {
        if self.critical {
            "critical"
        } else {
            "warning"
        }
    }

    fn alertname(&self) -> &'static str {
        RULES[usize::from(self.rule)].0
    }
}

/// Where an incident's next notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Repeat,
    Resolve,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Image(Push),
    Alert(Incident, Phase),
}

/// A scheduled notification; `ts` is when it happened, `delivery` when it reaches the topic.
#[derive(Debug)]
struct Pending {
    delivery: u64,
    /// Scheduling order, to break ties deterministically.
    seq: u64,
    ts: u64,
    event: Event,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.delivery, self.seq) == (other.delivery, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    // Reversed: `BinaryHeap` is a max-heap and the earliest delivery must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.delivery, other.seq).cmp(&(self.delivery, self.seq))
    }
}

/// The ways a record is deliberately broken.
#[derive(Debug, Clone, Copy)]
enum Flaw {
    /// The value is a JSON string instead of an object.
    Text,
    /// The value is a JSON number instead of an object.
    Number,
    NoRepository,
    SpacedTag,
    UppercaseRepository,
    BadDigest,
    /// An alert with status "pending" (Alertmanager never sends those).
    PendingStatus,
}

const IMAGE_FLAWS: [Flaw; 6] = [
    Flaw::Text,
    Flaw::Number,
    Flaw::NoRepository,
    Flaw::SpacedTag,
    Flaw::UppercaseRepository,
    Flaw::BadDigest,
];
const ALERT_FLAWS: [Flaw; 4] = [
    Flaw::Text,
    Flaw::Number,
    Flaw::PendingStatus,
    Flaw::PendingStatus,
];

/// Reusable text buffers, so writing a line allocates nothing in the common case.
#[derive(Debug, Default)]
struct Scratch {
    tag: String,
    digest: String,
    repository: String,
    fingerprint: String,
}

/// The simulation state.
pub(super) struct Flood {
    /// Drives the simulated fleet.
    rng: ChaCha8Rng,
    /// Decides which lines get broken, on its own stream so the invalid share does not change
    /// the underlying traffic.
    flaw_rng: ChaCha8Rng,
    invalid_per_mille: u32,
    services: Vec<Service>,
    /// `services.len()`, as drawn by the random streams.
    service_count: u32,
    /// Cumulative Zipf weights, indexed by service.
    popularity: Vec<u64>,
    queue: BinaryHeap<Pending>,
    seq: u64,
    next_release: u64,
    next_incident: u64,
    scratch: Scratch,
}

impl Flood {
    pub(super) fn new(cfg: &FloodConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut flaw_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        flaw_rng.set_stream(1);

        let count = cfg.services.max(1);
        let width = count.to_string().len().max(4);
        let teams = count.div_ceil(8);
        let team_registries: Vec<&str> = (0..teams)
            .map(|_| REGISTRIES[index(&mut rng, REGISTRIES.len())])
            .collect();
        let services = (0..count)
            .map(|i| {
                let name = format!("svc-{i:0width$}");
                let team = rng.random_range(0..teams);
                let registry = team_registries[team as usize];
                let path = format!("team-{team}/{name}");
                let repository = if registry.is_empty() {
                    path.clone()
                } else {
                    format!("{registry}/{path}")
                };
                let mirror =
                    (per_mille(&mut rng) < 100).then(|| format!("{MIRROR_REGISTRY}/{path}"));
                Service {
                    name,
                    repository,
                    mirror,
                    multi_arch: per_mille(&mut rng) < 600,
                    version: Version {
                        major: rng.random_range(0..4),
                        minor: rng.random_range(0..25),
                        patch: rng.random_range(0..12),
                    },
                    candidate: None,
                    pull_request: rng.random_range(1..2_000),
                    last_release_alert: None,
                    firing: 0,
                }
            })
            .collect();

        // Popularity ranks are shuffled so the busiest services are not simply the first ones.
        let mut ranks: Vec<u64> = (0..u64::from(count)).collect();
        for i in (1..ranks.len()).rev() {
            let j = index(&mut rng, i + 1);
            ranks.swap(i, j);
        }
        let mut total = 0;
        let popularity = ranks
            .iter()
            .map(|rank| {
                total += (1 << 40) / (rank + ZIPF_OFFSET);
                total
            })
            .collect();

        let next_incident = cfg.start_ts + arrival_gap(&mut rng, INCIDENT_MEAN_GAP_MS);
        Self {
            rng,
            flaw_rng,
            invalid_per_mille: cfg.invalid_per_mille,
            services,
            service_count: count,
            popularity,
            queue: BinaryHeap::new(),
            seq: 0,
            // The flood opens with a release so that the first line carries `start_ts`.
            next_release: cfg.start_ts,
            next_incident,
            scratch: Scratch::default(),
        }
    }

    /// Advances the simulation until one line is delivered, and writes it.
    fn deliver_next<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        loop {
            let next_start = self.next_release.min(self.next_incident);
            let due = self
                .queue
                .peek()
                .is_some_and(|pending| pending.delivery <= next_start);
            if due {
                if let Some(pending) = self.queue.pop() {
                    if self.deliver(pending, out)? {
                        return Ok(());
                    }
                }
            } else if self.next_release <= self.next_incident {
                let at = self.next_release;
                self.start_release(at);
                self.next_release = at + arrival_gap(&mut self.rng, RELEASE_MEAN_GAP_MS);
            } else {
                let at = self.next_incident;
                self.start_incident(at);
                self.next_incident = at + arrival_gap(&mut self.rng, INCIDENT_MEAN_GAP_MS);
            }
        }
    }

    /// Queues a notification that happens at `ts`; a few reach the topic late.
    fn schedule(&mut self, ts: u64, event: Event) {
        // Never the very first one: the first line must carry `start_ts`.
        let late = self.seq > 0 && per_mille(&mut self.rng) < LATE_PER_MILLE;
        let delay = if late {
            self.rng.random_range(MIN_LATENESS_MS..=MAX_LATENESS_MS)
        } else {
            0
        };
        self.queue.push(Pending {
            delivery: ts + delay,
            seq: self.seq,
            ts,
            event,
        });
        self.seq += 1;
    }

    /// Picks a service, busy services far more often.
    fn popular_service(&mut self) -> u32 {
        let total = self.popularity.last().copied().unwrap_or(1);
        let x = self.rng.random_range(0..total);
        let i = self.popularity.partition_point(|&c| c <= x);
        u32::try_from(i).unwrap_or(0)
    }

    fn any_service(&mut self) -> u32 {
        self.rng.random_range(0..self.service_count)
    }

    fn new_digest(&mut self) -> Digest {
        let mut digest = [0; 32];
        self.rng.fill(&mut digest);
        digest
    }

    /// A CI pipeline builds one image of a service and pushes its tags within seconds.
    fn start_release(&mut self, at: u64) {
        let service = self.popular_service();
        let s = service as usize;
        let sha = self.rng.random::<u32>() & 0x0fff_ffff;
        let mut tags = Vec::with_capacity(3);
        let mut fresh_digest = true;
        let mut digest = self.new_digest();
        let environment;
        let mut alert_env = None;

        match per_mille(&mut self.rng) {
            // Branch and pull request builds: the bulk of the pushes.
            0..=649 => {
                environment = "dev";
                if per_mille(&mut self.rng) < 780 {
                    tags.push(Tag::Branch(sha));
                    if per_mille(&mut self.rng) < 200 {
                        tags.push(Tag::Latest);
                    }
                } else {
                    let svc = &mut self.services[s];
                    if self.rng.random_range(0..3) == 0 {
                        svc.pull_request += self.rng.random_range(1..4);
                    }
                    tags.push(Tag::PullRequest(svc.pull_request));
                }
            }
            // Release candidates: a new rc of the pending version, or a new version.
            650..=849 => {
                environment = "staging";
                let svc = &self.services[s];
                let candidate = match svc.candidate {
                    Some(c) if per_mille(&mut self.rng) < 800 => Candidate {
                        rc: c.rc + 1,
                        digest,
                        ..c
                    },
                    // A new version; an abandoned candidate's version is skipped.
                    Some(c) => Candidate {
                        version: c.version.bump(&mut self.rng),
                        rc: 1,
                        digest,
                    },
                    None => Candidate {
                        version: svc.version.bump(&mut self.rng),
                        rc: 1,
                        digest,
                    },
                };
                self.services[s].candidate = Some(candidate);
                tags.push(Tag::Candidate(candidate.version, candidate.rc));
                if per_mille(&mut self.rng) < 500 {
                    tags.push(Tag::Branch(sha));
                }
                if per_mille(&mut self.rng) < CANDIDATE_ALERT_PER_MILLE {
                    alert_env = Some(AlertEnv::Staging);
                }
            }
            // Final releases: usually the promotion of the pending candidate.
            _ => {
                environment = "prod";
                let svc = &self.services[s];
                let version = match svc.candidate {
                    Some(c) => {
                        // Promotion re-tags the tested image instead of rebuilding it.
                        if per_mille(&mut self.rng) < 600 {
                            digest = c.digest;
                            fresh_digest = false;
                        }
                        c.version
                    }
                    None => svc.version.bump(&mut self.rng),
                };
                let svc = &mut self.services[s];
                svc.candidate = None;
                svc.version = version;
                tags.push(Tag::Release(version));
                if per_mille(&mut self.rng) < 400 {
                    tags.push(Tag::Minor(version));
                }
                if per_mille(&mut self.rng) < 350 {
                    tags.push(Tag::Latest);
                }
                if per_mille(&mut self.rng) < RELEASE_ALERT_PER_MILLE {
                    alert_env = Some(if per_mille(&mut self.rng) < 400 {
                        AlertEnv::Unlabelled
                    } else {
                        AlertEnv::Prod
                    });
                }
            }
        }

        // A few pipelines (GitOps promotion hooks) state the environment explicitly.
        let environment = (per_mille(&mut self.rng) < 30).then_some(environment);
        let multi_arch = self.services[s].multi_arch;
        let mut t = at;

        // Multi-arch builds sometimes surface the per-platform manifests, pushed by digest.
        if multi_arch && fresh_digest && per_mille(&mut self.rng) < 300 {
            for _ in 0..2 {
                let platform = self.new_digest();
                let push = Push {
                    service,
                    mirror: false,
                    tag: None,
                    digest: Some(platform),
                    environment,
                };
                self.schedule(t, Event::Image(push));
                t += self.rng.random_range(40..400);
            }
        }

        let base = Push {
            service,
            mirror: false,
            tag: None,
            digest: Some(digest),
            environment,
        };
        let end = self.push_tags(t, base, &tags, multi_arch);

        // Somebody re-runs the pipeline minutes later: identical pushes again.
        if per_mille(&mut self.rng) < 50 {
            let rerun = end + self.rng.random_range(60_000..360_000);
            self.push_tags(rerun, base, &tags, multi_arch);
        }

        if let Some(env) = alert_env {
            self.release_alert(service, env, end);
        }
    }

    /// Schedules the pushes of each tag from `t` on; returns the time of the last one.
    fn push_tags(&mut self, mut t: u64, base: Push, tags: &[Tag], multi_arch: bool) -> u64 {
        let has_mirror = self.services[base.service as usize].mirror.is_some();
        let mut last = t;
        for &tag in tags {
            // A registry without digests in its webhook payload.
            let digest = if per_mille(&mut self.rng) < 30 {
                None
            } else {
                base.digest
            };
            let push = Push {
                tag: Some(tag),
                digest,
                ..base
            };
            // The registry reports a multi-arch push once per manifest: identical records.
            let copies = if multi_arch {
                self.rng.random_range(2..=4)
            } else {
                1
            };
            for _ in 0..copies {
                self.schedule(t, Event::Image(push));
                last = last.max(t);
                t += self.rng.random_range(10..250);
            }
            if has_mirror {
                let mirrored = t + self.rng.random_range(100..600);
                self.schedule(
                    mirrored,
                    Event::Image(Push {
                        mirror: true,
                        ..push
                    }),
                );
                last = last.max(mirrored);
            }
            // A flaky CI step retries and pushes the identical tag again.
            if per_mille(&mut self.rng) < 120 {
                let retry = t + self.rng.random_range(1_000..4_000);
                self.schedule(retry, Event::Image(push));
                last = last.max(retry);
            }
            t += self.rng.random_range(150..1_500);
        }
        last
    }

    /// A bad rollout: the service alerts a few minutes after the new version went live.
    fn release_alert(&mut self, service: u32, env: AlertEnv, released: u64) {
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
    fn start_incident(&mut self, at: u64) {
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

    /// Handles a queued notification; returns whether a line was written.
    fn deliver<W: Write>(&mut self, pending: Pending, out: &mut W) -> io::Result<bool> {
        match pending.event {
            Event::Image(push) => {
                self.write_image(pending.ts, &push, out)?;
                Ok(true)
            }
            Event::Alert(incident, phase) => {
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
                self.write_alert(pending.ts, &incident, resolved, out)?;
                if !resolved {
                    let repeat = if incident.critical {
                        CRITICAL_REPEAT_MS
                    } else {
                        WARNING_REPEAT_MS
                    };
                    let next = pending.ts + repeat + self.rng.random_range(0..REPEAT_JITTER_MS);
                    if next < incident.resolve_at {
                        self.schedule(next, Event::Alert(incident, Phase::Repeat));
                    } else {
                        let at = incident.resolve_at.max(pending.ts + MIN_RESOLVE_GAP_MS);
                        self.schedule(at, Event::Alert(incident, Phase::Resolve));
                    }
                }
                Ok(true)
            }
        }
    }

    /// Decides whether the next line is broken, and how.
    fn flaw(&mut self, flaws: &[Flaw]) -> Option<Flaw> {
        if per_mille(&mut self.flaw_rng) >= self.invalid_per_mille {
            return None;
        }
        Some(flaws[index(&mut self.flaw_rng, flaws.len())])
    }

    fn write_image<W: Write>(&mut self, ts: u64, push: &Push, out: &mut W) -> io::Result<()> {
        let flaw = self.flaw(&IMAGE_FLAWS);
        let svc = &self.services[push.service as usize];
        let scratch = &mut self.scratch;
        let mut repository = match (&svc.mirror, push.mirror) {
            (Some(mirror), true) => Some(mirror.as_str()),
            _ => Some(svc.repository.as_str()),
        };
        let mut has_tag = push.tag.is_some();
        if let Some(tag) = push.tag {
            tag.write_into(&mut scratch.tag);
        }
        let mut has_digest = push.digest.is_some();
        if let Some(digest) = push.digest {
            scratch.digest.clear();
            scratch.digest.push_str("sha256:");
            push_hex(&mut scratch.digest, &digest);
        }

        match flaw {
            Some(Flaw::NoRepository) => repository = None,
            Some(Flaw::SpacedTag) => {
                // A tag assembled from a shell variable that contained a space.
                if !has_tag {
                    Tag::Release(svc.version).write_into(&mut scratch.tag);
                    has_tag = true;
                }
                match scratch.tag.find('-') {
                    Some(i) => scratch.tag.replace_range(i..=i, " "),
                    None => scratch.tag.push_str(" final"),
                }
            }
            Some(Flaw::UppercaseRepository) => {
                // Registries reject uppercase repository names; clients still send them.
                let full = repository.unwrap_or_default();
                let cut = full.rfind('/').map_or(0, |i| i + 1);
                scratch.repository.clear();
                scratch.repository.push_str(&full[..cut]);
                scratch
                    .repository
                    .push_str(&full[cut..].to_ascii_uppercase());
            }
            Some(Flaw::BadDigest) => {
                let bytes = push.digest.unwrap_or([0xab; 32]);
                scratch.digest.clear();
                match index(&mut self.flaw_rng, 3) {
                    // A short digest, as `docker images` prints it.
                    0 => {
                        scratch.digest.push_str("sha256:");
                        push_hex(&mut scratch.digest, &bytes[..6]);
                    }
                    // Uppercase hex.
                    1 => {
                        scratch.digest.push_str("sha256:");
                        push_hex(&mut scratch.digest, &bytes);
                        scratch.digest[7..].make_ascii_uppercase();
                    }
                    // No algorithm prefix.
                    _ => push_hex(&mut scratch.digest, &bytes),
                }
                has_digest = true;
            }
            Some(Flaw::Text | Flaw::Number | Flaw::PendingStatus) | None => {}
        }
        if matches!(flaw, Some(Flaw::UppercaseRepository)) {
            repository = Some(scratch.repository.as_str());
        }
        let tag = has_tag.then_some(scratch.tag.as_str());
        let digest = has_digest.then_some(scratch.digest.as_str());

        let value = match flaw {
            Some(Flaw::Text) => {
                // A producer that sent the image reference instead of an object.
                let mut text = repository.unwrap_or_default().to_owned();
                if let Some(tag) = tag {
                    text.push(':');
                    text.push_str(tag);
                } else if let Some(digest) = digest {
                    text.push('@');
                    text.push_str(digest);
                }
                Value::Text(text)
            }
            Some(Flaw::Number) => Value::Number(self.flaw_rng.random_range(0..100_000)),
            _ => Value::Image(ImageValue {
                service: &svc.name,
                repository,
                tag,
                digest,
                environment: push.environment,
            }),
        };
        write_line(out, IMAGE_TOPIC, ts, &svc.name, value)
    }

    fn write_alert<W: Write>(
        &mut self,
        ts: u64,
        incident: &Incident,
        resolved: bool,
        out: &mut W,
    ) -> io::Result<()> {
        let flaw = self.flaw(&ALERT_FLAWS);
        let svc = &self.services[incident.service as usize];
        let mut status = if resolved { "resolved" } else { "firing" };
        let fingerprint = incident.fingerprint.map(|fp| {
            self.scratch.fingerprint.clear();
            // Writing to a String cannot fail.
            let _ = write!(self.scratch.fingerprint, "{fp:016x}");
            self.scratch.fingerprint.as_str()
        });
        let value = match flaw {
            Some(Flaw::Text) => Value::Text(format!(
                "[{}] {} {} ({})",
                status.to_ascii_uppercase(),
                incident.alertname(),
                svc.name,
                incident.severity()
            )),
            Some(Flaw::Number) => Value::Number(u64::from(!resolved)),
            flaw => {
                if matches!(flaw, Some(Flaw::PendingStatus)) {
                    status = "pending";
                }
                Value::Alert(AlertValue {
                    service: &svc.name,
                    alertname: incident.alertname(),
                    severity: incident.severity(),
                    status,
                    environment: incident.env.label(),
                    fingerprint,
                })
            }
        };
        write_line(out, ALERT_TOPIC, ts, &svc.name, value)
    }
}

/// Gap to the next arrival with the given mean: mostly short, sometimes a lull, so activity
/// comes in irregular waves. Integer-only, unlike an exponential draw, for portability.
fn arrival_gap(rng: &mut ChaCha8Rng, mean: u64) -> u64 {
    // 80% in [0, mean), 20% in [mean, 5 mean): the mean of the mixture is `mean`.
    if per_mille(rng) < 800 {
        rng.random_range(0..mean)
    } else {
        rng.random_range(mean..5 * mean)
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

impl LineSource for Flood {
    fn write_next_line<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.deliver_next(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::write_flood;
    use super::*;
    use regex::Regex;
    use serde_json::Value as Json;
    use std::collections::{BTreeMap, BTreeSet};

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
}
