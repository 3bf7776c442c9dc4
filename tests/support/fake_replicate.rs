//! A fake Replicate API on 127.0.0.1, for the Replicate analyzer's tests.
//!
//! It speaks the wire format of the calls shotlist makes: `POST /v1/files`
//! (multipart, field `content`), `DELETE /v1/files/{id}`,
//! `POST /v1/models/{owner}/{name}/predictions` (with `Prefer: wait`),
//! `GET /v1/predictions/{id}` and `POST /v1/predictions/{id}/cancel`. Calls
//! must carry `Authorization: Bearer <key>` with one of the keys it was
//! started with; every call is recorded with the key's 1-based number, never
//! its value.
//!
//! What each prediction does is scripted ([`Script`]), per key or for any
//! key, in the order predictions are created; unscripted predictions
//! [echo](Outcome::Echo) the prompt's shot lines as a valid answer. Keys can
//! be throttled (429 with Replicate's "resets in ~Ns" detail) or refused
//! (401), creates can be made to fail with given statuses first, and
//! predictions can quote the caller's key in their logs, as a careless proxy
//! might.
//!
//! The server is a [`FakeServer`]: it serves tests on any runtime (or none),
//! its own logs never mix with a test's, and it stops when the
//! [`FakeReplicate`] is dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::fake_server::FakeServer;

/// How a scripted prediction ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Succeeds with the prompt's `Shot {n}: {start} s to {end} s` lines
    /// answered as valid JSON, split into several output strings.
    Echo,
    /// Succeeds with this `output` value (an array of strings, or anything).
    Output(Value),
    /// Fails with this `error`.
    Fail(String),
    /// Ends `canceled` (as if someone else canceled it).
    Canceled,
    /// Stays `processing` until canceled.
    Hang,
}

/// What one prediction does.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub outcome: Outcome,
    /// Polls answered `processing` before the outcome shows. With 0 and a
    /// `Prefer: wait` header, the create call answers with the outcome.
    pub pending_polls: u32,
}

impl Script {
    /// `outcome`, given at once to a create call that asks to wait.
    pub fn at_once(outcome: Outcome) -> Script {
        Script {
            outcome,
            pending_polls: 0,
        }
    }

    /// `outcome`, after `polls` polls answered `processing`.
    pub fn after_polls(outcome: Outcome, polls: u32) -> Script {
        Script {
            outcome,
            pending_polls: polls,
        }
    }
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// The 1-based number of the key used, `None` for an unknown key.
    pub key: Option<usize>,
    pub status: u16,
    pub at: Instant,
}

/// One uploaded file.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub id: String,
    pub key: usize,
    /// The multipart field's name.
    pub field: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// One created prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub key: usize,
    /// `owner/name` from the path.
    pub model: String,
    pub input: Value,
    /// The `Prefer` header, as sent.
    pub prefer: Option<String>,
    pub polls: u32,
    pub status: String,
}

#[derive(Default)]
struct Fake {
    base_url: String,
    keys: Vec<String>,
    scripts: VecDeque<Script>,
    key_scripts: HashMap<usize, VecDeque<Script>>,
    throttled: HashMap<usize, u32>,
    throttled_uploads: HashMap<usize, u32>,
    refused: HashSet<usize>,
    create_failures: VecDeque<u16>,
    calls: Vec<Call>,
    uploads: Vec<Upload>,
    deleted: Vec<String>,
    predictions: Vec<Live>,
    cancels: Vec<String>,
    media: HashMap<String, Bytes>,
    next_id: u64,
    /// Whether predictions quote their key's value in `logs`.
    quote_keys: bool,
}

struct Live {
    record: Prediction,
    script: Script,
}

type Shared = Arc<Mutex<Fake>>;

/// A running fake; stops when dropped.
pub struct FakeReplicate {
    server: FakeServer,
    state: Shared,
}

/// `n` distinct key values, made to be recognisable in a log.
pub fn keys(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("r8_FAKEsecret{i}x{}", "q".repeat(20)))
        .collect()
}

impl FakeReplicate {
    /// Starts a fake that accepts `keys`.
    ///
    /// # Panics
    /// When it cannot bind a port on 127.0.0.1: this is test support.
    pub fn start(keys: Vec<String>) -> FakeReplicate {
        let state: Shared = Arc::new(Mutex::new(Fake {
            keys,
            ..Fake::default()
        }));
        let server = FakeServer::start(router(state.clone()));
        // Nobody knows the address before `start` returns: no call can come
        // before the fake knows its own URL.
        lock(&state).base_url = server.base_url().to_string();
        FakeReplicate { server, state }
    }

    /// The base URL to give the analyzer (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    fn state(&self) -> MutexGuard<'_, Fake> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `script` for the next prediction created by any key.
    pub fn script(&self, script: Script) {
        self.state().scripts.push_back(script);
    }

    /// Queues `script` for the next prediction created with key `key`
    /// (1-based); it takes precedence over [`script`](Self::script).
    pub fn script_for_key(&self, key: usize, script: Script) {
        self.state()
            .key_scripts
            .entry(key)
            .or_default()
            .push_back(script);
    }

    /// Answers prediction creates with key `key` by a 429 whose detail says
    /// the limit resets in `seconds` (the create limit is the one reached).
    pub fn throttle(&self, key: usize, seconds: u32) {
        self.state().throttled.insert(key, seconds);
    }

    /// Answers file uploads with key `key` by a 429, as [`throttle`] does
    /// creates.
    ///
    /// [`throttle`]: FakeReplicate::throttle
    pub fn throttle_uploads(&self, key: usize, seconds: u32) {
        self.state().throttled_uploads.insert(key, seconds);
    }

    /// Answers every call with key `key` by a 401.
    pub fn refuse(&self, key: usize) {
        self.state().refused.insert(key);
    }

    /// Answers the next creates with these statuses (500, 503, 422...)
    /// before creating anything.
    pub fn fail_creates(&self, statuses: &[u16]) {
        self.state().create_failures.extend(statuses);
    }

    /// Makes every prediction's `logs` quote the value of the key that
    /// created it.
    pub fn quote_keys_in_logs(&self) {
        self.state().quote_keys = true;
    }

    /// Serves `bytes` without authorization at the returned URL, with byte
    /// ranges, as a film's source on a web server.
    pub fn serve_media(&self, name: &str, bytes: Vec<u8>) -> String {
        self.state()
            .media
            .insert(name.to_string(), Bytes::from(bytes));
        format!("{}/media/{name}", self.base_url())
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Every upload received, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state().uploads.clone()
    }

    /// The ids of the files deleted.
    pub fn deleted_files(&self) -> Vec<String> {
        self.state().deleted.clone()
    }

    /// Every prediction created, in order, as it stands now.
    pub fn predictions(&self) -> Vec<Prediction> {
        self.state()
            .predictions
            .iter()
            .map(|p| p.record.clone())
            .collect()
    }

    /// The ids of the predictions a cancel was asked for.
    pub fn cancels(&self) -> Vec<String> {
        self.state().cancels.clone()
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/files", post(upload))
        .route("/v1/files/{id}", delete(delete_file))
        .route("/v1/models/{owner}/{name}/predictions", post(create))
        .route("/v1/predictions/{id}", get(poll))
        .route("/v1/predictions/{id}/cancel", post(cancel))
        .route("/media/{name}", get(media))
        .with_state(state)
}

fn lock(state: &Shared) -> MutexGuard<'_, Fake> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn unauthorized() -> Response {
    detail(StatusCode::UNAUTHORIZED, "Unauthenticated")
}

fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "detail": text }))).into_response()
}

/// Answers a call with `handle`, given the key's number, when the call is
/// authorized (with a 401 when not), and records the call and its status.
fn serve(
    state: &Shared,
    method: &str,
    path: String,
    headers: &HeaderMap,
    handle: impl FnOnce(&mut Fake, usize) -> Response,
) -> Response {
    let mut fake = lock(state);
    let key = fake.authorize(headers);
    let response = match key {
        Some(key) => handle(&mut fake, key),
        None => unauthorized(),
    };
    fake.calls.push(Call {
        method: method.to_string(),
        path,
        key,
        status: response.status().as_u16(),
        at: Instant::now(),
    });
    response
}

impl Fake {
    /// The key's number, or `None` when the call is not authorized.
    fn authorize(&self, headers: &HeaderMap) -> Option<usize> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        let key = self.keys.iter().position(|k| k == token)? + 1;
        (!self.refused.contains(&key)).then_some(key)
    }

    fn throttle(&self, limits: &HashMap<usize, u32>, key: usize) -> Option<Response> {
        let seconds = limits.get(&key)?;
        let text = format!("Request was throttled. Your rate limit resets in ~{seconds}s.");
        Some(detail(StatusCode::TOO_MANY_REQUESTS, &text))
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:08}x", self.next_id)
    }

    fn next_script(&mut self, key: usize) -> Script {
        let keyed = self.key_scripts.get_mut(&key).and_then(VecDeque::pop_front);
        keyed
            .or_else(|| self.scripts.pop_front())
            .unwrap_or(Script::at_once(Outcome::Echo))
    }

    /// Changes key `key`'s prediction `id` with `change`, then answers it
    /// as it stands; 404 when the key has no such prediction.
    fn with_prediction(
        &mut self,
        id: &str,
        key: usize,
        change: impl FnOnce(&mut Live),
    ) -> Response {
        let Some(index) = self
            .predictions
            .iter()
            .position(|p| p.record.id == id && p.record.key == key)
        else {
            return not_found();
        };
        change(&mut self.predictions[index]);
        Json(self.json(&self.predictions[index])).into_response()
    }

    fn json(&self, live: &Live) -> Value {
        let p = &live.record;
        let (output, error) = match (p.status.as_str(), &live.script.outcome) {
            ("succeeded", Outcome::Echo) => (echo(&p.input), Value::Null),
            ("succeeded", Outcome::Output(output)) => (output.clone(), Value::Null),
            ("failed", Outcome::Fail(error)) => (Value::Null, json!(error)),
            _ => (Value::Null, Value::Null),
        };
        let url = format!("{}/v1/predictions/{}", self.base_url, p.id);
        let logs = match self.quote_keys {
            true => format!("authorized as {}", self.keys[p.key - 1]),
            false => String::new(),
        };
        json!({
            "id": p.id,
            "model": p.model,
            "version": "hidden",
            "input": p.input,
            "logs": logs,
            "output": output,
            "error": error,
            "status": p.status,
            "created_at": "2025-01-01T00:00:00.000Z",
            "urls": {
                "get": url,
                "cancel": format!("{url}/cancel"),
                "web": "https://replicate.example/p",
            },
        })
    }

    /// `POST /v1/files` with key `key`.
    fn upload(&mut self, key: usize, headers: &HeaderMap, body: &[u8]) -> Response {
        if let Some(throttled) = self.throttle(&self.throttled_uploads, key) {
            return throttled;
        }
        let parts = match content_type_boundary(headers).map(|b| multipart_parts(body, &b)) {
            Some(parts) if !parts.is_empty() => parts,
            _ => return detail(StatusCode::BAD_REQUEST, "expected multipart/form-data"),
        };
        let Some(part) = parts.into_iter().find(|p| p.name == "content") else {
            return detail(StatusCode::UNPROCESSABLE_ENTITY, "content: field required");
        };
        let id = self.new_id("file");
        let size = part.bytes.len();
        let answer = json!({
            "id": id,
            "name": part.filename,
            "content_type": part.content_type,
            "size": size,
            "etag": "fake",
            "checksums": {},
            "metadata": {},
            "created_at": "2025-01-01T00:00:00.000Z",
            "expires_at": "2025-01-02T00:00:00.000Z",
            "urls": { "get": format!("{}/v1/files/{id}", self.base_url) },
        });
        self.uploads.push(Upload {
            id,
            key,
            field: part.name,
            filename: part.filename,
            content_type: part.content_type,
            bytes: part.bytes,
        });
        (StatusCode::CREATED, Json(answer)).into_response()
    }

    /// `POST /v1/models/{model}/predictions` with key `key`.
    fn create(&mut self, key: usize, model: String, headers: &HeaderMap, body: &[u8]) -> Response {
        if let Some(throttled) = self.throttle(&self.throttled, key) {
            return throttled;
        }
        if let Some(status) = self.create_failures.pop_front() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return detail(status, "scripted failure");
        }
        let input = match check_input(self, key, body) {
            Ok(input) => input,
            Err(problem) => return detail(StatusCode::UNPROCESSABLE_ENTITY, &problem),
        };
        let prefer = headers
            .get("prefer")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let script = self.next_script(key);
        let waits = prefer.as_deref().is_some_and(|p| p.starts_with("wait"));
        let status = match waits {
            true => status_after(&script, 0),
            false => "starting",
        };
        let id = self.new_id("pred");
        let live = Live {
            record: Prediction {
                id,
                key,
                model,
                input,
                prefer,
                polls: 0,
                status: status.to_string(),
            },
            script,
        };
        let answer = self.json(&live);
        self.predictions.push(live);
        (StatusCode::CREATED, Json(answer)).into_response()
    }
}

/// The status a prediction shows after `polls` polls.
fn status_after(script: &Script, polls: u32) -> &'static str {
    if polls < script.pending_polls {
        return "processing";
    }
    match script.outcome {
        Outcome::Echo | Outcome::Output(_) => "succeeded",
        Outcome::Fail(_) => "failed",
        Outcome::Canceled => "canceled",
        Outcome::Hang => "processing",
    }
}

async fn upload(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/files".to_string();
    serve(&state, "POST", path, &headers, |fake, key| {
        fake.upload(key, &headers, &body)
    })
}

async fn delete_file(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/files/{id}");
    serve(&state, "DELETE", path, &headers, |fake, key| {
        if !fake.uploads.iter().any(|u| u.id == id && u.key == key) {
            return not_found();
        }
        fake.deleted.push(id);
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn create(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/models/{owner}/{name}/predictions");
    serve(&state, "POST", path, &headers, |fake, key| {
        fake.create(key, format!("{owner}/{name}"), &headers, &body)
    })
}

/// The create body's `input`, checked: a prompt, and one video that this
/// key's account uploaded.
fn check_input(fake: &Fake, key: usize, body: &[u8]) -> Result<Value, String> {
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let input = body.get("input").cloned().ok_or("input: field required")?;
    if !input.get("prompt").is_some_and(Value::is_string) {
        return Err("input.prompt: string required".into());
    }
    let videos = input
        .get("videos")
        .and_then(Value::as_array)
        .ok_or("input.videos: array required")?;
    for video in videos {
        let url = video.as_str().unwrap_or_default();
        let owned = fake
            .uploads
            .iter()
            .any(|u| u.key == key && url == format!("{}/v1/files/{}", fake.base_url, u.id));
        if !owned {
            return Err(format!("input.videos: {url} is not a file of this account"));
        }
    }
    Ok(input)
}

async fn poll(State(state): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("/v1/predictions/{id}");
    serve(&state, "GET", path, &headers, |fake, key| {
        fake.with_prediction(&id, key, |live| {
            if !is_terminal(&live.record.status) {
                live.record.polls += 1;
                live.record.status = status_after(&live.script, live.record.polls).to_string();
            }
        })
    })
}

async fn cancel(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/predictions/{id}/cancel");
    serve(&state, "POST", path, &headers, |fake, key| {
        fake.cancels.push(id.clone());
        fake.with_prediction(&id, key, |live| {
            if !is_terminal(&live.record.status) {
                live.record.status = "canceled".into();
            }
        })
    })
}

/// A served file, whole or the byte range asked for (`bytes=a-` or
/// `bytes=a-b`), as ffmpeg's http reader asks for them.
async fn media(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = lock(&state).media.get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = bytes.len();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: usize = a.parse().ok()?;
            let end: usize = if b.is_empty() {
                total.checked_sub(1)?
            } else {
                b.parse().ok()?
            };
            (start <= end && end < total).then_some((start, end))
        });
    let kind = [
        ("content-type", "video/mp4".to_string()),
        ("accept-ranges", "bytes".to_string()),
    ];
    match range {
        None => (StatusCode::OK, kind, bytes).into_response(),
        Some((start, end)) => {
            let span = ("content-range", format!("bytes {start}-{end}/{total}"));
            let [a, b] = kind;
            let part = bytes.slice(start..=end);
            (StatusCode::PARTIAL_CONTENT, [a, b, span], part).into_response()
        }
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "canceled" | "aborted")
}

/// The answer to the prompt's shot lines, as output strings of at most 40
/// characters.
fn echo(input: &Value) -> Value {
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let shots: Vec<Value> = prompt
        .lines()
        .filter_map(shot_line)
        .map(|(n, start, end)| {
            json!({
                "shot": n,
                "start": start,
                "end": end,
                "type": "wide",
                "description": format!("fake replicate: shot {n}"),
                "dialogue": [],
            })
        })
        .collect();
    let text = json!({ "shots": shots }).to_string();
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(40).map(|c| c.iter().collect()).collect();
    json!(pieces)
}

/// A line of the exact form `Shot {n}: {start} s to {end} s`, as the regex
/// `^Shot (\d+): ([0-9.]+) s to ([0-9.]+) s$` reads it.
pub fn shot_line(line: &str) -> Option<(u64, f64, f64)> {
    let rest = line.strip_prefix("Shot ")?;
    let (n, rest) = rest.split_once(": ")?;
    let (start, end) = rest.strip_suffix(" s")?.split_once(" s to ")?;
    let digits = |s: &str, dot: bool| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || (dot && c == '.'))
    };
    if !(digits(n, false) && digits(start, true) && digits(end, true)) {
        return None;
    }
    Some((n.parse().ok()?, start.parse().ok()?, end.parse().ok()?))
}

/// One part of a multipart body.
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

fn content_type_boundary(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("content-type")?.to_str().ok()?;
    let rest = value.strip_prefix("multipart/form-data")?;
    let boundary = rest
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?;
    Some(boundary.trim_matches('"').to_string())
}

/// The parts of a `multipart/form-data` body (RFC 7578).
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // The first delimiter has no line break before it.
    let mut data = b"\r\n".to_vec();
    data.extend_from_slice(body);
    let mut parts = Vec::new();
    let mut at = match find(&data, &delimiter, 0) {
        Some(at) => at + delimiter.len(),
        None => return parts,
    };
    while !data[at..].starts_with(b"--") {
        let Some(next) = find(&data, &delimiter, at) else {
            break;
        };
        if let Some(part) = parse_part(&data[at..next]) {
            parts.push(part);
        }
        at = next + delimiter.len();
    }
    parts
}

fn parse_part(raw: &[u8]) -> Option<Part> {
    let raw = raw.strip_prefix(b"\r\n")?;
    let split = find(raw, b"\r\n\r\n", 0)?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut part = Part {
        name: String::new(),
        filename: None,
        content_type: None,
        bytes: raw[split + 4..].to_vec(),
    };
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => {
                for param in value.split(';').map(str::trim) {
                    let unquote = |v: &str| v.trim_matches('"').to_string();
                    if let Some(v) = param.strip_prefix("name=") {
                        part.name = unquote(v);
                    } else if let Some(v) = param.strip_prefix("filename=") {
                        part.filename = Some(unquote(v));
                    }
                }
            }
            "content-type" => part.content_type = Some(value.trim().to_string()),
            _ => {}
        }
    }
    Some(part)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_shot_lines_are_echoed() {
        assert_eq!(shot_line("Shot 3: 1.5 s to 4 s"), Some((3, 1.5, 4.0)));
        assert_eq!(shot_line("Shot 3: 1.5 s to 4 s."), None);
        assert_eq!(shot_line(" Shot 3: 1.5 s to 4 s"), None);
        assert_eq!(shot_line("Shot x: 1 s to 4 s"), None);
        assert_eq!(shot_line("Shot 1: -1 s to 4 s"), None);
    }

    #[test]
    fn multipart_bodies_are_split_into_their_parts() {
        let body: &[u8] = b"--XY\r\n\
            Content-Disposition: form-data; name=\"content\"; filename=\"a.mp4\"\r\n\
            Content-Type: video/mp4\r\n\r\n\x00\x01\r\n--\x02\r\n\
            --XY\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nvideo/mp4\r\n\
            --XY--\r\n";
        let parts = multipart_parts(body, "XY");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "content");
        assert_eq!(parts[0].filename.as_deref(), Some("a.mp4"));
        assert_eq!(parts[0].content_type.as_deref(), Some("video/mp4"));
        assert_eq!(parts[0].bytes, b"\x00\x01\r\n--\x02");
        assert_eq!(parts[1].bytes, b"video/mp4");
    }
}
