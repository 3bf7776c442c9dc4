//! A truncated MP4 whose index comes first (`-movflags +faststart`, what
//! most web uploads are) is named as truncated by the probe.

use std::process::Command;

use shotlist_shared::probe::probe;

/// The header promises 500 frames, but only a third of the file is there:
/// the packets present decide, and the probe says the file is truncated.
#[tokio::test]
async fn a_truncated_faststart_mp4_is_named_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=128x72:r=25:d=20",
        ])
        .args(["-c:v", "libx264", "-g", "300", "-movflags", "+faststart"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = match probe(&cut).await {
        Ok(media) => panic!(
            "a third of an MP4 probes as {} frames",
            media.duration_frames
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cut.mp4") && err.contains("truncated"),
        "{err}"
    );
    assert!(err.contains("promises 500 frames"), "{err}");
}
