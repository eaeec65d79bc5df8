//! Compiles proto/ with prost (protox parses the schemas in Rust, so no
//! `protoc` binary is needed on the build machine), and records the git
//! commit for the `sluice_build_info` metric.

use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["sluice.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    record_git_commit();
    Ok(())
}

/// `SLUICE_GIT_COMMIT`: the short commit hash, or `unknown` outside a git
/// checkout (a crate tarball) or without git.
fn record_git_commit() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Rebuild the value when HEAD moves (a commit, a checkout).
    for path in ["HEAD", "refs/heads"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
}
