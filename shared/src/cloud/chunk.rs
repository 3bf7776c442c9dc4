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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Done with: Lambda deletes the message.
    Acknowledged(&'static str),
    /// To be delivered again (listed in `batchItemFailures`).
    Retry(String),
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
                RecordOutcome::Retry(why) => {
                    tracing::warn!(message_id = %id, reason = %why, "message left for retry");
                    response.add_failure(id);
                }
            }
        }
        response
    }

    /// Handles one record.
    pub async fn handle_record(
        &self,
        message_id: &str,
        record: &SqsMessage,
        deadline: Option<SystemTime>,
    ) -> RecordOutcome {
        let body = record.body.as_deref().unwrap_or("");
        let message: ChunkMessage = match serde_json::from_str(body) {
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
                return RecordOutcome::Retry("too little time left in this invocation".into());
            }
            config.chunk_timeout = config.chunk_timeout.min(left);
            config.lease = config.lease.max(config.chunk_timeout + DEADLINE_MARGIN);
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
                return RecordOutcome::Retry(format!("database: {e}"))
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
            Done::Busy => RecordOutcome::Retry("another worker holds the chunk".into()),
            Done::Retry { error } => RecordOutcome::Retry(error),
            Done::LeaseLost => RecordOutcome::Acknowledged("another worker took the chunk over"),
        }
    }

    /// A chunk this call made terminal. On the queue's last delivery a
    /// failure is still listed, so that the message lands in the DLQ.
    fn after_terminal(&self, done: &Done, config: &WorkerConfig) -> RecordOutcome {
        match done {
            Done::Failed { error, .. } if config.final_attempt => {
                RecordOutcome::Retry(format!("last delivery failed the chunk: {error}"))
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
                    .map_err(|e| RecordOutcome::Retry(format!("finalizing: {e}")))
            }
        }
    }

    /// Finalizes a finished film that has no sheet yet. Finalizing is
    /// idempotent, so racing the finalize function is harmless.
    async fn finalize_if_forgotten(&self, video_id: uuid::Uuid) -> Result<(), RecordOutcome> {
        let retry = |e: DbError| RecordOutcome::Retry(format!("database: {e}"));
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
            Err(e) => RecordOutcome::Retry(format!("cannot record the rejected message: {e}")),
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
