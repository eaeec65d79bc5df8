//! End to end on a real broker and a real git remote: Harbor and
//! Alertmanager webhooks posted over HTTP to `sluice ingest`, `sluice run` on
//! a topology reading the vendors' own formats, intents, `sluice commit`,
//! and commits on a bare repository. A firing critical alert, posted as
//! Alertmanager sends it, holds the deploy; its resolve releases it.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::pipeline::*;
use support::*;

const HARBOR_TOKEN: &str = "harbor-e2e-token";
const AM_PASSWORD: &str = "alertmanager-e2e-password";

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
