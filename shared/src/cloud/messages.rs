//! The bodies of the messages on the chunk and finalize queues.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One chunk to analyze: the body of a chunk-queue message. Other fields
/// are ignored, so that a newer sender's hints do not make an older worker
/// reject the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkMessage {
    pub video_id: Uuid,
    pub chunk_index: u32,
}

/// A finished film to finalize: the body of a finalize-queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalizeMessage {
    pub video_id: Uuid,
}

impl ChunkMessage {
    pub fn to_body(&self) -> String {
        serde_json::json!({"videoId": self.video_id, "chunkIndex": self.chunk_index}).to_string()
    }
}

impl FinalizeMessage {
    pub fn to_body(&self) -> String {
        serde_json::json!({"videoId": self.video_id}).to_string()
    }
}
