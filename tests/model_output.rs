//! Arbitrary model answers through the parser and the reconciliation.
//!
//! Whatever a model writes, parsing must not panic and a reconciled chunk
//! must honour the analysis contract: shots contiguous over the chunk, every
//! measured cut kept, no shot or dialogue time outside the chunk, text
//! clipped. The answers range from random unicode to JSON of nearly the
//! right shape with absurd numbers, wrong types and nested junk, and answers
//! cut off at any character. Some answers are hostile on purpose: nested a
//! million deep, megabytes long, holding NUL and control characters, or
//! words a spreadsheet would run as a formula.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;
use shotlist_shared::analyzer::output::{
    parse_output, reconcile, ModelLine, ModelShot, OutputProblem, MAX_SPEAKER_CHARS, MAX_TEXT_CHARS,
};
use shotlist_shared::analyzer::{check_analysis, cuts_of, shots_from_cuts, ChunkRequest};
use shotlist_shared::model::{ChunkAnalysis, Shot, ShotType};
use shotlist_shared::probe::MediaInfo;
use shotlist_shared::sheet::{Sheet, SheetShot, SheetStatus};
use shotlist_shared::time::Fps;

const CASES: u32 = 384;

/// A chunk, the shots measured in it and the snapping tolerance.
#[derive(Debug, Clone)]
struct Chunk {
    request: ChunkRequest,
    measured: Vec<Shot>,
    tolerance: i64,
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let rates = prop_oneof![
        Just((25, 1)),
        Just((24000, 1001)),
        Just((30000, 1001)),
        Just((24, 1)),
        Just((60000, 1001)),
        Just((1, 1)),
        Just((1000, 1)),
    ];
    (
        rates,
        1i64..20_000,
        0i64..5_000_000,
        any::<u32>(),
        vec(any::<i64>(), 0..40),
        -5i64..80,
    )
        .prop_map(
            |((num, den), len, start_frame, chunk_index, raw_cuts, tolerance)| {
                // Most cuts land inside the chunk; shots_from_cuts drops the rest.
                let cuts: Vec<i64> = raw_cuts.iter().map(|c| c.rem_euclid(len + 3) - 1).collect();
                let measured = shots_from_cuts(len, &cuts)
                    .into_iter()
                    .map(|mut s| {
                        s.description = "sound throughout".to_string();
                        s
                    })
                    .collect();
                Chunk {
                    request: request(Fps::new(num, den).unwrap(), chunk_index, start_frame, len),
                    measured,
                    tolerance,
                }
            },
        )
}

fn request(fps: Fps, chunk_index: u32, start_frame: i64, len: i64) -> ChunkRequest {
    ChunkRequest {
        video_id: uuid::Uuid::nil(),
        chunk_index,
        source: "/films/fuzz.mp4".to_string(),
        media: MediaInfo {
            fps,
            duration_frames: start_frame + len,
            start_offset_seconds: 0.0,
            has_audio: true,
            sound_end_seconds: None,
            width: 1280,
            height: 720,
            codec: "h264".to_string(),
            format: "mov,mp4,m4a,3gp,3g2,mj2".to_string(),
        },
        start_frame,
        end_frame: start_frame + len,
        deadline: None,
    }
}

/// Checks everything a reconciled chunk promises.
fn assert_honours_contract(chunk: &Chunk, result: &ChunkAnalysis) -> Result<(), TestCaseError> {
    let len = chunk.request.len();
    if let Err(why) = check_analysis(len, result) {
        return Err(TestCaseError::fail(why));
    }
    let cuts = cuts_of(result);
    for shot in chunk.measured.iter().skip(1) {
        prop_assert!(
            cuts.contains(&shot.start_frame),
            "measured cut {} lost",
            shot.start_frame
        );
    }
    for shot in &result.shots {
        prop_assert!(shot.start_frame >= 0 && shot.end_frame <= len);
        prop_assert!(shot.description.chars().count() <= MAX_TEXT_CHARS);
        prop_assert_eq!(shot.description.trim(), shot.description.as_str());
        for line in &shot.dialogue {
            prop_assert!(!line.line.trim().is_empty());
            prop_assert!(line.line.chars().count() <= MAX_TEXT_CHARS);
            prop_assert!(line.speaker.chars().count() <= MAX_SPEAKER_CHARS);
            if let Some(f) = line.start_frame {
                prop_assert!(
                    f >= shot.start_frame && f < shot.end_frame,
                    "line at {f} outside its shot [{}, {})",
                    shot.start_frame,
                    shot.end_frame
                );
            }
        }
    }
    Ok(())
}

/// Parses `text`; when it is taken, reconciles it and checks the result.
fn parse_and_reconcile(chunk: &Chunk, text: &str) -> Result<(), TestCaseError> {
    match parse_output(text) {
        Ok(shots) => {
            let result = reconcile(&chunk.request, &chunk.measured, &shots, chunk.tolerance);
            assert_honours_contract(chunk, &result)
        }
        Err(OutputProblem::NotJson(why) | OutputProblem::CutOff(why)) => {
            // The reason is serde's short message, never the answer itself.
            prop_assert!(why.chars().count() <= 250, "long reason: {why}");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Any JSON value, nested a few levels.
fn junk() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A number as a model might write it: plausible, absurd, or not a number.
fn number_text(plausible: std::ops::Range<f64>) -> impl Strategy<Value = String> {
    prop_oneof![
        40 => plausible.prop_map(|f| format!("{f:.3}")),
        12 => (0u32..20).prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "-0", "-1", "-0.5", "1e308", "-1e308", "1e-320", "4.5e15", "9007199254740993",
            "18446744073709551616", "1e400", "NaN", "Infinity", "\"NaN\"", "\"3.5\"",
            "null", "true", "[]", "{}",
        ])
        .prop_map(str::to_string),
        1 => junk().prop_map(|v| v.to_string()),
    ]
}

/// A string field: usually a JSON string, sometimes something else.
fn text_value(labels: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        24 => prop::sample::select(labels).prop_map(|s| Value::from(s).to_string()),
        12 => any::<String>().prop_map(|s| Value::from(s).to_string()),
        1 => Just(Value::from("é".repeat(MAX_TEXT_CHARS + 7)).to_string()),
        1 => junk().prop_map(|v| v.to_string()),
    ]
}

const TYPES: &[&str] = &[
    "close-up",
    "medium",
    "wide",
    "detail",
    "insert",
    "other",
    "CU",
    "ECU",
    "two-shot",
    "Establishing Shot",
    "weird",
    "",
];
const WORDS: &[&str] = &[
    "A woman at a window. A sign reads \"HOTEL\".",
    "  ",
    "",
    "Title: \"THE END\"",
];

/// `"key":value` pairs, each left out at random, as one object.
fn object(fields: Vec<(&'static str, Option<String>)>) -> String {
    let pairs: Vec<String> = fields
        .into_iter()
        .filter_map(|(key, value)| Some(format!("\"{key}\":{}", value?)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn dialogue_line() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => (
            proptest::option::of(text_value(&["ANNA", "", "NARRATOR"])),
            proptest::option::of(text_value(WORDS)),
            proptest::option::of(prop_oneof![
                20 => Just("true".to_string()),
                20 => Just("false".to_string()),
                1 => junk().prop_map(|v| v.to_string()),
            ]),
            proptest::option::of(number_text(-5.0..400.0)),
        )
            .prop_map(|(speaker, line, offscreen, start)| {
                object(vec![
                    ("speaker", speaker),
                    ("line", line),
                    ("offscreen", offscreen),
                    ("start", start),
                ])
            }),
        1 => junk().prop_map(|v| v.to_string()),
    ]
}

fn model_shot_text() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => (
            proptest::option::of(number_text(0.0..45.0)),
            proptest::option::of(number_text(-5.0..400.0)),
            proptest::option::of(number_text(-5.0..400.0)),
            proptest::option::of(text_value(TYPES)),
            proptest::option::of(text_value(WORDS)),
            proptest::option::of(prop_oneof![
                30 => vec(dialogue_line(), 0..4).prop_map(|l| format!("[{}]", l.join(","))),
                1 => junk().prop_map(|v| v.to_string()),
            ]),
            proptest::option::of(junk().prop_map(|v| v.to_string())),
        )
            .prop_map(|(shot, start, end, kind, description, dialogue, extra)| {
                object(vec![
                    ("shot", shot),
                    ("start", start),
                    ("end", end),
                    ("type", kind),
                    ("description", description),
                    ("dialogue", dialogue),
                    ("confidence", extra),
                ])
            }),
        1 => junk().prop_map(|v| v.to_string()),
    ]
}

fn answer_text() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => vec(model_shot_text(), 0..12).prop_map(|s| format!("{{\"shots\":[{}]}}", s.join(","))),
        1 => junk().prop_map(|v| v.to_string()),
    ]
}

/// A well-formed answer describing every measured shot by number.
fn numbered_answer(measured: &[Shot]) -> String {
    let shots: Vec<Value> = measured
        .iter()
        .enumerate()
        .map(|(i, _)| {
            serde_json::json!({
                "shot": i + 1,
                "type": "medium",
                "description": format!("shot {}", i + 1),
                "dialogue": [{"speaker": "ANNA", "line": "Ja.", "offscreen": i % 2 == 0, "start": 0.5}],
            })
        })
        .collect();
    serde_json::json!({ "shots": shots }).to_string()
}

/// `text` up to its `at`-th character, on a character boundary.
fn prefix(text: &str, at: usize) -> &str {
    let end = text.char_indices().nth(at).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_text_never_panics_nor_leaves_the_chunk(chunk in chunk(), text in any::<String>()) {
        parse_and_reconcile(&chunk, &text)?;
    }

    #[test]
    fn json_like_answers_never_leave_the_chunk(chunk in chunk(), text in answer_text()) {
        parse_and_reconcile(&chunk, &text)?;
    }

    #[test]
    fn an_answer_cut_anywhere_is_never_taken_as_complete(
        chunk in chunk(),
        text in answer_text(),
        at in any::<prop::sample::Index>(),
    ) {
        let length = text.chars().count();
        let cut = prefix(&text, at.index(length.max(1)));
        parse_and_reconcile(&chunk, cut)?;
        if cut.trim() != text.trim() && parse_output(&text).is_ok() {
            prop_assert!(
                matches!(parse_output(cut), Err(OutputProblem::CutOff(_) | OutputProblem::Empty)),
                "{cut:?} read as {:?}",
                parse_output(cut)
            );
        }
    }

    #[test]
    fn model_shots_with_any_numbers_never_leave_the_chunk(
        chunk in chunk(),
        shots in vec(
            (
                proptest::option::of(0usize..50),
                proptest::option::of(any::<f64>()),
                proptest::option::of(any::<f64>()),
                proptest::option::of(any::<f64>()),
                any::<bool>(),
            ),
            0..20,
        ),
    ) {
        let model: Vec<ModelShot> = shots
            .into_iter()
            .map(|(index, start, end, line_start, offscreen)| ModelShot {
                index,
                start_seconds: start,
                end_seconds: end,
                shot_type: ShotType::Detail,
                description: " a hand ".to_string(),
                dialogue: vec![ModelLine {
                    speaker: String::new(),
                    line: "Hallo?".to_string(),
                    offscreen,
                    start_seconds: line_start,
                }],
            })
            .collect();
        let result = reconcile(&chunk.request, &chunk.measured, &model, chunk.tolerance);
        assert_honours_contract(&chunk, &result)?;
    }

    #[test]
    fn a_numbered_answer_keeps_exactly_the_measured_cuts(chunk in chunk()) {
        let text = numbered_answer(&chunk.measured);
        let shots = parse_output(&text).map_err(|p| TestCaseError::fail(p.to_string()))?;
        let result = reconcile(&chunk.request, &chunk.measured, &shots, chunk.tolerance);
        assert_honours_contract(&chunk, &result)?;
        prop_assert_eq!(cuts_of(&result), cuts_of(&ChunkAnalysis { shots: chunk.measured.clone() }));
        for (i, shot) in result.shots.iter().enumerate() {
            prop_assert_eq!(&shot.description, &format!("shot {}", i + 1));
            prop_assert_eq!(shot.shot_type, ShotType::Medium);
            prop_assert_eq!(shot.dialogue.len(), 1);
            prop_assert_eq!(shot.dialogue[0].offscreen, i % 2 == 0);
        }
    }
}

/// Reconciles `text` over a 250-frame chunk at 25 fps with the cuts
/// `measured_cuts`; panics when the parser refuses it.
fn reconciled(text: &str, measured_cuts: &[i64]) -> ChunkAnalysis {
    let shots = parse_output(text).expect("valid JSON");
    let len = 250;
    let measured = shots_from_cuts(len, measured_cuts);
    let request = request(Fps::new(25, 1).unwrap(), 0, 0, len);
    reconcile(&request, &measured, &shots, 12)
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    // On a small stack: a recursive parser without a depth limit would crash.
    let parsing = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let open = "[".repeat(1_000_000);
            let nested = format!("{{\"shots\":[{{\"dialogue\":{}}}]}}", "[".repeat(5000));
            let closed = format!("{{\"shots\":{}{}}}", "[".repeat(200), "]".repeat(200));
            [open, nested, closed].map(|text| parse_output(&text))
        })
        .unwrap();
    for parsed in parsing.join().expect("no stack overflow") {
        assert!(parsed.is_err(), "{parsed:?}");
    }
}

#[test]
fn a_huge_answer_is_parsed_and_its_text_clipped() {
    // A million characters (2 MB) in one description, 20,000 shots more.
    let description = "é".repeat(500 * MAX_TEXT_CHARS);
    let shots: Vec<String> = (0..20_000)
        .map(|i| {
            let line = r#"{"line":"l","start":1e300}"#;
            format!(
                r#"{{"start":{}.0,"description":"x{i}","dialogue":[{line}]}}"#,
                i % 10
            )
        })
        .collect();
    let text = format!(
        "{{\"shots\":[{{\"shot\":1,\"description\":\"{description}\"}},{}]}}",
        shots.join(",")
    );
    let result = reconciled(&text, &[100]);
    check_analysis(250, &result).unwrap();
    assert_eq!(result.shots[0].description.chars().count(), MAX_TEXT_CHARS);
    for shot in &result.shots {
        assert!(shot.description.chars().count() <= MAX_TEXT_CHARS);
    }
}

/// PostgreSQL cannot store U+0000, and the other control characters but
/// line breaks and tabs have no place in a shot list.
#[test]
fn nul_and_control_characters_from_the_model_are_removed_and_line_breaks_kept() {
    let text = r#"{"shots":[{"shot":1,"type":"wide",
        "description":"a sign reads \u0000HOTEL\u0007\u001b[0m\nbelow:\ta door\u007f",
        "dialogue":[{"speaker":"AN\u0000NA","line":"hi\u0000\u0085","offscreen":false}]}]}"#;
    let result = reconciled(text, &[]);
    let shot = &result.shots[0];
    assert_eq!(shot.description, "a sign reads HOTEL[0m\nbelow:\ta door");
    assert_eq!(shot.dialogue[0].speaker, "ANNA");
    assert_eq!(shot.dialogue[0].line, "hi");
}

/// Whether a refusal gives the reason expected.
type Reason = fn(&OutputProblem) -> bool;

#[test]
fn fences_truncations_and_empties_are_refused_with_their_reason() {
    let cases: Vec<(&str, Reason)> = vec![
        ("", |p| *p == OutputProblem::Empty),
        ("\n\t  \r\n", |p| *p == OutputProblem::Empty),
        ("```json\n{\"shots\":[]}\n```", |p| {
            *p == OutputProblem::Fenced
        }),
        ("  ```\n{\"shots\":[]}", |p| *p == OutputProblem::Fenced),
        ("{\"shots\":[{\"shot\":1}", |p| {
            matches!(p, OutputProblem::CutOff(_))
        }),
        ("{\"shots\":[{\"description\":\"a \\u00", |p| {
            matches!(p, OutputProblem::CutOff(_))
        }),
        ("{\"shots\":[]}\n```", |p| {
            matches!(p, OutputProblem::NotJson(_))
        }),
        ("null", |p| matches!(p, OutputProblem::WrongShape(_))),
        ("{\"shots\":null}", |p| {
            matches!(p, OutputProblem::WrongShape(_))
        }),
        ("{\"shots\":[{\"shot\":1,\"shot\":\"x\"}]}", |p| {
            matches!(p, OutputProblem::WrongShape(_))
        }),
    ];
    for (text, expected) in cases {
        match parse_output(text) {
            Err(problem) if expected(&problem) => {}
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

/// A film's title card can say anything, and the model writes it down: in
/// sheet.csv a cell that a spreadsheet would run as a formula starts with an
/// apostrophe, while sheet.json keeps the words as they were.
#[test]
fn model_text_that_looks_like_a_formula_is_inert_in_sheet_csv() {
    let text = r#"{"shots":[
        {"shot":1,"type":"insert","description":"=HYPERLINK(\"http://127.0.0.1/x\",\"open\")",
         "dialogue":[{"speaker":"@SUM(A1)","line":"+1","offscreen":false}]},
        {"shot":2,"type":"wide","description":"-2+3","dialogue":[{"line":"=1+1"}]},
        {"shot":3,"type":"wide","description":"a field, 3 = 2 + 1"}]}"#;
    let result = reconciled(text, &[100, 200]);
    let sheet = sheet_of(&result);
    let csv = shotlist_shared::export::csv_bytes(&sheet).expect("csv");
    let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(csv.as_slice())
        .records()
        .collect::<Result<_, _>>()
        .expect("the CSV reads back");
    let cells: Vec<(&str, &str)> = rows.iter().map(|r| (&r[4], &r[5])).collect();
    assert_eq!(
        cells,
        [
            (
                "'=HYPERLINK(\"http://127.0.0.1/x\",\"open\")",
                "'@SUM(A1): +1"
            ),
            ("'-2+3", "'=1+1"),
            ("a field, 3 = 2 + 1", ""),
        ]
    );
    let json = shotlist_shared::export::json_bytes(&sheet).expect("json");
    let back: Sheet = serde_json::from_slice(&json).expect("the JSON reads back");
    assert_eq!(back.shots[0].description, result.shots[0].description);
}

/// A one-chunk sheet of `analysis`.
fn sheet_of(analysis: &ChunkAnalysis) -> Sheet {
    let shots = analysis
        .shots
        .iter()
        .zip(1..)
        .map(|(shot, number)| SheetShot {
            number,
            start: shot.start_frame.to_string(),
            end: shot.end_frame.to_string(),
            start_frame: shot.start_frame,
            end_frame: shot.end_frame,
            shot_type: shot.shot_type,
            description: shot.description.clone(),
            dialogue: shot.dialogue.clone(),
        });
    Sheet {
        video_id: uuid::Uuid::nil(),
        source: None,
        fps: "25/1".into(),
        duration_frames: 250,
        total_chunks: 1,
        completed_chunks: 1,
        failed_chunks: 0,
        status: SheetStatus::Complete,
        shots: shots.collect(),
        gaps: Vec::new(),
    }
}
