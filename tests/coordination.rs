//! Chunk coordination through the SQL functions of `migrations/`, against a
//! real PostgreSQL: planning, status updates from racing workers, claims with
//! leases, the progress view, connection errors, migrations and privileges.
//!
//! Every test works in a database of its own (`fresh_db`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::db::{Claim, ClaimedChunk, Db, DbError, Outcome, Progress, MIGRATIONS};
use shotlist_shared::model::{Shot, ShotType};
use shotlist_shared::plan::{self, PlanParams};
use shotlist_shared::time::{self, Fps};
use shotlist_tests::fixtures::{self, described_film};
use shotlist_tests::pg::{connect, fresh_database, fresh_db};
use tokio::sync::{Barrier, Semaphore};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

/// A 49-minute film at 25 fps: 18 chunks.
const FILM_FRAMES: i64 = 73_500;

/// Caps the connections the racing workers of concurrently running tests
/// hold, below the test server's limit of 100.
static WORKER_CONNECTIONS: Semaphore = Semaphore::const_new(60);

fn fps(rate: &str) -> Fps {
    rate.parse().expect("a valid frame rate")
}

/// A registered and described film of `frames` frames at `rate`.
async fn film(db: &Db, frames: i64, rate: &str) -> Uuid {
    described_film(db, frames, rate).await
}

fn shot(start_frame: i64, end_frame: i64) -> Shot {
    Shot {
        start_frame,
        end_frame,
        shot_type: ShotType::Wide,
        description: format!("shot from {start_frame}"),
        dialogue: vec![],
    }
}

async fn claim(db: &Db, id: Uuid, chunk: u32, lease: Duration) -> Claim {
    db.claim_chunk(id, chunk, lease, 3)
        .await
        .expect("claim answered")
}

async fn claimed(db: &Db, id: Uuid, chunk: u32) -> ClaimedChunk {
    match claim(db, id, chunk, Duration::from_secs(600)).await {
        Claim::Claimed(c) => *c,
        other => panic!("chunk {chunk} not claimed: {other:?}"),
    }
}

/// The shots saved for one chunk.
async fn saved_shots(db: &Db, id: Uuid, chunk: u32) -> Vec<Shot> {
    let results = db.chunk_results(id).await.expect("chunk results");
    results
        .chunks
        .into_iter()
        .find(|c| c.index == chunk)
        .expect("chunk listed")
        .shots
}

/// One chunk of `chunk_progress`.
async fn chunk_view(db: &Db, id: Uuid, chunk: usize) -> Value {
    db.chunk_progress(id).await.expect("progress")["chunks"][chunk].clone()
}

async fn count(client: &Client, sql: &str, id: Uuid) -> i64 {
    client
        .query_typed_one(sql, &[(&id, Type::UUID)])
        .await
        .expect("count query")
        .get(0)
}

async fn rows_of_film(client: &Client, id: Uuid) -> (i64, i64) {
    let videos = count(
        client,
        "SELECT count(*) FROM shotlist.videos WHERE video_id = $1",
        id,
    )
    .await;
    let chunks = count(
        client,
        "SELECT count(*) FROM shotlist.chunks WHERE video_id = $1",
        id,
    )
    .await;
    (videos, chunks)
}

/// The SQLSTATE a raw statement fails with.
async fn sqlstate(client: &Client, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> String {
    match client.query_typed(sql, params).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| panic!("{sql}: {e}")),
    }
}

/// Deterministic pseudo-random numbers (SplitMix64), so every failure can be
/// replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn register_video_plans_18_chunks_for_49_minutes_and_one_for_short_films() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    for (duration, expected) in [(2940.0, 18), (180.0, 1), (7.6, 1), (180.04, 2), (345.0, 2)] {
        let id = Uuid::new_v4();
        let chunks = db
            .register_video(id, duration, PlanParams::default())
            .await
            .expect("registered");
        assert_eq!(chunks, expected, "{duration} s");
        assert_eq!(
            rows_of_film(&client, id).await,
            (1, i64::from(expected)),
            "{duration} s"
        );
    }
}

#[tokio::test]
async fn repeating_register_video_changes_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    assert_eq!(
        db.register_video(id, 2940.0, PlanParams::default())
            .await
            .unwrap(),
        18
    );
    db.update_chunk_status(id, 4, "completed", None)
        .await
        .unwrap();
    assert_eq!(
        db.register_video(id, 2940.0, PlanParams::default())
            .await
            .unwrap(),
        18
    );
    assert_eq!(rows_of_film(&client, id).await, (1, 18));
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["completedChunks"], 1);
    assert_eq!(progress["chunks"][4]["status"], "completed");
}

#[tokio::test]
async fn register_video_with_another_duration_for_a_known_id_is_refused() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    db.register_video(id, 2940.0, PlanParams::default())
        .await
        .unwrap();
    match db.register_video(id, 600.0, PlanParams::default()).await {
        Err(DbError::InvalidArgument(message)) => {
            assert!(message.contains("p_duration_seconds"), "{message}")
        }
        other => panic!("another duration accepted: {other:?}"),
    }
    assert_eq!(rows_of_film(&client, id).await, (1, 18));
}

#[tokio::test]
async fn register_video_refuses_bad_arguments_naming_them_and_writes_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let cases = [
        (0.0, 180.0, 15.0, "p_duration_seconds"),
        (-5.0, 180.0, 15.0, "p_duration_seconds"),
        (f64::NAN, 180.0, 15.0, "p_duration_seconds"),
        (f64::INFINITY, 180.0, 15.0, "p_duration_seconds"),
        (f64::NEG_INFINITY, 180.0, 15.0, "p_duration_seconds"),
        (1e12, 180.0, 15.0, "p_duration_seconds"),
        (600.0, 0.0, 15.0, "p_chunk_seconds"),
        (600.0, -180.0, 15.0, "p_chunk_seconds"),
        (600.0, f64::NAN, 15.0, "p_chunk_seconds"),
        (600.0, f64::INFINITY, 15.0, "p_chunk_seconds"),
        (600.0, 180.0, 180.0, "p_overlap_seconds"),
        (600.0, 180.0, 200.0, "p_overlap_seconds"),
        (600.0, 180.0, 0.0, "p_overlap_seconds"),
        (600.0, 180.0, f64::NAN, "p_overlap_seconds"),
    ];
    for (duration, chunk_seconds, overlap_seconds, argument) in cases {
        let id = Uuid::new_v4();
        let params = PlanParams {
            chunk_seconds,
            overlap_seconds,
        };
        let case = format!("duration {duration}, chunk {chunk_seconds}, overlap {overlap_seconds}");
        match db.register_video(id, duration, params).await {
            Err(DbError::InvalidArgument(message)) => {
                assert!(message.contains(argument), "{case}: {message}")
            }
            other => panic!("{case}: {other:?}"),
        }
        assert_eq!(
            rows_of_film(&client, id).await,
            (0, 0),
            "{case}: rows written"
        );
    }
}

#[tokio::test]
async fn the_sql_plan_equals_the_rust_plan_in_seconds_and_frames() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let mut rng = Rng(2940);
    let param_sets = [
        PlanParams::default(),
        PlanParams {
            chunk_seconds: 60.0,
            overlap_seconds: 5.0,
        },
        PlanParams {
            chunk_seconds: 120.0,
            overlap_seconds: 7.5,
        },
    ];
    let mut checked = 0;
    for rate in ["25/1", "24000/1001"] {
        let fps = fps(rate);
        // Exact multiples of the step (plus the overlap) and their neighbours
        // are where a sliver chunk would appear.
        let mut durations: Vec<i64> = [165.0, 180.0, 345.0, 510.0, 2805.0, 2940.0, 7.6]
            .iter()
            .flat_map(|&s| {
                let f = fps.frame_at(s);
                [f - 1, f, f + 1]
            })
            .collect();
        durations.extend((0..140).map(|_| 1 + rng.below(250_000) as i64));
        for (i, frames) in durations.into_iter().enumerate() {
            let params = param_sets[i % param_sets.len()];
            let id = Uuid::new_v4();
            let count = db
                .register_film(id, "/films/x.mp4", &fixtures::media(frames, fps), params)
                .await
                .unwrap();
            let seconds = plan::plan(plan::duration_seconds(frames, fps), params).unwrap();
            let spans = plan::plan_frames(frames, fps, params).unwrap();
            let rows = client
                .query_typed(
                    "SELECT chunk_index, start_seconds, end_seconds, start_frame, end_frame \
                     FROM shotlist.chunks WHERE video_id = $1 ORDER BY chunk_index",
                    &[(&id, Type::UUID)],
                )
                .await
                .unwrap();
            let case = format!("{frames} frames at {rate}, {params:?}");
            assert_eq!(count as usize, spans.len(), "{case}");
            assert_eq!(rows.len(), spans.len(), "{case}");
            for ((row, s), f) in rows.iter().zip(&seconds).zip(&spans) {
                let index: i32 = row.get(0);
                assert_eq!(index as u32, s.index, "{case}");
                assert_eq!(
                    row.get::<_, f64>(1),
                    s.start_seconds,
                    "{case} chunk {index}"
                );
                assert_eq!(row.get::<_, f64>(2), s.end_seconds, "{case} chunk {index}");
                assert_eq!(row.get::<_, i64>(3), f.start_frame, "{case} chunk {index}");
                assert_eq!(row.get::<_, i64>(4), f.end_frame, "{case} chunk {index}");
            }
            checked += 1;
        }
    }
    println!("{checked} films planned identically by SQL and Rust");
}

/// Checks `shotlist.timecode` against `time::timecode` for many frames at
/// each of `rates`.
async fn assert_sql_timecodes_equal_rust(rates: &[&str]) {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let mut rng = Rng(25);
    let mut frames: Vec<i64> = (0..3000)
        .chain([-5, 86_399, 86_400, 107_892, 2_159_999, 9_000_000])
        .collect();
    frames.extend((0..2000).map(|_| rng.below(30_000_000) as i64));
    for rate in rates {
        let fps = fps(rate);
        let (num, den) = (fps.num() as i32, fps.den() as i32);
        let rows = client
            .query_typed(
                "SELECT f, shotlist.timecode(f, $2, $3) FROM unnest($1::bigint[]) AS f",
                &[
                    (&frames, Type::INT8_ARRAY),
                    (&num, Type::INT4),
                    (&den, Type::INT4),
                ],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), frames.len());
        for row in rows {
            let frame: i64 = row.get(0);
            let label: String = row.get(1);
            assert_eq!(label, time::timecode(frame, fps), "frame {frame} at {rate}");
        }
    }
}

#[tokio::test]
async fn the_sql_timecode_equals_the_rust_timecode_at_film_and_video_rates() {
    let rates = [
        "25/1",
        "24000/1001",
        "24/1",
        "30000/1001",
        "60000/1001",
        "50/1",
        "30/1",
        "1/1",
    ];
    assert_sql_timecodes_equal_rust(&rates).await;
}

/// High-speed footage (phones record 120 and 240 fps) has a three-digit
/// frame field.
#[tokio::test]
async fn the_sql_timecode_equals_the_rust_timecode_at_rates_above_100_fps() {
    assert_sql_timecodes_equal_rust(&["120/1", "240/1", "120000/1001"]).await;
}

#[tokio::test]
async fn update_chunk_status_of_an_unknown_film_is_not_found() {
    let (db, _url) = fresh_db().await;
    let id = Uuid::new_v4();
    match db.update_chunk_status(id, 0, "completed", None).await {
        Err(DbError::NotFound(message)) => assert!(message.contains(&id.to_string()), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn update_chunk_status_of_a_chunk_index_out_of_range_is_not_found_naming_the_index() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    for index in [18, -1] {
        match db.update_chunk_status(id, index, "completed", None).await {
            Err(DbError::NotFound(message)) => {
                assert!(message.contains(&format!("chunk {index}")), "{message}")
            }
            other => panic!("chunk {index}: {other:?}"),
        }
    }
    assert_eq!(db.chunk_progress(id).await.unwrap()["completedChunks"], 0);
}

#[tokio::test]
async fn update_chunk_status_with_an_unknown_status_is_an_invalid_argument() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    match db.update_chunk_status(id, 0, "done", None).await {
        Err(DbError::InvalidArgument(message)) => assert!(message.contains("done"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(chunk_view(&db, id, 0).await["status"], "pending");
}

#[tokio::test]
async fn a_completed_chunk_never_goes_back() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    db.update_chunk_status(id, 3, "processing", None)
        .await
        .unwrap();
    let done = db
        .update_chunk_status(id, 3, "completed", None)
        .await
        .unwrap();
    assert_eq!(
        (done.completed_chunks, done.failed_chunks, done.finished),
        (1, 0, false)
    );
    let before = chunk_view(&db, id, 3).await;
    for status in ["processing", "pending", "failed", "completed"] {
        let progress = db
            .update_chunk_status(id, 3, status, Some("late"))
            .await
            .unwrap();
        assert_eq!(
            (progress.completed_chunks, progress.failed_chunks),
            (1, 0),
            "after {status}"
        );
        assert!(!progress.finished);
        assert_eq!(chunk_view(&db, id, 3).await, before, "after {status}");
    }
    assert_eq!(before["status"], "completed");
}

#[tokio::test]
async fn a_failed_chunk_never_goes_back() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let failed = db
        .update_chunk_status(id, 5, "failed", Some("provider timed out"))
        .await
        .unwrap();
    assert_eq!((failed.completed_chunks, failed.failed_chunks), (0, 1));
    let before = chunk_view(&db, id, 5).await;
    for status in ["processing", "pending", "completed", "failed"] {
        let progress = db.update_chunk_status(id, 5, status, None).await.unwrap();
        assert_eq!(
            (progress.completed_chunks, progress.failed_chunks),
            (0, 1),
            "after {status}"
        );
        assert_eq!(chunk_view(&db, id, 5).await, before, "after {status}");
    }
    assert_eq!(before["status"], "failed");
    assert_eq!(before["error"], "provider timed out");
}

/// One delivery of a status update, as a queue would hand it to a worker.
#[derive(Debug, Clone, Copy)]
struct Message {
    chunk: i32,
    status: &'static str,
    /// After this update returns, the worker sends a duplicate `processing`
    /// for the chunk: a late delivery that arrives after the chunk ended.
    then_late_processing: bool,
}

/// What one call returned.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: &'static str,
    progress: Progress,
}

/// The deliveries of one round: every chunk's `processing` and its final
/// status each sent twice, in a random interleaving that keeps each chunk's
/// own order; about a third of the chunks also get a late `processing`.
fn schedule(rng: &mut Rng, fates: &[&'static str]) -> VecDeque<Message> {
    let mut per_chunk: Vec<Vec<Message>> = fates
        .iter()
        .enumerate()
        .map(|(k, &fate)| {
            let m = |status, late| Message {
                chunk: k as i32,
                status,
                then_late_processing: late,
            };
            // Reversed: popped from the back.
            vec![
                m(fate, rng.below(3) == 0),
                m(fate, false),
                m("processing", false),
                m("processing", false),
            ]
        })
        .collect();
    let mut queue = VecDeque::new();
    while per_chunk.iter().any(|c| !c.is_empty()) {
        let open: Vec<usize> = (0..per_chunk.len())
            .filter(|&k| !per_chunk[k].is_empty())
            .collect();
        let k = open[rng.below(open.len() as u64) as usize];
        queue.push_back(per_chunk[k].pop().expect("an open chunk has messages"));
    }
    queue
}

/// Runs one round: `workers.len()` workers, each on its own connection, take
/// the deliveries from one queue and send them. Returns every answer.
async fn race_round(workers: &[Db], id: Uuid, seed: u64, fates: &[&'static str]) -> Vec<Answer> {
    let mut rng = Rng(seed);
    let queue = Arc::new(Mutex::new(schedule(&mut rng, fates)));
    let start = Arc::new(Barrier::new(workers.len()));
    let tasks = workers.iter().enumerate().map(|(w, db)| {
        let (db, queue, start) = (db.clone(), queue.clone(), start.clone());
        let mut rng = Rng(seed ^ ((w as u64 + 1) << 32));
        tokio::spawn(async move {
            let mut answers = Vec::new();
            start.wait().await;
            loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(message) = next else { break };
                if rng.below(2) == 0 {
                    tokio::task::yield_now().await;
                }
                let error = (message.status == "failed").then_some("analysis failed");
                let progress = db
                    .update_chunk_status(id, message.chunk, message.status, error)
                    .await;
                let progress = progress.unwrap_or_else(|e| panic!("seed {seed}: {message:?}: {e}"));
                answers.push(Answer {
                    status: message.status,
                    progress,
                });
                if message.then_late_processing {
                    let late = db
                        .update_chunk_status(id, message.chunk, "processing", None)
                        .await;
                    let progress =
                        late.unwrap_or_else(|e| panic!("seed {seed}: late {message:?}: {e}"));
                    answers.push(Answer {
                        status: "processing",
                        progress,
                    });
                }
            }
            answers
        })
    });
    let mut answers = Vec::new();
    for result in futures::future::join_all(tasks).await {
        answers.extend(result.expect("worker task"));
    }
    answers
}

/// Drives films of 18 chunks through `update_chunk_status` from each number
/// of concurrent workers, `rounds` times each; `failed_in_4` of 4 chunks (on
/// average) end failed instead of completed. Checks every round.
async fn race(worker_counts: &[usize], rounds: u64, failed_in_4: u64) {
    let (db, url) = fresh_db().await;
    let mut calls = 0;
    for &count in worker_counts {
        let _permit = WORKER_CONNECTIONS
            .acquire_many(count as u32)
            .await
            .expect("semaphore open");
        let mut workers = Vec::with_capacity(count);
        for _ in 0..count {
            workers.push(Db::connect(&url, 1).await.expect("worker connection"));
        }
        for round in 0..rounds {
            let seed = ((count as u64) << 16) | round | (failed_in_4 << 40);
            let mut rng = Rng(seed.wrapping_mul(31));
            let fates: Vec<&'static str> = (0..18)
                .map(|_| {
                    if rng.below(4) < failed_in_4 {
                        "failed"
                    } else {
                        "completed"
                    }
                })
                .collect();
            let id = Uuid::new_v4();
            assert_eq!(
                db.register_video(id, 2940.0, PlanParams::default())
                    .await
                    .unwrap(),
                18
            );
            let answers = race_round(&workers, id, seed, &fates).await;
            calls += answers.len();
            check_round(&db, id, seed, &fates, &answers).await;
        }
    }
    println!(
        "{} rounds with {worker_counts:?} workers ({failed_in_4} in 4 chunks failing): {calls} calls, \
         always exactly one finished",
        rounds * worker_counts.len() as u64
    );
}

async fn check_round(db: &Db, id: Uuid, seed: u64, fates: &[&'static str], answers: &[Answer]) {
    let completed = fates.iter().filter(|&&f| f == "completed").count() as u32;
    let failed = 18 - completed;
    let finishers: Vec<&Answer> = answers.iter().filter(|a| a.progress.finished).collect();
    assert_eq!(
        finishers.len(),
        1,
        "seed {seed}: finished answers {finishers:?}"
    );
    let finisher = finishers[0];
    assert_ne!(finisher.status, "processing", "seed {seed}");
    assert_eq!(
        finisher.progress.completed_chunks + finisher.progress.failed_chunks,
        18,
        "seed {seed}"
    );
    assert!(
        answers.iter().all(|a| a.progress.total_chunks == 18),
        "seed {seed}"
    );
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["completedChunks"], completed, "seed {seed}");
    assert_eq!(progress["failedChunks"], failed, "seed {seed}");
    let statuses: Vec<&str> = progress["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, fates, "seed {seed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_late_updates_from_5_18_and_50_workers_end_18_of_18_with_one_finished() {
    race(&[5, 18, 50], 30, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completed_and_failed_chunks_from_5_18_and_50_workers_are_counted_with_one_finished() {
    race(&[5, 18, 50], 15, 1).await;
}

/// The old system's progress document, rebuilt by each worker: read it, set
/// its own chunk's entry, write the whole document back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_old_read_modify_write_loses_updates_that_update_chunk_status_keeps() {
    let (db, url) = fresh_db().await;
    let _permit = WORKER_CONNECTIONS
        .acquire_many(18)
        .await
        .expect("semaphore open");
    let setup = connect(&url).await;
    setup
        .batch_execute("CREATE TABLE legacy_videos (id uuid PRIMARY KEY, progress jsonb NOT NULL)")
        .await
        .unwrap();
    let legacy_id = Uuid::new_v4();
    setup
        .query_typed(
            "INSERT INTO legacy_videos VALUES ($1, '{}')",
            &[(&legacy_id, Type::UUID)],
        )
        .await
        .unwrap();
    // Every read happens before any write, as it can with five Lambdas.
    let between = Arc::new(Barrier::new(18));
    let legacy = (0..18).map(|k: u32| {
        let (url, between) = (url.clone(), between.clone());
        tokio::spawn(async move {
            let client = connect(&url).await;
            let row = client
                .query_typed_one(
                    "SELECT progress FROM legacy_videos WHERE id = $1",
                    &[(&legacy_id, Type::UUID)],
                )
                .await
                .unwrap();
            let mut document: Value = row.get(0);
            between.wait().await;
            document[k.to_string()] = json!({"status": "completed"});
            client
                .query_typed(
                    "UPDATE legacy_videos SET progress = $2 WHERE id = $1",
                    &[(&legacy_id, Type::UUID), (&document, Type::JSONB)],
                )
                .await
                .unwrap();
        })
    });
    for task in futures::future::join_all(legacy).await {
        task.unwrap();
    }
    let row = setup
        .query_typed_one(
            "SELECT progress FROM legacy_videos WHERE id = $1",
            &[(&legacy_id, Type::UUID)],
        )
        .await
        .unwrap();
    let document: Value = row.get(0);
    let kept = document.as_object().unwrap().len();
    println!(
        "old design: {kept} of 18 chunk updates survived, {} lost",
        18 - kept
    );
    assert!(
        kept < 18,
        "the read-modify-write kept every update: {document}"
    );

    let id = Uuid::new_v4();
    db.register_video(id, 2940.0, PlanParams::default())
        .await
        .unwrap();
    let between = Arc::new(Barrier::new(18));
    let finished = Arc::new(AtomicU32::new(0));
    let current = (0..18).map(|k: i32| {
        let (url, between, finished) = (url.clone(), between.clone(), finished.clone());
        tokio::spawn(async move {
            let db = Db::connect(&url, 1).await.unwrap();
            db.chunk_progress(id).await.unwrap();
            between.wait().await;
            if db
                .update_chunk_status(id, k, "completed", None)
                .await
                .unwrap()
                .finished
            {
                finished.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    for task in futures::future::join_all(current).await {
        task.unwrap();
    }
    let progress = db.chunk_progress(id).await.unwrap();
    println!(
        "update_chunk_status: {} of 18 completed",
        progress["completedChunks"]
    );
    assert_eq!(progress["completedChunks"], 18);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_claim_returns_the_chunk_frames_and_a_lease_token() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 1).await;
    assert_eq!((chunk.start_frame, chunk.end_frame), (4125, 8625));
    assert_eq!(
        (chunk.attempt, chunk.chunk_index, chunk.total_chunks),
        (1, 1, 18)
    );
    assert_eq!(
        (chunk.fps.as_str(), chunk.duration_frames),
        ("25/1", FILM_FRAMES)
    );
    assert_eq!(chunk.source.as_deref(), Some("/films/test.mp4"));
    assert!(!chunk.lease_token.is_nil());
    let last = claimed(&db, id, 17).await;
    assert_eq!((last.start_frame, last.end_frame), (70_125, FILM_FRAMES));
    assert_ne!(last.lease_token, chunk.lease_token);
    assert_eq!(chunk_view(&db, id, 1).await["status"], "processing");
}

#[tokio::test]
async fn a_second_claim_while_the_lease_is_live_is_busy() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    claimed(&db, id, 0).await;
    assert_eq!(
        claim(&db, id, 0, Duration::from_secs(600)).await,
        Claim::Busy
    );
    assert_eq!(chunk_view(&db, id, 0).await["attempts"], 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_first_worker_can_no_longer_commit() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let Claim::Claimed(first) = claim(&db, id, 2, Duration::from_millis(50)).await else {
        panic!("first claim refused")
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = claimed(&db, id, 2).await;
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_token, first.lease_token);
    assert!(chunk_view(&db, id, 2).await["error"]
        .as_str()
        .unwrap()
        .contains("lease expired"));

    let late = db
        .complete_chunk(id, 2, first.lease_token, &[shot(8250, 9000)])
        .await
        .unwrap();
    assert_eq!(late.outcome, Outcome::LeaseLost);
    assert_eq!(late.progress.completed_chunks, 0);
    assert!(saved_shots(&db, id, 2).await.is_empty());
    assert_eq!(chunk_view(&db, id, 2).await["status"], "processing");

    let shots = [shot(8250, 9000), shot(9000, 12_750)];
    let report = db
        .complete_chunk(id, 2, second.lease_token, &shots)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.progress.completed_chunks, 1);
    assert_eq!(saved_shots(&db, id, 2).await, shots);
    let view = chunk_view(&db, id, 2).await;
    assert_eq!(
        (view["status"].as_str(), view["attempts"].as_i64()),
        (Some("completed"), Some(2))
    );
    assert_eq!(view["error"], Value::Null);
}

#[tokio::test]
async fn completing_a_chunk_twice_answers_the_same_and_keeps_the_first_shots() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 0).await;
    let shots = [shot(0, 100), shot(100, 4500)];
    assert_eq!(
        db.complete_chunk(id, 0, chunk.lease_token, &shots)
            .await
            .unwrap()
            .outcome,
        Outcome::Completed
    );
    // The same attempt repeating its call (its answer was lost) gets the
    // same answer and writes nothing; anyone else is told it is done.
    let again = db
        .complete_chunk(id, 0, chunk.lease_token, &[shot(0, 4500)])
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::Completed);
    assert_eq!(
        (again.progress.completed_chunks, again.progress.finished),
        (1, false)
    );
    assert_eq!(saved_shots(&db, id, 0).await, shots);
    let stranger = db.complete_chunk(id, 0, Uuid::new_v4(), &[]).await.unwrap();
    assert_eq!(stranger.outcome, Outcome::AlreadyCompleted);
    assert_eq!(saved_shots(&db, id, 0).await, shots);
}

#[tokio::test]
async fn shots_outside_the_chunk_reversed_or_not_an_array_are_refused_and_nothing_is_written() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 1).await;
    let inside = shot(4125, 5000);
    let bad_lists = [
        vec![inside.clone(), shot(4000, 4200)],
        vec![inside.clone(), shot(8000, 8700)],
        vec![shot(5000, 4900)],
        vec![shot(5000, 5000)],
        vec![shot(-3, 4200)],
    ];
    for shots in bad_lists {
        match db.complete_chunk(id, 1, chunk.lease_token, &shots).await {
            Err(DbError::InvalidArgument(message)) => {
                assert!(message.contains("p_shots"), "{message}")
            }
            other => panic!("{shots:?} accepted: {other:?}"),
        }
        assert!(
            saved_shots(&db, id, 1).await.is_empty(),
            "{shots:?} half written"
        );
    }
    for document in [
        json!({"startFrame": 4125, "endFrame": 5000}),
        json!("shots"),
        json!(null),
    ] {
        let sql = "SELECT public.complete_chunk($1, 1, $2, $3)";
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&id, Type::UUID),
            (&chunk.lease_token, Type::UUID),
            (&document, Type::JSONB),
        ];
        assert_eq!(sqlstate(&client, sql, &params).await, "22023", "{document}");
    }
    let view = chunk_view(&db, id, 1).await;
    assert_eq!(view["status"], "processing");
    assert_eq!(db.chunk_progress(id).await.unwrap()["completedChunks"], 0);
    // The lease survived the refused commits.
    let report = db
        .complete_chunk(id, 1, chunk.lease_token, std::slice::from_ref(&inside))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(saved_shots(&db, id, 1).await, [inside]);
}

#[tokio::test]
async fn a_retryable_failure_with_attempts_left_puts_the_chunk_back_to_pending() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 4).await;
    let report = db
        .fail_chunk(id, 4, chunk.lease_token, "provider answered 503", true, 3)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Retry);
    assert_eq!(
        (
            report.progress.failed_chunks,
            report.progress.completed_chunks
        ),
        (0, 0)
    );
    let view = chunk_view(&db, id, 4).await;
    assert_eq!(view["status"], "pending");
    assert_eq!(view["error"], "provider answered 503");
    assert_eq!(claimed(&db, id, 4).await.attempt, 2);
}

#[tokio::test]
async fn a_permanent_failure_fails_the_chunk_for_good_and_counts_it() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 6).await;
    let report = db
        .fail_chunk(id, 6, chunk.lease_token, "not a video", false, 3)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(
        (report.progress.failed_chunks, report.progress.finished),
        (1, false)
    );
    let view = chunk_view(&db, id, 6).await;
    assert_eq!(
        (view["status"].as_str(), view["error"].as_str()),
        (Some("failed"), Some("not a video"))
    );
    let again = claim(&db, id, 6, Duration::from_secs(600)).await;
    assert_eq!(
        again,
        Claim::Terminal {
            status: "failed".into(),
            progress: None
        }
    );
    let duplicate = db
        .fail_chunk(id, 6, chunk.lease_token, "not a video", false, 3)
        .await
        .unwrap();
    assert_eq!(
        (duplicate.outcome, duplicate.progress.failed_chunks),
        (Outcome::Failed, 1)
    );
    let stranger = db
        .fail_chunk(id, 6, Uuid::new_v4(), "late", false, 3)
        .await
        .unwrap();
    assert_eq!(stranger.outcome, Outcome::AlreadyFailed);
}

#[tokio::test]
async fn a_retryable_failure_of_the_last_attempt_fails_the_chunk_and_finishes_the_film() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    for attempt in 1..=3 {
        let chunk = claimed(&db, id, 0).await;
        assert_eq!(chunk.attempt, attempt);
        let report = db
            .fail_chunk(id, 0, chunk.lease_token, "timed out", true, 3)
            .await
            .unwrap();
        let expected = if attempt < 3 {
            Outcome::Retry
        } else {
            Outcome::Failed
        };
        assert_eq!(report.outcome, expected, "attempt {attempt}");
        assert_eq!(report.progress.finished, attempt == 3);
    }
    assert_eq!(chunk_view(&db, id, 0).await["status"], "failed");
}

#[tokio::test]
async fn a_chunk_whose_workers_all_vanished_is_failed_by_the_claim_after_its_last_attempt() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    for attempt in 1..=3 {
        match claim(&db, id, 0, Duration::from_millis(50)).await {
            Claim::Claimed(c) => assert_eq!(c.attempt, attempt),
            other => panic!("attempt {attempt}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match claim(&db, id, 0, Duration::from_secs(600)).await {
        Claim::Terminal {
            status,
            progress: Some(progress),
        } => {
            assert_eq!(status, "failed");
            assert_eq!((progress.failed_chunks, progress.finished), (1, true));
        }
        other => panic!("{other:?}"),
    }
    let view = chunk_view(&db, id, 0).await;
    assert_eq!(view["status"], "failed");
    assert!(
        view["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{view}"
    );
    let again = claim(&db, id, 0, Duration::from_secs(600)).await;
    assert_eq!(
        again,
        Claim::Terminal {
            status: "failed".into(),
            progress: None
        }
    );
}

#[tokio::test]
async fn a_commit_after_the_chunk_was_force_failed_writes_nothing() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 7).await;
    let forced = db
        .update_chunk_status(id, 7, "failed", Some("force-finalized"))
        .await
        .unwrap();
    assert_eq!(forced.failed_chunks, 1);
    let report = db
        .complete_chunk(id, 7, chunk.lease_token, &[shot(28_875, 29_000)])
        .await
        .unwrap();
    assert!(
        matches!(report.outcome, Outcome::AlreadyFailed | Outcome::LeaseLost),
        "{report:?}"
    );
    assert_eq!(
        (
            report.progress.completed_chunks,
            report.progress.failed_chunks
        ),
        (0, 1)
    );
    assert!(saved_shots(&db, id, 7).await.is_empty());
    let failure = db
        .fail_chunk(id, 7, chunk.lease_token, "late", true, 3)
        .await
        .unwrap();
    assert_eq!(
        (failure.outcome, failure.progress.failed_chunks),
        (Outcome::AlreadyFailed, 1)
    );
    let view = chunk_view(&db, id, 7).await;
    assert_eq!(
        (view["status"].as_str(), view["error"].as_str()),
        (Some("failed"), Some("force-finalized"))
    );
}

/// Five workers got the same chunk (a duplicate delivery): they claim it in a
/// loop, and each holder gives it back as a retryable failure until the last
/// attempt commits. The flag proves no two held it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_concurrent_workers_on_one_chunk_never_hold_it_at_the_same_time() {
    const ATTEMPTS: u32 = 8;
    let (db, url) = fresh_db().await;
    let id = film(&db, 2500, "25/1").await;
    let held = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(5));
    let tasks = (0..5).map(|_| {
        let (url, held, start) = (url.clone(), held.clone(), start.clone());
        tokio::spawn(async move {
            let db = Db::connect(&url, 1).await.unwrap();
            let (mut wins, mut finished) = (Vec::new(), 0);
            start.wait().await;
            loop {
                match db
                    .claim_chunk(id, 0, Duration::from_secs(600), ATTEMPTS)
                    .await
                    .unwrap()
                {
                    Claim::Claimed(chunk) => {
                        assert!(
                            !held.swap(true, Ordering::SeqCst),
                            "two workers hold chunk 0"
                        );
                        wins.push(chunk.attempt);
                        tokio::task::yield_now().await;
                        held.store(false, Ordering::SeqCst);
                        let report = if chunk.attempt < ATTEMPTS {
                            db.fail_chunk(id, 0, chunk.lease_token, "try again", true, ATTEMPTS)
                                .await
                        } else {
                            db.complete_chunk(id, 0, chunk.lease_token, &[shot(0, 2500)])
                                .await
                        };
                        finished += u32::from(report.unwrap().progress.finished);
                    }
                    Claim::Busy => tokio::task::yield_now().await,
                    Claim::Terminal { status, .. } => {
                        assert_eq!(status, "completed");
                        return (wins, finished);
                    }
                }
            }
        })
    });
    let mut attempts = BTreeSet::new();
    let mut finished = 0;
    for task in futures::future::join_all(tasks).await {
        let (wins, f) = task.unwrap();
        attempts.extend(wins);
        finished += f;
    }
    assert_eq!(attempts, (1..=ATTEMPTS).collect::<BTreeSet<_>>());
    assert_eq!(finished, 1);
    assert_eq!(saved_shots(&db, id, 0).await, [shot(0, 2500)]);
}

#[tokio::test]
async fn five_simultaneous_claims_of_one_chunk_give_it_to_exactly_one() {
    let (db, url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let mut workers = Vec::new();
    for _ in 0..5 {
        workers.push(Db::connect(&url, 1).await.unwrap());
    }
    let claims = workers
        .iter()
        .map(|w| claim(w, id, 9, Duration::from_secs(600)));
    let claims = futures::future::join_all(claims).await;
    let winners = claims
        .iter()
        .filter(|c| matches!(c, Claim::Claimed(_)))
        .count();
    let busy = claims.iter().filter(|c| **c == Claim::Busy).count();
    assert_eq!((winners, busy), (1, 4), "{claims:?}");
}

#[tokio::test]
async fn chunk_progress_lists_every_chunk_with_its_timecodes_attempts_and_error() {
    let (db, _url) = fresh_db().await;
    let id = film(&db, FILM_FRAMES, "25/1").await;
    let chunk = claimed(&db, id, 2).await;
    db.fail_chunk(id, 2, chunk.lease_token, "provider answered 429", true, 3)
        .await
        .unwrap();
    db.update_chunk_status(id, 0, "completed", None)
        .await
        .unwrap();
    db.update_chunk_status(id, 5, "failed", Some("bad stream"))
        .await
        .unwrap();
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["totalChunks"], 18);
    assert_eq!(progress["completedChunks"], 1);
    assert_eq!(progress["failedChunks"], 1);
    let timed = progress["chunks"].as_array().unwrap();
    assert_eq!(timed.len(), 18);
    let keys: BTreeSet<&str> = timed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "index",
        "status",
        "startTimecode",
        "endTimecode",
        "attempts",
        "error",
        "updatedAt",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    // When each chunk last changed is the database's clock: left out of the
    // exact comparisons below.
    let chunks: Vec<Value> = timed
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().unwrap().remove("updatedAt");
            c
        })
        .collect();
    assert_eq!(
        chunks[1],
        json!({"index": 1, "status": "pending", "startTimecode": "00:02:45:00",
               "endTimecode": "00:05:45:00", "attempts": 0, "error": null})
    );
    assert_eq!(
        chunks[2],
        json!({"index": 2, "status": "pending", "startTimecode": "00:05:30:00",
               "endTimecode": "00:08:30:00", "attempts": 1, "error": "provider answered 429"})
    );
    assert_eq!(
        (
            chunks[0]["status"].as_str(),
            chunks[0]["startTimecode"].as_str()
        ),
        (Some("completed"), Some("00:00:00:00"))
    );
    assert_eq!(
        (chunks[5]["status"].as_str(), chunks[5]["error"].as_str()),
        (Some("failed"), Some("bad stream"))
    );
    assert_eq!(
        (
            chunks[17]["startTimecode"].as_str(),
            chunks[17]["endTimecode"].as_str()
        ),
        (Some("00:46:45:00"), Some("00:49:00:00"))
    );
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_retryable_error_naming_the_server_not_the_password() {
    let url = "postgresql://u:secretpw@127.0.0.1:1/x";
    let error = match Db::connect(url, 1).await {
        Err(e) => e,
        Ok(_) => panic!("connected to port 1"),
    };
    assert!(matches!(error, DbError::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("secretpw"), "{message}");
    assert!(!format!("{error:?}").contains("secretpw"), "{error:?}");
}

async fn functions_named(client: &Client, name: &str) -> i64 {
    let row = client
        .query_typed_one(
            "SELECT count(*) FROM pg_catalog.pg_proc WHERE proname = $1",
            &[(&name, Type::TEXT)],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let url = fresh_database().await;
    let db = Db::connect(&url, 2).await.unwrap();
    assert_eq!(db.migrate().await.unwrap(), migration_names());
    assert_eq!(db.migrate().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_migrations_of_a_fresh_database_all_succeed_and_apply_once() {
    let url = fresh_database().await;
    let mut migrators = Vec::new();
    for _ in 0..4 {
        migrators.push(Db::connect(&url, 1).await.unwrap());
    }
    let results = futures::future::join_all(migrators.iter().map(Db::migrate)).await;
    let mut applied = Vec::new();
    for result in results {
        applied.extend(result.expect("a concurrent migration failed"));
    }
    // Two migrators may each apply some: together, each exactly once.
    applied.sort();
    assert_eq!(applied, migration_names());
    let client = connect(&url).await;
    for function in [
        "register_video",
        "update_chunk_status",
        "claim_chunk",
        "complete_chunk",
        "chunk_progress",
    ] {
        assert_eq!(functions_named(&client, function).await, 1, "{function}");
    }
    let rows: i64 = client
        .query_typed_one("SELECT count(*) FROM shotlist.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, MIGRATIONS.len() as i64);
}

/// The names of every migration, in order.
fn migration_names() -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect()
}

fn migration_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_migrations_folder_and_the_embedded_list_name_the_same_files_in_order() {
    let files = migration_files();
    let stems: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let names: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
    assert_eq!(stems, names);
    for (file, (name, sql)) in files.iter().zip(MIGRATIONS) {
        assert_eq!(
            &std::fs::read_to_string(file).unwrap(),
            sql,
            "{name} differs from its file"
        );
    }
}

#[tokio::test]
async fn the_sql_files_apply_twice_by_hand_with_psql_and_migrate_then_has_nothing_to_do() {
    let url = fresh_database().await;
    for round in 1..=2 {
        for file in migration_files() {
            let output = tokio::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f"])
                .arg(&file)
                .output()
                .await
                .expect("psql runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "round {round}, {}: {stderr}",
                file.display()
            );
            assert!(!stderr.contains("ERROR"), "round {round}: {stderr}");
        }
    }
    let db = Db::connect(&url, 1).await.unwrap();
    assert_eq!(db.migrate().await.unwrap(), Vec::<String>::new());
    let client = connect(&url).await;
    assert_eq!(functions_named(&client, "register_video").await, 1);
    let id = Uuid::new_v4();
    assert_eq!(
        db.register_video(id, 2940.0, PlanParams::default())
            .await
            .unwrap(),
        18
    );
}

#[tokio::test]
async fn anon_and_authenticated_may_not_call_the_functions_but_service_role_may() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    let register = "SELECT public.register_video($1, 2940)";
    let update = "SELECT public.update_chunk_status($1, 0, 'completed')";
    let view = "SELECT public.chunk_progress($1)";
    // Reading their own films' rows is allowed since 0007 (tests/security.rs).
    let table = "DELETE FROM shotlist.videos WHERE video_id = $1";
    for role in ["anon", "authenticated"] {
        client
            .batch_execute(&format!("SET ROLE {role}"))
            .await
            .unwrap();
        for sql in [register, update, view, table] {
            assert_eq!(
                sqlstate(&client, sql, &[(&id, Type::UUID)]).await,
                "42501",
                "{role}: {sql}"
            );
        }
        client.batch_execute("RESET ROLE").await.unwrap();
    }
    assert_eq!(rows_of_film(&client, id).await, (0, 0));

    client.batch_execute("SET ROLE service_role").await.unwrap();
    let chunks: i32 = client
        .query_typed_one(register, &[(&id, Type::UUID)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunks, 18);
    let progress: Value = client
        .query_typed_one(update, &[(&id, Type::UUID)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(progress["completedChunks"], 1);
    client.batch_execute("RESET ROLE").await.unwrap();
}
