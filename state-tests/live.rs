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

/// Lines that pin an end marker to each of `partitions` partitions.
fn end_markers(lines: &mut Vec<Line>, partitions: i32) {
    let last = lines.last().map_or(0, |l| l.ts);
    for p in 0..partitions {
        let mut marker = end_marker(last + 86_400_000);
        marker.key = Some(format!("zz-end-marker-{p}"));
        lines.push(marker);
    }
}

fn marker_partition(l: &Line) -> Option<i32> {
    l.key
        .as_deref()?
        .strip_prefix("zz-end-marker-")
        .and_then(|p| p.parse().ok())
}

fn sorted(mut v: Vec<IntentFields>) -> Vec<IntentFields> {
    v.sort();
    v
}

/// Modeled on Kafka Streams' EOS system test: a deterministic (event-time)
/// run over 4 partitions, killed with SIGKILL at random moments, with a
/// second instance for part of the time, must commit exactly the intents an
/// uninterrupted replay gives: none lost, none twice.
#[test]
fn exactly_once_survives_kill_9_with_two_instances() {
    use rand::{Rng, SeedableRng};
    let s = Setup::new("crash", 4);
    let mut lines = sorted_flood(100_000, 400, 11);
    end_markers(&mut lines, 4);
    let input = s.path("input.jsonl");
    write_lines(&input, &s.renamed(&lines));
    let expected = sorted(replay_intents(&s.topology, &input, &s.sink));
    produce(&producer(), &lines, &s.topics(), marker_partition);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261126);
    let mut pause =
        |lo: u64, hi: u64| std::thread::sleep(Duration::from_millis(rng.random_range(lo..hi)));
    // The delay puts many of the kills between the changelog write and the
    // transaction commit, the moment where a store could get ahead of Kafka.
    let start = |name: &str, n: u32| {
        spawn_run_with(
            &s.topology,
            &s.path(&format!("state-{name}")),
            &s.path(&format!("run-{name}-{n}.log")),
            &[
                "--clock",
                "event",
                "--instance-id",
                name,
                "--commit-interval-ms",
                "20",
            ],
            &[("SLUICE_TEST_COMMIT_DELAY_MS", "60")],
        )
    };
    let mut kills = 0;
    let mut a = start("a", 0);
    pause(1_000, 3_000);
    kill9(&mut a);
    kills += 1;
    a = start("a", 1);
    pause(500, 1_500);
    let mut b = start("b", 0);
    pause(2_000, 4_000);
    kill9(&mut b);
    kills += 1;
    b = start("b", 1);
    pause(1_000, 3_000);
    kill9(&mut a);
    kills += 1;
    a = start("a", 2);
    pause(500, 2_000);
    kill9(&mut a);
    kill9(&mut b);
    kills += 2;
    a = start("a", 3);
    b = start("b", 2);
    pause(1_000, 3_000);
    kill9(&mut b);
    kills += 1;
    assert!(kills >= 5);

    let reads = read_topic(
        &brokers(),
        &s.sink,
        "read_committed",
        Duration::from_secs(5),
        Duration::from_secs(180),
        |r| r.len() >= expected.len(),
    );
    let got = sorted(read_intents(&reads));
    let logs: String = ["a-0", "a-1", "a-2", "a-3", "b-0", "b-1", "b-2"]
        .iter()
        .map(|n| s.log(&format!("run-{n}.log")))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert_eq!(
        got.len(),
        expected.len(),
        "{}\n{}",
        diff_multisets(&expected, &got),
        &logs[logs.len().saturating_sub(4000)..]
    );
    assert_eq!(got, expected, "{}", diff_multisets(&expected, &got));
    let restored_with_state = logs
        .lines()
        .filter(|l| l.contains("task restored") && !l.contains("records=0"))
        .count();
    assert!(
        restored_with_state >= 3,
        "the kills should hit runs that had state to restore:\n{logs}"
    );

    // A marker produced now must come out, read_committed: no transaction
    // was left hanging by the killed instances.
    let final_image = Line {
        topic: "docker-events".into(),
        ts: lines.last().unwrap().ts + 1,
        key: Some("zz-final".into()),
        value:
            r#"{"service":"zz-final","repository":"registry.example.com/zz-final","tag":"v9.9.9"}"#
                .into(),
    };
    let mut marker = end_marker(final_image.ts + 86_400_000);
    marker.key = Some("zz-final".into());
    produce(&producer(), &[final_image, marker], &s.topics(), |_| {
        Some(0)
    });
    let reads = read_topic(
        &brokers(),
        &s.sink,
        "read_committed",
        Duration::ZERO,
        Duration::from_secs(60),
        |r| {
            r.iter()
                .any(|r| String::from_utf8_lossy(&r.value).contains("zz-final"))
        },
    );
    terminate(&mut a);
    assert!(
        reads
            .iter()
            .any(|r| String::from_utf8_lossy(&r.value).contains("zz-final")),
        "the final marker never became readable with read_committed"
    );
}
