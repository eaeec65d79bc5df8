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
mod tests {
    use super::*;

    const CONFIG: &str = "[repository]\nurl = \"file:///x\"\n[author]\nname = \"S\"\nemail = \"s@x\"\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n";

    /// A branch whose trailers list the ids `committed` accepts, and no times.
    struct Committed<F>(F);

    impl<F: Fn(&str) -> bool> Recorded for Committed<F> {
        fn is_committed(&self, intent_id: &str) -> bool {
            (self.0)(intent_id)
        }
        fn newest(&self, _: &str, _: &str) -> Option<u64> {
            None
        }
    }

    fn nothing_committed() -> Committed<fn(&str) -> bool> {
        Committed(|_| false)
    }

    fn delivery(id: &str, action: &str, service: &str, image: &str) -> Delivery {
        Delivery {
            value: serde_json::json!({
                "action": action, "service": service, "environment": "prod", "image": image,
                "previous_image": null, "reason": "new image", "intent_id": id, "caused_by": "test"
            })
            .to_string(),
            key: None,
            ts: 0,
            received: Instant::now(),
            origin: "test".into(),
            trace: None,
        }
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("envs/prod")).unwrap();
        std::fs::write(
            dir.path().join("envs/prod/api.yaml"),
            "spec:\n  image: api:v1 # {\"sluice\": \"api\"}\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_newest_intent_per_service_wins_and_all_are_listed() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let ds = [
            delivery("a", "deploy", "api", "api:v2"),
            delivery("b", "hold", "api", "api:v9"),
            delivery("c", "deploy", "api", "api:v3"),
            delivery("d", "deploy", "api", "api:v4"),
        ];
        let checked: Vec<_> = ds.iter().map(|d| check(d, &config)).collect();
        assert_eq!(checked[1].as_ref().unwrap_err(), &Outcome::Held);
        let items: Vec<(usize, &Checked)> = checked
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().ok().map(|c| (i, c)))
            .collect();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &items,
            &Committed(|id: &str| id == "c"),
        );
        let outcomes: Vec<_> = plan.outcomes.iter().map(|(i, o)| (*i, o.label())).collect();
        assert_eq!(
            outcomes,
            [(0, "superseded"), (2, "already_committed"), (3, "applied")]
        );
        assert_eq!(plan.trailer_ids, ["a", "d"]);
        assert_eq!(plan.changes[0].old_image.as_deref(), Some("api:v1"));
        assert_eq!(
            plan.files[0].files[0].text.as_deref().unwrap(),
            "spec:\n  image: api:v4 # {\"sluice\": \"api\"}\n"
        );
    }

    #[test]
    fn bad_intents_are_refused_with_a_reason() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let reason = |d: Delivery| match check(&d, &config) {
            Err(Outcome::DeadLetter(r)) => r.reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(delivery("a", "deploy", "api", "api:v1\nkind: x")).contains("invalid image"));
        assert!(reason(delivery("a", "deploy", "api", "api:v1: x")).contains("invalid image"));
        assert!(reason(delivery("a", "deploy", "../api", "api:v1")).contains("invalid service"));
        assert!(reason(delivery("a b", "deploy", "api", "api:v1")).contains("invalid intent_id"));
        let mut d = delivery("a", "deploy", "api", "api:v1");
        d.value = d.value.replace("prod", "../prod");
        assert!(reason(d).contains("no environment"));
        let dir = repo();
        let unknown = check(&delivery("u", "deploy", "web", "web:v1"), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &unknown)],
            &nothing_committed(),
        );
        assert!(
            matches!(&plan.outcomes[0].1, Outcome::DeadLetter(r) if r.kind == RefusalKind::NoMarker && r.reason.contains("no marker for service `web`"))
        );
        assert!(plan.changes.is_empty());
    }

    proptest::proptest! {
        /// Against an oracle written from the rules in the module comment:
        /// per service the newest intent decides, committed ones are done,
        /// and the trailers list exactly the applied and superseded intents.
        #[test]
        fn plans_follow_the_rules(
            intents in proptest::collection::vec((0usize..3, 0u32..4, proptest::bool::ANY), 0..12)
        ) {
            let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("envs/prod")).unwrap();
            let services = ["api", "web", "db"];
            for s in services {
                let text = format!("image: {s}:v0 # {{\"sluice\": \"{s}\"}}\n");
                std::fs::write(dir.path().join(format!("envs/prod/{s}.yaml")), text).unwrap();
            }
            let ds: Vec<Delivery> = intents
                .iter()
                .enumerate()
                .map(|(i, (s, v, _))| delivery(&format!("i{i}"), "deploy", services[*s], &format!("{}:v{v}", services[*s])))
                .collect();
            let checked: Vec<Checked> = ds.iter().map(|d| check(d, &config).unwrap()).collect();
            let items: Vec<(usize, &Checked)> = checked.iter().enumerate().collect();
            let committed = |id: &str| {
                id[1..].parse::<usize>().is_ok_and(|i| intents[i].2)
            };
            let plan = plan_branch(dir.path(), &config.environments, &items, &Committed(committed));

            let mut expected = vec![""; intents.len()];
            let mut images: Vec<String> = services.iter().map(|s| format!("{s}:v0")).collect();
            for (s, service) in services.iter().enumerate() {
                let group: Vec<usize> = (0..intents.len()).filter(|&i| intents[i].0 == s).collect();
                let Some(&newest) = group.last() else { continue };
                let image = format!("{service}:v{}", intents[newest].1);
                let outcome = if intents[newest].2 {
                    "already_committed"
                } else if image == images[s] {
                    "already_applied"
                } else {
                    images[s] = image;
                    "applied"
                };
                expected[newest] = outcome;
                for &i in &group[..group.len() - 1] {
                    expected[i] = if intents[i].2 { "already_committed" } else { "superseded" };
                }
            }
            let got: Vec<&str> = plan.outcomes.iter().map(|(_, o)| o.label()).collect();
            proptest::prop_assert_eq!(&got, &expected);
            let any_change = expected.contains(&"applied");
            let trailers: Vec<String> = (0..intents.len())
                .filter(|&i| any_change && matches!(expected[i], "applied" | "superseded"))
                .map(|i| format!("i{i}"))
                .collect();
            proptest::prop_assert_eq!(&plan.trailer_ids, &trailers);
            for (s, service) in services.iter().enumerate() {
                let file = plan.files.iter().flat_map(|f| &f.files).find(|f| f.path.ends_with(format!("{service}.yaml")));
                if let Some(f) = file {
                    let want = format!("image: {} # {{\"sluice\": \"{service}\"}}\n", images[s]);
                    proptest::prop_assert_eq!(f.text.as_deref().unwrap(), want.as_str());
                }
            }
        }
    }

    #[test]
    fn a_record_delivered_twice_in_a_batch_is_one_trailer() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let d = delivery("same", "deploy", "api", "api:v2");
        let c = check(&d, &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &c), (1, &c)],
            &nothing_committed(),
        );
        assert_eq!(plan.trailer_ids, ["same"]);
        assert_eq!(plan.changes.len(), 1);
    }

    #[test]
    fn an_image_already_in_the_files_makes_no_change() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let same = check(&delivery("s", "deploy", "api", "api:v1"), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &same)],
            &nothing_committed(),
        );
        assert_eq!(plan.outcomes[0].1, Outcome::AlreadyApplied);
        assert!(plan.changes.is_empty() && plan.trailer_ids.is_empty());
    }

    /// A gate's retry of a failed sync of `image`.
    fn retry(id: &str, image: &str) -> Delivery {
        let mut d = delivery(id, "deploy", "api", image);
        let mut value: serde_json::Value = serde_json::from_str(&d.value).unwrap();
        value["reason"] = "retry 1 of 2 after failed sync".into();
        value["reason_code"] = "retry".into();
        d.value = value.to_string();
        d
    }

    #[test]
    fn a_retry_of_the_image_in_place_makes_an_empty_change_listed_in_the_trailers() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let r = check(&retry("r", "api:v1"), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &r)],
            &nothing_committed(),
        );
        assert_eq!(plan.outcomes, [(0, Outcome::Retried)]);
        assert!(plan.commits() && plan.changes.is_empty(), "{plan:?}");
        assert_eq!(plan.trailer_ids, ["r"]);
        assert_eq!(plan.retries.len(), 1);
        let (old, new) = (&plan.retries[0].old_image, &plan.retries[0].new_image);
        assert_eq!((old.as_deref(), new.as_str()), (Some("api:v1"), "api:v1"));
        assert!(
            plan.files.iter().flat_map(|f| &f.files).all(|f| !f.dirty),
            "no file is written"
        );
        // Redelivered after its commit: nothing again.
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &r)],
            &Committed(|id: &str| id == "r"),
        );
        assert_eq!(plan.outcomes, [(0, Outcome::AlreadyCommitted)]);
        assert!(!plan.commits());
    }

    #[test]
    fn a_retry_of_another_image_writes_it_and_a_later_intent_supersedes_a_retry() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let r = check(&retry("r", "api:v2"), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &r)],
            &nothing_committed(),
        );
        assert_eq!(plan.outcomes, [(0, Outcome::Applied)]);
        assert_eq!(plan.changes.len(), 1);
        assert!(plan.retries.is_empty());

        let r = check(&retry("r", "api:v1"), &config).unwrap();
        let back = check(&delivery("b", "rollback", "api", "api:v0"), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &r), (1, &back)],
            &nothing_committed(),
        );
        let labels: Vec<_> = plan.outcomes.iter().map(|(_, o)| o.label()).collect();
        assert_eq!(labels, ["superseded", "applied"]);
        assert!(plan.retries.is_empty());
        assert_eq!(plan.trailer_ids, ["r", "b"]);
        assert_eq!(plan.superseded_by, HashMap::from([(0, 1)]));
    }

    /// A branch that records `api` in `prod` up to `newest`, and no ids.
    struct RecordedUpTo(u64);

    impl Recorded for RecordedUpTo {
        fn is_committed(&self, _: &str) -> bool {
            false
        }
        fn newest(&self, environment: &str, service: &str) -> Option<u64> {
            (environment == "prod" && service == "api").then_some(self.0)
        }
    }

    fn at(mut d: Delivery, ts: u64) -> Delivery {
        d.ts = ts;
        d
    }

    #[test]
    fn an_intent_older_than_the_recorded_newest_is_outdated() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        let old = check(&at(delivery("old", "deploy", "api", "api:v0"), 10), &config).unwrap();
        let same = check(
            &at(delivery("same", "deploy", "api", "api:v2"), 20),
            &config,
        )
        .unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &old)],
            &RecordedUpTo(20),
        );
        assert_eq!(plan.outcomes, [(0, Outcome::Outdated)]);
        assert!(!plan.commits(), "{plan:?}");
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &old), (1, &same)],
            &RecordedUpTo(20),
        );
        let labels: Vec<_> = plan.outcomes.iter().map(|(_, o)| o.label()).collect();
        assert_eq!(
            labels,
            ["outdated", "applied"],
            "an equal time is not older"
        );
        assert!(plan.records.is_empty(), "20 is recorded already");
    }

    #[test]
    fn a_batch_without_a_change_still_records_the_newest_time() {
        let config = CommitConfig::parse("c.toml", CONFIG).unwrap();
        let dir = repo();
        // A deploy then a rollback to what the files hold: nothing changes.
        let deploy = check(&at(delivery("a", "deploy", "api", "api:v2"), 10), &config).unwrap();
        let back = check(&at(delivery("b", "rollback", "api", "api:v1"), 20), &config).unwrap();
        let plan = plan_branch(
            dir.path(),
            &config.environments,
            &[(0, &deploy), (1, &back)],
            &nothing_committed(),
        );
        let labels: Vec<_> = plan.outcomes.iter().map(|(_, o)| o.label()).collect();
        assert_eq!(labels, ["superseded", "already_applied"]);
        assert!(plan.changes.is_empty() && plan.commits());
        assert_eq!(plan.trailer_ids, ["a"]);
        assert_eq!(
            plan.records,
            [Newest {
                environment: "prod".into(),
                service: "api".into(),
                ts: 20
            }]
        );
    }
}
