//! `shotlist sweep`: one pass of the stuck-chunk sweeper
//! ([`shotlist_shared::sweep`]) against a database, printing one line per
//! thing it did and a summary on stdout.
//!
//! Without `--sqs-endpoint` it fixes the database only: a chunk whose worker
//! was lost is pending again (a `shotlist process --video-id` of its film
//! then analyzes it) or failed, and finished films without a sheet are
//! finalized here. With it, the chunk and finalize messages go to
//! `<PREFIX>-chunks` and `<PREFIX>-finalize`, as the sweeper function sends
//! them in AWS.

use shotlist_shared::db::{Db, DbError, RequeueReason, RequeuedChunk};
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::sweep::{
    self, DatabaseOnly, Finalization, Requeue, Requeued, SweepError, SweepReport,
};

use crate::args::SweepSettings;

/// Why a sweep failed, or did only part of its job.
#[derive(Debug, thiserror::Error)]
pub enum SweepFailed {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queues(#[from] SweepError),
    #[error("{count} thing(s) could not be done, and are left for the next sweep: {first}")]
    Incomplete { count: usize, first: String },
}

/// Runs one sweep with `settings` and prints what it did.
pub async fn run(settings: SweepSettings) -> Result<(), SweepFailed> {
    let db = Db::connect(&settings.database_url, 2).await?;
    let applied = db.migrate().await?;
    tracing::debug!(?applied, "migrations applied");
    // The queues are looked up before the database changes, so that a wrong
    // endpoint or prefix stops the sweep before it does anything.
    let requeue: Box<dyn Requeue> = match &settings.queues {
        Some(queues) => Box::new(
            sweep::queues_at(db.clone(), &queues.sqs_endpoint, &queues.queue_prefix).await?,
        ),
        None => Box::new(DatabaseOnly { db: db.clone() }),
    };
    let report = sweep::sweep(&db, requeue.as_ref(), settings.options).await?;
    for line in lines(&report, settings.options.stale.as_secs_f64()) {
        out!("{line}");
    }
    out!("{}", summary(&report, db.target()));
    match report.problems.first() {
        None => Ok(()),
        Some(first) => Err(SweepFailed::Incomplete {
            count: report.problems.len(),
            first: first.clone(),
        }),
    }
}

/// One line per chunk and film the sweep acted on.
fn lines(report: &SweepReport, stale_seconds: f64) -> Vec<String> {
    let mut lines = Vec::new();
    for chunk in &report.requeued {
        lines.push(requeued(chunk, report.messages, stale_seconds));
    }
    for chunk in &report.failed {
        let finished = if chunk.finished {
            "; that finished the film"
        } else {
            ""
        };
        lines.push(format!(
            "video {} chunk {}: failed for good: {}{finished}",
            chunk.video_id, chunk.chunk_index, chunk.error
        ));
    }
    for film in &report.finalized {
        let what = match film.finalization {
            Finalization::Requested => "finalize requested".to_string(),
            Finalization::Stored { shots, status } => {
                let status = match status {
                    SheetStatus::Complete => "complete",
                    SheetStatus::Partial => "partial",
                };
                format!("sheet stored ({shots} shots, {status})")
            }
        };
        lines.push(format!("video {}: {what}", film.video_id));
    }
    lines
}

/// The line of a chunk put back in front of a worker: why, and whether its
/// message was sent (`messages`), or else what the user has to do.
fn requeued(chunk: &RequeuedChunk, messages: Option<Requeued>, stale_seconds: f64) -> String {
    let head = format!("video {} chunk {}", chunk.video_id, chunk.chunk_index);
    // Without a queue, or for a film of `shotlist process` (which takes no
    // chunk messages), no message was ever expected.
    let expects_message = chunk.queued && messages != Some(Requeued::NotSent);
    let why = match chunk.reason {
        RequeueReason::LeaseExpired => format!(
            "its worker was lost (lease expired, attempt {}); pending again",
            chunk.attempts
        ),
        RequeueReason::Stale if expects_message => {
            format!("pending for more than {stale_seconds} s, its message may be lost")
        }
        RequeueReason::Stale => format!("pending for more than {stale_seconds} s"),
    };
    let next = match (chunk.queued, messages) {
        (_, Some(Requeued::NotSent)) => no_queue(chunk.video_id),
        (false, _) => format!(
            "not submitted through the queue: run shotlist process FILM --video-id {} \
             --database-url URL to analyze it",
            chunk.video_id
        ),
        (true, Some(Requeued::Sent)) => "its chunk message is sent".to_string(),
        (true, None) => "its chunk message could NOT be sent".to_string(),
    };
    format!("{head}: {why}; {next}")
}

/// What a sweep without a queue tells the user to do for a pending chunk
/// of `video_id`: nothing else will analyze it. (The film's path and the
/// database's URL, which may hold a password, are left for the user.)
fn no_queue(video_id: uuid::Uuid) -> String {
    format!(
        "no queue given: run shotlist process FILM --video-id {video_id} --database-url URL \
         to analyze it"
    )
}

fn summary(report: &SweepReport, target: &str) -> String {
    if report.is_empty() {
        return format!("swept {target}: nothing to do");
    }
    let queued = report.requeued.iter().filter(|c| c.queued).count();
    let mut chunks = Vec::new();
    if queued > 0 {
        let what = match report.messages {
            Some(Requeued::Sent) => "requeued",
            Some(Requeued::NotSent) => "need a worker",
            None => "could not be requeued",
        };
        chunks.push(format!("{queued} chunk(s) {what}"));
    }
    let unqueued = report.requeued.len() - queued;
    if unqueued > 0 {
        chunks.push(format!("{unqueued} chunk(s) need a worker"));
    }
    if chunks.is_empty() {
        chunks.push("0 chunk(s) requeued".to_string());
    }
    format!(
        "swept {target}: {}, {} failed for good, {} film(s) finalized",
        chunks.join(", "),
        report.failed.len(),
        report.finalized.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotlist_shared::db::GivenUpChunk;
    use shotlist_shared::sweep::FinalizedFilm;
    use uuid::Uuid;

    #[test]
    fn every_action_gets_one_line_naming_its_film_and_chunk() {
        let video_id = Uuid::nil();
        let report = SweepReport {
            requeued: vec![
                RequeuedChunk {
                    video_id,
                    chunk_index: 0,
                    attempts: 2,
                    reason: RequeueReason::LeaseExpired,
                    queued: true,
                },
                RequeuedChunk {
                    video_id,
                    chunk_index: 1,
                    attempts: 0,
                    reason: RequeueReason::Stale,
                    queued: true,
                },
            ],
            messages: Some(Requeued::Sent),
            failed: vec![GivenUpChunk {
                video_id,
                chunk_index: 2,
                attempts: 3,
                error: "gave up after 3 attempts".into(),
                finished: true,
            }],
            finalized: vec![FinalizedFilm {
                video_id,
                finalization: Finalization::Stored {
                    shots: 4,
                    status: SheetStatus::Partial,
                },
            }],
            problems: vec![],
        };
        let lines = lines(&report, 900.0);
        let id = video_id.to_string();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines.iter().all(|l| l.contains(&id)), "{lines:#?}");
        assert!(lines[0].contains("chunk 0") && lines[0].contains("attempt 2"));
        assert!(lines[0].ends_with("its chunk message is sent"));
        assert!(lines[1].contains("more than 900 s"));
        assert!(lines[2].contains("failed for good") && lines[2].contains("finished the film"));
        assert!(lines[3].contains("sheet stored (4 shots, partial)"));
        assert_eq!(
            summary(&report, "db:5432/x"),
            "swept db:5432/x: 2 chunk(s) requeued, 1 failed for good, 1 film(s) finalized"
        );
    }

    #[test]
    fn without_a_queue_a_pending_chunk_is_said_to_need_a_worker_not_to_be_requeued() {
        let video_id = Uuid::nil();
        let report = SweepReport {
            requeued: vec![RequeuedChunk {
                video_id,
                chunk_index: 18,
                attempts: 0,
                reason: RequeueReason::Stale,
                queued: true,
            }],
            messages: Some(Requeued::NotSent),
            failed: vec![],
            finalized: vec![],
            problems: vec![],
        };
        assert_eq!(
            lines(&report, 0.0),
            [format!(
                "video {video_id} chunk 18: pending for more than 0 s; no queue given: run \
                 shotlist process FILM --video-id {video_id} --database-url URL to analyze it"
            )]
        );
        assert_eq!(
            summary(&report, "db:5432/x"),
            "swept db:5432/x: 1 chunk(s) need a worker, 0 failed for good, 0 film(s) finalized"
        );
        let unsent = SweepReport {
            messages: None,
            ..report
        };
        assert!(lines(&unsent, 0.0)[0].ends_with("its chunk message could NOT be sent"));
        assert!(summary(&unsent, "x").contains("1 chunk(s) could not be requeued"));
    }

    #[test]
    fn a_film_not_submitted_through_the_queue_is_pointed_to_shotlist_process() {
        let video_id = Uuid::nil();
        let chunk = RequeuedChunk {
            video_id,
            chunk_index: 3,
            attempts: 1,
            reason: RequeueReason::LeaseExpired,
            queued: false,
        };
        assert_eq!(
            requeued(&chunk, None, 900.0),
            format!(
                "video {video_id} chunk 3: its worker was lost (lease expired, attempt 1); \
                 pending again; not submitted through the queue: run shotlist process FILM \
                 --video-id {video_id} --database-url URL to analyze it"
            )
        );
    }
}
