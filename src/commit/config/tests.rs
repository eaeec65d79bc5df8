use super::*;

const MINIMAL: &str = "[repository]\nurl = \"file:///srv/deploy.git\"\n[author]\nname = \"Sluice\"\nemail = \"s@example.com\"\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n";

fn errors(src: &str) -> String {
    CommitConfig::parse("c.toml", src).unwrap_err().to_string()
}

#[test]
fn a_minimal_config_gets_the_defaults() {
    let c = CommitConfig::parse("c.toml", MINIMAL).unwrap();
    assert_eq!(c.batch.window, Duration::from_secs(2));
    assert_eq!(c.push.per_second.get(), 10);
    assert_eq!(c.kafka.topic, "deploy-intents");
    assert_eq!(c.kafka.dead_letter_topic, "sluice-committer.dead-letter");
    assert_eq!(c.environments[0].directory, PathBuf::from("envs/prod"));
    assert_eq!(c.repository.credentials, Credentials::None);
}

#[test]
fn a_typo_names_file_line_column_and_key() {
    let text = errors(&MINIMAL.replace("branch = ", "brnach = "));
    assert!(
        text.contains("c.toml:8:1: `environments[0].brnach`: unknown key"),
        "{text}"
    );
    assert!(
        text.contains("`environments[0].branch`: missing required key"),
        "{text}"
    );
}

#[test]
fn passwords_in_urls_are_refused_without_repeating_them() {
    let text = errors(&MINIMAL.replace("file:///srv", "https://bob:hunter2@git.example.com"));
    assert!(text.contains("holds a password"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_token_as_the_user_name_is_refused_with_its_position_and_key() {
    let token = "ghp_sentinel0123456789";
    let text = errors(&MINIMAL.replace("file:///srv", &format!("https://{token}@github.com")));
    assert!(
        text.contains("c.toml:2:8: `repository.url`: the URL holds a user name"),
        "{text}"
    );
    assert!(!text.contains(token), "{text}");
    let ssh = MINIMAL.replace("file:///srv/deploy.git", "ssh://git@git.example.com/d.git");
    assert!(
        CommitConfig::parse("c.toml", &ssh).is_ok(),
        "the ssh user name is no secret"
    );
    let scp = MINIMAL.replace("file:///srv/deploy.git", "git@github.com:o/d.git");
    let c = CommitConfig::parse("c.toml", &scp).unwrap();
    assert_eq!(c.repository.url, "git@github.com:o/d.git");
}

#[test]
fn the_index_bounds_are_read_and_default() {
    let c = CommitConfig::parse("c.toml", MINIMAL).unwrap();
    assert_eq!(c.index, IndexLimits::default());
    let src = format!("{MINIMAL}[index]\nmax_commits = 50\nmax_age = \"2d\"\n");
    let c = CommitConfig::parse("c.toml", &src).unwrap();
    assert_eq!(c.index.max_commits, 50);
    assert_eq!(c.index.max_age, Duration::from_secs(2 * 86_400));
    let src = format!("{MINIMAL}[index]\nmax_commits = 0\n");
    assert!(
        errors(&src).contains("`index.max_commits`"),
        "{}",
        errors(&src)
    );
}

#[test]
fn credentials_must_fit_the_scheme() {
    let src = MINIMAL.replace(
        "file:///srv/deploy.git\"",
        "https://git.example.com/d.git\"\nssh_key_file = \"/k\"",
    );
    assert!(errors(&src).contains("SSH keys need ssh://"));
    let src = MINIMAL.replace(
        "file:///srv/deploy.git\"",
        "https://git.example.com/d.git\"\ntoken_env = \"T\"",
    );
    let c = CommitConfig::parse("c.toml", &src).unwrap();
    assert_eq!(
        c.repository.credentials,
        Credentials::Token {
            env: "T".into(),
            username: "x-access-token".into()
        }
    );
}

#[test]
fn directories_and_branches_cannot_escape() {
    for (from, to, message) in [
        ("envs/prod", "../etc", "`..`"),
        ("envs/prod", "/etc", "relative"),
        ("envs/prod", "envs/.git/x", ".git"),
        ("\"main\"", "\"-f\"", "branch"),
        ("\"main\"", "\"a..b\"", "branch"),
    ] {
        let text = errors(&MINIMAL.replace(from, to));
        assert!(text.contains(message), "{from} -> {to}: {text}");
    }
}

#[test]
fn environments_own_distinct_directories() {
    let second = "[[environments]]\nname = \"all\"\nbranch = \"main\"\ndirectory = \"./envs\"\n";
    let text = errors(&format!("{MINIMAL}{second}"));
    assert!(text.contains("c.toml:13:14: `environments[1].directory`: overlaps the directory of environment `prod`"), "{text}");
    let other_branch = second.replace("\"main\"", "\"release\"");
    assert!(CommitConfig::parse("c.toml", &format!("{MINIMAL}{other_branch}")).is_ok());
    let twice = errors(&format!("{MINIMAL}{}", second.replace("all", "prod")));
    assert!(
        twice.contains("`environments[1].name`: environment `prod` is defined twice"),
        "{twice}"
    );
}

const FULL: &str = "work_dir = \"/w\"\ndead_letter_file = \"d.jsonl\"\n[repository]\nurl = \"ssh://git@git.example.com/d.git\"\nssh_key_file = \"/k\"\n[author]\nname = \"S\"\nemail = \"s@example.com\"\n[signing]\nformat = \"ssh\"\nkey = \"/s\"\n[batch]\nwindow = \"2s\"\nmax_intents = 5\nsubject = \"{service}\"\nmulti_subject = \"{count}\"\nline = \"{reason}\"\nretry_subject = \"retry {service}\"\n[push]\nper_second = 3\nmin_backoff = \"10ms\"\nmax_backoff = \"1s\"\ngive_up_after = \"1m\"\n[index]\nmax_commits = 9\nmax_age = \"1d\"\n[kafka]\nbrokers = \"b:9092\"\ntopic = \"t\"\ngroup = \"g\"\ndead_letter_topic = \"dl\"\nreport_topic = \"rep\"\nformat = \"protobuf\"\n[kafka.properties]\n\"client.id\" = \"c\"\n[kafka.secrets]\n\"sasl.password\" = { env = \"P\" }\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n";

#[test]
fn every_key_is_read_and_no_mutation_panics() {
    let c = CommitConfig::parse("c.toml", FULL).unwrap();
    assert_eq!(c.kafka.format, Format::Protobuf);
    assert_eq!(c.push.give_up_after, Duration::from_secs(60));
    assert!(c.signing.is_some() && c.work_dir.is_some() && c.dead_letter_file.is_some());
    assert_eq!(c.kafka.report_topic.as_deref(), Some("rep"));
    assert_eq!(
        c.batch.retry_subject.render(|v| format!("<{v}>")),
        "retry <service>"
    );
    let lines: Vec<&str> = FULL.lines().collect();
    for i in 0..lines.len() {
        let mut without = lines.clone();
        without.remove(i);
        let _ = CommitConfig::parse("c.toml", &without.join("\n"));
        for replacement in ["1", "0", "-1", "[]", "{}", "true", "\"\"", "\"x\""] {
            let mut changed = lines.clone();
            let swapped;
            if let Some((key, _)) = lines[i].split_once(" = ") {
                swapped = format!("{key} = {replacement}");
                changed[i] = &swapped;
                let _ = CommitConfig::parse("c.toml", &changed.join("\n"));
            }
        }
    }
}

#[test]
fn templates_are_checked() {
    let src = format!("{MINIMAL}[batch]\nsubject = \"{{servce}}\"\nwindow = \"0s\"\n");
    assert!(errors(&src).contains("unknown placeholder {servce}"));
    let src = format!("{MINIMAL}[batch]\nwindow = \"0s\"\nmax_intents = 0\n");
    assert!(errors(&src).contains("must be at least 1"));
}

#[test]
fn a_report_topic_is_optional_and_must_be_a_topic_of_its_own() {
    let c = CommitConfig::parse("c.toml", MINIMAL).unwrap();
    assert_eq!(c.kafka.report_topic, None, "no reports unless asked");
    let kafka = |body: &str| format!("{MINIMAL}[kafka]\n{body}");
    let c = CommitConfig::parse("c.toml", &kafka("report_topic = \"deploy-reports\"\n")).unwrap();
    assert_eq!(c.kafka.report_topic.as_deref(), Some("deploy-reports"));
    let text = errors(&kafka("topic = \"intents\"\nreport_topic = \"intents\"\n"));
    assert!(
        text.contains("c.toml:12:17: `kafka.report_topic`: `intents` is the intents topic (`topic`): reports need a topic of their own"),
        "{text}"
    );
    let text = errors(&kafka("report_topic = \"sluice-committer.dead-letter\"\n"));
    assert!(
        text.contains("c.toml:11:17: `kafka.report_topic`: `sluice-committer.dead-letter` is the dead-letter topic"),
        "{text}"
    );
    let text = errors(&kafka("report_topic = \" \"\n"));
    assert!(
        text.contains("c.toml:11:17: `kafka.report_topic`: must not be empty"),
        "{text}"
    );
    let text = errors(&kafka("report_topic = 3\n"));
    assert!(text.contains("`kafka.report_topic`"), "{text}");
}

#[test]
fn the_retry_subject_defaults_and_is_checked_like_the_other_templates() {
    let c = CommitConfig::parse("c.toml", MINIMAL).unwrap();
    assert_eq!(
        c.batch.retry_subject.render(|v| format!("<{v}>")),
        "<reason>: <action> <service> (<environment>) <new_image>"
    );
    let src = format!("{MINIMAL}[batch]\nretry_subject = \"{{count}} {{nope}}\"\n");
    let text = errors(&src);
    assert!(
        text.contains("c.toml:11:18: `batch.retry_subject`: unknown placeholder {nope}"),
        "{text}"
    );
}
