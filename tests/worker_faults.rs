//! The worker and the chunk queue around the model analyzers: text the
//! database could not store, chunks whose provider keys all rest (for a
//! while, or for good), and releases that come late, twice or at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shotlist_shared::analyzer::Analyzer;
use shotlist_shared::cloud::chunk::{ChunkHandler, RecordOutcome};
use shotlist_shared::db::{Claim, Db, Outcome};
use shotlist_shared::runner::{run_with, RunEvent, RunOptions};
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::cloud::{
    chunk_body, sqs_event, sqs_message, sqs_record, RecordingQueue, RecordingRedelivery, Script,
    ScriptedAnalyzer,
};
use shotlist_tests::fixtures::{chunk_state, described_film};
use shotlist_tests::pg::fresh_db;
use shotlist_tests::scripted_model::{
    complete, model_analyzer, registered_film, short_film, ScriptedModel,
};
use uuid::Uuid;

/// Valid JSON whose description holds a NUL, which PostgreSQL cannot store.
const NUL_ANSWER: &str =
    r#"{"shots":[{"shot":1,"type":"wide","description":"a title card: \u0000HOTEL"}]}"#;

fn nul_answering_analyzer() -> Arc<dyn Analyzer> {
    let model = ScriptedModel::always(complete(NUL_ANSWER));
    Arc::new(model_analyzer(model, Duration::from_secs(60)))
}

/// The process-chunk handler over `db` and `analyzer`, taking five
/// deliveries of a message.
fn handler(
    db: &Db,
    analyzer: Arc<dyn Analyzer>,
    redelivery: Arc<RecordingRedelivery>,
) -> ChunkHandler {
    ChunkHandler {
        db: db.clone(),
        analyzer,
        finalize_queue: RecordingQueue::new(),
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: "shotlist-chunks".into(),
        redelivery: Some(redelivery),
    }
}

/// Runs chunk 0 of `video_id`, a one-chunk film, through `analyzer`; it must
/// complete. Answers the first shot's description in the finalized sheet.
async fn completed_description(db: &Db, analyzer: &dyn Analyzer, video_id: Uuid) -> String {
    let done = process_chunk(db, analyzer, video_id, 0, &WorkerConfig::default())
        .await
        .expect("the database takes the shots");
    assert!(matches!(done, Done::Completed(_)), "{done:?}");
    let sheet = db.finalize(video_id).await.expect("finalize");
    sheet.shots[0].description.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_the_models_answer_is_dropped_and_the_chunk_completes() {
    let (db, _) = fresh_db().await;
    let film = short_film().await;
    let video_id = registered_film(&db, &film).await;
    let analyzer = nul_answering_analyzer();
    let description = completed_description(&db, analyzer.as_ref(), video_id).await;
    assert_eq!(description, "a title card: HOTEL");
}

/// An analyzer may pass a model's words on unchecked: the worker scrubs
/// every shot before the commit, keeping line breaks and tabs.
#[tokio::test]
async fn control_characters_from_an_analyzer_are_scrubbed_before_the_commit() {
    let (db, _) = fresh_db().await;
    let video_id = described_film(&db, 250, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    let text = "a sign\0 reads\u{7} HOTEL\u{1b}[0m\u{7f}\nnext line\tend";
    analyzer.script(0, Script::Described(text.into()));
    let description = completed_description(&db, analyzer.as_ref(), video_id).await;
    assert_eq!(description, "a sign reads HOTEL[0m\nnext line\tend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_the_models_answer_completes_the_chunk_in_the_cloud_and_acknowledges_it() {
    let (db, _) = fresh_db().await;
    let film = short_film().await;
    let video_id = registered_film(&db, &film).await;
    let redelivery = RecordingRedelivery::new();
    let handler = handler(&db, nul_answering_analyzer(), redelivery.clone());
    let record = sqs_message("m-1", &chunk_body(video_id, 0), 1);
    let outcome = handler.handle_record("m-1", &record, None).await;
    assert_eq!(outcome, RecordOutcome::Acknowledged("chunk completed"));
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!(state.status, "completed", "{state:?}");
    assert!(redelivery.take_sent_again().is_empty());
}

/// Before the queue's last delivery, a chunk whose keys all rest goes back
/// as a new message for when they are free, and the delivery is
/// acknowledged: the receive count never grows while it waits, and no
/// attempt is spent.
#[tokio::test]
async fn throttled_deliveries_are_sent_again_and_leave_the_chunk_pending_unspent() {
    let (db, _) = fresh_db().await;
    let video_id = described_film(&db, 250, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    analyzer.script(0, Script::Throttled(Duration::from_secs(30)));
    let redelivery = RecordingRedelivery::new();
    let handler = handler(&db, analyzer.clone(), redelivery.clone());
    let body = chunk_body(video_id, 0);
    for receives in 1..=4 {
        let id = format!("m-{receives}");
        let event = sqs_event(vec![sqs_record(&id, &body, receives)]);
        let response = handler.handle(event, None).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "delivery {receives}"
        );
        let sent = redelivery.take_sent_again();
        assert_eq!(sent, [(body.clone(), Duration::from_secs(30))]);
        let state = chunk_state(&db, video_id, 0).await;
        assert_eq!((state.status.as_str(), state.attempts), ("pending", 0));
        assert!(state.error.contains("rate-limited"), "{state:?}");
    }
    assert_eq!(analyzer.runs(0), 4);
    assert!(redelivery.take_delayed().is_empty());
}

/// A limit that never passes (a daily quota, a key without access to the
/// model) ends the local run: after `max_releases` releases the chunk
/// fails for good with the reason, and the film is finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_that_never_passes_ends_the_local_run_with_the_chunk_failed() {
    let (db, _) = fresh_db().await;
    let film = short_film().await;
    let analyzer = ScriptedAnalyzer::new();
    // A short rest: the runner sleeps it out between tries.
    analyzer.script(0, Script::Throttled(Duration::from_millis(50)));
    let options = RunOptions {
        worker: WorkerConfig {
            max_releases: 3,
            ..WorkerConfig::default()
        },
        ..RunOptions::default()
    };
    let retries = AtomicU32::new(0);
    let on_event = |event: RunEvent| {
        if let RunEvent::ChunkRetry { .. } = event {
            retries.fetch_add(1, Ordering::SeqCst);
        }
    };
    let run = run_with(&db, &film.path, &options, analyzer.clone(), &on_event);
    let sheet = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .expect("the run succeeds");
    assert_eq!(
        (
            sheet.total_chunks,
            sheet.completed_chunks,
            sheet.failed_chunks
        ),
        (1, 0, 1)
    );
    assert_eq!(analyzer.runs(0), 4);
    assert_eq!(retries.load(Ordering::SeqCst), 3);
    let state = chunk_state(&db, sheet.video_id, 0).await;
    assert!(
        state
            .error
            .starts_with("given back 4 times without being analyzed: ")
            && state.error.contains("rate-limited"),
        "{state:?}"
    );
    assert_eq!(sheet.gaps[0].reasons, [state.error]);
}

/// A worker whose lease ran out cannot release the chunk another worker now
/// holds, nor can a worker release twice; attempts are never taken below
/// what was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_repeated_release_changes_nothing() {
    let (db, _) = fresh_db().await;
    let video_id = described_film(&db, 250, "25/1").await;
    let claim = |lease| db.claim_chunk(video_id, 0, lease, 3);
    let Claim::Claimed(first) = claim(Duration::from_millis(1100)).await.unwrap() else {
        panic!("first claim")
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let Claim::Claimed(second) = claim(Duration::from_secs(60)).await.unwrap() else {
        panic!("second claim after the first lease ran out")
    };
    assert_eq!(chunk_state(&db, video_id, 0).await.attempts, 2);
    let release = |token| db.release_chunk(video_id, 0, token, "keys rest", 20);
    let stale = release(first.lease_token).await.unwrap();
    assert_eq!(stale.outcome, Outcome::LeaseLost);
    assert_eq!(chunk_state(&db, video_id, 0).await.status, "processing");
    let once = release(second.lease_token).await.unwrap();
    assert_eq!(once.outcome, Outcome::Released);
    let twice = release(second.lease_token).await.unwrap();
    assert_eq!(twice.outcome, Outcome::LeaseLost);
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("pending", 1));
}

/// Five workers racing on one throttled chunk, twice each: the attempts
/// never drift, and the chunk is pending at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_throttled_workers_do_not_drift_the_attempts() {
    let (db, _) = fresh_db().await;
    let video_id = described_film(&db, 250, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    analyzer.script(0, Script::Throttled(Duration::from_millis(10)));
    let config = WorkerConfig::default();
    for _ in 0..2 {
        let runs = (0..5).map(|_| process_chunk(&db, analyzer.as_ref(), video_id, 0, &config));
        for done in futures::future::join_all(runs).await {
            let done = done.expect("the database answers");
            assert!(
                matches!(
                    done,
                    Done::Retry {
                        retry_after: Some(_),
                        ..
                    } | Done::Busy
                ),
                "{done:?}"
            );
        }
    }
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("pending", 0));
}
