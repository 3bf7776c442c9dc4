//! The XLSX and DOCX sheets, read back by independent readers: openpyxl and
//! python-docx, pinned in the private venv of `scripts/install-pytools`,
//! run through `tests/support/read_sheet.py`. Every cell they find must be
//! what `sheet.json` says: each shot's number, timecodes, shot-type label,
//! description and dialogue, Cyrillic and line breaks intact, under the
//! trade's headers in English and Russian; and the layout the trade expects
//! (details block, bold frozen headers, landscape pages) must be there.
//!
//! The venv's bin dir is `$SHOTLIST_PYTOOLS` when set (`scripts/test` sets
//! it), else the last line `scripts/install-pytools` prints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use serde_json::Value;
use shotlist_shared::export::{self, gap_note, shot_type_label, trade_dialogue, Format, Lang};
use shotlist_shared::model::{DialogueLine, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::runner::{run_local, RunEvent, RunOptions};
use shotlist_shared::sheet::{FilmDetails, Gap, Sheet, SheetShot, SheetStatus};
use shotlist_shared::time::{timecode, Fps};
use shotlist_tests::film::{film_dir, make_film};
use shotlist_tests::pg::fresh_db;
use uuid::Uuid;

/// The headers as issue 7 lists them (Russian) and their English match.
const HEADERS_EN: [&str; 6] = [
    "Shot No.",
    "Start timecode",
    "End timecode",
    "Shot",
    "Content (description), titles",
    "Monologues, dialogue, songs, subtitles, music",
];
const HEADERS_RU: [&str; 6] = [
    "№ плана",
    "Начальный тайм-код",
    "Конечный тайм-код",
    "План",
    "Содержание (описание) плана, титры",
    "Монологи, разговоры, песни, субтитры, музыка",
];

/// The details block's labels in the order sheets show them.
const LABELS_EN: [&str; 6] = ["Title", "Year", "Duration", "Director", "Studio", "Country"];
const LABELS_RU: [&str; 6] = [
    "Название",
    "Год",
    "Хронометраж",
    "Режиссёр",
    "Производство",
    "Страна",
];

// ---------------------------------------------------------------------------
// The independent reader.

/// The venv's bin dir, found once per test process.
fn pytools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SHOTLIST_PYTOOLS").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let script = repo().join("scripts/install-pytools");
        let output = Command::new(&script).output().unwrap_or_else(|error| {
            panic!(
                "could not run {}: {error}; run ./scripts/install-pytools (it needs python3 \
                 and, on Debian, python3-venv) or set SHOTLIST_PYTOOLS to its bin dir",
                script.display()
            )
        });
        assert!(
            output.status.success(),
            "scripts/install-pytools failed (it installs openpyxl and python-docx into a private \
             venv; it needs python3, python3-venv and PyPI): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default().trim();
        assert!(
            !last.is_empty(),
            "scripts/install-pytools printed no bin dir"
        );
        PathBuf::from(last)
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `read_sheet.py` finds in `file`.
fn read_back(file: &Path) -> Value {
    let python = pytools().join("python");
    let output = Command::new(&python)
        .arg(repo().join("tests/support/read_sheet.py"))
        .arg(file)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "could not run {}: {error}; run ./scripts/install-pytools",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "the reader could not read {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the reader prints JSON")
}

/// Renders `sheet` in `format` and `lang` to a file in `dir`, and reads it
/// back.
fn render_and_read(
    dir: &Path,
    sheet: &Sheet,
    details: &FilmDetails,
    format: Format,
    lang: Lang,
) -> Value {
    let bytes = export::render(sheet, details, format, lang)
        .unwrap_or_else(|error| panic!("rendering {format} in {lang} failed: {error}"));
    let path = dir.join(format!("shotlist-{}.{lang}.{format}", sheet.video_id));
    std::fs::write(&path, bytes).expect("write the rendered file");
    read_back(&path)
}

// ---------------------------------------------------------------------------
// What the files must hold, from the sheet.

/// One expected table row and what to call it in a failure message.
struct ExpectedRow {
    name: String,
    cells: [String; 6],
}

/// The table as the sheet says it must be: shots and gaps in film order.
fn expected_rows(sheet: &Sheet, lang: Lang) -> Vec<ExpectedRow> {
    let mut rows: Vec<(i64, ExpectedRow)> = sheet
        .shots
        .iter()
        .map(|shot| {
            let cells = [
                shot.number.to_string(),
                shot.start.clone(),
                shot.end.clone(),
                shot_type_label(shot.shot_type, lang).to_string(),
                shot.description.clone(),
                trade_dialogue(&shot.dialogue, lang),
            ];
            let name = format!("shot {}", shot.number);
            (shot.start_frame, ExpectedRow { name, cells })
        })
        .collect();
    rows.extend(sheet.gaps.iter().map(|gap| {
        let cells = [
            String::new(),
            gap.start.clone(),
            gap.end.clone(),
            String::new(),
            gap_note(lang).to_string(),
            String::new(),
        ];
        let name = format!("the gap at {}", gap.start);
        (gap.start_frame, ExpectedRow { name, cells })
    }));
    rows.sort_by_key(|(start, _)| *start);
    rows.into_iter().map(|(_, row)| row).collect()
}

/// The details block: the given details and the duration, labelled.
fn expected_details(sheet: &Sheet, details: &FilmDetails, lang: Lang) -> Vec<[String; 2]> {
    let fps: Fps = sheet.fps.parse().expect("the sheet's frame rate");
    let labels = match lang {
        Lang::En => LABELS_EN,
        Lang::Ru => LABELS_RU,
    };
    let values = [
        details.title.clone(),
        details.year.clone(),
        Some(timecode(sheet.duration_frames, fps)),
        details.director.clone(),
        details.studio.clone(),
        details.country.clone(),
    ];
    labels
        .into_iter()
        .zip(values)
        .filter_map(|(label, value)| Some([label.to_string(), value?]))
        .collect()
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {value}"))
        .iter()
        .map(|cell| {
            cell.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string {cell}"))
                .to_string()
        })
        .collect()
}

fn headers(lang: Lang) -> [&'static str; 6] {
    match lang {
        Lang::En => HEADERS_EN,
        Lang::Ru => HEADERS_RU,
    }
}

/// The checks both formats share: headers, details and every cell.
fn assert_same_table(file: &str, read: &Value, sheet: &Sheet, details: &FilmDetails, lang: Lang) {
    assert_eq!(
        strings(&read["headers"], "headers"),
        headers(lang),
        "{file}: the headers"
    );
    assert_eq!(
        read["headerBold"], true,
        "{file}: the header row is not bold"
    );

    let got_details: Vec<Vec<String>> = read["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|pair| strings(pair, "a detail"))
        .collect();
    let want_details: Vec<Vec<String>> = expected_details(sheet, details, lang)
        .into_iter()
        .map(Vec::from)
        .collect();
    assert_eq!(got_details, want_details, "{file}: the details block");
    assert_eq!(
        read["detailLabelsBold"], true,
        "{file}: detail labels not bold"
    );

    let got = read["rows"].as_array().expect("rows");
    let want = expected_rows(sheet, lang);
    assert_eq!(
        got.len(),
        want.len(),
        "{file}: one row per shot and per gap"
    );
    for (row, expected) in got.iter().zip(&want) {
        let cells = strings(row, "a row");
        for (column, (cell, wanted)) in cells.iter().zip(&expected.cells).enumerate() {
            assert_eq!(
                cell,
                wanted,
                "{file}: {}, column {:?}",
                expected.name,
                headers(lang)[column]
            );
        }
        assert_eq!(cells.len(), 6, "{file}: {} has six cells", expected.name);
    }
}

/// The workbook's own layout: one worksheet named for the language, bold
/// wrapped headers frozen below and repeated on every printed page, the
/// number a number and every other cell a string (never a formula),
/// wrapped and top-aligned, landscape and one page wide.
fn assert_workbook_layout(file: &str, read: &Value, sheet: &Sheet, lang: Lang) {
    let title = match lang {
        Lang::En => "Montage sheet",
        Lang::Ru => "Монтажный лист",
    };
    assert_eq!(
        strings(&read["sheetNames"], "sheet names"),
        [title],
        "{file}"
    );
    let header_row = read["headerRow"].as_u64().expect("header row");
    assert_eq!(
        read["freezePane"],
        format!("A{}", header_row + 1),
        "{file}: the panes are not frozen below the header row"
    );
    assert_eq!(
        read["printTitleRows"],
        format!("${header_row}:${header_row}"),
        "{file}: the header row is not repeated on printed pages"
    );
    assert_eq!(read["headerWrapped"], true, "{file}: headers not wrapped");
    assert_eq!(read["orientation"], "landscape", "{file}: page orientation");
    assert_eq!(read["fitToPage"], true, "{file}: not fitted to the page");
    assert_eq!(read["fitToWidth"], 1, "{file}: not one page wide");
    assert_eq!(
        read["fitToHeight"], 0,
        "{file}: not as many pages long as needed"
    );
    assert_eq!(read["wrapped"], true, "{file}: a table cell does not wrap");
    assert_eq!(
        read["topAligned"], true,
        "{file}: a table cell is not top-aligned"
    );

    let types = read["types"].as_array().expect("types");
    let rows = read["rows"].as_array().expect("rows");
    for (expected, (types, row)) in expected_rows(sheet, lang)
        .iter()
        .zip(types.iter().zip(rows))
    {
        let types = strings(types, "cell types");
        let cells = strings(row, "a row");
        if !cells[0].is_empty() {
            assert_eq!(
                types[0], "n",
                "{file}: {}: the number is not a number",
                expected.name
            );
        }
        for column in 1..6 {
            if !cells[column].is_empty() {
                assert_eq!(
                    types[column],
                    "s",
                    "{file}: {}, column {:?} is not a string cell",
                    expected.name,
                    headers(lang)[column]
                );
            }
        }
    }
}

/// The document's own layout: a bold title naming the film, one table, and
/// an A4 landscape page.
fn assert_document_layout(file: &str, read: &Value, details: &FilmDetails, lang: Lang) {
    let heading = match lang {
        Lang::En => "Montage sheet",
        Lang::Ru => "Монтажный лист",
    };
    let title = match &details.title {
        Some(film) => format!("{heading}: {film}"),
        None => heading.to_string(),
    };
    assert_eq!(read["title"], title, "{file}: the title");
    assert_eq!(read["titleBold"], true, "{file}: the title is not bold");
    assert_eq!(read["tableCount"], 1, "{file}: one table");
    assert_eq!(
        read["orientation"], "landscape",
        "{file}: section orientation"
    );
    let (width, height) = (
        read["pageWidth"].as_u64().expect("page width"),
        read["pageHeight"].as_u64().expect("page height"),
    );
    assert!(
        width > height,
        "{file}: the page is {width} x {height} twips"
    );
    assert_eq!((width, height), (16_838, 11_906), "{file}: not A4");
}

/// Renders `sheet` as XLSX and DOCX in both languages and checks each file.
fn assert_both_formats_read_back(sheet: &Sheet, details: &FilmDetails) -> Vec<(String, Value)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut read_files = Vec::new();
    for lang in Lang::ALL {
        let file = format!("sheet.{lang}.xlsx");
        let read = render_and_read(dir.path(), sheet, details, Format::Xlsx, lang);
        assert_same_table(&file, &read, sheet, details, lang);
        assert_workbook_layout(&file, &read, sheet, lang);
        read_files.push((file, read));

        let file = format!("sheet.{lang}.docx");
        let read = render_and_read(dir.path(), sheet, details, Format::Docx, lang);
        assert_same_table(&file, &read, sheet, details, lang);
        assert_document_layout(&file, &read, details, lang);
        read_files.push((file, read));
    }
    read_files
}

// ---------------------------------------------------------------------------
// Sheets that stress the layout.

fn line(speaker: &str, text: &str, offscreen: bool) -> DialogueLine {
    DialogueLine {
        speaker: speaker.to_string(),
        line: text.to_string(),
        offscreen,
        start_frame: None,
    }
}

fn shot(number: u32, frames: (i64, i64), shot_type: ShotType, description: &str) -> SheetShot {
    let fps = Fps::new(25, 1).expect("fps");
    SheetShot {
        number,
        start: timecode(frames.0, fps),
        end: timecode(frames.1, fps),
        start_frame: frames.0,
        end_frame: frames.1,
        shot_type,
        description: description.to_string(),
        dialogue: Vec::new(),
    }
}

/// Every shot type; Cyrillic descriptions and speakers; dialogue of several
/// lines and speakers, one off screen and one unknown; line breaks and a tab
/// inside cells; descriptions that start like formulas; empty cells; and a
/// gap between shots 4 and 5.
fn stress_sheet() -> Sheet {
    let mut first = shot(
        1,
        (0, 40),
        ShotType::Wide,
        "Улица ночью, дождь. Титр: «Москва, 1979»",
    );
    first.dialogue = vec![
        line("Анна", "Ты пришёл?", false),
        line("Рассказчик", "Прошло много лет.\nГород изменился.", true),
        line("", "(музыка: «Подмосковные вечера»)", false),
        line("Boris", "Yes, \"finally\".", false),
    ];
    let mut second = shot(
        2,
        (40, 190),
        ShotType::CloseUp,
        "Лицо Анны.\nОна улыбается.",
    );
    second.dialogue = vec![line("Анна", "Здравствуй.", false)];
    let third = shot(
        3,
        (190, 260),
        ShotType::Medium,
        "=HYPERLINK(\"http://127.0.0.1\",\"x\")",
    );
    let fourth = shot(
        4,
        (260, 400),
        ShotType::Detail,
        "+7 495 000-00-00 на записке",
    );
    let fifth = shot(5, (600, 700), ShotType::Insert, "@SUM(A1)\tи табуляция");
    let mut sixth = shot(6, (700, 850), ShotType::Other, "");
    sixth.dialogue = vec![line("", "-- конец --", false)];
    let seventh = shot(7, (850, 2000), ShotType::Wide, "-1 градус, снег");
    Sheet {
        video_id: Uuid::new_v4(),
        source: Some("/films/город.mp4".to_string()),
        fps: "25/1".to_string(),
        duration_frames: 2000,
        total_chunks: 3,
        completed_chunks: 2,
        failed_chunks: 1,
        status: SheetStatus::Partial,
        shots: vec![first, second, third, fourth, fifth, sixth, seventh],
        gaps: vec![Gap {
            start: "00:00:16:00".to_string(),
            end: "00:00:24:00".to_string(),
            start_frame: 400,
            end_frame: 600,
            chunks: vec![1],
            reasons: vec!["ffmpeg exited with status 1".to_string()],
        }],
    }
}

fn cyrillic_details() -> FilmDetails {
    FilmDetails {
        title: Some("Сталкер".to_string()),
        year: Some("1979".to_string()),
        director: Some("Андрей Тарковский".to_string()),
        studio: Some("Мосфильм".to_string()),
        country: Some("СССР".to_string()),
    }
}

fn rows_of<'a>(read_files: &'a [(String, Value)], file: &str) -> &'a Vec<Value> {
    let (_, read) = read_files
        .iter()
        .find(|(name, _)| name == file)
        .unwrap_or_else(|| panic!("{file} was not read"));
    read["rows"].as_array().expect("rows")
}

#[test]
fn a_stress_sheet_with_cyrillic_details_reads_back_cell_for_cell_in_xlsx_and_docx_in_both_languages(
) {
    let sheet = stress_sheet();
    let read_files = assert_both_formats_read_back(&sheet, &cyrillic_details());

    // A few cells spelled out, so a shared mistake in the expectations and
    // the export could not hide.
    for file in ["sheet.ru.xlsx", "sheet.ru.docx"] {
        let rows = rows_of(&read_files, file);
        assert_eq!(rows[0][3], "Общ.", "{file}: shot 1's type");
        assert_eq!(
            rows[0][5],
            "АННА\nТы пришёл?\nРАССКАЗЧИК (за кадром)\nПрошло много лет.\nГород изменился.\n\
             (музыка: «Подмосковные вечера»)\nBORIS\nYes, \"finally\".",
            "{file}: shot 1's dialogue"
        );
        assert_eq!(rows[1][3], "Кр.", "{file}: shot 2's type");
        assert_eq!(
            rows[1][4], "Лицо Анны.\nОна улыбается.",
            "{file}: shot 2's content"
        );
        assert_eq!(
            rows[2][4], "=HYPERLINK(\"http://127.0.0.1\",\"x\")",
            "{file}: shot 3"
        );
        assert_eq!(
            rows[4][4], "[не проанализировано: этой части фильма нет в листе]",
            "{file}: the gap's note"
        );
        assert_eq!(rows[5][3], "НДП", "{file}: shot 5's type");
        assert_eq!(rows[5][4], "@SUM(A1)\tи табуляция", "{file}: shot 5's tab");
        assert_eq!(
            rows[6][3], "",
            "{file}: an unknown shot type is an empty cell"
        );
    }
    for file in ["sheet.en.xlsx", "sheet.en.docx"] {
        let rows = rows_of(&read_files, file);
        assert_eq!(rows[1][3], "CU", "{file}: shot 2's type");
        let dialogue = rows[0][5].as_str().expect("shot 1's dialogue");
        assert_eq!(
            dialogue.lines().nth(2),
            Some("РАССКАЗЧИК (off-screen)"),
            "{file}: the off-screen speaker of shot 1"
        );
    }
}

#[test]
fn a_partial_sheet_shows_its_gap_as_a_row_between_the_shots_around_it() {
    let sheet = stress_sheet();
    let read_files = assert_both_formats_read_back(&sheet, &cyrillic_details());
    for (file, read) in &read_files {
        let rows = read["rows"].as_array().expect("rows");
        let numbers: Vec<&str> = rows
            .iter()
            .map(|row| row[0].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(numbers, ["1", "2", "3", "4", "", "5", "6", "7"], "{file}");
        assert_eq!(rows[4][1], "00:00:16:00", "{file}: the gap's start");
        assert_eq!(rows[4][2], "00:00:24:00", "{file}: the gap's end");
        assert_eq!(
            rows[3][2], rows[4][1],
            "{file}: the gap starts where shot 4 ends"
        );
        assert_eq!(
            rows[4][2], rows[5][1],
            "{file}: shot 5 starts where the gap ends"
        );
    }
}

#[test]
fn a_sheet_without_details_still_states_its_duration_in_both_formats() {
    let mut sheet = stress_sheet();
    sheet.gaps.clear();
    sheet.shots.truncate(4);
    sheet.shots[3].end_frame = 2000;
    sheet.shots[3].end = "00:01:20:00".to_string();
    sheet.status = SheetStatus::Complete;
    let read_files = assert_both_formats_read_back(&sheet, &FilmDetails::default());
    for (file, read) in &read_files {
        let label = if file.contains(".ru.") {
            "Хронометраж"
        } else {
            "Duration"
        };
        assert_eq!(
            read["details"],
            serde_json::json!([[label, "00:01:20:00"]]),
            "{file}: only the duration"
        );
    }
}

// ---------------------------------------------------------------------------
// A real run.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_of_a_generated_film_reads_back_cell_for_cell_in_both_formats_and_languages() {
    let fps = Fps::new(25, 1).expect("fps");
    let film = make_film(&film_dir(), fps, &[60, 130, 190, 255], 300, true);
    let (db, _) = fresh_db().await;
    let details = FilmDetails {
        title: Some("Проверка: «город»".to_string()),
        year: Some("2024".to_string()),
        country: Some("Россия".to_string()),
        ..FilmDetails::default()
    };
    let options = RunOptions {
        plan: PlanParams {
            chunk_seconds: 5.0,
            overlap_seconds: 1.0,
        },
        details: details.clone(),
        ..RunOptions::default()
    };
    let done = AtomicU32::new(0);
    let on_event = |event: RunEvent| {
        if let RunEvent::ChunkDone { .. } = event {
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let sheet = run_local(&db, &film.path, &options, &on_event)
        .await
        .expect("the run succeeds");
    assert!(
        done.load(Ordering::SeqCst) >= 3,
        "the film was cut into several chunks"
    );
    assert_eq!(sheet.status, SheetStatus::Complete);
    assert_eq!(sheet.shots.len(), 5, "one shot per cut and one before them");

    // The details come back from the database, as the download endpoint
    // and `shotlist export` take them.
    let stored = db
        .video_details(sheet.video_id)
        .await
        .expect("stored details");
    assert_eq!(stored, details);
    let read_files = assert_both_formats_read_back(&sheet, &stored);
    for (file, read) in &read_files {
        let duration = read["details"]
            .as_array()
            .and_then(|details| details.get(2))
            .cloned();
        assert_eq!(
            duration.and_then(|pair| pair[1].as_str().map(str::to_string)),
            Some("00:00:12:00".to_string()),
            "{file}: the duration of the 300-frame film"
        );
    }
}

// ---------------------------------------------------------------------------
// Text a workbook or a document cannot hold as it is.

/// What the workbook says at the end of a cell it had to cut, in `lang`.
fn cut_note(cut: usize, lang: Lang) -> String {
    match lang {
        Lang::En => format!(
            "… [cut: {cut} more characters; the whole text is in sheet.docx and sheet.json]"
        ),
        Lang::Ru => format!(
            "… [обрезано, не поместилось символов: {cut}; весь текст — в sheet.docx и \
             sheet.json]"
        ),
    }
}

/// Asserts that `cell` is the beginning of `whole` with the note saying how
/// much was cut, within Excel's 32,767 characters.
fn assert_cut_with_a_note(file: &str, what: &str, cell: &str, whole: &str, lang: Lang) {
    let length = cell.chars().count();
    assert!(length <= 32_767, "{file}: {what} has {length} characters");
    let note_at = cell
        .rfind("… [")
        .unwrap_or_else(|| panic!("{file}: {what} has no note at its end"));
    let (kept, note) = cell.split_at(note_at);
    assert!(
        whole.starts_with(kept),
        "{file}: {what} keeps the text's beginning"
    );
    assert!(kept.chars().count() > 30_000, "{file}: {what} keeps most");
    let cut = whole.chars().count() - kept.chars().count();
    assert_eq!(note, cut_note(cut, lang), "{file}: {what}'s note");
}

#[test]
fn an_over_long_description_and_dialogue_are_cut_with_a_note_in_the_workbook_and_whole_in_the_document(
) {
    let description: String = "Длинное описание кадра, 😀 и снова. "
        .chars()
        .cycle()
        .take(40_000)
        .collect();
    let mut long = shot(1, (0, 250), ShotType::Wide, &description);
    long.dialogue = (0..20_000)
        .map(|n| line("Анна", &format!("Реплика {n}."), n % 2 == 1))
        .collect();
    let sheet = Sheet {
        video_id: Uuid::new_v4(),
        source: None,
        fps: "25/1".to_string(),
        duration_frames: 250,
        total_chunks: 1,
        completed_chunks: 1,
        failed_chunks: 0,
        status: SheetStatus::Complete,
        shots: vec![long],
        gaps: Vec::new(),
    };
    for lang in Lang::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = export::write_delivery(dir.path(), &sheet, &cyrillic_details(), lang)
            .unwrap_or_else(|error| panic!("{lang}: the delivery files: {error}"));
        let dialogue = trade_dialogue(&sheet.shots[0].dialogue, lang);
        assert!(dialogue.chars().count() > 32_767, "the dialogue is long");

        let file = format!("sheet.{lang}.xlsx");
        let read = read_back(&files.xlsx);
        let rows = read["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{file}: one shot");
        let cell = |column: usize| rows[0][column].as_str().expect("a cell").to_string();
        assert_eq!(cell(0), "1", "{file}: the shot's number");
        assert_cut_with_a_note(&file, "the description", &cell(4), &description, lang);
        assert_cut_with_a_note(&file, "the dialogue", &cell(5), &dialogue, lang);

        let file = format!("sheet.{lang}.docx");
        let read = read_back(&files.docx);
        let rows = read["rows"].as_array().expect("rows");
        assert_eq!(rows[0][4], description, "{file}: the whole description");
        assert_eq!(rows[0][5], dialogue, "{file}: the whole dialogue");
    }
}

#[test]
fn characters_xml_forbids_read_back_as_replacement_characters_in_the_document() {
    let mut first = shot(1, (0, 100), ShotType::CloseUp, "Кадр\u{1}один\u{1F}");
    first.dialogue = vec![line("Ан\u{FFFE}на", "При\u{8}вет.", false)];
    let sheet = Sheet {
        video_id: Uuid::new_v4(),
        source: None,
        fps: "25/1".to_string(),
        duration_frames: 100,
        total_chunks: 1,
        completed_chunks: 1,
        failed_chunks: 0,
        status: SheetStatus::Complete,
        shots: vec![first],
        gaps: Vec::new(),
    };
    // As a database holding details stored before the check could give
    // them: FilmDetails::checked refuses them now.
    let details = FilmDetails {
        title: Some("Сталкер\u{FFFF}".to_string()),
        director: Some("А.\u{B}Тарковский".to_string()),
        ..FilmDetails::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for lang in Lang::ALL {
        let read = render_and_read(dir.path(), &sheet, &details, Format::Docx, lang);
        let heading = match lang {
            Lang::En => "Montage sheet",
            Lang::Ru => "Монтажный лист",
        };
        assert_eq!(
            read["title"],
            format!("{heading}: Сталкер\u{FFFD}"),
            "{lang}"
        );
        let director = read["details"]
            .as_array()
            .expect("details")
            .iter()
            .find(|pair| pair[1].as_str().is_some_and(|v| v.contains("Тарковский")))
            .map(|pair| pair[1].clone());
        assert_eq!(
            director,
            Some(Value::from("А.\u{FFFD}Тарковский")),
            "{lang}"
        );
        let rows = read["rows"].as_array().expect("rows");
        assert_eq!(rows[0][4], "Кадр\u{FFFD}один\u{FFFD}", "{lang}");
        assert_eq!(rows[0][5], "АН\u{FFFD}НА\nПри\u{FFFD}вет.", "{lang}");
    }
}
