//! The committer's configuration file (`sluice commit CONFIG`).
//!
//! ```toml
//! # Where the committer keeps its clones; --work-dir overrides it.
//! work_dir = "/var/lib/sluice/commit"
//! # Intents that cannot be applied, when reading --input (Kafka: the dead-letter topic).
//! dead_letter_file = "dead-letters.jsonl"
//!
//! [repository]
//! url = "ssh://git@git.example.com/platform/deploy.git"
//! ssh_key_file = "/run/secrets/deploy-key"     # or ssh_agent = true
//! # url = "https://git.example.com/platform/deploy.git"
//! # token_env = "GITOPS_TOKEN"                 # the variable's name, never the token
//!
//! [author]
//! name = "Sluice"
//! email = "sluice@example.com"
//!
//! [signing]                                    # optional
//! format = "ssh"                               # or "openpgp"
//! key = "/run/secrets/signing-key"             # ssh: key file; openpgp: key id
//!
//! [batch]
//! window = "2s"
//!
//! [push]
//! per_second = 5
//!
//! [index]                                      # how much history the trailers are read from
//! max_commits = 10000
//! max_age = "30d"
//!
//! [kafka]
//! brokers = "kafka-1:9092"
//! topic = "deploy-intents"
//! group = "sluice-committer"
//!
//! [[environments]]
//! name = "prod"
//! branch = "main"
//! directory = "envs/prod"
//! ```
//!
//! Every error names `file:line:column` and the key, like topology errors.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_span::value::Value;

use super::index::IndexLimits;
use super::message::Template;
use super::url::{check_url, Scheme};
use crate::topology::diag::{ConfigError, Diags, Located, Pos};
use crate::topology::kafka::{read_properties, read_secrets, KafkaConfig};
use crate::topology::reader::TableReader;
use crate::topology::Format;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct CommitConfig {
    /// The file it was read from, as errors show it.
    pub file: String,
    /// Where clones are kept; default `.sluice-commit` in the current directory.
    pub work_dir: Option<PathBuf>,
    /// Where dead letters go when reading `--input` (default `WORK_DIR/dead-letters.jsonl`).
    pub dead_letter_file: Option<PathBuf>,
    pub repository: RepositoryConfig,
    pub author: Author,
    pub signing: Option<Signing>,
    pub batch: BatchConfig,
    pub push: PushConfig,
    /// `[index]`: the commits whose trailers are read (`max_commits`, `max_age`).
    pub index: IndexLimits,
    pub kafka: SourceConfig,
    /// Environments in file order; at least one.
    pub environments: Vec<Environment>,
}

/// `[repository]`: the GitOps repository and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryConfig {
    /// `file://`, `ssh://` (or `user@host:path`), `https://` (and, for local
    /// tests, `git://` or `http://`). No credential in it (see [`super::url`]):
    /// credentials are given by reference.
    pub url: String,
    pub credentials: Credentials,
}

/// How the committer proves who it is; the secret itself is never in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// `ssh_key_file`: a private key file, used with `IdentitiesOnly`.
    SshKeyFile(PathBuf),
    /// `ssh_agent = true`: the keys of the agent in `SSH_AUTH_SOCK`.
    SshAgent,
    /// `token_env`: an HTTPS token read from this environment variable, sent
    /// as basic auth with `token_username` (default `x-access-token`).
    Token {
        env: String,
        username: String,
    },
}

/// `[author]`: who the commits are by (author and committer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// `[signing]`: sign every commit (`git commit -S`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    pub format: SigningFormat,
    /// SSH: the private key file (or its `.pub` with an agent); OpenPGP: a key id.
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningFormat {
    Ssh,
    Openpgp,
}

/// `[batch]`: how intents become commits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// `window`: intents arriving within this long of the first one of a
    /// batch become one commit per branch. Default `2s`.
    pub window: Duration,
    /// `max_intents`: a batch closes early once it holds this many. Default 10000.
    pub max_intents: NonZeroUsize,
    /// `subject`: the commit subject when a commit changes one service.
    /// Placeholders: {service} {environment} {old_image} {new_image} {action}
    /// {reason} {intent_id} {branch} {count}.
    pub subject: Template,
    /// `multi_subject`: the subject when a commit changes several services
    /// (only {branch} {count} and {environment}, the environments joined by `,`).
    pub multi_subject: Template,
    /// `line`: one body line per change, same placeholders as `subject`.
    pub line: Template,
}

/// `[push]`: pushing and retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushConfig {
    /// `per_second`: at most this many pushes per second to the repository
    /// (a GCRA limit, bursts of the same size). Default 10.
    pub per_second: NonZeroU32,
    /// `min_backoff`: the first wait after a rejected or failed push. Default `20ms`.
    pub min_backoff: Duration,
    /// `max_backoff`: the waits double up to this. Default `5s`.
    pub max_backoff: Duration,
    /// `give_up_after`: a batch that cannot be pushed for this long stops the
    /// committer with an error (nothing is acknowledged). Default `5m`.
    pub give_up_after: Duration,
}

/// `[kafka]`: where intents come from when no `--input` is given.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `brokers`: bootstrap servers; `--brokers` overrides them.
    pub brokers: Option<String>,
    /// `topic`: the intents topic (also selects the lines of `--input`). Default `deploy-intents`.
    pub topic: String,
    /// `group`: the committer's own consumer group. Default `sluice-committer`.
    pub group: String,
    /// `dead_letter_topic`: default `<group>.dead-letter`.
    pub dead_letter_topic: String,
    /// `format`: `json` (default) or `protobuf` (`sluice.v1.DeploymentIntent`).
    pub format: Format,
    /// `[kafka.properties]` and `[kafka.secrets]`, as in topologies.
    pub client: KafkaConfig,
}

/// An `[[environments]]` entry: the branch it lives on and the directory it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `name`: matches the intents' `environment`.
    pub name: String,
    /// `branch`: the branch commits for it go to.
    pub branch: String,
    /// `directory`: relative to the repository root; its YAML files are
    /// searched for markers. No `..`, not absolute.
    pub directory: PathBuf,
}

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum CommitConfigError {
    #[error("cannot read committer config {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

pub const DEFAULT_SUBJECT: &str = "{action} {service} to {new_image} in {environment}";
pub const DEFAULT_MULTI_SUBJECT: &str = "Update {count} images on {branch} ({environment})";
pub const DEFAULT_LINE: &str =
    "- {action} {service} in {environment}: {old_image} -> {new_image} ({reason})";

impl CommitConfig {
    pub fn load(path: &Path) -> Result<CommitConfig, CommitConfigError> {
        let shown = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|cause| CommitConfigError::Read {
            path: shown.clone(),
            cause,
        })?;
        Ok(CommitConfig::parse(&shown, &src)?)
    }

    /// Validates the text of a config file; `file` is the name errors show.
    pub fn parse(file: &str, src: &str) -> Result<CommitConfig, ConfigError> {
        let diags = Diags::new(src);
        let value = toml_span::parse(src).map_err(|e| ConfigError::syntax(&diags, file, &e))?;
        let config = read_root(&diags, file, value);
        diags.finish(file)?;
        Ok(config.expect("a config is built whenever no error was reported"))
    }

    /// The environment an intent names, if configured.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The branches in first-mention order, each once.
    pub fn branches(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.environments {
            if !out.contains(&e.branch.as_str()) {
                out.push(&e.branch);
            }
        }
        out
    }
}

fn read_root(diags: &Diags<'_>, file: &str, value: Value<'_>) -> Option<CommitConfig> {
    let mut root = TableReader::new(diags, value, String::new())?;
    let work_dir = root.string("work_dir").map(|s| PathBuf::from(s.value));
    let dead_letter_file = root
        .string("dead_letter_file")
        .map(|s| PathBuf::from(s.value));
    let repository = required_table(&mut root, "repository", read_repository);
    let author = required_table(&mut root, "author", read_author);
    let signing = optional_table(&mut root, "signing", read_signing);
    let batch = optional_table(&mut root, "batch", read_batch).unwrap_or_else(default_batch);
    let push = optional_table(&mut root, "push", read_push).unwrap_or(Some(DEFAULT_PUSH));
    let index =
        optional_table(&mut root, "index", read_index).unwrap_or(Some(IndexLimits::default()));
    let kafka = optional_table(&mut root, "kafka", read_kafka).unwrap_or_else(|| {
        Some(SourceConfig::with_defaults(
            None,
            None,
            None,
            KafkaConfig::default(),
        ))
    });
    let environments = read_environments(&mut root);
    root.finish();
    Some(CommitConfig {
        file: file.to_owned(),
        work_dir,
        dead_letter_file,
        repository: repository?,
        author: author?,
        signing: match signing {
            None => None,
            Some(parsed) => Some(parsed?),
        },
        batch: batch?,
        push: push?,
        index: index?,
        kafka: kafka?,
        environments: environments?,
    })
}

type Reader<T> = fn(&mut TableReader<'_, '_, '_>) -> Option<T>;

fn required_table<T>(
    root: &mut TableReader<'_, '_, '_>,
    key: &'static str,
    read: Reader<T>,
) -> Option<T> {
    if !root.contains(key) {
        root.missing(key);
    }
    optional_table(root, key, read).flatten()
}

/// `None` when the table is absent, `Some(None)` when it is invalid.
fn optional_table<T>(
    root: &mut TableReader<'_, '_, '_>,
    key: &'static str,
    read: Reader<T>,
) -> Option<Option<T>> {
    let value = root.take(key)?;
    let Some(mut t) = TableReader::new(root.diags(), value, key.into()) else {
        return Some(None);
    };
    let result = read(&mut t);
    t.finish();
    Some(result)
}

fn read_repository(t: &mut TableReader<'_, '_, '_>) -> Option<RepositoryConfig> {
    let url = t.required_string("url");
    let key_file = t.string("ssh_key_file");
    let agent = t.bool("ssh_agent").unwrap_or(false);
    let token_env = t.string("token_env");
    let username = t.string("token_username");
    let url = url?;
    let scheme = match check_url(&url.value) {
        Ok(scheme) => scheme,
        Err(message) => {
            t.diags().error(url.pos, t.key_path("url"), message);
            return None;
        }
    };
    let given = [key_file.is_some(), agent, token_env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        t.diags().error(
            t.pos(),
            t.path().to_owned(),
            "give at most one of ssh_key_file, ssh_agent and token_env",
        );
        return None;
    }
    let credentials = match (key_file, agent, token_env) {
        (Some(k), _, _) => Credentials::SshKeyFile(PathBuf::from(k.value)),
        (None, true, _) => Credentials::SshAgent,
        (None, false, Some(env)) => {
            if env.value.is_empty() || env.value.contains('=') {
                let key = t.key_path("token_env");
                t.diags()
                    .error(env.pos, key, "the name of an environment variable");
                return None;
            }
            Credentials::Token {
                env: env.value,
                username: username.map_or_else(|| "x-access-token".into(), |u| u.value),
            }
        }
        (None, false, None) => Credentials::None,
    };
    let fits = match &credentials {
        Credentials::None => true,
        Credentials::SshKeyFile(_) | Credentials::SshAgent => scheme == Scheme::Ssh,
        // Plain http only to this machine, where the token never crosses a network.
        Credentials::Token { .. } => {
            scheme == Scheme::Https
                || (scheme == Scheme::Http
                    && [
                        "http://127.0.0.1:",
                        "http://127.0.0.1/",
                        "http://localhost:",
                        "http://localhost/",
                    ]
                    .iter()
                    .any(|p| url.value.starts_with(p)))
        }
    };
    if !fits {
        t.diags().error(
            url.pos,
            t.key_path("url"),
            format!("{}:// cannot use these credentials: SSH keys need ssh://, a token needs https:// (http:// only to localhost)", scheme.as_str()),
        );
        return None;
    }
    Some(RepositoryConfig {
        url: url.value,
        credentials,
    })
}

fn read_author(t: &mut TableReader<'_, '_, '_>) -> Option<Author> {
    let name = t.required_string("name");
    let email = t.required_string("email");
    let (name, email) = (name?, email?);
    let mut ok = true;
    for (key, v) in [("name", &name), ("email", &email)] {
        if v.value.trim().is_empty() || v.value.contains(['<', '>', '\n', '\r', '\0']) {
            t.diags().error(
                v.pos,
                t.key_path(key),
                "must not be empty or hold <, > or line breaks",
            );
            ok = false;
        }
    }
    ok.then_some(Author {
        name: name.value,
        email: email.value,
    })
}

fn read_signing(t: &mut TableReader<'_, '_, '_>) -> Option<Signing> {
    let format = t.required_string("format");
    let key = t.required_string("key");
    let format = match format?.value.as_str() {
        "ssh" => SigningFormat::Ssh,
        "openpgp" => SigningFormat::Openpgp,
        other => {
            let msg = format!("unknown format `{other}`; expected ssh or openpgp");
            t.diags().error(t.pos(), t.key_path("format"), msg);
            return None;
        }
    };
    Some(Signing {
        format,
        key: key?.value,
    })
}

fn default_batch() -> Option<BatchConfig> {
    Some(BatchConfig {
        window: Duration::from_secs(2),
        max_intents: NonZeroUsize::new(10_000)?,
        subject: Template::parse(DEFAULT_SUBJECT, Template::CHANGE).ok()?,
        multi_subject: Template::parse(DEFAULT_MULTI_SUBJECT, Template::COMMIT).ok()?,
        line: Template::parse(DEFAULT_LINE, Template::CHANGE).ok()?,
    })
}

fn read_batch(t: &mut TableReader<'_, '_, '_>) -> Option<BatchConfig> {
    let defaults = default_batch()?;
    let window = match t.take("window") {
        None => Some(defaults.window),
        Some(v) => zero_or_duration(t, "window", v),
    };
    let max_intents = t
        .integer("max_intents", 1)
        .map_or(Some(defaults.max_intents), |n| {
            NonZeroUsize::new(n.value as usize)
        });
    let subject = template(t, "subject", Template::CHANGE, defaults.subject);
    let multi_subject = template(t, "multi_subject", Template::COMMIT, defaults.multi_subject);
    let line = template(t, "line", Template::CHANGE, defaults.line);
    Some(BatchConfig {
        window: window?,
        max_intents: max_intents?,
        subject: subject?,
        multi_subject: multi_subject?,
        line: line?,
    })
}

/// A duration where `0s` is allowed (a window of zero: no waiting).
fn zero_or_duration(t: &TableReader<'_, '_, '_>, key: &str, mut v: Value<'_>) -> Option<Duration> {
    let pos = t.diags().pos(v.span.start);
    let text = match v.take() {
        toml_span::value::ValueInner::String(s) => s.into_owned(),
        other => {
            let msg = format!(
                "expected a duration such as \"2s\", found {}",
                other.type_str()
            );
            t.diags().error(pos, t.key_path(key), msg);
            return None;
        }
    };
    if text.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Some(Duration::ZERO);
    }
    match crate::duration::parse_duration(&text) {
        Ok(d) => Some(Duration::from_millis(d.as_ms())),
        Err(e) => {
            t.diags().error(pos, t.key_path(key), e);
            None
        }
    }
}

fn template(
    t: &mut TableReader<'_, '_, '_>,
    key: &'static str,
    allowed: &[&'static str],
    default: Template,
) -> Option<Template> {
    let Some(text) = t.string(key) else {
        return Some(default);
    };
    match Template::parse(&text.value, allowed) {
        Ok(tpl) => Some(tpl),
        Err(e) => {
            t.diags().error(text.pos, t.key_path(key), e);
            None
        }
    }
}

const DEFAULT_PUSH: PushConfig = PushConfig {
    per_second: NonZeroU32::MIN.saturating_add(9),
    min_backoff: Duration::from_millis(20),
    max_backoff: Duration::from_secs(5),
    give_up_after: Duration::from_secs(300),
};

fn read_push(t: &mut TableReader<'_, '_, '_>) -> Option<PushConfig> {
    let per_second = t
        .integer("per_second", 1)
        .map_or(Some(DEFAULT_PUSH.per_second), |n| {
            NonZeroU32::new(u32::try_from(n.value).unwrap_or(u32::MAX))
        });
    let ms = |d: Located<crate::duration::DurationMs>| Duration::from_millis(d.value.as_ms());
    let min_backoff = t
        .duration("min_backoff")
        .map_or(DEFAULT_PUSH.min_backoff, ms);
    let max_backoff = t
        .duration("max_backoff")
        .map_or(DEFAULT_PUSH.max_backoff, ms);
    let give_up_after = t
        .duration("give_up_after")
        .map_or(DEFAULT_PUSH.give_up_after, ms);
    if max_backoff < min_backoff {
        t.diags().error(
            t.pos(),
            t.key_path("max_backoff"),
            "max_backoff is shorter than min_backoff",
        );
        return None;
    }
    Some(PushConfig {
        per_second: per_second?,
        min_backoff,
        max_backoff,
        give_up_after,
    })
}

fn read_index(t: &mut TableReader<'_, '_, '_>) -> Option<IndexLimits> {
    let defaults = IndexLimits::default();
    let max_commits = t
        .integer("max_commits", 1)
        .map_or(defaults.max_commits, |n| {
            usize::try_from(n.value).unwrap_or(usize::MAX)
        });
    let max_age = t
        .duration("max_age")
        .map_or(defaults.max_age, |d| Duration::from_millis(d.value.as_ms()));
    Some(IndexLimits {
        max_commits,
        max_age,
    })
}

impl SourceConfig {
    fn with_defaults(
        brokers: Option<String>,
        topic: Option<String>,
        group: Option<String>,
        client: KafkaConfig,
    ) -> SourceConfig {
        let group = group.unwrap_or_else(|| "sluice-committer".into());
        SourceConfig {
            brokers,
            topic: topic.unwrap_or_else(|| "deploy-intents".into()),
            dead_letter_topic: format!("{group}.dead-letter"),
            format: Format::Json,
            group,
            client,
        }
    }
}

fn read_kafka(t: &mut TableReader<'_, '_, '_>) -> Option<SourceConfig> {
    let brokers = t.string("brokers").map(|s| s.value);
    let topic = non_empty(t, "topic");
    let group = non_empty(t, "group");
    let dead_letter_topic = non_empty(t, "dead_letter_topic");
    let format = match non_empty(t, "format")?.as_deref() {
        None | Some("json") => Some(Format::Json),
        Some("protobuf") => Some(Format::Protobuf),
        Some(other) => {
            let msg = format!("unknown format `{other}`; expected json or protobuf");
            t.diags().error(t.pos(), t.key_path("format"), msg);
            None
        }
    };
    let properties = read_properties(t);
    let secrets = read_secrets(t);
    let client = KafkaConfig {
        properties: properties?,
        secrets: secrets?,
        ..KafkaConfig::default()
    };
    let mut config = SourceConfig::with_defaults(brokers, topic?, group?, client);
    if let Some(dl) = dead_letter_topic? {
        config.dead_letter_topic = dl;
    }
    config.format = format?;
    Some(config)
}

/// An optional string that must not be empty: `Some(None)` when absent.
fn non_empty(t: &mut TableReader<'_, '_, '_>, key: &'static str) -> Option<Option<String>> {
    match t.string(key) {
        None => Some(None),
        Some(s) if s.value.trim().is_empty() => {
            t.diags().error(s.pos, t.key_path(key), "must not be empty");
            None
        }
        Some(s) => Some(Some(s.value)),
    }
}

fn read_environments(root: &mut TableReader<'_, '_, '_>) -> Option<Vec<Environment>> {
    let diags = root.diags();
    let tables = root.tables("environments");
    if tables.is_empty() {
        diags.error(
            root.pos(),
            "environments",
            "at least one [[environments]] entry (name, branch, directory) is needed",
        );
        return None;
    }
    let mut out: Vec<Environment> = Vec::new();
    let mut ok = true;
    for (path, value) in tables {
        let Some(mut t) = TableReader::new(diags, value, path) else {
            ok = false;
            continue;
        };
        let (name_key, dir_key) = (t.key_path("name"), t.key_path("directory"));
        let env = read_environment(&mut t);
        t.finish();
        let Some((env, name_pos, dir_pos)) = env else {
            ok = false;
            continue;
        };
        if out.iter().any(|e| e.name == env.name) {
            let msg = format!("environment `{}` is defined twice", env.name);
            diags.error(name_pos, name_key, msg);
            ok = false;
        } else if let Some(other) = out
            .iter()
            .find(|e| e.branch == env.branch && overlap(e, &env))
        {
            let msg = format!(
                "overlaps the directory of environment `{}` on branch {}; each environment owns its directory",
                other.name, env.branch
            );
            diags.error(dir_pos, dir_key, msg);
            ok = false;
        } else {
            out.push(env);
        }
    }
    ok.then_some(out)
}

/// Whether one directory contains the other.
fn overlap(a: &Environment, b: &Environment) -> bool {
    let parts = |e: &Environment| -> Vec<std::ffi::OsString> {
        e.directory
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_owned()),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    a.iter().zip(&b).all(|(x, y)| x == y)
}

fn read_environment(t: &mut TableReader<'_, '_, '_>) -> Option<(Environment, Pos, Pos)> {
    let name = t.required_string("name");
    let branch = t.required_string("branch");
    let directory = t.required_string("directory");
    let (name, branch, directory) = (name?, branch?, directory?);
    let diags = t.diags();
    let mut ok = true;
    if !crate::record::oci::is_name(&name.value) {
        diags.error(
            name.pos,
            t.key_path("name"),
            "letters, digits, `.`, `_` and `-`, starting with a letter or digit",
        );
        ok = false;
    }
    if let Err(e) = check_branch(&branch.value) {
        diags.error(branch.pos, t.key_path("branch"), e);
        ok = false;
    }
    if let Err(e) = check_directory(&directory.value) {
        diags.error(directory.pos, t.key_path("directory"), e);
        ok = false;
    }
    ok.then(|| {
        (
            Environment {
                name: name.value,
                branch: branch.value,
                directory: PathBuf::from(directory.value),
            },
            name.pos,
            directory.pos,
        )
    })
}

/// The rules of `git check-ref-format --branch` that matter here, so a
/// branch name can never be read as an option or a revision range.
fn check_branch(branch: &str) -> Result<(), String> {
    let bad = branch.is_empty()
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err("not a valid branch name".into())
    } else {
        Ok(())
    }
}

/// A directory inside the repository: relative, no `..`, not `.git`.
fn check_directory(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Err("must not be empty (use \".\" for the whole repository)".into());
    }
    for c in Path::new(dir).components() {
        match c {
            Component::Normal(part) if part == ".git" => {
                return Err("must not point into .git".into())
            }
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("must not contain `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the repository root".into())
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
        let second =
            "[[environments]]\nname = \"all\"\nbranch = \"main\"\ndirectory = \"./envs\"\n";
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

    const FULL: &str = "work_dir = \"/w\"\ndead_letter_file = \"d.jsonl\"\n[repository]\nurl = \"ssh://git@git.example.com/d.git\"\nssh_key_file = \"/k\"\n[author]\nname = \"S\"\nemail = \"s@example.com\"\n[signing]\nformat = \"ssh\"\nkey = \"/s\"\n[batch]\nwindow = \"2s\"\nmax_intents = 5\nsubject = \"{service}\"\nmulti_subject = \"{count}\"\nline = \"{reason}\"\n[push]\nper_second = 3\nmin_backoff = \"10ms\"\nmax_backoff = \"1s\"\ngive_up_after = \"1m\"\n[index]\nmax_commits = 9\nmax_age = \"1d\"\n[kafka]\nbrokers = \"b:9092\"\ntopic = \"t\"\ngroup = \"g\"\ndead_letter_topic = \"dl\"\nformat = \"protobuf\"\n[kafka.properties]\n\"client.id\" = \"c\"\n[kafka.secrets]\n\"sasl.password\" = { env = \"P\" }\n[[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n";

    #[test]
    fn every_key_is_read_and_no_mutation_panics() {
        let c = CommitConfig::parse("c.toml", FULL).unwrap();
        assert_eq!(c.kafka.format, Format::Protobuf);
        assert_eq!(c.push.give_up_after, Duration::from_secs(60));
        assert!(c.signing.is_some() && c.work_dir.is_some() && c.dead_letter_file.is_some());
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
}
