//! Asking Gemini about one chunk: a `generateContent` call whose video part
//! clips the film's file to the chunk, and the answer's text and finish
//! reason.

use serde::Deserialize;
use serde_json::{json, Value};

use super::call::key_header;
use super::{About, Failure, Gemini};
use crate::analyzer::keys::KeyLease;
use crate::analyzer::remote::{Finish, ModelReply, Question};
use crate::analyzer::ChunkRequest;
use crate::uploads::ProviderFile;

/// Low, so that descriptions keep to what is on screen.
const TEMPERATURE: f64 = 0.2;

impl Gemini {
    /// Asks the question about the chunk's clip of `file`.
    pub(super) async fn generate(
        &self,
        lease: &KeyLease<'_>,
        file: &ProviderFile,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, Failure> {
        let key = lease.number();
        let body = generate_body(file, request, question);
        let budget = question.max_output_tokens;
        tracing::debug!(key, file = %file.name, budget, "asking gemini");
        tracing::trace!(key, body = %body, "generateContent request");
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            self.base_url, self.model
        );
        let text = self
            .retrying("asking the model", key, question.deadline, || async {
                let builder = self
                    .client
                    .post(&url)
                    .header("x-goog-api-key", key_header(lease)?)
                    .json(&body);
                let about = About::Question(&file.name);
                let (_, text) = self
                    .send(lease, "asking the model", builder, question.deadline, about)
                    .await?;
                Ok(text)
            })
            .await?;
        let answer: GenerateAnswer = serde_json::from_str(&text).map_err(|e| {
            Failure::Transient(format!(
                "gemini's answer is not a generateContent response: {e}"
            ))
        })?;
        let reply = answer.reply()?;
        if let Some(usage) = &answer.usage_metadata {
            tracing::debug!(
                key,
                prompt_tokens = usage.prompt_token_count,
                answer_tokens = usage.candidates_token_count,
                thought_tokens = usage.thoughts_token_count,
                finish = ?reply.finish,
                "gemini answered"
            );
        }
        Ok(reply)
    }
}

/// The chunk's start and end as `video_metadata` offsets, such as
/// `"192.500s"`.
///
/// Gemini counts offsets from the start of the video as it plays, which is
/// the film's first frame: film time, `frame / fps`, as everywhere in
/// shotlist. [`MediaInfo::start_offset_seconds`] is not added: it is the
/// container's timestamp of that first frame, which only ffmpeg's `-ss`
/// counts from (MPEG program and transport streams start at 0.5 s, 1.4 s or
/// more), and adding it would start every clip late by that much. Should
/// Gemini count from the container's start after all, the error is that
/// offset, a second or less, well inside the chunks' 15 s overlap; and the
/// cuts themselves come from the local detector, not from Gemini's times.
pub fn clip_offsets(request: &ChunkRequest) -> (String, String) {
    let fps = request.media.fps;
    let seconds = |frame: i64| format!("{:.3}s", fps.seconds_at(frame));
    (seconds(request.start_frame), seconds(request.end_frame))
}

/// The `generateContent` body for one chunk.
fn generate_body(file: &ProviderFile, request: &ChunkRequest, question: &Question) -> Value {
    let (start, end) = clip_offsets(request);
    let mut generation = json!({
        "responseMimeType": "application/json",
        "maxOutputTokens": question.max_output_tokens,
        "temperature": TEMPERATURE,
    });
    // No schema (null) is left out rather than sent as null, which Gemini
    // would refuse.
    if !question.schema.is_null() {
        generation["responseSchema"] = question.schema.clone();
    }
    json!({
        "system_instruction": { "parts": [{ "text": question.system }] },
        "contents": [{
            "role": "user",
            "parts": [
                {
                    "file_data": { "file_uri": file.uri, "mime_type": file.mime_type },
                    "video_metadata": { "start_offset": start, "end_offset": end },
                },
                { "text": question.prompt },
            ],
        }],
        "generationConfig": generation,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateAnswer {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<Usage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
}

impl GenerateAnswer {
    /// The first candidate's text (thoughts left out) and how it ended.
    fn reply(&self) -> Result<ModelReply, Failure> {
        let Some(candidate) = self.candidates.first() else {
            let blocked = self
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.block_reason.clone());
            return match blocked {
                Some(reason) => Ok(ModelReply {
                    text: String::new(),
                    finish: Finish::Blocked(reason),
                }),
                None => Err(Failure::Transient(
                    "gemini answered without a candidate or a block reason".into(),
                )),
            };
        };
        let text = candidate
            .content
            .iter()
            .flat_map(|c| &c.parts)
            .filter(|p| !p.thought)
            .filter_map(|p| p.text.as_deref())
            .collect::<String>();
        Ok(ModelReply {
            text,
            finish: finish_of(candidate.finish_reason.as_deref()),
        })
    }
}

/// A `finishReason` as a [`Finish`]: STOP is complete, MAX_TOKENS (or no
/// reason: the answer may not be whole) is cut off, and every other reason
/// (SAFETY, RECITATION, PROHIBITED_CONTENT, BLOCKLIST, SPII, OTHER...) means
/// Gemini refused to finish.
pub fn finish_of(reason: Option<&str>) -> Finish {
    match reason {
        Some("STOP") => Finish::Complete,
        Some("MAX_TOKENS") => Finish::CutOff("MAX_TOKENS".into()),
        None | Some("" | "FINISH_REASON_UNSPECIFIED") => {
            Finish::CutOff("FINISH_REASON_UNSPECIFIED".into())
        }
        Some(other) => Finish::Blocked(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::gemini::tests::request;
    use crate::time::Fps;

    #[test]
    fn offsets_are_film_seconds_without_the_container_start() {
        let (start, end) = clip_offsets(&request(4_500, 9_000, Fps::new(25, 1).unwrap()));
        assert_eq!((start.as_str(), end.as_str()), ("180.000s", "360.000s"));
        let ntsc = Fps::new(30_000, 1_001).unwrap();
        let (start, end) = clip_offsets(&request(5_000, 5_395, ntsc));
        assert_eq!((start.as_str(), end.as_str()), ("166.833s", "180.013s"));
    }

    #[test]
    fn finish_reasons_map_to_complete_cut_off_or_blocked() {
        assert_eq!(finish_of(Some("STOP")), Finish::Complete);
        assert_eq!(
            finish_of(Some("MAX_TOKENS")),
            Finish::CutOff("MAX_TOKENS".into())
        );
        assert!(matches!(finish_of(None), Finish::CutOff(_)));
        for reason in [
            "SAFETY",
            "RECITATION",
            "PROHIBITED_CONTENT",
            "BLOCKLIST",
            "SPII",
            "OTHER",
        ] {
            assert_eq!(finish_of(Some(reason)), Finish::Blocked(reason.into()));
        }
    }

    #[test]
    fn answers_join_text_parts_without_thoughts() {
        let answer: GenerateAnswer = serde_json::from_value(json!({
            "candidates": [{
                "content": {"parts": [
                    {"text": "thinking...", "thought": true},
                    {"text": "{\"shots\":"},
                    {"text": "[]}"}
                ]},
                "finishReason": "STOP"
            }]
        }))
        .unwrap();
        let reply = answer.reply().unwrap();
        assert_eq!(reply.text, "{\"shots\":[]}");
        assert_eq!(reply.finish, Finish::Complete);
        let blocked: GenerateAnswer =
            serde_json::from_value(json!({"promptFeedback": {"blockReason": "SAFETY"}})).unwrap();
        assert_eq!(
            blocked.reply().unwrap().finish,
            Finish::Blocked("SAFETY".into())
        );
        let empty: GenerateAnswer = serde_json::from_value(json!({})).unwrap();
        assert!(empty.reply().unwrap_err().is_transient());
    }
}
