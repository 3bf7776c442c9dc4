//! The `shotlist` binary, built on first use.
//!
//! The binary belongs to another package of the workspace, so Cargo does not
//! hand its path to the tests: the first caller builds it with `cargo build
//! -p shotlist-cli` and takes the path from Cargo's JSON messages, which is
//! right for any target folder.
//!
//! That build runs without the variables Cargo sets for a test process
//! (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...): some build scripts (ring's)
//! are run again when those change, and with them every crate above, so
//! inheriting them would rebuild half the dependency tree on every run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The path of a freshly built `shotlist`.
///
/// # Panics
/// When the build fails or Cargo names no executable: no test can run it.
pub fn shotlist_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_for_tests) {
                build.env_remove(name);
            }
        }
        let output = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "shotlist-cli", "--bin", "shotlist"])
            .arg("--message-format=json-render-diagnostics")
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build -p shotlist-cli failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["reason"] == "compiler-artifact")
            .filter(|message| message["target"]["name"] == "shotlist")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the shotlist executable")
    })
}

/// Whether Cargo sets variable `name` for the test process (rather than the
/// user for Cargo): `CARGO_PKG_*`, `CARGO_MANIFEST_*`, `CARGO_CRATE_NAME`...
fn set_for_tests(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// Where the tests' `shotlist` runs look for a running `shotlist serve`: a
/// path that never exists, so that a serve a developer keeps running is
/// never joined by a test's database-less `process`.
pub const NO_SERVE_FILE: &str = "/nonexistent/shotlist/serve.json";

/// A `shotlist` command as the tests run it: no `DATABASE_URL`, `RUST_LOG`
/// or `SHOTLIST_SQS_ENDPOINT` from the environment, no stdin, and no
/// running `shotlist serve` to join.
pub fn shotlist_command() -> Command {
    let mut command = Command::new(shotlist_bin());
    command
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("SHOTLIST_SQS_ENDPOINT")
        .env("SHOTLIST_SERVE_FILE", NO_SERVE_FILE)
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end: its status, and its stdout and stderr as
/// text.
///
/// # Panics
/// When the command cannot be started at all.
pub fn output_of(command: &mut Command) -> (std::process::Output, String, String) {
    let output = command.output().expect("run shotlist");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}
