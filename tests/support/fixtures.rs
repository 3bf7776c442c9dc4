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

/// Takes chunk `index` of `video_id` from the worker that holds it, as if its
/// lease had run out: the lease is expired and the chunk claimed again in one
/// transaction, so a renewal by the holder cannot come in between. Answers
/// the new lease token (the new holder's lease lasts ten minutes).
///
/// # Panics
/// When the chunk is not processing or the database refuses.
pub async fn take_over(url: &str, video_id: Uuid, index: u32) -> Uuid {
    use tokio_postgres::types::Type;
    let mut client = crate::pg::connect(url).await;
    let tx = client.transaction().await.expect("begin");
    let index = index as i32;
    let expired = tx
        .execute_typed(
            "UPDATE shotlist.chunks SET lease_until = now() - interval '1 second' \
             WHERE video_id = $1 AND chunk_index = $2 AND status = 'processing'",
            &[(&video_id, Type::UUID), (&index, Type::INT4)],
        )
        .await
        .expect("expire the lease");
    assert_eq!(expired, 1, "chunk {index} of {video_id} is not processing");
    let claim: serde_json::Value = tx
        .query_typed_one(
            "SELECT public.claim_chunk($1, $2, 600, 100)",
            &[(&video_id, Type::UUID), (&index, Type::INT4)],
        )
        .await
        .expect("claim")
        .get(0);
    tx.commit().await.expect("commit");
    claim["leaseToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the take-over claimed nothing: {claim}"))
}
