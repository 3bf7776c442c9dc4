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
//!    to the queue without using up an attempt.
//! 2. **File.** Postgres says what to do ([`UploadStore::claim_upload`]): use
//!    the account's ready file; poll one still PROCESSING; upload the film
//!    (exactly one worker of a film does, whatever the number of chunks
//!    starting at once); or wait for another worker's upload, polling the
//!    store. The upload starts a session (`X-Goog-Upload-Command: start`),
//!    sends the bytes to the session URL (`upload, finalize`), then polls
//!    `GET /v1beta/files/{id}` until ACTIVE, within
//!    [`GeminiConfig::processing_wait`] counted from the upload. FAILED is
//!    permanent, for every later chunk too.
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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH};
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
use crate::db::DbError;
use crate::probe::MediaInfo;
use crate::uploads::{ProviderFile, UploadClaim, UploadSlot, UploadState, UploadStore};

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

/// A key's rest after a 429 that gives no time.
const DEFAULT_REST: Duration = Duration::from_secs(30);
/// The shortest rest: a "retry in 0 s" would send the next call straight
/// back to the same key.
const MIN_REST: Duration = Duration::from_secs(1);
/// Backoff between tries of a passing failure.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(8);
const RETRY_MAX_TIMES: usize = 6;
/// A try is only worth starting with at least this much time left.
const TRY_RESERVE: Duration = Duration::from_millis(500);
/// Low, so that descriptions keep to what is on screen.
const TEMPERATURE: f64 = 0.2;
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
}

impl GeminiConfig {
    /// The configuration from `GEMINI_API_KEYS` (required),
    /// `GEMINI_BASE_URL` and `GEMINI_MODEL`, read through `var` (blank counts
    /// as unset); the other fields take their defaults. The error names the
    /// variable, never a key.
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
        Ok(GeminiConfig {
            base_url: get(BASE_URL_VAR).unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            model: get(MODEL_VAR).unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            keys: Arc::new(keys),
            timeouts: HttpTimeouts::default(),
            processing_wait: DEFAULT_PROCESSING_WAIT,
            poll_interval: DEFAULT_POLL_INTERVAL,
        })
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
    processing_wait: Duration,
    poll_interval: Duration,
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
        let base_url = checked_base_url(&config.base_url)?;
        let model = checked_model(&config.model)?;
        if config.keys.is_empty() {
            return Err(format!("{KEYS_VAR}: no API key given"));
        }
        if config.poll_interval.is_zero() {
            return Err("the Gemini poll interval must be positive".to_string());
        }
        Ok(Gemini {
            base_url,
            model,
            keys: config.keys,
            processing_wait: config.processing_wait,
            poll_interval: config.poll_interval,
            client: http_client(config.timeouts)?,
            uploads,
        })
    }

    /// The model asked, as configured (without a `models/` prefix).
    pub fn model(&self) -> &str {
        &self.model
    }
}

fn checked_base_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| format!("{BASE_URL_VAR} is not a URL ({e}): {trimmed}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{BASE_URL_VAR} must be an http(s) URL: {trimmed}"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{BASE_URL_VAR} must be a plain root URL, without user, query or fragment"
        ));
    }
    Ok(trimmed.to_string())
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
        let span = tracing::info_span!(
            "gemini",
            video_id = %request.video_id,
            chunk_index = request.chunk_index
        );
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
        let provider = |message: String, retryable: bool| AnalyzeError::Provider {
            chunk_index,
            analyzer: NAME,
            message,
            retryable,
        };
        match self {
            Failure::RateLimited(wait) => AnalyzeError::Throttled {
                chunk_index,
                analyzer: NAME,
                wait,
            },
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
    Failure::Final(AnalyzeError::Provider {
        chunk_index,
        analyzer: NAME,
        message: format!("{doing}: {error}"),
        retryable: error.is_retryable(),
    })
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

/// The File API's view of a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemoteFile {
    name: String,
    #[serde(default)]
    uri: String,
    #[serde(default)]
    mime_type: String,
    #[serde(default)]
    state: String,
    expiration_time: Option<String>,
    error: Option<RemoteStatus>,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteStatus {
    message: Option<String>,
}

impl RemoteFile {
    fn failure_detail(&self) -> String {
        let message = self.error.as_ref().and_then(|e| e.message.as_deref());
        message
            .unwrap_or("no reason given")
            .chars()
            .take(MESSAGE_CHARS)
            .collect()
    }

    fn as_provider_file(&self, fallback_mime: &str) -> ProviderFile {
        ProviderFile {
            name: self.name.clone(),
            uri: self.uri.clone(),
            mime_type: if self.mime_type.is_empty() {
                fallback_mime.to_string()
            } else {
                self.mime_type.clone()
            },
            expire_time: self.expiration_time.clone(),
        }
    }
}

/// The film's bytes, ready to be streamed into an upload.
struct Source {
    body: reqwest::Body,
    length: Option<u64>,
    mime_type: &'static str,
}

impl Gemini {
    async fn ask_chunk(
        &self,
        request: &ChunkRequest,
        question: &Question,
    ) -> Result<ModelReply, AnalyzeError> {
        let chunk_index = request.chunk_index;
        let deadline = question.deadline;
        let mut uploaded_again = false;
        loop {
            let prefer = self.preferred_keys(request).await?;
            let lease = self
                .keys
                .acquire(&prefer, deadline)
                .await
                .map_err(|resting| AnalyzeError::Throttled {
                    chunk_index,
                    analyzer: NAME,
                    wait: resting.wait,
                })?;
            let slot = UploadSlot::new(request.video_id, NAME, lease.number());
            let answer = match self.film_file(&lease, &slot, request, deadline).await {
                Ok(Some(file)) => self.generate(&lease, &file, request, question).await,
                Ok(None) => {
                    // Another worker is uploading: wait without holding a
                    // key, then prefer the key it uploads with.
                    drop(lease);
                    self.pause_for_upload(deadline, chunk_index).await?;
                    continue;
                }
                Err(failure) => Err(failure),
            };
            match answer {
                Ok(reply) => return Ok(reply),
                Err(Failure::RateLimited(wait)) => lease.rest(wait),
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

    /// The 0-based indexes of the keys whose account holds the film, or
    /// else of those uploading it.
    async fn preferred_keys(&self, request: &ChunkRequest) -> Result<Vec<usize>, AnalyzeError> {
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
            return Ok(ready);
        }
        Ok(accounts.iter().filter_map(|a| index(&a.account)).collect())
    }

    async fn pause_for_upload(
        &self,
        deadline: Instant,
        chunk_index: u32,
    ) -> Result<(), AnalyzeError> {
        if Instant::now() + self.poll_interval + TRY_RESERVE >= deadline {
            return Err(AnalyzeError::Provider {
                chunk_index,
                analyzer: NAME,
                message: "another worker was still uploading the film at the deadline".into(),
                retryable: true,
            });
        }
        tokio::time::sleep(self.poll_interval).await;
        Ok(())
    }

    /// The film's file for `lease`'s account: `None` while another worker
    /// uploads it.
    async fn film_file(
        &self,
        lease: &KeyLease<'_>,
        slot: &UploadSlot,
        request: &ChunkRequest,
        deadline: Instant,
    ) -> Result<Option<ProviderFile>, Failure> {
        let chunk_index = request.chunk_index;
        // A claim lasts until the holder's deadline, past which it stops
        // working on the upload: a holder that died frees it then.
        let hold = deadline.saturating_duration_since(Instant::now());
        let claim = self
            .uploads
            .claim_upload(slot, hold)
            .await
            .map_err(|e| store_failure("claiming the film's upload", e, chunk_index))?;
        match claim {
            UploadClaim::Ready(file) => Ok(Some(file)),
            UploadClaim::Processing { file, since } => self
                .until_active(lease, slot, file, since, deadline, chunk_index)
                .await
                .map(Some),
            UploadClaim::Claimed { token } => self
                .upload_film(lease, slot, token, request, deadline)
                .await
                .map(Some),
            UploadClaim::Busy { account, wait } => {
                tracing::debug!(key = lease.number(), uploader_key = %account,
                    claim_s = wait.map(|w| w.as_secs_f64()),
                    "another worker is uploading the film; waiting");
                Ok(None)
            }
            UploadClaim::Failed { account, error } => Err(Failure::Final(AnalyzeError::Provider {
                chunk_index,
                analyzer: NAME,
                message: format!("gemini could not process the film (key {account}): {error}"),
                retryable: false,
            })),
        }
    }

    /// Uploads the film as the claim holder `token`, records the file and
    /// waits until it is ACTIVE. A failure that may pass gives the claim
    /// back, so that the next worker uploads at once.
    async fn upload_film(
        &self,
        lease: &KeyLease<'_>,
        slot: &UploadSlot,
        token: uuid::Uuid,
        request: &ChunkRequest,
        deadline: Instant,
    ) -> Result<ProviderFile, Failure> {
        let key = lease.number();
        let chunk_index = request.chunk_index;
        let upload = self.retrying("uploading the film", key, deadline, || {
            self.upload_once(lease, request, deadline)
        });
        let remote = match upload.await {
            Ok(remote) => remote,
            Err(failure) => {
                self.release(slot, token).await;
                return Err(failure);
            }
        };
        let file = remote.as_provider_file(source_mime_type(request));
        tracing::info!(key, file = %file.name, state = %remote.state, "film uploaded to gemini");
        match remote.state.as_str() {
            "ACTIVE" => {
                self.save(slot, Some(token), &file, true).await;
                Ok(file)
            }
            "FAILED" => {
                let detail = remote.failure_detail();
                self.fail(slot, Some(token), None, &detail).await;
                Err(failed_film(chunk_index, key, &detail))
            }
            _ => {
                self.save(slot, Some(token), &file, false).await;
                self.until_active(lease, slot, file, Duration::ZERO, deadline, chunk_index)
                    .await
            }
        }
    }

    /// Polls `file` until Gemini says ACTIVE (recording it) or FAILED (a
    /// permanent failure, recorded for every later chunk). The file has
    /// been PROCESSING for `since` already; past the processing bound the
    /// film is given up.
    async fn until_active(
        &self,
        lease: &KeyLease<'_>,
        slot: &UploadSlot,
        file: ProviderFile,
        since: Duration,
        deadline: Instant,
        chunk_index: u32,
    ) -> Result<ProviderFile, Failure> {
        let key = lease.number();
        let give_up = Instant::now() + self.processing_wait.saturating_sub(since);
        loop {
            let remote = self.file_state(lease, &file.name, deadline).await?;
            match remote.state.as_str() {
                "ACTIVE" => {
                    self.save(slot, None, &file, true).await;
                    tracing::info!(key, file = %file.name, "gemini file active");
                    return Ok(file);
                }
                "FAILED" => {
                    let detail = remote.failure_detail();
                    self.fail(slot, None, Some(&file.name), &detail).await;
                    return Err(failed_film(chunk_index, key, &detail));
                }
                state => {
                    tracing::debug!(key, file = %file.name, state, "gemini file not active yet")
                }
            }
            let now = Instant::now();
            if now >= give_up {
                let detail = format!(
                    "the file was still processing {} s after the upload",
                    self.processing_wait.as_secs()
                );
                self.fail(slot, None, Some(&file.name), &detail).await;
                return Err(failed_film(chunk_index, key, &detail));
            }
            if now + self.poll_interval + TRY_RESERVE >= deadline {
                return Err(Failure::Transient(
                    "the film's file was still processing at the deadline".into(),
                ));
            }
            tokio::time::sleep(self.poll_interval.min(give_up - now)).await;
        }
    }

    /// One whole upload: opens the source, starts a session, streams the
    /// bytes. Tried again as a whole, since a stream cannot be rewound.
    async fn upload_once(
        &self,
        lease: &KeyLease<'_>,
        request: &ChunkRequest,
        deadline: Instant,
    ) -> Result<RemoteFile, Failure> {
        let source = self.open_source(request, deadline).await?;
        let session = self.start_upload(lease, request, &source, deadline).await?;
        self.send_film(lease.number(), &session, source, deadline)
            .await
    }

    /// Starts a resumable upload; answers the session URL.
    async fn start_upload(
        &self,
        lease: &KeyLease<'_>,
        request: &ChunkRequest,
        source: &Source,
        deadline: Instant,
    ) -> Result<String, Failure> {
        let url = format!("{}/upload/v1beta/files", self.base_url);
        let mut builder = self
            .client
            .post(url)
            .header("x-goog-api-key", key_header(lease)?)
            .header("X-Goog-Upload-Protocol", "resumable")
            .header("X-Goog-Upload-Command", "start")
            .header("X-Goog-Upload-Header-Content-Type", source.mime_type)
            .json(&json!({ "file": { "display_name": format!("shotlist {}", request.video_id) } }));
        if let Some(length) = source.length {
            builder = builder.header("X-Goog-Upload-Header-Content-Length", length);
        }
        let (headers, _) = self
            .send(
                lease,
                "starting the upload",
                builder,
                deadline,
                About::Upload,
            )
            .await?;
        let session = headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::Refused("gemini started the upload without an upload URL".into())
            })?;
        match reqwest::Url::parse(session) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(session.to_string()),
            _ => Err(Failure::Refused(
                "gemini gave an upload URL that is not http(s)".into(),
            )),
        }
    }

    /// Sends the film's bytes to the upload session and finishes it. The
    /// session URL carries its own authorization, so the key is not sent
    /// there.
    async fn send_film(
        &self,
        key: usize,
        session: &str,
        source: Source,
        deadline: Instant,
    ) -> Result<RemoteFile, Failure> {
        let mut builder = self
            .client
            .post(session)
            .header("X-Goog-Upload-Command", "upload, finalize")
            .header("X-Goog-Upload-Offset", "0");
        if let Some(length) = source.length {
            builder = builder.header(CONTENT_LENGTH, length);
        }
        let builder = builder.body(source.body);
        let (_, body) = self
            .send_as(
                key,
                None,
                "sending the film",
                builder,
                deadline,
                About::Upload,
            )
            .await?;
        #[derive(Deserialize)]
        struct Uploaded {
            file: RemoteFile,
        }
        let uploaded: Uploaded = serde_json::from_str(&body)
            .map_err(|e| Failure::Transient(format!("the upload's answer is not a file: {e}")))?;
        checked_file_name(&uploaded.file.name)?;
        Ok(uploaded.file)
    }

    /// The file's state as the File API gives it, tried again on passing
    /// failures.
    async fn file_state(
        &self,
        lease: &KeyLease<'_>,
        name: &str,
        deadline: Instant,
    ) -> Result<RemoteFile, Failure> {
        checked_file_name(name)?;
        let url = format!("{}/v1beta/{name}", self.base_url);
        let body = self
            .retrying(
                "reading the file's state",
                lease.number(),
                deadline,
                || async {
                    let builder = self
                        .client
                        .get(&url)
                        .header("x-goog-api-key", key_header(lease)?);
                    let (_, body) = self
                        .send(
                            lease,
                            "reading the file's state",
                            builder,
                            deadline,
                            About::File(name),
                        )
                        .await?;
                    Ok(body)
                },
            )
            .await?;
        serde_json::from_str(&body)
            .map_err(|e| Failure::Transient(format!("the file's state is not a file: {e}")))
    }

    /// Asks the question about the chunk's clip of `file`.
    async fn generate(
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

    /// Opens the film for streaming: a local file, or the body of a GET of
    /// an http(s) URL.
    async fn open_source(
        &self,
        request: &ChunkRequest,
        deadline: Instant,
    ) -> Result<Source, Failure> {
        let chunk_index = request.chunk_index;
        let mime_type = source_mime_type(request);
        let source = request.source.as_str();
        if source.starts_with("http://") || source.starts_with("https://") {
            return self.open_url(request, mime_type, deadline).await;
        }
        if source.contains("://") {
            return Err(Failure::Final(AnalyzeError::BadRequest {
                chunk_index,
                detail: format!(
                    "gemini uploads local files and http(s) URLs, not {}",
                    shown_source(source)
                ),
            }));
        }
        let file = tokio::fs::File::open(source).await.map_err(|e| {
            Failure::Final(match e.kind() {
                std::io::ErrorKind::NotFound => AnalyzeError::SourceMissing {
                    chunk_index,
                    path: source.to_string(),
                },
                _ => AnalyzeError::Io {
                    chunk_index,
                    context: format!("opening {source} to upload it"),
                    source: e,
                },
            })
        })?;
        let length = file.metadata().await.map(|m| m.len()).map_err(|e| {
            Failure::Final(AnalyzeError::Io {
                chunk_index,
                context: format!("reading the size of {source}"),
                source: e,
            })
        })?;
        Ok(Source {
            body: reqwest::Body::from(file),
            length: Some(length),
            mime_type,
        })
    }

    async fn open_url(
        &self,
        request: &ChunkRequest,
        mime_type: &'static str,
        deadline: Instant,
    ) -> Result<Source, Failure> {
        let shown = shown_source(&request.source);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let response = self
            .client
            .get(&request.source)
            .timeout(remaining)
            .send()
            .await
            .map_err(|e| transport_failure("reading the film", e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Source {
                length: response.content_length(),
                body: reqwest::Body::wrap_stream(response.bytes_stream()),
                mime_type,
            });
        }
        if matches!(status.as_u16(), 408 | 429) || status.is_server_error() {
            return Err(Failure::Transient(format!(
                "reading the film {shown}: {status}"
            )));
        }
        Err(Failure::Final(
            if matches!(status.as_u16(), 403 | 404 | 410) {
                AnalyzeError::SourceMissing {
                    chunk_index: request.chunk_index,
                    path: shown,
                }
            } else {
                AnalyzeError::SourceUnreadable {
                    chunk_index: request.chunk_index,
                    path: shown,
                    detail: status.to_string(),
                }
            },
        ))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the next try
    /// would not start [`TRY_RESERVE`] before `deadline`.
    async fn retrying<T, F, Fut>(
        &self,
        step: &'static str,
        key: usize,
        deadline: Instant,
        attempt: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut tries = 1u32;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_max_times(RETRY_MAX_TIMES)
            .with_jitter();
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(Failure::is_transient)
            .adjust(|_, next| next.filter(|wait| Instant::now() + *wait + TRY_RESERVE < deadline))
            .notify(|failure, wait| {
                tries += 1;
                tracing::debug!(step, key, wait_ms = wait.as_millis() as u64, error = %failure,
                    "gemini call failed; trying again");
            })
            .await;
        result.map_err(|failure| match failure {
            Failure::Transient(message) if tries > 1 => {
                Failure::Transient(format!("{message} ({tries} tries)"))
            }
            other => other,
        })
    }

    /// Sends one request with `lease`'s key number in the logs.
    async fn send(
        &self,
        lease: &KeyLease<'_>,
        step: &'static str,
        builder: RequestBuilder,
        deadline: Instant,
        about: About<'_>,
    ) -> Result<(HeaderMap, String), Failure> {
        self.send_as(
            lease.number(),
            Some(lease.secret()),
            step,
            builder,
            deadline,
            about,
        )
        .await
    }

    /// Sends one request, cut at `deadline`, and reads its answer: the
    /// headers and body of a success, or the failure its status means.
    /// `secret` is scrubbed from anything kept of the answer.
    async fn send_as(
        &self,
        key: usize,
        secret: Option<&str>,
        step: &'static str,
        builder: RequestBuilder,
        deadline: Instant,
        about: About<'_>,
    ) -> Result<(HeaderMap, String), Failure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::Transient(format!("{step}: the deadline passed")));
        }
        let response = builder
            .timeout(remaining)
            .send()
            .await
            .map_err(|e| transport_failure(step, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| transport_failure(step, e))?;
        let body = match secret {
            Some(secret) => body.replace(secret, "[key]"),
            None => body,
        };
        tracing::trace!(step, key, status = status.as_u16(), body = %body, "gemini answer");
        if status.is_success() {
            return Ok((headers, body));
        }
        Err(status_failure(step, key, status, &headers, &body, about))
    }

    async fn save(
        &self,
        slot: &UploadSlot,
        token: Option<uuid::Uuid>,
        file: &ProviderFile,
        active: bool,
    ) {
        match self.uploads.save_upload(slot, token, file, active).await {
            Ok(true) => {}
            // The file works for this chunk all the same; later chunks
            // upload again or use what the store holds.
            Ok(false) => tracing::warn!(key = %slot.account, file = %file.name,
                "the film's upload record was taken over; this file is not recorded"),
            Err(e) => tracing::warn!(key = %slot.account, file = %file.name, error = %e,
                "cannot record the film's file"),
        }
    }

    async fn fail(
        &self,
        slot: &UploadSlot,
        token: Option<uuid::Uuid>,
        name: Option<&str>,
        error: &str,
    ) {
        if let Err(e) = self.uploads.fail_upload(slot, token, name, error).await {
            tracing::warn!(key = %slot.account, error = %e,
                "cannot record the film's failed upload");
        }
    }

    async fn release(&self, slot: &UploadSlot, token: uuid::Uuid) {
        // Not released, the claim runs out at the holder's deadline.
        if let Err(e) = self.uploads.release_upload(slot, token).await {
            tracing::warn!(key = %slot.account, error = %e, "cannot give back the upload claim");
        }
    }

    async fn forget(&self, slot: &UploadSlot, name: &str) {
        if let Err(e) = self.uploads.forget_upload(slot, name).await {
            tracing::warn!(key = %slot.account, file = %name, error = %e,
                "cannot forget the film's file");
        }
    }
}

/// The film could not be processed: permanent.
fn failed_film(chunk_index: u32, key: usize, detail: &str) -> Failure {
    Failure::Final(AnalyzeError::Provider {
        chunk_index,
        analyzer: NAME,
        message: format!("gemini could not process the film (key {key}): {detail}"),
        retryable: false,
    })
}

/// The key as a header value that `Debug` output hides.
fn key_header(lease: &KeyLease<'_>) -> Result<HeaderValue, Failure> {
    let mut value = HeaderValue::from_str(lease.secret()).map_err(|_| {
        Failure::Refused(format!(
            "key {} is not a valid header value",
            lease.number()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Checks that a file name from Gemini or the store is `files/{id}`, since
/// it becomes part of a URL path.
fn checked_file_name(name: &str) -> Result<(), Failure> {
    let id = name.strip_prefix("files/").unwrap_or("");
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if id.is_empty() || id.len() > 128 || !id.chars().all(valid) {
        return Err(Failure::Refused(format!(
            "gemini named the file {:?}, not files/{{id}}",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// A transport error (connect, timeout, broken body): always worth another
/// try. The URL is left out: an upload session's URL authorizes the upload.
fn transport_failure(step: &str, error: reqwest::Error) -> Failure {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    let error = error.without_url();
    Failure::Transient(format!("{step}: {kind}: {}", crate::error_chain(&error)))
}

/// What a non-success status means.
fn status_failure(
    step: &str,
    key: usize,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    about: About<'_>,
) -> Failure {
    let message = error_message(body);
    let said = format!("{step}: gemini answered {status} with key {key}: {message}");
    match (status.as_u16(), about) {
        (429, _) => {
            let rest = rest_hint(headers, body)
                .unwrap_or(DEFAULT_REST)
                .max(MIN_REST);
            Failure::RateLimited(rest)
        }
        (408 | 500 | 502 | 503 | 504, _) => Failure::Transient(said),
        (403 | 404, About::File(name)) => Failure::FileGone {
            name: name.to_string(),
            detail: said,
        },
        (403 | 404, About::Question(name)) if message.to_ascii_lowercase().contains("file") => {
            Failure::FileGone {
                name: name.to_string(),
                detail: said,
            }
        }
        _ => Failure::Refused(said),
    }
}

/// Google's `error.status` and `error.message`, or the start of the body.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: GoogleError,
    }
    #[derive(Deserialize)]
    struct GoogleError {
        status: Option<String>,
        message: Option<String>,
    }
    let text = match serde_json::from_str::<Envelope>(body) {
        Ok(Envelope { error }) => match (error.status, error.message) {
            (Some(status), Some(message)) => format!("{status}: {message}"),
            (status, message) => status.or(message).unwrap_or_default(),
        },
        Err(_) => body.trim().to_string(),
    };
    if text.is_empty() {
        return "no message".to_string();
    }
    let mut short: String = text.chars().take(MESSAGE_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// The source without its query: a presigned URL's signature is a
/// credential.
fn shown_source(source: &str) -> String {
    source
        .split(['?', '#'])
        .next()
        .unwrap_or(source)
        .to_string()
}

/// The film's MIME type, from its file name's extension, else from the
/// container ffprobe found; MP4 when neither says. Gemini documents
/// video/mp4, mpeg, mov, avi, x-flv, mpg, webm, wmv and 3gpp; other types
/// are sent as they are, and Gemini refuses what it cannot read (a 400,
/// permanent, that names the type).
pub fn mime_type(source: &str, media: &MediaInfo) -> &'static str {
    let path = shown_source(source);
    let file = path.rsplit(['/', '\\']).next().unwrap_or(&path);
    let extension = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let by_extension = match extension.as_deref() {
        Some("mp4" | "m4v") => Some("video/mp4"),
        Some("mov" | "qt") => Some("video/mov"),
        Some("mpg" | "mpeg" | "m2v" | "m2p" | "vob") => Some("video/mpeg"),
        Some("webm") => Some("video/webm"),
        Some("mkv") => Some("video/x-matroska"),
        Some("avi") => Some("video/avi"),
        Some("flv") => Some("video/x-flv"),
        Some("wmv" | "asf") => Some("video/wmv"),
        Some("3gp" | "3gpp") => Some("video/3gpp"),
        Some("ts" | "m2ts" | "mts") => Some("video/mp2t"),
        _ => None,
    };
    by_extension.unwrap_or_else(|| {
        let format = media.format.as_str();
        if format.starts_with("mpeg") || format == "vob" {
            "video/mpeg"
        } else if format.contains("webm") {
            "video/webm"
        } else if format == "avi" {
            "video/avi"
        } else if format == "flv" {
            "video/x-flv"
        } else if format == "asf" {
            "video/wmv"
        } else {
            "video/mp4"
        }
    })
}

fn source_mime_type(request: &ChunkRequest) -> &'static str {
    mime_type(&request.source, &request.media)
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
    use crate::time::Fps;

    fn media(format: &str) -> MediaInfo {
        MediaInfo {
            fps: Fps::new(25, 1).unwrap(),
            duration_frames: 10_000,
            start_offset_seconds: 0.52,
            has_audio: true,
            sound_end_seconds: None,
            width: 320,
            height: 240,
            codec: "h264".into(),
            format: format.into(),
        }
    }

    fn request(start_frame: i64, end_frame: i64, fps: Fps) -> ChunkRequest {
        ChunkRequest {
            video_id: uuid::Uuid::nil(),
            chunk_index: 3,
            source: "/films/a.mp4".into(),
            media: MediaInfo {
                fps,
                ..media("mov,mp4,m4a,3gp,3g2,mj2")
            },
            start_frame,
            end_frame,
            deadline: None,
        }
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
    fn base_urls_and_models_are_checked() {
        assert_eq!(
            checked_base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(checked_base_url("ftp://x")
            .unwrap_err()
            .contains(BASE_URL_VAR));
        assert!(checked_base_url("https://x/?key=1").is_err());
        assert!(checked_base_url("https://user:pw@x").is_err());
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
    fn offsets_are_film_seconds_without_the_container_start() {
        let (start, end) = clip_offsets(&request(4_500, 9_000, Fps::new(25, 1).unwrap()));
        assert_eq!((start.as_str(), end.as_str()), ("180.000s", "360.000s"));
        let ntsc = Fps::new(30_000, 1_001).unwrap();
        let (start, end) = clip_offsets(&request(5_000, 5_395, ntsc));
        assert_eq!((start.as_str(), end.as_str()), ("166.833s", "180.013s"));
    }

    #[test]
    fn mime_types_come_from_the_name_then_the_container() {
        let mp4 = media("mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(mime_type("/f/a.MOV", &mp4), "video/mov");
        assert_eq!(
            mime_type("https://b/x/film.mpg?X-Amz-Signature=s", &mp4),
            "video/mpeg"
        );
        assert_eq!(mime_type("/f/a.webm", &mp4), "video/webm");
        assert_eq!(mime_type("/f/noext", &media("mpeg")), "video/mpeg");
        assert_eq!(mime_type("/f/noext", &media("matroska,webm")), "video/webm");
        assert_eq!(mime_type("/f.d/noext", &mp4), "video/mp4");
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

    #[test]
    fn statuses_say_rest_retry_gone_or_refused() {
        let none = HeaderMap::new();
        let retry_info = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
        ]}})
        .to_string();
        let failure = |status: u16, body: &str, about| {
            status_failure(
                "x",
                1,
                StatusCode::from_u16(status).unwrap(),
                &none,
                body,
                about,
            )
        };
        assert!(matches!(
            failure(429, &retry_info, About::Upload),
            Failure::RateLimited(d) if d == Duration::from_secs(17)
        ));
        let no_hint = failure(429, "{}", About::Upload);
        assert!(matches!(no_hint, Failure::RateLimited(d) if d == DEFAULT_REST));
        assert!(failure(503, "", About::Upload).is_transient());
        let google = |status: &str, message: &str| {
            json!({"error": {"status": status, "message": message}}).to_string()
        };
        let gone = google(
            "PERMISSION_DENIED",
            "You do not have permission to access the File abc or it may not exist.",
        );
        assert!(matches!(
            failure(403, &gone, About::Question("files/abc")),
            Failure::FileGone { .. }
        ));
        let model = google(
            "NOT_FOUND",
            "models/nope is not found for API version v1beta",
        );
        assert!(matches!(
            failure(404, &model, About::Question("files/abc")),
            Failure::Refused(_)
        ));
        assert!(matches!(
            failure(404, "", About::File("files/abc")),
            Failure::FileGone { .. }
        ));
        let bad = google("INVALID_ARGUMENT", "Request contains an invalid argument.");
        let Failure::Refused(said) = failure(400, &bad, About::Upload) else {
            panic!("a 400 is permanent");
        };
        assert!(
            said.contains("INVALID_ARGUMENT: Request contains an invalid argument."),
            "{said}"
        );
        assert!(error_message(&"x".repeat(1000)).chars().count() <= MESSAGE_CHARS + 1);
    }

    #[test]
    fn file_names_must_be_files_slash_id() {
        assert!(checked_file_name("files/abc-123").is_ok());
        for bad in [
            "files/",
            "files/../models",
            "models/x",
            "files/a?b",
            "files/a/b",
        ] {
            assert!(checked_file_name(bad).is_err(), "{bad}");
        }
    }
}
