//! Tests of batch planning: checks, outdated intents, groups and outcomes.

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
