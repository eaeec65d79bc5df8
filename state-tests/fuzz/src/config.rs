//! TOML loaders: topologies and the committer's config.

use std::path::Component;
use std::sync::Arc;

use sluice::commit::config::CommitConfig;
use sluice::engine::{Engine, EngineOptions};
use sluice::record::Kind;
use sluice::replay::{replay, JsonLinesOutput, ReplayError, ReplayOptions, MAX_TS};
use sluice::state::MemoryBackend;
use sluice::topology::diag::ConfigError;
use sluice::topology::kafka::KafkaConfig;
use sluice::topology::Topology;

/// A topology either loads, opens an engine and runs records of every
/// source at both ends of the clock, or is refused with diagnostics that
/// point inside the file and never echo a credential.
pub fn topology(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Topology::parse("fuzz.toml", src) {
        Err(e) => check_refusal(src, &e, topology_refusal),
        Ok(topology) => {
            check_kafka(&topology.kafka);
            run_every_source(topology);
        }
    }
}

fn run_every_source(topology: Topology) {
    let topology = Arc::new(topology);
    let mut input = String::new();
    for source in &topology.sources {
        let value = match source.kind {
            Kind::Alert => {
                r#"{"service":"a","alertname":"A","severity":"critical","status":"firing","environment":"prod"}"#
            }
            _ => r#"{"service":"a","repository":"reg.io/a","tag":"v1.2.3"}"#,
        };
        for ts in [0, 1, MAX_TS - 1, MAX_TS] {
            let topic = serde_json::to_string(&source.topic).expect("a string serializes");
            input.push_str(&format!(
                "{{\"topic\":{topic},\"ts\":{ts},\"key\":\"a\",\"value\":{value}}}\n"
            ));
        }
    }
    let mut engine = Engine::open(
        topology.clone(),
        Box::new(MemoryBackend::new()),
        &EngineOptions::default(),
    )
    .expect("a valid topology opens an engine");
    let mut out = JsonLinesOutput::new(Vec::new(), topology.dead_letter_topic());
    let opts = ReplayOptions {
        drain: true,
        commit_every: 3,
        line_offset: 0,
    };
    match replay(
        &mut engine,
        input.as_bytes(),
        "in.jsonl",
        &mut out,
        &opts,
        &mut (),
    ) {
        Ok(_) => {}
        Err(ReplayError::Input { reason, .. }) => {
            panic!("the generated input was refused: {reason}")
        }
        Err(e) => panic!("a valid topology failed on valid records: {e}"),
    }
}

/// A committer config either loads with its documented invariants, or is
/// refused with diagnostics that point inside the file.
pub fn commit_config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let config = match CommitConfig::parse("fuzz.toml", src) {
        Ok(config) => config,
        Err(e) => return check_refusal(src, &e, commit_config_refusal),
    };
    assert!(!config.environments.is_empty(), "at least one environment");
    for env in &config.environments {
        let dir = &env.directory;
        let escapes = dir.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
        assert!(!escapes, "directory {dir:?} leaves the repository");
    }
    assert!(config.push.min_backoff <= config.push.max_backoff);
    check_kafka(&config.kafka.client);
    let branches = config.branches();
    for env in &config.environments {
        assert!(branches.contains(&env.branch.as_str()));
    }
}

/// Whether librdkafka reads the property as a credential (topology/kafka.rs).
fn is_credential(name: &str) -> bool {
    name.ends_with("password")
        || name.ends_with(".secret")
        || name.ends_with("jaas.config")
        || matches!(name, "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config")
}

fn check_kafka(kafka: &KafkaConfig) {
    for (name, _) in &kafka.properties {
        assert!(
            !is_credential(name),
            "credential `{name}` accepted as a plain property"
        );
    }
}

/// How the file's loader refuses a text, if it does.
type Refusal = fn(&str) -> Option<ConfigError>;

fn topology_refusal(src: &str) -> Option<ConfigError> {
    Topology::parse("fuzz.toml", src).err()
}

fn commit_config_refusal(src: &str) -> Option<ConfigError> {
    CommitConfig::parse("fuzz.toml", src).err()
}

fn check_refusal(src: &str, e: &ConfigError, refusal: Refusal) {
    assert!(!e.diagnostics.is_empty(), "refused without a diagnostic");
    let lines = src.split('\n').count();
    for d in &e.diagnostics {
        assert!(
            (1..=lines).contains(&d.pos.line) && d.pos.column >= 1,
            "diagnostic outside the file ({lines} lines): {d:?}"
        );
    }
    let shown = e.to_string();
    for secret in credential_values(src) {
        if shown.contains(&secret)
            && !shown_with_other_value(src, &secret, refusal).contains(&secret)
        {
            panic!("the error shows a credential: {shown}");
        }
    }
}

/// The error for `src` with `secret` (written once) replaced by as many
/// `Z`s: when it still contains `secret`, that text is the message's own.
fn shown_with_other_value(src: &str, secret: &str, refusal: Refusal) -> String {
    let other = src.replacen(secret, &"Z".repeat(secret.len()), 1);
    refusal(&other).map(|e| e.to_string()).unwrap_or_default()
}

/// Values given to credential properties in `[kafka.properties]`, long and
/// distinctive enough (written once in the file) that finding one in an
/// error means the error printed it.
fn credential_values(src: &str) -> Vec<String> {
    let Ok(root) = toml_span::parse(src) else {
        return Vec::new();
    };
    let Some(properties) = root.pointer("/kafka/properties").and_then(|v| v.as_table()) else {
        return Vec::new();
    };
    properties
        .iter()
        .filter(|(name, _)| is_credential(&name.name))
        .filter_map(|(_, value)| value.as_str().map(str::to_owned))
        .filter(|v| v.len() >= 8 && src.matches(v.as_str()).count() == 1)
        .collect()
}
