//! Writing a finished [`Sheet`] to disk as `sheet.json` and `sheet.csv`.
//!
//! `sheet.json` is the sheet exactly as it serializes (pretty-printed).
//! `sheet.csv` has a header row, then one row per shot: `number`, `start`,
//! `end`, `type`, `description`, `dialogue`, quoted as RFC 4180 says. The
//! dialogue cell holds one line per dialogue line, `Speaker: line`, with
//! ` (off-screen)` after the speaker when the speaker is not on screen, or
//! just the line when the speaker is unknown.
//!
//! [`write_delivery`] adds the trade's `sheet.xlsx` and `sheet.docx` (and
//! `details.json`) beside them, and [`render`] makes any [`Format`] in memory.
//!
//! Each file is written to a temporary file in the same folder and renamed
//! into place, so a reader (or a crash) never sees half a file; only a
//! regular file is ever replaced so.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::DialogueLine;
use crate::sheet::{FilmDetails, Sheet};

mod docx;
mod trade;
mod xlsx;

pub use trade::{gap_note, shot_type_label, trade_dialogue, trade_headers, Lang, UTF8_BOM};

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

/// The file names of the trade's workbook and document, and of the film
/// details, beside `sheet.json`.
pub const XLSX_FILE: &str = "sheet.xlsx";
pub const DOCX_FILE: &str = "sheet.docx";
pub const DETAILS_FILE: &str = "details.json";

/// Where [`write_delivery`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFiles {
    /// `<dir>/sheet.xlsx`.
    pub xlsx: PathBuf,
    /// `<dir>/sheet.docx`.
    pub docx: PathBuf,
    /// `<dir>/details.json`, when there were details to write.
    pub details: Option<PathBuf>,
}

/// Writes the sheet in the trade's layout beside what [`write_sheet`]
/// writes: `dir/sheet.xlsx` and `dir/sheet.docx` with `details` above the
/// table and headers in `lang`, and `dir/details.json` when `details` is not
/// empty (so that `shotlist export` finds them again without a database).
/// Each file replaces an earlier one atomically. Every file is tried even
/// when an earlier one fails (a workbook Excel cannot hold must not cost the
/// document); the first error is returned after all were tried.
pub fn write_delivery(
    dir: &Path,
    sheet: &Sheet,
    details: &FilmDetails,
    lang: Lang,
) -> Result<DeliveryFiles, ExportError> {
    let files = DeliveryFiles {
        xlsx: dir.join(XLSX_FILE),
        docx: dir.join(DOCX_FILE),
        details: (!details.is_empty()).then(|| dir.join(DETAILS_FILE)),
    };
    let rendered = |format: Format, path: &Path| {
        render(sheet, details, format, lang).and_then(|bytes| write_file(path, &bytes))
    };
    let xlsx = rendered(Format::Xlsx, &files.xlsx);
    let docx = rendered(Format::Docx, &files.docx);
    let details_json = match &files.details {
        Some(path) => serde_json::to_vec_pretty(details)
            .map_err(ExportError::Json)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                write_file(path, &bytes)
            }),
        None => Ok(()),
    };
    xlsx.and(docx).and(details_json)?;
    Ok(files)
}

/// Writes `bytes` to `path` as [`write_sheet`] writes its files: through a
/// temporary file beside it, flushed and renamed, so a reader never sees
/// half a file and an earlier file stays whole until the new one is.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    write_atomically(path, bytes)
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
/// renames it to `path`. Only a regular file (or nothing) at `path` is
/// replaced: the rename would put the sheet in place of a symbolic link, a
/// device node (`/dev/null`, for one run as root), a FIFO or a socket, which
/// is never what whoever named the path meant.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    // A bare file name has an empty parent: the current folder.
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_error = |what: &'static str| {
        move |source: io::Error| ExportError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(kind) = not_a_regular_file(path).map_err(io_error("inspect"))? {
        return Err(io_error("replace")(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("it is {kind}, not a regular file"),
        )));
    }
    // Readable as any new file would be (0666 less the umask), not only by
    // its owner as a temporary file is: a sheet is made to be handed over.
    let mut file = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io_error("create a temporary file for"))?;
    file.write_all(bytes).map_err(io_error("write"))?;
    file.as_file().sync_all().map_err(io_error("flush"))?;
    file.persist(path)
        .map_err(|error| io_error("rename a temporary file to")(error.error))?;
    Ok(())
}

/// What stands at `path` when it is there and is not a regular file ("a
/// symbolic link", "a folder", ...), judged without following a link; `None`
/// for a regular file or nothing at all.
pub fn not_a_regular_file(path: &Path) -> io::Result<Option<&'static str>> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(if file_type.is_file() {
        None
    } else if file_type.is_symlink() {
        Some("a symbolic link")
    } else if file_type.is_dir() {
        Some("a folder")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else if file_type.is_char_device() || file_type.is_block_device() {
        Some("a device")
    } else {
        Some("an unknown kind of file")
    })
}

/// A dialogue line without a start frame, for the unit tests of the cells.
#[cfg(test)]
pub(crate) fn line(speaker: &str, text: &str, offscreen: bool) -> DialogueLine {
    DialogueLine {
        speaker: speaker.to_string(),
        line: text.to_string(),
        offscreen,
        start_frame: None,
    }
}

/// A complete one-chunk sheet at 25 fps, `duration_frames` long, without
/// shots: what the unit tests of the formats start from.
#[cfg(test)]
pub(crate) fn empty_sheet(duration_frames: i64) -> Sheet {
    Sheet {
        video_id: uuid::Uuid::nil(),
        source: None,
        fps: "25/1".into(),
        duration_frames,
        total_chunks: 1,
        completed_chunks: 1,
        failed_chunks: 0,
        status: crate::sheet::SheetStatus::Complete,
        shots: Vec::new(),
        gaps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_sheet_is_readable_as_any_new_file_would_be() {
        use std::os::unix::fs::PermissionsExt;
        // Linux reports the process's umask without changing it.
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let umask = status
            .lines()
            .find_map(|line| line.strip_prefix("Umask:"))
            .and_then(|mask| u32::from_str_radix(mask.trim(), 8).ok())
            .expect("a Umask line");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sheet.xlsx");
        write_file(&path, b"PK").expect("written");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o666 & !umask,
            "mode {mode:o}, umask {umask:o}"
        );
    }

    #[test]
    fn a_link_a_fifo_a_socket_or_a_folder_in_the_way_is_not_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "keep me").expect("write");
        let link = dir.path().join("link.xlsx");
        std::os::unix::fs::symlink(&precious, &link).expect("symlink");
        let fifo = dir.path().join("fifo.csv");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let socket = dir.path().join("socket.json");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
        let folder = dir.path().join("folder.docx");
        std::fs::create_dir(&folder).expect("mkdir");
        for (path, kind) in [
            (&link, "a symbolic link"),
            (&fifo, "a FIFO"),
            (&socket, "a socket"),
            (&folder, "a folder"),
        ] {
            let error = write_file(path, b"PK").expect_err("refused");
            assert_eq!(
                error.to_string(),
                format!(
                    "could not replace {}: it is {kind}, not a regular file",
                    path.display()
                )
            );
            assert_eq!(not_a_regular_file(path).expect("inspect"), Some(kind));
        }
        assert!(std::fs::symlink_metadata(&link)
            .expect("still there")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&precious).expect("read"), "keep me");
        let names = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(names, 5, "no temporary file left behind");
    }

    #[test]
    fn the_document_is_written_even_when_the_workbook_cannot_be() {
        let dir = tempfile::tempdir().expect("temp dir");
        let elsewhere = dir.path().join("elsewhere.xlsx");
        std::fs::write(&elsewhere, "not ours").expect("write");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(XLSX_FILE)).expect("symlink");
        let sheet = empty_sheet(50);
        let details = FilmDetails {
            title: Some("Stalker".into()),
            ..FilmDetails::default()
        };
        let error = write_delivery(dir.path(), &sheet, &details, Lang::En).expect_err("no xlsx");
        assert!(error.to_string().contains(XLSX_FILE), "{error}");
        let docx = std::fs::read(dir.path().join(DOCX_FILE)).expect("sheet.docx written");
        assert!(docx.starts_with(b"PK"), "a zip");
        assert!(
            dir.path().join(DETAILS_FILE).is_file(),
            "details.json written"
        );
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "not ours"
        );
    }

    #[test]
    fn cells_that_look_like_formulas_are_kept_as_text() {
        assert_eq!(inert_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(inert_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(inert_cell("-1+2"), "'-1+2");
        assert_eq!(inert_cell("+44 20"), "'+44 20");
        assert_eq!(inert_cell("a street at night"), "a street at night");
        assert_eq!(inert_cell(""), "");
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
