//! The formatting corpus in `state-tests/yaml-corpus/`: real-world manifests
//! edited and compared byte for byte with hand-written expected files.
//!
//! Each case is `NAME.toml` (service, image, expected outcome, why), the
//! input `NAME.in.yaml` and, for a change, `NAME.expected.yaml`.

use std::fs;
use std::path::{Path, PathBuf};

use similar::{ChangeTag, TextDiff};

use super::{set_image, Edit, ImageRef};

struct Case {
    name: String,
    service: String,
    image: String,
    /// `changed`, `unchanged`, `no-marker` or `error`.
    expect: String,
    /// For `error`: a part of the message.
    error: Option<String>,
    input: String,
    expected: Option<String>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("state-tests/yaml-corpus")
}

fn cases() -> Vec<Case> {
    let mut names: Vec<String> = fs::read_dir(dir())
        .expect("corpus directory")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".toml")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names.iter().map(|name| read_case(name)).collect()
}

fn read_case(name: &str) -> Case {
    let path = |ext: &str| dir().join(format!("{name}.{ext}"));
    let meta = fs::read_to_string(path("toml")).expect("case toml");
    let value = toml_span::parse(&meta).unwrap_or_else(|e| panic!("{name}.toml: {e:?}"));
    let get = |key: &str| {
        value
            .pointer(&format!("/{key}"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let required =
        |key: &str| get(key).unwrap_or_else(|| panic!("{name}.toml: `{key}` is missing"));
    assert!(get("why").is_some(), "{name}.toml: say why the case exists");
    Case {
        name: name.to_owned(),
        service: required("service"),
        image: required("image"),
        expect: required("expect"),
        error: get("error"),
        input: fs::read_to_string(path("in.yaml")).expect("input file"),
        expected: fs::read_to_string(path("expected.yaml")).ok(),
    }
}

/// A unified diff with line endings made visible, so a lost `\r` shows.
fn diff(expected: &str, actual: &str) -> String {
    let visible = |s: &str| s.replace('\r', "␍").replace('\u{feff}', "<BOM>");
    let (e, a) = (visible(expected), visible(actual));
    TextDiff::from_lines(&e, &a)
        .unified_diff()
        .header("expected", "actual")
        .missing_newline_hint(true)
        .to_string()
}

fn run(case: &Case) -> Result<(), String> {
    let image = ImageRef::parse(&case.image).map_err(|e| e.to_string());
    let outcome =
        image.and_then(|i| set_image(&case.input, &case.service, &i).map_err(|e| e.to_string()));
    match (case.expect.as_str(), outcome) {
        ("changed", Ok(Edit::Changed(out))) => {
            let expected = case.expected.as_deref().ok_or("no .expected.yaml")?;
            if out == expected {
                Ok(())
            } else {
                Err(diff(expected, &out))
            }
        }
        ("unchanged", Ok(Edit::Unchanged)) | ("no-marker", Ok(Edit::NoMarker)) => Ok(()),
        ("error", Err(message)) => match &case.error {
            Some(part) if !message.contains(part.as_str()) => {
                Err(format!("error `{message}` lacks `{part}`"))
            }
            _ => Ok(()),
        },
        (expect, outcome) => Err(format!("expected {expect}, got {outcome:?}")),
    }
}

#[test]
fn corpus_edits_match_byte_for_byte() {
    let cases = cases();
    assert!(
        cases.len() >= 15,
        "the corpus has only {} cases",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run(c).err().map(|e| format!("── {} ──\n{e}", c.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} corpus case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Characters an image reference may contain.
fn image_bytes(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/@[]".contains(c))
}

/// Whether an old/new line pair differs only inside image bytes.
fn only_image_bytes(old: &str, new: &str) -> bool {
    let prefix = old
        .bytes()
        .zip(new.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let (old_rest, new_rest) = (&old[prefix..], &new[prefix..]);
    let suffix = old_rest
        .bytes()
        .rev()
        .zip(new_rest.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let changed_old = &old_rest[..old_rest.len() - suffix];
    let changed_new = &new_rest[..new_rest.len() - suffix];
    image_bytes(changed_old) && image_bytes(changed_new)
}

/// Guards the corpus itself, independently of the editor: an expected file
/// differs from its input only in marked or kustomize lines, only in image
/// bytes (or whole `newTag:`/`digest:` lines for kustomize).
#[test]
fn corpus_expected_files_change_only_image_bytes() {
    let kustomize_line = |l: &str| {
        let t = l.trim_start();
        t.starts_with("newTag: ") || t.starts_with("digest: ")
    };
    for case in cases() {
        let Some(expected) = &case.expected else {
            assert_ne!(case.expect, "changed", "{}: no expected file", case.name);
            continue;
        };
        let diff = TextDiff::from_lines(&case.input, expected);
        let mut touched = 0;
        for op in diff.grouped_ops(0).iter().flatten() {
            let changes: Vec<_> = diff.iter_changes(op).collect();
            let old: Vec<&str> = changes
                .iter()
                .filter(|c| c.tag() == ChangeTag::Delete)
                .map(|c| c.value())
                .collect();
            let new: Vec<&str> = changes
                .iter()
                .filter(|c| c.tag() == ChangeTag::Insert)
                .map(|c| c.value())
                .collect();
            touched += old.len().max(new.len());
            if old.len() == new.len() {
                for (o, n) in old.iter().zip(&new) {
                    let marked = o.contains("\"sluice\"") || kustomize_line(o);
                    let (o, n) = (
                        o.trim_end_matches(['\r', '\n']),
                        n.trim_end_matches(['\r', '\n']),
                    );
                    assert!(
                        marked,
                        "{}: changed line without a marker: {o:?}",
                        case.name
                    );
                    assert!(
                        only_image_bytes(o, n),
                        "{}: {o:?} -> {n:?} changes more than image bytes",
                        case.name
                    );
                }
            } else {
                // Kustomize insertions and removals: whole newTag/digest lines.
                let (short, long) = if old.len() < new.len() {
                    (&old, &new)
                } else {
                    (&new, &old)
                };
                let trim = |l: &&str| l.trim_end_matches(['\r', '\n']).to_owned();
                let short: Vec<String> = short.iter().map(trim).collect();
                let extra = long.iter().filter(|l| !short.contains(&trim(l)));
                for line in extra {
                    assert!(
                        kustomize_line(line),
                        "{}: inserted or removed line {line:?}",
                        case.name
                    );
                }
            }
        }
        assert!(touched > 0, "{}: expected file equals the input", case.name);
    }
}
