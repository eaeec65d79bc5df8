//! Records in their JSON form (sinks, dead letters, the replay output),
//! serialized from borrowed fields without building a tree first.

use serde::Serialize;

use super::{
    AlertEvent, AlertStatus, ControlAction, ControlEvent, DeployStatus, DeploymentEvent, GitEvent,
    GitEventType, ImageEvent, Intent, Payload,
};

/// A record's value in its JSON form, serialized without building a tree first.
#[derive(Serialize)]
#[serde(untagged)]
pub enum PayloadJson<'a> {
    Image(ImageJson<'a>),
    Alert(AlertJson<'a>),
    Git(GitJson<'a>),
    Intent(&'a Intent),
    Deployment(DeploymentJson<'a>),
    Control(ControlJson<'a>),
}

#[derive(Serialize)]
pub struct DeploymentJson<'a> {
    service: &'a str,
    environment: &'a str,
    status: DeployStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> From<&'a DeploymentEvent> for DeploymentJson<'a> {
    fn from(d: &'a DeploymentEvent) -> Self {
        DeploymentJson {
            service: &d.service,
            environment: &d.environment,
            status: d.status,
            image: d.image.as_deref(),
            revision: d.revision.as_deref(),
            reason: d.reason.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct ControlJson<'a> {
    action: ControlAction,
    environment: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<&'a str>,
}

impl<'a> From<&'a ControlEvent> for ControlJson<'a> {
    fn from(c: &'a ControlEvent) -> Self {
        ControlJson {
            action: c.action,
            environment: &c.environment,
            service: c.service.as_deref(),
            image: c.image.as_deref(),
            until: c.until,
            reason: c.reason.as_deref(),
            by: c.by.as_deref(),
        }
    }
}

impl Payload {
    /// The JSON form as text, for dead letters.
    pub fn to_raw_json(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(&self.json()).expect("plain structs of strings serialize")
    }
}

#[derive(Serialize)]
pub struct ImageJson<'a> {
    service: &'a str,
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
}

impl<'a> From<&'a ImageEvent> for ImageJson<'a> {
    fn from(i: &'a ImageEvent) -> Self {
        ImageJson {
            service: &i.service,
            repository: &i.repository,
            tag: i.tag.as_deref(),
            digest: i.digest.as_deref(),
            environment: i.environment.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct AlertJson<'a> {
    service: &'a str,
    alertname: &'a str,
    severity: &'a str,
    status: AlertStatus,
    environment: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
}

impl<'a> From<&'a AlertEvent> for AlertJson<'a> {
    fn from(a: &'a AlertEvent) -> Self {
        AlertJson {
            service: &a.service,
            alertname: &a.alertname,
            severity: &a.severity,
            status: a.status,
            environment: &a.environment,
            fingerprint: a.fingerprint.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct GitJson<'a> {
    service: &'a str,
    repository: &'a str,
    branch: &'a str,
    commit: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    event: GitEventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_request: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
}

impl<'a> From<&'a GitEvent> for GitJson<'a> {
    fn from(g: &'a GitEvent) -> Self {
        GitJson {
            service: &g.service,
            repository: &g.repository,
            branch: &g.branch,
            commit: &g.commit,
            author: g.author.as_deref(),
            event: g.event,
            pull_request: g.pull_request,
            environment: g.environment.as_deref(),
        }
    }
}
