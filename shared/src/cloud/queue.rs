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
