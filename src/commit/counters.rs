//! What the committer did so far: intents by outcome, refusals by kind,
//! batches, commits, pushes and reports; one line of it ends a run.

use std::collections::BTreeMap;

use super::batch::Outcome;

/// What happened to the intents so far, by outcome, and to the pushes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub applied: u64,
    pub superseded: u64,
    pub already_committed: u64,
    pub already_applied: u64,
    /// Retries of failed syncs committed as empty commits.
    pub retried: u64,
    pub outdated: u64,
    pub held: u64,
    pub dead_letters: u64,
    /// Dead letters by the kind of refusal (`no_marker`, `invalid_image`, ...).
    pub refusals: BTreeMap<&'static str, u64>,
    pub batches: u64,
    pub commits: u64,
    pub rejected_pushes: u64,
    pub failed_pushes: u64,
    /// Reports sent (a redelivery sends its reports again).
    pub reports: u64,
}

impl Counters {
    pub(super) fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Superseded => self.superseded += 1,
            Outcome::AlreadyCommitted => self.already_committed += 1,
            Outcome::AlreadyApplied => self.already_applied += 1,
            Outcome::Retried => self.retried += 1,
            Outcome::Outdated => self.outdated += 1,
            Outcome::Held => self.held += 1,
            Outcome::DeadLetter(r) => {
                self.dead_letters += 1;
                *self.refusals.entry(r.kind.as_str()).or_default() += 1;
            }
        }
    }

    /// One line for humans.
    pub fn render(&self) -> String {
        format!(
            "{} intents: {} applied, {} superseded, {} already committed, {} already applied, {} held, {} dead letters, {} outdated, {} retried; {} batches, {} commits pushed, {} pushes rejected (remote moved), {} pushes failed, {} reports sent",
            self.received, self.applied, self.superseded, self.already_committed, self.already_applied,
            self.held, self.dead_letters, self.outdated, self.retried, self.batches, self.commits,
            self.rejected_pushes, self.failed_pushes, self.reports
        ) + &self.render_refusals()
    }

    fn render_refusals(&self) -> String {
        if self.refusals.is_empty() {
            return String::new();
        }
        let kinds: Vec<String> = self
            .refusals
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(" (dead letters: {})", kinds.join(", "))
    }
}
