//! Writing a notification as a JSON line, and breaking a few of them on purpose.

use std::fmt::Write as _;
use std::io::{self, Write};

use rand::Rng;

use super::model::{Incident, Push, Tag};
use super::Flood;
use crate::flood::{
    index, per_mille, push_hex, write_line, AlertValue, ImageValue, Value, ALERT_TOPIC, IMAGE_TOPIC,
};

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
pub(super) struct Scratch {
    tag: String,
    digest: String,
    repository: String,
    fingerprint: String,
}

impl Flood {
    /// Decides whether the next line is broken, and how.
    fn flaw(&mut self, flaws: &[Flaw]) -> Option<Flaw> {
        if per_mille(&mut self.flaw_rng) >= self.invalid_per_mille {
            return None;
        }
        Some(flaws[index(&mut self.flaw_rng, flaws.len())])
    }

    pub(super) fn write_image<W: Write>(
        &mut self,
        ts: u64,
        push: &Push,
        out: &mut W,
    ) -> io::Result<()> {
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

    pub(super) fn write_alert<W: Write>(
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
