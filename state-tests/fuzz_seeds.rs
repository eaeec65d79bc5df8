//! The fuzz targets' seeds and every fixed crash reproducer, run through the
//! same checks as the fuzz targets (`state-tests/fuzz/src/`), on the stable
//! toolchain, so that CI keeps them passing without cargo-fuzz.
//!
//! Seeds live in `state-tests/fuzz/seeds/TARGET/`, reproducers of fixed
//! crashes in `state-tests/fuzz/regressions/TARGET/`.

#[path = "fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("state-tests/fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files
}

/// Runs `check` on every file; returns the files it failed on, with why.
fn failures(check: fn(&[u8]), files: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for file in files {
        let data = std::fs::read(file).expect("readable input");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", file.display()));
        }
    }
    failed
}

#[test]
fn every_target_has_seeds_and_they_pass_its_checks() {
    let mut failed = Vec::new();
    for (target, check) in checks::TARGETS {
        let seeds = files("seeds", target);
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        failed.extend(failures(*check, &seeds));
    }
    assert!(
        failed.is_empty(),
        "seeds failing their checks:\n{}",
        failed.join("\n")
    );
}

#[test]
fn fixed_crash_reproducers_pass_their_checks() {
    let mut failed = Vec::new();
    for (target, check) in checks::TARGETS {
        failed.extend(failures(*check, &files("regressions", target)));
    }
    assert!(
        failed.is_empty(),
        "reproducers failing again:\n{}",
        failed.join("\n")
    );
}
