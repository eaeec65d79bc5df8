//! `sluice run` against a real Kafka broker (started by `.ci/test`).
//! Nothing here mocks Kafka; without a broker these tests fail and say so.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const END_MARKER: &str = r#"{"service":"zz-end-marker","alertname":"End","severity":"info","status":"resolved","environment":"prod"}"#;

/// An alert nobody waits for, stamped a day after the flood: it moves each
/// task's stream time past every deadline, as Kafka Streams' smoke test ends
/// its input, so that every timer has fired in the run as in `replay --drain`.
fn end_marker(ts: i64) -> Line {
    Line {
        topic: "alert-events".into(),
        ts,
        key: Some("zz-end-marker".into()),
        value: END_MARKER.into(),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    images: String,
    alerts: String,
    sink: String,
    topology: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str, partitions: i32) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let app = unique(name);
        let images = format!("{app}-images");
        let alerts = format!("{app}-alerts");
        let sink = format!("{app}-intents");
        create_topics(&[(&images, partitions), (&alerts, partitions)]);
        let topology = topology_file(dir.path(), &app, &images, &alerts, &sink);
        Setup {
            dir,
            images,
            alerts,
            sink,
            topology,
        }
    }

    fn topics(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            ("docker-events", self.images.clone()),
            ("alert-events", self.alerts.clone()),
        ])
    }

    /// The lines with their topics renamed to this test's topics.
    fn renamed(&self, lines: &[Line]) -> Vec<Line> {
        let topics = self.topics();
        lines
            .iter()
            .map(|l| Line {
                topic: topics[l.topic.as_str()].clone(),
                ..l.clone()
            })
            .collect()
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

#[test]
fn event_clock_run_equals_replay_record_for_record() {
    let s = Setup::new("equiv", 1);
    let mut lines = sorted_flood(20_000, 50, 7);
    let last = lines.last().unwrap().ts;
    lines.push(end_marker(last + 86_400_000));
    let input = s.path("input.jsonl");
    write_lines(&input, &s.renamed(&lines));
    let expected = replay_intents(&s.topology, &input, &s.sink);
    assert!(expected.len() > 100, "the flood should give many intents");

    produce(&producer(), &lines, &s.topics(), |_| None);
    let mut run = spawn_run(
        &s.topology,
        &s.path("state"),
        &s.path("run.log"),
        &["--clock", "event", "--exit-after-idle", "3s"],
    );
    let status = run.wait().unwrap();
    assert!(status.success(), "{}", s.log("run.log"));

    let reads = read_topic(
        &brokers(),
        &s.sink,
        "read_committed",
        Duration::from_secs(1),
        Duration::from_secs(60),
        |r| r.len() >= expected.len(),
    );
    let got = read_intents(&reads);
    assert_eq!(
        got.len(),
        expected.len(),
        "{}",
        diff_multisets(&expected, &got)
    );
    assert_eq!(got, expected, "same intents in the same order");
}
