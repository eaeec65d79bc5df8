//! The `argocd` format (kind deployment): the body of the Argo CD
//! notifications webhook template that the README gives for users to paste
//! (Argo CD's webhook service has no fixed body: a template over `.app`
//! renders it; `docs/operator-manual/notifications/services/webhook.md`).
//!
//! Fields read, all strings as the template renders them: `app`
//! (`.app.metadata.name`), `namespace` (`.app.spec.destination.namespace`),
//! `sync_status`, `health_status`, `operation_phase` (empty when the app has
//! no operation), `revision`, `images` (`.app.status.summary.images`,
//! comma-separated).
//!
//! The service and environment come from the text `NAMESPACE/APP` through
//! the source's mapping, as for `flux`: the `service` group of
//! `service_from`, else the app's name; the `environment` group of
//! `environment_from`, else the source's `environment`, else the namespace.
//!
//! The status, in this order: operation phase `Failed` or `Error` → failed;
//! health `Degraded` → degraded; phase `Running` or health `Progressing` →
//! progressing; health `Healthy` with sync `Synced` → healthy. Anything else
//! (health `Missing`, `Suspended`, `Unknown`, out of sync while healthy) is
//! ignored as `health:HEALTH` or `sync:SYNC`. The image is the one of
//! `images` whose repository ends in the service's name (the only one when
//! there is one), else none: the status is then about the image the key runs.

use super::util::{environment_of, located, parse, service_of, At};
use super::{DecodeError, DecodeOptions, Decoded};
use crate::record::{validate_deployment, DeployStatus, DeploymentFields, Payload};

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "app",
    "namespace",
    "sync_status",
    "health_status",
    "operation_phase",
    "revision",
    "images",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let app = root.req_str("app")?;
    let namespace = root.req_str("namespace")?;
    let health = root.req_name("health_status")?;
    let sync = root.req_name("sync_status")?;
    let phase = root.opt_str("operation_phase")?.unwrap_or_default();
    let status = match (phase, health, sync) {
        ("Failed" | "Error", _, _) => DeployStatus::Failed,
        (_, "Degraded", _) => DeployStatus::Degraded,
        ("Running", _, _) | (_, "Progressing", _) => DeployStatus::Progressing,
        (_, "Healthy", "Synced") => DeployStatus::Healthy,
        (_, "Healthy", sync) => return Ok(Decoded::ignored(format!("sync:{sync}"))),
        (_, health, _) => return Ok(Decoded::ignored(format!("health:{health}"))),
    };
    let subject = format!("{namespace}/{app}");
    let at = root.path_of("app");
    let service = service_of(&subject, opts, &at)?;
    let environment = match environment_of(&subject, opts, &at)? {
        Some(env) => Some(env),
        None if opts.environment.is_some() => None,
        None => Some(namespace.to_owned()),
    };
    let images = root.opt_str("images")?.unwrap_or_default();
    let reason = match phase {
        "" => format!("health {health}, sync {sync}"),
        phase => format!("operation {phase}, health {health}, sync {sync}"),
    };
    let fields = DeploymentFields {
        image: image_of(images, &service),
        service: Some(service),
        environment,
        status: Some(status.as_str().to_owned()),
        revision: root.non_empty_str("revision")?.map(str::to_owned),
        reason: Some(reason),
    };
    validate_deployment(fields, opts.environment.as_deref())
        .map(|d| Decoded::one(Payload::Deployment(Box::new(d))))
        .map_err(|e| {
            let field = e.0.split_once(": ").map_or("", |(f, _)| f);
            let path = match field {
                "service" | "environment" => root.path_of("app"),
                "image" => root.path_of("images"),
                "revision" => root.path_of("revision"),
                _ => root.path(),
            };
            located(path, e)
        })
}

/// The image among `images` (comma-separated references) that belongs to
/// `service`: the only one, or the one whose repository's last component is
/// the service's name.
fn image_of(images: &str, service: &str) -> Option<String> {
    let all: Vec<&str> = images
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if let [only] = all[..] {
        return Some(only.to_owned());
    }
    all.into_iter()
        .find(|image| {
            let (repository, _, _) = super::util::split_reference(image);
            repository.rsplit('/').next() == Some(service)
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run};
    use super::super::Format;
    use super::*;
    use crate::record::{DeploymentEvent, Kind};

    fn body(phase: &str, health: &str, sync: &str, images: &str) -> String {
        format!(
            r#"{{"app":"checkout","namespace":"prod","sync_status":"{sync}","health_status":"{health}",
            "operation_phase":"{phase}","revision":"4f1e2d3c","images":"{images}"}}"#
        )
    }

    fn status(json: &str) -> DeployStatus {
        match &run(Format::Argocd, Kind::Deployment, json).records[..] {
            [Payload::Deployment(d)] => d.status,
            other => panic!("expected one status, got {other:?}"),
        }
    }

    #[test]
    fn phase_health_and_sync_give_the_status_in_order() {
        let cases = [
            ("Failed", "Healthy", "Synced", DeployStatus::Failed),
            ("Error", "Degraded", "OutOfSync", DeployStatus::Failed),
            ("Succeeded", "Degraded", "Synced", DeployStatus::Degraded),
            ("Running", "Healthy", "OutOfSync", DeployStatus::Progressing),
            (
                "Succeeded",
                "Progressing",
                "Synced",
                DeployStatus::Progressing,
            ),
            ("Succeeded", "Healthy", "Synced", DeployStatus::Healthy),
            ("", "Healthy", "Synced", DeployStatus::Healthy),
        ];
        for (phase, health, sync, expected) in cases {
            assert_eq!(
                status(&body(phase, health, sync, "")),
                expected,
                "{phase} {health} {sync}"
            );
        }
        let missing = run(
            Format::Argocd,
            Kind::Deployment,
            &body("", "Missing", "OutOfSync", ""),
        );
        assert_eq!(missing.ignored, ["health:Missing"]);
        let drift = run(
            Format::Argocd,
            Kind::Deployment,
            &body("Succeeded", "Healthy", "OutOfSync", ""),
        );
        assert_eq!(drift.ignored, ["sync:OutOfSync"]);
    }

    #[test]
    fn the_service_image_is_picked_from_the_summary() {
        let json = body(
            "Succeeded",
            "Healthy",
            "Synced",
            "docker.io/library/redis:7, reg.acme.io/shop/checkout:v4",
        );
        let expected = DeploymentEvent {
            service: "checkout".into(),
            environment: "prod".into(),
            status: DeployStatus::Healthy,
            image: Some("reg.acme.io/shop/checkout:v4".into()),
            revision: Some("4f1e2d3c".into()),
            reason: Some("operation Succeeded, health Healthy, sync Synced".into()),
        };
        assert_eq!(
            run(Format::Argocd, Kind::Deployment, &json).records,
            vec![Payload::Deployment(Box::new(expected))]
        );
        assert_eq!(
            image_of("a:1,b:2", "c"),
            None,
            "several images, none the service's"
        );
        assert_eq!(image_of("x/c:1", "c").as_deref(), Some("x/c:1"));
    }

    #[test]
    fn errors_name_the_field() {
        let ok = body("Succeeded", "Healthy", "Synced", "");
        let cases = [
            ("{".to_owned(), "value"),
            (ok.replace(r#""app":"checkout","#, ""), "app"),
            (
                ok.replace(r#""health_status":"Healthy","#, ""),
                "health_status",
            ),
            (
                ok.replace(r#""sync_status":"Synced","#, r#""sync_status":5,"#),
                "sync_status",
            ),
            (
                body("Succeeded", "Healthy", "Synced", "Bad:Image"),
                "images",
            ),
            (ok.replace("checkout", "-x"), "app"),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Argocd, Kind::Deployment, &json),
                path,
                "{json}"
            );
        }
    }
}
