//! A line scanner for YAML: just enough structure to find single-line scalar
//! values and real comments, without parsing (and re-printing) the document.
//!
//! Every line gets a [`Kind`]. The scanner tracks the regions where a `#` is
//! not a comment and a `key: value` is not a node: block scalar content
//! (`|`, `>`), multi-line quoted scalars, and continuation lines of multi-line
//! plain scalars. Anything it does not understand is [`Kind::Opaque`] or
//! [`Value::Invalid`], which the editor refuses to touch.

use std::ops::Range;

/// How a scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Single,
    Double,
}

impl Style {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Style::Plain => "plain",
            Style::Single => "single-quoted",
            Style::Double => "double-quoted",
        }
    }
}

/// The value part of a node line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Nothing after the key or dash (null, or a nested block follows).
    /// `at` is where a value would be written; `spaced` says whether a
    /// separating space already precedes `at`.
    Empty {
        at: usize,
        spaced: bool,
    },
    /// A scalar that ends on this line; `span` is its content inside the quotes.
    Scalar {
        style: Style,
        span: Range<usize>,
        /// Holds escapes (`\` in double quotes, `''` in single quotes).
        escaped: bool,
        /// Preceded by an explicit `!!str` tag, so it can never read as a number.
        str_tag: bool,
    },
    Alias,
    BlockScalar,
    /// A flow collection; `open` when it continues on the next line.
    Flow {
        open: Option<FlowState>,
    },
    /// A scalar quoted with this byte that continues on the next line.
    MultiLine(u8),
    /// Something this scanner does not understand.
    Invalid,
}

/// A line holding a node: `[- ]*[key:] [&anchor] [!tag] value [# comment]`.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Leading spaces.
    pub indent: usize,
    /// Number of `- ` sequence indicators before the key or value.
    pub dashes: usize,
    pub key: Option<String>,
    /// Column of the key (bytes from the line's start).
    pub key_col: Option<usize>,
    /// Column of the node that owns the value (the key, else the last dash),
    /// -1 for a document's root node: deeper lines belong to the value.
    pub owner_col: isize,
    pub value: Value,
    /// The value carries an explicit tag other than `!!str` (`!!int`, `!!bool`,
    /// a custom one): writing a string there would change its type.
    pub foreign_tag: bool,
}

/// Where a flow collection that spans lines stands at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowState {
    /// Open brackets.
    depth: usize,
    /// Inside a scalar quoted with this byte.
    quote: Option<u8>,
}

/// What a line is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Blank,
    /// Only a comment.
    Comment,
    /// `---`, `...` or a `%` directive.
    Document,
    Node(Node),
    /// Content of a block scalar: text, whatever it looks like.
    BlockText,
    /// Inside (or closing) a multi-line quoted scalar.
    QuotedText,
    /// Continues a multi-line plain scalar.
    Continuation,
    /// Inside (or closing) a flow collection that spans lines.
    FlowText,
    /// Not understood (a tab in the indentation, a complex key).
    Opaque,
}

/// One line of the text, with byte offsets into the whole text.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// 1-based, for messages.
    pub number: usize,
    /// First byte of the line (after a BOM on line 1).
    pub start: usize,
    /// End of the content, before `\n` or `\r\n`.
    pub end: usize,
    /// Start of the next line (after the line ending).
    pub next: usize,
    pub kind: Kind,
    /// Offset of the `#` that starts a real comment on this line.
    pub comment: Option<usize>,
}

impl Line {
    /// The line ending, empty on a last line without one.
    pub(crate) fn eol<'t>(&self, text: &'t str) -> &'t str {
        text.get(self.end..self.next).unwrap_or("")
    }
}

const BOM: &str = "\u{feff}";

/// Scans `text` into lines. Fails with the line number of a lone `\r`,
/// which YAML reads as a line break but this scanner would not.
pub(crate) fn scan(text: &str) -> Result<Vec<Line>, usize> {
    let b = text.as_bytes();
    let mut pos = if text.starts_with(BOM) { BOM.len() } else { 0 };
    let mut lines = Vec::new();
    let mut scanner = Scanner::default();
    while pos < b.len() {
        let number = lines.len() + 1;
        let (end, next) = match b[pos..].iter().position(|&c| c == b'\n') {
            Some(i) => (pos + i, pos + i + 1),
            None => (b.len(), b.len()),
        };
        let end = if end > pos && b[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        if b[pos..end].contains(&b'\r') {
            return Err(number);
        }
        let (kind, comment) = scanner.classify(b, pos, end);
        lines.push(Line {
            number,
            start: pos,
            end,
            next,
            kind,
            comment,
        });
        pos = next;
    }
    Ok(lines)
}

/// State carried from line to line.
#[derive(Default)]
struct Scanner {
    /// Inside a block scalar whose owner sits at this column.
    block_parent: Option<isize>,
    /// Inside a multi-line scalar quoted with this byte.
    quote: Option<u8>,
    /// After a plain scalar owned at this column: deeper lines continue it.
    plain_owner: Option<isize>,
    /// Owner column of the last node with an empty value: the parent of a
    /// value written alone on the following line.
    open_owner: Option<isize>,
    /// Inside a flow collection that spans lines.
    flow: Option<FlowState>,
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn skip_ws(b: &[u8], mut p: usize, end: usize) -> usize {
    while p < end && is_ws(b[p]) {
        p += 1;
    }
    p
}

/// `---` or `...` at column 0, alone or followed by whitespace.
fn document_marker(b: &[u8], start: usize, end: usize) -> bool {
    let s = &b[start..end];
    (s.starts_with(b"---") || s.starts_with(b"...")) && (s.len() == 3 || is_ws(s[3]))
}

impl Scanner {
    fn classify(&mut self, b: &[u8], start: usize, end: usize) -> (Kind, Option<usize>) {
        if let Some(q) = self.quote {
            return self.quoted_text(b, start, end, q);
        }
        if let Some(state) = self.flow {
            let (open, comment) = scan_flow(b, start, end, state);
            self.flow = open;
            return (Kind::FlowText, comment);
        }
        let blank = b[start..end].iter().all(|&c| is_ws(c));
        if let Some(parent) = self.block_parent {
            let indent = b[start..end].iter().take_while(|&&c| c == b' ').count();
            let ends_document = parent < 0 && document_marker(b, start, end);
            if blank || (indent as isize > parent && !ends_document) {
                return (Kind::BlockText, None);
            }
            self.block_parent = None;
        }
        if blank {
            return (Kind::Blank, None);
        }
        if document_marker(b, start, end) || b[start] == b'%' {
            *self = Scanner::default();
            return self.document(b, start, end);
        }
        let indent = b[start..end].iter().take_while(|&&c| c == b' ').count();
        let p = start + indent;
        if b[p] == b'\t' {
            self.plain_owner = None;
            return (Kind::Opaque, find_comment(b, p, end));
        }
        if b[p] == b'#' {
            return (Kind::Comment, Some(p));
        }
        if let Some(owner) = self.plain_owner {
            if indent as isize > owner {
                return (Kind::Continuation, find_comment(b, p, end));
            }
        }
        self.plain_owner = None;
        let parent = match self.open_owner {
            Some(o) if (indent as isize) > o => o,
            _ => -1,
        };
        let (kind, comment) = parse_node(b, start, p, end, parent);
        if let Kind::Node(node) = &kind {
            self.after_node(node);
        }
        (kind, comment)
    }

    /// Remembers what a node line opens for the lines after it.
    fn after_node(&mut self, node: &Node) {
        self.open_owner = None;
        match &node.value {
            Value::BlockScalar => self.block_parent = Some(node.owner_col),
            Value::MultiLine(q) => self.quote = Some(*q),
            Value::Flow { open } => self.flow = *open,
            Value::Scalar {
                style: Style::Plain,
                ..
            } => self.plain_owner = Some(node.owner_col),
            Value::Empty { .. } => self.open_owner = Some(node.owner_col),
            _ => {}
        }
    }

    /// A line inside a multi-line quoted scalar; it may close it.
    fn quoted_text(&mut self, b: &[u8], start: usize, end: usize, q: u8) -> (Kind, Option<usize>) {
        let Some(close) = quote_end(b, start, end, q) else {
            return (Kind::QuotedText, None);
        };
        self.quote = None;
        let after = skip_ws(b, close + 1, end);
        let comment = (after < end && b[after] == b'#' && after > close + 1).then_some(after);
        (Kind::QuotedText, comment)
    }

    /// `---`, `...` or a directive; `--- |` opens a root block scalar.
    fn document(&mut self, b: &[u8], start: usize, end: usize) -> (Kind, Option<usize>) {
        if b[start] == b'%' || b[start] == b'.' {
            return (Kind::Document, None);
        }
        let p = skip_ws(b, start + 3, end);
        let (kind, comment) = parse_node(b, start, p, end, -1);
        if let Kind::Node(node) = &kind {
            if node.key.is_none() && node.dashes == 0 {
                match node.value {
                    Value::BlockScalar => self.block_parent = Some(-1),
                    Value::MultiLine(q) => self.quote = Some(q),
                    Value::Flow { open } => self.flow = open,
                    Value::Scalar {
                        style: Style::Plain,
                        ..
                    } => self.plain_owner = Some(-1),
                    _ => {}
                }
            }
        }
        (Kind::Document, comment)
    }
}

/// The offset of the closing quote, skipping escapes.
fn quote_end(b: &[u8], mut i: usize, end: usize, q: u8) -> Option<usize> {
    while i < end {
        if q == b'"' && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if q == b'\'' && i + 1 < end && b[i + 1] == b'\'' {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A `#` preceded by whitespace (or at `p`), outside quotes.
fn find_comment(b: &[u8], p: usize, end: usize) -> Option<usize> {
    let mut i = p;
    while i < end {
        match b[i] {
            b'#' if i == p || is_ws(b[i - 1]) => return Some(i),
            q @ (b'"' | b'\'')
                if i == p || matches!(b[i - 1], b' ' | b'\t' | b'[' | b'{' | b',') =>
            {
                i = quote_end(b, i + 1, end, q)? + 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether `b[p]` starts something other than a plain scalar.
fn indicator(b: &[u8], p: usize, end: usize) -> bool {
    let next_ws = p + 1 >= end || is_ws(b[p + 1]);
    match b[p] {
        b'-' | b'?' | b':' => next_ws,
        b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => true,
        _ => false,
    }
}

/// Parses `[- ]*[key:] value [# comment]` from `p` (after the indentation).
fn parse_node(
    b: &[u8],
    start: usize,
    mut p: usize,
    end: usize,
    parent: isize,
) -> (Kind, Option<usize>) {
    let indent = p - start;
    let mut dashes = 0;
    let mut last_dash = None;
    let mut value_from = p;
    while p < end && b[p] == b'-' && (p + 1 == end || is_ws(b[p + 1])) {
        dashes += 1;
        last_dash = Some(p - start);
        value_from = p + 1;
        p = skip_ws(b, p + 1, end);
    }
    if p < end && matches!(b[p], b'?' | b':') && (p + 1 == end || is_ws(b[p + 1])) {
        return (Kind::Opaque, find_comment(b, p, end));
    }
    let (key, key_col, after) = match parse_key(b, p, end) {
        Some((key, after)) => (Some(key), Some(p - start), after),
        None => (None, None, value_from),
    };
    let owner_col = key_col.or(last_dash).map_or(parent, |c| c as isize);
    let (value, comment, tag) = parse_value(b, after, end);
    let node = Node {
        indent,
        dashes,
        key,
        key_col,
        owner_col,
        value,
        foreign_tag: tag == Tag::Other,
    };
    (Kind::Node(node), comment)
}

/// A mapping key at `p`: returns it (unquoted) and the offset after its `:`.
fn parse_key(b: &[u8], p: usize, end: usize) -> Option<(String, usize)> {
    if p >= end {
        return None;
    }
    let colon_at = |i: usize| i < end && b[i] == b':' && (i + 1 == end || is_ws(b[i + 1]));
    if let q @ (b'"' | b'\'') = b[p] {
        let close = quote_end(b, p + 1, end, q)?;
        let i = skip_ws(b, close + 1, end);
        let key = String::from_utf8_lossy(&b[p + 1..close]).into_owned();
        return colon_at(i).then_some((key, i + 1));
    }
    if indicator(b, p, end) {
        return None;
    }
    let mut i = p;
    while i < end {
        if b[i] == b'#' && i > p && is_ws(b[i - 1]) {
            return None;
        }
        if colon_at(i) {
            let mut k = i;
            while k > p && is_ws(b[k - 1]) {
                k -= 1;
            }
            return Some((String::from_utf8_lossy(&b[p..k]).into_owned(), i + 1));
        }
        i += 1;
    }
    None
}

/// The explicit tag before a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    None,
    /// `!!str`: the value is a string whatever it looks like.
    Str,
    /// Any other tag, including the non-specific `!`.
    Other,
}

/// Skips `&anchor` and `!tag` properties; returns the tag seen.
fn skip_properties(b: &[u8], mut p: usize, end: usize) -> (usize, Tag) {
    let mut tag = Tag::None;
    while p < end && matches!(b[p], b'&' | b'!') {
        let from = p;
        while p < end && !is_ws(b[p]) {
            p += 1;
        }
        let prop = &b[from..p];
        if prop[0] == b'!' {
            let str_tag = prop == b"!!str" || prop == b"!<tag:yaml.org,2002:str>";
            tag = if str_tag && tag != Tag::Other {
                Tag::Str
            } else {
                Tag::Other
            };
        }
        p = skip_ws(b, p, end);
    }
    (p, tag)
}

/// Parses the value that starts at or after `from` (just after a key's `:`,
/// the dashes, or the indentation).
fn parse_value(b: &[u8], from: usize, end: usize) -> (Value, Option<usize>, Tag) {
    let (p, tag) = skip_properties(b, skip_ws(b, from, end), end);
    let str_tag = tag == Tag::Str;
    if p == end || (b[p] == b'#' && (p == from || is_ws(b[p - 1]))) {
        let comment = (p < end).then_some(p);
        return (empty_value(b, from, p), comment, tag);
    }
    let (value, comment) = match b[p] {
        b'*' => (Value::Alias, find_comment(b, p, end)),
        b'|' | b'>' => match block_header(b, p, end) {
            Some(comment) => (Value::BlockScalar, comment),
            None => (Value::Invalid, find_comment(b, p, end)),
        },
        b'{' | b'[' => {
            let (open, comment) = scan_flow(
                b,
                p,
                end,
                FlowState {
                    depth: 0,
                    quote: None,
                },
            );
            (Value::Flow { open }, comment)
        }
        q @ (b'"' | b'\'') => quoted_value(b, p, end, q, str_tag),
        _ if indicator(b, p, end) => (Value::Invalid, find_comment(b, p, end)),
        _ => plain_value(b, p, end, str_tag),
    };
    (value, comment, tag)
}

/// Follows a flow collection from `i` to the end of the line: returns its
/// state if it is still open there, and the offset of a comment.
fn scan_flow(
    b: &[u8],
    mut i: usize,
    end: usize,
    mut state: FlowState,
) -> (Option<FlowState>, Option<usize>) {
    let first = i;
    while i < end {
        if let Some(q) = state.quote {
            match quote_end(b, i, end, q) {
                Some(close) => {
                    state.quote = None;
                    i = close + 1;
                    continue;
                }
                None => return (Some(state), None),
            }
        }
        let after_separator =
            i == first || matches!(b[i - 1], b' ' | b'\t' | b'[' | b'{' | b',' | b':');
        match b[i] {
            b'#' if i == first || is_ws(b[i - 1]) => {
                return ((state.depth > 0).then_some(state), Some(i))
            }
            b'[' | b'{' => state.depth += 1,
            b']' | b'}' => {
                state.depth = state.depth.saturating_sub(1);
                if state.depth == 0 {
                    let j = skip_ws(b, i + 1, end);
                    let comment = (j < end && b[j] == b'#' && j > i + 1).then_some(j);
                    return (None, comment);
                }
            }
            q @ (b'"' | b'\'') if after_separator => state.quote = Some(q),
            _ => {}
        }
        i += 1;
    }
    let open = state.depth > 0 || state.quote.is_some();
    (open.then_some(state), None)
}

/// Where an empty value would be written: after the last token and one space.
fn empty_value(b: &[u8], from: usize, stop: usize) -> Value {
    let mut last = stop;
    while last > from && is_ws(b[last - 1]) {
        last -= 1;
    }
    if last < stop {
        Value::Empty {
            at: last + 1,
            spaced: true,
        }
    } else {
        Value::Empty {
            at: last,
            spaced: false,
        }
    }
}

/// `|` or `>` with optional indentation and chomping indicators, then
/// nothing or a comment. Returns the comment offset.
fn block_header(b: &[u8], p: usize, end: usize) -> Option<Option<usize>> {
    let mut i = p + 1;
    let (mut digit, mut chomp) = (false, false);
    while i < end && !is_ws(b[i]) {
        match b[i] {
            b'1'..=b'9' if !digit => digit = true,
            b'+' | b'-' if !chomp => chomp = true,
            _ => return None,
        }
        i += 1;
    }
    let j = skip_ws(b, i, end);
    if j == end {
        Some(None)
    } else if b[j] == b'#' {
        Some(Some(j))
    } else {
        None
    }
}

fn quoted_value(b: &[u8], p: usize, end: usize, q: u8, str_tag: bool) -> (Value, Option<usize>) {
    let Some(close) = quote_end(b, p + 1, end, q) else {
        return (Value::MultiLine(q), None);
    };
    let content = &b[p + 1..close];
    let escaped = if q == b'"' {
        content.contains(&b'\\')
    } else {
        content.contains(&b'\'')
    };
    let style = if q == b'"' {
        Style::Double
    } else {
        Style::Single
    };
    let value = Value::Scalar {
        style,
        span: p + 1..close,
        escaped,
        str_tag,
    };
    let after = skip_ws(b, close + 1, end);
    if after == end {
        (value, None)
    } else if b[after] == b'#' && after > close + 1 {
        (value, Some(after))
    } else {
        (Value::Invalid, find_comment(b, after, end))
    }
}

fn plain_value(b: &[u8], p: usize, end: usize, str_tag: bool) -> (Value, Option<usize>) {
    let mut stop = end;
    let mut comment = None;
    for i in p + 1..end {
        if b[i] == b'#' && is_ws(b[i - 1]) {
            stop = i;
            comment = Some(i);
            break;
        }
    }
    while stop > p && is_ws(b[stop - 1]) {
        stop -= 1;
    }
    let s = &b[p..stop];
    // A second `: ` would be a nested mapping on one line: not YAML.
    let nested = s.windows(2).any(|w| w[0] == b':' && is_ws(w[1])) || s.ends_with(b":");
    if nested {
        return (Value::Invalid, comment);
    }
    let value = Value::Scalar {
        style: Style::Plain,
        span: p..stop,
        escaped: false,
        str_tag,
    };
    (value, comment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<String> {
        scan(text)
            .unwrap()
            .iter()
            .map(|l| match &l.kind {
                Kind::Node(n) => format!("node {:?} {:?}", n.key, value_text(text, &n.value)),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn value_text(text: &str, v: &Value) -> String {
        match v {
            Value::Scalar { span, style, .. } => format!("{style:?}({})", &text[span.clone()]),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn block_scalar_content_is_text() {
        let text = "a: |\n  image: x # {\"sluice\": \"s\"}\n\n  more\nb: 1\n";
        let k = kinds(text);
        assert_eq!(k[1], "BlockText");
        assert_eq!(k[2], "BlockText");
        assert_eq!(k[3], "BlockText");
        assert_eq!(k[4], "node Some(\"b\") \"Plain(1)\"");
    }

    #[test]
    fn quoted_hash_is_not_a_comment() {
        let text = "a: \"x # y\" # real\nb: 'it''s # no'\n";
        let lines = scan(text).unwrap();
        assert_eq!(&text[lines[0].comment.unwrap()..lines[0].end], "# real");
        assert_eq!(lines[1].comment, None);
    }

    #[test]
    fn multi_line_scalars_are_not_nodes() {
        let text = "a: \"one\n  two: x\" # c\nb: plain\n  c: d # e\nf: g\n";
        let k = kinds(text);
        assert_eq!(k[1], "QuotedText");
        assert_eq!(k[3], "Continuation");
        assert!(k[4].starts_with("node Some(\"f\")"));
    }

    #[test]
    fn sequences_keys_and_properties() {
        let text = "- - name: &a x\n  - !!str 1.0 # c\n\"q\": *a\n";
        let lines = scan(text).unwrap();
        let Kind::Node(n) = &lines[0].kind else {
            panic!()
        };
        assert_eq!((n.dashes, n.key_col, n.owner_col), (2, Some(4), 4));
        let Kind::Node(n) = &lines[1].kind else {
            panic!()
        };
        assert!(matches!(n.value, Value::Scalar { str_tag: true, .. }));
        let Kind::Node(n) = &lines[2].kind else {
            panic!()
        };
        assert_eq!((n.key.as_deref(), &n.value), (Some("q"), &Value::Alias));
    }

    #[test]
    fn flow_collections_that_span_lines_are_text() {
        let text = "f: [a, '] # x',\n  {b: \"c\n d\"},\n  e] # c\ng: 1 # {}\n";
        let lines = scan(text).unwrap();
        let k = kinds(text);
        assert_eq!(&k[1..4], ["FlowText", "FlowText", "FlowText"]);
        assert_eq!(&text[lines[3].comment.unwrap()..lines[3].end], "# c");
        assert!(k[4].starts_with("node Some(\"g\")"));
    }

    #[test]
    fn crlf_bom_and_lone_cr() {
        let text = "\u{feff}a: 1\r\nb: 2";
        let lines = scan(text).unwrap();
        assert_eq!((lines[0].start, lines[0].eol(text)), (3, "\r\n"));
        assert_eq!(lines[1].eol(text), "");
        assert!(matches!(scan("a: 1\rb: 2\n"), Err(1)));
    }

    #[test]
    fn root_block_scalar_runs_to_the_next_document() {
        let k = kinds("--- |\nx: 1 # m\n---\ny: 2\n");
        assert_eq!(
            k,
            [
                "Document",
                "BlockText",
                "Document",
                "node Some(\"y\") \"Plain(2)\""
            ]
        );
    }
}
