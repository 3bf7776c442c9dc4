//! `sheet.json` and `sheet.csv` as written by `export::write_sheet`: the JSON
//! parses back to the same sheet, and the CSV reads back, cell for cell,
//! through an RFC 4180 reader, whatever the text holds.

use std::path::Path;

use shotlist_shared::export::{self, CSV_HEADER};
use shotlist_shared::model::{DialogueLine, ShotType};
use shotlist_shared::sheet::{Gap, Sheet, SheetShot, SheetStatus};
use uuid::Uuid;

fn dialogue(speaker: &str, line: &str, offscreen: bool) -> DialogueLine {
    DialogueLine {
        speaker: speaker.to_string(),
        line: line.to_string(),
        offscreen,
        start_frame: Some(12),
    }
}

fn shot(number: u32, start_frame: i64, end_frame: i64, description: &str) -> SheetShot {
    SheetShot {
        number,
        start: format!("00:00:{:02}:{:02}", start_frame / 25, start_frame % 25),
        end: format!("00:00:{:02}:{:02}", end_frame / 25, end_frame % 25),
        start_frame,
        end_frame,
        shot_type: ShotType::Wide,
        description: description.to_string(),
        dialogue: Vec::new(),
    }
}

/// A sheet whose text has every character that needs CSV quoting.
fn awkward_sheet() -> Sheet {
    let mut first = shot(1, 0, 40, "A street, at night; rain \"heavy\"");
    first.dialogue = vec![
        dialogue("Anna", "Wait, \"what\"?", false),
        dialogue("Рассказчик", "Прошло много лет.", true),
        dialogue("", "(музыка)", false),
    ];
    let mut second = shot(2, 40, 190, "Two lines:\nfirst,\r\nsecond");
    second.shot_type = ShotType::CloseUp;
    let third = shot(3, 190, 200, "");
    Sheet {
        video_id: Uuid::new_v4(),
        source: Some("/films/город, ночь.mp4".to_string()),
        fps: "25/1".to_string(),
        duration_frames: 200,
        total_chunks: 2,
        completed_chunks: 1,
        failed_chunks: 1,
        status: SheetStatus::Partial,
        shots: vec![first, second, third],
        gaps: vec![Gap {
            start: "00:00:08:00".to_string(),
            end: "00:00:08:10".to_string(),
            start_frame: 200,
            end_frame: 210,
            chunks: vec![1],
            reasons: vec!["ffmpeg exited with status 1".to_string()],
        }],
    }
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).expect("open sheet.csv");
    let header = reader
        .headers()
        .expect("header row")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|record| {
            record
                .expect("a well-formed row")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn csv_round_trips_quotes_commas_line_breaks_and_cyrillic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sheet = awkward_sheet();
    let files = export::write_sheet(dir.path(), &sheet).expect("sheet written");
    assert_eq!(files.csv, dir.path().join("sheet.csv"));

    let (header, rows) = read_csv(&files.csv);
    assert_eq!(header, CSV_HEADER);
    assert_eq!(rows.len(), sheet.shots.len(), "one row per shot");
    assert_eq!(
        rows[0],
        [
            "1",
            "00:00:00:00",
            "00:00:01:15",
            "wide",
            "A street, at night; rain \"heavy\"",
            "Anna: Wait, \"what\"?\nРассказчик (off-screen): Прошло много лет.\n(музыка)",
        ]
    );
    assert_eq!(rows[1][3], "close-up");
    assert_eq!(rows[1][4], "Two lines:\nfirst,\r\nsecond");
    assert_eq!(rows[1][5], "", "no dialogue is an empty cell");
    assert_eq!(rows[2][0], "3");
    assert_eq!(rows[2][4], "", "an empty description stays an empty cell");
}

#[test]
fn json_parses_back_to_the_same_sheet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sheet = awkward_sheet();
    let files = export::write_sheet(dir.path(), &sheet).expect("sheet written");
    assert_eq!(files.json, dir.path().join("sheet.json"));

    let text = std::fs::read_to_string(&files.json).expect("read sheet.json");
    let back: Sheet = serde_json::from_str(&text).expect("sheet.json parses");
    assert_eq!(back, sheet);

    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    for key in [
        "videoId",
        "source",
        "fps",
        "durationFrames",
        "totalChunks",
        "completedChunks",
        "failedChunks",
        "status",
        "shots",
    ] {
        assert!(value.get(key).is_some(), "sheet.json has {key}");
    }
    assert_eq!(value["status"], "partial");
    assert_eq!(value["shots"][1]["type"], "close-up");
    assert_eq!(value["shots"][0]["startFrame"], 0);
    assert!(text.contains("\n  \""), "pretty-printed");
}

#[test]
fn writing_creates_the_folder_and_replaces_earlier_files_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("deep").join("er");
    let mut sheet = awkward_sheet();
    export::write_sheet(&out, &sheet).expect("first write");

    sheet.shots.truncate(1);
    sheet.status = SheetStatus::Complete;
    let files = export::write_sheet(&out, &sheet).expect("second write");
    let (_, rows) = read_csv(&files.csv);
    assert_eq!(rows.len(), 1, "the second sheet replaced the first");
    let back: Sheet =
        serde_json::from_slice(&std::fs::read(&files.json).expect("read")).expect("json");
    assert_eq!(back, sheet);

    let names: Vec<String> = std::fs::read_dir(&out)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left behind: {names:?}");
}

#[test]
fn an_output_path_that_is_a_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("taken");
    std::fs::write(&blocker, "a file").expect("write");
    let error = export::write_sheet(&blocker, &awkward_sheet()).expect_err("cannot write");
    let message = error.to_string();
    assert!(message.contains("taken"), "{message}");
    assert!(message.starts_with("could not"), "{message}");
}
