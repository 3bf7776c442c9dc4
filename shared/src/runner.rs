//! The local runner: the whole job for one film on one machine.
//!
//! It probes the film, registers it (or finds it registered: a run with the
//! id of an earlier one resumes it), and drives its chunks through the same
//! worker the Lambda function uses, at most `concurrency` at a time. Chunks
//! that come back for retry are queued again; chunks another process holds
//! are waited for. When every chunk is completed or failed it finalizes the
//! film and returns the sheet. Postgres keeps all the state: nothing here has
//! to survive the process.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::analyzer::local::LocalAnalyzer;
use crate::analyzer::Analyzer;
use crate::db::{Db, DbError};
use crate::plan::{self, PlanError, PlanParams};
use crate::probe::{self, ProbeError};
use crate::sheet::Sheet;
use crate::worker::{self, Done, WorkerConfig};

/// How long a worker waits before it looks at a chunk again that another
/// process holds, or that just failed an attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The longest a worker waits for a provider's keys before it tries again.
const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(60);

/// Database errors in a row a worker sits out before the run gives up.
const MAX_DB_FAILURES: u32 = 20;

/// What `run_local` is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The film's id; a new one when `None`. An id that exists resumes it.
    pub video_id: Option<Uuid>,
    /// Chunks analyzed at once.
    pub concurrency: usize,
    pub plan: PlanParams,
    /// ffmpeg's scene-change threshold for the local analyzer (0..1).
    pub scene_threshold: f64,
    pub worker: WorkerConfig,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            video_id: None,
            concurrency: 5,
            plan: PlanParams::default(),
            scene_threshold: LocalAnalyzer::default().scene_threshold,
            worker: WorkerConfig::default(),
        }
    }
}

/// What a run reports while it goes, for a progress display.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Registered {
        video_id: Uuid,
        total_chunks: u32,
    },
    ChunkDone {
        index: u32,
        completed: u32,
        failed: u32,
        total: u32,
    },
    ChunkRetry {
        index: u32,
        error: String,
    },
    Finalized,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Turns `film` into a sheet with the local analyzer, keeping all state in
/// `db`.
pub async fn run_local(
    db: &Db,
    film: &Path,
    options: &RunOptions,
    on_event: &(dyn Fn(RunEvent) + Send + Sync),
) -> Result<Sheet, RunError> {
    let analyzer = LocalAnalyzer {
        scene_threshold: options.scene_threshold,
        ..LocalAnalyzer::default()
    };
    run_with(db, film, options, Arc::new(analyzer), on_event).await
}

/// Turns `film` into a sheet with `analyzer`, keeping all state in `db`.
pub async fn run_with(
    db: &Db,
    film: &Path,
    options: &RunOptions,
    analyzer: Arc<dyn Analyzer>,
    on_event: &(dyn Fn(RunEvent) + Send + Sync),
) -> Result<Sheet, RunError> {
    if !(1..=64).contains(&options.concurrency) {
        return Err(RunError::Options(format!(
            "concurrency must be 1 to 64, got {}",
            options.concurrency
        )));
    }
    options
        .plan
        .validate()
        .map_err(|e| RunError::Options(e.to_string()))?;
    let media = probe::probe(film).await?;
    check_plan(&media, options.plan)?;
    let video_id = options.video_id.unwrap_or_else(Uuid::new_v4);
    let source = film.canonicalize().unwrap_or_else(|_| film.to_path_buf());
    let total = db
        .register_film(video_id, &source.to_string_lossy(), &media, options.plan)
        .await?;
    let frames = media.duration_frames;
    tracing::info!(%video_id, total_chunks = total, frames, fps = %media.fps, "film registered");
    on_event(RunEvent::Registered {
        video_id,
        total_chunks: total,
    });
    if let Some(sheet) = db.get_sheet(video_id).await? {
        on_event(RunEvent::Finalized);
        return Ok(sheet);
    }
    let queue = Arc::new(ChunkQueue::new(total));
    let workers = (0..options.concurrency.min(total as usize)).map(|_| {
        let (db, analyzer, queue) = (db.clone(), analyzer.clone(), queue.clone());
        let config = options.worker;
        async move { work(&db, analyzer.as_ref(), video_id, &queue, &config, on_event).await }
    });
    // The first worker to fail ends the run: the others are dropped with it,
    // and the chunks they held come back when their leases run out.
    futures::future::try_join_all(workers).await?;
    let sheet = db.finalize(video_id).await?;
    on_event(RunEvent::Finalized);
    Ok(sheet)
}

/// Refuses chunks so short that the film would need more than
/// [`plan::MAX_CHUNKS`], naming the flags that set them: the database
/// refuses such a plan too, but in the words of its own arguments.
fn check_plan(media: &crate::probe::MediaInfo, params: PlanParams) -> Result<(), RunError> {
    let duration = plan::duration_seconds(media.duration_frames, media.fps);
    match plan::chunk_count(duration, params) {
        Err(PlanError::TooManyChunks { chunks, .. }) => Err(RunError::Options(format!(
            "the film's {duration:.3} s in chunks of {} s (--chunk-seconds) overlapping by {} s \
             (--overlap-seconds) would make {chunks} chunks, more than the {} allowed",
            params.chunk_seconds,
            params.overlap_seconds,
            plan::MAX_CHUNKS
        ))),
        Err(e) => Err(RunError::Options(e.to_string())),
        Ok(_) => Ok(()),
    }
}

/// Chunks still to do, and how many are not yet terminal.
struct ChunkQueue {
    waiting: Mutex<VecDeque<u32>>,
    open: AtomicUsize,
}

impl ChunkQueue {
    fn new(total: u32) -> ChunkQueue {
        ChunkQueue {
            waiting: Mutex::new((0..total).collect()),
            open: AtomicUsize::new(total as usize),
        }
    }

    fn pop(&self) -> Option<u32> {
        self.waiting.lock().ok()?.pop_front()
    }

    fn push(&self, index: u32) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.push_back(index);
        }
    }

    fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn all_closed(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }
}

/// One worker: takes chunks from the queue until every chunk is terminal.
async fn work(
    db: &Db,
    analyzer: &dyn Analyzer,
    video_id: Uuid,
    queue: &ChunkQueue,
    config: &WorkerConfig,
    on_event: &(dyn Fn(RunEvent) + Send + Sync),
) -> Result<(), RunError> {
    let mut db_failures = 0;
    while !queue.all_closed() {
        let Some(index) = queue.pop() else {
            tokio::time::sleep(RETRY_PAUSE / 5).await;
            continue;
        };
        let done = match worker::process_chunk(db, analyzer, video_id, index, config).await {
            Ok(done) => {
                db_failures = 0;
                done
            }
            Err(e) if e.is_retryable() && db_failures < MAX_DB_FAILURES => {
                db_failures += 1;
                let chunk_index = index;
                tracing::warn!(%video_id, chunk_index, error = %e, "database unavailable; will retry");
                queue.push(index);
                tokio::time::sleep(RETRY_PAUSE * db_failures).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match done {
            Done::Completed(_) | Done::Failed { .. } | Done::AlreadyTerminal { .. } => {
                queue.close_one();
                let progress = db.chunk_progress(video_id).await?;
                let count = |key: &str| progress[key].as_u64().unwrap_or(0) as u32;
                on_event(RunEvent::ChunkDone {
                    index,
                    completed: count("completedChunks"),
                    failed: count("failedChunks"),
                    total: count("totalChunks"),
                });
            }
            Done::Retry { error, retry_after } => {
                on_event(RunEvent::ChunkRetry { index, error });
                if let Some(wait) = retry_after {
                    // Every key rests: waiting here keeps this worker from
                    // claiming and releasing the same chunk in a tight loop.
                    tokio::time::sleep(wait.min(MAX_THROTTLE_PAUSE)).await;
                }
                queue.push(index);
            }
            Done::Busy | Done::LeaseLost => {
                queue.push(index);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    Ok(())
}
