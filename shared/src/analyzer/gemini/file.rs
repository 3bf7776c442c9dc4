//! The film's file at Gemini, one per account: what the store says to do
//! about it, the resumable upload of the film (from a local file or an
//! http(s) URL), and the wait while Gemini processes it.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_LENGTH;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::call::{key_header, transport_failure};
use super::{put_off, store_failure, About, Failure, Gemini, MESSAGE_CHARS, NAME, TRY_RESERVE};
use crate::analyzer::keys::KeyLease;
use crate::analyzer::provider::provider_error;
use crate::analyzer::{AnalyzeError, ChunkRequest};
use crate::probe::MediaInfo;
use crate::uploads::{ProviderFile, UploadClaim, UploadSlot, UploadStore};

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

/// What a chunk can do about the film's file with one key.
pub(super) enum FilmFile {
    /// Use this file.
    Ready(ProviderFile),
    /// Someone else's upload of the film is under way: wait for it.
    Elsewhere(Elsewhere),
}

/// Another worker's upload of the film, or a file of it that Gemini is
/// still processing, under another key (or under this one, by another
/// worker).
#[derive(Debug)]
pub(super) struct Elsewhere {
    /// The key's number, as the store names the account.
    account: String,
    /// How long the uploader's claim still runs; `None` once the file is
    /// uploaded and processing.
    claim_left: Option<Duration>,
}

impl Elsewhere {
    /// The chunk goes back to the queue until the upload is likely done.
    pub(super) fn deferred(&self, chunk_index: u32) -> AnalyzeError {
        let what = match self.claim_left {
            Some(_) => "another worker is uploading the film",
            None => "gemini is still processing the film",
        };
        let reason = format!("{what} (key {})", self.account);
        put_off(chunk_index, reason, self.claim_left)
    }
}

/// How long a chunk may wait for the film's file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The end of waiting for someone else's upload, or for Gemini to
    /// process a file this chunk did not upload.
    pub(super) wait_until: Instant,
    /// The question's deadline.
    pub(super) deadline: Instant,
}

impl Limits {
    /// Whether one more wait of `interval` ends within the limits.
    pub(super) fn allow_poll(&self, interval: Duration) -> bool {
        let after = Instant::now() + interval;
        after <= self.wait_until && after + TRY_RESERVE < self.deadline
    }
}

/// An upload claim, given back if the upload is dropped midway (the run is
/// interrupted, the task aborted) so that the next worker uploads at once
/// instead of waiting until the claim runs out. [`settle`](Self::settle) it
/// once the upload is recorded or released.
struct HeldClaim {
    store: Arc<dyn UploadStore>,
    slot: UploadSlot,
    token: uuid::Uuid,
    settled: bool,
}

impl HeldClaim {
    fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Without a runtime (the process is ending) the claim runs out at
        // its holder's deadline, as a crashed worker's does.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::debug!(key = %self.slot.account, "upload dropped; giving its claim back");
        let (store, slot, token) = (self.store.clone(), self.slot.clone(), self.token);
        runtime.spawn(async move { release_claim(store.as_ref(), &slot, token).await });
    }
}

/// Gives the claim `token` back; a failure is logged, and the claim then
/// runs out at its holder's deadline.
async fn release_claim(store: &dyn UploadStore, slot: &UploadSlot, token: uuid::Uuid) {
    if let Err(e) = store.release_upload(slot, token).await {
        tracing::warn!(key = %slot.account, error = %e, "cannot give back the upload claim");
    }
}

/// The film's bytes, ready to be streamed into an upload.
struct Source {
    body: reqwest::Body,
    length: Option<u64>,
    mime_type: &'static str,
}

impl Gemini {
    /// The film's file for `lease`'s account, or the upload under way
    /// elsewhere to wait for.
    pub(super) async fn film_file(
        &self,
        lease: &KeyLease<'_>,
        slot: &UploadSlot,
        request: &ChunkRequest,
        limits: Limits,
    ) -> Result<FilmFile, Failure> {
        let chunk_index = request.chunk_index;
        let deadline = limits.deadline;
        // A claim lasts until the holder's deadline, past which it stops
        // working on the upload: a holder that died frees it then.
        let hold = deadline.saturating_duration_since(Instant::now());
        let claim = self
            .uploads
            .claim_upload(slot, &self.accounts, hold)
            .await
            .map_err(|e| store_failure("claiming the film's upload", e, chunk_index))?;
        match claim {
            UploadClaim::Ready(file) => Ok(FilmFile::Ready(file)),
            UploadClaim::Processing { file, since } => self
                .until_active(lease, slot, file, since, limits, chunk_index)
                .await
                .map(FilmFile::Ready),
            UploadClaim::Claimed { token } => self
                .upload_film(lease, slot, token, request, deadline)
                .await
                .map(FilmFile::Ready),
            UploadClaim::Busy { account, wait } => {
                tracing::debug!(key = lease.number(), uploader_key = %account,
                    claim_s = wait.map(|w| w.as_secs_f64()),
                    "another worker is uploading the film; waiting");
                Ok(FilmFile::Elsewhere(Elsewhere {
                    account,
                    claim_left: wait,
                }))
            }
            UploadClaim::Failed { account, error } => {
                Err(failed_film(chunk_index, account, &error))
            }
        }
    }

    /// Uploads the film as the claim holder `token`, records the file and
    /// waits until it is ACTIVE. A failure that may pass gives the claim
    /// back, so that the next worker uploads at once; so does dropping the
    /// upload midway.
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
        let claim = HeldClaim {
            store: self.uploads.clone(),
            slot: slot.clone(),
            token,
            settled: false,
        };
        let upload = self.retrying("uploading the film", key, deadline, || {
            self.upload_once(lease, request, deadline)
        });
        let remote = match upload.await {
            Ok(remote) => remote,
            Err(failure) => {
                release_claim(self.uploads.as_ref(), slot, token).await;
                claim.settle();
                return Err(failure);
            }
        };
        let file = remote.as_provider_file(source_mime_type(request));
        tracing::info!(key, file = %file.name, state = %remote.state, "film uploaded to gemini");
        match remote.state.as_str() {
            "ACTIVE" => {
                self.save(slot, Some(token), &file, true).await;
                claim.settle();
                Ok(file)
            }
            "FAILED" => {
                let detail = remote.failure_detail();
                self.fail(slot, Some(token), None, &detail).await;
                claim.settle();
                Err(failed_film(chunk_index, key, &detail))
            }
            _ => {
                self.save(slot, Some(token), &file, false).await;
                claim.settle();
                // Having uploaded the film, the chunk waits for Gemini's
                // processing until its deadline.
                let limits = Limits {
                    wait_until: deadline,
                    deadline,
                };
                self.until_active(lease, slot, file, Duration::ZERO, limits, chunk_index)
                    .await
            }
        }
    }

    /// Polls `file` until Gemini says ACTIVE (recording it) or FAILED (a
    /// permanent failure, recorded for every later chunk). The file has
    /// been PROCESSING for `since` already; past the processing bound the
    /// film is given up. Still processing at the end of the `limits`, the
    /// chunk is deferred: the wait is not its fault.
    async fn until_active(
        &self,
        lease: &KeyLease<'_>,
        slot: &UploadSlot,
        file: ProviderFile,
        since: Duration,
        limits: Limits,
        chunk_index: u32,
    ) -> Result<ProviderFile, Failure> {
        let key = lease.number();
        let give_up = Instant::now() + self.processing_wait.saturating_sub(since);
        loop {
            let remote = self.file_state(lease, &file.name, limits.deadline).await?;
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
            let interval = self.poll_interval.min(give_up - now);
            if !limits.allow_poll(interval) {
                let processing = Elsewhere {
                    account: key.to_string(),
                    claim_left: None,
                };
                return Err(Failure::Final(processing.deferred(chunk_index)));
            }
            tokio::time::sleep(interval).await;
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

    pub(super) async fn forget(&self, slot: &UploadSlot, name: &str) {
        if let Err(e) = self.uploads.forget_upload(slot, name).await {
            tracing::warn!(key = %slot.account, file = %name, error = %e,
                "cannot forget the film's file");
        }
    }
}

/// The film could not be processed (as `key`'s account was told):
/// permanent.
fn failed_film(chunk_index: u32, key: impl std::fmt::Display, detail: &str) -> Failure {
    let message = format!("gemini could not process the film (key {key}): {detail}");
    Failure::Final(provider_error(NAME, chunk_index, message, false))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::gemini::tests::media;

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
