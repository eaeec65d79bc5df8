//! The closed loop end to end, on the real broker and a real git remote:
//! images → two `sluice run` instances → intents → `sluice commit` →
//! commits; Flux's statuses posted through `sluice ingest` drive a failed
//! sync to two retries and a rollback, a degraded rollout to a rollback,
//! and a healthy staging rollout to a promotion to prod after its soak;
//! `sluice control freeze` holds a prod deploy and `unfreeze` releases it;
//! and the state query answers the same from both instances.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};
use support::metrics::{http_get, metrics_address};
use support::pipeline::*;
use support::*;

const TOKEN: &str = "closed-loop-flux-token";

struct Loop {
    dir: tempfile::TempDir,
    images: String,
    intents: String,
    bare: PathBuf,
    port: u16,
}

impl Loop {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A bare repository deploying api, web and worker in dev, staging and prod.
fn repo(dir: &Path) -> PathBuf {
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
    );
    git(dir, &["clone", "--quiet", "remote.git", "seed"]);
    let seed = dir.join("seed");
    for env in ["dev", "staging", "prod"] {
        std::fs::create_dir_all(seed.join(format!("envs/{env}"))).unwrap();
        for svc in ["api", "web", "worker"] {
            std::fs::write(
                seed.join(format!("envs/{env}/{svc}.yaml")),
                format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {svc}\nspec:\n  template:\n    spec:\n      containers:\n        - name: {svc}\n          image: reg.example.com/{svc}:v0 # {{\"sluice\": \"{svc}\"}}\n"),
            )
            .unwrap();
        }
    }
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "seed"]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    dir.join("remote.git")
}

fn setup() -> Loop {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = unique("loop");
    let (images, flux, control, intents) = (
        format!("{app}-images"),
        format!("{app}-flux"),
        format!("{app}-control"),
        format!("{app}-intents"),
    );
    let reports = format!("{intents}.reports");
    create_topics(&[
        (&images, 2),
        (&flux, 2),
        (&control, 2),
        (&intents, 2),
        (&reports, 1),
    ]);
    let bare = repo(d);
    let port = free_port();
    std::fs::write(
        d.join("ingest.toml"),
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
             [[endpoints]]\nname = \"flux\"\ntopic = \"{flux}\"\nformat = \"flux\"\n\
             auth = {{ type = \"header\", token = {{ env = \"FLUX_TOKEN\" }} }}\n",
            brokers = brokers()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("topology.toml"),
        format!(
            "[app]\nid = \"{app}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
             [[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\n\n\
             [[sources]]\nname = \"alerts\"\ntopic = \"{app}-alerts\"\nkind = \"alert\"\n\n\
             [[sources]]\nname = \"statuses\"\ntopic = \"{flux}\"\nkind = \"deployment\"\nformat = \"flux\"\n\n\
             [[sources]]\nname = \"controls\"\ntopic = \"{control}\"\nkind = \"control\"\n\n\
             [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"images\"\nalerts = \"alerts\"\n\
             status = \"statuses\"\ncontrol = \"controls\"\nblock_on = [\"critical\"]\nrollback_on = [\"critical\"]\n\
             rollback_window = \"10m\"\nretry = {{ max = 2, backoff = \"1s\" }}\n\
             promote = [{{ from = \"staging\", to = \"prod\", soak = \"3s\" }}]\n\n\
             [[sinks]]\nname = \"intents\"\ninput = \"gate\"\ntopic = \"{intents}\"\n",
            brokers = brokers()
        ),
    )
    .unwrap();
    create_topics(&[(&format!("{app}-alerts"), 2)]);
    let mut envs = String::new();
    for env in ["dev", "staging", "prod"] {
        envs.push_str(&format!(
            "[[environments]]\nname = \"{env}\"\nbranch = \"main\"\ndirectory = \"envs/{env}\"\n\n"
        ));
    }
    std::fs::write(
        d.join("commit.toml"),
        format!(
            "[repository]\nurl = \"file://{}\"\n\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n\n\
             [batch]\nwindow = \"200ms\"\n\n\
             [kafka]\ntopic = \"{intents}\"\ngroup = \"{app}-committer\"\ndead_letter_topic = \"{intents}.dead\"\nreport_topic = \"{intents}.reports\"\n\n{envs}",
            bare.display()
        ),
    )
    .unwrap();
    Loop {
        dir,
        images,
        intents,
        bare,
        port,
    }
}

fn spawn_logged(l: &Loop, name: &str, args: &[&str]) -> Child {
    sluice_cmd()
        .env("FLUX_TOKEN", TOKEN)
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(l.path(&format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn logs(l: &Loop) -> String {
    ["ingest", "run-a", "run-b", "commit"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(l.path(&format!("{n}.log"))).unwrap_or_default();
            format!("--- {n}\n{}", &text[text.len().saturating_sub(3000)..])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn push(l: &Loop, service: &str, environment: &str, tag: &str) {
    let value = format!(
        r#"{{"service":"{service}","repository":"reg.example.com/{service}","tag":"{tag}","environment":"{environment}"}}"#
    );
    let p = producer();
    p.send(BaseRecord::to(&l.images).key(service).payload(&value))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

fn flux(l: &Loop, service: &str, environment: &str, reason: &str) {
    let severity = if reason.ends_with("Succeeded") {
        "info"
    } else {
        "error"
    };
    let body = format!(
        r#"{{"involvedObject":{{"kind":"Kustomization","namespace":"{environment}","name":"{service}"}},"severity":"{severity}","reason":"{reason}","message":"{reason} in the test","metadata":{{"revision":"main@sha1:0123abcd"}}}}"#
    );
    assert_eq!(
        post(l.port, "/hooks/flux", &[("Authorization", TOKEN)], &body),
        202
    );
}

/// (action, image, reason_code) of the intents for (service, environment).
fn intents_of(l: &Loop, service: &str, environment: &str) -> Vec<(String, String, String)> {
    read_topic(
        &brokers(),
        &l.intents,
        "read_committed",
        Duration::from_millis(300),
        Duration::from_secs(3),
        |_| false,
    )
    .iter()
    .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok())
    .filter(|v| v["service"] == service && v["environment"] == environment)
    .map(|v| {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        (s("action"), s("image"), s("reason_code"))
    })
    .collect()
}

fn deployed(l: &Loop, service: &str, environment: &str) -> String {
    let file = git(
        &l.bare,
        &["show", &format!("main:envs/{environment}/{service}.yaml")],
    );
    let line = file.lines().find(|x| x.contains("image:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn wait_intents(l: &Loop, service: &str, env: &str, n: usize) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    wait_until(
        &format!("{n} intents for {service}/{env}"),
        Duration::from_secs(60),
        || {
            got = intents_of(l, service, env);
            got.len() >= n
        },
    );
    got
}

fn image(service: &str, tag: &str) -> String {
    format!("reg.example.com/{service}:{tag}")
}

fn control(l: &Loop, args: &[&str]) {
    let topology = l.path("topology.toml");
    let out = sluice_cmd()
        .arg("control")
        .args(args)
        .arg("--topology")
        .arg(&topology)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn statuses_and_commands_close_the_loop_across_two_instances() {
    let l = setup();
    let d = l.dir.path().to_owned();
    let topology = l.path("topology.toml");
    let t = topology.to_str().unwrap();
    let state = |n: &str| d.join(format!("state-{n}")).to_str().unwrap().to_owned();
    let (sa, sb) = (state("a"), state("b"));
    let work = d.join("work").to_str().unwrap().to_owned();
    let mut ingest = spawn_logged(
        &l,
        "ingest",
        &["ingest", l.path("ingest.toml").to_str().unwrap()],
    );
    let run_args = |s: &str, id: &'static str| {
        vec![
            "run".to_owned(),
            t.to_owned(),
            "--state-dir".into(),
            s.to_owned(),
            "--instance-id".into(),
            id.into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--commit-interval-ms".into(),
            "100".into(),
        ]
    };
    let spawn_run = |name: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_logged(&l, name, &args)
    };
    let mut a = spawn_run("run-a", run_args(&sa, "a"));
    let mut b = spawn_run("run-b", run_args(&sb, "b"));
    let (addr_a, addr_b) = (metrics_address(&mut a), metrics_address(&mut b));
    let brokers = brokers();
    let mut commit = spawn_logged(
        &l,
        "commit",
        &[
            "commit",
            l.path("commit.toml").to_str().unwrap(),
            "--brokers",
            &brokers,
            "--work-dir",
            &work,
        ],
    );
    let start = std::time::Instant::now();
    while !(http_get(&addr_a, "/readyz").0 == 200
        && http_get(&addr_b, "/readyz").0 == 200
        && std::net::TcpStream::connect(("127.0.0.1", l.port)).is_ok())
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not ready: a {:?}, b {:?}\n{}",
            http_get(&addr_a, "/readyz"),
            http_get(&addr_b, "/readyz"),
            logs(&l)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // A failed sync: retried twice after 1 s then 2 s, then rolled back.
    push(&l, "api", "dev", "v1");
    wait_intents(&l, "api", "dev", 1);
    flux(&l, "api", "dev", "ReconciliationSucceeded");
    push(&l, "api", "dev", "v2");
    wait_intents(&l, "api", "dev", 2);
    for attempt in 1..=3 {
        flux(&l, "api", "dev", "ReconciliationFailed");
        wait_intents(&l, "api", "dev", 2 + attempt);
    }
    let got = intents_of(&l, "api", "dev");
    let want = [
        ("deploy", image("api", "v1")),
        ("deploy", image("api", "v2")),
        ("deploy", image("api", "v2")),
        ("deploy", image("api", "v2")),
        ("rollback", image("api", "v1")),
    ];
    let actions: Vec<(&str, String)> = got
        .iter()
        .map(|(a, i, _)| (a.as_str(), i.clone()))
        .collect();
    assert_eq!(actions, want, "{got:?}\n{}", logs(&l));
    assert_eq!(got[2].2, "retry", "{got:?}");
    wait_until(
        "the rollback on the remote",
        Duration::from_secs(60),
        || deployed(&l, "api", "dev") == image("api", "v1"),
    );

    // A degraded rollout: rolled back, and the image quarantined.
    push(&l, "web", "dev", "v1");
    wait_intents(&l, "web", "dev", 1);
    push(&l, "web", "dev", "v2");
    wait_intents(&l, "web", "dev", 2);
    flux(&l, "web", "dev", "HealthCheckFailed");
    let got = wait_intents(&l, "web", "dev", 3);
    assert_eq!(
        (got[2].0.as_str(), got[2].1.clone()),
        ("rollback", image("web", "v1")),
        "{got:?}"
    );
    push(&l, "web", "dev", "v2");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        intents_of(&l, "web", "dev").len(),
        3,
        "the quarantined image is ignored"
    );

    // A healthy staging rollout, promoted to prod after its 3 s soak.
    push(&l, "worker", "staging", "v1");
    wait_intents(&l, "worker", "staging", 1);
    flux(&l, "worker", "staging", "ReconciliationSucceeded");
    let got = wait_intents(&l, "worker", "prod", 1);
    assert_eq!(
        (got[0].0.as_str(), got[0].1.clone()),
        ("deploy", image("worker", "v1")),
        "{got:?}"
    );
    assert_eq!(got[0].2, "promoted", "{got:?}");
    wait_until(
        "the promotion on the remote",
        Duration::from_secs(60),
        || deployed(&l, "worker", "prod") == image("worker", "v1"),
    );

    // A freeze of prod holds a deploy; the state query says why, from
    // either instance; the unfreeze releases it.
    control(
        &l,
        &[
            "freeze",
            "--environment",
            "prod",
            "--reason",
            "release freeze",
            "--by",
            "test",
        ],
    );
    wait_until(
        "the freeze in the worker's gate",
        Duration::from_secs(30),
        || {
            let (status, body) = http_get(&addr_a, "/v1/state/worker/prod");
            status == 200 && body.contains("release freeze")
        },
    );
    push(&l, "worker", "prod", "v2");
    let got = wait_intents(&l, "worker", "prod", 2);
    assert_eq!(got[1].0, "hold", "{got:?}");
    let answers: Vec<serde_json::Value> = [&addr_a, &addr_b]
        .iter()
        .map(|addr| {
            let (status, body) = http_get(addr, "/v1/state/worker/prod");
            assert_eq!(status, 200, "{addr}: {body}");
            let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
            // The owner's clock moves with the wall clock between the two questions.
            v.as_object_mut().unwrap().remove("clock");
            v
        })
        .collect();
    assert_eq!(answers[0], answers[1], "any instance answers the same");
    let gate = &answers[0]["operators"][0];
    assert_eq!(gate["current_image"], image("worker", "v1"));
    assert_eq!(gate["parked_image"], image("worker", "v2"));
    assert!(
        gate["held_because"][0]
            .as_str()
            .unwrap_or_default()
            .contains("release freeze"),
        "{gate}"
    );
    let status = sluice(&[
        "status",
        "worker",
        "prod",
        "--url",
        &format!("http://{addr_b}"),
    ]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("parked: reg.example.com/worker:v2"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        deployed(&l, "worker", "prod"),
        image("worker", "v1"),
        "held while frozen"
    );
    control(&l, &["unfreeze", "--environment", "prod", "--by", "test"]);
    wait_until(
        "the released deploy on the remote",
        Duration::from_secs(60),
        || deployed(&l, "worker", "prod") == image("worker", "v2"),
    );

    // The committer reported each api/dev intent with the commit that holds it.
    let reports: Vec<serde_json::Value> = read_topic(
        &brokers,
        &format!("{}.reports", l.intents),
        "read_committed",
        Duration::from_millis(500),
        Duration::from_secs(10),
        |_| false,
    )
    .iter()
    .filter_map(|r| serde_json::from_slice(&r.value).ok())
    .collect();
    let api: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|r| r["service"] == "api" && r["environment"] == "dev")
        .collect();
    let outcomes: Vec<&str> = api.iter().filter_map(|r| r["outcome"].as_str()).collect();
    assert_eq!(
        outcomes,
        ["applied", "applied", "retried", "retried", "applied"],
        "{api:?}\n{}",
        logs(&l)
    );
    for r in &api {
        let commit = r["commit"].as_str().unwrap();
        git(
            &l.bare,
            &["cat-file", "-e", &format!("{commit}^{{commit}}")],
        );
        assert_eq!(r["branch"], "main");
    }

    for child in [&mut ingest, &mut a, &mut b, &mut commit] {
        assert!(terminate(child).success(), "{}", logs(&l));
    }
}
