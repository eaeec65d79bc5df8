//! What a batch of intents does to a branch: which intents apply, which are
//! superseded, already done, held or refused, and the new file contents.
//!
//! The rules, in order:
//! - an intent that cannot be applied anywhere (unparseable, unknown
//!   environment, invalid image or id) is a dead letter; a hold changes nothing;
//! - per service and environment only the newest intent of the batch is
//!   applied; the older ones are listed in the commit as superseded;
//! - an intent whose id is in a trailer on the branch is already committed;
//! - an intent older (by its record timestamp) than the newest one recorded
//!   on the branch for its service and environment is outdated: never
//!   applied, whatever the batch boundaries were when the newer one came;
//! - an intent whose image is already in the files is already applied,
//!   unless it is a gate's retry of a failed sync (`reason_code` `retry`):
//!   that one is retried, an empty commit with its trailer, so that Argo CD
//!   and Flux see a new revision and sync again;
//! - an intent with no marker in its environment's directory, or whose
//!   files cannot be edited, is a dead letter with the reason.
//!
//! Planning is pure apart from reading the clone's files, so it runs again,
//! unchanged, on a new tip after a rejected push.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::config::{CommitConfig, Environment};
use super::edit::{current_image_in, set_image, Edit, ImageRef};
use super::files::EnvFiles;
use super::index::Newest;
use super::intent::CommitIntent;
use super::message::{is_intent_id, Change};
use crate::record::oci::printable;
use crate::record::{Action, TraceContext};

/// One intent as the source delivered it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The record's value: an intent as JSON.
    pub value: String,
    pub key: Option<String>,
    /// The record's timestamp (ms).
    pub ts: u64,
    /// When the committer received it; latency is measured from here.
    pub received: Instant,
    /// Where it came from, for logs and dead letters (`file:LINE`, `topic/partition@offset`).
    pub origin: String,
    /// The trace of the intent (its record's `traceparent`), which the
    /// commit continues.
    pub trace: Option<TraceContext>,
}

/// What became of one intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its image was written in this batch's commit.
    Applied,
    /// A newer intent for the same service and environment came in the same batch.
    Superseded,
    /// Its id is already in a `Sluice-Intent` trailer on the branch.
    AlreadyCommitted,
    /// Older than the newest intent recorded on the branch for its service
    /// and environment (a `Sluice-Newest` trailer).
    Outdated,
    /// The files already hold its image.
    AlreadyApplied,
    /// A retry of a failed sync whose image the files already hold: an
    /// empty commit lists it, a new revision for the GitOps controller.
    Retried,
    /// A hold: logged and counted, nothing changes.
    Held,
    /// Refused, with the reason; goes to the dead letters.
    DeadLetter(Refusal),
}

/// Why an intent was refused: a kind to count by, and the full reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: String,
}

/// The kinds of refusal, each counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalKind {
    /// Not JSON, or not the shape of an intent.
    NotAnIntent,
    /// An `intent_id` that could not stand in a trailer.
    InvalidIntentId,
    /// An environment the config does not name.
    UnknownEnvironment,
    InvalidService,
    /// Not an OCI reference, or one that could not be written safely.
    InvalidImage,
    /// No marker for the service in the environment's directory.
    NoMarker,
    /// The environment's directory is missing or leads out of the repository.
    DirectoryUnusable,
    /// A file holding the service's marker cannot be edited.
    FileNotEditable,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::NotAnIntent => "not_an_intent",
            RefusalKind::InvalidIntentId => "invalid_intent_id",
            RefusalKind::UnknownEnvironment => "unknown_environment",
            RefusalKind::InvalidService => "invalid_service",
            RefusalKind::InvalidImage => "invalid_image",
            RefusalKind::NoMarker => "no_marker",
            RefusalKind::DirectoryUnusable => "directory_unusable",
            RefusalKind::FileNotEditable => "file_not_editable",
        }
    }
}

fn refused(kind: RefusalKind, reason: String) -> Outcome {
    Outcome::DeadLetter(Refusal { kind, reason })
}

impl Outcome {
    /// Whether a commit made for the batch lists the intent in a trailer.
    pub fn is_listed(&self) -> bool {
        matches!(
            self,
            Outcome::Applied | Outcome::Superseded | Outcome::Retried
        )
    }

    /// A short label for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Superseded => "superseded",
            Outcome::AlreadyCommitted => "already_committed",
            Outcome::Outdated => "outdated",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::Retried => "retried",
            Outcome::Held => "held",
            Outcome::DeadLetter(_) => "dead_letter",
        }
    }
}

/// An intent that passed the checks that do not need the repository.
#[derive(Debug, Clone)]
pub struct Checked {
    pub intent: CommitIntent,
    /// The record's timestamp (ms); 0 when unknown, which is never outdated.
    pub ts: u64,
    pub image: ImageRef,
    /// Index into the config's environments.
    pub env: usize,
    pub trace: Option<TraceContext>,
}

/// Parses and checks a delivery; `Err` is its final outcome (held or refused).
pub fn check(d: &Delivery, config: &CommitConfig) -> Result<Checked, Outcome> {
    use RefusalKind::*;
    let refuse = |kind, reason: String| Err(refused(kind, reason));
    let intent = match CommitIntent::from_json(&d.value) {
        Ok(i) => i,
        Err(e) => return refuse(NotAnIntent, format!("not a deployment intent: {e}")),
    };
    if !is_intent_id(&intent.intent_id) {
        return refuse(
            InvalidIntentId,
            format!("invalid intent_id `{}`", printable(&intent.intent_id)),
        );
    }
    if intent.action == Action::Hold {
        return Err(Outcome::Held);
    }
    let Some(env) = config
        .environments
        .iter()
        .position(|e| e.name == intent.environment)
    else {
        return refuse(
            UnknownEnvironment,
            format!(
                "no environment `{}` in {}",
                printable(&intent.environment),
                config.file
            ),
        );
    };
    if !crate::record::oci::is_name(&intent.service) {
        return refuse(
            InvalidService,
            format!("invalid service name `{}`", printable(&intent.service)),
        );
    }
    match ImageRef::parse(&intent.image) {
        Ok(image) => Ok(Checked {
            intent,
            ts: d.ts,
            image,
            env,
            trace: d.trace,
        }),
        Err(e) => refuse(
            InvalidImage,
            format!("invalid image `{}`: {e}", printable(&intent.image)),
        ),
    }
}

/// The plan for one branch.
#[derive(Debug, Default)]
pub struct BranchPlan {
    /// One per service and environment whose image changes.
    pub changes: Vec<Change>,
    /// One per retry whose image the files already hold: no file changes.
    pub retries: Vec<Change>,
    /// Every intent the commit accounts for (applied, retried and
    /// superseded), in batch order.
    pub trailer_ids: Vec<String>,
    /// The traces of those intents (32 hex digits each), each once.
    pub trace_ids: Vec<String>,
    /// The newest intent time per service and environment that the branch
    /// does not record yet; a batch with records but no change still makes
    /// a (record-only) commit, so that a redelivery with other batch
    /// boundaries cannot apply an older intent.
    pub records: Vec<Newest>,
    /// (index in the batch, outcome) for every intent given.
    pub outcomes: Vec<(usize, Outcome)>,
    /// Index in the batch of a superseded intent -> of the intent that
    /// decided its service and environment.
    pub superseded_by: HashMap<usize, usize>,
    /// The environments' files with the edits applied.
    pub files: Vec<EnvFiles>,
}

impl BranchPlan {
    /// Whether the plan needs a commit at all.
    pub fn commits(&self) -> bool {
        !self.changes.is_empty() || !self.retries.is_empty() || !self.records.is_empty()
    }
}

/// What the branch already records: its trailer index, or a test's stand-in.
pub trait Recorded {
    /// Whether the id is in a `Sluice-Intent` trailer.
    fn is_committed(&self, intent_id: &str) -> bool;
    /// The newest intent time recorded for the service in the environment.
    fn newest(&self, environment: &str, service: &str) -> Option<u64>;
}

/// Plans `items` (index in the batch, checked intent; all on one branch,
/// in arrival order) against the clone at `root`.
pub fn plan_branch(
    root: &Path,
    environments: &[Environment],
    items: &[(usize, &Checked)],
    recorded: &dyn Recorded,
) -> BranchPlan {
    let mut plan = BranchPlan::default();
    let mut loaded: HashMap<usize, usize> = HashMap::new();
    for group in groups(items) {
        let env = &environments[group[0].1.env];
        let recorded_ts = recorded.newest(&env.name, &group[0].1.intent.service);
        let live = set_aside_outdated(group, recorded, recorded_ts, &mut plan.outcomes);
        // The newest intent decides; the older ones are done or superseded.
        let Some((&(newest_at, newest), older)) = live.split_last() else {
            continue;
        };
        let newest_outcome = if recorded.is_committed(&newest.intent.intent_id) {
            Outcome::AlreadyCommitted
        } else {
            let slot = *loaded.entry(newest.env).or_insert_with(|| {
                plan.files.push(EnvFiles::load(root, &env.directory));
                plan.files.len() - 1
            });
            match apply(&mut plan.files[slot], env, newest, &mut plan.changes) {
                Outcome::AlreadyApplied if newest.intent.is_retry() => {
                    // The files hold the image: it is the old one too.
                    let image = Some(newest.image.reference());
                    plan.retries.push(change(env, newest, image));
                    Outcome::Retried
                }
                outcome => outcome,
            }
        };
        let mut accounted: Vec<&Checked> = Vec::new();
        for &(at, c) in older {
            let outcome = match (&newest_outcome, recorded.is_committed(&c.intent.intent_id)) {
                (_, true) => Outcome::AlreadyCommitted,
                (Outcome::DeadLetter(r), false) => Outcome::DeadLetter(r.clone()),
                (_, false) => Outcome::Superseded,
            };
            if outcome == Outcome::Superseded {
                accounted.push(c);
                plan.superseded_by.insert(at, newest_at);
            }
            plan.outcomes.push((at, outcome));
        }
        if matches!(
            newest_outcome,
            Outcome::Applied | Outcome::AlreadyApplied | Outcome::Retried
        ) {
            accounted.push(newest);
        }
        plan.records.extend(record(env, &accounted, recorded_ts));
        plan.outcomes.push((newest_at, newest_outcome));
    }
    plan.outcomes.sort_by_key(|(at, _)| *at);
    if plan.commits() {
        plan.trailer_ids = trailer_ids(items, &plan.outcomes);
        plan.trace_ids = trace_ids(items, &plan.outcomes);
    }
    plan
}

/// Marks the group's outdated intents; returns the others, still in
/// arrival order. An intent whose id is committed is never outdated: it is
/// already committed, whatever its time.
fn set_aside_outdated<'a>(
    group: Vec<(usize, &'a Checked)>,
    recorded: &dyn Recorded,
    recorded_ts: Option<u64>,
    outcomes: &mut Vec<(usize, Outcome)>,
) -> Vec<(usize, &'a Checked)> {
    let Some(newest) = recorded_ts else {
        return group;
    };
    let mut live = Vec::with_capacity(group.len());
    for (at, c) in group {
        if c.ts > 0 && c.ts < newest && !recorded.is_committed(&c.intent.intent_id) {
            outcomes.push((at, Outcome::Outdated));
        } else {
            live.push((at, c));
        }
    }
    live
}

/// The newest time among the intents a commit accounts for (applied,
/// superseded, already applied), if the branch does not record it yet.
fn record(env: &Environment, accounted: &[&Checked], recorded_ts: Option<u64>) -> Option<Newest> {
    let first = accounted.first()?;
    let ts = accounted.iter().map(|c| c.ts).max()?;
    (ts > 0 && recorded_ts.is_none_or(|r| ts > r)).then(|| Newest {
        environment: env.name.clone(),
        service: first.intent.service.clone(),
        ts,
    })
}

/// The applied, retried and superseded intents' ids, in batch order; a
/// record delivered twice in one batch is listed once.
fn trailer_ids(items: &[(usize, &Checked)], outcomes: &[(usize, Outcome)]) -> Vec<String> {
    let by_index: HashMap<usize, &Checked> = items.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    outcomes
        .iter()
        .filter(|(_, o)| o.is_listed())
        .filter_map(|(at, _)| by_index.get(at).map(|c| c.intent.intent_id.clone()))
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// The trace ids of the intents a commit accounts for, each once.
fn trace_ids(items: &[(usize, &Checked)], outcomes: &[(usize, Outcome)]) -> Vec<String> {
    let by_index: HashMap<usize, &Checked> = items.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    outcomes
        .iter()
        .filter(|(_, o)| o.is_listed())
        .filter_map(|(at, _)| by_index.get(at).and_then(|c| c.trace))
        .map(|t| t.trace_id_hex())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// The items grouped by (environment, service), groups ordered by their
/// first intent, each group in arrival order.
fn groups<'a>(items: &[(usize, &'a Checked)]) -> Vec<Vec<(usize, &'a Checked)>> {
    let mut index: HashMap<(usize, &str), usize> = HashMap::new();
    let mut out: Vec<Vec<(usize, &Checked)>> = Vec::new();
    for &(at, c) in items {
        let slot = *index
            .entry((c.env, c.intent.service.as_str()))
            .or_insert_with(|| {
                out.push(Vec::new());
                out.len() - 1
            });
        out[slot].push((at, c));
    }
    out
}

/// Applies one intent to its environment's files. Either every marker of
/// the service is set, or (on any error) none is.
fn apply(
    files: &mut EnvFiles,
    env: &Environment,
    c: &Checked,
    changes: &mut Vec<Change>,
) -> Outcome {
    if let Some(reason) = &files.unusable {
        return refused(RefusalKind::DirectoryUnusable, reason.clone());
    }
    let service = c.intent.service.as_str();
    let mut edited: Vec<(usize, String)> = Vec::new();
    let mut old_image = None;
    let mut found = false;
    for i in files.candidates(service) {
        let file = &files.files[i];
        // Unreadable files are listed in the reason if no marker is found.
        let Ok(text) = &file.text else { continue };
        match set_image(text, service, &c.image) {
            Ok(Edit::Changed(new)) => {
                found = true;
                if old_image.is_none() {
                    // Markers first, then a kustomize entry of the image's repository.
                    old_image = current_image_in(text, service, &c.image.repository)
                        .ok()
                        .flatten();
                }
                edited.push((i, new));
            }
            Ok(Edit::Unchanged) => found = true,
            Ok(Edit::NoMarker) => {}
            Err(e) => {
                return refused(
                    RefusalKind::FileNotEditable,
                    format!("{}: {e}", file.path.display()),
                );
            }
        }
    }
    if !found {
        return refused(RefusalKind::NoMarker, no_marker(files, env, service));
    }
    if edited.is_empty() {
        return Outcome::AlreadyApplied;
    }
    for (i, text) in edited {
        files.files[i].text = Ok(text);
        files.files[i].dirty = true;
    }
    changes.push(change(env, c, old_image));
    Outcome::Applied
}

/// The message's view of an intent.
fn change(env: &Environment, c: &Checked, old_image: Option<String>) -> Change {
    Change {
        service: c.intent.service.clone(),
        environment: env.name.clone(),
        old_image,
        new_image: c.image.reference(),
        action: c.intent.action.as_str(),
        reason: c.intent.reason.clone(),
        intent_id: c.intent.intent_id.clone(),
    }
}

fn no_marker(files: &EnvFiles, env: &Environment, service: &str) -> String {
    let mut reason = format!(
        "no marker for service `{service}` in {} (environment {})",
        env.directory.display(),
        env.name
    );
    if !files.escapes.is_empty() {
        let list: Vec<String> = files
            .escapes
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        reason.push_str(&format!(
            "; not searched, they lead out of the repository: {}",
            list.join(", ")
        ));
    }
    let unreadable: Vec<String> = files
        .files
        .iter()
        .filter_map(|f| {
            f.text
                .as_ref()
                .err()
                .map(|e| format!("{} ({e})", f.path.display()))
        })
        .collect();
    if !unreadable.is_empty() {
        reason.push_str(&format!("; unreadable: {}", unreadable.join(", ")));
    }
    reason
}

#[cfg(test)]
mod tests;
