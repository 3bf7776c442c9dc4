//! What the clients of hosted models ([`super::gemini`],
//! [`super::replicate`]) share: the span of one question, the rest a key
//! takes after a 429, and the errors a question ends with.

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
