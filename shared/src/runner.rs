//! The local runner: the whole job for one film on one machine.
//!
//! It probes the film, registers it (or finds it registered: a run with the
//! id of an earlier one resumes it), and drives its chunks through the same
//! worker the Lambda function uses, at most `concurrency` at a time. Chunks
//! that come back for retry are queued again; chunks another process holds
//! are waited for. When every chunk is completed or failed it finalizes the
//! film and returns the sheet. Postgres keeps all the state: nothing here has
//! to survive the process.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::analyzer::local::LocalAnalyzer;
use crate::analyzer::Analyzer;
use crate::db::{Db, DbError, RegisteredPlan};
use crate::plan::{self, PlanError, PlanParams};
use crate::probe::{self, MediaInfo, ProbeError};
use crate::sheet::{FilmDetails, Sheet};
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
    /// What the delivery sheets say about the film, stored with it right
    /// after it is registered; empty details leave what is stored (a resumed
    /// run without them keeps an earlier run's).
    pub details: FilmDetails,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            video_id: None,
            concurrency: 5,
            plan: PlanParams::default(),
            scene_threshold: LocalAnalyzer::default().scene_threshold,
            worker: WorkerConfig::default(),
            details: FilmDetails::default(),
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
    /// The film was registered by an earlier run: `completed` and `failed`
    /// of its `total` chunks are already finished and are not analyzed
    /// again. Sent once, before any [`RunEvent::ChunkDone`].
    Resumed {
        completed: u32,
        failed: u32,
        total: u32,
    },
    /// Another run holds chunk `index` under a lease that runs out at
    /// `until_utc` (`HH:MM:SS`, UTC, the database's clock), `remaining` from
    /// now; this run waits for it. Sent once per chunk: a dead run is
    /// otherwise only silence until its lease runs out.
    ChunkHeld {
        index: u32,
        until_utc: String,
        remaining: Duration,
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
        decoder_threads: Some(LocalAnalyzer::threads_sharing_cores(options.concurrency)),
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
    check_options(options)?;
    let media = probe::probe(film).await?;
    run_probed(db, film, &media, options, analyzer, on_event).await
}

/// [`run_with`] for a film already probed: `media` is what
/// [`probe::probe`] said of `film` (the caller may have probed it while
/// something else started, e.g. the embedded database).
pub async fn run_probed(
    db: &Db,
    film: &Path,
    media: &MediaInfo,
    options: &RunOptions,
    analyzer: Arc<dyn Analyzer>,
    on_event: &(dyn Fn(RunEvent) + Send + Sync),
) -> Result<Sheet, RunError> {
    check_options(options)?;
    check_plan(media, options.plan)?;
    let video_id = options.video_id.unwrap_or_else(Uuid::new_v4);
    let source = film.canonicalize().unwrap_or_else(|_| film.to_path_buf());
    let total = match db
        .register_film(video_id, &source.to_string_lossy(), media, options.plan)
        .await
    {
        Err(DbError::InvalidArgument(reason)) => {
            return Err(registration_refused(db, video_id, media, options.plan, reason).await)
        }
        registered => registered?,
    };
    let frames = media.duration_frames;
    tracing::info!(%video_id, total_chunks = total, frames, fps = %media.fps, "film registered");
    if !options.details.is_empty() {
        db.set_video_details(video_id, &options.details).await?;
    }
    on_event(RunEvent::Registered {
        video_id,
        total_chunks: total,
    });
    if let Some(sheet) = db.get_sheet(video_id).await? {
        on_event(RunEvent::Finalized);
        return Ok(sheet);
    }
    let progress = db.chunk_progress(video_id).await?;
    let finished = finished_chunks(&progress);
    if !finished.is_empty() {
        let count = |key: &str| progress[key].as_u64().unwrap_or(0) as u32;
        on_event(RunEvent::Resumed {
            completed: count("completedChunks"),
            failed: count("failedChunks"),
            total,
        });
    }
    let queue = Arc::new(ChunkQueue::new(
        (0..total).filter(|index| !finished.contains(index)),
    ));
    let workers = (0..options.concurrency.min(queue.open())).map(|_| {
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

/// Refuses a concurrency or plan the run cannot use.
fn check_options(options: &RunOptions) -> Result<(), RunError> {
    if !(1..=64).contains(&options.concurrency) {
        return Err(RunError::Options(format!(
            "concurrency must be 1 to 64, got {}",
            options.concurrency
        )));
    }
    options
        .plan
        .validate()
        .map(drop)
        .map_err(|e| RunError::Options(e.to_string()))
}

/// Refuses chunks so short that the film would need more than
/// [`plan::MAX_CHUNKS`], naming the flags that set them: the database
/// refuses such a plan too, but in the words of its own arguments.
fn check_plan(media: &MediaInfo, params: PlanParams) -> Result<(), RunError> {
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

/// Why `register_film` refused the film, in the words of the command line
/// when the id was registered with another film or plan (the database can
/// only name its own parameters); else the database's reason.
async fn registration_refused(
    db: &Db,
    video_id: Uuid,
    media: &MediaInfo,
    plan: PlanParams,
    reason: String,
) -> RunError {
    let this_run = RegisteredPlan {
        duration_seconds: plan::duration_seconds(media.duration_frames, media.fps),
        chunk_seconds: plan.chunk_seconds,
        overlap_seconds: plan.overlap_seconds,
    };
    match db.registered_plan(video_id).await {
        Ok(Some(registered)) if registered != this_run => {
            RunError::Options(plan_conflict(video_id, &registered, &this_run))
        }
        Ok(_) => RunError::Db(DbError::InvalidArgument(reason)),
        Err(e) => {
            tracing::debug!(%video_id, error = %e, "could not read the registered plan");
            RunError::Db(DbError::InvalidArgument(reason))
        }
    }
}

/// Says that `video_id` was registered with another film or plan than this
/// run's, and both sides in terms of the film and the flags.
fn plan_conflict(video_id: Uuid, registered: &RegisteredPlan, this_run: &RegisteredPlan) -> String {
    let film_differs = registered.duration_seconds != this_run.duration_seconds;
    let plan_differs = (registered.chunk_seconds, registered.overlap_seconds)
        != (this_run.chunk_seconds, this_run.overlap_seconds);
    let what = match (film_differs, plan_differs) {
        (true, true) => "another film and plan",
        (true, false) => "another film",
        _ => "another plan",
    };
    let side = |p: &RegisteredPlan| {
        format!(
            "a {} s film, --chunk-seconds {}, --overlap-seconds {}",
            seconds(p.duration_seconds),
            p.chunk_seconds,
            p.overlap_seconds
        )
    };
    format!(
        "--video-id {video_id} is already registered for {what}: it was registered with {}; \
         this run has {}",
        side(registered),
        side(this_run)
    )
}

/// Seconds to the millisecond, without trailing zeros: "7.6", "75".
fn seconds(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The chunks a `chunk_progress` document lists as completed or failed.
fn finished_chunks(progress: &serde_json::Value) -> HashSet<u32> {
    let chunks = progress["chunks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    chunks
        .iter()
        .filter(|chunk| matches!(chunk["status"].as_str(), Some("completed" | "failed")))
        .filter_map(|chunk| u32::try_from(chunk["index"].as_u64()?).ok())
        .collect()
}

/// Chunks still to do, and how many are not yet terminal.
struct ChunkQueue {
    waiting: Mutex<VecDeque<u32>>,
    open: AtomicUsize,
    /// Chunks already reported as held by another run.
    held: Mutex<HashSet<u32>>,
    /// Woken when a chunk comes back to the queue or becomes terminal, so
    /// an idle worker takes the one or ends with the last at once (the film
    /// is finalized when every worker has ended).
    changed: Notify,
}

impl ChunkQueue {
    fn new(indexes: impl IntoIterator<Item = u32>) -> ChunkQueue {
        let waiting: VecDeque<u32> = indexes.into_iter().collect();
        ChunkQueue {
            open: AtomicUsize::new(waiting.len()),
            waiting: Mutex::new(waiting),
            held: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }
    }

    /// Chunks not yet terminal.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether `index` was reported held already.
    fn was_held(&self, index: u32) -> bool {
        self.held.lock().is_ok_and(|held| held.contains(&index))
    }

    /// True the first time `index` is marked held.
    fn first_held(&self, index: u32) -> bool {
        self.held.lock().is_ok_and(|mut held| held.insert(index))
    }

    fn pop(&self) -> Option<u32> {
        self.waiting.lock().ok()?.pop_front()
    }

    /// The next chunk to take; while none is waiting but some are still
    /// open (in other workers' hands), waits until one comes back or the
    /// last is closed. `None` once every chunk is terminal.
    async fn next(&self) -> Option<u32> {
        loop {
            // Made before looking, so a change in between still wakes it.
            let changed = self.changed.notified();
            if self.all_closed() {
                return None;
            }
            if let Some(index) = self.pop() {
                return Some(index);
            }
            // The pause only bounds the wait should a wake-up ever be missed.
            let _ = tokio::time::timeout(RETRY_PAUSE, changed).await;
        }
    }

    fn push(&self, index: u32) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.push_back(index);
        }
        self.changed.notify_waiters();
    }

    fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
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
    while let Some(index) = queue.next().await {
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
            Done::Busy => {
                report_held(db, video_id, index, queue, on_event).await;
                queue.push(index);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Done::LeaseLost => {
                queue.push(index);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    Ok(())
}

/// Reports chunk `index` as held by another run, the first time it is found
/// held and the lease can be read (a lease that just ended is not reported).
async fn report_held(
    db: &Db,
    video_id: Uuid,
    index: u32,
    queue: &ChunkQueue,
    on_event: &(dyn Fn(RunEvent) + Send + Sync),
) {
    if queue.was_held(index) {
        return;
    }
    match db.held_lease(video_id, index).await {
        Ok(Some(lease)) if queue.first_held(index) => on_event(RunEvent::ChunkHeld {
            index,
            until_utc: lease.until_utc,
            remaining: Duration::try_from_secs_f64(lease.remaining_seconds).unwrap_or_default(),
        }),
        Ok(_) => {}
        // Only a message is lost: the chunk is tried again all the same.
        Err(e) => {
            let chunk_index = index;
            tracing::debug!(%video_id, chunk_index, error = %e, "could not read the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(duration_seconds: f64, chunk_seconds: f64, overlap_seconds: f64) -> RegisteredPlan {
        RegisteredPlan {
            duration_seconds,
            chunk_seconds,
            overlap_seconds,
        }
    }

    #[test]
    fn a_resume_with_another_film_and_plan_names_both_sides_by_their_flags() {
        let id = Uuid::nil();
        let text = plan_conflict(id, &plan(7.6, 3.0, 1.0), &plan(5.0, 180.0, 15.0));
        assert_eq!(
            text,
            format!(
                "--video-id {id} is already registered for another film and plan: it was \
                 registered with a 7.6 s film, --chunk-seconds 3, --overlap-seconds 1; this run \
                 has a 5 s film, --chunk-seconds 180, --overlap-seconds 15"
            )
        );
        assert!(!text.contains("p_"), "no SQL parameter names: {text}");
    }

    #[test]
    fn a_resume_conflict_says_whether_the_film_or_the_plan_differs() {
        let id = Uuid::nil();
        let other_film = plan_conflict(id, &plan(75.0, 20.0, 5.0), &plan(37.52, 20.0, 5.0));
        assert!(other_film.contains("for another film:"), "{other_film}");
        assert!(other_film.contains("a 37.52 s film"), "{other_film}");
        let other_plan = plan_conflict(id, &plan(75.0, 20.0, 5.0), &plan(75.0, 20.0, 2.5));
        assert!(other_plan.contains("for another plan:"), "{other_plan}");
        assert!(
            other_plan.ends_with("--overlap-seconds 2.5"),
            "{other_plan}"
        );
    }

    #[test]
    fn finished_chunks_are_the_completed_and_failed_ones() {
        let progress = serde_json::json!({"chunks": [
            {"index": 0, "status": "completed"},
            {"index": 1, "status": "processing"},
            {"index": 2, "status": "failed"},
            {"index": 3, "status": "pending"},
        ]});
        assert_eq!(finished_chunks(&progress), HashSet::from([0, 2]));
        assert!(finished_chunks(&serde_json::json!({})).is_empty());
    }

    /// Paused time: a wait that only ended by its timeout would show as
    /// the clock having moved.
    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_wakes_at_once_when_a_chunk_comes_back_or_the_last_one_ends() {
        let queue = Arc::new(ChunkQueue::new([0, 1]));
        assert_eq!(queue.next().await, Some(0));
        assert_eq!(queue.next().await, Some(1));
        let started = tokio::time::Instant::now();
        let idle = tokio::spawn({
            let queue = queue.clone();
            async move { (queue.next().await, queue.next().await) }
        });
        tokio::task::yield_now().await;
        queue.push(1);
        queue.close_one();
        tokio::task::yield_now().await;
        queue.close_one();
        assert_eq!(idle.await.unwrap(), (Some(1), None));
        assert_eq!(started.elapsed(), Duration::ZERO, "a wake-up was missed");
    }

    #[test]
    fn a_chunk_counts_as_held_once() {
        let queue = ChunkQueue::new([0, 1]);
        assert!(!queue.was_held(1));
        assert!(queue.first_held(1));
        assert!(queue.was_held(1));
        assert!(!queue.first_held(1), "the second time is not the first");
        assert!(queue.first_held(0));
        assert_eq!(queue.open(), 2);
    }
}
