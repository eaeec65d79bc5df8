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

mod denied;
mod needs;

pub use denied::{
    authorization_code, consumer_denied, is_authorization, topic_denied, write_denied, Denied,
};
pub use needs::{for_commit, for_ingest, for_run};

use std::fmt;

use serde::Serialize;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_the_shell_would_change_them() {
        assert_eq!(shell_quote("User:sluice"), "User:sluice");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("O'Brien"), r"'O'\''Brien'");
    }
}
