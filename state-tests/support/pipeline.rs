//! Helpers for end-to-end tests of the whole pipeline: a bare git
//! repository to deploy to, webhooks posted over HTTP, vendor payloads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sluice_cmd;

pub fn git(dir: &Path, args: &[&str]) -> String {
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
pub fn deploy_repo(dir: &Path, image: &str) -> PathBuf {
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

pub fn deployed_image(bare: &Path) -> String {
    let file = git(bare, &["show", "main:envs/prod/api.yaml"]);
    let line = file.lines().find(|l| l.contains("image:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 POST; returns the status code.
pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
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

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn spawn(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Child {
    sluice_cmd()
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("sluice starts")
}

pub fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

pub fn harbor_push(tag: &str, digest: &str) -> String {
    format!(
        r#"{{"type":"PUSH_ARTIFACT","occur_at":1767225600,"operator":"ci","event_data":{{"resources":[{{"digest":"{digest}","tag":"{tag}","resource_url":"harbor.example.com/team/api:{tag}"}}],"repository":{{"date_created":1767225600,"name":"api","namespace":"team","repo_full_name":"team/api","repo_type":"private"}}}}}}"#
    )
}

pub fn alertmanager(status: &str) -> String {
    let ends = if status == "firing" {
        "0001-01-01T00:00:00Z"
    } else {
        "2026-01-01T00:10:00Z"
    };
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{service=\"api\"}}","truncatedAlerts":0,"status":"{status}","receiver":"sluice","groupLabels":{{"service":"api"}},"commonLabels":{{"alertname":"HighErrorRate","service":"api","severity":"critical","environment":"prod"}},"commonAnnotations":{{}},"externalURL":"http://alertmanager:9093","alerts":[{{"status":"{status}","labels":{{"alertname":"HighErrorRate","service":"api","severity":"critical","environment":"prod"}},"annotations":{{"summary":"errors"}},"startsAt":"2026-01-01T00:00:00Z","endsAt":"{ends}","generatorURL":"http://prometheus:9090/graph","fingerprint":"e2e0000000000001"}}]}}"#
    )
}
