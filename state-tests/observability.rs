//! Metrics, health and traces of `sluice run`, `commit` and `ingest`
//! against the real broker: counters equal what replay counts, every panel
//! of the dashboard has data in a real Prometheus, and one trace follows an
//! image from its webhook to its commit.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::metrics::{http_get, metrics_address, scrape, Scrape};
use support::observed::*;
use support::otlp::{OtlpReceiver, ReceivedSpan};
use support::pipeline::*;
use support::*;

const END_MARKER: &str = r#"{"service":"zz-end-marker","alertname":"End","severity":"info","status":"resolved","environment":"prod"}"#;

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
    let topics = flood_topics(&images, &alerts);
    let input = dir.path().join("input.jsonl");
    write_renamed(&input, &lines, &topics);
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
    wait_until(
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

/// One trace from the webhook to the commit: `sluice ingest` starts it (or
/// continues the sender's), `sluice run` continues it through a debounce
/// into the intent, and `sluice commit` ends it with the commit, whose
/// `Sluice-Trace` trailer names it. Received by a real OTLP/HTTP receiver.
#[test]
fn one_trace_runs_from_the_webhook_to_the_commit() {
    let otlp = OtlpReceiver::start();
    let p = Pipeline::new("trace", "1s");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ];
    let mut children = p.start(&env);
    wait_until("ingest to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", p.port)).is_ok()
    });
    let sender_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sender = format!("00-{sender_trace}-00f067aa0ba902b7-01");
    let (v1, v2) = (digest(1), digest(2));
    assert_eq!(
        p.post("/hooks/harbor", &[], &harbor_push_of("web", "v1", &v1)),
        202
    );
    assert_eq!(
        p.post(
            "/hooks/harbor",
            &[("traceparent", &sender)],
            &harbor_push_of("worker", "v2", &v2)
        ),
        202
    );
    wait_until("both images on the remote", Duration::from_secs(90), || {
        p.image_of("web").ends_with(&v1) && p.image_of("worker").ends_with(&v2)
    });
    let log = git(&p.bare, &["log", "--format=%B", "main"]);
    let traces: Vec<String> = log
        .lines()
        .filter_map(|l| l.strip_prefix("Sluice-Trace: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        traces.len(),
        2,
        "a Sluice-Trace trailer per traced intent:\n{log}"
    );
    assert!(
        traces.contains(&sender_trace.to_owned()),
        "the sender's trace is continued:\n{log}"
    );

    let chain = [
        "sluice.ingest webhook",
        "sluice.run process",
        "sluice.run intent",
        "sluice.commit intent",
    ];
    for trace in &traces {
        wait_until("the trace's spans", Duration::from_secs(30), || {
            let spans = otlp.spans();
            chain
                .iter()
                .all(|n| spans.iter().any(|s| &s.trace_id == trace && s.name == *n))
        });
        let spans: Vec<ReceivedSpan> = otlp
            .spans()
            .into_iter()
            .filter(|s| &s.trace_id == trace)
            .collect();
        let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
        let (ingest, process, intent, commit) = (
            find(chain[0]),
            find(chain[1]),
            find(chain[2]),
            find(chain[3]),
        );
        assert_eq!(ingest.service, "sluice-ingest");
        assert_eq!(
            (process.service.as_str(), intent.service.as_str()),
            ("sluice-run", "sluice-run")
        );
        assert_eq!(commit.service, "sluice-commit");
        assert_eq!(
            process.parent_span_id, ingest.span_id,
            "run continues ingest's span"
        );
        assert_eq!(
            intent.parent_span_id, process.span_id,
            "the intent comes from the push, through the debounce"
        );
        assert_eq!(
            commit.parent_span_id, intent.span_id,
            "the commit continues the intent"
        );
        assert_eq!(
            commit.attributes.get("sluice.outcome").map(String::as_str),
            Some("applied")
        );
        if trace == sender_trace {
            assert_eq!(
                ingest.parent_span_id, "00f067aa0ba902b7",
                "a child of the sender's span"
            );
        } else {
            assert_eq!(ingest.parent_span_id, "", "ingest starts the trace");
        }
    }
    // The commit's batch span links every intent's trace; the push is its child.
    let spans = otlp.spans();
    let batches: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "sluice.commit batch")
        .collect();
    for trace in &traces {
        assert!(
            batches
                .iter()
                .any(|b| b.links.iter().any(|(t, _)| t == trace)),
            "a batch links {trace}"
        );
    }
    assert!(spans
        .iter()
        .any(|s| s.name == "sluice.commit push"
            && batches.iter().any(|b| b.span_id == s.parent_span_id)));
    // Metrics went out over OTLP too.
    wait_until("metrics over OTLP", Duration::from_secs(30), || {
        otlp.metric_names("sluice-run")
            .iter()
            .any(|m| m == "sluice_node_records_in")
            && otlp
                .metric_names("sluice-commit")
                .iter()
                .any(|m| m == "sluice_committer_intents")
            && otlp
                .metric_names("sluice-ingest")
                .iter()
                .any(|m| m == "sluice_ingest_requests")
    });
    let scrapes: Vec<String> = children.iter().map(|(_, a)| scrape(a).text).collect();
    for (child, _) in &mut children {
        assert!(terminate(child).success(), "{}", p.logs());
    }
    assert!(
        !otlp.raw_contains(HARBOR_TOKEN),
        "the token is in no exported span or metric"
    );
    assert!(
        scrapes.iter().all(|s| !s.contains(HARBOR_TOKEN)),
        "nor in /metrics"
    );
    assert!(!p.logs().contains(HARBOR_TOKEN), "nor in any log");
}

/// Debian's Prometheus scrapes a real `sluice ingest`, `run` and `commit`
/// while webhooks flow through them; then every query of every panel of
/// the dashboard (as `sluice dashboard --queries` prints it) returns at
/// least one series through Prometheus' HTTP API.
#[test]
fn every_dashboard_panel_has_data_in_prometheus() {
    let p = Pipeline::new("prom", "1s");
    let mut children = p.start(&[]);
    let targets: Vec<(&str, &str)> = ["ingest", "run", "commit"]
        .iter()
        .zip(&children)
        .map(|(job, (_, addr))| (*job, addr.as_str()))
        .collect();
    let prometheus = Prometheus::start(p.dir.path(), &targets);
    wait_until(
        "prometheus to scrape all three",
        Duration::from_secs(60),
        || http_get(&prometheus.addr, "/-/ready").0 == 200 && prometheus.all_up(3),
    );
    wait_until("ingest to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", p.port)).is_ok()
    });
    // A flood with duplicates (dedup drops), bursts (debounce supersedes),
    // an event that is not a push (ignored), a refused request, and a
    // critical alert holding one service (a held deploy).
    assert_eq!(
        p.post("/hooks/alertmanager", &[], &alertmanager("firing")),
        202
    );
    let mut n = 0u8;
    for round in 0..3u8 {
        for svc in ["api", "web", "worker"] {
            n += 1;
            let body = harbor_push_of(svc, &format!("v{round}"), &digest(n));
            assert_eq!(p.post("/hooks/harbor", &[], &body), 202);
            assert_eq!(p.post("/hooks/harbor", &[], &body), 202, "a duplicate");
        }
    }
    let pull = harbor_push_of("web", "v9", &digest(99)).replace("PUSH_ARTIFACT", "PULL_ARTIFACT");
    assert_eq!(p.post("/hooks/harbor", &[], &pull), 202);
    assert_eq!(
        post(p.port, "/hooks/harbor", &[("Authorization", "wrong")], "{}"),
        401
    );
    wait_until("web and worker deployed", Duration::from_secs(90), || {
        p.image_of("web").ends_with(&digest(8)) && p.image_of("worker").ends_with(&digest(9))
    });
    // Scrapes after the flow, so that every rate has two samples.
    std::thread::sleep(Duration::from_secs(8));

    // The counters agree with what was sent and what the committer printed.
    let ingest = scrape(&children[0].1);
    let posted_ok = 1 + 3 * 3 * 2 + 1;
    assert_eq!(
        ingest.get(
            "sluice_ingest_requests_total",
            &[("endpoint", "harbor"), ("code", "202")]
        ),
        Some(f64::from(posted_ok - 1))
    );
    assert_eq!(
        ingest.get(
            "sluice_ingest_requests_total",
            &[("endpoint", "alertmanager"), ("code", "202")]
        ),
        Some(1.0)
    );
    assert_eq!(
        ingest.get(
            "sluice_ingest_requests_total",
            &[("endpoint", "harbor"), ("code", "401")]
        ),
        Some(1.0)
    );
    assert!(
        ingest.get(
            "sluice_ingest_ignored_total",
            &[("endpoint", "harbor"), ("event", "PULL_ARTIFACT")]
        ) == Some(1.0),
        "{}",
        ingest.text
    );
    let committer = scrape(&children[2].1);
    let run = scrape(&children[1].1);
    assert_eq!(
        committer.sum("sluice_committer_intents_total"),
        run.sum("sluice_intents_total"),
        "every intent the run committed reached the committer once"
    );

    let out = sluice(&["dashboard", "--queries"]);
    assert!(out.status.success());
    let queries = String::from_utf8(out.stdout).unwrap();
    let mut empty = Vec::new();
    let mut count = 0;
    for line in queries.lines() {
        let (title, expr) = line.split_once('\t').unwrap();
        let expr = expr.replace("$__rate_interval", "30s");
        count += 1;
        if prometheus.query(&expr).is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    for (child, _) in &mut children {
        assert!(terminate(child).success(), "{}", p.logs());
    }
    assert!(count >= 40, "the dashboard has {count} queries");
    assert!(
        empty.is_empty(),
        "panels without data:\n{}\n{}",
        empty.join("\n"),
        p.logs()
    );
}
