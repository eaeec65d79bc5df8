//! The `flux` format (kind deployment): the event Flux's
//! notification-controller posts through a `generic` or `generic-hmac`
//! Provider (fluxcd/notification-controller `docs/spec/v1beta3/providers.md`,
//! "Generic webhook"; header `Gotk-Component`).
//!
//! Fields read: `involvedObject` (`kind`, `namespace`, `name`), `severity`,
//! `reason`, `message`, `metadata` (`revision`, or
//! `{kustomize,helm,source}.toolkit.fluxcd.io/revision`).
//!
//! Only rollouts count: events of a `Kustomization` or a `HelmRelease`.
//! Events of other kinds (`GitRepository`, `OCIRepository`, ...) are ignored
//! as `kind:KIND`, and `trace` events as `severity:trace`.
//!
//! The object names the service and environment through the source's
//! mapping, over the text `NAMESPACE/NAME`: the service is the `service`
//! group of `service_from`'s regex, else the object's name; the environment
//! the `environment` group of `environment_from`'s regex, else the source's
//! `environment`, else the namespace.
//!
//! `reason` (and `severity`) give the status, as [`status_of`] tables it.
//! Flux's events name no image: the status is about the image the key runs.

use super::util::{environment_of, located, parse, service_of, At};
use super::{DecodeError, DecodeOptions, Decoded};
use crate::record::{validate_deployment, DeployStatus, DeploymentFields, Payload};

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "involvedObject",
    "kind",
    "namespace",
    "name",
    "severity",
    "reason",
    "message",
    "metadata",
    "revision",
    "kustomize.toolkit.fluxcd.io/revision",
    "helm.toolkit.fluxcd.io/revision",
    "source.toolkit.fluxcd.io/revision",
];

/// Object kinds whose events are about a rollout.
const ROLLOUT_KINDS: &[&str] = &["Kustomization", "HelmRelease"];

/// The status a Flux event's reason means. A reason not listed is a
/// `failed` when the event's severity is `error` and is ignored otherwise.
pub(crate) fn status_of(reason: &str) -> Option<DeployStatus> {
    use DeployStatus::*;
    Some(match reason {
        "ReconciliationSucceeded"
        | "HealthCheckSucceeded"
        | "InstallSucceeded"
        | "UpgradeSucceeded" => Healthy,
        "Progressing" | "ProgressingWithRetry" | "DependencyNotReady" => Progressing,
        "HealthCheckFailed" | "TestFailed" => Degraded,
        "ReconciliationFailed"
        | "BuildFailed"
        | "ValidationFailed"
        | "ArtifactFailed"
        | "PruneFailed"
        | "InstallFailed"
        | "UpgradeFailed" => Failed,
        _ => return None,
    })
}

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let object = root.req("involvedObject")?;
    let kind = object.req_name("kind")?;
    if !ROLLOUT_KINDS.contains(&kind) {
        return Ok(Decoded::ignored(format!("kind:{kind}")));
    }
    let severity = root.req_name("severity")?;
    if severity == "trace" {
        return Ok(Decoded::ignored("severity:trace"));
    }
    let reason = root.req_name("reason")?;
    let status = match (status_of(reason), severity) {
        (Some(status), _) => status,
        (None, "error") => DeployStatus::Failed,
        (None, _) => return Ok(Decoded::ignored(format!("reason:{reason}"))),
    };
    let namespace = object.req_str("namespace")?;
    let name = object.req_str("name")?;
    let subject = format!("{namespace}/{name}");
    let at = object.path_of("name");
    let environment = match environment_of(&subject, opts, &at)? {
        Some(env) => Some(env),
        None if opts.environment.is_some() => None,
        None => Some(namespace.to_owned()),
    };
    let message = root.opt_str("message")?.unwrap_or_default();
    let fields = DeploymentFields {
        service: Some(service_of(&subject, opts, &at)?),
        environment,
        status: Some(status.as_str().to_owned()),
        image: None,
        revision: revision(&root)?,
        reason: Some(super::util::one_line(&format!("{reason}: {message}"))),
    };
    validate_deployment(fields, opts.environment.as_deref())
        .map(|d| Decoded::one(Payload::Deployment(Box::new(d))))
        .map_err(|e| {
            let field = e.0.split_once(": ").map_or("", |(f, _)| f);
            let path = match field {
                "service" | "environment" => object.path_of("name"),
                "revision" => root.path_of("metadata"),
                _ => root.path(),
            };
            located(path, e)
        })
}

/// The revision the event's metadata names: `revision`, or
/// `kustomize.toolkit.fluxcd.io/revision` and its helm and source siblings
/// (the members the parser keeps).
fn revision(root: &At<'_, '_>) -> Result<Option<String>, DecodeError> {
    let Some(metadata) = root.get("metadata")? else {
        return Ok(None);
    };
    for (key, value) in metadata.object()? {
        if key == "revision" || key.ends_with("/revision") {
            if let Some(text) = value.as_str() {
                return Ok(Some(super::util::one_line(text)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run};
    use super::super::{decode, FieldFrom, Format};
    use super::*;
    use crate::record::{DeploymentEvent, Kind};
    use regex::Regex;

    fn event(kind: &str, severity: &str, reason: &str) -> String {
        format!(
            r#"{{"involvedObject":{{"apiVersion":"kustomize.toolkit.fluxcd.io/v1","kind":"{kind}","name":"payments","namespace":"prod","uid":"1"}},
            "metadata":{{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:0a1b2c"}},
            "severity":"{severity}","reason":"{reason}","message":"Applied revision: main@sha1:0a1b2c\nline two",
            "reportingController":"kustomize-controller","reportingInstance":"kc-1","timestamp":"2026-01-01T00:00:00Z"}}"#
        )
    }

    fn status(json: &str) -> DeployStatus {
        match &run(Format::Flux, Kind::Deployment, json).records[..] {
            [Payload::Deployment(d)] => d.status,
            other => panic!("expected one status, got {other:?}"),
        }
    }

    #[test]
    fn reasons_and_severities_map_to_statuses_as_the_readme_tables_them() {
        let cases = [
            ("info", "ReconciliationSucceeded", DeployStatus::Healthy),
            ("info", "HealthCheckSucceeded", DeployStatus::Healthy),
            ("info", "Progressing", DeployStatus::Progressing),
            ("error", "HealthCheckFailed", DeployStatus::Degraded),
            ("error", "ReconciliationFailed", DeployStatus::Failed),
            ("error", "BuildFailed", DeployStatus::Failed),
            ("error", "SomethingNew", DeployStatus::Failed),
        ];
        for (severity, reason, expected) in cases {
            assert_eq!(
                status(&event("Kustomization", severity, reason)),
                expected,
                "{reason}"
            );
        }
        let ignored = run(
            Format::Flux,
            Kind::Deployment,
            &event("Kustomization", "info", "ArtifactUpToDate"),
        );
        assert_eq!(ignored.ignored, ["reason:ArtifactUpToDate"]);
        let source = run(
            Format::Flux,
            Kind::Deployment,
            &event("GitRepository", "info", "NewArtifact"),
        );
        assert_eq!(source.ignored, ["kind:GitRepository"]);
        let trace = run(
            Format::Flux,
            Kind::Deployment,
            &event("HelmRelease", "trace", "Progressing"),
        );
        assert_eq!(trace.ignored, ["severity:trace"]);
    }

    #[test]
    fn the_object_names_service_and_environment_and_the_metadata_the_revision() {
        let decoded = run(
            Format::Flux,
            Kind::Deployment,
            &event("Kustomization", "info", "ReconciliationSucceeded"),
        );
        let expected = DeploymentEvent {
            service: "payments".into(),
            environment: "prod".into(),
            status: DeployStatus::Healthy,
            image: None,
            revision: Some("main@sha1:0a1b2c".into()),
            reason: Some(
                "ReconciliationSucceeded: Applied revision: main@sha1:0a1b2c line two".into(),
            ),
        };
        assert_eq!(
            decoded.records,
            vec![Payload::Deployment(Box::new(expected))]
        );
        let opts = DecodeOptions {
            environment: Some("staging".into()),
            service_from: Some(FieldFrom::Regex(
                Regex::new("^[^/]+/(?P<service>[a-z]+)").unwrap(),
            )),
            environment_from: None,
            severity_from: None,
        };
        let json =
            event("HelmRelease", "info", "UpgradeSucceeded").replace("payments", "payments-api");
        let d = decode(Format::Flux, Kind::Deployment, &json, &opts).unwrap();
        match &d.records[..] {
            [Payload::Deployment(d)] => {
                assert_eq!(
                    (d.service.as_str(), d.environment.as_str()),
                    ("payments", "staging")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let ok = event("Kustomization", "info", "Progressing");
        let cases = [
            ("[]".to_owned(), "value"),
            (
                r#"{"severity":"info","reason":"Progressing"}"#.to_owned(),
                "involvedObject",
            ),
            (
                ok.replace(r#""kind":"Kustomization","#, ""),
                "involvedObject.kind",
            ),
            (ok.replace(r#""severity":"info","#, ""), "severity"),
            (ok.replace(r#""reason":"Progressing","#, ""), "reason"),
            (
                ok.replace(r#""name":"payments","#, ""),
                "involvedObject.name",
            ),
            (
                ok.replace(r#""name":"payments""#, r#""name":"-bad""#),
                "involvedObject.name",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Flux, Kind::Deployment, &json),
                path,
                "{json}"
            );
        }
    }
}
