//! The first table: each function binary's size, plain and stripped, and
//! how long it takes from being spawned to asking for its first event.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use shotlist_tests::runtime_api::RuntimeApi;
use shotlist_tests::tls_pg::TlsPostgres;

use super::function::{Environment, Function};
use super::{binary, mib, target, START_TARGET};
use crate::report::{self, Table};
use crate::Settings;

/// How long a function may take to ask for its first event.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The label of the row that starts process-chunk against a TLS database.
const TLS_ROW: &str =
    "process-chunk, database over TLS (sslmode=require, DATABASE_CA_CERT, local server)";

/// What a start costs, and why the TLS row is there.
const START_COST_NOTE: &str =
    "What a start costs: a function's init reads its configuration, connects its database \
     pool and builds its SQS client. Building the pool's native-tls connector used to take \
     most of it (OpenSSL parses the system CA bundle twice: about 40 ms of the 45 ms of CPU \
     a start took here); it is now built by the first connection that negotiates TLS, and \
     process-chunk and sweeper share one SQS client. On a unix socket no TLS is \
     negotiated; against Supabase (`sslmode=require`) the first connection pays that load \
     again, plus the TLS handshake: the `database over TLS` row measures both.";

/// The table of sizes and start times: one row a function, `starts` starts
/// each, then process-chunk against a database that takes only TLS.
pub(super) async fn sizes_and_starts(
    settings: &Settings,
    binaries: &[(&'static str, PathBuf)],
    env: &Environment,
    starts: usize,
) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Lambda binaries: size and start time",
        &[
            "function",
            "size",
            "stripped",
            "start p50",
            "start p90",
            "target start ≤ 20 ms",
        ],
    );
    for (name, path) in binaries {
        let size = file_size(path)?;
        let stripped = stripped_size(path, &env.home)?;
        let times = start_times(name, path, env, &[], starts).await?;
        table.row(start_row(
            settings,
            name,
            [mib(size), mib(stripped)],
            &times,
        ));
    }
    let times = tls_start_times(binary(binaries, "process-chunk")?, env, starts).await?;
    let no_size = ["-".to_string(), "-".to_string()];
    table.row(start_row(settings, TLS_ROW, no_size, &times));
    table.note(build_note(settings));
    table.note(start_note(starts));
    table.note(START_COST_NOTE);
    table.note(tls_note(starts));
    Ok(table)
}

/// A row of the table: `label`, its two size cells, and the percentiles of
/// `times` (seconds) against the target.
fn start_row(settings: &Settings, label: &str, sizes: [String; 2], times: &[f64]) -> Vec<String> {
    let p50 = report::median(times);
    let [size, stripped] = sizes;
    vec![
        label.to_string(),
        size,
        stripped,
        report::millis(p50),
        report::millis(report::percentile(times, 90.0)),
        target(settings, p50 <= START_TARGET.as_secs_f64()),
    ]
}

/// Which build was measured and what the two size columns hold.
fn build_note(settings: &Settings) -> String {
    format!(
        "{} build{}: `size` is the file `cargo build{} --workspace --bins` leaves \
         (Cargo's {} profile as the workspace sets it); `stripped` is a copy after \
         `strip` (all symbols), what a deployment package would hold.",
        if settings.smoke { "debug" } else { "release" },
        if settings.smoke {
            " (smoke: numbers of unoptimized binaries, meaningless)"
        } else {
            ""
        },
        if settings.smoke { "" } else { " --release" },
        if settings.smoke { "dev" } else { "release" },
    )
}

/// What a start time spans.
fn start_note(starts: usize) -> String {
    format!(
        "start: from spawning the process to its first `GET /2018-06-01/runtime/invocation/next` \
         on a Runtime API served by the bench on 127.0.0.1; {starts} starts per function, \
         one at a time. Each start reads its configuration, connects to the database (a private \
         PostgreSQL on a unix socket, no TLS) and builds its SQS client (credentials and region \
         from the environment, `AWS_EC2_METADATA_DISABLED=true`), as on Lambda; RUST_LOG=info."
    )
}

/// How the TLS row was measured and what it leaves out.
fn tls_note(starts: usize) -> String {
    format!(
        "database over TLS: process-chunk started the same way ({starts} starts) but with \
         `DATABASE_URL=postgresql://postgres@127.0.0.1:PORT/postgres?sslmode=require` and \
         `DATABASE_CA_CERT` naming the CA that signed the server's certificate \
         (shotlist_tests::tls_pg: a private PostgreSQL on 127.0.0.1 whose pg_hba.conf rejects \
         connections without TLS; RSA-2048 keys made by `openssl`). Its first connection loads \
         the system trust store and the CA file (native-tls, OpenSSL), and does a TCP connect \
         and a verified TLS handshake. Not included: the network round trips to a remote \
         server and password authentication (the local server trusts the TLS connection; \
         Supabase asks for SCRAM-SHA-256)."
    )
}

/// The start times of `starts` starts of function `name`, one at a time,
/// in seconds.
async fn start_times(
    name: &str,
    path: &Path,
    env: &Environment,
    extra: &[(&str, &str)],
    starts: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(starts);
    for _ in 0..starts {
        times.push(start_time(name, path, env, extra).await?.as_secs_f64());
    }
    Ok(times)
}

/// The start times of process-chunk when its database asks for TLS, as
/// Supabase's does: against a private server that takes only TLS, trusted
/// through `DATABASE_CA_CERT`.
async fn tls_start_times(
    process_chunk: &Path,
    env: &Environment,
    starts: usize,
) -> anyhow::Result<Vec<f64>> {
    let server = tokio::task::spawn_blocking(TlsPostgres::start)
        .await
        .context("starting a PostgreSQL that takes only TLS (see the panic above)")?;
    let url = server.url("require");
    let ca = server.ca().to_string_lossy().into_owned();
    let extra = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CA_CERT", ca.as_str()),
    ];
    start_times("process-chunk", process_chunk, env, &extra, starts)
        .await
        .with_context(|| {
            format!(
                "process-chunk over TLS; the server's log:\n{}",
                server.log()
            )
        })
}

/// Starts function `name` with nothing to do and answers how long it took
/// to ask for its first event. `extra` is added to its environment.
async fn start_time(
    name: &str,
    path: &Path,
    env: &Environment,
    extra: &[(&str, &str)],
) -> anyhow::Result<Duration> {
    let api = RuntimeApi::start()
        .await
        .context("serving a Runtime API on 127.0.0.1")?;
    let mut recorded = api.watch();
    let started = Instant::now();
    let mut function = Function::spawn(name, path, &api, env, extra)?;
    let first_poll = tokio::select! {
        recorded = recorded.wait_for(|r| !r.polls.is_empty() || !r.init_errors.is_empty()) => {
            recorded.ok().and_then(|r| r.polls.first().copied())
        }
        status = function.child.wait() => {
            bail!(
                "the {name} function exited ({}) before asking for an event\n{}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                function.output_tail()
            )
        }
        () = tokio::time::sleep(START_TIMEOUT) => {
            bail!(
                "the {name} function did not ask for an event within {START_TIMEOUT:?}\n{}",
                function.output_tail()
            )
        }
    };
    let output = function.output_tail();
    function.stop().await;
    let recorded = api.recorded();
    ensure!(
        recorded.init_errors.is_empty() && recorded.unexpected.is_empty(),
        "the {name} function reported an init error or made a request the Runtime API does \
         not know: {:?} {:?}\n{output}",
        recorded.init_errors,
        recorded.unexpected
    );
    let first_poll = first_poll.context("the Runtime API's record of the first poll was lost")?;
    Ok(first_poll.saturating_duration_since(started))
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len())
}

/// The size of a copy of `path` with every symbol stripped (`strip -o`).
fn stripped_size(path: &Path, scratch: &Path) -> anyhow::Result<u64> {
    let name = path.file_name().context("a binary without a file name")?;
    let copy = scratch.join(name).with_extension("stripped");
    let output = std::process::Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(path)
        .output()
        .context("running strip (binutils) to size a stripped copy")?;
    ensure!(
        output.status.success(),
        "strip failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let size = file_size(&copy)?;
    std::fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
    Ok(size)
}
