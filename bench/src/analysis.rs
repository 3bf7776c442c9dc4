//! Question 3, local analysis: how long `shotlist process` takes over a
//! whole film, against the least any scene detector must do (one bare
//! ffmpeg pass of scene-change detection over the film) and against
//! PySceneDetect, and how many of the film's known cuts each one finds.
//!
//! All three read the same generated film, whose cut list is exact by
//! construction ([`shotlist_tests::film`]). shotlist's sheet must hold
//! exactly the known cuts: a sheet that misses or adds one, or is not
//! complete, is an error, not a number. The two baselines' cuts are only
//! counted; a baseline that finds almost nothing means its output was not
//! read right, and is an error too.
//!
//! Each run of each tool is a fresh process timed from spawn to exit, so
//! shotlist's time includes starting and removing its embedded PostgreSQL.
//! The runs of the tools are interleaved, so a burst of load from other
//! work on the machine touches all of them alike.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::{parse_timecode, Fps};
use shotlist_tests::film::{cuts_49_minutes, make_film_sized, Film};

use crate::report::{median, met, ratio, seconds, Table};
use crate::Settings;

/// The benchmark film's frame size: small enough to make 49 minutes in
/// about half a minute, large enough that decoding, not start-up, is what
/// the tools spend their time on.
const FULL_SIZE: &str = "640x360";
/// The smoke film: one minute of the test films' small frames.
const SMOKE_SIZE: &str = "128x72";
const SMOKE_SECONDS: f64 = 60.0;
/// Smoke chunks, so the one-minute film is still analyzed in several
/// overlapping chunks: `ceil((60 - 5) / (30 - 5))` = 3.
const SMOKE_CHUNK_ARGS: [&str; 4] = ["--chunk-seconds", "30", "--overlap-seconds", "5"];
/// shotlist's default scene threshold, given to the bare ffmpeg pass too.
const SCENE_THRESHOLD: f64 = 0.3;
/// A found cut matches a known one this many frames away or fewer.
const TOLERANCE_FRAMES: i64 = 1;
/// PySceneDetect's shortest scene, in frames: below the film's shortest
/// shot (12 frames at 25 fps). Its default, 0.6 s (15 frames), would merge
/// the shortest shots into their neighbours and miss their cuts for a
/// reason that has nothing to do with detection.
const SCENEDETECT_MIN_SCENE_FRAMES: &str = "10";
/// The PySceneDetect version the bench script installs.
const SCENEDETECT_VERSION: &str = "0.7.2";
/// Longest any one measured command may run before the bench gives up.
const COMMAND_LIMIT: Duration = Duration::from_secs(900);

/// One tool's measurements.
#[derive(Debug, Default)]
struct Measured {
    /// Wall time of each run, in seconds.
    times: Vec<f64>,
    /// CPU time (user and system) of each run and its child processes.
    cpu: Vec<f64>,
    /// The cuts of the last run.
    cuts: Vec<i64>,
}

impl Measured {
    fn median(&self) -> f64 {
        median(&self.times)
    }

    fn add(&mut self, run: Run) {
        self.times.push(run.wall);
        self.cpu.push(run.cpu);
        self.cuts = run.cuts;
    }
}

/// One run of one tool.
struct Run {
    wall: f64,
    cpu: f64,
    cuts: Vec<i64>,
}

pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Table>> {
    let scenedetect = scenedetect_program(settings)?;
    let scenedetect_version = scenedetect_version(&scenedetect).await?;
    let shotlist = settings.binary("shotlist")?;
    let (film, generated) = bench_film(settings).await?;
    let size = if settings.smoke {
        SMOKE_SIZE
    } else {
        FULL_SIZE
    };

    // PySceneDetect is several times slower than the others: half as many
    // runs keep the question within its time.
    let scenedetect_runs = (settings.runs / 2).max(1);
    let mut tools: [Measured; 3] = Default::default();
    for run in 0..settings.runs {
        let measured = time_shotlist(settings, &shotlist, &film).await?;
        check_sheet_cuts(&film, &measured.cuts)?;
        tools[0].add(measured);
        tools[1].add(time_ffmpeg_pass(&film).await?);
        if run < scenedetect_runs {
            tools[2].add(time_scenedetect(&scenedetect, &film).await?);
        }
    }
    for (name, tool) in [("ffmpeg", &tools[1]), ("PySceneDetect", &tools[2])] {
        check_baseline(name, &film, &tool.cuts)?;
    }

    let [shotlist_run, ffmpeg_run, scenedetect_run] = &tools;
    let title = format!(
        "Local analysis: a {:.0}-minute film ({} fps, {size}, with sound, {} known cuts)",
        film.fps.seconds_at(film.duration_frames) / 60.0,
        film.fps,
        film.cuts.len()
    );
    let mut table = Table::new(
        title,
        &[
            "tool",
            "runs",
            "median wall time",
            "median CPU time",
            "vs bare ffmpeg pass",
            "vs shotlist",
            "cuts found / known",
            "missed",
            "extra",
            "target",
            "target met",
        ],
    );
    let (shotlist_time, ffmpeg_time) = (shotlist_run.median(), ffmpeg_run.median());
    let scenedetect_time = scenedetect_run.median();
    let judged = |yes: bool| {
        if settings.smoke {
            "n/a (smoke)".to_string()
        } else {
            met(yes)
        }
    };
    let rows = [
        (
            "shotlist process",
            shotlist_run,
            "≤ 1.00x the bare ffmpeg pass; no missed cut".to_string(),
            judged(shotlist_time <= ffmpeg_time && score(&film, &shotlist_run.cuts).missed == 0),
        ),
        (
            "bare ffmpeg pass",
            ffmpeg_run,
            "baseline".to_string(),
            "-".to_string(),
        ),
        (
            "PySceneDetect",
            scenedetect_run,
            "shotlist ≥ 4x faster".to_string(),
            judged(scenedetect_time >= 4.0 * shotlist_time),
        ),
    ];
    for (name, tool, target, target_met) in rows {
        let found = score(&film, &tool.cuts);
        table.row(vec![
            name.to_string(),
            tool.times.len().to_string(),
            seconds(tool.median()),
            seconds(median(&tool.cpu)),
            ratio(tool.median(), ffmpeg_time),
            ratio(tool.median(), shotlist_time),
            format!("{} / {}", found.matched, film.cuts.len()),
            found.missed.to_string(),
            found.extra.to_string(),
            target,
            target_met,
        ]);
    }
    notes(&mut table, settings, &film, size, &scenedetect_version);
    if let Some(took) = generated {
        table.note(format!(
            "The film was generated for this run in {took:.1} s and cached as {}.",
            film.path.display()
        ));
    }
    for (name, tool) in [
        ("bare ffmpeg pass", ffmpeg_run),
        ("PySceneDetect", scenedetect_run),
    ] {
        if let Some(detail) = differences(&film, &tool.cuts) {
            table.note(format!("{name}: {detail}."));
        }
    }
    Ok(vec![table])
}

/// The notes under the table: exactly what ran, so BENCHMARKS.md can quote
/// them.
fn notes(table: &mut Table, settings: &Settings, film: &Film, size: &str, scenedetect: &str) {
    let chunking = if settings.smoke {
        format!(" {}", SMOKE_CHUNK_ARGS.join(" "))
    } else {
        String::new()
    };
    table.note(format!(
        "Film: shotlist_tests::film::make_film_sized, {} frames at {} fps, {size}, H.264 \
         (x264 ultrafast, a keyframe every 300 frames, none at cuts) with an AAC tone track{}.",
        film.duration_frames,
        film.fps,
        if settings.smoke {
            ""
        } else {
            ", the cut list of cuts_49_minutes"
        }
    ));
    table.note(format!(
        "shotlist: `shotlist process FILM --out DIR{chunking}` (the bench's build of it, release \
         for a full run; local analyzer, concurrency 5, scene threshold {SCENE_THRESHOLD}, its embedded PostgreSQL started and \
         removed by the run), timed from spawn to exit; cuts are the start frames of shots 2..N \
         in sheet.json, checked against their start timecodes."
    ));
    table.note(format!(
        "bare ffmpeg pass: `ffmpeg -nostdin -hide_banner -nostats -i FILM -an -vf \
         \"select='gt(scene,{SCENE_THRESHOLD})',metadata=mode=print:file=cuts.txt\" -f null -` \
         (ffmpeg's default threads), cuts = round(pts_time x fps) of the selected frames."
    ));
    table.note(format!(
        "PySceneDetect {scenedetect}: `scenedetect -i FILM -q -m {SCENEDETECT_MIN_SCENE_FRAMES} \
         detect-content list-scenes --skip-cuts -o DIR -f scenes.csv` (OpenCV backend, default \
         threshold and downscaling; -m {SCENEDETECT_MIN_SCENE_FRAMES} frames because the film's \
         shortest shot is 12 frames and the default 0.6 s would merge it), cuts = the start \
         frames of scenes 2..N; half as many runs as the others (at least one)."
    ));
    table.note(
        "Wall time from spawn to exit; CPU time is user + system time of the process and every \
         child it waited for (shotlist's ffmpegs and PostgreSQL), from getrusage(RUSAGE_CHILDREN) \
         around it. Both are medians.",
    );
    table.note(format!(
        "A found cut matches a known one within ±{TOLERANCE_FRAMES} frame, each known cut at \
         most once; \"vs\" columns are this tool's median time / the other's (vs shotlist: how \
         many times faster shotlist is)."
    ));
}

/// PySceneDetect's program: required, so the table always has all three
/// rows, also in smoke mode (CI installs it as scripts/bench does).
fn scenedetect_program(settings: &Settings) -> anyhow::Result<PathBuf> {
    let Some(program) = &settings.scenedetect else {
        bail!(
            "PySceneDetect is needed: install it with `python3 -m venv VENV && \
             VENV/bin/pip install scenedetect-headless=={SCENEDETECT_VERSION}` and pass \
             --scenedetect VENV/bin/scenedetect (or set SHOTLIST_BENCH_SCENEDETECT); \
             scripts/bench does both"
        );
    };
    ensure!(
        program.is_file(),
        "PySceneDetect's program {} does not exist (--scenedetect / SHOTLIST_BENCH_SCENEDETECT)",
        program.display()
    );
    Ok(program.clone())
}

/// `scenedetect version`'s number, e.g. `0.7.2`.
async fn scenedetect_version(program: &Path) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(program);
    command.arg("version");
    let output = run_command(command, "scenedetect version").await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("scenedetect"))
        .and_then(|rest| rest.split_whitespace().next())
        .or_else(|| {
            text.split("PySceneDetect ")
                .nth(1)?
                .split_whitespace()
                .next()
        });
    version
        .map(str::to_string)
        .with_context(|| format!("`{} version` printed no version: {text}", program.display()))
}

/// The film every tool reads (generated on first use, then cached under
/// `settings.films`), and how long generating it took when it had to be.
async fn bench_film(settings: &Settings) -> anyhow::Result<(Film, Option<f64>)> {
    let fps = Fps::new(25, 1)?;
    let dir = settings.films.clone();
    let smoke = settings.smoke;
    let started = Instant::now();
    let film = tokio::task::spawn_blocking(move || {
        let (cuts, frames, size) = if smoke {
            let frames = fps.frame_at(SMOKE_SECONDS);
            // Cuts near both seams of the three chunks, and a 12-frame shot.
            (vec![300, 612, 624, 900, 1_126, 1_250], frames, SMOKE_SIZE)
        } else {
            let (cuts, frames) = cuts_49_minutes(fps);
            (cuts, frames, FULL_SIZE)
        };
        // The film's name is the generator's secret: whether it was cached
        // shows in the folder's listing before it was asked for.
        let before = listing(&dir);
        let film = make_film_sized(&dir, fps, &cuts, frames, true, size);
        let cached = before.contains(&film.path);
        (film, cached)
    })
    .await
    .with_context(|| {
        format!(
            "generating the benchmark film in {}",
            settings.films.display()
        )
    })?;
    let (film, cached) = film;
    Ok((film, (!cached).then(|| started.elapsed().as_secs_f64())))
}

/// The paths in `dir`; none when it does not exist yet.
fn listing(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// Runs `shotlist process` on the film into a fresh folder and reads the
/// cuts from its sheet.
async fn time_shotlist(settings: &Settings, shotlist: &Path, film: &Film) -> anyhow::Result<Run> {
    let out = tempfile::tempdir().context("creating shotlist's output folder")?;
    let mut command = tokio::process::Command::new(shotlist);
    command
        .arg("process")
        .arg(&film.path)
        .args(["--analyzer", "local", "--out"])
        .arg(out.path())
        // The embedded database and the local analyzer, whatever this shell
        // has exported: nothing leaves the machine, and the time includes
        // the database's start as the table says.
        .env_remove("DATABASE_URL")
        .env_remove("SHOTLIST_ANALYZER");
    if settings.smoke {
        command.args(SMOKE_CHUNK_ARGS);
    }
    let (wall, cpu) = timed(command, "shotlist process").await?;
    let path = out.path().join("sheet.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading shotlist's sheet {}", path.display()))?;
    let sheet: Sheet = serde_json::from_str(&text)
        .with_context(|| format!("parsing shotlist's sheet {}", path.display()))?;
    let cuts = sheet_cuts(&sheet, film)?;
    Ok(Run { wall, cpu, cuts })
}

/// The cuts of a sheet that must be whole: complete, the film's length, its
/// shots contiguous from frame 0 with timecodes that say their frames.
fn sheet_cuts(sheet: &Sheet, film: &Film) -> anyhow::Result<Vec<i64>> {
    ensure!(
        sheet.status == SheetStatus::Complete,
        "shotlist's sheet is {:?}, not complete: gaps {:?}",
        sheet.status,
        sheet.gaps
    );
    ensure!(
        sheet.duration_frames == film.duration_frames,
        "shotlist's sheet says the film has {} frames, it has {}",
        sheet.duration_frames,
        film.duration_frames
    );
    let mut expected_start = 0;
    for shot in &sheet.shots {
        ensure!(
            shot.start_frame == expected_start && shot.end_frame > shot.start_frame,
            "shotlist's shot {} spans frames {}..{}, expected it to start at {expected_start}",
            shot.number,
            shot.start_frame,
            shot.end_frame
        );
        let labelled = parse_timecode(&shot.start, film.fps)
            .with_context(|| format!("shotlist's shot {} start {:?}", shot.number, shot.start))?;
        ensure!(
            labelled == shot.start_frame,
            "shotlist's shot {} starts at frame {} but its timecode {} is frame {labelled}",
            shot.number,
            shot.start_frame,
            shot.start
        );
        expected_start = shot.end_frame;
    }
    ensure!(
        expected_start == film.duration_frames,
        "shotlist's shots end at frame {expected_start}, the film at {}",
        film.duration_frames
    );
    Ok(sheet.shots.iter().skip(1).map(|s| s.start_frame).collect())
}

/// shotlist promises every cut to the frame: anything else is a bug.
fn check_sheet_cuts(film: &Film, cuts: &[i64]) -> anyhow::Result<()> {
    match differences(film, cuts) {
        None => Ok(()),
        Some(detail) => bail!("shotlist's sheet does not hold the film's cuts: {detail}"),
    }
}

/// A baseline that finds fewer than half the cuts was not read right.
fn check_baseline(name: &str, film: &Film, cuts: &[i64]) -> anyhow::Result<()> {
    let found = score(film, cuts);
    ensure!(
        2 * found.matched >= film.cuts.len(),
        "{name} matched only {} of {} known cuts: its output was probably misread ({})",
        found.matched,
        film.cuts.len(),
        differences(film, cuts).unwrap_or_default()
    );
    Ok(())
}

/// One bare ffmpeg pass of scene-change detection over the whole film, as
/// a user would type it, in a folder of its own for the cut file.
async fn time_ffmpeg_pass(film: &Film) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir().context("creating the ffmpeg pass's folder")?;
    let mut command = tokio::process::Command::new("ffmpeg");
    command
        .current_dir(dir.path())
        .args(["-nostdin", "-hide_banner", "-nostats", "-i"])
        .arg(&film.path)
        .args(["-an", "-vf"])
        .arg(format!(
            "select='gt(scene,{SCENE_THRESHOLD})',metadata=mode=print:file=cuts.txt"
        ))
        .args(["-f", "null", "-"]);
    let (wall, cpu) = timed(command, "the bare ffmpeg pass").await?;
    let text = std::fs::read_to_string(dir.path().join("cuts.txt"))
        .context("reading the bare ffmpeg pass's cuts.txt")?;
    let cuts = ffmpeg_cuts(&text, film.fps)?;
    Ok(Run { wall, cpu, cuts })
}

/// The frames of `metadata=mode=print`'s `frame:N pts:P pts_time:T` lines.
fn ffmpeg_cuts(text: &str, fps: Fps) -> anyhow::Result<Vec<i64>> {
    let mut cuts = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("frame:")) {
        let time = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("pts_time:")?.parse::<f64>().ok())
            .with_context(|| format!("ffmpeg's cut line without a pts_time: {line:?}"))?;
        cuts.push((time * fps.as_f64()).round() as i64);
    }
    Ok(cuts)
}

/// PySceneDetect's content detector over the whole film, its scene list
/// written as plain CSV.
async fn time_scenedetect(program: &Path, film: &Film) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir().context("creating PySceneDetect's folder")?;
    let mut command = tokio::process::Command::new(program);
    command
        .arg("-i")
        .arg(&film.path)
        .args(["-q", "-m", SCENEDETECT_MIN_SCENE_FRAMES])
        .args(["detect-content", "list-scenes", "--skip-cuts", "-o"])
        .arg(dir.path())
        .args(["-f", "scenes.csv"]);
    let (wall, cpu) = timed(command, "PySceneDetect").await?;
    let path = dir.path().join("scenes.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading PySceneDetect's scene list {}", path.display()))?;
    let cuts = scenedetect_cuts(&text)?;
    Ok(Run { wall, cpu, cuts })
}

/// The start frames of scenes 2..N of `list-scenes --skip-cuts`' CSV, whose
/// `Start Frame` column counts from 1.
fn scenedetect_cuts(text: &str) -> anyhow::Result<Vec<i64>> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .context("PySceneDetect's scene list is empty")?;
    let column = header
        .split(',')
        .position(|h| h.trim() == "Start Frame")
        .with_context(|| format!("PySceneDetect's scene list has no Start Frame: {header:?}"))?;
    let mut starts = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let start = line
            .split(',')
            .nth(column)
            .and_then(|cell| cell.trim().parse::<i64>().ok())
            .with_context(|| format!("PySceneDetect's scene without a start frame: {line:?}"))?;
        starts.push(start - 1);
    }
    ensure!(
        starts.first().is_none_or(|&first| first == 0),
        "PySceneDetect's first scene starts at frame {:?}, not the film's first",
        starts.first()
    );
    Ok(starts.into_iter().skip(1).collect())
}

/// Runs `command` to its end and returns its wall time and the CPU time
/// it and its children used, in seconds.
async fn timed(command: tokio::process::Command, what: &str) -> anyhow::Result<(f64, f64)> {
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    run_command(command, what).await?;
    let wall = started.elapsed().as_secs_f64();
    Ok((wall, children_cpu_seconds() - cpu_before))
}

/// User and system time of every child process reaped so far, and of
/// theirs. The benchmark runs one command at a time, so the difference
/// around one is that command's.
fn children_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given,
    // which points to one; RUSAGE_CHILDREN is a valid `who`.
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    if status != 0 {
        return f64::NAN;
    }
    // SAFETY: the call succeeded, so it initialised `usage` (and `zeroed`
    // had already made every field a valid integer).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs a measured command to its end; errors name the command and quote
/// the end of what it printed.
async fn run_command(
    mut command: tokio::process::Command,
    what: &str,
) -> anyhow::Result<std::process::Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_LIMIT, command.output())
        .await
        .with_context(|| format!("{what} ran longer than {} s", COMMAND_LIMIT.as_secs()))?
        .with_context(|| format!("starting {what}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        bail!(
            "{what} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(output)
}

/// How a list of found cuts compares with the known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Score {
    matched: usize,
    missed: usize,
    extra: usize,
}

/// Matches found cuts to known ones within [`TOLERANCE_FRAMES`], walking
/// both sorted lists once; each cut matches at most one of the other list.
fn score(film: &Film, found: &[i64]) -> Score {
    let (matched, _, _) = matching(&film.cuts, found);
    Score {
        matched,
        missed: film.cuts.len() - matched,
        extra: found.len() - matched,
    }
}

/// The number of matches, the known cuts left unmatched and the found ones
/// left unmatched.
fn matching(known: &[i64], found: &[i64]) -> (usize, Vec<i64>, Vec<i64>) {
    let mut found = found.to_vec();
    found.sort_unstable();
    let (mut i, mut j, mut matched) = (0, 0, 0);
    let (mut missed, mut extra) = (Vec::new(), Vec::new());
    while i < known.len() && j < found.len() {
        if (known[i] - found[j]).abs() <= TOLERANCE_FRAMES {
            matched += 1;
            i += 1;
            j += 1;
        } else if found[j] < known[i] {
            extra.push(found[j]);
            j += 1;
        } else {
            missed.push(known[i]);
            i += 1;
        }
    }
    missed.extend_from_slice(&known[i..]);
    extra.extend_from_slice(&found[j..]);
    (matched, missed, extra)
}

/// The missed and extra frames (the first few of each) and how many
/// matches are a frame off, or `None` when the found cuts are exactly the
/// known ones.
fn differences(film: &Film, found: &[i64]) -> Option<String> {
    if found == film.cuts.as_slice() {
        return None;
    }
    let (matched, missed, extra) = matching(&film.cuts, found);
    let exact = film.cuts.iter().filter(|c| found.contains(c)).count();
    Some(format!(
        "missed frames {}, extra frames {}, {} of {matched} matches a frame off",
        first_few(&missed),
        first_few(&extra),
        matched.saturating_sub(exact)
    ))
}

/// Up to ten frames, and how many more there are.
fn first_few(frames: &[i64]) -> String {
    let shown: Vec<String> = frames.iter().take(10).map(i64::to_string).collect();
    match frames.len().saturating_sub(10) {
        0 => format!("[{}]", shown.join(", ")),
        more => format!("[{}, and {more} more]", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_match_within_one_frame_and_only_once() {
        let (matched, missed, extra) = matching(&[100, 200, 300], &[99, 100, 202, 301]);
        assert_eq!(matched, 2);
        assert_eq!(missed, [200]);
        assert_eq!(extra, [100, 202]);
    }

    #[test]
    fn ffmpeg_cut_lines_give_rounded_frames() {
        let text = "frame:0    pts:12288  pts_time:12\nlavfi.scene_score=0.9\n\
                    frame:1    pts:24576  pts_time:24.48\nlavfi.scene_score=0.5\n";
        let fps = Fps::new(25, 1).unwrap();
        assert_eq!(ffmpeg_cuts(text, fps).unwrap(), [300, 612]);
    }

    #[test]
    fn scenedetect_scene_starts_count_from_one() {
        let text =
            "Scene Number,Start Frame,Start Timecode\n1,1,00:00:00.000\n2,301,00:00:12.000\n";
        assert_eq!(scenedetect_cuts(text).unwrap(), [300]);
        assert!(scenedetect_cuts("Scene Number,End Frame\n1,4\n").is_err());
    }
}
