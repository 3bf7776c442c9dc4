//! Gemini on Replicate: a [`VideoModel`] that asks `google/gemini-3-pro`
//! about one chunk through Replicate's HTTP API.
//!
//! One question about one chunk goes through these steps:
//!
//! 1. **Cut.** ffmpeg re-encodes exactly the chunk's frames
//!    `[start_frame, end_frame)` into an H.264 MP4 of at most 720 lines in a
//!    private temporary folder (see [Frame exactness](#frame-exactness)).
//! 2. **Key.** A key is taken from the [`KeyPool`]: the least-loaded one
//!    that is not resting after a 429 and has room in its own rate limit.
//!    When every key rests, the answer is [`AnalyzeError::Throttled`] and the
//!    chunk goes back to the queue without using up an attempt.
//! 3. **Upload.** The clip goes to `POST /v1/files`; its `urls.get` is the
//!    model's video input.
//! 4. **Create.** `POST /v1/models/{owner}/{name}/predictions` with
//!    `Prefer: wait=N`, which may answer with the finished prediction.
//! 5. **Poll.** Otherwise `GET /v1/predictions/{id}` with exponential
//!    backoff until a terminal status. A prediction we stop waiting for (our
//!    deadline, an error while polling) is canceled, so it costs no more.
//! 6. **Answer.** `succeeded` joins the output's strings; `failed` is
//!    permanent unless the error is E6716 ("Timeout Starting Prediction"),
//!    which is retried with a new prediction while time allows; `canceled`
//!    and `aborted` are retryable. The uploaded file is deleted.
//!
//! Replicate's model has no schema input, so the answer's JSON schema is
//! written into the prompt; the strict parser in [`super::output`] catches
//! an answer cut off at the output budget, since Replicate gives no finish
//! reason.
//!
//! # Keys and accounts
//!
//! An uploaded file belongs to the account of the key that uploaded it, and
//! keys may belong to different accounts, so one key serves all the calls
//! of one chunk: upload, create, poll, cancel and delete. When a key is
//! rate-limited (429) at upload or create, it rests for the time the server
//! gives, its upload is deleted, and the next key uploads the clip again at
//! once. Uploading again costs a few seconds; sending another account's file
//! to the model would fail the prediction.
//!
//! # Deadlines
//!
//! Every call has the client's connect and read timeouts and is also cut at
//! the question's deadline. Retries of passing failures (5xx, connection
//! errors, E6716) and polls stop when their next wait would pass the
//! deadline less a small reserve, which is kept for canceling the prediction
//! and deleting the upload, so the answer is in by the deadline.
//!
//! # Frame exactness
//!
//! The clip must start at the chunk's first frame, or every time the model
//! gives is off. As in [`super::local`], ffmpeg runs with `-copyts
//! -start_at_zero`, so frame `n` keeps its time `start_offset + n / fps`
//! counted from the container's start, and a `trim` filter keeps the frames
//! whose time lies within half a frame before `start_frame` and before
//! `end_frame`: exactly the chunk, whatever the keyframes. The input seek
//! starts a second before the chunk; when ffmpeg's seek lands after it (as
//! in some MPEG program streams), the clip comes out short and is cut again
//! from further back. The number of frames written is checked every time.

use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::Instrument;

use super::keys::{KeyLease, KeyPool};
use super::remote::{
    http_client, rest_hint, Finish, HttpTimeouts, ModelReply, Question, VideoModel,
};
use super::{AnalyzeError, ChunkRequest};

/// The analyzer's name in logs and the database.
pub const NAME: &str = "replicate";
/// Predictions one Replicate account may create a minute; the per-key rate
/// limit of the [`KeyPool`].
pub const CREATES_PER_MINUTE: u32 = 600;
/// The variable that lists the API tokens, separated by commas.
pub const KEYS_VARIABLE: &str = "REPLICATE_API_TOKENS";
/// The variable that overrides the API's base URL.
pub const BASE_URL_VARIABLE: &str = "REPLICATE_BASE_URL";
/// The variable that overrides the model, as `owner/name`.
pub const MODEL_VARIABLE: &str = "REPLICATE_MODEL";
/// Replicate's API.
pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com";
/// Gemini 3 Pro on Replicate.
pub const DEFAULT_MODEL: &str = "google/gemini-3-pro";

/// How long a key rests after a 429 that does not say.
const DEFAULT_REST: Duration = Duration::from_secs(30);
/// The shortest rest after a 429, so a "resets in ~0s" cannot make the
/// same key be tried again in a tight loop.
const MIN_REST: Duration = Duration::from_secs(1);
/// Time kept before the deadline to cancel the prediction and delete the
/// upload (at most a tenth of the whole budget).
const CLEANUP_RESERVE: Duration = Duration::from_secs(3);
/// The longest a best-effort cleanup call may take after a success.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of one call that failed with a 5xx or a connection error.
const TRANSIENT_RETRIES: usize = 4;
/// New predictions after one failed with E6716.
const START_RETRIES: usize = 2;
/// Replicate's code for "Timeout Starting Prediction", which passes.
const START_TIMEOUT_CODE: &str = "E6716";
/// How much of a provider's message an error quotes.
const MESSAGE_CHARS: usize = 300;
/// The clip's file name in the temporary folder.
const CLIP_FILE: &str = "clip.mp4";
/// The file ffmpeg writes its progress to, which says how many frames it
/// wrote.
const PROGRESS_FILE: &str = "progress.txt";
/// The tallest clip uploaded: enough for the model, small to send.
const MAX_HEIGHT: u32 = 720;
/// x264 quality of the clip: visibly fine, a few MB a minute at 720p.
const CRF: &str = "28";
/// How far before the chunk each cut starts reading; `None` reads from the
/// film's start.
const PREROLL_SECONDS: [Option<f64>; 3] = [Some(1.0), Some(10.0), None];
/// Frames at the film's very ends a decoder may not return before a clip
/// counts as short.
const END_SHORTFALL_FRAMES: i64 = 3;
/// How many trailing lines of ffmpeg's diagnostics an error quotes.
const STDERR_LINES: usize = 6;
/// Diagnostics that mean the source itself cannot be read: no retry helps.
const UNREADABLE_MARKERS: [&str; 5] = [
    "No such file or directory",
    "Invalid data found when processing input",
    "moov atom not found",
    "matches no streams",
    "Permission denied",
];

/// Bounds of the exponential backoff between polls and between retries of
/// passing failures (with jitter, capped at `max`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollBackoff {
    /// The first wait, before the first poll too.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for PollBackoff {
    fn default() -> Self {
        PollBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

/// How to reach Replicate and cut the clips.
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// The API's base URL, without a trailing path (`https://api.replicate.com`).
    pub base_url: String,
    /// The model as `owner/name`.
    pub model: String,
    /// The API tokens; build it with [`CREATES_PER_MINUTE`] as the limit.
    pub keys: Arc<KeyPool>,
    /// Connect and read timeouts of every call.
    pub timeouts: HttpTimeouts,
    /// How long the create call asks the server to hold the answer until
    /// the prediction is done (`Prefer: wait`), 1 to 60 s; less than the
    /// read timeout.
    pub prefer_wait: Duration,
    /// The waits between polls, and between retries of 5xx answers,
    /// connection errors and E6716.
    pub poll: PollBackoff,
    /// The ffmpeg program, looked up on `PATH` unless it has a directory.
    pub ffmpeg: PathBuf,
    /// The model's sampling temperature, 0 to 2.
    pub temperature: f64,
}

impl ReplicateConfig {
    /// The defaults around `keys`: Replicate's API, Gemini 3 Pro, a 60 s
    /// `Prefer: wait`, polls from 1 s to 10 s, `ffmpeg` on `PATH`,
    /// temperature 0.
    pub fn new(keys: Arc<KeyPool>) -> ReplicateConfig {
        ReplicateConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            model: DEFAULT_MODEL.to_string(),
            keys,
            timeouts: HttpTimeouts::default(),
            prefer_wait: Duration::from_secs(60),
            poll: PollBackoff::default(),
            ffmpeg: PathBuf::from("ffmpeg"),
            temperature: 0.0,
        }
    }

    /// The configuration from [`KEYS_VARIABLE`] (required),
    /// [`BASE_URL_VARIABLE`] and [`MODEL_VARIABLE`] (defaults when unset or
    /// blank), read through `var` (as `|name| std::env::var(name).ok()`).
    /// Each key is limited to [`CREATES_PER_MINUTE`]. The error names the
    /// variable, never a key's value.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<ReplicateConfig, String> {
        let list = var(KEYS_VARIABLE).ok_or_else(|| {
            format!(
                "{KEYS_VARIABLE} is not set: give one or more Replicate API tokens, \
                 separated by commas"
            )
        })?;
        let pool = KeyPool::from_list(
            NAME,
            KEYS_VARIABLE,
            &list,
            NonZeroU32::new(CREATES_PER_MINUTE),
        )
        .map_err(|e| e.0)?;
        let mut config = ReplicateConfig::new(Arc::new(pool));
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(base_url) = set(BASE_URL_VARIABLE) {
            config.base_url = base_url.trim().to_string();
        }
        if let Some(model) = set(MODEL_VARIABLE) {
            config.model = model.trim().to_string();
        }
        Ok(config)
    }
}

/// Asks Gemini on Replicate about one chunk; see the [module](self) docs.
#[derive(Debug)]
pub struct Replicate {
    config: ReplicateConfig,
    /// The base URL without a trailing slash.
    base: String,
    client: reqwest::Client,
}

impl Replicate {
    /// Checks `config` and builds the HTTP client. The error says which
    /// setting is wrong (naming the variable where one sets it).
    pub fn new(config: ReplicateConfig) -> Result<Replicate, String> {
        let base = check_base_url(&config.base_url)?;
        check_model(&config.model)?;
        if config.keys.is_empty() {
            return Err(format!("{KEYS_VARIABLE} holds no key"));
        }
        let wait = config.prefer_wait;
        if wait < Duration::from_secs(1) || wait > Duration::from_secs(60) {
            return Err(format!(
                "the Prefer: wait time must be 1 to 60 s, not {} s",
                wait.as_secs_f64()
            ));
        }
        // The server sends nothing while it holds a create call open.
        if config.timeouts.read <= wait {
            return Err(format!(
                "the read timeout ({} s) must be longer than the Prefer: wait time ({} s)",
                config.timeouts.read.as_secs_f64(),
                wait.as_secs_f64()
            ));
        }
        if config.poll.initial.is_zero() || config.poll.max < config.poll.initial {
            return Err("the poll backoff must start above 0 and not exceed its maximum".into());
        }
        if !(0.0..=2.0).contains(&config.temperature) {
            return Err(format!(
                "the temperature must be 0 to 2, not {}",
                config.temperature
            ));
        }
        let client = http_client(config.timeouts)?;
        Ok(Replicate {
            config,
            base,
            client,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ReplicateConfig {
        &self.config
    }
}

fn check_base_url(base_url: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|e| format!("{BASE_URL_VARIABLE} {base_url:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(format!(
            "{BASE_URL_VARIABLE} {base_url:?} must be an http or https URL without a query"
        ));
    }
    Ok(base_url.trim_end_matches('/').to_string())
}

fn check_model(model: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match model.split_once('/') {
        Some((owner, name)) if segment_ok(owner) && segment_ok(name) => Ok(()),
        _ => Err(format!(
            "{MODEL_VARIABLE} {model:?} must be owner/name, as in {DEFAULT_MODEL}"
        )),
    }
}

#[async_trait::async_trait]
impl VideoModel for Replicate {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ask(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        let span = tracing::info_span!(
            "replicate",
            video_id = %request.video_id,
            chunk_index = request.chunk_index
        );
        self.ask_chunk(request, question).instrument(span).await
    }
}

/// When the work on one question must stop.
#[derive(Debug, Clone, Copy)]
struct Budget {
    started: Instant,
    /// Polls and retries end before this.
    work_end: Instant,
    /// The question's deadline: cleanup ends before this.
    deadline: Instant,
}

impl Budget {
    fn new(deadline: Instant) -> Budget {
        let started = Instant::now();
        let reserve = CLEANUP_RESERVE.min(deadline.saturating_duration_since(started) / 10);
        Budget {
            started,
            work_end: deadline - reserve,
            deadline,
        }
    }

    fn seconds(&self) -> f64 {
        let total = self.deadline.saturating_duration_since(self.started);
        (total.as_secs_f64() * 10.0).round() / 10.0
    }
}

/// One question being asked with one key.
struct Call<'a> {
    request: &'a ChunkRequest,
    question: &'a Question,
    lease: &'a KeyLease<'a>,
    budget: Budget,
}

impl Call<'_> {
    fn key(&self) -> usize {
        self.lease.number()
    }
}

/// Why one step failed, which decides what happens next.
#[derive(Debug)]
enum Failure {
    /// The key is rate-limited for this long: rest it, try another key.
    Throttled(Duration),
    /// May pass with the same key soon: a 5xx, a connection error.
    Transient(String),
    /// The prediction has not finished yet (polling only).
    Running,
    /// The prediction failed with E6716: a new one may start.
    NotStarted(String),
    /// Our own deadline came.
    Deadline,
    /// Retryable later, but not now (the prediction was canceled).
    Retryable(String),
    /// Will not pass.
    Permanent(String),
}

/// A file uploaded for one chunk.
#[derive(Debug, Clone, Deserialize)]
struct Upload {
    id: String,
    urls: UploadUrls,
}

#[derive(Debug, Clone, Deserialize)]
struct UploadUrls {
    get: String,
}

/// A prediction as the API describes it; only the fields we read.
#[derive(Debug, Clone, Deserialize)]
struct Prediction {
    id: String,
    status: String,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Value,
}

impl Prediction {
    fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "canceled" | "aborted"
        )
    }
}

impl Replicate {
    async fn ask_chunk(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        let budget = Budget::new(question.deadline);
        let dir = tempfile::TempDir::new().map_err(|source| AnalyzeError::Io {
            chunk_index: request.chunk_index,
            context: "creating a temporary folder for the clip".into(),
            source,
        })?;
        let clip = self.cut(request, dir.path(), budget.work_end).await?;
        let pool = &self.config.keys;
        // Each turn rests a key for at least MIN_REST, so the pool runs out
        // of keys long before this bound; it only guards against a loop.
        for _ in 0..pool.len() * 2 {
            let lease = pool
                .acquire(&[], budget.work_end)
                .await
                .map_err(|resting| self.throttled(request, resting.wait))?;
            let call = Call {
                request,
                question,
                lease: &lease,
                budget,
            };
            match self.ask_with_key(&call, &clip).await {
                Ok(text) => {
                    return Ok(ModelReply {
                        text,
                        finish: Finish::Complete,
                    })
                }
                Err(Failure::Throttled(rest)) => lease.rest(rest),
                Err(failure) => return Err(self.analyze_error(request, &budget, failure)),
            }
        }
        Err(self.throttled(request, MIN_REST))
    }

    fn throttled(&self, request: &ChunkRequest, wait: Duration) -> AnalyzeError {
        AnalyzeError::Throttled {
            chunk_index: request.chunk_index,
            analyzer: NAME,
            wait,
        }
    }

    fn analyze_error(
        &self,
        request: &ChunkRequest,
        budget: &Budget,
        failure: Failure,
    ) -> AnalyzeError {
        let chunk_index = request.chunk_index;
        let provider = |message: String, retryable: bool| AnalyzeError::Provider {
            chunk_index,
            analyzer: NAME,
            message,
            retryable,
        };
        match failure {
            Failure::Deadline | Failure::Running => AnalyzeError::TimedOut {
                chunk_index,
                seconds: budget.seconds(),
            },
            Failure::Transient(_) | Failure::Throttled(_) if Instant::now() >= budget.work_end => {
                AnalyzeError::TimedOut {
                    chunk_index,
                    seconds: budget.seconds(),
                }
            }
            Failure::Throttled(wait) => self.throttled(request, wait),
            Failure::Transient(message) | Failure::Retryable(message) => provider(message, true),
            Failure::NotStarted(message) => provider(message, true),
            Failure::Permanent(message) => provider(message, false),
        }
    }

    /// Upload, prediction and cleanup with one key.
    async fn ask_with_key(&self, call: &Call<'_>, clip: &Path) -> Result<String, Failure> {
        let upload = (|| self.upload(call, clip))
            .retry(self.backoff(Some(TRANSIENT_RETRIES)))
            .when(|f| matches!(f, Failure::Transient(_)))
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .await?;
        let answer = self.predict(call, &upload).await;
        let until = call.budget.deadline.min(Instant::now() + CLEANUP_TIMEOUT);
        self.delete_file(call, &upload, until).await;
        answer
    }

    /// Creates predictions until one does not fail with E6716, and reads
    /// its answer.
    async fn predict(&self, call: &Call<'_>, upload: &Upload) -> Result<String, Failure> {
        (|| self.predict_once(call, upload))
            .retry(self.backoff(Some(START_RETRIES)))
            .when(|f| matches!(f, Failure::NotStarted(_)))
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .notify(|f, _| {
                tracing::debug!(
                    key = call.key(),
                    failure = ?f,
                    "prediction did not start; creating another"
                )
            })
            .await
    }

    async fn predict_once(&self, call: &Call<'_>, upload: &Upload) -> Result<String, Failure> {
        let created = (|| self.create(call, upload))
            .retry(self.backoff(Some(TRANSIENT_RETRIES)))
            .when(|f| matches!(f, Failure::Transient(_)))
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .await?;
        let prediction_id = created.id.clone();
        match self.wait_terminal(call, created).await {
            Ok(done) => answer_of(call, done),
            Err(failure) => {
                // Nobody waits for the prediction any more: stop paying for it.
                self.cancel(call, &prediction_id).await;
                Err(match failure {
                    Failure::Throttled(_) => Failure::Transient("polling was rate-limited".into()),
                    other => other,
                })
            }
        }
    }

    /// Polls until the prediction is terminal, or the backoff would pass
    /// the deadline.
    async fn wait_terminal(
        &self,
        call: &Call<'_>,
        created: Prediction,
    ) -> Result<Prediction, Failure> {
        if created.is_terminal() {
            return Ok(created);
        }
        let id = created.id;
        let first = Instant::now() + self.config.poll.initial;
        if first >= call.budget.work_end {
            return Err(Failure::Deadline);
        }
        tokio::time::sleep_until(first).await;
        (|| self.poll(call, &id))
            .retry(self.backoff(None))
            .when(|f| {
                matches!(
                    f,
                    Failure::Running | Failure::Transient(_) | Failure::Throttled(_)
                )
            })
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .await
    }

    /// The backoff between retries and polls; `times` bounds the retries.
    fn backoff(&self, times: Option<usize>) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.config.poll.initial)
            .with_max_delay(self.config.poll.max)
            .with_jitter();
        match times {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        }
    }

    /// The backoff's next wait: capped at the configured maximum (backon's
    /// jitter may double a wait), at least what a 429 asked for, and `None`
    /// when it would end after `until`.
    fn next_delay(
        &self,
        failure: &Failure,
        proposed: Option<Duration>,
        until: Instant,
    ) -> Option<Duration> {
        let mut delay = proposed?.min(self.config.poll.max);
        if let Failure::Throttled(rest) = failure {
            delay = delay.max(*rest);
        }
        (Instant::now() + delay < until).then_some(delay)
    }
}

/// The joined output of a terminal prediction, or why there is none.
fn answer_of(call: &Call<'_>, done: Prediction) -> Result<String, Failure> {
    let prediction_id = done.id.as_str();
    let key = call.key();
    match done.status.as_str() {
        "succeeded" => {
            let text = joined_output(&done.output).ok_or_else(|| {
                Failure::Permanent(format!(
                    "prediction {prediction_id} succeeded with an output that is neither \
                     text nor a list of texts"
                ))
            })?;
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                chars = text.len(),
                "prediction succeeded"
            );
            Ok(text)
        }
        "failed" => {
            let error = scrub(&error_text(&done.error), call.lease);
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                error = %error,
                "prediction failed"
            );
            let message = format!("prediction {prediction_id} failed: {error}");
            if error.contains(START_TIMEOUT_CODE) {
                Err(Failure::NotStarted(message))
            } else {
                Err(Failure::Permanent(message))
            }
        }
        status => {
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                status,
                "prediction ended without an answer"
            );
            Err(Failure::Retryable(format!(
                "prediction {prediction_id} was {status} before it answered"
            )))
        }
    }
}

/// The model's text: the output's strings joined, or the output itself when
/// it is one string; no output reads as an empty answer.
fn joined_output(output: &Value) -> Option<String> {
    match output {
        Value::Null => Some(String::new()),
        Value::String(text) => Some(text.clone()),
        Value::Array(pieces) => pieces
            .iter()
            .map(|p| p.as_str())
            .collect::<Option<Vec<&str>>>()
            .map(|p| p.concat()),
        _ => None,
    }
}

/// A prediction's error as text, whatever its shape.
fn error_text(error: &Value) -> String {
    let text = match error {
        Value::Null => "no reason given".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    truncated(&text)
}

/// `text` cut to [`MESSAGE_CHARS`] characters.
fn truncated(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MESSAGE_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// `text` without the key's value, should a server ever echo it.
fn scrub(text: &str, lease: &KeyLease<'_>) -> String {
    let secret = lease.secret();
    if secret.is_empty() || !text.contains(secret) {
        return text.to_string();
    }
    text.replace(secret, &format!("<key {}>", lease.number()))
}

/// The prompt, with the answer's schema written in: the model on Replicate
/// takes no schema input.
fn prompt_with_schema(question: &Question) -> String {
    if question.schema.is_null() {
        return question.prompt.clone();
    }
    format!(
        "{}\n\nAnswer with one JSON object and nothing else: no code fence and no text \
         before or after it. The object must match this JSON schema:\n{}",
        question.prompt, question.schema
    )
}

/// Whether `id` is safe to put in a URL path.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

// The API calls. Each one is bounded by the client's timeouts and by
// `until`, and names the key by number only.
impl Replicate {
    /// Sends `builder` with the call's key; a success's body, or the
    /// failure its status means.
    async fn send(
        &self,
        call: &Call<'_>,
        what: &'static str,
        builder: RequestBuilder,
        until: Instant,
    ) -> Result<String, Failure> {
        let key = call.key();
        // `bearer_auth` marks the header sensitive, so it is never printed.
        let exchange = async {
            let response = builder.bearer_auth(call.lease.secret()).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.text().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout_at(until, exchange).await {
            Err(_) => return Err(Failure::Deadline),
            Ok(Err(e)) if e.is_builder() => {
                return Err(Failure::Permanent(format!(
                    "{what}: {}",
                    crate::error_chain(&e)
                )))
            }
            Ok(Err(e)) => {
                let cause = crate::error_chain(&e);
                tracing::debug!(key, what, error = %cause, "call to replicate failed");
                return Err(Failure::Transient(format!("{what}: {cause}")));
            }
            Ok(Ok(answer)) => answer,
        };
        tracing::trace!(key, what, status = status.as_u16(), body = %body, "replicate answered");
        if status.is_success() {
            return Ok(body);
        }
        tracing::debug!(
            key,
            what,
            status = status.as_u16(),
            "replicate refused a call"
        );
        Err(classify(call.lease, what, status, &headers, &body))
    }

    async fn upload(&self, call: &Call<'_>, clip: &Path) -> Result<Upload, Failure> {
        let file_name = format!(
            "{}-chunk-{:04}.mp4",
            call.request.video_id, call.request.chunk_index
        );
        let part = reqwest::multipart::Part::file(clip)
            .await
            .map_err(|e| Failure::Retryable(format!("reading the clip: {e}")))?
            .file_name(file_name)
            .mime_str("video/mp4")
            .map_err(|e| Failure::Permanent(format!("building the upload: {e}")))?;
        let form = reqwest::multipart::Form::new().part("content", part);
        let builder = self
            .client
            .post(format!("{}/v1/files", self.base))
            .multipart(form);
        let body = self
            .send(call, "uploading the clip", builder, call.budget.work_end)
            .await?;
        let upload: Upload = parse(&body, "file")?;
        tracing::debug!(key = call.key(), file_id = %upload.id, "clip uploaded");
        Ok(upload)
    }

    async fn create(&self, call: &Call<'_>, upload: &Upload) -> Result<Prediction, Failure> {
        let question = call.question;
        let body = json!({
            "input": {
                "prompt": prompt_with_schema(question),
                "system_instruction": question.system,
                "videos": [upload.urls.get],
                "max_output_tokens": question.max_output_tokens,
                "temperature": self.config.temperature,
            }
        });
        let url = format!("{}/v1/models/{}/predictions", self.base, self.config.model);
        let mut builder = self.client.post(url).json(&body);
        // The server holds the call at most this long: never past our end.
        let left = call
            .budget
            .work_end
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_secs(1));
        let wait = self.config.prefer_wait.min(left).as_secs();
        if wait >= 1 {
            builder = builder.header("Prefer", format!("wait={wait}"));
        }
        tracing::trace!(key = call.key(), body = %body, "creating a prediction");
        let answer = self
            .send(
                call,
                "creating the prediction",
                builder,
                call.budget.work_end,
            )
            .await?;
        let prediction: Prediction = parse(&answer, "prediction")?;
        if !is_plain_id(&prediction.id) {
            return Err(Failure::Permanent(format!(
                "replicate gave an unexpected prediction id {:?}",
                truncated(&prediction.id)
            )));
        }
        tracing::debug!(
            key = call.key(),
            prediction_id = %prediction.id,
            status = %prediction.status,
            "prediction created"
        );
        Ok(prediction)
    }

    /// One poll; a prediction still running is [`Failure::Running`].
    async fn poll(&self, call: &Call<'_>, id: &str) -> Result<Prediction, Failure> {
        // Our own base URL, not the `urls.get` the server gave: the key
        // goes to no host but the configured one.
        let builder = self
            .client
            .get(format!("{}/v1/predictions/{id}", self.base));
        let body = self
            .send(
                call,
                "polling the prediction",
                builder,
                call.budget.work_end,
            )
            .await?;
        let prediction: Prediction = parse(&body, "prediction")?;
        tracing::debug!(
            key = call.key(),
            prediction_id = %id,
            status = %prediction.status,
            "polled"
        );
        if prediction.is_terminal() {
            Ok(prediction)
        } else {
            Err(Failure::Running)
        }
    }

    /// Cancels a prediction we no longer wait for; best effort, before the
    /// question's deadline.
    async fn cancel(&self, call: &Call<'_>, id: &str) {
        let builder = self
            .client
            .post(format!("{}/v1/predictions/{id}/cancel", self.base));
        let until = call.budget.deadline.min(Instant::now() + CLEANUP_TIMEOUT);
        match self
            .send(call, "canceling the prediction", builder, until)
            .await
        {
            Ok(_) => tracing::debug!(key = call.key(), prediction_id = %id, "prediction canceled"),
            Err(failure) => tracing::warn!(
                key = call.key(),
                prediction_id = %id,
                failure = ?failure,
                "could not cancel the prediction; it may run on"
            ),
        }
    }

    /// Deletes an uploaded clip; best effort (Replicate also expires files).
    async fn delete_file(&self, call: &Call<'_>, upload: &Upload, until: Instant) {
        if !is_plain_id(&upload.id) {
            return;
        }
        let builder = self
            .client
            .delete(format!("{}/v1/files/{}", self.base, upload.id));
        if let Err(failure) = self.send(call, "deleting the clip", builder, until).await {
            tracing::debug!(
                key = call.key(),
                file_id = %upload.id,
                failure = ?failure,
                "clip not deleted"
            );
        }
    }
}

/// What a refused call means.
fn classify(
    lease: &KeyLease<'_>,
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> Failure {
    let code = status.as_u16();
    match code {
        429 => Failure::Throttled(
            rest_hint(headers, body)
                .unwrap_or(DEFAULT_REST)
                .max(MIN_REST),
        ),
        401 | 403 => Failure::Permanent(format!(
            "{KEYS_VARIABLE} key {} was refused ({code})",
            lease.number()
        )),
        408 | 500..=599 => Failure::Transient(format!(
            "{what}: replicate answered {code}: {}",
            scrub(&detail(body), lease)
        )),
        _ => Failure::Permanent(format!(
            "{what}: replicate answered {code}: {}",
            scrub(&detail(body), lease)
        )),
    }
}

/// The `detail` (or `title`) of an error body, or the body itself,
/// truncated.
fn detail(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let text = field("detail")
        .or_else(|| field("title"))
        .unwrap_or_else(|| body.to_string());
    if text.trim().is_empty() {
        return "no detail".to_string();
    }
    truncated(&text)
}

fn parse<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| {
        Failure::Permanent(format!("replicate answered with an unexpected {what}: {e}"))
    })
}

/// Where ffmpeg reads one cut, in seconds from the container's start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CutWindow {
    /// The input seek (`-ss`), or `None` to read from the start.
    seek: Option<f64>,
    /// How long to read (`-t`).
    duration: f64,
    /// The video frames kept: from half a frame before the chunk's first
    /// to half a frame before its end.
    video: (f64, f64),
    /// The sound kept: the chunk's exact span.
    audio: (f64, f64),
}

impl CutWindow {
    fn new(request: &ChunkRequest, preroll: Option<f64>) -> CutWindow {
        let fps = request.media.fps.as_f64();
        let offset = request.media.start_offset_seconds;
        let at = |frame: f64| offset + frame / fps;
        let (start, end) = (request.start_frame as f64, request.end_frame as f64);
        let video = (at(start - 0.5), at(end - 0.5));
        let seek = preroll.map(|p| video.0 - p).filter(|&s| s > 0.0);
        CutWindow {
            seek,
            duration: at(end + 0.5) - seek.unwrap_or(0.0),
            video,
            audio: (at(start), at(end)),
        }
    }
}

impl Replicate {
    /// Cuts the chunk into `dir`, reading from further back until the clip
    /// holds every frame of the chunk.
    async fn cut(
        &self,
        request: &ChunkRequest,
        dir: &Path,
        until: Instant,
    ) -> Result<PathBuf, AnalyzeError> {
        let input = source_input(request).await?;
        let len = request.len();
        let started = Instant::now();
        let mut frames = 0;
        for preroll in PREROLL_SECONDS {
            let window = CutWindow::new(request, preroll);
            frames = self.run_cut(request, &input, window, dir, until).await?;
            match judge_clip(request, frames, window.seek.is_some()) {
                ClipVerdict::Whole => {
                    let seconds = started.elapsed().as_secs_f64();
                    tracing::debug!(frames, seconds, "chunk cut");
                    return Ok(dir.join(CLIP_FILE));
                }
                ClipVerdict::Tolerated => {
                    tracing::warn!(frames, len, "the clip misses frames no decoder returns");
                    return Ok(dir.join(CLIP_FILE));
                }
                ClipVerdict::ReadFurtherBack => {
                    tracing::debug!(
                        frames,
                        len,
                        "seek overshot, cutting again from further back"
                    );
                }
                ClipVerdict::Short => break,
            }
        }
        Err(AnalyzeError::BadOutput {
            chunk_index: request.chunk_index,
            detail: format!(
                "the clip of [{}, {}) holds {frames} frames, not {len}",
                request.start_frame, request.end_frame
            ),
        })
    }

    /// One ffmpeg run; the number of video frames it wrote.
    async fn run_cut(
        &self,
        request: &ChunkRequest,
        input: &OsString,
        window: CutWindow,
        dir: &Path,
        until: Instant,
    ) -> Result<i64, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let mut command = tokio::process::Command::new(&self.config.ffmpeg);
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command.args(cut_args(request, input, window));
        let seconds = until
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let output = match tokio::time::timeout_at(until, command.output()).await {
            Err(_) => {
                return Err(AnalyzeError::TimedOut {
                    chunk_index,
                    seconds,
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AnalyzeError::ToolMissing {
                    chunk_index,
                    tool: "ffmpeg",
                })
            }
            Ok(Err(source)) => {
                return Err(AnalyzeError::Io {
                    chunk_index,
                    context: "starting ffmpeg".into(),
                    source,
                })
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            return Err(ffmpeg_failure(request, &output));
        }
        let progress = tokio::fs::read_to_string(dir.join(PROGRESS_FILE))
            .await
            .map_err(|source| AnalyzeError::Io {
                chunk_index,
                context: "reading ffmpeg's progress".into(),
                source,
            })?;
        frames_written(&progress).ok_or_else(|| AnalyzeError::BadOutput {
            chunk_index,
            detail: "ffmpeg did not say how many frames it wrote".into(),
        })
    }
}

/// What a cut of `frames` frames means for the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClipVerdict {
    /// Every frame of the chunk is there.
    Whole,
    /// A few frames are missing at the film's start or end, which some files
    /// hold and no decoder returns.
    Tolerated,
    /// Frames are missing and the cut began with a seek, which may have
    /// landed after the chunk's start.
    ReadFurtherBack,
    /// Frames are missing even reading from the film's start.
    Short,
}

fn judge_clip(request: &ChunkRequest, frames: i64, seeked: bool) -> ClipVerdict {
    let short = request.len() - frames;
    let touches_end = request.end_frame == request.media.duration_frames;
    if short == 0 {
        ClipVerdict::Whole
    } else if short > 0 && short <= END_SHORTFALL_FRAMES && (touches_end || !seeked) {
        ClipVerdict::Tolerated
    } else if seeked {
        ClipVerdict::ReadFurtherBack
    } else {
        ClipVerdict::Short
    }
}

/// ffmpeg's arguments for one cut (see the module's "Frame exactness").
fn cut_args(request: &ChunkRequest, input: &OsString, window: CutWindow) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
    ]);
    push(&["-copyts", "-start_at_zero"]);
    if let Some(seek) = window.seek {
        push(&["-ss", &format!("{seek:.6}")]);
    }
    push(&["-t", &format!("{:.6}", window.duration), "-i"]);
    args.push(input.clone());
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let (v0, v1) = window.video;
    let mut graph = format!(
        "[0:V:0]trim=start={v0:.6}:end={v1:.6},setpts=PTS-STARTPTS,\
         scale=w=-2:h='min({MAX_HEIGHT},trunc(ih/2)*2)',format=yuv420p[v]"
    );
    if request.media.has_audio {
        let (a0, a1) = window.audio;
        graph.push_str(&format!(
            ";[0:a:0]atrim=start={a0:.6}:end={a1:.6},asetpts=PTS-STARTPTS[a]"
        ));
    }
    push(&["-filter_complex", &graph, "-map", "[v]"]);
    push(&[
        "-frames:v",
        &request.len().to_string(),
        "-fps_mode:v",
        "passthrough",
    ]);
    push(&["-c:v", "libx264", "-preset", "veryfast", "-crf", CRF]);
    if request.media.has_audio {
        push(&["-map", "[a]", "-c:a", "aac", "-b:a", "96k"]);
    }
    push(&[
        "-movflags",
        "+faststart",
        "-progress",
        PROGRESS_FILE,
        "-f",
        "mp4",
        CLIP_FILE,
    ]);
    args
}

/// The last `frame=` count of ffmpeg's `-progress` output.
fn frames_written(progress: &str) -> Option<i64> {
    progress
        .lines()
        .filter_map(|line| line.strip_prefix("frame="))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// The ffmpeg input for the request's source: a URL as it is, a local path
/// made absolute (ffmpeg runs in the temporary folder) after checking it
/// exists.
async fn source_input(request: &ChunkRequest) -> Result<OsString, AnalyzeError> {
    if request.source.contains("://") {
        return Ok(OsString::from(&request.source));
    }
    let chunk_index = request.chunk_index;
    let path = std::path::absolute(&request.source).map_err(|source| AnalyzeError::Io {
        chunk_index,
        context: "resolving the source path".into(),
        source,
    })?;
    let shown = path.display().to_string();
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => {
            // `file:` keeps a name with a colon from being read as a protocol.
            let mut input = OsString::from("file:");
            input.push(path.as_os_str());
            Ok(input)
        }
        Ok(_) => Err(AnalyzeError::SourceUnreadable {
            chunk_index,
            path: shown,
            detail: "not a regular file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AnalyzeError::SourceMissing {
            chunk_index,
            path: shown,
        }),
        Err(source) => Err(AnalyzeError::Io {
            chunk_index,
            context: format!("reading {shown}"),
            source,
        }),
    }
}

/// Classifies a failed cut: an unreadable source is permanent, any other
/// failure may pass.
fn ffmpeg_failure(request: &ChunkRequest, output: &Output) -> AnalyzeError {
    let stderr = crate::probe::stderr_tail(&output.stderr, STDERR_LINES);
    let chunk_index = request.chunk_index;
    if output.status.code().is_some() && UNREADABLE_MARKERS.iter().any(|m| stderr.contains(m)) {
        return AnalyzeError::SourceUnreadable {
            chunk_index,
            path: request.source.clone(),
            detail: stderr,
        };
    }
    AnalyzeError::ToolFailed {
        chunk_index,
        tool: "ffmpeg",
        status: output.status.to_string(),
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::MediaInfo;

    fn request(start_frame: i64, end_frame: i64, offset: f64) -> ChunkRequest {
        ChunkRequest {
            video_id: uuid::Uuid::nil(),
            chunk_index: 1,
            source: "/films/a.mp4".into(),
            media: MediaInfo {
                fps: "25/1".parse().unwrap(),
                duration_frames: 10_000,
                start_offset_seconds: offset,
                has_audio: true,
                sound_end_seconds: None,
                width: 1920,
                height: 1080,
                codec: "h264".into(),
                format: "mp4".into(),
            },
            start_frame,
            end_frame,
            deadline: None,
        }
    }

    #[test]
    fn outputs_are_joined_whether_a_list_or_one_string() {
        assert_eq!(
            joined_output(&json!(["{\"sh", "ots\":", "[]}"])).as_deref(),
            Some("{\"shots\":[]}")
        );
        assert_eq!(joined_output(&json!("whole")).as_deref(), Some("whole"));
        assert_eq!(joined_output(&Value::Null).as_deref(), Some(""));
        assert_eq!(joined_output(&json!(["a", 1])), None);
        assert_eq!(joined_output(&json!({"text": "a"})), None);
    }

    #[test]
    fn the_cut_keeps_half_a_frame_either_side_of_the_chunk_s_frame_times() {
        let w = CutWindow::new(&request(250, 500, 0.54), Some(1.0));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(w.video.0, 0.54 + 249.5 / 25.0), "{w:?}");
        assert!(close(w.video.1, 0.54 + 499.5 / 25.0), "{w:?}");
        assert!(close(w.audio.0, 0.54 + 10.0) && close(w.audio.1, 0.54 + 20.0));
        assert!(close(w.seek.unwrap(), w.video.0 - 1.0));
        assert!(close(w.seek.unwrap() + w.duration, 0.54 + 500.5 / 25.0));
        // Near the film's start there is nothing to seek over.
        assert_eq!(CutWindow::new(&request(10, 500, 0.0), Some(1.0)).seek, None);
        assert_eq!(CutWindow::new(&request(250, 500, 0.0), None).seek, None);
    }

    #[test]
    fn the_cut_scales_to_720_lines_and_stops_at_the_chunk_s_frame_count() {
        let input = OsString::from("file:/films/a.mp4");
        let args = cut_args(
            &request(250, 500, 0.0),
            &input,
            CutWindow::new(&request(250, 500, 0.0), Some(1.0)),
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |flag: &str| text[text.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("-frames:v"), "250");
        assert!(after("-filter_complex").contains("min(720,"), "{text:?}");
        assert!(
            after("-filter_complex").contains("[0:a:0]atrim"),
            "{text:?}"
        );
        assert_eq!(after("-i"), "file:/films/a.mp4");
        assert!(text.iter().position(|a| a == "-copyts") < text.iter().position(|a| a == "-i"));
    }

    #[test]
    fn a_short_clip_is_cut_again_from_further_back_unless_the_film_s_ends_explain_it() {
        use ClipVerdict::*;
        let middle = request(250, 500, 0.0);
        assert_eq!(judge_clip(&middle, 250, true), Whole);
        assert_eq!(judge_clip(&middle, 249, true), ReadFurtherBack);
        assert_eq!(judge_clip(&middle, 200, false), Short);
        // Read from the film's start: a few missing frames are the file's.
        assert_eq!(judge_clip(&request(0, 500, 0.0), 498, false), Tolerated);
        let last = request(9_800, 10_000, 0.0);
        assert_eq!(judge_clip(&last, 197, true), Tolerated);
        assert_eq!(judge_clip(&last, 150, true), ReadFurtherBack);
    }

    #[test]
    fn the_frame_count_is_the_last_progress_report() {
        let progress = "frame=10\nfps=0.0\nprogress=continue\nframe=250\nprogress=end\n";
        assert_eq!(frames_written(progress), Some(250));
        assert_eq!(frames_written("progress=end\n"), None);
    }

    #[test]
    fn error_details_are_read_from_json_and_truncated() {
        assert_eq!(detail(r#"{"detail":"Invalid input"}"#), "Invalid input");
        assert_eq!(detail(r#"{"title":"Not found"}"#), "Not found");
        assert_eq!(detail(""), "no detail");
        let long = "x".repeat(1000);
        assert_eq!(detail(&long).chars().count(), MESSAGE_CHARS + 3);
        assert_eq!(error_text(&json!({"code": "E6716"})), r#"{"code":"E6716"}"#);
    }

    #[test]
    fn the_schema_is_written_into_the_prompt_when_there_is_one() {
        let mut question = Question {
            system: "sys".into(),
            prompt: "Shot 1: 0 s to 1 s".into(),
            schema: Value::Null,
            max_output_tokens: 10,
            deadline: Instant::now(),
        };
        assert_eq!(prompt_with_schema(&question), "Shot 1: 0 s to 1 s");
        question.schema = json!({"type": "object"});
        let prompt = prompt_with_schema(&question);
        assert!(prompt.starts_with("Shot 1: 0 s to 1 s\n\n"), "{prompt}");
        assert!(prompt.ends_with(r#"{"type":"object"}"#), "{prompt}");
    }

    #[test]
    fn models_and_base_urls_are_checked() {
        assert!(check_model("google/gemini-3-pro").is_ok());
        for bad in ["gemini", "google/", "/x", "a/b/c", "a/b:1234"] {
            assert!(
                check_model(bad).unwrap_err().contains(MODEL_VARIABLE),
                "{bad}"
            );
        }
        assert_eq!(
            check_base_url("http://127.0.0.1:8/").unwrap(),
            "http://127.0.0.1:8"
        );
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("not a url").is_err());
    }

    #[test]
    fn prediction_ids_must_be_plain() {
        assert!(is_plain_id("gm3a0d1x9hrmc0cs7bcv7j8d7c"));
        assert!(!is_plain_id("../files/x"));
        assert!(!is_plain_id(""));
    }
}
