//! The `quay` format: Quay's repository notification "Repository Push"
//! (`repo_push`), sent to a webhook (Red Hat Quay docs, "Repository
//! Notifications", Repository Push).
//!
//! Fields read: `docker_url` (`quay.io/namespace/repo`, the record's
//! repository) and `updated_tags[]`: one record per updated tag. Quay's
//! notifications carry no event type, so the others are told apart by their
//! fields and ignored: a `vulnerability` object (`vulnerability_found`), a
//! `build_id` (the `build_*` events), a `mirror` status (`repo_mirror_*`).
//! A push of no tags (`updated_tags: []`) is ignored as `repo_push:empty`, a
//! cosign tag (`sha256-<hex>.sig`, `.att`, `.sbom`) as `push:signature`.

use super::util::{merge, parse, pushed_image, At};
use super::{DecodeError, DecodeOptions, Decoded};

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "updated_tags",
    "vulnerability",
    "build_id",
    "mirror",
    "docker_url",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    if root.get("updated_tags")?.is_none() {
        if let Some(other) = other_notification(&root)? {
            return Ok(Decoded::ignored(other));
        }
    }
    let repository = root.req_str("docker_url")?;
    let tags = root.req("updated_tags")?;
    let tags = tags.items()?;
    if tags.is_empty() {
        return Ok(Decoded::ignored("repo_push:empty"));
    }
    let mut decoded = Decoded::default();
    for (i, tag) in tags.iter().enumerate() {
        let tag_path = format!("updated_tags[{i}]");
        let origins = [("repository", "docker_url"), ("tag", tag_path.as_str())];
        let pushed = pushed_image(&root, &origins, repository, Some(tag.str()?), None, opts)?;
        merge(&mut decoded, pushed);
    }
    Ok(decoded)
}

/// The name of a notification other than a push, told by its fields.
fn other_notification(root: &At<'_, '_>) -> Result<Option<&'static str>, DecodeError> {
    Ok(if root.get("vulnerability")?.is_some() {
        Some("vulnerability_found")
    } else if root.get("build_id")?.is_some() {
        Some("build")
    } else if root.get("mirror")?.is_some() {
        Some("repo_mirror")
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    #[test]
    fn one_record_per_updated_tag() {
        let json = r#"{"name":"api","repository":"acme/api","namespace":"acme",
          "docker_url":"quay.io/acme/api","homepage":"https://quay.io/repository/acme/api",
          "updated_tags":["v3","latest"]}"#;
        let decoded = run(Format::Quay, Kind::Image, json);
        let image = |tag: &str| {
            Payload::Image(Box::new(ImageEvent {
                service: "api".into(),
                repository: "quay.io/acme/api".into(),
                tag: Some(tag.into()),
                digest: None,
                environment: None,
            }))
        };
        assert_eq!(decoded.records, vec![image("v3"), image("latest")]);
        assert!(decoded.ignored.is_empty());
    }

    #[test]
    fn other_notifications_are_ignored() {
        let cases = [
            (
                r#"{"repository":"a/b","vulnerability":{"id":"CVE-1"}}"#,
                "vulnerability_found",
            ),
            (
                r#"{"repository":"a/b","build_id":"x","trigger_kind":"github"}"#,
                "build",
            ),
            (
                r#"{"repository":"a/b","mirror":{"status":"ok"}}"#,
                "repo_mirror",
            ),
        ];
        for (json, kind) in cases {
            assert_eq!(run(Format::Quay, Kind::Image, json).ignored, [kind]);
        }
    }

    #[test]
    fn a_push_without_tags_and_signature_tags_are_ignored() {
        let json = r#"{"repository":"acme/api","docker_url":"quay.io/acme/api","updated_tags":[]}"#;
        let decoded = run(Format::Quay, Kind::Image, json);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["repo_push:empty"]);
        let json = format!(
            r#"{{"repository":"acme/api","docker_url":"quay.io/acme/api","updated_tags":["{}","v3"]}}"#,
            sigstore_tag("att")
        );
        let decoded = run(Format::Quay, Kind::Image, &json);
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.ignored, ["push:signature"]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{}", "docker_url"),
            (r#"{"docker_url":"quay.io/a/b"}"#, "updated_tags"),
            (
                r#"{"docker_url":"quay.io/a/b","updated_tags":"v1"}"#,
                "updated_tags",
            ),
            (
                r#"{"docker_url":"quay.io/a/b","updated_tags":["v1",2]}"#,
                "updated_tags[1]",
            ),
            (
                r#"{"docker_url":"quay.io/a/b","updated_tags":["v 1"]}"#,
                "updated_tags[0]",
            ),
            (
                r#"{"docker_url":"Quay.io/A","updated_tags":["v1"]}"#,
                "docker_url",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Quay, Kind::Image, json), path, "{json}");
        }
    }
}
