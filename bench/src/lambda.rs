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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use shotlist_shared::db::{Claim, Db, Outcome};
use shotlist_shared::localdb::TempCluster;
use shotlist_shared::plan::{plan_frames, PlanParams};
use shotlist_shared::probe::probe;
use shotlist_shared::time::Fps;
use shotlist_tests::cloud::{chunk_body, sqs_record};
use shotlist_tests::exact::exact_shots;
use shotlist_tests::film::{cuts_49_minutes, make_film_sized, Film};
use shotlist_tests::fixtures;
use shotlist_tests::runtime_api::{Posted, Recorded, RuntimeApi};
use shotlist_tests::tls_pg::TlsPostgres;
use shotlist_tests::FUNCTIONS;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::report::{self, Table};
use crate::Settings;

/// The targets.
const START_TARGET: Duration = Duration::from_millis(20);
const PEAK_TARGET_BYTES: u64 = 50 * 1000 * 1000;

/// The functions' JWT secret (at least 32 bytes; no request is signed).
const JWT_SECRET: &str = "shotlist-bench-jwt-secret-2f9c41d07be8a365";

/// The queues, at the discard port of loopback, where nothing listens: the
/// measured invocations send nothing, and if one did it would fail here
/// rather than reach anything real.
const SQS_ENDPOINT: &str = "http://127.0.0.1:9";
const CHUNK_QUEUE_URL: &str = "http://127.0.0.1:9/000000000000/shotlist-chunks";
const FINALIZE_QUEUE_URL: &str = "http://127.0.0.1:9/000000000000/shotlist-finalize";

/// How long a function may take to ask for its first event.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one invocation may take to be answered.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the process tree's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

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
    let sizes_and_starts = sizes_and_starts(settings, &binaries, &env, starts).await?;
    let memory = memory(settings, &binaries, &db, &env).await?;
    Ok(vec![sizes_and_starts, memory])
}

// ---------------------------------------------------------------------------
// Sizes and start times
// ---------------------------------------------------------------------------

async fn sizes_and_starts(
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
        let p50 = report::median(&times);
        table.row(vec![
            name.to_string(),
            mib(size),
            mib(stripped),
            report::millis(p50),
            report::millis(report::percentile(&times, 90.0)),
            target(settings, p50 <= START_TARGET.as_secs_f64()),
        ]);
    }
    let process_chunk = binaries
        .iter()
        .find(|(name, _)| *name == "process-chunk")
        .map(|(_, path)| path.as_path())
        .context("no process-chunk binary")?;
    let times = tls_start_times(process_chunk, env, starts).await?;
    let p50 = report::median(&times);
    table.row(vec![
        "process-chunk, database over TLS (sslmode=require, DATABASE_CA_CERT, local server)"
            .to_string(),
        "-".to_string(),
        "-".to_string(),
        report::millis(p50),
        report::millis(report::percentile(&times, 90.0)),
        target(settings, p50 <= START_TARGET.as_secs_f64()),
    ]);
    table.note(format!(
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
    ));
    table.note(format!(
        "start: from spawning the process to its first `GET /2018-06-01/runtime/invocation/next` \
         on a Runtime API served by the bench on 127.0.0.1; {starts} starts per function, \
         one at a time. Each start reads its configuration, connects to the database (a private \
         PostgreSQL on a unix socket, no TLS) and builds its SQS client (credentials and region \
         from the environment, `AWS_EC2_METADATA_DISABLED=true`), as on Lambda; RUST_LOG=info."
    ));
    table.note(
        "What a start costs: a function's init reads its configuration, connects its database \
         pool and builds its SQS client. Building the pool's native-tls connector used to take \
         most of it (OpenSSL parses the system CA bundle twice: about 40 ms of the 45 ms of CPU \
         a start took here); it is now built by the first connection that negotiates TLS, and \
         process-chunk and sweeper share one SQS client. On a unix socket no TLS is \
         negotiated; against Supabase (`sslmode=require`) the first connection pays that load \
         again, plus the TLS handshake: the `database over TLS` row measures both.",
    );
    table.note(format!(
        "database over TLS: process-chunk started the same way ({starts} starts) but with \
         `DATABASE_URL=postgresql://postgres@127.0.0.1:PORT/postgres?sslmode=require` and \
         `DATABASE_CA_CERT` naming the CA that signed the server's certificate \
         (shotlist_tests::tls_pg: a private PostgreSQL on 127.0.0.1 whose pg_hba.conf rejects \
         connections without TLS; RSA-2048 keys made by `openssl`). Its first connection loads \
         the system trust store and the CA file (native-tls, OpenSSL), and does a TCP connect \
         and a verified TLS handshake. Not included: the network round trips to a remote \
         server and password authentication (the local server trusts the TLS connection; \
         Supabase asks for SCRAM-SHA-256)."
    ));
    Ok(table)
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

// ---------------------------------------------------------------------------
// Peak memory
// ---------------------------------------------------------------------------

/// What the memory runs share: the film and its frame rate.
struct MemoryFilm {
    film: Film,
    media: shotlist_shared::probe::MediaInfo,
    plan: PlanParams,
    size: &'static str,
}

async fn memory(
    settings: &Settings,
    binaries: &[(&'static str, PathBuf)],
    db: &Db,
    env: &Environment,
) -> anyhow::Result<Table> {
    let film = memory_film(settings).await?;
    let binary = |wanted: &str| {
        binaries
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, path)| path.clone())
            .with_context(|| format!("no {wanted} binary"))
    };
    let process_chunk = binary("process-chunk")?;
    let finalize = binary("finalize")?;

    let mut chunk_runs = Vec::new();
    let mut finalize_runs = Vec::new();
    let mut ffmpeg_runs = Vec::new();
    let mut finalized_chunks = 0;
    for _ in 0..settings.runs {
        chunk_runs.push(one_chunk(&process_chunk, db, env, &film).await?);
        let (peak, chunks) = one_finalize(settings, &finalize, db, env).await?;
        finalize_runs.push(peak);
        finalized_chunks = chunks;
        ffmpeg_runs.push(ffmpeg_alone().await?);
    }

    let mut table = Table::new(
        "Lambda peak memory while handling one event",
        &[
            "function",
            "event",
            "answered in",
            "own peak (VmHWM)",
            "tree peak (sampled)",
            "ffmpeg processes",
            "target peak ≤ 50 MB",
        ],
    );
    let chunk_seconds = film.plan.chunk_seconds;
    for (name, event, runs) in [
        (
            "process-chunk",
            format!("chunk 0 ({chunk_seconds:.0} s) of a {} film", film.size),
            &chunk_runs,
        ),
        (
            "finalize",
            format!("the sheet of a film of {finalized_chunks} chunks"),
            &finalize_runs,
        ),
    ] {
        let answered = median_of(runs, |p| p.answered.as_secs_f64());
        let own = median_of(runs, |p| p.own_bytes as f64);
        let tree = median_of(runs, |p| p.tree_bytes as f64);
        let children = runs.iter().map(|p| p.descendants).max().unwrap_or(0);
        table.row(vec![
            name.to_string(),
            event,
            report::seconds(answered),
            mb(own),
            mb(tree),
            children.to_string(),
            target(settings, tree <= PEAK_TARGET_BYTES as f64),
        ]);
    }
    table.row(vec![
        "ffmpeg alone".to_string(),
        format!("{FFMPEG_ALONE_SECONDS} s of a 16x16 null source"),
        report::seconds(median_of(&ffmpeg_runs, |p| p.answered.as_secs_f64())),
        "-".to_string(),
        mb(median_of(&ffmpeg_runs, |p| p.tree_bytes as f64)),
        "1".to_string(),
        "n/a (no function)".to_string(),
    ]);
    table.note(format!(
        "process-chunk: one SQS event holding one chunk message, analyzer `local` (ffmpeg's \
         scene and silence detection as child processes), against the private PostgreSQL; \
         the film is {:.0} s of {} H.264 with AAC sound at 25 fps ({} known cuts, made by \
         shotlist_tests::film), planned as {:.0} s chunks with {:.0} s overlap. Each run \
         registers it anew, checks that the answer lists no failure, that the database shows \
         the chunk completed and that its shots start exactly at the known cuts.",
        film.media.duration_seconds(),
        film.size,
        film.film.cuts.len(),
        film.plan.chunk_seconds,
        film.plan.overlap_seconds,
    ));
    table.note(format!(
        "finalize: one finalize-queue event for a film whose {finalized_chunks} chunks were \
         completed directly in the database with their exact shots; the stored sheet must \
         have one shot per known cut plus one."
    ));
    table.note(format!(
        "own peak: `VmHWM` of the function's process from /proc, read after it answered and \
         before it was killed (its whole life: init and the event). tree peak: the largest sum \
         of `VmRSS` over the function and all its descendants, sampled every {} ms from spawn \
         to answer: what Lambda's memory limit counts. Medians of {} run(s); `ffmpeg processes` \
         is the most descendants seen at once. MB = 10^6 bytes.",
        SAMPLE_EVERY.as_millis(),
        settings.runs
    ));
    table.note(format!(
        "ffmpeg alone: the ffmpeg on PATH with next to nothing to do (`-re -f lavfi -i \
         nullsrc=s=16x16:d={FFMPEG_ALONE_SECONDS} -f null -`), sampled the same way: the floor \
         that the libraries it loads set under any chunk's tree peak, whatever the function does."
    ));
    if settings.smoke {
        table.note("smoke: debug binaries and a tiny film; the numbers mean nothing.");
    }
    Ok(table)
}

/// How long the `ffmpeg alone` run reads its null source, in real time.
const FFMPEG_ALONE_SECONDS: f64 = 0.5;

/// ffmpeg with next to nothing to do, read at the source's own pace so that
/// the sampler sees it: the memory its libraries take by themselves.
async fn ffmpeg_alone() -> anyhow::Result<Peak> {
    let source = format!("nullsrc=s=16x16:d={FFMPEG_ALONE_SECONDS}");
    let started = Instant::now();
    let mut child = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &source, "-f", "null", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running ffmpeg (is it installed?)")?;
    let pid = child.id().context("ffmpeg has no process id")?;
    let sampler = TreeSampler::start(pid);
    let status = child.wait().await.context("waiting for ffmpeg")?;
    let answered = started.elapsed();
    let tree = sampler.finish()?;
    ensure!(
        status.success(),
        "ffmpeg failed on a null source ({status})"
    );
    Ok(Peak {
        answered,
        own_bytes: tree.bytes,
        tree_bytes: tree.bytes,
        descendants: 0,
    })
}

/// The film process-chunk analyzes: the realistic size in a full run, a
/// tiny one with short chunks in smoke mode.
async fn memory_film(settings: &Settings) -> anyhow::Result<MemoryFilm> {
    let fps = Fps::new(25, 1)?;
    let (frames, size, plan) = if settings.smoke {
        let plan = PlanParams {
            chunk_seconds: 6.0,
            overlap_seconds: 1.0,
        };
        (250, "128x72", plan)
    } else {
        (5_000, "640x360", PlanParams::default())
    };
    // A cut every 6 to 10 s, at irregular frames.
    let cuts: Vec<i64> = (1..)
        .map(|k: i64| k * 150 + (k * 37) % 100)
        .take_while(|&cut| cut < frames - 25)
        .collect();
    let dir = settings.films.clone();
    let film = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| make_film_sized(&dir, fps, &cuts, frames, true, size))
    })
    .await?
    .map_err(|_| anyhow::anyhow!("ffmpeg could not make the benchmark film (see above)"))?;
    let media = probe(&film.path)
        .await
        .with_context(|| format!("probing {}", film.path.display()))?;
    ensure!(
        media.duration_frames == frames,
        "the generated film {} has {} frames, not {frames}",
        film.path.display(),
        media.duration_frames
    );
    Ok(MemoryFilm {
        film,
        media,
        plan,
        size,
    })
}

/// One memory measurement.
#[derive(Debug, Clone, Copy)]
struct Peak {
    answered: Duration,
    own_bytes: u64,
    tree_bytes: u64,
    descendants: usize,
}

fn median_of(runs: &[Peak], value: impl Fn(&Peak) -> f64) -> f64 {
    report::median(&runs.iter().map(value).collect::<Vec<_>>())
}

/// process-chunk analyzes chunk 0 of a newly registered copy of the film.
async fn one_chunk(
    binary: &Path,
    db: &Db,
    env: &Environment,
    film: &MemoryFilm,
) -> anyhow::Result<Peak> {
    let video_id = Uuid::new_v4();
    let source = film.film.path.to_string_lossy();
    let chunks = db
        .register_film(video_id, &source, &film.media, film.plan)
        .await?;
    ensure!(
        chunks >= 2,
        "the film was planned as {chunks} chunk(s); chunk 0 must not be the last, so that \
         finishing it sends nothing to the finalize queue"
    );
    let event = sqs_event(&chunk_body(video_id, 0));
    let (answer, peak) = invoke_once("process-chunk", binary, env, event).await?;
    ensure!(
        answer == json!({ "batchItemFailures": [] }),
        "process-chunk answered {answer}, not an empty batchItemFailures"
    );
    let results = db.chunk_results(video_id).await?;
    let chunk = results
        .chunks
        .iter()
        .find(|c| c.index == 0)
        .context("the database has no chunk 0")?;
    ensure!(
        chunk.status == "completed",
        "chunk 0 is {} after process-chunk answered (error: {})",
        chunk.status,
        chunk.error.as_deref().unwrap_or("none")
    );
    let (start, end) = (chunk.start_frame.unwrap_or(0), chunk.end_frame.unwrap_or(0));
    let mut expected = vec![start];
    expected.extend(film.film.cuts_inside(start, end));
    let found: Vec<i64> = chunk.shots.iter().map(|s| s.start_frame).collect();
    ensure!(
        found == expected,
        "chunk 0 (frames {start}..{end}) has shots starting at {found:?}, not at the film's \
         known cuts {expected:?}"
    );
    Ok(peak)
}

/// finalize builds the sheet of a film whose chunks are all completed with
/// their exact shots; answers the peak and the number of chunks.
async fn one_finalize(
    settings: &Settings,
    binary: &Path,
    db: &Db,
    env: &Environment,
) -> anyhow::Result<(Peak, usize)> {
    let fps = Fps::new(25, 1)?;
    let (cuts, frames) = if settings.smoke {
        ((1..12).map(|k| k * 900).collect(), 12_500)
    } else {
        cuts_49_minutes(fps)
    };
    let video_id = Uuid::new_v4();
    db.register_film(
        video_id,
        "/films/bench.mp4",
        &fixtures::media(frames, fps),
        PlanParams::default(),
    )
    .await?;
    let spans = plan_frames(frames, fps, PlanParams::default())?;
    for span in &spans {
        let Claim::Claimed(chunk) = db
            .claim_chunk(video_id, span.index, Duration::from_secs(600), 3)
            .await?
        else {
            bail!(
                "chunk {} of the finalize film could not be claimed",
                span.index
            );
        };
        let report = db
            .complete_chunk(
                video_id,
                span.index,
                chunk.lease_token,
                &exact_shots(*span, &cuts),
            )
            .await?;
        ensure!(
            report.outcome == Outcome::Completed,
            "chunk {} of the finalize film was not completed: {:?}",
            span.index,
            report.outcome
        );
    }
    let event = sqs_event(&json!({ "videoId": video_id }).to_string());
    let (answer, peak) = invoke_once("finalize", binary, env, event).await?;
    ensure!(
        answer == json!({ "batchItemFailures": [] }),
        "finalize answered {answer}, not an empty batchItemFailures"
    );
    let sheet = db
        .get_sheet(video_id)
        .await?
        .context("finalize answered but stored no sheet")?;
    ensure!(
        sheet.shots.len() == cuts.len() + 1,
        "the sheet has {} shots, not {} (one per known cut plus one)",
        sheet.shots.len(),
        cuts.len() + 1
    );
    Ok((peak, spans.len()))
}

/// Runs function `name`, hands it `event`, and measures its memory until
/// it answers. Answers the response body and the peaks.
async fn invoke_once(
    name: &str,
    binary: &Path,
    env: &Environment,
    event: Value,
) -> anyhow::Result<(Value, Peak)> {
    let api = RuntimeApi::start()
        .await
        .context("serving a Runtime API on 127.0.0.1")?;
    let request_id = api.queue(event);
    let started = Instant::now();
    let mut function = Function::spawn(name, binary, &api, env, &[])?;
    let pid = function
        .child
        .id()
        .context("the function has no process id")?;
    let sampler = TreeSampler::start(pid);
    let mut recorded = api.watch();
    let answered_or_failed =
        |r: &Recorded| r.answer(&request_id).is_some() || !r.init_errors.is_empty();
    tokio::select! {
        recorded = recorded.wait_for(answered_or_failed) => {
            recorded.context("the Runtime API stopped recording")?;
        }
        status = function.child.wait() => {
            let _ = sampler.finish();
            bail!(
                "the {name} function exited ({}) before answering\n{}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                function.output_tail()
            )
        }
        () = tokio::time::sleep(INVOKE_TIMEOUT) => {
            let _ = sampler.finish();
            bail!(
                "the {name} function did not answer within {INVOKE_TIMEOUT:?}\n{}",
                function.output_tail()
            )
        }
    };
    let answered = started.elapsed();
    let own = high_water_mark(pid);
    let tree = sampler.finish();
    let output = function.output_tail();
    function.stop().await;
    let own_bytes = own.with_context(|| format!("reading the {name} function's VmHWM"))?;
    let tree = tree?;
    let recorded = api.recorded();
    if let Some(init_error) = recorded.init_errors.first() {
        bail!("the {name} function posted an init error: {init_error}\n{output}");
    }
    let body = match recorded.answer(&request_id) {
        Some(Posted::Response(body)) => body.clone(),
        Some(Posted::Error { error_type, body }) => bail!(
            "the {name} function posted an invocation error ({}): {body}\n{output}",
            error_type.as_deref().unwrap_or("no error type")
        ),
        None => bail!("the Runtime API lost the {name} function's answer\n{output}"),
    };
    let peak = Peak {
        answered,
        own_bytes,
        tree_bytes: tree.bytes.max(own_bytes),
        descendants: tree.descendants,
    };
    Ok((body, peak))
}

/// An SQS event of one record with `body`, as Lambda delivers it.
fn sqs_event(body: &str) -> Value {
    json!({ "Records": [sqs_record(&Uuid::new_v4().to_string(), body, 1)] })
}

/// `VmHWM` of process `pid`, in bytes.
fn high_water_mark(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:")
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status has no VmHWM"))
}

/// A `kB` field of `/proc/PID/status`; `None` when the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The largest resident size seen of a process tree.
#[derive(Debug, Clone, Copy, Default)]
struct TreePeak {
    bytes: u64,
    /// The most descendants alive at once.
    descendants: usize,
    samples: usize,
}

/// Samples the resident memory of a process and its descendants on a
/// thread of its own, so that the samples keep their pace whatever the
/// async runtime is doing.
struct TreeSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<TreePeak>,
}

impl TreeSampler {
    fn start(root: u32) -> TreeSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = TreePeak::default();
            while !flag.load(Ordering::Relaxed) {
                let (bytes, descendants) = tree_rss(root);
                peak.bytes = peak.bytes.max(bytes);
                peak.descendants = peak.descendants.max(descendants);
                peak.samples += 1;
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        });
        TreeSampler { stop, thread }
    }

    /// Stops sampling and answers the peak; an error when not one sample
    /// saw the process.
    fn finish(self) -> anyhow::Result<TreePeak> {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        ensure!(
            peak.samples > 0 && peak.bytes > 0,
            "the memory sampler never saw the function's process ({} samples)",
            peak.samples
        );
        Ok(peak)
    }
}

/// The summed `VmRSS` of `root` and its descendants, and how many
/// descendants there are. Processes that end while being read count as
/// nothing.
fn tree_rss(root: u32) -> (u64, usize) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(parent) = parent_pid(pid) {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&pid) = tree.get(next) {
        tree.extend(children.get(&pid).into_iter().flatten());
        next += 1;
    }
    let bytes = tree
        .iter()
        .filter_map(|&pid| status_kib(pid, "VmRSS:"))
        .sum::<u64>()
        * 1024;
    (bytes, tree.len() - 1)
}

/// The parent of `pid`, from `/proc/PID/stat`: the field after the
/// command's closing parenthesis and the state (the command may hold
/// spaces and parentheses itself).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// A function process
// ---------------------------------------------------------------------------

/// What every function instance is given besides Lambda's own variables.
struct Environment {
    database_url: String,
    /// An empty HOME, so that the AWS SDK finds no profile files.
    home: PathBuf,
    /// Where the functions' output goes.
    logs: PathBuf,
}

/// A running function binary. Dropping it kills the process.
struct Function {
    child: Child,
    log: PathBuf,
}

impl Function {
    /// Starts binary `path` with Lambda's environment, the functions'
    /// configuration and `extra`, and nothing else of this process's
    /// environment but `PATH` (process-chunk runs ffmpeg).
    fn spawn(
        name: &str,
        path: &Path,
        api: &RuntimeApi,
        env: &Environment,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Function> {
        let log = env.logs.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("sharing the log file")?;
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &env.home)
            .envs(api.lambda_env(name))
            .env("AWS_ENDPOINT_URL_SQS", SQS_ENDPOINT)
            .env("RUST_LOG", "info")
            .env("DATABASE_URL", &env.database_url)
            .env("SUPABASE_JWT_SECRET", JWT_SECRET)
            .env("CHUNK_QUEUE_URL", CHUNK_QUEUE_URL)
            .env("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Function { child, log })
    }

    /// The last lines the function wrote, for an error message.
    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- the function's last output ---\n{tail}")
    }

    /// Kills the process and waits for it.
    async fn stop(mut self) {
        // It may have exited already; either way it is gone afterwards.
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_parent_other_than_itself() {
        let pid = std::process::id();
        let parent = parent_pid(pid).expect("this process has a parent");
        assert_ne!(parent, pid);
    }

    #[test]
    fn this_process_tree_has_a_resident_size() {
        let (bytes, _) = tree_rss(std::process::id());
        assert!(bytes > 0);
        assert!(high_water_mark(std::process::id()).expect("VmHWM") >= bytes / 2);
    }
}
