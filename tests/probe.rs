//! Probing real and generated media with ffprobe, and every way a file can
//! fail to be a film.

use std::path::{Path, PathBuf};
use std::process::Command;

use shotlist_shared::probe::{probe, probe_with, ProbeError, ProbeOptions};
use shotlist_shared::time::Fps;
use shotlist_tests::film::{film_dir, make_film, with_delayed_video, Film};

fn city() -> PathBuf {
    shotlist_tests::film::city_footage()
}

fn fps(s: &str) -> Fps {
    s.parse().unwrap()
}

/// A value of ffprobe's, read independently of the code under test.
fn ffprobe_value(path: &Path, args: &[&str]) -> f64 {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-of", "csv=p=0"])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe said {text:?}"))
}

/// Seconds from the container's start to the first decoded video frame.
fn first_frame_after_container_start(path: &Path) -> f64 {
    let first = ffprobe_value(
        path,
        &[
            "-select_streams",
            "V:0",
            "-read_intervals",
            "%+#1",
            "-show_entries",
            "frame=pts_time",
        ],
    );
    first - ffprobe_value(path, &["-show_entries", "format=start_time"])
}

fn short_film(rate: &str, with_audio: bool) -> Film {
    let fps = fps(rate);
    make_film(
        &film_dir(),
        fps,
        &[30, 42, 180],
        fps.frame_at(10.0),
        with_audio,
    )
}

async fn probe_error(path: &Path) -> ProbeError {
    match probe(path).await {
        Ok(info) => panic!("{} probed as {info:?}", path.display()),
        Err(e) => e,
    }
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args(args)
        .arg(out)
        .status();
    assert!(
        status.unwrap().success(),
        "ffmpeg could not make {}",
        out.display()
    );
}

#[tokio::test]
async fn city_footage_is_25_fps_190_frames_without_audio_and_starts_at_its_first_frame() {
    let info = probe(&city()).await.unwrap();
    assert_eq!(info.fps, fps("25/1"));
    assert_eq!(info.duration_frames, 190);
    assert!(!info.has_audio);
    assert_eq!((info.width, info.height), (720, 405));
    assert_eq!(info.codec, "mpeg2video");
    assert_eq!(info.format, "mpeg");
    // The container starts at 0.54 s, and so does the first frame: frame 0
    // is time zero and a seek adds nothing to the container's start.
    assert!(
        info.start_offset_seconds.abs() < 1e-9,
        "{}",
        info.start_offset_seconds
    );
    let measured = first_frame_after_container_start(&city());
    assert!(
        (info.start_offset_seconds - measured).abs() < 1e-6,
        "{measured}"
    );
}

#[tokio::test]
async fn a_generated_film_at_25_fps_has_its_exact_frame_count_and_sound() {
    let film = short_film("25/1", true);
    let info = probe(&film.path).await.unwrap();
    assert_eq!(info.fps, film.fps);
    assert_eq!(info.duration_frames, 250);
    assert!(info.has_audio);
    assert_eq!(
        (info.width, info.height, info.codec.as_str()),
        (128, 72, "h264")
    );
    assert!(info.format.contains("mp4"), "{}", info.format);
}

#[tokio::test]
async fn a_generated_film_at_23_976_fps_keeps_the_rate_as_a_fraction() {
    let film = short_film("24000/1001", false);
    let info = probe(&film.path).await.unwrap();
    assert_eq!(info.fps.to_string(), "24000/1001");
    assert_eq!(info.duration_frames, 240);
    assert_eq!(info.duration_frames, film.duration_frames);
    assert!(!info.has_audio);
}

#[tokio::test]
async fn a_transport_stream_whose_video_starts_late_is_counted_by_packets_with_its_offset() {
    let film = short_film("25/1", true);
    let dir = tempfile::tempdir().unwrap();
    let ts = with_delayed_video(&film, dir.path(), 0.5);
    let info = probe(&ts).await.unwrap();
    assert_eq!(
        info.duration_frames, 250,
        "transport streams keep no frame count: packets are counted"
    );
    assert_eq!(info.format, "mpegts");
    let measured = first_frame_after_container_start(&ts);
    eprintln!(
        "video starts {:.6} s after the container",
        info.start_offset_seconds
    );
    assert!(info.start_offset_seconds >= 0.5 && info.start_offset_seconds < 0.6);
    assert!(
        (info.start_offset_seconds - measured).abs() < 1e-6,
        "{measured}"
    );
}

#[tokio::test]
async fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.mp4");
    let err = probe_error(&path).await;
    assert!(matches!(err, ProbeError::Missing { .. }));
    assert_eq!(err.to_string(), format!("{}: no such file", path.display()));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_empty_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.mp4");
    std::fs::write(&path, b"").unwrap();
    let err = probe_error(&path).await.to_string();
    assert_eq!(err, format!("{}: empty file (0 bytes)", path.display()));
}

#[tokio::test]
async fn a_text_file_named_mp4_is_not_a_readable_media_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.mp4");
    std::fs::write(&path, "these are notes, not a film\n".repeat(50)).unwrap();
    let err = probe_error(&path).await;
    let text = err.to_string();
    assert!(matches!(err, ProbeError::Unreadable { .. }), "{text}");
    assert!(
        text.contains("notes.mp4") && text.contains("not a readable media file"),
        "{text}"
    );
    assert!(
        text.contains("Invalid data found"),
        "ffprobe's reason is quoted: {text}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_truncated_mp4_is_named_as_truncated() {
    let film = short_film("25/1", true);
    let bytes = std::fs::read(&film.path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.mp4");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = probe_error(&path).await;
    let text = err.to_string();
    assert!(matches!(err, ProbeError::Truncated { .. }), "{text}");
    assert!(
        text.contains("half.mp4") && text.contains("truncated") && text.contains("moov atom"),
        "{text}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_audio_only_file_has_no_video_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac"], &path);
    let err = probe_error(&path).await;
    assert_eq!(
        err.to_string(),
        format!("{} has no video stream", path.display())
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_folder_is_not_a_film() {
    let dir = tempfile::tempdir().unwrap();
    let err = probe_error(dir.path()).await.to_string();
    assert_eq!(err, format!("{}: not a regular file", dir.path().display()));
}

#[tokio::test]
async fn a_missing_ffprobe_says_to_install_ffmpeg() {
    let options = ProbeOptions {
        ffprobe: "/nonexistent/bin/ffprobe".into(),
        ..ProbeOptions::default()
    };
    let err = probe_with(&city(), &options).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cityCC0.mpg") && text.contains("ffprobe not found: install ffmpeg"),
        "{text}"
    );
    assert!(!err.is_retryable());
}
