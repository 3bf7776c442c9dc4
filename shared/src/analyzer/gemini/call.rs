//! Sending one call to Gemini: tried again after passing failures while
//! the deadline allows, the key kept out of anything logged, and what a
//! refusal means.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::{About, Failure, Gemini, MESSAGE_CHARS, TRY_RESERVE};
use crate::analyzer::keys::KeyLease;
use crate::analyzer::provider::rest_after_429;

/// Backoff between tries of a passing failure.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(8);
const RETRY_MAX_TIMES: usize = 6;

impl Gemini {
    /// Runs `attempt` until it succeeds, fails for good, or the next try
    /// would not start [`TRY_RESERVE`] before `deadline`.
    pub(super) async fn retrying<T, F, Fut>(
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
    pub(super) async fn send(
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
    pub(super) async fn send_as(
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
}

/// The key as a header value that `Debug` output hides.
pub(super) fn key_header(lease: &KeyLease<'_>) -> Result<HeaderValue, Failure> {
    let mut value = HeaderValue::from_str(lease.secret()).map_err(|_| {
        Failure::Refused(format!(
            "key {} is not a valid header value",
            lease.number()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A transport error (connect, timeout, broken body): always worth another
/// try. The URL is left out: an upload session's URL authorizes the upload.
pub(super) fn transport_failure(step: &str, error: reqwest::Error) -> Failure {
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
        (429, _) => Failure::RateLimited(rest_after_429(headers, body)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::provider::DEFAULT_REST;
    use serde_json::json;

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
}
