//! The second table: the peak memory of process-chunk and finalize while
//! each handles one event, and of ffmpeg alone as the floor under a chunk.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use shotlist_shared::db::{Claim, Db, Outcome};
use shotlist_shared::plan::{plan_frames, FrameSpan, PlanParams};
use shotlist_shared::probe::{probe, MediaInfo};
use shotlist_shared::time::Fps;
use shotlist_tests::cloud::{chunk_body, sqs_record};
use shotlist_tests::exact::exact_shots;
use shotlist_tests::film::{cuts_49_minutes, make_film_sized, Film};
use shotlist_tests::fixtures;
use shotlist_tests::runtime_api::{Posted, Recorded, RuntimeApi};
use tokio::process::Command;
use uuid::Uuid;

use super::function::{Environment, Function};
use super::sampler::{high_water_mark, TreeSampler, SAMPLE_EVERY};
use super::{binary, mb, target, PEAK_TARGET_BYTES};
use crate::report::{self, Table};
use crate::Settings;

/// How long one invocation may take to be answered.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the `ffmpeg alone` run reads its null source, in real time.
const FFMPEG_ALONE_SECONDS: f64 = 0.5;

/// What the memory runs share: the film and its frame rate.
struct MemoryFilm {
    film: Film,
    media: MediaInfo,
    plan: PlanParams,
    size: &'static str,
}

/// One memory measurement.
#[derive(Debug, Clone, Copy)]
struct Peak {
    answered: Duration,
    own_bytes: u64,
    tree_bytes: u64,
    descendants: usize,
}

/// Every run's peaks, by what was measured.
#[derive(Default)]
struct MemoryRuns {
    chunk: Vec<Peak>,
    finalize: Vec<Peak>,
    ffmpeg: Vec<Peak>,
    /// How many chunks the finalized film has.
    finalized_chunks: usize,
}

/// The table of peak memory: `settings.runs` runs each of process-chunk,
/// finalize and ffmpeg alone.
pub(super) async fn memory(
    settings: &Settings,
    binaries: &[(&'static str, PathBuf)],
    db: &Db,
    env: &Environment,
) -> anyhow::Result<Table> {
    let film = memory_film(settings).await?;
    let process_chunk = binary(binaries, "process-chunk")?;
    let finalize = binary(binaries, "finalize")?;
    let mut runs = MemoryRuns::default();
    for _ in 0..settings.runs {
        runs.chunk
            .push(one_chunk(process_chunk, db, env, &film).await?);
        let (peak, chunks) = one_finalize(settings, finalize, db, env).await?;
        runs.finalize.push(peak);
        runs.finalized_chunks = chunks;
        runs.ffmpeg.push(ffmpeg_alone().await?);
    }
    Ok(memory_table(settings, &film, &runs))
}

fn memory_table(settings: &Settings, film: &MemoryFilm, runs: &MemoryRuns) -> Table {
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
    let chunk_event = format!(
        "chunk 0 ({:.0} s) of a {} film",
        film.plan.chunk_seconds, film.size
    );
    table.row(function_row(
        settings,
        "process-chunk",
        chunk_event,
        &runs.chunk,
    ));
    let finalize_event = format!("the sheet of a film of {} chunks", runs.finalized_chunks);
    table.row(function_row(
        settings,
        "finalize",
        finalize_event,
        &runs.finalize,
    ));
    table.row(ffmpeg_row(&runs.ffmpeg));
    table.note(chunk_note(film));
    table.note(finalize_note(runs.finalized_chunks));
    table.note(peaks_note(settings));
    table.note(ffmpeg_note());
    if settings.smoke {
        table.note("smoke: debug binaries and a tiny film; the numbers mean nothing.");
    }
    table
}

/// The row of function `name` handling `event`: medians of `runs`, and the
/// most ffmpeg processes any run had at once.
fn function_row(settings: &Settings, name: &str, event: String, runs: &[Peak]) -> Vec<String> {
    let answered = median_of(runs, |p| p.answered.as_secs_f64());
    let own = median_of(runs, |p| p.own_bytes as f64);
    let tree = median_of(runs, |p| p.tree_bytes as f64);
    let children = runs.iter().map(|p| p.descendants).max().unwrap_or(0);
    vec![
        name.to_string(),
        event,
        report::seconds(answered),
        mb(own),
        mb(tree),
        children.to_string(),
        target(settings, tree <= PEAK_TARGET_BYTES as f64),
    ]
}

fn ffmpeg_row(runs: &[Peak]) -> Vec<String> {
    vec![
        "ffmpeg alone".to_string(),
        format!("{FFMPEG_ALONE_SECONDS} s of a 16x16 null source"),
        report::seconds(median_of(runs, |p| p.answered.as_secs_f64())),
        "-".to_string(),
        mb(median_of(runs, |p| p.tree_bytes as f64)),
        "1".to_string(),
        "n/a (no function)".to_string(),
    ]
}

/// The event process-chunk handled and how its answer was checked.
fn chunk_note(film: &MemoryFilm) -> String {
    format!(
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
    )
}

/// The event finalize handled and how its sheet was checked.
fn finalize_note(finalized_chunks: usize) -> String {
    format!(
        "finalize: one finalize-queue event for a film whose {finalized_chunks} chunks were \
         completed directly in the database with their exact shots; the stored sheet must \
         have one shot per known cut plus one."
    )
}

/// What the two peak columns measure.
fn peaks_note(settings: &Settings) -> String {
    format!(
        "own peak: `VmHWM` of the function's process from /proc, read after it answered and \
         before it was killed (its whole life: init and the event). tree peak: the largest sum \
         of `VmRSS` over the function and all its descendants, sampled every {} ms from spawn \
         to answer: what Lambda's memory limit counts. Medians of {} run(s); `ffmpeg processes` \
         is the most descendants seen at once. MB = 10^6 bytes.",
        SAMPLE_EVERY.as_millis(),
        settings.runs
    )
}

/// What the `ffmpeg alone` row ran and what it tells.
fn ffmpeg_note() -> String {
    format!(
        "ffmpeg alone: the ffmpeg on PATH with next to nothing to do (`-re -f lavfi -i \
         nullsrc=s=16x16:d={FFMPEG_ALONE_SECONDS} -f null -`), sampled the same way: the floor \
         that the libraries it loads set under any chunk's tree peak, whatever the function does."
    )
}

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
    complete_with_exact_shots(db, video_id, &spans, &cuts).await?;
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

/// Claims and completes every chunk of the finalize film `video_id` with
/// the exact shots of `cuts`, as process-chunk would have.
async fn complete_with_exact_shots(
    db: &Db,
    video_id: Uuid,
    spans: &[FrameSpan],
    cuts: &[i64],
) -> anyhow::Result<()> {
    for span in spans {
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
                &exact_shots(*span, cuts),
            )
            .await?;
        ensure!(
            report.outcome == Outcome::Completed,
            "chunk {} of the finalize film was not completed: {:?}",
            span.index,
            report.outcome
        );
    }
    Ok(())
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
    let body = answer_body(&api.recorded(), &request_id, name, &output)?;
    let peak = Peak {
        answered,
        own_bytes,
        tree_bytes: tree.bytes.max(own_bytes),
        descendants: tree.descendants,
    };
    Ok((body, peak))
}

/// The body function `name` posted as its response to `request_id`; an
/// error, with the function's `output`, when it posted an init or
/// invocation error instead, or nothing.
fn answer_body(
    recorded: &Recorded,
    request_id: &str,
    name: &str,
    output: &str,
) -> anyhow::Result<Value> {
    if let Some(init_error) = recorded.init_errors.first() {
        bail!("the {name} function posted an init error: {init_error}\n{output}");
    }
    match recorded.answer(request_id) {
        Some(Posted::Response(body)) => Ok(body.clone()),
        Some(Posted::Error { error_type, body }) => bail!(
            "the {name} function posted an invocation error ({}): {body}\n{output}",
            error_type.as_deref().unwrap_or("no error type")
        ),
        None => bail!("the Runtime API lost the {name} function's answer\n{output}"),
    }
}

/// An SQS event of one record with `body`, as Lambda delivers it.
fn sqs_event(body: &str) -> Value {
    json!({ "Records": [sqs_record(&Uuid::new_v4().to_string(), body, 1)] })
}
