//! The sheet as a Word document (docx-rs), laid out as the trade hands it
//! over.
//!
//! An A4 landscape page with modest margins; a bold title ("Montage sheet" /
//! "Монтажный лист", then ": " and the film's title when it is given); the
//! film-details block as `Label: value` paragraphs with the label in bold,
//! always holding at least the duration; then the table of the six headers
//! (bold, on a grey ground) and one row per shot.
//!
//! A cell's text is one paragraph per line (and a tab stays a tab), so line
//! breaks in descriptions and dialogue survive in Word, LibreOffice and any
//! reader that joins a cell's paragraphs with line breaks.
//!
//! A gap (a part of the film no completed chunk covers) is a row of its own
//! where it falls in the film, as in the workbook: no shot number, the gap's
//! start and end, and [`super::gap_note`] in italics in the content column.
//!
//! Every text is written with the characters XML 1.0 forbids (the C0
//! controls other than tab, line feed and carriage return, and U+FFFE and
//! U+FFFF) replaced by U+FFFD: docx-rs escapes only the markup characters,
//! and one such character makes Word refuse the whole document. The text
//! comes from a model, from what a film shows, and from stored details.
//!
//! docx-rs 0.4.22 cannot mark a row as a table header (`w:tblHeader`), so a
//! printed table longer than a page does not repeat its headers; the
//! workbook does.

use std::borrow::Cow;
use std::io::Cursor;

use docx_rs::{
    Docx, PageMargin, PageOrientationType, Paragraph, Run, Shading, Table, TableCell,
    TableLayoutType, TableRow, VAlignType, WidthType,
};

use crate::sheet::{FilmDetails, Sheet};

use super::trade::{self, Entry};
use super::{ExportError, Lang};

/// A4 in twentieths of a point, long side first: the page is landscape.
const PAGE_WIDTH: u32 = 16_838;
const PAGE_HEIGHT: u32 = 11_906;

/// Half an inch on every side.
const MARGIN: i32 = 720;

/// The columns' widths in twentieths of a point (number, start, end, type,
/// content, dialogue), together the page's width inside its margins.
const COLUMN_WIDTHS: [usize; 6] = [900, 1_500, 1_500, 1_000, 5_249, 5_249];

/// Font sizes in half-points: the title, and everything else.
const TITLE_SIZE: usize = 32;
const TEXT_SIZE: usize = 20;

/// How a cell's text is set.
#[derive(Clone, Copy)]
enum Style {
    Plain,
    Header,
    Gap,
}

/// The document's bytes.
pub(super) fn bytes(
    sheet: &Sheet,
    details: &FilmDetails,
    lang: Lang,
) -> Result<Vec<u8>, ExportError> {
    let mut buffer = Cursor::new(Vec::new());
    document(sheet, details, lang)?
        .pack(&mut buffer)
        .map_err(|error| {
            ExportError::Docx(format!(
                "could not pack the document of film {}: {error}",
                sheet.video_id
            ))
        })?;
    Ok(buffer.into_inner())
}

/// The document before it is packed.
fn document(sheet: &Sheet, details: &FilmDetails, lang: Lang) -> Result<Docx, ExportError> {
    let block = trade::details_block(sheet, details, lang).map_err(ExportError::Docx)?;
    let mut document = Docx::new()
        .page_size(PAGE_WIDTH, PAGE_HEIGHT)
        .page_orient(PageOrientationType::Landscape)
        .page_margin(
            PageMargin::new()
                .top(MARGIN)
                .bottom(MARGIN)
                .left(MARGIN)
                .right(MARGIN)
                .header(MARGIN / 2)
                .footer(MARGIN / 2),
        )
        .default_size(TEXT_SIZE)
        .add_paragraph(title(details, lang));
    for (label, value) in &block {
        document = document.add_paragraph(
            Paragraph::new()
                .add_run(text_run(&format!("{label}: ")).bold())
                .add_run(text_run(value)),
        );
    }
    Ok(document
        .add_paragraph(Paragraph::new())
        .add_table(table(sheet, lang)))
}

/// The heading paragraph.
fn title(details: &FilmDetails, lang: Lang) -> Paragraph {
    Paragraph::new().add_run(text_run(&heading(details, lang)).bold().size(TITLE_SIZE))
}

/// The heading's text: the sheet's name, and the film's title when one is
/// given (a blank title is none).
fn heading(details: &FilmDetails, lang: Lang) -> String {
    match trade::given(&details.title) {
        Some(film) => format!("{}: {film}", trade::sheet_title(lang)),
        None => trade::sheet_title(lang).to_string(),
    }
}

/// A run holding `text`, made fit for XML.
fn text_run(text: &str) -> Run {
    Run::new().add_text(xml_safe(text))
}

/// `text` with every character XML 1.0 cannot hold replaced by U+FFFD, so
/// the reader sees that something stood there.
fn xml_safe(text: &str) -> Cow<'_, str> {
    let forbidden = |c: char| {
        matches!(
            c,
            '\0'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}'
        )
    };
    if text.contains(forbidden) {
        text.replace(forbidden, "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// The shot table: the header row, then the shots and gaps in film order.
fn table(sheet: &Sheet, lang: Lang) -> Table {
    let headers = trade::trade_headers(lang).map(str::to_string);
    let mut rows = vec![table_row(&headers, Style::Header)];
    rows.extend(trade::entries(sheet).into_iter().map(|entry| match entry {
        Entry::Shot(shot) => table_row(&trade::row(shot, lang), Style::Plain),
        Entry::Gap(gap) => table_row(&trade::gap_row(gap, lang), Style::Gap),
    }));
    Table::new(rows)
        .set_grid(COLUMN_WIDTHS.to_vec())
        .layout(TableLayoutType::Fixed)
        .width(COLUMN_WIDTHS.iter().sum(), WidthType::Dxa)
}

fn table_row(cells: &[String; 6], style: Style) -> TableRow {
    TableRow::new(
        cells
            .iter()
            .zip(COLUMN_WIDTHS)
            .map(|(text, width)| table_cell(text, width, style))
            .collect(),
    )
}

/// A cell holding `text`, one paragraph per line.
fn table_cell(text: &str, width: usize, style: Style) -> TableCell {
    let cell = TableCell::new()
        .width(width, WidthType::Dxa)
        .vertical_align(VAlignType::Top);
    let cell = match style {
        Style::Header => cell.shading(Shading::new().fill("D9D9D9")),
        Style::Plain | Style::Gap => cell,
    };
    text.split('\n').fold(cell, |cell, line| {
        cell.add_paragraph(paragraph(line, style))
    })
}

/// One line of a cell; tabs become Word's tab characters.
fn paragraph(line: &str, style: Style) -> Paragraph {
    let mut run = Run::new();
    for (index, piece) in line.split('\t').enumerate() {
        if index > 0 {
            run = run.add_tab();
        }
        if !piece.is_empty() {
            run = run.add_text(xml_safe(piece));
        }
    }
    let run = match style {
        Style::Header => run.bold(),
        Style::Gap => run.italic(),
        Style::Plain => run,
    };
    Paragraph::new().add_run(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sheet() -> Sheet {
        super::super::empty_sheet(50)
    }

    #[test]
    fn characters_xml_cannot_hold_become_replacement_characters() {
        assert_eq!(
            xml_safe("a\u{0}b\u{1}c\u{B}\u{1F}d\u{FFFE}\u{FFFF}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}\u{FFFD}d\u{FFFD}\u{FFFD}"
        );
        let kept = "tab\tline\nreturn\r «ё» \u{7F}\u{FFFD} 😀";
        assert!(matches!(xml_safe(kept), Cow::Borrowed(text) if text == kept));
    }

    #[test]
    fn a_blank_title_gives_the_bare_heading() {
        for blank in ["", "  "] {
            let details = FilmDetails {
                title: Some(blank.into()),
                ..FilmDetails::default()
            };
            assert_eq!(heading(&details, Lang::En), "Montage sheet");
            assert_eq!(heading(&details, Lang::Ru), "Монтажный лист");
        }
        let details = FilmDetails {
            title: Some(" Сталкер ".into()),
            ..FilmDetails::default()
        };
        assert_eq!(heading(&details, Lang::Ru), "Монтажный лист: Сталкер");
    }

    #[test]
    fn the_document_is_a_zip_with_a_landscape_a4_page() {
        let bytes = bytes(&sheet(), &FilmDetails::default(), Lang::En).expect("document");
        assert!(bytes.starts_with(b"PK"), "a DOCX file is a zip archive");
        let parts = document(&sheet(), &FilmDetails::default(), Lang::En)
            .expect("document")
            .build();
        let xml = String::from_utf8_lossy(&parts.document);
        assert!(
            xml.contains(r#"<w:pgSz w:w="16838" w:h="11906" w:orient="landscape" />"#),
            "no landscape A4 page: {xml}"
        );
    }
}
