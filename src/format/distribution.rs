//! The `distribution` format: CNCF Distribution's (registry:2) notification
//! envelope, media type `application/vnd.docker.distribution.events.v2+json`
//! (distribution/distribution `docs/content/about/notifications.md`).
//!
//! Fields read, per entry of `events[]`: `action`, `target.mediaType`,
//! `target.repository`, `target.tag`, `target.digest` and `request.host`.
//! Only the `push` of a tagged manifest counts (Docker v2 schema 1 and 2,
//! manifest list, OCI image manifest and index); a pushed blob (a layer, a
//! config) is ignored as `push:blob`, any other action (`pull`, `delete`,
//! `mount`) as itself. A manifest pushed without a tag is ignored as
//! `push:untagged`: a multi-arch push (buildx) sends each platform's
//! manifest by digest before the tagged index, and none of those is a
//! release. A cosign tag (`sha256-<hex>.sig`, `.att`, `.sbom`) is ignored as
//! `push:signature`. An envelope of no events is ignored as `events:empty`.
//! The repository is `request.host` + `/` + `target.repository`, since the
//! registry names repositories without its own host.

use super::util::{merge, parse, pushed_image, At};
use super::{DecodeError, DecodeOptions, Decoded};

/// The media types of a manifest (as opposed to a blob).
pub(super) const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

const ORIGINS: &[(&str, &str)] = &[
    ("repository", "target.repository"),
    ("tag", "target.tag"),
    ("digest", "target.digest"),
];

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "events",
    "action",
    "target",
    "mediaType",
    "repository",
    "tag",
    "digest",
    "request",
    "host",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let events = root.req("events")?;
    let items = events.items()?;
    if items.is_empty() {
        return Ok(Decoded::ignored("events:empty"));
    }
    let mut decoded = Decoded::default();
    for event in items {
        decode_event(&event, opts, &mut decoded)?;
    }
    Ok(decoded)
}

/// One event of the envelope: the push of a tagged manifest becomes a record.
/// Azure Container Registry's CloudEvents carry the same event shape.
pub(super) fn decode_event(
    event: &At<'_, '_>,
    opts: &DecodeOptions,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let action = event.req_name("action")?;
    if action != "push" {
        out.ignored.push(action.to_owned());
        return Ok(());
    }
    let target = event.req("target")?;
    if !MANIFEST_TYPES.contains(&target.req_str("mediaType")?) {
        out.ignored.push("push:blob".into());
        return Ok(());
    }
    let Some(tag) = target.non_empty_str("tag")? else {
        out.ignored.push("push:untagged".into());
        return Ok(());
    };
    let host = event.req("request")?.req_str("host")?;
    let repository = format!("{host}/{}", target.req_str("repository")?);
    let pushed = pushed_image(
        event,
        ORIGINS,
        &repository,
        Some(tag),
        target.opt_str("digest")?,
        opts,
    )?;
    merge(out, pushed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    fn event(action: &str, media_type: &str, tag: &str) -> String {
        format!(
            r#"{{"id":"e1","timestamp":"2024-01-02T15:04:05Z","action":"{action}",
              "target":{{"mediaType":"{media_type}","digest":"{}","length":1,
                "repository":"team/api","url":"https://reg.example.com/v2/team/api/manifests/x"{tag}}},
              "request":{{"id":"r","addr":"10.0.0.1","host":"reg.example.com:5000","method":"PUT","useragent":"docker"}},
              "actor":{{"name":"ci"}},"source":{{"addr":"reg-0:5000"}}}}"#,
            sha('a')
        )
    }

    fn image(tag: Option<&str>) -> Payload {
        Payload::Image(Box::new(ImageEvent {
            service: "api".into(),
            repository: "reg.example.com:5000/team/api".into(),
            tag: tag.map(str::to_owned),
            digest: Some(sha('a')),
            environment: None,
        }))
    }

    #[test]
    fn manifest_pushes_become_records_and_the_rest_is_ignored() {
        let events = [
            event(
                "push",
                "application/vnd.oci.image.manifest.v1+json",
                r#","tag":"v1""#,
            ),
            event(
                "push",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "",
            ),
            event(
                "push",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                r#","tag":"v1""#,
            ),
            event("pull", "application/vnd.oci.image.manifest.v1+json", ""),
            event("delete", "application/vnd.oci.image.manifest.v1+json", ""),
        ];
        let json = format!(r#"{{"events":[{}]}}"#, events.join(","));
        let decoded = run(Format::Distribution, Kind::Image, &json);
        assert_eq!(decoded.records, vec![image(Some("v1")), image(Some("v1"))]);
        assert_eq!(decoded.ignored, ["push:blob", "pull", "delete"]);
    }

    #[test]
    fn untagged_and_signature_manifest_pushes_are_ignored() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let tag = |t: &str| format!(r#","tag":"{t}""#);
        let events = [
            event("push", oci, ""),
            event("push", oci, r#","tag":"""#),
            event("push", oci, &tag(&sigstore_tag("sig"))),
            event("push", oci, &tag(&sigstore_tag("att"))),
            event("push", oci, &tag(&sigstore_tag("sbom"))),
            event("push", oci, &tag("sha256-abc.sig")),
        ];
        let json = format!(r#"{{"events":[{}]}}"#, events.join(","));
        let decoded = run(Format::Distribution, Kind::Image, &json);
        assert_eq!(decoded.records, vec![image(Some("sha256-abc.sig"))]);
        assert_eq!(
            decoded.ignored,
            [
                "push:untagged",
                "push:untagged",
                "push:signature",
                "push:signature",
                "push:signature"
            ]
        );
    }

    #[test]
    fn an_empty_envelope_is_ignored() {
        let decoded = run(Format::Distribution, Kind::Image, r#"{"events":[]}"#);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["events:empty"]);
    }

    #[test]
    fn errors_name_the_field() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let cases = [
            ("[]".to_owned(), "value"),
            ("{}".to_owned(), "events"),
            (r#"{"events":[{}]}"#.to_owned(), "events[0].action"),
            (
                r#"{"events":[{"action":"push"}]}"#.to_owned(),
                "events[0].target",
            ),
            (
                format!(
                    r#"{{"events":[{},{}]}}"#,
                    event("push", oci, r#","tag":"v1""#),
                    event("push", oci, r#","tag":"a b""#)
                ),
                "events[1].target.tag",
            ),
            (
                event("push", oci, r#","tag":"v1""#)
                    .replace(r#""host":"reg.example.com:5000","#, ""),
                "events[0].request.host",
            ),
        ];
        for (json, path) in cases {
            let json = if json.starts_with(r#"{"id""#) {
                format!(r#"{{"events":[{json}]}}"#)
            } else {
                json
            };
            assert_eq!(
                error_path(Format::Distribution, Kind::Image, &json),
                path,
                "{json}"
            );
        }
    }
}
