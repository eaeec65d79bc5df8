//! The records that close the loop: `deployment` (what Argo CD or Flux says
//! became of a rollout) and `control` (a person's command: freeze, pin,
//! approve), with their validation. Both are low-volume, so they are read
//! through a `serde_json::Value` that lets every error name its field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{oci, InvalidRecord};

/// What became of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployStatus {
    Progressing,
    Healthy,
    Degraded,
    Failed,
}

impl DeployStatus {
    pub const ALL: [DeployStatus; 4] = [
        DeployStatus::Progressing,
        DeployStatus::Healthy,
        DeployStatus::Degraded,
        DeployStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Progressing => "progressing",
            DeployStatus::Healthy => "healthy",
            DeployStatus::Degraded => "degraded",
            DeployStatus::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The status of a rollout of one service in one environment, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub service: String,
    pub environment: String,
    pub status: DeployStatus,
    /// The image the status is about (`repository[:tag][@digest]`), when the sender knows it.
    pub image: Option<String>,
    /// The git revision the rollout applied.
    pub revision: Option<String>,
    /// The sender's own words (Flux's reason, Argo CD's phase and message).
    pub reason: Option<String>,
}

/// A deployment status's fields as a payload gave them, before validation.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFields {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub status: Option<String>,
    pub image: Option<String>,
    pub revision: Option<String>,
    pub reason: Option<String>,
}

/// What a person asks of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlAction {
    Freeze,
    Unfreeze,
    Pin,
    Unpin,
    Approve,
}

impl ControlAction {
    pub const ALL: [ControlAction; 5] = [
        ControlAction::Freeze,
        ControlAction::Unfreeze,
        ControlAction::Pin,
        ControlAction::Unpin,
        ControlAction::Approve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Freeze => "freeze",
            ControlAction::Unfreeze => "unfreeze",
            ControlAction::Pin => "pin",
            ControlAction::Unpin => "unpin",
            ControlAction::Approve => "approve",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether the action needs a service (freeze and unfreeze may cover a whole environment).
    pub fn needs_service(self) -> bool {
        !matches!(self, ControlAction::Freeze | ControlAction::Unfreeze)
    }

    /// Whether the action names an image (pin and approve must, the others must not).
    pub fn takes_image(self) -> bool {
        matches!(self, ControlAction::Pin | ControlAction::Approve)
    }
}

/// A person's command to the gate, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEvent {
    pub action: ControlAction,
    pub environment: String,
    /// Absent (freeze and unfreeze only): the whole environment.
    pub service: Option<String>,
    /// Pin and approve: the image.
    pub image: Option<String>,
    /// Freeze only: when the freeze lifts by itself, ms since the epoch.
    pub until: Option<u64>,
    pub reason: Option<String>,
    pub by: Option<String>,
}

/// Parses and validates a deployment status in Sluice's own JSON form.
pub fn parse_deployment(
    json: &str,
    default_environment: Option<&str>,
) -> Result<DeploymentEvent, InvalidRecord> {
    let obj = object(json)?;
    let fields = DeploymentFields {
        service: text(&obj, "service")?,
        environment: text(&obj, "environment")?,
        status: text(&obj, "status")?,
        image: text(&obj, "image")?,
        revision: text(&obj, "revision")?,
        reason: text(&obj, "reason")?,
    };
    validate_deployment(fields, default_environment)
}

/// Validates a deployment status, whatever format it came in.
pub fn validate_deployment(
    f: DeploymentFields,
    default_environment: Option<&str>,
) -> Result<DeploymentEvent, InvalidRecord> {
    let service = name("service", f.service)?;
    let environment = name(
        "environment",
        f.environment
            .or_else(|| default_environment.map(str::to_owned)),
    )?;
    let status = required("status", f.status)?;
    let status = DeployStatus::from_name(&status).ok_or_else(|| {
        invalid(
            "status",
            format!(
                "`{}` is not one of progressing, healthy, degraded, failed",
                oci::printable(&status)
            ),
        )
    })?;
    if let Some(image) = &f.image {
        oci::parse_reference(image).map_err(|e| invalid("image", e))?;
    }
    check_text("revision", f.revision.as_deref())?;
    check_text("reason", f.reason.as_deref())?;
    Ok(DeploymentEvent {
        service,
        environment,
        status,
        image: f.image,
        revision: f.revision,
        reason: f.reason,
    })
}

/// Parses and validates a control record in Sluice's own JSON form.
pub fn parse_control(
    json: &str,
    default_environment: Option<&str>,
) -> Result<ControlEvent, InvalidRecord> {
    let obj = object(json)?;
    let action = required("action", text(&obj, "action")?)?;
    let action = ControlAction::from_name(&action).ok_or_else(|| {
        invalid(
            "action",
            format!(
                "`{}` is not one of freeze, unfreeze, pin, unpin, approve",
                oci::printable(&action)
            ),
        )
    })?;
    let environment = name(
        "environment",
        text(&obj, "environment")?.or_else(|| default_environment.map(str::to_owned)),
    )?;
    let service = text(&obj, "service")?;
    match &service {
        Some(s) => check_name("service", s)?,
        None if action.needs_service() => {
            return Err(invalid(
                "service",
                format!("missing: `{}` needs a service", action.as_str()),
            ))
        }
        None => {}
    }
    let image = text(&obj, "image")?;
    match (&image, action.takes_image()) {
        (Some(image), true) => {
            oci::parse_reference(image).map_err(|e| invalid("image", e))?;
        }
        (None, true) => {
            return Err(invalid(
                "image",
                format!("missing: `{}` needs an image", action.as_str()),
            ))
        }
        (Some(_), false) => {
            return Err(invalid(
                "image",
                format!("`{}` takes no image", action.as_str()),
            ))
        }
        (None, false) => {}
    }
    let until =
        match obj.get("until") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                invalid("until", "expected ms since the epoch (an integer)".into())
            })?),
        };
    if until.is_some() && action != ControlAction::Freeze {
        return Err(invalid("until", "only `freeze` takes `until`".into()));
    }
    let reason = text(&obj, "reason")?;
    let by = text(&obj, "by")?;
    check_text("reason", reason.as_deref())?;
    check_text("by", by.as_deref())?;
    Ok(ControlEvent {
        action,
        environment,
        service,
        image,
        until,
        reason,
        by,
    })
}

fn object(json: &str) -> Result<Map<String, Value>, InvalidRecord> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(InvalidRecord("value: expected a JSON object".into())),
        Err(e) => Err(InvalidRecord(format!("value: not JSON: {e}"))),
    }
}

/// The string field `key`; `null` counts as absent.
fn text(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, InvalidRecord> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, "expected a string".into())),
    }
}

fn invalid(field: &str, problem: String) -> InvalidRecord {
    InvalidRecord(format!("{field}: {problem}"))
}

fn required(field: &str, value: Option<String>) -> Result<String, InvalidRecord> {
    value.ok_or_else(|| invalid(field, "missing".into()))
}

fn name(field: &str, value: Option<String>) -> Result<String, InvalidRecord> {
    let value = required(field, value)?;
    check_name(field, &value)?;
    Ok(value)
}

fn check_name(field: &str, value: &str) -> Result<(), InvalidRecord> {
    if oci::is_name(value) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "`{}` does not match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,252}}$",
            oci::printable(value)
        ),
    ))
}

/// Free text that ends up in intents and logs: bounded, no control characters.
fn check_text(field: &str, value: Option<&str>) -> Result<(), InvalidRecord> {
    match value {
        Some(v) if v.len() > 1024 || v.chars().any(char::is_control) => Err(invalid(
            field,
            "must be at most 1024 bytes without control characters".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_deployment_status_and_applies_the_default_environment() {
        let d = parse_deployment(
            r#"{"service":"api","status":"failed","image":"reg.io/api:v2","revision":"abc","reason":"sync failed","extra":1}"#,
            Some("prod"),
        )
        .unwrap();
        assert_eq!(d.environment, "prod");
        assert_eq!(d.status, DeployStatus::Failed);
        assert_eq!(d.image.as_deref(), Some("reg.io/api:v2"));
    }

    #[test]
    fn deployment_errors_name_the_field() {
        let cases = [
            (r#"[]"#, "value"),
            (
                r#"{"status":"healthy","environment":"p"}"#,
                "service: missing",
            ),
            (
                r#"{"service":"a","status":"healthy"}"#,
                "environment: missing",
            ),
            (r#"{"service":"a","environment":"p"}"#, "status: missing"),
            (
                r#"{"service":"a","environment":"p","status":"ok"}"#,
                "status: `ok` is not one of",
            ),
            (
                r#"{"service":"a","environment":"p","status":"healthy","image":"A:v1"}"#,
                "image:",
            ),
            (
                r#"{"service":"a","environment":"p","status":"healthy","revision":7}"#,
                "revision: expected a string",
            ),
            (
                r#"{"service":"a","environment":"p","status":"healthy","reason":"a\nb"}"#,
                "reason:",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_deployment(json, None).unwrap_err().0;
            assert!(
                err.starts_with(expected),
                "{json}: `{err}` should start with `{expected}`"
            );
        }
    }

    #[test]
    fn parses_control_records_and_checks_what_each_action_takes() {
        let c = parse_control(
            r#"{"action":"freeze","environment":"prod","until":1767225600000,"reason":"release day","by":"ana"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (c.action, c.service, c.until),
            (ControlAction::Freeze, None, Some(1767225600000))
        );
        let p = parse_control(
            r#"{"action":"pin","service":"api","image":"api:v1"}"#,
            Some("prod"),
        )
        .unwrap();
        assert_eq!(p.environment, "prod");
        let cases = [
            (r#"{"action":"thaw","environment":"p"}"#, "action: `thaw`"),
            (r#"{"environment":"p"}"#, "action: missing"),
            (r#"{"action":"freeze"}"#, "environment: missing"),
            (
                r#"{"action":"pin","environment":"p","image":"a:v1"}"#,
                "service: missing",
            ),
            (
                r#"{"action":"approve","environment":"p","service":"a"}"#,
                "image: missing",
            ),
            (
                r#"{"action":"freeze","environment":"p","image":"a:v1"}"#,
                "image: `freeze` takes no image",
            ),
            (
                r#"{"action":"unfreeze","environment":"p","until":5}"#,
                "until: only `freeze`",
            ),
            (
                r#"{"action":"freeze","environment":"p","until":"tomorrow"}"#,
                "until: expected",
            ),
            (
                r#"{"action":"pin","environment":"p","service":"a","image":"a"}"#,
                "image:",
            ),
            (
                r#"{"action":"freeze","environment":"p","by":7}"#,
                "by: expected a string",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_control(json, None).unwrap_err().0;
            assert!(
                err.starts_with(expected),
                "{json}: `{err}` should start with `{expected}`"
            );
        }
    }
}
