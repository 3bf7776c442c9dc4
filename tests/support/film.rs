//! Test films with known cut lists, made with ffmpeg's lavfi sources.
//!
//! Each shot is a solid colour with light temporal noise or a moving test
//! pattern, cut to an exact number of frames (`trim=end_frame`), and all
//! shots are joined by one concat filter, so the cut list is exact by
//! construction. Consecutive shots alternate between bright and dark, so a
//! scene detector finds every cut and nothing else. The video is H.264 with
//! a keyframe only every 300 frames and no keyframe at cuts, so most cuts and
//! chunk starts fall between keyframes. The optional sound is a 440 Hz tone
//! on for [`TONE_ON_SECONDS`] of every [`TONE_PERIOD_SECONDS`], sample-exact
//! and independent of the cuts.
//!
//! Films are cached under `target/test-films/` (see [`film_dir`]), named by
//! a hash of their parameters, and written under a temporary name then
//! renamed, so parallel tests never see half a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use shotlist_shared::plan::{plan_frames, FrameSpan, PlanParams};
use shotlist_shared::time::Fps;

/// Bumped whenever the way films are made changes, to retire cached films.
const GENERATOR_VERSION: u32 = 1;
/// The frame size of [`make_film`]: small, so a 49-minute film is made in
/// well under a minute.
pub const SIZE: &str = "128x72";
/// The tone is on for this long at the start of every period.
pub const TONE_ON_SECONDS: f64 = 3.0;
/// The period of the tone pattern.
pub const TONE_PERIOD_SECONDS: f64 = 7.0;
const BRIGHT: [&str; 4] = ["0xf0f0f0", "0xf0e060", "0x80f0f0", "0xf0a0c0"];
const DARK: [&str; 4] = ["0x101010", "0x102060", "0x601010", "0x105010"];

/// One film generation at a time in this process: the machines that run the
/// tests have few cores, and two tests may ask for the same film.
static GENERATING: Mutex<()> = Mutex::new(());
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A generated film and its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Film {
    pub path: PathBuf,
    pub fps: Fps,
    pub duration_frames: i64,
    /// The frames where a new shot starts, excluding 0, ascending.
    pub cuts: Vec<i64>,
    pub has_audio: bool,
}

impl Film {
    /// The cuts inside `(start_frame, end_frame)`: what an analysis of that
    /// chunk must report (a cut at the chunk's first frame is not one).
    pub fn cuts_inside(&self, start_frame: i64, end_frame: i64) -> Vec<i64> {
        self.cuts
            .iter()
            .copied()
            .filter(|&c| c > start_frame && c < end_frame)
            .collect()
    }
}

/// The real footage the team shares (`cityCC0.mpg`: MPEG-PS, MPEG-2, 25 fps,
/// no audio, 190 frames).
///
/// # Panics
/// When the file is not beside the checkout, with a message saying why.
pub fn city_footage() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/media/cityCC0.mpg");
    assert!(
        path.is_file(),
        "real footage {} is missing: the tests expect the team's shared/ folder \
         beside the checkout (shared/media/README.md says where the file comes from)",
        path.display()
    );
    path
}

/// Where generated films are cached: `test-films` in Cargo's target folder.
pub fn film_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-films")
}

/// Seconds of tone in `[start, end)` seconds of a film with sound.
pub fn tone_seconds(start: f64, end: f64) -> f64 {
    let mut total = 0.0;
    let mut period = (start / TONE_PERIOD_SECONDS).floor() * TONE_PERIOD_SECONDS;
    while period < end {
        let (on, off) = (period, period + TONE_ON_SECONDS);
        total += (off.min(end) - on.max(start)).max(0.0);
        period += TONE_PERIOD_SECONDS;
    }
    total
}

/// Makes (or finds in `dir`) a film of `duration_frames` frames at `fps`
/// with a new shot at each of `cuts`, with sound when `with_audio`, in
/// frames of [`SIZE`].
///
/// # Panics
/// When the cuts are not ascending inside `(0, duration_frames)`, or when
/// ffmpeg fails: this is test support.
pub fn make_film(
    dir: &Path,
    fps: Fps,
    cuts: &[i64],
    duration_frames: i64,
    with_audio: bool,
) -> Film {
    make_film_sized(dir, fps, cuts, duration_frames, with_audio, SIZE)
}

/// [`make_film`] with frames of `size` (`WIDTHxHEIGHT`, e.g. `"640x360"`):
/// the benchmarks need realistic frames, where decoding costs what it costs
/// in a real film, rather than fixed costs swamping it.
///
/// # Panics
/// As [`make_film`]; also when ffmpeg rejects `size`.
pub fn make_film_sized(
    dir: &Path,
    fps: Fps,
    cuts: &[i64],
    duration_frames: i64,
    with_audio: bool,
    size: &str,
) -> Film {
    assert!(duration_frames > 0, "a film needs frames");
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(duration_frames);
    assert!(
        bounds.windows(2).all(|w| w[0] < w[1]),
        "cuts must ascend inside the film: {cuts:?}"
    );
    let mut key = format!("v{GENERATOR_VERSION} {fps} {duration_frames} {with_audio} {cuts:?}");
    // The default size is not in the key, so films cached before sizes
    // existed keep their names.
    if size != SIZE {
        key.push_str(&format!(" {size}"));
    }
    let path = dir.join(format!("film-{:016x}.mp4", fnv1a(key.as_bytes())));
    let film = Film {
        path,
        fps,
        duration_frames,
        cuts: cuts.to_vec(),
        has_audio: with_audio,
    };
    let _one_at_a_time = GENERATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !film.path.exists() {
        std::fs::create_dir_all(dir).expect("creating the film folder");
        generate(&film, &bounds, size);
    }
    film
}

/// Runs ffmpeg to a temporary name beside the film, then renames it.
fn generate(film: &Film, bounds: &[i64], size: &str) {
    let started = std::time::Instant::now();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = film
        .path
        .with_extension(format!("{}-{n}.tmp", std::process::id()));
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-y", "-v", "error", "-filter_complex"]);
    command
        .arg(filter_graph(film, bounds, size))
        .args(["-map", "[v]"]);
    command.args([
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "30",
        "-pix_fmt",
        "yuv420p",
    ]);
    command.args(["-x264-params", "keyint=300:scenecut=0"]);
    if film.has_audio {
        command.args([
            "-map",
            "[a]",
            "-c:a",
            "aac",
            "-aac_coder",
            "fast",
            "-b:a",
            "48k",
        ]);
    }
    command.args(["-f", "mp4"]).arg(&temp);
    let output = command.output().expect("running ffmpeg (is it installed?)");
    assert!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&temp, &film.path).expect("renaming the generated film");
    eprintln!(
        "generated {} ({} frames at {}, {} cuts) in {:.1} s",
        film.path.display(),
        film.duration_frames,
        film.fps,
        film.cuts.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The concat of one segment per shot, plus the tone when asked.
fn filter_graph(film: &Film, bounds: &[i64], size: &str) -> String {
    let mut graph = String::new();
    let mut labels = String::new();
    for (i, w) in bounds.windows(2).enumerate() {
        let source = shot_source(i, film.fps, size);
        graph.push_str(&format!(
            "{source},trim=end_frame={},setpts=PTS-STARTPTS[s{i}];",
            w[1] - w[0]
        ));
        labels.push_str(&format!("[s{i}]"));
    }
    graph.push_str(&format!("{labels}concat=n={}:v=1:a=0[v]", bounds.len() - 1));
    if film.has_audio {
        let samples =
            film.duration_frames * 48_000 * i64::from(film.fps.den()) / i64::from(film.fps.num());
        let (on, period) = (TONE_ON_SECONDS, TONE_PERIOD_SECONDS);
        let tone = format!("if(lt(mod(t,{period}),{on}),0.5*sin(2*PI*440*t),0)");
        graph.push_str(&format!(
            ";aevalsrc=exprs='{tone}':s=48000,atrim=end_sample={samples}[a]"
        ));
    }
    graph
}

/// Shot `i`: a moving test pattern every seventh shot, between two shots of
/// the same brightness; otherwise bright and dark colours alternate.
fn shot_source(i: usize, fps: Fps, size: &str) -> String {
    if i % 7 == 3 {
        return format!("testsrc2=s={size}:r={fps},format=yuv420p");
    }
    let colour = [BRIGHT, DARK][i % 2][(i / 2) % 4];
    format!("color=c={colour}:s={size}:r={fps},format=yuv420p,noise=alls=6:allf=t")
}

/// 64-bit FNV-1a: a stable name for a film's parameters.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The cut list and length in frames of a deterministic 49-minute (2940 s)
/// film, planned with [`PlanParams::default`] into 18 chunks.
///
/// Shots last 0.5 to 30 s, at least 12 frames, and the list includes the
/// awkward places: cuts exactly at chunk starts, 3 s into overlaps, a
/// 12-frame shot inside an overlap, one frame before and exactly at seams,
/// one frame before and one frame after a chunk start, and at a chunk's last
/// frame.
pub fn cuts_49_minutes(fps: Fps) -> (Vec<i64>, i64) {
    let duration = fps.frame_at(2940.0);
    let chunks = plan_frames(duration, fps, PlanParams::default()).expect("planning 49 minutes");
    let anchors = awkward_cuts(&chunks, fps);
    (fill_between(&anchors, duration, fps), duration)
}

fn awkward_cuts(chunks: &[FrameSpan], fps: Fps) -> Vec<i64> {
    let start = |k: usize| chunks[k].start_frame;
    let seam = |k: usize| (chunks[k + 1].start_frame + chunks[k].end_frame) / 2;
    let into_overlap = fps.frame_at(3.0);
    let mut cuts = vec![
        start(2),
        start(5),
        start(9),
        start(13),
        start(3) + into_overlap,
        start(3) + into_overlap + 12,
        start(7) + into_overlap,
        start(11) + into_overlap,
        seam(4) - 1,
        seam(6),
        seam(8),
        seam(12) - 1,
        start(15) - 1,
        start(16) + 1,
        chunks[10].end_frame - 1,
    ];
    cuts.sort_unstable();
    cuts
}

/// Pseudo-random cuts between the anchors (and after the last), keeping
/// every shot between 0.5 s (at least 12 frames) and 30 s.
fn fill_between(anchors: &[i64], duration: i64, fps: Fps) -> Vec<i64> {
    let (shortest, longest) = (fps.frame_at(0.5).max(12), fps.frame_at(30.0));
    let mut random = Lcg(0x5107_1157);
    let mut cuts = Vec::new();
    let mut from = 0;
    for &to in anchors.iter().chain([&duration]) {
        let mut at = from;
        loop {
            let short = random.between(0, 2) == 0;
            let len = random.between(shortest, if short { fps.frame_at(5.0) } else { longest });
            if at + len > to - shortest {
                break;
            }
            at += len;
            cuts.push(at);
        }
        if to - at > longest {
            cuts.push(at + (to - at) / 2);
        }
        if to < duration {
            cuts.push(to);
        }
        from = to;
    }
    cuts
}

/// A linear congruential generator: deterministic, good enough for shot
/// lengths.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A value in `[low, high]`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low + 1).max(1) as u64) as i64
    }
}

/// Copies `film` (which must have sound) into an MPEG transport stream in
/// `dir` whose video starts `delay_seconds` after its audio, so the container
/// starts before the first video frame; returns the new file's path.
pub fn with_delayed_video(film: &Film, dir: &Path, delay_seconds: f64) -> PathBuf {
    let out = dir.join(format!("delayed-{delay_seconds}.ts"));
    let delay = delay_seconds.to_string();
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-i"])
        .arg(&film.path)
        .args(["-itsoffset", &delay, "-i"])
        .arg(&film.path)
        .args(["-map", "1:v", "-map", "0:a", "-c", "copy", "-f", "mpegts"])
        .arg(&out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "remuxing {} failed", film.path.display());
    out
}
