//! `sheet.json` and `sheet.csv` as written by `export::write_sheet`: the JSON
//! parses back to the same sheet, and the CSV reads back, cell for cell,
//! through an RFC 4180 reader, whatever the text holds.
//!
//! Then the delivery files as a user gets them: `shotlist process` with film
//! details and `--lang ru` writes sheet.xlsx, sheet.docx and details.json
//! beside them and stores the details with the film; `shotlist export` gives
//! a finished film's sheet back from the database or from that folder, in
//! the trade's layout in Russian, with flags put over the stored details;
//! and every way an export can go wrong is one line naming what.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shotlist_shared::db::{Claim, Db};
use shotlist_shared::export::{self, CSV_HEADER};
use shotlist_shared::model::{DialogueLine, Shot, ShotType};
use shotlist_shared::sheet::{FilmDetails, Gap, Sheet, SheetShot, SheetStatus};
use shotlist_tests::cli_bin::{output_of as run, shotlist_command};
use shotlist_tests::film::city_footage;
use shotlist_tests::fixtures;
use shotlist_tests::pg::fresh_db;
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

/// A `shotlist` command run in `dir`, with no `DATABASE_URL` from the
/// environment and quiet logs.
fn shotlist_in(dir: &Path) -> Command {
    let mut command = shotlist_command();
    command.current_dir(dir);
    command
}

/// Runs `command`, which must succeed; its stdout.
fn succeed(command: &mut Command) -> String {
    let (output, stdout, stderr) = run(command);
    assert!(output.status.success(), "shotlist failed: {stderr}");
    stdout
}

/// Asserts a failed run: exit status `code`, nothing on stdout, and one
/// stderr line, `shotlist: error: ...`, containing `expected`.
fn assert_fails(command: &mut Command, code: i32, expected: &str) -> String {
    let (output, stdout, stderr) = run(command);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert_eq!(stdout, "", "nothing on stdout on failure");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.starts_with("shotlist: error: ") && stderr.contains(expected),
        "{stderr:?} should say {expected:?}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr:?}");
    stderr
}

/// The text of every XML part of an Office file (a zip), joined: what a
/// reader of the workbook or document sees, tags included.
fn office_xml(path: &Path) -> String {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut archive =
        zip::ZipArchive::new(file).unwrap_or_else(|e| panic!("{path:?} is not a zip: {e}"));
    let mut text = String::new();
    for index in 0..archive.len() {
        let mut part = archive.by_index(index).expect("a part of the zip");
        if part.name().ends_with(".xml") {
            part.read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("{} of {path:?} is not UTF-8: {e}", part.name()));
        }
    }
    text
}

/// Asserts that `path` is an Office file of some substance: a zip ("PK")
/// with XML parts.
fn assert_office_file(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    assert!(bytes.starts_with(b"PK"), "{path:?} is a zip");
    assert!(
        bytes.len() > 2_000,
        "{path:?} has only {} bytes",
        bytes.len()
    );
    assert!(office_xml(path).contains("<?xml"), "{path:?} holds XML");
}

fn stalker() -> FilmDetails {
    FilmDetails {
        title: Some("Сталкер".into()),
        year: Some("1979".into()),
        director: Some("Андрей Тарковский".into()),
        studio: None,
        country: Some("СССР".into()),
    }
}

fn stalker_flags() -> [&'static str; 8] {
    [
        "--title",
        " Сталкер ",
        "--year",
        "1979",
        "--director",
        "Андрей Тарковский",
        "--country",
        "СССР",
    ]
}

#[tokio::test]
async fn process_with_details_and_lang_ru_writes_six_files_and_export_gives_its_json_back() {
    let (db, url) = fresh_db().await;
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    let id = Uuid::new_v4();
    let stdout = succeed(
        shotlist_in(work.path())
            .arg("process")
            .arg(city_footage())
            .args(["--database-url", &url, "--video-id", &id.to_string()])
            .arg("--out")
            .arg(&out)
            .args(stalker_flags())
            .args(["--lang", "ru"]),
    );

    let names = [
        "sheet.json",
        "sheet.csv",
        "sheet.xlsx",
        "sheet.docx",
        "details.json",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "five paths and a summary: {stdout:?}");
    for (line, name) in lines.iter().zip(names) {
        assert_eq!(Path::new(line), out.join(name));
    }
    let mut found: Vec<String> = std::fs::read_dir(&out)
        .expect("list the folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut expected = names.map(str::to_string).to_vec();
    expected.sort();
    assert_eq!(found, expected, "the six files and nothing else");

    let (header, rows) = read_csv(&out.join("sheet.csv"));
    assert_eq!(header, CSV_HEADER, "sheet.csv keeps its documented columns");
    assert_eq!(rows[0][3], "other", "and its machine shot types");
    for name in ["sheet.xlsx", "sheet.docx"] {
        let path = out.join(name);
        assert_office_file(&path);
        let xml = office_xml(&path);
        for text in ["Сталкер", "Андрей Тарковский", "Начальный тайм-код"]
        {
            assert!(xml.contains(text), "{name} shows {text:?}");
        }
    }
    let written: FilmDetails =
        serde_json::from_slice(&std::fs::read(out.join("details.json")).expect("read"))
            .expect("details.json holds film details");
    assert_eq!(written, stalker(), "trimmed as given");
    assert_eq!(db.video_details(id).await.expect("stored"), stalker());

    let sheet_json = std::fs::read(out.join("sheet.json")).expect("read sheet.json");
    let from_folder = work.path().join("from-folder.json");
    let from_db = work.path().join("from-db.json");
    let printed = succeed(
        shotlist_in(work.path())
            .args(["export", &id.to_string(), "--format", "json", "--from"])
            .arg(&out)
            .arg("--out")
            .arg(&from_folder),
    );
    assert_eq!(printed.trim_end(), from_folder.display().to_string());
    let printed = succeed(
        shotlist_in(work.path())
            .args(["export", &id.to_string(), "--format", "json"])
            .env("DATABASE_URL", &url)
            .arg("--out")
            .arg(&from_db),
    );
    assert_eq!(printed.trim_end(), from_db.display().to_string());
    assert_eq!(std::fs::read(&from_folder).expect("read"), sheet_json);
    assert_eq!(std::fs::read(&from_db).expect("read"), sheet_json);
}

#[tokio::test]
async fn a_resumed_run_without_details_keeps_the_stored_ones_and_one_with_details_replaces_them() {
    let (db, url) = fresh_db().await;
    let work = tempfile::tempdir().expect("tempdir");
    let id = Uuid::new_v4().to_string();
    let process = |out: &str| {
        let mut command = shotlist_in(work.path());
        command.arg("process").arg(city_footage()).args([
            "--database-url",
            &url,
            "--video-id",
            &id,
            "--out",
            out,
        ]);
        command
    };
    succeed(process("first").args(stalker_flags()));
    let video_id: Uuid = id.parse().expect("uuid");
    assert_eq!(db.video_details(video_id).await.expect("stored"), stalker());

    let stdout = succeed(&mut process("again"));
    assert!(
        stdout.contains("details.json"),
        "the stored details are written: {stdout}"
    );
    assert_eq!(db.video_details(video_id).await.expect("kept"), stalker());
    let again: FilmDetails = serde_json::from_slice(
        &std::fs::read(work.path().join("again/details.json")).expect("read"),
    )
    .expect("details");
    assert_eq!(again, stalker());
    assert!(office_xml(&work.path().join("again/sheet.docx")).contains("Сталкер"));

    succeed(process("third").args(["--title", "Солярис"]));
    let solaris = FilmDetails {
        title: Some("Солярис".into()),
        ..FilmDetails::default()
    };
    assert_eq!(db.video_details(video_id).await.expect("replaced"), solaris);
    let xml = office_xml(&work.path().join("third/sheet.xlsx"));
    assert!(
        xml.contains("Солярис") && !xml.contains("Тарковский"),
        "{xml}"
    );
}

/// A finished one-chunk film of 10 s at 25 fps whose two shots have a
/// close-up with dialogue on and off screen, and an insert whose text
/// starts like a formula; its details are stored.
async fn finished_film_with_dialogue(db: &Db) -> (Uuid, Sheet) {
    let id = fixtures::described_film(db, 250, "25/1").await;
    let token = match db
        .claim_chunk(id, 0, Duration::from_secs(600), 3)
        .await
        .expect("claim")
    {
        Claim::Claimed(chunk) => chunk.lease_token,
        other => panic!("chunk 0 not claimable: {other:?}"),
    };
    let shots = [
        Shot {
            start_frame: 0,
            end_frame: 100,
            shot_type: ShotType::CloseUp,
            description: "Анна у окна, дождь".into(),
            dialogue: vec![
                dialogue("Анна", "Привет.", false),
                dialogue("Голос", "Прошло много лет.", true),
            ],
        },
        Shot {
            start_frame: 100,
            end_frame: 250,
            shot_type: ShotType::Insert,
            description: "=титр «Конец»".into(),
            dialogue: Vec::new(),
        },
    ];
    db.complete_chunk(id, 0, token, &shots)
        .await
        .expect("chunk completed");
    let sheet = db.finalize(id).await.expect("finalized");
    db.set_video_details(id, &stalker())
        .await
        .expect("details stored");
    (id, sheet)
}

fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader
        .headers()
        .expect("header row")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("a row").iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[tokio::test]
async fn export_in_russian_from_the_database_or_the_folder_has_the_trade_headers_labels_and_dialogue(
) {
    let (db, url) = fresh_db().await;
    let (id, sheet) = finished_film_with_dialogue(&db).await;
    let work = tempfile::tempdir().expect("tempdir");
    let from_db = succeed(
        shotlist_in(work.path())
            .args(["export", &id.to_string(), "--format", "csv", "--lang", "ru"])
            .args(["--database-url", &url, "--out", "-"]),
    );
    let left: Vec<_> = std::fs::read_dir(work.path()).expect("list").collect();
    assert!(left.is_empty(), "--out - writes no file: {left:?}");

    // A UTF-8 byte-order mark, once, so that Excel on Windows reads the
    // Cyrillic as UTF-8.
    let table = from_db
        .strip_prefix('\u{FEFF}')
        .expect("the trade CSV starts with a UTF-8 byte-order mark");
    assert!(!table.contains('\u{FEFF}'), "one mark, at the start");
    let (header, rows) = parse_csv(table);
    assert_eq!(
        header,
        [
            "№ плана",
            "Начальный тайм-код",
            "Конечный тайм-код",
            "План",
            "Содержание (описание) плана, титры",
            "Монологи, разговоры, песни, субтитры, музыка",
        ]
    );
    assert_eq!(rows.len(), 2, "{from_db}");
    assert_eq!(
        rows[0],
        [
            "1",
            "00:00:00:00",
            "00:00:04:00",
            "Кр.",
            "Анна у окна, дождь",
            "АННА\nПривет.\nГОЛОС (за кадром)\nПрошло много лет.",
        ]
    );
    assert_eq!(rows[1][3], "НДП");
    assert_eq!(
        rows[1][4], "'=титр «Конец»",
        "a formula-like cell stays text"
    );

    let folder = work.path().join(id.to_string());
    export::write_sheet(&folder, &sheet).expect("sheet.json written");
    let from_folder = succeed(
        shotlist_in(work.path())
            .args(["export", &id.to_string(), "--format", "csv", "--lang", "ru"])
            .arg("--from")
            .arg(&folder)
            .args(["--out", "-"]),
    );
    assert_eq!(from_folder, from_db, "the folder gives the same table");
}

#[tokio::test]
async fn export_flags_are_put_over_the_stored_details_field_by_field() {
    let (db, url) = fresh_db().await;
    let (id, _) = finished_film_with_dialogue(&db).await;
    let work = tempfile::tempdir().expect("tempdir");
    let export = |format: &str, extra: &[&str]| -> PathBuf {
        let printed = succeed(
            shotlist_in(work.path())
                .args([
                    "export",
                    &id.to_string(),
                    "--format",
                    format,
                    "--lang",
                    "ru",
                ])
                .args(["--database-url", &url])
                .args(extra),
        );
        let path = work.path().join(printed.trim_end());
        assert_office_file(&path);
        path
    };
    let stored = export("xlsx", &[]);
    assert_eq!(
        stored.file_name().and_then(|n| n.to_str()),
        Some(format!("shotlist-{id}.ru.xlsx").as_str()),
        "the default file name"
    );
    let xml = office_xml(&stored);
    assert!(
        xml.contains("Сталкер") && xml.contains("1979"),
        "stored details"
    );

    for format in ["xlsx", "docx"] {
        let file = format!("flags.{format}");
        let flagged = export(format, &["--title", "Солярис", "--out", &file]);
        let xml = office_xml(&flagged);
        assert!(xml.contains("Солярис"), "{format}: the flag's title");
        assert!(!xml.contains("Сталкер"), "{format}: not the stored title");
        assert!(
            xml.contains("1979") && xml.contains("Андрей Тарковский"),
            "{format}: the stored fields the flags do not give"
        );
    }
    assert_eq!(
        db.video_details(id).await.expect("details"),
        stalker(),
        "export changes nothing stored"
    );
}

#[tokio::test]
async fn export_errors_name_the_film_the_path_or_the_flag() {
    let (db, url) = fresh_db().await;
    let work = tempfile::tempdir().expect("tempdir");
    let export = |id: &str| {
        let mut command = shotlist_in(work.path());
        command.args(["export", id]);
        command
    };

    let unknown = Uuid::new_v4().to_string();
    assert_fails(
        export(&unknown).args(["--format", "csv", "--database-url", &url]),
        1,
        &format!("no video {unknown} in the database"),
    );

    let unfinished = fixtures::described_film(&db, 12_500, "25/1").await;
    let token = match db
        .claim_chunk(unfinished, 0, Duration::from_secs(600), 3)
        .await
        .expect("claim")
    {
        Claim::Claimed(chunk) => chunk.lease_token,
        other => panic!("chunk 0 not claimable: {other:?}"),
    };
    db.complete_chunk(unfinished, 0, token, &[])
        .await
        .expect("chunk 0 completed");
    assert_fails(
        export(&unfinished.to_string()).args(["--format", "xlsx", "--database-url", &url]),
        1,
        &format!("video {unfinished} has no sheet yet: 1 of 3 chunks done"),
    );

    let id = Uuid::new_v4();
    let missing = work.path().join("nowhere");
    let stderr = assert_fails(
        export(&id.to_string())
            .args(["--format", "csv", "--from"])
            .arg(&missing),
        1,
        &format!("no folder {}", missing.display()),
    );
    assert!(stderr.contains("--database-url") && stderr.contains("--from"));
    let a_file = work.path().join("sheet.json");
    std::fs::write(&a_file, "{}").expect("write");
    assert_fails(
        export(&id.to_string())
            .args(["--format", "csv", "--from"])
            .arg(&a_file),
        1,
        &format!("{} is a file, not a folder", a_file.display()),
    );
    assert_fails(
        export(&id.to_string()).args(["--format", "csv"]),
        1,
        &format!("no folder shotlist-out/{id}"),
    );

    let folder = work.path().join("folder");
    std::fs::create_dir(&folder).expect("mkdir");
    assert_fails(
        export(&id.to_string())
            .args(["--format", "csv", "--from"])
            .arg(&folder),
        1,
        &format!("no {}", folder.join("sheet.json").display()),
    );
    std::fs::write(folder.join("sheet.json"), "{\"shots\": ").expect("write");
    assert_fails(
        export(&id.to_string())
            .args(["--format", "csv", "--from"])
            .arg(&folder),
        1,
        "sheet.json is not a sheet",
    );
    let other = awkward_sheet();
    export::write_sheet(&folder, &other).expect("written");
    assert_fails(
        export(&id.to_string())
            .args(["--format", "csv", "--from"])
            .arg(&folder),
        1,
        &format!(
            "sheet.json is the sheet of video {}, not of video {id}",
            other.video_id
        ),
    );

    let id = other.video_id.to_string();
    for (flags, expected) in [
        (vec!["--format", "pdf"], "--format: unknown format \"pdf\""),
        (vec!["--format", "csv", "--lang", "de"], "--lang"),
        (vec!["--format", "csv", "--out", "."], "--out . is a folder"),
        (vec!["--format", "csv", "--title", ""], ""),
        (vec!["--format", "csv", "--country", "a\nb"], "--country"),
        (vec!["--lang", "ru"], "--format"),
    ] {
        let mut command = export(&id);
        command.args(&flags).arg("--from").arg(&folder);
        if expected.is_empty() {
            // A blank detail is no detail.
            succeed(command.args(["--out", "-"]));
            continue;
        }
        assert_fails(&mut command, 2, expected);
    }

    let secret = "s3cr3t-pa55";
    let stderr = assert_fails(
        export(&id).args([
            "--format",
            "csv",
            "--database-url",
            &format!("postgresql://shotlist:{secret}@127.0.0.1:1/x?connect_timeout=2"),
        ]),
        1,
        "127.0.0.1",
    );
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn export_out_is_never_a_link_a_fifo_a_socket_or_the_sheet_it_reads_from() {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("folder");
    let sheet = awkward_sheet();
    export::write_sheet(&folder, &sheet).expect("written");
    let sheet_json = std::fs::read(folder.join("sheet.json")).expect("read");
    let precious = work.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let link = work.path().join("link.csv");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    let fifo = work.path().join("fifo.csv");
    let fifo_c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("no NUL");
    // SAFETY: `fifo_c` is a valid NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0, "mkfifo");
    let socket = work.path().join("socket.csv");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
    let export_to = |out: &Path| {
        let mut command = shotlist_in(work.path());
        command
            .args(["export", &sheet.video_id.to_string(), "--format", "csv"])
            .arg("--from")
            .arg(&folder)
            .arg("--out")
            .arg(out);
        command
    };

    let refusals = [
        (
            link.clone(),
            "is a symbolic link; give a regular file or - for stdout",
        ),
        (fifo.clone(), "is not a regular file (a FIFO)"),
        (socket.clone(), "is not a regular file (a socket)"),
        // The child's own stdin, as /dev/fd/N of a shell's >(...) would be.
        (PathBuf::from("/proc/self/fd/0"), "is a symbolic link"),
        (
            folder.join("sheet.json"),
            "would overwrite the sheet of the folder it reads from",
        ),
        (
            work.path().join("folder/../folder/./details.json"),
            "would overwrite the details of the folder it reads from",
        ),
    ];
    for (out, expected) in refusals {
        let stderr = assert_fails(&mut export_to(&out), 2, expected);
        assert!(
            stderr.contains(&format!("--out {}", out.display())),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&link).expect("read"), "keep me");
    let kind = |path: &Path| {
        std::fs::symlink_metadata(path)
            .expect("still there")
            .file_type()
    };
    assert!(kind(&link).is_symlink(), "the link is still a link");
    use std::os::unix::fs::FileTypeExt;
    assert!(kind(&fifo).is_fifo(), "the FIFO is still a FIFO");
    assert!(kind(&socket).is_socket(), "the socket is still a socket");
    assert_eq!(
        std::fs::read(folder.join("sheet.json")).expect("read"),
        sheet_json,
        "the only copy of the sheet is whole"
    );
    assert!(!folder.join("details.json").exists());

    // A file in a folder nobody can create files in: said at once.
    assert_fails(
        &mut export_to(Path::new("/proc/version")),
        1,
        "--out must be a regular file in a writable folder, or - for stdout",
    );
    // A regular file is replaced as before.
    let taken = work.path().join("taken.csv");
    std::fs::write(&taken, "old").expect("write");
    succeed(&mut export_to(&taken));
    let written = std::fs::read(&taken).expect("read");
    assert!(
        written.starts_with(export::UTF8_BOM),
        "the trade CSV replaced it"
    );
}
