//! Tests against a real Kafka broker: `.ci/test` starts a single-node Kafka
//! 4.x (`.ci/kafka-local`) and passes its address in SLUICE_TEST_BROKERS.
//! Nothing here mocks Kafka; without a broker these tests fail and say so.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

mod support;
use support::*;

#[test]
fn record_writes_a_time_slice_in_replay_format() {
    let images = unique("rec-images");
    let alerts = unique("rec-alerts");
    create_topics(&[(&images, 2), (&alerts, 1)]);
    let base: i64 = 1_767_225_600_000;
    let p = producer();
    for i in 0..10i64 {
        let value = format!(r#"{{"service":"s{i}","repository":"r","tag":"v{i}"}}"#);
        let key = format!("s{i}");
        p.send(
            BaseRecord::to(&images)
                .key(&key)
                .payload(&value)
                .partition((i % 2) as i32)
                .timestamp(base + i * 1000),
        )
        .expect("queued");
    }
    p.send(
        BaseRecord::<str, str>::to(&images)
            .payload("not json")
            .partition(0)
            .timestamp(base + 5_500),
    )
    .expect("queued");
    // Alerts are protobuf on the wire; the topology below says so, and record decodes them.
    let alert = sluice::proto::Alert {
        service: "s3".into(),
        alertname: "HighLatency".into(),
        severity: "critical".into(),
        status: "firing".into(),
        environment: Some("prod".into()),
        fingerprint: None,
    };
    p.send(
        BaseRecord::<str, [u8]>::to(&alerts)
            .payload(&alert.encode_to_vec())
            .timestamp(base + 4_000),
    )
    .expect("queued");
    p.flush(Duration::from_secs(30)).expect("flushed");

    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        format!("[app]\nid = \"rec\"\n[[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\n[[sources]]\nname = \"alerts\"\ntopic = \"{alerts}\"\nkind = \"alert\"\nformat = \"protobuf\"\n[[sinks]]\nname = \"out\"\ninput = \"images\"\ntopic = \"out\"\n"),
    )
    .unwrap();
    let slice = dir.path().join("slice.jsonl");
    let out = sluice(&[
        "record",
        "--brokers",
        &brokers(),
        "--topics",
        &format!("{images},{alerts}"),
        "--from",
        &(base + 2_000).to_string(),
        "--to",
        &(base + 7_000).to_string(),
        "--topology",
        &topology.display().to_string(),
        "--output",
        &slice.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&slice)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(i64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["ts"].as_i64().unwrap() - base,
                l["topic"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = vec![
        (2_000, images.clone()),
        (3_000, images.clone()),
        (4_000, alerts.clone()),
        (4_000, images.clone()),
        (5_000, images.clone()),
        (5_500, images.clone()),
        (6_000, images.clone()),
        (7_000, images.clone()),
    ];
    assert_eq!(
        summary, expected,
        "records in [from, to], both partitions merged in time order"
    );
    assert_eq!(lines[0]["key"], "s2");
    assert_eq!(lines[0]["value"]["tag"], "v2");
    assert_eq!(
        lines[2]["value"]["alertname"], "HighLatency",
        "protobuf decoded to JSON"
    );
    assert_eq!(
        lines[5]["value"], "not json",
        "a value that is not JSON is kept as a string"
    );
    assert_eq!(lines[5]["key"], serde_json::Value::Null);

    // The slice replays: the non-JSON value is a dead letter, the rest pass to the sink.
    let replayed = sluice(&[
        "replay",
        &topology.display().to_string(),
        "--input",
        &slice.display().to_string(),
    ]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let text = String::from_utf8_lossy(&replayed.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("rec.dead-letter"))
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("{\"topic\":\"out\""))
            .count(),
        6,
        "{text}"
    );
}

#[test]
fn record_names_a_missing_topic() {
    let out = sluice(&[
        "record",
        "--brokers",
        &brokers(),
        "--topics",
        &unique("absent"),
        "--from",
        "0",
        "--timeout-secs",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `tags` (each to partition i % 2, stamped `base + i s`) in one
/// transaction, committed or aborted.
fn transaction(p: &BaseProducer, topic: &str, base: i64, records: &[(i64, &str)], commit: bool) {
    p.begin_transaction().expect("begin");
    for &(i, tag) in records {
        let value = format!(r#"{{"service":"s{i}","repository":"r","tag":"{tag}"}}"#);
        p.send(
            BaseRecord::<str, str>::to(topic)
                .payload(&value)
                .partition((i % 2) as i32)
                .timestamp(base + i * 1000),
        )
        .expect("queued");
    }
    if commit {
        p.commit_transaction(Duration::from_secs(30))
            .expect("commit");
    } else {
        p.flush(Duration::from_secs(30)).expect("flushed");
        p.abort_transaction(Duration::from_secs(30)).expect("abort");
    }
}

#[test]
fn record_ends_on_a_transactional_topic_and_leaves_aborted_records_out() {
    let topic = unique("rec-txn");
    create_topics(&[(&topic, 2)]);
    let base = now_ms() - 60_000;
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("rec-txn-producer"))
        .create()
        .expect("transactional producer");
    p.init_transactions(Duration::from_secs(30)).expect("init");
    transaction(
        &p,
        &topic,
        base,
        &[(0, "v0"), (1, "v1"), (2, "v2"), (3, "v3")],
        true,
    );
    transaction(&p, &topic, base, &[(4, "aborted"), (5, "aborted")], false);
    transaction(&p, &topic, base, &[(6, "v6"), (7, "v7")], true);
    // Each partition now ends with a commit marker, which read_committed never delivers.
    let dir = tempfile::tempdir().unwrap();
    let slice = dir.path().join("slice.jsonl");
    let mut child = sluice_cmd()
        .args(["record", "--brokers", &brokers(), "--topics", &topic])
        .args(["--from", &base.to_string(), "--timeout-secs", "10"])
        .arg("--output")
        .arg(&slice)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice record starts");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = status.expect("sluice record did not end within 60 s on a transactional topic");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let tags: Vec<(i64, String)> = std::fs::read_to_string(&slice)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["ts"].as_i64().unwrap() - base,
                v["value"]["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = [0, 1, 2, 3, 6, 7]
        .iter()
        .map(|i| (i * 1000, format!("v{i}")))
        .collect();
    assert_eq!(
        tags, expected,
        "committed records in time order, aborted ones left out"
    );
}

/// A commit waits for every record it sent (`drain`), so it sends what
/// `linger.ms` still holds back at once instead of waiting out the linger.
#[test]
fn a_drain_sends_at_once_what_linger_holds_back() {
    use sluice::kafka::run::producer::{drain, Deliveries, TxnProducer};
    let topic = unique("drain");
    create_topics(&[(&topic, 1)]);
    let linger = Duration::from_secs(5);
    let producer: TxnProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", linger.as_millis().to_string())
        .create_with_context(Deliveries::new(Vec::<String>::new()))
        .expect("producer");
    // The first delivery also waits for metadata and the producer id.
    producer
        .send(
            BaseRecord::<str, str>::to(&topic)
                .key("warm-up")
                .payload("v"),
        )
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("warmed up");
    for round in 0..3 {
        let key = format!("k{round}");
        producer
            .send(BaseRecord::<str, str>::to(&topic).key(&key).payload("v"))
            .expect("queued");
        let started = std::time::Instant::now();
        drain(&producer).expect("drained");
        let took = started.elapsed();
        assert!(
            took < linger / 2,
            "round {round}: the drain took {took:?}, as if it waited for the {linger:?} linger"
        );
        assert_eq!(producer.in_flight_count(), 0);
    }
}
