//! The trade's six-column shot table, shared by the CSV, XLSX and DOCX
//! files: its headers and shot-type labels in English or Russian, and the
//! dialogue cell with each speaker's name in capitals on a line of its own
//! above what they say.

use crate::model::{DialogueLine, ShotType};
use crate::sheet::Sheet;

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
pub(super) fn row(shot: &crate::sheet::SheetShot, lang: Lang) -> [String; 6] {
    [
        shot.number.to_string(),
        shot.start.clone(),
        shot.end.clone(),
        shot_type_label(shot.shot_type, lang).to_string(),
        shot.description.clone(),
        trade_dialogue(&shot.dialogue, lang),
    ]
}

/// The table as CSV: the header row, then one row per shot, cells that
/// look like formulas made inert.
pub(super) fn csv_bytes(sheet: &Sheet, lang: Lang) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(trade_headers(lang))
        .map_err(ExportError::Csv)?;
    for shot in &sheet.shots {
        let cells = row(shot, lang);
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

    fn line(speaker: &str, text: &str, offscreen: bool) -> DialogueLine {
        DialogueLine {
            speaker: speaker.to_string(),
            line: text.to_string(),
            offscreen,
            start_frame: None,
        }
    }

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
