//! The process-chunk and finalize handlers against a real PostgreSQL, fed
//! SQS events in the JSON shape Lambda sends: partial batch responses,
//! duplicates, poison messages, the last delivery before the dead-letter
//! queue, the invocation's deadline, and the one finalize request per film.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use shotlist_shared::cloud::chunk::{ChunkHandler, RecordOutcome, Wait, DEADLINE_MARGIN};
use shotlist_shared::cloud::finalize::FinalizeHandler;
use shotlist_shared::db::{Claim, Db};
use shotlist_shared::worker::WorkerConfig;
use shotlist_tests::cloud::{
    chunk_body, sqs_event, sqs_message, sqs_record, RecordingQueue, RecordingRedelivery, Script,
    ScriptedAnalyzer,
};
use shotlist_tests::fixtures;
use shotlist_tests::pg::fresh_db;
use uuid::Uuid;

/// 500 s at 25 fps: three chunks.
const FRAMES: i64 = 12_500;
const CHUNKS: u32 = 3;
const QUEUE: &str = "shotlist-chunks";

struct Setup {
    db: Db,
    url: String,
    analyzer: Arc<ScriptedAnalyzer>,
    finalize_queue: Arc<RecordingQueue>,
    redelivery: Arc<RecordingRedelivery>,
    handler: ChunkHandler,
    video_id: Uuid,
}

/// The (key, whole seconds) pairs of a redelivery record.
fn seconds(pairs: Vec<(String, Duration)>) -> Vec<(String, u64)> {
    pairs
        .into_iter()
        .map(|(key, d)| (key, d.as_secs()))
        .collect()
}

async fn setup() -> Setup {
    let (db, url) = fresh_db().await;
    let video_id = fixtures::described_film(&db, FRAMES, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    let finalize_queue = RecordingQueue::new();
    let redelivery = RecordingRedelivery::new();
    let handler = ChunkHandler {
        db: db.clone(),
        analyzer: analyzer.clone(),
        finalize_queue: finalize_queue.clone(),
        worker: WorkerConfig {
            // Attempts are the queue's to count here: the tests drive
            // deliveries up to the last one themselves.
            max_attempts: 10,
            ..WorkerConfig::default()
        },
        max_receives: 5,
        queue_name: QUEUE.into(),
        redelivery: Some(redelivery.clone()),
    };
    Setup {
        db,
        url,
        analyzer,
        finalize_queue,
        redelivery,
        handler,
        video_id,
    }
}

fn failures(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

async fn chunk(db: &Db, video_id: Uuid, index: usize) -> Value {
    db.chunk_progress(video_id).await.expect("progress")["chunks"][index].clone()
}

#[tokio::test]
async fn a_batch_of_three_whose_middle_record_fails_lists_exactly_that_message() {
    let s = setup().await;
    s.analyzer.script(
        1,
        Script::Transient("503 UNAVAILABLE: the model is overloaded".into()),
    );
    let event = sqs_event(
        (0..CHUNKS)
            .map(|i| sqs_record(&format!("m{i}"), &chunk_body(s.video_id, i), 1))
            .collect(),
    );
    let response = s.handler.handle(event, None).await;
    assert_eq!(failures(&response), vec!["m1".to_string()]);
    assert_eq!(chunk(&s.db, s.video_id, 0).await["status"], "completed");
    assert_eq!(chunk(&s.db, s.video_id, 2).await["status"], "completed");
    let middle = chunk(&s.db, s.video_id, 1).await;
    assert_eq!(middle["status"], "pending", "{middle}");
    assert!(
        middle["error"]
            .as_str()
            .unwrap_or("")
            .contains("overloaded"),
        "{middle}"
    );
    // The retry succeeds and finishes the film: one finalize request.
    s.analyzer.script(1, Script::Whole);
    let retry = sqs_event(vec![sqs_record("m1", &chunk_body(s.video_id, 1), 2)]);
    assert!(failures(&s.handler.handle(retry, None).await).is_empty());
    let sent = s.finalize_queue.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["videoId"], s.video_id.to_string());
}

#[tokio::test]
async fn every_message_delivered_twice_gives_one_analysis_per_chunk_and_one_finalize() {
    let s = setup().await;
    for index in 0..CHUNKS {
        s.analyzer
            .script(index, Script::Slow(Duration::from_millis(200)));
    }
    let batch = |round: u32| {
        sqs_event(
            (0..CHUNKS)
                .map(|i| sqs_record(&format!("m{i}"), &chunk_body(s.video_id, i), round))
                .collect(),
        )
    };
    // Two deliveries of every message at the same time, as SQS may do.
    let (a, b) = tokio::join!(
        s.handler.handle(batch(1), None),
        s.handler.handle(batch(1), None)
    );
    let mut left: Vec<String> = failures(&a).into_iter().chain(failures(&b)).collect();
    // What was left for retry (a copy that found its twin at work) comes
    // back, as SQS would redeliver it, until nothing is left.
    for round in 2..6 {
        if left.is_empty() {
            break;
        }
        let records = left
            .iter()
            .map(|id| {
                let index: u32 = id.trim_start_matches('m').parse().unwrap();
                sqs_record(id, &chunk_body(s.video_id, index), round)
            })
            .collect();
        left = failures(&s.handler.handle(sqs_event(records), None).await);
    }
    assert!(left.is_empty(), "still failing: {left:?}");
    // And a late third delivery of everything changes nothing.
    assert!(failures(&s.handler.handle(batch(3), None).await).is_empty());
    for index in 0..CHUNKS {
        assert_eq!(
            s.analyzer.runs(index),
            1,
            "chunk {index} analyzed more than once"
        );
    }
    assert_eq!(
        s.finalize_queue.sent().len(),
        1,
        "one finalize request per film"
    );

    let finalize = FinalizeHandler {
        db: s.db.clone(),
        queue_name: "shotlist-finalize".into(),
    };
    let body = serde_json::json!({ "videoId": s.video_id }).to_string();
    let twice = sqs_event(vec![sqs_record("f1", &body, 1), sqs_record("f1", &body, 2)]);
    assert!(failures(&finalize.handle(twice).await).is_empty());
    let sheet = s.db.get_sheet(s.video_id).await.unwrap().expect("a sheet");
    assert_eq!(sheet.completed_chunks, CHUNKS);
    assert_eq!(sheet.shots.last().unwrap().end_frame, FRAMES);
    let again = s.db.finalize(s.video_id).await.unwrap();
    assert_eq!(again, sheet, "finalizing again changes nothing");
}

#[tokio::test]
async fn bodies_that_are_not_chunk_messages_are_recorded_and_acknowledged() {
    let s = setup().await;
    let bad = [
        ("b1", "this is not JSON"),
        ("b2", r#"{"videoId": "not-a-uuid", "chunkIndex": 0}"#),
        ("b3", r#"{"chunkIndex": 0}"#),
        (
            "b4",
            r#"{"videoId": "00000000-0000-4000-8000-000000000000", "chunkIndex": -1}"#,
        ),
    ];
    let records = bad
        .iter()
        .map(|(id, body)| sqs_record(id, body, 1))
        .collect();
    let response = s.handler.handle(sqs_event(records), None).await;
    assert!(failures(&response).is_empty(), "poison is not retried");
    // A redelivery of one of them is counted on the same row.
    s.handler
        .handle(sqs_event(vec![sqs_record("b1", bad[0].1, 2)]), None)
        .await;
    let rejected = s.db.rejected_messages(QUEUE).await.unwrap();
    assert_eq!(rejected.len(), bad.len(), "{rejected:?}");
    let first = rejected.iter().find(|r| r.message_id == "b1").unwrap();
    assert_eq!(first.receive_count, 2);
    assert_eq!(first.body, "this is not JSON");
    assert!(
        first.error.contains("not a chunk message"),
        "{}",
        first.error
    );
    let no_id = rejected.iter().find(|r| r.message_id == "b3").unwrap();
    assert!(no_id.error.contains("videoId"), "{}", no_id.error);
    assert_eq!(s.analyzer.all_runs().len(), 0, "nothing was analyzed");
}

#[tokio::test]
async fn an_unknown_film_or_chunk_is_recorded_and_acknowledged() {
    let s = setup().await;
    let stranger = Uuid::new_v4();
    let records = vec![
        sqs_record("u1", &chunk_body(stranger, 0), 1),
        sqs_record("u2", &chunk_body(s.video_id, 99), 1),
    ];
    let response = s.handler.handle(sqs_event(records), None).await;
    assert!(failures(&response).is_empty());
    let rejected = s.db.rejected_messages(QUEUE).await.unwrap();
    let error = |id: &str| {
        rejected
            .iter()
            .find(|r| r.message_id == id)
            .map(|r| r.error.clone())
            .unwrap_or_default()
    };
    assert!(error("u1").contains(&stranger.to_string()), "{rejected:?}");
    assert!(error("u2").contains("99"), "{rejected:?}");
}

#[tokio::test]
async fn an_unreadable_source_fails_the_chunk_once_and_is_acknowledged() {
    let s = setup().await;
    s.analyzer.script(0, Script::Unreadable);
    let record = || sqs_event(vec![sqs_record("m0", &chunk_body(s.video_id, 0), 1)]);
    assert!(failures(&s.handler.handle(record(), None).await).is_empty());
    let failed = chunk(&s.db, s.video_id, 0).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("cannot read source"),
        "{failed}"
    );
    // A duplicate delivery does not run the analyzer again.
    assert!(failures(&s.handler.handle(record(), None).await).is_empty());
    assert_eq!(s.analyzer.runs(0), 1);
}

#[tokio::test]
async fn the_last_delivery_fails_the_chunk_with_its_error_and_is_left_for_the_dlq() {
    let s = setup().await;
    s.analyzer
        .script(2, Script::Transient("429 RESOURCE_EXHAUSTED: quota".into()));
    for receive in 1..=4 {
        let event = sqs_event(vec![sqs_record("m2", &chunk_body(s.video_id, 2), receive)]);
        assert_eq!(failures(&s.handler.handle(event, None).await), vec!["m2"]);
        assert_eq!(chunk(&s.db, s.video_id, 2).await["status"], "pending");
    }
    let last = sqs_message("m2", &chunk_body(s.video_id, 2), 5);
    let outcome = s.handler.handle_record("m2", &last, None).await;
    assert!(
        matches!(outcome, RecordOutcome::Retry { .. }),
        "{outcome:?}"
    );
    let failed = chunk(&s.db, s.video_id, 2).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("429 RESOURCE_EXHAUSTED"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 5);
    assert_eq!(s.analyzer.runs(2), 5);
}

#[tokio::test]
async fn a_chunk_whose_keys_all_rest_goes_back_without_spending_an_attempt() {
    let s = setup().await;
    s.analyzer
        .script(1, Script::Throttled(Duration::from_secs(42)));
    let body = chunk_body(s.video_id, 1);
    // Each delivery before the last is acknowledged and its body sent again
    // as a new message for when the keys are free: waiting never uses up
    // the queue's receives, nor the chunk's attempts.
    for receive in [1, 2, 4] {
        let event = sqs_event(vec![sqs_record("m1", &body, receive)]);
        assert!(failures(&s.handler.handle(event, None).await).is_empty());
        assert_eq!(
            seconds(s.redelivery.take_sent_again()),
            [(body.clone(), 42)]
        );
        let pending = chunk(&s.db, s.video_id, 1).await;
        assert_eq!(pending["status"], "pending", "{pending}");
        assert_eq!(pending["attempts"], 0, "{pending}");
        assert!(
            pending["error"].as_str().unwrap().contains("rate-limited"),
            "{pending}"
        );
    }
    assert!(seconds(s.redelivery.take_delayed()).is_empty());
    // The keys are free again: the chunk completes on its first attempt.
    s.analyzer.script(1, Script::Whole);
    let event = sqs_event(vec![sqs_record("m1", &body, 1)]);
    assert!(failures(&s.handler.handle(event, None).await).is_empty());
    let done = chunk(&s.db, s.video_id, 1).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
}

#[tokio::test]
async fn a_limit_that_never_passes_fails_the_chunk_after_forty_waits() {
    let s = setup().await;
    s.analyzer
        .script(2, Script::Throttled(Duration::from_secs(30)));
    let body = chunk_body(s.video_id, 2);
    let limit = WorkerConfig::default().max_releases;
    assert_eq!(limit, 40);
    for _ in 0..limit {
        let event = sqs_event(vec![sqs_record("m2", &body, 1)]);
        assert!(failures(&s.handler.handle(event, None).await).is_empty());
        assert_eq!(chunk(&s.db, s.video_id, 2).await["status"], "pending");
    }
    let event = sqs_event(vec![sqs_record("m2", &body, 1)]);
    assert!(failures(&s.handler.handle(event, None).await).is_empty());
    let failed = chunk(&s.db, s.video_id, 2).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("given back 41 times") && error.contains("rate-limited"),
        "{error}"
    );
    assert_eq!(seconds(s.redelivery.take_sent_again()).len(), 40);
}

#[tokio::test]
async fn rate_limits_on_the_last_delivery_fail_the_chunk_rather_than_strand_it() {
    let s = setup().await;
    s.analyzer
        .script(0, Script::Throttled(Duration::from_secs(30)));
    let last = sqs_message("m0", &chunk_body(s.video_id, 0), 5);
    let outcome = s.handler.handle_record("m0", &last, None).await;
    assert!(
        matches!(outcome, RecordOutcome::Retry { .. }),
        "{outcome:?}"
    );
    let failed = chunk(&s.db, s.video_id, 0).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("rate-limited"),
        "{failed}"
    );
}

#[tokio::test]
async fn work_stops_before_the_deadline_and_the_chunk_goes_back_for_retry() {
    let s = setup().await;
    s.analyzer.script(0, Script::Slow(Duration::from_secs(120)));
    // Too little time to start: the chunk is not even claimed.
    let soon = SystemTime::now() + DEADLINE_MARGIN + Duration::from_secs(1);
    let record = sqs_message("m0", &chunk_body(s.video_id, 0), 1);
    let outcome = s.handler.handle_record("m0", &record, Some(soon)).await;
    assert!(
        matches!(
            outcome,
            RecordOutcome::Retry {
                wait: Wait::Now,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(s.analyzer.runs(0), 0);
    assert_eq!(chunk(&s.db, s.video_id, 0).await["attempts"], 0);
    // Time for a short try: the analysis is cut before the deadline, the
    // attempt recorded, and the chunk is pending again for the retry.
    let started = std::time::Instant::now();
    let later = SystemTime::now() + DEADLINE_MARGIN + Duration::from_secs(6);
    let outcome = s.handler.handle_record("m0", &record, Some(later)).await;
    assert!(
        matches!(
            outcome,
            RecordOutcome::Retry {
                wait: Wait::Backoff,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the analysis was cut"
    );
    let back = chunk(&s.db, s.video_id, 0).await;
    assert_eq!(back["status"], "pending", "{back}");
    assert!(
        back["error"].as_str().unwrap().contains("did not finish"),
        "{back}"
    );
    // No lease is left behind: another worker can claim it at once.
    let claim =
        s.db.claim_chunk(s.video_id, 0, Duration::from_secs(60), 10)
            .await
            .unwrap();
    assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");
}

#[tokio::test]
async fn a_finished_film_is_finalized_even_when_its_finalize_request_is_lost() {
    let s = setup().await;
    // The finalize queue is down when the last chunk commits: the handler
    // finalizes the film itself.
    s.finalize_queue.fail(true);
    let event = sqs_event(
        (0..CHUNKS)
            .map(|i| sqs_record(&format!("m{i}"), &chunk_body(s.video_id, i), 1))
            .collect(),
    );
    assert!(failures(&s.handler.handle(event, None).await).is_empty());
    let sheet = s.db.get_sheet(s.video_id).await.unwrap();
    assert!(sheet.is_some(), "finalized without the queue");

    // A film whose finishing worker died between its commit and the
    // finalize request: a duplicate delivery finds it and finalizes it,
    // without analyzing anything.
    let other = fixtures::described_film(&s.db, FRAMES, "25/1").await;
    for index in 0..CHUNKS {
        let Claim::Claimed(c) =
            s.db.claim_chunk(other, index, Duration::from_secs(60), 3)
                .await
                .unwrap()
        else {
            panic!("claimable")
        };
        s.db.complete_chunk(other, index, c.lease_token, &[])
            .await
            .unwrap();
    }
    assert!(s.db.get_sheet(other).await.unwrap().is_none());
    let runs_before = s.analyzer.all_runs();
    let duplicate = sqs_event(vec![sqs_record("d0", &chunk_body(other, 0), 2)]);
    assert!(failures(&s.handler.handle(duplicate, None).await).is_empty());
    assert!(s.db.get_sheet(other).await.unwrap().is_some());
    assert_eq!(s.analyzer.all_runs(), runs_before);
}

#[tokio::test]
async fn finalize_messages_that_cannot_be_served_are_recorded_not_retried() {
    let (db, _url) = fresh_db().await;
    let finalize = FinalizeHandler {
        db: db.clone(),
        queue_name: "shotlist-finalize".into(),
    };
    let unfinished = fixtures::described_film(&db, FRAMES, "25/1").await;
    let records = vec![
        sqs_record("f1", "{", 1),
        sqs_record(
            "f2",
            &serde_json::json!({ "videoId": Uuid::new_v4() }).to_string(),
            1,
        ),
        sqs_record(
            "f3",
            &serde_json::json!({ "videoId": unfinished }).to_string(),
            1,
        ),
    ];
    let response = finalize.handle(sqs_event(records)).await;
    assert!(failures(&response).is_empty());
    let rejected = db.rejected_messages("shotlist-finalize").await.unwrap();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let f3 = rejected.iter().find(|r| r.message_id == "f3").unwrap();
    assert!(f3.error.contains("not finished"), "{}", f3.error);
}

#[tokio::test]
async fn retries_come_back_after_a_doubling_backoff_and_a_held_chunk_after_a_lease() {
    let s = setup().await;
    s.analyzer
        .script(0, Script::Transient("500 INTERNAL".into()));
    for (receive, wait) in [(1, 30), (2, 60), (3, 120)] {
        let event = sqs_event(vec![sqs_record("m0", &chunk_body(s.video_id, 0), receive)]);
        assert_eq!(failures(&s.handler.handle(event, None).await), vec!["m0"]);
        assert_eq!(
            seconds(s.redelivery.take_delayed()),
            vec![("AQEBm0".to_string(), wait)]
        );
    }
    // Another worker holds chunk 1: its duplicate comes back as a new
    // message after a lease, by when the holder has finished or its lease
    // has run out. Waiting spends none of the queue's receives: the message
    // itself is acknowledged.
    let Claim::Claimed(_) =
        s.db.claim_chunk(s.video_id, 1, Duration::from_secs(600), 10)
            .await
            .unwrap()
    else {
        panic!("claimable")
    };
    let body = chunk_body(s.video_id, 1);
    let event = sqs_event(vec![sqs_record("m1", &body, 1)]);
    assert!(failures(&s.handler.handle(event, None).await).is_empty());
    assert!(seconds(s.redelivery.take_delayed()).is_empty());
    assert_eq!(
        seconds(s.redelivery.take_sent_again()),
        vec![(body, s.handler.worker.lease.as_secs())]
    );
    // Acknowledged messages are left alone.
    let event = sqs_event(vec![sqs_record("m2", &chunk_body(s.video_id, 2), 1)]);
    assert!(failures(&s.handler.handle(event, None).await).is_empty());
    assert!(seconds(s.redelivery.take_delayed()).is_empty());
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_leaves_its_message_for_retry() {
    let mut s = setup().await;
    s.handler.worker.lease = Duration::from_secs(1);
    s.analyzer
        .script(0, Script::Slow(Duration::from_millis(2_500)));
    let record = sqs_message("m0", &chunk_body(s.video_id, 0), 1);
    let handler = s.handler.clone();
    let work = tokio::spawn(async move { handler.handle_record("m0", &record, None).await });
    // Another worker takes the chunk over while the slow one analyzes.
    while s.analyzer.runs(0) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fixtures::take_over(&s.url, s.video_id, 0).await;
    // Its next renewal finds the chunk taken and it stops, saving nothing;
    // the message must not be deleted, or the chunk would depend on the new
    // holder alone.
    let outcome = work.await.unwrap();
    assert!(
        matches!(
            outcome,
            RecordOutcome::Retry {
                wait: Wait::Backoff,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(chunk(&s.db, s.video_id, 0).await["status"], "processing");
}
