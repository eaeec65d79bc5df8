//! Issue 11, the committer's part: a report per intent a commit accounts
//! for (to a file with `--report`, to the report topic on Kafka), never lost
//! to a crash; and a retry of a failed sync as an empty commit. Real git on
//! disk, the real binary.

use super::*;

/// A replay line holding `value` as an intent (ts 1, keyed like intents).
fn line(value: serde_json::Value) -> String {
    let key = format!(
        "{}/{}",
        value["service"].as_str().unwrap(),
        value["environment"].as_str().unwrap()
    );
    serde_json::json!({"topic": "deploy-intents", "ts": 1, "key": key, "value": value}).to_string()
}

/// A gate's retry of a failed sync of `image` (an intent as the gate writes it).
fn retry(id: &str, service: &str, image: &str, n: u32) -> String {
    line(serde_json::json!({
        "action": "deploy", "service": service, "environment": "prod", "image": image,
        "previous_image": image, "reason": format!("retry {n} of 2 after failed sync"),
        "reason_code": "retry", "intent_id": id, "caused_by": [{"line": 7}, {"line": 2}]
    }))
}

fn commit_reporting(
    config: &Path,
    input: &Path,
    work: &Path,
    report: &Path,
    faults: &str,
) -> Output {
    let mut cmd = sluice();
    cmd.arg("commit")
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--work-dir")
        .arg(work)
        .arg("--report")
        .arg(report);
    if !faults.is_empty() {
        cmd.env("SLUICE_FAULTS", faults);
    }
    cmd.output().expect("sluice runs")
}

/// The lines of a report file.
fn read_reports(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every `Sluice-Intent` id on main -> the commits whose trailers list it.
fn trailer_commits(repo: &Repo) -> HashMap<String, Vec<String>> {
    let log = git(
        &repo.bare(),
        &[
            "log",
            "--format=%x1e%H%x00%(trailers:key=Sluice-Intent,valueonly,separator=%x1f)",
            "main",
        ],
    );
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for commit in log.split('\x1e').filter(|c| !c.trim().is_empty()) {
        let (sha, ids) = commit.split_once('\0').unwrap();
        for id in ids.split('\x1f').map(str::trim).filter(|i| !i.is_empty()) {
            out.entry(id.to_owned()).or_default().push(sha.to_owned());
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The first run reports what its commit lists (applied, superseded with
/// the intent that won), nothing for a hold, a refusal or an image already
/// in place; a rerun of the same file finds every id on the branch and
/// reports it again with the commit that holds it.
#[test]
fn every_intent_a_commit_lists_is_reported_with_that_commit_and_again_on_a_rerun() {
    let repo = Repo::new(&["prod"], &services(3));
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod"],
        "[kafka]\nreport_topic = \"commit-reports\"\n",
    );
    let input = repo.path().join("intents.jsonl");
    let v = |s: &str, tag: &str| format!("registry.example.com/{s}:{tag}");
    let mut first = serde_json::from_str::<serde_json::Value>(&intent(
        "a",
        "deploy",
        "svc-00",
        "prod",
        &v("svc-00", "v1"),
    ))
    .unwrap()["value"]
        .clone();
    first["reason_code"] = "new_image".into();
    first["caused_by"] = serde_json::json!([{"line": 3}, {"line": 1}]);
    write_lines(
        &input,
        &[
            line(first),
            intent("b", "deploy", "svc-00", "prod", &v("svc-00", "v2")),
            intent("c", "hold", "svc-01", "prod", &v("svc-01", "v9")),
            intent("d", "deploy", "svc-01", "prod", &v("svc-01", "v0")),
            intent("e", "deploy", "nosuch", "prod", &v("nosuch", "v1")),
            intent("f", "rollback", "svc-02", "prod", &v("svc-02", "v0-old")),
        ],
    );
    let (work, report) = (
        repo.path().join("work"),
        repo.path().join("out/reports.jsonl"),
    );
    let before = now_ms();
    let out = commit_reporting(&config, &input, &work, &report, "");
    let after = now_ms();
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("3 reports sent"),
        "{}",
        text(&out.stderr)
    );
    let sha = git(&repo.bare(), &["rev-parse", "main"]).trim().to_owned();
    let lines = read_reports(&report);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["value"]["intent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["a", "b", "f"],
        "the commit lists a, b and f; c held, d in place, e refused"
    );
    let pushed_at = lines[0]["value"]["pushed_at"].as_u64().unwrap();
    assert!(
        (before..=after).contains(&pushed_at),
        "{before} <= {pushed_at} <= {after}"
    );
    assert_eq!(
        lines[0],
        serde_json::json!({
            "topic": "commit-reports", "ts": pushed_at, "key": "svc-00/prod",
            "value": {"intent_id": "a", "service": "svc-00", "environment": "prod",
                "image": v("svc-00", "v1"), "action": "deploy", "reason_code": "new_image",
                "reason": "new image", "outcome": "superseded", "superseded_by": "b",
                "commit": sha, "branch": "main", "pushed_at": pushed_at,
                "caused_by": [{"line": 3}, {"line": 1}]}
        })
    );
    // The other intents wrote `caused_by` as a sentence: none is reported.
    assert_eq!(
        lines[2]["value"],
        serde_json::json!({"intent_id": "f", "service": "svc-02", "environment": "prod",
            "image": v("svc-02", "v0-old"), "action": "rollback", "reason": "new image",
            "outcome": "applied", "commit": sha, "branch": "main", "pushed_at": pushed_at})
    );
    assert_eq!(lines[1]["value"]["outcome"], "applied");
    assert_eq!(lines[1]["key"], "svc-00/prod");

    // A rerun of the file: nothing to commit, the same three reported again.
    let again = commit_reporting(&config, &input, &work, &report, "");
    assert_ok(&again);
    assert_eq!(repo.commit_count(), 2, "seed + one commit");
    let committed_at: u64 = git(&repo.bare(), &["log", "-1", "--format=%ct", "main"])
        .trim()
        .parse()
        .unwrap();
    let lines = read_reports(&report);
    assert_eq!(lines.len(), 6);
    for (l, id) in lines[3..].iter().zip(["a", "b", "f"]) {
        let value = &l["value"];
        assert_eq!(value["intent_id"], id);
        assert_eq!(value["outcome"], "already_committed");
        assert_eq!(value["commit"], sha.as_str());
        assert_eq!(value["pushed_at"], committed_at * 1000, "the commit's time");
        assert_eq!(l["ts"], committed_at * 1000);
        assert!(value.get("superseded_by").is_none(), "{value}");
    }
    assert_eq!(
        lines[3]["value"]["caused_by"],
        serde_json::json!([{"line": 3}, {"line": 1}])
    );
}

/// Killed after the third push and before its report: the restart finds
/// the third batch's intents on the branch and reports them then, so every
/// intent has a report naming the commit that lists it.
#[cfg(feature = "fault-injection")]
#[test]
fn a_kill_between_push_and_report_loses_no_report() {
    let svcs = services(12);
    let repo = Repo::new(&["prod"], &svcs);
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod"],
        "[batch]\nmax_intents = 40\n[push]\nper_second = 1000\n",
    );
    let (lines, newest) = deploys("c", 200, &svcs, "prod");
    let input = repo.path().join("intents.jsonl");
    write_lines(&input, &lines);
    let (work, report) = (repo.path().join("work"), repo.path().join("reports.jsonl"));
    let crashed = commit_reporting(&config, &input, &work, &report, "commit.after-push=kill@3");
    assert_eq!(
        crashed.status.signal(),
        Some(9),
        "{}",
        text(&crashed.stderr)
    );
    assert_eq!(
        read_reports(&report).len(),
        80,
        "two batches of 40 reported, the third not"
    );
    assert_ok(&commit_reporting(&config, &input, &work, &report, ""));
    assert_converged(&repo, 200, "c", &newest, "prod");

    let holders = trailer_commits(&repo);
    let mut reported: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for l in read_reports(&report) {
        let id = l["value"]["intent_id"].as_str().unwrap().to_owned();
        reported.entry(id).or_default().push(l["value"].clone());
    }
    for i in 0..200 {
        let id = format!("c-{i:04}");
        let reports = reported
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was never reported"));
        let outcomes: Vec<&str> = reports
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        // Batches of 40: the first two were reported, then again by the
        // restart; the third only by the restart; the last two once.
        let expected: &[&str] = match i {
            0..80 => &["first", "already_committed"],
            80..120 => &["already_committed"],
            _ => &["first"],
        };
        assert_eq!(outcomes.len(), expected.len(), "{id}: {outcomes:?}");
        for (got, want) in outcomes.iter().zip(expected) {
            match *want {
                "first" => assert!(["applied", "superseded"].contains(got), "{id}: {got}"),
                w => assert_eq!(*got, w, "{id}"),
            }
        }
        for r in reports {
            assert_eq!(
                holders[&id],
                [r["commit"].as_str().unwrap()],
                "{id}: the report names the commit that lists it"
            );
        }
    }
}

/// A retry of the image the files hold makes an empty commit with its
/// trailer (a new revision for Argo CD or Flux), once: a redelivery finds
/// it committed. A deploy of that image for any other reason commits nothing.
#[test]
fn a_retry_of_the_deployed_image_is_one_empty_commit() {
    let repo = Repo::new(&["prod"], &services(1));
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let v1 = "registry.example.com/svc-00:v1";
    let (work, report) = (repo.path().join("work"), repo.path().join("reports.jsonl"));
    let deploy = repo.path().join("deploy.jsonl");
    write_lines(&deploy, &[intent("d1", "deploy", "svc-00", "prod", v1)]);
    assert_ok(&commit_run(&config, &deploy, &work, &[]));
    let deployed = git(&repo.bare(), &["rev-parse", "main"]).trim().to_owned();

    let retried = repo.path().join("retry.jsonl");
    write_lines(&retried, &[retry("r1", "svc-00", v1, 1)]);
    let out = commit_reporting(&config, &retried, &work, &report, "");
    assert_ok(&out);
    assert!(
        text(&out.stderr)
            .contains("0 already applied, 0 held, 0 dead letters, 0 outdated, 1 retried"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(repo.commit_count(), 3, "seed, deploy, retry");
    let sha = git(&repo.bare(), &["rev-parse", "main"]).trim().to_owned();
    assert_eq!(git(&repo.bare(), &["rev-parse", "main~1"]).trim(), deployed);
    assert_eq!(
        git(&repo.bare(), &["diff", "--stat", &deployed, &sha]),
        "",
        "no file changes"
    );
    let message = git(&repo.bare(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with(&format!(
            "retry 1 of 2 after failed sync: deploy svc-00 (prod) {v1}\n\n"
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "- deploy svc-00 in prod: {v1} -> {v1} (retry 1 of 2 after failed sync)\n"
        )),
        "{message}"
    );
    assert_eq!(repo.trailers(), ["r1", "d1"]);
    let lines = read_reports(&report);
    assert_eq!(lines.len(), 1);
    let value = &lines[0]["value"];
    assert_eq!(
        (value["outcome"].as_str(), value["reason_code"].as_str()),
        (Some("retried"), Some("retry"))
    );
    assert_eq!(value["commit"], sha.as_str());
    assert_eq!(
        lines[0]["topic"], "deploy-reports",
        "the default topic name in a file"
    );

    // Redelivered: already committed, no second commit.
    let again = commit_reporting(&config, &retried, &work, &report, "");
    assert_ok(&again);
    assert!(
        text(&again.stderr).contains("1 already committed"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(repo.commit_count(), 3);
    assert_eq!(read_reports(&report)[1]["value"]["commit"], sha.as_str());

    // The same image for another reason: in place, nothing to do.
    let redeploy = repo.path().join("redeploy.jsonl");
    write_lines(&redeploy, &[intent("d2", "deploy", "svc-00", "prod", v1)]);
    let out = commit_run(&config, &redeploy, &work, &[]);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("1 already applied"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(repo.commit_count(), 3);
}

/// On Kafka: killed after the push (nothing reported), then after the
/// report (offsets not committed), then a clean run. Every intent has its
/// report on the report topic, keyed `service/environment`, with the
/// intent's `traceparent`, naming the commit that lists it; the last run
/// was handed everything again, so reports come before offsets.
#[cfg(feature = "fault-injection")]
#[test]
fn reports_on_the_report_topic_survive_kills_and_precede_the_offsets() {
    use super::kafka::{
        brokers, fixture_trace, fixture_with_reports, received, run, unique, Fixture,
    };
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message};

    let Fixture {
        repo,
        config,
        work,
        report_topic,
        ..
    } = fixture_with_reports();
    let report_topic = report_topic.unwrap();
    let crashed = run(&config, &work, Some("after-push"));
    assert_eq!(
        crashed.status.signal(),
        Some(9),
        "{}",
        text(&crashed.stderr)
    );
    let reported = run(&config, &work, Some("after-report"));
    assert_eq!(
        reported.status.signal(),
        Some(9),
        "{}",
        text(&reported.stderr)
    );
    let last = run(&config, &work, None);
    assert_ok(&last);
    assert_eq!(received(&last), 31, "redelivered: {}", text(&last.stderr));
    assert_eq!(repo.commit_count(), 2, "one push in all");
    let sha = git(&repo.bare(), &["rev-parse", "main"]).trim().to_owned();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("report-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&report_topic]).unwrap();
    let mut reports: Vec<(String, serde_json::Value, Option<String>)> = Vec::new();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until nothing more comes for 5 s (at least the last run's 30 are there).
    while Instant::now() < deadline
        && (reports.len() <= 30 || quiet_since.elapsed() < Duration::from_secs(5))
    {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        quiet_since = Instant::now();
        let trace = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .map(text);
        let key = text(m.key().unwrap_or_default());
        reports.push((
            key,
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
            trace,
        ));
    }
    assert!(
        reports.len() > 30,
        "the last run's 30 and the killed run's: {}",
        reports.len()
    );
    let holders = trailer_commits(&repo);
    for n in 0..30 {
        let id = format!("q-{n:04}");
        let mine: Vec<_> = reports
            .iter()
            .filter(|(_, v, _)| v["intent_id"] == id.as_str())
            .collect();
        assert!(!mine.is_empty(), "{id} was never reported");
        for (key, value, trace) in mine {
            assert_eq!(holders[&id], [sha.as_str()]);
            assert_eq!(value["commit"], sha.as_str(), "{id}");
            assert_eq!(
                value["outcome"], "already_committed",
                "{id}: the push's own run was killed"
            );
            assert_eq!(*key, format!("{}/prod", value["service"].as_str().unwrap()));
            assert_eq!(trace.as_deref(), Some(fixture_trace(n).as_str()), "{id}");
        }
    }
    assert!(
        reports.iter().all(|(_, v, _)| v["intent_id"] != "ghost-1"),
        "a refused intent is not reported"
    );
}

/// The same intent twice in one file, in batches of one: the second finds
/// it on the branch (the commit this run pushed) and reports that commit
/// with its committer time, like a commit read from the log at start.
#[test]
fn a_redelivery_within_a_run_reports_the_commit_this_run_pushed() {
    let repo = Repo::new(&["prod"], &services(1));
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod"],
        "[batch]\nmax_intents = 1\n",
    );
    let input = repo.path().join("intents.jsonl");
    let twice = intent(
        "i1",
        "deploy",
        "svc-00",
        "prod",
        "registry.example.com/svc-00:v1",
    );
    write_lines(&input, &[twice.clone(), twice]);
    let (work, report) = (repo.path().join("work"), repo.path().join("reports.jsonl"));
    assert_ok(&commit_reporting(&config, &input, &work, &report, ""));
    let sha = git(&repo.bare(), &["rev-parse", "main"]).trim().to_owned();
    let committed_at: u64 = git(&repo.bare(), &["log", "-1", "--format=%ct", "main"])
        .trim()
        .parse()
        .unwrap();
    let lines = read_reports(&report);
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["value"]["outcome"].as_str().unwrap(),
                l["value"]["commit"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("applied", sha.as_str()),
            ("already_committed", sha.as_str())
        ]
    );
    assert_eq!(lines[1]["value"]["pushed_at"], committed_at * 1000);
}

/// A report topic that does not exist stops the committer at its start,
/// naming the topic, before any commit: reports are never lost to a push
/// the committer cannot report.
#[test]
fn a_missing_report_topic_is_refused_at_the_start() {
    use super::kafka::{fixture_with_a_missing_report_topic, run, Fixture};
    let Fixture {
        repo, config, work, ..
    } = fixture_with_a_missing_report_topic();
    let before = repo.commit_count();
    let out = run(&config, &work, None);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no-such-reports") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(repo.commit_count(), before, "nothing was pushed");
}
