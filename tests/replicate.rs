//! The Replicate analyzer against a fake Replicate API over real TCP, with
//! real ffmpeg cutting generated films and the team's MPEG-PS footage.
//!
//! Each test starts its own fake (on 127.0.0.1) and key pool; the fake
//! records which key made each call, what was uploaded, polled, canceled and
//! deleted.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::analyzer::keys::KeyPool;
use shotlist_shared::analyzer::remote::{Finish, HttpTimeouts, ModelReply, Question, VideoModel};
use shotlist_shared::analyzer::replicate::{
    PollBackoff, Replicate, ReplicateConfig, CREATES_PER_MINUTE, KEYS_VARIABLE,
};
use shotlist_shared::analyzer::{cuts_of, AnalyzeError, Analyzer, ChunkRequest, LocalAnalyzer};
use shotlist_shared::probe::probe;
use shotlist_tests::fake_replicate::{self, FakeReplicate, Outcome, Script};
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::logs;
use tokio::time::Instant;

/// A 20-second film at 25 fps with sound; keyframes only every 300 frames.
fn film() -> Film {
    let cuts = [40, 113, 190, 260, 333, 410];
    make_film(&film_dir(), "25/1".parse().unwrap(), &cuts, 500, true)
}

/// Frames `[start, end)` of the film at `path`, as chunk `chunk_index`.
async fn chunk(path: &Path, chunk_index: u32, start: i64, end: i64) -> ChunkRequest {
    ChunkRequest {
        video_id: uuid::Uuid::new_v4(),
        chunk_index,
        source: path.display().to_string(),
        media: probe(path).await.expect("probing the test film"),
        start_frame: start,
        end_frame: end,
        deadline: None,
    }
}

/// Chunk 1 of the test film: its first 100 frames, with a cut at 40.
async fn first_chunk() -> ChunkRequest {
    chunk(&film().path, 1, 0, 100).await
}

/// The film's cuts in `[start, end)`, counted from `start`: where a clip of
/// those frames must show them.
fn cuts_in_clip(film: &Film, start: i64, end: i64) -> Vec<i64> {
    film.cuts_inside(start, end)
        .iter()
        .map(|c| c - start)
        .collect()
}

/// A question whose prompt lists three shots, as the echo answers them.
fn question(within: Duration) -> Question {
    Question {
        system: "You describe the shots of a film.".into(),
        prompt: "Chunk 2 of the film.\nShot 1: 0 s to 0.52 s\nShot 2: 0.52 s to 3.6 s\n\
                 Shot 3: 3.6 s to 6.4 s\nDescribe each shot."
            .into(),
        schema: json!({"type": "object", "required": ["shots"]}),
        max_output_tokens: 4096,
        deadline: Instant::now() + within,
    }
}

fn pool(keys: &[String]) -> Arc<KeyPool> {
    let pool = KeyPool::from_list(
        "replicate",
        KEYS_VARIABLE,
        &keys.join(","),
        NonZeroU32::new(CREATES_PER_MINUTE),
    )
    .unwrap();
    Arc::new(pool)
}

/// Sends every log line at trace level to the binary's capture. Every test
/// calls it before any analyzer code runs (see [`logs`]).
fn capture_logs() {
    logs::capture();
}

/// A fake with its keys, their pool, and an analyzer that polls quickly.
struct Rig {
    fake: FakeReplicate,
    pool: Arc<KeyPool>,
    model: Replicate,
}

impl Rig {
    /// A fake with `keys` keys.
    fn new(keys: usize) -> Rig {
        capture_logs();
        let keys = fake_replicate::keys(keys);
        let fake = FakeReplicate::start(keys.clone());
        let pool = pool(&keys);
        let model = Replicate::new(config(fake.base_url(), pool.clone())).unwrap();
        Rig { fake, pool, model }
    }

    /// Asks about `request` with 30 s to answer.
    async fn ask(&self, request: &ChunkRequest) -> Result<ModelReply, AnalyzeError> {
        self.model
            .ask(request, &question(Duration::from_secs(30)))
            .await
    }

    /// The last clip uploaded, saved to a file of its own.
    fn last_clip(&self) -> Clip {
        Clip::saved(&self.fake.uploads().last().expect("an upload").bytes)
    }
}

/// An uploaded clip, saved for ffprobe and the local analyzer to read.
struct Clip {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Clip {
    fn saved(bytes: &[u8]) -> Clip {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        std::fs::write(&path, bytes).unwrap();
        Clip { _dir: dir, path }
    }
}

/// Replicate at `base_url` with `keys`, polled quickly.
fn config(base_url: &str, keys: Arc<KeyPool>) -> ReplicateConfig {
    let mut config = ReplicateConfig::new(keys);
    config.base_url = base_url.to_string();
    config.timeouts = HttpTimeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    config.prefer_wait = Duration::from_secs(5);
    config.poll = PollBackoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    config
}

fn gets(fake: &FakeReplicate) -> usize {
    fake.calls().iter().filter(|c| c.method == "GET").count()
}

fn provider(error: &AnalyzeError) -> (&str, bool) {
    match error {
        AnalyzeError::Provider {
            message, retryable, ..
        } => (message.as_str(), *retryable),
        other => panic!("expected a provider error, got {other:?}"),
    }
}

/// Every upload was deleted again, by the key that made it.
fn assert_uploads_deleted(fake: &FakeReplicate) {
    let uploaded: Vec<String> = fake.uploads().into_iter().map(|u| u.id).collect();
    assert_eq!(fake.deleted_files(), uploaded);
}

#[tokio::test]
async fn a_prediction_that_starts_then_processes_then_succeeds_joins_its_output() {
    let rig = Rig::new(1);
    let pieces = json!(["{\"shots\":", "[{\"shot\":1", "}]}"]);
    rig.fake
        .script(Script::after_polls(Outcome::Output(pieces), 3));
    let request = chunk(&film().path, 2, 100, 300).await;
    let reply = rig.ask(&request).await.unwrap();
    assert_eq!(reply.text, "{\"shots\":[{\"shot\":1}]}");
    assert_eq!(reply.finish, Finish::Complete);
    let fake = &rig.fake;
    assert_eq!(gets(fake), 3, "{:?}", fake.calls());
    let prediction = &fake.predictions()[0];
    assert_eq!(prediction.model, "google/gemini-3-pro");
    assert_eq!(prediction.prefer.as_deref(), Some("wait=5"));
    assert_eq!(prediction.status, "succeeded");
    let input = &prediction.input;
    assert_eq!(
        input["system_instruction"],
        "You describe the shots of a film."
    );
    assert_eq!(input["max_output_tokens"], 4096);
    assert_eq!(input["temperature"], 0.0);
    let upload = &fake.uploads()[0];
    let url = format!("{}/v1/files/{}", fake.base_url(), upload.id);
    assert_eq!(input["videos"], json!([url]));
    let prompt = input["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("Chunk 2 of the film.\nShot 1: 0 s to 0.52 s\n"),
        "{prompt}"
    );
    assert!(
        prompt.contains(r#"{"required":["shots"],"type":"object"}"#),
        "{prompt}"
    );
    assert_uploads_deleted(fake);
}

#[tokio::test]
async fn a_prediction_finished_within_prefer_wait_needs_no_poll_and_echoes_the_shots() {
    let rig = Rig::new(2);
    let request = chunk(&film().path, 0, 0, 150).await;
    let reply = rig.ask(&request).await.unwrap();
    assert_eq!(gets(&rig.fake), 0);
    let answer: Value = serde_json::from_str(&reply.text).unwrap();
    let shots = answer["shots"].as_array().unwrap();
    assert_eq!(shots.len(), 3);
    assert_eq!(shots[1]["start"], 0.52);
    assert_eq!(shots[2]["description"], "fake replicate: shot 3");
}

#[tokio::test]
async fn the_uploaded_clip_holds_exactly_the_chunk_s_frames_with_its_cuts_in_place() {
    let rig = Rig::new(1);
    let film = film();
    let (start, end) = (100, 300);
    rig.ask(&chunk(&film.path, 2, start, end).await)
        .await
        .unwrap();
    let upload = &rig.fake.uploads()[0];
    assert_eq!(upload.field, "content");
    assert_eq!(upload.content_type.as_deref(), Some("video/mp4"));
    let name = upload.filename.as_deref().unwrap();
    assert!(name.ends_with("-chunk-0002.mp4"), "{name}");

    let clip = rig.last_clip();
    assert_eq!(counted_frames(&clip.path), end - start);
    // Frame-exact: the film's cuts are found in the clip at the same frames.
    assert_eq!(cuts_in(&clip.path).await, cuts_in_clip(&film, start, end));
    let media = probe(&clip.path).await.unwrap();
    assert!(media.has_audio);
    assert_eq!(media.duration_frames, end - start);
}

#[tokio::test]
async fn clips_of_mpeg_ps_footage_start_at_the_chunk_s_frame_between_keyframes() {
    let rig = Rig::new(1);
    let city = shotlist_tests::film::city_footage();
    // MPEG-2 in a program stream whose timestamps start at 0.54 s, with
    // keyframes every 12 frames and one cut, at frame 116 of 190. ffmpeg's
    // seek lands after the target for most of these starts.
    for start in [1, 109, 115] {
        rig.ask(&chunk(&city, 1, start, 190).await).await.unwrap();
        let clip = rig.last_clip();
        assert_eq!(counted_frames(&clip.path), 190 - start, "start {start}");
        assert_eq!(cuts_in(&clip.path).await, [116 - start], "start {start}");
    }
}

#[tokio::test]
async fn ntsc_clips_are_frame_exact_mid_film_and_at_the_films_end() {
    let rig = Rig::new(1);
    let fps = "30000/1001".parse().unwrap();
    let cuts = [1200, 1517, 1790, 2500, 2990];
    let film = tokio::task::spawn_blocking(move || make_film(&film_dir(), fps, &cuts, 3000, true))
        .await
        .unwrap();
    for (start, end) in [(1501, 1801), (2700, 3000)] {
        rig.ask(&chunk(&film.path, 5, start, end).await)
            .await
            .unwrap();
        let clip = rig.last_clip();
        assert_eq!(counted_frames(&clip.path), end - start, "[{start}, {end})");
        let found = cuts_in(&clip.path).await;
        assert_eq!(found, cuts_in_clip(&film, start, end), "[{start}, {end})");
    }
}

#[tokio::test]
async fn a_film_on_a_web_server_is_cut_from_its_url() {
    let rig = Rig::new(1);
    let film = film();
    let url = rig
        .fake
        .serve_media("film.mp4", std::fs::read(&film.path).unwrap());
    let (start, end) = (100, 300);
    let mut request = chunk(&film.path, 2, start, end).await;
    request.source = url;
    rig.ask(&request).await.unwrap();
    let clip = rig.last_clip();
    assert_eq!(counted_frames(&clip.path), end - start);
    assert_eq!(cuts_in(&clip.path).await, cuts_in_clip(&film, start, end));
}

#[tokio::test]
async fn connection_errors_are_retried_then_returned_as_retryable() {
    capture_logs();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let keys = fake_replicate::keys(1);
    let model = Replicate::new(config(&base_url, pool(&keys))).unwrap();
    let request = first_chunk().await;
    let started = Instant::now();
    let within = Duration::from_secs(30);
    let error = model.ask(&request, &question(within)).await.unwrap_err();
    // A provider error, not a timeout: the retries ran out before the
    // deadline (four of 20 ms doubling, capped at 100 ms).
    let (message, retryable) = provider(&error);
    assert!(message.starts_with("uploading the clip: "), "{message}");
    assert!(retryable);
    // A sanity bound only, far under the 30 s deadline.
    assert!(started.elapsed() < within / 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_failed_prediction_stops_polling_at_once_and_is_permanent() {
    let rig = Rig::new(1);
    rig.fake.script(Script::after_polls(
        Outcome::Fail("the model crashed".into()),
        2,
    ));
    let error = rig.ask(&first_chunk().await).await.unwrap_err();
    let (message, retryable) = provider(&error);
    assert!(message.contains("failed: the model crashed"), "{message}");
    assert!(!retryable);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gets(&rig.fake), 2, "{:?}", rig.fake.calls());
    assert!(rig.fake.cancels().is_empty());
    assert_uploads_deleted(&rig.fake);
}

#[tokio::test]
async fn a_prediction_canceled_by_someone_else_is_retryable() {
    let rig = Rig::new(1);
    rig.fake.script(Script::after_polls(Outcome::Canceled, 1));
    let error = rig.ask(&first_chunk().await).await.unwrap_err();
    let (message, retryable) = provider(&error);
    assert!(message.contains("was canceled"), "{message}");
    assert!(retryable && error.is_retryable());
    assert_eq!(rig.fake.predictions().len(), 1);
}

#[tokio::test]
async fn e6716_is_retried_with_a_new_prediction() {
    let rig = Rig::new(1);
    let e6716 = "Prediction failed: Timeout Starting Prediction (E6716)";
    rig.fake
        .script(Script::after_polls(Outcome::Fail(e6716.into()), 1));
    let reply = rig.ask(&first_chunk().await).await.unwrap();
    assert!(
        reply.text.contains("fake replicate: shot 1"),
        "{}",
        reply.text
    );
    let predictions = rig.fake.predictions();
    assert_eq!(predictions.len(), 2);
    assert_eq!(predictions[0].status, "failed");
    // One upload serves both predictions.
    assert_eq!(rig.fake.uploads().len(), 1);
}

#[tokio::test]
async fn e6716_every_time_is_a_retryable_error() {
    let rig = Rig::new(1);
    for _ in 0..5 {
        rig.fake.script(Script::at_once(Outcome::Fail(
            "E6716: Timeout Starting Prediction".into(),
        )));
    }
    let error = rig.ask(&first_chunk().await).await.unwrap_err();
    let (message, retryable) = provider(&error);
    assert!(message.contains("E6716") && retryable, "{message}");
    assert_eq!(rig.fake.predictions().len(), 3);
}

#[tokio::test]
async fn at_our_deadline_the_prediction_is_canceled_and_the_error_is_in_by_then() {
    let rig = Rig::new(1);
    rig.fake.script(Script::after_polls(Outcome::Hang, 0));
    let request = first_chunk().await;
    let started = Instant::now();
    let within = Duration::from_secs(5);
    let error = rig
        .model
        .ask(&request, &question(within))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, AnalyzeError::TimedOut { .. }), "{error:?}");
    assert!(error.is_retryable());
    // Polled until the deadline, then canceled: the records prove it.
    let prediction = &rig.fake.predictions()[0];
    assert_eq!(rig.fake.cancels(), std::slice::from_ref(&prediction.id));
    assert_eq!(prediction.status, "canceled");
    assert!(prediction.polls > 5, "{}", prediction.polls);
    assert_uploads_deleted(&rig.fake);
    // Cleanup is cut at the deadline. Sanity bounds, with room for a busy
    // machine: neither given up early nor run past it by much.
    let slack = Duration::from_secs(2);
    assert!(elapsed <= within + slack, "{elapsed:?}");
    assert!(elapsed >= within - slack, "{elapsed:?}");
}

#[tokio::test]
async fn a_429_on_key_1_moves_to_key_2_at_once_and_key_1_rests() {
    let rig = Rig::new(2);
    rig.fake.throttle(1, 30);
    rig.ask(&first_chunk().await).await.unwrap();
    let fake = &rig.fake;
    let predictions = fake.predictions();
    assert_eq!(predictions.len(), 1);
    assert_eq!(predictions[0].key, 2);
    // Key 1's upload is its account's: deleted, and key 2 uploaded again.
    let uploads = fake.uploads();
    let keys: Vec<usize> = uploads.iter().map(|u| u.key).collect();
    assert_eq!(keys, [1, 2], "{:?}", fake.calls());
    assert_uploads_deleted(fake);
    let calls = fake.calls();
    let throttled = calls.iter().find(|c| c.status == 429).unwrap();
    let created = calls
        .iter()
        .find(|c| c.status == 201 && c.path.ends_with("predictions"))
        .unwrap();
    assert_eq!((throttled.key, created.key), (Some(1), Some(2)));
    // Key 1 rests: the pool hands out key 2 even when key 1 is preferred.
    assert_eq!(rig.pool.try_acquire(&[0]).unwrap().number(), 2);
    // A sanity bound only: far under key 1's 30 s rest, so nothing waited
    // for it.
    let moved = created.at - throttled.at;
    assert!(moved < Duration::from_secs(10), "{moved:?}");
}

#[tokio::test]
async fn a_429_on_upload_moves_to_the_next_key_too() {
    let rig = Rig::new(2);
    rig.fake.throttle_uploads(1, 20);
    rig.ask(&first_chunk().await).await.unwrap();
    let calls = rig.fake.calls();
    let keys: Vec<(Option<usize>, u16)> = calls.iter().map(|c| (c.key, c.status)).collect();
    assert_eq!(keys[..2], [(Some(1), 429), (Some(2), 201)]);
    assert_eq!(rig.fake.predictions()[0].key, 2);
}

#[tokio::test]
async fn when_every_key_is_throttled_the_chunk_is_throttled_for_about_30_s() {
    let rig = Rig::new(3);
    for key in 1..=3 {
        rig.fake.throttle(key, 30);
    }
    let request = chunk(&film().path, 4, 0, 100).await;
    let started = Instant::now();
    let error = rig
        .model
        .ask(&request, &question(Duration::from_secs(60)))
        .await
        .unwrap_err();
    let AnalyzeError::Throttled {
        wait, chunk_index, ..
    } = error
    else {
        panic!("expected throttled, got {error:?}");
    };
    assert_eq!(chunk_index, 4);
    assert!(
        wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    // A sanity bound only: far under the keys' 30 s rest.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(rig.fake.predictions().is_empty());
    assert_uploads_deleted(&rig.fake);
}

/// A chunk whose keys all rest goes back to the queue before its clip is
/// cut: the re-encode (up to minutes of video) would be thrown away, on
/// every round the chunk is claimed again.
#[tokio::test]
async fn every_key_resting_throttles_before_the_clip_is_cut() {
    capture_logs();
    let keys = fake_replicate::keys(1);
    let fake = FakeReplicate::start(keys.clone());
    let no_ffmpeg = |pool: Arc<KeyPool>| {
        let mut config = config(fake.base_url(), pool);
        config.ffmpeg = PathBuf::from("/nonexistent/shotlist-ffmpeg");
        Replicate::new(config).unwrap()
    };
    let request = first_chunk().await;
    let resting = pool(&keys);
    resting.rest(0, Duration::from_secs(60));
    let error = no_ffmpeg(resting)
        .ask(&request, &question(Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert!(matches!(error, AnalyzeError::Throttled { .. }), "{error:?}");
    // With a key free, the same analyzer cuts first: the missing ffmpeg
    // shows that the throttled one never started it.
    let error = no_ffmpeg(pool(&keys))
        .ask(&request, &question(Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AnalyzeError::ToolMissing { .. }),
        "{error:?}"
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn five_concurrent_chunks_over_five_keys_use_each_key_once() {
    let rig = Rig::new(5);
    for _ in 0..5 {
        rig.fake.script(Script::after_polls(Outcome::Echo, 3));
    }
    let film = film();
    let mut requests = Vec::new();
    for i in 0..5 {
        requests.push(chunk(&film.path, i, i64::from(i) * 80, i64::from(i) * 80 + 100).await);
    }
    let asks = requests.iter().map(|r| rig.ask(r));
    for reply in futures::future::join_all(asks).await {
        reply.unwrap();
    }
    let mut keys: Vec<usize> = rig.fake.predictions().iter().map(|p| p.key).collect();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn server_errors_on_create_are_retried_and_a_422_is_permanent() {
    let rig = Rig::new(1);
    rig.fake.fail_creates(&[503, 500]);
    let request = first_chunk().await;
    rig.ask(&request).await.unwrap();
    let creates = rig
        .fake
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/predictions"))
        .count();
    assert_eq!(creates, 3);

    rig.fake.fail_creates(&[422]);
    let error = rig.ask(&request).await.unwrap_err();
    let (message, retryable) = provider(&error);
    assert!(message.contains("422: scripted failure"), "{message}");
    assert!(!retryable);
    assert_uploads_deleted(&rig.fake);
}

#[tokio::test]
async fn a_refused_key_is_named_by_its_number_never_its_value() {
    let rig = Rig::new(2);
    rig.fake.refuse(2);
    let _key_1_busy = rig.pool.try_acquire(&[]).unwrap();
    let error = rig.ask(&first_chunk().await).await.unwrap_err();
    let (message, retryable) = provider(&error);
    assert_eq!(message, "REPLICATE_API_TOKENS key 2 was refused (401)");
    assert!(!retryable);
    let shown = format!("{error} {error:?}");
    for key in fake_replicate::keys(2) {
        assert!(!shown.contains(&key), "{shown}");
    }
}

#[tokio::test]
async fn a_missing_source_fails_before_any_call() {
    let rig = Rig::new(1);
    let mut request = first_chunk().await;
    request.source = "/nowhere/film.mp4".into();
    let error = rig.ask(&request).await.unwrap_err();
    assert!(
        matches!(error, AnalyzeError::SourceMissing { .. }),
        "{error:?}"
    );
    assert!(rig.fake.calls().is_empty());
}

#[tokio::test]
async fn trace_logs_name_keys_by_number_and_never_show_their_value() {
    let rig = Rig::new(3);
    rig.fake.throttle(1, 30);
    rig.fake.refuse(3);
    rig.fake.script(Script::after_polls(Outcome::Echo, 2));
    let request = first_chunk().await;
    rig.ask(&request).await.unwrap();
    // Key 1 rests, key 2 is busy: key 3 is refused.
    let _busy = rig.pool.try_acquire(&[1]).unwrap();
    rig.ask(&request).await.unwrap_err();

    // Every test's logs are here: none may show a key.
    let logs = logs::capture().text();
    assert!(!logs.contains("r8_FAKE"), "a key's value is in the logs");
    let video = format!("video_id={}", request.video_id);
    let ours: Vec<&str> = logs.lines().filter(|l| l.contains(&video)).collect();
    let ours = ours.join("\n");
    for key in ["key=1", "key=2", "key=3"] {
        assert!(ours.contains(key), "{key} not in {ours}");
    }
    assert!(
        ours.contains("chunk_index=1") && ours.contains("prediction_id="),
        "{ours}"
    );
    // Bodies are there at trace level.
    assert!(ours.contains("fake replicate: shot 2"), "{ours}");
}

#[tokio::test]
async fn a_key_quoted_in_an_answer_is_in_no_log_line() {
    let rig = Rig::new(1);
    rig.fake.quote_keys_in_logs();
    rig.fake.script(Script::after_polls(Outcome::Echo, 2));
    let request = first_chunk().await;
    rig.ask(&request).await.unwrap();
    let logs = logs::capture().text();
    let video = format!("video_id={}", request.video_id);
    let ours: Vec<&str> = logs.lines().filter(|l| l.contains(&video)).collect();
    let answered: Vec<&&str> = ours
        .iter()
        .filter(|l| l.contains("replicate answered"))
        .collect();
    assert!(
        answered.iter().any(|l| l.contains("authorized as <key 1>")),
        "the answers are logged, the key scrubbed: {answered:?}"
    );
    assert!(!logs.contains("r8_FAKE"), "a key's value is in the logs");
}

#[test]
fn a_base_url_with_a_password_is_refused_without_showing_it() {
    let vars = |name: &str| match name {
        "REPLICATE_API_TOKENS" => Some("r8_a".to_string()),
        "REPLICATE_BASE_URL" => Some("https://deploy:hunter2@127.0.0.1/".to_string()),
        _ => None,
    };
    let config = ReplicateConfig::from_env(vars).unwrap();
    let error = Replicate::new(config).unwrap_err();
    assert!(error.contains("REPLICATE_BASE_URL"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn configuration_comes_from_the_environment_with_defaults() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let missing = ReplicateConfig::from_env(vars(&[])).unwrap_err();
    assert!(
        missing.starts_with("REPLICATE_API_TOKENS is not set"),
        "{missing}"
    );
    let stray =
        ReplicateConfig::from_env(vars(&[("REPLICATE_API_TOKENS", "r8_a,,r8_b")])).unwrap_err();
    assert!(
        stray.contains("key 2") && !stray.contains("r8_a"),
        "{stray}"
    );

    let defaults = ReplicateConfig::from_env(vars(&[
        ("REPLICATE_API_TOKENS", "r8_a, r8_b,r8_c,r8_d,r8_e"),
        ("REPLICATE_BASE_URL", " "),
    ]))
    .unwrap();
    assert_eq!(defaults.keys.len(), 5);
    assert_eq!(defaults.base_url, "https://api.replicate.com");
    assert_eq!(defaults.model, "google/gemini-3-pro");
    assert!(Replicate::new(defaults.clone()).is_ok());

    let custom = ReplicateConfig::from_env(vars(&[
        ("REPLICATE_API_TOKENS", "r8_a"),
        ("REPLICATE_BASE_URL", "http://127.0.0.1:9/"),
        ("REPLICATE_MODEL", "google/gemini-2.5-flash"),
    ]))
    .unwrap();
    assert_eq!(custom.base_url, "http://127.0.0.1:9/");
    assert_eq!(custom.model, "google/gemini-2.5-flash");

    let mut bad = defaults.clone();
    bad.prefer_wait = Duration::from_secs(61);
    assert!(Replicate::new(bad).unwrap_err().contains("1 to 60 s"));
    let mut bad = defaults.clone();
    bad.timeouts.read = Duration::from_secs(30);
    assert!(Replicate::new(bad).unwrap_err().contains("read timeout"));
    let mut bad = defaults;
    bad.model = "gemini".into();
    assert!(Replicate::new(bad).unwrap_err().contains("REPLICATE_MODEL"));
}

/// Frames in `clip`, decoded and counted by ffprobe.
fn counted_frames(clip: &Path) -> i64 {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(clip)
        .output()
        .expect("running ffprobe");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The cuts the local analyzer finds in the whole of `clip`.
async fn cuts_in(clip: &Path) -> Vec<i64> {
    let media = probe(clip).await.unwrap();
    let request = ChunkRequest {
        video_id: uuid::Uuid::nil(),
        chunk_index: 0,
        source: clip.display().to_string(),
        start_frame: 0,
        end_frame: media.duration_frames,
        media,
        deadline: None,
    };
    cuts_of(&LocalAnalyzer::default().analyze(&request).await.unwrap())
}
