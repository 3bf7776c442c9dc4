//! Gemini on Replicate: a [`VideoModel`] that asks `google/gemini-3-pro`
//! about one chunk through Replicate's HTTP API.
//!
//! One question about one chunk goes through these steps:
//!
//! 1. **Key.** A key is taken from the [`KeyPool`]: the least-loaded one
//!    that is not resting after a 429 and has room in its own rate limit.
//!    When every key rests, the answer is [`AnalyzeError::Throttled`] and the
//!    chunk goes back to the queue without using up an attempt, before any
//!    work on the clip.
//! 2. **Cut.** ffmpeg re-encodes exactly the chunk's frames
//!    `[start_frame, end_frame)` into an H.264 MP4 of at most 720 lines in a
//!    private temporary folder (see [Frame exactness](#frame-exactness)),
//!    once per question, whatever the number of keys it takes.
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

mod api;
mod cut;
mod prediction;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::keys::{KeyLease, KeyPool};
use super::provider::{checked_root_url, provider_error, question_span, throttled, MIN_REST};
use super::remote::{http_client, Finish, HttpTimeouts, ModelReply, Question, VideoModel};
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

/// Time kept before the deadline to cancel the prediction and delete the
/// upload (at most a tenth of the whole budget).
const CLEANUP_RESERVE: Duration = Duration::from_secs(3);
/// The longest a best-effort cleanup call may take after a success.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// setting is wrong (naming the variable where one sets it), and shows
    /// no password that the base URL holds.
    pub fn new(config: ReplicateConfig) -> Result<Replicate, String> {
        let base = checked_root_url(BASE_URL_VARIABLE, &config.base_url)?;
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
        let span = question_span!(NAME, request);
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

impl Replicate {
    async fn ask_chunk(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let budget = Budget::new(question.deadline);
        let dir = tempfile::TempDir::new().map_err(|source| AnalyzeError::Io {
            chunk_index,
            context: "creating a temporary folder for the clip".into(),
            source,
        })?;
        let mut clip = None;
        let pool = &self.config.keys;
        // Each turn rests a key for at least MIN_REST, so the pool runs out
        // of keys long before this bound; it only guards against a loop.
        for _ in 0..pool.len() * 2 {
            // The key first: with every key resting, the chunk goes back to
            // the queue without re-encoding its clip for nothing.
            let lease = pool
                .acquire(&[], budget.work_end)
                .await
                .map_err(|resting| throttled(NAME, chunk_index, resting.wait))?;
            let clip = match &clip {
                Some(clip) => clip,
                None => clip.insert(self.cut(request, dir.path(), budget.work_end).await?),
            };
            let call = Call {
                request,
                question,
                lease: &lease,
                budget,
            };
            match self.ask_with_key(&call, clip).await {
                Ok(text) => {
                    return Ok(ModelReply {
                        text,
                        finish: Finish::Complete,
                    })
                }
                Err(Failure::Throttled(rest)) => lease.rest(rest),
                Err(failure) => return Err(analyze_error(chunk_index, &budget, failure)),
            }
        }
        Err(throttled(NAME, chunk_index, MIN_REST))
    }
}

/// The error a question ends with after `failure`; a failure that could
/// pass but for the deadline is a timeout.
fn analyze_error(chunk_index: u32, budget: &Budget, failure: Failure) -> AnalyzeError {
    let timed_out = || AnalyzeError::TimedOut {
        chunk_index,
        seconds: budget.seconds(),
    };
    let provider = |message, retryable| provider_error(NAME, chunk_index, message, retryable);
    match failure {
        Failure::Deadline | Failure::Running => timed_out(),
        Failure::Transient(_) | Failure::Throttled(_) if Instant::now() >= budget.work_end => {
            timed_out()
        }
        Failure::Throttled(wait) => throttled(NAME, chunk_index, wait),
        Failure::Transient(message) | Failure::Retryable(message) => provider(message, true),
        Failure::NotStarted(message) => provider(message, true),
        Failure::Permanent(message) => provider(message, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_base_urls_are_checked() {
        assert!(check_model("google/gemini-3-pro").is_ok());
        for bad in ["gemini", "google/", "/x", "a/b/c", "a/b:1234"] {
            assert!(
                check_model(bad).unwrap_err().contains(MODEL_VARIABLE),
                "{bad}"
            );
        }
        let base_url = |url: &str| checked_root_url(BASE_URL_VARIABLE, url);
        assert_eq!(
            base_url("http://127.0.0.1:8/").unwrap(),
            "http://127.0.0.1:8"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("not a url").is_err());
        let password = base_url("https://deploy:hunter2@127.0.0.1").unwrap_err();
        assert!(password.contains(BASE_URL_VARIABLE), "{password}");
        assert!(!password.contains("hunter2"), "{password}");
    }
}
