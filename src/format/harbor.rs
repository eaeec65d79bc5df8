//! The `harbor` format: Harbor's webhooks in both of its payload formats,
//! "Default" and "CloudEvents" (goharbor/website
//! `docs/working-with-projects/project-configuration/configure-webhooks.md`,
//! goharbor.io "Configure Webhook Notifications").
//!
//! Default: `type` (`PUSH_ARTIFACT` counts; `PULL_ARTIFACT`,
//! `DELETE_ARTIFACT`, `SCANNING_COMPLETED`, `QUOTA_EXCEED`, `REPLICATION`...
//! are ignored as themselves) and `event_data`. CloudEvents: `specversion`,
//! `type` (`harbor.artifact.pushed` counts) and `data`. Either way the data
//! holds `resources[]`, one record per resource: `resource_url`
//! (`host/project/repo:tag` or `...@digest`, whose repository part is the
//! record's), `tag` and `digest`. An artifact pushed by digest carries the
//! digest in `tag` too; such a "tag" is not one. A resource whose tag is a
//! cosign one (`sha256-<hex>.sig`, `.att`, `.sbom`) is ignored as
//! `push:signature`; a push of no resources as `TYPE:empty`
//! (`PUSH_ARTIFACT:empty`, `harbor.artifact.pushed:empty`).

use super::util::{merge, parse, pushed_image, split_reference, At};
use super::{DecodeError, DecodeOptions, Decoded};

/// The CloudEvents type of Harbor's artifact push.
pub(super) const PUSHED: &str = "harbor.artifact.pushed";

const ORIGINS: &[(&str, &str)] = &[
    ("repository", "resource_url"),
    ("tag", "tag"),
    ("digest", "digest"),
];

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "specversion",
    "type",
    "data",
    "event_data",
    "resources",
    "resource_url",
    "tag",
    "digest",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let (data_key, push) = match root.get("specversion")? {
        Some(_) => ("data", PUSHED),
        None => ("event_data", "PUSH_ARTIFACT"),
    };
    let kind = root.req_name("type")?;
    if kind != push {
        return Ok(Decoded::ignored(kind));
    }
    decode_pushed(&root.req(data_key)?, kind, opts)
}

/// The data of an artifact push (of type `kind`): one record per resource.
pub(super) fn decode_pushed(
    data: &At<'_, '_>,
    kind: &str,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let resources = data.req("resources")?;
    let resources = resources.items()?;
    if resources.is_empty() {
        return Ok(Decoded::ignored(format!("{kind}:empty")));
    }
    let mut decoded = Decoded::default();
    for resource in &resources {
        let url = resource.req_str("resource_url")?;
        let (repository, _, _) = split_reference(url);
        let digest = resource.non_empty_str("digest")?;
        let tag = resource
            .non_empty_str("tag")?
            .filter(|t| Some(*t) != digest && !t.starts_with("sha256:"));
        merge(
            &mut decoded,
            pushed_image(resource, ORIGINS, repository, tag, digest, opts)?,
        );
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    fn data() -> String {
        format!(
            r#"{{"resources":[
                {{"digest":"{a}","tag":"v2","resource_url":"harbor.example.com/shop/cart:v2"}},
                {{"digest":"{b}","tag":"{b}","resource_url":"harbor.example.com/shop/cart@{b}"}}],
              "repository":{{"date_created":1700000000,"name":"cart","namespace":"shop",
                "repo_full_name":"shop/cart","repo_type":"private"}}}}"#,
            a = sha('a'),
            b = sha('b')
        )
    }

    fn expected() -> Vec<Payload> {
        let image = |tag: Option<&str>, digest: String| {
            Payload::Image(Box::new(ImageEvent {
                service: "cart".into(),
                repository: "harbor.example.com/shop/cart".into(),
                tag: tag.map(str::to_owned),
                digest: Some(digest),
                environment: None,
            }))
        };
        vec![image(Some("v2"), sha('a')), image(None, sha('b'))]
    }

    #[test]
    fn default_format_push_gives_one_record_per_resource() {
        let json = format!(
            r#"{{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"ci","event_data":{}}}"#,
            data()
        );
        let decoded = run(Format::Harbor, Kind::Image, &json);
        assert_eq!(decoded.records, expected());
        assert!(decoded.ignored.is_empty());
    }

    #[test]
    fn cloudevents_format_push_gives_one_record_per_resource() {
        let json = format!(
            r#"{{"specversion":"1.0","id":"1","requestid":"2","source":"/projects/2/webhook/policies/15",
              "type":"harbor.artifact.pushed","datacontenttype":"application/json",
              "time":"2024-01-01T00:00:00Z","data":{},"operator":"ci"}}"#,
            data()
        );
        assert_eq!(run(Format::Harbor, Kind::Image, &json).records, expected());
    }

    #[test]
    fn other_events_are_ignored_with_their_type() {
        let types = [
            "PULL_ARTIFACT",
            "DELETE_ARTIFACT",
            "SCANNING_COMPLETED",
            "SCANNING_FAILED",
            "QUOTA_EXCEED",
            "REPLICATION",
            "TAG_RETENTION",
        ];
        for t in types {
            let json = format!(r#"{{"type":"{t}","event_data":{{"resources":[]}}}}"#);
            assert_eq!(run(Format::Harbor, Kind::Image, &json).ignored, [t]);
        }
        let json = r#"{"specversion":"1.0","type":"harbor.scan.completed","data":{}}"#;
        assert_eq!(
            run(Format::Harbor, Kind::Image, json).ignored,
            ["harbor.scan.completed"]
        );
    }

    #[test]
    fn an_empty_push_and_signature_tags_are_ignored() {
        let empty = r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[]}}"#;
        let decoded = run(Format::Harbor, Kind::Image, empty);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["PUSH_ARTIFACT:empty"]);
        let empty =
            r#"{"specversion":"1.0","type":"harbor.artifact.pushed","data":{"resources":[]}}"#;
        assert_eq!(
            run(Format::Harbor, Kind::Image, empty).ignored,
            ["harbor.artifact.pushed:empty"]
        );
        let sig = sigstore_tag("sig");
        let json = format!(
            r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":[
              {{"digest":"{a}","tag":"{sig}","resource_url":"harbor.example.com/shop/cart:{sig}"}},
              {{"digest":"{a}","tag":"v2","resource_url":"harbor.example.com/shop/cart:v2"}}]}}}}"#,
            a = sha('a')
        );
        let decoded = run(Format::Harbor, Kind::Image, &json);
        assert_eq!(decoded.records, expected()[..1]);
        assert_eq!(decoded.ignored, ["push:signature"]);
    }

    #[test]
    fn errors_name_the_field() {
        let push = |resources: &str| {
            format!(r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":{resources}}}}}"#)
        };
        let cases = [
            ("{}".to_owned(), "type"),
            (r#"{"type":"PUSH_ARTIFACT"}"#.to_owned(), "event_data"),
            (
                r#"{"specversion":"1.0","type":"harbor.artifact.pushed"}"#.to_owned(),
                "data",
            ),
            (push("{}"), "event_data.resources"),
            (
                push(r#"[{"tag":"v1"}]"#),
                "event_data.resources[0].resource_url",
            ),
            (
                push(r#"[{"tag":"v1","resource_url":"h.io/a/b:v1","digest":"sha256:12"}]"#),
                "event_data.resources[0].digest",
            ),
            (
                push(r#"[{"tag":"v1","resource_url":"h.io/a/b:v1"},{"resource_url":"h.io/a/b"}]"#),
                "event_data.resources[1]",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Harbor, Kind::Image, &json),
                path,
                "{json}"
            );
        }
    }
}
