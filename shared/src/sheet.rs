//! The montage sheet: the finished shot list of one film, as stored in the
//! database and written to `sheet.json`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{DialogueLine, ShotType};

/// Whether every chunk of the film was analyzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SheetStatus {
    /// Every chunk completed: the shots cover the whole film.
    Complete,
    /// Some chunks failed: their parts of the film are listed in `gaps`.
    Partial,
}

/// One shot of the sheet. Frames count from the film's first frame; a shot's
/// `end_frame` is the next shot's `start_frame` (or a gap's start, or the
/// film's end). `start` and `end` are the same frames as `HH:MM:SS:FF`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SheetShot {
    pub number: u32,
    pub start: String,
    pub end: String,
    pub start_frame: i64,
    pub end_frame: i64,
    #[serde(rename = "type")]
    pub shot_type: ShotType,
    pub description: String,
    pub dialogue: Vec<DialogueLine>,
}

/// A part of the film that no completed chunk covers, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub start: String,
    pub end: String,
    pub start_frame: i64,
    pub end_frame: i64,
    /// The chunks whose failure left this gap.
    pub chunks: Vec<u32>,
    /// Their recorded errors, in chunk order.
    pub reasons: Vec<String>,
}

/// The finished sheet of one film.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sheet {
    pub video_id: Uuid,
    pub source: Option<String>,
    /// The exact frame rate, e.g. `"25/1"` or `"24000/1001"`.
    pub fps: String,
    pub duration_frames: i64,
    pub total_chunks: u32,
    pub completed_chunks: u32,
    pub failed_chunks: u32,
    pub status: SheetStatus,
    pub shots: Vec<SheetShot>,
    #[serde(default)]
    pub gaps: Vec<Gap>,
}
