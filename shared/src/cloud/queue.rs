//! Sending messages to a queue: SQS in the cloud and against a local
//! SQS-compatible server, or anything else that implements [`MessageQueue`].

use async_trait::async_trait;

/// Why messages could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Some messages were still refused after the retries; `failed` of
    /// `total` were not sent.
    #[error("queue {queue}: {failed} of {total} messages could not be sent: {detail}")]
    Send {
        queue: String,
        failed: usize,
        total: usize,
        detail: String,
    },
    /// Any other failure: a call to the queue's service failed, or a
    /// configuration was refused.
    #[error("queue {queue}: {detail}")]
    Other { queue: String, detail: String },
}

/// A queue that messages can be sent to.
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Sends every body, as few calls as the queue allows (SQS: 10 per
    /// SendMessageBatch), retrying entries that failed. Errors only when
    /// some body still could not be sent.
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError>;

    /// The queue's name or URL, for messages.
    fn name(&self) -> &str;
}

// ---------------------------------------------------------------------------
// SQS
// ---------------------------------------------------------------------------

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

/// Most entries SQS takes in one SendMessageBatch or DeleteMessageBatch.
pub const SQS_MAX_BATCH_ENTRIES: usize = 10;

/// Most body bytes put into one SendMessageBatch call. SQS limits the whole
/// batch's payload; 256 KiB is the long-standing limit and a safe lower
/// bound. A single body larger than this still goes alone (SQS decides).
pub const SQS_MAX_BATCH_BYTES: usize = 256 * 1024;

/// Most SendMessageBatch calls one [`SqsQueue::send_all`] has in flight.
pub const SEND_CALLS_IN_FLIGHT: usize = 4;

/// How often and how patiently [`SqsQueue::send_all`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (0 counts as 1).
    pub max_tries: u32,
    /// Delay before the second attempt; it doubles for each further one.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, 100 ms doubling up to 2 s: at most about 1.5 s of waiting,
    /// on top of the SDK's own retries of a failed HTTP call.
    fn default() -> Self {
        RetryPolicy {
            max_tries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): exponential,
    /// capped at `max_delay`, with "equal jitter" (half fixed, half random)
    /// so that concurrent senders do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubling = 1u32 << attempt.saturating_sub(1).min(20);
        let capped = self.base_delay.saturating_mul(doubling).min(self.max_delay);
        let half = capped / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            random_u64() % spread
        };
        half + Duration::from_nanos(jitter)
    }
}

/// A random number from the standard library's per-instance hash keys:
/// good enough for jitter, without another crate.
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A queue on SQS, or on a local SQS-compatible server such as moto.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    retry: RetryPolicy,
}

impl SqsQueue {
    /// The queue at `url`, reached through `client` (see [`sqs_client`]),
    /// with the default [`RetryPolicy`].
    pub fn new(url: impl Into<String>, client: aws_sdk_sqs::Client) -> Self {
        SqsQueue {
            client,
            url: url.into(),
            retry: RetryPolicy::default(),
        }
    }

    /// The same queue with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client the queue is reached through.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// Sends one group of `bodies` (given by index; at most 10, see
    /// [`batch_groups`]) with retries. Returns the indices still unsent
    /// and the last reason.
    async fn send_group(&self, bodies: &[String], group: &[usize]) -> (Vec<usize>, String) {
        let mut pending: Vec<usize> = group.to_vec();
        let mut refused: Vec<usize> = Vec::new();
        let mut last_error = String::new();
        let tries = self.retry.max_tries.max(1);
        for attempt in 1..=tries {
            if attempt > 1 {
                tokio::time::sleep(self.retry.delay(attempt - 1)).await;
            }
            // Entry ids need only be unique within one call; the body's
            // index in `bodies` is, and maps a failure back to its body.
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(entry_id(i))
                        .message_body(bodies[i].as_str())
                        .build()
                        .expect("id and body are set")
                })
                .collect::<Vec<_>>();
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(out) => {
                    let mut retry = Vec::new();
                    for failed in out.failed() {
                        let Some(i) = parse_entry_id(failed.id()).filter(|i| pending.contains(i))
                        else {
                            continue; // not an id of this call
                        };
                        last_error = format!(
                            "{}: {}",
                            failed.code(),
                            failed.message().unwrap_or("no message")
                        );
                        // A sender fault (a body SQS refuses) fails the same
                        // way every time: it is not retried.
                        if failed.sender_fault() {
                            refused.push(i);
                        } else {
                            retry.push(i);
                        }
                    }
                    if !out.failed().is_empty() {
                        tracing::warn!(
                            queue = %self.url,
                            attempt,
                            failed = out.failed().len(),
                            error = %last_error,
                            "SendMessageBatch: some entries were not sent"
                        );
                    }
                    pending = retry;
                }
                Err(err) => {
                    last_error = describe_sdk_error(&err);
                    tracing::warn!(
                        queue = %self.url,
                        attempt,
                        entries = pending.len(),
                        error = %last_error,
                        "SendMessageBatch failed"
                    );
                    if !is_transient(&err) {
                        break;
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
        }
        refused.extend(pending);
        (refused, last_error)
    }
}

fn entry_id(index: usize) -> String {
    format!("m{index}")
}

fn parse_entry_id(id: &str) -> Option<usize> {
    id.strip_prefix('m')?.parse().ok()
}

/// Splits `bodies` into SendMessageBatch calls: at most
/// [`SQS_MAX_BATCH_ENTRIES`] entries and, unless one body alone is larger,
/// at most [`SQS_MAX_BATCH_BYTES`] of bodies per call, in order.
fn batch_groups(bodies: &[String]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for (i, body) in bodies.iter().enumerate() {
        let full = current.len() == SQS_MAX_BATCH_ENTRIES
            || (!current.is_empty() && bytes + body.len() > SQS_MAX_BATCH_BYTES);
        if full {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += body.len();
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Whether a whole-call failure may go away on its own: no response
/// (timeouts, connection failures), an unreadable response, a server error
/// or throttling. A client error such as a missing queue or bad
/// credentials is not retried.
fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            status >= 500
                || status == 429
                || code.contains("Throttl")
                || code.contains("RequestLimit")
        }
        _ => true,
    }
}

#[async_trait]
impl MessageQueue for SqsQueue {
    /// Sends with SendMessageBatch, at most 10 entries per call and at
    /// most [`SEND_CALLS_IN_FLIGHT`] calls at once, retrying
    /// (with [`RetryPolicy`]) only the entries SQS reports as failed and
    /// calls that failed as a whole. A call that failed as a whole may still
    /// have been delivered, so a retry can send a body twice: SQS is at
    /// least once anyway, and consumers must be idempotent.
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError> {
        use futures::StreamExt;
        let groups = batch_groups(bodies);
        let results: Vec<(Vec<usize>, String)> = futures::stream::iter(groups)
            .map(|group| async move { self.send_group(bodies, &group).await })
            .buffer_unordered(SEND_CALLS_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = 0usize;
        let mut detail = String::new();
        for (unsent, error) in results {
            if !unsent.is_empty() {
                failed += unsent.len();
                if detail.is_empty() {
                    detail = error;
                }
            }
        }
        if failed == 0 {
            Ok(())
        } else {
            Err(QueueError::Send {
                queue: self.url.clone(),
                failed,
                total: bodies.len(),
                detail,
            })
        }
    }

    fn name(&self) -> &str {
        &self.url
    }
}

/// An SQS client from aws-config's defaults: region and credentials from
/// the environment, profile files or the platform (as in Lambda), and the
/// endpoint from `AWS_ENDPOINT_URL_SQS` or `AWS_ENDPOINT_URL` when set.
/// `endpoint`, when given, overrides them all (a local server such as moto:
/// `http://127.0.0.1:PORT`). Nothing about the credentials is logged.
pub async fn sqs_client(endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_sqs::Client::from_conf(config.build())
}

/// A queue and its dead-letter queue, as [`ensure_queue_pair`] left them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    /// The main queue's URL.
    pub url: String,
    /// The dead-letter queue's URL.
    pub dlq_url: String,
    /// The dead-letter queue's ARN (the main queue's RedrivePolicy target).
    pub dlq_arn: String,
}

/// Creates (or finds) the standard queue `name` and its dead-letter queue
/// `name-dlq`, and sets the main queue's visibility timeout and its
/// RedrivePolicy (`maxReceiveCount` receives, then the DLQ). Idempotent:
/// repeating it with other numbers updates the existing queue.
/// For local setup and tests; in AWS the template creates the queues.
pub async fn ensure_queue_pair(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_secs: u32,
    max_receive_count: u32,
) -> Result<QueuePair, QueueError> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = create_queue(client, &dlq_name).await?;
    let dlq_arn = queue_arn(client, &dlq_url).await?;
    let url = create_queue(client, name).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    })
    .to_string();
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(|e| other(name, "SetQueueAttributes", &e))?;
    Ok(QueuePair {
        url,
        dlq_url,
        dlq_arn,
    })
}

/// Creates the standard queue `name` with default attributes, or returns the
/// existing one's URL. Attributes are set afterwards, because CreateQueue
/// refuses an existing name whose attributes differ from the ones given.
async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> Result<String, QueueError> {
    let out = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| other(name, "CreateQueue", &e))?;
    out.queue_url()
        .map(str::to_owned)
        .ok_or_else(|| QueueError::Other {
            queue: name.to_owned(),
            detail: "CreateQueue returned no queue URL".to_owned(),
        })
}

/// The ARN of the queue at `url`.
pub async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> Result<String, QueueError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| other(url, "GetQueueAttributes", &e))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| QueueError::Other {
            queue: url.to_owned(),
            detail: "GetQueueAttributes returned no QueueArn".to_owned(),
        })
}

fn other<E>(queue: &str, call: &str, err: &SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    QueueError::Other {
        queue: queue.to_owned(),
        detail: format!("{call}: {}", describe_sdk_error(err)),
    }
}

/// A one-line account of a failed SQS call: the service's error code,
/// message and HTTP status when it answered, else the whole error chain
/// (connection refused, timeout, ...). It holds nothing of the request, so
/// no credentials.
pub fn describe_sdk_error<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match (service.err().code(), service.err().message()) {
                (None, None) => format!("the server's answer is not an SQS answer (HTTP {status})"),
                (code, message) => format!(
                    "{}: {} (HTTP {status})",
                    code.unwrap_or("unknown error"),
                    message.unwrap_or("no message"),
                ),
            }
        }
        // The error and its causes, without the debug dump that
        // DisplayErrorContext appends.
        other => crate::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hold_at_most_ten_entries_in_order() {
        let bodies: Vec<String> = (0..25).map(|i| format!("body {i}")).collect();
        let groups = batch_groups(&bodies);
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let flat: Vec<usize> = groups.concat();
        assert_eq!(flat, (0..25).collect::<Vec<_>>());
        assert!(batch_groups(&[]).is_empty());
    }

    #[test]
    fn groups_respect_the_payload_limit() {
        let big = "x".repeat(100 * 1024);
        let huge = "y".repeat(300 * 1024);
        let bodies = vec![
            big.clone(),
            big.clone(),
            big.clone(),
            huge,
            "small".to_owned(),
        ];
        // 100+100 fit, a third would not; the huge one goes alone.
        assert_eq!(
            batch_groups(&bodies),
            vec![vec![0, 1], vec![2], vec![3], vec![4]]
        );
    }

    #[test]
    fn entry_ids_round_trip() {
        assert_eq!(parse_entry_id(&entry_id(17)), Some(17));
        assert_eq!(parse_entry_id("x17"), None);
        assert_eq!(parse_entry_id("m"), None);
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let policy = RetryPolicy::default();
        for attempt in 1..=10 {
            let full = policy
                .base_delay
                .saturating_mul(1 << (attempt - 1))
                .min(policy.max_delay);
            let d = policy.delay(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(policy.delay(u32::MAX) <= policy.max_delay);
        let zero = RetryPolicy {
            base_delay: Duration::ZERO,
            ..policy
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }
}
