//! Exactly-once under faults (issue 8, items 1 to 5): a commit whose outcome
//! is unknown, a paused instance, long broker outages, an abort among stray
//! records, and a rapid join and leave. Faults are injected through
//! `SLUICE_FAULTS` (the `fault-injection` feature), brokers are real.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};

use super::support::*;
use super::{committed_intents, flood_into, Setup};

/// Every entry of every column family of the RocksDB store in `dir`.
fn store_entries(dir: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let opts = rocksdb::Options::default();
    let names = rocksdb::DB::list_cf(&opts, dir).expect("a RocksDB store");
    let db = rocksdb::DB::open_cf_for_read_only(&opts, dir, &names, false).expect("opens");
    let mut out = Vec::new();
    for name in &names {
        let cf = db.cf_handle(name).expect("listed family");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.expect("readable");
            // Restore bookkeeping differs by nature between a store and a
            // fresh restore: when it was checkpointed, and how its changelog
            // positions are noted (a commit notes the last record and the
            // marker after it; a restore, the position past the marker).
            if name == "sluice/meta" && k.starts_with(b"changelog:") {
                continue;
            }
            out.push((name.clone(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

/// Item 1. A commit that reached the coordinator but whose call then timed
/// out (simulated right after EndTxn) leaves the outcome unknown; here it
/// was in fact committed. The run must not go on with a store one batch
/// behind its offsets: output equals replay, and each task's store equals
/// a fresh restore from the changelog.
#[test]
fn a_commit_of_unknown_outcome_reopens_the_tasks_from_the_changelog() {
    let s = Setup::new("unknown", 2);
    let (_, expected) = flood_into(&s, 30_000, 2, 21);
    let mut run = spawn_run_with(
        &s.topology,
        &s.path("state"),
        &s.path("run.log"),
        &["--clock", "event", "--commit-interval-ms", "20"],
        &[(
            "SLUICE_FAULTS",
            "txn.after-end-txn=fail@8,txn.before-commit=delay:20",
        )],
    );
    let got = committed_intents(&s, expected.len(), 120);
    let status = terminate(&mut run);
    let log = s.log("run.log");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("txn.after-end-txn"),
        "the fault was injected:\n{log}"
    );
    assert_same_intents(&expected, &got, &log[log.len().saturating_sub(3000)..]);

    // A second instance from an empty state directory restores everything
    // from the changelog and, with all input committed, processes nothing.
    let mut fresh = spawn_run(
        &s.topology,
        &s.path("fresh"),
        &s.path("fresh.log"),
        &["--clock", "event", "--exit-after-idle", "2s"],
    );
    assert!(
        wait_exit(&mut fresh, RUN_PATIENCE).success(),
        "{}",
        s.log("fresh.log")
    );
    let app = s.app();
    for task in 0..2 {
        let dir = |root: &str| s.path(root).join(&app).join(format!("task-{task}"));
        let (kept, restored) = (store_entries(&dir("state")), store_entries(&dir("fresh")));
        assert!(!restored.is_empty());
        let differing: Vec<_> = kept
            .iter()
            .filter(|e| !restored.contains(e))
            .map(|(cf, k, _)| format!("{cf}:{}", String::from_utf8_lossy(k)))
            .take(5)
            .collect();
        assert!(
            kept == restored,
            "task {task}: the store differs from a fresh restore ({} entries against {}), at {differing:?}",
            kept.len(),
            restored.len()
        );
    }
}

/// Item 4. Records that reach the main queue before their partition's
/// queue is split off (widened here by a delay in the assignment callback)
/// are forwarded to the repartition topic one by one; a forward that fails
/// aborts and rewinds, and nothing after the rewind point may be forwarded
/// before the refetch: each record is in the repartition topic once.
#[test]
fn an_abort_among_stray_records_forwards_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("stray");
    let (images, sink) = (format!("{app}-images"), format!("{app}-out"));
    create_topics(&[(&images, 1)]);
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n[[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\nrepartition = true\n\
             [[sinks]]\nname = \"out\"\ninput = \"images\"\ntopic = \"{sink}\"\n"
        ),
    )
    .unwrap();
    let p = producer();
    let count = 2_000;
    for n in 0..count {
        let value = format!(
            r#"{{"service":"s{}","repository":"r/s","tag":"v{n}"}}"#,
            n % 7
        );
        p.send(BaseRecord::<str, str>::to(&images).payload(&value))
            .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let log = dir.path().join("run.log");
    let mut run = spawn_run_with(
        &topology,
        &dir.path().join("state"),
        &log,
        &["--clock", "event"],
        &[(
            "SLUICE_FAULTS",
            "rebalance.before-split=delay:1500,run.forward=fail@50",
        )],
    );
    let repartition = format!("{app}-images-repartition");
    let reads = read_topic(
        &brokers(),
        &repartition,
        "read_committed",
        Duration::from_secs(4),
        Duration::from_secs(90),
        |r| r.len() >= count,
    );
    terminate(&mut run);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("run.forward"),
        "the fault was injected:\n{log}"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &reads {
        *seen
            .entry(String::from_utf8_lossy(&r.value).into_owned())
            .or_default() += 1;
    }
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(
        (reads.len(), twice),
        (count, 0),
        "records forwarded twice:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
}

/// Runs `sluice run` on `broker` with `guarantee`, stops the broker for 20 s
/// and then for 60 s mid-run (both longer than the transaction timeout),
/// and checks that the run neither exits nor duplicates or loses output.
fn carries_on_across_long_outages(guarantee: &str, base_port: u16) {
    let dir = tempfile::tempdir().unwrap();
    let broker = super::OwnBroker::start(&dir.path().join("kafka"), base_port, "");
    let app = unique("outage");
    let (images, alerts, sink) = (
        format!("{app}-images"),
        format!("{app}-alerts"),
        format!("{app}-out"),
    );
    create_topics_on(&broker.address, &[(&images, 2), (&alerts, 2)]);
    let topology = topology_file(dir.path(), &app, &images, &alerts, &sink);
    let mut lines = sorted_flood(30_000, 300, 17);
    super::end_markers(&mut lines, 2);
    let topics = HashMap::from([
        ("docker-events", images.clone()),
        ("alert-events", alerts.clone()),
    ]);
    let renamed = renamed(&lines, &topics);
    let input = dir.path().join("input.jsonl");
    write_lines(&input, &renamed);
    let expected = super::sorted(replay_intents(&topology, &input, &sink));
    // A third now, the rest between the outages, so that the run is busy
    // (a transaction open) when each begins. The end markers come last.
    let (first, rest) = lines.split_at(lines.len() / 3);
    produce(
        &producer_on(&broker.address),
        first,
        &topics,
        super::marker_partition,
    );
    let log = dir.path().join("run.log");
    let mut run = sluice_cmd()
        .env("SLUICE_FAULTS", "txn.before-commit=delay:40")
        .args(["-v", "run"])
        .arg(&topology)
        .args([
            "--brokers",
            &broker.address,
            "--guarantee",
            guarantee,
            "--clock",
            "event",
            "--commit-interval-ms",
            "20",
            // Records produced between the outages reach the two inputs'
            // partitions apart, after both were caught up: without a wait
            // for the other input, an image could be taken before an older
            // alert, as a late record (see Clocks in the README), and the
            // output would differ from replay's. The producer learns both
            // topics' leaders first. 10 s was not always enough in CI
            // (2026-12-07, 239 differences), where the consumer's partitions
            // come back from an outage one by one on a loaded machine; a
            // wait that runs out is logged, and shows at the end of a
            // failure's message.
            "--max-task-idle",
            "20s",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let alive = |run: &mut std::process::Child, when: &str| {
        if let Some(status) = run.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "the run exited ({status}) {when}:\n{}\n{}",
                &log[log.len().saturating_sub(4000)..],
                broker.log_tail(30)
            );
        }
    };
    let (second, third) = rest.split_at(rest.len() / 2);
    for (outage, more) in [(20, second), (60, third)] {
        std::thread::sleep(Duration::from_secs(3));
        let stopping = Instant::now();
        broker.script(&["stop"]);
        let stopped = Instant::now();
        // A broker's shutdown can itself take up to kafka-local's 30 s
        // bound: the run sees an outage that much longer.
        eprintln!(
            "{outage} s outage: the broker took {:?} to stop",
            stopped - stopping
        );
        while stopped.elapsed() < Duration::from_secs(outage) {
            std::thread::sleep(Duration::from_secs(1));
            alive(
                &mut run,
                &format!("while the broker was down for {outage} s"),
            );
        }
        broker.script(&["start", "--keep-data"]);
        eprintln!("{outage} s outage: back after {:?}", stopping.elapsed());
        alive(&mut run, "right after the broker came back");
        produce(
            &ready_producer_on(&broker.address, &[&images, &alerts]),
            more,
            &topics,
            super::marker_partition,
        );
    }
    let reading = Instant::now();
    // At-least-once repeats intents, so a count of records can reach the
    // expected one long before the run is done: count distinct intents.
    let distinct_expected = expected
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let reads = read_topic(
        &broker.address,
        &sink,
        "read_committed",
        Duration::from_secs(5),
        // A loaded machine: the producer's rebuild alone can take a minute.
        Duration::from_secs(300),
        |r| {
            let got = read_intents(r);
            got.iter().collect::<std::collections::BTreeSet<_>>().len() >= distinct_expected
        },
    );
    eprintln!(
        "after the outages: {} of {} intents read in {:?}",
        reads.len(),
        expected.len(),
        reading.elapsed()
    );
    alive(&mut run, "after the outages");
    terminate(&mut run);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{}", enforced_waits(&log));
    let got = super::sorted(read_intents(&reads));
    // A harness fault, told apart from a fault of the run: CI, 2026-12-06,
    // before the test producers were idempotent, found an alerts topic whose
    // records a retry across the restart had reordered.
    for (line_topic, topic) in &topics {
        if let Some(differs) = input_as_produced(&broker.address, topic, line_topic, &lines) {
            panic!("the input is not what replay reads: {differs}");
        }
    }
    if guarantee == "exactly_once" {
        assert_same_intents(
            &expected,
            &got,
            &format!(
                "the run's warnings:\n{}\nthe end of its log:\n{}\n{}\nwhat the run did last:\n{}\n{}",
                warnings_of(&log, 20),
                &log[log.len().saturating_sub(3000)..],
                broker.log_tail(30),
                own_lines_of(&log, 12),
                enforced_waits(&log)
            ),
        );
        return;
    }
    // At-least-once: a member whose session expired during the outage loses
    // its partitions uncommitted, and the input since its last offset commit
    // is processed again on the state of that commit (which is what keeps
    // it from losing intents): repeats are its contract, losses are not.
    let mut distinct = got.clone();
    distinct.dedup();
    let mut wanted = expected.clone();
    wanted.dedup();
    assert_same_intents(
        &wanted,
        &distinct,
        &format!(
            "every intent at least once, and none that replay does not give:\n{}\n{}",
            &log[log.len().saturating_sub(3000)..],
            enforced_waits(&log)
        ),
    );
    eprintln!(
        "at_least_once across the outages: {} intents, {} of them repeats",
        got.len(),
        got.len() - distinct.len()
    );
}

/// Item 3, exactly-once: the coordinator times out the open transaction
/// while the broker is away; that is not a fence by another instance.
#[test]
fn exactly_once_carries_on_across_broker_outages_of_20_and_60_seconds() {
    carries_on_across_long_outages("exactly_once", 31_000);
}

/// Item 3, at-least-once: a flush that outlasts the commit call's timeout
/// waits for the broker instead of ending the run.
#[test]
fn at_least_once_carries_on_across_broker_outages_of_20_and_60_seconds() {
    carries_on_across_long_outages("at_least_once", 31_500);
}

/// The run's waits for an empty input that ran out (its log says so each
/// time). Each batch's tail ends with one; one that ran out while a batch
/// was still arriving lets the run take records in another order than
/// replay, which points at the test's timing rather than at a loss.
fn enforced_waits(log: &str) -> String {
    let waits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("going on without them"))
        .collect();
    format!(
        "waits of max_task_idle that ran out: {}\n{}",
        waits.len(),
        waits[waits.len().saturating_sub(8)..].join("\n")
    )
}

fn debounce_topology(
    dir: &Path,
    app: &str,
    images: &str,
    sink: &str,
    quiet: &str,
) -> std::path::PathBuf {
    let topology = dir.join("t.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n[[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\n\
             [[operators]]\nname = \"quiet\"\ntype = \"debounce\"\ninput = \"images\"\nkey = [\"service\"]\nquiet = \"{quiet}\"\nmax_wait = \"120s\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"quiet\"\ntopic = \"{sink}\"\n"
        ),
    )
    .unwrap();
    topology
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "signal {sig} delivered");
}

/// Item 1, continued. After a commit of unknown outcome that was in fact
/// committed, the run must take its committed offsets from the group again:
/// a partition that consumes nothing after the rebuild would otherwise be
/// committed by the next transaction at its offset from before the unknown
/// commit, moving the group's offset backwards, so that its input since is
/// processed a second time after the next restart or rebalance.
#[test]
fn after_a_commit_of_unknown_outcome_no_committed_offset_moves_backwards() {
    let s = Setup::new("backwards", 1);
    let lines = sorted_flood(3_000, 50, 23);
    let (a, rest) = lines.split_at(1_000);
    let (b, c): (Vec<Line>, Vec<Line>) = rest
        .iter()
        .cloned()
        .partition(|l| l.topic == "docker-events");
    assert!(!b.is_empty() && !c.is_empty());
    let p = producer();
    // Both inputs, committed by a first run without faults.
    produce(&p, a, &s.topics(), |_| None);
    let mut first = spawn_run(
        &s.topology,
        &s.path("state"),
        &s.path("first.log"),
        &["--clock", "event", "--exit-after-idle", "2s"],
    );
    assert!(
        wait_exit(&mut first, RUN_PATIENCE).success(),
        "{}",
        s.log("first.log")
    );
    // Images only, waiting before the second run starts: its first commit
    // (3 s in) carries all of them, and its outcome is made unknown.
    produce(&p, &b, &s.topics(), |_| None);
    let log = s.path("second.log");
    let mut second = spawn_run_with(
        &s.topology,
        &s.path("state"),
        &log,
        &[
            "--clock",
            "event",
            "--commit-interval-ms",
            "3000",
            "--exit-after-idle",
            "8s",
        ],
        &[("SLUICE_FAULTS", "txn.after-end-txn=fail@1")],
    );
    wait_for_log(&log, "producer rebuilt", 1, Duration::from_secs(120));
    // Alerts only: the next commit carries the images partition's offset
    // without an image consumed since the rebuild.
    produce(&p, &c, &s.topics(), |_| None);
    let status = wait_exit(&mut second, RUN_PATIENCE);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{log}");
    let app = s.app();
    for topic in [&s.images, &s.alerts] {
        let (committed, end) = committed_and_end(&app, topic);
        assert_eq!(
            committed,
            end,
            "{topic}: the group's committed offset is not at the end of the input\n{}",
            warnings_of(&log, 20)
        );
    }
}

/// Flow control pauses a partition whose buffer is full; librdkafka keeps
/// that pause across a producer rebuild's reopen of the tasks and across
/// a reassignment, while the reopened queues start unpaused. A budget of a
/// few dozen records per partition keeps partitions paused much of the time, so
/// the rebuild (after a commit of unknown outcome) finds some paused: each
/// must be fetched again, or the run stalls short of replay's output.
#[test]
fn partitions_paused_by_flow_control_are_fetched_again_after_a_producer_rebuild() {
    let s = Setup::new("paused", 2);
    let (_, expected) = flood_into(&s, 20_000, 2, 29);
    let log = s.path("run.log");
    let mut run = spawn_run_with(
        &s.topology,
        &s.path("state"),
        &log,
        &[
            "--clock",
            "event",
            "--commit-interval-ms",
            "20",
            "--max-buffer-bytes",
            "65536",
        ],
        &[("SLUICE_FAULTS", "txn.after-end-txn=fail@5")],
    );
    let got = committed_intents(&s, expected.len(), 120);
    terminate(&mut run);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("producer rebuilt"),
        "the fault was injected:\n{}",
        warnings_of(&log, 20)
    );
    let last_progress = log.lines().rev().find(|l| l.contains("progress"));
    assert_same_intents(
        &expected,
        &got,
        &format!("{}\n{last_progress:?}", warnings_of(&log, 20)),
    );
}

/// The group `group`'s committed offset of partition 0 of `topic`, and the
/// partition's end.
fn committed_and_end(group: &str, topic: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap();
    let offset = match committed.elements()[0].offset() {
        rdkafka::Offset::Offset(o) => o,
        other => panic!("{topic}: no committed offset ({other:?})"),
    };
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .unwrap();
    (offset, high)
}

/// Item 2. An instance whose task only holds a wall-clock timer (nothing
/// consumed since it opened) is paused past its session timeout; the
/// partition moves to a second instance, which fires the timer. When the
/// first resumes, its timer output must not commit: its transaction carries
/// the task's offsets, so the group-generation check of KIP-447 fences it.
#[test]
fn a_paused_instance_does_not_commit_a_timer_its_successor_fired() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("pause");
    let (images, sink) = (format!("{app}-images"), format!("{app}-out"));
    create_topics(&[(&images, 1)]);
    let topology = debounce_topology(dir.path(), &app, &images, &sink, "20s");
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let state = |name: &str| dir.path().join(name);
    // A first run takes the image and commits its pending timer, then stops.
    let mut a = spawn_run(&topology, &state("a"), &log("a-0"), &[]);
    wait_for_log(&log("a-0"), "task restored", 1, Duration::from_secs(30));
    let p = producer();
    p.send(
        BaseRecord::<str, str>::to(&images)
            .key("web")
            .payload(r#"{"service":"web","repository":"r/web","tag":"v1"}"#),
    )
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    // Its commit counts only when something changed: the image, here.
    wait_for_progress(
        &log("a-0"),
        "the image processed and committed",
        Duration::from_secs(60),
        |field| field("processed") >= 1 && field("commits") >= 1,
    );
    assert!(
        terminate(&mut a).success(),
        "{}",
        std::fs::read_to_string(log("a-0")).unwrap_or_default()
    );
    // Reopened, the task has the timer and nothing consumed since.
    let mut a = spawn_run(&topology, &state("a"), &log("a-1"), &[]);
    wait_for_log(&log("a-1"), "task restored", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    signal(&a, libc::SIGSTOP);
    let mut b = spawn_run(&topology, &state("b"), &log("b"), &[]);
    let first = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::ZERO,
        Duration::from_secs(90),
        |r| !r.is_empty(),
    );
    signal(&a, libc::SIGCONT);
    assert_eq!(
        first.len(),
        1,
        "the successor fired the timer:\n{}",
        std::fs::read_to_string(log("b")).unwrap_or_default()
    );
    // Let the resumed instance fire its own copy and try to commit it.
    std::thread::sleep(Duration::from_secs(8));
    let all = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::from_secs(3),
        Duration::from_secs(30),
        |r| !r.is_empty(),
    );
    terminate(&mut b);
    terminate(&mut a);
    assert_eq!(
        all.len(),
        1,
        "the intent appears once:\n{}",
        std::fs::read_to_string(log("a-1")).unwrap_or_default()
    );
}

/// Item 5. A member that joins and leaves at once moves the partitions away
/// and back in quick succession; a task opened for a partition the first
/// member no longer owned would fire its wall-clock timers a second time.
/// Each debounced image comes out once.
#[test]
fn a_rapid_join_and_leave_fires_each_timer_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("joinleave");
    let (images, sink) = (format!("{app}-images"), format!("{app}-out"));
    create_topics(&[(&images, 4)]);
    // Let the new topic's metadata reach every listener before the run looks.
    std::thread::sleep(Duration::from_secs(2));
    let topology = debounce_topology(dir.path(), &app, &images, &sink, "6s");
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut a = spawn_run(&topology, &dir.path().join("a"), &log("a"), &[]);
    wait_for_log(&log("a"), "task restored", 4, Duration::from_secs(30));
    let p = producer();
    let services = 40;
    for n in 0..services {
        let value = format!(r#"{{"service":"s{n}","repository":"r/s{n}","tag":"v1"}}"#);
        p.send(
            BaseRecord::<str, str>::to(&images)
                .key(&format!("s{n}"))
                .payload(&value),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    for round in 0..3 {
        let mut b = spawn_run(
            &topology,
            &dir.path().join(format!("b{round}")),
            &log(&format!("b{round}")),
            &[],
        );
        std::thread::sleep(Duration::from_millis(800 + 700 * round));
        terminate(&mut b);
    }
    let reads = read_topic(
        &brokers(),
        &sink,
        "read_committed",
        Duration::from_secs(8),
        Duration::from_secs(90),
        |r| r.len() >= services,
    );
    terminate(&mut a);
    let mut per_service: HashMap<String, usize> = HashMap::new();
    for r in &reads {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        *per_service
            .entry(v["service"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        (per_service.len(), reads.len()),
        (services, services),
        "each image once: {per_service:?}\n{}",
        std::fs::read_to_string(log("a")).unwrap_or_default()
    );
}
