//! The `ecr` format: Amazon ECR's "ECR Image Action" event as EventBridge
//! delivers it (AWS docs "Amazon ECR events and EventBridge"): to an API
//! destination as is, or through an SNS topic, whose HTTPS delivery (and
//! SQS delivery without raw message delivery) wraps it in an envelope
//! `{"Type":"Notification","Message":"<the event's JSON text>",...}` (AWS
//! docs "Parsing message formats" in the SNS guide). A notification's
//! `Message` is decoded as the event, its errors located below `Message`;
//! an envelope of another `Type` (`SubscriptionConfirmation`,
//! `UnsubscribeConfirmation`) is ignored as its type (the subscription is
//! to be confirmed out of band).
//!
//! Fields read: `detail-type` (only `ECR Image Action`; others, such as
//! `ECR Image Scan`, are ignored as themselves), `account`, `region`, and
//! from `detail`: `action-type` (`PUSH` counts, `DELETE` is ignored),
//! `result` (a `FAILURE` is ignored as `PUSH:FAILURE`), `repository-name`,
//! `image-tag` and `image-digest`. A push without `image-tag` (a multi-arch
//! push's platform manifests, pushed by digest before the tagged index) is
//! ignored as `PUSH:untagged`, a cosign tag (`sha256-<hex>.sig`, `.att`,
//! `.sbom`) as `push:signature`. The repository is
//! `ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY-NAME`.

use super::util::{inside, parse, pushed_image, At};
use super::{DecodeError, DecodeOptions, Decoded};

const ORIGINS: &[(&str, &str)] = &[
    ("repository", "repository-name"),
    ("tag", "image-tag"),
    ("digest", "image-digest"),
];

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "detail-type",
    "detail",
    "action-type",
    "result",
    "account",
    "region",
    "repository-name",
    "image-tag",
    "image-digest",
    "Type",
    "Message",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let Some(envelope) = root.get("Type")? else {
        return decode_event(&root, opts);
    };
    let kind = envelope.name()?;
    if kind != "Notification" {
        return Ok(Decoded::ignored(kind));
    }
    let message = root.req("Message")?;
    let event = parse(message.str()?, KEYS).map_err(|e| inside(&message.path(), e))?;
    decode_event(&At::root(&event), opts).map_err(|e| inside(&message.path(), e))
}

/// The EventBridge event itself.
fn decode_event(root: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let detail_type = root.req_name("detail-type")?;
    if detail_type != "ECR Image Action" {
        return Ok(Decoded::ignored(detail_type));
    }
    let detail = root.req("detail")?;
    let action = detail.req_name("action-type")?;
    if action != "PUSH" {
        return Ok(Decoded::ignored(action));
    }
    let result = detail.req_name("result")?;
    if result != "SUCCESS" {
        return Ok(Decoded::ignored(format!("PUSH:{result}")));
    }
    let repository = format!(
        "{}.dkr.ecr.{}.amazonaws.com/{}",
        root.req_str("account")?,
        root.req_str("region")?,
        detail.req_str("repository-name")?
    );
    let Some(tag) = detail.non_empty_str("image-tag")? else {
        return Ok(Decoded::ignored("PUSH:untagged"));
    };
    let digest = detail.non_empty_str("image-digest")?;
    pushed_image(&detail, ORIGINS, &repository, Some(tag), digest, opts)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    fn event(detail_type: &str, action: &str, result: &str, tag: &str) -> String {
        format!(
            r#"{{"version":"0","id":"x","detail-type":"{detail_type}","source":"aws.ecr",
              "account":"123456789012","time":"2024-01-01T00:00:00Z","region":"eu-west-1",
              "resources":[],"detail":{{"result":"{result}","repository-name":"team/billing",
              "image-digest":"{}","action-type":"{action}"{tag}}}}}"#,
            sha('d')
        )
    }

    #[test]
    fn a_successful_push_becomes_a_record() {
        let image = |tag: Option<&str>| {
            Payload::Image(Box::new(ImageEvent {
                service: "billing".into(),
                repository: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/billing".into(),
                tag: tag.map(str::to_owned),
                digest: Some(sha('d')),
                environment: None,
            }))
        };
        let tagged = event(
            "ECR Image Action",
            "PUSH",
            "SUCCESS",
            r#","image-tag":"2.0""#,
        );
        assert_eq!(
            run(Format::Ecr, Kind::Image, &tagged).records,
            vec![image(Some("2.0"))]
        );
    }

    #[test]
    fn untagged_and_signature_pushes_are_ignored() {
        let untagged = event("ECR Image Action", "PUSH", "SUCCESS", "");
        let decoded = run(Format::Ecr, Kind::Image, &untagged);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["PUSH:untagged"]);
        for suffix in ["sig", "att", "sbom"] {
            let tag = format!(r#","image-tag":"{}""#, sigstore_tag(suffix));
            let signature = event("ECR Image Action", "PUSH", "SUCCESS", &tag);
            let decoded = run(Format::Ecr, Kind::Image, &signature);
            assert!(decoded.records.is_empty());
            assert_eq!(decoded.ignored, ["push:signature"]);
        }
    }

    /// The event as SNS delivers it (to HTTPS, or to SQS without raw
    /// message delivery): an envelope whose `Message` is the event's text.
    fn sns(event: &str) -> String {
        let message = serde_json::to_string(event).unwrap();
        format!(
            r#"{{"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:eu-west-1:123456789012:ecr",
              "Message":{message},"Timestamp":"2024-01-01T00:00:00.000Z","SignatureVersion":"1"}}"#
        )
    }

    #[test]
    fn an_sns_notification_is_unwrapped() {
        let tagged = event(
            "ECR Image Action",
            "PUSH",
            "SUCCESS",
            r#","image-tag":"2.0""#,
        );
        let direct = run(Format::Ecr, Kind::Image, &tagged);
        assert_eq!(direct.records.len(), 1);
        assert_eq!(run(Format::Ecr, Kind::Image, &sns(&tagged)), direct);
        let delete = event("ECR Image Action", "DELETE", "SUCCESS", "");
        assert_eq!(
            run(Format::Ecr, Kind::Image, &sns(&delete)).ignored,
            ["DELETE"]
        );
        let confirm = r#"{"Type":"SubscriptionConfirmation","MessageId":"m","Token":"t",
          "TopicArn":"arn:aws:sns:eu-west-1:123456789012:ecr","Message":"You have chosen..."}"#;
        assert_eq!(
            run(Format::Ecr, Kind::Image, confirm).ignored,
            ["SubscriptionConfirmation"]
        );
        let cases = [
            (sns("not json"), "Message"),
            (
                sns(&tagged.replace(&sha('d'), "sha256:7f5b")),
                "Message.detail.image-digest",
            ),
            (r#"{"Type":"Notification"}"#.to_owned(), "Message"),
            (
                r#"{"Type":"Notification","Message":{}}"#.to_owned(),
                "Message",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Ecr, Kind::Image, &json), path, "{json}");
        }
    }

    #[test]
    fn other_events_are_ignored() {
        let cases = [
            (event("ECR Image Action", "DELETE", "SUCCESS", ""), "DELETE"),
            (
                event("ECR Image Action", "PUSH", "FAILURE", ""),
                "PUSH:FAILURE",
            ),
            (
                event("ECR Image Scan", "PUSH", "SUCCESS", ""),
                "ECR Image Scan",
            ),
        ];
        for (json, kind) in cases {
            assert_eq!(run(Format::Ecr, Kind::Image, &json).ignored, [kind]);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let push = event(
            "ECR Image Action",
            "PUSH",
            "SUCCESS",
            r#","image-tag":"2.0""#,
        );
        let cases = [
            ("{}".to_owned(), "detail-type"),
            (r#"{"detail-type":"ECR Image Action"}"#.to_owned(), "detail"),
            (push.replace(r#""region":"eu-west-1","#, ""), "region"),
            (
                push.replace(&sha('d'), "sha256:7f5b"),
                "detail.image-digest",
            ),
            (
                push.replace("team/billing", "Team"),
                "detail.repository-name",
            ),
            (
                push.replace(r#""action-type":"PUSH""#, r#""action-type":1"#),
                "detail.action-type",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Ecr, Kind::Image, &json), path, "{json}");
        }
    }
}
