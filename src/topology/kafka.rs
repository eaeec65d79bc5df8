//! The `[kafka]` table: how `sluice run` talks to the cluster.
//!
//! ```toml
//! [kafka]
//! brokers = "kafka-1:9092,kafka-2:9092"   # --brokers overrides it
//! processing_guarantee = "exactly_once"    # or "at_least_once"
//! commit_interval = "100ms"
//! max_task_idle = "2s"                     # --clock event: wait this long for an empty input
//!
//! [kafka.properties]                       # librdkafka client properties
//! "security.protocol" = "SASL_SSL"
//! "sasl.mechanisms" = "SCRAM-SHA-512"
//! "sasl.username" = "sluice"
//! "ssl.ca.location" = "/etc/kafka/ca.pem"
//!
//! [kafka.secrets]                          # never in the file: an environment variable or a file
//! "sasl.password" = { env = "SLUICE_KAFKA_PASSWORD" }
//! # "ssl.key.password" = { file = "/run/secrets/key-password" }
//! ```
//!
//! A secret is only read when the client is built, is held in a [`Secret`]
//! that prints as `***`, and no error message ever contains its value.

use std::fmt;
use std::path::PathBuf;

use toml_span::value::ValueInner;

use super::diag::Located;
use super::reader::TableReader;
use crate::duration::DurationMs;

/// What `sluice run` promises about its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Consume, process and produce inside Kafka transactions.
    ExactlyOnce,
    /// Offsets committed after the output is acknowledged; a crash may repeat output.
    AtLeastOnce,
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Reads `{ env = "VARIABLE" }` or `{ file = "PATH" }` at `path`
    /// (reported and `None` when it is neither).
    pub(crate) fn read(
        diags: &super::diag::Diags<'_>,
        path: String,
        value: toml_span::Value<'_>,
    ) -> Option<SecretRef> {
        let mut source = TableReader::new(diags, value, path.clone())?;
        let env = source.string("env");
        let file = source.string("file");
        let at = source.pos();
        source.finish();
        match (env, file) {
            (Some(Located { value: var, .. }), None) if !var.is_empty() => {
                Some(SecretRef::Env(var))
            }
            (None, Some(Located { value: f, .. })) if !f.is_empty() => {
                Some(SecretRef::File(PathBuf::from(f)))
            }
            _ => {
                diags.error(at, path, "a secret is { env = \"VARIABLE\" } or { file = \"PATH\" }, exactly one of them, not empty");
                None
            }
        }
    }

    /// The secret's value, a file's trailing line ending dropped. The error
    /// names the variable or the file, never the value.
    pub(crate) fn load(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)")),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind())),
        }
    }
}

/// The validated `[kafka]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: Option<String>,
    pub guarantee: Guarantee,
    pub commit_interval: DurationMs,
    /// Under `--clock event`: how long a task with records in one input
    /// waits for another input that is caught up but empty before it goes
    /// on without it (Kafka Streams' `max.task.idle.ms`); none by default.
    pub max_task_idle: Option<DurationMs>,
    /// librdkafka properties that are not secret, sorted by name.
    pub properties: Vec<(String, String)>,
    /// librdkafka properties whose values are secret, by reference.
    pub secrets: Vec<(String, SecretRef)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            guarantee: Guarantee::ExactlyOnce,
            commit_interval: DurationMs::from_ms(100).expect("non-zero"),
            max_task_idle: None,
            properties: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// Properties Sluice sets itself, from the topology and its guarantee.
const MANAGED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.idempotence",
    // Sluice's producers and its partition lookups assume the Java
    // clients' murmur2 partitioner.
    "partitioner",
];

/// Whether a property holds a credential, which must come from [kafka.secrets].
fn is_secret_property(name: &str) -> bool {
    name.ends_with("password")
        || name.ends_with(".secret")
        || name.ends_with("jaas.config")
        || name == "ssl.key.pem"
        || name == "ssl_key"
        || name == "sasl.oauthbearer.config"
}

fn is_property_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl KafkaConfig {
    /// Reads the `[kafka]` table.
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let diags = t.diags();
        let brokers = t.string("brokers").map(|b| b.value);
        let guarantee = match t.string("processing_guarantee") {
            None => Some(Guarantee::ExactlyOnce),
            Some(g) => {
                match g.value.as_str() {
                    "exactly_once" => Some(Guarantee::ExactlyOnce),
                    "at_least_once" => Some(Guarantee::AtLeastOnce),
                    other => {
                        diags.error(g.pos, t.key_path("processing_guarantee"), format!("unknown guarantee `{other}`; expected exactly_once or at_least_once"));
                        None
                    }
                }
            }
        };
        let commit_interval = t
            .duration("commit_interval")
            .map_or(KafkaConfig::default().commit_interval, |d| d.value);
        let max_task_idle = t.duration("max_task_idle").map(|d| d.value);
        let properties = read_properties(t);
        let secrets = read_secrets(t);
        Some(KafkaConfig {
            brokers,
            guarantee: guarantee?,
            commit_interval,
            max_task_idle,
            properties: properties?,
            secrets: secrets?,
        })
    }

    /// Reads every secret from where it is kept. The error names the property
    /// and the variable or file, never the value.
    pub fn resolve_secrets(&self) -> Result<Vec<(String, Secret)>, SecretError> {
        self.secrets
            .iter()
            .map(|(property, source)| {
                let value = source.load().map_err(|problem| SecretError {
                    property: property.clone(),
                    problem,
                })?;
                Ok((property.clone(), Secret(value)))
            })
            .collect()
    }
}

/// Reads a `properties` table of librdkafka settings (shared with `sluice commit`).
pub(crate) fn read_properties(t: &mut TableReader<'_, '_, '_>) -> Option<Vec<(String, String)>> {
    let diags = t.diags();
    let Some(value) = t.take("properties") else {
        return Some(Vec::new());
    };
    let path = t.key_path("properties");
    let table = TableReader::new(diags, value, path.clone())?;
    let mut out = Vec::new();
    let mut ok = true;
    for (key, mut value) in table.into_entries() {
        let pos = diags.pos(key.span.start);
        let name = key.name.into_owned();
        let key_path = format!("{path}.\"{name}\"");
        let problem = if !is_property_name(&name) {
            Some("not a librdkafka property name (lowercase, digits, `.`, `_`, `-`)".to_owned())
        } else if MANAGED.contains(&name.as_str()) {
            Some(format!(
                "`{name}` is set by Sluice (brokers, app.id and processing_guarantee decide it)"
            ))
        } else if is_secret_property(&name) {
            Some(format!("`{name}` is a credential: put it in [kafka.secrets] as {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"))
        } else {
            None
        };
        let text = match value.take() {
            ValueInner::String(s) => Some(s.into_owned()),
            ValueInner::Integer(i) => Some(i.to_string()),
            ValueInner::Boolean(b) => Some(b.to_string()),
            other => {
                diags.error(
                    pos,
                    key_path.clone(),
                    format!(
                        "expected a string, integer or boolean, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        match (problem, text) {
            (Some(p), _) => {
                ok = false;
                diags.error(pos, key_path, p);
            }
            (None, Some(v)) => out.push((name, v)),
            (None, None) => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reads a `secrets` table of references to credentials (shared with `sluice commit`).
pub(crate) fn read_secrets(t: &mut TableReader<'_, '_, '_>) -> Option<Vec<(String, SecretRef)>> {
    let diags = t.diags();
    let Some(value) = t.take("secrets") else {
        return Some(Vec::new());
    };
    let path = t.key_path("secrets");
    let table = TableReader::new(diags, value, path.clone())?;
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in table.into_entries() {
        let name = key.name.into_owned();
        let key_path = format!("{path}.\"{name}\"");
        if !is_property_name(&name) || MANAGED.contains(&name.as_str()) {
            diags.error(
                diags.pos(key.span.start),
                key_path,
                format!("`{name}` cannot be set as a secret"),
            );
            ok = false;
            continue;
        }
        match SecretRef::read(diags, key_path, value) {
            Some(source) => out.push((name, source)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A secret value: it prints as `***` whichever way it is formatted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from where secrets are kept.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for handing to the client library and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kafka secret `{property}`: {problem}")]
pub struct SecretError {
    pub property: String,
    pub problem: String,
}
