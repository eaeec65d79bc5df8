//! `sluice ingest` over real HTTP on 127.0.0.1 against a real broker:
//! every answer, the records and their headers, readiness, shutdown, and
//! nothing lost across a broker restart. Nothing is mocked.

#[path = "../src/cli/bench/http.rs"]
mod http;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use http::{Conn, Reply};
use support::*;

/// A running `sluice ingest`; killed when dropped.
struct Gateway {
    child: Child,
    address: String,
}

impl Gateway {
    fn start(config: &Path, brokers: &str, env: &[(&str, &str)]) -> Gateway {
        let mut child = sluice_cmd()
            .args(["ingest", "--brokers", brokers])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sluice ingest starts");
        let address = listening_address(&mut child, "http");
        Gateway { child, address }
    }

    fn conn(&self) -> Conn {
        Conn::connect(&self.address).expect("connect")
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.conn()
            .request("POST", path, headers, body.as_bytes())
            .expect("an answer")
    }

    fn get(&self, path: &str) -> Option<u16> {
        let mut conn = Conn::connect(&self.address).ok()?;
        conn.request("GET", path, &[], b"").ok().map(|r| r.status)
    }

    fn wait_for(&self, path: &str, status: u16, timeout: Duration) {
        let started = Instant::now();
        while self.get(path) != Some(status) {
            assert!(
                started.elapsed() < timeout,
                "{path} never answered {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn image(service: &str, tag: &str) -> String {
    format!(
        r#"{{"service":"{service}","repository":"registry.example.com/team/{service}","tag":"{tag}","environment":"prod"}}"#
    )
}

fn write_config(dir: &Path, kafka: &str, endpoints: &str) -> PathBuf {
    let path = dir.join("ingest.toml");
    let text = format!("[listen]\naddress = \"127.0.0.1:0\"\n\n[kafka]\n{kafka}\n\n{endpoints}");
    std::fs::write(&path, text).unwrap();
    path
}

fn endpoints(topic: &str) -> String {
    format!(
        r#"
[[endpoints]]
name = "images"
topic = "{topic}"
format = "json"
kind = "image"
max_body = 4096
delivery_header = "X-Request-Id"
auth = {{ type = "none" }}

[[endpoints]]
name = "signed"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "hmac", secret = {{ env = "T_HMAC" }} }}

[[endpoints]]
name = "generic-signed"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "hmac", header = "X-Signature", secret = {{ env = "T_HMAC" }} }}

[[endpoints]]
name = "bearer"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "bearer", token = {{ env = "T_TOKEN" }} }}

[[endpoints]]
name = "harbor-style"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "header", token = {{ env = "T_TOKEN" }} }}

[[endpoints]]
name = "basic"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "basic", username = "alertmanager", password = {{ env = "T_TOKEN" }} }}

[[endpoints]]
name = "pathsecret"
topic = "{topic}"
format = "json"
kind = "image"
auth = {{ type = "path", secret = {{ env = "T_PATH" }} }}

[[endpoints]]
name = "limited"
topic = "{topic}"
format = "json"
kind = "image"
rate_limit = {{ per_second = 1, burst = 2 }}
auth = {{ type = "none" }}

[[endpoints]]
name = "alertmanager"
topic = "{topic}"
format = "alertmanager"
auth = {{ type = "none" }}

[[endpoints]]
name = "distribution"
topic = "{topic}"
format = "distribution"
auth = {{ type = "none" }}
"#
    )
}

const SECRETS: &[(&str, &str)] = &[
    ("T_HMAC", "hmac-key"),
    ("T_TOKEN", "tok3n"),
    ("T_PATH", "p4th-s3cret"),
];

fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-key").unwrap();
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_tags(brokers: &str, topic: &str, expected: usize) -> Vec<Read> {
    read_topic(
        brokers,
        topic,
        "read_uncommitted",
        Duration::from_secs(2),
        Duration::from_secs(60),
        |r| r.len() >= expected,
    )
}

fn tag_of(read: &Read) -> String {
    serde_json::from_slice::<serde_json::Value>(&read.value)
        .ok()
        .and_then(|v| v["tag"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn every_answer_on_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ingest-answers");
    create_topics(&[(&topic, 3)]);
    let config = write_config(dir.path(), "", &endpoints(&topic));
    let gw = Gateway::start(&config, &brokers(), SECRETS);
    gw.wait_for("/readyz", 200, Duration::from_secs(30));
    assert_eq!(gw.get("/healthz"), Some(200));

    // Accepted, each authentication method right.
    let body = image("svc-a", "t-plain");
    let r = gw.post(
        "/hooks/images",
        &[JSON, ("X-Request-Id", "delivery-1")],
        &body,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let body = image("svc-b", "t-signed");
    let sig = format!("sha256={}", sign(&body));
    assert_eq!(
        gw.post(
            "/hooks/signed",
            &[JSON, ("X-Hub-Signature-256", &sig)],
            &body
        )
        .status,
        202
    );
    let body = image("svc-b", "t-generic");
    assert_eq!(
        gw.post(
            "/hooks/generic-signed",
            &[JSON, ("X-Signature", &sign(&body))],
            &body
        )
        .status,
        202
    );
    let body = image("svc-c", "t-bearer");
    assert_eq!(
        gw.post(
            "/hooks/bearer",
            &[JSON, ("Authorization", "Bearer tok3n")],
            &body
        )
        .status,
        202
    );
    let body = image("svc-c", "t-harbor");
    assert_eq!(
        gw.post(
            "/hooks/harbor-style",
            &[JSON, ("Authorization", "tok3n")],
            &body
        )
        .status,
        202
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alertmanager:tok3n")
    );
    let body = image("svc-d", "t-basic");
    assert_eq!(
        gw.post("/hooks/basic", &[JSON, ("Authorization", &basic)], &body)
            .status,
        202
    );
    let body = image("svc-d", "t-path");
    assert_eq!(
        gw.post("/hooks/pathsecret/p4th-s3cret", &[JSON], &body)
            .status,
        202
    );

    // 401, the same answer whatever failed.
    let body = image("svc-x", "t-denied");
    let wrong_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alertmanager:nope")
    );
    let denied = [
        gw.post(
            "/hooks/signed",
            &[JSON, ("X-Hub-Signature-256", "sha256=00")],
            &body,
        ),
        gw.post(
            "/hooks/signed",
            &[
                JSON,
                ("X-Hub-Signature-256", &format!("sha256={}", sign("other"))),
            ],
            &body,
        ),
        gw.post("/hooks/signed", &[JSON], &body),
        gw.post(
            "/hooks/generic-signed",
            &[JSON, ("X-Signature", "zz")],
            &body,
        ),
        gw.post(
            "/hooks/bearer",
            &[JSON, ("Authorization", "Bearer tok3")],
            &body,
        ),
        gw.post("/hooks/bearer", &[JSON], &body),
        gw.post(
            "/hooks/harbor-style",
            &[JSON, ("Authorization", "Bearer tok3n")],
            &body,
        ),
        gw.post(
            "/hooks/basic",
            &[JSON, ("Authorization", &wrong_basic)],
            &body,
        ),
        gw.post("/hooks/pathsecret/wrong", &[JSON], &body),
        gw.post("/hooks/pathsecret", &[JSON], &body),
    ];
    for (i, r) in denied.iter().enumerate() {
        assert_eq!(r.status, 401, "case {i}");
        assert_eq!(
            r.body, denied[0].body,
            "case {i}: the same body whatever failed"
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("tok3n") && !text.contains("p4th"), "{text}");
    }

    // 400 with the decoder's error, naming the field.
    let r = gw.post(
        "/hooks/images",
        &[JSON],
        r#"{"service":"svc-a","tag":"v1"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("repository"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(gw.post("/hooks/images", &[JSON], "not json").status, 400);

    // 413, 415, 404, 405, 429.
    let big = image("svc-a", &"x".repeat(5000));
    assert_eq!(gw.post("/hooks/images", &[JSON], &big).status, 413);
    assert_eq!(
        gw.post(
            "/hooks/images",
            &[("Content-Type", "text/plain")],
            &image("svc-a", "t")
        )
        .status,
        415
    );
    assert_eq!(
        gw.post("/hooks/nope", &[JSON], &image("svc-a", "t")).status,
        404
    );
    assert_eq!(
        gw.post("/hooks/images/extra", &[JSON], &image("svc-a", "t"))
            .status,
        404
    );
    assert_eq!(gw.post("/elsewhere", &[JSON], "{}").status, 404);
    let r = gw.conn().request("GET", "/hooks/images", &[], b"").unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let statuses: Vec<Reply> = (0..4)
        .map(|i| {
            gw.post(
                "/hooks/limited",
                &[JSON],
                &image("svc-l", &format!("t-limited-{i}")),
            )
        })
        .collect();
    assert_eq!(statuses[0].status, 202);
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429 past the burst");
    assert!(limited
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    let accepted_limited = statuses.iter().filter(|r| r.status == 202).count();

    // The 202'd records are in the topic, raw, keyed by service, with headers.
    let expected = 7 + accepted_limited;
    let reads = read_tags(&brokers(), &topic, expected);
    assert_eq!(reads.len(), expected, "exactly the accepted records");
    let plain = reads
        .iter()
        .find(|r| tag_of(r) == "t-plain")
        .expect("t-plain");
    assert_eq!(
        plain.value,
        image("svc-a", "t-plain").into_bytes(),
        "the exact bytes"
    );
    assert_eq!(plain.key.as_deref(), Some("svc-a"));
    assert_eq!(plain.headers["sluice-endpoint"], "images");
    assert_eq!(plain.headers["content-type"], "application/json");
    assert_eq!(plain.headers["sluice-delivery-id"], "delivery-1");
    let received: i64 = plain.headers["sluice-received-at"].parse().unwrap();
    assert!((received - now_ms()).abs() < 120_000 && plain.ts == received);
    let tags: Vec<String> = reads.iter().map(tag_of).collect();
    assert!(
        !tags.iter().any(|t| t == "t-denied"),
        "nothing denied was produced"
    );
}

/// Vendor payloads through their decoders.
#[test]
fn vendor_payloads_are_decoded_before_they_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ingest-vendor");
    create_topics(&[(&topic, 1)]);
    let config = write_config(dir.path(), "", &endpoints(&topic));
    let gw = Gateway::start(&config, &brokers(), SECRETS);
    gw.wait_for("/readyz", 200, Duration::from_secs(30));
    let alert = r#"{"version":"4","groupKey":"{}:{alertname=\"HighErrorRate\"}","truncatedAlerts":0,"status":"firing","receiver":"sluice","groupLabels":{"alertname":"HighErrorRate"},"commonLabels":{"alertname":"HighErrorRate","environment":"prod"},"commonAnnotations":{},"externalURL":"http://am:9093","alerts":[{"status":"firing","labels":{"alertname":"HighErrorRate","service":"checkout","severity":"critical","environment":"prod"},"annotations":{},"startsAt":"2026-11-26T12:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom/graph","fingerprint":"a1b2c3d4e5f60708"}]}"#;
    let r = gw.post("/hooks/alertmanager", &[JSON], alert);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // A pull only: every entry ignored. Still produced raw (so `sluice record`
    // sees all traffic) and answered 202 with what was ignored.
    let pull = r#"{"events":[{"id":"e1","timestamp":"2026-11-26T12:00:00Z","action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","repository":"team/checkout","tag":"v1"},"request":{"host":"registry.example.com"}}]}"#;
    let ct = (
        "Content-Type",
        "application/vnd.docker.distribution.events.v1+json",
    );
    let r = gw.post("/hooks/distribution", &[ct], pull);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["records"], 0);
    assert_eq!(
        gw.post("/hooks/alertmanager", &[JSON], r#"{"alerts":[{}]}"#)
            .status,
        400
    );
    let reads = read_tags(&brokers(), &topic, 2);
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0].key.as_deref(), Some("checkout"));
    assert_eq!(reads[1].key, None, "no record, no service, no key");
}

#[test]
fn a_bad_config_is_refused_with_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "",
        "[[endpoints]]\nname = \"x\"\ntopic = \"t\"\nformat = \"json\"\nkind = \"image\"\nauth = { type = \"bearer\", token = \"inline-secret\" }\n",
    );
    let out = sluice(&["ingest", "--check", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "ingest.toml:12:36: `endpoints[0].auth.token`: expected a table, found string"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("inline-secret"), "{stderr}");
}

/// SIGTERM with requests in flight (a 1.5 s linger holds each one until its
/// ack): every one is answered, the process exits 0, and what was answered
/// 202 is in the topic.
#[test]
fn sigterm_answers_what_is_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ingest-sigterm");
    create_topics(&[(&topic, 1)]);
    let kafka = "[kafka.properties]\n\"linger.ms\" = 1500\n";
    let config = write_config(dir.path(), kafka, &endpoints(&topic));
    let mut gw = Gateway::start(&config, &brokers(), SECRETS);
    gw.wait_for("/readyz", 200, Duration::from_secs(30));
    let address = gw.address.clone();
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let body = image("svc-s", &format!("t-term-{i}"));
                Conn::connect(&address)
                    .and_then(|mut c| c.request("POST", "/hooks/images", &[JSON], body.as_bytes()))
                    .map(|r| r.status)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let status = terminate(&mut gw.child);
    let answers: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    let accepted = answers.iter().filter(|a| matches!(a, Ok(202))).count();
    for a in &answers {
        assert!(
            matches!(a, Ok(202 | 503)),
            "every in-flight request is answered: {a:?}"
        );
    }
    assert!(accepted > 0, "{answers:?}");
    assert!(Conn::connect(&address).is_err(), "no longer accepting");
    let reads = read_tags(&brokers(), &topic, accepted);
    assert_eq!(reads.len(), accepted);
}

/// What one request of the flood got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Status(u16),
    /// Connection refused or dropped: the sender retries.
    NoAnswer,
}

const FLOOD: usize = 20_000;
const CLIENTS: usize = 64;

/// 20,000 webhooks from 64 clients while the broker is restarted: every 202
/// is in the topic exactly once; every other answer is one a sender retries.
/// `/readyz` goes unready while the broker is down and ready after.
#[test]
fn nothing_is_lost_across_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = OwnBroker::start(&dir.path().join("kafka"), 32_000, "");
    let topic = unique("ingest-flood");
    create_topics_on(&broker.address, &[(&topic, 3)]);
    let config = write_config(dir.path(), "delivery_timeout = \"4s\"", &endpoints(&topic));
    let gw = Gateway::start(&config, &broker.address, SECRETS);
    gw.wait_for("/readyz", 200, Duration::from_secs(30));

    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(vec![None; FLOOD]));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, outcomes, address) = (next.clone(), outcomes.clone(), gw.address.clone());
            std::thread::spawn(move || flood_client(&address, &next, &outcomes))
        })
        .collect();
    let wait_sent = |n: usize| {
        while next.load(Ordering::Relaxed) < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_sent(FLOOD / 3);
    broker.script(&["stop"]);
    gw.wait_for("/readyz", 503, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    broker.script(&["start", "--keep-data"]);
    gw.wait_for("/readyz", 200, Duration::from_secs(60));
    for c in clients {
        c.join().unwrap();
    }

    let outcomes: Vec<Outcome> = outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.expect("every request was sent"))
        .collect();
    let mut tally: HashMap<Outcome, usize> = HashMap::new();
    for o in &outcomes {
        *tally.entry(*o).or_default() += 1;
    }
    eprintln!("outcomes: {tally:?}");
    for (o, n) in &tally {
        assert!(
            matches!(o, Outcome::Status(202 | 429 | 503) | Outcome::NoAnswer),
            "{n} requests answered {o:?}, which a sender does not retry"
        );
    }
    let accepted = tally.get(&Outcome::Status(202)).copied().unwrap_or(0);
    assert!(accepted > FLOOD / 2, "most requests accepted: {tally:?}");
    assert!(tally.len() > 1, "the restart was felt: {tally:?}");

    let reads = read_tags(&broker.address, &topic, accepted);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &reads {
        *seen.entry(tag_of(r)).or_default() += 1;
    }
    let mut lost = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let n = seen.get(&format!("f-{i}")).copied().unwrap_or(0);
        if *o == Outcome::Status(202) && n != 1 {
            lost.push((i, n));
        }
    }
    assert!(
        lost.is_empty(),
        "202'd but not in the topic exactly once (id, count): {:?}",
        &lost[..lost.len().min(20)]
    );
}

fn flood_client(address: &str, next: &AtomicUsize, outcomes: &Mutex<Vec<Option<Outcome>>>) {
    let mut conn: Option<Conn> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= FLOOD {
            return;
        }
        let body = image(&format!("svc-{}", i % 50), &format!("f-{i}"));
        if conn.is_none() {
            conn = Conn::connect(address).ok();
        }
        let outcome = match conn
            .as_mut()
            .map(|c| c.request("POST", "/hooks/images", &[JSON], body.as_bytes()))
        {
            Some(Ok(reply)) => Outcome::Status(reply.status),
            _ => {
                conn = None;
                Outcome::NoAnswer
            }
        };
        if conn.as_ref().is_some_and(Conn::is_closed) {
            conn = None;
        }
        outcomes.lock().unwrap()[i] = Some(outcome);
    }
}

/// A record larger than its topic takes can never be stored: 413, not a 503
/// that the sender would retry for ever.
#[test]
fn a_record_kafka_can_never_take_is_not_answered_retry_later() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ingest-small");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2048");
    for r in futures_executor::block_on(admin.create_topics([&new], &AdminOptions::new())).unwrap()
    {
        r.unwrap();
    }
    let config = write_config(dir.path(), "", &endpoints(&topic));
    let gw = Gateway::start(&config, &brokers(), SECRETS);
    gw.wait_for("/readyz", 200, Duration::from_secs(30));
    // Within the endpoint's max_body (4096), beyond the topic's 2048 bytes.
    let big = image("big", &format!("v{}", "1".repeat(100))).replace(
        "\"prod\"",
        &format!("\"prod\",\"pad\":\"{}\"", "x".repeat(3000)),
    );
    assert!(big.len() < 4096 && big.len() > 2048);
    let r = gw.post("/hooks/images", &[JSON], &big);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        gw.post("/hooks/images", &[JSON], &image("small", "v1"))
            .status,
        202
    );
}

/// TLS with rustls: a request over HTTPS (the client checks the server's
/// certificate) is answered 202 and stored; plain HTTP to the TLS port is
/// not served; SIGTERM still ends the gateway cleanly. The certificate is
/// made by Debian's `openssl` (installed by `.ci/setup`).
#[test]
fn tls_serves_https_only_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let topic = unique("ingest-tls");
    create_topics(&[(&topic, 1)]);
    let path = dir.path().join("ingest.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[kafka]\n\n{}",
            cert.display(),
            key.display(),
            endpoints(&topic)
        ),
    )
    .unwrap();
    let mut child = sluice_cmd()
        .args(["ingest", "--brokers", &brokers()])
        .arg(&path)
        .envs(SECRETS.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let address = listening_address(&mut child, "https");
    let port = address.rsplit(':').next().unwrap().to_owned();
    let body = image("secure", "v1");
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "--cacert",
        ])
        .arg(&cert)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg(format!("https://localhost:{port}/hooks/images"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "202",
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let plain = Conn::connect(&address)
        .and_then(|mut c| c.request("POST", "/hooks/images", &[JSON], body.as_bytes()));
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status != 202),
        "plain HTTP is not served"
    );
    let stored = read_topic(
        &brokers(),
        &topic,
        "read_uncommitted",
        Duration::from_secs(1),
        Duration::from_secs(20),
        |r| !r.is_empty(),
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value, body.as_bytes());
    assert!(terminate(&mut child).success());
}
