//! Cutting a chunk into the clip the model is shown: exactly the chunk's
//! frames, re-encoded as a small H.264 MP4 (see the module's "Frame
//! exactness").

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::Replicate;
use crate::analyzer::ffmpeg::{self, source_input};
use crate::analyzer::{AnalyzeError, ChunkRequest};

/// The clip's file name in the temporary folder.
const CLIP_FILE: &str = "clip.mp4";
/// The file ffmpeg writes its progress to, which says how many frames it
/// wrote.
const PROGRESS_FILE: &str = "progress.txt";
/// The tallest clip uploaded: enough for the model, small to send.
const MAX_HEIGHT: u32 = 720;
/// x264 quality of the clip: visibly fine, a few MB a minute at 720p.
const CRF: &str = "28";
/// How far before the chunk each cut starts reading; `None` reads from the
/// film's start.
const PREROLL_SECONDS: [Option<f64>; 3] = [Some(1.0), Some(10.0), None];
/// Frames at the film's very ends a decoder may not return before a clip
/// counts as short.
const END_SHORTFALL_FRAMES: i64 = 3;

/// Where ffmpeg reads one cut, in seconds from the container's start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CutWindow {
    /// The input seek (`-ss`), or `None` to read from the start.
    seek: Option<f64>,
    /// How long to read (`-t`).
    duration: f64,
    /// The video frames kept: from half a frame before the chunk's first
    /// to half a frame before its end.
    video: (f64, f64),
    /// The sound kept: the chunk's exact span.
    audio: (f64, f64),
}

impl CutWindow {
    fn new(request: &ChunkRequest, preroll: Option<f64>) -> CutWindow {
        let fps = request.media.fps.as_f64();
        let offset = request.media.start_offset_seconds;
        let at = |frame: f64| offset + frame / fps;
        let (start, end) = (request.start_frame as f64, request.end_frame as f64);
        let video = (at(start - 0.5), at(end - 0.5));
        let seek = preroll.map(|p| video.0 - p).filter(|&s| s > 0.0);
        CutWindow {
            seek,
            duration: at(end + 0.5) - seek.unwrap_or(0.0),
            video,
            audio: (at(start), at(end)),
        }
    }
}

impl Replicate {
    /// Cuts the chunk into `dir`, reading from further back until the clip
    /// holds every frame of the chunk.
    pub(super) async fn cut(
        &self,
        request: &ChunkRequest,
        dir: &Path,
        until: Instant,
    ) -> Result<PathBuf, AnalyzeError> {
        let input = source_input(request).await?;
        let len = request.len();
        let started = Instant::now();
        let mut frames = 0;
        for preroll in PREROLL_SECONDS {
            let window = CutWindow::new(request, preroll);
            frames = self.run_cut(request, &input, window, dir, until).await?;
            match judge_clip(request, frames, window.seek.is_some()) {
                ClipVerdict::Whole => {
                    let seconds = started.elapsed().as_secs_f64();
                    tracing::debug!(frames, seconds, "chunk cut");
                    return Ok(dir.join(CLIP_FILE));
                }
                ClipVerdict::Tolerated => {
                    tracing::warn!(frames, len, "the clip misses frames no decoder returns");
                    return Ok(dir.join(CLIP_FILE));
                }
                ClipVerdict::ReadFurtherBack => {
                    tracing::debug!(
                        frames,
                        len,
                        "seek overshot, cutting again from further back"
                    );
                }
                ClipVerdict::Short => break,
            }
        }
        Err(AnalyzeError::BadOutput {
            chunk_index: request.chunk_index,
            detail: format!(
                "the clip of [{}, {}) holds {frames} frames, not {len}",
                request.start_frame, request.end_frame
            ),
        })
    }

    /// One ffmpeg run; the number of video frames it wrote.
    async fn run_cut(
        &self,
        request: &ChunkRequest,
        input: &OsString,
        window: CutWindow,
        dir: &Path,
        until: Instant,
    ) -> Result<i64, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let mut command = ffmpeg::command(&self.config.ffmpeg, dir);
        command.args(cut_args(request, input, window));
        let limit = until.saturating_duration_since(Instant::now());
        ffmpeg::run(command, request, limit).await?;
        let progress = tokio::fs::read_to_string(dir.join(PROGRESS_FILE))
            .await
            .map_err(|source| AnalyzeError::Io {
                chunk_index,
                context: "reading ffmpeg's progress".into(),
                source,
            })?;
        frames_written(&progress).ok_or_else(|| AnalyzeError::BadOutput {
            chunk_index,
            detail: "ffmpeg did not say how many frames it wrote".into(),
        })
    }
}

/// What a cut of `frames` frames means for the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClipVerdict {
    /// Every frame of the chunk is there.
    Whole,
    /// A few frames are missing at the film's start or end, which some files
    /// hold and no decoder returns.
    Tolerated,
    /// Frames are missing and the cut began with a seek, which may have
    /// landed after the chunk's start.
    ReadFurtherBack,
    /// Frames are missing even reading from the film's start.
    Short,
}

fn judge_clip(request: &ChunkRequest, frames: i64, seeked: bool) -> ClipVerdict {
    let short = request.len() - frames;
    let touches_end = request.end_frame == request.media.duration_frames;
    if short == 0 {
        ClipVerdict::Whole
    } else if short > 0 && short <= END_SHORTFALL_FRAMES && (touches_end || !seeked) {
        ClipVerdict::Tolerated
    } else if seeked {
        ClipVerdict::ReadFurtherBack
    } else {
        ClipVerdict::Short
    }
}

/// ffmpeg's arguments for one cut (see the module's "Frame exactness").
fn cut_args(request: &ChunkRequest, input: &OsString, window: CutWindow) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
    ]);
    push(&["-copyts", "-start_at_zero"]);
    if let Some(seek) = window.seek {
        push(&["-ss", &format!("{seek:.6}")]);
    }
    push(&["-t", &format!("{:.6}", window.duration), "-i"]);
    args.push(input.clone());
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let (v0, v1) = window.video;
    let mut graph = format!(
        "[0:V:0]trim=start={v0:.6}:end={v1:.6},setpts=PTS-STARTPTS,\
         scale=w=-2:h='min({MAX_HEIGHT},trunc(ih/2)*2)',format=yuv420p[v]"
    );
    if request.media.has_audio {
        let (a0, a1) = window.audio;
        graph.push_str(&format!(
            ";[0:a:0]atrim=start={a0:.6}:end={a1:.6},asetpts=PTS-STARTPTS[a]"
        ));
    }
    push(&["-filter_complex", &graph, "-map", "[v]"]);
    push(&[
        "-frames:v",
        &request.len().to_string(),
        "-fps_mode:v",
        "passthrough",
    ]);
    push(&["-c:v", "libx264", "-preset", "veryfast", "-crf", CRF]);
    if request.media.has_audio {
        push(&["-map", "[a]", "-c:a", "aac", "-b:a", "96k"]);
    }
    push(&[
        "-movflags",
        "+faststart",
        "-progress",
        PROGRESS_FILE,
        "-f",
        "mp4",
        CLIP_FILE,
    ]);
    args
}

/// The last `frame=` count of ffmpeg's `-progress` output.
fn frames_written(progress: &str) -> Option<i64> {
    progress
        .lines()
        .filter_map(|line| line.strip_prefix("frame="))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::local::{self, tests::media};

    /// Frames `[start_frame, end_frame)` of a 25 fps film with sound whose
    /// video starts `offset` seconds into the container.
    fn request(start_frame: i64, end_frame: i64, offset: f64) -> ChunkRequest {
        local::tests::request(start_frame, end_frame, media("25/1", offset, true))
    }

    #[test]
    fn the_cut_keeps_half_a_frame_either_side_of_the_chunk_s_frame_times() {
        let w = CutWindow::new(&request(250, 500, 0.54), Some(1.0));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(w.video.0, 0.54 + 249.5 / 25.0), "{w:?}");
        assert!(close(w.video.1, 0.54 + 499.5 / 25.0), "{w:?}");
        assert!(close(w.audio.0, 0.54 + 10.0) && close(w.audio.1, 0.54 + 20.0));
        assert!(close(w.seek.unwrap(), w.video.0 - 1.0));
        assert!(close(w.seek.unwrap() + w.duration, 0.54 + 500.5 / 25.0));
        // Near the film's start there is nothing to seek over.
        assert_eq!(CutWindow::new(&request(10, 500, 0.0), Some(1.0)).seek, None);
        assert_eq!(CutWindow::new(&request(250, 500, 0.0), None).seek, None);
    }

    #[test]
    fn the_cut_scales_to_720_lines_and_stops_at_the_chunk_s_frame_count() {
        let input = OsString::from("file:/films/a.mp4");
        let args = cut_args(
            &request(250, 500, 0.0),
            &input,
            CutWindow::new(&request(250, 500, 0.0), Some(1.0)),
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |flag: &str| text[text.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("-frames:v"), "250");
        assert!(after("-filter_complex").contains("min(720,"), "{text:?}");
        assert!(
            after("-filter_complex").contains("[0:a:0]atrim"),
            "{text:?}"
        );
        assert_eq!(after("-i"), "file:/films/a.mp4");
        assert!(text.iter().position(|a| a == "-copyts") < text.iter().position(|a| a == "-i"));
    }

    #[test]
    fn a_short_clip_is_cut_again_from_further_back_unless_the_film_s_ends_explain_it() {
        use ClipVerdict::*;
        let middle = request(250, 500, 0.0);
        assert_eq!(judge_clip(&middle, 250, true), Whole);
        assert_eq!(judge_clip(&middle, 249, true), ReadFurtherBack);
        assert_eq!(judge_clip(&middle, 200, false), Short);
        // Read from the film's start: a few missing frames are the file's.
        assert_eq!(judge_clip(&request(0, 500, 0.0), 498, false), Tolerated);
        let last = request(9_800, 10_000, 0.0);
        assert_eq!(judge_clip(&last, 197, true), Tolerated);
        assert_eq!(judge_clip(&last, 150, true), ReadFurtherBack);
    }

    #[test]
    fn the_frame_count_is_the_last_progress_report() {
        let progress = "frame=10\nfps=0.0\nprogress=continue\nframe=250\nprogress=end\n";
        assert_eq!(frames_written(progress), Some(250));
        assert_eq!(frames_written("progress=end\n"), None);
    }
}
