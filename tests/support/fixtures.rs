//! Row factories for database tests: a film as probing would describe it,
//! registered and described without touching a real file; and what one of
//! its chunks then looks like.

use shotlist_shared::db::Db;
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::MediaInfo;
use shotlist_shared::time::Fps;
use uuid::Uuid;

/// What probing a film of `duration_frames` frames at `fps` could say.
pub fn media(duration_frames: i64, fps: Fps) -> MediaInfo {
    MediaInfo {
        fps,
        duration_frames,
        start_offset_seconds: 0.0,
        has_audio: false,
        sound_end_seconds: None,
        width: 320,
        height: 240,
        codec: "h264".into(),
        format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
    }
}

/// A new film of `frames` frames at `rate` (e.g. `"25/1"`), registered with
/// the default plan and described, so its chunks can be claimed.
///
/// # Panics
/// When the rate is invalid or the database refuses: this is test support.
pub async fn described_film(db: &Db, frames: i64, rate: &str) -> Uuid {
    let fps: Fps = rate.parse().expect("a valid frame rate");
    let id = Uuid::new_v4();
    db.register_film(
        id,
        "/films/test.mp4",
        &media(frames, fps),
        PlanParams::default(),
    )
    .await
    .expect("film registered");
    id
}

/// One chunk's state as `chunk_progress` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkState {
    pub status: String,
    pub attempts: i64,
    /// The last error recorded on the chunk; empty when none.
    pub error: String,
}

/// The state of chunk `index` of `video_id`.
///
/// # Panics
/// When the database refuses or the chunk does not exist.
pub async fn chunk_state(db: &Db, video_id: Uuid, index: usize) -> ChunkState {
    let progress = db.chunk_progress(video_id).await.expect("progress");
    let chunk = &progress["chunks"][index];
    ChunkState {
        status: chunk["status"].as_str().expect("a status").to_string(),
        attempts: chunk["attempts"].as_i64().expect("attempts"),
        error: chunk["error"].as_str().unwrap_or_default().to_string(),
    }
}
