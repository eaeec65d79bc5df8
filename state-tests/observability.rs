//! Metrics, health and traces of `sluice run`, `commit` and `ingest`
//! against the real broker: counters equal what replay counts, every panel
//! of the dashboard has data in a real Prometheus, and one trace follows an
//! image from its webhook to its commit.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::metrics::{http_get, metrics_address, scrape, Scrape};
use support::*;

const END_MARKER: &str = r#"{"service":"zz-end-marker","alertname":"End","severity":"info","status":"resolved","environment":"prod"}"#;

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every per-node counter of a live run equals what replay counts on the
/// same input (the run counts committed work only, so the totals are exact).
#[test]
fn run_metrics_count_what_replay_counts() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("metrics");
    let (images, alerts, sink) = (
        format!("{app}-images"),
        format!("{app}-alerts"),
        format!("{app}-intents"),
    );
    create_topics(&[(&images, 1), (&alerts, 1)]);
    let topology = topology_file(dir.path(), &app, &images, &alerts, &sink);
    let mut lines = sorted_flood(6_000, 40, 5);
    let last = lines.last().unwrap().ts;
    lines.push(Line {
        topic: "alert-events".into(),
        ts: last + 86_400_000,
        key: Some("zz-end-marker".into()),
        value: END_MARKER.into(),
    });
    let topics = HashMap::from([
        ("docker-events", images.clone()),
        ("alert-events", alerts.clone()),
    ]);
    let renamed: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            topic: topics[l.topic.as_str()].clone(),
            ..l.clone()
        })
        .collect();
    let input = dir.path().join("input.jsonl");
    write_lines(&input, &renamed);
    let stats = dir.path().join("replay-stats.json");
    let out = sluice_cmd()
        .arg("replay")
        .arg(&topology)
        .arg("--input")
        .arg(&input)
        .arg("--quiet")
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replay: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let intents_expected = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"topic\":\"{sink}\"")))
        .count();
    assert!(intents_expected > 50);

    produce(&producer(), &lines, &topics, |_| None);
    let log = dir.path().join("run.log");
    let mut run = sluice_cmd()
        .args(["-v", "run"])
        .arg(&topology)
        .args(["--brokers", &brokers(), "--clock", "event", "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = metrics_address(&mut run);
    let total = lines.len() as f64;
    let mut last = Scrape::default();
    wait_for(
        "every record processed and committed",
        Duration::from_secs(120),
        || {
            last = scrape(&addr);
            last.sum("sluice_task_records_processed_total") >= total
        },
    );
    let (ready, _) = http_get(&addr, "/readyz");
    let (live, _) = http_get(&addr, "/healthz");
    terminate(&mut run);
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        last.sum("sluice_task_records_processed_total"),
        total,
        "{log}"
    );
    assert_eq!(
        (ready, live),
        (200, 200),
        "ready and alive while processing"
    );

    let mut checked = 0;
    for node in replay["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let l = [("node", name)];
        assert_eq!(
            last.get("sluice_node_records_in_total", &l),
            node["received"].as_f64(),
            "{name} in"
        );
        assert_eq!(
            last.get("sluice_node_records_out_total", &l),
            node["emitted"].as_f64(),
            "{name} out"
        );
        for (reason, n) in node["dropped"].as_object().unwrap() {
            let labels = [("node", name), ("reason", reason.as_str())];
            assert_eq!(
                last.get("sluice_node_records_dropped_total", &labels),
                n.as_f64(),
                "{name} {reason}"
            );
            checked += 1;
        }
        let dropped_series = last
            .series("sluice_node_records_dropped_total")
            .iter()
            .filter(|(l, _)| l.contains(&format!("node=\"{name}\"")))
            .count();
        assert_eq!(
            dropped_series,
            node["dropped"].as_object().unwrap().len(),
            "{name}: no other reasons"
        );
    }
    assert!(
        checked >= 3,
        "the flood drops duplicates, superseded and throttled records"
    );
    assert_eq!(last.sum("sluice_intents_total"), intents_expected as f64);
    assert_eq!(
        last.sum("sluice_dead_letters_total"),
        replay["dead_letters"].as_f64().unwrap()
    );
    assert!(last.sum("sluice_commits_total") >= 1.0);
    assert_eq!(last.get("sluice_ready", &[("command", "run")]), Some(1.0));
    assert!(last.sum("sluice_process_resident_memory_bytes") > 1e6);
    let build = last.series("sluice_build_info");
    assert!(
        build.len() == 1 && build[0].0.contains("command=\"run\""),
        "{build:?}"
    );
}
