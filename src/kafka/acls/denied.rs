//! The error a command raises when the broker refuses an operation, naming
//! the ACL that is missing.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{Operation, ResourceType};

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

/// A refused produce to `topic`: Write on the topic, or, for an idempotent
/// producer on a broker before 2.8 (KIP-679), IdempotentWrite on the cluster.
pub fn write_denied(code: RDKafkaErrorCode, topic: &str) -> Denied {
    match code {
        RDKafkaErrorCode::ClusterAuthorizationFailed => Denied::new(
            Operation::IdempotentWrite,
            ResourceType::Cluster,
            "kafka-cluster",
            code,
        ),
        _ => Denied::new(Operation::Write, ResourceType::Topic, topic, code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_cluster_refusal_of_a_produce_names_idempotent_write() {
        let cluster = write_denied(RDKafkaErrorCode::ClusterAuthorizationFailed, "intents");
        assert_eq!(
            (
                cluster.operation,
                cluster.resource_type,
                cluster.name.as_str()
            ),
            (
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                "kafka-cluster"
            )
        );
        let topic = write_denied(RDKafkaErrorCode::TopicAuthorizationFailed, "intents");
        assert_eq!(
            (topic.operation, topic.resource_type, topic.name.as_str()),
            (Operation::Write, ResourceType::Topic, "intents")
        );
    }
}
