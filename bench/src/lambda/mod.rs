//! Question 4: the Lambda function binaries. How big each one is, how long
//! it takes from being started to asking for its first event, and how much
//! memory the chunk worker (and the finalizer) use at their peak.
//!
//! Each function runs as Lambda would run it: the compiled binary, the
//! environment Lambda gives (`AWS_LAMBDA_RUNTIME_API` and the rest) plus the
//! function's own configuration, and a Runtime API of our own on 127.0.0.1
//! (the HTTP protocol `lambda_runtime` speaks: `GET .../invocation/next` as
//! a long poll, then `POST .../invocation/{id}/response` or `/error`). The
//! database is a private PostgreSQL on a unix socket; the queues' endpoint
//! is a closed port on loopback, which no measured path sends to. Nothing
//! is reached beyond this machine.
//!
//! The start time ends at the first `GET .../invocation/next`: that is when
//! Lambda counts the instance's init as done. Memory is read from `/proc`:
//! the function's own high-water mark (`VmHWM`), and the resident memory of
//! its whole process tree (ffmpeg included) sampled every 5 ms, which is
//! what Lambda's memory limit applies to.

mod function;
mod memory;
mod sampler;
mod start;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shotlist_shared::db::Db;
use shotlist_shared::localdb::TempCluster;
use shotlist_tests::FUNCTIONS;

use crate::report::{self, Table};
use crate::Settings;
use function::Environment;

/// The targets.
const START_TARGET: Duration = Duration::from_millis(20);
const PEAK_TARGET_BYTES: u64 = 50 * 1000 * 1000;

const MIB: f64 = 1024.0 * 1024.0;
const MB: f64 = 1000.0 * 1000.0;

pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Table>> {
    let binaries = FUNCTIONS
        .iter()
        .map(|name| Ok((*name, settings.binary(name)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await?
        .context("starting a private PostgreSQL")?;
    let url = cluster.create_database("bench_lambda").await?;
    let db = Db::connect(&url, 2).await?;
    db.migrate().await?;
    let env = Environment {
        database_url: url,
        home: scratch.path().to_path_buf(),
        logs: scratch.path().to_path_buf(),
    };

    let starts = if settings.smoke {
        2
    } else {
        (4 * settings.runs).max(20)
    };
    let sizes_and_starts = start::sizes_and_starts(settings, &binaries, &env, starts).await?;
    let memory = memory::memory(settings, &binaries, &db, &env).await?;
    Ok(vec![sizes_and_starts, memory])
}

/// The path of function binary `wanted` among `binaries`.
fn binary<'a>(binaries: &'a [(&'static str, PathBuf)], wanted: &str) -> anyhow::Result<&'a Path> {
    binaries
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, path)| path.as_path())
        .with_context(|| format!("no {wanted} binary"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / MB)
}

/// The targets column: whether it is met, or that smoke numbers are not
/// judged.
fn target(settings: &Settings, met: bool) -> String {
    if settings.smoke {
        "n/a (smoke)".to_string()
    } else {
        report::met(met)
    }
}
