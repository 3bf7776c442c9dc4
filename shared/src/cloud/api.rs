//! The HTTP API behind API Gateway: submit, status, downloads, the progress
//! page, finalize and force-finalize.
//!
//! | method and path                    | who             | answers |
//! |------------------------------------|-----------------|---------|
//! | `POST /videos`                     | service or user | 202 new film, 200 known film |
//! | `GET /videos/{id}`                 | service, owner  | 200 progress, the sheet when done |
//! | `GET /videos/{id}/sheet.{ext}`     | service, owner  | 200 the file, 409 no sheet yet |
//! | `GET /videos/{id}/progress`        | anyone          | 200 the progress page (HTML) |
//! | `POST /videos/{id}/finalize`       | service         | 200 sheet, 409 not finished |
//! | `POST /videos/{id}/force-finalize` | service         | 200 sheet, 202 `{"retry": true}` |
//!
//! "Service" is a token of the service role. A sheet's `ext` is `json`,
//! `csv`, `xlsx` or `docx`; `?lang=` picks `en` (the default) or `ru`.
//!
//! Every request but the page's needs `Authorization: Bearer <Supabase JWT>`.
//! A missing or bad token is 401, a caller without rights 403, an unknown
//! film 404, a bad body or parameter 400; errors are JSON
//! `{"error": "...", "field": "..."}` where a field is to blame. No GET
//! changes anything.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::cloud::auth::{AuthError, Caller, Verifier};
use crate::cloud::messages::ChunkMessage;
use crate::cloud::queue::MessageQueue;
use crate::db::{Db, DbError, Submission, Submitted};
use crate::export::{Format, Lang};
use crate::page::{self, Download, DownloadError};
use crate::plan::PlanParams;
use crate::probe::{self, MediaInfo, ProbeOptions};
use crate::sheet::FilmDetails;

/// How far a submitted `durationSeconds` may be from what probing finds.
pub const DURATION_TOLERANCE_SECONDS: f64 = 1.0;

/// How long submit may spend probing, within API Gateway's 30 s.
pub const SUBMIT_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest request body read. A real one is a few hundred bytes; errors
/// quote what they refuse, and an answer quoting megabytes would pass
/// Lambda's 6 MB response limit and reach the caller as a 502.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest file a download answers with. Lambda answers at most 6 MB,
/// and API Gateway's base64 makes a binary body a third bigger; past this a
/// caller would get a bare 502 instead of an error saying why.
pub const MAX_DOWNLOAD_BYTES: usize = 4 * 1024 * 1024;

/// The endpoints; each Lambda function serves some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Submit,
    Status,
    Finalize,
    ForceFinalize,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Submit,
        Endpoint::Status,
        Endpoint::Finalize,
        Endpoint::ForceFinalize,
    ];
}

/// Where bucket keys are found: a local (or mounted) folder, or a URL prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRoot {
    Folder(PathBuf),
    Url(String),
}

impl SourceRoot {
    /// `SHOTLIST_SOURCE_ROOT`: an `http(s)://` prefix or a folder.
    pub fn parse(text: &str) -> Option<SourceRoot> {
        let text = text.trim();
        if text.is_empty() {
            None
        } else if text.starts_with("http://") || text.starts_with("https://") {
            Some(SourceRoot::Url(text.trim_end_matches('/').to_string()))
        } else {
            Some(SourceRoot::Folder(PathBuf::from(text)))
        }
    }
}

/// What the HTTP handlers share; built once per Lambda instance.
#[derive(Clone)]
pub struct Api {
    pub db: Db,
    pub verifier: Verifier,
    pub chunk_queue: Arc<dyn MessageQueue>,
    pub source_root: Option<SourceRoot>,
    pub plan: PlanParams,
    pub probe: ProbeOptions,
    /// Whether `http(s)` sources may be on loopback, private or link-local
    /// addresses. Off in the cloud: the functions would fetch whatever a
    /// caller names, including services only they can reach.
    pub allow_private_sources: bool,
}

/// A request that went wrong, as the answer to send.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: String,
    field: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, error: impl Into<String>) -> Failure {
        Failure {
            status,
            error: error.into(),
            field: None,
        }
    }

    fn field(field: &'static str, error: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut body = json!({ "error": self.error });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let response = respond(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Response::from_parts(parts, body);
        }
        response
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<DbError> for Failure {
    fn from(error: DbError) -> Failure {
        let (status, text) = page::db_answer(error);
        Failure::new(status, text)
    }
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        let (status, text) = error.answer();
        Failure::new(status, text)
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A matched route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Videos,
    Video(&'a str),
    /// `sheet.<extension>`: the extension as asked, not yet checked.
    Sheet(&'a str, &'a str),
    Progress(&'a str),
    Finalize(&'a str),
    ForceFinalize(&'a str),
}

/// Matches the end of the path, so a stage prefix (`/prod/videos`) is fine.
fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [.., "videos"] => Some(Route::Videos),
        [.., "videos", id] => Some(Route::Video(id)),
        [.., "videos", id, "finalize"] => Some(Route::Finalize(id)),
        [.., "videos", id, "force-finalize"] => Some(Route::ForceFinalize(id)),
        [.., "videos", id, "progress"] => Some(Route::Progress(id)),
        [.., "videos", id, file] => file
            .strip_prefix("sheet.")
            .map(|extension| Route::Sheet(id, extension)),
        _ => None,
    }
}

impl Api {
    /// Answers one request, serving only the `serves` endpoints.
    pub async fn handle(&self, serves: &[Endpoint], request: Request) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let answer = self.dispatch(serves, request).await;
        let response = answer.unwrap_or_else(Failure::into_response);
        tracing::info!(%method, path, status = response.status().as_u16(), "request");
        response
    }

    async fn dispatch(
        &self,
        serves: &[Endpoint],
        request: Request,
    ) -> Result<Response<Body>, Failure> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let not_found = || Failure::new(StatusCode::NOT_FOUND, format!("no route for {path}"));
        let matched = route(&path).ok_or_else(not_found)?;
        let (endpoint, allowed) = match matched {
            Route::Videos => (Endpoint::Submit, Method::POST),
            Route::Video(_) | Route::Sheet(..) | Route::Progress(_) => {
                (Endpoint::Status, Method::GET)
            }
            Route::Finalize(_) => (Endpoint::Finalize, Method::POST),
            Route::ForceFinalize(_) => (Endpoint::ForceFinalize, Method::POST),
        };
        if !serves.contains(&endpoint) {
            return Err(not_found());
        }
        if method != allowed {
            let mut response = Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} accepts {allowed} only"),
            )
            .into_response();
            response.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_str(allowed.as_str())
                    .unwrap_or(http::HeaderValue::from_static("POST")),
            );
            return Ok(response);
        }
        if let Route::Progress(id) = matched {
            // No token: a browser opening a link cannot send one, and the
            // page holds no data of any film (the same bytes for every id);
            // it asks the API for the film's progress with the token its
            // user gives it. Hence no database call either: the page does
            // not even tell whether the film exists.
            return match Uuid::parse_str(id) {
                Ok(_) => Ok(progress_page()),
                Err(_) => Err(not_found()),
            };
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let caller = self.verifier.verify(header)?;
        let body = request.body().as_ref();
        if body.len() > MAX_BODY_BYTES {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is {} bytes; at most {MAX_BODY_BYTES} are read",
                    body.len()
                ),
            ));
        }
        match matched {
            Route::Videos => self.submit(caller, body).await,
            Route::Video(id) => self.status(caller, parse_id(id)?).await,
            Route::Sheet(id, extension) => {
                let video_id = parse_id(id)?;
                let format = parse_format(extension)?;
                let lang = parse_lang(request.uri().query())?;
                self.download(caller, video_id, format, lang).await
            }
            Route::Progress(_) => Err(not_found()),
            Route::Finalize(id) => self.finalize(caller, parse_id(id)?).await,
            Route::ForceFinalize(id) => self.force_finalize(caller, parse_id(id)?, body).await,
        }
    }

    /// Registers a film (or finds it registered), stores its details, and
    /// queues its chunks unless another submission holds that claim.
    async fn submit(&self, caller: Caller, body: &[u8]) -> Result<Response<Body>, Failure> {
        if caller == Caller::Anonymous {
            return Err(forbidden("this token names no user; sign in first"));
        }
        let request = SubmitRequest::read(body)?;
        let (video_id, owner) = self.submitted_owner(caller, &request).await?;
        let (source, media) = self.probe_source(&request).await?;
        let submitted = self
            .db
            .submit_video(&Submission {
                video_id,
                owner_id: owner,
                source,
                media,
                plan: self.plan,
            })
            .await?;
        // Before the chunks are queued, so that the film's details are there
        // from its first chunk on; a resubmission without details keeps the
        // stored ones.
        if let Some(details) = &request.details {
            self.store_details(video_id, &submitted, details).await?;
        }
        if submitted.enqueue {
            self.enqueue_chunks(video_id, submitted.total_chunks)
                .await?;
        }
        Ok(submit_response(video_id, &submitted))
    }

    /// The film's id (the one asked for, else a new one) and its owner. A
    /// user submits as themself; the service for whomever it names, and a
    /// film it submits again keeps its owner unless it names another. Only
    /// the owner (or the service) may submit a known film again.
    async fn submitted_owner(
        &self,
        caller: Caller,
        request: &SubmitRequest,
    ) -> Result<(Uuid, Option<Uuid>), Failure> {
        let owner = match caller {
            Caller::Service => request.owner_id,
            Caller::User(id) if request.owner_id.is_some_and(|asked| asked != id) => {
                return Err(forbidden("ownerId must be your own user id"))
            }
            Caller::User(id) => Some(id),
            Caller::Anonymous => return Err(forbidden("this token names no user")),
        };
        let video_id = request.video_id.unwrap_or_else(Uuid::new_v4);
        match self.db.video_owner(video_id).await {
            Ok(existing) if !caller.may_access(existing) => Err(forbidden(format!(
                "video {video_id} belongs to another user"
            ))),
            Ok(existing) if caller == Caller::Service && request.owner_id.is_none() => {
                Ok((video_id, existing))
            }
            Ok(_) | Err(DbError::NotFound(_)) => Ok((video_id, owner)),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the workers will read the film, and what probing finds there
    /// (within [`SUBMIT_PROBE_TIMEOUT`]), checked against the duration the
    /// caller claims, if any.
    async fn probe_source(&self, request: &SubmitRequest) -> Result<(String, MediaInfo), Failure> {
        let location = &request.location;
        let source = self.resolve_source(location)?;
        if probe::is_remote(Path::new(&source)) && !self.allow_private_sources {
            check_public_host(&source).await?;
        }
        let probe_options = ProbeOptions {
            timeout: self.probe.timeout.min(SUBMIT_PROBE_TIMEOUT),
            ..self.probe.clone()
        };
        let media = probe::probe_with(Path::new(&source), &probe_options)
            .await
            .map_err(|e| {
                if e.is_retryable() {
                    Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                } else {
                    Failure::field(
                        "source",
                        format!(
                            "the source cannot be read as a video: {}",
                            shown(&e.to_string(), &source, location)
                        ),
                    )
                }
            })?;
        if let Some(claimed) = request.duration {
            let found = media.duration_seconds();
            if (claimed - found).abs() > DURATION_TOLERANCE_SECONDS {
                return Err(Failure::field(
                    "durationSeconds",
                    format!("durationSeconds is {claimed} but the film lasts {found:.3} s"),
                ));
            }
        }
        Ok((source, media))
    }

    /// Replaces the film's stored details. On failure the film stays
    /// registered, so the claim to queue its chunks is given back for the
    /// submission the caller is told to make again.
    async fn store_details(
        &self,
        video_id: Uuid,
        submitted: &Submitted,
        details: &FilmDetails,
    ) -> Result<(), Failure> {
        let Err(e) = self.db.set_video_details(video_id, details).await else {
            return Ok(());
        };
        if submitted.enqueue {
            self.release_enqueue(video_id).await;
        }
        let mut failure = Failure::from(e);
        failure.error = format!(
            "the film is registered but its details could not be stored; submit it again \
             with videoId {video_id}: {}",
            failure.error
        );
        Err(failure)
    }

    /// Sends one message per chunk, then marks the film queued; when a send
    /// fails, gives back the claim so that submitting again queues them.
    async fn enqueue_chunks(&self, video_id: Uuid, total_chunks: u32) -> Result<(), Failure> {
        let bodies = chunk_bodies(video_id, 0..total_chunks);
        if let Err(e) = self.chunk_queue.send_all(&bodies).await {
            tracing::error!(%video_id, error = %e, "cannot enqueue the chunks");
            self.release_enqueue(video_id).await;
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the film is registered but its chunks could not all be queued; submit it \
                     again with videoId {video_id}: {e}"
                ),
            ));
        }
        self.db.mark_enqueued(video_id).await?;
        tracing::info!(%video_id, chunks = total_chunks, "film submitted and queued");
        Ok(())
    }

    async fn status(&self, caller: Caller, video_id: Uuid) -> Result<Response<Body>, Failure> {
        self.check_access(caller, video_id).await?;
        let progress = page::progress_document(&self.db, video_id, |s| self.shown_sheet(s)).await?;
        Ok(respond(StatusCode::OK, &progress))
    }

    /// Gives back this submission's claim to queue the film's chunks, so
    /// that the next submission queues them at once.
    async fn release_enqueue(&self, video_id: Uuid) {
        if let Err(release) = self.db.release_enqueue(video_id).await {
            tracing::warn!(
                %video_id,
                error = %release,
                "cannot release the enqueue claim; it runs out by itself"
            );
        }
    }

    /// The film's sheet as a file: 409 while it has none.
    async fn download(
        &self,
        caller: Caller,
        video_id: Uuid,
        format: Format,
        lang: Lang,
    ) -> Result<Response<Body>, Failure> {
        self.check_access(caller, video_id).await?;
        let file = page::download(&self.db, video_id, format, lang, |sheet| {
            self.shown_sheet(sheet)
        })
        .await?;
        if file.bytes.len() > MAX_DOWNLOAD_BYTES {
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the {format} sheet of video {video_id} is {} bytes, more than the API can \
                     answer with ({MAX_DOWNLOAD_BYTES}); get it with shotlist export",
                    file.bytes.len()
                ),
            ));
        }
        Ok(file_response(file))
    }

    async fn finalize(&self, caller: Caller, video_id: Uuid) -> Result<Response<Body>, Failure> {
        service_only(caller, "finalize")?;
        let sheet = self.shown_sheet(self.db.finalize(video_id).await?);
        Ok(respond(StatusCode::OK, &json!({ "sheet": sheet })))
    }

    async fn force_finalize(
        &self,
        caller: Caller,
        video_id: Uuid,
        body: &[u8],
    ) -> Result<Response<Body>, Failure> {
        service_only(caller, "force-finalize")?;
        let retry = if body.iter().all(u8::is_ascii_whitespace) {
            false
        } else {
            let fields = json_object(body)?;
            only_fields(&fields, &["retry"])?;
            match fields.get("retry") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(Failure::field(
                        "retry",
                        format!("retry must be true or false, got {v}"),
                    ))
                }
            }
        };
        if retry {
            let open = self.db.unfinished_chunks(video_id).await?;
            let bodies = chunk_bodies(video_id, open.iter().copied());
            self.chunk_queue.send_all(&bodies).await.map_err(|e| {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("queueing: {e}"))
            })?;
            tracing::info!(%video_id, chunks = ?open, "unfinished chunks queued again");
            return Ok(respond(
                StatusCode::ACCEPTED,
                &json!({ "videoId": video_id, "requeuedChunks": open }),
            ));
        }
        let forced = self.db.force_finalize(video_id, "force-finalized").await?;
        tracing::info!(%video_id, chunks = ?forced.forced_chunks, "film force-finalized");
        let sheet = self.shown_sheet(self.db.finalize(video_id).await?);
        Ok(respond(
            StatusCode::OK,
            &json!({ "forcedChunks": forced.forced_chunks, "sheet": sheet }),
        ))
    }

    async fn check_access(&self, caller: Caller, video_id: Uuid) -> Result<(), Failure> {
        let owner = self.db.video_owner(video_id).await?;
        if caller.may_access(owner) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "video {video_id} belongs to another user"
            )))
        }
    }

    /// The sheet as callers see it: its source as they gave it (a bucket
    /// key without this deployment's source root, which may name internal
    /// folders or hosts).
    fn shown_sheet(&self, mut sheet: crate::sheet::Sheet) -> crate::sheet::Sheet {
        let root = match &self.source_root {
            Some(SourceRoot::Folder(root)) => root.to_string_lossy().into_owned(),
            Some(SourceRoot::Url(root)) => root.clone(),
            None => return sheet,
        };
        if let Some(source) = &sheet.source {
            if let Some(key) = source.strip_prefix(root.trim_end_matches('/')) {
                sheet.source = Some(key.trim_start_matches('/').to_string());
            }
        }
        sheet
    }

    /// Turns a submitted location into what ffmpeg reads: an `http(s)` URL
    /// as it is, a bucket key under `SHOTLIST_SOURCE_ROOT`.
    fn resolve_source(&self, location: &str) -> Result<String, Failure> {
        let bad = |detail: String| Failure::field("source", detail);
        if location.chars().any(char::is_control) {
            return Err(bad("source contains control characters".into()));
        }
        if location.starts_with("http://") || location.starts_with("https://") {
            if location.chars().any(char::is_whitespace) {
                return Err(bad("source URL contains spaces".into()));
            }
            return Ok(location.to_string());
        }
        if location.contains("://") {
            return Err(bad(format!(
                "source {location:?} uses a scheme other than http or https; give an http(s) \
                 URL or a bucket key"
            )));
        }
        let key = Path::new(location);
        let plain = key
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain || location.starts_with('/') || location.contains('\\') {
            return Err(bad(format!(
                "source {location:?} is not a plain bucket key: no leading '/', no '..'"
            )));
        }
        match &self.source_root {
            Some(SourceRoot::Folder(root)) => Ok(root.join(key).to_string_lossy().into_owned()),
            Some(SourceRoot::Url(root)) => Ok(format!("{root}/{location}")),
            None => Err(bad(format!(
                "source {location:?} is a bucket key, but this deployment has no \
                 SHOTLIST_SOURCE_ROOT; give an http(s) URL"
            ))),
        }
    }
}

/// Refuses a URL whose host is, or resolves to, an address that is not
/// public: loopback, private, link-local (cloud metadata), carrier-grade
/// NAT, unique-local, multicast or unspecified.
async fn check_public_host(url: &str) -> Result<(), Failure> {
    let bad = |detail: String| Failure::field("source", detail);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(format!("source is not a valid URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| bad("source URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let addresses: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| bad(format!("source host {host} cannot be resolved: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    match addresses.iter().find(|ip| !is_public(ip)) {
        Some(ip) => Err(bad(format!(
            "source host {host} is not a public address ({ip}); only public http(s) URLs are \
             fetched"
        ))),
        None if addresses.is_empty() => Err(bad(format!("source host {host} has no address"))),
        None => Ok(()),
    }
}

/// Whether `ip` is an ordinary public address.
fn is_public(ip: &std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A probe error mentions the resolved path; a user sees their own key.
fn shown(message: &str, resolved: &str, location: &str) -> String {
    message.replace(resolved, location)
}

/// The progress page, with headers that keep it from being cached (it
/// changes with each deployment), sniffed as something else, or told where
/// it was opened from.
fn progress_page() -> Response<Body> {
    let mut response = Response::new(Body::Text(page::PROGRESS_PAGE.to_string()));
    let headers = response.headers_mut();
    for (name, value) in [
        (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (http::header::CACHE_CONTROL, "no-store"),
        (
            http::header::CONTENT_SECURITY_POLICY,
            page::CONTENT_SECURITY_POLICY,
        ),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    response
}

/// A sheet file as a download. Binary, whatever the format: lambda_http
/// sends it base64-encoded, which API Gateway decodes byte for byte.
fn file_response(file: Download) -> Response<Body> {
    let disposition = file.disposition();
    let mut response = Response::new(Body::Binary(file.bytes));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(file.content_type),
    );
    // A UUID and fixed words: always a valid header value.
    if let Ok(disposition) = http::HeaderValue::from_str(&disposition) {
        headers.insert(http::header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// The format a download path names (`sheet.xlsx`).
fn parse_format(extension: &str) -> Result<Format, Failure> {
    extension.parse().map_err(|_| {
        Failure::field(
            "format",
            format!("unknown format {extension:?}; expected json, csv, xlsx or docx"),
        )
    })
}

/// `lang` from a query string, as [`page::query_lang`] reads it.
fn parse_lang(query: Option<&str>) -> Result<Lang, Failure> {
    page::query_lang(query).map_err(|error| Failure::field("lang", error))
}

/// A submission's body, read and checked field by field (nothing looked
/// up yet).
#[derive(Debug)]
struct SubmitRequest {
    /// `source`, trimmed: a URL or a bucket key.
    location: String,
    /// `durationSeconds`, when the caller claims one.
    duration: Option<f64>,
    video_id: Option<Uuid>,
    /// `ownerId`, as asked.
    owner_id: Option<Uuid>,
    details: Option<FilmDetails>,
}

impl SubmitRequest {
    const FIELDS: [&'static str; 5] =
        ["source", "durationSeconds", "videoId", "ownerId", "details"];

    fn read(body: &[u8]) -> Result<SubmitRequest, Failure> {
        let fields = json_object(body)?;
        only_fields(&fields, &SubmitRequest::FIELDS)?;
        Ok(SubmitRequest {
            location: source_field(&fields)?,
            duration: duration_field(&fields)?,
            video_id: optional_uuid(&fields, "videoId")?,
            owner_id: optional_uuid(&fields, "ownerId")?,
            details: details_field(&fields)?,
        })
    }
}

/// The `source` of a submission, trimmed; it must be there.
fn source_field(fields: &Map<String, Value>) -> Result<String, Failure> {
    let refused = |error: &str| Err(Failure::field("source", error));
    match fields.get("source") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) => refused("source is empty"),
        Some(_) => refused("source must be a string: a URL or a bucket key"),
        None => refused("source is missing: give the film's URL or bucket key"),
    }
}

/// The optional `durationSeconds` of a submission: a positive number.
fn duration_field(fields: &Map<String, Value>) -> Result<Option<f64>, Failure> {
    match fields.get("durationSeconds") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(d) if d.is_finite() && d > 0.0 => Ok(Some(d)),
            _ => Err(Failure::field(
                "durationSeconds",
                format!("durationSeconds must be a positive number of seconds, got {v}"),
            )),
        },
    }
}

/// What submit answers: 202 for a new film or one whose chunks are not
/// queued yet (another submission holds the claim to queue them; if it
/// died, the claim runs out in two minutes and submitting again queues
/// them), 200 for a known, queued film.
fn submit_response(video_id: Uuid, submitted: &Submitted) -> Response<Body> {
    let queued = submitted.enqueued || submitted.enqueue;
    let status = if submitted.created || !queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    respond(
        status,
        &json!({
            "videoId": video_id,
            "totalChunks": submitted.total_chunks,
            "created": submitted.created,
            "queued": queued,
            "ownerId": submitted.owner_id,
            "status": format!("/videos/{video_id}"),
        }),
    )
}

/// The queue messages of the film's chunks `chunk_indexes`.
fn chunk_bodies(video_id: Uuid, chunk_indexes: impl Iterator<Item = u32>) -> Vec<String> {
    chunk_indexes
        .map(|chunk_index| {
            ChunkMessage {
                video_id,
                chunk_index,
            }
            .to_body()
        })
        .collect()
}

/// The optional `details` of a submission, checked: `None` when not given
/// (or null), so that stored details stay as they are.
fn details_field(fields: &Map<String, Value>) -> Result<Option<FilmDetails>, Failure> {
    let given = match fields.get("details") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(given)) => given,
        Some(v) => {
            return Err(Failure::field(
                "details",
                format!("details must be an object, got {}", kind(v)),
            ))
        }
    };
    let names = ["title", "year", "director", "studio", "country"];
    only_fields(given, &names)
        .map_err(|f| Failure::field("details", format!("details: {}", f.error)))?;
    for (name, value) in given {
        if !matches!(value, Value::String(_) | Value::Null) {
            return Err(Failure::field(
                blamed_detail(name),
                format!("details.{name} must be a string, got {}", kind(value)),
            ));
        }
    }
    let details: FilmDetails = serde_json::from_value(Value::Object(given.clone()))
        .map_err(|e| Failure::field("details", format!("details cannot be read: {e}")))?;
    details.checked().map(Some).map_err(|(name, message)| {
        Failure::field(blamed_detail(name), format!("details.{message}"))
    })
}

/// `details.<name>`, for the five names [`details_field`] lets through.
fn blamed_detail(name: &str) -> &'static str {
    match name {
        "title" => "details.title",
        "year" => "details.year",
        "director" => "details.director",
        "studio" => "details.studio",
        "country" => "details.country",
        _ => "details",
    }
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| Failure::field("id", format!("video id {id:?} is not a UUID")))
}

fn forbidden(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::FORBIDDEN, message)
}

fn service_only(caller: Caller, what: &str) -> Result<(), Failure> {
    if caller == Caller::Service {
        Ok(())
    } else {
        Err(forbidden(format!("{what} needs the service role")))
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    let bad = |detail: String| Failure::new(StatusCode::BAD_REQUEST, detail);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the request body is empty; send a JSON object".into()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(bad(format!(
            "the request body must be a JSON object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

fn only_fields(fields: &Map<String, Value>, known: &[&'static str]) -> Result<(), Failure> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("unknown field {unknown:?}; expected {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn optional_uuid(fields: &Map<String, Value>, name: &'static str) -> Result<Option<Uuid>, Failure> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| Failure::field(name, format!("{name} {s:?} is not a UUID"))),
        Some(v) => Err(Failure::field(
            name,
            format!("{name} must be a UUID string, got {}", kind(v)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_or_without_a_stage() {
        assert_eq!(route("/videos"), Some(Route::Videos));
        assert_eq!(route("/prod/videos/"), Some(Route::Videos));
        assert_eq!(route("/videos/abc"), Some(Route::Video("abc")));
        assert_eq!(route("/videos/abc/finalize"), Some(Route::Finalize("abc")));
        assert_eq!(
            route("/videos/abc/force-finalize"),
            Some(Route::ForceFinalize("abc"))
        );
        assert_eq!(
            route("/prod/videos/abc/progress"),
            Some(Route::Progress("abc"))
        );
        assert_eq!(
            route("/videos/abc/sheet.xlsx"),
            Some(Route::Sheet("abc", "xlsx"))
        );
        assert_eq!(route("/videos/abc/sheet."), Some(Route::Sheet("abc", "")));
        assert_eq!(route("/videos/abc/notes.csv"), None);
        assert_eq!(route("/films"), None);
        assert_eq!(route("/videos/a/b/c"), None);
    }

    #[test]
    fn lang_comes_from_the_query_string_and_defaults_to_english() {
        assert_eq!(parse_lang(None).unwrap(), Lang::En);
        assert_eq!(parse_lang(Some("")).unwrap(), Lang::En);
        assert_eq!(parse_lang(Some("x=1&lang=ru")).unwrap(), Lang::Ru);
        assert_eq!(parse_lang(Some("lang=%72%75")).unwrap(), Lang::Ru);
        let refused = parse_lang(Some("lang=fr")).unwrap_err();
        assert_eq!(refused.field, Some("lang"));
        assert!(refused.error.contains("\"fr\""), "{}", refused.error);
    }

    #[test]
    fn a_download_answers_with_its_type_name_and_bytes() {
        let id = Uuid::nil();
        let file = Download {
            bytes: b"PK".to_vec(),
            content_type: Format::Docx.content_type(),
            file_name: page::download_name(id, Format::Docx, Lang::Ru),
        };
        let response = file_response(file);
        let header = |name| response.headers()[name].to_str().unwrap().to_string();
        assert_eq!(
            header(http::header::CONTENT_DISPOSITION),
            format!("attachment; filename=\"shotlist-{id}.ru.docx\"")
        );
        assert_eq!(
            header(http::header::CONTENT_TYPE),
            Format::Docx.content_type()
        );
        assert_eq!(header(http::header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(response.body().as_ref(), b"PK");
    }

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.1", "2606:4700::1111"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_naming_this_machine_or_a_private_network_are_refused() {
        for url in [
            "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
            "http://localhost/film.mp4",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/x.mp4",
            "https://10.0.0.5/film.mp4",
        ] {
            let refused = check_public_host(url).await.unwrap_err();
            assert_eq!(refused.field, Some("source"), "{url}");
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{url}");
        }
    }

    #[test]
    fn source_roots_parse() {
        assert_eq!(SourceRoot::parse(" "), None);
        assert_eq!(
            SourceRoot::parse("https://b.example/films/"),
            Some(SourceRoot::Url("https://b.example/films".into()))
        );
        assert_eq!(
            SourceRoot::parse("/mnt/films"),
            Some(SourceRoot::Folder("/mnt/films".into()))
        );
    }
}
