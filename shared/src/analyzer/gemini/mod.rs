//! Gemini (the Generative Language API, v1beta) as a [`VideoModel`].
//!
//! The film is uploaded once, with the File API's resumable upload, and all
//! its chunks refer to that file: each chunk is one `generateContent` call
//! whose video part clips the file with `video_metadata` start and end
//! offsets, and whose answer is JSON under the question's `responseSchema`.
//!
//! One question about one chunk goes through these steps:
//!
//! 1. **Key.** A key is taken from the [`KeyPool`], preferring the keys
//!    whose account already holds the film (or is uploading it); otherwise
//!    the least-loaded key that is not resting after a 429. When every key
//!    rests, the answer is [`AnalyzeError::Throttled`]: the chunk goes back
//!    to the queue without using up an attempt. So it is too when the film
//!    is ready under some keys and all of those rest: another key would
//!    upload the whole film again, and keys of one Cloud project share one
//!    quota anyway.
//! 2. **File.** Postgres says what to do ([`UploadStore::claim_upload`]): use
//!    the account's ready file; poll one still PROCESSING; upload the film
//!    (exactly one worker of a film does, whatever the number of chunks
//!    starting at once); or wait for another worker's upload, polling the
//!    store. The upload starts a session (`X-Goog-Upload-Command: start`),
//!    sends the bytes to the session URL (`upload, finalize`), then polls
//!    `GET /v1beta/files/{id}` until ACTIVE, within
//!    [`GeminiConfig::processing_wait`] counted from the upload. FAILED is
//!    permanent, for every later chunk too. An upload dropped midway (the
//!    run interrupted, its task aborted) gives its claim back, so that the
//!    next worker uploads at once.
//!
//!    Waiting for another worker's upload, or for Gemini to process the
//!    film, is not the chunk's fault: after [`GeminiConfig::upload_wait`],
//!    or at the deadline if sooner, the answer is [`AnalyzeError::Deferred`]
//!    and the chunk goes back to the queue without using up an attempt.
//! 3. **Ask.** `POST /v1beta/models/{model}:generateContent`. The answer's
//!    text parts are joined (thoughts left out) and its `finishReason` says
//!    whether it is complete, cut off or blocked.
//!
//! # Failures
//!
//! A 429 lets the key rest for the time the server gives (its `RetryInfo`,
//! else 30 s) and the next free key is tried at once. 500, 502, 503, 504,
//! 408, connection errors and timeouts are tried again with exponential
//! backoff and jitter ([`backon`]) while the next try still starts before the
//! question's deadline. A 403 or 404 about the file means Gemini no longer
//! has it (deleted, expired early, or the key now belongs to another
//! project): the record is forgotten and the film uploaded again, once.
//! Anything else Gemini refuses is permanent, with its message.
//!
//! # Accounts and keys
//!
//! Files belong to the key's Cloud project, and quotas are per project too:
//! several keys of one project give no more throughput than one. Keys are
//! named by their 1-based number in `GEMINI_API_KEYS`, which is also the
//! account an upload is recorded under; reordering the list makes recorded
//! files look foreign, which costs one upload each (the 403/404 path).
//! Keys go in the `x-goog-api-key` header only, never in a URL, a log or an
//! error message; logs name a key by its number (`key`).
//!
//! # Configuration
//!
//! | variable          | default | meaning |
//! |-------------------|---------|---------|
//! | `GEMINI_API_KEYS` | (required) | API keys, comma-separated |
//! | `GEMINI_BASE_URL` | `https://generativelanguage.googleapis.com` | the API's root |
//! | `GEMINI_MODEL`    | `gemini-2.5-pro` | the model asked (see [`DEFAULT_MODEL`]) |

mod call;
mod file;
mod generate;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::keys::{KeyLease, KeyPool, MAX_KEY_WAIT};
use super::provider::{
    checked_root_url, deferred, provider_error, question_span, throttled, MIN_REST,
};
use super::remote::{http_client, HttpTimeouts, ModelReply, Question, VideoModel};
use super::{AnalyzeError, ChunkRequest};
use crate::db::DbError;
use crate::uploads::{UploadSlot, UploadState, UploadStore};

use file::{Elsewhere, FilmFile, Limits};

pub use file::mime_type;
pub use generate::{clip_offsets, finish_of};

/// The analyzer's name, in logs, the database and upload records.
pub const NAME: &str = "gemini";
/// The variable holding the API keys, comma-separated.
pub const KEYS_VAR: &str = "GEMINI_API_KEYS";
/// The variable holding the API's root URL.
pub const BASE_URL_VAR: &str = "GEMINI_BASE_URL";
/// The variable naming the model.
pub const MODEL_VAR: &str = "GEMINI_MODEL";
/// Google's endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Gemini 2.5 Pro: Google's stable model with the best video understanding
/// when this was written, with the 1M-token context and structured output
/// that [`super::remote::check_budget`] and the schema rely on.
pub const DEFAULT_MODEL: &str = "gemini-2.5-pro";
/// How long a file may stay PROCESSING after its upload before the film is
/// given up as one Gemini cannot process.
pub const DEFAULT_PROCESSING_WAIT: Duration = Duration::from_secs(600);
/// How often a PROCESSING file, or another worker's upload, is looked at.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long a chunk waits for another worker's upload of the film, or for
/// Gemini to process it, before it goes back to the queue.
pub const DEFAULT_UPLOAD_WAIT: Duration = Duration::from_secs(30);

/// The longest a chunk that waits for someone else's upload asks to be put
/// off: the upload may end long before the uploader's claim runs out.
const MAX_DEFER: Duration = Duration::from_secs(60);
/// How long a chunk is put off when nothing says how long the wait is (a
/// file Gemini is still processing).
const DEFAULT_DEFER: Duration = Duration::from_secs(10);

/// A try is only worth starting with at least this much time left.
const TRY_RESERVE: Duration = Duration::from_millis(500);
/// How much of a provider's error message an error keeps.
const MESSAGE_CHARS: usize = 300;

/// How the analyzer reaches Gemini. [`GeminiConfig::from_vars`] reads it
/// from the environment with the documented defaults.
#[derive(Debug, Clone)]
pub struct GeminiConfig {
    /// The API's root, without a trailing slash: `GEMINI_BASE_URL`.
    pub base_url: String,
    /// The model asked: `GEMINI_MODEL`.
    pub model: String,
    pub keys: Arc<KeyPool>,
    /// Connect and read timeouts of every call.
    pub timeouts: HttpTimeouts,
    /// How long a file may stay PROCESSING after its upload.
    pub processing_wait: Duration,
    /// How often a PROCESSING file, or another worker's upload, is checked.
    pub poll_interval: Duration,
    /// How long a chunk waits for another worker's upload of the film, or
    /// for Gemini to process it, before it is [deferred](AnalyzeError::Deferred).
    pub upload_wait: Duration,
}

impl GeminiConfig {
    /// The configuration from `GEMINI_API_KEYS` (required),
    /// `GEMINI_BASE_URL` and `GEMINI_MODEL`, read through `var` (blank counts
    /// as unset) and [checked](GeminiConfig::check); the other fields take
    /// their defaults. The error names the variable, never a key.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<GeminiConfig, String> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let list = get(KEYS_VAR).ok_or_else(|| {
            format!("{KEYS_VAR} is not set: give one or more Gemini API keys, separated by commas")
        })?;
        let keys = KeyPool::from_list(NAME, KEYS_VAR, &list, None).map_err(|e| e.0)?;
        let config = GeminiConfig {
            base_url: get(BASE_URL_VAR).unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            model: get(MODEL_VAR).unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            keys: Arc::new(keys),
            timeouts: HttpTimeouts::default(),
            processing_wait: DEFAULT_PROCESSING_WAIT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            upload_wait: DEFAULT_UPLOAD_WAIT,
        };
        config.check()?;
        Ok(config)
    }

    /// Checks everything [`Gemini::new`] checks, without building a client:
    /// the base URL (an http(s) root without user info, query or fragment),
    /// the model's name, that there is a key, and the poll interval. The
    /// error names the variable, and shows neither a key nor a password.
    pub fn check(&self) -> Result<(), String> {
        self.checked().map(drop)
    }

    /// The base URL and the model as [`Gemini`] uses them, once checked.
    fn checked(&self) -> Result<(String, String), String> {
        let base_url = checked_root_url(BASE_URL_VAR, &self.base_url)?;
        let model = checked_model(&self.model)?;
        if self.keys.is_empty() {
            return Err(format!("{KEYS_VAR}: no API key given"));
        }
        if self.poll_interval.is_zero() {
            return Err("the Gemini poll interval must be positive".to_string());
        }
        Ok((base_url, model))
    }

    /// [`from_vars`](GeminiConfig::from_vars) over the process environment.
    pub fn from_env() -> Result<GeminiConfig, String> {
        GeminiConfig::from_vars(|name| std::env::var(name).ok())
    }
}

/// The Gemini analyzer's model: see the [module documentation](self).
pub struct Gemini {
    base_url: String,
    model: String,
    keys: Arc<KeyPool>,
    /// The accounts of the keys, for claims ([`UploadSlot::accounts`]).
    accounts: Vec<String>,
    rests: Rests,
    processing_wait: Duration,
    poll_interval: Duration,
    upload_wait: Duration,
    client: reqwest::Client,
    uploads: Arc<dyn UploadStore>,
}

impl std::fmt::Debug for Gemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemini")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Gemini {
    /// A Gemini model that records its uploads in `uploads` (the [`Db`]).
    /// The error says which setting is unusable.
    ///
    /// [`Db`]: crate::db::Db
    pub fn new(config: GeminiConfig, uploads: Arc<dyn UploadStore>) -> Result<Gemini, String> {
        let (base_url, model) = config.checked()?;
        Ok(Gemini {
            base_url,
            model,
            accounts: UploadSlot::accounts(config.keys.len()),
            keys: config.keys,
            rests: Rests::default(),
            processing_wait: config.processing_wait,
            poll_interval: config.poll_interval,
            upload_wait: config.upload_wait,
            client: http_client(config.timeouts)?,
            uploads,
        })
    }

    /// The model asked, as configured (without a `models/` prefix).
    pub fn model(&self) -> &str {
        &self.model
    }
}

fn checked_model(text: &str) -> Result<String, String> {
    let model = text.trim();
    let model = model.strip_prefix("models/").unwrap_or(model);
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if model.is_empty() || !model.chars().all(valid) {
        return Err(format!(
            "{MODEL_VAR} must be a model name such as {DEFAULT_MODEL}, got {text:?}"
        ));
    }
    Ok(model.to_string())
}

#[async_trait::async_trait]
impl VideoModel for Gemini {
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

/// Why one step against Gemini did not succeed, before the question's
/// answer turns it into an [`AnalyzeError`].
#[derive(Debug)]
enum Failure {
    /// 429: the key must rest this long.
    RateLimited(Duration),
    /// Worth another try soon: 5xx, a connection error, a timeout.
    Transient(String),
    /// Gemini no longer has the file `name` for this key (403/404).
    FileGone { name: String, detail: String },
    /// Gemini refused the request: permanent.
    Refused(String),
    /// Decided already (source missing, film failed, database error...).
    Final(AnalyzeError),
}

impl Failure {
    fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }

    fn into_error(self, chunk_index: u32) -> AnalyzeError {
        let provider = |message, retryable| provider_error(NAME, chunk_index, message, retryable);
        match self {
            Failure::RateLimited(wait) => throttled(NAME, chunk_index, wait),
            Failure::Transient(message) => provider(message, true),
            // Gone again right after a new upload: not a passing state of
            // the file but of the key (no access), which needs a person.
            Failure::FileGone { detail, .. } => provider(
                format!("the film's file was refused again after uploading it anew: {detail}"),
                false,
            ),
            Failure::Refused(message) => provider(message, false),
            Failure::Final(error) => error,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::RateLimited(wait) => write!(f, "rate-limited for {} s", wait.as_secs_f64()),
            Failure::Transient(message) | Failure::Refused(message) => f.write_str(message),
            Failure::FileGone { detail, .. } => f.write_str(detail),
            Failure::Final(error) => write!(f, "{error}"),
        }
    }
}

/// A database error as the question's failure: retryable when the database
/// may answer later.
fn store_failure(doing: &str, error: DbError, chunk_index: u32) -> Failure {
    let retryable = error.is_retryable();
    Failure::Final(provider_error(
        NAME,
        chunk_index,
        format!("{doing}: {error}"),
        retryable,
    ))
}

/// What a call is about, for reading a 403 or 404.
#[derive(Debug, Clone, Copy)]
enum About<'a> {
    /// An upload: no file yet.
    Upload,
    /// The file itself (its state): a 403 or 404 means it is gone.
    File(&'a str),
    /// A question that names the file: a 403 or 404 means it is gone when
    /// Gemini's message is about a file (not, say, an unknown model).
    Question(&'a str),
}

impl Gemini {
    async fn ask_chunk(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let deadline = question.deadline;
        let limits = Limits {
            wait_until: deadline.min(Instant::now() + self.upload_wait),
            deadline,
        };
        let mut uploaded_again = false;
        loop {
            let holders = self.film_holders(request).await?;
            let lease = self.film_key(&holders, deadline, chunk_index).await?;
            let slot = UploadSlot::new(request.video_id, NAME, lease.number());
            let answer = match self.film_file(&lease, &slot, request, limits).await {
                Ok(FilmFile::Ready(file)) => self.generate(&lease, &file, request, question).await,
                Ok(FilmFile::Elsewhere(upload)) => {
                    // Wait without holding a key, then prefer the key it
                    // uploads with.
                    drop(lease);
                    self.pause_for_upload(&upload, limits, chunk_index).await?;
                    continue;
                }
                Err(failure) => Err(failure),
            };
            match answer {
                Ok(reply) => return Ok(reply),
                Err(Failure::RateLimited(wait)) => self.rest(&lease, wait),
                Err(Failure::FileGone { name, detail }) if !uploaded_again => {
                    tracing::info!(key = lease.number(), file = %name, detail = %detail,
                        "gemini no longer has the film's file; uploading it again");
                    self.forget(&slot, &name).await;
                    uploaded_again = true;
                }
                Err(failure) => return Err(failure.into_error(chunk_index)),
            }
        }
    }

    /// The keys to prefer for the film: those whose account holds its file
    /// (`ready`), or else those uploading it.
    async fn film_holders(&self, request: &ChunkRequest) -> Result<Holders, AnalyzeError> {
        let accounts = self
            .uploads
            .upload_accounts(request.video_id, NAME)
            .await
            .map_err(|e| {
                store_failure("reading the film's uploads", e, request.chunk_index)
                    .into_error(request.chunk_index)
            })?;
        let index = |account: &str| {
            account
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=self.keys.len()).contains(n))
                .map(|n| n - 1)
        };
        let ready: Vec<usize> = accounts
            .iter()
            .filter(|a| a.state == UploadState::Active)
            .filter_map(|a| index(&a.account))
            .collect();
        if !ready.is_empty() {
            return Ok(Holders {
                keys: ready,
                ready: true,
            });
        }
        Ok(Holders {
            keys: accounts.iter().filter_map(|a| index(&a.account)).collect(),
            ready: false,
        })
    }

    /// A key for the film, one of `holders` when any is free. When the film
    /// is ready under some keys and all of them rest, another key would
    /// upload the whole film again, and with keys of one Cloud project (one
    /// quota) meet the same limit: the chunk waits for the soonest of them
    /// when that is short, and is throttled otherwise.
    async fn film_key(
        &self,
        holders: &Holders,
        deadline: Instant,
        chunk_index: u32,
    ) -> Result<KeyLease<'_>, AnalyzeError> {
        loop {
            let lease = self
                .keys
                .acquire(&holders.keys, deadline)
                .await
                .map_err(|resting| throttled(NAME, chunk_index, resting.wait))?;
            if !holders.ready || holders.keys.contains(&lease.index()) {
                return Ok(lease);
            }
            drop(lease);
            // Not known resting here: it was rested elsewhere, or its rest
            // has just ended. Either way, worth a look again soon.
            let wait = self.rests.soonest(&holders.keys).unwrap_or(MIN_REST);
            if wait > MAX_KEY_WAIT || Instant::now() + wait + TRY_RESERVE >= deadline {
                tracing::debug!(
                    rest_s = wait.as_secs_f64(),
                    "every key that holds the film rests"
                );
                return Err(throttled(NAME, chunk_index, wait));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Lets `lease`'s key rest for `wait` after a 429.
    fn rest(&self, lease: &KeyLease<'_>, wait: Duration) {
        lease.rest(wait);
        self.rests.note(lease.index(), wait);
    }

    /// Waits one poll interval for someone else's upload of the film; once
    /// the chunk has waited as long as it may, it is deferred instead.
    async fn pause_for_upload(
        &self,
        upload: &Elsewhere,
        limits: Limits,
        chunk_index: u32,
    ) -> Result<(), AnalyzeError> {
        if !limits.allow_poll(self.poll_interval) {
            return Err(upload.deferred(chunk_index));
        }
        tokio::time::sleep(self.poll_interval).await;
        Ok(())
    }
}

/// The keys whose account holds the film's file (`ready`), or else those
/// uploading it, as 0-based indexes into the pool.
#[derive(Debug)]
struct Holders {
    keys: Vec<usize>,
    ready: bool,
}

/// When each key's rest after a 429 ends, as this analyzer set it: the pool
/// tells how long the soonest of all its keys rests, not of given ones.
#[derive(Debug, Default)]
struct Rests(std::sync::Mutex<std::collections::HashMap<usize, Instant>>);

impl Rests {
    /// Key `index` rests for `wait` from now (a rest is never shortened).
    fn note(&self, index: usize, wait: Duration) {
        let until = Instant::now() + wait;
        // Plain instants: a panic elsewhere cannot leave them inconsistent.
        let mut rests = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = rests.entry(index).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How long the soonest of `indexes` rests still; `None` when none is
    /// known to rest.
    fn soonest(&self, indexes: &[usize]) -> Option<Duration> {
        let now = Instant::now();
        let rests = self.0.lock().unwrap_or_else(|e| e.into_inner());
        indexes
            .iter()
            .filter_map(|index| rests.get(index))
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .min()
    }
}

/// Chunk `chunk_index` waits for `what` (someone else's upload, Gemini's
/// processing) for about `wait`, kept within [`MIN_REST`] and [`MAX_DEFER`].
fn put_off(chunk_index: u32, what: String, wait: Option<Duration>) -> AnalyzeError {
    let wait = wait.unwrap_or(DEFAULT_DEFER).clamp(MIN_REST, MAX_DEFER);
    deferred(NAME, chunk_index, what, wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::local;
    use crate::probe::MediaInfo;
    use crate::time::Fps;

    /// A 25 fps film in the `format` container.
    pub(super) fn media(format: &str) -> MediaInfo {
        MediaInfo {
            format: format.into(),
            ..local::tests::media("25/1", 0.52, true)
        }
    }

    /// Frames `[start_frame, end_frame)` of an MP4 film at `fps`.
    pub(super) fn request(start_frame: i64, end_frame: i64, fps: Fps) -> ChunkRequest {
        let media = MediaInfo {
            fps,
            ..media("mov,mp4,m4a,3gp,3g2,mj2")
        };
        local::tests::request(start_frame, end_frame, media)
    }

    #[test]
    fn configuration_is_read_with_defaults_and_errors_name_the_variable() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = GeminiConfig::from_vars(vars(&[(KEYS_VAR, "k-one, k-two")])).unwrap();
        assert_eq!(config.base_url, DEFAULT_BASE_URL);
        assert_eq!(config.model, DEFAULT_MODEL);
        assert_eq!(config.keys.len(), 2);
        let custom = GeminiConfig::from_vars(vars(&[
            (KEYS_VAR, "k"),
            (BASE_URL_VAR, "http://127.0.0.1:9/"),
            (MODEL_VAR, " gemini-2.5-flash "),
        ]))
        .unwrap();
        assert_eq!(custom.model, "gemini-2.5-flash");
        let missing = GeminiConfig::from_vars(vars(&[(KEYS_VAR, "  ")])).unwrap_err();
        assert!(missing.starts_with(KEYS_VAR), "{missing}");
        let stray = GeminiConfig::from_vars(vars(&[(KEYS_VAR, "secret-a,,")])).unwrap_err();
        assert!(
            stray.contains("key 2") && !stray.contains("secret-a"),
            "{stray}"
        );
    }

    #[test]
    fn base_urls_and_models_are_checked_from_the_variables_before_any_client() {
        let vars = |base_url: &'static str, model: &'static str| {
            move |name: &str| match name {
                KEYS_VAR => Some("k".to_string()),
                BASE_URL_VAR => Some(base_url.to_string()),
                MODEL_VAR => Some(model.to_string()),
                _ => None,
            }
        };
        let read = |base_url, model| GeminiConfig::from_vars(vars(base_url, model));
        let config = read("http://127.0.0.1:8080/", "models/gemini-2.5-pro").unwrap();
        assert_eq!(config.check(), Ok(()));
        for (base_url, model, variable) in [
            ("ftp://127.0.0.1/", "m", BASE_URL_VAR),
            ("https://127.0.0.1/?key=hunter2", "m", BASE_URL_VAR),
            ("https://user:hunter2@127.0.0.1", "m", BASE_URL_VAR),
            ("http://127.0.0.1", "gemini 2.5 pro", MODEL_VAR),
        ] {
            let error = read(base_url, model).unwrap_err();
            assert!(error.contains(variable), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let mut edited = config;
        edited.model = "../x".into();
        assert!(edited.check().unwrap_err().contains(MODEL_VAR));
        assert_eq!(
            checked_model("models/gemini-2.5-pro").unwrap(),
            "gemini-2.5-pro"
        );
        assert!(checked_model("gemini/../x")
            .unwrap_err()
            .contains(MODEL_VAR));
        assert!(checked_model("").is_err());
    }

    #[test]
    fn rests_say_how_long_the_soonest_of_given_keys_rests() {
        let rests = Rests::default();
        assert_eq!(rests.soonest(&[0, 1]), None);
        rests.note(0, Duration::from_secs(30));
        rests.note(0, Duration::from_secs(5));
        rests.note(2, Duration::from_secs(10));
        let soonest = rests.soonest(&[0, 1]).unwrap();
        assert!(soonest > Duration::from_secs(29), "{soonest:?}");
        let soonest = rests.soonest(&[0, 2]).unwrap();
        assert!(soonest <= Duration::from_secs(10), "{soonest:?}");
        assert_eq!(rests.soonest(&[1]), None);
    }

    #[test]
    fn deferrals_wait_at_least_a_second_and_at_most_a_minute() {
        let wait = |left| put_off(3, "x".into(), left).retry_after().unwrap();
        assert_eq!(wait(Some(Duration::from_millis(10))), MIN_REST);
        assert_eq!(wait(Some(Duration::from_secs(250))), MAX_DEFER);
        assert_eq!(wait(None), DEFAULT_DEFER);
        assert!(put_off(3, "x".into(), None).is_retryable());
    }
}
