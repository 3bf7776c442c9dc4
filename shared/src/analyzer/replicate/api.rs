//! Replicate's HTTP API as this analyzer calls it: the file upload, the
//! prediction's create, poll and cancel, the file's delete, and what the
//! answers and refusals mean. Every call is bounded by the client's timeouts
//! and by a time given, and names the key by number only.

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Call, Failure, Replicate, CLEANUP_TIMEOUT, KEYS_VARIABLE};
use crate::analyzer::keys::KeyLease;
use crate::analyzer::provider::rest_after_429;
use crate::analyzer::remote::Question;

/// How much of a provider's message an error quotes.
const MESSAGE_CHARS: usize = 300;

/// A file uploaded for one chunk.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Upload {
    pub(super) id: String,
    urls: UploadUrls,
}

#[derive(Debug, Clone, Deserialize)]
struct UploadUrls {
    get: String,
}

/// A prediction as the API describes it; only the fields we read.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Prediction {
    pub(super) id: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) output: Value,
    #[serde(default)]
    pub(super) error: Value,
}

impl Prediction {
    pub(super) fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "canceled" | "aborted"
        )
    }
}

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
        // Should a server or a proxy ever echo the key, it goes no further.
        let body = scrub(&body, call.lease);
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

    /// [`send`](Self::send) before the end of the call's work budget.
    async fn send_in_budget(
        &self,
        call: &Call<'_>,
        what: &'static str,
        builder: RequestBuilder,
    ) -> Result<String, Failure> {
        self.send(call, what, builder, call.budget.work_end).await
    }

    pub(super) async fn upload(&self, call: &Call<'_>, clip: &Path) -> Result<Upload, Failure> {
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
            .send_in_budget(call, "uploading the clip", builder)
            .await?;
        let upload: Upload = parse(&body, "file")?;
        tracing::debug!(key = call.key(), file_id = %upload.id, "clip uploaded");
        Ok(upload)
    }

    pub(super) async fn create(
        &self,
        call: &Call<'_>,
        upload: &Upload,
    ) -> Result<Prediction, Failure> {
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
            .send_in_budget(call, "creating the prediction", builder)
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
    pub(super) async fn poll(&self, call: &Call<'_>, id: &str) -> Result<Prediction, Failure> {
        // Our own base URL, not the `urls.get` the server gave: the key
        // goes to no host but the configured one.
        let builder = self
            .client
            .get(format!("{}/v1/predictions/{id}", self.base));
        let body = self
            .send_in_budget(call, "polling the prediction", builder)
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
    pub(super) async fn cancel(&self, call: &Call<'_>, id: &str) {
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
    pub(super) async fn delete_file(&self, call: &Call<'_>, upload: &Upload, until: Instant) {
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

/// A cleanup call that the question makes itself once it is done with a
/// prediction or a clip, made in the background instead should the question
/// be dropped first: a worker stops its analysis at once when its chunk is
/// taken from it (lease renewal), and a prediction nobody waits for would
/// run on at our cost, the film's clip stay uploaded.
pub(super) struct Leftover {
    /// The call, its key's header set; `None` once settled.
    request: Option<RequestBuilder>,
    key: usize,
    what: &'static str,
}

impl Leftover {
    /// The question cleaned up itself (or has nothing left to clean up).
    pub(super) fn settle(mut self) {
        self.request = None;
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        // Without a runtime (the process is ending) Replicate's own expiry
        // is all that is left.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (key, what) = (self.key, self.what);
        tracing::debug!(key, what, "question dropped; cleaning up in the background");
        runtime.spawn(async move {
            match request.timeout(CLEANUP_TIMEOUT).send().await {
                Ok(answer) if answer.status().is_success() => {
                    tracing::debug!(key, what, "cleaned up after a dropped question")
                }
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    tracing::warn!(key, what, status, "replicate refused a cleanup call")
                }
                Err(e) => {
                    let error = crate::error_chain(&e);
                    tracing::warn!(key, what, error = %error, "cleanup call failed")
                }
            }
        });
    }
}

impl Replicate {
    /// The cancel of prediction `id`, made should the question be dropped
    /// while it waits for it.
    pub(super) fn leftover_prediction(&self, call: &Call<'_>, id: &str) -> Leftover {
        let request = self
            .client
            .post(format!("{}/v1/predictions/{id}/cancel", self.base))
            .bearer_auth(call.lease.secret());
        Leftover {
            request: Some(request),
            key: call.key(),
            what: "canceling a prediction nobody waits for",
        }
    }

    /// The delete of `upload`, made should the question be dropped before
    /// it deletes it.
    pub(super) fn leftover_upload(&self, call: &Call<'_>, upload: &Upload) -> Leftover {
        let request = is_plain_id(&upload.id).then(|| {
            self.client
                .delete(format!("{}/v1/files/{}", self.base, upload.id))
                .bearer_auth(call.lease.secret())
        });
        Leftover {
            request,
            key: call.key(),
            what: "deleting a clip nobody uses",
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
        429 => Failure::Throttled(rest_after_429(headers, body)),
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

/// The model's text: the output's strings joined, or the output itself when
/// it is one string; no output reads as an empty answer.
pub(super) fn joined_output(output: &Value) -> Option<String> {
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
pub(super) fn error_text(error: &Value) -> String {
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
pub(super) fn scrub(text: &str, lease: &KeyLease<'_>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn prediction_ids_must_be_plain() {
        assert!(is_plain_id("gm3a0d1x9hrmc0cs7bcv7j8d7c"));
        assert!(!is_plain_id("../files/x"));
        assert!(!is_plain_id(""));
    }
}
