//! The YAML files an environment owns, read from a clone and confined to it.
//!
//! An environment's directory is searched recursively for `*.yaml` and
//! `*.yml`. A file is only ever read or written through a path that stays
//! inside the environment's directory after every symlink is resolved: a
//! symlink that leads elsewhere is listed as skipped, never followed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The manifest files of one environment directory.
#[derive(Debug, Default)]
pub struct EnvFiles {
    /// Path relative to the clone, and the text (current, with edits so far).
    pub files: Vec<ManifestFile>,
    /// Symlinks that lead out of the directory, relative to the clone.
    pub escapes: Vec<PathBuf>,
    /// Why the directory itself cannot be used, if it cannot.
    pub unusable: Option<String>,
    /// Files whose markers name a service, by service: which files an
    /// intent needs to look at, without searching every file per intent.
    by_service: HashMap<String, Vec<usize>>,
    /// Files that may concern any service: kustomizations (matched by
    /// repository) and files whose markers could not be told apart.
    wildcard: Vec<usize>,
}

#[derive(Debug)]
pub struct ManifestFile {
    pub path: PathBuf,
    /// The text, or why it cannot be read (not UTF-8, I/O error).
    pub text: Result<String, String>,
    /// Whether `text` differs from the file on disk.
    pub dirty: bool,
}

impl EnvFiles {
    /// Reads the directory `dir` (relative) of the clone at `root`.
    pub fn load(root: &Path, dir: &Path) -> EnvFiles {
        let mut out = EnvFiles::default();
        let real_root = match root.canonicalize() {
            Ok(r) => r,
            Err(e) => {
                out.unusable = Some(format!("cannot open the clone: {}", e.kind()));
                return out;
            }
        };
        let real_dir = match real_root.join(dir).canonicalize() {
            Ok(d) => d,
            Err(_) => {
                out.unusable = Some(format!(
                    "directory {} does not exist on the branch",
                    dir.display()
                ));
                return out;
            }
        };
        if !real_dir.starts_with(&real_root) {
            out.unusable = Some(format!(
                "directory {} leads out of the repository",
                dir.display()
            ));
            return out;
        }
        out.walk(&real_root, &real_dir, &real_dir);
        out.files.sort_by(|a, b| a.path.cmp(&b.path));
        out.index();
        out
    }

    fn index(&mut self) {
        for (i, f) in self.files.iter().enumerate() {
            let Ok(text) = &f.text else { continue };
            match marker_services(text) {
                Some(services) if !text.contains("images:") => {
                    for s in services {
                        let files = self.by_service.entry(s).or_default();
                        if files.last() != Some(&i) {
                            files.push(i);
                        }
                    }
                }
                _ => self.wildcard.push(i),
            }
        }
    }

    /// The files that may hold markers for `service`, in path order.
    pub fn candidates(&self, service: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.by_service.get(service).cloned().unwrap_or_default();
        out.extend_from_slice(&self.wildcard);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn walk(&mut self, root: &Path, top: &Path, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if kind.is_symlink() {
                // A symlink to a file inside the directory is visited as that
                // file; one that leads out is refused.
                let inside = path.canonicalize().is_ok_and(|real| real.starts_with(top));
                if !inside && is_manifest(&path) {
                    self.escapes.push(relative);
                }
            } else if kind.is_dir() {
                if entry.file_name() != ".git" {
                    self.walk(root, top, &path);
                }
            } else if kind.is_file() && is_manifest(&path) {
                let text = std::fs::read(&path)
                    .map_err(|e| format!("cannot read: {}", e.kind()))
                    .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8".to_owned()));
                self.files.push(ManifestFile {
                    path: relative,
                    text,
                    dirty: false,
                });
            }
        }
    }

    /// Writes every changed file back; returns their paths (relative to the clone).
    pub fn write_changed(&mut self, root: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for f in self.files.iter_mut().filter(|f| f.dirty) {
            if let Ok(text) = &f.text {
                std::fs::write(root.join(&f.path), text)?;
                f.dirty = false;
                written.push(f.path.clone());
            }
        }
        Ok(written)
    }
}

/// The services a text's markers name (`"sluice": "SERVICE[:FIELD]"`), or
/// `None` when some mention of `sluice` is not a marker this reading
/// understands; such a file is then searched for every service, and the
/// editor decides.
fn marker_services(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("sluice") {
        let rest = text[i..].strip_prefix("sluice\"")?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix(':')?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('"')?;
        let value = &rest[..rest.find('"')?];
        out.push(value.split(':').next()?.to_owned());
    }
    Some(out)
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_directory_are_never_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("secret.yaml"),
            "image: x # {\"sluice\": \"a\"}\n",
        )
        .unwrap();
        let repo = tempfile::tempdir().unwrap();
        let env = repo.path().join("envs/prod");
        std::fs::create_dir_all(env.join("sub")).unwrap();
        std::fs::write(env.join("sub/a.yaml"), "a: 1\n").unwrap();
        std::fs::write(env.join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), env.join("evil.yaml"))
            .unwrap();
        std::os::unix::fs::symlink("sub/a.yaml", env.join("alias.yaml")).unwrap();
        let files = EnvFiles::load(repo.path(), Path::new("envs/prod"));
        let paths: Vec<_> = files.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("envs/prod/sub/a.yaml")]);
        assert_eq!(files.escapes, [PathBuf::from("envs/prod/evil.yaml")]);
        assert!(files.unusable.is_none());
    }

    #[test]
    fn files_are_indexed_by_the_services_their_markers_name() {
        assert_eq!(
            marker_services("a: x # {\"sluice\": \"api\"}\nb: y # {\"sluice\":\"web:tag\"}\n"),
            Some(vec!["api".to_owned(), "web".to_owned()])
        );
        assert_eq!(marker_services("plain: yaml\n"), Some(vec![]));
        assert_eq!(marker_services("# managed by sluice\n"), None);
        assert_eq!(marker_services("a: x # {'sluice': 'api'}\n"), None);
    }

    #[test]
    fn a_directory_that_leads_out_is_unusable() {
        let outside = tempfile::tempdir().unwrap();
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("envs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), repo.path().join("envs/prod")).unwrap();
        let files = EnvFiles::load(repo.path(), Path::new("envs/prod"));
        assert!(files.unusable.unwrap().contains("leads out"));
        let missing = EnvFiles::load(repo.path(), Path::new("envs/dev"));
        assert!(missing.unusable.unwrap().contains("does not exist"));
    }
}
