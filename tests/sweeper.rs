//! The stuck-chunk sweeper (`migrations/0006_sweep.sql`, `shared::sweep`,
//! `shotlist sweep`) against a real PostgreSQL, and, for the messages, the
//! local SQS server (moto, named by `SHOTLIST_TEST_SQS_URL`; without it the
//! one test that needs it fails under CI and is skipped elsewhere).
//!
//! A worker "vanishes" the way a killed one does: it claims its chunk with a
//! lease of a fifth of a second and never renews, commits or reports. Time
//! that a test cannot wait for (a stale period of an hour) is made to have
//! passed by moving the rows' timestamps back.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::cloud::messages::ChunkMessage;
use shotlist_shared::cloud::queue::{ensure_queue_pair, MessageQueue};
use shotlist_shared::db::{
    Claim, ClaimedChunk, Db, DbError, Outcome, RequeueReason, RequeuedChunk, Submission,
};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::sweep::{
    sweep, DatabaseOnly, Finalization, FinalizedFilm, Requeue, Requeued, SendToQueues,
    SweepOptions, SweepReport,
};
use shotlist_shared::worker::{self, Done, WorkerConfig};
use shotlist_tests::cli_bin::shotlist_command;
use shotlist_tests::cloud::{RecordingQueue, ScriptedAnalyzer};
use shotlist_tests::fixtures::{chunk_state, described_film, media};
use shotlist_tests::pg::{connect, fresh_db};
use uuid::Uuid;

/// A lease short enough to run out while the test waits for it.
const VANISHING_LEASE: Duration = Duration::from_millis(200);

/// Longer than [`VANISHING_LEASE`]: after it, the lease has run out.
const PAST_THE_LEASE: Duration = Duration::from_millis(300);

/// A lease no test outlives.
const LIVE_LEASE: Duration = Duration::from_secs(600);

/// 200 s at 25 fps: two chunks with the default plan.
const TWO_CHUNKS: i64 = 5_000;

/// 100 s at 25 fps: one chunk.
const ONE_CHUNK: i64 = 2_500;

/// The most a sweep may take before a test calls it stuck: far above what
/// it needs, only so that a sweep that waits on a lock fails the test rather
/// than hanging it.
const STUCK: Duration = Duration::from_secs(60);

/// A recording chunk queue and finalize queue behind the cloud's requeue.
struct Queues {
    chunks: Arc<RecordingQueue>,
    finalize: Arc<RecordingQueue>,
    requeue: SendToQueues,
}

impl Queues {
    fn new(db: &Db) -> Queues {
        let (chunks, finalize) = (RecordingQueue::new(), RecordingQueue::new());
        let requeue = SendToQueues {
            db: db.clone(),
            chunks: chunks.clone() as Arc<dyn MessageQueue>,
            finalize: finalize.clone() as Arc<dyn MessageQueue>,
        };
        Queues {
            chunks,
            finalize,
            requeue,
        }
    }
}

/// One sweep with the default options.
async fn sweep_once(db: &Db, requeue: &dyn Requeue) -> SweepReport {
    sweep_with(db, requeue, SweepOptions::default()).await
}

async fn sweep_with(db: &Db, requeue: &dyn Requeue, options: SweepOptions) -> SweepReport {
    tokio::time::timeout(STUCK, sweep(db, requeue, options))
        .await
        .expect("a sweep waits on no lock")
        .expect("the sweep ran")
}

/// Claims the chunk as a worker that is then killed: its lease runs out and
/// nothing more is heard from it. Returns its lease token.
async fn vanish(db: &Db, video_id: Uuid, chunk_index: u32) -> Uuid {
    let token = claim(db, video_id, chunk_index, VANISHING_LEASE)
        .await
        .lease_token;
    tokio::time::sleep(PAST_THE_LEASE).await;
    token
}

async fn claim(db: &Db, video_id: Uuid, chunk_index: u32, lease: Duration) -> ClaimedChunk {
    match db.claim_chunk(video_id, chunk_index, lease, 3).await {
        Ok(Claim::Claimed(chunk)) => *chunk,
        other => panic!("chunk {chunk_index} of {video_id} could not be claimed: {other:?}"),
    }
}

/// Analyzes and commits the chunk through the worker the functions use.
async fn work(db: &Db, video_id: Uuid, chunk_index: u32) -> Done {
    let analyzer = ScriptedAnalyzer::new();
    worker::process_chunk(
        db,
        analyzer.as_ref(),
        video_id,
        chunk_index,
        &WorkerConfig::default(),
    )
    .await
    .expect("the worker reached the database")
}

/// Moves back, by `seconds`, the given timestamp column of the rows `filter`
/// selects in `table`: time that a test cannot wait for.
async fn age(url: &str, table: &str, column: &str, filter: &str, seconds: u32) {
    let sql = format!(
        "UPDATE shotlist.{table} SET {column} = {column} - make_interval(secs => {seconds}) \
         WHERE {filter}"
    );
    let changed = connect(url)
        .await
        .execute(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert!(changed > 0, "{sql} changed no row");
}

fn requeued(
    video_id: Uuid,
    chunk_index: u32,
    attempts: u32,
    reason: RequeueReason,
) -> RequeuedChunk {
    RequeuedChunk {
        video_id,
        chunk_index,
        attempts,
        reason,
        queued: true,
    }
}

/// A described film submitted through the queue (its chunk messages were
/// sent), as the cloud's films are: the sweeper sends its chunks again.
async fn queued_film(db: &Db, frames: i64, fps: &str) -> Uuid {
    let video_id = described_film(db, frames, fps).await;
    db.mark_enqueued(video_id).await.expect("mark_enqueued");
    video_id
}

fn chunk_body(video_id: Uuid, chunk_index: u32) -> Value {
    json!({ "videoId": video_id, "chunkIndex": chunk_index })
}

#[tokio::test]
async fn a_chunk_whose_worker_vanished_is_requeued_once_and_then_completes_through_the_normal_worker(
) {
    let (db, _) = fresh_db().await;
    let video_id = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, video_id, 0).await;
    let queues = Queues::new(&db);

    let report = sweep_once(&db, &queues.requeue).await;
    assert_eq!(
        report.requeued,
        [requeued(video_id, 0, 1, RequeueReason::LeaseExpired)]
    );
    assert_eq!(report.messages, Some(Requeued::Sent));
    assert!(report.failed.is_empty() && report.finalized.is_empty());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(queues.chunks.sent(), [chunk_body(video_id, 0)]);
    assert!(queues.finalize.sent().is_empty());
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!(
        (state.status.as_str(), state.attempts, state.error.as_str()),
        ("pending", 1, "lease expired: the worker was lost"),
        "back to pending, its attempt still counted"
    );
    assert_eq!(
        chunk_state(&db, video_id, 1).await.status,
        "pending",
        "the other chunk is not touched"
    );

    // The message as process-chunk reads it, then the worker it runs.
    let body = serde_json::to_string(&queues.chunks.sent()[0]).unwrap();
    let message: ChunkMessage = serde_json::from_str(&body).expect("a chunk message");
    let done = work(&db, message.video_id, message.chunk_index).await;
    assert!(matches!(done, Done::Completed(_)), "{done:?}");
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("completed", 2));
    assert!(
        sweep_once(&db, &queues.requeue).await.is_empty(),
        "nothing is left to sweep"
    );
    assert_eq!(queues.chunks.sent().len(), 1, "one message in all");
}

#[tokio::test]
async fn a_chunk_whose_worker_vanished_on_its_third_attempt_fails_and_finishes_the_film_exactly_once(
) {
    let (db, _) = fresh_db().await;
    let video_id = queued_film(&db, TWO_CHUNKS, "25/1").await;
    assert!(matches!(work(&db, video_id, 1).await, Done::Completed(_)));
    for _ in 0..3 {
        vanish(&db, video_id, 0).await;
    }
    let queues = Queues::new(&db);

    let report = sweep_once(&db, &queues.requeue).await;
    assert!(report.requeued.is_empty(), "{:?}", report.requeued);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let failed = &report.failed[0];
    assert_eq!(
        (
            failed.video_id,
            failed.chunk_index,
            failed.attempts,
            failed.finished
        ),
        (video_id, 0, 3, true)
    );
    assert_eq!(
        failed.error,
        "gave up after 3 attempts: lease expired: the worker was lost"
    );
    assert_eq!(
        report.finalized,
        [FinalizedFilm {
            video_id,
            finalization: Finalization::Requested
        }]
    );
    assert_eq!(queues.finalize.sent(), [json!({ "videoId": video_id })]);
    assert!(queues.chunks.sent().is_empty());
    let progress = db.chunk_progress(video_id).await.unwrap();
    assert_eq!(
        (
            &progress["completedChunks"],
            &progress["failedChunks"],
            &progress["finished"]
        ),
        (&json!(1), &json!(1), &json!(true))
    );
    assert_eq!(chunk_state(&db, video_id, 0).await.error, failed.error);

    let again = sweep_once(&db, &queues.requeue).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(queues.finalize.sent().len(), 1, "finalize asked once");

    // The finalize message's work: the failed chunk is the sheet's gap.
    let sheet = db.finalize(video_id).await.expect("finalized");
    assert_eq!(sheet.status, SheetStatus::Partial);
    assert_eq!(
        (sheet.completed_chunks, sheet.failed_chunks),
        (1, 1),
        "the sheet's counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_sweepers_at_once_act_on_each_chunk_once_and_finish_each_film_once() {
    let (db, _) = fresh_db().await;
    let mut films = Vec::new();
    for _ in 0..4 {
        films.push(queued_film(&db, TWO_CHUNKS, "25/1").await);
    }
    let (used_up, lost_once) = films.split_at(2);
    // Every chunk's worker vanishes; those of the first two films three
    // times, which uses up their attempts.
    for round in 0..3 {
        let chunks: Vec<(Uuid, u32)> = films
            .iter()
            .filter(|f| round == 0 || used_up.contains(f))
            .flat_map(|&f| [(f, 0), (f, 1)])
            .collect();
        futures::future::join_all(
            chunks
                .iter()
                .map(|&(f, i)| claim(&db, f, i, VANISHING_LEASE)),
        )
        .await;
        tokio::time::sleep(PAST_THE_LEASE).await;
    }
    let queues = Arc::new(Queues::new(&db));

    let sweeps = (0..5).map(|_| {
        let (db, queues) = (db.clone(), queues.clone());
        tokio::spawn(async move { sweep_once(&db, &queues.requeue).await })
    });
    let reports: Vec<SweepReport> = futures::future::join_all(sweeps)
        .await
        .into_iter()
        .map(|joined| joined.expect("a sweeper ran to its end"))
        .collect();

    let mut requeued: Vec<(Uuid, u32)> = reports
        .iter()
        .flat_map(|r| r.requeued.iter().map(|c| (c.video_id, c.chunk_index)))
        .collect();
    requeued.sort();
    let mut expected: Vec<(Uuid, u32)> = lost_once.iter().flat_map(|&f| [(f, 0), (f, 1)]).collect();
    expected.sort();
    assert_eq!(requeued, expected, "each lost-once chunk requeued once");

    let mut failed: Vec<(Uuid, u32)> = reports
        .iter()
        .flat_map(|r| r.failed.iter().map(|c| (c.video_id, c.chunk_index)))
        .collect();
    failed.sort();
    let mut expected: Vec<(Uuid, u32)> = used_up.iter().flat_map(|&f| [(f, 0), (f, 1)]).collect();
    expected.sort();
    assert_eq!(failed, expected, "each used-up chunk failed once");

    let mut finished: Vec<Uuid> = reports.iter().flat_map(|r| r.finished_films()).collect();
    finished.sort();
    let mut finalized: Vec<Uuid> = reports
        .iter()
        .flat_map(|r| r.finalized.iter().map(|f| f.video_id))
        .collect();
    finalized.sort();
    let mut expected = used_up.to_vec();
    expected.sort();
    assert_eq!(finished, expected, "each film finished once");
    assert_eq!(finalized, expected, "each finished film finalized once");

    let mut sent = queues.chunks.sent();
    sent.sort_by_key(|b| b.to_string());
    let mut expected: Vec<Value> = lost_once
        .iter()
        .flat_map(|&f| [chunk_body(f, 0), chunk_body(f, 1)])
        .collect();
    expected.sort_by_key(|b| b.to_string());
    assert_eq!(sent, expected, "one chunk message per requeued chunk");
    assert_eq!(
        queues.finalize.sent().len(),
        2,
        "one finalize message per film"
    );
    for &film in used_up {
        let progress = db.chunk_progress(film).await.unwrap();
        assert_eq!(
            (&progress["failedChunks"], &progress["finished"]),
            (&json!(2), &json!(true)),
            "{film}: counted once per chunk"
        );
    }
}

#[tokio::test]
async fn a_chunk_held_by_another_transaction_is_skipped_not_waited_for_and_swept_once_free() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, video_id, 0).await;
    vanish(&db, video_id, 1).await;
    // Another transaction (a late commit, or another sweeper) holds chunk 0.
    let holder = connect(&url).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM shotlist.chunks \
             WHERE video_id = '{video_id}' AND chunk_index = 0 FOR UPDATE"
        ))
        .await
        .unwrap();

    let report = sweep_once(&db, &DatabaseOnly { db: db.clone() }).await;
    assert_eq!(
        report.requeued,
        [requeued(video_id, 1, 1, RequeueReason::LeaseExpired)],
        "the held chunk is skipped"
    );
    assert_eq!(report.messages, Some(Requeued::NotSent));

    holder.batch_execute("COMMIT").await.unwrap();
    let report = sweep_once(&db, &DatabaseOnly { db: db.clone() }).await;
    assert_eq!(
        report.requeued,
        [requeued(video_id, 0, 1, RequeueReason::LeaseExpired)]
    );
}

#[tokio::test]
async fn a_second_sweep_right_after_the_first_finds_nothing_to_do() {
    let (db, url) = fresh_db().await;
    let lost = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, lost, 0).await;
    let used_up = queued_film(&db, ONE_CHUNK, "25/1").await;
    for _ in 0..3 {
        vanish(&db, used_up, 0).await;
    }
    let waiting = queued_film(&db, ONE_CHUNK, "25/1").await;
    age(
        &url,
        "chunks",
        "updated_at",
        &format!("video_id = '{waiting}'"),
        3600,
    )
    .await;
    let unfinalized = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, unfinalized, 0).await.finished());
    age(
        &url,
        "videos",
        "finished_at",
        &format!("video_id = '{unfinalized}'"),
        3600,
    )
    .await;
    let queues = Queues::new(&db);

    let first = sweep_once(&db, &queues.requeue).await;
    let mut requeued: Vec<(Uuid, u32)> = first
        .requeued
        .iter()
        .map(|c| (c.video_id, c.chunk_index))
        .collect();
    requeued.sort();
    let mut expected = vec![(lost, 0), (waiting, 0)];
    expected.sort();
    assert_eq!(requeued, expected);
    assert_eq!(first.failed.len(), 1);
    let mut finalized: Vec<Uuid> = first.finalized.iter().map(|f| f.video_id).collect();
    finalized.sort();
    let mut expected = vec![used_up, unfinalized];
    expected.sort();
    assert_eq!(finalized, expected);
    let sent = (queues.chunks.sent().len(), queues.finalize.sent().len());
    assert_eq!(sent, (2, 2));

    let second = sweep_once(&db, &queues.requeue).await;
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(
        (queues.chunks.sent().len(), queues.finalize.sent().len()),
        sent,
        "nothing more was sent"
    );
}

#[tokio::test]
async fn a_live_lease_is_never_touched_however_old_its_row() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    let held = claim(&db, video_id, 0, LIVE_LEASE).await;
    age(
        &url,
        "chunks",
        "updated_at",
        &format!("video_id = '{video_id}'"),
        7200,
    )
    .await;
    let queues = Queues::new(&db);
    let eager = SweepOptions {
        stale: Duration::ZERO,
        ..SweepOptions::default()
    };

    let report = sweep_with(&db, &queues.requeue, eager).await;
    assert!(report.is_empty(), "{report:?}");
    assert!(queues.chunks.sent().is_empty());
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("processing", 1));
    let report = db
        .complete_chunk(video_id, 0, held.lease_token, &[])
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Completed,
        "the holder still commits"
    );
}

#[tokio::test]
async fn a_stale_pending_chunk_is_requeued_once_per_stale_period() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, TWO_CHUNKS, "25/1").await;
    // A film registered but never described: no worker could claim it.
    let undescribed = Uuid::new_v4();
    db.register_video(undescribed, 100.0, Default::default())
        .await
        .unwrap();
    age(
        &url,
        "chunks",
        "updated_at",
        &format!("video_id = '{undescribed}'"),
        3600,
    )
    .await;
    let queues = Queues::new(&db);
    let chunk_0 = format!("video_id = '{video_id}' AND chunk_index = 0");

    assert!(
        sweep_once(&db, &queues.requeue).await.is_empty(),
        "fresh chunks wait for their messages"
    );
    for period in 1..=2 {
        age(&url, "chunks", "updated_at", &chunk_0, 3600).await;
        let report = sweep_once(&db, &queues.requeue).await;
        assert_eq!(
            report.requeued,
            [requeued(video_id, 0, 0, RequeueReason::Stale)],
            "period {period}"
        );
        assert!(
            sweep_once(&db, &queues.requeue).await.is_empty(),
            "period {period}: once"
        );
        assert_eq!(queues.chunks.sent(), vec![chunk_body(video_id, 0); period]);
    }
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("pending", 0),
        "listing a waiting chunk spends no attempt"
    );
}

#[tokio::test]
async fn a_finished_film_without_a_sheet_is_finalized_and_its_sheet_stored_once() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, video_id, 0).await.finished(), "the film finished");
    let direct = DatabaseOnly { db: db.clone() };

    assert!(
        sweep_once(&db, &direct).await.is_empty(),
        "a film that just finished has its finalize request on the way"
    );
    age(
        &url,
        "videos",
        "finished_at",
        &format!("video_id = '{video_id}'"),
        3600,
    )
    .await;
    let report = sweep_once(&db, &direct).await;
    assert_eq!(
        report.finalized,
        [FinalizedFilm {
            video_id,
            finalization: Finalization::Stored {
                shots: 1,
                status: SheetStatus::Complete
            }
        }]
    );
    let stored = db.get_sheet(video_id).await.unwrap().expect("a sheet");
    assert!(
        sweep_once(&db, &direct).await.is_empty(),
        "it has its sheet"
    );
    let sheets: i64 = connect(&url)
        .await
        .query_one(
            "SELECT count(*) FROM shotlist.sheets WHERE video_id = $1",
            &[&video_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sheets, 1);
    assert_eq!(
        db.finalize(video_id).await.unwrap(),
        stored,
        "the same sheet"
    );
}

#[tokio::test]
async fn a_film_whose_finalize_keeps_getting_lost_is_asked_for_once_per_stale_period() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, video_id, 0).await.finished());
    let this_film = format!("video_id = '{video_id}'");
    age(&url, "videos", "finished_at", &this_film, 7200).await;
    let queues = Queues::new(&db);

    for period in 1..=2 {
        let report = sweep_once(&db, &queues.requeue).await;
        assert_eq!(
            report.finalized,
            [FinalizedFilm {
                video_id,
                finalization: Finalization::Requested
            }],
            "period {period}"
        );
        assert!(
            sweep_once(&db, &queues.requeue).await.is_empty(),
            "period {period}: once"
        );
        assert_eq!(
            queues.finalize.sent(),
            vec![json!({ "videoId": video_id }); period]
        );
        age(&url, "videos", "finalize_requested_at", &this_film, 3600).await;
    }
    assert_eq!(
        db.get_sheet(video_id).await.unwrap(),
        None,
        "only asked for"
    );
}

#[tokio::test]
async fn a_finalize_queue_that_cannot_be_reached_gets_the_film_finalized_by_the_sweep() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, video_id, 0).await.finished());
    age(
        &url,
        "videos",
        "finished_at",
        &format!("video_id = '{video_id}'"),
        3600,
    )
    .await;
    let queues = Queues::new(&db);
    queues.finalize.fail(true);

    let report = sweep_once(&db, &queues.requeue).await;
    assert!(
        matches!(
            report.finalized.as_slice(),
            [FinalizedFilm { video_id: v, finalization: Finalization::Stored { .. } }] if *v == video_id
        ),
        "{report:?}"
    );
    assert!(db.get_sheet(video_id).await.unwrap().is_some());
}

#[tokio::test]
async fn chunk_messages_that_cannot_be_sent_are_sent_by_a_later_sweep_once_stale() {
    let (db, url) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    vanish(&db, video_id, 0).await;
    let queues = Queues::new(&db);
    queues.chunks.fail(true);

    let report = sweep_once(&db, &queues.requeue).await;
    assert_eq!(report.requeued.len(), 1);
    assert_eq!(report.messages, None, "not sent");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("the chunk messages were not sent")
            && report.problems[0].contains("refusing on purpose"),
        "{:?}",
        report.problems
    );
    assert_eq!(chunk_state(&db, video_id, 0).await.status, "pending");

    queues.chunks.fail(false);
    age(
        &url,
        "chunks",
        "updated_at",
        &format!("video_id = '{video_id}'"),
        3600,
    )
    .await;
    let report = sweep_once(&db, &queues.requeue).await;
    assert_eq!(
        report.requeued,
        [requeued(video_id, 0, 1, RequeueReason::Stale)]
    );
    assert_eq!(queues.chunks.sent(), [chunk_body(video_id, 0)]);
}

#[tokio::test]
async fn a_worker_whose_lease_was_swept_cannot_commit_over_the_new_attempt() {
    let (db, _) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    let lost = vanish(&db, video_id, 0).await;
    let swept = sweep_once(&db, &DatabaseOnly { db: db.clone() }).await;
    assert_eq!(swept.requeued.len(), 1);

    let late = db.complete_chunk(video_id, 0, lost, &[]).await.unwrap();
    assert_eq!(late.outcome, Outcome::LeaseLost, "pending: nobody holds it");
    let new = claim(&db, video_id, 0, LIVE_LEASE).await;
    assert_eq!(new.attempt, 2);
    for outcome in [
        db.complete_chunk(video_id, 0, lost, &[])
            .await
            .unwrap()
            .outcome,
        db.fail_chunk(video_id, 0, lost, "late", true, 3)
            .await
            .unwrap()
            .outcome,
    ] {
        assert_eq!(outcome, Outcome::LeaseLost, "the new attempt holds it");
    }
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("processing", 2));
    let committed = db
        .complete_chunk(video_id, 0, new.lease_token, &[])
        .await
        .unwrap();
    assert_eq!(committed.outcome, Outcome::Completed);
    assert!(committed.progress.finished);
}

#[tokio::test]
async fn a_worker_whose_chunk_was_given_up_learns_it_failed_and_not_that_it_finished_the_film() {
    let (db, _) = fresh_db().await;
    let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
    let mut last = Uuid::nil();
    for _ in 0..3 {
        last = vanish(&db, video_id, 0).await;
    }
    let swept = sweep_once(&db, &DatabaseOnly { db: db.clone() }).await;
    assert_eq!(swept.finished_films().collect::<Vec<_>>(), [video_id]);

    let complete = db.complete_chunk(video_id, 0, last, &[]).await.unwrap();
    let fail = db
        .fail_chunk(video_id, 0, last, "late", false, 3)
        .await
        .unwrap();
    for report in [complete, fail] {
        assert_eq!(report.outcome, Outcome::AlreadyFailed);
        assert!(!report.progress.finished, "the sweep finished the film");
    }
}

#[tokio::test]
async fn a_sweep_takes_at_most_its_limit_and_the_next_one_takes_the_rest() {
    let (db, _) = fresh_db().await;
    let mut lost = Vec::new();
    for _ in 0..3 {
        let video_id = queued_film(&db, ONE_CHUNK, "25/1").await;
        claim(&db, video_id, 0, VANISHING_LEASE).await;
        lost.push(video_id);
    }
    tokio::time::sleep(PAST_THE_LEASE).await;
    let direct = DatabaseOnly { db: db.clone() };
    let two = SweepOptions {
        limit: 2,
        ..SweepOptions::default()
    };

    let first = sweep_with(&db, &direct, two).await;
    let second = sweep_with(&db, &direct, two).await;
    assert_eq!((first.requeued.len(), second.requeued.len()), (2, 1));
    let mut swept: Vec<Uuid> = first
        .requeued
        .iter()
        .chain(&second.requeued)
        .map(|c| c.video_id)
        .collect();
    swept.sort();
    lost.sort();
    assert_eq!(swept, lost);
}

#[tokio::test]
async fn sweep_chunks_refuses_bad_arguments_naming_them() {
    let (db, url) = fresh_db().await;
    let refused = db
        .sweep_chunks(0, Duration::from_secs(900), 500)
        .await
        .expect_err("no attempt at all");
    assert!(
        matches!(&refused, DbError::InvalidArgument(m) if m.contains("p_max_attempts")),
        "{refused}"
    );
    // What a Duration cannot say (NaN, negative) is asked in SQL.
    let client = connect(&url).await;
    let cases: [(i32, f64, i32, &str); 6] = [
        (-1, 900.0, 500, "p_max_attempts"),
        (3, f64::NAN, 500, "p_stale_seconds"),
        (3, -1.0, 500, "p_stale_seconds"),
        (3, 1e12, 500, "p_stale_seconds"),
        (3, 900.0, 0, "p_limit"),
        (3, 900.0, 10_001, "p_limit"),
    ];
    for (max_attempts, stale, limit, named) in cases {
        let error = client
            .query_one(
                "SELECT public.sweep_chunks($1, $2, $3)",
                &[&max_attempts, &stale, &limit],
            )
            .await
            .expect_err("refused");
        let db_error = error.as_db_error().expect("the server refused it");
        assert_eq!(db_error.code().code(), "22023", "{db_error}");
        assert!(db_error.message().contains(named), "{db_error}");
    }
}

#[tokio::test]
async fn sweep_chunks_is_for_the_service_role_only() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let signature = "public.sweep_chunks(integer, double precision, integer)";
    for (role, allowed) in [
        ("anon", false),
        ("authenticated", false),
        ("service_role", true),
    ] {
        let may: bool = client
            .query_one(
                "SELECT has_function_privilege($1, $2::text::regprocedure, 'EXECUTE')",
                &[&role, &signature],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(may, allowed, "{role} may execute sweep_chunks");
    }
    let public: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_proc p, aclexplode(p.proacl) a \
             WHERE p.oid = $1::text::regprocedure AND a.grantee = 0)",
            &[&signature],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public, "PUBLIC may not execute sweep_chunks");
    let (definer, config): (bool, Vec<String>) = {
        let row = client
            .query_one(
                "SELECT prosecdef, coalesce(proconfig, '{}') FROM pg_proc WHERE oid = $1::text::regprocedure",
                &[&signature],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(!definer, "runs with its caller's rights");
    assert!(
        config
            .iter()
            .any(|c| c == "search_path=pg_catalog, pg_temp"),
        "{config:?}"
    );
    client.batch_execute("SET ROLE anon").await.unwrap();
    let refused = client
        .query_one("SELECT public.sweep_chunks()", &[])
        .await
        .expect_err("anon is refused");
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("42501"),
        "permission denied: {refused}"
    );
}

/// A `shotlist` command with quiet logs and no database from the
/// environment.
fn shotlist() -> Command {
    shotlist_command()
}

/// Runs `shotlist` off the async threads; its output as text.
async fn run(mut command: Command) -> (Output, String, String) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the runner thread")
        .expect("run shotlist");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[tokio::test]
async fn shotlist_sweep_fixes_the_database_and_prints_one_line_per_action_and_a_summary() {
    let no_queue = |video_id: Uuid| {
        format!(
            "no queue given: run shotlist process FILM --video-id {video_id} --database-url URL \
             to analyze it"
        )
    };
    let (db, url) = fresh_db().await;
    let lost = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, lost, 0).await;
    let unfinalized = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, unfinalized, 0).await.finished());
    age(
        &url,
        "videos",
        "finished_at",
        &format!("video_id = '{unfinalized}'"),
        3600,
    )
    .await;

    let mut command = shotlist();
    command.args(["sweep", "--database-url", &url]);
    let (output, stdout, stderr) = run(command).await;
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        format!(
            "video {lost} chunk 0: its worker was lost (lease expired, attempt 1); pending again; \
             {}",
            no_queue(lost)
        )
    );
    assert_eq!(
        lines[1],
        format!("video {unfinalized}: sheet stored (1 shots, complete)")
    );
    assert!(
        lines[2].starts_with("swept ")
            && lines[2]
                .ends_with(": 1 chunk(s) need a worker, 0 failed for good, 1 film(s) finalized"),
        "{}",
        lines[2]
    );
    assert_eq!(chunk_state(&db, lost, 0).await.status, "pending");
    assert!(db.get_sheet(unfinalized).await.unwrap().is_some());

    let mut command = shotlist();
    command.args(["sweep", "--database-url", &url]);
    let (output, stdout, _) = run(command).await;
    assert!(output.status.success());
    assert!(
        stdout.trim_end().ends_with(": nothing to do") && stdout.lines().count() == 1,
        "{stdout}"
    );

    // A chunk left pending too long: without a queue nothing was sent, and
    // the sweep says what will analyze it.
    let chunk_1 = format!("video_id = '{lost}' AND chunk_index = 1");
    age(&url, "chunks", "updated_at", &chunk_1, 3600).await;
    let mut command = shotlist();
    command.args(["sweep", "--database-url", &url]);
    let (output, stdout, stderr) = run(command).await;
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0],
        format!(
            "video {lost} chunk 1: pending for more than 900 s; {}",
            no_queue(lost)
        )
    );
    assert!(
        lines[1].ends_with(": 1 chunk(s) need a worker, 0 failed for good, 0 film(s) finalized"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn shotlist_sweep_refuses_bad_arguments_and_never_shows_the_database_password() {
    let password = "Sweep-Secret-Pw-7d41c2";
    let unreachable = format!("postgresql://shotlist:{password}@127.0.0.1:1/shotlist");
    let cases: [(Vec<&str>, i32, &str); 5] = [
        (vec!["--max-attempts", "0"], 2, "--max-attempts"),
        (vec!["--stale-seconds", "-1"], 2, "--stale-seconds"),
        (vec!["--stale-seconds", "inf"], 2, "--stale-seconds"),
        (vec!["--queue-prefix", "p"], 2, "--sqs-endpoint"),
        (vec!["--sqs-endpoint", "127.0.0.1:9"], 2, "--sqs-endpoint"),
    ];
    for (extra, code, named) in cases {
        let mut command = shotlist();
        command
            .args(["sweep", "--database-url", &unreachable])
            .args(&extra);
        let (output, stdout, stderr) = run(command).await;
        assert_eq!(output.status.code(), Some(code), "{extra:?}: {stderr}");
        assert_eq!(stdout, "", "{extra:?}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(
            stderr.starts_with("shotlist: error: ") && stderr.contains(named),
            "{extra:?}: {stderr}"
        );
        assert!(!stderr.contains(password), "{extra:?} leaked: {stderr}");
    }

    let mut command = shotlist();
    command.args(["sweep", "--database-url", &unreachable]);
    let (output, stdout, stderr) = run(command).await;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr
            .starts_with("shotlist: error: cannot connect to the database at 127.0.0.1:1/shotlist"),
        "{stderr}"
    );
    assert!(!stderr.contains(password), "the password leaked: {stderr}");
}

/// The moto server's URL, or `None` (outside CI) when there is none.
fn moto_url() -> Option<String> {
    match std::env::var("SHOTLIST_TEST_SQS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let message = "SHOTLIST_TEST_SQS_URL is not set: start moto with \
                           `eval \"$(./scripts/moto start)\"`";
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "{message} (CI must run the SQS tests)"
            );
            eprintln!("skipping: {message}");
            None
        }
    }
}

/// Every body waiting in the queue at `url`, taken off it.
async fn receive_all(client: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
    let mut bodies = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return bodies;
        }
        for message in messages {
            let body = message.body().unwrap_or_default();
            bodies.push(serde_json::from_str(body).expect("a JSON body"));
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
}

#[tokio::test]
async fn shotlist_sweep_with_an_sqs_endpoint_puts_real_messages_on_the_queues() {
    let Some(endpoint) = moto_url() else { return };
    let (db, url) = fresh_db().await;
    let lost = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, lost, 1).await;
    let unfinalized = queued_film(&db, ONE_CHUNK, "25/1").await;
    assert!(work(&db, unfinalized, 0).await.finished());
    age(
        &url,
        "videos",
        "finished_at",
        &format!("video_id = '{unfinalized}'"),
        3600,
    )
    .await;

    // Queues that do not exist: the sweep stops before it changes anything.
    let missing = format!("sweep-missing-{}", Uuid::new_v4().simple());
    let mut command = shotlist();
    command.args(["sweep", "--database-url", &url, "--sqs-endpoint", &endpoint]);
    command.args(["--queue-prefix", &missing]);
    let (output, stdout, stderr) = run(command).await;
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("cannot find the queue {missing}-chunks")),
        "{stderr}"
    );
    assert_eq!(chunk_state(&db, lost, 1).await.status, "processing");

    let prefix = format!("sweep-{}", Uuid::new_v4().simple());
    let client = shotlist_shared::cloud::local::client_for(&endpoint).await;
    let chunks = ensure_queue_pair(&client, &format!("{prefix}-chunks"), 30, 5)
        .await
        .expect("the chunk queue");
    let finalize = ensure_queue_pair(&client, &format!("{prefix}-finalize"), 30, 5)
        .await
        .expect("the finalize queue");
    let mut command = shotlist();
    command.args(["sweep", "--database-url", &url, "--sqs-endpoint", &endpoint]);
    command.args(["--queue-prefix", &prefix]);
    let (output, stdout, stderr) = run(command).await;
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("video {lost} chunk 1:"))
                && l.ends_with("its chunk message is sent")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("video {unfinalized}: finalize requested")),
        "{stdout}"
    );

    assert_eq!(
        receive_all(&client, &chunks.url).await,
        [chunk_body(lost, 1)],
        "one chunk message"
    );
    assert_eq!(
        receive_all(&client, &finalize.url).await,
        [json!({ "videoId": unfinalized })],
        "one finalize message"
    );
    for queue in [&chunks, &finalize] {
        for url in [&queue.url, &queue.dlq_url] {
            let _ = client.delete_queue().queue_url(url.as_str()).send().await;
        }
    }
    assert_eq!(chunk_state(&db, lost, 1).await.status, "pending");
}

#[tokio::test]
async fn a_film_of_shotlist_process_gets_its_lost_chunk_back_to_pending_but_no_chunk_message() {
    let (db, _) = fresh_db().await;
    let local = described_film(&db, TWO_CHUNKS, "25/1").await;
    let cloud = queued_film(&db, TWO_CHUNKS, "25/1").await;
    vanish(&db, local, 0).await;
    vanish(&db, cloud, 1).await;
    let queues = Queues::new(&db);

    let report = sweep_once(&db, &queues.requeue).await;
    let mut expected = vec![
        RequeuedChunk {
            queued: false,
            ..requeued(local, 0, 1, RequeueReason::LeaseExpired)
        },
        requeued(cloud, 1, 1, RequeueReason::LeaseExpired),
    ];
    expected.sort_by_key(|c| (c.video_id, c.chunk_index));
    assert_eq!(report.requeued, expected);
    // A Lambda could not read the local run's file: only the submitted
    // film's chunk goes on the queue. The local one is pending again, for
    // its run (or a `shotlist process --video-id`) to claim.
    assert_eq!(queues.chunks.sent(), [chunk_body(cloud, 1)]);
    assert_eq!(chunk_state(&db, local, 0).await.status, "pending");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_submitted_film_whose_messages_could_not_be_sent_is_rescued_by_the_sweep() {
    let (db, _) = fresh_db().await;
    let video_id = Uuid::new_v4();
    let submitted = db
        .submit_video(&Submission {
            video_id,
            owner_id: None,
            source: "films/unsent.mp4".into(),
            media: media(TWO_CHUNKS, "25/1".parse().expect("a rate")),
            plan: PlanParams::default(),
        })
        .await
        .expect("submitted");
    assert!(submitted.enqueue, "this submission is to send the messages");
    // Its send failed: the claim is given back and the client never
    // submits again.
    db.release_enqueue(video_id).await.expect("release_enqueue");
    let queues = Queues::new(&db);
    let options = SweepOptions {
        stale: Duration::ZERO,
        ..SweepOptions::default()
    };

    let report = sweep_with(&db, &queues.requeue, options).await;
    assert_eq!(
        report.requeued,
        [
            requeued(video_id, 0, 0, RequeueReason::Stale),
            requeued(video_id, 1, 0, RequeueReason::Stale),
        ]
    );
    assert_eq!(
        queues.chunks.sent(),
        [chunk_body(video_id, 0), chunk_body(video_id, 1)]
    );
}
