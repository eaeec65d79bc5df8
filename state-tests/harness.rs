//! Golden replay scenarios: each directory under `state-tests/scenarios/`
//! holds a topology, an input file and the expected output, worked out by
//! hand from the operator rules (each scenario's `description` says why).
//!
//! Every scenario is run
//! - straight through on the in-memory backend and on RocksDB,
//! - split at every line: the first part, a commit, a fresh engine on the same
//!   state, then the rest (in-memory), and split in the middle across two
//!   processes' worth of RocksDB opens.
//!
//! Every run must print exactly the expected output. A scenario's optional
//! `[stored]` table gives, per operator, how many entries its store must hold
//! after the straight-through runs (state that must not pile up).
//!
//! Comparison: lines are compared as JSON values, except that an intent's
//! `intent_id` is checked apart (32 hex digits, equal across all runs), and
//! a dead letter's expected `error` only has to be a substring of the actual
//! error message (the field at fault), so messages can improve freely.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sluice::engine::{Engine, EngineOptions};
use sluice::replay::{replay, JsonLinesOutput, ReplayOptions};
use sluice::state::{MemoryBackend, RocksBackend, StateBackend};
use sluice::topology::Topology;

struct Scenario {
    name: String,
    topology: Arc<Topology>,
    input: String,
    expected: Vec<Value>,
    drain: bool,
    /// (operator, entries its store holds at the end).
    stored: Vec<(String, usize)>,
}

fn scenarios() -> Vec<Scenario> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("state-tests/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("state-tests/scenarios exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| load(d)).collect()
}

fn load(dir: &Path) -> Scenario {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let meta_text = std::fs::read_to_string(dir.join("scenario.toml"))
        .unwrap_or_else(|e| panic!("{name}: scenario.toml: {e}"));
    let meta =
        toml_span::parse(&meta_text).unwrap_or_else(|e| panic!("{name}: scenario.toml: {e}"));
    let drain = meta
        .pointer("/drain")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let stored = meta
        .pointer("/stored")
        .and_then(|v| v.as_table())
        .map(|t| {
            t.iter()
                .map(|(op, n)| {
                    let n = n.as_integer().and_then(|n| usize::try_from(n).ok());
                    (
                        op.name.to_string(),
                        n.unwrap_or_else(|| panic!("{name}: stored.{}", op.name)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let topo_path = dir.join(
        meta.pointer("/topology")
            .and_then(|v| v.as_str())
            .unwrap_or("topology.toml"),
    );
    let topology = Topology::load(&topo_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let input =
        std::fs::read_to_string(dir.join("input.jsonl")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = json_lines(
        &std::fs::read_to_string(dir.join("expected.jsonl"))
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    );
    Scenario {
        name,
        topology: Arc::new(topology),
        input,
        expected,
        drain,
        stored,
    }
}

/// Checks the scenario's `[stored]` counts against what `backend` holds.
fn check_stored(s: &Scenario, how: &str, mut backend: Box<dyn StateBackend>) {
    for (op, expected) in &s.stored {
        let store = backend.open_store(&format!("op/{op}")).unwrap();
        let mut count = 0;
        backend
            .scan(store, &mut |_, _| {
                count += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            count, *expected,
            "{} ({how}): entries in {op}'s store",
            s.name
        );
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// Runs `input` on an engine over `backend`; returns the output and the
/// backend for a later run. `line_offset` is the number of lines of the
/// scenario's input before `input`, so that intents' `caused_by` names the
/// same lines whatever the split.
fn run(
    topo: &Arc<Topology>,
    backend: Box<dyn StateBackend>,
    input: &str,
    drain: bool,
    line_offset: u64,
) -> (Vec<Value>, Box<dyn StateBackend>) {
    let mut engine = Engine::open(
        Arc::clone(topo),
        backend,
        &EngineOptions {
            cache_capacity: 1,
            ..EngineOptions::default()
        },
    )
    .expect("engine opens");
    let mut out = JsonLinesOutput::new(Vec::new(), topo.dead_letter_topic());
    // Commit after every line: every step round-trips through the backend.
    let opts = ReplayOptions {
        drain,
        commit_every: 1,
        line_offset,
    };
    replay(
        &mut engine,
        input.as_bytes(),
        "input.jsonl",
        &mut out,
        &opts,
        &mut (),
    )
    .expect("replay succeeds");
    let bytes = out.into_inner();
    (
        json_lines(&String::from_utf8(bytes).unwrap()),
        engine.into_backend().expect("engine closes"),
    )
}

/// Checks and removes intent ids; returns them in order.
fn strip_intent_ids(lines: &mut [Value]) -> Vec<String> {
    let mut ids = Vec::new();
    for line in lines {
        if let Some(obj) = line.get_mut("value").and_then(Value::as_object_mut) {
            if obj.contains_key("action") {
                let id = obj
                    .remove("intent_id")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .expect("intents carry an intent_id string");
                assert!(
                    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "bad intent_id {id}"
                );
                ids.push(id);
            }
        }
    }
    ids
}

/// Expected dead-letter errors are substrings: replace the actual message by
/// the expected one when it contains it.
fn match_errors(actual: &mut [Value], expected: &[Value]) {
    for (a, e) in actual.iter_mut().zip(expected) {
        let (Some(want), Some(got)) = (
            e.pointer("/value/error").and_then(Value::as_str),
            a.pointer("/value/error").and_then(Value::as_str),
        ) else {
            continue;
        };
        if got.contains(want) {
            a["value"]["error"] = Value::String(want.to_owned());
        }
    }
}

fn pretty(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn compare(s: &Scenario, how: &str, mut actual: Vec<Value>) -> Vec<String> {
    let ids = strip_intent_ids(&mut actual);
    match_errors(&mut actual, &s.expected);
    if actual != s.expected {
        let diff = similar::TextDiff::from_lines(&pretty(&s.expected), &pretty(&actual))
            .unified_diff()
            .header("expected", "actual")
            .to_string();
        panic!(
            "scenario {} ({how}) differs from expected.jsonl:\n{diff}",
            s.name
        );
    }
    ids
}

#[test]
fn there_are_enough_scenarios() {
    assert!(scenarios().len() >= 12);
}

#[test]
fn scenarios_match_straight_through_on_both_backends() {
    for s in scenarios() {
        let (mem, backend) = run(
            &s.topology,
            Box::new(MemoryBackend::new()),
            &s.input,
            s.drain,
            0,
        );
        let mem_ids = compare(&s, "memory", mem);
        check_stored(&s, "memory", backend);
        let dir = tempfile::tempdir().unwrap();
        let (rocks, backend) = run(
            &s.topology,
            Box::new(RocksBackend::open(dir.path()).unwrap()),
            &s.input,
            s.drain,
            0,
        );
        let rocks_ids = compare(&s, "rocksdb", rocks);
        check_stored(&s, "rocksdb", backend);
        assert_eq!(
            mem_ids, rocks_ids,
            "{}: intent ids differ between backends",
            s.name
        );
        let mut unique = mem_ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            mem_ids.len(),
            "{}: duplicate intent ids",
            s.name
        );
    }
}

#[test]
fn scenarios_match_when_split_at_every_line() {
    for s in scenarios() {
        let lines: Vec<&str> = s.input.split_inclusive('\n').collect();
        for cut in 0..=lines.len() {
            let (first, rest) = (lines[..cut].concat(), lines[cut..].concat());
            let (mut out, backend) = run(
                &s.topology,
                Box::new(MemoryBackend::new()),
                &first,
                false,
                0,
            );
            let (tail, _) = run(&s.topology, backend, &rest, s.drain, cut as u64);
            out.extend(tail);
            compare(&s, &format!("memory, split after line {cut}"), out);
        }
    }
}

#[test]
fn scenarios_match_when_split_across_rocksdb_reopens() {
    for s in scenarios() {
        let lines: Vec<&str> = s.input.split_inclusive('\n').collect();
        let cut = lines.len() / 2;
        let dir = tempfile::tempdir().unwrap();
        let (mut out, backend) = run(
            &s.topology,
            Box::new(RocksBackend::open(dir.path()).unwrap()),
            &lines[..cut].concat(),
            false,
            0,
        );
        drop(backend);
        let reopened = Box::new(RocksBackend::open(dir.path()).unwrap());
        let (tail, _) = run(
            &s.topology,
            reopened,
            &lines[cut..].concat(),
            s.drain,
            cut as u64,
        );
        out.extend(tail);
        compare(&s, &format!("rocksdb reopened after line {cut}"), out);
    }
}
