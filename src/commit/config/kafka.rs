//! `[kafka]`: where intents come from when no `--input` is given, and the
//! defaults of its topics and group.

use super::SourceConfig;
use crate::topology::diag::Located;
use crate::topology::kafka::{read_properties, read_secrets, KafkaConfig};
use crate::topology::reader::TableReader;
use crate::topology::Format;

impl SourceConfig {
    pub(super) fn with_defaults(
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
            report_topic: None,
            format: Format::Json,
            group,
            client,
        }
    }
}

pub(super) fn read_kafka(t: &mut TableReader<'_, '_, '_>) -> Option<SourceConfig> {
    let brokers = t.string("brokers").map(|s| s.value);
    let topic = non_empty(t, "topic");
    let group = non_empty(t, "group");
    let dead_letter_topic = non_empty(t, "dead_letter_topic");
    let report_topic = t.string("report_topic");
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
    if let Some(topic) = report_topic {
        config.report_topic = Some(checked_report_topic(t, topic, &config)?);
    }
    Some(config)
}

/// A report topic must be a topic of its own: reports on the intents topic
/// would come back as intents, and on the dead-letter topic they would
/// read as refusals.
fn checked_report_topic(
    t: &TableReader<'_, '_, '_>,
    topic: Located<String>,
    config: &SourceConfig,
) -> Option<String> {
    let error = |msg: String| {
        t.diags().error(topic.pos, t.key_path("report_topic"), msg);
        None
    };
    let name = topic.value.as_str();
    if name.trim().is_empty() {
        return error("must not be empty".into());
    }
    if name == config.topic || name == config.dead_letter_topic {
        let which = if name == config.topic {
            "intents topic (`topic`)"
        } else {
            "dead-letter topic (`dead_letter_topic`)"
        };
        return error(format!(
            "`{name}` is the {which}: reports need a topic of their own"
        ));
    }
    Some(topic.value)
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
