//! `[[environments]]`: the branch and directory of each environment, checked so
//! that no directory escapes the repository or overlaps another on its branch.

use std::path::{Component, Path, PathBuf};

use super::Environment;
use crate::topology::diag::Pos;
use crate::topology::reader::TableReader;

pub(super) fn read_environments(root: &mut TableReader<'_, '_, '_>) -> Option<Vec<Environment>> {
    let diags = root.diags();
    let tables = root.tables("environments");
    if tables.is_empty() {
        diags.error(
            root.pos(),
            "environments",
            "at least one [[environments]] entry (name, branch, directory) is needed",
        );
        return None;
    }
    let mut out: Vec<Environment> = Vec::new();
    let mut ok = true;
    for (path, value) in tables {
        let Some(mut t) = TableReader::new(diags, value, path) else {
            ok = false;
            continue;
        };
        let (name_key, dir_key) = (t.key_path("name"), t.key_path("directory"));
        let env = read_environment(&mut t);
        t.finish();
        let Some((env, name_pos, dir_pos)) = env else {
            ok = false;
            continue;
        };
        if out.iter().any(|e| e.name == env.name) {
            let msg = format!("environment `{}` is defined twice", env.name);
            diags.error(name_pos, name_key, msg);
            ok = false;
        } else if let Some(other) = out
            .iter()
            .find(|e| e.branch == env.branch && overlap(e, &env))
        {
            let msg = format!(
                "overlaps the directory of environment `{}` on branch {}; each environment owns its directory",
                other.name, env.branch
            );
            diags.error(dir_pos, dir_key, msg);
            ok = false;
        } else {
            out.push(env);
        }
    }
    ok.then_some(out)
}

/// Whether one directory contains the other.
fn overlap(a: &Environment, b: &Environment) -> bool {
    let parts = |e: &Environment| -> Vec<std::ffi::OsString> {
        e.directory
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_owned()),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    a.iter().zip(&b).all(|(x, y)| x == y)
}

fn read_environment(t: &mut TableReader<'_, '_, '_>) -> Option<(Environment, Pos, Pos)> {
    let name = t.required_string("name");
    let branch = t.required_string("branch");
    let directory = t.required_string("directory");
    let (name, branch, directory) = (name?, branch?, directory?);
    let diags = t.diags();
    let mut ok = true;
    if !crate::record::oci::is_name(&name.value) {
        diags.error(
            name.pos,
            t.key_path("name"),
            "letters, digits, `.`, `_` and `-`, starting with a letter or digit",
        );
        ok = false;
    }
    if let Err(e) = check_branch(&branch.value) {
        diags.error(branch.pos, t.key_path("branch"), e);
        ok = false;
    }
    if let Err(e) = check_directory(&directory.value) {
        diags.error(directory.pos, t.key_path("directory"), e);
        ok = false;
    }
    ok.then(|| {
        (
            Environment {
                name: name.value,
                branch: branch.value,
                directory: PathBuf::from(directory.value),
            },
            name.pos,
            directory.pos,
        )
    })
}

/// The rules of `git check-ref-format --branch` that matter here, so a
/// branch name can never be read as an option or a revision range.
fn check_branch(branch: &str) -> Result<(), String> {
    let bad = branch.is_empty()
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err("not a valid branch name".into())
    } else {
        Ok(())
    }
}

/// A directory inside the repository: relative, no `..`, not `.git`.
fn check_directory(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Err("must not be empty (use \".\" for the whole repository)".into());
    }
    for c in Path::new(dir).components() {
        match c {
            Component::Normal(part) if part == ".git" => {
                return Err("must not point into .git".into())
            }
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("must not contain `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the repository root".into())
            }
        }
    }
    Ok(())
}
