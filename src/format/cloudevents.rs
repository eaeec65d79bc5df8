//! The `cloudevents` format: CloudEvents 1.0 in the JSON event format
//! (cloudevents/spec `cloudevents/formats/json-format.md`), structured mode
//! (one event, `application/cloudevents+json`) and batch mode (a JSON array
//! of events, `application/cloudevents-batch+json`).
//!
//! Fields read: `specversion` (`1.0`), `type`, and `data` (or `data_base64`,
//! base64 of JSON), decoded by the type it announces:
//! - `harbor.artifact.pushed`: Harbor's push data (see `harbor.rs`); the other
//!   `harbor.*` types are ignored as themselves;
//! - `google.cloud.pubsub.topic.v1.messagePublished`: a Pub/Sub message
//!   (googleapis/google-cloudevents, as Eventarc delivers it) carrying
//!   Artifact Registry's notification (see `gar.rs`);
//! - `Microsoft.ContainerRegistry.ImagePushed`: Azure Container Registry
//!   through Event Grid's CloudEvents schema (Azure docs "Azure Container
//!   Registry as an Event Grid source"), whose data is a Distribution event
//!   (see `distribution.rs`); `...ImageDeleted`, `...ChartPushed` and the
//!   other types are ignored.
//!
//! Any other type is ignored with its type, without decoding its data; an
//! empty batch (`[]`) is ignored as `batch:empty`. The decoded pushes follow
//! their formats' rules: untagged manifests (`push:untagged`), cosign tags
//! (`push:signature`) and pushes of nothing (`harbor.artifact.pushed:empty`)
//! are ignored.

use serde_json::Value;

use super::util::{base64_json, inside, merge, parse, At};
use super::{distribution, gar, harbor, DecodeError, DecodeOptions, Decoded};

const PUBSUB_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";
const ACR_PUSHED: &str = "Microsoft.ContainerRegistry.ImagePushed";

/// The members this decoder reads: the envelope's and those of every
/// `data` it decodes (Harbor's, Pub/Sub's and Artifact Registry's,
/// Distribution's).
const KEYS: &[&str] = &[
    "specversion",
    "type",
    "data",
    "data_base64",
    "resources",
    "resource_url",
    "tag",
    "digest",
    "message",
    "action",
    "events",
    "target",
    "mediaType",
    "repository",
    "request",
    "host",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let mut decoded = Decoded::default();
    if value.is_array() {
        let events = root.items()?;
        if events.is_empty() {
            return Ok(Decoded::ignored("batch:empty"));
        }
        for event in events {
            decode_event(&event, opts, &mut decoded)?;
        }
    } else {
        decode_event(&root, opts, &mut decoded)?;
    }
    Ok(decoded)
}

fn decode_event(
    event: &At<'_, '_>,
    opts: &DecodeOptions,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let version = event.req("specversion")?;
    if version.str()? != "1.0" {
        return Err(version.error("expected CloudEvents \"1.0\""));
    }
    let kind = event.req_name("type")?;
    match kind {
        harbor::PUSHED => {
            with_data(event, |data| harbor::decode_pushed(data, kind, opts)).map(|d| merge(out, d))
        }
        PUBSUB_PUBLISHED => {
            with_data(event, |data| gar::decode_push(data, opts)).map(|d| merge(out, d))
        }
        ACR_PUSHED => with_data(event, |data| {
            let mut part = Decoded::default();
            distribution::decode_event(data, opts, &mut part).map(|()| part)
        })
        .map(|d| merge(out, d)),
        other => {
            out.ignored.push(other.to_owned());
            Ok(())
        }
    }
}

/// Runs `decode` on the event's `data`, or on the JSON its `data_base64`
/// holds.
fn with_data(
    event: &At<'_, '_>,
    decode: impl FnOnce(&At<'_, '_>) -> Result<Decoded, DecodeError>,
) -> Result<Decoded, DecodeError> {
    if let Some(data) = event.get("data")? {
        return decode(&data);
    }
    let Some(encoded) = event.get("data_base64")? else {
        return Err(DecodeError::new(event.path_of("data"), "missing"));
    };
    let value: Value = base64_json(&encoded, KEYS)?;
    decode(&At::root(&value)).map_err(|e| inside(&encoded.path(), e))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::super::util::testing::{error_path, run, sha, sigstore_tag};
    use super::super::Format;
    use crate::record::{ImageEvent, Kind, Payload};

    fn event(kind: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"1","source":"/x","type":"{kind}",
              "time":"2024-01-01T00:00:00Z","datacontenttype":"application/json",{data}}}"#
        )
    }

    fn base64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn image(repository: &str, service: &str, tag: Option<&str>, digest: char) -> Payload {
        Payload::Image(Box::new(ImageEvent {
            service: service.into(),
            repository: repository.into(),
            tag: tag.map(str::to_owned),
            digest: Some(sha(digest)),
            environment: None,
        }))
    }

    fn harbor_data() -> String {
        format!(
            r#"{{"resources":[{{"digest":"{}","tag":"v1","resource_url":"harbor.io/p/web:v1"}}],
              "repository":{{"name":"web","namespace":"p","repo_full_name":"p/web"}}}}"#,
            sha('a')
        )
    }

    fn gar_data() -> String {
        format!(
            r#"{{"action":"INSERT","digest":"us-docker.pkg.dev/p/r/api@{}","tag":"us-docker.pkg.dev/p/r/api:3"}}"#,
            sha('b')
        )
    }

    fn acr_data() -> String {
        format!(
            r#"{{"id":"x","timestamp":"2024-01-01T00:00:00Z","action":"push",
              "target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
                "size":524,"digest":"{}","length":524,"repository":"team/db","tag":"v9"}},
              "request":{{"id":"r","host":"acme.azurecr.io","method":"PUT","useragent":"docker"}}}}"#,
            sha('c')
        )
    }

    fn pubsub(data: &str) -> String {
        format!(
            r#""data":{{"subscription":"projects/p/subscriptions/s",
              "message":{{"attributes":{{}},"data":"{}","messageId":"1"}}}}"#,
            base64(data)
        )
    }

    #[test]
    fn structured_events_are_decoded_by_their_type() {
        let harbor = event(
            "harbor.artifact.pushed",
            &format!(r#""data":{}"#, harbor_data()),
        );
        let gar = event(
            "google.cloud.pubsub.topic.v1.messagePublished",
            &pubsub(&gar_data()),
        );
        let acr = event(
            "Microsoft.ContainerRegistry.ImagePushed",
            &format!(r#""data":{}"#, acr_data()),
        );
        let cases = [
            (harbor, image("harbor.io/p/web", "web", Some("v1"), 'a')),
            (
                gar,
                image("us-docker.pkg.dev/p/r/api", "api", Some("3"), 'b'),
            ),
            (acr, image("acme.azurecr.io/team/db", "db", Some("v9"), 'c')),
        ];
        for (json, expected) in cases {
            let decoded = run(Format::Cloudevents, Kind::Image, &json);
            assert_eq!(decoded.records, vec![expected], "{json}");
            assert!(decoded.ignored.is_empty());
        }
    }

    #[test]
    fn a_batch_yields_its_pushes_and_lists_the_rest_as_ignored() {
        let events = [
            event(
                "harbor.artifact.pushed",
                &format!(r#""data_base64":"{}""#, base64(&harbor_data())),
            ),
            event("harbor.artifact.deleted", r#""data":{}"#),
            event(
                "com.example.someevent",
                r#""data_base64":"... not base64 ...""#,
            ),
            event("Microsoft.ContainerRegistry.ImageDeleted", r#""data":{}"#),
        ];
        let json = format!("[{}]", events.join(","));
        let decoded = run(Format::Cloudevents, Kind::Image, &json);
        assert_eq!(
            decoded.records,
            vec![image("harbor.io/p/web", "web", Some("v1"), 'a')]
        );
        assert_eq!(
            decoded.ignored,
            [
                "harbor.artifact.deleted",
                "com.example.someevent",
                "Microsoft.ContainerRegistry.ImageDeleted"
            ]
        );
    }

    #[test]
    fn an_empty_batch_is_ignored() {
        let decoded = run(Format::Cloudevents, Kind::Image, "[]");
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.ignored, ["batch:empty"]);
    }

    #[test]
    fn signature_tags_are_ignored_whatever_the_type() {
        let sig = sigstore_tag("sig");
        let harbor = event(
            "harbor.artifact.pushed",
            &format!(
                r#""data":{{"resources":[{{"digest":"{}","tag":"{sig}","resource_url":"harbor.io/p/web:{sig}"}}]}}"#,
                sha('a')
            ),
        );
        let gar = event(
            "google.cloud.pubsub.topic.v1.messagePublished",
            &pubsub(&gar_data().replace("api:3", &format!("api:{sig}"))),
        );
        let acr = event(
            "Microsoft.ContainerRegistry.ImagePushed",
            &format!(
                r#""data":{}"#,
                acr_data().replace(r#""tag":"v9""#, &format!(r#""tag":"{sig}""#))
            ),
        );
        let acr_untagged = event(
            "Microsoft.ContainerRegistry.ImagePushed",
            &format!(r#""data":{}"#, acr_data().replace(r#","tag":"v9""#, "")),
        );
        let json = format!("[{harbor},{gar},{acr},{acr_untagged}]");
        let decoded = run(Format::Cloudevents, Kind::Image, &json);
        assert!(decoded.records.is_empty(), "{:?}", decoded.records);
        assert_eq!(
            decoded.ignored,
            [
                "push:signature",
                "push:signature",
                "push:signature",
                "push:untagged"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let harbor = |data: &str| event("harbor.artifact.pushed", data);
        let gar = |data: &str| event("google.cloud.pubsub.topic.v1.messagePublished", data);
        let cases = [
            ("{}".to_owned(), "specversion"),
            (
                r#"{"specversion":"0.3","type":"x"}"#.to_owned(),
                "specversion",
            ),
            (
                r#"[{"specversion":"1.0","type":"x"},{"specversion":"1.0"}]"#.to_owned(),
                "[1].type",
            ),
            (
                r#"[{"specversion":"1.0","type":""}]"#.to_owned(),
                "[0].type",
            ),
            (harbor(r#""x":1"#), "data"),
            (
                harbor(r#""data":{"resources":[{}]}"#),
                "data.resources[0].resource_url",
            ),
            (harbor(r#""data_base64":"e30=""#), "data_base64.resources"),
            (harbor(r#""data_base64":"%%""#), "data_base64"),
            (gar(&pubsub("test message 3")), "data.message.data"),
            (
                gar(&pubsub(
                    r#"{"action":"INSERT","digest":"a/b@sha256:6ec1..."}"#,
                )),
                "data.message.data.digest",
            ),
            (format!("[{}]", harbor(r#""data":[]"#)), "[0].data"),
        ];
        for (json, path) in cases {
            assert_eq!(
                error_path(Format::Cloudevents, Kind::Image, &json),
                path,
                "{json}"
            );
        }
    }
}
