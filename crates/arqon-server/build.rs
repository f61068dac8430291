//! Records the git revision the server is built from, for its start-up line.
//!
//! `ARQON_GIT_REV` is `git rev-parse --short HEAD`, or `unknown` when git or
//! the repository is not there (a source tarball, a vendored copy). No
//! dependency: it only runs the `git` command if one is installed.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ARQON_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild the line when HEAD moves: HEAD itself (a checkout), the branch
    // it points to (a commit) and packed refs. Paths git reports relative
    // are relative to this crate's directory, where build scripts run.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        println!("cargo:rerun-if-changed={path}");
    }
}
