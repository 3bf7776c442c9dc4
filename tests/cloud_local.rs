//! The cloud shape end to end on this machine: submit → a real SQS-API
//! server (moto, `SHOTLIST_TEST_SQS_URL`) → process-chunk at most 5 at once
//! → one finalize message → the sheet, compared with `shotlist process`'s
//! runner on the same film. Also duplicate deliveries and the dead-letter
//! queue, through the real queues.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shotlist_shared::analyzer::local::LocalAnalyzer;
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::cloud::local::{LocalCloud, LocalCloudOptions, LocalCloudReport};
use shotlist_shared::cloud::queue::{MessageQueue, QueueError};
use shotlist_shared::db::Db;
use shotlist_shared::model::ChunkAnalysis;
use shotlist_shared::runner::{run_local, RunOptions};
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::Fps;
use shotlist_shared::worker::WorkerConfig;
use shotlist_tests::cloud::{Script, ScriptedAnalyzer};
use shotlist_tests::film::{cuts_49_minutes, film_dir, make_film, Film};
use shotlist_tests::pg::fresh_db;
use uuid::Uuid;

/// The moto server's URL, or `None` outside CI when none was started.
fn sqs_endpoint() -> Option<String> {
    match std::env::var("SHOTLIST_TEST_SQS_URL") {
        Ok(url) if !url.is_empty() => {
            // Anything the SDK might look for stays on loopback.
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            Some(url)
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("SHOTLIST_TEST_SQS_URL is not set: scripts/test starts moto and sets it")
        }
        _ => {
            eprintln!(
                "skipping: SHOTLIST_TEST_SQS_URL is not set (eval \"$(scripts/moto start)\")"
            );
            None
        }
    }
}

fn options(endpoint: String) -> LocalCloudOptions {
    LocalCloudOptions {
        sqs_endpoint: endpoint,
        queue_prefix: format!("test-{}", Uuid::new_v4().simple()),
        retry_delay: Duration::from_secs(1),
        ..LocalCloudOptions::default()
    }
}

/// The local analyzer, counting its runs per chunk.
struct Counting {
    inner: LocalAnalyzer,
    runs: Vec<AtomicU32>,
}

impl Counting {
    fn new(chunks: usize) -> Arc<Counting> {
        Arc::new(Counting {
            inner: LocalAnalyzer::default(),
            runs: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    fn runs(&self) -> Vec<u32> {
        self.runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
    }
}

#[async_trait]
impl Analyzer for Counting {
    fn name(&self) -> &'static str {
        "counting-local"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        self.runs[request.chunk_index as usize].fetch_add(1, Ordering::SeqCst);
        self.inner.analyze(request).await
    }
}

/// A chunk queue that sends every message twice, as SQS may deliver it.
struct Twice(Arc<dyn MessageQueue>);

#[async_trait]
impl MessageQueue for Twice {
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError> {
        let doubled: Vec<String> = bodies.iter().chain(bodies).cloned().collect();
        self.0.send_all(&doubled).await
    }

    fn name(&self) -> &str {
        self.0.name()
    }
}

/// What must agree between two sheets of the same film.
fn essence(sheet: &Sheet) -> serde_json::Value {
    serde_json::json!({
        "fps": sheet.fps,
        "durationFrames": sheet.duration_frames,
        "totalChunks": sheet.total_chunks,
        "status": sheet.status,
        "shots": sheet.shots,
        "gaps": sheet.gaps,
    })
}

async fn reference_sheet(film: &Film) -> Sheet {
    let (db, _url) = fresh_db().await;
    run_local(&db, &film.path, &RunOptions::default(), &|_| {})
        .await
        .expect("shotlist process's runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_49_minute_film_through_sqs_gives_the_same_sheet_as_shotlist_process() {
    let Some(endpoint) = sqs_endpoint() else {
        return;
    };
    let fps = Fps::new(25, 1).unwrap();
    let film = tokio::task::spawn_blocking(move || {
        let (cuts, frames) = cuts_49_minutes(fps);
        make_film(&film_dir(), fps, &cuts, frames, true)
    })
    .await
    .unwrap();
    let (db, _url) = fresh_db().await;
    let analyzer = Counting::new(18);
    let root = film.path.parent().unwrap();
    let cloud = LocalCloud::new(db, analyzer.clone(), root, options(endpoint))
        .await
        .expect("queues created");
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let report = cloud.run(&key, None, &|_| {}).await.expect("a sheet");

    assert_eq!(report.sheet.total_chunks, 18);
    assert_eq!(report.sheet.completed_chunks, 18);
    assert_eq!(report.sheet.status, SheetStatus::Complete);
    assert_eq!(analyzer.runs(), vec![1; 18], "one analysis per chunk");
    let chunks = &report.chunk_stats;
    assert_eq!(chunks.messages_received(), 18, "18 chunk messages");
    assert!(
        chunks.max_in_flight() <= 5,
        "{} in flight",
        chunks.max_in_flight()
    );
    assert!(chunks.max_in_flight() >= 2, "chunks ran in parallel");
    assert_eq!(
        report.finalize_stats.messages_received(),
        1,
        "one finalize message"
    );

    let reference = reference_sheet(&film).await;
    assert_eq!(essence(&report.sheet), essence(&reference));
    let cuts: Vec<i64> = report
        .sheet
        .shots
        .iter()
        .skip(1)
        .map(|s| s.start_frame)
        .collect();
    assert_eq!(cuts.len(), film.cuts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_chunk_message_delivered_twice_gives_the_same_sheet_and_one_analysis_per_chunk() {
    let Some(endpoint) = sqs_endpoint() else {
        return;
    };
    let fps = Fps::new(25, 1).unwrap();
    // 10 minutes, four chunks, cuts near the seams.
    let film = tokio::task::spawn_blocking(move || {
        let cuts = [2_000, 4_100, 4_130, 8_300, 8_310, 12_400, 14_000];
        make_film(&film_dir(), fps, &cuts, 15_000, true)
    })
    .await
    .unwrap();
    let (db, _url) = fresh_db().await;
    let analyzer = Counting::new(4);
    let root = film.path.parent().unwrap();
    let mut cloud = LocalCloud::new(db, analyzer.clone(), root, options(endpoint))
        .await
        .unwrap();
    cloud.api.chunk_queue = Arc::new(Twice(cloud.api.chunk_queue.clone()));
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let report = cloud.run(&key, None, &|_| {}).await.expect("a sheet");

    // Every message twice at least; a copy that finds its twin at work is
    // listed for retry and comes back once the twin is done.
    let received = report.chunk_stats.messages_received();
    assert!(received >= 8, "every message twice: {received}");
    assert_eq!(
        analyzer.runs(),
        vec![1; 4],
        "the duplicates ran no analysis"
    );
    assert_eq!(report.finalize_stats.messages_received(), 1);
    let reference = reference_sheet(&film).await;
    assert_eq!(essence(&report.sheet), essence(&reference));
}

/// A 5000-frame film with two cuts, run through the local cloud with
/// `analyzer`, `max_receives` deliveries per message and `worker`.
async fn small_film_run(
    endpoint: String,
    analyzer: Arc<ScriptedAnalyzer>,
    max_receives: u32,
    worker: WorkerConfig,
) -> (Db, LocalCloud, LocalCloudReport, String) {
    let fps = Fps::new(25, 1).unwrap();
    let film = tokio::task::spawn_blocking(move || {
        make_film(&film_dir(), fps, &[1_000, 3_000], 5_000, false)
    })
    .await
    .unwrap();
    let (db, _url) = fresh_db().await;
    let mut opts = options(endpoint);
    opts.max_receives = max_receives;
    opts.worker = worker;
    let prefix = opts.queue_prefix.clone();
    let root = film.path.parent().unwrap();
    let cloud = LocalCloud::new(db.clone(), analyzer, root, opts)
        .await
        .unwrap();
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let report = cloud.run(&key, None, &|_| {}).await.expect("a sheet");
    (db, cloud, report, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_waiting_on_rate_limits_comes_back_as_new_messages_and_completes() {
    let Some(endpoint) = sqs_endpoint() else {
        return;
    };
    let analyzer = ScriptedAnalyzer::new();
    // More waits than the queue's receives: only new messages get past it.
    analyzer.script(
        1,
        Script::ThrottledFor {
            runs: 4,
            wait: Duration::from_secs(1),
        },
    );
    let (db, _, report, _) =
        small_film_run(endpoint, analyzer.clone(), 3, WorkerConfig::default()).await;

    assert_eq!(report.sheet.status, SheetStatus::Complete);
    assert_eq!(analyzer.runs(1), 5, "four waits, then the analysis");
    let chunk = &db.chunk_progress(report.video_id).await.unwrap()["chunks"][1];
    assert_eq!(chunk["status"], "completed", "{chunk}");
    assert_eq!(chunk["attempts"], 1, "waiting spent no attempt: {chunk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_keeps_failing_ends_in_the_dlq_and_its_chunk_fails_with_the_last_error() {
    let Some(endpoint) = sqs_endpoint() else {
        return;
    };
    let analyzer = ScriptedAnalyzer::new();
    analyzer.script(1, Script::Transient("503 UNAVAILABLE: overloaded".into()));
    // The queue, not the attempt counter, decides here.
    let worker = WorkerConfig {
        max_attempts: 10,
        ..WorkerConfig::default()
    };
    let (db, cloud, report, prefix) = small_film_run(endpoint, analyzer.clone(), 3, worker).await;

    assert_eq!(
        analyzer.runs(1),
        3,
        "one analysis per delivery, three deliveries"
    );
    assert_eq!(report.sheet.status, SheetStatus::Partial);
    let chunk = &db.chunk_progress(report.video_id).await.unwrap()["chunks"][1];
    assert_eq!(chunk["status"], "failed", "{chunk}");
    assert!(
        chunk["error"].as_str().unwrap().contains("503 UNAVAILABLE"),
        "{chunk}"
    );
    assert_eq!(report.sheet.gaps.len(), 1);
    assert!(report.sheet.gaps[0].reasons[0].contains("503 UNAVAILABLE"));

    // The message itself is in the dead-letter queue: SQS moves it there
    // at the receive after the last one, so look until it arrives.
    let client = &cloud.client;
    let dlq = client
        .get_queue_url()
        .queue_name(format!("{prefix}-chunks-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    // Nothing polls the main queue any more: poke it so moto moves it.
    let mut found = Vec::new();
    for _ in 0..20 {
        let _ = client
            .receive_message()
            .queue_url(&cloud.chunk_queue_url)
            .wait_time_seconds(1)
            .send()
            .await;
        let got = client
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        found.extend(got.messages.unwrap_or_default());
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(found.len(), 1, "the failing message is in the DLQ");
    let body: serde_json::Value = serde_json::from_str(found[0].body().unwrap()).unwrap();
    assert_eq!(body["chunkIndex"], 1);
    assert_eq!(body["videoId"], report.video_id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shotlist_cloud_submits_the_film_details_with_the_film_and_writes_them_beside_the_sheet() {
    let endpoint = std::env::var("SHOTLIST_TEST_SQS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("SHOTLIST_TEST_SQS_URL is not set: start moto with eval \"$(scripts/moto start)\"");
    let fps = Fps::new(25, 1).expect("25 fps");
    let film = tokio::task::spawn_blocking(move || {
        make_film(&film_dir(), fps, &[1_000, 3_000], 5_000, false)
    })
    .await
    .expect("film made");
    let (db, url) = fresh_db().await;
    let out = tempfile::tempdir().expect("tempdir");
    let id = Uuid::new_v4();
    let output = shotlist_tests::cli_bin::shotlist_command()
        .arg("cloud")
        .arg(&film.path)
        .args(["--sqs-endpoint", &endpoint, "--database-url", &url])
        .args([
            "--queue-prefix",
            &format!("test-{}", Uuid::new_v4().simple()),
        ])
        .args(["--video-id", &id.to_string(), "--lang", "ru"])
        .args(["--title", "Сталкер", "--year", "1979"])
        .arg("--out")
        .arg(out.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run shotlist cloud");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "shotlist cloud failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let details = shotlist_shared::sheet::FilmDetails {
        title: Some("Сталкер".into()),
        year: Some("1979".into()),
        ..Default::default()
    };
    assert_eq!(db.video_details(id).await.expect("stored"), details);
    let written = out.path().join("details.json");
    assert!(stdout.contains(&written.display().to_string()), "{stdout}");
    let read: shotlist_shared::sheet::FilmDetails =
        serde_json::from_slice(&std::fs::read(&written).expect("read")).expect("details");
    assert_eq!(read, details);
}
