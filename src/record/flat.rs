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
    scan(json, |key, value| pick(&mut values, names, key, value))?;
    Some(values.map(|v| v.map(str::to_owned)))
}

/// Keeps `value` as the value of `key` if `key` is one of `names`: the
/// last one wins.
fn pick<'j, const N: usize>(
    values: &mut [Option<&'j str>; N],
    names: &[&str],
    key: &str,
    value: Option<&'j str>,
) {
    if let Some(i) = names.iter().position(|n| *n == key) {
        values[i] = value;
    }
}

/// Most fields a [`FlatObject`] keeps: Sluice's own images have five,
/// alerts six.
const MAX_FIELDS: usize = 8;

/// Where a key or a value lies in the object's text, in bytes; `NULL` for
/// a `null` value. Offsets rather than `&str`s halve the object, which
/// replay builds and moves for every line.
type Span = (u32, u32);
const NULL: Span = (u32::MAX, u32::MAX);

/// The keys and values of a flat object, as the one scan that checked it
/// found them: replay checks each line's value to be JSON, and its decoder
/// then reads the fields from here instead of scanning the text again.
pub struct FlatObject<'j> {
    text: &'j str,
    fields: [(Span, Span); MAX_FIELDS],
    len: usize,
}

/// What [`FlatObject::check`] found.
pub enum Flat<'j> {
    /// A flat object, its fields kept.
    Kept(FlatObject<'j>),
    /// A flat object (and so JSON) with more fields than are kept.
    Wide,
    /// Any other text.
    No,
}

impl<'j> FlatObject<'j> {
    /// Whether `json` is a flat object as [`read`] takes it (and so JSON),
    /// with its fields when there are at most eight.
    pub fn check(json: &'j str) -> Flat<'j> {
        let mut object = FlatObject {
            text: json,
            fields: [(NULL, NULL); MAX_FIELDS],
            len: 0,
        };
        let base = json.as_ptr() as usize;
        // Offsets of a text this long would not fit a span (replay's lines
        // stop at 16 MiB).
        let mut keeps = u32::try_from(json.len()).is_ok_and(|n| n < u32::MAX);
        let span = |part: &str| {
            let start = part.as_ptr() as usize - base;
            (start as u32, (start + part.len()) as u32)
        };
        let flat = scan(json, |key, value| match object.fields.get_mut(object.len) {
            Some(slot) if keeps => {
                *slot = (span(key), value.map_or(NULL, span));
                object.len += 1;
            }
            _ => keeps = false,
        });
        match (flat, keeps) {
            (None, _) => Flat::No,
            (Some(()), true) => Flat::Kept(object),
            (Some(()), false) => Flat::Wide,
        }
    }

    /// The text the fields were found in.
    pub(crate) fn text(&self) -> &'j str {
        self.text
    }

    /// What [`read`] gives for the object's text.
    pub(crate) fn values<const N: usize>(&self, names: &[&str]) -> [Option<String>; N] {
        let mut values: [Option<&str>; N] = [None; N];
        let part = |(start, end): Span| &self.text[start as usize..end as usize];
        for &(key, value) in &self.fields[..self.len] {
            let value = (value != NULL).then(|| part(value));
            pick(&mut values, names, part(key), value);
        }
        values.map(|v| v.map(str::to_owned))
    }
}

impl std::fmt::Debug for FlatObject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatObject")
            .field("text", &self.text)
            .field("fields", &self.len)
            .finish()
    }
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
    let end = first_special(bytes)?;
    (bytes[end] == b'"').then_some(end)
}

/// Where the first quote, backslash or control character of `bytes` is:
/// the bytes a JSON string must escape.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    // Eight bytes at a time: a byte at a time took about a twentieth of a
    // replay (digests are 71 bytes).
    let mut at = 0;
    while let Some((word, _)) = bytes[at..].split_first_chunk::<8>() {
        let found = specials(u64::from_le_bytes(*word));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    Some(at + bytes[at..].iter().position(|&b| is_special(b))?)
}

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The high bit of each byte of `word` (read little-endian) that may be a
/// quote, a backslash or below 0x20; the lowest one set is exactly the
/// first such byte, and none is set when there is none. `(x - 0x01..) & !x`
/// marks zero bytes, `(x - n * 0x01..) & !x` bytes below `n` (for `n` ≤
/// 0x80); a subtraction's borrow only marks bytes above one already marked.
fn specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero_in(quote) | zero_in(backslash) | control) & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["service", "tag"];

    /// Whether `json` is a flat object as [`read`] takes it (and so JSON).
    fn is_flat_object(json: &str) -> bool {
        scan(json, |_, _| {}).is_some()
    }

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

    proptest::proptest! {
        /// The word-at-a-time scan stops where a byte-at-a-time one does.
        #[test]
        fn the_string_scan_stops_at_the_first_special_byte(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    6 => 0x20u8..0x7f,
                    1 => proptest::prelude::any::<u8>(),
                    1 => proptest::sample::select(vec![b'"', b'\\', 0x1f, 0x00, 0x7f, 0x80, 0xff]),
                ],
                0..40,
            ),
        ) {
            let naive = body
                .iter()
                .position(|&b| is_special(b))
                .and_then(|end| (body[end] == b'"').then_some(end));
            proptest::prop_assert_eq!(plain_string_len(&body), naive);
        }
    }

    #[test]
    fn the_string_scan_finds_each_special_byte_at_each_place_of_a_word() {
        for special in [b'"', b'\\', 0x00, 0x0a, 0x1f] {
            for at in 0..24 {
                let mut body = vec![b'a'; 24];
                body[at] = special;
                body.push(b'"');
                let expected = (special == b'"').then_some(at);
                assert_eq!(plain_string_len(&body), expected, "{special:#x} at {at}");
            }
        }
        assert_eq!(
            plain_string_len(&[b' ', 0x21, 0x7f, 0x80, 0xff, b'"']),
            Some(5)
        );
        assert_eq!(plain_string_len(b"no closing quote at all"), None);
    }

    proptest::proptest! {
        /// Fields read from a checked object are what a scan of its text
        /// reads, and an object is kept exactly when it is flat and fits.
        #[test]
        fn a_scanned_object_gives_what_its_text_gives(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["service", "tag", "x", "", "servicé"]),
                    proptest::option::of("[a-z\\\\\"é -]{0,6}"),
                ),
                0..16,
            ),
        ) {
            let json = format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("\"{k}\":\"{v}\""),
                        None => format!("\"{k}\":null"),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let flat = is_flat_object(&json);
            match FlatObject::check(&json) {
                Flat::Kept(object) => {
                    proptest::prop_assert!(flat && fields.len() <= MAX_FIELDS);
                    proptest::prop_assert_eq!(Some(object.values::<2>(NAMES)), read2(&json));
                }
                Flat::Wide => proptest::prop_assert!(flat && fields.len() > MAX_FIELDS),
                Flat::No => proptest::prop_assert!(!flat),
            }
        }
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
