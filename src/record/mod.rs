//! The records that flow through a topology: image events, alert events,
//! git events, deployment statuses, control commands and deployment
//! intents, with their validation rules and field access.

pub(crate) mod flat;
mod intent;
mod json;
pub mod oci;
pub mod origin;
mod parse;
mod rollout;
mod trace_context;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use flat::{Flat, FlatObject};
pub use json::{AlertJson, ControlJson, DeploymentJson, GitJson, ImageJson, PayloadJson};
pub use origin::Origin;
pub use parse::{
    alert_from_flat, image_from_flat, parse_alert, parse_git, parse_image, validate_alert,
    validate_git, validate_image, AlertFields, GitFields, ImageFields,
};
pub use rollout::{
    parse_control, parse_deployment, validate_deployment, ControlAction, ControlEvent,
    DeployStatus, DeploymentEvent, DeploymentFields,
};
pub use trace_context::{TraceContext, TRACEPARENT};

/// An "image pushed" event, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEvent {
    pub service: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub environment: Option<String>,
}

impl ImageEvent {
    /// The image reference `repository[:tag][@digest]`.
    pub fn reference(&self) -> String {
        oci::reference(
            &self.repository,
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }
}

/// Whether an alert is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// A monitoring alert notification, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub service: String,
    pub alertname: String,
    pub severity: String,
    pub status: AlertStatus,
    pub environment: String,
    pub fingerprint: Option<String>,
}

impl AlertEvent {
    /// The alert's identity: its fingerprint, or its name when it has none.
    pub fn identity(&self) -> &str {
        self.fingerprint.as_deref().unwrap_or(&self.alertname)
    }
}

/// What happened on a branch: commits pushed, or a merge request / pull request merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitEventType {
    Push,
    Merge,
}

impl GitEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            GitEventType::Push => "push",
            GitEventType::Merge => "merge",
        }
    }
}

/// A "branch changed" event from a git host, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitEvent {
    pub service: String,
    /// The repository's path on its host, such as `acme/payments`.
    pub repository: String,
    pub branch: String,
    /// The commit the branch points at after the event (hex object name).
    pub commit: String,
    pub author: Option<String>,
    pub event: GitEventType,
    /// The pull (merge) request's number, when merged through one.
    pub pull_request: Option<u64>,
    pub environment: Option<String>,
}

/// What a deployment intent asks the committer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deploy,
    Hold,
    Rollback,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Hold => "hold",
            Action::Rollback => "rollback",
        }
    }
}

/// A deployment intent emitted by an alert gate. Its serde forms (JSON for
/// sinks, a layout compatible with older state for postcard) are in `intent.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub action: Action,
    pub service: String,
    pub environment: String,
    pub image: String,
    pub previous_image: Option<String>,
    /// Why, for people.
    pub reason: String,
    /// Why, as one word from a documented list (README, alert_gate).
    pub reason_code: String,
    pub intent_id: String,
    /// The records that caused the intent: input lines in replay, topic,
    /// partition and offset live.
    pub caused_by: Vec<Origin>,
}

/// The kind of record a stream carries; fixed per edge of the topology graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Image,
    Alert,
    Git,
    Intent,
    Deployment,
    Control,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Alert => "alert",
            Kind::Git => "git",
            Kind::Intent => "intent",
            Kind::Deployment => "deployment",
            Kind::Control => "control",
        }
    }

    /// The fields `key` lists and route rules may name for this kind.
    pub fn fields(self) -> &'static [Field] {
        use Field::*;
        match self {
            Kind::Image => &[Service, Repository, Tag, Digest, Environment, Image],
            Kind::Alert => &[
                Service,
                Alertname,
                Severity,
                Status,
                Environment,
                Fingerprint,
                Identity,
            ],
            Kind::Git => &[
                Service,
                Repository,
                Branch,
                Commit,
                Author,
                Event,
                PullRequest,
                Environment,
            ],
            Kind::Intent => &[
                Action,
                Service,
                Environment,
                Image,
                PreviousImage,
                Reason,
                ReasonCode,
                IntentId,
                CausedBy,
            ],
            Kind::Deployment => &[Service, Environment, Status, Image, Revision, Reason],
            Kind::Control => &[Action, Environment, Service, Image, Until, Reason, By],
        }
    }

    /// Looks up a field by name, if this kind has it.
    pub fn field(self, name: &str) -> Option<Field> {
        self.fields().iter().copied().find(|f| f.name() == name)
    }

    pub fn field_names(self) -> Vec<&'static str> {
        self.fields().iter().map(|f| f.name()).collect()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field of some record kind, resolved once when the topology is built so
/// that the hot path never compares field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Service,
    Repository,
    Tag,
    Digest,
    Environment,
    /// Image events: the reference; intents: the target image.
    Image,
    Alertname,
    Severity,
    Status,
    Fingerprint,
    Identity,
    Branch,
    Commit,
    Author,
    Event,
    PullRequest,
    Action,
    PreviousImage,
    Reason,
    IntentId,
    CausedBy,
    Revision,
    Until,
    By,
    ReasonCode,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Service => "service",
            Field::Repository => "repository",
            Field::Tag => "tag",
            Field::Digest => "digest",
            Field::Environment => "environment",
            Field::Image => "image",
            Field::Alertname => "alertname",
            Field::Severity => "severity",
            Field::Status => "status",
            Field::Fingerprint => "fingerprint",
            Field::Identity => "identity",
            Field::Branch => "branch",
            Field::Commit => "commit",
            Field::Author => "author",
            Field::Event => "event",
            Field::PullRequest => "pull_request",
            Field::Action => "action",
            Field::PreviousImage => "previous_image",
            Field::Reason => "reason",
            Field::IntentId => "intent_id",
            Field::CausedBy => "caused_by",
            Field::Revision => "revision",
            Field::Until => "until",
            Field::By => "by",
            Field::ReasonCode => "reason_code",
        }
    }
}

/// The value of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
///
/// Values are boxed: a record moves through several operators and buffers,
/// and moving a pointer is cheaper than moving a hundred bytes each time.
pub enum Payload {
    Image(Box<ImageEvent>),
    Alert(Box<AlertEvent>),
    Git(Box<GitEvent>),
    Intent(Box<Intent>),
    // New variants go last: stored records keep their variant numbers.
    Deployment(Box<DeploymentEvent>),
    Control(Box<ControlEvent>),
}

impl Payload {
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Image(_) => Kind::Image,
            Payload::Alert(_) => Kind::Alert,
            Payload::Git(_) => Kind::Git,
            Payload::Intent(_) => Kind::Intent,
            Payload::Deployment(_) => Kind::Deployment,
            Payload::Control(_) => Kind::Control,
        }
    }

    /// A field's value; an absent field reads as the empty string, as keys require.
    pub fn field(&self, field: Field) -> Cow<'_, str> {
        fn opt(v: &Option<String>) -> Cow<'_, str> {
            Cow::Borrowed(v.as_deref().unwrap_or(""))
        }
        let borrowed = Cow::Borrowed;
        match (self, field) {
            (Payload::Image(i), Field::Service) => borrowed(&i.service),
            (Payload::Image(i), Field::Repository) => borrowed(&i.repository),
            (Payload::Image(i), Field::Tag) => opt(&i.tag),
            (Payload::Image(i), Field::Digest) => opt(&i.digest),
            (Payload::Image(i), Field::Environment) => opt(&i.environment),
            (Payload::Image(i), Field::Image) => Cow::Owned(i.reference()),
            (Payload::Alert(a), Field::Service) => borrowed(&a.service),
            (Payload::Alert(a), Field::Alertname) => borrowed(&a.alertname),
            (Payload::Alert(a), Field::Severity) => borrowed(&a.severity),
            (Payload::Alert(a), Field::Status) => borrowed(a.status.as_str()),
            (Payload::Alert(a), Field::Environment) => borrowed(&a.environment),
            (Payload::Alert(a), Field::Fingerprint) => opt(&a.fingerprint),
            (Payload::Alert(a), Field::Identity) => borrowed(a.identity()),
            (Payload::Git(g), Field::Service) => borrowed(&g.service),
            (Payload::Git(g), Field::Repository) => borrowed(&g.repository),
            (Payload::Git(g), Field::Branch) => borrowed(&g.branch),
            (Payload::Git(g), Field::Commit) => borrowed(&g.commit),
            (Payload::Git(g), Field::Author) => opt(&g.author),
            (Payload::Git(g), Field::Event) => borrowed(g.event.as_str()),
            (Payload::Git(g), Field::PullRequest) => match g.pull_request {
                Some(n) => Cow::Owned(n.to_string()),
                None => borrowed(""),
            },
            (Payload::Git(g), Field::Environment) => opt(&g.environment),
            (Payload::Intent(i), Field::Action) => borrowed(i.action.as_str()),
            (Payload::Intent(i), Field::Service) => borrowed(&i.service),
            (Payload::Intent(i), Field::Environment) => borrowed(&i.environment),
            (Payload::Intent(i), Field::Image) => borrowed(&i.image),
            (Payload::Intent(i), Field::PreviousImage) => opt(&i.previous_image),
            (Payload::Intent(i), Field::Reason) => borrowed(&i.reason),
            (Payload::Intent(i), Field::IntentId) => borrowed(&i.intent_id),
            (Payload::Intent(i), Field::ReasonCode) => borrowed(&i.reason_code),
            (Payload::Intent(i), Field::CausedBy) => {
                let refs: Vec<String> = i.caused_by.iter().map(Origin::to_string).collect();
                Cow::Owned(refs.join(", "))
            }
            (Payload::Deployment(d), Field::Service) => borrowed(&d.service),
            (Payload::Deployment(d), Field::Environment) => borrowed(&d.environment),
            (Payload::Deployment(d), Field::Status) => borrowed(d.status.as_str()),
            (Payload::Deployment(d), Field::Image) => opt(&d.image),
            (Payload::Deployment(d), Field::Revision) => opt(&d.revision),
            (Payload::Deployment(d), Field::Reason) => opt(&d.reason),
            (Payload::Control(c), Field::Action) => borrowed(c.action.as_str()),
            (Payload::Control(c), Field::Environment) => borrowed(&c.environment),
            (Payload::Control(c), Field::Service) => opt(&c.service),
            (Payload::Control(c), Field::Image) => opt(&c.image),
            (Payload::Control(c), Field::Until) => match c.until {
                Some(n) => Cow::Owned(n.to_string()),
                None => borrowed(""),
            },
            (Payload::Control(c), Field::Reason) => opt(&c.reason),
            (Payload::Control(c), Field::By) => opt(&c.by),
            // Validation guarantees each operator only names fields its input kind has.
            _ => Cow::Borrowed(""),
        }
    }

    /// Sets the environment (route operator).
    pub fn set_environment(&mut self, environment: &str) {
        match self {
            Payload::Image(i) => i.environment = Some(environment.to_owned()),
            Payload::Alert(a) => a.environment = environment.to_owned(),
            Payload::Git(g) => g.environment = Some(environment.to_owned()),
            Payload::Intent(i) => i.environment = environment.to_owned(),
            Payload::Deployment(d) => d.environment = environment.to_owned(),
            Payload::Control(c) => c.environment = environment.to_owned(),
        }
    }

    /// The value as written to a JSON sink: absent optional fields are left out,
    /// an intent's unknown previous image is `null`.
    pub fn json(&self) -> PayloadJson<'_> {
        match self {
            Payload::Image(i) => PayloadJson::Image(ImageJson::from(i.as_ref())),
            Payload::Alert(a) => PayloadJson::Alert(AlertJson::from(a.as_ref())),
            Payload::Git(g) => PayloadJson::Git(GitJson::from(g.as_ref())),
            Payload::Intent(i) => PayloadJson::Intent(i.as_ref()),
            Payload::Deployment(d) => PayloadJson::Deployment(DeploymentJson::from(d.as_ref())),
            Payload::Control(c) => PayloadJson::Control(ControlJson::from(c.as_ref())),
        }
    }

    /// [`Payload::json`] as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing plain structs of strings into a Value cannot fail.
        serde_json::to_value(self.json()).unwrap_or(serde_json::Value::Null)
    }
}

/// A record in flight: its value, its Kafka key, the time it was emitted
/// and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub ts: u64,
    pub key: Option<String>,
    pub payload: Payload,
    /// Kept last: records stored before origins existed end before it (see `Deserialize`).
    pub origin: Origin,
}

/// Decodes stored records with or without `origin`: a record written before
/// origins existed ends after its payload (postcard has no field names;
/// reading past the end fails) and gets an unknown origin. Records are
/// stored last in every operator entry that holds one, so nothing follows.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("Record", &["ts", "key", "payload", "origin"], RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> serde::de::Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored record")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Record, A::Error> {
        let missing = |i| serde::de::Error::invalid_length(i, &"a stored record");
        Ok(Record {
            ts: seq.next_element()?.ok_or_else(|| missing(0))?,
            key: seq.next_element()?.ok_or_else(|| missing(1))?,
            payload: seq.next_element()?.ok_or_else(|| missing(2))?,
            origin: seq.next_element().ok().flatten().unwrap_or_default(),
        })
    }
}

/// Why a record is invalid. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageEvent {
        ImageEvent {
            service: "a".into(),
            repository: "reg/a".into(),
            tag: Some("v1".into()),
            digest: None,
            environment: None,
        }
    }

    #[test]
    fn absent_fields_read_as_empty_and_reference_is_derived() {
        let p = Payload::Image(Box::new(image()));
        assert_eq!(p.field(Field::Digest), "");
        assert_eq!(p.field(Field::Environment), "");
        assert_eq!(p.field(Field::Image), "reg/a:v1");
    }

    #[test]
    fn json_leaves_out_absent_image_fields_but_keeps_null_previous_image() {
        let p = Payload::Image(Box::new(image()));
        assert_eq!(
            p.to_json(),
            serde_json::json!({"service": "a", "repository": "reg/a", "tag": "v1"})
        );
        let intent = Payload::Intent(Box::new(Intent {
            action: Action::Deploy,
            service: "a".into(),
            environment: "prod".into(),
            image: "reg/a:v1".into(),
            previous_image: None,
            reason: "new image".into(),
            reason_code: "new_image".into(),
            intent_id: "x".into(),
            caused_by: vec![Origin::line(3)],
        }));
        assert_eq!(intent.to_json()["previous_image"], serde_json::Value::Null);
        assert_eq!(intent.to_json()["action"], "deploy");
        assert_eq!(
            intent.to_json()["caused_by"],
            serde_json::json!([{"line": 3}])
        );
        assert_eq!(intent.to_json()["reason_code"], "new_image");
    }

    #[test]
    fn kinds_know_their_fields() {
        assert_eq!(Kind::Alert.field("identity"), Some(Field::Identity));
        assert_eq!(Kind::Image.field("alertname"), None);
        assert_eq!(
            Kind::Intent.field("previous_image"),
            Some(Field::PreviousImage)
        );
    }
}
