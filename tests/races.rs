//! Races and attacks on leases, the sweeper and row security, against a
//! real PostgreSQL: lease renewal (`migrations/0005_renew_lease.sql`, the
//! worker's heartbeat), the sweeper (`migrations/0006_sweep.sql`,
//! `shared::sweep`) and row security (`migrations/0007_row_security.sql`).
//!
//! Each test is one attack, named for what must hold under it: sweepers,
//! workers, renewals, releases, resubmissions and force-finalize racing on
//! the same films; sweeps run back to back over a live worker's short lease;
//! the new functions and row security as the service role, a signed-in user,
//! anon and a stranger see them; migrations run by several migrators at once,
//! applied again by hand, and applied to a database in use; a duplicate
//! delivery on the queue's last receive; a worker stopped by its heartbeat
//! in the middle of a paid Replicate prediction.
//!
//! Two of them found defects, fixed with them: a worker whose chunk was
//! taken from it left its Replicate prediction running and its clip
//! uploaded; and 0006 and 0007, applied while films were worked on, could
//! deadlock with the workers and fail their calls (or the migration).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shotlist_shared::analyzer::keys::KeyPool;
use shotlist_shared::analyzer::remote::{HttpTimeouts, ModelAnalyzer, ModelSettings};
use shotlist_shared::analyzer::replicate::{
    PollBackoff, Replicate, ReplicateConfig, CREATES_PER_MINUTE, KEYS_VARIABLE,
};
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest, LocalAnalyzer};
use shotlist_shared::cloud::chunk::{ChunkHandler, Redelivery};
use shotlist_shared::cloud::queue::MessageQueue;
use shotlist_shared::db::{Claim, Db, DbError, Outcome, Submission, MIGRATIONS};
use shotlist_shared::model::{ChunkAnalysis, Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::probe;
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::cloud::{
    chunk_body, sqs_event, sqs_record, RecordingQueue, RecordingRedelivery, ScriptedAnalyzer,
};
use shotlist_tests::fake_replicate::{self, FakeReplicate, Script};
use shotlist_tests::film::{film_dir, make_film};
use shotlist_tests::fixtures::{chunk_state, described_film, media, take_over};
use shotlist_tests::pg::{chain, connect, fresh_database, fresh_db};
use shotlist_tests::roles::as_client;
use tokio::sync::Notify;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

/// 500 s at 25 fps: three chunks with the default plan.
const THREE_CHUNKS: i64 = 12_500;

/// The attempts every caller in these tests allows a chunk.
const MAX_ATTEMPTS: u32 = 3;

/// How long a test waits for something that takes a lease or two before it
/// declares a worker or a sweep hung: a guard, not a measurement.
const HANG_GUARD: Duration = Duration::from_secs(60);

// Racing everything at once.

/// A small xorshift generator: the races below are varied but repeatable.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Dice {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the racers were told, to be checked against the database after.
#[derive(Default)]
struct Ledger {
    /// Per film, how many calls were told that they finished it.
    finishes: Mutex<HashMap<Uuid, u32>>,
    /// Per chunk, how many commits were told "completed".
    commits: Mutex<HashMap<(Uuid, u32), u32>>,
    /// Calls the database failed: none is expected.
    errors: Mutex<Vec<String>>,
    /// Chunks put back for another worker by a sweep.
    requeued: AtomicU32,
    /// Chunks a sweep or a claim failed for good: their attempts ran out.
    given_up: AtomicU32,
}

impl Ledger {
    fn finished(&self, film: Uuid, finished: bool) {
        if finished {
            *self.finishes.lock().unwrap().entry(film).or_default() += 1;
        }
    }

    fn committed(&self, film: Uuid, chunk_index: u32) {
        *self
            .commits
            .lock()
            .unwrap()
            .entry((film, chunk_index))
            .or_default() += 1;
    }

    /// The answer of call `what`, or `None` with its error recorded.
    fn noted<T>(&self, what: &str, result: Result<T, DbError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.errors
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {}", chain(&e)));
                None
            }
        }
    }
}

/// One shot over the whole chunk `[start, end)`, in absolute frames.
fn whole(start: i64, end: i64, description: &str) -> Vec<Shot> {
    vec![Shot {
        start_frame: start,
        end_frame: end,
        shot_type: ShotType::Wide,
        description: description.into(),
        dialogue: vec![],
    }]
}

/// A worker that takes random chunks of `films` and, with each, renews a
/// short lease a few times and then commits, fails (for retry or for good),
/// gives it back, or vanishes and lets the lease run out.
async fn racing_worker(db: Db, films: Arc<Vec<Uuid>>, ledger: Arc<Ledger>, seed: u64) {
    let mut dice = Dice::new(seed);
    // Until every film is finished: the cap only guards against a race
    // that never ends, which the final checks then show.
    for _ in 0..5_000 {
        if ledger.finishes.lock().unwrap().len() == films.len() {
            return;
        }
        // One pick in three is the last film.
        let pick = match dice.below(3) {
            0 => films.len() - 1,
            _ => dice.below(films.len() as u64) as usize,
        };
        let film = films[pick];
        let index = dice.below(3) as u32;
        let lease = Duration::from_millis(80 + dice.below(120));
        let claim = db.claim_chunk(film, index, lease, MAX_ATTEMPTS).await;
        let chunk = match ledger.noted("claim_chunk", claim) {
            Some(Claim::Claimed(chunk)) => chunk,
            Some(Claim::Terminal {
                progress: Some(progress),
                ..
            }) => {
                ledger.given_up.fetch_add(1, Ordering::SeqCst);
                ledger.finished(film, progress.finished);
                continue;
            }
            _ => {
                // Busy, or terminal already: give the holders some time.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let token = chunk.lease_token;
        for _ in 0..dice.below(3) {
            tokio::time::sleep(Duration::from_millis(dice.below(50))).await;
            let renewed = db.renew_lease(film, index, token, lease).await;
            ledger.noted("renew_lease", renewed);
        }
        // The last film's workers always vanish, so that its chunks run out
        // of attempts under the sweepers' and the claims' hands at once.
        let fate = if pick == films.len() - 1 {
            9
        } else {
            dice.below(10)
        };
        let report = match fate {
            0..=4 => {
                let shots = whole(chunk.start_frame, chunk.end_frame, "raced");
                db.complete_chunk(film, index, token, &shots).await
            }
            5 => {
                db.fail_chunk(
                    film,
                    index,
                    token,
                    "503 from the provider",
                    true,
                    MAX_ATTEMPTS,
                )
                .await
            }
            6 => {
                db.fail_chunk(film, index, token, "unreadable", false, MAX_ATTEMPTS)
                    .await
            }
            7 => db.release_chunk(film, index, token, "keys rest", 2).await,
            _ => continue,
        };
        if let Some(report) = ledger.noted("settling a chunk", report) {
            match report.outcome {
                Outcome::Completed => {
                    ledger.committed(film, index);
                    ledger.finished(film, report.progress.finished);
                }
                Outcome::Failed => ledger.finished(film, report.progress.finished),
                _ => {}
            }
        }
    }
}

/// A sweeper that sweeps with no stale period until told to stop.
async fn racing_sweeper(db: Db, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let swept = db.sweep_chunks(MAX_ATTEMPTS, Duration::ZERO, 500).await;
        if let Some(swept) = ledger.noted("sweep_chunks", swept) {
            ledger
                .requeued
                .fetch_add(swept.requeue.len() as u32, Ordering::SeqCst);
            ledger
                .given_up
                .fetch_add(swept.failed.len() as u32, Ordering::SeqCst);
            for chunk in swept.failed {
                ledger.finished(chunk.video_id, chunk.finished);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The film's counters and its chunks' statuses and shots, as the tables
/// hold them.
async fn film_rows(client: &Client, film: Uuid) -> (i32, i32, bool, Vec<(String, i64)>) {
    let video = client
        .query_typed_one(
            "SELECT completed_chunks, failed_chunks, finished_at IS NOT NULL \
             FROM shotlist.videos WHERE video_id = $1",
            &[(&film, Type::UUID)],
        )
        .await
        .expect("the film's row");
    let chunks = client
        .query_typed(
            "SELECT c.status, (SELECT count(*) FROM shotlist.shots AS s \
                               WHERE s.video_id = c.video_id AND s.chunk_index = c.chunk_index) \
             FROM shotlist.chunks AS c WHERE c.video_id = $1 ORDER BY c.chunk_index",
            &[(&film, Type::UUID)],
        )
        .await
        .expect("the film's chunks");
    (
        video.get(0),
        video.get(1),
        video.get(2),
        chunks.iter().map(|r| (r.get(0), r.get(1))).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweepers_workers_renewals_releases_resubmissions_and_force_finalize_racing_keep_counts_exact_and_finish_each_film_once(
) {
    let (db, url) = fresh_db().await;
    let mut films = Vec::new();
    for _ in 0..6 {
        films.push(described_film(&db, THREE_CHUNKS, "25/1").await);
    }
    let films = Arc::new(films);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));

    let sweepers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(racing_sweeper(db.clone(), ledger.clone(), stop.clone())))
        .collect();
    let mut racers: Vec<_> = (0..5)
        .map(|seed| {
            tokio::spawn(racing_worker(
                db.clone(),
                films.clone(),
                ledger.clone(),
                seed,
            ))
        })
        .collect();
    // Two films are force-finalized while the others race on.
    let forcing = {
        let (db, films, ledger) = (db.clone(), films.clone(), ledger.clone());
        tokio::spawn(async move {
            for film in [films[0], films[3]] {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let forced = db.force_finalize(film, "forced mid-race").await;
                if let Some(forced) = ledger.noted("force_finalize", forced) {
                    ledger.finished(film, forced.progress.finished);
                }
            }
        })
    };
    racers.push(forcing);
    // The films are submitted again meanwhile, as a repeated POST /videos
    // does: describe_video locks every chunk row and then the film's row.
    let resubmitting = {
        let (db, films, ledger) = (db.clone(), films.clone(), ledger.clone());
        tokio::spawn(async move {
            for round in 0..40 {
                let video_id = films[round % films.len()];
                let submitted = db
                    .submit_video(&Submission {
                        video_id,
                        owner_id: None,
                        source: "/films/test.mp4".into(),
                        media: media(THREE_CHUNKS, "25/1".parse().expect("a rate")),
                        plan: PlanParams::default(),
                    })
                    .await;
                if let Some(submitted) = ledger.noted("submit_video", submitted) {
                    if submitted.enqueue {
                        let marked = db.mark_enqueued(video_id).await;
                        ledger.noted("mark_enqueued", marked);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    racers.push(resubmitting);
    for racer in racers {
        tokio::time::timeout(HANG_GUARD, racer)
            .await
            .expect("no racer hangs on a lock")
            .expect("no racer panics");
    }
    stop.store(true, Ordering::SeqCst);
    for sweeper in sweepers {
        tokio::time::timeout(HANG_GUARD, sweeper)
            .await
            .expect("no sweeper hangs on a lock")
            .expect("no sweeper panics");
    }
    // Whatever is still open is ended, as an operator would.
    for &film in films.iter() {
        let forced = db.force_finalize(film, "end of the race").await;
        if let Some(forced) = ledger.noted("force_finalize", forced) {
            ledger.finished(film, forced.progress.finished);
        }
    }

    let errors = ledger.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "calls the database failed: {errors:#?}");
    assert!(
        ledger.requeued.load(Ordering::SeqCst) > 0 && ledger.given_up.load(Ordering::SeqCst) > 0,
        "the race never made a sweep requeue a chunk or a chunk run out of attempts: \
         it proved nothing"
    );
    let commits = ledger.commits.lock().unwrap().clone();
    let twice: Vec<_> = commits.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "chunks committed twice: {twice:?}");
    assert!(
        !commits.is_empty(),
        "no commit went through: it proved nothing"
    );

    let client = connect(&url).await;
    let finishes = ledger.finishes.lock().unwrap().clone();
    for &film in films.iter() {
        assert_eq!(
            finishes.get(&film).copied(),
            Some(1),
            "film {film} was reported finished {:?} times",
            finishes.get(&film)
        );
        let (completed, failed, finished, chunks) = film_rows(&client, film).await;
        assert!(finished, "film {film} is not finished");
        let count = |status: &str| chunks.iter().filter(|(s, _)| s == status).count() as i32;
        assert_eq!(
            (completed, failed),
            (count("completed"), count("failed")),
            "film {film}'s counters differ from its chunks: {chunks:?}"
        );
        for (index, (status, shots)) in chunks.iter().enumerate() {
            let committed = commits.get(&(film, index as u32)).copied().unwrap_or(0);
            match status.as_str() {
                "completed" => assert_eq!(
                    (*shots, committed),
                    (1, 1),
                    "film {film} chunk {index}: one commit, one shot"
                ),
                "failed" => assert_eq!(
                    (*shots, committed),
                    (0, 0),
                    "film {film} chunk {index} failed but kept shots or a commit"
                ),
                other => panic!("film {film} chunk {index} is still {other}"),
            }
        }
    }
}

// A live worker under back-to-back sweeps.

/// An analyzer whose one run lasts until the test lets it finish.
#[derive(Default)]
struct HeldAnalyzer {
    started: Notify,
    finish: Notify,
    runs: AtomicU32,
}

#[async_trait]
impl Analyzer for HeldAnalyzer {
    fn name(&self) -> &'static str {
        "held"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        self.finish.notified().await;
        Ok(ChunkAnalysis {
            shots: whole(0, request.end_frame - request.start_frame, "held"),
        })
    }
}

/// The chunk's lease end as the database has it, in microseconds since the
/// epoch; `None` while it has none.
async fn lease_until(client: &Client, film: Uuid, index: i32) -> Option<i64> {
    client
        .query_typed_one(
            "SELECT (extract(epoch FROM lease_until) * 1000000)::int8 \
             FROM shotlist.chunks WHERE video_id = $1 AND chunk_index = $2",
            &[(&film, Type::UUID), (&index, Type::INT4)],
        )
        .await
        .expect("the chunk's lease")
        .get(0)
}

#[tokio::test]
async fn back_to_back_sweeps_never_touch_a_live_worker_whose_analysis_outlasts_its_lease() {
    let (db, url) = fresh_db().await;
    let film = described_film(&db, THREE_CHUNKS, "25/1").await;
    let analyzer = Arc::new(HeldAnalyzer::default());
    // A six-second lease renewed every two seconds: the slack of four
    // seconds is what a loaded machine gets before a sweep may rightly take
    // the chunk.
    let config = WorkerConfig {
        lease: Duration::from_secs(6),
        ..WorkerConfig::default()
    };
    let worker = {
        let (db, analyzer) = (db.clone(), analyzer.clone());
        tokio::spawn(async move { process_chunk(&db, analyzer.as_ref(), film, 0, &config).await })
    };
    tokio::time::timeout(HANG_GUARD, analyzer.started.notified())
        .await
        .expect("the worker claims and starts");

    // Sweeps with no stale period and a single allowed attempt, so that a
    // sweep that took the chunk for lost would fail it outright, run until
    // the lease was renewed three times (a whole lease has passed).
    let client = connect(&url).await;
    let mut leases = HashSet::new();
    let sweeping = async {
        while leases.len() < 4 {
            let swept = db
                .sweep_chunks(1, Duration::ZERO, 500)
                .await
                .expect("the sweep runs");
            let touched: Vec<_> = swept
                .requeue
                .iter()
                .map(|c| (c.video_id, c.chunk_index))
                .chain(swept.failed.iter().map(|c| (c.video_id, c.chunk_index)))
                .filter(|&(v, i)| v == film && i == 0)
                .collect();
            assert!(touched.is_empty(), "a sweep took the live chunk: {swept:?}");
            leases.extend(lease_until(&client, film, 0).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, sweeping)
        .await
        .expect("the worker keeps renewing its lease");

    analyzer.finish.notify_one();
    let done = tokio::time::timeout(HANG_GUARD, worker)
        .await
        .expect("the worker returns")
        .expect("no panic")
        .expect("the database answers");
    assert!(matches!(done, Done::Completed(_)), "{done:?}");
    let state = chunk_state(&db, film, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("completed", 1));
    assert_eq!(analyzer.runs.load(Ordering::SeqCst), 1);
}

// Row security and the new functions, per role.

/// Runs `sql` as [`as_client`] does; answers the row count or the SQLSTATE.
async fn as_role(
    client: &mut Client,
    role: &str,
    sub: Option<Uuid>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<usize, String> {
    as_client(client, role, sub, sql, params)
        .await
        .map(|rows| rows.len())
}

/// A film of `owner` submitted as the API submits it, with chunk 0 claimed.
async fn owned_film(db: &Db, owner: Uuid) -> (Uuid, Uuid) {
    let video_id = Uuid::new_v4();
    db.submit_video(&Submission {
        video_id,
        owner_id: Some(owner),
        source: "films/owned.mp4".into(),
        media: media(THREE_CHUNKS, "25/1".parse().expect("a rate")),
        plan: PlanParams::default(),
    })
    .await
    .expect("submitted");
    let token = match db
        .claim_chunk(video_id, 0, Duration::from_secs(600), MAX_ATTEMPTS)
        .await
    {
        Ok(Claim::Claimed(chunk)) => chunk.lease_token,
        other => panic!("chunk 0 not claimed: {other:?}"),
    };
    (video_id, token)
}

#[tokio::test]
async fn no_client_can_lock_change_or_sweep_chunks_or_renew_leases_not_even_of_its_own_films() {
    let (db, url) = fresh_db().await;
    let (owner, stranger) = (Uuid::new_v4(), Uuid::new_v4());
    let (film, token) = owned_film(&db, owner).await;
    let mut client = connect(&url).await;
    client
        .batch_execute(
            // Roles belong to the cluster, which other test processes share.
            "DO $$ BEGIN \
               CREATE ROLE break5_reporter NOLOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
             END $$",
        )
        .await
        .expect("a role with no grants");

    // The owner reads their own chunk, and its lease: reading is all.
    let own = "SELECT lease_token FROM shotlist.chunks WHERE video_id = $1";
    let params: &[(&(dyn ToSql + Sync), Type)] = &[(&film, Type::UUID)];
    assert_eq!(
        as_role(&mut client, "authenticated", Some(owner), own, params).await,
        Ok(3)
    );
    assert_eq!(
        as_role(&mut client, "authenticated", Some(stranger), own, params).await,
        Ok(0),
        "a stranger sees no chunk of the film"
    );

    // Row locks would stall every worker of the film (lock_chunk waits on
    // them); a table lock in SHARE mode would stall every writer at all.
    let denied = [
        format!("{own} FOR UPDATE"),
        format!("{own} FOR NO KEY UPDATE"),
        format!("{own} FOR SHARE"),
        format!("{own} FOR KEY SHARE"),
        "UPDATE shotlist.chunks SET lease_until = now() + interval '1 day' WHERE video_id = $1"
            .into(),
        "DELETE FROM shotlist.shots WHERE video_id = $1".into(),
        "SELECT public.sweep_chunks() WHERE $1::uuid IS NOT NULL".into(),
        "SELECT public.sweep_chunks(1, 0, 1) WHERE $1::uuid IS NOT NULL".into(),
        format!("SELECT public.renew_lease($1, 0, '{token}', 86400)"),
        "SELECT public.release_chunk($1, 0, gen_random_uuid(), 'x')".into(),
        "SELECT shotlist.lock_chunk($1, 0)".into(),
        "SELECT shotlist.count_terminal($1, 'failed')".into(),
        "SELECT FROM shotlist.provider_files WHERE video_id = $1".into(),
    ];
    for sql in &denied {
        let answer = as_role(&mut client, "authenticated", Some(owner), sql, params).await;
        assert_eq!(answer, Err("42501".into()), "authenticated: {sql}");
    }
    let locks = [
        "LOCK TABLE shotlist.chunks IN SHARE MODE",
        "LOCK TABLE shotlist.videos IN ROW SHARE MODE",
    ];
    for sql in locks {
        let answer = as_role(&mut client, "authenticated", Some(owner), sql, &[]).await;
        assert_eq!(answer, Err("42501".into()), "authenticated: {sql}");
    }
    for role in ["anon", "break5_reporter"] {
        for sql in [
            own,
            "SELECT public.sweep_chunks() WHERE $1::uuid IS NOT NULL",
        ] {
            let answer = as_role(&mut client, role, Some(owner), sql, params).await;
            assert_eq!(answer, Err("42501".into()), "{role}: {sql}");
        }
        let answer = as_role(&mut client, role, None, "SELECT auth.uid()", &[]).await;
        assert_eq!(
            answer,
            Err("42501".into()),
            "{role} may not call auth.uid()"
        );
    }

    // Nothing the clients tried left a trace: the lease is the worker's.
    let renewed = db
        .renew_lease(film, 0, token, Duration::from_secs(600))
        .await
        .expect("renew_lease answers");
    assert!(renewed, "the worker still holds its chunk");
    let state = chunk_state(&db, film, 0).await;
    assert_eq!((state.status.as_str(), state.attempts), ("processing", 1));
}

#[tokio::test]
async fn the_service_role_under_row_security_renews_sweeps_gives_up_and_finishes_a_film_once() {
    let (_owner_db, url) = fresh_db().await;
    // Every connection of this pool is the service role, which row
    // security applies to on plain PostgreSQL (no BYPASSRLS).
    let db = Db::connect(&format!("{url} options='-c role=service_role'"), 4)
        .await
        .expect("connects as the service role");
    let (film, token) = owned_film(&db, Uuid::new_v4()).await;
    assert!(db
        .renew_lease(film, 0, token, Duration::from_millis(100))
        .await
        .expect("renews"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let swept = db
        .sweep_chunks(MAX_ATTEMPTS, Duration::from_secs(900), 500)
        .await
        .expect("sweeps through the service role's policies");
    assert_eq!(
        swept
            .requeue
            .iter()
            .map(|c| (c.video_id, c.chunk_index))
            .collect::<Vec<_>>(),
        [(film, 0)]
    );
    assert!(!db
        .renew_lease(film, 0, token, Duration::from_secs(60))
        .await
        .unwrap());

    // Chunks 1 and 2 complete; chunk 0's workers keep vanishing until its
    // attempts are used up, and the sweep that gives it up finishes the film.
    for index in [1, 2] {
        let Claim::Claimed(chunk) = db
            .claim_chunk(film, index, Duration::from_secs(60), MAX_ATTEMPTS)
            .await
            .unwrap()
        else {
            panic!("chunk {index} claimable")
        };
        let shots = whole(chunk.start_frame, chunk.end_frame, "service role");
        let report = db
            .complete_chunk(film, index, chunk.lease_token, &shots)
            .await
            .unwrap();
        assert_eq!(
            (report.outcome, report.progress.finished),
            (Outcome::Completed, false)
        );
    }
    let mut given_up = Vec::new();
    for _ in 1..MAX_ATTEMPTS {
        let claim = db
            .claim_chunk(film, 0, Duration::from_millis(100), MAX_ATTEMPTS)
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let swept = db
            .sweep_chunks(MAX_ATTEMPTS, Duration::from_secs(900), 500)
            .await
            .unwrap();
        given_up.extend(swept.failed);
        assert_eq!(swept.finalize.is_empty(), given_up.is_empty());
    }
    assert_eq!(given_up.len(), 1, "{given_up:?}");
    assert!(given_up[0].finished && given_up[0].video_id == film);
    let sheet = db.finalize(film).await.expect("finalized");
    assert_eq!(
        (sheet.completed_chunks, sheet.failed_chunks),
        (2, 1),
        "{sheet:?}"
    );
    let again = db
        .sweep_chunks(MAX_ATTEMPTS, Duration::ZERO, 500)
        .await
        .unwrap();
    assert!(
        again.finalize.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );
}

// Migrations.

/// What the migrations decide about privileges and row security: every
/// policy, the ACL and row-security flags of each table, the ACL of each
/// function and schema involved, and the migrations recorded.
async fn security_state(client: &Client) -> BTreeMap<String, String> {
    let rows = client
        .query_typed(
            "SELECT 'policy ' || tablename || '.' || policyname, \
                    concat_ws(' | ', cmd, roles::text, qual, with_check) \
             FROM pg_catalog.pg_policies WHERE schemaname = 'shotlist' \
             UNION ALL \
             SELECT 'table ' || c.relname, \
                    concat_ws(' | ', c.relacl::text, c.relrowsecurity, c.relforcerowsecurity) \
             FROM pg_catalog.pg_class AS c \
             WHERE c.relnamespace = 'shotlist'::regnamespace AND c.relkind IN ('r', 'p') \
             UNION ALL \
             SELECT 'function ' || p.oid::regprocedure::text, coalesce(p.proacl::text, 'default') \
             FROM pg_catalog.pg_proc AS p \
             WHERE p.pronamespace IN ('public'::regnamespace, 'shotlist'::regnamespace, \
                                      'auth'::regnamespace) \
             UNION ALL \
             SELECT 'schema ' || n.nspname, coalesce(n.nspacl::text, 'default') \
             FROM pg_catalog.pg_namespace AS n WHERE n.nspname IN ('shotlist', 'auth') \
             UNION ALL \
             SELECT 'migrations', string_agg(name, ',' ORDER BY name) \
             FROM shotlist.schema_migrations",
            &[],
        )
        .await
        .expect("reading the catalog");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_migrators_at_once_apply_each_file_once_and_applying_every_file_again_by_hand_changes_nothing(
) {
    let url = fresh_database().await;
    let migrators: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let db = Db::connect(&url, 1).await.map_err(|e| chain(&e))?;
                db.migrate().await.map_err(|e| chain(&e))
            })
        })
        .collect();
    let mut applied = Vec::new();
    for migrator in migrators {
        let names = tokio::time::timeout(HANG_GUARD, migrator)
            .await
            .expect("no migrator hangs")
            .expect("no migrator panics")
            .unwrap_or_else(|e| panic!("a migrator failed: {e}"));
        applied.extend(names);
    }
    applied.sort();
    let all: Vec<String> = MIGRATIONS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(applied, all, "each migration is applied exactly once");

    let client = connect(&url).await;
    let before = security_state(&client).await;
    assert!(
        before
            .keys()
            .any(|k| k == "policy chunks.chunks_owner_read"),
        "{before:#?}"
    );
    // As the README says to with psql: every file in order, twice.
    for _ in 0..2 {
        for (name, sql) in MIGRATIONS {
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("applying {name} again: {e}"));
        }
    }
    let after = security_state(&client).await;
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .chain(
            after
                .keys()
                .filter(|k| !before.contains_key(*k))
                .map(|k| format!("new: {k}")),
        )
        .collect();
    assert!(changed.is_empty(), "applying again changed: {changed:#?}");

    // And the functions still work for the workers.
    let db = Db::connect(&url, 2).await.expect("connects");
    assert!(db.migrate().await.expect("migrates").is_empty());
    let film = described_film(&db, THREE_CHUNKS, "25/1").await;
    assert!(matches!(
        db.claim_chunk(film, 0, Duration::from_secs(60), MAX_ATTEMPTS)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    let swept = db
        .sweep_chunks(MAX_ATTEMPTS, Duration::ZERO, 500)
        .await
        .unwrap();
    assert_eq!(swept.requeue.len(), 2, "the two pending chunks: {swept:?}");
}

// The queue's last receive.

#[tokio::test]
async fn a_duplicate_on_the_queues_last_receive_while_another_worker_holds_the_chunk_is_sent_again_not_dead_lettered(
) {
    let (db, _) = fresh_db().await;
    let film = described_film(&db, THREE_CHUNKS, "25/1").await;
    let analyzer = ScriptedAnalyzer::new();
    let redelivery = RecordingRedelivery::new();
    let handler = ChunkHandler {
        db: db.clone(),
        analyzer: analyzer.clone(),
        finalize_queue: RecordingQueue::new() as Arc<dyn MessageQueue>,
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: "shotlist-chunks".into(),
        redelivery: Some(redelivery.clone() as Arc<dyn Redelivery>),
    };
    let Claim::Claimed(_) = db
        .claim_chunk(film, 1, Duration::from_secs(600), MAX_ATTEMPTS)
        .await
        .unwrap()
    else {
        panic!("chunk 1 claimable")
    };
    let body = chunk_body(film, 1);
    let event = sqs_event(vec![sqs_record("m-last", &body, 5)]);
    let response = handler.handle(event, None).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the message must not walk into the dead-letter queue: {response:?}"
    );
    let sent: Vec<_> = redelivery
        .take_sent_again()
        .into_iter()
        .map(|(b, d)| (b, d.as_secs()))
        .collect();
    assert_eq!(sent, [(body, 60)]);
    assert!(redelivery.take_delayed().is_empty());
    assert_eq!(analyzer.runs(1), 0, "the holder's chunk is not analyzed");
    let state = chunk_state(&db, film, 1).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("processing", 1),
        "the holder's attempt is not failed by the duplicate: {state:?}"
    );
}

// A worker stopped by its heartbeat, with a paid provider.

/// A 10-second film at 25 fps, its one chunk registered and described.
async fn real_film(db: &Db) -> Uuid {
    let film = make_film(
        &film_dir(),
        "25/1".parse().expect("a rate"),
        &[40, 113],
        250,
        false,
    );
    let media = probe(&film.path).await.expect("probing the test film");
    let video_id = Uuid::new_v4();
    db.register_film(
        video_id,
        &film.path.display().to_string(),
        &media,
        PlanParams::default(),
    )
    .await
    .expect("registered");
    video_id
}

/// Replicate at the fake, polling quickly, as a whole analyzer.
fn replicate_analyzer(fake: &FakeReplicate, keys: &[String]) -> ModelAnalyzer {
    let pool = KeyPool::from_list(
        "replicate",
        KEYS_VARIABLE,
        &keys.join(","),
        NonZeroU32::new(CREATES_PER_MINUTE),
    )
    .expect("a key pool");
    let mut config = ReplicateConfig::new(Arc::new(pool));
    config.base_url = fake.base_url().to_string();
    config.timeouts = HttpTimeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    config.prefer_wait = Duration::from_secs(1);
    config.poll = PollBackoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    ModelAnalyzer {
        cuts: LocalAnalyzer::default(),
        model: Arc::new(Replicate::new(config).expect("a valid configuration")),
        settings: ModelSettings {
            chunk_timeout: Duration::from_secs(120),
            ..ModelSettings::default()
        },
    }
}

/// Polls `done` until it holds, or fails saying `what` never happened.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("{what}");
    }
}

#[tokio::test]
async fn a_worker_whose_chunk_is_taken_over_cancels_its_replicate_prediction_and_deletes_its_clip()
{
    let (db, url) = fresh_db().await;
    let video_id = real_film(&db).await;
    let keys = fake_replicate::keys(1);
    let fake = FakeReplicate::start(keys.clone());
    fake.script(Script::at_once(fake_replicate::Outcome::Hang));
    let analyzer = replicate_analyzer(&fake, &keys);
    let config = WorkerConfig {
        lease: Duration::from_secs(1),
        chunk_timeout: Duration::from_secs(120),
        ..WorkerConfig::default()
    };
    let worker = {
        let db = db.clone();
        tokio::spawn(async move { process_chunk(&db, &analyzer, video_id, 0, &config).await })
    };
    eventually("the worker never created its prediction", || {
        fake.predictions().len() == 1
    })
    .await;

    // Another worker takes the chunk over; the first one's next renewal
    // finds out, and it stops waiting for its prediction.
    take_over(&url, video_id, 0).await;
    let done = tokio::time::timeout(HANG_GUARD, worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("the database answers");
    assert!(matches!(done, Done::LeaseLost), "{done:?}");

    // Nobody waits for that prediction any more: it must not run on at the
    // deployment's cost, nor the film's clip stay on Replicate.
    let prediction = fake.predictions()[0].id.clone();
    let upload = fake.uploads()[0].id.clone();
    eventually(
        "the abandoned prediction was never canceled, nor its clip deleted",
        || fake.cancels() == [prediction.clone()] && fake.deleted_files() == [upload.clone()],
    )
    .await;
}

// Row security applied to a live database.

/// Registers films, commits their first chunk and fails an attempt of their
/// second, as submissions and workers do, until `stop`; answers how many
/// films it committed and the errors it met.
async fn film_traffic(db: Db, stop: Arc<AtomicBool>) -> (u32, Vec<String>) {
    let (mut committed, mut errors) = (0, Vec::new());
    let rate = "25/1".parse().expect("a rate");
    while !stop.load(Ordering::SeqCst) {
        let film = Uuid::new_v4();
        let registered = db
            .register_film(
                film,
                "/films/live.mp4",
                &media(THREE_CHUNKS, rate),
                PlanParams::default(),
            )
            .await;
        if let Err(e) = registered {
            errors.push(chain(&e));
            continue;
        }
        let chunk = match db
            .claim_chunk(film, 0, Duration::from_secs(60), MAX_ATTEMPTS)
            .await
        {
            Ok(Claim::Claimed(chunk)) => chunk,
            other => {
                errors.push(format!("claim_chunk: {other:?}"));
                continue;
            }
        };
        let shots = whole(chunk.start_frame, chunk.end_frame, "live");
        match db.complete_chunk(film, 0, chunk.lease_token, &shots).await {
            Ok(_) => committed += 1,
            Err(e) => errors.push(chain(&e)),
        }
        // A failed attempt writes the chunk before it reads the film.
        if let Ok(Claim::Claimed(chunk)) = db
            .claim_chunk(film, 1, Duration::from_secs(60), MAX_ATTEMPTS)
            .await
        {
            let failed = db
                .fail_chunk(film, 1, chunk.lease_token, "503", true, MAX_ATTEMPTS)
                .await;
            if let Err(e) = failed {
                errors.push(chain(&e));
            }
        }
    }
    (committed, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issues_migrations_applied_while_films_are_registered_and_worked_on_fail_no_call() {
    let url = fresh_database().await;
    let client = connect(&url).await;
    // A deployment from before this issue: its migrations come on top.
    let (older, issue5): (Vec<_>, Vec<_>) = MIGRATIONS.iter().partition(|(name, _)| *name < "0005");
    for (name, sql) in older {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
    let db = Db::connect(&url, 6).await.expect("connects");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|_| tokio::spawn(film_traffic(db.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let migrator = Db::connect(&url, 1).await.expect("connects");
    let applied = tokio::time::timeout(HANG_GUARD, migrator.migrate())
        .await
        .expect("the migration does not hang")
        .map_err(|e| chain(&e));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut committed, mut errors) = (0, Vec::new());
    for task in traffic {
        let (n, e) = tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("the traffic stops")
            .expect("no panic");
        committed += n;
        errors.extend(e);
    }
    let issue5: Vec<String> = issue5.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(applied, Ok(issue5));
    assert!(
        errors.is_empty(),
        "the migration broke live calls: {errors:#?}"
    );
    assert!(
        committed > 0,
        "no film went through: the traffic proved nothing"
    );
}
