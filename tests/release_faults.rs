//! Chunks given back without an attempt, and second asks of a model, at the
//! edges: a permanent refusal on the second ask, a block on it, a queue that
//! cannot send a waiting chunk again, the release limit on a film's last
//! open chunk, and a release after another worker took the chunk over.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shotlist_shared::analyzer::remote::Finish;
use shotlist_shared::analyzer::Analyzer;
use shotlist_shared::cloud::chunk::{ChunkHandler, Redelivery};
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::cloud::{
    chunk_body, sqs_event, sqs_record, RecordingQueue, Script, ScriptedAnalyzer,
};
use shotlist_tests::fixtures::{self, chunk_state};
use shotlist_tests::pg::fresh_db;
use shotlist_tests::scripted_model::{
    cut_off, model_analyzer, short_film, whole_film_request, ScriptedModel, Step,
};

const ENDLESS: &str = r#"{"shots":[{"shot":1,"description":"and then and then"#;

/// A first answer cut off, then a second ask the provider refuses for good
/// (the film FAILED at Gemini, a 400, a key without access): the attempt
/// should fail for good, not be retried (paying for a cut-off answer each
/// round) as if the refusal might pass.
#[tokio::test]
async fn a_permanent_refusal_on_the_second_ask_stays_permanent() {
    let model = ScriptedModel::new(vec![
        cut_off(ENDLESS),
        Step::Fail("gemini could not process the film (FAILED)".into(), false),
    ]);
    let film = short_film().await;
    let request = whole_film_request(&film, None).await;
    let error = model_analyzer(model, Duration::from_secs(300))
        .analyze(&request)
        .await
        .unwrap_err();
    assert!(
        !error.is_retryable(),
        "a permanent refusal on the second ask was made retryable: {error}"
    );
}

/// Blocked on the second ask keeps the measured shots (no attempt spent).
#[tokio::test]
async fn a_block_on_the_second_ask_keeps_the_measured_shots() {
    let model = ScriptedModel::new(vec![
        cut_off(ENDLESS),
        Step::Reply(String::new(), Finish::Blocked("SAFETY".into())),
    ]);
    let film = short_film().await;
    let request = whole_film_request(&film, None).await;
    let analysis = model_analyzer(model, Duration::from_secs(300))
        .analyze(&request)
        .await
        .expect("measured shots kept");
    assert_eq!(analysis.shots.len(), 3);
}

/// A redelivery whose send_again always fails.
#[derive(Default)]
struct BrokenSend {
    delayed: std::sync::Mutex<Vec<Duration>>,
}

#[async_trait]
impl Redelivery for BrokenSend {
    async fn redeliver_after(&self, _receipt: &str, delay: Duration) {
        self.delayed.lock().unwrap().push(delay);
    }
    async fn send_again(&self, _body: &str, _delay: Duration) -> Result<(), String> {
        Err("queue unreachable".into())
    }
}

/// send_again failing: the message is listed for retry with the keys'
/// rest as its delay, and the chunk is pending (not stranded).
#[tokio::test]
async fn a_chunk_the_queue_cannot_send_again_is_listed_for_retry_and_stays_pending() {
    let (db, _url) = fresh_db().await;
    let video_id = fixtures::described_film(&db, 12_500, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    analyzer.script(1, Script::Throttled(Duration::from_secs(42)));
    let redelivery = Arc::new(BrokenSend::default());
    let handler = ChunkHandler {
        db: db.clone(),
        analyzer: analyzer.clone(),
        finalize_queue: RecordingQueue::new(),
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: "q".into(),
        redelivery: Some(redelivery.clone()),
    };
    let body = chunk_body(video_id, 1);
    let response = handler
        .handle(sqs_event(vec![sqs_record("m1", &body, 1)]), None)
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        *redelivery.delayed.lock().unwrap(),
        [Duration::from_secs(42)]
    );
    let state = chunk_state(&db, video_id, 1).await;
    assert_eq!((state.status.as_str(), state.attempts), ("pending", 0));
}

/// The release limit failing the last open chunk finishes the film and
/// asks for exactly one finalize.
#[tokio::test]
async fn the_release_limit_failing_the_last_open_chunk_finishes_the_film_once() {
    let (db, _url) = fresh_db().await;
    let video_id = fixtures::described_film(&db, 12_500, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    let finalize_queue = RecordingQueue::new();
    let handler = ChunkHandler {
        db: db.clone(),
        analyzer: analyzer.clone(),
        finalize_queue: finalize_queue.clone(),
        worker: WorkerConfig {
            max_releases: 2,
            ..WorkerConfig::default()
        },
        max_receives: 5,
        queue_name: "q".into(),
        redelivery: Some(shotlist_tests::cloud::RecordingRedelivery::new()),
    };
    for i in 0..2 {
        let body = chunk_body(video_id, i);
        handler
            .handle(sqs_event(vec![sqs_record("m", &body, 1)]), None)
            .await;
    }
    analyzer.script(2, Script::Throttled(Duration::from_secs(5)));
    let body = chunk_body(video_id, 2);
    for _ in 0..3 {
        let r = handler
            .handle(sqs_event(vec![sqs_record("m2", &body, 1)]), None)
            .await;
        assert!(r.batch_item_failures.is_empty());
    }
    let state = chunk_state(&db, video_id, 2).await;
    assert_eq!(state.status, "failed", "{state:?}");
    assert_eq!(finalize_queue.sent().len(), 1);
}

/// Releases and attempts: a worker whose lease ran out and was taken over
/// cannot give the chunk back, and the takeover's release keeps the lost
/// worker's attempt counted.
#[tokio::test]
async fn a_release_after_a_takeover_keeps_the_lost_workers_attempt() {
    let (db, _url) = fresh_db().await;
    let video_id = fixtures::described_film(&db, 12_500, "25/1").await;
    let first = match db
        .claim_chunk(video_id, 0, Duration::from_millis(200), 3)
        .await
        .unwrap()
    {
        shotlist_shared::db::Claim::Claimed(c) => c,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let analyzer = ScriptedAnalyzer::new();
    analyzer.script(0, Script::Throttled(Duration::from_secs(5)));
    let done = process_chunk(
        &db,
        analyzer.as_ref(),
        video_id,
        0,
        &WorkerConfig::default(),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            done,
            Done::Retry {
                retry_after: Some(_),
                ..
            }
        ),
        "{done:?}"
    );
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("pending", 1));
    // The lost worker's late release changes nothing.
    let late = db
        .release_chunk(video_id, 0, first.lease_token, "late", 20)
        .await
        .unwrap();
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("pending", 1),
        "{late:?}"
    );
}
