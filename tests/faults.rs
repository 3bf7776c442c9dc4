//! Issue 5's fault list. Each fault is injected into a real run of one
//! generated film, and the sheet the run ends with is compared with the
//! sheet the same film gets without the fault:
//!
//! - a worker killed (SIGKILL) after its claim, during its analyzer call,
//!   during its commit (whether PostgreSQL then finishes the commit or not)
//!   and during finalize: the same `--video-id` run again completes the
//!   film with the fault-free sheet;
//! - PostgreSQL restarted in the middle of a run: the workers reconnect,
//!   every chunk completes on its first attempt, no shot is stored twice;
//!   a warm Lambda whose cached connections a restart killed replaces them
//!   at once and leaves no message for retry;
//! - every message delivered three times and out of order: one analysis per
//!   chunk, the fault-free sheet;
//! - a provider that times out, answers 429 or 503, or garbage for one chunk
//!   until its attempts run out: that chunk fails naming why, and the film
//!   finishes by itself with the gap listed;
//! - force-finalize while chunks are still running: the completed shots are
//!   kept, the running chunks cannot commit afterwards, the gaps are listed.
//!
//! The film is 75 s at 25 fps with 19 cuts, planned in chunks of 20 s with
//! 5 s of overlap: five chunks. Everything runs against real PostgreSQL;
//! the killed workers are the real `shotlist` binary against the fake
//! Gemini; the SQS test needs moto (`SHOTLIST_TEST_SQS_URL`, which
//! `scripts/moto start` prints). A worker is stopped at a precise point
//! without hooks in the product: the fake Gemini holds its upload or its
//! answer at a [`Gate`], or a lock the test holds stops its commit or its
//! finalize inside PostgreSQL.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use serde_json::json;
use shotlist_shared::analyzer::remote::ModelSettings;
use shotlist_shared::analyzer::setup::{self, AnalyzerKind, AnalyzerSetup};
use shotlist_shared::analyzer::{Analyzer, LocalAnalyzer};
use shotlist_shared::cloud::api::{Api, Endpoint};
use shotlist_shared::cloud::auth::Verifier;
use shotlist_shared::cloud::chunk::ChunkHandler;
use shotlist_shared::cloud::local::{LocalCloud, LocalCloudOptions};
use shotlist_shared::cloud::queue::{MessageQueue, QueueError};
use shotlist_shared::db::Db;
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::ProbeOptions;
use shotlist_shared::runner::{run_with, RunOptions};
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::Fps;
use shotlist_shared::worker::WorkerConfig;
use shotlist_tests::cli_bin::shotlist_bin;
use shotlist_tests::cloud::{
    chunk_body, http_request, read_response, service_token, sqs_event, sqs_record, RecordingQueue,
    RecordingRedelivery, ScriptedAnalyzer, JWT_SECRET,
};
use shotlist_tests::fake_gemini::{keys, FakeGemini, Reply};
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::fixtures::{chunk_state, described_film};
use shotlist_tests::gate::Gate;
use shotlist_tests::gated_analyzer::GatedAnalyzer;
use shotlist_tests::logs;
use shotlist_tests::pg::{self, fresh_db};
use shotlist_tests::pg_restart::RestartablePg;
use shotlist_tests::sheets::{assert_well_formed, essence, shots_clear_of};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_postgres::Transaction;
use uuid::Uuid;

/// The film's plan: 20 s chunks with 5 s of overlap, five over 75 s.
const PLAN: PlanParams = PlanParams {
    chunk_seconds: 20.0,
    overlap_seconds: 5.0,
};
const CHUNKS: u32 = 5;
/// The frames of the film: 75 s at 25 fps.
const FRAMES: i64 = 1_875;
/// Cuts every few seconds, some in the overlaps and near the seams.
const CUTS: [i64; 19] = [
    90, 200, 330, 380, 437, 520, 640, 760, 850, 990, 1_100, 1_130, 1_240, 1_330, 1_450, 1_505,
    1_560, 1_700, 1_790,
];
/// Chunk 1's frames (15 s to 35 s), and where its clip starts as the
/// Gemini analyzer asks for it.
const CHUNK_1_FRAMES: std::ops::Range<i64> = 375..875;
const CHUNK_1_OFFSET: &str = "15.000s";

/// The longest a test waits for a run to reach the point it is after. A
/// run that never gets there fails the test saying which point it was.
const LIMIT: Duration = Duration::from_secs(90);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// Seconds a killed worker's chunks stay out of reach (`--lease-seconds`).
const LEASE_SECONDS: &str = "3";
/// `--chunk-timeout` of the binary's runs (its least).
const CHUNK_TIMEOUT_SECONDS: &str = "10";

async fn film() -> Film {
    tokio::task::spawn_blocking(|| {
        let fps = Fps::new(25, 1).expect("25 fps");
        make_film(&film_dir(), fps, &CUTS, FRAMES, true)
    })
    .await
    .expect("making the film panicked")
}

fn run_options(worker: WorkerConfig) -> RunOptions {
    RunOptions {
        plan: PLAN,
        worker,
        ..RunOptions::default()
    }
}

/// The Gemini analyzer against `fake` with `key`, keeping its uploads in
/// `db`; a chunk may take `chunk_timeout`.
fn gemini(fake: &FakeGemini, key: &str, db: &Db, chunk_timeout: Duration) -> Arc<dyn Analyzer> {
    let setup = AnalyzerSetup {
        kind: AnalyzerKind::Gemini,
        chunk_seconds: PLAN.chunk_seconds,
        model: ModelSettings {
            chunk_timeout,
            ..ModelSettings::default()
        },
        ..AnalyzerSetup::default()
    };
    let var = |name: &str| match name {
        "GEMINI_API_KEYS" => Some(key.to_string()),
        "GEMINI_BASE_URL" => Some(fake.base_url().to_string()),
        _ => None,
    };
    setup::build(&setup, &var, db)
        .expect("the gemini analyzer")
        .analyzer
}

/// The film's fault-free sheet with the local analyzer, made once.
async fn local_reference() -> &'static Sheet {
    static SHEET: OnceCell<Sheet> = OnceCell::const_new();
    SHEET
        .get_or_init(|| async {
            let film = film().await;
            let (db, _) = fresh_db().await;
            let analyzer = Arc::new(LocalAnalyzer::default());
            let options = run_options(WorkerConfig::default());
            let sheet = run_with(&db, &film.path, &options, analyzer, &|_| {})
                .await
                .expect("the fault-free local run");
            assert_eq!(sheet.status, SheetStatus::Complete);
            assert_eq!(sheet.shots.len(), CUTS.len() + 1, "every cut found");
            sheet
        })
        .await
}

/// The film's fault-free sheet with the Gemini analyzer (the fake's
/// answers), made once.
async fn gemini_reference() -> &'static Sheet {
    static SHEET: OnceCell<Sheet> = OnceCell::const_new();
    SHEET
        .get_or_init(|| async {
            let film = film().await;
            let keys = keys(1);
            let fake = FakeGemini::start(keys.clone());
            let (db, _) = fresh_db().await;
            let analyzer = gemini(&fake, &keys[0], &db, Duration::from_secs(60));
            let options = run_options(WorkerConfig::default());
            let sheet = run_with(&db, &film.path, &options, analyzer, &|_| {})
                .await
                .expect("the fault-free gemini run");
            assert_eq!(sheet.status, SheetStatus::Complete);
            assert!(sheet.shots[0].description.starts_with("fake model"));
            sheet
        })
        .await
}

/// Polls `condition` until it holds.
///
/// # Panics
/// After [`LIMIT`], saying that `what` never happened.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + LIMIT;
    while !condition().await {
        assert!(Instant::now() < give_up, "waited {LIMIT:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The film's chunks in `status`, by `chunk_progress`.
async fn chunks_in(db: &Db, video_id: Uuid, status: &str) -> usize {
    let progress = db.chunk_progress(video_id).await.expect("progress");
    let chunks = progress["chunks"].as_array().cloned().unwrap_or_default();
    chunks.iter().filter(|c| c["status"] == status).count()
}

// A worker killed (SIGKILL), and the film resumed.

/// Where the first run is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillPoint {
    /// A worker has claimed its chunk and is about to upload the film (the
    /// fake holds the upload); the other chunks are claimed or being so.
    AfterClaim,
    /// Every worker waits for Gemini's answer about its chunk.
    InAnalyzerCall,
    /// Every worker's `complete_chunk` waits on the film's row, which the
    /// test holds.
    InCommit(Afterwards),
    /// The finalize's `store_sheet` waits on a sheet row the test is
    /// inserting.
    InFinalize(Afterwards),
}

/// What becomes of the dead worker's statement that waited on the lock.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Afterwards {
    /// The test lets go of its lock and PostgreSQL carries on with the
    /// statement for the client that is gone.
    ServerFinishes,
    /// The test ends the dead client's waiting backends first: the
    /// statement never runs.
    BackendEnded,
}

/// The `shotlist process` runs of one film that a test kills and resumes:
/// the Gemini analyzer against the fake, the state in the test's database.
struct ProcessRuns<'a> {
    bin: &'a Path,
    film: &'a Path,
    url: &'a str,
    video_id: Uuid,
    fake: &'a FakeGemini,
    key: &'a str,
}

impl ProcessRuns<'_> {
    /// A run writing its sheet to `out`.
    fn command(&self, out: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin);
        command
            .arg("process")
            .arg(self.film)
            .arg("--out")
            .arg(out)
            .args(["--database-url", self.url])
            .args(["--video-id", &self.video_id.to_string()])
            .args(["--analyzer", "gemini"])
            .args(["--chunk-seconds", &PLAN.chunk_seconds.to_string()])
            .args(["--overlap-seconds", &PLAN.overlap_seconds.to_string()])
            .args(["--chunk-timeout", CHUNK_TIMEOUT_SECONDS])
            .args(["--lease-seconds", LEASE_SECONDS])
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .env_remove("SHOTLIST_ANALYZER")
            .env_remove("GEMINI_MODEL")
            .env("GEMINI_API_KEYS", self.key)
            .env("GEMINI_BASE_URL", self.fake.base_url())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the film again to its end and returns the sheet it stored,
    /// checking what it printed and wrote.
    async fn resume(&self, db: &Db, out: &Path) -> Sheet {
        let run = self.command(out).output();
        let output = tokio::time::timeout(LIMIT, run)
            .await
            .unwrap_or_else(|_| panic!("the resumed run did not end within {LIMIT:?}"))
            .expect("run shotlist");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the resumed run failed: {stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary = format!("{CHUNKS}/{CHUNKS} chunks completed, 0 failed");
        assert!(stdout.contains(&summary), "{stdout}");
        let sheet = db
            .get_sheet(self.video_id)
            .await
            .expect("get_sheet")
            .expect("the resumed run stored the sheet");
        let written = std::fs::read(out.join("sheet.json")).expect("sheet.json");
        let written: Sheet = serde_json::from_slice(&written).expect("sheet.json is a sheet");
        assert_eq!(written, sheet, "sheet.json is the stored sheet");
        sheet
    }
}

/// Shows the killed run's log when the test fails: a run that never got
/// to its point says there why.
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("the killed run's log:\n{log}");
        }
    }
}

/// Runs the film through `shotlist process`, kills the process at `point`,
/// runs it again with the same `--video-id`, and checks that the sheet is
/// the fault-free one.
async fn kill_and_resume(point: KillPoint) {
    let bin = tokio::task::spawn_blocking(shotlist_bin)
        .await
        .expect("building shotlist panicked");
    let film = film().await;
    let reference = gemini_reference().await;
    let keys = keys(1);
    let fake = FakeGemini::start(keys.clone());
    let (db, url) = fresh_db().await;
    let runs = ProcessRuns {
        bin,
        film: &film.path,
        url: &url,
        video_id: Uuid::new_v4(),
        fake: &fake,
        key: &keys[0],
    };
    let gate = match point {
        KillPoint::AfterClaim => fake.hold_uploads(),
        _ => fake.hold_generations(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogOnFailure(dir.path().join("killed.log"));
    let mut killed = runs
        .command(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log.0).expect("a log file"))
        .spawn()
        .expect("start shotlist");
    let mut holder = pg::connect(&url).await;
    let held = holder.transaction().await.expect("a transaction");
    let watcher = Watcher {
        db: &db,
        client: pg::connect(&url).await,
        video_id: runs.video_id,
    };
    watcher.reach(point, &gate, &held).await;

    killed.start_kill().expect("SIGKILL");
    let status = killed.wait().await.expect("the killed run ends");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed: {status:?}");
    watcher.settle(point, held).await;
    // The dead run's held calls may go now; the resumed run's are not held.
    gate.open();

    let sheet = runs.resume(&db, &dir.path().join("resumed")).await;
    assert_eq!(essence(&sheet), essence(reference), "{point:?}");
}

/// What a kill test sees of its film in the database.
struct Watcher<'a> {
    db: &'a Db,
    /// A connection of its own, for `pg_stat_activity`.
    client: tokio_postgres::Client,
    video_id: Uuid,
}

impl Watcher<'_> {
    /// Returns once the first run is at `point`: its calls held at `gate`,
    /// or its statement waiting on the lock the test takes in `held`.
    async fn reach(&self, point: KillPoint, gate: &Gate, held: &Transaction<'_>) {
        let what = format!("the killed run to reach {point:?}");
        let chunks = CHUNKS as usize;
        match point {
            KillPoint::AfterClaim => {
                gate.wait_for_waiting(1, LIMIT, &what).await;
                assert!(self.chunks_in("processing").await >= 1, "a chunk is held");
            }
            KillPoint::InAnalyzerCall => gate.wait_for_waiting(chunks, LIMIT, &what).await,
            KillPoint::InCommit(_) => {
                gate.wait_for_waiting(chunks, LIMIT, &what).await;
                held.query_one(
                    "SELECT 1 FROM shotlist.videos WHERE video_id = $1 FOR UPDATE",
                    &[&self.video_id],
                )
                .await
                .expect("locking the film's row");
                gate.open();
                wait_until(&what, || async {
                    self.lock_waiters(COMPLETE_CHUNK).await == i64::from(CHUNKS)
                })
                .await;
            }
            KillPoint::InFinalize(_) => {
                // Before any chunk is done, so that this row comes first.
                gate.wait_for_waiting(chunks, LIMIT, &what).await;
                held.execute(
                    "INSERT INTO shotlist.sheets (video_id, sheet) VALUES ($1, '{}'::jsonb)",
                    &[&self.video_id],
                )
                .await
                .expect("inserting the film's sheet row");
                gate.open();
                wait_until(&what, || async {
                    self.lock_waiters(STORE_SHEET).await == 1
                })
                .await;
            }
        }
    }

    /// After the kill: lets go of the lock the test held (ending the dead
    /// client's waiting statements first, if `point` says so), and checks
    /// what the dead run left behind.
    async fn settle(&self, point: KillPoint, held: Transaction<'_>) {
        match point {
            KillPoint::InCommit(afterwards) => {
                if afterwards == Afterwards::BackendEnded {
                    let ended = self.end_lock_waiters(COMPLETE_CHUNK).await;
                    assert_eq!(ended, i64::from(CHUNKS));
                }
                held.rollback().await.expect("rollback");
                if afterwards == Afterwards::BackendEnded {
                    assert_eq!(self.chunks_in("completed").await, 0);
                    return;
                }
                wait_until("PostgreSQL to finish the dead run's commits", || async {
                    self.chunks_in("completed").await == CHUNKS as usize
                })
                .await;
                let progress = self.db.chunk_progress(self.video_id).await;
                let progress = progress.expect("progress");
                assert_eq!(progress["finished"], true, "{progress}");
            }
            KillPoint::InFinalize(afterwards) => {
                if afterwards == Afterwards::BackendEnded {
                    assert_eq!(self.end_lock_waiters(STORE_SHEET).await, 1);
                }
                held.rollback().await.expect("rollback");
                // Carried on or not, its transaction can never commit.
                wait_until("the dead run's finalize to end", || async {
                    self.backends_of(STORE_SHEET).await == 0
                })
                .await;
                let stored = self.db.get_sheet(self.video_id).await;
                assert_eq!(stored.expect("get_sheet"), None, "nothing stored");
            }
            KillPoint::AfterClaim | KillPoint::InAnalyzerCall => {
                held.rollback().await.expect("rollback");
                assert_eq!(self.chunks_in("completed").await, 0);
            }
        }
    }

    /// The film's chunks in `status`, by `chunk_progress`.
    async fn chunks_in(&self, status: &str) -> usize {
        chunks_in(self.db, self.video_id, status).await
    }

    /// Other backends of this database running a statement that names
    /// `function` and waiting on a lock.
    async fn lock_waiters(&self, function: &str) -> i64 {
        let sql = format!("SELECT count(*) {OTHER_BACKENDS} AND wait_event_type = 'Lock'");
        self.count(&sql, function).await
    }

    /// Other backends of this database whose last statement named
    /// `function`, waiting or not.
    async fn backends_of(&self, function: &str) -> i64 {
        let sql = format!("SELECT count(*) {OTHER_BACKENDS}");
        self.count(&sql, function).await
    }

    /// Ends the backends [`Watcher::lock_waiters`] counts; returns how many.
    async fn end_lock_waiters(&self, function: &str) -> i64 {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) {OTHER_BACKENDS} \
             AND wait_event_type = 'Lock'"
        );
        self.count(&sql, function).await
    }

    async fn count(&self, sql: &str, function: &str) -> i64 {
        self.client
            .query_one(sql, &[&function])
            .await
            .expect("reading pg_stat_activity")
            .get(0)
    }
}

/// The statements of the first run that the kill tests stop.
const COMPLETE_CHUNK: &str = "public.complete_chunk";
const STORE_SHEET: &str = "public.store_sheet";

/// The backends of the current database, but the asking one, whose last
/// statement names the function `$1`.
const OTHER_BACKENDS: &str = "FROM pg_stat_activity \
     WHERE datname = current_database() \
       AND pid <> pg_backend_pid() \
       AND query LIKE '%' || $1 || '%'";

#[tokio::test]
async fn a_worker_killed_after_its_claim_leaves_a_film_that_resumes_to_the_fault_free_sheet() {
    kill_and_resume(KillPoint::AfterClaim).await;
}

#[tokio::test]
async fn a_worker_killed_during_its_analyzer_call_leaves_a_film_that_resumes_to_the_fault_free_sheet(
) {
    kill_and_resume(KillPoint::InAnalyzerCall).await;
}

#[tokio::test]
async fn a_worker_killed_during_its_commit_that_postgres_still_finishes_resumes_to_the_fault_free_sheet(
) {
    kill_and_resume(KillPoint::InCommit(Afterwards::ServerFinishes)).await;
}

#[tokio::test]
async fn a_worker_killed_during_its_commit_that_never_runs_resumes_to_the_fault_free_sheet() {
    kill_and_resume(KillPoint::InCommit(Afterwards::BackendEnded)).await;
}

#[tokio::test]
async fn a_worker_killed_during_finalize_whose_statement_postgres_finishes_resumes_to_the_fault_free_sheet(
) {
    kill_and_resume(KillPoint::InFinalize(Afterwards::ServerFinishes)).await;
}

#[tokio::test]
async fn a_worker_killed_during_finalize_whose_statement_never_runs_resumes_to_the_fault_free_sheet(
) {
    kill_and_resume(KillPoint::InFinalize(Afterwards::BackendEnded)).await;
}

// PostgreSQL restarted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_chunks_are_analyzed_every_chunk_completes_once_and_no_shot_doubles(
) {
    let film = film().await;
    let reference = local_reference().await;
    let (pg, db) = RestartablePg::start(8).await;
    let gate = Gate::closed();
    let analyzer = GatedAnalyzer::holding_all(Arc::new(LocalAnalyzer::default()), gate.clone());
    let video_id = Uuid::new_v4();
    let options = RunOptions {
        video_id: Some(video_id),
        ..run_options(WorkerConfig::default())
    };
    let run = run_with(&db, &film.path, &options, analyzer.clone(), &|_| {});
    let restart = async {
        gate.wait_for_waiting(CHUNKS as usize, LIMIT, "every chunk claimed")
            .await;
        pg.stop().await;
        // The analyses finish while the database is down: every commit
        // finds its connection gone and the server refusing new ones.
        gate.open();
        wait_until("every analysis to finish", || async {
            analyzer.finished() == CHUNKS as usize
        })
        .await;
        pg.start_again().await;
    };
    let (sheet, ()) = tokio::join!(run, restart);
    let sheet = sheet.expect("the run survives the restart");

    assert_eq!(essence(&sheet), essence(reference));
    assert_well_formed(&sheet);
    for index in 0..CHUNKS as usize {
        let chunk = chunk_state(&db, video_id, index).await;
        assert_eq!(
            (chunk.status.as_str(), chunk.attempts, chunk.error.as_str()),
            ("completed", 1, ""),
            "chunk {index} must complete on its first attempt, no failure recorded"
        );
    }
    let runs = analyzer.runs();
    assert!(runs.values().all(|&n| n == 1), "analyzed again: {runs:?}");
    let client = pg::connect(pg.url()).await;
    let rows = client
        .query(
            "SELECT chunk_index, count(*), count(DISTINCT start_frame) FROM shotlist.shots \
             WHERE video_id = $1 GROUP BY chunk_index ORDER BY chunk_index",
            &[&video_id],
        )
        .await
        .expect("counting the stored shots");
    assert_eq!(rows.len(), CHUNKS as usize, "every chunk has its shots");
    for row in rows {
        let (index, shots, starts): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(shots, starts, "chunk {index} stored a shot twice");
    }
}

#[tokio::test]
async fn a_warm_lambdas_connections_killed_by_a_restart_are_replaced_at_once_and_no_chunk_fails() {
    let logs = logs::capture();
    let (pg, db) = RestartablePg::start(4).await;
    let video_id = described_film(&db, 12_500, "25/1").await;
    let finalize_queue = RecordingQueue::new();
    let handler = ChunkHandler {
        db: db.clone(),
        analyzer: ScriptedAnalyzer::new(),
        finalize_queue: finalize_queue.clone(),
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: "shotlist-chunks".into(),
        redelivery: Some(RecordingRedelivery::new()),
    };
    let batch = |indexes: &[u32]| {
        sqs_event(
            indexes
                .iter()
                .map(|&i| sqs_record(&format!("m{i}"), &chunk_body(video_id, i), 1))
                .collect(),
        )
    };
    // A warm instance: its first invocation leaves idle connections in
    // the pool, four of them.
    let first = handler.handle(batch(&[0]), None).await;
    assert!(first.batch_item_failures.is_empty());
    let warm = join_all((0..4).map(|_| db.chunk_progress(video_id))).await;
    assert!(warm.iter().all(Result::is_ok));

    // Frozen between invocations (this runtime runs nothing meanwhile)
    // while the database restarts: every cached connection is dead.
    pg.restart_blocking();

    let response = handler.handle(batch(&[1, 2]), None).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "no message left for retry"
    );
    for index in 0..3 {
        let chunk = chunk_state(&db, video_id, index).await;
        assert_eq!(
            (chunk.status.as_str(), chunk.attempts, chunk.error.as_str()),
            ("completed", 1, ""),
            "chunk {index}"
        );
    }
    assert_eq!(finalize_queue.sent().len(), 1, "the film finished once");
    let reconnects = logs
        .text()
        .lines()
        .filter(|line| line.contains(&video_id.to_string()))
        .filter(|line| line.contains("database connection lost"))
        .count();
    // None would mean that the restart killed no cached connection; more,
    // that dead ones were handed out again after the first.
    assert_eq!(reconnects, 1, "dead connections handed out");
}

// Every message delivered three times, out of order.

/// A queue that sends every batch three times, each copy in another order.
struct Thrice(Arc<dyn MessageQueue>);

#[async_trait]
impl MessageQueue for Thrice {
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError> {
        let reversed = bodies.iter().rev();
        let odd_first = bodies
            .iter()
            .skip(1)
            .step_by(2)
            .chain(bodies.iter().step_by(2));
        let rotated = bodies
            .iter()
            .cycle()
            .skip(bodies.len() / 2)
            .take(bodies.len());
        let copies: Vec<String> = reversed.chain(odd_first).chain(rotated).cloned().collect();
        self.0.send_all(&copies).await
    }

    fn name(&self) -> &str {
        self.0.name()
    }
}

/// The moto server's URL.
///
/// # Panics
/// When `SHOTLIST_TEST_SQS_URL` is not set.
fn sqs_endpoint() -> String {
    let url = std::env::var("SHOTLIST_TEST_SQS_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "SHOTLIST_TEST_SQS_URL is not set: run eval \"$(scripts/moto start)\" first"
    );
    // Anything the SDK might look for stays on loopback.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_three_times_out_of_order_gives_the_fault_free_sheet() {
    let endpoint = sqs_endpoint();
    let film = film().await;
    let reference = local_reference().await;
    let (db, _) = fresh_db().await;
    let analyzer = GatedAnalyzer::holding_all(Arc::new(LocalAnalyzer::default()), Gate::opened());
    let options = LocalCloudOptions {
        sqs_endpoint: endpoint,
        queue_prefix: format!("faults-{}", Uuid::new_v4().simple()),
        retry_delay: Duration::from_secs(1),
        plan: PLAN,
        ..LocalCloudOptions::default()
    };
    let root = film.path.parent().expect("the film's folder");
    let mut cloud = LocalCloud::new(db.clone(), analyzer.clone(), root, options)
        .await
        .expect("the queues");
    cloud.api.chunk_queue = Arc::new(Thrice(cloud.api.chunk_queue.clone()));
    cloud.chunks.finalize_queue = Arc::new(Thrice(cloud.chunks.finalize_queue.clone()));
    let mappings = cloud.start().await.expect("the event source mappings");
    let name = film
        .path
        .file_name()
        .expect("a file name")
        .to_string_lossy();
    let answer = cloud
        .submit(&json!({ "source": name }))
        .await
        .expect("submitted");
    let video_id: Uuid = answer["videoId"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a video id");
    let sheet = cloud
        .wait_for_sheet(video_id, LIMIT, &|_| {})
        .await
        .expect("a sheet");
    // Copies that come after the sheet are handled too, before the
    // mappings stop: every one of them is acknowledged in the end.
    let (chunks, finalize) = (mappings.chunks.stats(), mappings.finalize.stats());
    let copies = 3 * u64::from(CHUNKS);
    wait_until("every copy of every message to be acknowledged", || async {
        chunks.messages_deleted() >= copies && finalize.messages_deleted() >= 3
    })
    .await;
    let (chunks, finalize) = mappings.stop().await;

    assert_eq!(chunks.messages_deleted(), copies);
    assert_eq!(finalize.messages_deleted(), 3, "one finalize, three copies");
    assert_eq!(essence(&sheet), essence(reference));
    let runs = analyzer.runs();
    assert_eq!(runs.len(), CHUNKS as usize, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a copy ran again: {runs:?}");
    let stored = db.get_sheet(video_id).await.expect("get_sheet");
    assert_eq!(stored, Some(sheet), "the later copies changed nothing");
}

// A provider failing one chunk until its attempts run out.

/// One way for Gemini to fail chunk 1 every time, and what its error must
/// say.
struct ProviderFault {
    reply: Reply,
    says: &'static str,
}

/// A chunk's time in the provider tests: short, so that a chunk that hangs
/// uses up its three attempts quickly.
const PROVIDER_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's own limit sits above the analyzer's, so a stalled answer is
/// always reported by the Gemini client ("timed out"). With equal limits the
/// two race, and on a busy machine the worker's words ("did not finish
/// within") could win.
const WORKER_CHUNK_TIMEOUT: Duration = Duration::from_secs(8);

/// Runs the film with Gemini failing chunk 1 as `fault` says, and checks
/// what the run ends with. Chunks go one at a time: a 429 rests the only
/// key for every chunk, and a lone worker sits the rest out itself before
/// the next chunk asks, so only chunk 1 is ever given back.
async fn chunk_1_fails(fault: ProviderFault, film: &Film, reference: &Sheet) {
    let keys = keys(1);
    let fake = FakeGemini::start(keys.clone());
    fake.script_clip(CHUNK_1_OFFSET, fault.reply.clone());
    let (db, _) = fresh_db().await;
    let analyzer = gemini(&fake, &keys[0], &db, PROVIDER_CHUNK_TIMEOUT);
    let video_id = Uuid::new_v4();
    let options = RunOptions {
        video_id: Some(video_id),
        concurrency: 1,
        ..run_options(WorkerConfig {
            chunk_timeout: WORKER_CHUNK_TIMEOUT,
            max_releases: 3,
            ..WorkerConfig::default()
        })
    };
    let sheet = run_with(&db, &film.path, &options, analyzer, &|_| {})
        .await
        .unwrap_or_else(|e| panic!("{:?}: the run ends by itself: {e}", fault.reply));

    let case = format!("{:?}", fault.reply);
    assert_well_formed(&sheet);
    assert_eq!(
        (sheet.status, sheet.completed_chunks, sheet.failed_chunks),
        (SheetStatus::Partial, CHUNKS - 1, 1),
        "{case}"
    );
    let chunk = chunk_state(&db, video_id, 1).await;
    assert_eq!(chunk.status, "failed", "{case}");
    assert!(chunk.error.contains(fault.says), "{case}: {}", chunk.error);
    assert_eq!(sheet.gaps.len(), 1, "{case}");
    let gap = &sheet.gaps[0];
    assert_eq!(gap.chunks, vec![1], "{case}");
    assert!(gap.reasons[0].contains(fault.says), "{case}: {gap:?}");
    let inside = CHUNK_1_FRAMES.start <= gap.start_frame && gap.end_frame <= CHUNK_1_FRAMES.end;
    assert!(inside, "{case}: the gap is chunk 1's: {gap:?}");
    assert_eq!(
        shots_clear_of(&sheet, &sheet.gaps),
        shots_clear_of(reference, &sheet.gaps),
        "{case}: the other chunks' shots are the fault-free ones"
    );
    let stored = db.get_sheet(video_id).await.expect("get_sheet");
    assert_eq!(
        stored.as_ref(),
        Some(&sheet),
        "{case}: finished without help"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_one_chunk_until_its_attempts_run_out_leaves_a_listed_gap_in_a_finished_film(
) {
    let film = film().await;
    let reference = gemini_reference().await;
    let faults = [
        ProviderFault {
            reply: Reply::Stall,
            says: "timed out",
        },
        ProviderFault {
            reply: Reply::RateLimited(Duration::from_secs(1)),
            says: "rate-limited",
        },
        ProviderFault {
            reply: Reply::Status(503),
            says: "503",
        },
        ProviderFault {
            reply: Reply::Text("I'm sorry, I cannot describe this video.".into()),
            says: "no usable answer",
        },
    ];
    join_all(
        faults
            .into_iter()
            .map(|fault| chunk_1_fails(fault, &film, reference)),
    )
    .await;
}

// Force-finalize while chunks are still running.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_finalize_while_chunks_run_keeps_the_completed_shots_and_the_running_chunks_cannot_commit(
) {
    let film = film().await;
    let reference = local_reference().await;
    let (db, _) = fresh_db().await;
    let gate = Gate::closed();
    let running = [1, 3];
    let analyzer =
        GatedAnalyzer::holding(Arc::new(LocalAnalyzer::default()), gate.clone(), &running);
    let video_id = Uuid::new_v4();
    let options = RunOptions {
        video_id: Some(video_id),
        ..run_options(WorkerConfig::default())
    };
    let api = Api {
        db: db.clone(),
        verifier: Verifier::new(JWT_SECRET).expect("a verifier"),
        chunk_queue: RecordingQueue::new(),
        source_root: None,
        plan: PLAN,
        probe: ProbeOptions::default(),
        allow_private_sources: false,
    };
    let run = run_with(&db, &film.path, &options, analyzer.clone(), &|_| {});
    let force = async {
        gate.wait_for_waiting(running.len(), LIMIT, "the held chunks")
            .await;
        wait_until("the other chunks to complete", || async {
            chunks_in(&db, video_id, "completed").await == CHUNKS as usize - running.len()
        })
        .await;
        let path = format!("/videos/{video_id}/force-finalize");
        let request = http_request("POST", &path, Some(&service_token()), None);
        let answer = read_response(api.handle(&Endpoint::ALL, request).await);
        // The held analyses finish now and try to commit.
        gate.open();
        answer
    };
    let (sheet, (status, answer)) = tokio::join!(run, force);
    let sheet = sheet.expect("the run ends with the forced sheet");

    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["forcedChunks"], json!(running));
    let forced: Sheet = serde_json::from_value(answer["sheet"].clone()).expect("a sheet");
    assert_eq!(sheet, forced, "the run's sheet is the forced one");
    assert_well_formed(&sheet);
    let gap_chunks: Vec<Vec<u32>> = sheet.gaps.iter().map(|g| g.chunks.clone()).collect();
    assert_eq!(gap_chunks, vec![vec![1], vec![3]]);
    assert!(sheet
        .gaps
        .iter()
        .all(|g| g.reasons.iter().all(|r| r.contains("force-finalized"))));
    assert_eq!(
        shots_clear_of(&sheet, &sheet.gaps),
        shots_clear_of(reference, &sheet.gaps),
        "the completed chunks' shots are kept"
    );
    assert_eq!(
        analyzer.finished(),
        CHUNKS as usize,
        "the held chunks finished their analysis, and their workers tried to commit"
    );
    let runs = analyzer.runs();
    for index in running {
        assert_eq!(
            runs.get(&index),
            Some(&1),
            "chunk {index} was analyzed once"
        );
        let chunk = chunk_state(&db, video_id, index as usize).await;
        assert_eq!(chunk.status, "failed", "chunk {index}");
        assert!(chunk.error.contains("force-finalized"), "{chunk:?}");
    }
    let results = db.chunk_results(video_id).await.expect("results");
    for index in running {
        let shots = &results.chunks[index as usize].shots;
        assert!(shots.is_empty(), "chunk {index} committed after: {shots:?}");
    }
    let stored = db.get_sheet(video_id).await.expect("get_sheet");
    assert_eq!(stored, Some(forced), "the stored sheet did not change");
}

/// A call the server rolls back to break a deadlock or a serialization
/// conflict is one statement: it is run again (three times at most), not
/// reported as a failure. `chunk_progress` is replaced, in this test's own
/// database, by one that is rolled back as often as the test says.
#[tokio::test]
async fn a_call_rolled_back_by_a_deadlock_or_conflict_is_run_again_three_times_at_most() {
    let (db, url) = fresh_db().await;
    let video_id = described_film(&db, 25 * 400, "25/1").await;
    let client = pg::connect(&url).await;
    client
        .batch_execute(
            "CREATE SEQUENCE public.conflicts;
             CREATE TABLE public.conflicts_to_raise (n integer NOT NULL);
             ALTER FUNCTION public.chunk_progress(uuid) RENAME TO real_chunk_progress;
             CREATE FUNCTION public.chunk_progress(p_video_id uuid) RETURNS jsonb
             LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('public.conflicts') <= (SELECT n FROM public.conflicts_to_raise) THEN
                     RAISE EXCEPTION 'deadlock detected (a test)' USING ERRCODE = '40P01';
                 END IF;
                 RETURN public.real_chunk_progress(p_video_id);
             END
             $$;",
        )
        .await
        .expect("a chunk_progress that is rolled back on demand");
    let raise = |n: i32| {
        let client = &client;
        async move {
            client
                .execute("DELETE FROM public.conflicts_to_raise", &[])
                .await
                .expect("delete");
            client
                .execute("INSERT INTO public.conflicts_to_raise VALUES ($1)", &[&n])
                .await
                .expect("insert");
            client
                .execute("SELECT setval('public.conflicts', 1, false)", &[])
                .await
                .expect("setval");
        }
    };

    raise(3).await;
    let progress = db
        .chunk_progress(video_id)
        .await
        .expect("answered on the 4th run");
    assert_eq!(progress["totalChunks"], 3, "a film of 400 s: {progress}");

    raise(4).await;
    let error = db
        .chunk_progress(video_id)
        .await
        .expect_err("a fourth conflict is returned");
    assert!(error.to_string().contains("deadlock detected"), "{error}");
}
