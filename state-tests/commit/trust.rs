//! The committer's trust fixes (issue 8, items 14 to 18): an older intent
//! is never applied after a newer one, no credential in the URL, a bounded
//! trailer index, old images from kustomize entries, and intents from other
//! producers. Real git on disk, the real binary.

use super::*;

/// A replay line for an intent whose record timestamp is `ts` (ms).
fn intent_at(id: &str, action: &str, service: &str, image: &str, ts: u64) -> String {
    let mut line: serde_json::Value =
        serde_json::from_str(&intent(id, action, service, "prod", image)).unwrap();
    line["ts"] = ts.into();
    line.to_string()
}

/// Every version `path` had on main, oldest first.
fn history_of(repo: &Repo, path: &str) -> Vec<String> {
    let revs = git(&repo.bare(), &["rev-list", "--reverse", "main"]);
    revs.lines()
        .map(|rev| git(&repo.bare(), &["show", &format!("{rev}:{path}")]))
        .collect()
}

/// Issue 8, item 14: a deploy and the rollback that follows it arrive in one
/// batch; the files already hold the rollback's image, so nothing changes.
/// The run stops before acknowledging (a file is never acknowledged) and
/// the intents come again in batches of one: the deploy must not be applied,
/// since the newer rollback already decided the service's image.
#[test]
fn a_redelivered_older_intent_is_never_applied_after_a_newer_one() {
    let repo = Repo::new(&["prod"], &services(1));
    let v0 = "registry.example.com/svc-00:v0";
    let v1 = "registry.example.com/svc-00:v1";
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[
            intent_at("deploy-v1", "deploy", "svc-00", v1, 1_000),
            intent_at("rollback-v0", "rollback", "svc-00", v0, 2_000),
        ],
    );
    let work = repo.path().join("work");
    let together = repo.config(
        "together.toml",
        &repo.url(),
        &["prod"],
        "[batch]\nmax_intents = 2\n",
    );
    let first = commit_run(&together, &input, &work, &[]);
    assert_ok(&first);
    assert!(
        text(&first.stderr).contains("1 superseded, 0 already committed, 1 already applied"),
        "{}",
        text(&first.stderr)
    );

    let one_by_one = repo.config(
        "apart.toml",
        &repo.url(),
        &["prod"],
        "[batch]\nmax_intents = 1\n",
    );
    let again = commit_run(&one_by_one, &input, &work, &[]);
    assert_ok(&again);
    let versions = history_of(&repo, "envs/prod/svc-00.yaml");
    assert!(
        !versions.contains(&manifest("svc-00", v1)),
        "the older deploy was committed after the rollback: {}",
        text(&again.stderr)
    );
    assert_eq!(repo.file("envs/prod/svc-00.yaml"), manifest("svc-00", v0));
    // A third delivery changes nothing at all, not even a record.
    let commits = repo.commit_count();
    assert_ok(&commit_run(&one_by_one, &input, &work, &[]));
    assert_eq!(repo.commit_count(), commits);
}

/// The same with a fresh work directory: the newest time comes from the
/// branch's trailers, not from anything the first committer kept locally.
#[test]
fn the_newest_intent_time_is_rebuilt_from_the_trailers_at_start() {
    let repo = Repo::new(&["prod"], &services(1));
    let v1 = "registry.example.com/svc-00:v1";
    let v2 = "registry.example.com/svc-00:v2";
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let newer = repo.path().join("newer.jsonl");
    write_lines(&newer, &[intent_at("new", "deploy", "svc-00", v2, 5_000)]);
    assert_ok(&commit_run(
        &config,
        &newer,
        &repo.path().join("work-1"),
        &[],
    ));
    let older = repo.path().join("older.jsonl");
    write_lines(&older, &[intent_at("old", "deploy", "svc-00", v1, 4_000)]);
    let out = commit_run(&config, &older, &repo.path().join("work-2"), &[]);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("1 outdated"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(repo.file("envs/prod/svc-00.yaml"), manifest("svc-00", v2));
    assert_eq!(repo.commit_count(), 2, "seed + the newer deploy");
}

/// Issue 8, item 15: a token as the URL's user name (or a password) is a
/// config error at `file:line:column` naming the key, and never echoed; no
/// clone is made. An SSH user name is not a credential.
#[test]
fn a_credential_in_the_repository_url_is_refused_and_never_echoed() {
    let repo = Repo::new(&["prod"], &services(1));
    let secret = "ghp_SENTINEL0123456789abcdef";
    let input = repo.path().join("none.jsonl");
    write_lines(&input, &[]);
    for url in [
        format!("https://{secret}@127.0.0.1:1/deploy.git"),
        format!("https://x-access-token:{secret}@127.0.0.1:1/deploy.git"),
        format!("ssh://git:{secret}@127.0.0.1:1/deploy.git"),
    ] {
        let config = repo.config(
            "commit.toml",
            &url,
            &["prod"],
            "[push]\ngive_up_after = \"1s\"\n",
        );
        let work = repo.path().join("work");
        let out = commit_run(&config, &input, &work, &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{url} accepted: {stderr}");
        assert!(
            stderr.contains("commit.toml:2:8: `repository.url`: the URL holds a"),
            "{stderr}"
        );
        assert!(!stderr.contains(secret), "the secret was echoed: {stderr}");
        assert!(
            !work.join("branches").exists(),
            "a clone was made for {url}"
        );
    }
    for url in [
        "ssh://git@git.example.com/platform/deploy.git",
        "git@git.example.com:platform/deploy.git",
    ] {
        let config = repo.config("commit.toml", url, &["prod"], "");
        let out = sluice()
            .arg("commit")
            .arg(&config)
            .arg("--check")
            .output()
            .unwrap();
        assert_ok(&out);
    }
}

/// Issue 8, item 16: start-up reads the trailers of the last `max_commits`
/// commits only (the index is bounded), yet what it read still counts.
#[test]
fn the_trailer_index_reads_only_its_window_of_history() {
    let repo = Repo::new(&["prod"], &services(1));
    let seed = repo.path().join("seed");
    for i in 0..30 {
        git(
            &seed,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                &format!("old {i}\n\nSluice-Intent: old-{i}"),
            ],
        );
    }
    git(&seed, &["push", "--quiet", "origin", "main"]);
    let config = repo.config(
        "commit.toml",
        &repo.url(),
        &["prod"],
        "[index]\nmax_commits = 10\n",
    );
    let input = repo.path().join("intents.jsonl");
    // old-25 is within the last 10 commits, old-5 is not.
    write_lines(
        &input,
        &[intent(
            "old-25",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v25",
        )],
    );
    let out = sluice()
        .arg("commit")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--work-dir")
        .arg(repo.path().join("work"))
        .env("SLUICE_LOG", "info")
        .output()
        .unwrap();
    assert_ok(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("indexed_ids=10"), "{stderr}");
    assert!(stderr.contains("1 already committed"), "{stderr}");
    assert_eq!(repo.commit_count(), 31, "nothing new to commit");
}

/// Issue 8, item 17: a service edited only through a kustomize `images:`
/// entry names its old image in the commit message, not "(none)".
#[test]
fn a_kustomize_only_service_names_its_old_image_in_the_message() {
    let repo = Repo::new(&["prod"], &[]);
    let seed = repo.path().join("seed");
    std::fs::create_dir_all(seed.join("envs/prod")).unwrap();
    std::fs::write(
        seed.join("envs/prod/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: registry.example.com/svc-00\n    newTag: v0\n",
    )
    .unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "kustomization"]);
    git(&seed, &["push", "--quiet", "origin", "main"]);
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[intent(
            "k1",
            "deploy",
            "svc-00",
            "prod",
            "registry.example.com/svc-00:v5",
        )],
    );
    assert_ok(&commit_run(&config, &input, &repo.path().join("work"), &[]));
    let message = git(&repo.bare(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("- deploy svc-00 in prod: registry.example.com/svc-00:v0 -> registry.example.com/svc-00:v5"),
        "{message}"
    );
    assert!(!message.contains("(none)"), "{message}");
}

/// Issue 8, item 18: intents from other producers carry fields the
/// committer does not use, or lack them; only intent_id, action, service,
/// environment and image are required.
#[test]
fn intents_from_other_producers_need_only_the_fields_the_committer_uses() {
    let svcs = services(4);
    let repo = Repo::new(&["prod"], &svcs);
    let config = repo.config("commit.toml", &repo.url(), &["prod"], "");
    let line = |value: serde_json::Value| {
        serde_json::json!({"topic": "deploy-intents", "ts": 1, "key": null, "value": value})
            .to_string()
    };
    let image = |s: &str| format!("registry.example.com/{s}:v9");
    let input = repo.path().join("intents.jsonl");
    write_lines(
        &input,
        &[
            // caused_by as a list, as the next versions write it.
            line(
                serde_json::json!({"action": "deploy", "service": "svc-00", "environment": "prod",
                "image": image("svc-00"), "reason": "r", "intent_id": "list", "caused_by": ["alert a", "alert b"]}),
            ),
            // No reason, no caused_by, no previous_image.
            line(
                serde_json::json!({"action": "deploy", "service": "svc-01", "environment": "prod",
                "image": image("svc-01"), "intent_id": "bare"}),
            ),
            // Fields nobody knows yet, and a reason that is not text.
            line(
                serde_json::json!({"action": "rollback", "service": "svc-02", "environment": "prod",
                "image": image("svc-02"), "intent_id": "extra", "reason": {"code": 7},
                "schema": 3, "labels": {"team": "shop"}, "caused_by": null}),
            ),
            // Without an image there is nothing to write: refused.
            line(
                serde_json::json!({"action": "deploy", "service": "svc-03", "environment": "prod",
                "intent_id": "no-image"}),
            ),
        ],
    );
    let out = commit_run(&config, &input, &repo.path().join("work"), &[]);
    assert_ok(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("4 intents: 3 applied"), "{stderr}");
    assert_eq!(repo.trailers(), ["list", "bare", "extra"]);
    for s in &svcs[..3] {
        assert_eq!(
            repo.file(&format!("envs/prod/{s}.yaml")),
            manifest(s, &image(s))
        );
    }
    let letters = std::fs::read_to_string(repo.path().join("work/dead-letters.jsonl")).unwrap();
    assert_eq!(letters.lines().count(), 1, "{letters}");
    assert!(
        letters.contains("not_an_intent") && letters.contains("image"),
        "{letters}"
    );
}
