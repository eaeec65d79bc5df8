//! Kustomize `images:` entries: `newTag` and `digest` follow the image.
//!
//! An entry matches when the image it produces has the intent's repository:
//! `newName` when present, else `name`. (An entry that renames `name` to a
//! different `newName` produces that other repository, so a tag set there
//! would deploy a tag of the wrong image.)
//!
//! - A missing `newTag` or `digest` that the image has is inserted as a new
//!   line at the entry's indentation, after `newName` (else `name`), and
//!   `digest` after `newTag`: the order `kustomize edit set image` writes.
//! - A `digest` the image lacks is removed with its line: kustomize prefers
//!   the digest to the tag, so a stale one would keep the old image running.
//! - A `newTag` stays when the image has only a digest (the digest wins).
//!
//! Only top-level `images:` block sequences of documents whose `kind` is
//! absent or `Kustomization` count, and only entries whose keys are all
//! kustomize image keys: a Helm values file with its own `images:` list is
//! not touched by this rule.

use super::scan::{Kind, Line, Value};
use super::value::{render_new, Slot, Splice};
use super::{EditError, ImageRef};
use crate::record::oci;

const KEYS: [&str; 5] = ["name", "newName", "newTag", "digest", "tagSuffix"];

/// One `- name: ...` entry: its field lines by key.
struct Entry {
    /// Column of the entry's keys.
    key_col: Option<usize>,
    fields: Vec<(String, usize)>,
    /// Only scalar `key: value` lines at one column.
    simple: bool,
}

impl Entry {
    fn field(&self, key: &str) -> Option<usize> {
        self.fields.iter().find(|(k, _)| k == key).map(|&(_, i)| i)
    }

    /// Whether this looks like a kustomize image entry at all.
    fn is_image_entry(&self) -> bool {
        let known = self.fields.iter().all(|(k, _)| KEYS.contains(&k.as_str()));
        let unique = KEYS
            .iter()
            .all(|k| self.fields.iter().filter(|(f, _)| f == k).count() <= 1);
        self.simple && self.key_col.is_some() && known && unique && self.field("name").is_some()
    }

    /// The repository the entry produces.
    fn produces<'t>(&self, text: &'t str, lines: &[Line]) -> Option<&'t str> {
        let i = self.field("newName").or(self.field("name"))?;
        Slot::of(text, lines, i).ok()?.read(text)
    }
}

/// Whether any entry matched `image.repository`, and the splices that update it.
pub(crate) fn plan(
    text: &str,
    lines: &[Line],
    image: &ImageRef,
) -> Result<(bool, Vec<Splice>), EditError> {
    let mut matched = false;
    let mut splices = Vec::new();
    for entry in entries(text, lines) {
        if entry.produces(text, lines) == Some(image.repository.as_str()) {
            matched = true;
            update(text, lines, &entry, image, &mut splices)?;
        }
    }
    Ok((matched, splices))
}

/// The image a matching entry currently produces.
pub(crate) fn current(text: &str, lines: &[Line], repository: &str) -> Option<String> {
    let entry = entries(text, lines)
        .into_iter()
        .find(|e| e.produces(text, lines) == Some(repository))?;
    let read = |key| {
        let i = entry.field(key)?;
        Slot::of(text, lines, i).ok()?.read(text)
    };
    Some(oci::reference(repository, read("newTag"), read("digest")))
}

/// The image entries of every kustomization document.
fn entries(text: &str, lines: &[Line]) -> Vec<Entry> {
    let mut all = Vec::new();
    for (from, to) in documents(lines) {
        let doc = &lines[from..to];
        let top = |key: &str| {
            doc.iter().position(|l| match &l.kind {
                Kind::Node(n) => n.indent == 0 && n.dashes == 0 && n.key.as_deref() == Some(key),
                _ => false,
            })
        };
        let kind = top("kind").and_then(|i| Slot::of(text, lines, from + i).ok()?.read(text));
        if kind.is_some_and(|k| k != "Kustomization") {
            continue;
        }
        let Some(images) = top("images") else {
            continue;
        };
        let Kind::Node(node) = &doc[images].kind else {
            continue;
        };
        if matches!(node.value, Value::Empty { .. }) {
            all.extend(
                sequence(lines, from + images + 1, to)
                    .into_iter()
                    .filter(Entry::is_image_entry),
            );
        }
    }
    all
}

/// Line ranges of the documents, split at `---` and `...`.
fn documents(lines: &[Line]) -> Vec<(usize, usize)> {
    let mut docs = Vec::new();
    let mut from = 0;
    for (i, line) in lines.iter().enumerate() {
        if matches!(line.kind, Kind::Document) {
            docs.push((from, i));
            from = i + 1;
        }
    }
    docs.push((from, lines.len()));
    docs
}

/// The entries of the block sequence starting at line `from`.
fn sequence(lines: &[Line], from: usize, to: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut column = None;
    for (i, line) in lines.iter().enumerate().take(to).skip(from) {
        let node = match &line.kind {
            Kind::Blank | Kind::Comment => continue,
            Kind::Node(node) => node,
            Kind::Document => break,
            // Text of a multi-line value, or something unreadable: the
            // current entry is not a simple one.
            _ => {
                if let Some(e) = entries.last_mut() {
                    e.simple = false;
                }
                continue;
            }
        };
        let col = *column.get_or_insert(node.indent);
        if node.indent < col || (node.indent == col && node.dashes == 0) {
            break;
        }
        if node.indent == col {
            entries.push(Entry {
                key_col: node.key_col,
                fields: Vec::new(),
                simple: node.dashes == 1,
            });
        }
        let Some(entry) = entries.last_mut() else {
            break;
        };
        if entry.key_col.is_none() {
            entry.key_col = node.key_col;
        }
        let nested = node.indent > col && (node.dashes > 0 || node.key_col != entry.key_col);
        let empty = matches!(node.value, Value::Empty { .. });
        let scalar = empty || matches!(node.value, Value::Scalar { .. });
        match &node.key {
            Some(key) if !nested && scalar => entry.fields.push((key.clone(), i)),
            // A lone `-` with the keys on the lines below.
            None if node.indent == col && empty => {}
            _ => entry.simple = false,
        }
    }
    entries
}

/// Splices that make a matching entry produce `image`.
fn update(
    text: &str,
    lines: &[Line],
    entry: &Entry,
    image: &ImageRef,
    out: &mut Vec<Splice>,
) -> Result<(), EditError> {
    let slot = |i: usize| {
        Slot::of(text, lines, i).map_err(|reason| EditError::Kustomize {
            line: lines[i].number,
            reason: format!("the value is {reason}"),
        })
    };
    let new_tag = entry.field("newTag");
    let digest = entry.field("digest");
    let mut inserts = Vec::new();
    if let Some(tag) = image.tag.as_deref() {
        match new_tag {
            Some(i) => out.extend(slot(i)?.write(text, Some(tag))?),
            None => inserts.push(("newTag", tag)),
        }
    }
    let mut removal = None;
    match (image.digest.as_deref(), digest) {
        (Some(d), Some(i)) => out.extend(slot(i)?.write(text, Some(d))?),
        (Some(d), None) => match new_tag {
            Some(i) => out.push(insert(text, lines, i, entry, &[("digest", d)], None)?),
            None => inserts.push(("digest", d)),
        },
        (None, Some(i)) if slot(i)?.read(text).is_some() => removal = Some(remove(lines, i)?),
        (None, _) => {}
    }
    let anchor = entry.field("newName").or(entry.field("name"));
    if let (false, Some(anchor)) = (inserts.is_empty(), anchor) {
        let splice = insert(text, lines, anchor, entry, &inserts, removal.as_ref())?;
        // The insertion took over a removal it overlaps (see `insert`).
        if splice.removes.is_some() {
            removal = None;
        }
        out.push(splice);
    }
    out.extend(removal);
    Ok(())
}

/// New `key: value` lines after line `anchor` (and any text of its value).
fn insert(
    text: &str,
    lines: &[Line],
    anchor: usize,
    entry: &Entry,
    fields: &[(&str, &str)],
    removal: Option<&Splice>,
) -> Result<Splice, EditError> {
    let mut last = anchor;
    while lines.get(last + 1).is_some_and(|l| {
        matches!(
            l.kind,
            Kind::Continuation | Kind::QuotedText | Kind::BlockText
        )
    }) {
        last += 1;
    }
    let line = &lines[last];
    let indent = " ".repeat(entry.key_col.unwrap_or(0));
    let eol = match line.eol(text) {
        "" => lines
            .iter()
            .map(|l| l.eol(text))
            .find(|e| !e.is_empty())
            .unwrap_or("\n"),
        eol => eol,
    };
    let mut rendered = Vec::new();
    for (key, value) in fields {
        let value = render_new(value).map_err(|reason| EditError::UnsafeValue {
            line: line.number,
            value: oci::printable(value),
            style: "new",
            reason,
        })?;
        rendered.push(format!("{indent}{key}: {value}"));
    }
    // A last line without a line ending keeps the file without one.
    let ends_file = line.next == line.end;
    let body: String = if ends_file {
        rendered.iter().map(|l| format!("{eol}{l}")).collect()
    } else {
        rendered.iter().map(|l| format!("{l}{eol}")).collect()
    };
    let at = if ends_file { line.end } else { line.next };
    let splice = |range, text, removes| Splice {
        range,
        text,
        line: line.number,
        adds: fields.len(),
        removes,
    };
    // Removing a last line without a line ending takes the line ending
    // before it, which is where these lines go: one splice does both, and
    // the file still ends without a line ending.
    if let Some(r) = removal.filter(|r| r.range.start < at && at <= r.range.end) {
        let body: String = rendered.iter().map(|l| format!("{eol}{l}")).collect();
        return Ok(splice(r.range.clone(), body, r.removes));
    }
    Ok(splice(at..at, body, None))
}

/// Removes line `i` with its line ending (or, on a last line without one,
/// with the previous line's ending).
fn remove(lines: &[Line], i: usize) -> Result<Splice, EditError> {
    let line = &lines[i];
    let is_first = matches!(&line.kind, Kind::Node(n) if n.dashes > 0);
    let continued = lines.get(i + 1).is_some_and(|l| {
        matches!(
            l.kind,
            Kind::Continuation | Kind::QuotedText | Kind::BlockText
        )
    });
    if is_first || continued {
        return Err(EditError::Kustomize {
            line: line.number,
            reason: "the image has no digest, but this digest cannot be removed as a line of its own; remove it by hand"
                .into(),
        });
    }
    let range = if line.next > line.end || i == 0 {
        line.start..line.next
    } else {
        lines[i - 1].end..line.end
    };
    Ok(Splice {
        range,
        text: String::new(),
        line: line.number,
        adds: 0,
        removes: Some(line.number),
    })
}
