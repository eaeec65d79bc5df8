//! The `dockerhub` format: Docker Hub's repository webhook (docker/docs
//! `content/manuals/docker-hub/repos/manage/webhooks.md`, docs.docker.com
//! "Webhooks").
//!
//! Docker Hub sends a webhook only for a push, and its payload names no
//! event type. Fields read: `push_data.tag` and `repository.repo_name`
//! (`namespace/name`, kept as Docker Hub names it, without `docker.io/`).
//! The legacy `callback_url` is not used. A cosign tag (`sha256-<hex>.sig`,
//! `.att`, `.sbom`) is ignored as `push:signature`.

use super::util::{parse, pushed_image, At};
use super::{DecodeError, DecodeOptions, Decoded};

const ORIGINS: &[(&str, &str)] = &[
    ("repository", "repository.repo_name"),
    ("tag", "push_data.tag"),
];

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &["push_data", "tag", "repository", "repo_name"];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let tag = root.req("push_data")?.req_str("tag")?;
    let repository = root.req("repository")?.req_str("repo_name")?;
    pushed_image(&root, ORIGINS, repository, Some(tag), None, opts)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    #[test]
    fn a_push_becomes_a_record() {
        let json = r#"{
          "callback_url": "https://registry.hub.docker.com/u/acme/web/hook/x/",
          "push_data": {"pushed_at": 1700000000, "pusher": "ci", "tag": "1.4.2"},
          "repository": {"name": "web", "namespace": "acme", "owner": "acme",
            "repo_name": "acme/web", "repo_url": "https://hub.docker.com/r/acme/web", "status": "Active"}
        }"#;
        let decoded = run(Format::Dockerhub, Kind::Image, json);
        let expected = ImageEvent {
            service: "web".into(),
            repository: "acme/web".into(),
            tag: Some("1.4.2".into()),
            digest: None,
            environment: None,
        };
        assert_eq!(decoded.records, vec![Payload::Image(Box::new(expected))]);
        assert!(decoded.ignored.is_empty());
    }

    #[test]
    fn a_signature_tag_is_ignored() {
        let json = format!(
            r#"{{"push_data":{{"tag":"{}"}},"repository":{{"repo_name":"acme/web"}}}}"#,
            sigstore_tag("sig")
        );
        let decoded = run(Format::Dockerhub, Kind::Image, &json);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["push:signature"]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[]", "value"),
            (r#"{"repository":{"repo_name":"a/b"}}"#, "push_data"),
            (
                r#"{"push_data":{},"repository":{"repo_name":"a/b"}}"#,
                "push_data.tag",
            ),
            (
                r#"{"push_data":{"tag":1},"repository":{"repo_name":"a/b"}}"#,
                "push_data.tag",
            ),
            (
                r#"{"push_data":{"tag":"v1"},"repository":{}}"#,
                "repository.repo_name",
            ),
            (
                r#"{"push_data":{"tag":"v1"},"repository":{"repo_name":"A/B"}}"#,
                "repository.repo_name",
            ),
            (
                r#"{"push_data":{"tag":"v 1"},"repository":{"repo_name":"a/b"}}"#,
                "push_data.tag",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Dockerhub, Kind::Image, json),
                path,
                "{json}"
            );
        }
    }
}
