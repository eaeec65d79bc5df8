//! The `alertmanager` format: Prometheus Alertmanager's webhook payload,
//! version 4 (prometheus/alertmanager `docs/configuration.md`,
//! `<webhook_config>`).
//!
//! Fields read: `version` (must be `"4"` when present), `commonLabels`, and
//! per entry of `alerts[]`: `status` (`firing` or `resolved`), `labels`,
//! `fingerprint`. One record per alert. The status is the alert's own, never
//! the group's: the group's `status` says `firing` for a group that mixes
//! firing and resolved alerts (alertmanager #1051), and a firing alert's
//! `endsAt` may be the zero time `0001-01-01T00:00:00Z`, so neither is read.
//! A positive `truncatedAlerts` (alerts beyond the receiver's `max_alerts`,
//! which Alertmanager leaves out) is listed as ignored, `truncatedAlerts:N`;
//! a group of no alerts (`alerts: []`) as `alerts:empty`.
//!
//! Labels: `alertname`; the service, environment and severity from the
//! labels the source names (`service_from`, `environment_from`,
//! `severity_from`; defaults `service`, `environment` then `env`,
//! `severity`). An alert's own labels come first, then `commonLabels`. The
//! environment falls back to the source's `environment`.

use serde_json::{Map, Value};

use super::util::{located, parse, At};
use super::{DecodeError, DecodeOptions, Decoded, FieldFrom};
use crate::record::{validate_alert, AlertFields, Payload};

const SERVICE: &[&str] = &["service"];
const ENVIRONMENT: &[&str] = &["environment", "env"];
const SEVERITY: &[&str] = &["severity"];

/// The label names each record field is read from.
struct LabelNames<'o> {
    service: Vec<&'o str>,
    environment: Vec<&'o str>,
    severity: Vec<&'o str>,
}

/// The members read besides labels.
const KEYS: &[&str] = &[
    "version",
    "commonLabels",
    "alerts",
    "status",
    "labels",
    "fingerprint",
    "truncatedAlerts",
];

impl<'o> LabelNames<'o> {
    /// The members the parser keeps: the payload's and the labels read.
    fn keys(&self) -> Vec<&str> {
        let labels = [&self.service, &self.environment, &self.severity];
        let mut keys = KEYS.to_vec();
        keys.push("alertname");
        keys.extend(labels.into_iter().flatten());
        keys
    }

    fn new(opts: &'o DecodeOptions) -> Self {
        let names = |from: &'o Option<FieldFrom>, default: &[&'static str]| match from {
            Some(FieldFrom::Labels(labels)) => labels.iter().map(String::as_str).collect(),
            _ => default.to_vec(),
        };
        LabelNames {
            service: names(&opts.service_from, SERVICE),
            environment: names(&opts.environment_from, ENVIRONMENT),
            severity: names(&opts.severity_from, SEVERITY),
        }
    }
}

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let names = LabelNames::new(opts);
    let value = parse(json, &names.keys())?;
    let root = At::root(&value);
    if let Some(version) = root.get("version")? {
        if version.str()? != "4" {
            return Err(version.error(format!(
                "webhook version `{}` is not supported; expected \"4\"",
                version.str()?
            )));
        }
    }
    let common = match root.get("commonLabels")? {
        Some(c) => Some(c.object()?),
        None => None,
    };
    let alerts = root.req("alerts")?;
    let alerts = alerts.items()?;
    let records: Vec<Payload> = alerts
        .iter()
        .map(|alert| decode_alert(alert, common, &names, opts))
        .collect::<Result<_, _>>()?;
    let mut ignored = Vec::new();
    if records.is_empty() {
        ignored.push("alerts:empty".to_owned());
    }
    // Alerts Alertmanager left out (`max_alerts`) are lost upstream: say so.
    if let Some(n) = root.opt_u64("truncatedAlerts")?.filter(|&n| n > 0) {
        ignored.push(format!("truncatedAlerts:{n}"));
    }
    Ok(Decoded { records, ignored })
}

fn decode_alert(
    alert: &At<'_, '_>,
    common: Option<&Map<String, Value>>,
    names: &LabelNames<'_>,
    opts: &DecodeOptions,
) -> Result<Payload, DecodeError> {
    let labels = alert.req("labels")?;
    let own = labels.object()?;
    let label = |wanted| read_label(&labels, own, common, wanted);
    let missing = |field: &str, wanted: &[&str]| {
        let name = wanted.first().unwrap_or(&field);
        DecodeError::new(
            alert.path_of(&format!("labels.{name}")),
            format!("missing: no label gives the {field}, nor in commonLabels"),
        )
    };
    let status = alert.req_str("status")?;
    let alertname = label(&["alertname"])?.ok_or_else(|| missing("alertname", &["alertname"]))?;
    let service = label(&names.service)?.ok_or_else(|| missing("service", &names.service))?;
    let severity = label(&names.severity)?.ok_or_else(|| missing("severity", &names.severity))?;
    let environment = label(&names.environment)?;
    if environment.is_none() && opts.environment.is_none() {
        return Err(missing("environment", &names.environment));
    }
    let fields = AlertFields {
        service: Some(service.value.to_owned()),
        alertname: Some(alertname.value.to_owned()),
        severity: Some(severity.value.to_owned()),
        status: Some(status.to_owned()),
        environment: environment.as_ref().map(|e| e.value.to_owned()),
        fingerprint: alert.opt_str("fingerprint")?.map(str::to_owned),
    };
    validate_alert(fields, opts.environment.as_deref())
        .map(|a| Payload::Alert(Box::new(a)))
        .map_err(|e| {
            let field = e.0.split_once(": ").map_or("", |(field, _)| field);
            let path = match field {
                "alertname" => alertname.path(&labels),
                "service" => service.path(&labels),
                "severity" => severity.path(&labels),
                "environment" => environment
                    .as_ref()
                    .map_or_else(|| alert.path(), |e| e.path(&labels)),
                "status" | "fingerprint" => alert.path_of(field),
                _ => alert.path(),
            };
            located(path, e)
        })
}

/// The label a record field was read from.
struct Found<'w, 'v> {
    name: &'w str,
    /// From the group's `commonLabels`, the alert having no such label.
    in_common: bool,
    value: &'v str,
}

impl Found<'_, '_> {
    fn path(&self, labels: &At<'_, '_>) -> String {
        label_path(labels, self.name, self.in_common)
    }
}

fn label_path(labels: &At<'_, '_>, name: &str, in_common: bool) -> String {
    if in_common {
        format!("commonLabels.{name}")
    } else {
        labels.path_of(name)
    }
}

/// The first of `wanted` among the alert's own labels, else among the
/// group's common labels. A label that is not a string is an error.
fn read_label<'w, 'v>(
    labels: &At<'_, 'v>,
    own: &'v Map<String, Value>,
    common: Option<&'v Map<String, Value>>,
    wanted: &'w [&'w str],
) -> Result<Option<Found<'w, 'v>>, DecodeError> {
    let find = |map: &'v Map<String, Value>| {
        wanted
            .iter()
            .find_map(|name| map.get(*name).map(|v| (*name, v)))
    };
    let (found, in_common) = match find(own) {
        Some(found) => (Some(found), false),
        None => (common.and_then(find), true),
    };
    let Some((name, value)) = found else {
        return Ok(None);
    };
    match value.as_str() {
        Some(value) => Ok(Some(Found {
            name,
            in_common,
            value,
        })),
        None => Err(DecodeError::new(
            label_path(labels, name, in_common),
            "expected a string label value",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run};
    use super::super::{decode, Format};
    use super::*;
    use crate::record::{AlertEvent, AlertStatus, Kind};

    const GROUP: &str = r#"{
      "version": "4", "status": "firing", "receiver": "sluice",
      "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0,
      "groupLabels": {"alertname": "HighLatency"},
      "commonLabels": {"alertname": "HighLatency", "service": "checkout", "env": "prod"},
      "commonAnnotations": {}, "externalURL": "http://am:9093",
      "alerts": [
        {"status": "firing", "labels": {"alertname": "HighLatency", "service": "checkout",
         "env": "prod", "severity": "critical"}, "annotations": {},
         "startsAt": "2024-05-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prom/graph", "fingerprint": "aa11"},
        {"status": "resolved", "labels": {"alertname": "HighLatency", "severity": "warning"},
         "startsAt": "2024-05-01T09:00:00Z", "endsAt": "2024-05-01T09:30:00Z",
         "fingerprint": "bb22"}
      ]
    }"#;

    fn alert(severity: &str, status: AlertStatus, fingerprint: &str) -> Payload {
        Payload::Alert(Box::new(AlertEvent {
            service: "checkout".into(),
            alertname: "HighLatency".into(),
            severity: severity.into(),
            status,
            environment: "prod".into(),
            fingerprint: Some(fingerprint.into()),
        }))
    }

    #[test]
    fn one_record_per_alert_with_its_own_status_and_common_labels_as_fallback() {
        let decoded = run(Format::Alertmanager, Kind::Alert, GROUP);
        assert_eq!(
            decoded.records,
            vec![
                alert("critical", AlertStatus::Firing, "aa11"),
                alert("warning", AlertStatus::Resolved, "bb22"),
            ]
        );
        assert!(decoded.ignored.is_empty());
        let truncated = GROUP.replace(r#""truncatedAlerts": 0"#, r#""truncatedAlerts": 3"#);
        let decoded = run(Format::Alertmanager, Kind::Alert, &truncated);
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(decoded.ignored, ["truncatedAlerts:3"]);
    }

    #[test]
    fn labels_are_configurable_and_the_source_environment_is_the_fallback() {
        let json = r#"{"alerts":[{"status":"firing","labels":{"alertname":"Down","app":"api","prio":"P1"}}]}"#;
        let opts = DecodeOptions {
            environment: Some("staging".into()),
            service_from: Some(FieldFrom::Labels(vec!["component".into(), "app".into()])),
            severity_from: Some(FieldFrom::Labels(vec!["prio".into()])),
            environment_from: None,
        };
        let decoded = decode(Format::Alertmanager, Kind::Alert, json, &opts).unwrap();
        let expected = AlertEvent {
            service: "api".into(),
            alertname: "Down".into(),
            severity: "P1".into(),
            status: AlertStatus::Firing,
            environment: "staging".into(),
            fingerprint: None,
        };
        assert_eq!(decoded.records, vec![Payload::Alert(Box::new(expected))]);
    }

    #[test]
    fn a_group_without_alerts_is_ignored() {
        let json = r#"{"version":"4","status":"resolved","commonLabels":{},"alerts":[]}"#;
        let decoded = run(Format::Alertmanager, Kind::Alert, json);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["alerts:empty"]);
    }

    #[test]
    fn errors_name_the_field() {
        let ok = r#""status":"firing","labels":{"alertname":"A","service":"s","severity":"c","env":"p"}"#;
        let cases = [
            ("[]".to_owned(), "value"),
            ("{".to_owned(), "value"),
            ("{}".to_owned(), "alerts"),
            (r#"{"version":"3","alerts":[]}"#.to_owned(), "version"),
            (r#"{"alerts":{}}"#.to_owned(), "alerts"),
            (
                format!(r#"{{"alerts":[{{{ok}}},{{"status":"firing","labels":{{"service":"s"}}}}]}}"#),
                "alerts[1].labels.alertname",
            ),
            (
                r#"{"alerts":[{"status":"firing","labels":{"alertname":"A","severity":"c","env":"p"}}]}"#.to_owned(),
                "alerts[0].labels.service",
            ),
            (
                r#"{"alerts":[{"labels":{"alertname":"A","service":"s","severity":"c","env":"p"}}]}"#.to_owned(),
                "alerts[0].status",
            ),
            (
                r#"{"alerts":[{"status":"pending","labels":{"alertname":"A","service":"s","severity":"c","env":"p"}}]}"#.to_owned(),
                "alerts[0].status",
            ),
            (
                r#"{"alerts":[{"status":"firing","labels":{"alertname":"A","service":"s","severity":"c","env":7}}]}"#.to_owned(),
                "alerts[0].labels.env",
            ),
            (
                r#"{"alerts":[{"status":"firing","labels":{"alertname":"A","service":"-s","severity":"c","env":"p"}}]}"#.to_owned(),
                "alerts[0].labels.service",
            ),
            (
                r#"{"alerts":[{"status":"firing","labels":{"alertname":"A","service":"s","severity":"c"}}]}"#.to_owned(),
                "alerts[0].labels.environment",
            ),
            (
                r#"{"commonLabels":{"service":"-s"},"alerts":[{"status":"firing","labels":{"alertname":"A","severity":"c","env":"p"}}]}"#.to_owned(),
                "commonLabels.service",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Alertmanager, Kind::Alert, &json),
                path,
                "{json}"
            );
        }
    }
}
