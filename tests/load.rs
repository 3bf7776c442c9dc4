//! Load: 50 films of 18 chunks (900 chunks) through the local cloud shape
//! (a real SQS-API server, moto, and the same event source mappings as
//! `shotlist cloud`), with a fast scripted analyzer in place of ffmpeg.
//!
//! It proves that under load every film gets its sheet, stored once after
//! one finalize message; that every chunk is committed as `completed`
//! exactly once, whatever the queue delivers; and that never more than 5
//! chunks are analyzed at once.
//!
//! `SHOTLIST_LOAD_FILMS` sets the number of films (default 50). The test
//! needs moto: `scripts/test` starts it; by hand,
//!
//! ```sh
//! export SHOTLIST_MOTO_DIR=$(mktemp -d); eval "$(scripts/moto start)"
//! SHOTLIST_LOAD_FILMS=50 cargo test --test load -- --nocapture
//! scripts/moto stop
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::cloud::chunk::RecordOutcome;
use shotlist_shared::cloud::local::{LocalCloud, LocalCloudOptions};
use shotlist_shared::cloud::messages::ChunkMessage;
use shotlist_shared::cloud::poller::{batch_handler, EventSourceMapping, MappingConfig};
use shotlist_shared::cloud::queue::{queue_arn, MessageQueue, SqsQueue};
use shotlist_shared::db::{Db, Submission};
use shotlist_shared::model::{ChunkAnalysis, Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::time::Fps;
use shotlist_tests::fixtures;
use shotlist_tests::pg::{connect, fresh_db};
use uuid::Uuid;

/// Films in the run, unless `SHOTLIST_LOAD_FILMS` says otherwise.
const DEFAULT_FILMS: usize = 50;

/// A 49-minute film at 25 fps: 18 chunks with the default plan.
const FILM_FRAMES: i64 = 2_940 * 25;
const CHUNKS_PER_FILM: u32 = 18;

/// The chunk trigger's maximum concurrency, as in template.yaml.
const MAX_CONCURRENCY: usize = 5;

/// How long one analysis takes: long enough that the mapping's receives
/// fill all 5 slots, so that the limit is really put to the test.
const ANALYSIS_TIME: Duration = Duration::from_millis(50);

/// How long the run may go without a chunk completing before it counts as
/// stuck (a hang guard, not a speed requirement).
const STALL: Duration = Duration::from_secs(120);

/// The moto server's URL. Without it the test cannot run, and says how to
/// start one.
fn sqs_endpoint() -> String {
    let url = std::env::var("SHOTLIST_TEST_SQS_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "SHOTLIST_TEST_SQS_URL is not set: scripts/test starts moto and sets it; \
         by hand: eval \"$(scripts/moto start)\""
    );
    url
}

fn films() -> usize {
    match std::env::var("SHOTLIST_LOAD_FILMS") {
        Ok(n) if !n.trim().is_empty() => {
            n.trim()
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .unwrap_or_else(|| {
                    panic!("SHOTLIST_LOAD_FILMS must be a whole number >= 1, got {n:?}")
                })
        }
        _ => DEFAULT_FILMS,
    }
}

/// A fast stand-in for a model: three shots in every chunk after
/// [`ANALYSIS_TIME`], counting analyses per chunk and how many run at once.
#[derive(Default)]
struct Swift {
    running: AtomicUsize,
    most_running: AtomicUsize,
    runs: Mutex<HashMap<(Uuid, u32), u32>>,
}

#[async_trait]
impl Analyzer for Swift {
    fn name(&self) -> &'static str {
        "swift"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        *self
            .runs
            .lock()
            .unwrap()
            .entry((request.video_id, request.chunk_index))
            .or_default() += 1;
        tokio::time::sleep(ANALYSIS_TIME).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let length = request.end_frame - request.start_frame;
        let cuts = [0, length / 3, 2 * length / 3, length];
        let shots = cuts
            .windows(2)
            .map(|w| Shot {
                start_frame: w[0],
                end_frame: w[1],
                shot_type: ShotType::Wide,
                description: format!("chunk {} from {}", request.chunk_index, w[0]),
                dialogue: vec![],
            })
            .collect();
        Ok(ChunkAnalysis { shots })
    }
}

/// The outcome of every record the chunk handler saw, per chunk.
type Outcomes = Arc<Mutex<HashMap<(Uuid, u32), Vec<RecordOutcome>>>>;

/// Registers `count` films of 18 chunks directly in the database, as submit
/// would, and queues their chunk messages.
async fn submit_films(db: &Db, queue: &SqsQueue, count: usize) -> Vec<Uuid> {
    let fps = Fps::new(25, 1).unwrap();
    let mut films = Vec::new();
    let mut bodies = Vec::new();
    for n in 0..count {
        let video_id = Uuid::new_v4();
        let submission = Submission {
            video_id,
            owner_id: None,
            source: format!("/films/load-{n}.mp4"),
            media: fixtures::media(FILM_FRAMES, fps),
            plan: PlanParams::default(),
        };
        let submitted = db.submit_video(&submission).await.expect("submitted");
        assert_eq!(submitted.total_chunks, CHUNKS_PER_FILM);
        bodies.extend((0..CHUNKS_PER_FILM).map(|chunk_index| {
            ChunkMessage {
                video_id,
                chunk_index,
            }
            .to_body()
        }));
        films.push(video_id);
    }
    queue.send_all(&bodies).await.expect("chunk messages sent");
    for &video_id in &films {
        db.mark_enqueued(video_id).await.expect("marked enqueued");
    }
    films
}

/// The chunk queue's mapping: the cloud's chunk handler behind a local
/// event source mapping with the template's settings (batch size 1, at
/// most 5 at once). It takes each record through
/// [`shotlist_shared::cloud::chunk::ChunkHandler::handle_record`], which
/// `handle` calls too, so that every record's outcome can be counted; with
/// batches of one and an analyzer that never waits on rate limits, the
/// answer is the one `handle` gives.
async fn chunk_mapping(cloud: &LocalCloud, outcomes: Outcomes) -> EventSourceMapping {
    let arn = queue_arn(&cloud.client, &cloud.chunk_queue_url)
        .await
        .expect("the chunk queue's ARN");
    let config = MappingConfig {
        batch_size: 1,
        maximum_concurrency: MAX_CONCURRENCY,
        wait_time_seconds: 1,
        function_timeout: Some(Duration::from_secs(305)),
        retry_visibility: Some(Duration::from_secs(1)),
        ..MappingConfig::new(cloud.chunk_queue_url.clone(), arn)
    };
    let handler = cloud.chunks.clone();
    let invoke = batch_handler(move |event| {
        let (handler, outcomes) = (handler.clone(), outcomes.clone());
        async move {
            let deadline = SystemTime::now() + Duration::from_secs(300);
            let mut response = SqsBatchResponse::default();
            for record in event.records {
                let id = record.message_id.clone().unwrap_or_default();
                let message: ChunkMessage =
                    serde_json::from_str(record.body.as_deref().unwrap_or(""))
                        .map_err(|e| format!("not a chunk message: {e}"))?;
                let outcome = handler.handle_record(&id, &record, Some(deadline)).await;
                if matches!(outcome, RecordOutcome::Retry { .. }) {
                    response.add_failure(id);
                }
                outcomes
                    .lock()
                    .unwrap()
                    .entry((message.video_id, message.chunk_index))
                    .or_default()
                    .push(outcome);
            }
            Ok(response)
        }
    });
    EventSourceMapping::new(cloud.client.clone(), config, invoke).expect("a valid mapping")
}

/// The finalize queue's mapping, as the local cloud runs it.
async fn finalize_mapping(cloud: &LocalCloud) -> EventSourceMapping {
    let arn = queue_arn(&cloud.client, &cloud.finalize_queue_url)
        .await
        .expect("the finalize queue's ARN");
    let config = MappingConfig {
        batch_size: 1,
        maximum_concurrency: 1,
        wait_time_seconds: 1,
        function_timeout: Some(Duration::from_secs(300)),
        retry_visibility: Some(Duration::from_secs(1)),
        ..MappingConfig::new(cloud.finalize_queue_url.clone(), arn)
    };
    let finalize = cloud.finalize.clone();
    let invoke = batch_handler(move |event| {
        let finalize = finalize.clone();
        async move { Ok(finalize.handle(event).await) }
    });
    EventSourceMapping::new(cloud.client.clone(), config, invoke).expect("a valid mapping")
}

/// Waits until `films` sheets exist. Fails when no chunk completes and no
/// sheet appears for [`STALL`].
async fn wait_for_sheets(client: &tokio_postgres::Client, films: usize) {
    let mut last = (-1, -1);
    let mut since = Instant::now();
    loop {
        let row = client
            .query_typed_one(
                "SELECT (SELECT count(*) FROM shotlist.sheets),
                        (SELECT count(*) FROM shotlist.chunks WHERE status = 'completed')",
                &[],
            )
            .await
            .expect("counting progress");
        let now: (i64, i64) = (row.get(0), row.get(1));
        if now.0 == films as i64 {
            return;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < STALL,
            "stuck at {} sheets and {} completed chunks",
            now.0,
            now.1
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_films_of_18_chunks_complete_once_each_with_never_more_than_5_in_flight() {
    let endpoint = sqs_endpoint();
    let count = films();
    let (db, url) = fresh_db().await;
    let analyzer = Arc::new(Swift::default());
    let root = tempfile::tempdir().unwrap();
    let options = LocalCloudOptions {
        sqs_endpoint: endpoint,
        queue_prefix: format!("load-{}", Uuid::new_v4().simple()),
        retry_delay: Duration::from_secs(1),
        maximum_concurrency: MAX_CONCURRENCY,
        ..LocalCloudOptions::default()
    };
    let cloud = LocalCloud::new(db.clone(), analyzer.clone(), root.path(), options)
        .await
        .expect("queues created");
    let queue = SqsQueue::new(cloud.chunk_queue_url.clone(), cloud.client.clone());
    let started = Instant::now();
    let films = submit_films(&db, &queue, count).await;
    let queued = started.elapsed();

    let outcomes = Outcomes::default();
    let chunks = chunk_mapping(&cloud, outcomes.clone()).await.spawn();
    let finalize = finalize_mapping(&cloud).await.spawn();
    let client = connect(&url).await;
    wait_for_sheets(&client, count).await;
    let chunk_stats = chunks.stop().await;
    let finalize_stats = finalize.stop().await;
    eprintln!(
        "{count} films, {} chunks: queued in {queued:.1?}, done in {:.1?}; \
         {} chunk messages received, at most {} analyses at once",
        count * CHUNKS_PER_FILM as usize,
        started.elapsed(),
        chunk_stats.messages_received(),
        analyzer.most_running.load(Ordering::SeqCst),
    );

    // Every film has its complete sheet, and asked for it once.
    for &video_id in &films {
        let sheet = db.get_sheet(video_id).await.unwrap().expect("a sheet");
        assert_eq!(sheet.status, SheetStatus::Complete, "{video_id}");
        assert_eq!(
            (
                sheet.total_chunks,
                sheet.completed_chunks,
                sheet.failed_chunks
            ),
            (CHUNKS_PER_FILM, CHUNKS_PER_FILM, 0),
            "{video_id}"
        );
        assert_eq!(sheet.shots.first().map(|s| s.start_frame), Some(0));
        assert_eq!(sheet.shots.last().map(|s| s.end_frame), Some(FILM_FRAMES));
    }
    let sheets: i64 = client
        .query_typed_one("SELECT count(*) FROM shotlist.sheets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sheets, count as i64, "one sheet per film");
    assert_eq!(
        finalize_stats.messages_received(),
        count as u64,
        "one finalize message per film"
    );

    // Every chunk was committed as completed exactly once, and analyzed.
    let outcomes = outcomes.lock().unwrap().clone();
    let runs = analyzer.runs.lock().unwrap().clone();
    assert_eq!(outcomes.len(), count * CHUNKS_PER_FILM as usize);
    for &video_id in &films {
        for chunk_index in 0..CHUNKS_PER_FILM {
            let seen = &outcomes[&(video_id, chunk_index)];
            let completed = seen
                .iter()
                .filter(|o| **o == RecordOutcome::Acknowledged("chunk completed"))
                .count();
            assert_eq!(completed, 1, "{video_id} chunk {chunk_index}: {seen:?}");
            assert!(runs[&(video_id, chunk_index)] >= 1);
        }
    }
    let completed: i64 = client
        .query_typed_one(
            "SELECT count(*) FROM shotlist.chunks WHERE status = 'completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, count as i64 * i64::from(CHUNKS_PER_FILM));

    // Never more than the trigger's concurrency at once, and more than one.
    let most = analyzer.most_running.load(Ordering::SeqCst);
    assert!(most <= MAX_CONCURRENCY, "{most} analyses at once");
    assert!(chunk_stats.max_in_flight() <= MAX_CONCURRENCY);
    assert!(most >= 2, "the chunks ran in parallel");
}
