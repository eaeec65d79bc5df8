//! Exactly-once under faults (issue 8, items 1 to 5): a commit whose outcome
//! is unknown, a paused instance, an abort among stray records, and a rapid
//! join and leave (long broker outages: `live_outage.rs`). Faults are
//! injected through `SLUICE_FAULTS` (the `fault-injection` feature), brokers
//! are real.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

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

/// Runs `s`'s topology with `faults` (which include a commit of unknown
/// outcome, `txn.after-end-txn`) until `expected` intents are committed,
/// then stops it: those intents, the run's log, and a scrape of its
/// metrics taken just before it stopped.
fn run_with_unknown_outcome(
    s: &Setup,
    expected: usize,
    faults: &str,
) -> (Vec<IntentFields>, String, metrics::Scrape) {
    let metrics_addr = format!("127.0.0.1:{}", pipeline::free_port());
    let mut run = spawn_run_with(
        &s.topology,
        &s.path("state"),
        &s.path("run.log"),
        &[
            "--clock",
            "event",
            "--commit-interval-ms",
            "20",
            "--metrics-addr",
            &metrics_addr,
        ],
        &[("SLUICE_FAULTS", faults)],
    );
    let got = committed_intents(s, expected, 120);
    let scrape = metrics::scrape(&metrics_addr);
    let status = terminate(&mut run);
    let log = s.log("run.log");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("txn.after-end-txn"),
        "the commit of unknown outcome was injected:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    (got, log, scrape)
}

/// librdkafka can stay stuck looking for a group coordinator after a broker
/// restart (see `src/kafka/run/committed.rs`): when the run's consumer
/// cannot fetch the committed offsets, a new client of the group does.
/// Here every fetch through the run's consumer times out, both when the
/// tasks open and when a commit of unknown outcome rewinds; the output
/// still equals replay's.
#[test]
fn committed_offsets_come_from_a_new_client_when_the_consumer_times_out() {
    let s = Setup::new("offsets-fallback", 2);
    let (_, expected) = flood_into(&s, 20_000, 2, 23);
    let (got, log, scrape) = run_with_unknown_outcome(
        &s,
        expected.len(),
        "consumer.committed=fail@1+,txn.after-end-txn=fail@8,txn.before-commit=delay:20",
    );
    let tail = &log[log.len().saturating_sub(3000)..];
    let asked = log.matches("asking a new client of the group").count();
    assert!(
        asked >= 2,
        "the tasks' opening and the rewind asked a new client ({asked} times):\n{tail}"
    );
    let counted = |outcome| {
        scrape.get(
            "sluice_offset_fetch_fallbacks_total",
            &[("outcome", outcome)],
        )
    };
    // The log is read after the scrape, so it has at least every fetch
    // the scrape counted.
    let (answered, failed) = (counted("answered"), counted("failed"));
    assert!(
        answered.is_some_and(|n| n >= 2.0)
            && failed.is_some()
            && answered.unwrap_or(0.0) + failed.unwrap_or(0.0) <= asked as f64,
        "each fetch asked of a new client is counted by its outcome ({asked} asked): {:?}",
        scrape.series("sluice_offset_fetch_fallbacks_total")
    );
    assert_same_intents(&expected, &got, tail);
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
    let (got, log, _) = run_with_unknown_outcome(
        &s,
        expected.len(),
        "txn.after-end-txn=fail@8,txn.before-commit=delay:20",
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
