//! `sluice replay --diff`: how a topology's intents differ from a baseline's.
//!
//! Intents are compared per (service, environment), in emission order. The
//! two sequences are aligned on what each intent asks for (action, image,
//! previous image) with a Myers diff, so one intent more or less early on does
//! not make every later one look changed. Aligned intents that differ in time
//! or reason are *changed*; the rest are *missing* (only in the baseline) or
//! *extra* (only in the new output).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use similar::{capture_diff_slices, Algorithm, DiffOp};

/// The parts of an intent line a diff looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentLine {
    pub ts: u64,
    pub service: String,
    pub environment: String,
    pub action: String,
    pub image: String,
    pub previous_image: Option<String>,
    pub reason: String,
    /// The gate's one-word reason (empty in outputs older than reason codes).
    pub reason_code: String,
}

impl IntentLine {
    /// What the intent asks for: the alignment key.
    fn ask(&self) -> (&str, &str, Option<&str>) {
        (&self.action, &self.image, self.previous_image.as_deref())
    }

    fn describe(&self) -> String {
        format!(
            "{} {} {} (previous {})",
            self.ts,
            self.action,
            self.image,
            self.previous_image.as_deref().unwrap_or("none")
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct DiffInputError {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

#[derive(Deserialize)]
struct Line {
    ts: u64,
    value: serde_json::Value,
}

/// Reads the intents of a replay output (other records and dead letters are skipped).
pub fn read_intents(text: &str, file: &str) -> Result<Vec<IntentLine>, DiffInputError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |reason: String| DiffInputError {
            file: file.to_owned(),
            line: i as u64 + 1,
            reason,
        };
        let line: Line =
            serde_json::from_str(raw).map_err(|e| err(format!("not a replay output line: {e}")))?;
        let v = &line.value;
        let text = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let (Some(action), Some(service), Some(environment), Some(image)) = (
            text("action"),
            text("service"),
            text("environment"),
            text("image"),
        ) else {
            continue;
        };
        out.push(IntentLine {
            ts: line.ts,
            service,
            environment,
            action,
            image,
            previous_image: text("previous_image"),
            reason: text("reason").unwrap_or_default(),
            reason_code: text("reason_code").unwrap_or_default(),
        });
    }
    Ok(out)
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Missing(IntentLine),
    Extra(IntentLine),
    Changed {
        before: IntentLine,
        after: IntentLine,
    },
}

/// The differences, by `service/environment`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub by_key: BTreeMap<String, Vec<Change>>,
    pub baseline_intents: usize,
    pub new_intents: usize,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn count(&self, pick: fn(&Change) -> bool) -> usize {
        self.by_key.values().flatten().filter(|c| pick(c)).count()
    }

    /// A report for people: one block per key, then a summary line.
    pub fn render(&self, baseline: &str, new: &str) -> String {
        let mut out = format!("--- {baseline}\n+++ {new}\n");
        for (key, changes) in &self.by_key {
            let _ = writeln!(out, "{key}:");
            for c in changes {
                let _ = match c {
                    Change::Missing(i) => writeln!(out, "  - {}  [missing]", i.describe()),
                    Change::Extra(i) => writeln!(out, "  + {}  [extra]", i.describe()),
                    Change::Changed { before, after } => {
                        writeln!(
                            out,
                            "  ~ {} {}: {}",
                            after.action,
                            after.image,
                            changed_fields(before, after)
                        )
                    }
                };
            }
        }
        let _ = writeln!(
            out,
            "{} missing, {} extra, {} changed ({} baseline intents, {} new)",
            self.count(|c| matches!(c, Change::Missing(_))),
            self.count(|c| matches!(c, Change::Extra(_))),
            self.count(|c| matches!(c, Change::Changed { .. })),
            self.baseline_intents,
            self.new_intents
        );
        out
    }
}

fn changed_fields(before: &IntentLine, after: &IntentLine) -> String {
    let mut parts = Vec::new();
    if before.ts != after.ts {
        parts.push(format!("ts {} -> {}", before.ts, after.ts));
    }
    if before.reason != after.reason {
        parts.push(format!("reason {:?} -> {:?}", before.reason, after.reason));
    }
    if before.reason_code != after.reason_code {
        parts.push(format!(
            "reason_code {} -> {}",
            before.reason_code, after.reason_code
        ));
    }
    parts.join(", ")
}

fn group(intents: &[IntentLine]) -> BTreeMap<String, Vec<&IntentLine>> {
    let mut map: BTreeMap<String, Vec<&IntentLine>> = BTreeMap::new();
    for i in intents {
        map.entry(format!("{}/{}", i.service, i.environment))
            .or_default()
            .push(i);
    }
    map
}

/// Compares the intents of a new output with a baseline's.
pub fn diff(baseline: &[IntentLine], new: &[IntentLine]) -> Diff {
    let (old_groups, new_groups) = (group(baseline), group(new));
    let mut keys: Vec<&String> = old_groups.keys().chain(new_groups.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut result = Diff {
        baseline_intents: baseline.len(),
        new_intents: new.len(),
        ..Diff::default()
    };
    for key in keys {
        let old = old_groups.get(key).map_or(&[][..], Vec::as_slice);
        let new = new_groups.get(key).map_or(&[][..], Vec::as_slice);
        let changes = diff_key(old, new);
        if !changes.is_empty() {
            result.by_key.insert(key.clone(), changes);
        }
    }
    result
}

fn diff_key(old: &[&IntentLine], new: &[&IntentLine]) -> Vec<Change> {
    let old_asks: Vec<_> = old.iter().map(|i| i.ask()).collect();
    let new_asks: Vec<_> = new.iter().map(|i| i.ask()).collect();
    let mut changes = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, &old_asks, &new_asks) {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                for k in 0..len {
                    let (before, after) = (old[old_index + k], new[new_index + k]);
                    if before.ts != after.ts
                        || before.reason != after.reason
                        || before.reason_code != after.reason_code
                    {
                        changes.push(Change::Changed {
                            before: before.clone(),
                            after: after.clone(),
                        });
                    }
                }
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                changes.extend(
                    old[old_index..old_index + old_len]
                        .iter()
                        .map(|i| Change::Missing((*i).clone())),
                );
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                changes.extend(
                    new[new_index..new_index + new_len]
                        .iter()
                        .map(|i| Change::Extra((*i).clone())),
                );
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                changes.extend(
                    old[old_index..old_index + old_len]
                        .iter()
                        .map(|i| Change::Missing((*i).clone())),
                );
                changes.extend(
                    new[new_index..new_index + new_len]
                        .iter()
                        .map(|i| Change::Extra((*i).clone())),
                );
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: u64, service: &str, action: &str, image: &str, previous: Option<&str>) -> String {
        serde_json::json!({"topic": "deploy-intents", "ts": ts, "key": format!("{service}/prod"), "value": {
            "action": action, "service": service, "environment": "prod", "image": image,
            "previous_image": previous, "reason": "new image", "reason_code": "new_image",
            "intent_id": "x", "caused_by": [{"line": 1}]}})
        .to_string()
    }

    fn intents(lines: &[String]) -> Vec<IntentLine> {
        read_intents(&lines.join("\n"), "f").unwrap()
    }

    #[test]
    fn identical_outputs_have_no_diff_and_other_records_are_ignored() {
        let mut a = vec![line(1, "a", "deploy", "a:v1", None)];
        let b = a.clone();
        a.push(r#"{"topic":"t.dead-letter","ts":2,"key":null,"value":{"error":"e","node":"n","topic":"x","value":1}}"#.into());
        let d = diff(&intents(&a), &intents(&b));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn an_early_extra_intent_does_not_mark_later_ones_changed() {
        let base = vec![
            line(10, "a", "deploy", "a:v1", None),
            line(20, "a", "deploy", "a:v2", Some("a:v1")),
        ];
        let new = vec![
            line(5, "a", "hold", "a:v0", None),
            line(10, "a", "deploy", "a:v1", None),
            line(25, "a", "deploy", "a:v2", Some("a:v1")),
            line(30, "b", "deploy", "b:v1", None),
        ];
        let d = diff(&intents(&base), &intents(&new));
        let a = &d.by_key["a/prod"];
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(matches!(&a[0], Change::Extra(i) if i.action == "hold"));
        assert!(
            matches!(&a[1], Change::Changed { before, after } if before.ts == 20 && after.ts == 25)
        );
        assert!(matches!(&d.by_key["b/prod"][..], [Change::Extra(_)]));
        let report = d.render("base.jsonl", "new.toml");
        assert!(report.contains("  ~ deploy a:v2: ts 20 -> 25"), "{report}");
        assert!(
            report.ends_with("0 missing, 2 extra, 1 changed (2 baseline intents, 4 new)\n"),
            "{report}"
        );
    }

    #[test]
    fn a_changed_reason_code_is_a_change() {
        let base = vec![line(10, "a", "deploy", "a:v1", None)];
        let new = vec![line(10, "a", "deploy", "a:v1", None).replace("new_image", "promoted")];
        let d = diff(&intents(&base), &intents(&new));
        let report = d.render("base.jsonl", "new.toml");
        assert!(
            report.contains("  ~ deploy a:v1: reason_code new_image -> promoted"),
            "{report}"
        );
    }

    #[test]
    fn missing_intents_are_reported() {
        let base = vec![
            line(10, "a", "deploy", "a:v1", None),
            line(20, "a", "rollback", "a:v0", Some("a:v1")),
        ];
        let new = vec![line(10, "a", "deploy", "a:v1", None)];
        let d = diff(&intents(&base), &intents(&new));
        assert!(matches!(&d.by_key["a/prod"][..], [Change::Missing(i)] if i.action == "rollback"));
    }

    #[test]
    fn a_broken_baseline_names_file_and_line() {
        let err = read_intents("{\"ts\":1,\"value\":{}}\nnope\n", "base.jsonl").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("base.jsonl:2: not a replay output line"),
            "{err}"
        );
    }
}
