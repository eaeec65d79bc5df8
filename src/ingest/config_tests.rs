use super::*;
use crate::ingest::auth::AuthConfig;

const GOOD: &str = r#"
[listen]
address = "127.0.0.1:8080"

[kafka]
brokers = "127.0.0.1:9092"
delivery_timeout = "3s"

[[endpoints]]
name = "alertmanager"
topic = "alerts"
format = "alertmanager"
auth = { type = "basic", username = "am", password = { env = "AM_PASSWORD" } }
rate_limit = { per_second = 50 }

[[endpoints]]
name = "images"
topic = "image-events"
format = "json"
kind = "image"
max_body = 4096
auth = { type = "hmac", secret = { file = "/run/secrets/hook" } }
"#;

fn errors(src: &str) -> String {
    IngestConfig::parse("ingest.toml", src)
        .expect_err("the config is wrong")
        .to_string()
}

#[test]
fn a_good_config_reads_with_its_defaults() {
    let c = IngestConfig::parse("ingest.toml", GOOD).unwrap();
    assert_eq!(c.delivery_timeout, Duration::from_secs(3));
    assert_eq!(c.listen.shutdown_timeout, Duration::from_secs(8));
    let [am, images] = &c.endpoints[..] else {
        panic!("two endpoints")
    };
    assert_eq!((am.kind, am.max_body), (Kind::Alert, DEFAULT_MAX_BODY));
    assert_eq!(am.rate_limit.map(|r| r.burst.get()), Some(50));
    assert_eq!((images.kind, images.max_body), (Kind::Image, 4096));
    assert_eq!(
        images.auth,
        AuthConfig::Hmac {
            secret: SecretRef::File("/run/secrets/hook".into()),
            header: "x-hub-signature-256".into(),
            prefix: "sha256=".into(),
        }
    );
}

#[test]
fn every_error_has_its_line_column_and_key() {
    let src = r#"
[listen]
address = "nowhere"

[[endpoints]]
name = "x"
topic = "t"
format = "json"
auth = { type = "token" }

[[endpoints]]
name = "y"
topic = "bad topic"
format = "nope"
max_body = 0
auth = { type = "bearer", token = { env = "T" } }
colour = "blue"
"#;
    let text = errors(src);
    for expected in [
        "ingest.toml:3:12: `listen.address`: `nowhere` is not IP:PORT",
        "ingest.toml:5:1: `endpoints[0].kind`: missing required key `kind`",
        "ingest.toml:9:18: `endpoints[0].auth.type`: unknown auth type `token`",
        "ingest.toml:13:10: `endpoints[1].topic`: not a valid Kafka topic name",
        "ingest.toml:14:11: `endpoints[1].format`: unknown format `nope`",
        "ingest.toml:15:12: `endpoints[1].max_body`: must be at least 1",
        "ingest.toml:17:1: `endpoints[1].colour`: unknown key `colour`",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn secrets_are_only_references() {
    let src = GOOD.replace(
        r#"password = { env = "AM_PASSWORD" }"#,
        r#"password = "hunter2""#,
    );
    let text = errors(&src);
    assert!(
        text.contains("`endpoints[0].auth.password`: expected a table, found string"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the value is never echoed: {text}"
    );
}

#[test]
fn the_kind_must_fit_the_format_and_webhooks_are_json() {
    let src = GOOD
        .replace(r#"format = "json""#, r#"format = "protobuf""#)
        .replace(
            r#"format = "alertmanager""#,
            "format = \"alertmanager\"\nkind = \"image\"",
        );
    let text = errors(&src);
    assert!(
        text.contains("`endpoints[0].kind`: format `alertmanager` does not carry image records"),
        "{text}"
    );
    assert!(
        text.contains("`endpoints[1].format`: webhooks carry JSON"),
        "{text}"
    );
}

#[test]
fn run_settings_and_managed_properties_are_refused() {
    let src = GOOD.replace(
        "delivery_timeout = \"3s\"",
        "delivery_timeout = \"3s\"\nprocessing_guarantee = \"exactly_once\"\n[kafka.properties]\nacks = \"1\"",
    );
    let text = errors(&src);
    assert!(text.contains("`kafka.processing_guarantee`"), "{text}");
    assert!(
        text.contains("`kafka.properties.\"acks\"`: `acks` is set by sluice ingest"),
        "{text}"
    );
}

#[test]
fn endpoint_names_are_unique_and_one_is_needed() {
    let src = GOOD.replace(r#"name = "images""#, r#"name = "alertmanager""#);
    assert!(errors(&src).contains("endpoint `alertmanager` is defined twice"));
    let text = errors("[listen]\naddress = \"127.0.0.1:1\"\n");
    assert!(
        text.contains("`endpoints`: an ingest config needs at least one"),
        "{text}"
    );
}

#[test]
fn decode_options_are_read_as_sources_read_them() {
    let src = GOOD.replace(
        r#"rate_limit = { per_second = 50 }"#,
        "service_from = { regex = 'x' }",
    );
    let text = errors(&src);
    assert!(
        text.contains("`endpoints[0].service_from`: expected `{ label"),
        "{text}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/ingest/gateway.toml");
    let config = IngestConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.endpoints.len(), 6);
}
