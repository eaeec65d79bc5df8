//! The `github_package` format: GitHub's `registry_package` and `package`
//! webhooks (docs.github.com "Webhook events and payloads"; payload
//! examples in octokit/webhooks `payload-examples/api.github.com/`).
//!
//! The event is told by its body (replay carries no `X-GitHub-Event`
//! header): a `registry_package` or a `package` object. Fields read:
//! `action` (only `published` counts), `package_type` (`CONTAINER`, or the
//! older `docker`; other packages are ignored as `EVENT:TYPE`), `name`,
//! `owner.login`, and from `package_version`: `package_url`
//! (`ghcr.io/owner/name:tag`, whose repository part is preferred) and
//! `container_metadata.tag.name` / `.digest`. The repository is lowercased,
//! as GHCR names are while GitHub logins need not be.
//!
//! A version published without a tag (no `container_metadata.tag`, or a tag
//! whose `name` is empty: GitHub's payload for a push by digest, such as
//! each platform manifest of a multi-arch push before its tagged index) is
//! ignored as `EVENT:untagged`, as the other image formats ignore untagged
//! pushes (`push:untagged`): the digest in `package_version.name` is not
//! taken for a release. A cosign tag (`sha256-<hex>.sig`, `.att`, `.sbom`) is
//! ignored as `push:signature`.

use super::util::{parse, pushed_image, split_reference, At};
use super::{DecodeError, DecodeOptions, Decoded};

const TAG: &str = "package_version.container_metadata.tag";

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "registry_package",
    "package",
    "action",
    "package_type",
    "package_version",
    "package_url",
    "container_metadata",
    "tag",
    "name",
    "digest",
    "owner",
    "login",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let (event, package) = match root.get("registry_package")? {
        Some(p) => ("registry_package", p),
        None => ("package", root.req("package")?),
    };
    let action = root.req_str("action")?;
    if action != "published" {
        return Ok(Decoded::ignored(format!("{event}:{action}")));
    }
    let package_type = package.req_str("package_type")?;
    if !["container", "docker"].contains(&package_type.to_ascii_lowercase().as_str()) {
        return Ok(Decoded::ignored(format!("{event}:{package_type}")));
    }
    let repository = repository(&package)?;
    let version = package.req("package_version")?;
    let meta = version.get("container_metadata")?;
    let tag = match &meta {
        Some(meta) => meta.get("tag")?,
        None => None,
    };
    let (name, digest) = match &tag {
        Some(tag) => (tag.non_empty_str("name")?, tag.non_empty_str("digest")?),
        None => (None, None),
    };
    if name.is_none() {
        return Ok(Decoded::ignored(format!("{event}:untagged")));
    }
    let tag_name = format!("{TAG}.name");
    let tag_digest = format!("{TAG}.digest");
    let origins = [
        ("repository", "package_version.package_url"),
        ("tag", tag_name.as_str()),
        ("digest", tag_digest.as_str()),
        ("tag/digest", TAG),
    ];
    pushed_image(&package, &origins, &repository, name, digest, opts)
}

/// `ghcr.io/owner/name`, from the package URL when there is one.
fn repository(package: &At<'_, '_>) -> Result<String, DecodeError> {
    let url = match package.get("package_version")? {
        Some(version) => version.non_empty_str("package_url")?,
        None => None,
    };
    let repository = match url {
        Some(url) => split_reference(url).0.to_owned(),
        None => {
            let owner = package.req("owner")?.req_str("login")?;
            format!("ghcr.io/{owner}/{}", package.req_str("name")?)
        }
    };
    Ok(repository.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    fn payload(event: &str, action: &str, package_type: &str, url: &str) -> String {
        format!(
            r#"{{"action":"{action}","{event}":{{"id":1,"name":"Web","namespace":"Acme",
              "ecosystem":"CONTAINER","package_type":"{package_type}","owner":{{"login":"Acme"}},
              "package_version":{{"id":2,"version":"{d}","name":"{d}","package_url":"{url}",
                "container_metadata":{{"tag":{{"name":"v7","digest":"{d}"}}}}}}}},
              "repository":{{"full_name":"Acme/web"}},"sender":{{"login":"ci"}}}}"#,
            d = sha('c')
        )
    }

    #[test]
    fn published_container_images_become_records() {
        let expected = vec![Payload::Image(Box::new(ImageEvent {
            service: "web".into(),
            repository: "ghcr.io/acme/web".into(),
            tag: Some("v7".into()),
            digest: Some(sha('c')),
            environment: None,
        }))];
        for event in ["package", "registry_package"] {
            for url in ["ghcr.io/Acme/web:v7", ""] {
                let json = payload(event, "published", "CONTAINER", url);
                assert_eq!(
                    run(Format::GithubPackage, Kind::Image, &json).records,
                    expected
                );
            }
        }
    }

    #[test]
    fn other_actions_and_packages_are_ignored() {
        let cases = [
            (
                payload("package", "updated", "CONTAINER", ""),
                "package:updated",
            ),
            (
                payload("registry_package", "updated", "CONTAINER", ""),
                "registry_package:updated",
            ),
            (payload("package", "published", "npm", ""), "package:npm"),
            (
                payload("registry_package", "published", "maven", ""),
                "registry_package:maven",
            ),
        ];
        for (json, kind) in cases {
            let decoded = run(Format::GithubPackage, Kind::Image, &json);
            assert_eq!(decoded.ignored, [kind]);
            assert!(decoded.records.is_empty());
        }
    }

    #[test]
    fn untagged_and_signature_versions_are_ignored() {
        let published = payload("package", "published", "CONTAINER", "");
        let no_name = published.replace(r#""name":"v7","#, r#""name":"","#);
        let no_tag = published.replace(
            &format!(r#""tag":{{"name":"v7","digest":"{}"}}"#, sha('c')),
            r#""labels":{}"#,
        );
        let no_meta = r#"{"action":"published","package":{"package_type":"CONTAINER","name":"a",
          "owner":{"login":"o"},"package_version":{"name":"x"}}}"#;
        let cases = [
            (no_name, "package:untagged"),
            (no_tag.clone(), "package:untagged"),
            (
                no_tag.replace(r#""package":"#, r#""registry_package":"#),
                "registry_package:untagged",
            ),
            (no_meta.to_owned(), "package:untagged"),
            (
                published.replace("\"v7\"", &format!("\"{}\"", sigstore_tag("sig"))),
                "push:signature",
            ),
        ];
        for (json, kind) in cases {
            assert_ne!(json, published);
            let decoded = run(Format::GithubPackage, Kind::Image, &json);
            assert!(decoded.records.is_empty(), "{json}");
            assert_eq!(decoded.ignored, [kind], "{json}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"action":"published"}"#.to_owned(), "package"),
            (r#"{"package":{}}"#.to_owned(), "action"),
            (r#"{"action":"published","package":{}}"#.to_owned(), "package.package_type"),
            (
                payload("package", "published", "CONTAINER", "").replace(&sha('c'), "sha256:abc123"),
                "package.package_version.container_metadata.tag.digest",
            ),
            (
                payload("package", "published", "CONTAINER", "ghcr.io/a/b c:v7"),
                "package.package_version.package_url",
            ),
            (
                r#"{"action":"published","package":{"package_type":"CONTAINER","name":"a","owner":{"login":"o"}}}"#.to_owned(),
                "package.package_version",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::GithubPackage, Kind::Image, &json),
                path,
                "{json}"
            );
        }
    }
}
