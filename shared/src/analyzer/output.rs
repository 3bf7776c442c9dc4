//! The question a video model is asked about a chunk, and how its answer is
//! read: the versioned prompt and JSON schema, a strict parser, and the
//! reconciliation that lays the model's shots over the measured cuts.
//!
//! The prompt and schema live in `shared/prompts/` ([`PROMPT_VERSION`]) and
//! are compiled in. The model is given the cuts the local detector measured
//! and asked to describe each shot by number; [`parse_output`] refuses any
//! answer that is not exactly the JSON asked for, and [`reconcile`] keeps
//! every measured cut, takes a cut the model alone saw only when it falls
//! well inside the chunk, and never lets a time the model wrote leave the
//! chunk.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::model::{ChunkAnalysis, DialogueLine, Shot, ShotType};
use crate::time::{timecode, Fps};

use super::{shots_from_cuts, ChunkRequest};

/// The version of the prompt and schema in `shared/prompts/`.
pub const PROMPT_VERSION: &str = "chunk-v1";

/// The longest description or dialogue line kept, in characters; a model
/// that loops would otherwise fill the sheet with one cell.
pub const MAX_TEXT_CHARS: usize = 2000;

/// The longest speaker name kept, in characters.
pub const MAX_SPEAKER_CHARS: usize = 200;

/// The longest reason an [`OutputProblem`] quotes, so that a log line never
/// carries the whole answer.
const MAX_REASON_CHARS: usize = 200;

const PROMPT_FILE: &str = include_str!("../../prompts/chunk-v1.md");
const SCHEMA_FILE: &str = include_str!("../../prompts/chunk-v1.schema.json");
const SYSTEM_MARKER: &str = "<!-- system -->\n";
const PROMPT_MARKER: &str = "<!-- prompt -->\n";

/// One shot as the model described it; times in seconds from the chunk's
/// start, when the model gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShot {
    /// The 1-based number of the measured shot it describes, when given.
    pub index: Option<usize>,
    /// Where the model says the shot starts: finite and not negative when
    /// parsed.
    pub start_seconds: Option<f64>,
    /// Where the model says the shot ends: finite and not negative when
    /// parsed.
    pub end_seconds: Option<f64>,
    pub shot_type: ShotType,
    pub description: String,
    pub dialogue: Vec<ModelLine>,
}

/// One line of dialogue as the model gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLine {
    /// Who speaks; empty when the model did not know.
    pub speaker: String,
    pub line: String,
    pub offscreen: bool,
    /// Where the line starts, in seconds from the chunk's start.
    pub start_seconds: Option<f64>,
}

/// Why an answer is not taken as complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutputProblem {
    #[error("the answer was empty")]
    Empty,
    #[error("the answer was wrapped in a code fence instead of being bare JSON")]
    Fenced,
    #[error("the answer was cut off ({0})")]
    CutOff(String),
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("the answer is JSON of the wrong shape: {0}")]
    WrongShape(String),
}

/// The system instruction sent with every chunk: the model's role and that
/// the answer is bare JSON.
pub fn system_instruction() -> &'static str {
    prompt_section(SYSTEM_MARKER, Some(PROMPT_MARKER))
}

/// The prompt for one chunk: its place in the film and the measured shots,
/// one `Shot n: a s to b s` line each, with `n` counted from 1 and the times
/// in seconds from the chunk's start, to the millisecond.
pub fn chunk_prompt(request: &ChunkRequest, measured: &[Shot]) -> String {
    let fps = request.media.fps;
    let chunk_number = u64::from(request.chunk_index) + 1;
    prompt_section(PROMPT_MARKER, None)
        .replace("{chunk_number}", &chunk_number.to_string())
        .replace(
            "{start_seconds}",
            &format!("{:.3}", fps.seconds_at(request.start_frame)),
        )
        .replace("{start_timecode}", &timecode(request.start_frame, fps))
        .replace(
            "{duration_seconds}",
            &format!("{:.3}", fps.seconds_at(request.len())),
        )
        .replace("{shot_count}", &measured.len().to_string())
        // Last, so that nothing in the list is taken for a placeholder.
        .replace("{shot_list}", &shot_list(fps, measured))
}

/// The part of the prompt file after `marker`, up to `until` or the end.
fn prompt_section(marker: &str, until: Option<&str>) -> &'static str {
    let Some(at) = PROMPT_FILE.find(marker) else {
        return "";
    };
    let rest = &PROMPT_FILE[at + marker.len()..];
    let end = until.and_then(|u| rest.find(u)).unwrap_or(rest.len());
    rest[..end].trim()
}

fn shot_list(fps: Fps, measured: &[Shot]) -> String {
    let lines: Vec<String> = measured
        .iter()
        .enumerate()
        .map(|(i, shot)| {
            format!(
                "Shot {}: {:.3} s to {:.3} s",
                i + 1,
                fps.seconds_at(shot.start_frame),
                fps.seconds_at(shot.end_frame)
            )
        })
        .collect();
    lines.join("\n")
}

/// The answer's JSON schema in the OpenAPI subset Gemini's `responseSchema`
/// takes.
///
/// # Panics
/// Only if `shared/prompts/chunk-v1.schema.json` is not JSON, which a unit
/// test rules out for every build.
pub fn response_schema() -> serde_json::Value {
    serde_json::from_str(SCHEMA_FILE).expect("chunk-v1.schema.json is valid JSON")
}

/// Parses a model's answer strictly: one JSON object with a `"shots"` array
/// and nothing around it.
///
/// Errors when the answer is empty, fenced, cut off (ends inside the JSON),
/// not JSON (prose, trailing text) or JSON of another shape (the message
/// names the offending path). Lenient only where it costs nothing: unknown
/// fields are ignored, a missing or null field is absent, the shot type is
/// read with its common synonyms, and a negative number is taken as absent.
pub fn parse_output(text: &str) -> Result<Vec<ModelShot>, OutputProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Err(OutputProblem::Empty);
    }
    if text.starts_with("```") {
        return Err(OutputProblem::Fenced);
    }
    let answer: Value = serde_json::from_str(text).map_err(json_problem)?;
    let shots = answer
        .as_object()
        .and_then(|o| o.get("shots"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            OutputProblem::WrongShape("expected an object with a \"shots\" array".to_string())
        })?;
    shots
        .iter()
        .enumerate()
        .map(|(i, shot)| model_shot(&format!("shots[{i}]"), shot))
        .collect()
}

fn json_problem(error: serde_json::Error) -> OutputProblem {
    let reason = clip(&error.to_string(), MAX_REASON_CHARS);
    match error.classify() {
        serde_json::error::Category::Eof => {
            OutputProblem::CutOff(format!("unterminated JSON: {reason}"))
        }
        _ => OutputProblem::NotJson(reason),
    }
}

fn model_shot(path: &str, value: &Value) -> Result<ModelShot, OutputProblem> {
    let shot = value
        .as_object()
        .ok_or_else(|| wrong_shape(path, "", "an object"))?;
    Ok(ModelShot {
        index: number(shot, path, "shot")?.and_then(shot_number),
        start_seconds: number(shot, path, "start")?,
        end_seconds: number(shot, path, "end")?,
        shot_type: text(shot, path, "type")?.map_or(ShotType::Other, shot_type),
        description: text(shot, path, "description")?
            .unwrap_or_default()
            .to_string(),
        dialogue: dialogue(shot, path)?,
    })
}

fn dialogue(shot: &Map<String, Value>, path: &str) -> Result<Vec<ModelLine>, OutputProblem> {
    let Some(lines) = field(shot, "dialogue") else {
        return Ok(Vec::new());
    };
    let lines = lines
        .as_array()
        .ok_or_else(|| wrong_shape(path, ".dialogue", "an array"))?;
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| model_line(&format!("{path}.dialogue[{i}]"), line))
        .collect()
}

fn model_line(path: &str, value: &Value) -> Result<ModelLine, OutputProblem> {
    let line = value
        .as_object()
        .ok_or_else(|| wrong_shape(path, "", "an object"))?;
    let offscreen = match field(line, "offscreen") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| wrong_shape(path, ".offscreen", "a boolean"))?,
    };
    Ok(ModelLine {
        speaker: text(line, path, "speaker")?.unwrap_or_default().to_string(),
        line: text(line, path, "line")?.unwrap_or_default().to_string(),
        offscreen,
        start_seconds: number(line, path, "start")?,
    })
}

/// A field's value; a null is the same as a missing field.
fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn text<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<&'a str>, OutputProblem> {
    match field(object, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| wrong_shape(path, &format!(".{key}"), "a string")),
    }
}

/// A number field; a negative (or, were the parser to allow one, non-finite)
/// number is no time at all, so it is taken as absent.
fn number(
    object: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<f64>, OutputProblem> {
    match field(object, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|n| Some(n).filter(|n| usable_seconds(*n)))
            .ok_or_else(|| wrong_shape(path, &format!(".{key}"), "a number")),
    }
}

fn usable_seconds(n: f64) -> bool {
    n.is_finite() && n >= 0.0
}

/// A shot number: a whole number from 1 on (2.0 included, 2.5 not).
fn shot_number(n: f64) -> Option<usize> {
    // Above 2^53 a float no longer tells whole numbers apart; no chunk has
    // that many shots anyway.
    let whole = n >= 1.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_992.0;
    whole.then_some(n as usize)
}

fn wrong_shape(path: &str, key: &str, expected: &str) -> OutputProblem {
    OutputProblem::WrongShape(format!("{path}{key} is not {expected}"))
}

/// Reads a shot type the way models and editors write it: any case, with
/// spaces, hyphens or underscores, with or without "shot", and the usual
/// abbreviations. An extreme close-up is a close-up (usually of a face); a
/// close view of an object is a detail. Anything unknown is
/// [`ShotType::Other`].
pub fn shot_type(label: &str) -> ShotType {
    let lower = label.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let words = words.join(" ");
    let key = words.strip_suffix(" shot").unwrap_or(&words);
    match key {
        "close up" | "closeup" | "close" | "cu" | "extreme close up" | "extreme closeup"
        | "ecu" | "xcu" | "big close up" | "bcu" => ShotType::CloseUp,
        "medium" | "mid" | "ms" | "medium close up" | "medium closeup" | "medium close" | "mcu"
        | "medium wide" | "medium long" | "mws" | "mls" | "two" | "2" | "cowboy" | "american"
        | "over the shoulder" | "ots" => ShotType::Medium,
        "wide" | "ws" | "long" | "ls" | "full" | "fs" | "establishing" | "extreme wide" | "ews"
        | "extreme long" | "els" | "xls" | "very wide" | "vws" => ShotType::Wide,
        "detail" | "extreme detail" | "macro" => ShotType::Detail,
        "insert" | "cut in" => ShotType::Insert,
        _ => ShotType::Other,
    }
}

/// Lays the model's shots over the measured ones; the result honours the
/// [`ChunkAnalysis`] contract for `request.len()` frames.
///
/// * Every measured cut stays (a `measured` shot's start inside the chunk is
///   a cut).
/// * A model shot numbered `n` (1 to `measured.len()`) describes measured
///   shot `n`, whatever time it gives.
/// * Otherwise its start time, as a chunk-local frame, is the cut within
///   `tolerance_frames` of it (frame 0 included); failing that, a frame
///   inside the chunk more than `tolerance_frames` from every cut and from
///   the chunk's end is a cut the detector missed and is added.
/// * A start outside the chunk, a reversed or empty span, or a shot with
///   neither a number nor a usable time describes nothing.
///
/// Each shot takes the type of the first model shot attached to it that
/// gives one, their descriptions joined with ` / ` and their dialogue in
/// order; a shot no model shot describes keeps the measured description.
/// Text is trimmed and clipped, and empty dialogue lines dropped; a line's
/// time is clamped into its shot.
pub fn reconcile(
    request: &ChunkRequest,
    measured: &[Shot],
    model: &[ModelShot],
    tolerance_frames: i64,
) -> ChunkAnalysis {
    let len = request.len();
    if len <= 0 {
        return ChunkAnalysis::default();
    }
    let fps = request.media.fps;
    let mut cuts = Cuts::measured(len, measured, tolerance_frames);
    let anchors: Vec<Option<i64>> = model
        .iter()
        .map(|m| cuts.anchor(fps, measured, m))
        .collect();
    let mut shots = shots_from_cuts(len, &cuts.inside());
    let mut attached: Vec<Vec<&ModelShot>> = vec![Vec::new(); shots.len()];
    for (m, frame) in model.iter().zip(&anchors) {
        let Some(frame) = frame else { continue };
        let at = shots.partition_point(|s| s.start_frame <= *frame);
        if let Some(described) = attached.get_mut(at.saturating_sub(1)) {
            described.push(m);
        }
    }
    for (shot, described) in shots.iter_mut().zip(&attached) {
        describe(shot, described, measured, fps);
    }
    tracing::debug!(
        chunk_index = request.chunk_index,
        model_shots = model.len(),
        unplaced = anchors.iter().filter(|a| a.is_none()).count(),
        added_cuts = shots.len().saturating_sub(cuts.measured_count),
        "model answer reconciled"
    );
    ChunkAnalysis { shots }
}

/// The cuts of a chunk while a model's times are placed, frame 0 included.
struct Cuts {
    len: i64,
    tolerance: u64,
    frames: BTreeSet<i64>,
    /// How many shots the measured cuts alone make.
    measured_count: usize,
}

impl Cuts {
    fn measured(len: i64, measured: &[Shot], tolerance_frames: i64) -> Cuts {
        let mut frames: BTreeSet<i64> = measured
            .iter()
            .map(|s| s.start_frame)
            .filter(|&f| f > 0 && f < len)
            .collect();
        frames.insert(0);
        Cuts {
            len,
            tolerance: tolerance_frames.max(0).unsigned_abs(),
            measured_count: frames.len(),
            frames,
        }
    }

    /// The cuts inside the chunk, frame 0 left out.
    fn inside(&self) -> Vec<i64> {
        self.frames.iter().copied().filter(|&f| f > 0).collect()
    }

    /// The frame of the shot `shot` describes, when it describes one. The
    /// number wins over the time: the model was told the measured times and
    /// its own are often rounded or off.
    fn anchor(&mut self, fps: Fps, measured: &[Shot], shot: &ModelShot) -> Option<i64> {
        let numbered = shot
            .index
            .and_then(|n| measured.get(n.checked_sub(1)?))
            .map(|m| m.start_frame.clamp(0, self.len - 1));
        numbered.or_else(|| self.place(start_frame(fps, shot)?))
    }

    /// The cut a model's start frame stands for: the nearest cut within the
    /// tolerance, else a new cut well inside the chunk, else none.
    fn place(&mut self, frame: i64) -> Option<i64> {
        if frame < 0 || frame >= self.len {
            return None;
        }
        let nearest = self.nearest(frame);
        if nearest.abs_diff(frame) <= self.tolerance {
            return Some(nearest);
        }
        // A cut a few frames before the chunk's end makes a sliver of a shot
        // that the next chunk measures properly.
        if self.len.abs_diff(frame) <= self.tolerance {
            return None;
        }
        self.frames.insert(frame);
        Some(frame)
    }

    fn nearest(&self, frame: i64) -> i64 {
        let below = self.frames.range(..=frame).next_back();
        let above = self.frames.range(frame..).next();
        match (below, above) {
            (Some(&b), Some(&a)) if a.abs_diff(frame) < b.abs_diff(frame) => a,
            (Some(&b), _) => b,
            (None, Some(&a)) => a,
            (None, None) => 0,
        }
    }
}

/// The chunk-local frame a model shot says it starts at, unless its times
/// are unusable: absent, negative, not finite, or ending before they start.
fn start_frame(fps: Fps, shot: &ModelShot) -> Option<i64> {
    let start = shot.start_seconds.filter(|s| usable_seconds(*s))?;
    let reversed = shot
        .end_seconds
        .filter(|e| usable_seconds(*e))
        .is_some_and(|end| end <= start);
    (!reversed).then(|| fps.frame_at(start))
}

fn describe(shot: &mut Shot, described: &[&ModelShot], measured: &[Shot], fps: Fps) {
    let measured_description = measured
        .iter()
        .find(|m| m.start_frame == shot.start_frame && m.end_frame == shot.end_frame)
        .map(|m| m.description.trim())
        .unwrap_or_default();
    shot.shot_type = described
        .iter()
        .map(|m| m.shot_type)
        .find(|t| *t != ShotType::Other)
        .unwrap_or(ShotType::Other);
    let mut parts: Vec<String> = Vec::new();
    for m in described {
        let part = clip(m.description.trim(), MAX_TEXT_CHARS);
        if !part.is_empty() && !parts.contains(&part) {
            parts.push(part);
        }
    }
    shot.description = if parts.is_empty() {
        clip(measured_description, MAX_TEXT_CHARS)
    } else {
        clip(&parts.join(" / "), MAX_TEXT_CHARS)
    };
    shot.dialogue = described
        .iter()
        .flat_map(|m| &m.dialogue)
        .filter_map(|line| dialogue_line(line, shot, fps))
        .collect();
}

fn dialogue_line(line: &ModelLine, shot: &Shot, fps: Fps) -> Option<DialogueLine> {
    let text = clip(line.line.trim(), MAX_TEXT_CHARS);
    if text.is_empty() {
        return None;
    }
    let start_frame = line
        .start_seconds
        .filter(|s| usable_seconds(*s))
        .map(|s| fps.frame_at(s).clamp(shot.start_frame, shot.end_frame - 1));
    Some(DialogueLine {
        speaker: clip(line.speaker.trim(), MAX_SPEAKER_CHARS),
        line: text,
        offscreen: line.offscreen,
        start_frame,
    })
}

/// `text` cut to at most `max` characters, on a character boundary.
/// `text` cut to `max` characters, without control characters other than
/// line breaks and tabs (a NUL cannot even be stored).
fn clip(text: &str, max: usize) -> String {
    let kept = text
        .chars()
        .filter(|&c| !c.is_control() || matches!(c, '\n' | '\t'));
    let clipped: String = kept.take(max).collect();
    clipped.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::check_analysis;
    use crate::probe::MediaInfo;

    fn request(fps: &str, start_frame: i64, len: i64) -> ChunkRequest {
        ChunkRequest {
            video_id: uuid::Uuid::nil(),
            chunk_index: 2,
            source: "/films/a.mp4".into(),
            media: MediaInfo {
                fps: fps.parse().unwrap(),
                duration_frames: start_frame + len + 1000,
                start_offset_seconds: 0.0,
                has_audio: true,
                sound_end_seconds: None,
                width: 1920,
                height: 1080,
                codec: "h264".into(),
                format: "mp4".into(),
            },
            start_frame,
            end_frame: start_frame + len,
            deadline: None,
        }
    }

    /// Measured shots over `[0, len)` with a cut at each of `cuts`.
    fn measured(len: i64, cuts: &[i64]) -> Vec<Shot> {
        shots_from_cuts(len, cuts)
            .into_iter()
            .map(|mut s| {
                s.description = "sound throughout".into();
                s
            })
            .collect()
    }

    fn described(index: Option<usize>, start: Option<f64>, end: Option<f64>) -> ModelShot {
        ModelShot {
            index,
            start_seconds: start,
            end_seconds: end,
            shot_type: ShotType::Wide,
            description: "a street".into(),
            dialogue: Vec::new(),
        }
    }

    fn starts(analysis: &ChunkAnalysis) -> Vec<i64> {
        analysis.shots.iter().map(|s| s.start_frame).collect()
    }

    #[test]
    fn an_empty_answer_is_refused() {
        assert_eq!(parse_output(""), Err(OutputProblem::Empty));
        assert_eq!(parse_output(" \n\t "), Err(OutputProblem::Empty));
    }

    #[test]
    fn a_fenced_answer_is_refused_even_when_the_json_inside_is_good() {
        let fenced = "```json\n{\"shots\":[]}\n```";
        assert_eq!(parse_output(fenced), Err(OutputProblem::Fenced));
        assert_eq!(parse_output("\n ```\n{}"), Err(OutputProblem::Fenced));
    }

    #[test]
    fn an_answer_that_stops_inside_the_json_is_cut_off() {
        for text in [
            r#"{"shots":[{"shot":1,"type":"wide"},"#,
            r#"{"shots":[{"shot":1,"description":"a man wal"#,
            r#"{"shots":[{"shot":1,"start":"#,
            "{",
        ] {
            match parse_output(text) {
                Err(OutputProblem::CutOff(why)) => {
                    assert!(why.starts_with("unterminated JSON"), "{why}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn prose_or_text_after_the_json_is_not_json_and_is_not_quoted() {
        let long_prose = format!("Here is the shot list you asked for: {}", "é".repeat(5000));
        for text in [
            long_prose.as_str(),
            r#"{"shots":[]} I hope this helps"#,
            r#"{"shots":[]}{"shots":[]}"#,
            r#"{"shots":[{"start":NaN}]}"#,
            r#"{"shots":[{"start":1e400}]}"#,
        ] {
            match parse_output(text) {
                Err(OutputProblem::NotJson(why)) => {
                    assert!(why.chars().count() <= MAX_REASON_CHARS, "{why}");
                    assert!(!why.contains("shot list you asked"), "{why}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_of_the_wrong_shape_names_the_offending_path() {
        let cases = [
            (r#"[]"#, "\"shots\" array"),
            (r#"{"shot":[]}"#, "\"shots\" array"),
            (r#"{"shots":{}}"#, "\"shots\" array"),
            (r#"{"shots":[1]}"#, "shots[0] is not an object"),
            (
                r#"{"shots":[{},{"description":7}]}"#,
                "shots[1].description is not a string",
            ),
            (
                r#"{"shots":[{"start":"0.5"}]}"#,
                "shots[0].start is not a number",
            ),
            (
                r#"{"shots":[{"type":["wide"]}]}"#,
                "shots[0].type is not a string",
            ),
            (
                r#"{"shots":[{"dialogue":"hi"}]}"#,
                "shots[0].dialogue is not an array",
            ),
            (
                r#"{"shots":[{"dialogue":[{"line":"hi","offscreen":"yes"}]}]}"#,
                "shots[0].dialogue[0].offscreen is not a boolean",
            ),
        ];
        for (text, path) in cases {
            match parse_output(text) {
                Err(OutputProblem::WrongShape(why)) => assert!(why.contains(path), "{why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_empty_shot_list_is_a_complete_answer() {
        assert_eq!(parse_output(r#" {"shots": []} "#), Ok(Vec::new()));
    }

    #[test]
    fn a_full_answer_is_read_and_unknown_fields_are_ignored() {
        let text = r#"{"shots":[
            {"shot":1,"start":0.0,"end":4.32,"type":"close-up","mood":"tense",
             "description":"ANNA at a window. A sign reads \"HOTEL\".",
             "dialogue":[{"speaker":"ANNA","line":"Wer ist da?","offscreen":false,"start":1.2},
                         {"line":"Ich.","offscreen":true}]},
            {"shot":2,"type":null,"description":null}
        ],"notes":"none"}"#;
        let shots = parse_output(text).unwrap();
        assert_eq!(shots.len(), 2);
        assert_eq!(shots[0].index, Some(1));
        assert_eq!(shots[0].end_seconds, Some(4.32));
        assert_eq!(shots[0].shot_type, ShotType::CloseUp);
        assert!(shots[0].description.contains("\"HOTEL\""));
        assert_eq!(
            shots[0].dialogue[1],
            ModelLine {
                speaker: String::new(),
                line: "Ich.".into(),
                offscreen: true,
                start_seconds: None,
            }
        );
        assert_eq!(shots[1].shot_type, ShotType::Other);
        assert!(shots[1].description.is_empty() && shots[1].dialogue.is_empty());
    }

    #[test]
    fn negative_and_fractional_numbers_are_taken_as_absent() {
        let text = r#"{"shots":[{"shot":0,"start":-1.5,"end":-0.5},{"shot":2.5},{"shot":3.0},
            {"shot":-4,"dialogue":[{"line":"x","start":-2}]}]}"#;
        let shots = parse_output(text).unwrap();
        assert_eq!(shots[0].index, None);
        assert_eq!(shots[0].start_seconds, None);
        assert_eq!(shots[0].end_seconds, None);
        assert_eq!(shots[1].index, None);
        assert_eq!(shots[2].index, Some(3));
        assert_eq!(shots[3].index, None);
        assert_eq!(shots[3].dialogue[0].start_seconds, None);
    }

    #[test]
    fn shot_types_are_read_with_their_usual_synonyms() {
        let cases = [
            ("Close-Up", ShotType::CloseUp),
            ("close up shot", ShotType::CloseUp),
            ("CU", ShotType::CloseUp),
            ("extreme close-up", ShotType::CloseUp),
            ("ECU", ShotType::CloseUp),
            ("MS", ShotType::Medium),
            ("medium close-up", ShotType::Medium),
            ("Medium Shot", ShotType::Medium),
            ("two-shot", ShotType::Medium),
            ("WS", ShotType::Wide),
            ("long shot", ShotType::Wide),
            ("Establishing shot", ShotType::Wide),
            ("wide_shot", ShotType::Wide),
            ("DETAIL", ShotType::Detail),
            ("insert", ShotType::Insert),
            ("aerial", ShotType::Other),
            ("", ShotType::Other),
            ("shot", ShotType::Other),
        ];
        for (label, expected) in cases {
            assert_eq!(shot_type(label), expected, "{label}");
        }
    }

    #[test]
    fn a_time_near_a_measured_cut_is_snapped_to_it() {
        // 25 fps: the cut at frame 100 is 4.0 s; the model says 4.12 s.
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let model = [described(None, Some(4.12), Some(9.0))];
        let result = reconcile(&request, &measured, &model, 12);
        assert_eq!(starts(&result), [0, 100]);
        assert_eq!(result.shots[1].description, "a street");
        assert_eq!(result.shots[0].description, "sound throughout");
        assert_eq!(result.shots[0].shot_type, ShotType::Other);
    }

    #[test]
    fn a_time_near_the_chunk_start_describes_the_first_shot() {
        let request = request("25/1", 500, 250);
        let result = reconcile(
            &request,
            &measured(250, &[100]),
            &[described(None, Some(0.2), None)],
            12,
        );
        assert_eq!(starts(&result), [0, 100]);
        assert_eq!(result.shots[0].description, "a street");
    }

    #[test]
    fn a_cut_only_the_model_saw_is_kept() {
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let model = [
            described(Some(1), None, None),
            described(None, Some(6.0), Some(7.0)),
            // Within the tolerance of the cut just added: the same shot.
            described(None, Some(6.2), None),
        ];
        let result = reconcile(&request, &measured, &model, 12);
        assert_eq!(starts(&result), [0, 100, 150]);
        assert!(check_analysis(250, &result).is_ok());
        assert_eq!(result.shots[2].description, "a street");
        // The measured shot was split, so its sound no longer describes it.
        assert_eq!(result.shots[1].description, "");
    }

    #[test]
    fn times_outside_the_chunk_reversed_or_at_its_end_are_dropped() {
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let model = [
            described(None, Some(10.0), Some(12.0)),
            described(None, Some(250.0), None),
            described(None, Some(6.0), Some(5.0)),
            described(None, Some(6.0), Some(6.0)),
            described(None, Some(9.8), None),
            described(None, Some(f64::NAN), None),
            described(None, Some(-3.0), Some(1.0)),
            described(None, None, Some(3.0)),
            described(Some(3), None, None),
        ];
        let result = reconcile(&request, &measured, &model, 12);
        assert_eq!(starts(&result), [0, 100]);
        assert!(result
            .shots
            .iter()
            .all(|s| s.description == "sound throughout"));
    }

    #[test]
    fn the_shot_number_beats_a_time_that_disagrees() {
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let mut first = described(Some(1), Some(6.0), Some(8.0));
        first.description = "a door".into();
        first.shot_type = ShotType::Detail;
        let result = reconcile(&request, &measured, &[first], 12);
        assert_eq!(starts(&result), [0, 100]);
        assert_eq!(result.shots[0].description, "a door");
        assert_eq!(result.shots[0].shot_type, ShotType::Detail);
        assert_eq!(result.shots[1].description, "sound throughout");
    }

    #[test]
    fn offscreen_dialogue_is_kept_and_timed_inside_its_shot() {
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let mut second = described(Some(2), None, None);
        second.dialogue = vec![
            ModelLine {
                speaker: " NARRATOR ".into(),
                line: " Es war einmal. ".into(),
                offscreen: true,
                start_seconds: Some(5.0),
            },
            ModelLine {
                speaker: "ANNA".into(),
                line: "   ".into(),
                offscreen: false,
                start_seconds: None,
            },
            ModelLine {
                speaker: "ANNA".into(),
                line: "Ja.".into(),
                offscreen: false,
                // Before the shot: clamped to its first frame.
                start_seconds: Some(1.0),
            },
        ];
        let result = reconcile(&request, &measured, &[second], 12);
        let lines = &result.shots[1].dialogue;
        assert_eq!(
            lines[0],
            DialogueLine {
                speaker: "NARRATOR".into(),
                line: "Es war einmal.".into(),
                offscreen: true,
                start_frame: Some(125),
            }
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].start_frame, Some(100));
    }

    #[test]
    fn several_descriptions_of_one_shot_are_joined_in_order() {
        let request = request("25/1", 0, 250);
        let measured = measured(250, &[100]);
        let mut a = described(Some(2), None, None);
        a.shot_type = ShotType::Other;
        a.description = "a car".into();
        let b = described(None, Some(4.0), None);
        let result = reconcile(&request, &measured, &[a, b.clone(), b], 12);
        assert_eq!(result.shots[1].description, "a car / a street");
        assert_eq!(result.shots[1].shot_type, ShotType::Wide);
    }

    #[test]
    fn long_text_is_clipped_on_a_character_boundary() {
        let request = request("25/1", 0, 250);
        let mut shot = described(Some(1), None, None);
        shot.description = "ö".repeat(MAX_TEXT_CHARS + 10);
        let result = reconcile(&request, &measured(250, &[]), &[shot], 12);
        assert_eq!(result.shots[0].description.chars().count(), MAX_TEXT_CHARS);
    }

    #[test]
    fn an_empty_chunk_has_no_shots() {
        let mut request = request("25/1", 100, 0);
        request.end_frame = 90;
        let result = reconcile(&request, &[], &[described(Some(1), Some(0.0), None)], 12);
        assert!(result.shots.is_empty());
    }

    #[test]
    fn the_prompt_lists_each_measured_shot_in_the_fixed_format() {
        // 1000 frames at 24000/1001 are 41.708 s; 50 frames are 2.085 s.
        let request = request("24000/1001", 1000, 288);
        let prompt = chunk_prompt(&request, &measured(288, &[50, 120]));
        for line in [
            "Shot 1: 0.000 s to 2.085 s",
            "Shot 2: 2.085 s to 5.005 s",
            "Shot 3: 5.005 s to 12.012 s",
        ] {
            assert!(
                prompt.lines().any(|l| l == line),
                "{line} missing:\n{prompt}"
            );
        }
        assert!(prompt.contains("chunk 3 of the film"), "{prompt}");
        assert!(prompt.contains("00:00:41:16"), "{prompt}");
        assert!(prompt.contains("41.708 s"), "{prompt}");
        assert!(prompt.contains("lasts 12.012"), "{prompt}");
        assert!(!prompt.contains("Shot 4"));
    }

    #[test]
    fn every_placeholder_is_filled_and_the_note_is_not_sent() {
        let prompt = chunk_prompt(&request("25/1", 0, 250), &measured(250, &[100]));
        for text in [prompt.as_str(), system_instruction()] {
            assert!(!text.is_empty());
            assert!(!text.contains("<!--"), "{text}");
            for placeholder in [
                "{chunk_number}",
                "{start_seconds}",
                "{start_timecode}",
                "{duration_seconds}",
                "{shot_count}",
                "{shot_list}",
            ] {
                assert!(!text.contains(placeholder), "{placeholder} left in");
            }
        }
        assert!(system_instruction().contains("JSON"));
        assert!(prompt.contains("no code fence"));
    }

    #[test]
    fn the_schema_is_json_with_a_shots_array_of_the_six_types() {
        let schema = response_schema();
        assert_eq!(schema["type"], "OBJECT");
        assert_eq!(schema["required"][0], "shots");
        let shot = &schema["properties"]["shots"]["items"];
        assert_eq!(schema["properties"]["shots"]["type"], "ARRAY");
        let types: Vec<&str> = shot["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let expected: Vec<&str> = [
            ShotType::CloseUp,
            ShotType::Medium,
            ShotType::Wide,
            ShotType::Detail,
            ShotType::Insert,
            ShotType::Other,
        ]
        .iter()
        .map(|t| t.as_str())
        .collect();
        assert_eq!(types, expected);
    }

    #[test]
    fn an_answer_made_from_the_prompt_round_trips() {
        let request = request("30000/1001", 0, 300);
        let measured = measured(300, &[90, 200]);
        let answer = r#"{"shots":[
            {"shot":1,"type":"wide","description":"a field"},
            {"shot":2,"type":"MCU","description":"a farmer","dialogue":[{"speaker":"JO","line":"Rain.","offscreen":false,"start":3.5}]},
            {"shot":3,"type":"insert","description":"a letter: \"COME HOME\""}]}"#;
        let shots = parse_output(answer).unwrap();
        let result = reconcile(&request, &measured, &shots, 15);
        assert_eq!(starts(&result), [0, 90, 200]);
        let types: Vec<ShotType> = result.shots.iter().map(|s| s.shot_type).collect();
        assert_eq!(types, [ShotType::Wide, ShotType::Medium, ShotType::Insert]);
        assert_eq!(result.shots[1].dialogue[0].start_frame, Some(105));
    }
}
