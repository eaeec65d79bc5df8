//! The simulated world's vocabulary: versions, services, registry pushes, alert incidents,
//! and the scheduled notifications that carry them to the queue.

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::alerts::RULES;
use crate::flood::per_mille;
use rand_chacha::ChaCha8Rng;

/// A version number `v{major}.{minor}.{patch}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) patch: u32,
}

impl Version {
    /// The next version, mostly a patch bump as in real release trains.
    pub(super) fn bump(self, rng: &mut ChaCha8Rng) -> Self {
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
pub(super) type Digest = [u8; 32];

/// A release candidate waiting to be promoted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub(super) version: Version,
    pub(super) rc: u32,
    pub(super) digest: Digest,
}

/// One service of the fleet and its release history.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) name: String,
    pub(super) repository: String,
    /// Second repository every push is replicated to, for some services.
    pub(super) mirror: Option<String>,
    /// Builds for several platforms, so the registry reports each push once per manifest.
    pub(super) multi_arch: bool,
    /// Last released version.
    pub(super) version: Version,
    /// Pending release candidate, if any.
    pub(super) candidate: Option<Candidate>,
    /// Last pull request number built.
    pub(super) pull_request: u32,
    /// When the last release-triggered alert fired, if any.
    pub(super) last_release_alert: Option<u64>,
    /// Bit per alert slot (see [`Incident::slot`]) that currently fires.
    pub(super) firing: u32,
}

/// A tag, kept unformatted until the line is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tag {
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
    pub(super) fn write_into(self, buf: &mut String) {
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
pub(super) struct Push {
    pub(super) service: u32,
    /// Pushed to the service's mirror repository instead of its main one.
    pub(super) mirror: bool,
    pub(super) tag: Option<Tag>,
    pub(super) digest: Option<Digest>,
    /// Explicit environment; most webhooks carry none and the topology routes by tag.
    pub(super) environment: Option<&'static str>,
}

/// Environment label of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AlertEnv {
    /// Prod, but the rule sets no `environment` label (the source defaults it to prod).
    Unlabelled,
    Prod,
    Staging,
}

impl AlertEnv {
    pub(super) fn label(self) -> Option<&'static str> {
        match self {
            AlertEnv::Unlabelled => None,
            AlertEnv::Prod => Some("prod"),
            AlertEnv::Staging => Some("staging"),
        }
    }
}

/// One alert from first firing to resolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Incident {
    pub(super) service: u32,
    /// Index into `RULES`.
    pub(super) rule: u8,
    pub(super) critical: bool,
    pub(super) env: AlertEnv,
    /// Alertmanager fingerprint, when the receiver passes it on.
    pub(super) fingerprint: Option<u64>,
    pub(super) resolve_at: u64,
}

impl Incident {
    /// Alertmanager merges alerts with the same labels, so at most one incident per
    /// (rule, severity, environment) of a service fires at a time; this is its bit.
    pub(super) fn slot(&self) -> u32 {
        let env = u32::from(self.env == AlertEnv::Staging);
        1 << (u32::from(self.rule) * 4 + u32::from(self.critical) * 2 + env)
    }

    pub(super) fn severity(&self) -> &'static str {
        if self.critical {
            "critical"
        } else {
            "warning"
        }
    }

    pub(super) fn alertname(&self) -> &'static str {
        RULES[usize::from(self.rule)].0
    }
}

/// Where an incident's next notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Start,
    Repeat,
    Resolve,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    Image(Push),
    Alert(Incident, Phase),
}

/// A scheduled notification; `ts` is when it happened, `delivery` when it reaches the topic.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) delivery: u64,
    /// Scheduling order, to break ties deterministically.
    pub(super) seq: u64,
    pub(super) ts: u64,
    pub(super) event: Event,
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
