//! What the analyzers that ask a video model share.
//!
//! A [`ModelAnalyzer`] measures the chunk's cuts with the local detector,
//! asks a [`VideoModel`] (Gemini directly, or Gemini on Replicate) to
//! describe each measured shot, parses the answer strictly and lays the
//! model's words over the measured cuts (see [`super::output`]). Cuts stay
//! frame-exact whatever the model says about times.
//!
//! An answer that is empty, not JSON, fenced or cut off is asked again once
//! with twice the output budget; a second bad answer fails the attempt with
//! a reason that says what was wrong.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::output::{self, OutputProblem};
use super::{AnalyzeError, Analyzer, ChunkRequest, LocalAnalyzer};
use crate::model::ChunkAnalysis;

/// Input tokens per second of video with audio at default resolution
/// (258 per frame at 1 fps, plus 32 for audio), per Google's documentation.
pub const TOKENS_PER_VIDEO_SECOND: u64 = 300;
/// The model's context window, in tokens.
pub const CONTEXT_TOKENS: u64 = 1_000_000;
/// The longest video with audio one request may carry.
pub const MAX_VIDEO_SECONDS: f64 = 45.0 * 60.0;
/// A generous bound on the prompt's own tokens (instructions, shot list).
pub const PROMPT_TOKENS: u64 = 8_000;
/// The most output tokens a retry may ask for.
pub const MAX_OUTPUT_TOKENS: u32 = 65_536;

/// One question to a model about one chunk.
#[derive(Debug, Clone)]
pub struct Question {
    /// The system instruction: the role and the rules of the answer.
    pub system: String,
    /// The chunk's prompt: its place in the film and the measured shots.
    pub prompt: String,
    /// The answer's JSON schema, for providers that accept one.
    pub schema: serde_json::Value,
    /// The output budget, in tokens.
    pub max_output_tokens: u32,
    /// When the answer must be in; the model's retries end before it.
    pub deadline: Instant,
}

/// How a model's answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The model finished its answer.
    Complete,
    /// The answer was cut (the reason as the provider gave it, such as
    /// `MAX_TOKENS`): never parsed as complete.
    CutOff(String),
    /// The provider refused to answer (a safety block, say).
    Blocked(String),
}

/// A model's answer: its text and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReply {
    pub text: String,
    pub finish: Finish,
}

/// A video model that can be asked about one chunk of a film.
#[async_trait::async_trait]
pub trait VideoModel: Send + Sync {
    /// The analyzer's name (`gemini`, `replicate`).
    fn name(&self) -> &'static str;

    /// Asks `question` about `request`'s chunk once, retrying only the
    /// provider's passing failures (429 on another key, 500, 503) before
    /// `question.deadline`. When every key rests, the error is
    /// [`AnalyzeError::Throttled`].
    async fn ask(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError>;
}

/// Settings every model analyzer shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSettings {
    /// The first output budget; a bad answer is asked again with twice it.
    pub max_output_tokens: u32,
    /// How far, in seconds, a time the model gives may be from a measured
    /// cut and still be taken as that cut.
    pub snap_tolerance_seconds: f64,
    /// The most one chunk may take, retries included.
    pub chunk_timeout: Duration,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            max_output_tokens: 16_384,
            snap_tolerance_seconds: 0.5,
            chunk_timeout: Duration::from_secs(300),
        }
    }
}

/// Measures cuts locally, then asks a video model to describe the shots.
pub struct ModelAnalyzer {
    pub cuts: LocalAnalyzer,
    pub model: Arc<dyn VideoModel>,
    pub settings: ModelSettings,
}

#[async_trait::async_trait]
impl Analyzer for ModelAnalyzer {
    fn name(&self) -> &'static str {
        self.model.name()
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        request.validate()?;
        let own_deadline = Instant::now() + self.settings.chunk_timeout;
        let deadline = request
            .deadline
            .map_or(own_deadline, |d| d.min(own_deadline));
        let measured = self.cuts.analyze(request).await?;
        let mut question = Question {
            system: output::system_instruction().to_string(),
            prompt: output::chunk_prompt(request, &measured.shots),
            schema: output::response_schema(),
            max_output_tokens: self.settings.max_output_tokens,
            deadline,
        };
        let tolerance = tolerance_frames(request, self.settings.snap_tolerance_seconds);
        let mut problems: Vec<(u32, OutputProblem)> = Vec::new();
        for _ in 0..2 {
            let reply = match self.model.ask(request, &question).await {
                Ok(reply) => reply,
                Err(e) if problems.is_empty() => return Err(e),
                // The model was asked and paid for already: a second ask
                // that cannot be made fails this attempt (it is counted,
                // so a chunk cannot loop through cut-off answers for free)
                // and says why the first answer was refused.
                Err(e) => return Err(self.no_usable_answer(request, &problems, Some(&e))),
            };
            let parsed = match reply.finish {
                Finish::Blocked(reason) => {
                    tracing::warn!(
                        chunk_index = request.chunk_index,
                        reason = %reason,
                        "the provider blocked the answer; keeping the measured shots"
                    );
                    return Ok(blocked(measured, &reason));
                }
                Finish::CutOff(reason) => Err(OutputProblem::CutOff(reason)),
                Finish::Complete => output::parse_output(&reply.text).and_then(|shots| {
                    if shots.is_empty() && !measured.shots.is_empty() {
                        Err(OutputProblem::WrongShape(format!(
                            "no shot described, of the {} measured",
                            measured.shots.len()
                        )))
                    } else {
                        Ok(shots)
                    }
                }),
            };
            match parsed {
                Ok(shots) => {
                    return Ok(output::reconcile(
                        request,
                        &measured.shots,
                        &shots,
                        tolerance,
                    ));
                }
                Err(problem) => {
                    tracing::warn!(
                        chunk_index = request.chunk_index,
                        budget = question.max_output_tokens,
                        problem = %problem,
                        "model answer refused"
                    );
                    problems.push((question.max_output_tokens, problem));
                    question.max_output_tokens = question
                        .max_output_tokens
                        .saturating_mul(2)
                        .min(MAX_OUTPUT_TOKENS);
                }
            }
        }
        Err(self.no_usable_answer(request, &problems, None))
    }
}

impl ModelAnalyzer {
    /// A retryable failure of this attempt, naming every refused answer and
    /// what then kept the model from answering, if anything.
    fn no_usable_answer(
        &self,
        request: &ChunkRequest,
        problems: &[(u32, OutputProblem)],
        then: Option<&AnalyzeError>,
    ) -> AnalyzeError {
        let mut said: Vec<String> = problems
            .iter()
            .map(|(budget, p)| format!("{p} (output budget {budget} tokens)"))
            .collect();
        if let Some(e) = then {
            said.push(format!("asking again failed: {e}"));
        }
        // A second ask refused for good (a 400, a file the provider failed)
        // would be refused again: only then is the attempt not worth
        // repeating.
        let retryable = then.is_none_or(|e| e.is_retryable());
        AnalyzeError::Provider {
            chunk_index: request.chunk_index,
            analyzer: self.name(),
            message: format!("no usable answer: {}", said.join("; then ")),
            retryable,
        }
    }
}

/// The measured shots, each saying that the model's description is
/// missing and why: the cuts are still worth having.
fn blocked(mut measured: ChunkAnalysis, reason: &str) -> ChunkAnalysis {
    for shot in &mut measured.shots {
        let sound = std::mem::take(&mut shot.description);
        shot.description =
            format!("[not described: the provider blocked the answer ({reason})] {sound}")
                .trim_end()
                .to_string();
    }
    measured
}

fn tolerance_frames(request: &ChunkRequest, seconds: f64) -> i64 {
    let fps = request.media.fps.as_f64();
    (seconds * fps).round().max(0.0) as i64
}

/// What one film costs a model analyzer, and whether it fits at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Input tokens of one full chunk (video and prompt).
    pub chunk_input_tokens: u64,
    /// Input and output tokens at most, for one chunk.
    pub chunk_tokens: u64,
}

impl Budget {
    /// The tokens a film of `chunks` chunks costs at most, first answers only.
    pub fn film_tokens(&self, chunks: u32) -> u64 {
        self.chunk_tokens * u64::from(chunks)
    }
}

/// Checks that a chunk of `chunk_seconds` with `max_output_tokens` (and its
/// doubled retry) fits one request: at most 45 minutes of video and the
/// model's context. The error says the numbers.
pub fn check_budget(chunk_seconds: f64, max_output_tokens: u32) -> Result<Budget, String> {
    if chunk_seconds.is_nan() || chunk_seconds <= 0.0 || chunk_seconds > MAX_VIDEO_SECONDS {
        return Err(format!(
            "a chunk length (--chunk-seconds) of {chunk_seconds} s is more video than one \
             request to the model may carry (at most {MAX_VIDEO_SECONDS} s)"
        ));
    }
    let video = (chunk_seconds.ceil() as u64) * TOKENS_PER_VIDEO_SECOND;
    let input = video + PROMPT_TOKENS;
    let retry_output = u64::from(max_output_tokens.saturating_mul(2).min(MAX_OUTPUT_TOKENS));
    let total = input + retry_output;
    if total > CONTEXT_TOKENS {
        return Err(format!(
            "a chunk of {chunk_seconds} s needs about {video} video tokens \
             ({TOKENS_PER_VIDEO_SECOND}/s) + {PROMPT_TOKENS} prompt + {retry_output} output \
             = {total} tokens, more than the model's {CONTEXT_TOKENS}-token context"
        ));
    }
    Ok(Budget {
        chunk_input_tokens: input,
        chunk_tokens: input + u64::from(max_output_tokens),
    })
}

/// Connect and read timeouts for every call to a provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpTimeouts {
    pub connect: Duration,
    /// The longest wait for the next bytes of an answer.
    pub read: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(10),
            // generateContent answers only when the model has finished
            // thinking over the whole chunk; each call's own timeout still
            // ends at the chunk's deadline.
            read: Duration::from_secs(240),
        }
    }
}

/// An HTTP client with `timeouts` on every call.
pub fn http_client(timeouts: HttpTimeouts) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.read)
        .user_agent(concat!("shotlist/", env!("CARGO_PKG_VERSION")))
        // Keys travel in headers that reqwest would carry across a redirect
        // to another host; no provider call needs to follow one.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {}", crate::error_chain(&e)))
}

/// How long a provider asks us to wait after a 429 or 503: a `Retry-After`
/// header in seconds, a Replicate detail saying "resets in ~30s", or a
/// Google `RetryInfo` `"retryDelay": "30s"` in the body.
pub fn rest_hint(headers: &reqwest::header::HeaderMap, body: &str) -> Option<Duration> {
    let header = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    header
        .or_else(|| seconds_after(body, "resets in"))
        .or_else(|| seconds_after(body, "\"retryDelay\""))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The number of seconds written after `marker` in `text`, as in
/// `resets in ~30s` or `"retryDelay": "12.5s"`.
fn seconds_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    if rest[..start].chars().any(|c| c.is_alphanumeric()) {
        return None;
    }
    let digits = &rest[start..];
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(digits.len());
    let number: f64 = digits[..end].parse().ok()?;
    match digits[end..].chars().next() {
        Some('m') if !digits[end..].starts_with("ms") => Some(number * 60.0),
        Some('m') => Some(number / 1000.0),
        _ => Some(number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn rest_hints_are_read_from_header_or_body() {
        let none = HeaderMap::new();
        let mut header = HeaderMap::new();
        header.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(rest_hint(&header, ""), Some(Duration::from_secs(7)));
        let replicate = r#"{"detail":"Request was throttled. Your rate limit resets in ~30s."}"#;
        assert_eq!(rest_hint(&none, replicate), Some(Duration::from_secs(30)));
        let google = r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12.5s"}]}}"#;
        assert_eq!(
            rest_hint(&none, google),
            Some(Duration::from_millis(12_500))
        );
        assert_eq!(
            rest_hint(&none, "resets in ~2m"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(rest_hint(&none, "no hint here"), None);
        assert_eq!(rest_hint(&none, "resets in a while 30s"), None);
    }

    #[test]
    fn a_three_minute_chunk_fits_and_a_long_one_is_refused_with_numbers() {
        let budget = check_budget(180.0, 16_384).unwrap();
        assert_eq!(budget.chunk_input_tokens, 54_000 + PROMPT_TOKENS);
        assert_eq!(
            budget.film_tokens(18),
            18 * (54_000 + PROMPT_TOKENS + 16_384)
        );
        let too_long = check_budget(46.0 * 60.0, 16_384).unwrap_err();
        assert!(too_long.contains("2700"), "{too_long}");
        let longest = check_budget(2700.0, 65_536).unwrap();
        assert!(longest.chunk_tokens < CONTEXT_TOKENS);
        assert!(check_budget(0.0, 1).is_err());
    }
}
