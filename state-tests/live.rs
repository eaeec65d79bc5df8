//! `sluice run` against a real Kafka broker (started by `.ci/test`).
//! Nothing here mocks Kafka; without a broker these tests fail and say so.

mod live_eos;
mod live_outage;
mod live_stuck;
mod live_threads;
mod support;

use std::collections::HashMap;

use rdkafka::producer::{BaseRecord, Producer};
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
        flood_topics(&self.images, &self.alerts)
    }

    /// The lines with their topics renamed to this test's topics.
    fn renamed(&self, lines: &[Line]) -> Vec<Line> {
        renamed(lines, &self.topics())
    }

    /// The app id (the topology file is named after it).
    fn app(&self) -> String {
        let stem = self.topology.file_stem().expect("a topology file name");
        stem.to_string_lossy().into_owned()
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
    let status = wait_exit(&mut run, RUN_PATIENCE);
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

/// A seeded flood on a broker of the test's own, for the tests that stop
/// or restart it: two input topics of 2 partitions, the topology, the
/// lines with an end marker per partition (not produced yet), and the
/// intents an uninterrupted replay of them gives.
struct OwnFlood {
    broker: OwnBroker,
    images: String,
    alerts: String,
    sink: String,
    topology: std::path::PathBuf,
    lines: Vec<Line>,
    topics: HashMap<&'static str, String>,
    expected: Vec<IntentFields>,
}

impl OwnFlood {
    fn start(dir: &std::path::Path, port: u16, prefix: &str, events: u64, seed: u64) -> Self {
        let broker = OwnBroker::start(&dir.join("kafka"), port, "");
        let app = unique(prefix);
        let (images, alerts, sink) = (
            format!("{app}-images"),
            format!("{app}-alerts"),
            format!("{app}-out"),
        );
        create_topics_on(&broker.address, &[(&images, 2), (&alerts, 2)]);
        let topology = topology_file(dir, &app, &images, &alerts, &sink);
        let mut lines = sorted_flood(events, 300, seed);
        end_markers(&mut lines, 2);
        let topics = flood_topics(&images, &alerts);
        let input = dir.join("input.jsonl");
        write_renamed(&input, &lines, &topics);
        let expected = sorted(replay_intents(&topology, &input, &sink));
        OwnFlood {
            broker,
            images,
            alerts,
            sink,
            topology,
            lines,
            topics,
            expected,
        }
    }
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
            &[("SLUICE_FAULTS", "txn.before-commit=delay:60")],
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
    assert_same_intents(&expected, &got, "");
    let reopened_with_state = logs
        .lines()
        .filter(|l| l.contains("task restored") && l.contains("from_beginning=false"))
        .count();
    assert!(
        reopened_with_state >= 3,
        "the kills should hit runs that had state to reopen:\n{logs}"
    );

    // A marker produced now must come out, read_committed: no transaction
    // was left hanging by the killed instances. The image that moves stream
    // time past its debounce goes to the same partition of the same topic:
    // an alert on the other input could be fetched and processed first (the
    // fetches of two partitions race), and the marker would then arrive a
    // day late, its timer waiting for a stream time that never comes.
    let image = |service: &str, ts: i64| Line {
        topic: "docker-events".into(),
        ts,
        key: Some(service.into()),
        value: format!(
            r#"{{"service":"{service}","repository":"registry.example.com/{service}","tag":"v9.9.9"}}"#
        ),
    };
    let final_ts = lines.last().unwrap().ts + 1;
    let final_image = image("zz-final", final_ts);
    let clock_mover = image("zz-final-clock", final_ts + 86_400_000);
    produce(
        &producer(),
        &[final_image, clock_mover],
        &s.topics(),
        |_| Some(0),
    );
    let produced = std::time::Instant::now();
    let reads = read_topic(
        &brokers(),
        &s.sink,
        "read_committed",
        Duration::ZERO,
        Duration::from_secs(60),
        |r| {
            r.iter()
                .any(|r| String::from_utf8_lossy(&r.value).contains("\"zz-final\""))
        },
    );
    eprintln!(
        "the final marker: {:?} after its produce",
        produced.elapsed()
    );
    terminate(&mut a);
    let last_run = s.log("run-a-3.log");
    assert!(
        reads
            .iter()
            .any(|r| String::from_utf8_lossy(&r.value).contains("\"zz-final\"")),
        "the final marker never became readable with read_committed; the last run's log ends:\n{}",
        &last_run[last_run.len().saturating_sub(12_000)..]
    );
}

/// Produces a sorted flood with end markers and returns the intents that
/// `sluice replay --drain` gives for it, sorted.
fn flood_into(
    s: &Setup,
    events: u64,
    partitions: i32,
    seed: u64,
) -> (Vec<Line>, Vec<IntentFields>) {
    let mut lines = sorted_flood(events, 300, seed);
    end_markers(&mut lines, partitions);
    let input = s.path("input.jsonl");
    write_lines(&input, &s.renamed(&lines));
    let expected = sorted(replay_intents(&s.topology, &input, &s.sink));
    produce(&producer(), &lines, &s.topics(), marker_partition);
    (lines, expected)
}

fn committed_intents(s: &Setup, expected: usize, timeout_secs: u64) -> Vec<IntentFields> {
    let reads = read_topic(
        &brokers(),
        &s.sink,
        "read_committed",
        Duration::from_secs(4),
        Duration::from_secs(timeout_secs),
        |r| r.len() >= expected,
    );
    sorted(read_intents(&reads))
}

/// Slows commits so that the instances below meet mid-run.
const SLOW_COMMITS: [(&str, &str); 1] = [("SLUICE_FAULTS", "txn.before-commit=delay:40")];

#[test]
fn state_moves_with_partitions_when_instances_come_and_go() {
    let s = Setup::new("rebalance", 4);
    let (_, expected) = flood_into(&s, 60_000, 4, 5);
    let args = ["--clock", "event", "--commit-interval-ms", "20"];
    let mut first = spawn_run_with(
        &s.topology,
        &s.path("state-1"),
        &s.path("first.log"),
        &args,
        &SLOW_COMMITS,
    );
    // Steps wait on what each instance logs, not on fixed sleeps: on a
    // loaded machine an instance can take longer to join than a sleep.
    // The first must have committed state before the second joins ...
    let minute = Duration::from_secs(60);
    wait_for_log(&s.path("first.log"), "task restored", 4, minute);
    wait_for_progress(&s.path("first.log"), "a commit", minute, |field| {
        field("commits") > 0
    });
    let mut second = spawn_run_with(
        &s.topology,
        &s.path("state-2"),
        &s.path("second.log"),
        &args,
        &SLOW_COMMITS,
    );
    // ... and the second must hold partitions before the first leaves.
    wait_for_log(&s.path("second.log"), "partitions assigned", 1, minute);
    let status = terminate(&mut first);
    assert!(status.success(), "first instance: {}", s.log("first.log"));
    let got = committed_intents(&s, expected.len(), 120);
    terminate(&mut second);
    assert_same_intents(&expected, &got, "");
    let second_log = s.log("second.log");
    assert!(
        second_log.matches("partitions assigned").count() >= 2,
        "the second instance should have been assigned partitions twice:\n{second_log}"
    );
    assert!(
        second_log
            .lines()
            .any(|l| l.contains("task restored") && !l.contains("records=0")),
        "the second instance should restore the first one's state from the changelog:\n{second_log}"
    );
}

#[test]
fn a_second_process_with_the_same_identity_fences_the_first() {
    let s = Setup::new("fence", 2);
    let (_, expected) = flood_into(&s, 40_000, 2, 9);
    let args = [
        "--clock",
        "event",
        "--instance-id",
        "same",
        "--commit-interval-ms",
        "20",
    ];
    let mut first = spawn_run_with(
        &s.topology,
        &s.path("state-1"),
        &s.path("first.log"),
        &args,
        &SLOW_COMMITS,
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut second = spawn_run_with(
        &s.topology,
        &s.path("state-2"),
        &s.path("second.log"),
        &args,
        &SLOW_COMMITS,
    );
    // The second's start on a loaded machine (topic checks, joining the
    // group, its first InitProducerId) can take most of a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first process kept running:\n{}\n--- the second's log:\n{}",
            s.log("first.log"),
            s.log("second.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "fenced exits with 3:\n{}",
        s.log("first.log")
    );
    assert!(
        s.log("first.log").contains("fenced"),
        "{}",
        s.log("first.log")
    );
    let got = committed_intents(&s, expected.len(), 120);
    terminate(&mut second);
    let log = s.log("second.log");
    assert_same_intents(&expected, &got, &log[log.len().saturating_sub(5000)..]);
}

/// `sluice run` in the foreground, for runs that end by themselves (setup errors).
fn run_to_its_end(topology: &std::path::Path, state: &std::path::Path) -> std::process::Output {
    sluice(&[
        "run",
        &topology.display().to_string(),
        "--brokers",
        &brokers(),
        "--state-dir",
        &state.display().to_string(),
    ])
}

#[test]
fn inputs_of_different_partition_counts_meeting_in_a_gate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("copart");
    let (images, alerts) = (format!("{app}-images"), format!("{app}-alerts"));
    create_topics(&[(&images, 4), (&alerts, 2)]);
    let topology = topology_file(dir.path(), &app, &images, &alerts, &format!("{app}-out"));
    let out = run_to_its_end(&topology, &dir.path().join("state"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`images`")
            && err.contains("4 partitions")
            && err.contains("2 partitions")
            && err.contains("`gate`"),
        "{err}"
    );
}

/// Topics and Sluice deployed together: an input created a moment after the
/// run starts is waited for (the closed loop's CI run once lost this race to
/// the brokers' metadata), one that never comes is named.
/// A gate topology whose images topic exists and whose alerts topic (its
/// name returned) does not.
struct AlertsMissing {
    dir: tempfile::TempDir,
    topology: std::path::PathBuf,
    images: String,
    alerts: String,
}

fn alerts_missing(prefix: &str) -> AlertsMissing {
    let dir = tempfile::tempdir().unwrap();
    let app = unique(prefix);
    let (images, alerts) = (format!("{app}-images"), format!("{app}-alerts"));
    create_topics(&[(&images, 2)]);
    let topology = topology_file(dir.path(), &app, &images, &alerts, &format!("{app}-out"));
    AlertsMissing {
        dir,
        topology,
        images,
        alerts,
    }
}

#[test]
fn an_input_topic_created_just_after_the_run_starts_is_waited_for() {
    let AlertsMissing {
        dir,
        topology,
        alerts,
        ..
    } = alerts_missing("late");
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&topology, &dir.path().join("state"), &log, &[]);
    wait_for_log(&log, "waiting for topic", 1, Duration::from_secs(30));
    create_topics(&[(&alerts, 2)]);
    wait_for_log(&log, "task restored", 1, Duration::from_secs(60));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run goes on once its topic exists"
    );
    terminate(&mut run);
}

#[test]
fn an_input_topic_that_never_appears_is_named_after_a_short_wait() {
    let AlertsMissing {
        dir,
        topology,
        images,
        alerts,
    } = alerts_missing("absent");
    let started = std::time::Instant::now();
    let out = run_to_its_end(&topology, &dir.path().join("state"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("`{alerts}`")) && err.contains("do not exist"),
        "{err}"
    );
    assert!(
        !err.contains(&format!("`{images}`")),
        "only the missing one: {err}"
    );
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(40)).contains(&took),
        "gave up after its grace, not at once nor much later: {took:?}"
    );
}

/// The suppress() trap of Kafka Streams and Quix Streams: a window closes
/// only when the next record arrives. Here the wall clock fires the timer.
#[test]
fn wall_clock_timers_fire_without_another_record() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("wall");
    let (images, sink) = (format!("{app}-images"), format!("{app}-out"));
    create_topics(&[(&images, 1)]);
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n[[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\n\
             [[operators]]\nname = \"quiet\"\ntype = \"debounce\"\ninput = \"images\"\nkey = [\"service\"]\nquiet = \"2s\"\nmax_wait = \"10s\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"quiet\"\ntopic = \"{sink}\"\n"
        ),
    )
    .unwrap();
    let mut run = spawn_run(
        &topology,
        &dir.path().join("state"),
        &dir.path().join("run.log"),
        &[],
    );
    // The debounce starts when the run takes the image: it must be
    // consuming before the pushes, or the time it took to start counts.
    wait_for_log(
        &dir.path().join("run.log"),
        "task restored",
        1,
        Duration::from_secs(60),
    );
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let p = producer();
    for tag in ["v1", "v2"] {
        let value = format!(r#"{{"service":"web","repository":"r/web","tag":"{tag}"}}"#);
        p.send(
            BaseRecord::<str, str>::to(&images)
                .key("web")
                .payload(&value),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let reads = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::ZERO,
        Duration::from_secs(30),
        |r| !r.is_empty(),
    );
    let arrived = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    terminate(&mut run);
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert_eq!(
        reads.len(),
        1,
        "one debounced image, with no record after it:\n{log}"
    );
    let value: serde_json::Value = serde_json::from_slice(&reads[0].value).unwrap();
    assert_eq!(value["tag"], "v2", "the newest image wins");
    let waited = reads[0].ts - sent;
    assert!(
        (2_000..6_000).contains(&waited),
        "stamped at its 2 s deadline, not later: {waited} ms"
    );
    assert!(
        arrived - sent < 8_000,
        "arrived {} ms after the push",
        arrived - sent
    );
}

#[test]
fn the_run_carries_on_by_itself_across_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let OwnFlood {
        broker,
        sink,
        topology,
        lines,
        topics,
        expected,
        ..
    } = OwnFlood::start(dir.path(), 29_200, "restart", 40_000, 3);
    produce(
        &producer_on(&broker.address),
        &lines,
        &topics,
        marker_partition,
    );

    let log = dir.path().join("run.log");
    let mut run = spawn_run_on(
        &broker.address,
        &topology,
        &dir.path().join("state"),
        &log,
        &[
            "--clock",
            "event",
            "--commit-interval-ms",
            "20",
            // After the restart the two inputs' fetches resume apart: an
            // input caught up before it is waited for (see Clocks).
            "--max-task-idle",
            "2s",
        ],
        &[("SLUICE_FAULTS", "txn.before-commit=delay:40")],
    );
    std::thread::sleep(Duration::from_secs(3));
    broker.script(&["restart", "--keep-data"]);
    let reads = read_topic(
        &broker.address,
        &sink,
        "read_committed",
        Duration::from_secs(4),
        Duration::from_secs(180),
        |r| r.len() >= expected.len(),
    );
    let still_running = run.try_wait().unwrap().is_none();
    terminate(&mut run);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(still_running, "the run gave up:\n{log}");
    let got = sorted(read_intents(&reads));
    let context = format!(
        "{}\n--- the run's own lines ---\n{}",
        &log[log.len().saturating_sub(3000)..],
        own_lines_of(&log, 150)
    );
    assert_same_intents(&expected, &got, &context);
}

#[test]
fn bad_input_goes_to_the_dead_letter_topic_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("bad");
    let (images, alerts, sink) = (
        format!("{app}-images"),
        format!("{app}-alerts"),
        format!("{app}-out"),
    );
    create_topics(&[(&images, 1), (&alerts, 1)]);
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n\
             [[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\n\
             [[sources]]\nname = \"alerts\"\ntopic = \"{alerts}\"\nkind = \"alert\"\nformat = \"protobuf\"\n\
             [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\n\
             [[sinks]]\nname = \"out\"\ninput = \"gate\"\ntopic = \"{sink}\"\n"
        ),
    )
    .unwrap();
    let p = producer();
    let image = |n: u32| {
        format!(r#"{{"service":"s{n}","repository":"r/s{n}","tag":"v{n}","environment":"prod"}}"#)
    };
    let oversized = format!(
        r#"{{"service":"big","repository":"r/big","tag":"{}"}}"#,
        "x".repeat(300_000)
    );
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (&images, image(1).into_bytes(), "good"),
        (&images, b"not json at all".to_vec(), "not JSON"),
        (
            &images,
            br#"{"repository":"r/x","tag":"v1"}"#.to_vec(),
            "no service",
        ),
        (
            &images,
            br#"{"service":"s","repository":"r/s","tag":"bad tag!"}"#.to_vec(),
            "bad tag",
        ),
        (
            &alerts,
            vec![0xff, 0xfe, 0x01, 0x02, 0x03],
            "protobuf garbage",
        ),
        (&images, oversized.into_bytes(), "oversized"),
        (&images, image(2).into_bytes(), "good"),
    ];
    for (i, (topic, value, _)) in bad.iter().enumerate() {
        p.send(
            BaseRecord::<str, [u8]>::to(topic)
                .key("k")
                .payload(value)
                .timestamp(now_ms() - 60_000 + i as i64),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let mut run = spawn_run(
        &topology,
        &dir.path().join("state"),
        &dir.path().join("run.log"),
        &["--clock", "event", "--exit-after-idle", "3s"],
    );
    let status = wait_exit(&mut run, RUN_PATIENCE);
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    let intents = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::from_secs(1),
        Duration::from_secs(30),
        |r| r.len() >= 2,
    );
    let services: Vec<String> = read_intents(&intents).into_iter().map(|i| i.1).collect();
    assert_eq!(
        services,
        ["s1", "s2"],
        "good records before and after the bad ones: {log}"
    );
    let letters = read_topic(
        &brokers(),
        &format!("{app}.dead-letter"),
        "read_committed",
        Duration::from_secs(1),
        Duration::from_secs(30),
        |r| r.len() >= 5,
    );
    assert_eq!(letters.len(), 5, "{letters:?}");
    let mut offsets: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.headers["sluice.topic"].clone(),
                l.headers["sluice.offset"].clone(),
            )
        })
        .collect();
    offsets.sort();
    let mut want = vec![
        (images.clone(), "1".to_owned()),
        (images.clone(), "2".to_owned()),
        (images.clone(), "3".to_owned()),
        (images.clone(), "4".to_owned()),
        (alerts.clone(), "0".to_owned()),
    ];
    want.sort();
    assert_eq!(offsets, want, "each letter names its record");
    for l in &letters {
        assert_eq!(l.headers["sluice.partition"], "0");
        assert!(!l.headers["sluice.error"].is_empty());
        let v: serde_json::Value = serde_json::from_slice(&l.value).expect("letters are JSON");
        assert_eq!(v["error"], l.headers["sluice.error"].as_str());
    }
    let big = letters
        .iter()
        .find(|l| l.headers["sluice.error"].contains("larger than"))
        .expect("the oversized value");
    let v: serde_json::Value = serde_json::from_slice(&big.value).unwrap();
    assert!(
        big.value.len() < 10_000,
        "an oversized value is cut to a prefix"
    );
    assert!(v["value"]
        .as_str()
        .unwrap()
        .starts_with(r#"{"service":"big""#));
    let garbage = letters
        .iter()
        .find(|l| l.headers["sluice.topic"] == alerts)
        .unwrap();
    assert!(
        garbage.headers["sluice.error"].contains("Alert"),
        "{:?}",
        garbage.headers
    );
}

#[test]
fn a_secret_never_reaches_the_logs_even_with_debug_logging() {
    const SENTINEL: &str = "S3ntinel-pa55word-7d1c";
    let dir = tempfile::tempdir().unwrap();
    // A broker of its own with a SASL/PLAIN listener whose one user has the
    // sentinel as password: the run must authenticate with it, from the
    // environment, while logging everything it can.
    let sasl = format!(
        "listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT\n\
         sasl.enabled.mechanisms=PLAIN\n\
         listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_sluice=\"{SENTINEL}\";"
    );
    let broker = OwnBroker::start(&dir.path().join("kafka"), 29_600, &sasl);
    let sasl_address = broker.address.replace(
        &broker.env[0].1,
        &(broker.env[0].1.parse::<u16>().unwrap() + 2).to_string(),
    );
    let app = unique("secret");
    let (input, output) = (format!("{app}-in"), format!("{app}-out"));
    create_topics_on(&broker.address, &[(&input, 1)]);
    let p = producer_on(&broker.address);
    let value = r#"{"service":"web","repository":"r/web","tag":"v1"}"#;
    // Traced, so that the run exports spans as well as metrics.
    let traced = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "traceparent",
        value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    });
    p.send(
        BaseRecord::<str, str>::to(&input)
            .key("web")
            .payload(value)
            .headers(traced),
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let otlp = support::otlp::OtlpReceiver::start();
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n[[sources]]\nname = \"images\"\ntopic = \"{input}\"\nkind = \"image\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"images\"\ntopic = \"{output}\"\n\
             [kafka]\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
             \"sasl.username\" = \"sluice\"\n\"debug\" = \"security,broker,protocol,conf\"\n\
             [kafka.secrets]\n\"sasl.password\" = {{ env = \"SLUICE_TEST_SASL_PASSWORD\" }}\n"
        ),
    )
    .unwrap();
    // With metrics served and pushed, and spans exported: the sentinel must
    // be in no scrape and no OTLP export either.
    let mut child = sluice_cmd()
        .env("SLUICE_TEST_SASL_PASSWORD", SENTINEL)
        .env("SLUICE_LOG", "trace")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .args(["-vvv", "run"])
        .arg(&topology)
        .args([
            "--brokers",
            &sasl_address,
            "--exit-after-idle",
            "6s",
            "--metrics-addr",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path().join("state-good"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = support::metrics::metrics_address(&mut child);
    let mut scrapes = String::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        scrapes.push_str(&support::metrics::http_get(&metrics, "/metrics").1);
    }
    let good = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        good.status.success(),
        "{}",
        &text[text.len().saturating_sub(3000)..]
    );
    assert!(
        text.contains("SASL") && text.contains("DEBUG"),
        "librdkafka's debug log should be on"
    );
    assert!(!text.contains(SENTINEL), "the password was printed");
    assert!(scrapes.contains("sluice_commits_total"), "{scrapes}");
    assert!(!scrapes.contains(SENTINEL), "the password is in /metrics");
    assert!(
        otlp.spans().iter().any(|s| s.name == "sluice.run process")
            && !otlp.metric_names("sluice-run").is_empty(),
        "spans and metrics were exported"
    );
    assert!(!otlp.raw_contains(SENTINEL), "the password was exported");
    let reads = read_topic(
        &broker.address,
        &output,
        "read_committed",
        Duration::ZERO,
        Duration::from_secs(30),
        |r| !r.is_empty(),
    );
    assert_eq!(
        reads.len(),
        1,
        "the record went through an authenticated run"
    );

    // A wrong password: the run fails, and neither password is printed.
    let wrong = format!("{SENTINEL}-wrong");
    let bad = sluice_cmd()
        .env("SLUICE_TEST_SASL_PASSWORD", &wrong)
        .env("SLUICE_LOG", "trace")
        .args(["-vvv", "run"])
        .arg(&topology)
        .args(["--brokers", &sasl_address, "--state-dir"])
        .arg(dir.path().join("state-bad"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!bad.status.success());
    assert!(
        text.contains("error: cannot fetch cluster metadata"),
        "{}",
        &text[text.len().saturating_sub(3000)..]
    );
    assert!(!text.contains(SENTINEL), "a password was printed");
}

/// Image events keyed by nothing useful (here: no key at all) are re-keyed
/// by service through `<app.id>-images-repartition` before the tasks see
/// them, so each service's state lives in one task: the output equals replay.
#[test]
fn unkeyed_sources_are_repartitioned_by_service() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("repart");
    let (images, sink) = (format!("{app}-images"), format!("{app}-out"));
    create_topics(&[(&images, 1)]);
    let topology = dir.path().join("t.toml");
    let cicd =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/cicd.toml"))
            .unwrap();
    // cicd.toml up to its gate, fed by an unkeyed topic that Sluice repartitions.
    let head = &cicd[..cicd.find("# Hold deploys").unwrap()];
    let text = head
        .replace("id = \"cicd\"", &format!("id = \"{app}\""))
        .replace(
            "topic = \"docker-events\"",
            &format!("topic = \"{images}\"\nrepartition = true"),
        )
        .replace(
            "topic = \"alert-events\"",
            &format!("topic = \"{app}-alerts\""),
        )
        + &format!("[[sinks]]\nname = \"out\"\ninput = \"throttle\"\ntopic = \"{sink}\"\n");
    std::fs::write(&topology, &text).unwrap();
    create_topics(&[(&format!("{app}-alerts"), 3)]);

    let mut lines: Vec<Line> = sorted_flood(20_000, 100, 13)
        .into_iter()
        .filter(|l| l.topic == "docker-events")
        .map(|l| Line { key: None, ..l })
        .collect();
    let last = lines.last().unwrap().ts;
    // One late image per repartition partition's worth of services moves every
    // task's stream time past all deadlines.
    for n in 0..60 {
        lines.push(Line {
            topic: "docker-events".into(),
            ts: last + 86_400_000 + n,
            key: None,
            value: format!(r#"{{"service":"zz-end-{n}","repository":"r/zz","tag":"v0"}}"#),
        });
    }
    let topics = HashMap::from([
        ("docker-events", images.clone()),
        ("alert-events", format!("{app}-alerts")),
    ]);
    let renamed: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            topic: images.clone(),
            ..l.clone()
        })
        .collect();
    let input = dir.path().join("input.jsonl");
    write_lines(&input, &renamed);
    let expected: Vec<IntentFields> = {
        let out = sluice(&[
            "replay",
            &topology.display().to_string(),
            "--input",
            &input.display().to_string(),
            "--quiet",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keys differ by design (the run's records carry the service key the
        // repartitioning gave them), so values and times are compared.
        let mut v: Vec<(String, String, i64)> = parse_lines(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .filter(|l| l.topic == sink)
            .map(|l| (l.value, String::new(), l.ts))
            .filter(|(v, _, _)| !v.contains("zz-end"))
            .collect();
        v.sort();
        v.into_iter()
            .map(|(v, k, ts)| (v, k, String::new(), String::new(), None, ts))
            .collect()
    };
    assert!(expected.len() > 100);
    produce(&producer(), &lines, &topics, |_| None);
    let mut run = spawn_run(
        &topology,
        &dir.path().join("state"),
        &dir.path().join("run.log"),
        &["--clock", "event"],
    );
    let real = |r: &[Read]| {
        r.iter()
            .filter(|r| !String::from_utf8_lossy(&r.value).contains("zz-end"))
            .count()
    };
    let reads = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::from_secs(4),
        Duration::from_secs(120),
        |r| real(r) >= expected.len(),
    );
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    let mut got: Vec<(String, String, i64)> = reads
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (v.to_string(), String::new(), r.ts)
        })
        .filter(|(v, _, _)| !v.contains("zz-end"))
        .collect();
    got.sort();
    let got: Vec<IntentFields> = got
        .into_iter()
        .map(|(v, k, ts)| (v, k, String::new(), String::new(), None, ts))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{}\n{}",
        diff_multisets(&expected, &got),
        &log[log.len().saturating_sub(3000)..]
    );
    assert_eq!(got, expected);
    // The repartition topic has the tasks' partition count, keyed by service.
    let repartitioned = read_topic(
        &brokers(),
        &format!("{app}-images-repartition"),
        "read_committed",
        Duration::from_secs(1),
        Duration::from_secs(30),
        |r| r.len() >= lines.len(),
    );
    assert_eq!(repartitioned.len(), lines.len());
    let mut partitions_of: HashMap<String, std::collections::HashSet<i32>> = HashMap::new();
    for r in &repartitioned {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let service = v["service"].as_str().unwrap_or_default().to_owned();
        if service.is_empty() {
            continue; // an invalid record, unkeyed: whichever task gets it dead-letters it
        }
        assert_eq!(r.key.as_deref(), Some(service.as_str()), "keyed by service");
        partitions_of
            .entry(service)
            .or_default()
            .insert(r.partition);
    }
    assert!(
        partitions_of.values().all(|p| p.len() == 1),
        "each service in one partition"
    );
    assert_eq!(
        repartitioned.iter().map(|r| r.partition).max(),
        Some(2),
        "3 partitions, like the alerts"
    );

    // A clean stop purges the repartition topic up to the committed positions.
    assert!(terminate(&mut run).success());
    let repartition = format!("{app}-images-repartition");
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &app)
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&repartition, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap();
    for e in committed.elements() {
        let (low, _) = consumer
            .fetch_watermarks(&repartition, e.partition(), Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            rdkafka::Offset::Offset(low),
            e.offset(),
            "partition {} purged up to its committed offset",
            e.partition()
        );
    }
}

/// A protobuf sink carries the prost `DeploymentIntent` of proto/sluice.proto,
/// keyed `service/environment` and stamped with the intent's time.
#[test]
fn protobuf_sinks_carry_deployment_intents() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let app = unique("proto");
    let (images, alerts, sink) = (
        format!("{app}-images"),
        format!("{app}-alerts"),
        format!("{app}-out"),
    );
    create_topics(&[(&images, 1), (&alerts, 1)]);
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n\
             [[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\nenvironment = \"prod\"\n\
             [[sources]]\nname = \"alerts\"\ntopic = \"{alerts}\"\nkind = \"alert\"\n\
             [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\n\
             [[sinks]]\nname = \"out\"\ninput = \"gate\"\ntopic = \"{sink}\"\nformat = \"protobuf\"\n"
        ),
    )
    .unwrap();
    let ts = now_ms() - 60_000;
    let p = producer();
    for (i, tag) in ["v1.0.0", "v1.1.0"].iter().enumerate() {
        let value =
            format!(r#"{{"service":"web","repository":"registry.example.com/web","tag":"{tag}"}}"#);
        p.send(
            BaseRecord::<str, str>::to(&images)
                .key("web")
                .payload(&value)
                .timestamp(ts + i as i64),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let mut run = spawn_run(
        &topology,
        &dir.path().join("state"),
        &dir.path().join("run.log"),
        &["--clock", "event", "--exit-after-idle", "2s"],
    );
    assert!(wait_exit(&mut run, RUN_PATIENCE).success());
    let reads = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::from_secs(1),
        Duration::from_secs(30),
        |r| r.len() >= 2,
    );
    assert_eq!(reads.len(), 2);
    let intents: Vec<sluice::proto::DeploymentIntent> = reads
        .iter()
        .map(|r| {
            sluice::proto::DeploymentIntent::decode(r.value.as_slice()).expect("a DeploymentIntent")
        })
        .collect();
    assert_eq!(intents[0].image, "registry.example.com/web:v1.0.0");
    assert_eq!(intents[1].image, "registry.example.com/web:v1.1.0");
    assert_eq!(
        intents[1].previous_image.as_deref(),
        Some("registry.example.com/web:v1.0.0")
    );
    assert_eq!(
        intents[1].action,
        sluice::proto::deployment_intent::Action::Deploy as i32
    );
    assert_eq!(
        (intents[0].service.as_str(), intents[0].environment.as_str()),
        ("web", "prod")
    );
    assert_eq!(intents[0].intent_id.len(), 32);
    assert_eq!(reads[0].key.as_deref(), Some("web/prod"));
    assert_eq!((reads[0].ts, reads[1].ts), (ts, ts + 1));
}
