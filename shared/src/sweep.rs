//! The stuck-chunk sweeper: puts back in motion what nothing moves any more.
//!
//! A chunk whose worker died keeps its `processing` status until its lease
//! runs out; then it is claimable again, but only a chunk message makes a
//! worker try it, and that message may be gone (it went to the dead-letter
//! queue, or the submit function died before sending it). A finished film
//! gets its sheet only if its finalize request arrives. One sweep
//! ([`sweep`]) asks the database (`sweep_chunks`, one transaction) to put the
//! lost workers' chunks back to pending, or to fail those that used up their
//! attempts, which may finish their film; then it sends a chunk message for
//! every chunk to try again and has the sheet of every finished film without
//! one made, through a [`Requeue`]:
//!
//! - [`SendToQueues`]: chunk messages to the chunk queue and finalize
//!   messages to the finalize queue, as the sweeper Lambda function does
//!   every five minutes (and `shotlist sweep --sqs-endpoint`);
//! - [`DatabaseOnly`]: no queue; finished films are finalized here, and the
//!   chunks wait, pending, for the next run that claims them (`shotlist
//!   sweep` without `--sqs-endpoint`).
//!
//! The database's changes are committed before anything is sent. A message
//! that could not be sent, or an answer of `sweep_chunks` that was lost, is
//! made good by a later sweep: the chunk is then pending and untouched for
//! the stale period, and the film still has no sheet, so both are listed
//! again. Sweepers running at once never act on the same chunk or film.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::cloud::messages::{ChunkMessage, FinalizeMessage};
use crate::cloud::queue::{MessageQueue, QueueError, SqsQueue};
use crate::db::{Db, DbError, GivenUpChunk, RequeuedChunk};
use crate::sheet::SheetStatus;
use crate::worker::WorkerConfig;

/// How long a pending chunk or a finished film without a sheet may wait
/// before a sweep sends its message again: long enough that a film waiting
/// its turn in a busy queue rarely gets duplicates, short enough that a lost
/// message costs minutes rather than hours.
pub const DEFAULT_STALE: Duration = Duration::from_secs(900);

/// The most chunks, and the most films, one sweep handles; the next sweep
/// takes the rest.
pub const DEFAULT_LIMIT: u32 = 500;

/// What one sweep may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepOptions {
    /// Attempts after which a chunk whose lease ran out fails for good; the
    /// workers' own limit ([`WorkerConfig::max_attempts`]).
    pub max_attempts: u32,
    /// How long a pending chunk, or a finished film without a sheet, waits
    /// before its message is sent again.
    pub stale: Duration,
    /// The most chunks, and the most films, handled in one sweep.
    pub limit: u32,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            max_attempts: WorkerConfig::default().max_attempts,
            stale: DEFAULT_STALE,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// What a sweep could not do. The database's changes stand; a later sweep
/// sends what was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the chunk messages were not sent: {0}")]
    Requeue(#[source] QueueError),
    #[error("cannot finalize video {video_id}: {source}")]
    Finalize {
        video_id: Uuid,
        #[source]
        source: DbError,
    },
    #[error("cannot find the queue {name} at {endpoint}: {detail}")]
    NoQueue {
        name: String,
        endpoint: String,
        detail: String,
    },
}

/// Whether the chunks of a sweep were put in front of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requeued {
    /// One chunk-queue message per chunk was sent.
    Sent,
    /// There is no queue: the chunks wait, pending, for a run to claim them.
    NotSent,
}

/// What became of a finished film's sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Finalization {
    /// A message on the finalize queue asks for it.
    Requested,
    /// The sheet is stored (now, or by an earlier finalize).
    Stored { shots: usize, status: SheetStatus },
}

/// A finished film a sweep found without a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalizedFilm {
    pub video_id: Uuid,
    #[serde(flatten)]
    pub finalization: Finalization,
}

/// Where a sweep sends what it found.
#[async_trait]
pub trait Requeue: Send + Sync {
    /// Puts `chunks` in front of a worker again.
    async fn requeue(&self, chunks: &[ChunkMessage]) -> Result<Requeued, SweepError>;

    /// Has the sheets of the finished films `video_ids` made; one answer per
    /// film, in order.
    async fn finalize(&self, video_ids: &[Uuid]) -> Vec<Result<Finalization, SweepError>>;
}

/// The cloud's way: the chunk queue and the finalize queue. When the
/// finalize queue cannot be reached, the films are finalized here instead,
/// as process-chunk does.
#[derive(Clone)]
pub struct SendToQueues {
    pub db: Db,
    pub chunks: Arc<dyn MessageQueue>,
    pub finalize: Arc<dyn MessageQueue>,
}

#[async_trait]
impl Requeue for SendToQueues {
    async fn requeue(&self, chunks: &[ChunkMessage]) -> Result<Requeued, SweepError> {
        let bodies: Vec<String> = chunks.iter().map(ChunkMessage::to_body).collect();
        self.chunks
            .send_all(&bodies)
            .await
            .map_err(SweepError::Requeue)?;
        Ok(Requeued::Sent)
    }

    async fn finalize(&self, video_ids: &[Uuid]) -> Vec<Result<Finalization, SweepError>> {
        let bodies: Vec<String> = video_ids
            .iter()
            .map(|&video_id| FinalizeMessage { video_id }.to_body())
            .collect();
        match self.finalize.send_all(&bodies).await {
            Ok(()) => video_ids
                .iter()
                .map(|_| Ok(Finalization::Requested))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, films = video_ids.len(), "finalize queue unreachable; finalizing here");
                finalize_each(&self.db, video_ids).await
            }
        }
    }
}

/// No queue: the chunks stay pending for the next run, and finished films
/// are finalized here.
#[derive(Clone)]
pub struct DatabaseOnly {
    pub db: Db,
}

#[async_trait]
impl Requeue for DatabaseOnly {
    async fn requeue(&self, _chunks: &[ChunkMessage]) -> Result<Requeued, SweepError> {
        Ok(Requeued::NotSent)
    }

    async fn finalize(&self, video_ids: &[Uuid]) -> Vec<Result<Finalization, SweepError>> {
        finalize_each(&self.db, video_ids).await
    }
}

/// Finalizes the films one after another. Finalizing is idempotent: a film
/// whose sheet another finalize stored gets that sheet back.
async fn finalize_each(db: &Db, video_ids: &[Uuid]) -> Vec<Result<Finalization, SweepError>> {
    let mut answers = Vec::with_capacity(video_ids.len());
    for &video_id in video_ids {
        let answer = db
            .finalize(video_id)
            .await
            .map(|sheet| Finalization::Stored {
                shots: sheet.shots.len(),
                status: sheet.status,
            })
            .map_err(|source| SweepError::Finalize { video_id, source });
        answers.push(answer);
    }
    answers
}

/// What one sweep did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Chunks put in front of a worker again: their worker was lost, or they
    /// waited, pending, for longer than the stale period.
    pub requeued: Vec<RequeuedChunk>,
    /// Whether their chunk messages were sent; `None` when there were none
    /// or sending failed (see `problems`).
    pub messages: Option<Requeued>,
    /// Chunks failed for good: their worker was lost on their last attempt.
    pub failed: Vec<GivenUpChunk>,
    /// Finished films without a sheet, and what became of it.
    pub finalized: Vec<FinalizedFilm>,
    /// What could not be done, one line each; a later sweep does it.
    pub problems: Vec<String>,
}

impl SweepReport {
    /// True when the sweep found nothing to do.
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty()
            && self.failed.is_empty()
            && self.finalized.is_empty()
            && self.problems.is_empty()
    }

    /// The films that a chunk failed by this sweep finished.
    pub fn finished_films(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.failed
            .iter()
            .filter(|c| c.finished)
            .map(|c| c.video_id)
    }
}

/// One sweep: fixes the chunks and films in the database (one transaction),
/// then sends what it found through `requeue`.
///
/// Errors only when the database cannot be swept; what could not be sent
/// afterwards is listed in [`SweepReport::problems`] (a later sweep sends
/// it).
pub async fn sweep(
    db: &Db,
    requeue: &dyn Requeue,
    options: SweepOptions,
) -> Result<SweepReport, DbError> {
    let swept = db
        .sweep_chunks(options.max_attempts, options.stale, options.limit)
        .await?;
    let mut problems = Vec::new();
    // Only films submitted through the queue get chunk messages: a film of
    // `shotlist process` sharing the database is left to its own run.
    let queued: Vec<&RequeuedChunk> = swept.requeue.iter().filter(|c| c.queued).collect();
    let messages = if queued.is_empty() {
        None
    } else {
        let chunks: Vec<ChunkMessage> = queued
            .iter()
            .map(|c| ChunkMessage {
                video_id: c.video_id,
                chunk_index: c.chunk_index,
            })
            .collect();
        match requeue.requeue(&chunks).await {
            Ok(requeued) => Some(requeued),
            Err(e) => {
                problems.push(crate::error_chain(&e));
                None
            }
        }
    };
    let mut finalized = Vec::with_capacity(swept.finalize.len());
    let answers = if swept.finalize.is_empty() {
        Vec::new()
    } else {
        requeue.finalize(&swept.finalize).await
    };
    for (&video_id, answer) in swept.finalize.iter().zip(answers) {
        match answer {
            Ok(finalization) => finalized.push(FinalizedFilm {
                video_id,
                finalization,
            }),
            Err(e) => problems.push(crate::error_chain(&e)),
        }
    }
    let report = SweepReport {
        requeued: swept.requeue,
        messages,
        failed: swept.failed,
        finalized,
        problems,
    };
    log(&report);
    Ok(report)
}

/// One line for the sweep when it changed something, details at debug, and
/// each problem once.
fn log(report: &SweepReport) {
    for chunk in &report.requeued {
        tracing::debug!(video_id = %chunk.video_id, chunk_index = chunk.chunk_index,
                        attempts = chunk.attempts, reason = ?chunk.reason, "chunk requeued");
    }
    for chunk in &report.failed {
        tracing::debug!(video_id = %chunk.video_id, chunk_index = chunk.chunk_index,
                        finished = chunk.finished, error = %chunk.error, "chunk failed for good");
    }
    for problem in &report.problems {
        tracing::warn!(problem = %problem, "sweep left something for the next one");
    }
    if !report.is_empty() {
        tracing::info!(
            requeued = report.requeued.len(),
            failed = report.failed.len(),
            finished_films = report.finished_films().count(),
            finalized = report.finalized.len(),
            problems = report.problems.len(),
            "sweep done"
        );
    }
}

/// The queues `<prefix>-chunks` and `<prefix>-finalize` at an SQS-compatible
/// `endpoint` (`shotlist cloud` makes them), as a [`SendToQueues`]. They must
/// exist: a sweep makes no queue.
pub async fn queues_at(db: Db, endpoint: &str, prefix: &str) -> Result<SendToQueues, SweepError> {
    let client = crate::cloud::local::client_for(endpoint).await;
    let chunks = queue_named(&client, endpoint, &format!("{prefix}-chunks")).await?;
    let finalize = queue_named(&client, endpoint, &format!("{prefix}-finalize")).await?;
    Ok(SendToQueues {
        db,
        chunks,
        finalize,
    })
}

async fn queue_named(
    client: &aws_sdk_sqs::Client,
    endpoint: &str,
    name: &str,
) -> Result<Arc<dyn MessageQueue>, SweepError> {
    let no_queue = |detail: String| SweepError::NoQueue {
        name: name.to_owned(),
        endpoint: endpoint.to_owned(),
        detail,
    };
    let answer = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| no_queue(crate::cloud::queue::describe_sdk_error(&e)))?;
    let url = answer
        .queue_url()
        .ok_or_else(|| no_queue("GetQueueUrl returned no URL".to_owned()))?;
    Ok(Arc::new(SqsQueue::new(url, client.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::RequeueReason;

    #[test]
    fn the_defaults_match_the_workers_attempts() {
        let options = SweepOptions::default();
        assert_eq!(options.max_attempts, WorkerConfig::default().max_attempts);
        assert_eq!(options.stale, Duration::from_secs(900));
    }

    #[test]
    fn a_report_counts_the_films_its_failures_finished() {
        let video_id = Uuid::new_v4();
        let failed = |chunk_index, finished| GivenUpChunk {
            video_id,
            chunk_index,
            attempts: 3,
            error: "gave up".into(),
            finished,
        };
        let report = SweepReport {
            requeued: vec![RequeuedChunk {
                video_id,
                chunk_index: 2,
                attempts: 1,
                reason: RequeueReason::Stale,
                queued: true,
            }],
            messages: Some(Requeued::Sent),
            failed: vec![failed(0, false), failed(1, true)],
            finalized: vec![],
            problems: vec![],
        };
        assert!(!report.is_empty());
        assert_eq!(report.finished_films().collect::<Vec<_>>(), [video_id]);
        let json = serde_json::to_value(&report).expect("a report is JSON");
        assert_eq!(json["requeued"][0]["reason"], "stale");
        assert_eq!(json["messages"], "sent");
    }
}
