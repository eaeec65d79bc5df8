//! The `sluice` binary as a user meets it: exit codes, messages on bad input,
//! the state directory across runs, and the demo.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sluice(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("sluice finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scenario(name: &str, file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("state-tests/scenarios")
        .join(name)
        .join(file)
        .display()
        .to_string()
}

#[test]
fn the_worked_example_through_the_binary() {
    let topo = scenario("21-worked-example", "topology.toml");
    let input = std::fs::read_to_string(scenario("21-worked-example", "input.jsonl")).unwrap();
    let out = sluice(&["replay", &topo, "--input", "-", "--drain"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let actions: Vec<(u64, String, String)> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["ts"].as_u64().unwrap(),
                v["value"]["action"].as_str().unwrap().to_owned(),
                v["value"]["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            (22_000, "deploy".into(), "a:v3".into()),
            (82_000, "deploy".into(), "a:v4".into()),
            (90_000, "rollback".into(), "a:v3".into())
        ]
    );
}

#[test]
fn malformed_input_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"topic\":\"docker-events\",\"ts\":1,\"key\":null,\"value\":{}}\n{oops\n",
    )
    .unwrap();
    let out = sluice(
        &[
            "replay",
            "topologies/cicd.toml",
            "--input",
            &input.display().to_string(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: not a replay record", input.display())),
        "{err}"
    );
    // The first line was an invalid record: a dead letter, written before the error.
    assert!(text(&out.stdout).contains("cicd.dead-letter"));
}

#[test]
fn an_invalid_topology_lists_every_error_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let src = std::fs::read_to_string("topologies/cicd.toml".to_string().replace(
        "topologies",
        &format!("{}/topologies", env!("CARGO_MANIFEST_DIR")),
    ))
    .unwrap();
    let broken = src
        .replacen("ttl = \"10m\"", "ttl = \"0m\"", 1)
        .replacen("quiet = \"30s\"", "quiet = \"30sec\"", 1)
        .replacen("type = \"throttle\"", "type = \"throttel\"", 1);
    std::fs::write(&path, broken).unwrap();
    let shown = path.display().to_string();
    let out = sluice(&["validate", &shown], "");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("3 errors found").count(),
        1,
        "printed once: {err}"
    );
    for key in [
        "operators[1].ttl",
        "operators[2].quiet",
        "operators[3].type",
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no error for {key}: {err}"));
        assert!(line.starts_with(&format!("{shown}:")), "{line}");
    }
    let ok = sluice(&["validate", "topologies/cicd.toml"], "");
    assert!(ok.status.success());
}

#[test]
fn state_dir_continues_a_run_and_refuses_another_app() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let input = std::fs::read_to_string(scenario("21-worked-example", "input.jsonl")).unwrap();
    let lines: Vec<&str> = input.split_inclusive('\n').collect();
    let topo = scenario("21-worked-example", "topology.toml");
    let first = sluice(
        &["replay", &topo, "--input", "-", "--state-dir", &state],
        &lines[..4].concat(),
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = sluice(
        &[
            "replay",
            &topo,
            "--input",
            "-",
            "--state-dir",
            &state,
            "--drain",
            "--line-offset",
            "4",
        ],
        &lines[4..].concat(),
    );
    assert!(second.status.success(), "{}", text(&second.stderr));
    let whole = sluice(&["replay", &topo, "--input", "-", "--drain"], &input);
    assert_eq!(
        text(&first.stdout) + &text(&second.stdout),
        text(&whole.stdout)
    );

    let other = sluice(
        &[
            "replay",
            "topologies/cicd.toml",
            "--input",
            "-",
            "--state-dir",
            &state,
        ],
        "",
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(
        text(&other.stderr).contains("belongs to app"),
        "{}",
        text(&other.stderr)
    );
}

#[test]
fn skipped_lines_are_counted_on_stderr_and_empty_input_is_fine() {
    let out = sluice(
        &["replay", "topologies/cicd.toml", "--input", "-"],
        "{\"topic\":\"unrelated\",\"ts\":5,\"key\":null,\"value\":1}\n",
    );
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("1 lines skipped"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let empty = sluice(&["replay", "--input", "-", "--drain"], "");
    assert!(empty.status.success(), "{}", text(&empty.stderr));
    assert!(empty.stdout.is_empty());
}

#[test]
fn the_demo_prints_intents_deterministically() {
    let a = sluice(&["demo", "--events", "3000", "--services", "5"], "");
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = sluice(&["demo", "--events", "3000", "--services", "5"], "");
    assert_eq!(a.stdout, b.stdout, "same seed, same intents and ids");
    let out = text(&a.stdout);
    assert!(
        out.lines().any(|l| l.contains("\"action\":\"deploy\"")),
        "{out}"
    );
}

#[test]
fn describe_prints_the_graph() {
    let out = sluice(&["describe", "topologies/cicd.toml"], "");
    let t = text(&out.stdout);
    assert!(
        t.contains("operator gate") && t.contains("alert_gate block_on [critical]"),
        "{t}"
    );
    let dot = text(&sluice(&["describe", "topologies/cicd.toml", "--dot"], "").stdout);
    assert!(
        dot.starts_with("digraph \"cicd\"") && dot.contains("-> n"),
        "{dot}"
    );
}

#[test]
fn flood_is_seeded() {
    let a = sluice(&["flood", "--events", "500", "--seed", "7"], "");
    let b = sluice(&["flood", "--events", "500", "--seed", "7"], "");
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(text(&a.stdout).lines().count(), 500);
}

#[test]
fn diff_against_a_baseline_reports_changes_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let flood = text(
        &sluice(
            &[
                "flood",
                "--events",
                "2000",
                "--services",
                "4",
                "--seed",
                "3",
            ],
            "",
        )
        .stdout,
    );
    let flood_path = dir.path().join("flood.jsonl");
    std::fs::write(&flood_path, &flood).unwrap();
    let flood_arg = flood_path.display().to_string();
    let baseline = sluice(
        &[
            "replay",
            "topologies/cicd.toml",
            "--input",
            &flood_arg,
            "--drain",
        ],
        "",
    );
    let base_path = dir.path().join("baseline.jsonl");
    std::fs::write(&base_path, &baseline.stdout).unwrap();
    let base_arg = base_path.display().to_string();

    let same = sluice(
        &[
            "replay",
            "topologies/cicd.toml",
            "--input",
            &flood_arg,
            "--drain",
            "--diff",
            &base_arg,
        ],
        "",
    );
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stdout));
    assert!(
        text(&same.stdout).contains("0 missing, 0 extra, 0 changed"),
        "{}",
        text(&same.stdout)
    );

    // A longer debounce moves deploys later and merges some: the diff must say so.
    let changed_topo = dir.path().join("slower.toml");
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/cicd.toml"))
            .unwrap();
    std::fs::write(
        &changed_topo,
        src.replace("quiet = \"30s\"", "quiet = \"90s\""),
    )
    .unwrap();
    let diff = sluice(
        &[
            "replay",
            &changed_topo.display().to_string(),
            "--input",
            &flood_arg,
            "--drain",
            "--diff",
            &base_arg,
        ],
        "",
    );
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff.stderr));
    let report = text(&diff.stdout);
    assert!(
        report.starts_with(&format!("--- {base_arg}\n+++ ")),
        "{report}"
    );
    assert!(
        report.contains("  ~ ") && report.contains("ts "),
        "{report}"
    );
}

#[test]
fn decode_prints_the_records_a_payload_yields_or_the_located_error() {
    // The group says firing, but one of its alerts is resolved: each alert's own status counts.
    let group = r#"{"version":"4","status":"firing","receiver":"r","groupLabels":{},"commonLabels":{"service":"api","environment":"prod"},"commonAnnotations":{},"externalURL":"http://am","alerts":[
        {"status":"firing","labels":{"alertname":"Down","severity":"critical"},"annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"f1"},
        {"status":"resolved","labels":{"alertname":"Slow","severity":"warning","service":"web"},"annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"2026-01-01T00:01:00Z","fingerprint":"f2"}]}"#;
    let out = sluice(&["decode", "--format", "alertmanager", "-"], group);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records,
        [
            serde_json::json!({"service":"api","alertname":"Down","severity":"critical","status":"firing","environment":"prod","fingerprint":"f1"}),
            serde_json::json!({"service":"web","alertname":"Slow","severity":"warning","status":"resolved","environment":"prod","fingerprint":"f2"}),
        ]
    );

    let scan = r#"{"type":"SCANNING_COMPLETED","occur_at":1,"operator":"auto","event_data":{"resources":[{"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","tag":"v1","resource_url":"h.io/p/a:v1"}],"repository":{"name":"a","namespace":"p","repo_full_name":"p/a","repo_type":"private"}}}"#;
    let out = sluice(&["decode", "--format", "harbor", "-"], scan);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        r#"{"ignored":"SCANNING_COMPLETED"}"#
    );

    let nameless = group.replace(r#""alertname":"Slow","#, "");
    let out = sluice(&["decode", "--format", "alertmanager", "-"], &nameless);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for a payload that fails"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("alerts[1]") && err.contains("alertname"),
        "{err}"
    );

    // As a source of a topology decodes it: here, the service from another label.
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("t.toml");
    std::fs::write(&topology, "[app]\nid = \"t\"\n[[sources]]\nname = \"am\"\ntopic = \"t\"\nkind = \"alert\"\nformat = \"alertmanager\"\nservice_from = { label = \"alertname\" }\n[[sinks]]\nname = \"o\"\ninput = \"am\"\ntopic = \"o\"\n").unwrap();
    let out = sluice(
        &[
            "decode",
            "--topology",
            topology.to_str().unwrap(),
            "--source",
            "am",
            "-",
        ],
        group,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let services: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["service"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(services, ["Down", "Slow"]);

    let out = sluice(&["decode", "--format", "prometheus", "-"], "{}");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("github_package"),
        "lists the formats"
    );
    let out = sluice(&["decode", "--format", "json", "-"], "{}");
    assert!(
        text(&out.stderr).contains("--kind"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_counts_ignored_entries_by_type_and_reads_payloads_given_as_strings() {
    let topology = scenario("27-native-formats", "topology.toml");
    let scan = r#"{"type":"SCANNING_COMPLETED","occur_at":1,"operator":"auto","event_data":{"resources":[{"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","tag":"v1","resource_url":"h.io/p/api:v1"}],"repository":{"name":"api","namespace":"p","repo_full_name":"p/api","repo_type":"private"}}}"#;
    let push = scan.replace("SCANNING_COMPLETED", "PUSH_ARTIFACT");
    let line = |ts: u64, value: String| {
        serde_json::json!({"topic": "harbor-webhooks", "ts": ts, "key": null, "value": serde_json::from_str::<serde_json::Value>(&value).unwrap()}).to_string()
    };
    let input = [
        line(1, scan.to_owned()),
        line(2, scan.to_owned()),
        // The push as a JSON string of its text, as `sluice record` keeps unreadable values.
        line(3, serde_json::to_string(&push).unwrap()),
    ]
    .join("\n");
    let out = sluice(&["replay", &topology, "--input", "-", "--drain"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let images = err
        .lines()
        .find(|l| l.trim_start().starts_with("images"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(images.contains("ignored(SCANNING_COMPLETED) 2"), "{images}");
    assert!(
        images.contains("in          3") && images.contains("out          1"),
        "{images}"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\"action\":\"deploy\"") && stdout.contains("h.io/p/api:v1@sha256:1111"),
        "{stdout}"
    );
}

/// Replays the first `lines` lines of a scenario into a state directory,
/// then asks `sluice state` about (service, environment).
fn state_after(name: &str, lines: usize, service: &str, environment: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let input = std::fs::read_to_string(scenario(name, "input.jsonl")).unwrap();
    let head: String = input.split_inclusive('\n').take(lines).collect();
    let topo = scenario(name, "topology.toml");
    let replay = sluice(
        &["replay", &topo, "--input", "-", "--state-dir", &state, "-q"],
        &head,
    );
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let answer = sluice(
        &[
            "state",
            "--state-dir",
            &state,
            "--topology",
            &topo,
            service,
            environment,
        ],
        "",
    );
    assert!(answer.status.success(), "{}", text(&answer.stderr));
    serde_json::from_slice(&answer.stdout).expect("the answer is JSON")
}

#[test]
fn state_answers_with_the_debounced_record_and_the_gate_view() {
    // Worked example through line 5 (50 s): v3 went out at 22 s, v4 waits in
    // the debounce until 50 s + 10 s, HighLatency (fired at 40 s) blocks.
    let a = state_after("21-worked-example", 5, "a", "prod");
    assert_eq!(a["clock"], 50_000);
    let ops = a["operators"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "the throttle holds nothing: {a}");
    assert_eq!(
        (ops[0]["name"].as_str(), ops[0]["type"].as_str()),
        (Some("debounce"), Some("debounce"))
    );
    let pending = &ops[0]["pending"][0];
    assert_eq!(pending["record"]["tag"], "v4");
    assert_eq!(pending["deadline"], 60_000);
    assert_eq!(pending["origin"], serde_json::json!({"line": 5}));
    let gate = &ops[1];
    assert_eq!(gate["type"], "alert_gate");
    assert_eq!(gate["current_image"], "a:v3");
    assert_eq!(gate["since"], 22_000);
    assert_eq!(gate["active_alerts"][0]["identity"], "HighLatency");
    assert_eq!(gate["active_alerts"][0]["blocks"], true);
    assert_eq!(gate["timers"][0]["kind"], "alert_expiry");
    assert_eq!(gate["timers"][0]["deadline"], 40_000 + 86_400_000);
}

#[test]
fn state_answers_with_the_rollout_retry_and_every_hold_reason() {
    // Scenario 28 through line 7: one retry done at 62 s, the next moved to 200 s.
    let a = state_after("28-gate-retry-rollback", 7, "api", "prod");
    let gate = &a["operators"][0];
    assert_eq!(gate["current_image"], "api:v2");
    assert_eq!(gate["since"], 62_000, "the retry redeployed it");
    assert_eq!(gate["rollout"]["status"], "failed");
    assert_eq!(gate["rollout"]["attempts"], 1);
    assert_eq!(
        gate["timers"],
        serde_json::json!([{"kind": "retry", "deadline": 200_000, "detail": "retry 2 of 2"}])
    );
    // Scenario 30 through line 14: api:v5 approved but prod frozen.
    let a = state_after("30-gate-freeze-pin-approval", 14, "api", "prod");
    let gate = &a["operators"][0];
    assert_eq!(gate["parked_image"], "api:v5");
    assert_eq!(
        gate["held_because"],
        serde_json::json!(["frozen until unfrozen: incident by ana (environment prod)"])
    );
    assert_eq!(gate["approvals"], serde_json::json!(["api:v5"]));
    assert_eq!(gate["frozen"]["until"], serde_json::Value::Null);
}

#[test]
fn control_appends_a_validated_command_that_a_replay_obeys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    let image = |ts: u64, tag: &str| {
        format!(
            r#"{{"topic":"docker-events","ts":{ts},"key":null,"value":{{"service":"api","repository":"api","tag":"{tag}"}}}}"#
        )
    };
    std::fs::write(&file, image(0, "v1") + "\n").unwrap();
    let path = file.display().to_string();
    let freeze = sluice(
        &[
            "control",
            "freeze",
            "--environment",
            "prod",
            "--service",
            "api",
            "--until",
            "60000",
            "--reason",
            "train",
            "--by",
            "ana",
            "--ts",
            "1000",
            "--output",
            &path,
        ],
        "",
    );
    assert!(freeze.status.success(), "{}", text(&freeze.stderr));
    let mut input = std::fs::read_to_string(&file).unwrap();
    let written: serde_json::Value = serde_json::from_str(input.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"topic": "control-events", "ts": 1000, "key": "api", "value": {
            "action": "freeze", "environment": "prod", "service": "api", "until": 60000,
            "reason": "train", "by": "ana"}})
    );
    input += &(image(2000, "v2") + "\n");
    std::fs::write(&file, &input).unwrap();
    let topo = scenario("32-gate-degraded-quarantine", "topology.toml");
    let out = sluice(&["replay", &topo, "--input", &path, "--drain", "-q"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let intents: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(u64, &str, &str)> = intents
        .iter()
        .map(|i| {
            (
                i["ts"].as_u64().unwrap(),
                i["value"]["action"].as_str().unwrap(),
                i["value"]["reason_code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (0, "deploy", "new_image"),
            (2000, "hold", "held_frozen"),
            (60_000, "deploy", "released")
        ]
    );
    assert_eq!(
        intents[1]["value"]["caused_by"],
        serde_json::json!([{"line": 3}, {"line": 2}])
    );

    let bad = sluice(
        &["control", "pin", "--environment", "prod", "--output", &path],
        "",
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("service: missing"),
        "{}",
        text(&bad.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        input,
        "nothing appended"
    );
}

#[test]
fn every_example_topology_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().display().to_string();
        let out = sluice(&["validate", &path], "");
        assert!(out.status.success(), "{path}: {}", text(&out.stderr));
        seen += 1;
    }
    assert!(seen >= 5, "the closed-loop example is among them");
}

/// The closed-loop example end to end: a release candidate goes to staging
/// after the 30 s debounce; Flux reports it healthy (its own payload, in the
/// replay file); after the 30 m soak it is promoted to prod, where it awaits
/// approval; `sluice control approve` releases it.
#[test]
fn the_closed_loop_example_promotes_a_flux_healthy_image_once_approved() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    let t0: u64 = 1_767_225_600_000;
    let lines = [
        format!(
            r#"{{"topic":"docker-events","ts":{t0},"key":"api","value":{{"service":"api","repository":"reg.io/api","tag":"v1.2.0-rc.1"}}}}"#
        ),
        format!(
            r#"{{"topic":"flux-events","ts":{},"key":null,"value":{{"involvedObject":{{"kind":"Kustomization","namespace":"staging","name":"api"}},"severity":"info","reason":"ReconciliationSucceeded","message":"Applied revision: main@sha1:0a1b2c"}}}}"#,
            t0 + 100_000
        ),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.display().to_string();
    let ts = (t0 + 2_100_000).to_string();
    let approve = sluice(
        &[
            "control",
            "approve",
            "--environment",
            "prod",
            "--service",
            "api",
            "--image",
            "reg.io/api:v1.2.0-rc.1",
            "--by",
            "ana",
            "--ts",
            &ts,
            "--output",
            &path,
        ],
        "",
    );
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    let out = sluice(
        &[
            "replay",
            "topologies/examples/closed-loop.toml",
            "--input",
            &path,
            "--drain",
            "-q",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen: Vec<(u64, String, String, String)> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let i = &v["value"];
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (
                v["ts"].as_u64().unwrap(),
                s("action"),
                s("environment"),
                s("reason"),
            )
        })
        .collect();
    let row = |dt: u64, a: &str, e: &str, r: &str| (t0 + dt, a.into(), e.into(), r.into());
    assert_eq!(
        seen,
        [
            row(30_000, "deploy", "staging", "new image"),
            row(100_000 + 1_800_000, "hold", "prod", "awaiting approval"),
            row(2_100_000, "deploy", "prod", "released: approved by ana"),
        ]
    );
}

/// `--log-format json`: every line on stderr is one JSON object a log
/// collector parses, with the level, the target and the event's fields; the
/// default stays text.
#[test]
fn json_logs_are_one_object_per_line() {
    // The same push twice: the second is dropped, which is logged at trace.
    let line = "{\"topic\":\"docker-events\",\"ts\":1,\"key\":\"a\",\"value\":{\"service\":\"a\",\"repository\":\"r/a\",\"tag\":\"v1\"}}\n";
    let input = format!("{line}{line}");
    let input = input.as_str();
    let out = sluice(
        &[
            "--log-format",
            "json",
            "-vvv",
            "replay",
            "--input",
            "-",
            "--quiet",
        ],
        input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "debug logging writes something");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"reason\":\"duplicate\"")),
        "fields are kept: {stderr}"
    );
    let plain = sluice(&["-vvv", "replay", "--input", "-", "--quiet"], input);
    let first = text(&plain.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_err(),
        "text by default: {first}"
    );
}

/// `THP_enabled` of a running process (`None` on a kernel without the line).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// Starts `sluice` with `args` and, while it waits (for its input, or for a
/// broker that is not there), reads whether it may use huge pages.
fn thp_of_running(args: &[&str]) -> Option<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Read while it runs: an exited process has no status to read.
    assert!(
        child.try_wait().expect("wait").is_none(),
        "sluice {args:?} exited before its huge pages could be read"
    );
    let thp = thp_enabled(child.id());
    let _ = child.kill();
    let _ = child.wait();
    thp
}

/// Replay may have huge pages (faster); the services turn them off to keep
/// their memory budget (see `src/cli/heap.rs`).
#[test]
fn services_turn_huge_pages_off_and_replay_keeps_them() {
    let topology = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/cicd.toml");
    let Some(replay) = thp_of_running(&["replay", topology, "--input", "-"]) else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    };
    assert_eq!(replay, "1", "replay keeps huge pages");
    let state = tempfile::tempdir().unwrap();
    let run = thp_of_running(&[
        "run",
        topology,
        // Nothing listens there: the run waits for its broker meanwhile.
        "--brokers",
        "127.0.0.1:1",
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    assert_eq!(run.as_deref(), Some("0"), "sluice run turns huge pages off");
}
