//! Helpers for the tests against a real Kafka broker (`.ci/test` starts one
//! with `.ci/kafka-local` and passes its address in SLUICE_TEST_BROKERS).
#![allow(dead_code)]

pub mod metrics;
pub mod observed;
pub mod otlp;
mod own_broker;
pub mod pipeline;
#[allow(unused_imports)]
pub use own_broker::OwnBroker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("SLUICE_TEST_BROKERS")
        .expect("SLUICE_TEST_BROKERS is not set: run .ci/test, which starts a local Kafka broker")
}

/// A name no other test run has used, so runs never see each other's records.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub fn create_topics_on(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        // Floods carry event timestamps of days ago: time-based retention
        // must not delete them while a test runs.
        .map(|(name, parts)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(1)).set("retention.ms", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures_executor::block_on(admin.create_topics(&new, &opts)).expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

pub fn create_topics(topics: &[(&str, i32)]) {
    create_topics_on(&brokers(), topics)
}

pub fn producer_on(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        // The topics must hold the lines in the order replay reads them:
        // without idempotence a batch retried across a broker restart can
        // land after the next one, or twice.
        .set("enable.idempotence", "true")
        // The Java clients' partitioner: keys land where Kafka Streams would put them.
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// [`producer_on`], once it knows a leader for every partition of `topics`.
/// Right after a broker (re)start a fresh producer learns each topic's
/// leaders separately, and holds a topic's records until it has them: the
/// records of one `produce` call would reach the topics seconds apart.
pub fn ready_producer_on(brokers: &str, topics: &[&str]) -> BaseProducer {
    let p = producer_on(brokers);
    let deadline = Instant::now() + Duration::from_secs(120);
    for topic in topics {
        loop {
            let led = p
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    let t = m.topics().first()?;
                    let all = t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0);
                    all.then_some(())
                });
            if led.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: no leader for every partition in 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    p
}

pub fn producer() -> BaseProducer {
    producer_on(&brokers())
}

pub fn sluice_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

pub fn sluice(args: &[&str]) -> std::process::Output {
    sluice_cmd().args(args).output().expect("sluice runs")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A line of the replay format.
#[derive(Debug, Clone)]
pub struct Line {
    pub topic: String,
    pub ts: i64,
    pub key: Option<String>,
    pub value: String,
}

pub fn parse_lines(text: &str) -> Vec<Line> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("replay line");
            Line {
                topic: v["topic"].as_str().expect("topic").to_owned(),
                ts: v["ts"].as_i64().expect("ts"),
                key: v["key"].as_str().map(str::to_owned),
                value: v["value"].to_string(),
            }
        })
        .collect()
}

/// A flood sorted by time, ties in topology source order (images first):
/// the order in which `sluice run --clock event` takes a task's records.
pub fn sorted_flood(events: u64, services: u32, seed: u64) -> Vec<Line> {
    // Three days ago: recent enough for the sinks' default 7-day retention,
    // and a day-later end marker is still in the past (Kafka 4 refuses
    // timestamps more than an hour ahead).
    let start = now_ms() - 3 * 86_400_000;
    let out = sluice(&[
        "flood",
        "--start-ts",
        &start.to_string(),
        "--events",
        &events.to_string(),
        "--services",
        &services.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    assert!(out.status.success());
    let mut lines = parse_lines(&String::from_utf8_lossy(&out.stdout));
    lines.sort_by_key(|l| (l.ts, l.topic != "docker-events"));
    lines
}

pub fn write_lines(path: &Path, lines: &[Line]) {
    let mut text = String::new();
    for l in lines {
        let key = l
            .key
            .as_ref()
            .map_or("null".to_owned(), |k| format!("{k:?}"));
        text.push_str(&format!(
            "{{\"topic\":{:?},\"ts\":{},\"key\":{key},\"value\":{}}}\n",
            l.topic, l.ts, l.value
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// `lines` with their topics renamed through `topics`, as a test's
/// topology reads them.
pub fn renamed(lines: &[Line], topics: &HashMap<&str, String>) -> Vec<Line> {
    lines
        .iter()
        .map(|l| Line {
            topic: topics[l.topic.as_str()].clone(),
            ..l.clone()
        })
        .collect()
}

/// The flood's topics renamed to a test's own inputs (those of
/// `topology_file`).
pub fn flood_topics(images: &str, alerts: &str) -> HashMap<&'static str, String> {
    HashMap::from([
        ("docker-events", images.to_owned()),
        ("alert-events", alerts.to_owned()),
    ])
}

/// Writes `lines`, their topics renamed through `topics`, as the replay
/// input `path`: what the test produces, as replay reads it.
pub fn write_renamed(path: &Path, lines: &[Line], topics: &HashMap<&str, String>) {
    write_lines(path, &renamed(lines, topics));
}

/// Produces `lines` (topics renamed through `topics`), keyed and stamped as
/// given; `partition` pins a line to a partition when it returns Some.
pub fn produce(
    p: &BaseProducer,
    lines: &[Line],
    topics: &HashMap<&str, String>,
    partition: impl Fn(&Line) -> Option<i32>,
) {
    for l in lines {
        let topic = &topics[l.topic.as_str()];
        let mut record = BaseRecord::<str, str>::to(topic)
            .payload(&l.value)
            .timestamp(l.ts);
        if let Some(k) = &l.key {
            record = record.key(k);
        }
        if let Some(part) = partition(l) {
            record = record.partition(part);
        }
        let mut record = record;
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}

/// Whether `topic` holds `lines` (those of `line_topic`) as produced: each
/// key's records once each, in the order of the lines. `None` when it
/// does, else what differs. A broker restart mid-produce must not change
/// the input that a live run is compared with replay on.
pub fn input_as_produced(
    brokers: &str,
    topic: &str,
    line_topic: &str,
    lines: &[Line],
) -> Option<String> {
    let wanted: Vec<&Line> = lines.iter().filter(|l| l.topic == line_topic).collect();
    let reads = read_topic(
        brokers,
        topic,
        "read_uncommitted",
        Duration::from_secs(2),
        Duration::from_secs(60),
        |r| r.len() >= wanted.len(),
    );
    let mut by_key: HashMap<Option<String>, Vec<(i64, String)>> = HashMap::new();
    for l in &wanted {
        by_key
            .entry(l.key.clone())
            .or_default()
            .push((l.ts, l.value.clone()));
    }
    let mut read_by_key: HashMap<Option<String>, Vec<(i64, String)>> = HashMap::new();
    let mut sorted_reads = reads.clone();
    sorted_reads.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted_reads {
        read_by_key
            .entry(r.key.clone())
            .or_default()
            .push((r.ts, String::from_utf8_lossy(&r.value).into_owned()));
    }
    let mut differing: Vec<String> = by_key
        .iter()
        .filter(|(k, v)| read_by_key.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k:?} ({} lines, {} records)",
                v.len(),
                read_by_key.get(k).map_or(0, Vec::len)
            )
        })
        .collect();
    differing.sort();
    (reads.len() != wanted.len() || !differing.is_empty()).then(|| {
        format!(
            "{topic}: {} records for {} lines; {} keys differ in content or order, among them {}",
            reads.len(),
            wanted.len(),
            differing.len(),
            differing[..differing.len().min(8)].join(", ")
        )
    })
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub ts: i64,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning with the given isolation level until
/// `done` says the records are enough and no new one came for `settle`, or
/// `timeout` passes.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    isolation: &str,
    settle: Duration,
    timeout: Duration,
    done: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let started = Instant::now();
    // The topic may not exist yet: the run under test creates its sinks.
    let parts = loop {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .expect("metadata");
        let n = md
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if n > 0 || started.elapsed() > timeout {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut last_new = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_new = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    ts: m.timestamp().to_millis().unwrap_or(-1),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if done(&out) && last_new.elapsed() >= settle => break,
            None => {}
        }
    }
    out
}

/// What the equivalence tests compare of an intent.
pub type IntentFields = (String, String, String, String, Option<String>, i64);

pub fn intent_fields(value: &serde_json::Value, ts: i64) -> IntentFields {
    let s = |k: &str| value[k].as_str().unwrap_or_default().to_owned();
    (
        s("action"),
        s("service"),
        s("environment"),
        s("image"),
        value["previous_image"].as_str().map(str::to_owned),
        ts,
    )
}

/// The intents `sluice replay --drain` prints for a file, in order.
pub fn replay_intents(topology: &Path, input: &Path, sink: &str) -> Vec<IntentFields> {
    let out = sluice(&[
        "replay",
        &topology.display().to_string(),
        "--input",
        &input.display().to_string(),
        "--drain",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|l| l.topic == sink)
        .map(|l| intent_fields(&serde_json::from_str(&l.value).unwrap(), l.ts))
        .collect()
}

pub fn read_intents(reads: &[Read]) -> Vec<IntentFields> {
    reads
        .iter()
        .map(|r| {
            intent_fields(
                &serde_json::from_slice(&r.value).expect("json intent"),
                r.ts,
            )
        })
        .collect()
}

/// The default topology with its topics and app id renamed for one test.
pub fn topology_file(dir: &Path, app: &str, images: &str, alerts: &str, sink: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/cicd.toml"))
            .unwrap()
            .replace("id = \"cicd\"", &format!("id = \"{app}\""))
            .replace("\"docker-events\"", &format!("\"{images}\""))
            .replace("\"alert-events\"", &format!("\"{alerts}\""))
            .replace("\"deploy-intents\"", &format!("\"{sink}\""));
    let path = dir.join(format!("{app}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `sluice run` in the background, its log in `log`.
pub fn spawn_run(topology: &Path, state: &Path, log: &Path, extra: &[&str]) -> Child {
    spawn_run_with(topology, state, log, extra, &[])
}

/// [`spawn_run`] with extra environment variables.
pub fn spawn_run_with(
    topology: &Path,
    state: &Path,
    log: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    spawn_run_on(&brokers(), topology, state, log, extra, env)
}

/// [`spawn_run_with`] on `brokers` (a broker of the test's own).
pub fn spawn_run_on(
    brokers: &str,
    topology: &Path,
    state: &Path,
    log: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let log = std::fs::File::create(log).unwrap();
    sluice_cmd()
        .envs(env.iter().copied())
        .arg("-v")
        .arg("run")
        .arg(topology)
        .args(["--brokers", brokers, "--state-dir"])
        .arg(state)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sluice run starts")
}

/// The address `sluice ingest` (spawned with its stdout piped) prints first,
/// `listening on SCHEME://ADDRESS`.
pub fn listening_address(child: &mut Child, scheme: &str) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("the listening line");
    line.trim()
        .strip_prefix(&format!("listening on {scheme}://"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How long a process may take to exit after SIGTERM: a run finishes its
/// commit first, and a transactional call may take its whole deadline.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(120);

/// How long a run that exits by itself (`--exit-after-idle`) may take.
pub const RUN_PATIENCE: Duration = Duration::from_secs(600);

/// Sends SIGTERM and waits for a clean exit (see [`wait_exit`]).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    wait_exit(child, EXIT_PATIENCE)
}

/// Waits for `child` to exit. One still running after `within` is killed
/// and the test fails: a hang must fail the suite, not hold it until CI's
/// time runs out.
pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            kill9(child);
            panic!(
                "pid {} did not exit within {within:?}; killed it",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Multiset difference, for readable failures.
pub fn diff_multisets(expected: &[IntentFields], got: &[IntentFields]) -> String {
    let mut counts: HashMap<&IntentFields, i64> = HashMap::new();
    for e in expected {
        *counts.entry(e).or_default() += 1;
    }
    for g in got {
        *counts.entry(g).or_default() -= 1;
    }
    let mut lines: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(k, &n)| {
            if n > 0 {
                format!("missing x{n}: {k:?}")
            } else {
                format!("extra x{}: {k:?}", -n)
            }
        })
        .collect();
    lines.sort();
    format!(
        "{}:\n{}",
        difference_counts(&counts, expected.len(), got.len()),
        lines[..lines.len().min(20)].join("\n")
    )
}

/// "N differences (expected E, got G; M missing, X extra)": one line that
/// tells a loss from a repeat.
fn difference_counts(counts: &HashMap<&IntentFields, i64>, expected: usize, got: usize) -> String {
    let differing = counts.values().filter(|n| **n != 0).count();
    let missing: i64 = counts.values().filter(|n| **n > 0).sum();
    let extra: i64 = -counts.values().filter(|n| **n < 0).sum::<i64>();
    format!("{differing} differences (expected {expected}, got {got}; {missing} missing, {extra} extra)")
}

/// Fails unless `got` and `expected` (both sorted) hold the same intents.
/// The message starts and ends with what differs, never with a dump of
/// both lists: a CI log keeps only part of a failure, and the counts of
/// missing and extra intents are what tell a loss from a repeat. `context`
/// (log lines) comes after the list of differences, its last lines just
/// before the closing counts: a CI digest keeps a failure's first and last
/// lines.
pub fn assert_same_intents(expected: &[IntentFields], got: &[IntentFields], context: &str) {
    if got != expected {
        let diff = diff_multisets(expected, got);
        let summary = diff
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches(':');
        panic!(
            "the output differs from replay's: {summary}\n{diff}\n\n{context}\nagain: {summary}"
        );
    }
}

/// The warnings and errors of a run's log, at most `max` of the last ones:
/// the path a run took through faults, for a failure message.
pub fn warnings_of(log: &str, max: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// The run's own log lines (not librdkafka's, which carry `fac=`) at info
/// and above, at most `max` of the last ones: what the run did, in order,
/// for a failure message that librdkafka's reconnect noise would bury.
pub fn own_lines_of(log: &str, max: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" fac=\""))
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// Waits until `needle` occurs `count` times in the log at `path`; fails
/// with the log after `timeout`.
pub fn wait_for_log(path: &Path, needle: &str, count: usize, timeout: Duration) {
    let what = format!("`{needle}` {count} times");
    wait_for_log_text(path, &what, timeout, |log| {
        log.matches(needle).count() >= count
    });
}

/// Waits until a `progress` line of the run's log at `path` passes `ok`,
/// which reads its numeric fields by name (`processed`, `commits`,
/// `buffered`, ...); fails with the log after `timeout`. Progress lines
/// come every 10 s.
pub fn wait_for_progress(
    path: &Path,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&dyn Fn(&str) -> u64) -> bool,
) {
    let what = format!("a progress line with {what}");
    wait_for_log_text(path, &what, timeout, |log| {
        log.lines()
            .filter(|l| l.contains(" progress "))
            .any(|line| ok(&|name: &str| progress_field(line, name)))
    });
}

/// [`wait_for_progress`] for each of a run's `threads` processing threads:
/// a progress line of every thread (its `member{thread=K}` span) passes `ok`.
pub fn wait_for_progress_of_threads(
    path: &Path,
    what: &str,
    threads: usize,
    timeout: Duration,
    ok: impl Fn(&dyn Fn(&str) -> u64) -> bool,
) {
    let what = format!("a progress line of each of {threads} threads with {what}");
    wait_for_log_text(path, &what, timeout, |log| {
        (0..threads).all(|k| {
            let span = format!("member{{thread={k}}}");
            log.lines()
                .filter(|l| l.contains(" progress ") && l.contains(&span))
                .any(|line| ok(&|name: &str| progress_field(line, name)))
        })
    });
}

/// Reads the log at `path` until `done` accepts its text; fails with the
/// log after `timeout`.
fn wait_for_log_text(path: &Path, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if done(&log) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "no {what} in {} after {timeout:?}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The numeric field `name=` of a log line, 0 when absent.
fn progress_field(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    line.find(&key)
        .map(|at| &line[at + key.len()..])
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
