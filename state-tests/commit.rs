//! `sluice commit` against real git: bare repositories on disk (file://),
//! one served by `git daemon` on 127.0.0.1, a local HTTP server that
//! refuses credentials, and (with SLUICE_TEST_BROKERS) a real Kafka broker.
//! Nothing is mocked; every test drives the binary.

// Some helpers serve only the tests that inject faults (`--features
// fault-injection`, which `.ci/test` enables); without it they are unused.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SLUICE_FAULTS")
        .env_remove("SLUICE_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs git in `dir`, asserting success; returns stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn git_output(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs")
}

/// A bare repository `remote.git` seeded with one manifest per service and
/// environment, each with a whole-image marker.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(envs: &[&str], services: &[String]) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", "remote.git"],
        );
        let seed = dir.path().join("seed");
        git(dir.path(), &["clone", "--quiet", "remote.git", "seed"]);
        for env in envs {
            std::fs::create_dir_all(seed.join("envs").join(env)).unwrap();
            for s in services {
                std::fs::write(
                    seed.join(format!("envs/{env}/{s}.yaml")),
                    manifest(s, &format!("registry.example.com/{s}:v0")),
                )
                .unwrap();
            }
        }
        std::fs::write(seed.join("README.md"), "deploy repo\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "--quiet", "-m", "seed"]);
        git(&seed, &["push", "--quiet", "origin", "main"]);
        Repo { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    /// The file at `path` on the remote's main branch.
    fn file(&self, path: &str) -> String {
        git(&self.bare(), &["show", &format!("main:{path}")])
    }

    /// Every `Sluice-Intent` trailer on main, one entry per occurrence.
    fn trailers(&self) -> Vec<String> {
        git(
            &self.bare(),
            &[
                "log",
                "--format=%(trailers:key=Sluice-Intent,valueonly,separator=%x0A)",
                "main",
            ],
        )
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
    }

    fn commit_count(&self) -> usize {
        git(&self.bare(), &["rev-list", "--count", "main"])
            .trim()
            .parse()
            .unwrap()
    }

    /// Writes a committer config; `extra` is appended (more tables).
    fn config(&self, name: &str, url: &str, envs: &[&str], extra: &str) -> PathBuf {
        let mut text = format!(
            "[repository]\nurl = \"{url}\"\n{extra}\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n"
        );
        for env in envs {
            text.push_str(&format!("[[environments]]\nname = \"{env}\"\nbranch = \"main\"\ndirectory = \"envs/{env}\"\n"));
        }
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn manifest(service: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {service}  # the {service} service\nspec:\n  template:\n    spec:\n      containers:\n        - name: {service}\n          image: {image} # {{\"sluice\": \"{service}\"}}\n"
    )
}

fn intent(id: &str, action: &str, service: &str, env: &str, image: &str) -> String {
    serde_json::json!({
        "topic": "deploy-intents", "ts": 1, "key": format!("{service}/{env}"),
        "value": {"action": action, "service": service, "environment": env, "image": image,
                  "previous_image": null, "reason": "new image", "intent_id": id, "caused_by": "test"}
    })
    .to_string()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn commit_run(config: &Path, input: &Path, work: &Path, env: &[(&str, &str)]) -> Output {
    sluice()
        .arg("commit")
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--work-dir")
        .arg(work)
        .envs(env.iter().copied())
        .output()
        .expect("sluice runs")
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
}

fn services(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("svc-{i:02}")).collect()
}

/// A deploy stream: `n` intents over `services`, images v1, v2, ... per
/// service; returns the lines and the newest image per service.
fn deploys(
    prefix: &str,
    n: usize,
    services: &[String],
    env: &str,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut lines = Vec::new();
    let mut newest = BTreeMap::new();
    for i in 0..n {
        let s = &services[(i * 7 + i / 3) % services.len()];
        let image = format!("registry.example.com/{s}:v{}", i + 1);
        lines.push(intent(
            &format!("{prefix}-{i:04}"),
            "deploy",
            s,
            env,
            &image,
        ));
        newest.insert(s.clone(), image);
    }
    (lines, newest)
}

/// Every id exactly once in the trailers, and the files hold the newest images.
fn assert_converged(
    repo: &Repo,
    n: usize,
    prefix: &str,
    newest: &BTreeMap<String, String>,
    env: &str,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in repo.trailers() {
        *seen.entry(t).or_default() += 1;
    }
    for i in 0..n {
        let id = format!("{prefix}-{i:04}");
        assert_eq!(
            seen.get(&id),
            Some(&1),
            "intent {id} must be in exactly one trailer"
        );
    }
    for (s, image) in newest {
        assert_eq!(
            repo.file(&format!("envs/{env}/{s}.yaml")),
            manifest(s, image),
            "{s}"
        );
    }
}

#[test]
fn a_typo_in_the_config_names_file_line_column_and_key() {
    let repo = Repo::new(&["prod"], &services(1));
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let src = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[author]\nname", "[author]\nnmae");
    std::fs::write(&config, src).unwrap();
    let out = sluice()
        .arg("commit")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let shown = config.display().to_string();
    assert!(
        err.contains(&format!("{shown}:5:1: `author.nmae`: unknown key `nmae`")),
        "{err}"
    );
    assert!(err.contains("`author.name`: missing required key"), "{err}");
}

#[test]
fn a_batch_becomes_one_commit_and_a_rerun_changes_nothing() {
    let repo = Repo::new(&["prod", "dev"], &services(3));
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod", "dev"],
        "[batch]\nsubject = \"{action} {service}\"\n",
    );
    let input = repo.path().join("intents.jsonl");
    let lines = vec![
        intent(
            "a",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v1",
        ),
        intent(
            "b",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v2",
        ),
        intent(
            "c",
            "hold",
            "svc-01",
            "prod",
            "registry.example.com/svc-01:v9",
        ),
        intent(
            "d",
            "rollback",
            "svc-02",
            "dev",
            "registry.example.com/svc-02:v0-old",
        ),
        // Already what the file holds: no change, no trailer.
        intent(
            "e",
            "deploy",
            "svc-01",
            "dev",
            "registry.example.com/svc-01:v0",
        ),
        r#"{"topic":"cicd.dead-letter","ts":1,"key":null,"value":{"error":"x"}}"#.to_owned(),
    ];
    write_lines(&input, &lines);
    let work = repo.path().join("work");
    let out = commit_run(&config, &input, &work, &[]);
    assert_ok(&out);
    assert_eq!(repo.commit_count(), 2, "seed + one batch commit");
    assert_eq!(repo.trailers(), ["a", "b", "d"]);
    let message = git(&repo.bare(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with("Update 2 images on main (dev,prod)\n"),
        "{message}"
    );
    assert!(message.contains("- rollback svc-02 in dev: registry.example.com/svc-02:v0 -> registry.example.com/svc-02:v0-old"), "{message}");
    assert_eq!(
        repo.file("envs/prod/svc-00.yaml"),
        manifest("svc-00", "registry.example.com/svc-00:v2")
    );
    assert_eq!(
        repo.file("envs/prod/svc-01.yaml"),
        manifest("svc-01", "registry.example.com/svc-01:v0")
    );
    let summary = text(&out.stderr);
    assert!(summary.contains("5 intents: 2 applied, 1 superseded, 0 already committed, 1 already applied, 1 held, 0 dead letters"), "{summary}");

    // Redelivery of everything: no commit, no empty commit.
    let again = commit_run(&config, &input, &work, &[]);
    assert_ok(&again);
    assert_eq!(repo.commit_count(), 2);
    assert!(
        text(&again.stderr).contains("3 already committed"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn bad_intents_are_refused_with_a_reason_and_never_reach_a_file() {
    let repo = Repo::new(&["prod"], &services(2));
    // A symlink in the environment's directory that leads out of the repository.
    let outside = repo.path().join("outside.yaml");
    std::fs::write(&outside, manifest("evil", "evil:v0")).unwrap();
    let seed = repo.path().join("seed");
    std::os::unix::fs::symlink(&outside, seed.join("envs/prod/evil.yaml")).unwrap();
    std::fs::write(
        seed.join("envs/prod/broken.yaml"),
        "spec:\n  image: x # {\"sluice\": \"svc-01\"}\n  bad: [unclosed\n",
    )
    .unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "symlink"]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    let before = git(&repo.bare(), &["rev-parse", "main"]);

    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[
            intent(
                "i1",
                "deploy",
                "svc-00",
                "prod",
                "registry.example.com/svc-00:v1\nkind: Secret",
            ),
            intent(
                "i2",
                "deploy",
                "svc-00",
                "prod",
                "registry.example.com/svc-00:v1: x",
            ),
            intent(
                "i3",
                "deploy",
                "nosuch",
                "prod",
                "registry.example.com/nosuch:v1",
            ),
            intent(
                "i4",
                "deploy",
                "svc-00",
                "../prod",
                "registry.example.com/svc-00:v1",
            ),
            intent(
                "i5",
                "deploy",
                "../../etc",
                "prod",
                "registry.example.com/svc-00:v1",
            ),
            intent("i6", "deploy", "evil", "prod", "evil:v1"),
            intent(
                "i7",
                "deploy",
                "svc-00",
                "prod",
                "registry.example.com/svc-00@sha256:abc",
            ),
            "{not json".to_owned(),
        ],
    );
    let dead = repo.path().join("dead.jsonl");
    let out = sluice()
        .arg("commit")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .arg("--dead-letters")
        .arg(&dead)
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(
        git(&repo.bare(), &["rev-parse", "main"]),
        before,
        "no commit at all"
    );
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        manifest("evil", "evil:v0")
    );
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| l["value"]["error"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 8, "{reasons:#?}");
    for (i, expected) in [
        "invalid image",
        "invalid image",
        "no marker for service `nosuch`",
        "no environment `../prod`",
        "invalid service name",
        "lead out of the repository: envs/prod/evil.yaml",
        "invalid image",
        "not a deployment intent",
    ]
    .iter()
    .enumerate()
    {
        assert!(reasons[i].contains(expected), "letter {i}: {}", reasons[i]);
    }
    let kinds: Vec<&str> = letters
        .iter()
        .map(|l| l["value"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "invalid_image",
            "invalid_image",
            "no_marker",
            "unknown_environment",
            "invalid_service",
            "no_marker",
            "invalid_image",
            "not_an_intent"
        ]
    );
    let summary = text(&out.stderr);
    assert!(
        summary.contains("(dead letters: invalid_image 3, invalid_service 1, no_marker 2, not_an_intent 1, unknown_environment 1)"),
        "{summary}"
    );
    assert_eq!(
        letters[0]["value"]["value"]["intent_id"], "i1",
        "the intent is kept as JSON"
    );
    assert_eq!(letters[0]["topic"], "sluice-committer.dead-letter");
}

#[test]
fn a_file_that_cannot_be_parsed_refuses_only_its_service() {
    let repo = Repo::new(&["prod"], &services(2));
    let seed = repo.path().join("seed");
    std::fs::write(
        seed.join("envs/prod/svc-01.yaml"),
        "spec:\n  image: | # {\"sluice\": \"svc-01\"}\n    registry.example.com/svc-01:v0\n",
    )
    .unwrap();
    git(&seed, &["commit", "--quiet", "-am", "break svc-01"]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[
            intent(
                "ok",
                "deploy",
                "svc-00",
                "prod",
                "registry.example.com/svc-00:v1",
            ),
            intent(
                "bad",
                "deploy",
                "svc-01",
                "prod",
                "registry.example.com/svc-01:v1",
            ),
        ],
    );
    let out = commit_run(&config, &input, &repo.path().join("work"), &[]);
    assert_ok(&out);
    assert_eq!(repo.trailers(), ["ok"]);
    let letters = std::fs::read_to_string(repo.path().join("work/dead-letters.jsonl")).unwrap();
    assert!(letters.contains("envs/prod/svc-01.yaml"), "{letters}");
}

#[cfg(feature = "fault-injection")]
fn crash_and_restart(point: &str) {
    let svcs = services(12);
    let repo = Repo::new(&["prod"], &svcs);
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod"],
        "[batch]\nmax_intents = 40\n[push]\nper_second = 1000\n",
    );
    let (lines, newest) = deploys("c", 200, &svcs, "prod");
    let input = repo.path().join("intents.jsonl");
    write_lines(&input, &lines);
    let work = repo.path().join("work");
    let crashed = commit_run(
        &config,
        &input,
        &work,
        &[("SLUICE_FAULTS", &format!("commit.{point}=kill@3"))],
    );
    assert_eq!(
        crashed.status.signal(),
        Some(9),
        "killed at {point}: {}",
        text(&crashed.stderr)
    );
    let pushed_before = repo.commit_count() - 1;
    assert_eq!(
        pushed_before,
        if point == "after-commit" { 2 } else { 3 },
        "batches pushed before the kill"
    );
    let restarted = commit_run(&config, &input, &work, &[]);
    assert_ok(&restarted);
    assert_converged(&repo, 200, "c", &newest, "prod");
    assert_eq!(
        repo.commit_count(),
        1 + 5,
        "one commit per batch of 40, none twice"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_kill_between_commit_and_push_loses_and_duplicates_nothing() {
    crash_and_restart("after-commit");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_kill_between_push_and_acknowledgement_loses_and_duplicates_nothing() {
    crash_and_restart("after-push");
}

/// Pushes unrelated commits to main until stopped, like a human or another bot.
fn third_writer(repo: &Path, stop: Arc<AtomicBool>) -> usize {
    let clone = repo.join("writer");
    git(repo, &["clone", "--quiet", "remote.git", "writer"]);
    let mut pushed = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("notes/{pushed}.txt");
        std::fs::create_dir_all(clone.join("notes")).unwrap();
        std::fs::write(clone.join(&name), "unrelated\n").unwrap();
        git(&clone, &["add", &name]);
        git(&clone, &["commit", "--quiet", "-m", "unrelated change"]);
        loop {
            if git_output(&clone, &["push", "--quiet", "origin", "main"])
                .status
                .success()
            {
                pushed += 1;
                break;
            }
            git(&clone, &["pull", "--quiet", "--rebase", "origin", "main"]);
        }
        // Ten pushes a second: a very busy repository, but not one that
        // moves faster than any fetch-rebuild-push cycle could follow.
        std::thread::sleep(Duration::from_millis(100));
    }
    pushed
}

/// Records every tip main takes, as often as it can.
fn observe_tips(bare: PathBuf, stop: Arc<AtomicBool>, tips: Arc<Mutex<Vec<String>>>) {
    while !stop.load(Ordering::Relaxed) {
        let tip = git(&bare, &["rev-parse", "main"]).trim().to_owned();
        let mut t = tips.lock().unwrap();
        if t.last() != Some(&tip) {
            t.push(tip);
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn two_committers_and_a_third_writer_converge_without_force_pushes() {
    let svcs = services(25);
    let repo = Repo::new(&["prod"], &svcs);
    let extra = "[batch]\nmax_intents = 25\n[push]\nper_second = 1000\nmin_backoff = \"10ms\"\nmax_backoff = \"200ms\"\n";
    let config = repo.config("commit.toml", &repo.url(), &["prod"], extra);
    let (lines, newest) = deploys("k", 1000, &svcs, "prod");
    let input = repo.path().join("intents.jsonl");
    write_lines(&input, &lines);

    let stop = Arc::new(AtomicBool::new(false));
    let tips = Arc::new(Mutex::new(Vec::new()));
    let observer = {
        let (bare, stop, tips) = (repo.bare(), Arc::clone(&stop), Arc::clone(&tips));
        std::thread::spawn(move || observe_tips(bare, stop, tips))
    };
    let writer = {
        let (path, stop) = (repo.path().to_owned(), Arc::clone(&stop));
        std::thread::spawn(move || third_writer(&path, stop))
    };
    // Both committers read the same stream, like two replicas of one deployment.
    let committers: Vec<_> = ["work-a", "work-b"]
        .into_iter()
        .map(|w| {
            let (config, input, work) = (config.clone(), input.clone(), repo.path().join(w));
            std::thread::spawn(move || commit_run(&config, &input, &work, &[]))
        })
        .collect();
    let outputs: Vec<Output> = committers.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let unrelated = writer.join().unwrap();
    observer.join().unwrap();
    for out in &outputs {
        assert_ok(out);
    }
    assert_converged(&repo, 1000, "k", &newest, "prod");
    let notes = git(&repo.bare(), &["ls-tree", "--name-only", "main", "notes/"]);
    assert_eq!(
        notes.lines().count(),
        unrelated,
        "every unrelated commit survived"
    );
    assert!(unrelated > 0);
    let rejected: usize = outputs
        .iter()
        .map(|o| {
            let s = text(&o.stderr);
            let i = s.find(" pushes rejected").unwrap();
            s[..i].rsplit(' ').next().unwrap().parse::<usize>().unwrap()
        })
        .sum();
    assert!(rejected > 0, "the committers must have raced each other");
    let tips = tips.lock().unwrap().clone();
    assert!(tips.len() > 10, "observed {} tips", tips.len());
    for pair in tips.windows(2) {
        let ff = git_output(
            &repo.bare(),
            &["merge-base", "--is-ancestor", &pair[0], &pair[1]],
        );
        assert!(
            ff.status.success(),
            "{} -> {} is not a fast-forward",
            pair[0],
            pair[1]
        );
    }
}

/// A free port on 127.0.0.1 (released again; a tiny race is acceptable in tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git daemon` serving a base path; killed on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_repository_served_by_git_daemon_over_tcp() {
    let repo = Repo::new(&["prod"], &services(3));
    let port = free_port();
    let daemon = start_daemon(repo.path(), port);
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let config = repo.config("commit.toml", &url, &["prod"], "");
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "net-1",
            "deploy",
            "svc-01",
            "prod",
            "registry.example.com/svc-01:v7",
        )],
    );
    let out = commit_run(&config, &input, &repo.path().join("work"), &[]);
    assert_ok(&out);
    drop(daemon);
    assert_eq!(repo.trailers(), ["net-1"]);
    assert_eq!(
        repo.file("envs/prod/svc-01.yaml"),
        manifest("svc-01", "registry.example.com/svc-01:v7")
    );
}

/// An HTTP server that refuses every request with 401 and records the
/// Authorization headers it was sent.
fn refusing_http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    record.lock().unwrap().push(line.trim().to_owned());
                }
                line.clear();
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.read(&mut [0u8; 1]);
        }
    });
    (port, seen)
}

#[test]
fn refused_credentials_retry_then_fail_clearly_and_never_print_the_token() {
    const SENTINEL: &str = "sentinel-token-7f3a9c";
    let repo = Repo::new(&["prod"], &services(1));
    let (port, seen) = refusing_http_server();
    let url = format!("http://127.0.0.1:{port}/deploy.git");
    // Long enough for a retry even when one refused attempt takes seconds
    // (the suite runs many git processes at once).
    let extra = "token_env = \"SLUICE_TEST_GIT_TOKEN\"\n[push]\ngive_up_after = \"10s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"200ms\"";
    let config = repo.config("commit.toml", &url, &["prod"], extra);
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "t1",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v1",
        )],
    );
    let out = sluice()
        .args(["-vvv", "commit"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .env("SLUICE_TEST_GIT_TOKEN", SENTINEL)
        .env("SLUICE_LOG", "trace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("gave up after"), "{stderr}");
    assert!(
        stderr.contains("retrying"),
        "retried before giving up: {stderr}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the token was offered to the server");
    let encoded = seen[0].rsplit(' ').next().unwrap().to_owned();
    for secret in [SENTINEL, encoded.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked:\n{stderr}"
        );
    }
    // A missing variable is named, without guessing at a value.
    let out = sluice()
        .arg("commit")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .env_remove("SLUICE_TEST_GIT_TOKEN")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("SLUICE_TEST_GIT_TOKEN is not set"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn flood_replay_commit_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let flood = sluice()
        .args([
            "flood",
            "--events",
            "20000",
            "--services",
            "8",
            "--seed",
            "4",
        ])
        .output()
        .unwrap();
    assert_ok(&flood);
    let mut replay = sluice()
        .args([
            "replay",
            "topologies/cicd.toml",
            "--input",
            "-",
            "--drain",
            "--quiet",
            "--backend",
            "memory",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = replay.stdin.take().unwrap();
    let feed = std::thread::spawn(move || stdin.write_all(&flood.stdout));
    let replayed = replay.wait_with_output().unwrap();
    feed.join().unwrap().unwrap();
    assert_ok(&replayed);
    let intents_path = dir.path().join("intents.jsonl");
    std::fs::write(&intents_path, &replayed.stdout).unwrap();

    // Expected: per (service, environment) the image of the last deploy or rollback.
    let mut expected: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut services_seen = std::collections::BTreeSet::new();
    for line in text(&replayed.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["topic"] != "deploy-intents" {
            continue;
        }
        let i = &v["value"];
        services_seen.insert(i["service"].as_str().unwrap().to_owned());
        if i["action"] != "hold" {
            let key = (
                i["service"].as_str().unwrap().to_owned(),
                i["environment"].as_str().unwrap().to_owned(),
            );
            expected.insert(key, i["image"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        expected.len() > 10,
        "the flood produced intents: {}",
        expected.len()
    );
    let services: Vec<String> = services_seen.into_iter().collect();
    let repo = Repo::new(&["dev", "staging", "prod"], &services);
    let config = repo.config("commit.toml", &repo.url(), &["dev", "staging", "prod"], "");
    let out = commit_run(&config, &intents_path, &repo.path().join("work"), &[]);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains(" 0 dead letters"),
        "{}",
        text(&out.stderr)
    );
    for ((service, env), image) in &expected {
        assert_eq!(
            repo.file(&format!("envs/{env}/{service}.yaml")),
            manifest(service, image),
            "{service}/{env}"
        );
    }
    assert_eq!(
        repo.commit_count(),
        2,
        "the whole file is one batch: one commit"
    );
}

mod kafka {
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Message};

    pub(super) fn brokers() -> String {
        std::env::var("SLUICE_TEST_BROKERS").expect(
            "SLUICE_TEST_BROKERS is not set: run .ci/test, which starts a local Kafka broker",
        )
    }

    pub(super) fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{prefix}-{}-{nanos}", std::process::id())
    }

    pub(super) fn create_topics(topics: &[&str]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, 2, TopicReplication::Fixed(1)))
            .collect();
        for r in
            futures_executor::block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap()
        {
            r.unwrap();
        }
    }

    pub(super) fn run(config: &Path, work: &Path, crash: Option<&str>) -> Output {
        let mut cmd = sluice();
        cmd.arg("commit")
            .arg(config)
            .args(["--brokers", &brokers(), "--idle-exit", "3s", "--work-dir"])
            .arg(work);
        if let Some(point) = crash {
            cmd.env("SLUICE_FAULTS", format!("commit.{point}=kill"));
        }
        cmd.output().unwrap()
    }

    pub(super) fn received(out: &Output) -> usize {
        let s = text(&out.stderr);
        let at = s
            .find(" intents: ")
            .unwrap_or_else(|| panic!("no summary: {s}"));
        s[..at].rsplit(' ').next().unwrap().parse().unwrap()
    }

    pub(super) struct Fixture {
        pub(super) repo: Repo,
        pub(super) config: PathBuf,
        pub(super) work: PathBuf,
        pub(super) newest: BTreeMap<String, String>,
        pub(super) dead_topic: String,
        /// With [`fixture_with_reports`]: the report topic.
        pub(super) report_topic: Option<String>,
    }

    /// The `traceparent` header produced with the fixture's `n`-th intent
    /// (ids of zeros are invalid, hence `n + 1`).
    pub(super) fn fixture_trace(n: usize) -> String {
        format!("00-{:032x}-{:016x}-01", n + 1, n + 1)
    }

    /// 30 intents over 6 services and one for a service without a marker,
    /// on a fresh topic, and a committer config with its own group.
    fn fixture() -> Fixture {
        fixture_with(None)
    }

    /// [`fixture`], and a report topic in the config.
    pub(super) fn fixture_with_reports() -> Fixture {
        let report_topic = unique("reports");
        create_topics(&[&report_topic]);
        fixture_with(Some(report_topic))
    }

    /// A report topic the config names but nobody created.
    pub(super) fn fixture_with_a_missing_report_topic() -> Fixture {
        fixture_with(Some(unique("no-such-reports")))
    }

    fn fixture_with(report_topic: Option<String>) -> Fixture {
        let topic = unique("intents");
        let dead_topic = format!("{topic}.dead");
        create_topics(&[&topic, &dead_topic]);
        let svcs = services(6);
        let repo = Repo::new(&["prod"], &svcs);
        let group = unique("committer");
        let report_line = report_topic
            .as_ref()
            .map_or(String::new(), |t| format!("report_topic = \"{t}\"\n"));
        let extra = format!("[batch]\nwindow = \"1s\"\n[kafka]\ntopic = \"{topic}\"\ngroup = \"{group}\"\ndead_letter_topic = \"{dead_topic}\"\n{report_line}[kafka.properties]\n\"session.timeout.ms\" = 6000\n");
        let config = repo.config("commit.toml", &repo.url(), &["prod"], &extra);
        let (lines, newest) = deploys("q", 30, &svcs, "prod");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let mut values: Vec<String> = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].to_string())
            .collect();
        values.push(r#"{"action":"deploy","service":"ghost","environment":"prod","image":"g:v1","previous_image":null,"reason":"r","intent_id":"ghost-1","caused_by":"c"}"#.into());
        for (n, v) in values.iter().enumerate() {
            // One key per service keeps each service's intents in order on one partition.
            let key = serde_json::from_str::<serde_json::Value>(v).unwrap()["service"]
                .as_str()
                .unwrap()
                .to_owned();
            let trace = fixture_trace(n);
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(trace.as_str()),
            });
            producer
                .send(BaseRecord::to(&topic).key(&key).payload(v).headers(headers))
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let work = repo.path().join("work");
        Fixture {
            repo,
            config,
            work,
            newest,
            dead_topic,
            report_topic,
        }
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_kill_between_commit_and_push_redelivers_and_commits_once() {
        let Fixture {
            repo,
            config,
            work,
            newest,
            ..
        } = fixture();
        let crashed = run(&config, &work, Some("after-commit"));
        assert_eq!(
            crashed.status.signal(),
            Some(9),
            "{}",
            text(&crashed.stderr)
        );
        assert_eq!(repo.commit_count(), 1, "nothing was pushed");
        let second = run(&config, &work, None);
        assert_ok(&second);
        assert_eq!(
            received(&second),
            31,
            "redelivered: {}",
            text(&second.stderr)
        );
        assert_converged(&repo, 30, "q", &newest, "prod");
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn intents_on_a_topic_become_pushed_commits_and_offsets_follow_the_push() {
        let Fixture {
            repo,
            config,
            work,
            newest,
            dead_topic,
            ..
        } = fixture();

        // Killed after the push, before the offsets: everything comes again.
        let crashed = run(&config, &work, Some("after-push"));
        assert_eq!(
            crashed.status.signal(),
            Some(9),
            "{}",
            text(&crashed.stderr)
        );
        assert_eq!(repo.commit_count(), 2);
        let second = run(&config, &work, None);
        assert_ok(&second);
        assert_eq!(
            received(&second),
            31,
            "redelivered: {}",
            text(&second.stderr)
        );
        // Exactly once per intent, though all of them came twice.
        assert_converged(&repo, 30, "q", &newest, "prod");

        // The offsets were committed after that batch: nothing comes a third time.
        // This time without --idle-exit: SIGTERM stops it cleanly.
        let child = sluice()
            .args(["-v", "commit"])
            .arg(&config)
            .args(["--brokers", &brokers(), "--work-dir"])
            .arg(&work)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(6));
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let third = child.wait_with_output().unwrap();
        assert_ok(&third);
        assert!(
            text(&third.stderr).contains("source readiness changed"),
            "it was assigned the partitions: {}",
            text(&third.stderr)
        );
        assert_eq!(received(&third), 0, "{}", text(&third.stderr));

        // The refused intent is on the dead-letter topic with its reason.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("dl-reader"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&dead_topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut letters = Vec::new();
        while letters.is_empty() && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                letters.push(text(m.payload().unwrap_or_default()));
            }
        }
        assert!(!letters.is_empty(), "no dead letter on {dead_topic}");
        assert!(
            letters
                .iter()
                .all(|l| l.contains("no marker for service `ghost`")),
            "{letters:?}"
        );
    }

    /// The whole pipeline on the broker: image events, `sluice run`
    /// (exactly-once, wall clock), the intents topic, `sluice commit`, and
    /// commits on the remote.
    #[test]
    fn image_events_become_pushed_commits_through_run_and_commit() {
        let app = unique("e2e");
        let (images, alerts, intents) = (
            format!("{app}-images"),
            format!("{app}-alerts"),
            format!("{app}-intents"),
        );
        create_topics(&[&images, &alerts]);
        let svcs = services(3);
        let repo = Repo::new(&["prod"], &svcs);
        let topology = repo.path().join("t.toml");
        std::fs::write(
            &topology,
            format!(
                "[app]\nid = \"{app}\"\n\
                 [[sources]]\nname = \"images\"\ntopic = \"{images}\"\nkind = \"image\"\nenvironment = \"prod\"\n\
                 [[sources]]\nname = \"alerts\"\ntopic = \"{alerts}\"\nkind = \"alert\"\nenvironment = \"prod\"\n\
                 [[operators]]\nname = \"dedup\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"image\"]\nttl = \"10m\"\n\
                 [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"dedup\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\n\
                 [[sinks]]\nname = \"intents\"\ninput = \"gate\"\ntopic = \"{intents}\"\n"
            ),
        )
        .unwrap();
        let group = unique("committer");
        let extra = format!("[batch]\nwindow = \"1s\"\n[kafka]\ntopic = \"{intents}\"\ngroup = \"{group}\"\ndead_letter_topic = \"{intents}.dead\"\n");
        let config = repo.config("commit.toml", &repo.url(), &["prod"], &extra);
        let state = repo.path().join("run-state");
        let mut run = sluice()
            .arg("run")
            .arg(&topology)
            .args(["--brokers", &brokers(), "--state-dir"])
            .arg(&state)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        for version in 1..=3 {
            for s in &svcs {
                let value = format!(
                    r#"{{"service":"{s}","repository":"registry.example.com/{s}","tag":"v{version}"}}"#
                );
                producer
                    .send(BaseRecord::to(&images).key(s).payload(&value))
                    .unwrap();
            }
            // Again: the dedup operator drops the second push.
            let s = &svcs[0];
            let value = format!(
                r#"{{"service":"{s}","repository":"registry.example.com/{s}","tag":"v{version}"}}"#
            );
            producer
                .send(BaseRecord::to(&images).key(s).payload(&value))
                .unwrap();
        }
        producer.flush(std::time::Duration::from_secs(30)).unwrap();
        // Until the intents topic holds all nine intents (read_committed).
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("watch"))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = 0;
        while seen < 9 && std::time::Instant::now() < deadline {
            if consumer.subscription().map(|s| s.count()).unwrap_or(0) == 0 {
                let _ = consumer.subscribe(&[&intents]);
            }
            if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(200)) {
                assert!(m.payload().is_some());
                seen += 1;
            }
        }
        let _ = run.kill();
        let _ = run.wait();
        assert_eq!(
            seen, 9,
            "three versions of three services, the duplicate dropped"
        );
        let out = super::kafka::run(&config, &repo.path().join("work"), None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for s in &svcs {
            let file = repo.file(&format!("envs/prod/{s}.yaml"));
            assert!(
                file.contains(&format!(
                    "image: registry.example.com/{s}:v3 # {{\"sluice\": \"{s}\"}}"
                )),
                "{file}"
            );
        }
        assert_eq!(repo.trailers().len(), 9, "every intent is in a trailer");
    }
}

#[test]
fn commits_are_signed_with_an_ssh_key_when_asked() {
    let repo = Repo::new(&["prod"], &services(1));
    let key = repo.path().join("signing-key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sluice", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert_ok(&keygen);
    let extra = format!("[signing]\nformat = \"ssh\"\nkey = \"{}\"", key.display());
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let with_signing = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[author]", &format!("{extra}\n[author]"));
    std::fs::write(&config, with_signing).unwrap();
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "s1",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v1",
        )],
    );
    assert_ok(&commit_run(&config, &input, &repo.path().join("work"), &[]));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = repo.path().join("allowed_signers");
    std::fs::write(&allowed, format!("sluice@example.com {public}")).unwrap();
    let verify = git_output(
        &repo.bare(),
        &[
            "-c",
            &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
            "verify-commit",
            "main",
        ],
    );
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    assert!(
        text(&verify.stderr).contains("Good \"git\" signature"),
        "{}",
        text(&verify.stderr)
    );
}

#[test]
fn kustomize_entries_follow_and_each_branch_gets_its_own_commit() {
    let repo = Repo::new(&["prod", "staging"], &services(2));
    let seed = repo.path().join("seed");
    git(&seed, &["checkout", "--quiet", "-b", "staging"]);
    let kustomization = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - svc-00.yaml  # the app\nimages:\n  - name: registry.example.com/svc-00\n    newTag: v0\n";
    std::fs::write(seed.join("envs/staging/kustomization.yaml"), kustomization).unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "staging kustomization"]);
    git(&seed, &["push", "--quiet", "origin", "staging"]);
    let config = repo.path().join("commit.toml");
    let url = repo.url();
    std::fs::write(
        &config,
        format!("[repository]\nurl = \"{url}\"\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n[[environments]]\nname = \"staging\"\nbranch = \"staging\"\ndirectory = \"envs/staging\"\n"),
    )
    .unwrap();
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[
            intent(
                "p1",
                "deploy",
                "svc-00",
                "prod",
                "registry.example.com/svc-00:v5",
            ),
            intent(
                "s1",
                "deploy",
                "svc-00",
                "staging",
                "registry.example.com/svc-00:v6",
            ),
        ],
    );
    assert_ok(&commit_run(&config, &input, &repo.path().join("work"), &[]));
    let trailers = |branch: &str| {
        git(
            &repo.bare(),
            &[
                "log",
                "-1",
                "--format=%(trailers:key=Sluice-Intent,valueonly)",
                branch,
            ],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(trailers("main"), "p1");
    assert_eq!(trailers("staging"), "s1");
    assert_eq!(
        repo.file("envs/prod/svc-00.yaml"),
        manifest("svc-00", "registry.example.com/svc-00:v5")
    );
    let show = |path: &str| git(&repo.bare(), &["show", &format!("staging:{path}")]);
    assert_eq!(
        show("envs/staging/svc-00.yaml"),
        manifest("svc-00", "registry.example.com/svc-00:v6")
    );
    assert_eq!(
        show("envs/staging/kustomization.yaml"),
        kustomization.replace("newTag: v0", "newTag: v6")
    );
}

#[test]
fn a_missing_branch_or_a_busy_work_directory_fails_at_once() {
    let repo = Repo::new(&["prod"], &services(1));
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let on_release = std::fs::read_to_string(&config)
        .unwrap()
        .replace("branch = \"main\"", "branch = \"release\"");
    std::fs::write(&config, on_release).unwrap();
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "m1",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v1",
        )],
    );
    let started = Instant::now();
    let out = commit_run(&config, &input, &repo.path().join("work"), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("branch release does not exist in file://"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no retrying what cannot change"
    );

    let config = repo.config("main.toml", &repo.url(), &["prod"], "");
    let work = repo.path().join("busy");
    std::fs::create_dir_all(&work).unwrap();
    let lock = std::fs::File::create(work.join("lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let out = commit_run(&config, &input, &work, &[]);
    assert!(
        text(&out.stderr).contains("is in use by another committer"),
        "{}",
        text(&out.stderr)
    );
    drop(lock);
    // A child that another test spawns at this moment holds a copy of the
    // lock's descriptor until its exec closes it (close-on-exec): on a
    // loaded machine that can outlast the drop by a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = commit_run(&config, &input, &work, &[]);
        let busy = text(&out.stderr).contains("is in use by another committer");
        if !busy || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ok(&out);
    assert_eq!(repo.trailers(), ["m1"]);
}

fn start_daemon(base: &Path, port: u16) -> Daemon {
    let daemon = Daemon(
        Command::new(Path::new(git(Path::new("."), &["--exec-path"]).trim()).join("git-daemon"))
            .args([
                "--export-all",
                "--enable=receive-pack",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "git daemon does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

#[test]
fn a_remote_that_goes_away_mid_run_is_retried_until_it_is_back() {
    let svcs = services(10);
    let repo = Repo::new(&["prod"], &svcs);
    let port = free_port();
    let mut daemon = start_daemon(repo.path(), port);
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let extra = "[batch]\nmax_intents = 5\n[push]\nper_second = 2\nmin_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n";
    let config = repo.config("commit.toml", &url, &["prod"], extra);
    let (lines, newest) = deploys("u", 60, &svcs, "prod");
    let input = repo.path().join("intents.jsonl");
    write_lines(&input, &lines);
    let child = sluice()
        .args(["-v", "commit"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while repo.commit_count() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(daemon);
    let down_at = repo.commit_count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        repo.commit_count(),
        down_at,
        "nothing pushed while the remote is away"
    );
    daemon = start_daemon(repo.path(), port);
    let out = child.wait_with_output().unwrap();
    drop(daemon);
    assert_ok(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("push failed, retrying"), "{stderr}");
    assert_converged(&repo, 60, "u", &newest, "prod");
}

#[test]
fn commits_are_signed_with_an_openpgp_key_when_asked() {
    let repo = Repo::new(&["prod"], &services(1));
    let home = repo.path().join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        Command::new("gpg")
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", &home)
            .output()
            .expect("gpg runs")
    };
    assert_ok(&gpg(&[
        "--quick-gen-key",
        "Sluice <sluice@example.com>",
        "ed25519",
        "sign",
        "never",
    ]));
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let signing = "[signing]\nformat = \"openpgp\"\nkey = \"sluice@example.com\"\n[author]";
    let with_signing = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[author]", signing);
    std::fs::write(&config, with_signing).unwrap();
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "g1",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v1",
        )],
    );
    let out = sluice()
        .arg("commit")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .env("GNUPGHOME", &home)
        .output()
        .unwrap();
    let verify = Command::new("git")
        .current_dir(repo.bare())
        .args(["verify-commit", "main"])
        .env("GNUPGHOME", &home)
        .output()
        .unwrap();
    // The agent gpg started for this home only.
    let _ = Command::new("gpgconf")
        .args(["--kill", "gpg-agent"])
        .env("GNUPGHOME", &home)
        .output();
    assert_ok(&out);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    assert!(
        text(&verify.stderr).contains("Good signature from \"Sluice <sluice@example.com>\""),
        "{}",
        text(&verify.stderr)
    );
}

// The trust fixes of issue 8 (items 14 to 18), in their own file.
#[path = "commit/trust.rs"]
mod trust;

// Issue 11: the report of what each push did, and retries as empty commits.
#[path = "commit/report.rs"]
mod report;
