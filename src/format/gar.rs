//! The `gar` format: Google Artifact Registry's notifications, published to
//! the Pub/Sub topic `gcr` and delivered by a push subscription (Google
//! Cloud docs "Configuring Pub/Sub notifications" and "Push subscriptions";
//! the decoded body as in fluxcd/notification-controller's receivers docs).
//!
//! The push request's body is `{"message": {"data": "<base64>",
//! "attributes": ..., "messageId": ...}, "subscription": "..."}`; the bare
//! decoded object is accepted too. Fields of the decoded data: `action`
//! (`INSERT` counts; `DELETE` is ignored), `digest`
//! (`HOST/PROJECT/REPO/IMAGE@sha256:...`) and `tag`
//! (`HOST/PROJECT/REPO/IMAGE:TAG`, absent when pushed by digest only). A
//! cosign tag (`sha256-<hex>.sig`, `.att`, `.sbom`) is ignored as
//! `push:signature`.

use serde_json::Value;

use super::util::{base64_json, inside, parse, pushed_image, split_reference, At};
use super::{DecodeError, DecodeOptions, Decoded};

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &["message", "data", "action", "digest", "tag"];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    decode_push(&At::root(&value), opts)
}

/// A Pub/Sub push body (or the bare notification) carrying an Artifact
/// Registry notification. CloudEvents' `messagePublished` data has this shape.
pub(super) fn decode_push(body: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    match body.get("message")? {
        Some(message) => {
            let data = message.req("data")?;
            let decoded: Value = base64_json(&data, KEYS)?;
            decode_notification(&At::root(&decoded), &data.path(), opts)
        }
        None => decode_notification(body, "", opts),
    }
}

/// The notification `{action, digest, tag}`; `within` is the path of the
/// base64 text it was decoded from, if any, prefixed to its errors (so
/// `message.data.digest` is the decoded data's `digest`).
fn decode_notification(
    data: &At<'_, '_>,
    within: &str,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    notification(data, opts).map_err(|e| inside(within, e))
}

fn notification(data: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let action = data.req_name("action")?;
    if action != "INSERT" {
        return Ok(Decoded::ignored(action));
    }
    let digest_ref = data.non_empty_str("digest")?;
    let tag_ref = data.non_empty_str("tag")?;
    let Some(reference) = digest_ref.or(tag_ref) else {
        return Err(DecodeError::new(
            data.path_of("digest"),
            "missing (and no tag either)",
        ));
    };
    let (repository, _, digest) = split_reference(reference);
    let tag = tag_ref.and_then(|t| split_reference(t).1);
    if let (Some(t), Some(d)) = (tag_ref, digest_ref) {
        if split_reference(t).0 != split_reference(d).0 {
            return Err(DecodeError::new(
                data.path_of("tag"),
                "names another image than `digest`",
            ));
        }
    }
    let repository_at = if digest_ref.is_some() {
        "digest"
    } else {
        "tag"
    };
    let origins = [
        ("repository", repository_at),
        ("tag", "tag"),
        ("digest", "digest"),
    ];
    pushed_image(data, &origins, repository, tag, digest, opts)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    const IMAGE: &str = "europe-docker.pkg.dev/shop/images/checkout";

    fn notification(action: &str, tag: bool) -> String {
        let tag = if tag {
            format!(r#","tag":"{IMAGE}:1.2""#)
        } else {
            String::new()
        };
        format!(
            r#"{{"action":"{action}","digest":"{IMAGE}@{}"{tag}}}"#,
            sha('e')
        )
    }

    fn push(data: &str) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        format!(
            r#"{{"message":{{"attributes":{{}},"data":"{data}","messageId":"1","publishTime":"2024-01-01T00:00:00Z"}},
              "subscription":"projects/shop/subscriptions/sluice"}}"#
        )
    }

    fn image(tag: Option<&str>) -> Payload {
        Payload::Image(Box::new(ImageEvent {
            service: "checkout".into(),
            repository: IMAGE.into(),
            tag: tag.map(str::to_owned),
            digest: Some(sha('e')),
            environment: None,
        }))
    }

    #[test]
    fn an_insert_becomes_a_record_pushed_or_bare() {
        for tagged in [true, false] {
            let data = notification("INSERT", tagged);
            let expected = vec![image(tagged.then_some("1.2"))];
            assert_eq!(
                run(Format::Gar, Kind::Image, &push(&data)).records,
                expected
            );
            assert_eq!(run(Format::Gar, Kind::Image, &data).records, expected);
        }
    }

    #[test]
    fn a_tag_alone_is_enough_and_a_delete_is_ignored() {
        let json = format!(r#"{{"action":"INSERT","tag":"{IMAGE}:1.2"}}"#);
        let mut expected = image(Some("1.2"));
        if let Payload::Image(i) = &mut expected {
            i.digest = None;
        }
        assert_eq!(run(Format::Gar, Kind::Image, &json).records, vec![expected]);
        let delete = push(&notification("DELETE", true));
        assert_eq!(run(Format::Gar, Kind::Image, &delete).ignored, ["DELETE"]);
    }

    #[test]
    fn a_signature_tag_is_ignored() {
        let json = format!(
            r#"{{"action":"INSERT","digest":"{IMAGE}@{}","tag":"{IMAGE}:{}"}}"#,
            sha('e'),
            sigstore_tag("sbom")
        );
        for json in [push(&json), json] {
            let decoded = run(Format::Gar, Kind::Image, &json);
            assert!(decoded.records.is_empty());
            assert_eq!(decoded.ignored, ["push:signature"]);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{}".to_owned(), "action"),
            (r#"{"message":{}}"#.to_owned(), "message.data"),
            (r#"{"message":{"data":"!!"}}"#.to_owned(), "message.data"),
            (push("not json"), "message.data"),
            (push("{}"), "message.data.action"),
            (
                push(&format!(
                    r#"{{"action":"INSERT","digest":"{IMAGE}@sha256:6ec1..."}}"#
                )),
                "message.data.digest",
            ),
            (r#"{"action":"INSERT"}"#.to_owned(), "digest"),
            (
                format!(
                    r#"{{"action":"INSERT","digest":"{IMAGE}@{}","tag":"{IMAGE}x:1"}}"#,
                    sha('e')
                ),
                "tag",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Gar, Kind::Image, &json), path, "{json}");
        }
    }
}
