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
//! retry_subject = "{reason}: {action} {service} ({environment}) {new_image}"
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
//! report_topic = "deploy-reports"            # optional: what each push did
//!
//! [[environments]]
//! name = "prod"
//! branch = "main"
//! directory = "envs/prod"
//! ```
//!
//! Every error names `file:line:column` and the key, like topology errors.

mod batching;
mod environments;
mod identity;
mod kafka;
mod limits;
mod repository;
#[cfg(test)]
mod tests;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_span::value::Value;

use super::index::IndexLimits;
use super::message::Template;
use crate::topology::diag::{ConfigError, Diags};
use crate::topology::kafka::KafkaConfig;
use crate::topology::reader::TableReader;
use crate::topology::Format;

use batching::{default_batch, read_batch};
use environments::read_environments;
use identity::{read_author, read_signing};
use kafka::read_kafka;
use limits::{read_index, read_push, DEFAULT_PUSH};
use repository::read_repository;

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
    /// `line`: one body line per change (and per retry), same placeholders
    /// as `subject`.
    pub line: Template,
    /// `retry_subject`: the subject of a commit that only retries one failed
    /// sync (an empty commit, see the README's committer section), same
    /// placeholders as `subject`.
    pub retry_subject: Template,
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
    /// `report_topic`: where a record per intent a pushed commit accounts
    /// for goes (see [`crate::commit::report`]); none when absent. Not the
    /// intents or dead-letter topic. With `--input`, `--report FILE` takes
    /// the records instead, and this names their topic there.
    pub report_topic: Option<String>,
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
pub const DEFAULT_RETRY_SUBJECT: &str = "{reason}: {action} {service} ({environment}) {new_image}";

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
