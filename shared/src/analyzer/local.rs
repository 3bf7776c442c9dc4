//! The local analyzer: ffmpeg finds the cuts and the silences of a chunk.
//!
//! One ffmpeg process per chunk reads the source file straight over the
//! chunk's time range (no pre-cut file), scores every video frame for a
//! scene change and, when there is sound, runs `silencedetect`. The filters
//! print what they measure to files in a private temporary folder, so any
//! number of chunks can run at once.
//!
//! # Frame exactness
//!
//! A cut is reported at an absolute frame index that does not depend on where
//! the chunk starts, whether or not that is a keyframe:
//!
//! * ffmpeg runs with `-copyts -start_at_zero`, so every frame keeps its own
//!   timestamp, counted from the container's start; the frame index is
//!   `round((pts - start_offset) * fps)`. Without `-copyts`, ffmpeg 5.1
//!   rebases timestamps on the seek target, and after some seeks in an MPEG
//!   program stream they come out half a frame off, which makes a rounded
//!   index ambiguous.
//! * The scene score of a frame depends on the two frames before it (ffmpeg
//!   compares each frame's difference with the previous difference), so
//!   decoding starts at least one frame before the chunk: then every frame
//!   after the chunk's first is scored exactly as in a pass over the whole
//!   film. A cut at the chunk's first frame is not reported: the chunk's
//!   first shot always starts there, and the previous chunk sees that cut in
//!   the overlap.
//! * The seek starts a second earlier still, because ffmpeg's seek in an
//!   MPEG program stream can land on a keyframe after the target. The frames
//!   actually decoded are checked; when decoding began too late, the chunk is
//!   read again from further back, and at last from the film's start.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{ChunkAnalysis, Shot};

use super::ffmpeg::{self, source_input};
use super::{shots_from_cuts, AnalyzeError, Analyzer, ChunkRequest};

/// File the scene scores are printed to, inside the run's own folder.
const SCENES_FILE: &str = "scenes.txt";
/// File the silence boundaries are printed to, inside the run's own folder.
const SILENCE_FILE: &str = "silence.txt";
/// How far before the chunk each attempt starts reading; `None` reads from
/// the film's start.
const PREROLL_SECONDS: [Option<f64>; 3] = [Some(1.0), Some(10.0), None];
/// How much of a frame before the chunk's end the reading stops; less than
/// half a frame, so the last frame is read whatever ffmpeg counts `-t` from.
const END_MARGIN_FRAMES: f64 = 0.25;
/// Frames at the film's very end a decoder may not return (a last B-frame
/// without its reference) before a chunk counts as not fully decoded.
const END_SHORTFALL_FRAMES: i64 = 3;
/// Sound shorter than this in a shot is reported as silence.
const MIN_SOUND_SECONDS: f64 = 0.05;

/// Finds cuts by scene-change detection and measures sound with ffmpeg.
#[derive(Debug, Clone)]
pub struct LocalAnalyzer {
    /// Scene score (0..1) above which a frame starts a new shot.
    pub scene_threshold: f64,
    /// Level in dB below which audio counts as silence.
    pub silence_noise_db: f64,
    /// Shortest silence, in seconds, that is reported.
    pub min_silence_seconds: f64,
    /// How long one ffmpeg run may take.
    pub timeout: Duration,
    /// The ffmpeg program, looked up on `PATH` unless it has a directory.
    pub ffmpeg: PathBuf,
    /// ffmpeg's decoding threads (`-threads`) for one chunk; `None` leaves
    /// ffmpeg's default of about one per core, right for one chunk alone
    /// on the machine (a Lambda function). When several chunks are analyzed
    /// at once, [`LocalAnalyzer::threads_sharing_cores`] shares the cores
    /// out instead: five ffmpegs with a thread per core each oversubscribe
    /// a small machine, and their threads then cost more than they decode.
    pub decoder_threads: Option<NonZeroUsize>,
}

impl Default for LocalAnalyzer {
    fn default() -> Self {
        LocalAnalyzer {
            scene_threshold: 0.3,
            silence_noise_db: -35.0,
            min_silence_seconds: 0.3,
            timeout: Duration::from_secs(300),
            ffmpeg: PathBuf::from("ffmpeg"),
            decoder_threads: None,
        }
    }
}

#[async_trait::async_trait]
impl Analyzer for LocalAnalyzer {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        request.validate()?;
        let input = source_input(request).await?;
        let measured = self.measure(request, &input).await?;
        let cuts = measured.cuts(request, self.scene_threshold);
        let mut shots = shots_from_cuts(request.len(), &cuts);
        for shot in &mut shots {
            shot.description = describe(request, shot, measured.silences.as_deref());
        }
        tracing::debug!(
            chunk_index = request.chunk_index,
            shots = shots.len(),
            "chunk analyzed"
        );
        Ok(ChunkAnalysis { shots })
    }
}

/// What one ffmpeg run measured, in absolute frames and film seconds.
#[derive(Debug, Default)]
struct Measurement {
    /// Every decoded frame's index and scene score, in decoding order.
    frames: Vec<(i64, f64)>,
    /// Silent intervals; `None` when the film has no audio track.
    silences: Option<Vec<(f64, f64)>>,
}

impl Measurement {
    fn first_frame(&self) -> Option<i64> {
        self.frames.iter().map(|&(n, _)| n).min()
    }

    fn last_frame(&self) -> Option<i64> {
        self.frames.iter().map(|&(n, _)| n).max()
    }

    /// Chunk-local cuts: frames inside the chunk, after its first, that score
    /// above `threshold`.
    fn cuts(&self, request: &ChunkRequest, threshold: f64) -> Vec<i64> {
        let inside = |n: i64| n > request.start_frame && n < request.end_frame;
        let cuts = self
            .frames
            .iter()
            .filter(|&&(n, score)| inside(n) && score > threshold);
        cuts.map(|&(n, _)| n - request.start_frame).collect()
    }
}

/// Where ffmpeg reads one attempt, in seconds from the container's start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    /// The input seek (`-ss`), or `None` to read from the start.
    seek: Option<f64>,
    /// How long to read (`-t`).
    duration: f64,
}

impl Window {
    /// The window that starts `preroll` seconds before the frame ahead of the
    /// chunk (half a frame earlier still, so rounding cannot skip it).
    fn new(request: &ChunkRequest, preroll: Option<f64>) -> Window {
        let fps = request.media.fps.as_f64();
        let offset = request.media.start_offset_seconds;
        let lead = (request.start_frame - 1).max(0) as f64;
        let seek = preroll
            .map(|p| offset + (lead - 0.5) / fps - p)
            .filter(|&s| s > 0.0);
        let end = offset + (request.end_frame as f64 - END_MARGIN_FRAMES) / fps;
        Window {
            seek,
            duration: end - seek.unwrap_or(0.0),
        }
    }
}

impl LocalAnalyzer {
    /// Decoding threads for each of `concurrency` chunks analyzed at once:
    /// this machine's cores shared out, rounded up (a thread too many costs
    /// less than a core left idle), at least one each.
    pub fn threads_sharing_cores(concurrency: usize) -> NonZeroUsize {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        NonZeroUsize::new(cores.div_ceil(concurrency.max(1))).unwrap_or(NonZeroUsize::MIN)
    }

    /// Runs ffmpeg over the chunk, reading from further back until the
    /// decoded frames include the one before the chunk.
    async fn measure(
        &self,
        request: &ChunkRequest,
        input: &OsString,
    ) -> Result<Measurement, AnalyzeError> {
        let lead = (request.start_frame - 1).max(0);
        let mut measured = Measurement::default();
        for preroll in PREROLL_SECONDS {
            let window = Window::new(request, preroll);
            measured = self.run(request, input, window).await?;
            // After a seek between keyframes a decoder may return nothing.
            let first = measured.first_frame();
            if first.is_some_and(|first| first <= lead) || window.seek.is_none() {
                break;
            }
            tracing::debug!(
                chunk_index = request.chunk_index,
                first = ?first,
                lead,
                "seek overshot, reading again"
            );
        }
        check_coverage(request, &measured)?;
        Ok(measured)
    }

    /// One ffmpeg run in its own temporary folder.
    async fn run(
        &self,
        request: &ChunkRequest,
        input: &OsString,
        window: Window,
    ) -> Result<Measurement, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let io = |context: &str| {
            let context = context.to_string();
            move |source| AnalyzeError::Io {
                chunk_index,
                context,
                source,
            }
        };
        let dir = tempfile::TempDir::new().map_err(io("creating a temporary folder"))?;
        self.run_ffmpeg(request, input, window, dir.path()).await?;
        let scenes = tokio::fs::read_to_string(dir.path().join(SCENES_FILE)).await;
        let frames = parse_scores(
            &scenes.map_err(io("reading the scene scores"))?,
            &request.media,
        );
        let silences = match request.media.has_audio {
            false => None,
            true => {
                let text = tokio::fs::read_to_string(dir.path().join(SILENCE_FILE)).await;
                Some(parse_silences(
                    &text.map_err(io("reading the silences"))?,
                    &request.media,
                ))
            }
        };
        Ok(Measurement { frames, silences })
    }

    async fn run_ffmpeg(
        &self,
        request: &ChunkRequest,
        input: &OsString,
        window: Window,
        dir: &Path,
    ) -> Result<(), AnalyzeError> {
        let mut command = ffmpeg::command(&self.ffmpeg, dir);
        command.args(["-nostdin", "-hide_banner", "-nostats", "-loglevel", "error"]);
        command.args(["-copyts", "-start_at_zero"]);
        if let Some(threads) = self.decoder_threads {
            command.args(["-threads", &threads.to_string()]);
        }
        if let Some(seek) = window.seek {
            command.args(["-ss", &format!("{seek:.6}")]);
        }
        command
            .args(["-t", &format!("{:.6}", window.duration)])
            .arg("-i")
            .arg(input);
        command.args([
            "-filter_complex",
            &self.filter_graph(request.media.has_audio, window.duration),
        ]);
        command.args(["-map", "[v]"]);
        if request.media.has_audio {
            command.args(["-map", "[a]"]);
        }
        command.args(["-f", "null", "-"]);
        ffmpeg::run(command, request, self.timeout).await
    }

    /// Scores every frame (`select` passes them all, with their score) and,
    /// with sound, marks where silences start and end. The sound is padded
    /// with silence to the window's length: a sound track that ends before
    /// the picture would otherwise leave its missing part unmeasured, and
    /// counted as sound.
    fn filter_graph(&self, has_audio: bool, duration: f64) -> String {
        let video = format!(
            "[0:V:0]settb=AVTB,select='gte(scene,0)',metadata=mode=print:file={SCENES_FILE}[v]"
        );
        if !has_audio {
            return video;
        }
        let (noise, d) = (self.silence_noise_db, self.min_silence_seconds);
        let audio = format!(
            "[0:a:0]apad=whole_dur={duration:.6},silencedetect=noise={noise}dB:d={d},ametadata=mode=print:file={SILENCE_FILE}[a]"
        );
        format!("{video};{audio}")
    }
}

fn no_frames(request: &ChunkRequest) -> AnalyzeError {
    AnalyzeError::BadOutput {
        chunk_index: request.chunk_index,
        detail: format!(
            "ffmpeg decoded no video frames for [{}, {})",
            request.start_frame, request.end_frame
        ),
    }
}

/// Checks that the decoded frames cover the chunk. A few frames short at the
/// film's ends are tolerated: some files start or end in frames no decoder
/// returns.
fn check_coverage(request: &ChunkRequest, measured: &Measurement) -> Result<(), AnalyzeError> {
    let (Some(first), Some(last)) = (measured.first_frame(), measured.last_frame()) else {
        return Err(no_frames(request));
    };
    let chunk_index = request.chunk_index;
    if first > (request.start_frame - 1).max(0) {
        tracing::warn!(
            chunk_index,
            first,
            "decoding from the film's start begins after frame 0"
        );
    }
    if last >= request.end_frame - 1 {
        return Ok(());
    }
    if request.end_frame == request.media.duration_frames
        && request.end_frame - 1 - last <= END_SHORTFALL_FRAMES
    {
        tracing::warn!(
            chunk_index,
            last,
            "decoding ended before the film's last frame"
        );
        return Ok(());
    }
    Err(AnalyzeError::BadOutput {
        chunk_index,
        detail: format!(
            "decoding ended at frame {last}, before the chunk's end at {}",
            request.end_frame
        ),
    })
}

/// Reads `metadata=mode=print` output: a `frame:N pts:P pts_time:T` line per
/// frame (P in microseconds after `settb=AVTB`), then its `key=value` lines.
/// Returns absolute frame indexes with their scene scores.
fn parse_scores(text: &str, media: &crate::probe::MediaInfo) -> Vec<(i64, f64)> {
    let mut frames = Vec::new();
    // A frame without a timestamp has no index: its score is dropped too.
    let mut current: Option<(i64, f64)> = None;
    for line in text.lines() {
        if line.starts_with("frame:") {
            frames.extend(current.take());
            let pts = line
                .split_whitespace()
                .find_map(|t| t.strip_prefix("pts:")?.parse::<i64>().ok());
            current = pts.map(|pts| (frame_index(pts as f64 / 1e6, media), 0.0));
        } else if let (Some(score), Some(frame)) =
            (value_of(line, "lavfi.scene_score"), current.as_mut())
        {
            frame.1 = score;
        }
    }
    frames.extend(current);
    frames
}

/// Reads `silencedetect` marks into silent intervals in film seconds; a
/// silence still open at the end of the run lasts to infinity.
fn parse_silences(text: &str, media: &crate::probe::MediaInfo) -> Vec<(f64, f64)> {
    let film_seconds = |t: f64| t - media.start_offset_seconds;
    let mut silences = Vec::new();
    let mut open = None;
    for line in text.lines() {
        if let Some(start) = value_of(line, "lavfi.silence_start") {
            open = Some(film_seconds(start));
        } else if let Some(end) = value_of(line, "lavfi.silence_end") {
            silences.push((open.take().unwrap_or(f64::NEG_INFINITY), film_seconds(end)));
        }
    }
    silences.extend(open.map(|start| (start, f64::INFINITY)));
    // Past the sound track's end there is nothing to measure: silence.
    if let Some(end) = media.sound_end_seconds {
        silences = silences
            .into_iter()
            .filter_map(|(a, b)| (a < end).then_some((a, b.min(end))))
            .collect();
        silences.push((end, f64::INFINITY));
    }
    silences
}

fn value_of(line: &str, key: &str) -> Option<f64> {
    line.strip_prefix(key)?
        .strip_prefix('=')?
        .trim()
        .parse()
        .ok()
}

/// The frame shown at `seconds` from the container's start.
fn frame_index(seconds: f64, media: &crate::probe::MediaInfo) -> i64 {
    ((seconds - media.start_offset_seconds) * media.fps.as_f64()).round() as i64
}

/// What was measured in the part of a shot this chunk saw: whether it has
/// sound and how much. The shot's length is not repeated (the timecodes say
/// it, and a shot longer than a chunk is seen in parts).
fn describe(request: &ChunkRequest, shot: &Shot, silences: Option<&[(f64, f64)]>) -> String {
    let fps = request.media.fps;
    let start = fps.seconds_at(request.start_frame + shot.start_frame);
    let end = fps.seconds_at(request.start_frame + shot.end_frame);
    let length = end - start;
    let Some(silences) = silences else {
        return "no audio track".to_string();
    };
    let silent: f64 = silences
        .iter()
        .map(|&(a, b)| (b.min(end) - a.max(start)).max(0.0))
        .sum();
    let sound = (length - silent).max(0.0);
    if sound < MIN_SOUND_SECONDS {
        "silent".to_string()
    } else if length - sound < MIN_SOUND_SECONDS {
        "sound throughout".to_string()
    } else {
        format!("sound for {sound:.1} s of {length:.1} s")
    }
}

/// The analyzers' test fixtures are here; the other analyzers' tests
/// use them too.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::probe::MediaInfo;

    /// A 10 000-frame film at `fps` whose video starts `offset` seconds
    /// into the container.
    pub(crate) fn media(fps: &str, offset: f64, has_audio: bool) -> MediaInfo {
        MediaInfo {
            fps: fps.parse().unwrap(),
            duration_frames: 10_000,
            start_offset_seconds: offset,
            has_audio,
            sound_end_seconds: None,
            width: 160,
            height: 90,
            codec: "h264".into(),
            format: "mp4".into(),
        }
    }

    /// Frames `[start_frame, end_frame)` of `/films/a.mp4`, as chunk 2.
    pub(crate) fn request(start_frame: i64, end_frame: i64, media: MediaInfo) -> ChunkRequest {
        let source = "/films/a.mp4".into();
        ChunkRequest {
            video_id: uuid::Uuid::nil(),
            chunk_index: 2,
            source,
            media,
            start_frame,
            end_frame,
            deadline: None,
        }
    }

    #[test]
    fn scores_are_read_per_frame_and_other_metadata_is_ignored() {
        let text = "frame:0    pts:540000  pts_time:0.54\nlavfi.scene_score=0.000000\n\
                    timecode=00:00:00:00\n\
                    frame:1    pts:NOPTS   pts_time:NOPTS\nlavfi.scene_score=0.9\n\
                    frame:2    pts:580000  pts_time:0.58\nlavfi.scene_score=0.512000\n";
        let frames = parse_scores(text, &media("25/1", 0.5, false));
        assert_eq!(frames, [(1, 0.0), (2, 0.512)]);
    }

    #[test]
    fn silences_are_moved_to_film_time_and_an_open_one_lasts_to_the_end() {
        let text = "frame:3 pts:1 pts_time:1\nlavfi.silence_start=3.5\nlavfi.silence_end=7.5\n\
                    lavfi.silence_duration=4\nlavfi.silence_start=10.5\n";
        let silences = parse_silences(text, &media("25/1", 0.5, true));
        assert_eq!(silences, [(3.0, 7.0), (10.0, f64::INFINITY)]);
    }

    #[test]
    fn past_the_end_of_the_sound_track_is_silence() {
        let mut m = media("25/1", 0.5, true);
        m.sound_end_seconds = Some(8.0);
        let text = "lavfi.silence_start=3.5\nlavfi.silence_end=7.5\nlavfi.silence_start=8.7\n";
        assert_eq!(parse_silences(text, &m), [(3.0, 7.0), (8.0, f64::INFINITY)]);
        // Nothing measured at all (the window lies past the sound's end).
        assert_eq!(parse_silences("", &m), [(8.0, f64::INFINITY)]);
    }

    #[test]
    fn the_window_starts_a_preroll_before_the_frame_ahead_of_the_chunk() {
        let r = request(250, 500, media("25/1", 0.54, false));
        let w = Window::new(&r, Some(1.0));
        let seek = w.seek.unwrap();
        assert!((seek - (0.54 + 248.5 / 25.0 - 1.0)).abs() < 1e-9, "{seek}");
        assert!((seek + w.duration - (0.54 + 499.75 / 25.0)).abs() < 1e-9);
        assert_eq!(Window::new(&r, None).seek, None);
        assert_eq!(
            Window::new(&request(0, 500, media("25/1", 0.0, false)), Some(1.0)).seek,
            None
        );
    }

    #[test]
    fn descriptions_state_the_sound_measured() {
        let r = request(0, 250, media("25/1", 0.0, true));
        let shot = shots_from_cuts(250, &[100]).remove(1);
        assert_eq!(
            describe(&r, &shot, Some(&[(3.0, 7.0)])),
            "sound for 3.0 s of 6.0 s"
        );
        assert_eq!(describe(&r, &shot, Some(&[(3.5, f64::INFINITY)])), "silent");
        assert_eq!(describe(&r, &shot, Some(&[(0.0, 1.0)])), "sound throughout");
        assert_eq!(describe(&r, &shot, None), "no audio track");
    }

    #[test]
    fn only_cuts_after_the_chunk_start_and_before_its_end_count() {
        let r = request(100, 200, media("25/1", 0.0, false));
        let m = Measurement {
            frames: vec![
                (99, 0.9),
                (100, 0.9),
                (101, 0.9),
                (150, 0.2),
                (199, 0.5),
                (200, 0.9),
            ],
            silences: None,
        };
        assert_eq!(m.cuts(&r, 0.3), [1, 99]);
    }
}
