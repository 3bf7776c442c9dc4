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

/// What a delivery sheet says about its film above the shot table. Every
/// field is optional; the duration is not here, it comes from the film.
/// Given at submit time (`details` in `POST /videos`), by `shotlist process`
/// flags, or by `shotlist export` flags (which win, field by field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilmDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The year of production, as written (`"1979"`, `"1979-1981"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director: Option<String>,
    /// The production company or studio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// The most characters one film detail may have.
pub const MAX_DETAIL_CHARS: usize = 300;

impl FilmDetails {
    /// The fields as `(name, value)`, in the order sheets show them.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("title", self.title.as_deref()),
            ("year", self.year.as_deref()),
            ("director", self.director.as_deref()),
            ("studio", self.studio.as_deref()),
            ("country", self.country.as_deref()),
        ]
    }

    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, value)| value.is_none())
    }

    /// The details with every value trimmed and blank ones dropped, or the
    /// name of the first field that is too long, holds a control character
    /// (a line break included: each detail is one line) or a noncharacter
    /// U+FFFE or U+FFFF (which XML 1.0, and so a Word document, cannot
    /// hold).
    pub fn checked(self) -> Result<FilmDetails, (&'static str, String)> {
        let check = |name: &'static str,
                     value: Option<String>|
         -> Result<Option<String>, (&'static str, String)> {
            let Some(value) = value
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
            else {
                return Ok(None);
            };
            if value.chars().count() > MAX_DETAIL_CHARS {
                return Err((
                    name,
                    format!("{name} is longer than {MAX_DETAIL_CHARS} characters"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err((
                    name,
                    format!("{name} holds a control character or a line break"),
                ));
            }
            if value.chars().any(|c| matches!(c, '\u{FFFE}' | '\u{FFFF}')) {
                return Err((
                    name,
                    format!("{name} holds a noncharacter (U+FFFE or U+FFFF)"),
                ));
            }
            Ok(Some(value))
        };
        Ok(FilmDetails {
            title: check("title", self.title)?,
            year: check("year", self.year)?,
            director: check("director", self.director)?,
            studio: check("studio", self.studio)?,
            country: check("country", self.country)?,
        })
    }

    /// These details with every field `other` gives put over them.
    pub fn overlaid(self, other: FilmDetails) -> FilmDetails {
        FilmDetails {
            title: other.title.or(self.title),
            year: other.year.or(self.year),
            director: other.director.or(self.director),
            studio: other.studio.or(self.studio),
            country: other.country.or(self.country),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_trimmed_and_a_bad_field_is_named() {
        let given = FilmDetails {
            title: Some("  Сталкер ".into()),
            year: Some(" ".into()),
            ..FilmDetails::default()
        };
        let checked = given.checked().expect("valid");
        assert_eq!(checked.title.as_deref(), Some("Сталкер"));
        assert_eq!(checked.year, None);
        let bad = FilmDetails {
            director: Some("A\nB".into()),
            ..FilmDetails::default()
        };
        assert_eq!(bad.checked().unwrap_err().0, "director");
        let long = FilmDetails {
            country: Some("x".repeat(MAX_DETAIL_CHARS + 1)),
            ..FilmDetails::default()
        };
        assert_eq!(long.checked().unwrap_err().0, "country");
    }

    #[test]
    fn a_detail_holding_a_noncharacter_is_refused_naming_its_field() {
        for text in ["Stalker\u{FFFF}", "\u{FFFE}1979"] {
            let bad = FilmDetails {
                studio: Some(text.into()),
                ..FilmDetails::default()
            };
            let (field, reason) = bad.checked().unwrap_err();
            assert_eq!(field, "studio");
            assert!(reason.contains("noncharacter"), "{reason}");
        }
    }

    #[test]
    fn later_details_win_field_by_field() {
        let stored = FilmDetails {
            title: Some("Stalker".into()),
            year: Some("1979".into()),
            ..FilmDetails::default()
        };
        let flags = FilmDetails {
            year: Some("1980".into()),
            ..FilmDetails::default()
        };
        let both = stored.overlaid(flags);
        assert_eq!(
            (both.title.as_deref(), both.year.as_deref()),
            (Some("Stalker"), Some("1980"))
        );
    }
}
