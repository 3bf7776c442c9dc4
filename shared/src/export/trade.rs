//! The trade's six-column shot table, shared by the CSV, XLSX and DOCX
//! files: its headers and shot-type labels in English or Russian, and the
//! dialogue cell with each speaker's name in capitals on a line of its own
//! above what they say.

use crate::model::{DialogueLine, ShotType};
use crate::sheet::{FilmDetails, Gap, Sheet, SheetShot};
use crate::time::{timecode, Fps};

use super::{inert_cell, ExportError};

/// The language of a sheet's headers and labels (the descriptions and the
/// dialogue stay as the analyzer wrote them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lang {
    #[default]
    En,
    Ru,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ru];

    /// `en` or `ru`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(code: &str) -> Result<Lang, String> {
        Lang::ALL
            .into_iter()
            .find(|lang| lang.code().eq_ignore_ascii_case(code.trim()))
            .ok_or_else(|| format!("unknown language {code:?}; expected en or ru"))
    }
}

/// The table's column headers: shot number, start and end timecode, shot
/// type, content (description and titles), dialogue (monologues, songs,
/// subtitles, music).
pub fn trade_headers(lang: Lang) -> [&'static str; 6] {
    match lang {
        Lang::En => [
            "Shot No.",
            "Start timecode",
            "End timecode",
            "Shot",
            "Content (description), titles",
            "Monologues, dialogue, songs, subtitles, music",
        ],
        Lang::Ru => [
            "№ плана",
            "Начальный тайм-код",
            "Конечный тайм-код",
            "План",
            "Содержание (описание) плана, титры",
            "Монологи, разговоры, песни, субтитры, музыка",
        ],
    }
}

/// The trade's abbreviation of a shot type; empty for [`ShotType::Other`],
/// which the analyzer could not tell.
pub fn shot_type_label(shot_type: ShotType, lang: Lang) -> &'static str {
    match (lang, shot_type) {
        (Lang::En, ShotType::CloseUp) => "CU",
        (Lang::En, ShotType::Medium) => "MS",
        (Lang::En, ShotType::Wide) => "WS",
        (Lang::En, ShotType::Detail) => "Detail",
        (Lang::En, ShotType::Insert) => "Insert",
        (Lang::Ru, ShotType::CloseUp) => "Кр.",
        (Lang::Ru, ShotType::Medium) => "Ср.",
        (Lang::Ru, ShotType::Wide) => "Общ.",
        (Lang::Ru, ShotType::Detail) => "Деталь",
        (Lang::Ru, ShotType::Insert) => "НДП",
        (_, ShotType::Other) => "",
    }
}

/// The dialogue cell: for each line, the speaker's name in capitals on a
/// line of its own (with "(off-screen)" / "(за кадром)" for a voice not on
/// screen), then the line; a line whose speaker is unknown stands alone.
pub fn trade_dialogue(lines: &[DialogueLine], lang: Lang) -> String {
    let offscreen = match lang {
        Lang::En => "(off-screen)",
        Lang::Ru => "(за кадром)",
    };
    let mut cell: Vec<String> = Vec::new();
    for line in lines {
        let speaker = line.speaker.trim();
        match (speaker.is_empty(), line.offscreen) {
            (true, _) => {}
            (false, false) => cell.push(speaker.to_uppercase()),
            (false, true) => cell.push(format!("{} {offscreen}", speaker.to_uppercase())),
        }
        cell.push(line.line.clone());
    }
    cell.join("\n")
}

/// One row of the table, as text.
pub(super) fn row(shot: &SheetShot, lang: Lang) -> [String; 6] {
    [
        shot.number.to_string(),
        shot.start.clone(),
        shot.end.clone(),
        shot_type_label(shot.shot_type, lang).to_string(),
        shot.description.clone(),
        trade_dialogue(&shot.dialogue, lang),
    ]
}

/// The title of the sheet (the worksheet's name, the document's heading).
pub(super) fn sheet_title(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "Montage sheet",
        Lang::Ru => "Монтажный лист",
    }
}

/// The film-details block above the table, as `(label, value)` rows: the
/// given details in the trade's order with the film's duration after the
/// year. The duration is always there, so every delivery file states the
/// film's length even when no other detail was given. A blank detail (the
/// database accepts `""`) is no detail: it would show as a label with
/// nothing after it.
pub(super) fn details_block(
    sheet: &Sheet,
    details: &FilmDetails,
    lang: Lang,
) -> Result<Vec<(&'static str, String)>, String> {
    let fps: Fps = sheet.fps.parse().map_err(|_| {
        format!(
            "the sheet of film {} has an invalid frame rate {:?}",
            sheet.video_id, sheet.fps
        )
    })?;
    let duration = Some(timecode(sheet.duration_frames, fps));
    let labels = match lang {
        Lang::En => ["Title", "Year", "Duration", "Director", "Studio", "Country"],
        Lang::Ru => [
            "Название",
            "Год",
            "Хронометраж",
            "Режиссёр",
            "Производство",
            "Страна",
        ],
    };
    let values = [
        given(&details.title),
        given(&details.year),
        duration,
        given(&details.director),
        given(&details.studio),
        given(&details.country),
    ];
    Ok(labels
        .into_iter()
        .zip(values)
        .filter_map(|(label, value)| Some((label, value?)))
        .collect())
}

/// A detail as the sheets show it: trimmed, and `None` when blank.
pub(super) fn given(detail: &Option<String>) -> Option<String> {
    detail
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_string)
}

/// One row of the table in film order: a shot, or a part of the film that
/// no completed chunk covers.
pub(super) enum Entry<'a> {
    Shot(&'a SheetShot),
    Gap(&'a Gap),
}

/// The shots and the gaps of `sheet` in the order they stand in the film,
/// so a gap sits in the table exactly where the film has no shots.
pub(super) fn entries(sheet: &Sheet) -> Vec<Entry<'_>> {
    let mut entries: Vec<(i64, Entry<'_>)> = sheet
        .shots
        .iter()
        .map(|shot| (shot.start_frame, Entry::Shot(shot)))
        .chain(
            sheet
                .gaps
                .iter()
                .map(|gap| (gap.start_frame, Entry::Gap(gap))),
        )
        .collect();
    entries.sort_by_key(|(start, _)| *start);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// The row standing for a gap: no shot number, the gap's start and end
/// timecodes, and a note in the content column saying the part is missing.
/// The chunks' errors stay in `sheet.json`: they are the operator's, not the
/// reader's of a delivery document.
pub(super) fn gap_row(gap: &Gap, lang: Lang) -> [String; 6] {
    [
        String::new(),
        gap.start.clone(),
        gap.end.clone(),
        String::new(),
        gap_note(lang).to_string(),
        String::new(),
    ]
}

/// What a gap row says in its content cell.
pub fn gap_note(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "[not analyzed: this part of the film is missing from the sheet]",
        Lang::Ru => "[не проанализировано: этой части фильма нет в листе]",
    }
}

/// The UTF-8 byte-order mark the trade CSV starts with.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The table as CSV: a UTF-8 byte-order mark, the header row, then one row
/// per shot and per gap in film order (as in the workbook), cells that look
/// like formulas made inert.
///
/// The mark is for Excel on Windows, where this file is most often opened:
/// without it Excel reads a CSV in the system's legacy code page and the
/// Russian headers and text come out as mojibake. The machine `sheet.csv`
/// has no mark: it is for programs, which take UTF-8 as it is.
pub(super) fn csv_bytes(sheet: &Sheet, lang: Lang) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::Writer::from_writer(UTF8_BOM.to_vec());
    writer
        .write_record(trade_headers(lang))
        .map_err(ExportError::Csv)?;
    for entry in entries(sheet) {
        let cells = match entry {
            Entry::Shot(shot) => row(shot, lang),
            Entry::Gap(gap) => gap_row(gap, lang),
        };
        writer
            .write_record(cells.iter().map(|cell| inert_cell(cell).into_owned()))
            .map_err(ExportError::Csv)?;
    }
    writer
        .into_inner()
        .map_err(|error| ExportError::Csv(error.into_error().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::line;

    #[test]
    fn speakers_stand_in_capitals_above_their_lines() {
        let lines = [
            line("Анна", "Привет.", false),
            line("Narrator", "Years later.", true),
            line("", "(поёт)", false),
        ];
        assert_eq!(
            trade_dialogue(&lines, Lang::Ru),
            "АННА\nПривет.\nNARRATOR (за кадром)\nYears later.\n(поёт)"
        );
        assert_eq!(trade_dialogue(&[], Lang::En), "");
    }

    #[test]
    fn a_gap_stands_in_the_csv_where_the_film_has_no_shots() {
        let shot = |number: u32, start: i64, end: i64| SheetShot {
            number,
            start: format!("00:00:{:02}:00", start / 25),
            end: format!("00:00:{:02}:00", end / 25),
            start_frame: start,
            end_frame: end,
            shot_type: ShotType::Wide,
            description: "=поле".into(),
            dialogue: Vec::new(),
        };
        let sheet = Sheet {
            total_chunks: 3,
            completed_chunks: 2,
            failed_chunks: 1,
            status: crate::sheet::SheetStatus::Partial,
            shots: vec![shot(1, 0, 50), shot(2, 100, 150)],
            gaps: vec![Gap {
                start: "00:00:02:00".into(),
                end: "00:00:04:00".into(),
                start_frame: 50,
                end_frame: 100,
                chunks: vec![1],
                reasons: vec!["timed out".into()],
            }],
            ..super::super::empty_sheet(150)
        };
        let csv = String::from_utf8(csv_bytes(&sheet, Lang::Ru).expect("csv")).expect("utf-8");
        let csv = csv
            .strip_prefix('\u{FEFF}')
            .expect("the trade CSV starts with a byte-order mark");
        assert!(!csv.contains('\u{FEFF}'), "one mark, at the start");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4, "{csv}");
        assert!(lines[0].starts_with("№ плана,"), "{csv}");
        assert_eq!(lines[1], "1,00:00:00:00,00:00:02:00,Общ.,'=поле,");
        assert_eq!(
            lines[2],
            format!(",00:00:02:00,00:00:04:00,,{},", gap_note(Lang::Ru))
        );
        assert!(lines[3].starts_with("2,00:00:04:00,"), "{csv}");
        assert!(!csv.contains("timed out"), "errors stay in sheet.json");
    }

    #[test]
    fn blank_details_are_left_out_of_the_details_block() {
        let sheet = super::super::empty_sheet(250);
        let details = FilmDetails {
            title: Some(String::new()),
            year: Some(" \t ".into()),
            director: Some(" Андрей Тарковский ".into()),
            studio: None,
            country: Some("\u{3000}".into()),
        };
        let block = details_block(&sheet, &details, Lang::En).expect("block");
        assert_eq!(
            block,
            [
                ("Duration", "00:00:10:00".to_string()),
                ("Director", "Андрей Тарковский".to_string()),
            ]
        );
    }

    #[test]
    fn languages_and_formats_parse_by_their_codes() {
        assert_eq!(" RU ".parse::<Lang>(), Ok(Lang::Ru));
        assert!("de".parse::<Lang>().unwrap_err().contains("en or ru"));
        assert_eq!(
            "xlsx".parse::<super::super::Format>(),
            Ok(super::super::Format::Xlsx)
        );
        assert!("pdf".parse::<super::super::Format>().is_err());
    }
}
