//! What a media file holds, read with ffprobe before any chunk is planned.
//!
//! [`probe`] answers the questions the chunk plan and the analyzers need:
//! the frame rate as an exact fraction, the exact number of video frames,
//! where the first video frame lies relative to the container's start, and
//! whether there is sound. Time zero of a film is its first video frame, even
//! when the container starts earlier or later (an MPEG program stream often
//! starts at 0.54 s, audio may start before the video).
//!
//! The frame count is exact: taken from the stream header when the container
//! keeps one (MP4, MOV), otherwise counted packet by packet, which reads the
//! whole file once.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Fps;

/// How long ffprobe may take before it is stopped. Counting the packets of a
/// film of several hours over a slow disk can take minutes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// Frame rates above this are taken for timebase artefacts (`90000/1`) when a
/// stream offers another, plausible rate.
const MAX_PLAUSIBLE_FPS: f64 = 240.0;

/// How many trailing lines of ffprobe's diagnostics an error quotes.
const STDERR_LINES: usize = 4;

/// What ffprobe found in a media file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaInfo {
    /// Frame rate of the first video stream, stored as `"num/den"`.
    #[serde(with = "fps_text")]
    pub fps: Fps,
    /// The exact number of video frames.
    pub duration_frames: i64,
    /// Seconds from the container's start to the first video frame: what
    /// must be added to a film time to seek with ffmpeg's input `-ss`, which
    /// counts from the container's start.
    pub start_offset_seconds: f64,
    pub has_audio: bool,
    /// Film seconds at which the sound track ends, when the container says
    /// and it ends before the picture; past it the film is silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound_end_seconds: Option<f64>,
    pub width: u32,
    pub height: u32,
    /// Codec of the video stream as ffprobe names it (`h264`, `mpeg2video`).
    pub codec: String,
    /// Container format as ffprobe names it (`mpeg`, `mov,mp4,m4a,3gp,3g2,mj2`).
    pub format: String,
}

impl MediaInfo {
    /// The film's length in seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.fps.seconds_at(self.duration_frames)
    }
}

/// Why a file could not be probed. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: empty file (0 bytes)", path.display())]
    Empty { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot probe {}: ffprobe not found: install ffmpeg (looked for {program:?})",
        path.display()
    )]
    ToolMissing { path: PathBuf, program: PathBuf },
    #[error("cannot run ffprobe on {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: ffprobe did not finish within {seconds} s", path.display())]
    Timeout { path: PathBuf, seconds: u64 },
    #[error("{}: ffprobe was killed ({status}): {stderr}", path.display())]
    Killed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{}: truncated or incomplete media file ({detail})", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: not a readable media file ({detail})", path.display())]
    Unreadable { path: PathBuf, detail: String },
    #[error("{}: unexpected ffprobe output: {detail}", path.display())]
    BadOutput { path: PathBuf, detail: String },
    #[error("{} has no video stream", path.display())]
    NoVideo { path: PathBuf },
    #[error(
        "{}: no usable frame rate (r_frame_rate {r:?}, avg_frame_rate {avg:?})",
        path.display()
    )]
    NoFrameRate {
        path: PathBuf,
        r: String,
        avg: String,
    },
    #[error("{}: the video stream has no frames", path.display())]
    NoFrames { path: PathBuf },
    #[error(
        "{}: variable frame rate: its {frames} frames would last {counted:.3} s at {fps} fps, \
         but the video lasts {lasts:.3} s; shotlist counts time in frames at one rate: \
         convert it first, e.g. ffmpeg -i FILM -fps_mode cfr -r {fps} OUT.mp4",
        path.display()
    )]
    VariableFrameRate {
        path: PathBuf,
        fps: Fps,
        frames: i64,
        counted: f64,
        lasts: f64,
    },
}

impl ProbeError {
    /// Whether probing again may succeed: only when ffprobe could not be
    /// started for a passing reason or was killed from outside. A file that
    /// is missing, empty, unreadable or without video stays so.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProbeError::Spawn { .. } | ProbeError::Killed { .. })
    }
}

/// Which ffprobe to run and how long to let it run.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The ffprobe program, looked up on `PATH` unless it has a directory.
    pub ffprobe: PathBuf,
    pub timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ffprobe: PathBuf::from("ffprobe"),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// Probes `path` with the `ffprobe` on `PATH` and [`PROBE_TIMEOUT`].
pub async fn probe(path: &Path) -> Result<MediaInfo, ProbeError> {
    probe_with(path, &ProbeOptions::default()).await
}

/// Probes `path` with the given options.
///
/// Errors name the file and the problem: missing, empty, not media,
/// truncated, without a video stream, or ffprobe not installed.
pub async fn probe_with(path: &Path, options: &ProbeOptions) -> Result<MediaInfo, ProbeError> {
    if !is_remote(path) {
        check_file(path).await?;
    }
    let output = match run(path, options, &["-show_format", "-show_streams"]).await {
        Ok(output) => output,
        Err(e) => return Err(refine_truncated(e).await),
    };
    let report: Report = parse_json(path, &output.stdout)?;
    let video = report
        .first_video()
        .ok_or_else(|| ProbeError::NoVideo { path: path.into() })?;
    let fps = frame_rate(path, video)?;
    // The header's frame count is only a promise: a cut-off file whose
    // index comes first (`+faststart`) still carries the full count. The
    // packets actually present decide.
    let duration_frames = count_packets(path, options, video.index).await?;
    if let Some(promised) = video.frame_count().filter(|&n| n > duration_frames) {
        return Err(ProbeError::Truncated {
            path: path.into(),
            detail: format!(
                "its header promises {promised} frames but only {duration_frames} are in the file"
            ),
        });
    }
    if duration_frames <= 0 {
        return Err(ProbeError::NoFrames { path: path.into() });
    }
    let lasts = seconds(video.duration.as_deref());
    let fps = match check_constant_rate(path, fps, duration_frames, lasts) {
        Ok(()) => fps,
        Err(refused) => interlaced_frame_rate(video, fps, duration_frames, lasts).ok_or(refused)?,
    };
    let start_offset_seconds = report.start_offset(video);
    let audio = report
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("audio"));
    let picture_end = fps.seconds_at(duration_frames);
    let sound_end_seconds = audio
        .and_then(|a| {
            let start: f64 = a.start_time.as_deref()?.parse().ok()?;
            let length: f64 = a.duration.as_deref()?.parse().ok()?;
            Some(start + length - start_offset_seconds)
        })
        .filter(|end| end.is_finite() && *end < picture_end - 0.05);
    Ok(MediaInfo {
        fps,
        duration_frames,
        start_offset_seconds,
        has_audio: audio.is_some(),
        sound_end_seconds,
        width: video.width.unwrap_or(0),
        height: video.height.unwrap_or(0),
        codec: video.codec_name.clone().unwrap_or_default(),
        format: report
            .format
            .as_ref()
            .and_then(|f| f.format_name.clone())
            .unwrap_or_default(),
    })
}

async fn check_file(path: &Path) -> Result<(), ProbeError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProbeError::Missing { path: path.into() },
            _ => ProbeError::Io {
                path: path.into(),
                source,
            },
        })?;
    if !meta.is_file() {
        return Err(ProbeError::NotAFile { path: path.into() });
    }
    if meta.len() == 0 {
        return Err(ProbeError::Empty { path: path.into() });
    }
    Ok(())
}

/// Runs ffprobe with JSON output on `path` and returns its output when it
/// succeeded.
async fn run(path: &Path, options: &ProbeOptions, args: &[&str]) -> Result<Output, ProbeError> {
    let mut command = tokio::process::Command::new(&options.ffprobe);
    command
        .args(["-v", "error", "-hide_banner", "-of", "json"])
        .args(args);
    command
        .arg(file_url(path))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(options.timeout, command.output()).await {
        Err(_) => {
            return Err(ProbeError::Timeout {
                path: path.into(),
                seconds: options.timeout.as_secs(),
            })
        }
        Ok(Err(source)) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProbeError::ToolMissing {
                path: path.into(),
                program: options.ffprobe.clone(),
            })
        }
        Ok(Err(source)) => {
            return Err(ProbeError::Spawn {
                path: path.into(),
                source,
            })
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(output);
    }
    Err(failure(path, &output))
}

/// Whether `path` is an `http://` or `https://` URL, which ffprobe reads
/// itself, rather than a local file.
pub fn is_remote(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.starts_with("http://") || text.starts_with("https://")
}

/// The input argument for a local file: the `file:` protocol keeps a name
/// with a colon or a leading dash from being read as a URL or an option.
/// A remote URL is passed as it is.
fn file_url(path: &Path) -> std::ffi::OsString {
    if is_remote(path) {
        return path.as_os_str().to_owned();
    }
    let mut url = std::ffi::OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// Classifies a failed ffprobe run.
fn failure(path: &Path, output: &Output) -> ProbeError {
    let stderr = stderr_tail(&output.stderr, STDERR_LINES);
    let path = path.to_path_buf();
    if output.status.code().is_none() {
        return ProbeError::Killed {
            path,
            status: output.status.to_string(),
            stderr,
        };
    }
    let detail = if stderr.is_empty() {
        output.status.to_string()
    } else {
        stderr
    };
    ProbeError::Unreadable { path, detail }
}

/// An MP4 whose index (`moov`) is missing is reported as truncated when the
/// file does start as an MP4 (with an `ftyp` box): it was cut short, for
/// example by an upload that stopped. Anything else that ffprobe cannot read
/// stays unreadable.
async fn refine_truncated(error: ProbeError) -> ProbeError {
    let ProbeError::Unreadable { path, detail } = error else {
        return error;
    };
    if detail.contains("moov atom not found") && starts_like_mp4(&path).await {
        return ProbeError::Truncated { path, detail };
    }
    ProbeError::Unreadable { path, detail }
}

async fn starts_like_mp4(path: &Path) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 8];
    match tokio::fs::File::open(path).await {
        Ok(mut file) => file.read_exact(&mut head).await.is_ok() && &head[4..] == b"ftyp",
        Err(_) => false,
    }
}

/// The last `lines` non-empty lines of a tool's diagnostics, on one line.
pub(crate) fn stderr_tail(stderr: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..].join(" | ")
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, stdout: &[u8]) -> Result<T, ProbeError> {
    serde_json::from_slice(stdout).map_err(|e| ProbeError::BadOutput {
        path: path.into(),
        detail: e.to_string(),
    })
}

/// Counts the packets of stream `index`, one per frame for the video codecs
/// shotlist meets; reads the whole file.
async fn count_packets(path: &Path, options: &ProbeOptions, index: u32) -> Result<i64, ProbeError> {
    let index = index.to_string();
    let args = [
        "-count_packets",
        "-select_streams",
        &index,
        "-show_entries",
        "stream=index,nb_read_packets",
    ];
    let output = run(path, options, &args).await?;
    let report: Report = parse_json(path, &output.stdout)?;
    let counted = report
        .streams
        .first()
        .and_then(|s| s.nb_read_packets.as_deref());
    counted
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ProbeError::BadOutput {
            path: path.into(),
            detail: format!("no packet count for stream {index}"),
        })
}

/// The frame rate: `r_frame_rate` unless it is missing (`0/0`) or absurd,
/// then `avg_frame_rate`.
fn frame_rate(path: &Path, video: &StreamReport) -> Result<Fps, ProbeError> {
    let r = video.r_frame_rate.clone().unwrap_or_default();
    let avg = video.avg_frame_rate.clone().unwrap_or_default();
    let rates: Vec<Fps> = [&r, &avg]
        .into_iter()
        .filter_map(|s| s.parse::<Fps>().ok())
        .collect();
    let plausible = rates.iter().find(|f| f.as_f64() <= MAX_PLAUSIBLE_FPS);
    plausible
        .or(rates.first())
        .copied()
        .ok_or(ProbeError::NoFrameRate {
            path: path.into(),
            r,
            avg,
        })
}

/// How far the video stream's own duration may be from what its frames
/// last at the frame rate, as a fraction of that duration and at least
/// [`RATE_SLACK_SECONDS`], before the rate is taken to vary. Constant-rate
/// files agree to the frame; the slack only absorbs rounding in headers.
const RATE_SLACK: f64 = 0.02;
const RATE_SLACK_SECONDS: f64 = 0.5;

/// Refuses a video whose frames do not come at `fps` (a phone's variable
/// frame rate, a field rate reported for frames): every time shotlist
/// derives from a frame index would be wrong, silently. A stream that does
/// not say how long it lasts is taken at its word.
fn check_constant_rate(
    path: &Path,
    fps: Fps,
    frames: i64,
    lasts: Option<f64>,
) -> Result<(), ProbeError> {
    let Some(lasts) = lasts.filter(|s| *s > 0.0) else {
        return Ok(());
    };
    let counted = fps.seconds_at(frames);
    if (lasts - counted).abs() <= (lasts * RATE_SLACK).max(RATE_SLACK_SECONDS) {
        return Ok(());
    }
    Err(ProbeError::VariableFrameRate {
        path: path.into(),
        fps,
        frames,
        counted,
        lasts,
    })
}

/// The frame rate of an interlaced stream whose `r_frame_rate` is its field
/// rate (50/1 for 25i broadcast footage): `avg_frame_rate`, when it is half
/// of `fps` and its frames fill the stream's duration at that rate. Any
/// other disagreement stays a variable frame rate.
fn interlaced_frame_rate(
    video: &StreamReport,
    fps: Fps,
    frames: i64,
    lasts: Option<f64>,
) -> Option<Fps> {
    let interlaced = matches!(
        video.field_order.as_deref(),
        Some("tt" | "bb" | "tb" | "bt")
    );
    let avg: Fps = video.avg_frame_rate.as_deref()?.parse().ok()?;
    let halved = (fps.as_f64() - 2.0 * avg.as_f64()).abs() < 1e-6;
    let fits = check_constant_rate(Path::new(""), avg, frames, lasts).is_ok();
    (interlaced && halved && fits).then_some(avg)
}

/// ffprobe's JSON report, reduced to what shotlist reads.
#[derive(Debug, Deserialize)]
struct Report {
    #[serde(default)]
    streams: Vec<StreamReport>,
    format: Option<FormatReport>,
}

#[derive(Debug, Deserialize)]
struct StreamReport {
    index: u32,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    start_time: Option<String>,
    duration: Option<String>,
    nb_frames: Option<String>,
    nb_read_packets: Option<String>,
    /// `progressive`, or for interlaced video the order of its fields.
    field_order: Option<String>,
    #[serde(default)]
    disposition: Disposition,
}

#[derive(Debug, Default, Deserialize)]
struct Disposition {
    #[serde(default)]
    attached_pic: u8,
}

#[derive(Debug, Deserialize)]
struct FormatReport {
    format_name: Option<String>,
    start_time: Option<String>,
}

impl Report {
    /// The first video stream that is not a cover picture: the one ffmpeg's
    /// `V:0` stream specifier selects.
    fn first_video(&self) -> Option<&StreamReport> {
        let is_video = |s: &&StreamReport| s.codec_type.as_deref() == Some("video");
        self.streams
            .iter()
            .filter(is_video)
            .find(|s| s.disposition.attached_pic == 0)
    }

    /// Seconds from the container's start to the video's first frame.
    fn start_offset(&self, video: &StreamReport) -> f64 {
        let container = self
            .format
            .as_ref()
            .and_then(|f| seconds(f.start_time.as_deref()));
        match (seconds(video.start_time.as_deref()), container) {
            (Some(video), Some(container)) => (video - container).max(0.0),
            _ => 0.0,
        }
    }
}

impl StreamReport {
    fn frame_count(&self) -> Option<i64> {
        self.nb_frames.as_deref()?.parse().ok()
    }
}

/// ffprobe's seconds field, absent when it says `N/A`.
fn seconds(field: Option<&str>) -> Option<f64> {
    field?.parse::<f64>().ok().filter(|s| s.is_finite())
}

/// Serializes a frame rate as the text `"num/den"`.
mod fps_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::time::Fps;

    pub fn serialize<S: Serializer>(fps: &Fps, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(fps)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Fps, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(r: &str, avg: &str) -> StreamReport {
        let json = format!(
            r#"{{"index":0,"codec_type":"video","r_frame_rate":"{r}","avg_frame_rate":"{avg}"}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn the_frame_rate_falls_back_to_the_average_when_the_real_one_is_unusable() {
        let path = Path::new("x.mkv");
        assert_eq!(
            frame_rate(path, &stream("25/1", "25/1"))
                .unwrap()
                .to_string(),
            "25/1"
        );
        assert_eq!(
            frame_rate(path, &stream("0/0", "24000/1001"))
                .unwrap()
                .to_string(),
            "24000/1001"
        );
        assert_eq!(
            frame_rate(path, &stream("90000/1", "30000/1001"))
                .unwrap()
                .to_string(),
            "30000/1001"
        );
        let err = frame_rate(path, &stream("0/0", "0/0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.mkv") && err.contains("frame rate"), "{err}");
    }

    #[test]
    fn media_info_round_trips_through_json_with_the_rate_as_text() {
        let info = MediaInfo {
            fps: "24000/1001".parse().unwrap(),
            duration_frames: 70_000,
            start_offset_seconds: 0.5,
            has_audio: true,
            sound_end_seconds: None,
            width: 1920,
            height: 1080,
            codec: "h264".into(),
            format: "mpegts".into(),
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["fps"], "24000/1001");
        assert_eq!(json["durationFrames"], 70_000);
        assert_eq!(serde_json::from_value::<MediaInfo>(json).unwrap(), info);
    }

    #[test]
    fn the_offset_is_the_video_start_after_the_container_start() {
        let json = r#"{"streams":[{"index":0,"codec_type":"audio","start_time":"1.400000"},
            {"index":1,"codec_type":"video","start_time":"1.900000"}],
            "format":{"start_time":"1.400000"}}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        let video = report.first_video().unwrap();
        assert_eq!(video.index, 1);
        assert!((report.start_offset(video) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_interlaced_stream_reporting_its_field_rate_is_counted_in_frames() {
        let field_order = |order: &str| {
            let json = format!(
                r#"{{"index":0,"codec_type":"video","r_frame_rate":"50/1",
                    "avg_frame_rate":"25/1","field_order":"{order}"}}"#
            );
            serde_json::from_str::<StreamReport>(&json).unwrap()
        };
        let fields: Fps = "50/1".parse().unwrap();
        let rate = interlaced_frame_rate(&field_order("tt"), fields, 250, Some(10.0));
        assert_eq!(rate.map(|f| f.to_string()).as_deref(), Some("25/1"));
        // Progressive, or frames that do not fill the video at 25 either:
        // still a variable rate.
        assert_eq!(
            interlaced_frame_rate(&field_order("progressive"), fields, 250, Some(10.0)),
            None
        );
        assert_eq!(
            interlaced_frame_rate(&field_order("tt"), fields, 150, Some(10.0)),
            None
        );
    }

    #[test]
    fn frames_that_do_not_fill_the_video_at_its_rate_are_a_variable_rate() {
        let (path, fps) = (Path::new("phone.mp4"), "30/1".parse().unwrap());
        assert!(check_constant_rate(path, fps, 300, Some(10.0)).is_ok());
        assert!(check_constant_rate(path, fps, 300, Some(10.4)).is_ok());
        assert!(check_constant_rate(path, fps, 300, None).is_ok());
        let err = check_constant_rate(path, fps, 60, Some(3.933))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("phone.mp4: variable frame rate")
                && err.contains("60 frames would last 2.000 s at 30/1 fps")
                && err.contains("lasts 3.933 s"),
            "{err}"
        );
    }

    #[test]
    fn a_stderr_tail_keeps_the_last_lines() {
        assert_eq!(stderr_tail(b"a\n\nb\nc\n", 2), "b | c");
        assert_eq!(stderr_tail(b"", 2), "");
    }
}
