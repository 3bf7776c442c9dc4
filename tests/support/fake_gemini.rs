//! A fake Gemini API (Generative Language API, v1beta) on 127.0.0.1, for
//! the Gemini analyzer's tests and for running whole films through the
//! pipeline without Google.
//!
//! It speaks the wire format the analyzer uses: the File API's resumable
//! upload (`POST /upload/v1beta/files` with `X-Goog-Upload-Command: start`,
//! then the bytes to the returned `x-goog-upload-url` with `upload,
//! finalize`), `GET /v1beta/files/{id}` (PROCESSING a set number of times,
//! then ACTIVE or FAILED) and `POST /v1beta/models/{model}:generateContent`.
//! Every call but the byte upload (whose session URL authorizes it) must
//! carry an accepted key in `x-goog-api-key`: a missing key is a 401, an
//! unknown one a 403, a key in the URL's query a 400. As with Google, a file
//! belongs to the project of the key that uploaded it, and each key here is
//! a project of its own: another key gets a 403 for it.
//!
//! `generateContent` answers from scripts (per key first, then shared, see
//! [`Reply`]) and otherwise in echo mode: it reads the prompt's lines of the
//! exact form `Shot {n}: {start} s to {end} s` and describes each shot in
//! valid JSON, times jittered by a few milliseconds. Upload sessions of a
//! key can be refused with 429s too ([`FakeGemini::rate_limit_uploads`]).
//!
//! For fault tests, one chunk can be given its own answer every time
//! ([`FakeGemini::script_clip`]), and uploads or answers can be held at a
//! [`Gate`] until the test opens it ([`FakeGemini::hold_uploads`],
//! [`FakeGemini::hold_generations`]): a test stops a worker in the middle
//! of its analyzer call that way. Dropping the fake lets every held call go.
//!
//! The server is a [`FakeServer`]: it outlives any test runtime, never
//! shares a tracing subscriber with the test, and stops when dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::fake_server::FakeServer;
use crate::gate::Gate;

/// One scripted answer of `generateContent`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Describe the prompt's shots (the default).
    Echo,
    /// A complete answer (`STOP`) with this text.
    Text(String),
    /// An answer cut at the output budget (`MAX_TOKENS`) with this text.
    MaxTokens(String),
    /// A candidate that ends with this finish reason (`SAFETY`...), no text.
    Finish(String),
    /// No candidate; `promptFeedback.blockReason` is this.
    PromptBlocked(String),
    /// 429 RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` of this delay.
    RateLimited(Duration),
    /// This status with a Google error body (500, 503, 400...).
    Status(u16),
    /// This status with a Google error body whose message quotes the
    /// call's key, as a careless proxy might.
    StatusQuotingKey(u16),
    /// 404 for the file named in the request, as for a deleted file.
    FileNotFound,
    /// Waits this long, then answers in echo mode.
    Slow(Duration),
    /// Never answers while the fake runs, as a provider that hangs: the
    /// caller's own timeout has to end the call.
    Stall,
}

/// How a file's processing ends.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    Active,
    /// FAILED, with this error message.
    Failed(String),
}

/// What the fake has seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Upload sessions started.
    pub uploads_started: u32,
    /// Uploads whose bytes arrived and were finalized.
    pub uploads_finalized: u32,
    /// Bytes received by all uploads.
    pub bytes_received: u64,
    /// `GET /v1beta/files/{id}` calls.
    pub file_polls: u32,
    /// `generateContent` calls per key number (1-based), scripted ones too.
    pub generate_calls: BTreeMap<usize, u32>,
    /// The key numbers of all accepted calls.
    pub keys_seen: BTreeSet<usize>,
    /// Calls refused for a missing, unknown or misplaced key.
    pub refused_keys: u32,
    /// Upload sessions refused with a 429.
    pub uploads_rate_limited: u32,
}

impl Counters {
    /// `generateContent` calls over all keys.
    pub fn generate_total(&self) -> u32 {
        self.generate_calls.values().sum()
    }
}

/// One finished upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// The key number that started it.
    pub key: usize,
    /// The file it made (`files/...`).
    pub name: String,
    /// The headers of the start call (lower-case names), the key left out.
    pub start_headers: BTreeMap<String, String>,
    /// The start call's JSON body.
    pub start_body: Value,
    /// The headers of the byte upload (lower-case names).
    pub upload_headers: BTreeMap<String, String>,
    /// Whether the byte upload carried `x-goog-api-key` (it needs none).
    pub key_sent: bool,
    pub bytes: u64,
    /// [`fnv1a`] of the bytes.
    pub digest: u64,
}

/// One `generateContent` call.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub key: usize,
    /// The model named in the path.
    pub model: String,
    pub body: Value,
    /// The URL's query, which must never hold the key.
    pub query: Option<String>,
}

/// The FNV-1a hash of `bytes`, as the fake computes it over an upload.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fnv1a_more(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` distinct key values, easy to find in a log.
pub fn keys(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("AIzaFAKEgeminiKEY{i}x{}", "z".repeat(24)))
        .collect()
}

struct Session {
    key: usize,
    start_headers: BTreeMap<String, String>,
    start_body: Value,
    mime_type: String,
}

struct FakeFile {
    /// The key number whose project owns it.
    owner: usize,
    mime_type: String,
    polls_left: u32,
    outcome: FileOutcome,
}

#[derive(Default)]
struct Fake {
    base_url: String,
    keys: Vec<String>,
    key_scripts: HashMap<usize, VecDeque<Reply>>,
    shared_script: VecDeque<Reply>,
    fallback: Option<Reply>,
    processing_polls: u32,
    outcome: Option<FileOutcome>,
    upload_delay: Duration,
    /// Per key number: how many more upload sessions get a 429, and the
    /// rest it asks for.
    upload_limits: HashMap<usize, (u32, Duration)>,
    sessions: HashMap<u64, Session>,
    files: HashMap<String, FakeFile>,
    next_id: u64,
    counters: Counters,
    uploads: Vec<Upload>,
    generations: Vec<Generation>,
    /// Answers for the clip starting at the key's `start_offset`
    /// (`"15.000s"`), every time, before any script.
    clip_replies: HashMap<String, Reply>,
    /// Where upload sessions wait before they are started.
    upload_gate: Option<Gate>,
    /// Where `generateContent` calls wait before they are answered.
    generate_gate: Option<Gate>,
    /// Opened when the fake is dropped: stalled and held calls end then.
    stopping: Option<Gate>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(state: &Shared) -> MutexGuard<'_, Fake> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake; stopped when dropped.
pub struct FakeGemini {
    server: FakeServer,
    state: Shared,
}

impl FakeGemini {
    /// Starts a fake that accepts `keys`, each its own project.
    ///
    /// # Panics
    /// When it cannot bind a port on 127.0.0.1: this is test support.
    pub fn start(keys: Vec<String>) -> FakeGemini {
        let state: Shared = Arc::new(Mutex::new(Fake {
            keys,
            stopping: Some(Gate::closed()),
            ..Fake::default()
        }));
        let server = FakeServer::start(router(state.clone()));
        // Nobody knows the address before `start` returns: no call can come
        // before the fake knows its own URL.
        lock(&state).base_url = server.base_url().to_string();
        FakeGemini { server, state }
    }

    /// The base URL to give the analyzer (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    fn state(&self) -> MutexGuard<'_, Fake> {
        lock(&self.state)
    }

    /// Queues answers for calls made with key number `key` (1-based); they
    /// come before the shared script.
    pub fn script_key(&self, key: usize, replies: impl IntoIterator<Item = Reply>) {
        self.state()
            .key_scripts
            .entry(key)
            .or_default()
            .extend(replies);
    }

    /// Queues answers for calls with any key.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state().shared_script.extend(replies);
    }

    /// What calls get once the scripts are used up (echo by default).
    pub fn set_fallback(&self, reply: Reply) {
        self.state().fallback = Some(reply);
    }

    /// New files answer PROCESSING to this many polls before their outcome.
    pub fn set_processing_polls(&self, polls: u32) {
        self.state().processing_polls = polls;
    }

    /// How new files' processing ends (ACTIVE by default).
    pub fn set_file_outcome(&self, outcome: FileOutcome) {
        self.state().outcome = Some(outcome);
    }

    /// How long the byte upload takes before it is answered.
    pub fn set_upload_delay(&self, delay: Duration) {
        self.state().upload_delay = delay;
    }

    /// Refuses the next `times` upload sessions started with key number
    /// `key` (1-based) with a 429 asking for a rest of `delay`.
    pub fn rate_limit_uploads(&self, key: usize, times: u32, delay: Duration) {
        self.state().upload_limits.insert(key, (times, delay));
    }

    /// Answers every `generateContent` call about the clip that starts at
    /// `start_offset` (as the request says it, e.g. `"15.000s"`) with
    /// `reply`, before any script: one chunk of a film fails every time.
    pub fn script_clip(&self, start_offset: &str, reply: Reply) {
        self.state()
            .clip_replies
            .insert(start_offset.to_string(), reply);
    }

    /// Holds every upload session from now on until the returned gate is
    /// opened (or the fake dropped); the gate counts the held calls.
    pub fn hold_uploads(&self) -> Gate {
        let gate = Gate::closed();
        self.state().upload_gate = Some(gate.clone());
        gate
    }

    /// Holds every `generateContent` call from now on, once counted and
    /// recorded, until the returned gate is opened (or the fake dropped).
    pub fn hold_generations(&self) -> Gate {
        let gate = Gate::closed();
        self.state().generate_gate = Some(gate.clone());
        gate
    }

    /// Deletes every file, as when they expire.
    pub fn delete_files(&self) {
        self.state().files.clear();
    }

    pub fn counters(&self) -> Counters {
        self.state().counters.clone()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.state().uploads.clone()
    }

    pub fn generations(&self) -> Vec<Generation> {
        self.state().generations.clone()
    }
}

impl Drop for FakeGemini {
    /// Lets every held or stalled call go, so that the server's graceful
    /// shutdown does not wait for them.
    fn drop(&mut self) {
        let fake = self.state();
        let gates = [&fake.upload_gate, &fake.generate_gate, &fake.stopping];
        gates.into_iter().flatten().for_each(Gate::open);
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/upload/v1beta/files", post(upload))
        .route("/v1beta/files/{id}", get(file_state))
        .route("/v1beta/models/{call}", post(generate))
        .with_state(state)
}

/// A Google error response.
fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": reason}});
    (status, Json(body)).into_response()
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str() != "x-goog-api-key")
        .map(|(name, value)| {
            let value = value.to_str().unwrap_or("(not text)").to_string();
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// The key number of the call's key, or the response refusing it.
fn check_key(
    state: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<usize, Box<Response>> {
    let mut fake = lock(state);
    let in_url = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("key=")));
    let given = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let known = given.and_then(|given| fake.keys.iter().position(|k| k == given));
    let (status, reason, message) = match (in_url, given, known) {
        (true, _, _) => (
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the fake refuses keys in the URL: send x-goog-api-key",
        ),
        (false, None, _) => (
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Method doesn't allow unregistered callers. Please use an API key.",
        ),
        (false, Some(_), None) => (
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "API key not valid. Please pass a valid API key.",
        ),
        (false, Some(_), Some(index)) => {
            fake.counters.keys_seen.insert(index + 1);
            return Ok(index + 1);
        }
    };
    fake.counters.refused_keys += 1;
    Err(Box::new(google_error(status, reason, message)))
}

async fn upload(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match query.get("upload_id") {
        Some(id) => finish_upload(state, id, headers, body).await,
        None => start_upload(state, query, headers, body).await,
    }
}

async fn start_upload(
    state: Shared,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query_text = query
        .keys()
        .map(|k| format!("{k}="))
        .collect::<Vec<_>>()
        .join("&");
    let key = match check_key(&state, &headers, Some(&query_text)) {
        Ok(key) => key,
        Err(refused) => return *refused,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-goog-upload-protocol") != Some("resumable")
        || header("x-goog-upload-command") != Some("start")
    {
        let message = "expected X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start";
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
    }
    let gate = lock(&state).upload_gate.clone();
    if let Some(gate) = gate {
        gate.pass().await;
    }
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let start_body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut fake = lock(&state);
    if let Some((times, delay)) = fake.upload_limits.get_mut(&key) {
        if *times > 0 {
            *times -= 1;
            let delay = *delay;
            fake.counters.uploads_rate_limited += 1;
            return rate_limited(delay);
        }
    }
    fake.next_id += 1;
    let id = fake.next_id;
    fake.counters.uploads_started += 1;
    let mime_type = header("x-goog-upload-header-content-type")
        .unwrap_or("video/mp4")
        .to_string();
    fake.sessions.insert(
        id,
        Session {
            key,
            start_headers: header_map(&headers),
            start_body,
            mime_type,
        },
    );
    let url = format!(
        "{}/upload/v1beta/files?upload_id=session{id}&upload_protocol=resumable",
        fake.base_url
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("x-goog-upload-url", url)
        .header("x-goog-upload-status", "active")
        .body(Body::empty())
        .expect("a valid response")
}

async fn finish_upload(state: Shared, id: &str, headers: HeaderMap, body: Body) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id: Option<u64> = id.strip_prefix("session").and_then(|n| n.parse().ok());
    let session = id.and_then(|id| lock(&state).sessions.remove(&id));
    let Some(session) = session else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such upload session");
    };
    if header("x-goog-upload-command") != Some("upload, finalize")
        || header("x-goog-upload-offset") != Some("0")
    {
        let message = "expected X-Goog-Upload-Command: upload, finalize at offset 0";
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
    }
    let (mut bytes, mut digest) = (0u64, fnv1a(&[]));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "broken body");
        };
        bytes += chunk.len() as u64;
        digest = fnv1a_more(digest, &chunk);
    }
    let delay = lock(&state).upload_delay;
    tokio::time::sleep(delay).await;
    let mut fake = lock(&state);
    let name = format!("files/fake{:04}", id.unwrap_or_default());
    let file = FakeFile {
        owner: session.key,
        mime_type: session.mime_type.clone(),
        polls_left: fake.processing_polls,
        outcome: fake.outcome.clone().unwrap_or(FileOutcome::Active),
    };
    let answer = json!({"file": file_json(&fake.base_url, &name, &file, "PROCESSING")});
    fake.files.insert(name.clone(), file);
    fake.counters.uploads_finalized += 1;
    fake.counters.bytes_received += bytes;
    fake.uploads.push(Upload {
        key: session.key,
        name,
        start_headers: session.start_headers,
        start_body: session.start_body,
        upload_headers: header_map(&headers),
        key_sent: headers.contains_key("x-goog-api-key"),
        bytes,
        digest,
    });
    (
        StatusCode::OK,
        [("x-goog-upload-status", "final")],
        Json(answer),
    )
        .into_response()
}

fn file_json(base_url: &str, name: &str, file: &FakeFile, state: &str) -> Value {
    let mut value = json!({
        "name": name,
        "displayName": "shotlist",
        "mimeType": file.mime_type,
        "uri": format!("{base_url}/v1beta/{name}"),
        "state": state,
        "expirationTime": "2099-01-01T00:00:00.000000Z",
    });
    if let (FileOutcome::Failed(message), "FAILED") = (&file.outcome, state) {
        value["error"] = json!({"code": 3, "message": message});
    }
    value
}

/// The "you cannot see this file" answer Google gives for a file of another
/// project or one that does not exist.
fn no_file_access(name: &str) -> Response {
    let message =
        format!("You do not have permission to access the File {name} or it may not exist.");
    google_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", &message)
}

async fn file_state(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = match check_key(&state, &headers, None) {
        Ok(key) => key,
        Err(refused) => return *refused,
    };
    let name = format!("files/{id}");
    let mut fake = lock(&state);
    fake.counters.file_polls += 1;
    let base_url = fake.base_url.clone();
    let Some(file) = fake.files.get_mut(&name) else {
        let message = format!("File {name} not found.");
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", &message);
    };
    if file.owner != key {
        return no_file_access(&name);
    }
    let shown = if file.polls_left > 0 {
        file.polls_left -= 1;
        "PROCESSING"
    } else {
        match file.outcome {
            FileOutcome::Active => "ACTIVE",
            FileOutcome::Failed(_) => "FAILED",
        }
    };
    Json(file_json(&base_url, &name, file, shown)).into_response()
}

async fn generate(
    State(state): State<Shared>,
    Path(call): Path<String>,
    query: axum::extract::RawQuery,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = match check_key(&state, &headers, query.0.as_deref()) {
        Ok(key) => key,
        Err(refused) => return *refused,
    };
    let Some(model) = call.strip_suffix(":generateContent") else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method");
    };
    let reply = {
        let mut fake = lock(&state);
        *fake.counters.generate_calls.entry(key).or_default() += 1;
        fake.generations.push(Generation {
            key,
            model: model.to_string(),
            body: body.clone(),
            query: query.0.clone(),
        });
        let clip = body
            .pointer("/contents/0/parts/0/video_metadata/start_offset")
            .and_then(Value::as_str)
            .and_then(|start| fake.clip_replies.get(start))
            .cloned();
        let scripted = || fake.key_scripts.get_mut(&key).and_then(VecDeque::pop_front);
        let reply = clip
            .or_else(scripted)
            .or_else(|| fake.shared_script.pop_front())
            .or_else(|| fake.fallback.clone())
            .unwrap_or(Reply::Echo);
        (reply, fake.generate_gate.clone(), fake.stopping.clone())
    };
    let (reply, gate, stopping) = reply;
    if let Some(gate) = gate {
        gate.pass().await;
    }
    let uri = body
        .pointer("/contents/0/parts/0/file_data/file_uri")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = uri
        .rsplit_once("/v1beta/")
        .map(|(_, n)| n.to_string())
        .unwrap_or_default();
    match reply {
        Reply::RateLimited(delay) => rate_limited(delay),
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = match code {
                400 => "INVALID_ARGUMENT",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "INTERNAL",
            };
            google_error(status, reason, &format!("scripted {code}"))
        }
        Reply::StatusQuotingKey(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
            let value = lock(&state).keys[key - 1].clone();
            let message = format!("API key {value} not valid. Please pass a valid API key.");
            google_error(status, "INVALID_ARGUMENT", &message)
        }
        Reply::FileNotFound => {
            let message = format!("File {name} not found.");
            google_error(StatusCode::NOT_FOUND, "NOT_FOUND", &message)
        }
        Reply::Stall => {
            if let Some(stopping) = stopping {
                stopping.pass().await;
            }
            google_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "stopping")
        }
        reply => {
            if let Some(refused) = check_file(&state, key, &name) {
                return refused;
            }
            answer(reply, &body).await
        }
    }
}

/// Refuses a question about a file the key cannot use.
fn check_file(state: &Shared, key: usize, name: &str) -> Option<Response> {
    let fake = lock(state);
    let Some(file) = fake.files.get(name) else {
        return Some(no_file_access(name));
    };
    if file.owner != key {
        return Some(no_file_access(name));
    }
    let active = file.polls_left == 0 && file.outcome == FileOutcome::Active;
    if !active {
        let message =
            format!("The File {name} is not in an ACTIVE state and usage is not allowed.");
        return Some(google_error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &message,
        ));
    }
    None
}

fn rate_limited(delay: Duration) -> Response {
    let body = json!({"error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": format!("{}s", delay.as_secs())}
        ]
    }});
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

async fn answer(reply: Reply, body: &Value) -> Response {
    let candidate = |text: &str, finish: &str| {
        json!({"candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish,
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "candidatesTokenCount": 100,
            "totalTokenCount": 1100
        }})
    };
    let answer = match reply {
        Reply::Text(text) => candidate(&text, "STOP"),
        Reply::MaxTokens(text) => candidate(&text, "MAX_TOKENS"),
        Reply::Finish(reason) => json!({"candidates": [{"finishReason": reason, "index": 0}]}),
        Reply::PromptBlocked(reason) => json!({"promptFeedback": {"blockReason": reason}}),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            candidate(&echo(&prompt_of(body)), "STOP")
        }
        _ => candidate(&echo(&prompt_of(body)), "STOP"),
    };
    Json(answer).into_response()
}

/// The text parts of the request's contents, joined by newlines.
fn prompt_of(body: &Value) -> String {
    let parts = body
        .pointer("/contents/0/parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The shots of the prompt's lines `Shot {n}: {start} s to {end} s`
/// (`^Shot (\d+): ([0-9.]+) s to ([0-9.]+) s$`, per line).
pub fn prompt_shots(prompt: &str) -> Vec<(u32, f64, f64)> {
    let number = |text: &str| {
        let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.');
        plain.then(|| text.parse::<f64>().ok()).flatten()
    };
    prompt
        .lines()
        .filter_map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (n, rest) = line.strip_prefix("Shot ")?.split_once(": ")?;
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (start, end) = rest.strip_suffix(" s")?.split_once(" s to ")?;
            Some((n.parse().ok()?, number(start)?, number(end)?))
        })
        .collect()
}

/// An answer describing every shot of the prompt, as the prompt asks: times
/// a few milliseconds off, every other shot with a line of dialogue.
pub fn echo(prompt: &str) -> String {
    // 1 to 4 ms early or late, never exact: a parser must not need the
    // listed times verbatim.
    let jitter = |n: u32, salt: u32| {
        let step = f64::from(n.wrapping_mul(7).wrapping_add(salt) % 8);
        let ms = if step < 4.0 { step - 4.0 } else { step - 3.0 };
        ms / 1000.0
    };
    let shots: Vec<Value> = prompt_shots(prompt)
        .into_iter()
        .map(|(n, start, end)| {
            let start_s = (start + jitter(n, 1)).max(0.0);
            let end_s = (end + jitter(n, 5)).max(start_s);
            let dialogue = if n % 2 == 0 {
                vec![json!({
                    "speaker": "",
                    "line": format!("fake line in shot {n}"),
                    "offscreen": true,
                    "start": start_s,
                })]
            } else {
                Vec::new()
            };
            json!({
                "shot": n,
                "start": start_s,
                "end": end_s,
                "type": "medium",
                "description": format!("fake model: shot {n} from {start} s to {end} s"),
                "dialogue": dialogue,
            })
        })
        .collect();
    json!({ "shots": shots }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lines_are_read_exactly_as_the_pattern_says() {
        let prompt = [
            "intro",
            "Shot 1: 0.000 s to 2.480 s",
            "Shot 12: 2.480 s to 10 s\r",
            " Shot 3: 1 s to 2 s",
            "Shot 4: 1 s to 2 s.",
            "Shot x: 1 s to 2 s",
            "Shot 5: -1 s to 2 s",
        ]
        .join("\n");
        let prompt = prompt.as_str();
        assert_eq!(prompt_shots(prompt), vec![(1, 0.0, 2.48), (12, 2.48, 10.0)]);
        let answer: Value = serde_json::from_str(&echo(prompt)).unwrap();
        let shots = answer["shots"].as_array().unwrap();
        assert_eq!(shots.len(), 2);
        assert_eq!(shots[1]["shot"], 12);
        let start = shots[1]["start"].as_f64().unwrap();
        assert!((start - 2.48).abs() <= 0.005 && start != 2.48, "{start}");
        assert_eq!(shots[1]["dialogue"].as_array().unwrap().len(), 1);
    }
}
