//! The common shape of a replay line, read without serde.
//!
//! Lines written by `sluice flood`, `sluice record` and replay itself are
//! `{"topic":"…","ts":N,"key":"…"|null,"value":…}`, in that order, with no
//! whitespace and no escapes in the topic and key. [`parse`] reads exactly
//! that shape and answers `None` for anything else, which then goes through
//! `serde_json` as before: every line it accepts, `serde_json` accepts with
//! the same result, and every error still comes from `serde_json`.
//!
//! The value is still checked to be JSON (by `serde_json`, unless it is a
//! flat object of plain strings, whose fields of at most eight the line
//! then keeps for the decoder): a line whose value is not JSON is an
//! input-file error, not a dead letter.

use serde_json::value::RawValue;

use crate::record::flat::plain_string_len;
use crate::record::{Flat, FlatObject};

use super::InputLine;

/// Reads a line of the common shape; `None` for any other line.
pub(super) fn parse(text: &str) -> Option<InputLine<'_>> {
    let mut r = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    r.literal(b"{\"topic\":\"")?;
    let topic = r.plain_string_body()?;
    r.literal(b",\"ts\":")?;
    let ts = r.integer()?;
    r.literal(b",\"key\":")?;
    let key = if r.literal(b"null").is_some() {
        None
    } else {
        r.literal(b"\"")?;
        Some(r.plain_string_body()?)
    };
    r.literal(b",\"value\":")?;
    if !text.ends_with('}') {
        return None;
    }
    let value_text = text.get(r.at..text.len() - 1)?;
    // A flat object of plain strings (most records) is JSON without a look
    // by serde_json, and its fields are kept for the decoder; anything else
    // is checked by serde_json.
    let (value, fields) = match FlatObject::check(value_text) {
        Flat::Kept(fields) => (value_text, Some(fields)),
        Flat::Wide => (value_text, None),
        Flat::No => (
            serde_json::from_str::<&RawValue>(value_text).ok()?.get(),
            None,
        ),
    };
    // A JSON null is an absent value, as for serde's `Option`.
    let value = (value != "null").then_some(value);
    Some(InputLine {
        topic: topic.into(),
        ts,
        key: key.map(Into::into),
        value,
        fields,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at.checked_add(expected.len())?;
        (self.bytes.get(self.at..end)? == expected).then(|| self.at = end)
    }

    /// The rest of a string whose opening quote has been read, if it holds
    /// no escape and no control character; the closing quote is consumed.
    fn plain_string_body(&mut self) -> Option<&'a str> {
        let start = self.at;
        let len = plain_string_len(&self.bytes[start..])?;
        self.at = start + len + 1;
        // The input is a str and the quote is ASCII, so this is a char boundary.
        std::str::from_utf8(&self.bytes[start..start + len]).ok()
    }

    /// A non-negative integer as JSON writes it (no leading zero) that fits
    /// a u64 and is not followed by a fraction or an exponent.
    fn integer(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b @ b'0'..=b'9') = self.bytes.get(self.at) {
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        (digits > 0
            && !leading_zero
            && !matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')))
        .then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde_json makes of a line, in the fields that matter.
    fn by_serde(text: &str) -> Option<(String, u64, Option<String>, Option<String>)> {
        let line: super::super::SerdeLine<'_> = serde_json::from_str(text).ok()?;
        Some((
            line.topic.to_string(),
            line.ts,
            line.key.map(|k| k.to_string()),
            line.value.map(|v| v.get().to_owned()),
        ))
    }

    fn summary(line: &InputLine<'_>) -> (String, u64, Option<String>, Option<String>) {
        (
            line.topic.to_string(),
            line.ts,
            line.key.as_ref().map(|k| k.to_string()),
            line.value.map(str::to_owned),
        )
    }

    /// The fast reader either declines or agrees with serde_json.
    fn agrees(text: &str) -> Result<bool, String> {
        match parse(text) {
            None => Ok(false),
            Some(line) => {
                if let (Some(fields), Some(value)) = (&line.fields, line.value) {
                    let names = ["service", "a", "b", "c"];
                    let from_text = crate::record::flat::read::<4>(value, &names);
                    if Some(fields.values::<4>(&names)) != from_text {
                        return Err(format!("{text}: the kept fields differ from the value's"));
                    }
                }
                let fast = summary(&line);
                match by_serde(text) {
                    Some(serde) if serde == fast => Ok(true),
                    other => Err(format!("{text}: fast {fast:?}, serde_json {other:?}")),
                }
            }
        }
    }

    #[test]
    fn lines_of_the_common_shape_are_read_as_serde_json_reads_them() {
        for text in [
            r#"{"topic":"docker-events","ts":1767225600000,"key":"svc-1","value":{"service":"svc-1","repository":"r/a","tag":"v1"}}"#,
            r#"{"topic":"t","ts":0,"key":null,"value":null}"#,
            r#"{"topic":"t","ts":18446744073709551615,"key":"","value":"pushed r/a:v1"}"#,
            r#"{"topic":"é","ts":5,"key":"k","value":[1,-2,{"a":[]},{},true,false,null, "x" ]}"#,
            r#"{"topic":"t","ts":5,"key":"k","value":{"a": {"b": {"c": [0]}}}}"#,
            r#"{"topic":"t","ts":5,"key":"k","value": null }"#,
            r#"{"topic":"t","ts":5,"key":"k","value":{"a":1.5e3,"b":"\u0041\n"}}"#,
        ] {
            assert_eq!(agrees(text), Ok(true), "{text}");
        }
        let flat = r#"{"topic":"t","ts":5,"key":"k","value":{"service":"a","b":null}}"#;
        let fields = parse(flat).and_then(|line| line.fields);
        assert_eq!(
            fields.map(|f| f.values::<2>(&["service", "b"])),
            Some([Some("a".to_owned()), None]),
            "a flat value's fields are kept for the decoder"
        );
    }

    #[test]
    fn anything_else_is_left_to_serde_json() {
        for text in [
            r#"{"ts":1,"topic":"t","key":null,"value":null}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":null,"extra":1}"#,
            r#"{"topic":"t\n","ts":1,"key":null,"value":null}"#,
            r#"{"topic":"t","ts":01,"key":null,"value":null}"#,
            r#"{"topic":"t","ts":1.5,"key":null,"value":null}"#,
            r#"{"topic":"t","ts":18446744073709551616,"key":null,"value":null}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":{"a":1,}}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":{"a" 1}}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":[1 2]}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":{"a":1}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":{"a":1}} "#,
            r#"{"topic":"t","ts":1,"key":null,"value":nul}"#,
            r#"{"topic":"t","ts":1,"key":null,"value":-}"#,
            "{\"topic\":\"t\",\"ts\":1,\"key\":null,\"value\":{\"a\":\"x\ny\"}}",
            r#"{"topic":"t","ts":1,"key":null,"value":}"#,
        ] {
            assert_eq!(agrees(text), Ok(false), "{text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Lines cut short or with a byte changed are declined or read as
        /// serde_json reads them, never differently.
        #[test]
        fn a_damaged_line_is_declined_or_read_alike(flat: bool, cut in 0usize..140, at in 0usize..140, byte in prop::sample::select(&b"{}[]\",:0123456789-.e nulltrfas\\\n"[..])) {
            let line = if flat {
                r#"{"topic":"docker-events","ts":1767225600000,"key":"svc-1","value":{"a":"x,}","b":null,"c":"d"}}"#
            } else {
                r#"{"topic":"docker-events","ts":1767225600000,"key":"svc-1","value":{"a":["x",1,{"b":null}],"c":-0,"d":true}}"#
            };
            let mut bytes = line.as_bytes().to_vec();
            if at < bytes.len() {
                bytes[at] = byte;
            }
            bytes.truncate(cut.max(1));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert!(agrees(text).is_ok(), "{:?}", agrees(text));
            }
        }
    }
}
