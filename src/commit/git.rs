//! Repository operations through the `git` command line.
//!
//! Shelling out to git (rather than linking libgit2) adds no C build, and
//! gives every transport (file, ssh, https, git), credential mechanism and
//! signing format (`gpg.format` ssh or openpgp) exactly as users know them.
//! The cost, a few milliseconds per process, is paid per batch, not per intent.
//!
//! Credentials never reach argv, the clone's config or a message: a token
//! goes in an `http.extraHeader` passed through `GIT_CONFIG_*` variables, an
//! SSH key path in `GIT_SSH_COMMAND`; everything git prints is scrubbed.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::LazyLock;

use regex::Regex;

use super::batch::Recorded;
use super::config::{Author, Credentials, RepositoryConfig, Signing, SigningFormat};
use super::index::{log_format, now_secs, CommitRef, IndexLimits, Newest, TrailerIndex};
use crate::topology::kafka::Secret;

/// A git operation that failed. Messages are scrubbed of credentials.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git {op}: {cause}")]
    Spawn { op: String, cause: std::io::Error },
    #[error("git {op} failed: {message}")]
    Failed { op: String, message: String },
    #[error("the token variable {0} is not set (or not UTF-8)")]
    MissingToken(String),
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// How to reach the remote: URL, credentials and identity, applied to
/// every git process.
pub struct Remote {
    url: String,
    env: Vec<(String, OsString)>,
    /// Values that must never appear in a message.
    secrets: Vec<Secret>,
    signing: Option<Signing>,
}

impl Remote {
    /// Resolves the credentials (reads the token variable) once, up front.
    pub fn new(
        repo: &RepositoryConfig,
        author: &Author,
        signing: Option<&Signing>,
    ) -> Result<Remote, GitError> {
        let mut env: Vec<(String, OsString)> = vec![
            // Never wait for a password on a terminal nobody watches.
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("SSH_ASKPASS_REQUIRE".into(), "never".into()),
            ("GCM_INTERACTIVE".into(), "never".into()),
            ("LC_ALL".into(), "C".into()),
            ("GIT_AUTHOR_NAME".into(), author.name.clone().into()),
            ("GIT_AUTHOR_EMAIL".into(), author.email.clone().into()),
            ("GIT_COMMITTER_NAME".into(), author.name.clone().into()),
            ("GIT_COMMITTER_EMAIL".into(), author.email.clone().into()),
        ];
        // Hooks and a user's signing habits must not change what is committed.
        let mut config: Vec<(String, String)> = vec![
            ("core.hooksPath".into(), "/dev/null".into()),
            ("commit.gpgSign".into(), "false".into()),
            ("core.autocrlf".into(), "false".into()),
            ("credential.helper".into(), String::new()),
            // No garbage collection inside a commit or fetch, where it would
            // add seconds to a push now and then: see BranchClone::pushed.
            ("gc.auto".into(), "0".into()),
            ("maintenance.auto".into(), "false".into()),
        ];
        let mut secrets = Vec::new();
        match &repo.credentials {
            Credentials::None => {}
            Credentials::SshKeyFile(key) => env.push((
                "GIT_SSH_COMMAND".into(),
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes",
                    shell_quote(&key.display().to_string())
                )
                .into(),
            )),
            Credentials::SshAgent => {
                env.push(("GIT_SSH_COMMAND".into(), "ssh -o BatchMode=yes".into()))
            }
            Credentials::Token { env: var, username } => {
                let token = std::env::var(var).map_err(|_| GitError::MissingToken(var.clone()))?;
                let basic = base64(format!("{username}:{token}").as_bytes());
                config.push((
                    "http.extraHeader".into(),
                    format!("Authorization: Basic {basic}"),
                ));
                secrets.push(Secret::new(token));
                secrets.push(Secret::new(basic));
            }
        }
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string().into()));
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key.into()));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value.into()));
        }
        Ok(Remote {
            url: repo.url.clone(),
            env,
            secrets,
            signing: signing.cloned(),
        })
    }

    /// A git process in `dir` with this remote's environment.
    fn git(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs git, returning stdout; a failure carries git's scrubbed stderr.
    fn run(
        &self,
        dir: &Path,
        op: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, GitError> {
        let out = self.output(dir, op, args, input)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failure(op, &out))
        }
    }

    fn output(
        &self,
        dir: &Path,
        op: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Output, GitError> {
        let spawn_err = |cause| GitError::Spawn {
            op: op.into(),
            cause,
        };
        let mut cmd = self.git(dir);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdin = child.stdin.take();
        // Written from another thread, so that git can never block on a
        // full stdout while we block on a full stdin.
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || match (input, stdin) {
                (Some(bytes), Some(mut pipe)) => pipe.write_all(bytes),
                _ => Ok(()),
            });
            let output = child.wait_with_output().map_err(spawn_err)?;
            match writer.join() {
                // git stopped reading: its status and stderr say why.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(output),
                Ok(Err(e)) => Err(spawn_err(e)),
                Ok(Ok(())) | Err(_) => Ok(output),
            }
        })
    }

    fn failure(&self, op: &str, out: &Output) -> GitError {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        GitError::Failed {
            op: op.into(),
            message: self.scrub(&last_lines(&text, 6)),
        }
    }

    /// Removes credentials from text git printed: the secrets themselves
    /// and any `user:password@` in a URL.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = scrub_userinfo(text);
        for s in &self.secrets {
            if !s.expose().is_empty() {
                out = out.replace(s.expose(), "***");
            }
        }
        out
    }

    /// The URL for messages: without any user information.
    pub fn shown_url(&self) -> String {
        scrub_userinfo(&self.url)
    }
}

static USERINFO: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@").expect("valid regex"));

fn scrub_userinfo(text: &str) -> String {
    USERINFO.replace_all(text, "${1}***@").into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Pushed,
    /// The remote branch moved (non-fast-forward, or a concurrent update
    /// won the ref lock): fetch, rebuild, try again.
    Rejected(String),
}

/// A private clone holding one branch, owned by this committer.
pub struct BranchClone<'r> {
    remote: &'r Remote,
    dir: PathBuf,
    branch: String,
    /// The trailers of the branch's recent commits up to `indexed_tip`.
    index: TrailerIndex,
    indexed_tip: String,
    /// Pushes since the clone's objects were last packed.
    pushes_since_gc: u32,
}

/// How many pushes go by between two `git gc --auto` runs on a clone.
const GC_EVERY: u32 = 50;

impl<'r> BranchClone<'r> {
    /// Opens the clone under `work_dir` (cloning it the first time) and
    /// brings it to the remote's tip, dropping any commit a crash left unpushed.
    pub fn open(
        remote: &'r Remote,
        work_dir: &Path,
        branch: &str,
        limits: IndexLimits,
    ) -> Result<Self, GitError> {
        let dir = work_dir.join("branches").join(dir_name(branch));
        let mut clone = BranchClone {
            remote,
            dir,
            branch: branch.into(),
            index: TrailerIndex::new(limits),
            indexed_tip: String::new(),
            pushes_since_gc: 0,
        };
        if clone.dir.join(".git").is_dir() {
            clone.recover()?;
        } else {
            clone.clone_fresh(work_dir)?;
        }
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", clone.branch);
        clone.run(
            "fetch",
            &["fetch", "--quiet", "--no-tags", "origin", &refspec],
        )?;
        clone.checkout_clean()?;
        let tip = clone.head()?;
        clone.index_trailers(&tip)?;
        Ok(clone)
    }

    fn clone_fresh(&self, work_dir: &Path) -> Result<(), GitError> {
        let parent = self.dir.parent().unwrap_or(work_dir);
        std::fs::create_dir_all(parent).map_err(|cause| GitError::Io {
            path: parent.display().to_string(),
            cause,
        })?;
        let _ = std::fs::remove_dir_all(&self.dir);
        let target = self.dir.display().to_string();
        let args = [
            "clone",
            "--quiet",
            "--no-tags",
            "--single-branch",
            "--branch",
            &self.branch,
            "--",
            &self.remote.url,
            &target,
        ];
        self.remote.run(parent, "clone", &args, None).map(drop)
    }

    /// A previous run may have been killed inside a git command: remove its
    /// lock files (this process holds the work directory's lock) and point
    /// the clone at the configured URL.
    fn recover(&self) -> Result<(), GitError> {
        for lock in ["index.lock", "HEAD.lock", "shallow.lock"] {
            let _ = std::fs::remove_file(self.dir.join(".git").join(lock));
        }
        let _ = std::fs::remove_file(
            self.dir
                .join(".git/refs/heads")
                .join(format!("{}.lock", self.branch)),
        );
        self.run("remote", &["remote", "set-url", "origin", &self.remote.url])
            .map(drop)
    }

    fn run(&self, op: &str, args: &[&str]) -> Result<String, GitError> {
        self.remote.run(&self.dir, op, args, None)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// What the branch's trailers record, for planning.
    pub fn recorded(&self) -> &dyn Recorded {
        &self.index
    }

    /// How many intent ids the index holds.
    pub fn indexed_ids(&self) -> usize {
        self.index.len()
    }

    /// The newest indexed commit whose trailers list `intent_id`.
    pub fn commit_of(&self, intent_id: &str) -> Option<CommitRef> {
        self.index.commit_of(intent_id)
    }

    /// Fetches the branch, resets the work tree to it and reads the trailers
    /// of every commit not seen before.
    pub fn fetch(&mut self) -> Result<(), GitError> {
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        self.run(
            "fetch",
            &["fetch", "--quiet", "--no-tags", "origin", &refspec],
        )?;
        self.reset_to_remote()?;
        let tip = self.head()?;
        self.index_trailers(&tip)
    }

    /// Drops local commits and edits: back to the last fetched remote tip.
    /// The committer only ever rewrites tracked files, so no clean is needed.
    pub fn reset_to_remote(&self) -> Result<(), GitError> {
        let remote_ref = format!("refs/remotes/origin/{}", self.branch);
        self.run("reset", &["reset", "--quiet", "--hard", &remote_ref])
            .map(drop)
    }

    /// Puts the clone on its branch with a clean work tree, whatever state a
    /// killed run left it in.
    fn checkout_clean(&self) -> Result<(), GitError> {
        let remote_ref = format!("refs/remotes/origin/{}", self.branch);
        self.run(
            "checkout",
            &[
                "checkout",
                "--quiet",
                "--force",
                "-B",
                &self.branch,
                &remote_ref,
            ],
        )?;
        self.run("clean", &["clean", "--quiet", "-d", "--force"])
            .map(drop)
    }

    /// HEAD with its committer time, as the index reads commits from the
    /// log (`now` if git prints no time).
    fn head_commit(&self, now: i64) -> Result<CommitRef, GitError> {
        let out = self.run("log", &["log", "-1", "--format=%H %ct", "HEAD"])?;
        let (sha, time) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
        Ok(CommitRef {
            sha: sha.into(),
            time: time.parse().unwrap_or(now),
        })
    }

    pub fn head(&self) -> Result<String, GitError> {
        Ok(self
            .run("rev-parse", &["rev-parse", "HEAD"])?
            .trim()
            .to_owned())
    }

    /// Reads the trailers of the commits up to `tip` not indexed yet, at
    /// most the index's limits' worth (see [`super::index`]).
    fn index_trailers(&mut self, tip: &str) -> Result<(), GitError> {
        if tip == self.indexed_tip {
            return Ok(());
        }
        let limits = self.index.limits();
        let now = now_secs();
        let format = log_format();
        let max_count = format!("--max-count={}", limits.max_commits);
        let since = format!(
            "--since=@{}",
            now.saturating_sub(limits.max_age.as_secs() as i64)
        );
        let range;
        let mut args = vec!["log", &format, &max_count, &since, tip];
        // Only new commits, unless the branch was rewritten under us.
        if !self.indexed_tip.is_empty() && self.is_ancestor(&self.indexed_tip, tip)? {
            range = format!("^{}", self.indexed_tip);
            args.push(&range);
        } else {
            self.index.clear();
        }
        let log = self.run("log", &args)?;
        self.index.add_log(&log, now);
        self.indexed_tip = tip.to_owned();
        Ok(())
    }

    fn is_ancestor(&self, a: &str, b: &str) -> Result<bool, GitError> {
        let out = self.remote.output(
            &self.dir,
            "merge-base",
            &["merge-base", "--is-ancestor", a, b],
            None,
        )?;
        Ok(out.status.success())
    }

    /// Commits the edited `paths` (relative to the clone, all tracked) with
    /// `message`, in one git process (`commit --only`); with no paths, an
    /// empty commit that only carries the message's trailers.
    pub fn commit(&self, paths: &[PathBuf], message: &str) -> Result<(), GitError> {
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = &self.remote.signing {
            let format = match s.format {
                SigningFormat::Ssh => "ssh",
                SigningFormat::Openpgp => "openpgp",
            };
            args.extend(["-c".into(), format!("gpg.format={format}")]);
            args.extend(["-c".into(), format!("user.signingKey={}", s.key)]);
        }
        args.extend(["commit", "--quiet", "--no-verify", "--file=-"].map(String::from));
        if self.remote.signing.is_some() {
            args.push("--gpg-sign".into());
        }
        if paths.is_empty() {
            // A record-only commit: trailers, no file change.
            args.push("--allow-empty".into());
        } else {
            args.push("--only".into());
        }
        args.push("--".into());
        // Literal paths: a file name must never be read as a glob.
        args.extend(paths.iter().map(|p| format!(":(literal){}", p.display())));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.remote
            .run(&self.dir, "commit", &args, Some(message.as_bytes()))
            .map(drop)
    }

    /// Pushes HEAD to the branch, fast-forward only (never `--force`).
    pub fn push(&self) -> Result<PushOutcome, GitError> {
        let refspec = format!("HEAD:refs/heads/{}", self.branch);
        let out = self.remote.output(
            &self.dir,
            "push",
            &["push", "--porcelain", "--quiet", "origin", &refspec],
            None,
        )?;
        if out.status.success() {
            return Ok(PushOutcome::Pushed);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match rejection(&stdout, &stderr) {
            Some(reason) => Ok(PushOutcome::Rejected(reason)),
            None => Err(self.remote.failure("push", &out)),
        }
    }

    /// After a successful push: the pushed commit's trailers are committed.
    /// Returns the commit.
    pub fn pushed(&mut self, ids: &[&str], records: &[Newest]) -> Result<CommitRef, GitError> {
        let now = now_secs();
        let ids = ids.iter().map(|s| (*s).to_owned()).collect();
        let commit = self.head_commit(now)?;
        self.index.add_commit(commit.clone(), ids, records, now);
        self.indexed_tip = commit.sha.to_string();
        self.pushes_since_gc += 1;
        if self.pushes_since_gc >= GC_EVERY {
            self.pushes_since_gc = 0;
            // After a push, not inside one; in the foreground, so that no
            // background gc ever holds a lock the next batch needs.
            let args = [
                "-c",
                "gc.auto=6700",
                "-c",
                "gc.autoDetach=false",
                "gc",
                "--auto",
                "--quiet",
            ];
            if let Err(e) = self.run("gc", &args) {
                tracing::warn!(branch = %self.branch, error = %e, "git gc failed");
            }
        }
        Ok(commit)
    }
}

/// Whether a failed push failed because the branch moved, and how git said it.
fn rejection(stdout: &str, stderr: &str) -> Option<String> {
    const MOVED: &[&str] = &[
        "(fetch first)",
        "(non-fast-forward)",
        "(stale info)",
        "cannot lock ref",
        "failed to update ref",
        "incorrect old value",
        "but expected",
    ];
    let text = format!("{stdout}\n{stderr}");
    text.lines()
        .find(|l| MOVED.iter().any(|m| l.contains(m)))
        .map(|l| scrub_userinfo(l.trim()))
}

/// A directory name for a branch: readable, and distinct for distinct branches.
fn dir_name(branch: &str) -> String {
    let readable: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = branch.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{readable}-{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secrets_are_scrubbed() {
        assert_eq!(
            scrub_userinfo("fatal: unable to access 'https://bob:s3cret@git.example.com/x.git/'"),
            "fatal: unable to access 'https://***@git.example.com/x.git/'"
        );
        assert_eq!(scrub_userinfo("file:///srv/a@b"), "file:///srv/a@b");
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn rejections_are_told_from_failures() {
        let porcelain = "To file:///x\n!\tHEAD:refs/heads/main\t[rejected] (fetch first)\nDone\n";
        assert!(rejection(porcelain, "").is_some());
        assert!(rejection("", "fatal: could not read from remote repository").is_none());
        assert_ne!(dir_name("a/b"), dir_name("a_b"));
    }
}
