//! The shapes every analyzer answers in and the merge consumes: shots with
//! frame boundaries, their type, description and dialogue.

use serde::{Deserialize, Serialize};

/// Whether `c` may stand in stored text: anything but control characters,
/// save line breaks and tabs. PostgreSQL cannot store NUL at all, and the
/// others have no place in a sheet; text may come from a model, and from
/// whatever a film shows.
pub fn is_text_char(c: char) -> bool {
    !c.is_control() || matches!(c, '\n' | '\t')
}

/// `text` without the characters [`is_text_char`] refuses.
pub fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(is_text_char) {
        text.into()
    } else {
        text.chars()
            .filter(|&c| is_text_char(c))
            .collect::<String>()
            .into()
    }
}

/// How a shot is framed. Serialized in kebab case (`close-up`, `medium`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ShotType {
    CloseUp,
    Medium,
    Wide,
    Detail,
    Insert,
    #[default]
    Other,
}

impl ShotType {
    /// The label stored in the database and written to sheets.
    pub fn as_str(self) -> &'static str {
        match self {
            ShotType::CloseUp => "close-up",
            ShotType::Medium => "medium",
            ShotType::Wide => "wide",
            ShotType::Detail => "detail",
            ShotType::Insert => "insert",
            ShotType::Other => "other",
        }
    }
}

/// One line of dialogue in a shot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DialogueLine {
    /// Who speaks, as the analyzer names them; empty when unknown.
    #[serde(default)]
    pub speaker: String,
    pub line: String,
    /// The speaker is not on screen (voice-over, off-screen voice).
    #[serde(default)]
    pub offscreen: bool,
    /// The frame the line starts at, when the analyzer knows it (chunk-local
    /// in an analysis, absolute once saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_frame: Option<i64>,
}

/// A shot: frames `[start_frame, end_frame)` and what is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shot {
    pub start_frame: i64,
    pub end_frame: i64,
    #[serde(rename = "type", default)]
    pub shot_type: ShotType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub dialogue: Vec<DialogueLine>,
}

impl Shot {
    /// The same shot moved by `offset` frames (dialogue times included).
    pub fn shifted(mut self, offset: i64) -> Shot {
        self.start_frame += offset;
        self.end_frame += offset;
        for line in &mut self.dialogue {
            if let Some(f) = line.start_frame.as_mut() {
                *f += offset;
            }
        }
        self
    }
}

/// What an analyzer found in one chunk: shots in chunk-local frames, that is
/// frame 0 is the chunk's first frame. The shots are sorted, contiguous and
/// cover the chunk: the first starts at 0, each ends where the next starts,
/// the last ends at the chunk's length. The first shot of a chunk other than
/// the film's first usually began before the chunk; its start is not a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChunkAnalysis {
    pub shots: Vec<Shot>,
}
