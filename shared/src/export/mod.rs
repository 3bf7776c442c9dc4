//! Writing a finished [`Sheet`] to disk as `sheet.json` and `sheet.csv`.
//!
//! `sheet.json` is the sheet exactly as it serializes (pretty-printed).
//! `sheet.csv` has a header row, then one row per shot: `number`, `start`,
//! `end`, `type`, `description`, `dialogue`, quoted as RFC 4180 says. The
//! dialogue cell holds one line per dialogue line, `Speaker: line`, with
//! ` (off-screen)` after the speaker when the speaker is not on screen, or
//! just the line when the speaker is unknown.
//!
//! Each file is written to a temporary file in the same folder and renamed
//! into place, so a reader (or a crash) never sees half a file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::model::DialogueLine;
use crate::sheet::{FilmDetails, Sheet};

mod docx;
mod trade;
mod xlsx;

pub use trade::{shot_type_label, trade_dialogue, trade_headers, Lang};

/// The file name of the JSON sheet.
pub const JSON_FILE: &str = "sheet.json";

/// The file name of the CSV sheet.
pub const CSV_FILE: &str = "sheet.csv";

/// The CSV header row.
pub const CSV_HEADER: [&str; 6] = ["number", "start", "end", "type", "description", "dialogue"];

/// A sheet's file formats: the stored sheet as JSON, and the trade's
/// six-column table as CSV, an Excel workbook or a Word document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Csv,
    Xlsx,
    Docx,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Json, Format::Csv, Format::Xlsx, Format::Docx];

    /// The file name extension, without the dot; also the name `--format`
    /// and the download paths (`sheet.<extension>`) use.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Docx => "docx",
        }
    }

    /// The media type to serve the file with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(name: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.extension().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| format!("unknown format {name:?}; expected json, csv, xlsx or docx"))
    }
}

/// The sheet in `format`: `Json` is [`json_bytes`] whatever `lang` and
/// `details` say; the others are the trade's layout, headers and shot
/// types in `lang`, with the film-details block above the table in XLSX
/// and DOCX.
pub fn render(
    sheet: &Sheet,
    details: &FilmDetails,
    format: Format,
    lang: Lang,
) -> Result<Vec<u8>, ExportError> {
    match format {
        Format::Json => json_bytes(sheet),
        Format::Csv => trade::csv_bytes(sheet, lang),
        Format::Xlsx => xlsx::bytes(sheet, details, lang),
        Format::Docx => docx::bytes(sheet, details, lang),
    }
}

/// What went wrong writing a sheet.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file-system operation failed.
    #[error("could not {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The sheet could not be serialized as JSON.
    #[error("could not serialize the sheet as JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The sheet could not be serialized as CSV.
    #[error("could not serialize the sheet as CSV: {0}")]
    Csv(#[source] csv::Error),
    /// The workbook could not be built.
    #[error("could not build the XLSX workbook: {0}")]
    Xlsx(String),
    /// The document could not be built.
    #[error("could not build the DOCX document: {0}")]
    Docx(String),
}

/// Where [`write_sheet`] put the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetFiles {
    /// `<dir>/sheet.json`.
    pub json: PathBuf,
    /// `<dir>/sheet.csv`.
    pub csv: PathBuf,
}

/// Writes `sheet` as `dir/sheet.json` and `dir/sheet.csv`, creating `dir`
/// (and its parents) when missing and replacing earlier files atomically.
pub fn write_sheet(dir: &Path, sheet: &Sheet) -> Result<SheetFiles, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        what: "create the output folder",
        path: dir.to_path_buf(),
        source,
    })?;
    let files = SheetFiles {
        json: dir.join(JSON_FILE),
        csv: dir.join(CSV_FILE),
    };
    write_atomically(&files.json, &json_bytes(sheet)?)?;
    write_atomically(&files.csv, &csv_bytes(sheet)?)?;
    Ok(files)
}

/// The sheet as pretty-printed JSON, ending with a newline.
pub fn json_bytes(sheet: &Sheet) -> Result<Vec<u8>, ExportError> {
    let mut bytes = serde_json::to_vec_pretty(sheet).map_err(ExportError::Json)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The sheet as CSV: the header row, then one row per shot.
pub fn csv_bytes(sheet: &Sheet) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER).map_err(ExportError::Csv)?;
    for shot in &sheet.shots {
        writer
            .write_record([
                shot.number.to_string().as_str(),
                &shot.start,
                &shot.end,
                shot.shot_type.as_str(),
                &inert_cell(&shot.description),
                &inert_cell(&dialogue_cell(&shot.dialogue)),
            ])
            .map_err(ExportError::Csv)?;
    }
    writer
        .into_inner()
        .map_err(|error| ExportError::Csv(error.into_error().into()))
}

/// `text` made safe to open in a spreadsheet: a cell that starts like a
/// formula (`=`, `+`, `-`, `@`, or a tab or carriage return before one) gets
/// a leading apostrophe, so the program shows it as text instead of running
/// it. Descriptions and dialogue come from a model and from what a film
/// shows, and are not trusted.
pub fn inert_cell(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

/// The dialogue cell of a shot: one line per dialogue line, `Speaker: line`,
/// `Speaker (off-screen): line`, or just `line` when the speaker is unknown.
pub fn dialogue_cell(lines: &[DialogueLine]) -> String {
    lines
        .iter()
        .map(|line| {
            let speaker = line.speaker.trim();
            match (speaker.is_empty(), line.offscreen) {
                (true, _) => line.line.clone(),
                (false, false) => format!("{speaker}: {}", line.line),
                (false, true) => format!("{speaker} (off-screen): {}", line.line),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and
/// renames it to `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io_error = |what: &'static str| {
        move |source: io::Error| ExportError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = NamedTempFile::new_in(dir).map_err(io_error("create a temporary file for"))?;
    file.write_all(bytes).map_err(io_error("write"))?;
    file.as_file().sync_all().map_err(io_error("flush"))?;
    file.persist(path)
        .map_err(|error| io_error("rename a temporary file to")(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_that_look_like_formulas_are_kept_as_text() {
        assert_eq!(inert_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(inert_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(inert_cell("-1+2"), "'-1+2");
        assert_eq!(inert_cell("+44 20"), "'+44 20");
        assert_eq!(inert_cell("a street at night"), "a street at night");
        assert_eq!(inert_cell(""), "");
    }

    fn line(speaker: &str, text: &str, offscreen: bool) -> DialogueLine {
        DialogueLine {
            speaker: speaker.to_string(),
            line: text.to_string(),
            offscreen,
            start_frame: None,
        }
    }

    #[test]
    fn dialogue_cell_names_speakers_and_offscreen_voices() {
        let lines = [
            line("Anna", "Hello.", false),
            line("Narrator", "Years later.", true),
            line("", "(inaudible)", false),
        ];
        assert_eq!(
            dialogue_cell(&lines),
            "Anna: Hello.\nNarrator (off-screen): Years later.\n(inaudible)"
        );
        assert_eq!(dialogue_cell(&[]), "");
    }
}
