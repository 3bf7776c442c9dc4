//! What the clients of hosted models ([`super::gemini`],
//! [`super::replicate`]) share: the check of an API's root URL, the span of
//! one question, the rest a key takes after a 429, and the errors a question
//! ends with.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::remote::rest_hint;
use super::AnalyzeError;

/// A key's rest after a 429 that gives no time.
pub(super) const DEFAULT_REST: Duration = Duration::from_secs(30);
/// The shortest rest: a "retry in 0 s" would send the next call straight
/// back to the same key, in a tight loop.
pub(super) const MIN_REST: Duration = Duration::from_secs(1);

/// How long a key rests after a 429 answered with `headers` and `body`: the
/// time the provider gives ([`rest_hint`]), else [`DEFAULT_REST`], and never
/// less than [`MIN_REST`].
pub(super) fn rest_after_429(headers: &HeaderMap, body: &str) -> Duration {
    rest_hint(headers, body)
        .unwrap_or(DEFAULT_REST)
        .max(MIN_REST)
}

/// Every key of `analyzer` rests for at least `wait`: chunk `chunk_index`
/// goes back to the queue without using up an attempt.
pub(super) fn throttled(analyzer: &'static str, chunk_index: u32, wait: Duration) -> AnalyzeError {
    AnalyzeError::Throttled {
        chunk_index,
        analyzer,
        wait,
    }
}

/// Chunk `chunk_index` must wait for something outside it (another worker's
/// upload of the film) for about `wait`: it goes back to the queue without
/// using up an attempt.
pub(super) fn deferred(
    analyzer: &'static str,
    chunk_index: u32,
    reason: String,
    wait: Duration,
) -> AnalyzeError {
    AnalyzeError::Deferred {
        chunk_index,
        analyzer,
        reason,
        wait,
    }
}

/// `analyzer`'s failure to answer about chunk `chunk_index`, which another
/// attempt may mend when `retryable`.
pub(super) fn provider_error(
    analyzer: &'static str,
    chunk_index: u32,
    message: String,
    retryable: bool,
) -> AnalyzeError {
    AnalyzeError::Provider {
        chunk_index,
        analyzer,
        message,
        retryable,
    }
}

/// The root URL of a provider's API, as `variable` gives it in `text`,
/// without a trailing slash: an http(s) URL with a host, and without user
/// info, query or fragment. The error names the variable and shows the URL
/// as [`shown_url`] does, never a password or a key it may hold.
pub(super) fn checked_root_url(variable: &str, text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let shown = shown_url(trimmed);
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| format!("{variable} is not a URL ({e}): {shown}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{variable} must not hold a user name or password: {shown}"
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{variable} must be an http(s) URL: {shown}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{variable} must be a plain root URL, without query or fragment: {shown}"
        ));
    }
    Ok(trimmed.to_string())
}

/// A URL as errors may show it: user info replaced by `***` and the query
/// and fragment left out, since either may hold a secret. Works on text
/// that does not parse as a URL too.
pub(super) fn shown_url(text: &str) -> String {
    let text = text.split(['?', '#']).next().unwrap_or(text);
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    // The last '@' anywhere, not only before the first '/': a password may
    // hold an unencoded '/', and hiding a path after it costs nothing.
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

/// The span of one question about a chunk: named after the analyzer (a
/// constant, such as `NAME`: a span's name is fixed where it is written),
/// with the film and the chunk as fields.
macro_rules! question_span {
    ($analyzer:expr, $request:expr) => {
        tracing::info_span!(
            $analyzer,
            video_id = %$request.video_id,
            chunk_index = $request.chunk_index
        )
    };
}
pub(super) use question_span;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_urls_are_plain_http_and_errors_show_no_user_info_or_query() {
        assert_eq!(
            checked_root_url("V", " http://127.0.0.1:8080/ ").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "ftp://deploy:hunter2@127.0.0.1/",
            "https://deploy:hunter2@127.0.0.1",
            "https://hunter2@127.0.0.1",
            "http://u:hunter2@127.0.0.1:99999",
            "https://127.0.0.1/?key=hunter2",
            "https://127.0.0.1/#hunter2",
            "ftp://127.0.0.1/",
            "not a url hunter2@",
        ] {
            let error = checked_root_url("V", bad).unwrap_err();
            assert!(error.starts_with("V "), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert_eq!(shown_url("https://u:p@h:1/a/b?x=1"), "https://***@h:1/a/b");
        assert_eq!(shown_url("h/x@y"), "***@y");
        assert_eq!(
            shown_url("https://u:hun/ter2@127.0.0.1/v1"),
            "https://***@127.0.0.1/v1"
        );
    }
}
