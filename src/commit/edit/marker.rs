//! Setter markers: a comment `# {"sluice": "SERVICE[:FIELD]"}` after a value.
//!
//! The comment must be one JSON object, nothing else. Other keys in the
//! object are allowed and ignored, so a marker can share the comment with
//! another tool's (`{"$imagepolicy": "flux-system:app", "sluice": "app"}`).
//! A comment that is clearly meant as a sluice marker but is broken (not
//! JSON, a non-string value, an unknown field, an invalid service name) is
//! an error, never silently skipped: a skipped marker means a deploy that
//! quietly does not happen (or half happens, a name set without its tag).
//! When the broken marker still names a service (`"web:tga"`), it is an
//! error for that service only, so one typo does not block every service
//! sharing the file; when it names none, it is an error for all.

use crate::record::oci;

/// The part of the image reference a marked value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `repository[:tag][@digest]`.
    Whole,
    /// The repository alone (`SERVICE:name`).
    Name,
    /// The tag alone (`SERVICE:tag`).
    Tag,
    /// The digest alone (`SERVICE:digest`).
    Digest,
}

/// A parsed marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub service: String,
    pub field: Field,
}

/// A comment meant as a marker but broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken {
    /// The service it still names, if any.
    pub service: Option<String>,
    pub reason: String,
}

impl Broken {
    /// Whether this breaks the markers of `service`.
    pub(crate) fn concerns(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
    }
}

fn broken(reason: String) -> Broken {
    Broken {
        service: None,
        reason,
    }
}

/// Reads a comment's text (after the `#`). `Ok(None)`: not a sluice marker;
/// `Err`: meant as one but broken.
pub(crate) fn parse(comment: &str) -> Result<Option<Marker>, Broken> {
    let text = comment.trim();
    if !text.starts_with('{') {
        return Ok(None);
    }
    let object: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(object) => object,
        // Only a comment that names the key is a broken marker; other
        // brace-led comments are none of our business.
        Err(e) if text.contains("\"sluice\"") => {
            return Err(broken(format!("not a JSON object ({e})")))
        }
        Err(_) => return Ok(None),
    };
    match object.get("sluice") {
        None => Ok(None),
        Some(serde_json::Value::String(value)) => named(value).map(Some),
        Some(other) => Err(broken(format!(
            "the value of \"sluice\" must be a string like \"SERVICE\" or \"SERVICE:tag\", not {}",
            oci::printable(&other.to_string())
        ))),
    }
}

/// Splits `SERVICE[:FIELD]`.
fn named(value: &str) -> Result<Marker, Broken> {
    let (service, field) = match value.rsplit_once(':') {
        None => (value, Field::Whole),
        Some((service, "name")) => (service, Field::Name),
        Some((service, "tag")) => (service, Field::Tag),
        Some((service, "digest")) => (service, Field::Digest),
        Some((service, other)) => {
            let reason = format!(
                "unknown field `{}` in \"{}\" (expected name, tag or digest)",
                oci::printable(other),
                oci::printable(value)
            );
            let service = oci::is_name(service).then(|| service.to_owned());
            return Err(Broken { service, reason });
        }
    };
    if !oci::is_name(service) {
        let reason = format!("`{}` is not a valid service name", oci::printable(service));
        return Err(broken(reason));
    }
    Ok(Marker {
        service: service.to_owned(),
        field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(service: &str, field: Field) -> Option<Marker> {
        Some(Marker {
            service: service.into(),
            field,
        })
    }

    #[test]
    fn reads_markers_with_whitespace_and_other_keys() {
        assert_eq!(
            parse(r#" {"sluice": "app"}"#),
            Ok(marker("app", Field::Whole))
        );
        assert_eq!(
            parse(r#"{ "sluice" :"app:tag" }  "#),
            Ok(marker("app", Field::Tag))
        );
        assert_eq!(
            parse(r#"{"sluice":"a.b-c:name"}"#),
            Ok(marker("a.b-c", Field::Name))
        );
        assert_eq!(
            parse(r#"{"$imagepolicy": "flux:app", "sluice": "app:digest"}"#),
            Ok(marker("app", Field::Digest))
        );
    }

    #[test]
    fn ignores_other_comments() {
        for c in [
            " plain comment",
            r#" {"$imagepolicy": "a:b"}"#,
            " {not json",
            "",
        ] {
            assert_eq!(parse(c), Ok(None), "{c:?}");
        }
    }

    #[test]
    fn refuses_broken_markers() {
        for c in [
            r#"{"sluice": "app"} trailing"#,
            r#"{"sluice": 3}"#,
            r#"{"sluice": "app:version"}"#,
            r#"{"sluice": ""}"#,
            r#"{"sluice": "a b"}"#,
            r#"{"sluice": "app""#,
        ] {
            assert!(parse(c).is_err(), "{c:?} should be refused");
        }
    }
}
