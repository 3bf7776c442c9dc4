//! What `shotlist serve` answers.
//!
//! | method and path                | answers |
//! |--------------------------------|---------|
//! | `GET /`                        | a short page saying where a film's page is |
//! | `GET /health`                  | `{"ok":true}` |
//! | `GET /videos/{id}`             | the progress document, `"sheet"` once there is one |
//! | `GET /videos/{id}/progress`    | the progress page (also with a trailing `/`) |
//! | `GET /videos/{id}/sheet.{ext}` | the sheet as json, csv, xlsx or docx |
//!
//! A sheet's `?lang=` picks `en` (the default) or `ru`, as the status
//! function reads it ([`page::query_lang`]).
//!
//! Nothing asks who is calling: serve listens on 127.0.0.1 only. A web page
//! from elsewhere could still reach it through a name it makes resolve to
//! 127.0.0.1 (DNS rebinding), so a request whose `Host` is not this
//! server's own loopback address is refused (421) before any route. Errors
//! are JSON `{"error": "..."}`: 400 a bad id, format or language, 404 an
//! unknown film or path, 405 a method other than GET, 409 a sheet asked
//! for before it exists.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use shotlist_shared::db::{Db, DbError};
use shotlist_shared::export::Format;
use shotlist_shared::page::{self, DownloadError, PROGRESS_PAGE};
use uuid::Uuid;

/// What `GET /health` answers; discovery looks for exactly this.
pub const HEALTH_BODY: &str = r#"{"ok":true}"#;

/// The longest part of a refused `Host` quoted back.
const QUOTED_HOST_CHARS: usize = 80;

/// `GET /`: no script, nothing from the database.
const INDEX_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>shotlist serve</title></head><body><h1>shotlist serve</h1>\
<p>A film's progress page is at <code>/videos/&lt;video id&gt;/progress</code>.</p>\
<p>While this server runs, <code>shotlist process FILM</code> uses its database \
and prints the link to the film's page.</p></body></html>\n";

/// What the handlers share.
#[derive(Clone)]
struct Served {
    db: Db,
    /// The port serve listens on: the only one a `Host` header may name.
    port: u16,
}

/// The routes, behind the `Host` check, for a server on 127.0.0.1:`port`.
pub fn router(db: Db, port: u16) -> Router {
    let served = Served { db, port };
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/videos/{id}", get(progress))
        .route("/videos/{id}/progress", get(page))
        .route("/videos/{id}/progress/", get(page))
        .route("/videos/{id}/{file}", get(download))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(served.clone(), guard))
        .with_state(served)
}

/// A request that went wrong, as the JSON answer to send.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: String,
}

impl Failure {
    fn new(status: StatusCode, error: impl Into<String>) -> Failure {
        Failure {
            status,
            error: error.into(),
        }
    }

    fn bad_request(error: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, json_body(&json!({ "error": self.error }))).into_response()
    }
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        let (status, text) = error.answer();
        Failure::new(status, text)
    }
}

impl From<DbError> for Failure {
    fn from(error: DbError) -> Failure {
        let (status, text) = page::db_answer(error);
        Failure::new(status, text)
    }
}

/// `value` as a JSON body with its content type.
fn json_body(value: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

/// Refuses a request for another host, adds the security headers to every
/// answer and logs it at debug.
async fn guard(State(served): State<Served>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = match refused_host(request.headers(), request.uri(), served.port) {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    tracing::debug!(%method, path, status = response.status().as_u16(), "request");
    response
}

/// Why a request is not for this server, if it is not: its `Host` (and an
/// absolute URI's authority, if given) must be `127.0.0.1:PORT`,
/// `localhost:PORT` or `[::1]:PORT`.
fn refused_host(headers: &HeaderMap, uri: &Uri, port: u16) -> Option<Failure> {
    let ours = |host: &str| {
        let Some((name, given_port)) = host.rsplit_once(':') else {
            return false;
        };
        given_port == port.to_string()
            && (name == "127.0.0.1" || name == "[::1]" || name.eq_ignore_ascii_case("localhost"))
    };
    let host = headers.get(header::HOST).map(|value| value.to_str());
    let authority_ok = uri.authority().is_none_or(|a| ours(a.as_str()));
    match host {
        Some(Ok(host)) if ours(host) && authority_ok => None,
        Some(Ok(host)) => {
            let quoted: String = host.chars().take(QUOTED_HOST_CHARS).collect();
            Some(misdirected(port, &format!("Host {quoted:?}")))
        }
        Some(Err(_)) => Some(misdirected(port, "a Host that is not text")),
        None => Some(misdirected(port, "no Host header")),
    }
}

fn misdirected(port: u16, got: &str) -> Failure {
    Failure::new(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this server answers only requests for 127.0.0.1:{port} or localhost:{port}; \
             the request had {got}"
        ),
    )
}

async fn index() -> Response {
    html(INDEX_PAGE)
}

async fn health() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], HEALTH_BODY).into_response()
}

async fn page(id: Result<Path<String>, PathRejection>) -> Result<Response, Failure> {
    video_id(id.map(|Path(id)| id))?;
    Ok(html(PROGRESS_PAGE))
}

fn html(text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                page::CONTENT_SECURITY_POLICY,
            ),
        ],
        text,
    )
        .into_response()
}

/// The progress document: `chunk_progress` and the sheet, as the status
/// function answers it.
async fn progress(
    State(served): State<Served>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Failure> {
    let video_id = video_id(id.map(|Path(id)| id))?;
    let document = page::progress_document(&served.db, video_id, |sheet| sheet).await?;
    Ok(json_body(&document).into_response())
}

/// `sheet.<ext>?lang=..`: the stored sheet in that format, with the film's
/// stored details.
async fn download(
    State(served): State<Served>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let (id, file) = match path {
        Ok(Path(parts)) => parts,
        Err(rejection) => return Err(Failure::bad_request(rejection.body_text())),
    };
    let Some(extension) = file.strip_prefix("sheet.") else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no route for /videos/{id}/{file}"),
        ));
    };
    let format: Format = extension.parse().map_err(Failure::bad_request)?;
    let lang = page::query_lang(query.as_deref()).map_err(Failure::bad_request)?;
    let video_id = video_id(Ok(id))?;
    let file = page::download(&served.db, video_id, format, lang, |sheet| sheet).await?;
    let disposition = file.disposition();
    Ok((
        [
            (header::CONTENT_TYPE, file.content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        file.bytes,
    )
        .into_response())
}

/// The film's id from the path, or a 400 naming what was given.
fn video_id(id: Result<String, PathRejection>) -> Result<Uuid, Failure> {
    let id = id.map_err(|rejection| Failure::bad_request(rejection.body_text()))?;
    Uuid::parse_str(&id).map_err(|_| Failure::bad_request(format!("video id {id:?} is not a UUID")))
}

async fn no_route(uri: Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    let mut response = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} accepts GET only, not {method}", uri.path()),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn only_this_servers_loopback_names_pass_the_host_check() {
        let uri = Uri::from_static("/health");
        for good in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LocalHost:8787",
            "[::1]:8787",
        ] {
            assert!(refused_host(&host(good), &uri, 8787).is_none(), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:8788",
            "evil.example:8787",
            "localhost.evil.example:8787",
            "127.0.0.1:8787.evil.example",
            "",
        ] {
            let refused = refused_host(&host(bad), &uri, 8787).expect(bad);
            assert_eq!(refused.status, StatusCode::MISDIRECTED_REQUEST, "{bad}");
        }
        assert!(refused_host(&HeaderMap::new(), &uri, 8787).is_some());
        let elsewhere = Uri::from_static("http://evil.example:8787/health");
        assert!(refused_host(&host("127.0.0.1:8787"), &elsewhere, 8787).is_some());
    }
}
