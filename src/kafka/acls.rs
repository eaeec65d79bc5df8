//! Kafka ACLs: exactly the ones a Sluice command needs, and the error a
//! command raises when the broker refuses one.
//!
//! The set follows from what the code calls and from Kafka's
//! operation-to-ACL table (docs "Authorization and ACLs"): Read and Write
//! imply Describe, so Describe is never listed on its own; since Kafka 2.8
//! (KIP-679) an idempotent producer needs `IdempotentWrite` on the cluster
//! only if it holds `Write` on no topic, and every producer here has one, so
//! it is not listed either.
//!
//! `sluice run` (see `kafka::run`):
//! - the source topics it subscribes to: Read (Fetch, OffsetFetch, the
//!   offsets it commits; metadata needs Describe);
//! - the consumer group `app.id`: Read (join, heartbeats, offset commits,
//!   `TxnOffsetCommit` and `AddOffsetsToTxn` under exactly-once);
//! - its internal topics, prefixed `<app.id>-` (changelogs, repartition
//!   topics): Create (made at start when missing), Write (changelog
//!   records, forwarded records), Read (restore, the repartitioned inputs),
//!   and with repartition topics Delete (records purged after commit);
//! - sinks and the dead-letter topic: Write, and Create since the run
//!   creates them when missing;
//! - under exactly-once the transactional ids `<app.id>-<instance>`:
//!   Write (`InitProducerId`, `AddPartitionsToTxn`, `EndTxn`; implies Describe).
//!
//! `sluice commit` (from Kafka): Read on the intents topic and on its group,
//! Write on its dead-letter topic (which it does not create).

use std::fmt;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::commit::config::CommitConfig;
use crate::engine::{Engine, EngineOptions};
use crate::kafka::run::topics::Plan;
use crate::state::MemoryBackend;
use crate::topology::kafka::Guarantee;
use crate::topology::Topology;

/// An ACL operation, spelled as `kafka-acls.sh --operation` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Describe,
    IdempotentWrite,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

impl ResourceType {
    /// The `kafka-acls.sh` option naming a resource of this type.
    fn option(self) -> &'static str {
        match self {
            ResourceType::Topic => "--topic",
            ResourceType::Group => "--group",
            ResourceType::TransactionalId => "--transactional-id",
            ResourceType::Cluster => "--cluster",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::TransactionalId => "transactional id",
            ResourceType::Cluster => "cluster",
        })
    }
}

/// Whether a name is the resource itself or the prefix of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    Literal,
    Prefixed,
}

/// One ALLOW ACL for the principal, from any host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub resource_type: ResourceType,
    /// `kafka-cluster` for the cluster, as Kafka names it.
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub operation: Operation,
    /// `what the resource is: what the command does with it`.
    pub reason: String,
}

impl Acl {
    fn new(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
        operation: Operation,
        reason: String,
    ) -> Acl {
        Acl {
            resource_type,
            resource_name: name.to_owned(),
            pattern_type,
            operation,
            reason,
        }
    }

    fn topic(name: &str, operation: Operation, reason: String) -> Acl {
        Acl::new(
            ResourceType::Topic,
            name,
            PatternType::Literal,
            operation,
            reason,
        )
    }

    /// The `kafka-acls.sh` arguments after `--add`/`--remove` that select this ACL.
    pub fn tool_args(&self, principal: &str) -> Vec<String> {
        let mut args = vec![
            "--allow-principal".to_owned(),
            principal.to_owned(),
            "--operation".to_owned(),
            self.operation.to_string(),
            self.resource_type.option().to_owned(),
        ];
        if self.resource_type != ResourceType::Cluster {
            args.push(self.resource_name.clone());
        }
        if self.pattern_type == PatternType::Prefixed {
            args.extend(["--resource-pattern-type".to_owned(), "prefixed".to_owned()]);
        }
        args
    }
}

/// The ACLs of one command for one principal.
#[derive(Debug, Clone, Serialize)]
pub struct AclSet {
    pub principal: String,
    pub acls: Vec<Acl>,
}

#[derive(Debug, thiserror::Error)]
pub enum AclsError {
    #[error("principal `{0}` is not of the form `User:NAME`")]
    Principal(String),
    #[error("{0}")]
    Plan(String),
}

fn check_principal(principal: &str) -> Result<(), AclsError> {
    match principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(()),
        _ => Err(AclsError::Principal(principal.to_owned())),
    }
}

/// The prefix of every internal topic and transactional id of a run. The
/// dash keeps another app whose id merely starts with this one's out.
pub fn internal_prefix(app_id: &str) -> String {
    format!("{app_id}-")
}

/// What `sluice run` on `topo` needs, under `guarantee`.
pub fn for_run(
    topo: &std::sync::Arc<Topology>,
    guarantee: Guarantee,
    principal: &str,
) -> Result<AclSet, AclsError> {
    check_principal(principal)?;
    let plan = run_plan(topo)?;
    let mut acls = Vec::new();
    for topic in plan.subscriptions() {
        if let Some(r) = plan.repartition_of(topic) {
            let reason = format!("input, forwarded to {}: fetch, commit offsets", r.to);
            acls.push(Acl::topic(topic, Operation::Read, reason));
        } else if plan.repartitions.iter().all(|r| r.to != topic) {
            acls.push(Acl::topic(
                topic,
                Operation::Read,
                "input: fetch, commit offsets".into(),
            ));
        }
    }
    acls.extend(internal_topic_acls(&topo.app_id, &plan));
    for sink in &plan.sinks {
        acls.push(Acl::topic(sink, Operation::Write, "sink: produce".into()));
        acls.push(Acl::topic(
            sink,
            Operation::Create,
            "sink: create when missing".into(),
        ));
    }
    let dl = &plan.dead_letter;
    acls.push(Acl::topic(
        dl,
        Operation::Write,
        "dead letters: produce".into(),
    ));
    acls.push(Acl::topic(
        dl,
        Operation::Create,
        "dead letters: create when missing".into(),
    ));
    acls.push(Acl::new(
        ResourceType::Group,
        &topo.app_id,
        PatternType::Literal,
        Operation::Read,
        "consumer group: join, commit offsets".into(),
    ));
    if guarantee == Guarantee::ExactlyOnce {
        acls.push(Acl::new(
            ResourceType::TransactionalId,
            &internal_prefix(&topo.app_id),
            PatternType::Prefixed,
            Operation::Write,
            "transactional ids, one per instance: transactions".into(),
        ));
    }
    Ok(AclSet {
        principal: principal.to_owned(),
        acls,
    })
}

/// The topics of a run, as `sluice run` computes them.
fn run_plan(topo: &std::sync::Arc<Topology>) -> Result<Plan, AclsError> {
    let opts = EngineOptions::default();
    let probe = Engine::open(
        std::sync::Arc::clone(topo),
        Box::new(MemoryBackend::default()),
        &opts,
    )
    .map_err(|e| AclsError::Plan(e.to_string()))?;
    Plan::new(topo, &probe.store_names()).map_err(|e| AclsError::Plan(e.to_string()))
}

fn internal_topic_acls(app_id: &str, plan: &Plan) -> Vec<Acl> {
    let prefix = internal_prefix(app_id);
    let mut topics: Vec<&str> = plan.changelog_topics().collect();
    topics.extend(plan.repartitions.iter().map(|r| r.to.as_str()));
    let listed = topics.join(", ");
    let prefixed = |operation, what: &str| {
        Acl::new(
            ResourceType::Topic,
            &prefix,
            PatternType::Prefixed,
            operation,
            format!("internal topics ({listed}): {what}"),
        )
    };
    let mut acls = vec![
        prefixed(Operation::Create, "create when missing"),
        prefixed(Operation::Write, "produce changelog and forwarded records"),
        prefixed(Operation::Read, "restore, read repartitioned input"),
    ];
    if !plan.repartitions.is_empty() {
        acls.push(prefixed(
            Operation::Delete,
            "purge committed repartition records (else a warning, and they stay)",
        ));
    }
    acls
}

/// What `sluice commit` reading from Kafka needs.
pub fn for_commit(config: &CommitConfig, principal: &str) -> Result<AclSet, AclsError> {
    check_principal(principal)?;
    let k = &config.kafka;
    let acls = vec![
        Acl::topic(
            &k.topic,
            Operation::Read,
            "intents: fetch, commit offsets".into(),
        ),
        Acl::new(
            ResourceType::Group,
            &k.group,
            PatternType::Literal,
            Operation::Read,
            "consumer group: join, commit offsets".into(),
        ),
        Acl::topic(
            &k.dead_letter_topic,
            Operation::Write,
            "dead letters: produce (the topic must exist)".into(),
        ),
    ];
    Ok(AclSet {
        principal: principal.to_owned(),
        acls,
    })
}

impl AclSet {
    /// `kafka-acls.sh` command lines, one per resource, each after a comment
    /// saying what it is for.
    pub fn command_lines(&self, bootstrap: &str) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.acls.len() {
            let first = &self.acls[i];
            let same = |a: &Acl| {
                a.resource_type == first.resource_type
                    && a.resource_name == first.resource_name
                    && a.pattern_type == first.pattern_type
            };
            let group: Vec<&Acl> = self.acls[i..].iter().take_while(|a| same(a)).collect();
            i += group.len();
            out.push_str(&comment(&group));
            let mut words = vec![
                "kafka-acls.sh".to_owned(),
                "--bootstrap-server".to_owned(),
                bootstrap.to_owned(),
                "--add".to_owned(),
                "--allow-principal".to_owned(),
                self.principal.clone(),
            ];
            for a in &group {
                words.extend(["--operation".to_owned(), a.operation.to_string()]);
            }
            words.extend(first.tool_args(&self.principal).into_iter().skip(4));
            let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
            out.push_str(&quoted.join(" "));
            out.push('\n');
        }
        out
    }
}

/// `# ROLE: Op (what for), ...` for ACLs on one resource, whose reasons
/// all read `ROLE: what for`.
fn comment(acls: &[&Acl]) -> String {
    let role = |a: &Acl| a.reason.split_once(": ").map_or("", |(r, _)| r).to_owned();
    let uses: Vec<String> = acls
        .iter()
        .map(|a| {
            let what = a
                .reason
                .split_once(": ")
                .map_or(a.reason.as_str(), |(_, w)| w);
            format!("{} ({what})", a.operation)
        })
        .collect();
    format!("# {}: {}\n", role(acls[0]), uses.join(", "))
}

/// A word as a POSIX shell reads it back unchanged.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-:/,=@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The broker refused an operation: which one, on what, and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not authorized: the broker refused {operation} on {resource_type} `{name}` ({code}){hint}; grant it to this client's principal (`sluice acls` prints every ACL the command needs)")]
pub struct Denied {
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub name: String,
    /// librdkafka's error code name, e.g. `TOPIC_AUTHORIZATION_FAILED`.
    pub code: &'static str,
    /// More about the cause when Kafka's answer fits two ACLs.
    pub hint: String,
}

impl Denied {
    pub fn new(
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
        code: RDKafkaErrorCode,
    ) -> Denied {
        Denied {
            operation,
            resource_type,
            name: name.to_owned(),
            code: code_name(code),
            hint: String::new(),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Denied {
        self.hint = hint.into();
        self
    }
}

/// The authorization error code `e` carries, if it is one.
pub fn authorization_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code().filter(|c| is_authorization(*c))
}

pub fn is_authorization(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

fn code_name(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => "TOPIC_AUTHORIZATION_FAILED",
        RDKafkaErrorCode::GroupAuthorizationFailed => "GROUP_AUTHORIZATION_FAILED",
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => "CLUSTER_AUTHORIZATION_FAILED",
        _ => "authorization failed",
    }
}

/// A refusal the consumer of `group` reports from its poll: the group
/// (join, offsets), or a subscribed topic (Fetch; the error does not say
/// which one, the inputs were checked by name at start).
pub fn consumer_denied(e: &KafkaError, group: &str) -> Option<Denied> {
    let code = authorization_code(e)?;
    Some(match code {
        RDKafkaErrorCode::GroupAuthorizationFailed => {
            Denied::new(Operation::Read, ResourceType::Group, group, code)
        }
        _ => Denied::new(Operation::Read, ResourceType::Topic, "(an input)", code)
            .with_hint(format!(", reading for group `{group}`")),
    })
}

/// `operation` on `topic` refused, with the code `e` carries.
pub fn topic_denied(operation: Operation, topic: &str, e: &KafkaError) -> Denied {
    let code = authorization_code(e).unwrap_or(RDKafkaErrorCode::TopicAuthorizationFailed);
    Denied::new(operation, ResourceType::Topic, topic, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn topo(extra_source: &str) -> Arc<Topology> {
        let src = format!(
            "[app]\nid = \"app\"\n\
             [[sources]]\nname = \"images\"\ntopic = \"img\"\nkind = \"image\"\n{extra_source}\
             [[operators]]\nname = \"dedup\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\"]\nttl = \"1m\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"dedup\"\ntopic = \"intents\"\n"
        );
        Arc::new(Topology::parse("t.toml", &src).expect("valid topology"))
    }

    fn entries(set: &AclSet) -> Vec<String> {
        set.acls
            .iter()
            .map(|a| {
                format!(
                    "{:?} {:?} {} {}",
                    a.resource_type, a.pattern_type, a.resource_name, a.operation
                )
            })
            .collect()
    }

    #[test]
    fn a_run_needs_its_inputs_outputs_internal_topics_group_and_transactional_ids() {
        let set = for_run(&topo(""), Guarantee::ExactlyOnce, "User:sluice").unwrap();
        assert_eq!(
            entries(&set),
            [
                "Topic Literal img Read",
                "Topic Prefixed app- Create",
                "Topic Prefixed app- Write",
                "Topic Prefixed app- Read",
                "Topic Literal intents Write",
                "Topic Literal intents Create",
                "Topic Literal app.dead-letter Write",
                "Topic Literal app.dead-letter Create",
                "Group Literal app Read",
                "TransactionalId Prefixed app- Write",
            ]
        );
        assert!(
            set.acls[1].reason.contains("app-dedup-changelog"),
            "{:?}",
            set.acls[1]
        );
    }

    #[test]
    fn at_least_once_needs_no_transactional_id() {
        let set = for_run(&topo(""), Guarantee::AtLeastOnce, "User:sluice").unwrap();
        assert!(set
            .acls
            .iter()
            .all(|a| a.resource_type != ResourceType::TransactionalId));
    }

    #[test]
    fn repartitioned_sources_are_read_raw_and_purged() {
        let extra = "[[sources]]\nname = \"raw\"\ntopic = \"unkeyed\"\nkind = \"image\"\nrepartition = true\n";
        let set = for_run(&topo(extra), Guarantee::ExactlyOnce, "User:sluice").unwrap();
        let e = entries(&set);
        assert!(
            e.contains(&"Topic Literal unkeyed Read".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(&"Topic Prefixed app- Delete".to_owned()),
            "{e:?}"
        );
        // The repartition topic is read through the prefix, not on its own.
        assert!(
            !e.iter().any(|a| a.contains("app-raw-repartition")),
            "{e:?}"
        );
    }

    #[test]
    fn command_lines_group_operations_by_resource_and_quote_for_the_shell() {
        let set = for_run(&topo(""), Guarantee::ExactlyOnce, "User:O'Brien").unwrap();
        let text = set.command_lines("k:9092");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines[1],
            r"kafka-acls.sh --bootstrap-server k:9092 --add --allow-principal 'User:O'\''Brien' --operation Create --operation Write --operation Read --topic app- --resource-pattern-type prefixed"
        );
        assert!(
            text.contains("--transactional-id app- --resource-pattern-type prefixed"),
            "{text}"
        );
        assert!(
            text.starts_with("# input: Read (fetch, commit offsets)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_committer_reads_its_topic_and_group_and_writes_its_dead_letters() {
        let config = CommitConfig::parse(
            "c.toml",
            "[repository]\nurl = \"file:///srv/deploy.git\"\n[author]\nname = \"S\"\nemail = \"s@example.com\"\n\
             [kafka]\ntopic = \"t\"\ngroup = \"g\"\n\
             [[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
        )
        .unwrap();
        let set = for_commit(&config, "User:committer").unwrap();
        assert_eq!(
            entries(&set),
            [
                "Topic Literal t Read",
                "Group Literal g Read",
                "Topic Literal g.dead-letter Write"
            ]
        );
    }

    #[test]
    fn a_principal_needs_a_type_and_a_name() {
        for bad in ["sluice", "User:", ":x"] {
            assert!(
                for_run(&topo(""), Guarantee::ExactlyOnce, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refusal_names_the_operation_and_the_resource() {
        let d = Denied::new(
            Operation::Write,
            ResourceType::TransactionalId,
            "app-1",
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
        );
        assert_eq!(
            d.to_string(),
            "not authorized: the broker refused Write on transactional id `app-1` (TRANSACTIONAL_ID_AUTHORIZATION_FAILED); grant it to this client's principal (`sluice acls` prints every ACL the command needs)"
        );
    }
}
