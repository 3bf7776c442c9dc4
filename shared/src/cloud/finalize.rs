//! The finalize handler for finalize-queue messages: builds a finished
//! film's sheet in one transaction. Finalizing again returns the stored sheet
//! and changes nothing, so a message delivered twice is harmless.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use crate::cloud::messages::FinalizeMessage;
use crate::db::{Db, DbError};

/// Everything the finalize handler needs.
#[derive(Clone)]
pub struct FinalizeHandler {
    pub db: Db,
    /// The finalize queue's name, under which rejected messages are recorded.
    pub queue_name: String,
}

impl FinalizeHandler {
    /// Handles a batch of finalize messages; lists the ones to retry.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let Some(id) = record.message_id.clone().filter(|id| !id.is_empty()) else {
                tracing::error!("an SQS record without a messageId was skipped");
                continue;
            };
            let body = record.body.as_deref().unwrap_or("");
            if let Err(why) = self.handle_body(&id, body).await {
                tracing::warn!(message_id = %id, reason = %why, "finalize left for retry");
                response.add_failure(id);
            }
        }
        response
    }

    /// Handles one message; `Err` means "deliver it again".
    pub async fn handle_body(&self, message_id: &str, body: &str) -> Result<(), String> {
        let message = match FinalizeMessage::from_body(body) {
            Ok(m) => m,
            Err(e) => {
                let error = format!(
                    "the message body is not a finalize message ({{\"videoId\": \"<uuid>\"}}): {e}"
                );
                return self.reject(message_id, body, &error).await;
            }
        };
        let video_id = message.video_id;
        match self.db.finalize(video_id).await {
            Ok(sheet) => {
                tracing::info!(%video_id, shots = sheet.shots.len(), status = ?sheet.status, "film finalized");
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(format!("database: {e}")),
            Err(
                e @ (DbError::NotFound(_) | DbError::NotReady(_) | DbError::InvalidArgument(_)),
            ) => self.reject(message_id, body, &e.to_string()).await,
            Err(e) => Err(format!("finalizing: {e}")),
        }
    }

    async fn reject(&self, message_id: &str, body: &str, error: &str) -> Result<(), String> {
        tracing::warn!(message_id, error, "message rejected");
        self.db
            .record_rejected_message(&self.queue_name, message_id, body, error)
            .await
            .map_err(|e| format!("cannot record the rejected message: {e}"))
    }
}
