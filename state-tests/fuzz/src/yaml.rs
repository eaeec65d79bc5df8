//! The committer's YAML marker editor.
//!
//! Input: a first line `SERVICE IMAGE`, then the file's text. After an edit,
//! the result is scanned again: editing it again must change nothing (so
//! the values read back as written), and, line by line, the only bytes that
//! changed are values that became a part of the image (whole reference,
//! repository, tag or digest, or nothing for a digest the image lacks), plus
//! the kustomize `newTag`/`digest` lines the editor documents inserting or
//! removing.

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
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let values = new_values(image);
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
        check_changed_lines(removed, added, &values, image);
    }
}

/// Pairs removed and added lines in order: a pair must differ in one value
/// only; an unpaired removed line must be a kustomize `digest`, an unpaired
/// added one a kustomize `newTag` or `digest` holding the image's part.
fn check_changed_lines(removed: &[&str], added: &[&str], values: &[String], image: &ImageRef) {
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
            panic!("more than a value changed:\n- {old:?}\n+ {new:?}");
        }
    }
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

/// A plain or quoted scalar's content, `middle`, found after `prefix`: no
/// line break and no comment in it, no YAML blank (space, tab) at its
/// edges (other control characters are the value's: YAML forbids them, and
/// the scanner reads them as content), no quote at its
/// start, and no closing quote at its end when `prefix` opened one (a
/// plain scalar may end with a quote: `it's'`).
fn reads_as_one_value(prefix: &str, middle: &str) -> bool {
    let quote = |c: char| c == '"' || c == '\'';
    let opened = prefix.chars().last().filter(|&c| quote(c));
    !middle.contains(['\n', '\r'])
        && !middle.contains(" #")
        && !middle.starts_with(['#', '"', '\''])
        && middle.trim_matches([' ', '\t']) == middle
        && !opened.is_some_and(|q| middle.ends_with(q))
}

/// The key of a `key: value` line, without indentation or a leading dash.
fn kustomize_key(line: &str) -> Option<&str> {
    let body = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = body.split_once(':')?;
    Some(key)
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
