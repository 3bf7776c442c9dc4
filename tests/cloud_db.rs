//! The database side of the cloud shape (`migrations/0002_cloud.sql`),
//! against a real PostgreSQL: submitting a film in one call, marking its
//! chunk messages sent, its owner, force-finalizing a stuck film while
//! workers still commit, the open chunks, and rejected queue messages.
//!
//! Every test works in a database of its own (`fresh_db`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shotlist_shared::db::{Claim, ClaimedChunk, Db, DbError, Outcome, Submission, MIGRATIONS};
use shotlist_shared::model::Shot;
use shotlist_shared::plan::{FrameSpan, PlanParams};
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::time::Fps;
use shotlist_tests::exact::exact_shots;
use shotlist_tests::fixtures::{self, described_film};
use shotlist_tests::pg::{connect, fresh_db};
use tokio::sync::Barrier;
use tokio_postgres::types::Type;
use tokio_postgres::Client;
use uuid::Uuid;

/// A 49-minute film at 25 fps: 18 chunks.
const FILM_FRAMES: i64 = 73_500;

const LEASE: Duration = Duration::from_secs(600);

fn fps(rate: &str) -> Fps {
    rate.parse().expect("a valid frame rate")
}

/// A submission of the 49-minute film at 25 fps.
fn submission(video_id: Uuid, owner_id: Option<Uuid>) -> Submission {
    Submission {
        video_id,
        owner_id,
        source: "s3://films/49min.mp4".into(),
        media: fixtures::media(FILM_FRAMES, fps("25/1")),
        plan: PlanParams::default(),
    }
}

/// The rows of one film, its chunks and its shots as JSON, to show that a
/// call changed nothing.
async fn film_rows(client: &Client, id: Uuid) -> Value {
    client
        .query_typed_one(
            "SELECT jsonb_build_object(
                 'video', (SELECT to_jsonb(v) FROM shotlist.videos AS v WHERE v.video_id = $1),
                 'chunks', (SELECT jsonb_agg(to_jsonb(c) ORDER BY c.chunk_index)
                            FROM shotlist.chunks AS c WHERE c.video_id = $1),
                 'shots', (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.chunk_index, s.ordinal)
                           FROM shotlist.shots AS s WHERE s.video_id = $1))",
            &[(&id, Type::UUID)],
        )
        .await
        .expect("film rows")
        .get(0)
}

async fn claimed(db: &Db, id: Uuid, chunk: u32) -> ClaimedChunk {
    match db.claim_chunk(id, chunk, LEASE, 3).await.expect("claim") {
        Claim::Claimed(c) => *c,
        other => panic!("chunk {chunk} not claimed: {other:?}"),
    }
}

/// What an exact analyzer reports for a claimed chunk of a film with a cut
/// every 1000 frames.
fn shots_for(chunk: &ClaimedChunk) -> Vec<Shot> {
    let span = FrameSpan {
        index: chunk.chunk_index,
        start_frame: chunk.start_frame,
        end_frame: chunk.end_frame,
    };
    let cuts: Vec<i64> = (1..FILM_FRAMES / 1000)
        .map(|k| k * 1000)
        .filter(|&c| c > span.start_frame && c < span.end_frame)
        .collect();
    exact_shots(span, &cuts)
}

/// Claims chunk `index` and commits its shots; returns them.
async fn complete(db: &Db, id: Uuid, index: u32) -> Vec<Shot> {
    let chunk = claimed(db, id, index).await;
    let shots = shots_for(&chunk);
    let report = db
        .complete_chunk(id, index, chunk.lease_token, &shots)
        .await
        .expect("commit");
    assert_eq!(report.outcome, Outcome::Completed, "chunk {index}");
    shots
}

/// The saved shots and the status and error of every chunk, by index.
async fn chunks_of(db: &Db, id: Uuid) -> BTreeMap<u32, (String, Option<String>, Vec<Shot>)> {
    db.chunk_results(id)
        .await
        .expect("chunk results")
        .chunks
        .into_iter()
        .map(|c| (c.index, (c.status, c.error, c.shots)))
        .collect()
}

fn invalid_argument<T: std::fmt::Debug>(result: Result<T, DbError>, case: &str) -> String {
    match result {
        Err(DbError::InvalidArgument(message)) => message,
        other => panic!("{case}: not refused as an invalid argument: {other:?}"),
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
async fn submitting_a_film_twice_creates_it_once_and_the_second_call_changes_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let first = db.submit_video(&submission(id, Some(owner))).await.unwrap();
    assert_eq!(
        (
            first.total_chunks,
            first.created,
            first.enqueued,
            first.owner_id
        ),
        (18, true, false, Some(owner))
    );
    // Described too: the chunks can be claimed at once, with their frames.
    let chunk = claimed(&db, id, 17).await;
    assert_eq!((chunk.end_frame, chunk.total_chunks), (FILM_FRAMES, 18));
    assert_eq!(chunk.source.as_deref(), Some("s3://films/49min.mp4"));
    assert_eq!(chunk.fps, "25/1");
    assert_eq!(db.video_owner(id).await.unwrap(), Some(owner));

    let before = film_rows(&client, id).await;
    let second = db.submit_video(&submission(id, Some(owner))).await.unwrap();
    assert_eq!(
        (
            second.total_chunks,
            second.created,
            second.enqueued,
            second.owner_id
        ),
        (18, false, false, Some(owner))
    );
    assert_eq!(film_rows(&client, id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_concurrent_submits_of_one_id_create_it_exactly_once_with_one_set_of_chunks() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let mut submitters = Vec::new();
    for _ in 0..5 {
        submitters.push(Db::connect(&url, 1).await.unwrap());
    }
    for round in 0..5 {
        let (id, owner) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Arc::new(Barrier::new(5));
        let calls = submitters.iter().map(|db| {
            let (db, start) = (db.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                db.submit_video(&submission(id, Some(owner))).await
            })
        });
        let answers: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.expect("submit task").expect("submitted"))
            .collect();
        let created = answers.iter().filter(|a| a.created).count();
        assert_eq!(created, 1, "round {round}: {answers:?}");
        let senders = answers.iter().filter(|a| a.enqueue).count();
        assert_eq!(
            senders, 1,
            "round {round}: one sends the messages: {answers:?}"
        );
        assert!(
            answers
                .iter()
                .all(|a| a.total_chunks == 18 && a.owner_id == Some(owner) && !a.enqueued),
            "round {round}: {answers:?}"
        );
        let rows: i64 = client
            .query_typed_one(
                "SELECT count(*) FROM shotlist.chunks WHERE video_id = $1",
                &[(&id, Type::UUID)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 18, "round {round}");
        assert_eq!(db.video_owner(id).await.unwrap(), Some(owner));
    }
}

#[tokio::test]
async fn submitting_a_known_id_with_another_owner_is_refused_naming_the_owner_and_changes_nothing()
{
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (owned, ownerless) = (Uuid::new_v4(), Uuid::new_v4());
    let (owner, intruder) = (Uuid::new_v4(), Uuid::new_v4());
    db.submit_video(&submission(owned, Some(owner)))
        .await
        .unwrap();
    db.submit_video(&submission(ownerless, None)).await.unwrap();
    let (owned_rows, ownerless_rows) = (
        film_rows(&client, owned).await,
        film_rows(&client, ownerless).await,
    );
    let cases = [
        (owned, Some(intruder), "another owner"),
        (owned, None, "no owner for an owned film"),
        (ownerless, Some(intruder), "an owner for an ownerless film"),
    ];
    for (id, owner_id, case) in cases {
        let message = invalid_argument(db.submit_video(&submission(id, owner_id)).await, case);
        assert!(
            message.contains("owner") && message.contains("p_owner_id"),
            "{case}: {message}"
        );
        // Someone else's submission does not learn who owns the film.
        assert!(!message.contains(&owner.to_string()), "{case}: {message}");
    }
    // The owner is checked before the facts: other facts and another owner
    // still name the owner.
    let mut other = submission(owned, Some(intruder));
    other.plan.chunk_seconds = 120.0;
    let message = invalid_argument(db.submit_video(&other).await, "owner and plan");
    assert!(message.contains("p_owner_id"), "{message}");

    assert_eq!(film_rows(&client, owned).await, owned_rows);
    assert_eq!(film_rows(&client, ownerless).await, ownerless_rows);
    assert_eq!(db.video_owner(owned).await.unwrap(), Some(owner));
    assert_eq!(db.video_owner(ownerless).await.unwrap(), None);
}

#[tokio::test]
async fn submitting_a_known_id_with_other_facts_is_refused_naming_what_differs() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, owner) = (Uuid::new_v4(), Uuid::new_v4());
    db.submit_video(&submission(id, Some(owner))).await.unwrap();
    let before = film_rows(&client, id).await;

    let mut source = submission(id, Some(owner));
    source.source = "s3://films/other.mp4".into();
    let mut duration = submission(id, Some(owner));
    duration.media.duration_frames = FILM_FRAMES - 25;
    let mut plan = submission(id, Some(owner));
    plan.plan.overlap_seconds = 10.0;
    // Twice the rate and twice the frames: the same length in seconds.
    let mut rate = submission(id, Some(owner));
    rate.media = fixtures::media(2 * FILM_FRAMES, fps("50/1"));
    let cases = [
        (source, "p_source"),
        (duration, "p_duration_seconds"),
        (plan, "p_overlap_seconds"),
        (rate, "25/1 fps"),
    ];
    for (other, named) in cases {
        let message = invalid_argument(db.submit_video(&other).await, named);
        assert!(message.contains(named), "{named}: {message}");
    }
    assert_eq!(film_rows(&client, id).await, before);
}

#[tokio::test]
async fn submit_video_refuses_bad_arguments_and_writes_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    let mut overlap = submission(id, None);
    overlap.plan.overlap_seconds = 180.0;
    let mut source = submission(id, None);
    source.source = "  ".into();
    let cases = [(overlap, "p_overlap_seconds"), (source, "p_source")];
    for (bad, named) in cases {
        let message = invalid_argument(db.submit_video(&bad).await, named);
        assert!(message.contains(named), "{named}: {message}");
    }
    // A frame rate describe_video refuses (Fps cannot even hold it) rolls
    // back the registration made in the same call.
    let error = client
        .query_typed(
            "SELECT public.submit_video($1, NULL, 2940, 180, 15, 's', 1, 2, 1470, '{}')",
            &[(&id, Type::UUID)],
        )
        .await
        .expect_err("half a frame per second accepted");
    assert_eq!(error.code().map(|c| c.code()), Some("22023"), "{error}");
    assert_eq!(film_rows(&client, id).await["video"], Value::Null);
    assert!(matches!(
        db.video_owner(id).await,
        Err(DbError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_film_registered_by_the_cli_can_be_submitted_again_without_an_owner() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = described_film(&db, FILM_FRAMES, "25/1").await;
    let before = film_rows(&client, id).await;
    let mut again = submission(id, None);
    again.source = "/films/test.mp4".into();
    let answer = db.submit_video(&again).await.unwrap();
    assert_eq!(
        (answer.total_chunks, answer.created, answer.owner_id),
        (18, false, None)
    );
    // Its chunks were never queued: this submission is told to queue them,
    // and that claim (until when, and by which request) is all that changed.
    assert!(answer.enqueue && !answer.enqueued);
    let mut after = film_rows(&client, id).await;
    assert!(
        after["video"]["enqueue_claimed_until"].is_string(),
        "{after}"
    );
    after["video"]["enqueue_claimed_until"] = Value::Null;
    assert!(after["video"]["enqueue_claimed_by"].is_string(), "{after}");
    after["video"]["enqueue_claimed_by"] = Value::Null;
    assert_eq!(after, before);
}

#[tokio::test]
async fn mark_enqueued_is_idempotent_and_submit_video_reports_it() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    assert!(
        !db.submit_video(&submission(id, None))
            .await
            .unwrap()
            .enqueued
    );
    // The enqueueing never completed: a resubmission must send again.
    assert!(
        !db.submit_video(&submission(id, None))
            .await
            .unwrap()
            .enqueued
    );
    assert!(
        db.mark_enqueued(id).await.unwrap(),
        "the first mark sets it"
    );
    let marked = film_rows(&client, id).await;
    assert!(marked["video"]["enqueued_at"].is_string(), "{marked}");
    assert!(
        !db.mark_enqueued(id).await.unwrap(),
        "the second is a no-op"
    );
    assert_eq!(film_rows(&client, id).await, marked);
    let again = db.submit_video(&submission(id, None)).await.unwrap();
    assert_eq!((again.created, again.enqueued), (false, true));
    assert_eq!(film_rows(&client, id).await, marked);
    assert!(matches!(
        db.mark_enqueued(Uuid::new_v4()).await,
        Err(DbError::NotFound(_))
    ));
}

#[tokio::test]
async fn video_owner_is_the_submitter_or_none_and_not_found_for_an_unknown_film() {
    let (db, _url) = fresh_db().await;
    let (owned, ownerless, owner) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    db.submit_video(&submission(owned, Some(owner)))
        .await
        .unwrap();
    db.submit_video(&submission(ownerless, None)).await.unwrap();
    assert_eq!(db.video_owner(owned).await.unwrap(), Some(owner));
    assert_eq!(db.video_owner(ownerless).await.unwrap(), None);
    let unknown = Uuid::new_v4();
    match db.video_owner(unknown).await {
        Err(DbError::NotFound(message)) => assert!(message.contains(&unknown.to_string())),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unfinished_chunks_lists_pending_and_processing_chunks_until_they_end() {
    let (db, _url) = fresh_db().await;
    let id = described_film(&db, FILM_FRAMES, "25/1").await;
    assert_eq!(
        db.unfinished_chunks(id).await.unwrap(),
        (0..18).collect::<Vec<_>>()
    );
    let held = claimed(&db, id, 3).await;
    complete(&db, id, 4).await;
    let failing = claimed(&db, id, 5).await;
    db.fail_chunk(id, 5, failing.lease_token, "bad clip", false, 3)
        .await
        .unwrap();
    let retrying = claimed(&db, id, 6).await;
    db.fail_chunk(id, 6, retrying.lease_token, "timeout", true, 3)
        .await
        .unwrap();
    let open: Vec<u32> = (0..18).filter(|k| ![4, 5].contains(k)).collect();
    assert_eq!(db.unfinished_chunks(id).await.unwrap(), open);
    db.complete_chunk(id, 3, held.lease_token, &shots_for(&held))
        .await
        .unwrap();
    let open: Vec<u32> = (0..18).filter(|k| ![3, 4, 5].contains(k)).collect();
    assert_eq!(db.unfinished_chunks(id).await.unwrap(), open);
    db.force_finalize(id, "force-finalized").await.unwrap();
    assert_eq!(db.unfinished_chunks(id).await.unwrap(), Vec::<u32>::new());
    assert!(matches!(
        db.unfinished_chunks(Uuid::new_v4()).await,
        Err(DbError::NotFound(_))
    ));
}

#[tokio::test]
async fn force_finalize_fails_the_open_chunks_keeps_completed_shots_and_a_late_commit_writes_nothing(
) {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = described_film(&db, FILM_FRAMES, "25/1").await;
    let kept: Vec<(u32, Vec<Shot>)> = vec![
        (0, complete(&db, id, 0).await),
        (1, complete(&db, id, 1).await),
    ];
    let late = claimed(&db, id, 2).await;
    let retried = claimed(&db, id, 3).await;
    db.fail_chunk(id, 3, retried.lease_token, "provider timed out", true, 3)
        .await
        .unwrap();
    let refused = claimed(&db, id, 4).await;
    db.fail_chunk(
        id,
        4,
        refused.lease_token,
        "provider refused the clip",
        false,
        3,
    )
    .await
    .unwrap();

    let forced = db.force_finalize(id, "force-finalized").await.unwrap();
    let open: Vec<u32> = (2..18).filter(|&k| k != 4).collect();
    assert_eq!(forced.forced_chunks, open);
    assert_eq!(
        (
            forced.progress.completed_chunks,
            forced.progress.failed_chunks,
            forced.progress.total_chunks,
            forced.progress.finished,
            forced.progress.film_finished
        ),
        (2, 16, 18, true, true)
    );
    let chunks = chunks_of(&db, id).await;
    for (index, shots) in &kept {
        assert_eq!(chunks[index], ("completed".into(), None, shots.clone()));
    }
    let error = |k: u32| chunks[&k].1.clone().unwrap_or_default();
    assert_eq!(error(2), "force-finalized");
    assert_eq!(error(3), "force-finalized (last error: provider timed out)");
    assert_eq!(error(4), "provider refused the clip");
    assert_eq!(error(17), "force-finalized");
    assert!(open
        .iter()
        .all(|k| chunks[k].0 == "failed" && chunks[k].2.is_empty()));

    // The worker that held chunk 2 comes back: its commit and its failure
    // are too late, write nothing and do not finish the film again.
    let before = film_rows(&client, id).await;
    let report = db
        .complete_chunk(id, 2, late.lease_token, &shots_for(&late))
        .await
        .unwrap();
    assert_eq!(
        (
            report.outcome,
            report.progress.finished,
            report.progress.failed_chunks
        ),
        (Outcome::AlreadyFailed, false, 16)
    );
    let report = db
        .fail_chunk(id, 2, late.lease_token, "late", true, 3)
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, report.progress.finished),
        (Outcome::AlreadyFailed, false)
    );
    assert!(matches!(
        db.claim_chunk(id, 5, LEASE, 3).await.unwrap(),
        Claim::Terminal { status, progress: None } if status == "failed"
    ));
    assert_eq!(film_rows(&client, id).await, before);

    // The film can be finalized with the chunks that completed.
    let sheet = db.finalize(id).await.unwrap();
    assert_eq!(sheet.status, SheetStatus::Partial);
    assert_eq!((sheet.completed_chunks, sheet.failed_chunks), (2, 16));
    assert!(sheet.gaps.iter().any(|g| g.chunks.contains(&17)));
}

#[tokio::test]
async fn force_finalizing_twice_forces_nothing_the_second_time_and_changes_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = described_film(&db, FILM_FRAMES, "25/1").await;
    complete(&db, id, 7).await;
    let first = db.force_finalize(id, "stuck").await.unwrap();
    assert_eq!(first.forced_chunks.len(), 17);
    assert!(first.progress.finished);
    let before = film_rows(&client, id).await;
    let second = db.force_finalize(id, "stuck again").await.unwrap();
    assert_eq!(second.forced_chunks, Vec::<u32>::new());
    assert_eq!(
        (
            second.progress.completed_chunks,
            second.progress.failed_chunks,
            second.progress.finished,
            second.progress.film_finished
        ),
        (1, 17, false, true)
    );
    assert_eq!(film_rows(&client, id).await, before);
}

#[tokio::test]
async fn force_finalizing_a_film_that_finished_normally_forces_nothing() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = described_film(&db, 2500, "25/1").await;
    complete(&db, id, 0).await;
    let before = film_rows(&client, id).await;
    let forced = db.force_finalize(id, "force-finalized").await.unwrap();
    assert_eq!(forced.forced_chunks, Vec::<u32>::new());
    assert_eq!(
        (forced.progress.completed_chunks, forced.progress.finished),
        (1, false)
    );
    assert_eq!(film_rows(&client, id).await, before);
}

#[tokio::test]
async fn force_finalize_of_an_unknown_film_is_not_found_and_an_empty_reason_is_refused() {
    let (db, _url) = fresh_db().await;
    let unknown = Uuid::new_v4();
    match db.force_finalize(unknown, "force-finalized").await {
        Err(DbError::NotFound(message)) => assert!(message.contains(&unknown.to_string())),
        other => panic!("{other:?}"),
    }
    let id = described_film(&db, 2500, "25/1").await;
    let message = invalid_argument(db.force_finalize(id, " ").await, "empty reason");
    assert!(message.contains("p_reason"), "{message}");
    assert_eq!(db.unfinished_chunks(id).await.unwrap(), [0]);
}

/// What a worker's call answered in a force-finalize race.
#[derive(Debug, Clone)]
enum Event {
    /// complete_chunk answered; `shots` is what it sent.
    Commit {
        chunk: u32,
        outcome: Outcome,
        finished: bool,
        shots: Vec<Shot>,
    },
    /// A retryable failure was reported.
    Failure { chunk: u32, outcome: Outcome },
    /// The claim found the chunk terminal.
    Terminal { chunk: u32, status: String },
}

/// One round: 5 workers take the 18 chunks of a new film from a shared
/// queue, claim, sometimes fail an attempt (the chunk goes back to the
/// queue), and commit their shots, while a force-finalize starts once
/// `force_after` chunks have completed. With `stall`, worker 0 keeps its
/// first chunk until the force is done, so at least one commit is late.
async fn force_round(
    db: &Db,
    workers: &[Db],
    forcer: &Db,
    seed: u64,
    force_after: u32,
    stall: bool,
) -> (usize, bool) {
    let id = described_film(db, FILM_FRAMES, "25/1").await;
    let mut rng = Rng(seed);
    let mut order: Vec<u32> = (0..18).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let queue = Arc::new(Mutex::new(VecDeque::from(order)));
    let completed = Arc::new(AtomicU32::new(0));
    let forced_done = Arc::new(AtomicBool::new(false));
    // Set once the stalled worker holds its chunk (at once without a stall).
    let holding = Arc::new(AtomicBool::new(!stall));
    let start = Arc::new(Barrier::new(workers.len() + 1));
    let tasks = workers.iter().enumerate().map(|(w, worker)| {
        let (db, queue, completed, forced_done, holding, start) = (
            worker.clone(),
            queue.clone(),
            completed.clone(),
            forced_done.clone(),
            holding.clone(),
            start.clone(),
        );
        let mut rng = Rng(seed ^ ((w as u64 + 1) << 32));
        let mut stall = stall && w == 0;
        tokio::spawn(async move {
            let mut events = Vec::new();
            start.wait().await;
            loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(chunk) = next else { break };
                let claim = db.claim_chunk(id, chunk, LEASE, 3).await;
                let claim = claim.unwrap_or_else(|e| panic!("seed {seed}: claim {chunk}: {e}"));
                let claimed = match claim {
                    Claim::Claimed(c) => *c,
                    Claim::Terminal { status, .. } => {
                        events.push(Event::Terminal { chunk, status });
                        continue;
                    }
                    Claim::Busy => panic!("seed {seed}: chunk {chunk} busy, yet queued once"),
                };
                if std::mem::take(&mut stall) {
                    holding.store(true, Ordering::SeqCst);
                    while !forced_done.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                } else {
                    for _ in 0..rng.below(3) {
                        tokio::task::yield_now().await;
                    }
                }
                if claimed.attempt < 3 && rng.below(5) == 0 {
                    let report = db
                        .fail_chunk(
                            id,
                            chunk,
                            claimed.lease_token,
                            "provider timed out",
                            true,
                            3,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: fail {chunk}: {e}"));
                    if report.outcome == Outcome::Retry {
                        queue.lock().expect("queue lock").push_back(chunk);
                    }
                    assert!(!report.progress.finished, "seed {seed}: a retry finished");
                    events.push(Event::Failure {
                        chunk,
                        outcome: report.outcome,
                    });
                    continue;
                }
                let shots = shots_for(&claimed);
                let report = db
                    .complete_chunk(id, chunk, claimed.lease_token, &shots)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: commit {chunk}: {e}"));
                if report.outcome == Outcome::Completed {
                    completed.fetch_add(1, Ordering::SeqCst);
                }
                events.push(Event::Commit {
                    chunk,
                    outcome: report.outcome,
                    finished: report.progress.finished,
                    shots,
                });
            }
            events
        })
    });
    let force = {
        let (db, completed, forced_done, holding, start) = (
            forcer.clone(),
            completed.clone(),
            forced_done.clone(),
            holding.clone(),
            start.clone(),
        );
        tokio::spawn(async move {
            start.wait().await;
            while completed.load(Ordering::SeqCst) < force_after || !holding.load(Ordering::SeqCst)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let forced = db.force_finalize(id, "force-finalized").await;
            forced_done.store(true, Ordering::SeqCst);
            forced.unwrap_or_else(|e| panic!("seed {seed}: force: {e}"))
        })
    };
    let (events, forced) = futures::future::join(futures::future::join_all(tasks), force).await;
    let events: Vec<Event> = events
        .into_iter()
        .flat_map(|e| e.expect("worker task"))
        .collect();
    let forced = forced.expect("force task");

    // Exactly one caller, a commit or the force, learned that it finished
    // the film.
    let commit_finishers = events
        .iter()
        .filter(|e| matches!(e, Event::Commit { finished: true, .. }))
        .count();
    assert_eq!(
        commit_finishers + usize::from(forced.progress.finished),
        1,
        "seed {seed}: {forced:?} {events:?}"
    );
    assert_eq!(
        forced.progress.finished,
        !forced.forced_chunks.is_empty(),
        "seed {seed}"
    );

    let chunks = chunks_of(db, id).await;
    let forced_set: BTreeSet<u32> = forced.forced_chunks.iter().copied().collect();
    let mut committed = BTreeSet::new();
    let mut late = 0;
    for event in &events {
        match event {
            Event::Commit {
                chunk,
                outcome: Outcome::Completed,
                shots,
                ..
            } => {
                // Saved exactly as sent, never deleted or rewritten.
                assert_eq!(
                    chunks[chunk],
                    ("completed".into(), None, shots.clone()),
                    "seed {seed}: chunk {chunk}"
                );
                assert!(!forced_set.contains(chunk), "seed {seed}: {chunk} forced");
                committed.insert(*chunk);
            }
            Event::Commit { chunk, outcome, .. } | Event::Failure { chunk, outcome } => {
                let expected: &[Outcome] = match event {
                    Event::Commit { .. } => &[Outcome::AlreadyFailed],
                    _ => &[Outcome::AlreadyFailed, Outcome::Retry],
                };
                assert!(
                    expected.contains(outcome),
                    "seed {seed}: chunk {chunk}: {outcome:?}"
                );
                if *outcome == Outcome::AlreadyFailed {
                    assert!(forced_set.contains(chunk), "seed {seed}: {chunk}");
                    assert!(chunks[chunk].2.is_empty(), "seed {seed}: {chunk} has shots");
                    late += 1;
                }
            }
            Event::Terminal { chunk, status } => {
                assert_eq!(status, "failed", "seed {seed}: chunk {chunk}");
                assert!(forced_set.contains(chunk), "seed {seed}: {chunk}");
            }
        }
    }
    if stall {
        assert!(late >= 1, "seed {seed}: the stalled commit was not late");
    }
    assert_eq!(committed.len() + forced_set.len(), 18, "seed {seed}");
    for k in &forced_set {
        let (status, error, shots) = &chunks[k];
        assert_eq!(status, "failed", "seed {seed}: chunk {k}");
        assert!(shots.is_empty(), "seed {seed}: chunk {k}");
        let error = error.as_deref().unwrap_or_default();
        assert!(
            error == "force-finalized"
                || error == "force-finalized (last error: provider timed out)",
            "seed {seed}: chunk {k}: {error}"
        );
    }
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(progress["completedChunks"], committed.len(), "seed {seed}");
    assert_eq!(progress["failedChunks"], forced_set.len(), "seed {seed}");
    assert_eq!(progress["finished"], true, "seed {seed}");
    let sheet = db.finalize(id).await.unwrap();
    assert_eq!(
        (
            sheet.completed_chunks as usize,
            sheet.failed_chunks as usize
        ),
        (committed.len(), forced_set.len()),
        "seed {seed}"
    );
    (late, forced.progress.finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_finalize_racing_five_workers_keeps_completed_shots_and_one_caller_finishes() {
    let (db, url) = fresh_db().await;
    let mut workers = Vec::new();
    for _ in 0..5 {
        workers.push(Db::connect(&url, 1).await.unwrap());
    }
    let forcer = Db::connect(&url, 1).await.unwrap();
    // Forced at once, part way, racing the last commit, and after the end.
    let force_points = [0, 1, 4, 9, 13, 16, 17, 17, 17, 17, 18, 18, 12, 6, 17, 15];
    let (mut late, mut forced_finished) = (0, 0);
    for (round, &force_after) in force_points.iter().enumerate() {
        let seed = 0xF0C3_0000 + round as u64;
        let stall = force_after <= 15;
        let (l, f) = force_round(&db, &workers, &forcer, seed, force_after, stall).await;
        late += l;
        forced_finished += usize::from(f);
    }
    // Both ends were reached: some films were finished by the force, the
    // ones forced after their last commit by that commit.
    assert!(
        (1..force_points.len()).contains(&forced_finished),
        "{forced_finished} of {} films finished by the force",
        force_points.len()
    );
    println!(
        "{} rounds: {forced_finished} films finished by the force, the others by a commit; \
         {late} late commits or failures found their chunk forced",
        force_points.len()
    );
}

#[tokio::test]
async fn a_rejected_message_delivered_twice_is_one_row_with_receive_count_2() {
    let (db, _url) = fresh_db().await;
    let queue = "shotlist-chunks";
    db.record_rejected_message(queue, "m-1", "{not json", "expected value at line 1")
        .await
        .unwrap();
    let first = db.rejected_messages(queue).await.unwrap();
    assert_eq!(first.len(), 1);
    db.record_rejected_message(queue, "m-1", "{not json", "still not json")
        .await
        .unwrap();
    let rows = db.rejected_messages(queue).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (
            row.queue.as_str(),
            row.message_id.as_str(),
            row.body.as_str(),
            row.error.as_str(),
            row.receive_count
        ),
        (queue, "m-1", "{not json", "still not json", 2)
    );
    assert_eq!(row.first_seen, first[0].first_seen);
    assert!(row.last_seen >= row.first_seen, "{row:?}");

    // The same id on another queue is another message; a long body is cut.
    let long = "x".repeat(10_000);
    db.record_rejected_message("shotlist-finalize", "m-1", &long, "unknown video")
        .await
        .unwrap();
    let other = db.rejected_messages("shotlist-finalize").await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(
        (other[0].body.chars().count(), other[0].receive_count),
        (4096, 1)
    );
    assert_eq!(db.rejected_messages(queue).await.unwrap().len(), 1);
    assert!(db
        .rejected_messages("nothing-here")
        .await
        .unwrap()
        .is_empty());
    let message = invalid_argument(
        db.record_rejected_message(queue, "", "body", "error").await,
        "empty id",
    );
    assert!(message.contains("p_message_id"), "{message}");
}

#[tokio::test]
async fn the_cloud_migration_applies_again_over_a_database_in_use_and_keeps_its_rows() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let (id, owner) = (Uuid::new_v4(), Uuid::new_v4());
    db.submit_video(&submission(id, Some(owner))).await.unwrap();
    db.mark_enqueued(id).await.unwrap();
    db.record_rejected_message("q", "m", "body", "error")
        .await
        .unwrap();
    let before = film_rows(&client, id).await;
    let (name, sql) = MIGRATIONS[1];
    assert_eq!(name, "0002_cloud");
    client.batch_execute(sql).await.unwrap();
    client.batch_execute(sql).await.unwrap();
    assert_eq!(film_rows(&client, id).await, before);
    let again = db.submit_video(&submission(id, Some(owner))).await.unwrap();
    assert_eq!((again.created, again.enqueued), (false, true));
    assert_eq!(db.rejected_messages("q").await.unwrap()[0].receive_count, 1);
}

#[tokio::test]
async fn anon_and_authenticated_may_not_call_the_cloud_functions_but_service_role_may() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let id = described_film(&db, 2500, "25/1").await;
    let calls = [
        "SELECT public.submit_video($1, NULL, 100, 180, 15, 's', 25, 1, 2500, '{}')",
        "SELECT public.mark_enqueued($1)",
        "SELECT public.video_owner($1)",
        "SELECT public.force_finalize($1, 'x')",
        "SELECT public.unfinished_chunks($1)",
        "SELECT public.record_rejected_message($1::text, 'm', 'b', 'e')",
        "SELECT public.rejected_messages($1::text)",
    ];
    for role in ["anon", "authenticated"] {
        client
            .batch_execute(&format!("SET ROLE {role}"))
            .await
            .unwrap();
        for sql in calls {
            let error = client
                .query_typed(sql, &[(&id, Type::UUID)])
                .await
                .expect_err(sql);
            assert_eq!(
                error.code().map(|c| c.code()),
                Some("42501"),
                "{role}: {sql}: {error}"
            );
        }
        let error = client
            .query_typed("SELECT count(*) FROM shotlist.rejected_messages", &[])
            .await
            .expect_err("table read");
        assert_eq!(error.code().map(|c| c.code()), Some("42501"), "{role}");
        client.batch_execute("RESET ROLE").await.unwrap();
    }
    assert_eq!(db.unfinished_chunks(id).await.unwrap(), [0]);

    client.batch_execute("SET ROLE service_role").await.unwrap();
    let forced: Value = client
        .query_typed_one(calls[3], &[(&id, Type::UUID)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(forced["forcedChunks"], serde_json::json!([0]));
    let recorded: Value = client
        .query_typed_one(calls[5], &[(&"q", Type::TEXT)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded["receiveCount"], 1);
    client.batch_execute("RESET ROLE").await.unwrap();
}

#[tokio::test]
async fn the_claim_to_send_the_chunk_messages_is_released_after_a_failed_send_and_ends_when_marked()
{
    let (db, _url) = fresh_db().await;
    let id = Uuid::new_v4();
    let first = db.submit_video(&submission(id, None)).await.unwrap();
    assert!(first.enqueue, "the first submission sends");
    let second = db.submit_video(&submission(id, None)).await.unwrap();
    assert!(!second.enqueue, "not while the first one holds the claim");
    db.release_enqueue(id).await.unwrap();
    let third = db.submit_video(&submission(id, None)).await.unwrap();
    assert!(third.enqueue, "released: the next submission sends");
    assert!(db.mark_enqueued(id).await.unwrap());
    let fourth = db.submit_video(&submission(id, None)).await.unwrap();
    assert!(
        fourth.enqueued && !fourth.enqueue,
        "sent: nobody sends again"
    );
    db.release_enqueue(id).await.unwrap();
    assert!(
        !db.submit_video(&submission(id, None))
            .await
            .unwrap()
            .enqueue
    );
}

#[tokio::test]
async fn the_same_request_repeating_its_submit_keeps_the_claim_to_send() {
    // A submit whose answer was lost is repeated by the same request: it
    // must still be told to send, or nobody would for two minutes.
    let (db, url) = fresh_db().await;
    db.migrate().await.unwrap();
    let client = connect(&url).await;
    let id = Uuid::new_v4();
    let submit = |request: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_typed_one(
                    "SELECT public.submit_video($1, NULL, 100, 180, 15, 's', 25, 1, 2500, '{}', $2)",
                    &[(&id, Type::UUID), (&request, Type::UUID)],
                )
                .await
                .unwrap();
            row.get::<_, Value>(0)["enqueue"].as_bool().unwrap()
        }
    };
    let (first, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(submit(first).await, "the first request sends");
    assert!(
        submit(first).await,
        "and keeps the claim when it repeats itself"
    );
    assert!(
        !submit(other).await,
        "another request does not send meanwhile"
    );
}
