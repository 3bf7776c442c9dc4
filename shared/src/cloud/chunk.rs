//! The process-chunk handler: one SQS batch of chunk messages.
//!
//! Each record is claimed, analyzed and committed by [`crate::worker`]. The
//! answer lists only the messages to be delivered again (a partial batch
//! response); everything else is deleted from the queue by Lambda:
//!
//! - retryable trouble (the provider's 429/5xx or a timeout, the database
//!   unreachable, another worker holding the chunk) is listed for retry;
//! - a permanent problem with the message itself (not JSON, an unknown film
//!   or chunk) is recorded in `rejected_messages` and acknowledged, and a
//!   permanent problem with the chunk (an unreadable source) is recorded on
//!   the chunk, which fails: neither is retried forever;
//! - a duplicate delivery of a finished chunk is acknowledged without
//!   running the analyzer again;
//! - on the queue's last delivery (`ApproximateReceiveCount` reaching the
//!   queue's `maxReceiveCount`), a retryable failure fails the chunk with its
//!   error, and the message is still listed so that the queue moves it to the
//!   dead-letter queue.
//!
//! The commit that finishes the film sends one message to the finalize queue.
//!
//! A message listed for retry would come back only when the queue's
//! visibility timeout (6x the function timeout: 30 minutes) runs out. With a
//! [`Redelivery`], the handler brings it back sooner: after a back-off that
//! doubles with every delivery (30 s, 1 min, 2 min, ... at most 15 min),
//! and at once for one that did not fit before the deadline. A chunk another
//! worker holds is sent again as a new message a lease's length later (if
//! that worker died, its lease has run out by then and the chunk can be
//! claimed; if it still works, it renews its lease and the message waits one
//! more), so that waiting spends none of the queue's receives.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use crate::analyzer::Analyzer;
use crate::cloud::messages::{ChunkMessage, FinalizeMessage};
use crate::cloud::queue::MessageQueue;
use crate::db::{Db, DbError};
use crate::worker::{self, Done, WorkerConfig};

/// Time kept back from the invocation's deadline for the commit and the
/// answer: analysis stops this long before Lambda would kill the function.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(20);

/// The least analysis time worth claiming a chunk for.
pub const MIN_ANALYSIS_TIME: Duration = Duration::from_secs(5);

/// The first retry's delay; each later delivery waits twice as long.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_secs(30);

/// The longest retry delay.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(900);

/// Brings a message listed for retry back after `delay` instead of after
/// the queue's visibility timeout (SQS: ChangeMessageVisibility).
#[async_trait]
pub trait Redelivery: Send + Sync {
    async fn redeliver_after(&self, receipt_handle: &str, delay: Duration);

    /// Sends `body` to the queue again as a new message, delivered after
    /// `delay` (SQS: at most 15 minutes). A chunk that waited on the
    /// provider's limits goes back this way: a new message starts a new
    /// receive count, so waiting never walks it into the dead-letter queue.
    async fn send_again(&self, _body: &str, _delay: Duration) -> Result<(), String> {
        Err("this queue cannot send messages again".into())
    }
}

/// [`Redelivery`] on an SQS queue.
pub struct SqsRedelivery {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
}

#[async_trait]
impl Redelivery for SqsRedelivery {
    async fn redeliver_after(&self, receipt_handle: &str, delay: Duration) {
        let seconds = i32::try_from(delay.as_secs()).unwrap_or(i32::MAX);
        let changed = self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await;
        if let Err(e) = changed {
            // The message still comes back, after the visibility timeout.
            tracing::warn!(
                error = %crate::cloud::queue::describe_sdk_error(&e),
                "could not set the retry delay"
            );
        }
    }

    async fn send_again(&self, body: &str, delay: Duration) -> Result<(), String> {
        let seconds = delay.as_secs().clamp(1, MAX_SEND_DELAY.as_secs()) as i32;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(seconds)
            .send()
            .await
            .map(drop)
            .map_err(|e| crate::cloud::queue::describe_sdk_error(&e))
    }
}

/// The longest delay SQS gives a message it is sent.
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(900);

/// The wait before delivery number `receives + 1` of a failed message.
pub fn backoff(receives: u32) -> Duration {
    let doublings = receives.saturating_sub(1).min(16);
    (RETRY_BACKOFF_BASE * 2u32.pow(doublings)).min(RETRY_BACKOFF_MAX)
}

/// Everything the chunk handler needs; built once per Lambda instance.
#[derive(Clone)]
pub struct ChunkHandler {
    pub db: Db,
    pub analyzer: Arc<dyn Analyzer>,
    pub finalize_queue: Arc<dyn MessageQueue>,
    pub worker: WorkerConfig,
    /// The chunk queue's `maxReceiveCount`: the delivery with this count is
    /// the last before the dead-letter queue.
    pub max_receives: u32,
    /// The chunk queue's name, under which rejected messages are recorded.
    pub queue_name: String,
    /// Brings retried messages back sooner; `None` leaves that to the
    /// queue's visibility timeout.
    pub redelivery: Option<Arc<dyn Redelivery>>,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Done with: Lambda deletes the message.
    Acknowledged(&'static str),
    /// To be delivered again (listed in `batchItemFailures`); how soon, when
    /// the handler has a [`Redelivery`], depends on `wait`.
    Retry { reason: String, wait: Wait },
}

impl RecordOutcome {
    fn retry(reason: impl Into<String>) -> RecordOutcome {
        RecordOutcome::Retry {
            reason: reason.into(),
            wait: Wait::Backoff,
        }
    }
}

/// The least a duplicate of a held chunk waits before it looks again.
pub const BUSY_WAIT_MIN: Duration = Duration::from_secs(30);

/// Why a record is to be delivered again, which sets how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Did not fit before the deadline: at once.
    Now,
    /// Another worker holds the chunk.
    Busy,
    /// A failure that may pass: back off.
    Backoff,
    /// The provider's keys rest this long.
    After(Duration),
}

impl ChunkHandler {
    /// Handles a batch; records are taken one after the other, and those
    /// that no longer fit before `deadline` are listed for retry untouched.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<SystemTime>) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let Some(id) = record.message_id.clone().filter(|id| !id.is_empty()) else {
                // Lambda always sends an id; without one there is nothing
                // to list, and a listed empty id would fail the whole batch.
                tracing::error!("an SQS record without a messageId was skipped");
                continue;
            };
            let outcome = self.handle_record(&id, &record, deadline).await;
            match &outcome {
                RecordOutcome::Acknowledged(why) => {
                    tracing::info!(message_id = %id, outcome = why, "message acknowledged")
                }
                // Waits that cost no attempt (resting keys, a chunk another
                // worker holds) go back as new messages, so that they use
                // up none of the queue's receives either.
                RecordOutcome::Retry { reason: why, wait }
                    if matches!(wait, Wait::After(_) | Wait::Busy)
                        && self.sent_again(&record, self.free_wait(*wait)).await =>
                {
                    let wait = self.free_wait(*wait);
                    tracing::info!(message_id = %id, reason = %why, retry_in_s = wait.as_secs(), "chunk sent again for later")
                }
                RecordOutcome::Retry { reason: why, wait } => {
                    let delay = match wait {
                        Wait::Now => Duration::ZERO,
                        Wait::Busy => self.free_wait(Wait::Busy),
                        Wait::Backoff => backoff(receive_count(&record)),
                        Wait::After(wait) => {
                            (*wait).clamp(Duration::from_secs(1), RETRY_BACKOFF_MAX)
                        }
                    };
                    tracing::warn!(message_id = %id, reason = %why, retry_in_s = delay.as_secs(), "message left for retry");
                    if let (Some(redelivery), Some(receipt)) =
                        (&self.redelivery, record.receipt_handle.as_deref())
                    {
                        redelivery.redeliver_after(receipt, delay).await;
                    }
                    response.add_failure(id);
                }
            }
        }
        response
    }

    /// How long a wait that costs no attempt lasts: the provider's wait, or
    /// for a held chunk a lease, but not under [`BUSY_WAIT_MIN`], so that a
    /// short lease does not make a duplicate come back every few seconds
    /// for as long as the holder works.
    fn free_wait(&self, wait: Wait) -> Duration {
        match wait {
            Wait::After(wait) => wait,
            _ => self.worker.lease.max(BUSY_WAIT_MIN),
        }
    }

    /// Whether the record's body went back to the queue as a new message
    /// delivered after `wait`, so that this one can be acknowledged.
    async fn sent_again(&self, record: &SqsMessage, wait: Duration) -> bool {
        let (Some(redelivery), Some(body)) = (&self.redelivery, record.body.as_deref()) else {
            return false;
        };
        match redelivery.send_again(body, wait).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not send the chunk again; leaving it for retry");
                false
            }
        }
    }

    /// Handles one record.
    pub async fn handle_record(
        &self,
        message_id: &str,
        record: &SqsMessage,
        deadline: Option<SystemTime>,
    ) -> RecordOutcome {
        let body = record.body.as_deref().unwrap_or("");
        let message = match ChunkMessage::from_body(body) {
            Ok(m) => m,
            Err(e) => {
                let error = format!("the message body is not a chunk message ({{\"videoId\": \"<uuid>\", \"chunkIndex\": <n>}}): {e}");
                return self.reject(message_id, body, &error).await;
            }
        };
        let receives = receive_count(record);
        let last = receives >= self.max_receives;
        let mut config = self.worker;
        config.final_attempt = last;
        if let Some(deadline) = deadline {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(DEADLINE_MARGIN);
            if left < MIN_ANALYSIS_TIME {
                return RecordOutcome::Retry {
                    reason: "too little time left in this invocation".into(),
                    wait: Wait::Now,
                };
            }
            // The lease need not cover the analysis: the worker renews it
            // while it runs, and stops renewing when Lambda ends it.
            config.chunk_timeout = config.chunk_timeout.min(left);
        }
        let span = tracing::info_span!("message", message_id, receives, last);
        self.process(message_id, body, message, &config)
            .instrument(span)
            .await
    }

    async fn process(
        &self,
        message_id: &str,
        body: &str,
        message: ChunkMessage,
        config: &WorkerConfig,
    ) -> RecordOutcome {
        let ChunkMessage {
            video_id,
            chunk_index,
        } = message;
        let done = match worker::process_chunk(
            &self.db,
            self.analyzer.as_ref(),
            video_id,
            chunk_index,
            config,
        )
        .await
        {
            Ok(done) => done,
            Err(e) if e.is_retryable() || matches!(e, DbError::NotReady(_)) => {
                return RecordOutcome::retry(format!("database: {e}"))
            }
            Err(e) => {
                // An unknown film or chunk, or arguments the database
                // refuses: delivering it again cannot help.
                return self.reject(message_id, body, &e.to_string()).await;
            }
        };
        match done {
            Done::Completed(progress) | Done::Failed { progress, .. } if progress.finished => {
                if let Err(retry) = self.film_finished(video_id).await {
                    return retry;
                }
                self.after_terminal(&done, config)
            }
            Done::Completed(_) | Done::Failed { .. } => self.after_terminal(&done, config),
            Done::AlreadyTerminal { .. } => {
                // The film may have been finished by a worker that died
                // before it could ask for the finalize: make sure.
                if let Err(retry) = self.finalize_if_forgotten(video_id).await {
                    return retry;
                }
                RecordOutcome::Acknowledged("duplicate: chunk already terminal")
            }
            Done::Busy => RecordOutcome::Retry {
                reason: "another worker holds the chunk".into(),
                wait: Wait::Busy,
            },
            Done::Retry {
                error,
                retry_after: None,
            } => RecordOutcome::retry(error),
            Done::Retry {
                error,
                retry_after: Some(wait),
            } => RecordOutcome::Retry {
                reason: error,
                wait: Wait::After(wait),
            },
            // Another worker took the chunk over, or this worker's own
            // failure report went through but its answer was lost: either
            // way, delivering the message again loses nothing, and a claim
            // then says what is true.
            Done::LeaseLost => RecordOutcome::retry("the chunk's lease was lost"),
        }
    }

    /// A chunk this call made terminal. On the queue's last delivery a
    /// failure is still listed, so that the message lands in the DLQ.
    fn after_terminal(&self, done: &Done, config: &WorkerConfig) -> RecordOutcome {
        match done {
            Done::Failed { error, .. } if config.final_attempt => {
                RecordOutcome::retry(format!("last delivery failed the chunk: {error}"))
            }
            Done::Failed { .. } => RecordOutcome::Acknowledged("chunk failed for good"),
            _ => RecordOutcome::Acknowledged("chunk completed"),
        }
    }

    /// This commit finished the film: one message to the finalize queue. If
    /// the queue cannot be reached, the film is finalized here instead.
    async fn film_finished(&self, video_id: uuid::Uuid) -> Result<(), RecordOutcome> {
        let body = FinalizeMessage { video_id }.to_body();
        match self.finalize_queue.send_all(&[body]).await {
            Ok(()) => {
                tracing::info!(%video_id, "film finished; finalize requested");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%video_id, error = %e, "finalize queue unreachable; finalizing here");
                self.db
                    .finalize(video_id)
                    .await
                    .map(|_| ())
                    .map_err(|e| RecordOutcome::retry(format!("finalizing: {e}")))
            }
        }
    }

    /// Finalizes a finished film that has no sheet yet. Finalizing is
    /// idempotent, so racing the finalize function is harmless.
    async fn finalize_if_forgotten(&self, video_id: uuid::Uuid) -> Result<(), RecordOutcome> {
        let retry = |e: DbError| RecordOutcome::retry(format!("database: {e}"));
        let progress = self.db.chunk_progress(video_id).await.map_err(retry)?;
        if progress["finished"].as_bool() != Some(true) {
            return Ok(());
        }
        if self.db.get_sheet(video_id).await.map_err(retry)?.is_some() {
            return Ok(());
        }
        tracing::info!(%video_id, "finished film without a sheet; finalizing");
        self.db.finalize(video_id).await.map(|_| ()).map_err(retry)
    }

    async fn reject(&self, message_id: &str, body: &str, error: &str) -> RecordOutcome {
        tracing::warn!(message_id, error, "message rejected");
        match self
            .db
            .record_rejected_message(&self.queue_name, message_id, body, error)
            .await
        {
            Ok(()) => RecordOutcome::Acknowledged("rejected and recorded"),
            Err(e) => RecordOutcome::retry(format!("cannot record the rejected message: {e}")),
        }
    }
}

/// The record's `ApproximateReceiveCount` (1 for the first delivery).
pub fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_fifteen_minutes() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900]);
        assert_eq!(backoff(0).as_secs(), 30);
        assert_eq!(backoff(u32::MAX).as_secs(), 900);
    }
}
