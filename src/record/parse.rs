//! Turning raw JSON values into validated records.
//!
//! The value is read once, straight into the fields Sluice knows; unknown
//! fields (webhooks carry plenty) are skipped, and every error names the field
//! at fault so that a dead letter says what to fix.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{oci, AlertEvent, AlertStatus, ImageEvent, InvalidRecord};

const IMAGE_FIELDS: &[&str] = &["service", "repository", "tag", "digest", "environment"];
const ALERT_FIELDS: &[&str] = &[
    "service",
    "alertname",
    "severity",
    "status",
    "environment",
    "fingerprint",
];

/// Parses and validates an image event; `default_environment` fills a missing environment.
pub fn parse_image(
    json: &str,
    default_environment: Option<&str>,
) -> Result<ImageEvent, InvalidRecord> {
    let [service, repository, tag, digest, environment] = read_fields::<5>(json, IMAGE_FIELDS)?;
    let service = required("service", service)?;
    check_name("service", &service)?;
    let repository = required("repository", repository)?;
    oci::check_repository(&repository).map_err(|e| invalid("repository", e))?;
    if let Some(tag) = &tag {
        oci::check_tag(tag).map_err(|e| invalid("tag", e))?;
    }
    if let Some(digest) = &digest {
        oci::check_digest(digest).map_err(|e| invalid("digest", e))?;
    }
    if tag.is_none() && digest.is_none() {
        return Err(InvalidRecord(
            "tag/digest: an image needs a tag or a digest".into(),
        ));
    }
    let environment = environment.or_else(|| default_environment.map(str::to_owned));
    if let Some(env) = &environment {
        check_name("environment", env)?;
    }
    Ok(ImageEvent {
        service,
        repository,
        tag,
        digest,
        environment,
    })
}

/// Parses and validates an alert event; `default_environment` fills a missing environment.
pub fn parse_alert(
    json: &str,
    default_environment: Option<&str>,
) -> Result<AlertEvent, InvalidRecord> {
    let [service, alertname, severity, status, environment, fingerprint] =
        read_fields::<6>(json, ALERT_FIELDS)?;
    let service = required("service", service)?;
    check_name("service", &service)?;
    let alertname = non_empty("alertname", required("alertname", alertname)?)?;
    let severity = non_empty("severity", required("severity", severity)?)?;
    let status = match required("status", status)?.as_str() {
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
    let environment = environment
        .or_else(|| default_environment.map(str::to_owned))
        .ok_or_else(|| {
            invalid(
                "environment",
                "missing, and the source sets no default".into(),
            )
        })?;
    check_name("environment", &environment)?;
    let fingerprint = fingerprint
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
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.names.iter().position(|n| *n == key) {
                Some(i) => {
                    values[i] = map
                        .next_value::<Option<String>>()
                        .map_err(|e| de::Error::custom(format!("{key}: {e}")))?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
