//! Lease renewal against a real PostgreSQL: a worker keeps its chunk for
//! as long as its analysis runs by renewing a short lease, stops as soon as
//! the chunk is taken from it, and leaves the chunk claimable one lease
//! after it dies; `renew_lease` itself, for holders, stale tokens, finished
//! chunks, bad arguments and roles that may not call it.
//!
//! The analyzer here runs until the test lets it finish, so no test depends
//! on how long anything takes; leases are one second so that several of
//! them pass quickly.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::db::{Claim, Db, DbError, Outcome};
use shotlist_shared::model::{ChunkAnalysis, Shot, ShotType};
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::fixtures::{chunk_state, described_film, take_over};
use shotlist_tests::logs;
use shotlist_tests::pg::{connect, fresh_db};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

/// The workers' lease: renewed every third of a second.
const LEASE: Duration = Duration::from_secs(1);

/// How long a test waits for something that happens within a lease or two
/// before it declares the worker hung: a guard, not a measurement.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A 10 s film at 25 fps: one chunk of 250 frames.
const ONE_CHUNK: i64 = 250;

/// A 500 s film at 25 fps: three chunks.
const THREE_CHUNKS: i64 = 12_500;

/// An analyzer whose runs last until the test lets them finish. It says
/// when a run started, and whether a run was dropped before it finished
/// (the worker stopped it).
#[derive(Default)]
struct GatedAnalyzer {
    runs: AtomicU32,
    started: Notify,
    finish: Notify,
    stopped: AtomicBool,
}

impl GatedAnalyzer {
    fn new() -> Arc<GatedAnalyzer> {
        Arc::new(GatedAnalyzer::default())
    }

    /// Waits until a run has started: the chunk is claimed by then.
    async fn wait_started(&self) {
        tokio::time::timeout(HANG_GUARD, self.started.notified())
            .await
            .expect("the worker claims the chunk and starts analyzing");
    }

    /// Lets the running (or next) run finish with one shot.
    fn let_finish(&self) {
        self.finish.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Marks a run as stopped when dropped before it is disarmed.
struct StopMark<'a> {
    stopped: &'a AtomicBool,
    armed: bool,
}

impl Drop for StopMark<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stopped.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Analyzer for GatedAnalyzer {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let mut mark = StopMark {
            stopped: &self.stopped,
            armed: true,
        };
        self.started.notify_one();
        self.finish.notified().await;
        mark.armed = false;
        Ok(ChunkAnalysis {
            shots: vec![Shot {
                start_frame: 0,
                end_frame: request.end_frame - request.start_frame,
                shot_type: ShotType::Wide,
                description: "analyzed by the first worker".into(),
                dialogue: vec![],
            }],
        })
    }
}

/// A worker with a one-second lease on chunk 0 of `video_id`, running
/// until its chunk is settled.
fn start_worker(
    db: &Db,
    analyzer: &Arc<GatedAnalyzer>,
    video_id: Uuid,
) -> JoinHandle<Result<Done, DbError>> {
    let (db, analyzer) = (db.clone(), analyzer.clone());
    let config = WorkerConfig {
        lease: LEASE,
        ..WorkerConfig::default()
    };
    tokio::spawn(async move { process_chunk(&db, analyzer.as_ref(), video_id, 0, &config).await })
}

/// What the worker's call answered, once it returns by itself.
async fn outcome(worker: JoinHandle<Result<Done, DbError>>) -> Done {
    tokio::time::timeout(HANG_GUARD, worker)
        .await
        .expect("the worker returns by itself")
        .expect("the worker does not panic")
        .expect("the database answers the worker")
}

/// A chunk's lease as the database sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lease {
    token: Option<Uuid>,
    /// Seconds until it runs out; negative once it has.
    left: Option<f64>,
    /// Seconds since the chunk was last claimed or settled (a renewal does
    /// not count: it changes no state).
    since_claim: f64,
}

async fn lease_of(client: &Client, video_id: Uuid, index: i32) -> Lease {
    let row = client
        .query_typed_one(
            "SELECT lease_token, \
                    extract(epoch FROM lease_until - now())::float8, \
                    extract(epoch FROM now() - updated_at)::float8 \
             FROM shotlist.chunks WHERE video_id = $1 AND chunk_index = $2",
            &[(&video_id, Type::UUID), (&index, Type::INT4)],
        )
        .await
        .expect("read the lease");
    Lease {
        token: row.get(0),
        left: row.get(1),
        since_claim: row.get(2),
    }
}

/// Polls the lease of chunk 0 until `done` says so.
async fn wait_for_lease(client: &Client, video_id: Uuid, done: impl Fn(&Lease) -> bool) -> Lease {
    let wait = async {
        loop {
            let lease = lease_of(client, video_id, 0).await;
            if done(&lease) {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("the lease reaches the awaited state")
}

/// `renew_lease`'s whole answer, called as SQL.
async fn renew_sql(client: &Client, video_id: Uuid, index: i32, token: Uuid) -> Value {
    client
        .query_typed_one(
            "SELECT public.renew_lease($1, $2, $3, 60)",
            &[
                (&video_id, Type::UUID),
                (&index, Type::INT4),
                (&token, Type::UUID),
            ],
        )
        .await
        .expect("renew_lease answers")
        .get(0)
}

/// The SQLSTATE and message of a statement that must fail.
async fn refusal(
    client: &Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> (String, String) {
    match client.query_typed(sql, params).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

async fn claimed(db: &Db, video_id: Uuid, index: u32) -> Uuid {
    match db
        .claim_chunk(video_id, index, Duration::from_secs(600), 3)
        .await
    {
        Ok(Claim::Claimed(chunk)) => chunk.lease_token,
        other => panic!("chunk {index} not claimed: {other:?}"),
    }
}

fn whole_chunk_shot(description: &str) -> Vec<Shot> {
    vec![Shot {
        start_frame: 0,
        end_frame: ONE_CHUNK,
        shot_type: ShotType::Wide,
        description: description.into(),
        dialogue: vec![],
    }]
}

#[tokio::test]
async fn an_analysis_longer_than_several_leases_keeps_its_chunk_and_commits() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let video_id = described_film(&db, ONE_CHUNK, "25/1").await;
    let analyzer = GatedAnalyzer::new();
    let worker = start_worker(&db, &analyzer, video_id);
    analyzer.wait_started().await;
    let first = lease_of(&client, video_id, 0).await;

    // Three leases pass while the analysis runs.
    let later = wait_for_lease(&client, video_id, |l| {
        l.since_claim > 3.0 * LEASE.as_secs_f64()
    })
    .await;
    assert_eq!(later.token, first.token, "the worker still holds its claim");
    // Right after a renewal another worker finds the chunk held.
    let renewed = wait_for_lease(&client, video_id, |l| l.left > later.left).await;
    let second = db
        .claim_chunk(video_id, 0, Duration::from_secs(600), 3)
        .await
        .expect("the claim is answered");
    assert_eq!(second, Claim::Busy, "lease after a renewal: {renewed:?}");

    analyzer.let_finish();
    let done = outcome(worker).await;
    assert!(matches!(done, Done::Completed(p) if p.finished), "{done:?}");
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("completed", 1));
    assert_eq!(analyzer.runs(), 1);
    let sheet = db.finalize(video_id).await.expect("finalize");
    assert_eq!(sheet.shots.len(), 1);
    assert_eq!(sheet.shots[0].description, "analyzed by the first worker");
}

#[tokio::test]
async fn a_worker_whose_chunk_is_taken_over_stops_its_analysis_and_commits_nothing() {
    let (db, url) = fresh_db().await;
    let video_id = described_film(&db, ONE_CHUNK, "25/1").await;
    let analyzer = GatedAnalyzer::new();
    let worker = start_worker(&db, &analyzer, video_id);
    analyzer.wait_started().await;

    let new_holder = take_over(&url, video_id, 0).await;
    // The analysis is never let finish: the worker must stop it itself.
    let done = outcome(worker).await;
    assert_eq!(done, Done::LeaseLost);
    assert!(analyzer.stopped(), "the analysis was dropped midway");
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("processing", 2));
    assert!(state.error.contains("lease expired"), "{}", state.error);

    // The new holder's commit is the only one.
    let report = db
        .complete_chunk(
            video_id,
            0,
            new_holder,
            &whole_chunk_shot("the second worker's"),
        )
        .await
        .expect("the new holder commits");
    assert_eq!(report.outcome, Outcome::Completed);
    let sheet = db.finalize(video_id).await.expect("finalize");
    let descriptions: Vec<&str> = sheet.shots.iter().map(|s| s.description.as_str()).collect();
    assert_eq!(descriptions, ["the second worker's"]);
}

#[tokio::test]
async fn a_force_finalized_chunk_stops_the_analysis_holding_it_and_gets_no_shots() {
    let (db, _url) = fresh_db().await;
    let video_id = described_film(&db, ONE_CHUNK, "25/1").await;
    let analyzer = GatedAnalyzer::new();
    let worker = start_worker(&db, &analyzer, video_id);
    analyzer.wait_started().await;

    let forced = db
        .force_finalize(video_id, "stopped by the operator")
        .await
        .expect("force-finalize");
    assert_eq!(forced.forced_chunks, [0]);
    let done = outcome(worker).await;
    assert_eq!(done, Done::LeaseLost);
    assert!(analyzer.stopped(), "the analysis was dropped midway");
    let sheet = db.finalize(video_id).await.expect("finalize");
    assert_eq!((sheet.completed_chunks, sheet.failed_chunks), (0, 1));
    assert!(
        sheet
            .shots
            .iter()
            .all(|s| s.description != "analyzed by the first worker"),
        "{:?}",
        sheet.shots
    );
    assert_eq!(sheet.gaps.len(), 1, "{:?}", sheet.gaps);
    assert!(
        sheet.gaps[0].reasons[0].contains("stopped by the operator"),
        "{:?}",
        sheet.gaps
    );
}

#[tokio::test]
async fn a_renewal_the_database_fails_is_logged_and_tried_again_and_the_chunk_is_not_failed() {
    let logs = logs::capture();
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let video_id = described_film(&db, ONE_CHUNK, "25/1").await;
    let analyzer = GatedAnalyzer::new();
    let worker = start_worker(&db, &analyzer, video_id);
    analyzer.wait_started().await;

    // Every renewal fails while the function is away, until the lease runs
    // out; nobody takes the chunk meanwhile.
    client
        .batch_execute(
            "ALTER FUNCTION public.renew_lease(uuid, integer, uuid, double precision) \
             RENAME TO renew_lease_away",
        )
        .await
        .expect("hide renew_lease");
    let lapsed = wait_for_lease(&client, video_id, |l| l.left.is_some_and(|s| s < 0.0)).await;
    client
        .batch_execute(
            "ALTER FUNCTION public.renew_lease_away(uuid, integer, uuid, double precision) \
             RENAME TO renew_lease",
        )
        .await
        .expect("restore renew_lease");
    // The next renewal takes again, though the lease had run out.
    let renewed = wait_for_lease(&client, video_id, |l| l.left.is_some_and(|s| s > 0.0)).await;
    assert_eq!(renewed.token, lapsed.token);

    analyzer.let_finish();
    let done = outcome(worker).await;
    assert!(matches!(done, Done::Completed(_)), "{done:?}");
    let state = chunk_state(&db, video_id, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("completed", 1));
    let text = logs.text();
    let warned = text
        .lines()
        .any(|l| l.contains(&video_id.to_string()) && l.contains("cannot renew the lease"));
    assert!(warned, "no renewal failure logged for {video_id}");
}

#[tokio::test]
async fn a_dropped_worker_stops_renewing_and_its_chunk_is_claimable_one_lease_later() {
    let (db, _url) = fresh_db().await;
    let video_id = described_film(&db, ONE_CHUNK, "25/1").await;
    let analyzer = GatedAnalyzer::new();
    let worker = start_worker(&db, &analyzer, video_id);
    analyzer.wait_started().await;

    // As a killed process does, the worker goes away mid-analysis.
    worker.abort();
    let ended = worker.await.expect_err("the worker was cancelled");
    assert!(ended.is_cancelled());
    assert!(analyzer.stopped(), "nothing of the job outlives it");
    // Nobody renews the lease now: a claim succeeds once it runs out.
    let claim = async {
        loop {
            match db
                .claim_chunk(video_id, 0, Duration::from_secs(600), 3)
                .await
            {
                Ok(Claim::Busy) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return other,
            }
        }
    };
    let claim = tokio::time::timeout(HANG_GUARD, claim)
        .await
        .expect("the dead worker's lease runs out")
        .expect("the claim is answered");
    let Claim::Claimed(chunk) = claim else {
        panic!("not claimed: {claim:?}");
    };
    assert_eq!(chunk.attempt, 2);
    let state = chunk_state(&db, video_id, 0).await;
    assert!(state.error.contains("lease expired"), "{}", state.error);
}

#[tokio::test]
async fn renew_lease_extends_only_the_current_holders_lease_of_a_processing_chunk() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let video_id = described_film(&db, THREE_CHUNKS, "25/1").await;

    // The holder: its ten-minute lease becomes one minute from now.
    let first = claimed(&db, video_id, 0).await;
    assert!(db
        .renew_lease(video_id, 0, first, Duration::from_secs(60))
        .await
        .expect("renew"));
    let left = lease_of(&client, video_id, 0).await.left.expect("a lease");
    assert!(left > 50.0 && left <= 60.0, "{left} s left");

    // A stale token changes nothing of the new holder's lease.
    let second = take_over(&url, video_id, 0).await;
    let answer = renew_sql(&client, video_id, 0, first).await;
    assert_eq!(answer, json!({"renewed": false, "status": "processing"}));
    let lease = lease_of(&client, video_id, 0).await;
    assert_eq!(lease.token, Some(second));
    assert!(lease.left.expect("a lease") > 500.0, "{lease:?}");

    // A completed chunk, a pending one and a failed one have no holder.
    db.complete_chunk(video_id, 0, second, &[])
        .await
        .expect("commit");
    let answer = renew_sql(&client, video_id, 0, second).await;
    assert_eq!(answer, json!({"renewed": false, "status": "completed"}));
    let answer = renew_sql(&client, video_id, 1, Uuid::new_v4()).await;
    assert_eq!(answer, json!({"renewed": false, "status": "pending"}));
    let third = claimed(&db, video_id, 2).await;
    db.force_finalize(video_id, "stopped").await.expect("force");
    assert!(!db
        .renew_lease(video_id, 2, third, Duration::from_secs(60))
        .await
        .expect("answered"));
    let answer = renew_sql(&client, video_id, 2, third).await;
    assert_eq!(answer, json!({"renewed": false, "status": "failed"}));
}

#[tokio::test]
async fn renew_lease_refuses_bad_arguments_naming_each_and_the_lease_survives() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let video_id = described_film(&db, THREE_CHUNKS, "25/1").await;
    let token = claimed(&db, video_id, 0).await;
    let before = lease_of(&client, video_id, 0).await.left.expect("a lease");

    let call = |args: &str| format!("SELECT public.renew_lease({args})");
    let (id, held) = (video_id.to_string(), token.to_string());
    let cases = [
        (
            call(&format!("'{id}', 0, '{held}', 0")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, '{held}', -1")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, '{held}', 'NaN'")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, '{held}', 'Infinity'")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, '{held}', 86401")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, '{held}', NULL")),
            "22023",
            "p_lease_seconds",
        ),
        (
            call(&format!("'{id}', 0, NULL, 60")),
            "22023",
            "p_lease_token",
        ),
        (
            call(&format!("'{id}', NULL, '{held}', 60")),
            "22023",
            "p_chunk_index",
        ),
        (
            call(&format!("NULL, 0, '{held}', 60")),
            "22023",
            "p_video_id",
        ),
        (
            call(&format!("'{}', 0, '{held}', 60", Uuid::new_v4())),
            "P0002",
            "unknown video",
        ),
        (
            call(&format!("'{id}', 7, '{held}', 60")),
            "P0002",
            "has no chunk 7",
        ),
    ];
    for (sql, code, named) in &cases {
        let (got, message) = refusal(&client, sql, &[]).await;
        assert_eq!(&got, code, "{sql}: {message}");
        assert!(
            message.contains(named),
            "{sql}: {message:?} should name {named:?}"
        );
    }
    let zero = db.renew_lease(video_id, 0, token, Duration::ZERO).await;
    assert!(
        matches!(&zero, Err(DbError::InvalidArgument(m)) if m.contains("p_lease_seconds")),
        "{zero:?}"
    );

    let after = lease_of(&client, video_id, 0).await;
    assert_eq!(after.token, Some(token));
    assert!(
        after.left.expect("a lease") <= before,
        "no refused call extended it"
    );
    assert!(db
        .renew_lease(video_id, 0, token, Duration::from_secs(60))
        .await
        .expect("the holder still renews"));
}

#[tokio::test]
async fn only_service_role_may_renew_a_lease() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let video_id = described_film(&db, THREE_CHUNKS, "25/1").await;
    let token = claimed(&db, video_id, 0).await;
    let renew = "SELECT public.renew_lease($1, 0, $2, 60)";
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&video_id, Type::UUID), (&token, Type::UUID)];
    for role in ["anon", "authenticated"] {
        client
            .batch_execute(&format!("SET ROLE {role}"))
            .await
            .unwrap();
        let (code, message) = refusal(&client, renew, &params).await;
        assert_eq!(code, "42501", "{role}: {message}");
        client.batch_execute("RESET ROLE").await.unwrap();
    }
    client.batch_execute("SET ROLE service_role").await.unwrap();
    let answer: Value = client
        .query_typed_one(renew, &params)
        .await
        .expect("service_role renews")
        .get(0);
    client.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(answer["renewed"], true, "{answer}");
}
