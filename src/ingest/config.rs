//! The `sluice ingest` config file: where to listen, how to reach Kafka and
//! the webhook endpoints, validated like topologies (every error with
//! `file:line:column` and the key at fault, all of them in one pass).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_span::Value;

use super::auth::{read_auth, AuthConfig};
use super::limits::{read_rate_limit, RateLimit};
use crate::format::{DecodeOptions, Format, FORMATS};
use crate::record::Kind;
use crate::topology::diag::{ConfigError, Diags, Located, Pos};
use crate::topology::kafka::{KafkaConfig, Secret, SecretRef};
use crate::topology::reader::TableReader;
use crate::topology::source::{read_decode_options, read_kind, read_source_format};
use crate::topology::{read_name, read_topic};

/// Default largest accepted body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The validated config file.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub file: String,
    pub listen: Listen,
    pub kafka: KafkaConfig,
    /// How long a record may take to be acknowledged by the broker before
    /// the request is answered 503 (librdkafka's `message.timeout.ms`).
    pub delivery_timeout: Duration,
    pub endpoints: Vec<EndpointConfig>,
}

/// The `[listen]` table.
#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// After SIGTERM, how long in-flight requests may take before the
    /// server stops waiting for them.
    pub shutdown_timeout: Duration,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `[[endpoints]]` entry: `POST /hooks/NAME`.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub name: String,
    pub topic: String,
    pub format: Format,
    pub kind: Kind,
    pub decode: DecodeOptions,
    pub max_body: usize,
    pub rate_limit: Option<RateLimit>,
    pub auth: AuthConfig,
    /// The request header holding the sender's delivery id, if any.
    pub delivery_header: Option<String>,
}

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    #[error("cannot read ingest config {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl IngestConfig {
    pub fn load(path: &Path) -> Result<IngestConfig, IngestConfigError> {
        let shown = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|cause| IngestConfigError::Read {
            path: shown.clone(),
            cause,
        })?;
        Ok(IngestConfig::parse(&shown, &src)?)
    }

    /// Validates the text of a config file; `file` is the name errors show.
    pub fn parse(file: &str, src: &str) -> Result<IngestConfig, ConfigError> {
        let diags = Diags::new(src);
        let value = toml_span::parse(src).map_err(|e| ConfigError::syntax(&diags, file, &e))?;
        let config = read_root(&diags, file, value);
        diags.finish(file)?;
        Ok(config.expect("a config is built whenever no error was reported"))
    }
}

fn read_root(diags: &Diags<'_>, file: &str, value: Value<'_>) -> Option<IngestConfig> {
    let mut root = TableReader::new(diags, value, String::new())?;
    let listen = match root.take("listen") {
        Some(v) => read_listen(diags, v),
        None => {
            root.missing("listen");
            None
        }
    };
    let kafka = match root.take("kafka") {
        Some(v) => read_kafka(diags, v),
        None => Some((KafkaConfig::default(), DEFAULT_DELIVERY_TIMEOUT)),
    };
    let tables = root.tables("endpoints");
    if tables.is_empty() {
        diags.error(
            Pos { line: 1, column: 1 },
            "endpoints",
            "an ingest config needs at least one [[endpoints]] entry",
        );
    }
    let endpoints: Vec<_> = tables
        .into_iter()
        .filter_map(|(path, v)| read_endpoint(diags, path, v))
        .collect();
    root.finish();
    let endpoints = unique_names(diags, endpoints);
    let listen = listen?;
    let (kafka, delivery_timeout) = kafka?;
    let listen = Listen {
        // In-flight requests end within their delivery timeout: wait a little longer.
        shutdown_timeout: listen
            .shutdown_timeout
            .unwrap_or(delivery_timeout + Duration::from_secs(5)),
        ..listen.inner
    };
    Some(IngestConfig {
        file: file.to_owned(),
        listen,
        kafka,
        delivery_timeout,
        endpoints,
    })
}

struct ListenDecl {
    inner: Listen,
    shutdown_timeout: Option<Duration>,
}

fn read_listen(diags: &Diags<'_>, value: Value<'_>) -> Option<ListenDecl> {
    let mut t = TableReader::new(diags, value, "listen".into())?;
    let address = t.required_string("address").and_then(|a| {
        let parsed = a.value.parse::<SocketAddr>();
        if parsed.is_err() {
            diags.error(
                a.pos,
                "listen.address",
                format!("`{}` is not IP:PORT (e.g. 0.0.0.0:8080)", a.value),
            );
        }
        parsed.ok()
    });
    let tls = read_tls(&mut t);
    let shutdown_timeout = t
        .duration("shutdown_timeout")
        .map(|d| Duration::from_millis(d.value.as_ms()));
    t.finish();
    Some(ListenDecl {
        inner: Listen {
            address: address?,
            tls: tls?,
            shutdown_timeout: Duration::ZERO,
        },
        shutdown_timeout,
    })
}

/// `tls = { cert = "PATH", key = "PATH" }`, both or neither.
fn read_tls(t: &mut TableReader<'_, '_, '_>) -> Option<Option<TlsFiles>> {
    let diags = t.diags();
    let Some(value) = t.take("tls") else {
        return Some(None);
    };
    let mut tls = TableReader::new(diags, value, "listen.tls".into())?;
    let cert = tls.required_string("cert");
    let key = tls.required_string("key");
    tls.finish();
    Some(Some(TlsFiles {
        cert: PathBuf::from(cert?.value),
        key: PathBuf::from(key?.value),
    }))
}

/// Properties `sluice ingest` decides itself: its guarantee is "202 only
/// after acks=all", and the delivery bound is `delivery_timeout`.
const INGEST_MANAGED: &[&str] = &[
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// `[kafka]` as topologies have it, less the keys of `sluice run`, plus
/// `delivery_timeout`.
fn read_kafka(diags: &Diags<'_>, value: Value<'_>) -> Option<(KafkaConfig, Duration)> {
    let mut t = TableReader::new(diags, value, "kafka".into())?;
    let table_pos = t.pos();
    let mut ok = true;
    for key in ["processing_guarantee", "commit_interval"] {
        if t.contains(key) {
            diags.error(
                t.pos(),
                t.key_path(key),
                format!("`{key}` is a `sluice run` setting; sluice ingest has no use for it"),
            );
            ok = false;
        }
    }
    let delivery_timeout = t
        .duration("delivery_timeout")
        .map_or(DEFAULT_DELIVERY_TIMEOUT, |d| {
            Duration::from_millis(d.value.as_ms())
        });
    let kafka = KafkaConfig::read(&mut t);
    t.finish();
    let kafka = kafka?;
    for (name, _) in &kafka.properties {
        if INGEST_MANAGED.contains(&name.as_str()) {
            diags.error(
                table_pos,
                format!("kafka.properties.\"{name}\""),
                format!("`{name}` is set by sluice ingest (acks=all; the bound is kafka.delivery_timeout)"),
            );
            ok = false;
        }
    }
    ok.then_some((kafka, delivery_timeout))
}

fn read_endpoint(
    diags: &Diags<'_>,
    path: String,
    value: Value<'_>,
) -> Option<Located<EndpointConfig>> {
    let mut t = TableReader::new(diags, value, path)?;
    let at = t.pos();
    let name = read_name(&mut t);
    let topic = read_topic(&mut t);
    let format = read_endpoint_format(&mut t);
    let kind = read_endpoint_kind(&mut t, format);
    let decode = read_decode_options(&mut t, kind);
    let max_body = t
        .integer("max_body", 1)
        .map_or(Some(DEFAULT_MAX_BODY), |m| usize::try_from(m.value).ok());
    let rate_limit = read_rate_limit(&mut t);
    let auth = match t.take("auth") {
        Some(v) => read_auth(diags, t.key_path("auth"), v),
        None => {
            t.missing("auth");
            None
        }
    };
    let delivery_header = t
        .string("delivery_header")
        .map(|h| h.value.to_ascii_lowercase());
    t.finish();
    let format = format?;
    Some(Located {
        pos: at,
        value: EndpointConfig {
            name: name?.value,
            topic: topic?,
            delivery_header: delivery_header.or(format.delivery_header().map(str::to_owned)),
            format,
            kind: kind?,
            decode: decode?,
            max_body: max_body?,
            rate_limit: rate_limit?,
            auth: auth?,
        },
    })
}

/// A webhook body is JSON: every format but protobuf.
fn read_endpoint_format(t: &mut TableReader<'_, '_, '_>) -> Option<Format> {
    let at = t.pos();
    if !t.contains("format") {
        t.missing("format");
        return None;
    }
    let format = read_source_format(t, None)?;
    if format == Format::Protobuf {
        let names: Vec<_> = FORMATS
            .iter()
            .filter(|f| **f != Format::Protobuf)
            .map(|f| f.name())
            .collect();
        t.diags().error(
            at,
            t.key_path("format"),
            format!("webhooks carry JSON; expected one of: {}", names.join(", ")),
        );
        return None;
    }
    Some(format)
}

/// A vendor format carries one kind; `json` needs `kind` said outright.
fn read_endpoint_kind(t: &mut TableReader<'_, '_, '_>, format: Option<Format>) -> Option<Kind> {
    let implied = format.and_then(|f| match f.kinds() {
        [only] => Some(*only),
        _ => None,
    });
    if !t.contains("kind") {
        if format.is_some() && implied.is_none() {
            t.missing("kind");
        }
        return implied;
    }
    let at = t.pos();
    let kind = read_kind(t)?;
    match format {
        Some(f) if !f.kinds().contains(&kind) => {
            t.diags().error(
                at,
                t.key_path("kind"),
                format!("format `{f}` does not carry {kind} records"),
            );
            None
        }
        _ => Some(kind),
    }
}

fn unique_names(diags: &Diags<'_>, endpoints: Vec<Located<EndpointConfig>>) -> Vec<EndpointConfig> {
    let mut seen = std::collections::HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        if !seen.insert(e.value.name.clone()) {
            diags.error(
                e.pos,
                format!("endpoints[{i}].name"),
                format!("endpoint `{}` is defined twice", e.value.name),
            );
        }
    }
    endpoints.into_iter().map(|e| e.value).collect()
}

/// A secret that could not be read: names the variable or file, never the value.
#[derive(Debug, thiserror::Error)]
#[error("secret of endpoint `{endpoint}`: {problem}")]
pub struct SecretUnavailable {
    pub endpoint: String,
    pub problem: String,
}

/// Reads a secret from where it is kept (a file's trailing newline dropped).
pub fn resolve_secret(endpoint: &str, source: &SecretRef) -> Result<Secret, SecretUnavailable> {
    let fail = |problem: String| SecretUnavailable {
        endpoint: endpoint.to_owned(),
        problem,
    };
    let value = source.load().map_err(fail)?;
    if value.is_empty() {
        return Err(fail("the secret is empty".into()));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
