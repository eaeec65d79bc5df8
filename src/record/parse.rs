//! Turning raw JSON values into validated records.
//!
//! The value is read once, straight into the fields Sluice knows; unknown
//! fields (webhooks carry plenty) are skipped, and every error names the field
//! at fault so that a dead letter says what to fix.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{
    oci, AlertEvent, AlertStatus, FlatObject, GitEvent, GitEventType, ImageEvent, InvalidRecord,
};

const IMAGE_FIELDS: &[&str] = &["service", "repository", "tag", "digest", "environment"];
const ALERT_FIELDS: &[&str] = &[
    "service",
    "alertname",
    "severity",
    "status",
    "environment",
    "fingerprint",
];

/// An image event's fields as a payload gave them, before validation.
#[derive(Debug, Clone, Default)]
pub struct ImageFields {
    pub service: Option<String>,
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub environment: Option<String>,
}

/// An alert's fields as a payload gave them, before validation.
#[derive(Debug, Clone, Default)]
pub struct AlertFields {
    pub service: Option<String>,
    pub alertname: Option<String>,
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub status: Option<String>,
    pub environment: Option<String>,
    pub fingerprint: Option<String>,
}

/// A git event's fields as a payload gave them, before validation.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GitFields {
    pub service: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub author: Option<String>,
    /// `push` or `merge`.
    pub event: Option<String>,
    pub pull_request: Option<u64>,
    pub environment: Option<String>,
}

/// Parses and validates an image event; `default_environment` fills a missing environment.
pub fn parse_image(
    json: &str,
    default_environment: Option<&str>,
) -> Result<ImageEvent, InvalidRecord> {
    image_from(read_fields(json, IMAGE_FIELDS)?, default_environment)
}

/// [`parse_image`] of a flat object already read.
pub fn image_from_flat(
    object: &FlatObject<'_>,
    default_environment: Option<&str>,
) -> Result<ImageEvent, InvalidRecord> {
    image_from(object.values(IMAGE_FIELDS), default_environment)
}

fn image_from(
    [service, repository, tag, digest, environment]: [Option<String>; 5],
    default_environment: Option<&str>,
) -> Result<ImageEvent, InvalidRecord> {
    validate_image(
        ImageFields {
            service,
            repository,
            tag,
            digest,
            environment,
        },
        default_environment,
    )
}

/// Validates an image event, whatever format it came in.
pub fn validate_image(
    f: ImageFields,
    default_environment: Option<&str>,
) -> Result<ImageEvent, InvalidRecord> {
    let service = required("service", f.service)?;
    check_name("service", &service)?;
    let repository = required("repository", f.repository)?;
    oci::check_repository(&repository).map_err(|e| invalid("repository", e))?;
    if let Some(tag) = &f.tag {
        oci::check_tag(tag).map_err(|e| invalid("tag", e))?;
    }
    if let Some(digest) = &f.digest {
        oci::check_digest(digest).map_err(|e| invalid("digest", e))?;
    }
    if f.tag.is_none() && f.digest.is_none() {
        return Err(InvalidRecord(
            "tag/digest: an image needs a tag or a digest".into(),
        ));
    }
    let environment = f
        .environment
        .or_else(|| default_environment.map(str::to_owned));
    if let Some(env) = &environment {
        check_name("environment", env)?;
    }
    Ok(ImageEvent {
        service,
        repository,
        tag: f.tag,
        digest: f.digest,
        environment,
    })
}

/// Parses and validates an alert event; `default_environment` fills a missing environment.
pub fn parse_alert(
    json: &str,
    default_environment: Option<&str>,
) -> Result<AlertEvent, InvalidRecord> {
    alert_from(read_fields(json, ALERT_FIELDS)?, default_environment)
}

/// [`parse_alert`] of a flat object already read.
pub fn alert_from_flat(
    object: &FlatObject<'_>,
    default_environment: Option<&str>,
) -> Result<AlertEvent, InvalidRecord> {
    alert_from(object.values(ALERT_FIELDS), default_environment)
}

fn alert_from(
    [service, alertname, severity, status, environment, fingerprint]: [Option<String>; 6],
    default_environment: Option<&str>,
) -> Result<AlertEvent, InvalidRecord> {
    validate_alert(
        AlertFields {
            service,
            alertname,
            severity,
            status,
            environment,
            fingerprint,
        },
        default_environment,
    )
}

/// Validates an alert event, whatever format it came in.
pub fn validate_alert(
    f: AlertFields,
    default_environment: Option<&str>,
) -> Result<AlertEvent, InvalidRecord> {
    let service = required("service", f.service)?;
    check_name("service", &service)?;
    let alertname = non_empty("alertname", required("alertname", f.alertname)?)?;
    let severity = non_empty("severity", required("severity", f.severity)?)?;
    let status = match required("status", f.status)?.as_str() {
        "firing" => AlertStatus::Firing,
        "resolved" => AlertStatus::Resolved,
        other => {
            return Err(invalid(
                "status",
                format!(
                    "`{}` is neither `firing` nor `resolved`",
                    oci::printable(other)
                ),
            ))
        }
    };
    let environment = f
        .environment
        .or_else(|| default_environment.map(str::to_owned))
        .ok_or_else(|| {
            invalid(
                "environment",
                "missing, and the source sets no default".into(),
            )
        })?;
    check_name("environment", &environment)?;
    let fingerprint = f
        .fingerprint
        .map(|f| non_empty("fingerprint", f))
        .transpose()?;
    Ok(AlertEvent {
        service,
        alertname,
        severity,
        status,
        environment,
        fingerprint,
    })
}

/// Parses and validates a git event in Sluice's own JSON form.
pub fn parse_git(json: &str, default_environment: Option<&str>) -> Result<GitEvent, InvalidRecord> {
    let fields: GitFields = serde_json::from_str(json).map_err(|e| InvalidRecord(e.to_string()))?;
    validate_git(fields, default_environment)
}

/// Validates a git event, whatever format it came in.
pub fn validate_git(
    f: GitFields,
    default_environment: Option<&str>,
) -> Result<GitEvent, InvalidRecord> {
    let service = required("service", f.service)?;
    check_name("service", &service)?;
    let repository = non_empty("repository", required("repository", f.repository)?)?;
    check_printable("repository", &repository)?;
    let branch = non_empty("branch", required("branch", f.branch)?)?;
    check_printable("branch", &branch)?;
    let commit = required("commit", f.commit)?;
    if !(4..=64).contains(&commit.len()) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "commit",
            format!(
                "`{}` is not a commit's hex object name",
                oci::printable(&commit)
            ),
        ));
    }
    if let Some(author) = &f.author {
        check_printable("author", author)?;
    }
    let event = match required("event", f.event)?.as_str() {
        "push" => GitEventType::Push,
        "merge" => GitEventType::Merge,
        other => {
            return Err(invalid(
                "event",
                format!("`{}` is neither `push` nor `merge`", oci::printable(other)),
            ))
        }
    };
    let environment = f
        .environment
        .or_else(|| default_environment.map(str::to_owned));
    if let Some(env) = &environment {
        check_name("environment", env)?;
    }
    Ok(GitEvent {
        service,
        repository,
        branch,
        commit: commit.to_ascii_lowercase(),
        author: f.author,
        event,
        pull_request: f.pull_request,
        environment,
    })
}

/// Text that ends up in keys, logs and commit messages: no control characters, bounded.
fn check_printable(field: &str, value: &str) -> Result<(), InvalidRecord> {
    if value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be at most 1024 bytes without control characters".into(),
        ));
    }
    Ok(())
}

fn invalid(field: &str, problem: String) -> InvalidRecord {
    InvalidRecord(format!("{field}: {problem}"))
}

fn required(field: &str, value: Option<String>) -> Result<String, InvalidRecord> {
    value.ok_or_else(|| invalid(field, "missing".into()))
}

fn non_empty(field: &str, value: String) -> Result<String, InvalidRecord> {
    if value.is_empty() {
        Err(invalid(field, "must not be empty".into()))
    } else {
        Ok(value)
    }
}

fn check_name(field: &str, value: &str) -> Result<(), InvalidRecord> {
    if oci::is_name(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "`{}` does not match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,252}}$",
                oci::printable(value)
            ),
        ))
    }
}

/// Reads the string fields `names` of a JSON object; `null` counts as absent.
fn read_fields<const N: usize>(
    json: &str,
    names: &'static [&'static str],
) -> Result<[Option<String>; N], InvalidRecord> {
    match super::flat::read(json, names) {
        Some(fields) => Ok(fields),
        None => read_fields_with_serde(json, names),
    }
}

/// [`read_fields`] for any JSON text: every error comes from here.
fn read_fields_with_serde<const N: usize>(
    json: &str,
    names: &'static [&'static str],
) -> Result<[Option<String>; N], InvalidRecord> {
    let mut de = serde_json::Deserializer::from_str(json);
    let fields = StringFields::<N> { names }
        .deserialize(&mut de)
        .map_err(|e| InvalidRecord(e.to_string()))?;
    de.end().map_err(|e| InvalidRecord(e.to_string()))?;
    Ok(fields)
}

struct StringFields<const N: usize> {
    names: &'static [&'static str],
}

impl<'de, const N: usize> DeserializeSeed<'de> for StringFields<N> {
    type Value = [Option<String>; N];

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for StringFields<N> {
    type Value = [Option<String>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
        let names = self.names;
        while let Some(field) = map.next_key_seed(FieldIndex { names })? {
            match field {
                Some(i) => {
                    values[i] = map
                        .next_value::<Option<String>>()
                        .map_err(|e| de::Error::custom(format!("{}: {e}", names[i])))?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A key's position among the field names, read without copying the key
/// (webhooks carry many keys that no field reads).
struct FieldIndex {
    names: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|n| *n == key))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Image values cut short or with a byte changed are declined by the
        /// flat reader or read as serde_json reads them, never differently.
        #[test]
        fn the_flat_reader_declines_or_agrees_with_serde(cut in 0usize..200, at in 0usize..200, byte in prop::sample::select(&b"{}[]\",:0123456789-.e nulltrfas\\\n"[..])) {
            let json = r#"{"service":"svc-1","repository":"ghcr.io/t/svc-1","tag":null,"x":"a,}b","digest":"sha256:00","tag":"v1.2.3"}"#;
            let mut bytes = json.as_bytes().to_vec();
            if at < bytes.len() {
                bytes[at] = byte;
            }
            bytes.truncate(cut.max(1));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Some(flat) = super::super::flat::read::<5>(text, IMAGE_FIELDS) {
                    let serde = read_fields_with_serde::<5>(text, IMAGE_FIELDS);
                    prop_assert_eq!(Ok(flat), serde.map_err(|e| e.0), "{}", text);
                }
            }
        }
    }

    #[test]
    fn parses_an_image_and_applies_the_default_environment() {
        let img = parse_image(
            r#"{"service":"a","repository":"reg.io/a","tag":"v1","x":[1,{"y":2}]}"#,
            Some("prod"),
        )
        .unwrap();
        assert_eq!(img.environment.as_deref(), Some("prod"));
        assert_eq!(img.reference(), "reg.io/a:v1");
        let own = parse_image(
            r#"{"service":"a","repository":"a","tag":"v1","environment":"dev"}"#,
            Some("prod"),
        )
        .unwrap();
        assert_eq!(own.environment.as_deref(), Some("dev"));
    }

    #[test]
    fn image_errors_name_the_field() {
        let cases = [
            (r#""just a string""#, "object"),
            (r#"[1,2]"#, "object"),
            (r#"{"repository":"a","tag":"v1"}"#, "service: missing"),
            (r#"{"service":"a","tag":"v1"}"#, "repository: missing"),
            (
                r#"{"service":"a","repository":"A","tag":"v1"}"#,
                "repository",
            ),
            (r#"{"service":"a","repository":"a"}"#, "tag/digest"),
            (r#"{"service":"a","repository":"a","tag":"v 1"}"#, "tag"),
            (
                r#"{"service":"a","repository":"a","tag":5}"#,
                "tag: invalid type",
            ),
            (
                r#"{"service":"a","repository":"a","digest":"sha256:00"}"#,
                "digest",
            ),
            (r#"{"service":"-a","repository":"a","tag":"v1"}"#, "service"),
            (
                r#"{"service":"a","repository":"a","tag":"v1","environment":""}"#,
                "environment",
            ),
            (
                r#"{"service":"a","repository":"a","tag":"v1"} trailing"#,
                "trailing",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_image(json, None).unwrap_err().0;
            assert!(
                err.contains(expected),
                "{json}: `{err}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn parses_git_events_and_names_their_errors() {
        let g = parse_git(
            r#"{"service":"api","repository":"acme/api","branch":"main","commit":"ABCDEF12","event":"merge","pull_request":7}"#,
            Some("ci"),
        )
        .unwrap();
        assert_eq!(g.commit, "abcdef12");
        assert_eq!(g.pull_request, Some(7));
        assert_eq!(g.environment.as_deref(), Some("ci"));
        let cases = [
            (
                r#"{"service":"a","repository":"r","branch":"main","commit":"xyz1","event":"push"}"#,
                "commit",
            ),
            (
                r#"{"service":"a","repository":"r","branch":"main","commit":"abcd","event":"tag"}"#,
                "event",
            ),
            (
                r#"{"service":"a","repository":"r","commit":"abcd","event":"push"}"#,
                "branch: missing",
            ),
            (
                r#"{"service":"a","repository":"r","branch":"a\nb","commit":"abcd","event":"push"}"#,
                "branch",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_git(json, None).unwrap_err().0;
            assert!(
                err.contains(expected),
                "{json}: `{err}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn null_fields_count_as_absent() {
        let img = parse_image(r#"{"service":"a","repository":"a","tag":null,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#, None).unwrap();
        assert_eq!(img.tag, None);
    }

    #[test]
    fn parses_alerts_and_names_their_errors() {
        let a = parse_alert(
            r#"{"service":"a","alertname":"HighLatency","severity":"critical","status":"firing"}"#,
            Some("prod"),
        )
        .unwrap();
        assert_eq!(a.identity(), "HighLatency");
        assert_eq!(a.environment, "prod");
        let f = parse_alert(r#"{"service":"a","alertname":"H","severity":"w","status":"resolved","environment":"s","fingerprint":"ab"}"#, None).unwrap();
        assert_eq!(f.identity(), "ab");
        let cases = [
            (
                r#"{"service":"a","alertname":"H","severity":"c","status":"pending","environment":"p"}"#,
                "status",
            ),
            (
                r#"{"service":"a","alertname":"","severity":"c","status":"firing","environment":"p"}"#,
                "alertname",
            ),
            (
                r#"{"service":"a","alertname":"H","severity":"c","status":"firing"}"#,
                "environment",
            ),
            (
                r#"{"service":"a","alertname":"H","severity":"c","status":"firing","environment":"p","fingerprint":""}"#,
                "fingerprint",
            ),
            (
                r#"{"service":"a","alertname":"H","status":"firing","environment":"p"}"#,
                "severity",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_alert(json, None).unwrap_err().0;
            assert!(
                err.contains(expected),
                "{json}: `{err}` should mention `{expected}`"
            );
        }
    }
}
