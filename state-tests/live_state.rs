//! `sluice run`'s state under faults, against a real Kafka broker (started
//! by `.ci/test`): restores, changelogs, at-least-once after kills, the
//! repartition path with protobuf, and the byte budget of the input buffers.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::ClientConfig;

use support::*;

/// An alert nobody waits for, a day after the flood, per partition: it moves
/// each task's stream time past every deadline (see live.rs).
fn end_markers(lines: &mut Vec<Line>, partitions: i32) {
    let last = lines.last().map_or(0, |l| l.ts);
    for p in 0..partitions {
        lines.push(Line {
            topic: "alert-events".into(),
            ts: last + 86_400_000,
            key: Some(format!("zz-end-marker-{p}")),
            value: format!(r#"{{"service":"zz-end-marker-{p}","alertname":"End","severity":"info","status":"resolved","environment":"prod"}}"#),
        });
    }
}

fn marker_partition(l: &Line) -> Option<i32> {
    l.key
        .as_deref()?
        .strip_prefix("zz-end-marker-")
        .and_then(|p| p.parse().ok())
}

/// A test's app: the default topology on topics of its own.
struct App {
    dir: tempfile::TempDir,
    app: String,
    images: String,
    alerts: String,
    sink: String,
    topology: PathBuf,
}

impl App {
    fn new(name: &str, partitions: i32) -> App {
        Self::with_properties(name, partitions, "")
    }

    /// `properties`: lines for the topology's `[kafka.properties]` table.
    fn with_properties(name: &str, partitions: i32, properties: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        let app = unique(name);
        let images = format!("{app}-images");
        let alerts = format!("{app}-alerts");
        let sink = format!("{app}-intents");
        create_topics(&[(&images, partitions), (&alerts, partitions)]);
        let topology = topology_file(dir.path(), &app, &images, &alerts, &sink);
        if !properties.is_empty() {
            let text = std::fs::read_to_string(&topology).unwrap();
            std::fs::write(
                &topology,
                format!("{text}\n[kafka.properties]\n{properties}\n"),
            )
            .unwrap();
        }
        App {
            dir,
            app,
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn changelog(&self, operator: &str) -> String {
        format!("{}-{operator}-changelog", self.app)
    }

    fn changelogs(&self) -> Vec<String> {
        [
            "dedup", "debounce", "throttle", "gate", "__timers", "__meta",
        ]
        .iter()
        .map(|op| self.changelog(op))
        .collect()
    }

    /// Produces a sorted flood with end markers; returns replay's intents, sorted.
    fn flood(&self, events: u64, partitions: i32, seed: u64) -> Vec<IntentFields> {
        let mut lines = sorted_flood(events, 200, seed);
        end_markers(&mut lines, partitions);
        let topics = self.topics();
        let renamed: Vec<Line> = lines
            .iter()
            .map(|l| Line {
                topic: topics[l.topic.as_str()].clone(),
                ..l.clone()
            })
            .collect();
        let input = self.path("input.jsonl");
        write_lines(&input, &renamed);
        let mut expected = replay_intents(&self.topology, &input, &self.sink);
        expected.sort();
        produce(&producer(), &lines, &topics, marker_partition);
        expected
    }

    /// Runs until idle with `extra` arguments; asserts a clean exit.
    fn run_to_idle(&self, state: &str, log: &str, extra: &[&str], env: &[(&str, &str)]) {
        let mut args = vec!["--clock", "event", "--exit-after-idle", "3s"];
        args.extend_from_slice(extra);
        let mut run = spawn_run_with(
            &self.topology,
            &self.path(state),
            &self.path(log),
            &args,
            env,
        );
        let status = run.wait().unwrap();
        assert!(status.success(), "{log}: {}", tail(&self.log(log), 4000));
    }

    fn intents(&self, expected: usize, timeout: u64) -> Vec<IntentFields> {
        let reads = read_topic(
            &brokers(),
            &self.sink,
            "read_committed",
            Duration::from_secs(3),
            Duration::from_secs(timeout),
            |r| r.len() >= expected,
        );
        let mut got = read_intents(&reads);
        got.sort();
        got
    }
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The "task restored" lines of a log.
fn restored_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("task restored"))
        .collect()
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client")
}

/// Sets `delete.retention.ms` on compacted topics (AlterConfigs replaces the
/// whole config, so the cleanup policy is given again).
fn set_delete_retention(topics: &[String], ms: &str) {
    let configs: Vec<AlterConfig<'_>> = topics
        .iter()
        .map(|t| {
            AlterConfig::new(ResourceSpecifier::Topic(t))
                .set("cleanup.policy", "compact")
                .set("delete.retention.ms", ms)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin().alter_configs(&configs, &opts)).unwrap();
    for r in results {
        r.expect("config altered");
    }
}

/// Writes one record straight into partition `partition` of `topic`.
fn write_raw(topic: &str, partition: i32, key: &[u8], value: Option<&[u8]>) {
    let p = producer();
    let mut record = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    p.send(record).map_err(|(e, _)| e).expect("sent");
    p.flush(Duration::from_secs(30)).expect("flushed");
}

/// Item 6: a checkpoint older than the changelogs' `delete.retention.ms` may
/// have missed tombstones that compaction has removed since: such a store
/// starts over from the beginning. A recent one resumes from its positions.
#[test]
fn a_checkpoint_older_than_delete_retention_restores_from_scratch() {
    let a = App::new("retention", 1);
    a.flood(2_000, 1, 4);
    a.run_to_idle("state", "first.log", &[], &[]);
    // Another writer's tombstone (a key the store never had): the store is
    // now behind its changelog.
    let meta = a.changelog("__meta");
    write_raw(&meta, 0, b"zz-gone", None);
    a.run_to_idle("state", "second.log", &[], &[]);
    let second = a.log("second.log");
    let lines = restored_lines(&second);
    assert!(
        lines.len() == 1 && lines[0].contains("from_beginning=false"),
        "a recent checkpoint resumes: {}",
        tail(&second, 3000)
    );

    set_delete_retention(&a.changelogs(), "1000");
    write_raw(&meta, 0, b"zz-gone-again", None);
    std::thread::sleep(Duration::from_millis(2_500));
    a.run_to_idle("state", "third.log", &[], &[]);
    let third = a.log("third.log");
    let lines = restored_lines(&third);
    assert!(
        lines.len() == 1 && lines[0].contains("from_beginning=true"),
        "a checkpoint older than delete.retention.ms must not be trusted: {}",
        tail(&third, 3000)
    );
    assert!(
        third.contains("delete.retention.ms"),
        "the reason is logged"
    );
}

/// Item 7: a record the store cannot hold, in any changelog, is skipped with
/// an error log and counted; the task opens and the run goes on.
#[test]
fn a_malformed_changelog_record_is_skipped_and_counted() {
    let a = App::new("badlog", 1);
    let expected = a.flood(2_000, 1, 6);
    a.run_to_idle("state", "first.log", &[], &[]);
    write_raw(
        &a.changelog("__timers"),
        0,
        b"\xff\xff",
        Some(b"not a timer"),
    );
    write_raw(&a.changelog("throttle"), 0, b"\x03\0\0\0abc", Some(b"\xff"));
    a.run_to_idle("state", "second.log", &[], &[]);
    let log = a.log("second.log");
    assert_eq!(
        log.matches("malformed changelog record skipped").count(),
        2,
        "{}",
        tail(&log, 3000)
    );
    // From the beginning, too: a fresh instance restores around them.
    a.run_to_idle("state-fresh", "third.log", &[], &[]);
    assert!(a.log("third.log").contains("malformed=2"));
    assert_eq!(a.intents(expected.len(), 60), expected);
}
