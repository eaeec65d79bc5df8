//! The committer's YAML marker editor.
//!
//! Input: a first line `SERVICE IMAGE`, then the file's text. After an edit,
//! the result is scanned again: editing it again must change nothing (so
//! the values read back as written), and, line by line, the only bytes that
//! changed are values that became a part of the image (whole reference,
//! repository, tag or digest, or nothing for a digest the image lacks), plus
//! the kustomize `newTag`/`digest` lines the editor documents inserting or
//! removing.

use std::collections::HashMap;

use similar::{capture_diff_slices, Algorithm, DiffOp};
use sluice::commit::edit::{set_image, Edit, ImageRef};

const DEFAULT_SERVICE: &str = "app";
const DEFAULT_IMAGE: &str = "reg.io/app:v2";

pub fn yaml_edit(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (header, text) = input.split_once('\n').unwrap_or((input, ""));
    let (service, reference) = header
        .split_once(' ')
        .unwrap_or((DEFAULT_SERVICE, DEFAULT_IMAGE));
    let Ok(image) = ImageRef::parse(reference) else {
        return;
    };
    let edited = match set_image(text, service, &image) {
        Ok(Edit::Changed(edited)) => edited,
        Ok(Edit::Unchanged | Edit::NoMarker) | Err(_) => return,
    };
    match set_image(&edited, service, &image) {
        Ok(Edit::Unchanged) => {}
        again => panic!("editing the result again gives {again:?}:\n{edited}"),
    }
    check_only_values_changed(text, &edited, &image);
}

/// The values a marked or kustomize line may now hold.
fn new_values(image: &ImageRef) -> Vec<String> {
    let mut values = vec![image.reference(), image.repository.clone()];
    values.extend(image.tag.clone());
    // A `:digest` marker is emptied when the image has none.
    values.push(image.digest.clone().unwrap_or_default());
    values
}

fn check_only_values_changed(old: &str, new: &str, image: &ImageRef) {
    // Lines without their endings: removing a last line takes the line
    // ending before it, inserting one after a last line adds one, and
    // neither is a change of a value.
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let values = new_values(image);
    // Line by line first, leaving out the kustomize lines the editor
    // inserted or removed: a diff may align an edited line with an equal
    // neighbour (`v1` edited to `v2` next to a line holding `v2`) and report
    // a removal plus an insertion where only a value changed.
    let count = |lines: &[&str], line: &str| lines.iter().filter(|l| **l == line).count();
    // How many copies of each line the edit removed (a kustomize `digest`)
    // or inserted (a `newTag` or `digest` holding the image's part): counted,
    // since an equal twin of a removed line may stay.
    let surplus = |from: &[&str], to: &[&str], kind: &dyn Fn(&str) -> bool| {
        let mut out: HashMap<String, usize> = HashMap::new();
        for line in from.iter().filter(|l| kind(l)) {
            let extra = count(from, line).saturating_sub(count(to, line));
            out.insert((*line).to_owned(), extra);
        }
        out
    };
    let gone = surplus(&old_lines, &new_lines, &|l| {
        kustomize_key(l) == Some("digest")
    });
    let inserted = surplus(&new_lines, &old_lines, &|l| {
        inserted_kustomize_line(l, image)
    });
    // A kustomize line that changed value (`newTag: v0` to `v3`) is neither
    // gone nor inserted: try each way of leaving them out.
    for (drop_gone, drop_inserted) in [(true, true), (true, false), (false, true), (false, false)] {
        let old_kept = leave_out(
            &old_lines,
            if drop_gone {
                gone.clone()
            } else {
                HashMap::new()
            },
        );
        let new_kept = leave_out(
            &new_lines,
            if drop_inserted {
                inserted.clone()
            } else {
                HashMap::new()
            },
        );
        if old_kept.len() != new_kept.len() {
            continue;
        }
        let positional = old_kept
            .iter()
            .zip(&new_kept)
            .filter(|(o, n)| o != n)
            .try_for_each(|(o, n)| changed_lines(&[o], &[n], &values, image));
        if positional.is_ok() {
            return;
        }
    }
    for op in capture_diff_slices(Algorithm::Myers, &old_lines, &new_lines) {
        let (removed, added) = match op {
            DiffOp::Equal { .. } => continue,
            DiffOp::Delete {
                old_index, old_len, ..
            } => (&old_lines[old_index..old_index + old_len], &[][..]),
            DiffOp::Insert {
                new_index, new_len, ..
            } => (&[][..], &new_lines[new_index..new_index + new_len]),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => (
                &old_lines[old_index..old_index + old_len],
                &new_lines[new_index..new_index + new_len],
            ),
        };
        if let Err(problem) = changed_lines(removed, added, &values, image) {
            panic!("{problem}");
        }
    }
}

/// `lines` without the first `n` copies of each line that `drop` maps to `n`.
fn leave_out<'a>(lines: &[&'a str], mut drop: HashMap<String, usize>) -> Vec<&'a str> {
    lines
        .iter()
        .copied()
        .filter(|l| match drop.get_mut(*l) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// Pairs removed and added lines in order: a pair must differ in one value
/// only; an unpaired removed line must be a kustomize `digest`, an unpaired
/// added one a kustomize `newTag` or `digest` holding the image's part.
fn changed_lines(
    removed: &[&str],
    added: &[&str],
    values: &[String],
    image: &ImageRef,
) -> Result<(), String> {
    let (mut r, mut a) = (0, 0);
    while r < removed.len() || a < added.len() {
        let (old, new) = (removed.get(r), added.get(a));
        if let (Some(old), Some(new)) = (old, new) {
            if only_a_value_differs(old, new, values) {
                r += 1;
                a += 1;
                continue;
            }
        }
        if old.is_some_and(|l| kustomize_key(l) == Some("digest")) {
            r += 1;
        } else if new.is_some_and(|l| inserted_kustomize_line(l, image)) {
            a += 1;
        } else {
            return Err(format!("more than a value changed:\n- {old:?}\n+ {new:?}"));
        }
    }
    Ok(())
}

/// `old` is `P + O + S` and `new` is `P + R + S`, where `O` reads as one
/// value (see [`reads_as_one_value`])
/// and `R` writes one of `values`: as it is, or, where the old value was
/// empty, double-quoted and with a separating blank.
fn only_a_value_differs(old: &str, new: &str, values: &[String]) -> bool {
    let (old_eol, new_eol) = (eol(old), eol(new));
    // Removing a last line without a line ending takes the one before it.
    if old_eol != new_eol && !new_eol.is_empty() {
        return false;
    }
    let (old, new) = (
        &old[..old.len() - old_eol.len()],
        &new[..new.len() - new_eol.len()],
    );
    for value in values {
        for rendering in renderings(value) {
            for (at, _) in new.match_indices(rendering.as_str()) {
                let (prefix, suffix) = (&new[..at], &new[at + rendering.len()..]);
                let Some(middle) = old
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                else {
                    continue;
                };
                let plain = rendering == *value;
                if (plain && reads_as_one_value(prefix, middle)) || middle.is_empty() {
                    return true;
                }
            }
        }
    }
    false
}

fn eol(line: &str) -> &str {
    &line[line.trim_end_matches(['\n', '\r']).len()..]
}

fn renderings(value: &str) -> Vec<String> {
    let quoted = format!("\"{value}\"");
    let mut out = Vec::new();
    for core in [value.to_owned(), quoted] {
        for (before, after) in [("", ""), (" ", ""), ("", " "), (" ", " ")] {
            out.push(format!("{before}{core}{after}"));
        }
    }
    out
}

/// A plain or quoted scalar's content, `middle`, found after `prefix`.
/// Inside quotes (`prefix` opened one) anything but a line break and an
/// unescaped closing quote is content, blanks and ` #` included. A plain
/// scalar has no line break, no comment, no quote at its start and no YAML
/// blank (space, tab) at its edges; it may end with a quote (`it's'`).
/// Other control characters are the value's: YAML forbids them, and the
/// scanner reads them as content.
fn reads_as_one_value(prefix: &str, middle: &str) -> bool {
    if middle.contains(['\n', '\r']) {
        return false;
    }
    match prefix.chars().last() {
        Some(quote @ ('"' | '\'')) => !closes_early(quote, middle),
        _ => {
            !middle.contains(" #")
                && !middle.starts_with(['#', '"', '\''])
                && middle.trim_matches([' ', '\t']) == middle
        }
    }
}

/// Whether a scalar opened with `quote` would end inside `middle`: at a `"`
/// not escaped by a backslash, or at a `'` not doubled.
fn closes_early(quote: char, middle: &str) -> bool {
    if quote == '\'' {
        return middle.replace("''", "").contains('\'');
    }
    let mut escaped = false;
    for c in middle.chars() {
        match c {
            '"' if !escaped => return true,
            '\\' => escaped = !escaped,
            _ => escaped = false,
        }
    }
    false
}

/// The key of a `key: value` line, without indentation or a leading dash.
fn kustomize_key(line: &str) -> Option<&str> {
    let body = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = body.split_once(':')?;
    // YAML blanks may stand between a key and its colon (`digest\t: x`).
    Some(key.trim_end_matches([' ', '\t']))
}

fn inserted_kustomize_line(line: &str, image: &ImageRef) -> bool {
    let value = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    match kustomize_key(line) {
        Some("newTag") => image.tag.as_deref() == Some(value),
        Some("digest") => image.digest.as_deref() == Some(value),
        _ => false,
    }
}
