//! `sluice run` against a broker that authenticates and authorizes: TLS plus
//! SCRAM-SHA-512 for the clients, KRaft's StandardAuthorizer with
//! `allow.everyone.if.no.acl.found=false`. This file starts that broker
//! itself through `.ci/kafka-local` (one for all its tests, stopped when the
//! test process exits); its PLAINTEXT port is the super user's, for set-up.
//! ACLs are added and removed with Kafka's own AclCommand (the command line
//! `kafka-acls.sh` runs), through `.ci/kafka-local acls`. `sluice ingest`
//! gets the same check: exactly its printed ACLs, and a refusal that names
//! the one missing.

#[path = "../src/cli/bench/http.rs"]
mod http;
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::ClientConfig;

use support::*;

/// The run's SCRAM password: it must never appear in anything Sluice prints.
const SENTINEL: &str = "S3ntinel-pa55word-7d1c";
const PRINCIPAL: &str = "User:sluice";

struct SecureBroker {
    env: Vec<(String, String)>,
    /// PLAINTEXT: User:ANONYMOUS, a super user (set-up and checks only).
    plain: String,
    /// SASL_SSL: what the runs under test use.
    secure: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

static BROKER: OnceLock<SecureBroker> = OnceLock::new();

extern "C" fn stop_broker() {
    if let Some(b) = BROKER.get() {
        let _ = b.script(&["stop"]);
    }
}

fn broker() -> &'static SecureBroker {
    BROKER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // Ports of their own per test process, away from the other tests' brokers.
        let port = 29_692 + (std::process::id() % 50) as u16 * 8;
        let kdir = dir.path().join("kafka");
        let env: Vec<(String, String)> = [
            ("SLUICE_KAFKA_PORT", port.to_string()),
            ("SLUICE_KAFKA_CONTROLLER_PORT", (port + 1).to_string()),
            ("SLUICE_KAFKA_SASL_SSL_PORT", (port + 2).to_string()),
            ("SLUICE_KAFKA_DIR", kdir.display().to_string()),
            ("SLUICE_KAFKA_SCRAM_USERS", format!("sluice:{SENTINEL}")),
            ("SLUICE_KAFKA_AUTHORIZER", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let broker = SecureBroker {
            env,
            plain: format!("127.0.0.1:{port}"),
            secure: format!("127.0.0.1:{}", port + 2),
            ca: kdir.join("tls/ca.pem"),
            _dir: dir,
        };
        let out = broker.script(&["start"]);
        assert!(out.status.success(), "kafka-local start: {}", text(&out));
        // SAFETY: registers a plain function; it runs once, at process exit.
        unsafe { libc::atexit(stop_broker) };
        broker
    })
}

impl SecureBroker {
    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/kafka-local"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("kafka-local runs")
    }

    /// Runs AclCommand with `args` (everything after `kafka-acls.sh
    /// --bootstrap-server X`) against this broker, as its super user.
    fn acls(&self, args: &[String]) {
        let mut all = vec!["acls"];
        all.extend(args.iter().map(String::as_str));
        let out = self.script(&all);
        assert!(out.status.success(), "acls {args:?}: {}", text(&out));
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One app: an input, a stateful operator (so changelogs), a sink, and a
/// client config for TLS + SCRAM with the password from the environment.
struct App {
    dir: tempfile::TempDir,
    app: String,
    input: String,
    sink: String,
    topology: PathBuf,
}

impl App {
    fn new(name: &str, debug: bool) -> App {
        let b = broker();
        let dir = tempfile::tempdir().unwrap();
        let app = unique(name);
        let (input, sink) = (format!("in-{app}"), format!("out-{app}"));
        create_topics_on(&b.plain, &[(&input, 1)]);
        let debug = if debug {
            "\"debug\" = \"security,broker,protocol,conf\"\n"
        } else {
            ""
        };
        let topology = dir.path().join("t.toml");
        std::fs::write(
            &topology,
            format!(
                "[app]\nid = \"{app}\"\n\
                 [[sources]]\nname = \"images\"\ntopic = \"{input}\"\nkind = \"image\"\n\
                 [[operators]]\nname = \"dedup\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\"]\nttl = \"1h\"\n\
                 [[sinks]]\nname = \"out\"\ninput = \"dedup\"\ntopic = \"{sink}\"\n\
                 [kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
                 \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"sluice\"\n\
                 \"ssl.ca.location\" = \"{}\"\n{debug}\
                 [kafka.secrets]\n\"sasl.password\" = {{ env = \"SLUICE_TEST_SASL_PASSWORD\" }}\n",
                b.secure,
                b.ca.display()
            ),
        )
        .unwrap();
        App {
            dir,
            app,
            input,
            sink,
            topology,
        }
    }

    fn acls_json(&self) -> Vec<serde_json::Value> {
        let out = sluice_cmd()
            .args(["acls", "--json", "--principal", PRINCIPAL])
            .arg(&self.topology)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["principal"], PRINCIPAL);
        v["acls"].as_array().unwrap().clone()
    }

    /// Adds the ACLs by running the command lines `sluice acls` prints.
    fn grant_printed_acls(&self) {
        let out = sluice_cmd()
            .args(["acls", "--principal", PRINCIPAL])
            .arg(&self.topology)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let b = broker();
        for line in printed.lines().filter(|l| !l.starts_with('#')) {
            let words: Vec<String> = line.split(' ').map(str::to_owned).collect();
            assert_eq!(
                words[..3],
                ["kafka-acls.sh", "--bootstrap-server", &b.secure],
                "{line}"
            );
            // Names in this test need no shell quoting.
            assert!(!line.contains('\''), "{line}");
            b.acls(&words[3..]);
        }
        settle_acls();
    }

    /// Input the run must read: a record for a new service (it passes
    /// dedup and reaches the sink and the changelog) and one that is not
    /// JSON (it becomes a dead letter).
    fn produce_input(&self, service: &str) {
        let p = producer_on(&broker().plain);
        let value = format!(r#"{{"service":"{service}","repository":"r/{service}","tag":"v1"}}"#);
        for v in [value.as_str(), "not json"] {
            p.send(
                BaseRecord::<str, str>::to(&self.input)
                    .key(service)
                    .payload(v),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }

    /// `sluice run` until it exits (or `limit` passes: then it is killed
    /// and `None` is returned), with everything it printed.
    fn run(&self, state: &str, verbosity: &str, limit: Duration) -> (Option<bool>, String) {
        let log = self.dir.path().join(format!("{state}.log"));
        let mut child = sluice_cmd()
            .env("SLUICE_TEST_SASL_PASSWORD", SENTINEL)
            .env(
                "SLUICE_LOG",
                if verbosity == "-vvv" { "trace" } else { "info" },
            )
            .args([verbosity, "run"])
            .arg(&self.topology)
            .args([
                "--exit-after-idle",
                "2s",
                "--commit-interval-ms",
                "200",
                "--state-dir",
            ])
            .arg(self.dir.path().join(state))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s.success());
            }
            if started.elapsed() > limit {
                kill9(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let printed = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        (status, printed)
    }
}

/// The authorizer takes ACL changes from the metadata log a moment after
/// AclCommand returns.
fn settle_acls() {
    std::thread::sleep(Duration::from_millis(1500));
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(2500);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn read_all(topic: &str, want: usize) -> Vec<Read> {
    read_topic(
        &broker().plain,
        topic,
        "read_committed",
        Duration::from_millis(500),
        Duration::from_secs(30),
        |r| r.len() >= want,
    )
}

/// Deletes the topics an ACL on topic `name` (literal or prefixed) covers,
/// so that the run has to create them again.
fn delete_covered_topics(name: &str, prefixed: bool) {
    let b = broker();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &b.plain)
        .create()
        .unwrap();
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let doomed: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| {
            if prefixed {
                t.starts_with(name)
            } else {
                t == name
            }
        })
        .collect();
    if doomed.is_empty() {
        return;
    }
    let names: Vec<&str> = doomed.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in futures_executor::block_on(admin.delete_topics(&names, &opts)).unwrap() {
        r.unwrap();
    }
    // Deleted topics linger in metadata for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        if !md
            .topics()
            .iter()
            .any(|t| doomed.iter().any(|d| d == t.name()))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn acl_args(acl: &serde_json::Value) -> Vec<String> {
    let s = |k: &str| acl[k].as_str().unwrap().to_owned();
    let mut args = vec![
        "--allow-principal".to_owned(),
        PRINCIPAL.to_owned(),
        "--operation".to_owned(),
        s("operation"),
    ];
    match s("resource_type").as_str() {
        "topic" => args.extend(["--topic".to_owned(), s("resource_name")]),
        "group" => args.extend(["--group".to_owned(), s("resource_name")]),
        "transactional_id" => args.extend(["--transactional-id".to_owned(), s("resource_name")]),
        "cluster" => args.push("--cluster".to_owned()),
        other => panic!("unknown resource type {other}"),
    }
    if s("pattern_type") == "prefixed" {
        args.extend(["--resource-pattern-type".to_owned(), "prefixed".to_owned()]);
    }
    args
}

fn describe(acl: &serde_json::Value) -> String {
    format!(
        "{} on {} {} `{}`",
        acl["operation"].as_str().unwrap(),
        acl["pattern_type"].as_str().unwrap(),
        acl["resource_type"].as_str().unwrap(),
        acl["resource_name"].as_str().unwrap()
    )
}

#[test]
fn a_run_over_tls_and_scram_needs_exactly_the_acls_sluice_acls_prints() {
    let app = App::new("acl", false);
    let acls = app.acls_json();
    app.grant_printed_acls();

    // All of them: the run works, over TLS and SCRAM.
    app.produce_input("svc-0");
    let (status, printed) = app.run("state-full", "-v", Duration::from_secs(120));
    assert_eq!(status, Some(true), "{}", tail(&printed));
    assert!(!printed.contains(SENTINEL), "the password was printed");
    assert_eq!(
        read_all(&app.sink, 1).len(),
        1,
        "the record reached the sink"
    );
    let letters = read_all(&format!("{}.dead-letter", app.app), 1);
    assert_eq!(letters.len(), 1, "the bad record became a dead letter");

    // Any one missing: the run fails, naming the operation and the
    // resource. Each run starts on an empty state directory, so it restores
    // from the changelogs, and has new input to process. The Create cases
    // go last: their topics are deleted first, so that the run must create
    // them, and later runs find no data left to restore.
    let mut order: Vec<&serde_json::Value> =
        acls.iter().filter(|a| a["operation"] != "Create").collect();
    order.extend(acls.iter().filter(|a| a["operation"] == "Create"));
    let mut wrong = Vec::new();
    for (i, acl) in order.into_iter().enumerate() {
        let what = describe(acl);
        let args = acl_args(acl);
        let mut remove = vec!["--remove".to_owned(), "--force".to_owned()];
        remove.extend(args.iter().cloned());
        broker().acls(&remove);
        if acl["operation"] == "Create" {
            let name = acl["resource_name"].as_str().unwrap();
            delete_covered_topics(name, acl["pattern_type"] == "prefixed");
        }
        settle_acls();
        app.produce_input(&format!("svc-{}", i + 1));
        let started = Instant::now();
        let (status, printed) = app.run(&format!("state-{i}"), "-v", Duration::from_secs(60));
        let name = acl["resource_name"].as_str().unwrap();
        let operation = acl["operation"].as_str().unwrap();
        let error = printed
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("")
            .to_owned();
        match status {
            None => wrong.push(format!(
                "without {what}: the run did not fail within 60 s\n{}",
                tail(&printed)
            )),
            Some(true) => wrong.push(format!(
                "without {what}: the run succeeded, so the ACL is not needed"
            )),
            Some(false) if !(error.contains(operation) && error.contains(name)) => {
                wrong.push(format!(
                    "without {what}: the error does not name it: {error}\n{}",
                    tail(&printed)
                ))
            }
            Some(false) => eprintln!("without {what}: failed in {:?}: {error}", started.elapsed()),
        }
        if printed.contains(SENTINEL) {
            wrong.push(format!("without {what}: the password was printed"));
        }
        let mut add = vec!["--add".to_owned()];
        add.extend(args);
        broker().acls(&add);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The live tests' sentinel check, over TLS and SCRAM: everything logged
/// at -vvv with librdkafka's security, protocol and config debugging on
/// holds no password, whether it is right or wrong.
#[test]
fn a_secret_never_reaches_the_logs_over_tls_and_scram() {
    let app = App::new("secret", true);
    app.grant_printed_acls();
    app.produce_input("web");
    let (status, printed) = app.run("state-good", "-vvv", Duration::from_secs(120));
    assert_eq!(status, Some(true), "{}", tail(&printed));
    assert!(
        printed.contains("SASL") && printed.contains("DEBUG") && printed.contains("SSL"),
        "librdkafka's debug log should be on"
    );
    assert!(!printed.contains(SENTINEL), "the password was printed");
    assert_eq!(read_all(&app.sink, 1).len(), 1, "the record went through");

    let wrong = format!("{SENTINEL}-wrong");
    let bad = sluice_cmd()
        .env("SLUICE_TEST_SASL_PASSWORD", &wrong)
        .env("SLUICE_LOG", "trace")
        .args(["-vvv", "run"])
        .arg(&app.topology)
        .arg("--state-dir")
        .arg(app.dir.path().join("state-bad"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let printed = text(&bad);
    assert!(!bad.status.success());
    assert!(
        printed.contains("error: cannot fetch cluster metadata"),
        "{}",
        tail(&printed)
    );
    assert!(!printed.contains(SENTINEL), "a password was printed");
}

/// A gateway config for TLS + SCRAM with one unauthenticated endpoint
/// `/hooks/images` writing to `topic`.
fn gateway_config(dir: &std::path::Path, topic: &str) -> PathBuf {
    let b = broker();
    let path = dir.join("ingest.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\
             [kafka]\nbrokers = \"{}\"\ndelivery_timeout = \"10s\"\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
             \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"sluice\"\n\
             \"ssl.ca.location\" = \"{}\"\n\
             [kafka.secrets]\n\"sasl.password\" = {{ env = \"SLUICE_TEST_SASL_PASSWORD\" }}\n\
             [[endpoints]]\nname = \"images\"\ntopic = \"{topic}\"\nformat = \"json\"\nkind = \"image\"\n\
             auth = {{ type = \"none\" }}\n",
            b.secure,
            b.ca.display()
        ),
    )
    .unwrap();
    path
}

/// `sluice ingest` on `config`; returns the child (stderr to `log`) and its address.
fn start_gateway(config: &std::path::Path, log: &std::path::Path) -> (std::process::Child, String) {
    let mut child = sluice_cmd()
        .env("SLUICE_TEST_SASL_PASSWORD", SENTINEL)
        .env("SLUICE_LOG", "debug")
        .args(["-vv", "ingest"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let address = listening_address(&mut child, "http");
    (child, address)
}

fn post_image(address: &str, tag: &str) -> http::Reply {
    let body = format!(r#"{{"service":"web","repository":"r/web","tag":"{tag}"}}"#);
    http::Conn::connect(address)
        .unwrap()
        .request(
            "POST",
            "/hooks/images",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap()
}

/// `/readyz`'s status once it has settled on `want` (or the last one seen).
fn readiness(address: &str, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http::Conn::connect(address)
            .and_then(|mut c| c.request("GET", "/readyz", &[], b""))
            .map_or(0, |r| r.status);
        if status == want || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_gateway_over_tls_and_scram_needs_exactly_the_acls_sluice_acls_prints() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("hooks-{}", unique("gw"));
    create_topics_on(&b.plain, &[(&topic, 1)]);
    let config = gateway_config(dir.path(), &topic);
    let out = sluice_cmd()
        .args(["acls", "--json", "--principal", PRINCIPAL, "--ingest"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acls = v["acls"].as_array().unwrap();
    let listed: Vec<String> = acls.iter().map(describe).collect();
    assert_eq!(listed, [format!("Write on literal topic `{topic}`")]);
    let args = acl_args(&acls[0]);
    let mut add = vec!["--add".to_owned()];
    add.extend(args.iter().cloned());
    b.acls(&add);
    settle_acls();

    // With it: ready, and a webhook is stored before it is answered 202.
    let log = dir.path().join("granted.log");
    let (mut gateway, address) = start_gateway(&config, &log);
    let ready = readiness(&address, 200);
    let reply = post_image(&address, "v1");
    kill9(&mut gateway);
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ready, 200, "{}", tail(&printed));
    assert_eq!(reply.status, 202, "{}", tail(&printed));
    assert_eq!(
        read_all(&topic, 1).len(),
        1,
        "the webhook reached the topic"
    );
    assert!(!printed.contains(SENTINEL), "the password was printed");

    // Without it: unready and a 500 (never a 202, nor a 503 to retry for
    // ever), both logged naming the operation and the topic.
    let mut remove = vec!["--remove".to_owned(), "--force".to_owned()];
    remove.extend(args);
    b.acls(&remove);
    settle_acls();
    let log = dir.path().join("refused.log");
    let (mut gateway, address) = start_gateway(&config, &log);
    let reply = post_image(&address, "v2");
    let named = format!("refused Write on topic `{topic}`");
    // The probe runs beside the requests: wait for its verdict in the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let probed = |printed: &str| {
        printed
            .lines()
            .any(|l| l.contains(&named) && l.contains("not ready"))
    };
    while !probed(&std::fs::read_to_string(&log).unwrap_or_default()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let ready = readiness(&address, 503);
    kill9(&mut gateway);
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(reply.status, 500, "{}", tail(&printed));
    assert!(
        probed(&printed),
        "the readiness probe names the refusal:\n{}",
        tail(&printed)
    );
    assert_eq!(ready, 503, "{}", tail(&printed));
    assert!(
        printed
            .lines()
            .any(|l| l.contains(&named) && l.contains("answering 500")),
        "the answer's log names the refusal:\n{}",
        tail(&printed)
    );
    assert!(!printed.contains(SENTINEL), "the password was printed");
    assert_eq!(read_all(&topic, 2).len(), 1, "nothing more was stored");
}
