//! The sheet as an Excel workbook (rust_xlsxwriter), laid out as the trade
//! hands it over.
//!
//! One worksheet, named for the language ("Montage sheet" / "Монтажный
//! лист"). At the top the film-details block, one detail a row, the label in
//! bold in column A and the value in column B; it always holds at least the
//! duration. Then a blank row, the six headers (bold, wrapped, frozen so they
//! stay in view, and repeated on every printed page), then one row per shot.
//!
//! Every text cell is written as a string, never as a formula, whatever it
//! starts with: the text comes from a model and from what a film shows.
//! Cells wrap and are top-aligned, so the line breaks of a description or a
//! dialogue show as they are. The page prints landscape, one page wide.
//!
//! Excel holds at most 32,767 characters in a cell and refuses a workbook
//! with more, so a longer text (a description or a dialogue the model let
//! run on) is cut to fit, ending with a note saying how much was cut and
//! that sheet.docx and sheet.json hold it whole: one over-long cell must not
//! cost the whole workbook.
//!
//! A gap (a part of the film no completed chunk covers) is a row of its own
//! where it falls in the film: no shot number, the gap's start and end, and
//! [`super::gap_note`] in italics in the content column, so a reader sees
//! which part of the film is missing.

use std::borrow::Cow;

use rust_xlsxwriter::{Format, FormatAlign, FormatBorder, Workbook, Worksheet, XlsxError};

use crate::sheet::{FilmDetails, Sheet};

use super::trade::{self, Entry};
use super::{ExportError, Lang};

/// The columns' widths in characters: number, start, end, type, content,
/// dialogue.
const COLUMN_WIDTHS: [f64; 6] = [8.0, 14.0, 14.0, 9.0, 55.0, 55.0];

/// A4 in Excel's paper-size numbering.
const PAPER_A4: u8 = 9;

/// The most a cell may hold. Excel counts UTF-16 code units (a character
/// beyond the Basic Multilingual Plane, an emoji, counts twice), and so does
/// rust_xlsxwriter's check; counting so keeps any character count within it.
const MAX_CELL_UNITS: usize = 32_767;

/// The cell formats of the workbook.
struct Formats {
    label: Format,
    header: Format,
    cell: Format,
    gap: Format,
}

impl Formats {
    fn new() -> Formats {
        let cell = Format::new()
            .set_text_wrap()
            .set_align(FormatAlign::Top)
            .set_border(FormatBorder::Thin);
        Formats {
            label: Format::new().set_bold(),
            header: cell.clone().set_bold().set_background_color(0xD9D9D9),
            gap: cell.clone().set_italic(),
            cell,
        }
    }
}

/// The workbook's bytes.
pub(super) fn bytes(
    sheet: &Sheet,
    details: &FilmDetails,
    lang: Lang,
) -> Result<Vec<u8>, ExportError> {
    let block = trade::details_block(sheet, details, lang).map_err(ExportError::Xlsx)?;
    let failed = |what: String| {
        move |error: XlsxError| {
            ExportError::Xlsx(format!("{what} of film {}: {error}", sheet.video_id))
        }
    };
    let formats = Formats::new();
    let mut workbook = Workbook::new();
    let worksheet = workbook.add_worksheet();
    worksheet
        .set_name(trade::sheet_title(lang))
        .map_err(failed("the worksheet".into()))?;
    set_up_page(worksheet).map_err(failed("the page set-up".into()))?;

    for (row, (label, value)) in (0..).zip(&block) {
        worksheet
            .write_string_with_format(row, 0, *label, &formats.label)
            .and_then(|sheet| sheet.write_string(row, 1, fitted(value, lang)))
            .map_err(failed(format!("the detail {label:?}")))?;
    }
    let header_row = row_number(block.len() + 1, sheet)?;
    write_headers(worksheet, header_row, lang, &formats).map_err(failed("the headers".into()))?;

    for (row, entry) in (header_row + 1..).zip(trade::entries(sheet)) {
        match entry {
            Entry::Shot(shot) => write_shot(worksheet, row, shot, lang, &formats)
                .map_err(failed(format!("shot {}", shot.number)))?,
            Entry::Gap(gap) => write_cells(
                worksheet,
                row,
                &trade::gap_row(gap, lang),
                lang,
                &formats.gap,
            )
            .map_err(failed(format!("the gap at {}", gap.start)))?,
        }
    }
    workbook
        .save_to_buffer()
        .map_err(failed("the workbook".into()))
}

/// Landscape A4 with modest margins, one page wide and as many long as the
/// table needs.
fn set_up_page(worksheet: &mut Worksheet) -> Result<(), XlsxError> {
    worksheet
        .set_landscape()
        .set_paper_size(PAPER_A4)
        .set_margins(0.4, 0.4, 0.5, 0.5, 0.3, 0.3)
        .set_print_fit_to_pages(1, 0);
    for (column, width) in (0..).zip(COLUMN_WIDTHS) {
        worksheet.set_column_width(column, width)?;
    }
    Ok(())
}

/// The header row, frozen below and repeated at the top of every printed
/// page.
fn write_headers(
    worksheet: &mut Worksheet,
    row: u32,
    lang: Lang,
    formats: &Formats,
) -> Result<(), XlsxError> {
    for (column, header) in (0..).zip(trade::trade_headers(lang)) {
        worksheet.write_string_with_format(row, column, header, &formats.header)?;
    }
    worksheet.set_freeze_panes(row + 1, 0)?;
    worksheet.set_repeat_rows(row, row)?;
    Ok(())
}

/// A shot's row: the number as a number, everything else as text.
fn write_shot(
    worksheet: &mut Worksheet,
    row: u32,
    shot: &crate::sheet::SheetShot,
    lang: Lang,
    formats: &Formats,
) -> Result<(), XlsxError> {
    let cells = trade::row(shot, lang);
    write_cells(worksheet, row, &cells, lang, &formats.cell)?;
    worksheet.write_number_with_format(row, 0, f64::from(shot.number), &formats.cell)?;
    Ok(())
}

/// Writes `cells` as strings across `row`, each cut to fit a cell.
fn write_cells(
    worksheet: &mut Worksheet,
    row: u32,
    cells: &[String; 6],
    lang: Lang,
    format: &Format,
) -> Result<(), XlsxError> {
    for (column, text) in (0..).zip(cells) {
        worksheet.write_string_with_format(row, column, fitted(text, lang), format)?;
    }
    Ok(())
}

/// `text` as it fits in a cell: whole when it does, else its beginning and
/// [`cut_note`], together at most [`MAX_CELL_UNITS`]. The cut falls between
/// characters, never inside one.
fn fitted(text: &str, lang: Lang) -> Cow<'_, str> {
    if text.encode_utf16().count() <= MAX_CELL_UNITS {
        return text.into();
    }
    // The note is longest when the most is cut: leave room for that.
    let room = MAX_CELL_UNITS - cut_note(text.chars().count(), lang).encode_utf16().count();
    let mut units = 0;
    let kept_end = text
        .char_indices()
        .find_map(|(at, c)| {
            units += c.len_utf16();
            (units > room).then_some(at)
        })
        .unwrap_or(text.len());
    let (kept, cut) = text.split_at(kept_end);
    format!("{kept}{}", cut_note(cut.chars().count(), lang)).into()
}

/// What ends a cut cell: how many characters were left out, and where the
/// whole text is.
fn cut_note(cut_chars: usize, lang: Lang) -> String {
    match lang {
        Lang::En => format!(
            "… [cut: {cut_chars} more characters; the whole text is in sheet.docx and \
             sheet.json]"
        ),
        Lang::Ru => format!(
            "… [обрезано, не поместилось символов: {cut_chars}; весь текст — в sheet.docx \
             и sheet.json]"
        ),
    }
}

/// `index` as a worksheet row number, or an error when the sheet has more
/// rows than a worksheet can hold.
fn row_number(index: usize, sheet: &Sheet) -> Result<u32, ExportError> {
    u32::try_from(index).map_err(|_| {
        ExportError::Xlsx(format!(
            "the sheet of film {} has too many rows for a worksheet",
            sheet.video_id
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sheet(fps: &str) -> Sheet {
        Sheet {
            fps: fps.to_string(),
            ..super::super::empty_sheet(50)
        }
    }

    #[test]
    fn an_over_long_cell_is_cut_to_excels_limit_with_a_note_counting_the_rest() {
        let short = "Кадр 😀";
        assert!(matches!(fitted(short, Lang::En), Cow::Borrowed(text) if text == short));
        let exact = "x".repeat(MAX_CELL_UNITS);
        assert_eq!(fitted(&exact, Lang::En), exact.as_str());

        // Emoji count twice towards Excel's limit.
        let long: String = "Кадр 😀 ".repeat(5_000);
        for lang in Lang::ALL {
            let cell = fitted(&long, lang);
            assert!(cell.encode_utf16().count() <= MAX_CELL_UNITS, "{lang}");
            let note_at = cell.rfind("… [").expect("a note");
            let (kept, note) = cell.split_at(note_at);
            assert!(long.starts_with(kept), "{lang}: the beginning is kept");
            let cut = long.chars().count() - kept.chars().count();
            assert_eq!(note, cut_note(cut, lang), "{lang}");
            assert!(
                cell.encode_utf16().count() > MAX_CELL_UNITS - 10,
                "{lang}: no more is cut than needed"
            );
        }
    }

    #[test]
    fn a_sheet_without_shots_is_still_a_zip_workbook() {
        let bytes = bytes(&sheet("25/1"), &FilmDetails::default(), Lang::Ru).expect("workbook");
        assert!(bytes.starts_with(b"PK"), "an XLSX file is a zip archive");
    }

    #[test]
    fn a_broken_frame_rate_is_an_error_naming_the_film() {
        let error = bytes(&sheet("fast"), &FilmDetails::default(), Lang::En).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("invalid frame rate \"fast\""), "{message}");
        assert!(
            message.contains(&uuid::Uuid::nil().to_string()),
            "{message}"
        );
    }
}
