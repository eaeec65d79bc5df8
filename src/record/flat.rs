//! Flat JSON objects of plain strings, read without serde.
//!
//! Most records on the hot path are objects such as
//! `{"service":"a","repository":"r/a","digest":"sha256:…"}`: no whitespace,
//! no nesting, no escapes. [`read`] reads exactly that shape and answers
//! `None` for anything else, which then goes through `serde_json` as before:
//! every object it accepts, `serde_json` accepts with the same values, and
//! every error still comes from `serde_json`. It saves serde's visitor
//! machinery and a pass per value, a tenth of a replay's time.

/// The values of `names` in `json`, when `json` is a flat object whose keys
/// and values are plain strings (no escape, no control character) or, for
/// values, `null`, with no whitespace; `None` for any other text. A key
/// given twice takes its last value, and `null` counts as absent, as with
/// serde.
pub(crate) fn read<const N: usize>(json: &str, names: &[&str]) -> Option<[Option<String>; N]> {
    let mut values: [Option<&str>; N] = [None; N];
    scan(json, |key, value| {
        if let Some(i) = names.iter().position(|n| *n == key) {
            values[i] = value;
        }
    })?;
    Some(values.map(|v| v.map(str::to_owned)))
}

/// Whether `json` is a flat object as [`read`] takes it (and so JSON).
pub(crate) fn is_flat_object(json: &str) -> bool {
    scan(json, |_, _| {}).is_some()
}

/// Calls `visit` with each key and value of a flat object, in order;
/// `None` (after some calls, perhaps) when `json` is not one.
fn scan<'j>(json: &'j str, mut visit: impl FnMut(&'j str, Option<&'j str>)) -> Option<()> {
    let bytes = json.as_bytes();
    if bytes.len() < 2 || bytes[0] != b'{' || bytes[bytes.len() - 1] != b'}' {
        return None;
    }
    let end = bytes.len() - 1;
    let mut at = 1;
    while at < end {
        let (key, after_key) = quoted(json, at)?;
        if bytes.get(after_key) != Some(&b':') {
            return None;
        }
        let (value, after_value) = match bytes.get(after_key + 1) {
            Some(b'"') => quoted(json, after_key + 1).map(|(v, next)| (Some(v), next))?,
            Some(b'n') if bytes[after_key + 1..].starts_with(b"null") => (None, after_key + 5),
            _ => return None,
        };
        visit(key, value);
        at = match bytes.get(after_value) {
            Some(b',') if after_value + 1 < end => after_value + 1,
            _ if after_value == end => end,
            _ => return None,
        };
    }
    Some(())
}

/// The plain string whose opening quote is at `at`, and the index after
/// its closing quote.
fn quoted(json: &str, at: usize) -> Option<(&str, usize)> {
    if json.as_bytes().get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let len = plain_string_len(json.as_bytes().get(start..)?)?;
    // The quotes are ASCII, so both ends are char boundaries.
    Some((json.get(start..start + len)?, start + len + 1))
}

/// The length of a JSON string's body up to its closing quote, if it holds
/// no escape and no control character before it.
pub(crate) fn plain_string_len(bytes: &[u8]) -> Option<usize> {
    let end = bytes
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    (bytes[end] == b'"').then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["service", "tag"];

    fn read2(json: &str) -> Option<[Option<String>; 2]> {
        read::<2>(json, NAMES)
    }

    #[test]
    fn reads_flat_objects_of_plain_strings() {
        assert_eq!(
            read2(r#"{"service":"a","x":"é}","tag":null}"#),
            Some([Some("a".into()), None])
        );
        assert_eq!(read2("{}"), Some([None, None]));
        assert_eq!(
            read2(r#"{"tag":"v1","tag":"v2"}"#),
            Some([None, Some("v2".into())]),
            "the last value wins"
        );
        assert_eq!(
            read2(r#"{"service":"a","service":null}"#),
            Some([None, None])
        );
    }

    #[test]
    fn flat_objects_are_json() {
        for json in [r#"{"a":"b","c":null}"#, "{}"] {
            assert!(is_flat_object(json), "{json}");
            assert!(serde_json::from_str::<serde_json::Value>(json).is_ok());
        }
        assert!(!is_flat_object(r#"{"a":1}"#));
    }

    #[test]
    fn declines_everything_else() {
        for json in [
            "",
            "{",
            "}",
            "[]",
            r#"{"service":"a"} "#,
            r#" {"service":"a"}"#,
            r#"{"service": "a"}"#,
            r#"{"service":"a",}"#,
            r#"{,"service":"a"}"#,
            r#"{"service":"a""tag":"b"}"#,
            r#"{"service":"a\"b"}"#,
            r#"{"servic\u0065":"a"}"#,
            "{\"service\":\"a\nb\"}",
            r#"{"service":1}"#,
            r#"{"x":{"y":"z"}}"#,
            r#"{"x":true}"#,
            r#"{"service":nul}"#,
            r#"{"service":nullx}"#,
            r#"{"service":"a}"#,
            r#"{"service"}"#,
            r#"{"service":}"#,
        ] {
            assert_eq!(read2(json), None, "{json}");
        }
    }
}
