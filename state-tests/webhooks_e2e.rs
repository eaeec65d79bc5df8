//! End to end on a real broker and a real git remote: Harbor and
//! Alertmanager webhooks posted over HTTP to `sluice ingest`, `sluice run` on
//! a topology reading the vendors' own formats, intents, `sluice commit`,
//! and commits on a bare repository. A firing critical alert, posted as
//! Alertmanager sends it, holds the deploy; its resolve releases it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const HARBOR_TOKEN: &str = "harbor-e2e-token";
const AM_PASSWORD: &str = "alertmanager-e2e-password";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository with `envs/prod/api.yaml` deploying `image`.
fn deploy_repo(dir: &Path, image: &str) -> PathBuf {
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
    );
    git(dir, &["clone", "--quiet", "remote.git", "seed"]);
    let seed = dir.join("seed");
    std::fs::create_dir_all(seed.join("envs/prod")).unwrap();
    std::fs::write(
        seed.join("envs/prod/api.yaml"),
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  template:\n    spec:\n      containers:\n        - name: api\n          image: {image} # {{\"sluice\": \"api\"}}\n"),
    )
    .unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "seed"]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    dir.join("remote.git")
}

fn deployed_image(bare: &Path) -> String {
    let file = git(bare, &["show", "main:envs/prod/api.yaml"]);
    let line = file.lines().find(|l| l.contains("image:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 POST; returns the status code.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("ingest listens");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Child {
    sluice_cmd()
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("sluice starts")
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

fn harbor_push(tag: &str, digest: &str) -> String {
    format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1767225600,"operator":"ci","event_data":{{"resources":[{{"digest":"{digest}","tag":"{tag}","resource_url":"harbor.example.com/team/api:{tag}"}}],"repository":{{"date_created":1767225600,"name":"api","namespace":"team","repo_full_name":"team/api","repo_type":"private"}}}}}}"#
    )
}

fn alertmanager(status: &str) -> String {
    let ends = if status == "firing" {
        "0001-01-01T00:00:00Z"
    } else {
        "2026-01-01T00:10:00Z"
    };
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{service=\"api\"}}","truncatedAlerts":0,"status":"{status}","receiver":"sluice","groupLabels":{{"service":"api"}},"commonLabels":{{"alertname":"HighErrorRate","service":"api","severity":"critical","environment":"prod"}},"commonAnnotations":{{}},"externalURL":"http://alertmanager:9093","alerts":[{{"status":"{status}","labels":{{"alertname":"HighErrorRate","service":"api","severity":"critical","environment":"prod"}},"annotations":{{"summary":"errors"}},"startsAt":"2026-01-01T00:00:00Z","endsAt":"{ends}","generatorURL":"http://prometheus:9090/graph","fingerprint":"e2e0000000000001"}}]}}"#
    )
}

/// Intents read so far from `topic`, as (action, image).
fn intents(topic: &str) -> Vec<(String, String)> {
    read_topic(
        &brokers(),
        topic,
        "read_committed",
        Duration::from_millis(500),
        Duration::from_secs(5),
        |_| false,
    )
    .iter()
    .map(|r| {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        (
            v["action"].as_str().unwrap().to_owned(),
            v["image"].as_str().unwrap().to_owned(),
        )
    })
    .collect()
}

#[test]
fn webhooks_to_commits_with_an_alert_holding_and_releasing_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = unique("e2e");
    let (harbor_topic, am_topic, intents_topic) = (
        format!("{app}-harbor"),
        format!("{app}-am"),
        format!("{app}-intents"),
    );
    create_topics(&[(&harbor_topic, 2), (&am_topic, 2), (&intents_topic, 2)]);
    let (v1, v2, v3) = (digest(1), digest(2), digest(3));
    let image = |tag: &str, digest: &str| format!("harbor.example.com/team/api:{tag}@{digest}");
    let bare = deploy_repo(d, "harbor.example.com/team/api:v0");

    let port = free_port();
    let ingest_config = d.join("ingest.toml");
    std::fs::write(
        &ingest_config,
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
             [[endpoints]]\nname = \"harbor\"\ntopic = \"{harbor_topic}\"\nformat = \"harbor\"\n\
             auth = {{ type = \"header\", token = {{ env = \"HARBOR_TOKEN\" }} }}\n\n\
             [[endpoints]]\nname = \"alertmanager\"\ntopic = \"{am_topic}\"\nformat = \"alertmanager\"\n\
             auth = {{ type = \"basic\", username = \"alertmanager\", password = {{ env = \"AM_PASSWORD\" }} }}\n",
            brokers = brokers()
        ),
    )
    .unwrap();
    let topology = d.join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            "[app]\nid = \"{app}\"\n\n\
             [[sources]]\nname = \"images\"\ntopic = \"{harbor_topic}\"\nkind = \"image\"\nformat = \"harbor\"\nenvironment = \"prod\"\n\n\
             [[sources]]\nname = \"alerts\"\ntopic = \"{am_topic}\"\nkind = \"alert\"\nformat = \"alertmanager\"\n\n\
             [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nrollback_on = []\n\n\
             [[sinks]]\nname = \"intents\"\ninput = \"gate\"\ntopic = \"{intents_topic}\"\n"
        ),
    )
    .unwrap();
    let commit_config = d.join("commit.toml");
    std::fs::write(
        &commit_config,
        format!(
            "[repository]\nurl = \"file://{}\"\n\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n\n\
             [batch]\nwindow = \"500ms\"\n\n\
             [kafka]\ntopic = \"{intents_topic}\"\ngroup = \"{app}-committer\"\ndead_letter_topic = \"{intents_topic}.dead\"\n\n\
             [[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
            bare.display()
        ),
    )
    .unwrap();

    let secrets = [("HARBOR_TOKEN", HARBOR_TOKEN), ("AM_PASSWORD", AM_PASSWORD)];
    let mut ingest = spawn(
        &["ingest", ingest_config.to_str().unwrap()],
        &d.join("ingest.log"),
        &secrets,
    );
    let mut run = spawn_run(&topology, &d.join("state"), &d.join("run.log"), &[]);
    let mut commit = spawn(
        &[
            "commit",
            commit_config.to_str().unwrap(),
            "--brokers",
            &brokers(),
            "--work-dir",
            d.join("work").to_str().unwrap(),
        ],
        &d.join("commit.log"),
        &[],
    );
    let logs = || {
        ["ingest.log", "run.log", "commit.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(d.join(f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let harbor_auth = [("Authorization", HARBOR_TOKEN)];
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("alertmanager:{AM_PASSWORD}"))
    );
    let am_auth = [("Authorization", basic.as_str())];
    wait_until("ingest to listen", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // A push with a wrong token is refused and never reaches the topic.
    assert_eq!(
        post(
            port,
            "/hooks/harbor",
            &[("Authorization", "wrong")],
            &harbor_push("v9", &digest(9))
        ),
        401
    );

    // 1. v1 pushed: deployed.
    assert_eq!(
        post(port, "/hooks/harbor", &harbor_auth, &harbor_push("v1", &v1)),
        202
    );
    wait_until("v1 on the remote", Duration::from_secs(90), || {
        deployed_image(&bare) == image("v1", &v1)
    });

    // 2. A critical alert fires, then v2 is pushed: held, the remote keeps v1.
    assert_eq!(
        post(
            port,
            "/hooks/alertmanager",
            &am_auth,
            &alertmanager("firing")
        ),
        202
    );
    // The alert must be in the gate's state before the image: the run takes
    // records as they come, and this gives it ample time.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        post(port, "/hooks/harbor", &harbor_auth, &harbor_push("v2", &v2)),
        202
    );
    wait_until("the hold intent", Duration::from_secs(60), || {
        intents(&intents_topic).contains(&("hold".into(), image("v2", &v2)))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        deployed_image(&bare),
        image("v1", &v1),
        "held while the alert fires\n{}",
        logs()
    );

    // 3. The alert resolves: the parked v2 is released and committed.
    assert_eq!(
        post(
            port,
            "/hooks/alertmanager",
            &am_auth,
            &alertmanager("resolved")
        ),
        202
    );
    wait_until("v2 on the remote", Duration::from_secs(90), || {
        deployed_image(&bare) == image("v2", &v2)
    });

    // 4. And a later push goes straight through.
    assert_eq!(
        post(port, "/hooks/harbor", &harbor_auth, &harbor_push("v3", &v3)),
        202
    );
    wait_until("v3 on the remote", Duration::from_secs(90), || {
        deployed_image(&bare) == image("v3", &v3)
    });

    let got = intents(&intents_topic);
    let actions: Vec<&str> = got.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["deploy", "hold", "deploy", "deploy"],
        "{got:?}\n{}",
        logs()
    );
    let log = git(&bare, &["log", "--format=%B", "main"]);
    assert!(!log.contains(HARBOR_TOKEN) && !log.contains(AM_PASSWORD));
    for child in [&mut ingest, &mut run, &mut commit] {
        assert!(terminate(child).success(), "{}", logs());
    }
    let all = logs();
    assert!(
        !all.contains(HARBOR_TOKEN) && !all.contains(AM_PASSWORD),
        "no secret in any log"
    );
}
