//! Reading and writing one scalar value in place, in its own quoting style.
//!
//! The writer never escapes and never changes a value's style: a value the
//! style cannot hold as-is, and as a string, is refused. Plain values are the
//! delicate case, because YAML resolves some plain words to other types:
//! `tag: 1.10` is the float 1.1 for Helm, `tag: 2024-01-15` a date.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use super::scan::{Kind, Line, Style, Value};
use super::EditError;
use crate::record::oci::printable;

/// A byte range of the text to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Splice {
    pub range: Range<usize>,
    pub text: String,
    /// 1-based line, for messages; added lines come after it.
    pub line: usize,
    /// Number of whole lines this splice adds after `line`.
    pub adds: usize,
    /// The 1-based line this splice removes, if it removes one.
    pub removes: Option<usize>,
}

/// A single-line scalar value that can be read and rewritten in place.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub line: usize,
    pub style: Style,
    /// The content (inside quotes); empty for an empty value.
    pub span: Range<usize>,
    /// For an empty value: whether a space already precedes `span`.
    pub empty: Option<bool>,
    pub str_tag: bool,
}

impl Slot {
    /// The editable value of line `i`, or why it is not editable.
    pub(crate) fn of(text: &str, lines: &[Line], i: usize) -> Result<Slot, &'static str> {
        let line = &lines[i];
        let node = match &line.kind {
            Kind::Node(node) => node,
            Kind::Comment => return Err("a line with only a comment"),
            Kind::Document => return Err("a document marker line"),
            Kind::QuotedText => return Err("the end of a quoted value that spans lines"),
            Kind::Continuation => return Err("a continuation of a value that spans lines"),
            Kind::FlowText => return Err("a line inside a flow collection ({...} or [...])"),
            Kind::Opaque => {
                return Err("a line this editor cannot read (tab indentation or complex key)")
            }
            Kind::Blank | Kind::BlockText => return Err("a line without a value"),
        };
        let slot = |style, span, empty, str_tag| Slot {
            line: line.number,
            style,
            span,
            empty,
            str_tag,
        };
        if node.foreign_tag {
            return Err("a value with an explicit tag other than !!str (!!int, !!bool, ...)");
        }
        match &node.value {
            Value::Scalar { escaped: true, .. } => Err("a quoted value with escapes"),
            Value::Scalar {
                style,
                span,
                str_tag,
                ..
            } => Ok(slot(*style, span.clone(), None, *str_tag)),
            Value::Empty { .. } if nested_block_follows(text, lines, i) => {
                Err("a key whose value is a nested block")
            }
            Value::Empty { at, spaced } => Ok(slot(Style::Plain, *at..*at, Some(*spaced), false)),
            Value::Alias => Err("an alias (*name); mark the anchored value instead"),
            Value::BlockScalar => Err("a block scalar (| or >)"),
            Value::Flow { .. } => Err("a flow collection ({...} or [...])"),
            Value::MultiLine(_) => Err("a quoted value that spans lines"),
            Value::Invalid => Err("a value this editor cannot read"),
        }
    }

    /// The current value; `None` when empty or null.
    pub(crate) fn read<'t>(&self, text: &'t str) -> Option<&'t str> {
        let value = text.get(self.span.clone())?;
        let null = self.style == Style::Plain
            && !self.str_tag
            && matches!(value, "" | "~" | "null" | "Null" | "NULL");
        (!null && !value.is_empty()).then_some(value)
    }

    /// The splice that makes the value `new` (`None`: empty it), or `None`
    /// when it already is.
    pub(crate) fn write(&self, text: &str, new: Option<&str>) -> Result<Option<Splice>, EditError> {
        if self.read(text) == new {
            return Ok(None);
        }
        let splice = |range, text| Splice {
            range,
            text,
            line: self.line,
            adds: 0,
            removes: None,
        };
        let Some(value) = new else {
            return Ok(Some(splice(self.span.clone(), String::new())));
        };
        if let Some(spaced) = self.empty {
            // No style to keep: plain when safe, else double quotes.
            let rendered = render_new(value).map_err(|reason| self.unsafe_value(value, reason))?;
            let before = if spaced { "" } else { " " };
            let after = if text.as_bytes().get(self.span.start) == Some(&b'#') {
                " "
            } else {
                ""
            };
            return Ok(Some(splice(
                self.span.clone(),
                format!("{before}{rendered}{after}"),
            )));
        }
        check(self.style, value, self.str_tag)
            .map_err(|reason| self.unsafe_value(value, reason))?;
        Ok(Some(splice(self.span.clone(), value.to_owned())))
    }

    fn unsafe_value(&self, value: &str, reason: &'static str) -> EditError {
        EditError::UnsafeValue {
            line: self.line,
            value: printable(value),
            style: self.style.name(),
            reason,
        }
    }
}

/// Whether the lines after `i` hold a nested block of the (empty) value on `i`.
fn nested_block_follows(text: &str, lines: &[Line], i: usize) -> bool {
    let Kind::Node(node) = &lines[i].kind else {
        return false;
    };
    let next = lines[i + 1..]
        .iter()
        .find(|l| !matches!(l.kind, Kind::Blank | Kind::Comment));
    let Some(next) = next else {
        return false;
    };
    if matches!(next.kind, Kind::Document) {
        return false;
    }
    let content = text.get(next.start..next.end).unwrap_or("");
    let indent = content.bytes().take_while(|&c| c == b' ').count() as isize;
    let rest = &content[indent as usize..];
    let dash = rest == "-" || rest.starts_with("- ");
    // `key:` may hold a sequence at its own indentation.
    indent > node.owner_col || (indent == node.owner_col && node.key.is_some() && dash)
}

/// A value written where there was none: plain if that is safe, else double-quoted.
pub(crate) fn render_new(value: &str) -> Result<String, &'static str> {
    if check(Style::Plain, value, false).is_ok() {
        return Ok(value.to_owned());
    }
    check(Style::Double, value, false)?;
    Ok(format!("\"{value}\""))
}

/// Whether `value` can be written as-is in `style` and still read as that string.
pub(crate) fn check(style: Style, value: &str, str_tag: bool) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("an empty value cannot be written");
    }
    // Image references are printable ASCII without spaces; anything else
    // (newlines above all) could change the document's structure.
    if !value.bytes().all(|c| c.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces can be written");
    }
    match style {
        Style::Single if value.contains('\'') => Err("a single quote would need escaping"),
        Style::Double if value.contains(['"', '\\']) => {
            Err("a quote or backslash would need escaping")
        }
        Style::Plain => check_plain(value, str_tag),
        _ => Ok(()),
    }
}

fn check_plain(value: &str, str_tag: bool) -> Result<(), &'static str> {
    let first = value.as_bytes()[0];
    if b"-?:,[]{}#&*!|>'\"%@`".contains(&first) {
        return Err("it starts with a YAML indicator character; quote the value in the file");
    }
    if value.contains('#') || value.ends_with(':') {
        return Err("`#` or a final `:` would change the YAML structure");
    }
    if !str_tag && resolves_to_non_string(value) {
        return Err("as a plain value it would read as a number, boolean, null or date; quote the value in the file");
    }
    Ok(())
}

/// YAML 1.1 and 1.2 numbers (as Go's YAML decoders read them, underscores
/// dropped), sexagesimal numbers and dates.
static NON_STRING: LazyLock<Regex> = LazyLock::new(|| {
    let patterns = [
        r"[-+]?(0b[01]+|0o?[0-7]+|0x[0-9a-f]+|[0-9]+)",
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)(e[-+]?[0-9]+)?",
        r"[-+]?0x[0-9a-f]*\.?[0-9a-f]*p[-+]?[0-9]+",
        r"[-+]?[0-9]+(:[0-5]?[0-9])+(\.[0-9]*)?",
        r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(t.*)?",
        r"[-+]?\.?(inf|infinity|nan)",
    ];
    let joined = patterns.map(|p| format!("(?:{p})")).join("|");
    Regex::new(&format!("(?i)^(?:{joined})$")).expect("constant pattern")
});

/// Whether a plain scalar would resolve to something other than a string.
fn resolves_to_non_string(value: &str) -> bool {
    const WORDS: [&str; 10] = [
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    if WORDS.iter().any(|w| value.eq_ignore_ascii_case(w)) {
        return true;
    }
    let numeric_start =
        value.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    numeric_start && NON_STRING.is_match(&value.replace('_', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_refuses_values_that_read_as_other_types() {
        for bad in [
            "1.10",
            "10",
            "010",
            "0x1F",
            "1e5",
            "1_000",
            "1:20",
            "2024-01-15",
            "true",
            "No",
            "null",
            "~",
            ".inf",
            "0x1p-2",
        ] {
            assert!(
                check(Style::Plain, bad, false).is_err(),
                "{bad} should be refused"
            );
            assert!(check(Style::Double, bad, false).is_ok());
            assert!(check(Style::Plain, bad, true).is_ok(), "{bad} under !!str");
        }
        for good in [
            "1.2.3",
            "v1.10",
            "1.2.3-alpine",
            "nginx:1.25",
            "2024-01-15-abc",
            "sha256:0a",
            "123abc",
            "_1",
            "registry.example.com:5000/app:v1",
        ] {
            assert!(
                check(Style::Plain, good, false).is_ok(),
                "{good} should be accepted"
            );
        }
    }

    #[test]
    fn refuses_structure_changing_values_in_every_style() {
        for style in [Style::Plain, Style::Single, Style::Double] {
            for bad in ["a\nb", "a: b", "a #b", "", "tab\there"] {
                assert!(check(style, bad, false).is_err(), "{bad:?} as {style:?}");
            }
        }
        assert!(check(Style::Plain, "[::1]:5000/a:v1", false).is_err());
        assert!(check(Style::Single, "[::1]:5000/a:v1", false).is_ok());
        assert!(check(Style::Single, "it's", false).is_err());
        assert!(check(Style::Double, "a\"b", false).is_err());
    }

    #[test]
    fn new_values_are_quoted_only_when_needed() {
        assert_eq!(render_new("v1.2.3").unwrap(), "v1.2.3");
        assert_eq!(render_new("1.10").unwrap(), "\"1.10\"");
    }
}
