//! The topics `sluice run` reads and writes, checked and created at start.
//!
//! Sluice creates its own topics (changelogs, dead letters, sinks) with the
//! partition count of its inputs, so that task `p` always finds partition `p`
//! of every changelog it owns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::partitioning::{check_co_partitioning, check_internal_counts, check_same_counts};
use super::RunError;
use crate::kafka::acls::{self, Denied, Operation, ResourceType};
use crate::kafka::listed::{metadata_listing, TOPIC_GRACE};
use crate::topology::Topology;

/// A state store and the compacted topic that logs its changes.
#[derive(Debug, Clone)]
pub struct Changelog {
    pub store: String,
    pub topic: String,
}

/// A source whose records are re-keyed by service before tasks read them.
#[derive(Debug, Clone)]
pub struct Repartition {
    pub source: usize,
    /// The source's own topic, read and forwarded.
    pub from: String,
    /// `<app.id>-<source>-repartition`, what the tasks read.
    pub to: String,
}

/// Every topic of a run, by role.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the tasks read, in the order the topology declares its sources:
    /// the source topics, or their repartition topics.
    pub inputs: Vec<String>,
    /// Source topics that are only forwarded into a repartition topic.
    pub repartitions: Vec<Repartition>,
    pub sinks: Vec<String>,
    pub dead_letter: String,
    pub changelogs: Vec<Changelog>,
    /// Every store of a task's engine, stateless operators' included.
    pub stores: Vec<String>,
}

/// The changelog topic of a store: `<app.id>-<operator>-changelog` for an
/// operator, `<app.id>-__timers-changelog` and `<app.id>-__meta-changelog`
/// for the engine's own stores.
pub fn changelog_topic(app_id: &str, store: &str) -> String {
    match store.strip_prefix("op/") {
        Some(op) => format!("{app_id}-{op}-changelog"),
        None => format!(
            "{app_id}-__{}-changelog",
            store.trim_start_matches("sluice/")
        ),
    }
}

impl Plan {
    /// `stores` are the engine's store names; stateless operators get no changelog.
    pub fn new(topo: &Topology, stores: &[String]) -> Result<Plan, RunError> {
        let stateless: HashSet<String> = topo
            .operators
            .iter()
            .filter(|o| !o.config.is_stateful())
            .map(|o| format!("op/{}", o.name))
            .collect();
        let changelogs = stores
            .iter()
            .filter(|s| !stateless.contains(*s))
            .map(|store| Changelog {
                store: store.clone(),
                topic: changelog_topic(&topo.app_id, store),
            })
            .collect();
        let mut inputs: Vec<String> = Vec::new();
        let mut repartitions: Vec<Repartition> = Vec::new();
        for (i, s) in topo.sources.iter().enumerate() {
            let task_topic = if s.repartition {
                let to = format!("{}-{}-repartition", topo.app_id, s.name);
                repartitions.push(Repartition {
                    source: i,
                    from: s.topic.clone(),
                    to: to.clone(),
                });
                to
            } else {
                s.topic.clone()
            };
            if !inputs.contains(&task_topic) {
                inputs.push(task_topic);
            }
        }
        let mut sinks: Vec<String> = Vec::new();
        for s in &topo.sinks {
            if !sinks.contains(&s.topic) {
                sinks.push(s.topic.clone());
            }
        }
        let plan = Plan {
            inputs,
            repartitions,
            sinks,
            dead_letter: topo.dead_letter_topic(),
            changelogs,
            stores: stores.to_vec(),
        };
        plan.check_distinct()?;
        warn_about_keys(topo);
        Ok(plan)
    }

    /// An internal topic that is also an input or a sink would feed the
    /// processor its own bookkeeping.
    fn check_distinct(&self) -> Result<(), RunError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let roles = self
            .inputs
            .iter()
            .map(|t| (t.as_str(), "an input"))
            .chain(
                self.changelogs
                    .iter()
                    .map(|c| (c.topic.as_str(), "a changelog")),
            )
            .chain(std::iter::once((
                self.dead_letter.as_str(),
                "the dead-letter topic",
            )));
        for (topic, role) in roles {
            if let Some(other) = seen.insert(topic, role) {
                return Err(RunError::Setup(format!(
                    "topic `{topic}` would be both {other} and {role}: rename the node or topic"
                )));
            }
        }
        for sink in &self.sinks {
            if let Some(role) = seen.get(sink.as_str()) {
                return Err(RunError::Setup(format!(
                    "sink topic `{sink}` is also {role}: a topology must not read or overwrite its own output"
                )));
            }
        }
        Ok(())
    }

    /// The topic the engine knows a task input by: a repartition topic
    /// carries its source topic's records.
    pub fn engine_topic<'a>(&'a self, task_topic: &'a str) -> &'a str {
        self.repartitions
            .iter()
            .find(|r| r.to == task_topic)
            .map_or(task_topic, |r| r.from.as_str())
    }

    /// The repartitioning of a topic this run forwards, if it is one.
    pub fn repartition_of(&self, topic: &str) -> Option<&Repartition> {
        self.repartitions.iter().find(|r| r.from == topic)
    }

    /// Everything the consumer subscribes to.
    pub fn subscriptions(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.inputs.iter().map(String::as_str).collect();
        for r in &self.repartitions {
            if !topics.contains(&r.from.as_str()) {
                topics.push(&r.from);
            }
        }
        topics
    }

    pub fn changelog_topics(&self) -> impl Iterator<Item = &str> {
        self.changelogs.iter().map(|c| c.topic.as_str())
    }
}

/// Tasks hold all of a service's records (inputs are keyed, or
/// repartitioned, by service). An operator keyed without the service may
/// see one key's records in several tasks; that is allowed but said.
fn warn_about_keys(topo: &Topology) {
    for op in &topo.operators {
        if let Some(fields) = op.config.key_fields() {
            if !fields.contains(&"service") {
                tracing::warn!(
                    operator = %op.name,
                    key = ?fields,
                    "the key does not include `service`: sluice run splits state by service, so records with one key but different services may be handled by different tasks"
                );
            }
        }
    }
}

/// Partition counts found (or given) at start.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Tasks: the largest partition count among the inputs.
    pub tasks: i32,
    pub partitions: HashMap<String, i32>,
    /// The smallest `delete.retention.ms` of the changelogs (how long
    /// compaction keeps a tombstone), when the broker told it.
    pub changelog_retention: Option<Duration>,
}

impl Layout {
    /// Whether `topic` has partition `p` (inputs may have fewer than `tasks`).
    pub fn has_partition(&self, topic: &str, p: i32) -> bool {
        self.partitions.get(topic).is_some_and(|n| p < *n)
    }
}

/// Sends the admin client's log lines through tracing, like the others.
pub struct LogContext;

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka("admin", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::repeats::client_error("admin", &error, reason);
    }
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks the inputs (present, co-partitioned where they meet) and creates
/// the changelog, dead-letter and sink topics that are missing.
pub fn prepare(
    config: &ClientConfig,
    topo: &Topology,
    plan: &Plan,
    stop: &AtomicBool,
) -> Result<Layout, RunError> {
    let mut config = config.clone();
    config.set_log_level(super::librdkafka_log_level());
    let admin: AdminClient<LogContext> = config
        .create_with_context(LogContext)
        .map_err(|e| RunError::kafka("create the admin client", e))?;
    let sources: Vec<&str> = topo.sources.iter().map(|s| s.topic.as_str()).collect();
    let mut partitions = partition_counts_with_inputs(&admin, &sources, stop)?;
    // Tasks: the partitions of the inputs read as they are; when every
    // source is repartitioned, those of the largest raw topic.
    let count = |s: &&crate::topology::Source| partitions.get(&s.topic).copied();
    let keyed_max = topo
        .sources
        .iter()
        .filter(|s| !s.repartition)
        .filter_map(|s| count(&s))
        .max();
    let tasks = keyed_max
        .or_else(|| topo.sources.iter().filter_map(|s| count(&s)).max())
        .unwrap_or(1);
    let task_counts: HashMap<String, i32> = topo
        .sources
        .iter()
        .map(|s| {
            let topic = plan.repartition_of(&s.topic).map_or(&s.topic, |r| &r.to);
            (
                s.topic.clone(),
                partitions.get(topic).copied().unwrap_or(tasks),
            )
        })
        .collect();
    check_co_partitioning(topo, &task_counts)?;
    check_same_counts(topo, &task_counts)?;
    let repartition_topics = plan
        .repartitions
        .iter()
        .map(|r| (r.to.as_str(), Kind::Repartition));
    let compacted = plan.changelog_topics().map(|t| (t, Kind::Changelog));
    let plain = plan
        .sinks
        .iter()
        .map(|t| (t.as_str(), Kind::Output))
        .chain(std::iter::once((plan.dead_letter.as_str(), Kind::Output)));
    let wanted: Vec<(&str, Kind)> = compacted
        .chain(repartition_topics)
        .chain(plain)
        .filter(|(t, _)| !partitions.contains_key(*t))
        .collect();
    create_topics(&admin, &wanted, tasks)?;
    for (t, _) in &wanted {
        partitions.insert((*t).to_owned(), tasks);
    }
    check_internal_counts(plan, &partitions, tasks)?;
    let changelog_retention = changelog_retention(&admin, plan)?;
    Ok(Layout {
        tasks,
        partitions,
        changelog_retention,
    })
}

/// The smallest `delete.retention.ms` among the changelogs, which tells a
/// restore when a local checkpoint is too old to resume from. Not knowing
/// it (no DescribeConfigs permission, which `sluice acls` does not list)
/// only turns that check off, with a warning.
fn changelog_retention(
    admin: &AdminClient<LogContext>,
    plan: &Plan,
) -> Result<Option<Duration>, RunError> {
    let topics: Vec<&str> = plan.changelog_topics().collect();
    if topics.is_empty() {
        return Ok(None);
    }
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = match block_on(admin.describe_configs(&specs, &opts)) {
        Ok(results) => results,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the changelogs' delete.retention.ms");
            return Ok(None);
        }
    };
    let mut smallest: Option<u64> = None;
    for (topic, result) in topics.iter().zip(&results) {
        let ms = match result {
            Ok(resource) => resource
                .get("delete.retention.ms")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<u64>().ok()),
            Err(code) => {
                tracing::warn!(%topic, error = %code, "cannot read a changelog's delete.retention.ms");
                None
            }
        };
        if let Some(ms) = ms {
            smallest = Some(smallest.map_or(ms, |s| s.min(ms)));
        }
    }
    Ok(smallest.map(Duration::from_millis))
}

/// An input left out of the cluster's metadata may exist but be hidden:
/// Kafka lists only the topics the principal may Describe (which Read
/// implies). Asked for by name, such a topic answers with an authorization error.
fn refused_input(admin: &AdminClient<LogContext>, missing: &[&str]) -> Option<Denied> {
    missing.iter().find_map(|topic| {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .ok()?;
        let code = md.topics().first()?.error()?;
        let code = RDKafkaErrorCode::from(code);
        acls::is_authorization(code)
            .then(|| Denied::new(Operation::Read, ResourceType::Topic, topic, code))
    })
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The partition counts of every topic, once all of `inputs` are among them
/// (waited for as [`metadata_listing`] does). A topic the run may not read
/// is refused at once: waiting does not grant an ACL.
fn partition_counts_with_inputs(
    admin: &AdminClient<LogContext>,
    inputs: &[&str],
    stop: &AtomicBool,
) -> Result<HashMap<String, i32>, RunError> {
    let mut denied = None;
    let (metadata, missing) =
        metadata_listing(admin.inner(), None, inputs, ADMIN_TIMEOUT, |missing| {
            denied = refused_input(admin, missing);
            denied.is_none() && !stop.load(Ordering::Relaxed)
        })
        .map_err(|e| RunError::kafka("fetch cluster metadata", e))?;
    if let Some(denied) = denied {
        return Err(denied.into());
    }
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        return Err(RunError::Setup(format!(
            "input topic(s) {} do not exist (waited up to {}s): create them (Sluice creates only its own topics)",
            quote_list(&missing),
            TOPIC_GRACE.as_secs()
        )));
    }
    Ok(counts_of(&metadata))
}

fn counts_of(md: &Metadata) -> HashMap<String, i32> {
    md.topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect()
}

/// What an internal topic is for, which decides its cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Compacted: the latest value of every key is the state.
    Changelog,
    /// Never deleted by time: records keep their (possibly old) event
    /// timestamps, and time-based retention would drop unread ones.
    Repartition,
    /// The broker's defaults.
    Output,
}

fn create_topics(
    admin: &AdminClient<LogContext>,
    wanted: &[(&str, Kind)],
    partitions: i32,
) -> Result<(), RunError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let topics: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, kind)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
            match kind {
                Kind::Changelog => topic.set("cleanup.policy", "compact"),
                Kind::Repartition => topic.set("retention.ms", "-1"),
                Kind::Output => topic,
            }
        })
        .collect();
    // The broker answers once the topics exist.
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics(&topics, &opts))
        .map_err(|e| RunError::kafka("create topics", e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            // Another instance created it first: its partition count is checked next.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // Kafka answers the same for a missing Create and for a topic
            // that exists but is hidden (no Describe, which Write implies).
            Err((name, code)) if acls::is_authorization(code) => {
                let kind = wanted
                    .iter()
                    .find(|(t, _)| *t == name)
                    .map_or(Kind::Output, |(_, k)| *k);
                let needs = match kind {
                    Kind::Output => "Write",
                    Kind::Changelog | Kind::Repartition => "Write and Read",
                };
                let hint = format!(
                    ", or, if the topic exists already, {needs} on it (which include the Describe that lets Kafka say so)"
                );
                return Err(
                    Denied::new(Operation::Create, ResourceType::Topic, &name, code)
                        .with_hint(hint)
                        .into(),
                );
            }
            Err((name, code)) => {
                return Err(RunError::Setup(format!(
                    "cannot create topic `{name}`: {code}"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::kafka::run) fn topo(src: &str) -> Topology {
        Topology::parse("t.toml", src).expect("valid topology")
    }

    pub(in crate::kafka::run) const GATED: &str = r#"
[app]
id = "app"
[[sources]]
name = "images"
topic = "img"
kind = "image"
[[sources]]
name = "alerts"
topic = "alr"
kind = "alert"
[[operators]]
name = "route"
type = "route"
input = "images"
default = "dev"
[[operators]]
name = "gate"
type = "alert_gate"
images = "route"
alerts = "alerts"
block_on = ["critical"]
[[sinks]]
name = "out"
input = "gate"
topic = "intents"
"#;

    #[test]
    fn stateless_operators_have_no_changelog_and_engine_stores_do() {
        let t = topo(GATED);
        let stores: Vec<String> = ["op/route", "op/gate", "sluice/timers", "sluice/meta"]
            .map(String::from)
            .to_vec();
        let plan = Plan::new(&t, &stores).expect("plan");
        let topics: Vec<&str> = plan.changelog_topics().collect();
        assert_eq!(
            topics,
            [
                "app-gate-changelog",
                "app-__timers-changelog",
                "app-__meta-changelog"
            ]
        );
        assert_eq!(plan.inputs, ["img", "alr"]);
        assert_eq!(plan.dead_letter, "app.dead-letter");
    }

    #[test]
    fn a_sink_writing_an_input_topic_is_refused() {
        let t = topo(&GATED.replace("topic = \"intents\"", "topic = \"img\""));
        let err = Plan::new(&t, &[]).unwrap_err().to_string();
        assert!(err.contains("sink topic `img`"), "{err}");
    }
}
