//! The Gemini analyzer's model against the fake Gemini API over real TCP,
//! with its uploads recorded in a real PostgreSQL: the resumable upload,
//! one upload per film however many chunks start at once, PROCESSING and
//! FAILED files, finish reasons, retries within the deadline, 429s moving
//! to the next key (but never to upload the film again), files Gemini lost,
//! chunks deferred while another worker uploads, claims given back by
//! dropped uploads, and logs that never show a key or a signature.
//!
//! Every test has a database and a fake server of its own. The film is a
//! small generated one (ffmpeg); the request's `MediaInfo` is built by hand.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shotlist_shared::analyzer::gemini::{Gemini, GeminiConfig, DEFAULT_MODEL};
use shotlist_shared::analyzer::keys::KeyPool;
use shotlist_shared::analyzer::remote::{Finish, HttpTimeouts, Question, VideoModel};
use shotlist_shared::analyzer::{AnalyzeError, ChunkRequest};
use shotlist_shared::db::{Db, MIGRATIONS};
use shotlist_shared::time::Fps;
use shotlist_shared::uploads::{
    AccountUpload, ProviderFile, UploadClaim, UploadSlot, UploadState, UploadStore,
};
use shotlist_tests::fake_gemini::{self, FakeGemini, FileOutcome, Reply};
use shotlist_tests::fake_server::FakeServer;
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::fixtures::{self, described_film};
use shotlist_tests::logs;
use shotlist_tests::pg::{connect, fresh_db};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// The test film: 10 s at 25 fps, chunks of 50 frames.
const FILM_FRAMES: i64 = 250;
const CHUNK_FRAMES: i64 = 50;
/// How long a chunk waits for another worker's upload before it is
/// deferred.
const UPLOAD_WAIT: Duration = Duration::from_secs(3);

fn fps() -> Fps {
    Fps::new(25, 1).expect("a valid rate")
}

/// The small generated film every test uploads.
async fn test_film() -> Film {
    tokio::task::spawn_blocking(|| {
        make_film(&film_dir(), fps(), &[60, 130, 190], FILM_FRAMES, false)
    })
    .await
    .expect("making the test film")
}

fn schema() -> Value {
    let shot = json!({"type": "OBJECT", "properties": {"shot": {"type": "INTEGER"}}});
    json!({"type": "OBJECT", "properties": {"shots": {"type": "ARRAY", "items": shot}}})
}

/// A database, a fake with `keys` keys, and a Gemini model between them.
struct Rig {
    fake: FakeGemini,
    db: Db,
    keys: Vec<String>,
    pool: Arc<KeyPool>,
    gemini: Gemini,
    video_id: Uuid,
    film: Film,
}

async fn rig(keys: usize) -> Rig {
    let (db, _) = fresh_db().await;
    let film = test_film().await;
    let video_id = described_film(&db, FILM_FRAMES, "25/1").await;
    let key_values = fake_gemini::keys(keys);
    let fake = FakeGemini::start(key_values.clone());
    let secrets = key_values.iter().map(|k| k.clone().into()).collect();
    let pool = Arc::new(KeyPool::new("gemini", secrets, None));
    let config = GeminiConfig {
        base_url: fake.base_url().to_string(),
        model: DEFAULT_MODEL.to_string(),
        keys: pool.clone(),
        timeouts: HttpTimeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
        },
        processing_wait: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        upload_wait: UPLOAD_WAIT,
    };
    let gemini = Gemini::new(config, Arc::new(db.clone())).expect("a valid configuration");
    Rig {
        fake,
        db,
        keys: key_values,
        pool,
        gemini,
        video_id,
        film,
    }
}

impl Rig {
    /// Chunk `index` of the film: frames `[50 i, 50 i + 50)`.
    fn chunk(&self, index: u32) -> ChunkRequest {
        let start_frame = i64::from(index) * CHUNK_FRAMES;
        ChunkRequest {
            video_id: self.video_id,
            chunk_index: index,
            source: self.film.path.display().to_string(),
            media: fixtures::media(FILM_FRAMES, fps()),
            start_frame,
            end_frame: start_frame + CHUNK_FRAMES,
            deadline: None,
        }
    }

    async fn ask(
        &self,
        index: u32,
    ) -> Result<shotlist_shared::analyzer::remote::ModelReply, AnalyzeError> {
        self.gemini
            .ask(&self.chunk(index), &question(Duration::from_secs(20)))
            .await
    }

    fn film_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.film.path).expect("reading the test film")
    }
}

/// A question whose deadline is `within` from now, listing two shots.
fn question(within: Duration) -> Question {
    Question {
        system: "You are a film logger.".into(),
        prompt: "Describe the shots.\nShot 1: 0.000 s to 1.200 s\nShot 2: 1.200 s to 2.000 s\n"
            .into(),
        schema: schema(),
        max_output_tokens: 4096,
        deadline: Instant::now() + within,
    }
}

/// A claim on `slot` by a worker with keys 1 to 5.
async fn claim(db: &Db, slot: &UploadSlot, hold: Duration) -> UploadClaim {
    let accounts = UploadSlot::accounts(5);
    db.claim_upload(slot, &accounts, hold).await.unwrap()
}

/// The token of a claim on `slot` that `db` must grant; `why` says why.
async fn claim_token(db: &Db, slot: &UploadSlot, hold: Duration, why: &str) -> Uuid {
    match claim(db, slot, hold).await {
        UploadClaim::Claimed { token } => token,
        other => panic!("{why}: expected a claim, got {other:?}"),
    }
}

fn provider_error(error: &AnalyzeError) -> (&str, bool) {
    match error {
        AnalyzeError::Provider {
            message, retryable, ..
        } => (message.as_str(), *retryable),
        other => panic!("expected a provider error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_film_goes_up_with_the_resumable_handshake_and_every_byte_arrives() {
    let rig = rig(1).await;
    let reply = rig.ask(1).await.expect("an answer");
    assert_eq!(reply.finish, Finish::Complete);
    let shots: Value = serde_json::from_str(&reply.text).expect("echo answers JSON");
    assert_eq!(shots["shots"].as_array().map(Vec::len), Some(2));

    let uploads = rig.fake.uploads();
    assert_eq!(uploads.len(), 1);
    let upload = &uploads[0];
    let bytes = rig.film_bytes();
    assert_eq!(upload.bytes, bytes.len() as u64);
    assert_eq!(upload.digest, fake_gemini::fnv1a(&bytes));
    let start = &upload.start_headers;
    assert_eq!(start["x-goog-upload-protocol"], "resumable");
    assert_eq!(start["x-goog-upload-command"], "start");
    assert_eq!(
        start["x-goog-upload-header-content-length"],
        bytes.len().to_string()
    );
    assert_eq!(start["x-goog-upload-header-content-type"], "video/mp4");
    let display_name = upload.start_body["file"]["display_name"]
        .as_str()
        .unwrap_or("");
    assert!(
        display_name.contains(&rig.video_id.to_string()),
        "{display_name}"
    );
    assert_eq!(
        upload.upload_headers["x-goog-upload-command"],
        "upload, finalize"
    );
    assert_eq!(upload.upload_headers["x-goog-upload-offset"], "0");
    assert_eq!(
        upload.upload_headers["content-length"],
        bytes.len().to_string()
    );
    assert!(!upload.key_sent, "the key went to the upload session URL");

    let generations = rig.fake.generations();
    assert_eq!(generations.len(), 1);
    let call = &generations[0];
    assert_eq!(
        (call.key, call.model.as_str(), call.query.as_deref()),
        (1, DEFAULT_MODEL, None)
    );
    let video = &call.body["contents"][0]["parts"][0];
    assert!(video["file_data"]["file_uri"]
        .as_str()
        .unwrap()
        .ends_with(&upload.name));
    assert_eq!(video["file_data"]["mime_type"], "video/mp4");
    assert_eq!(
        video["video_metadata"],
        json!({"start_offset": "2.000s", "end_offset": "4.000s"})
    );
    assert!(call.body["contents"][0]["parts"][1]["text"]
        .as_str()
        .unwrap()
        .contains("Shot 2:"));
    assert_eq!(
        call.body["system_instruction"]["parts"][0]["text"],
        "You are a film logger."
    );
    let generation = &call.body["generationConfig"];
    assert_eq!(generation["responseMimeType"], "application/json");
    assert_eq!(generation["responseSchema"], schema());
    assert_eq!(generation["maxOutputTokens"], 4096);

    let accounts = rig
        .db
        .upload_accounts(rig.video_id, "gemini")
        .await
        .unwrap();
    let active = AccountUpload {
        account: "1".into(),
        state: UploadState::Active,
    };
    assert_eq!(accounts, [active]);
    assert_eq!(rig.fake.counters().refused_keys, 0);
}

#[tokio::test]
async fn a_processing_file_is_waited_for_until_it_is_active() {
    let rig = rig(1).await;
    rig.fake.set_processing_polls(3);
    let reply = rig.ask(0).await.expect("an answer once the file is active");
    assert_eq!(reply.finish, Finish::Complete);
    let counters = rig.fake.counters();
    assert_eq!(counters.file_polls, 4, "three PROCESSING, then ACTIVE");
    assert_eq!(counters.generate_total(), 1);
    rig.ask(1)
        .await
        .expect("the next chunk uses the active file");
    assert_eq!(rig.fake.counters().file_polls, 4);
    assert_eq!(rig.fake.counters().uploads_started, 1);
}

#[tokio::test]
async fn a_failed_file_is_permanent_for_this_chunk_and_the_later_ones() {
    let rig = rig(2).await;
    rig.fake
        .set_file_outcome(FileOutcome::Failed("unsupported codec".into()));
    let error = rig.ask(0).await.expect_err("a FAILED file");
    let (message, retryable) = provider_error(&error);
    assert!(!retryable, "{error}");
    assert!(message.contains("unsupported codec"), "{message}");
    // Another chunk, whatever its key, fails at once without uploading.
    let _key_one_busy = rig.pool.try_acquire(&[0]).unwrap();
    let again = rig.ask(1).await.expect_err("the film failed");
    assert!(!again.is_retryable(), "{again}");
    let counters = rig.fake.counters();
    assert_eq!(
        (counters.uploads_started, counters.generate_total()),
        (1, 0)
    );
}

#[tokio::test]
async fn five_chunks_asked_at_once_upload_the_film_once() {
    let rig = rig(2).await;
    rig.fake.set_upload_delay(Duration::from_millis(400));
    for round in 1..=2u32 {
        let asks = (0..5).map(|i| rig.ask(i));
        let replies = futures::future::join_all(asks).await;
        for reply in &replies {
            assert_eq!(
                reply.as_ref().expect("every chunk answered").finish,
                Finish::Complete
            );
        }
        let counters = rig.fake.counters();
        assert_eq!(counters.uploads_started, 1, "round {round}: {counters:?}");
        assert_eq!(counters.generate_total(), 5 * round);
        // The file belongs to the uploading key's project: every question
        // went through that key.
        assert_eq!(counters.generate_calls.len(), 1, "{counters:?}");
    }
}

#[tokio::test]
async fn an_answer_cut_at_max_tokens_is_cut_off() {
    let rig = rig(1).await;
    rig.fake
        .script([Reply::MaxTokens("{\"shots\":[{\"shot\":1,".into())]);
    let reply = rig.ask(0).await.expect("an answer");
    assert_eq!(reply.finish, Finish::CutOff("MAX_TOKENS".into()));
    assert_eq!(reply.text, "{\"shots\":[{\"shot\":1,");
}

#[tokio::test]
async fn blocked_answers_say_why() {
    let rig = rig(1).await;
    rig.fake.script([
        Reply::Finish("SAFETY".into()),
        Reply::PromptBlocked("PROHIBITED_CONTENT".into()),
    ]);
    let by_finish = rig.ask(0).await.expect("an answer");
    assert_eq!(by_finish.finish, Finish::Blocked("SAFETY".into()));
    let by_feedback = rig.ask(1).await.expect("an answer");
    assert_eq!(
        by_feedback.finish,
        Finish::Blocked("PROHIBITED_CONTENT".into())
    );
}

#[tokio::test]
async fn a_503_is_tried_again_and_then_answered() {
    let rig = rig(1).await;
    rig.fake.script([Reply::Status(503), Reply::Status(504)]);
    let reply = rig.ask(0).await.expect("answered after the retries");
    assert_eq!(reply.finish, Finish::Complete);
    assert_eq!(rig.fake.counters().generate_total(), 3);
}

#[tokio::test]
async fn a_500_until_the_deadline_fails_retryably_by_the_deadline() {
    let rig = rig(1).await;
    rig.ask(0).await.expect("the film is uploaded first");
    rig.fake.set_fallback(Reply::Status(500));
    let within = Duration::from_secs(3);
    let started = Instant::now();
    let error = rig
        .gemini
        .ask(&rig.chunk(1), &question(within))
        .await
        .expect_err("500 every time");
    let elapsed = started.elapsed();
    let (message, retryable) = provider_error(&error);
    assert!(retryable, "{error}");
    assert!(message.contains("500"), "{message}");
    let calls = rig.fake.counters().generate_total() - 1;
    assert!(calls >= 2, "tried {calls} times");
    // The retries stop for the deadline: all six of them would take more
    // than 20 s. The slack is for a busy machine.
    assert!(elapsed <= within + Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_429_before_any_key_holds_the_film_moves_the_upload_to_the_next_key_at_once() {
    let rig = rig(2).await;
    rig.fake.rate_limit_uploads(1, 1, Duration::from_secs(30));
    let started = Instant::now();
    let reply = rig.ask(0).await.expect("answered with key 2");
    let elapsed = started.elapsed();
    assert_eq!(reply.finish, Finish::Complete);
    let counters = rig.fake.counters();
    assert_eq!(counters.uploads_rate_limited, 1);
    let uploads: Vec<usize> = rig.fake.uploads().iter().map(|u| u.key).collect();
    assert_eq!(uploads, [2]);
    assert_eq!(counters.generate_calls.get(&2), Some(&1));
    let lease = rig.pool.try_acquire(&[0]).expect("key 2 is free");
    assert_eq!(lease.number(), 2, "key 1 rests");
    // A sanity bound only: far under key 1's 30 s rest, so nothing waited
    // for it.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

/// Keys of one Cloud project share its quota: uploading the whole film
/// under another key to dodge one 429 would cost the transfer and meet the
/// same limit.
#[tokio::test]
async fn a_429_on_the_films_key_throttles_the_chunk_instead_of_uploading_the_film_again() {
    let rig = rig(2).await;
    rig.ask(0).await.expect("the film is on key 1");
    rig.fake
        .script_key(1, [Reply::RateLimited(Duration::from_secs(30))]);
    let started = Instant::now();
    let error = rig.ask(1).await.expect_err("key 1 rests");
    let AnalyzeError::Throttled { wait, .. } = error else {
        panic!("expected throttled, got {error:?}");
    };
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    // A sanity bound only: far under key 1's 30 s rest.
    assert!(started.elapsed() < Duration::from_secs(10));
    let counters = rig.fake.counters();
    assert_eq!(counters.uploads_started, 1, "{counters:?}");
    assert_eq!(counters.generate_calls.get(&2), None, "{counters:?}");
    assert_eq!(rig.pool.in_flight(), [0, 0]);
}

#[tokio::test]
async fn a_short_rest_of_the_films_key_is_waited_for_without_uploading_the_film_again() {
    let rig = rig(2).await;
    rig.ask(0).await.expect("the film is on key 1");
    rig.fake
        .script_key(1, [Reply::RateLimited(Duration::from_secs(1))]);
    rig.ask(1)
        .await
        .expect("answered with key 1 after its rest");
    let counters = rig.fake.counters();
    assert_eq!(counters.uploads_started, 1, "{counters:?}");
    assert_eq!(counters.generate_calls.get(&1), Some(&3), "{counters:?}");
}

#[tokio::test]
async fn every_key_rate_limited_throttles_with_the_servers_wait() {
    let rig = rig(2).await;
    rig.fake.rate_limit_uploads(1, 1, Duration::from_secs(30));
    rig.fake.rate_limit_uploads(2, 1, Duration::from_secs(20));
    let started = Instant::now();
    let error = rig.ask(0).await.expect_err("every key is rate-limited");
    // A sanity bound only: far under the keys' 20 s and 30 s rests.
    assert!(started.elapsed() < Duration::from_secs(10));
    let AnalyzeError::Throttled { wait, .. } = error else {
        panic!("expected throttled, got {error:?}");
    };
    assert!(
        wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(rig.pool.in_flight(), [0, 0]);
}

#[tokio::test]
async fn a_file_gemini_lost_is_uploaded_again_once() {
    let rig = rig(1).await;
    rig.ask(0).await.expect("first upload");
    rig.fake.delete_files();
    let reply = rig.ask(1).await.expect("answered after uploading again");
    assert_eq!(reply.finish, Finish::Complete);
    let counters = rig.fake.counters();
    assert_eq!(
        (counters.uploads_started, counters.generate_total()),
        (2, 3)
    );
    // Lost again right after the new upload: not worth a third.
    rig.fake.script([Reply::FileNotFound, Reply::FileNotFound]);
    let error = rig.ask(2).await.expect_err("lost twice");
    assert!(!error.is_retryable(), "{error}");
    assert_eq!(rig.fake.counters().uploads_started, 3);
}

#[tokio::test]
async fn a_missing_source_is_permanent_and_gives_the_claim_back() {
    let rig = rig(1).await;
    let mut request = rig.chunk(0);
    request.source = "/nonexistent/shotlist-film.mp4".into();
    let error = rig
        .gemini
        .ask(&request, &question(Duration::from_secs(10)))
        .await
        .expect_err("no such file");
    assert!(
        matches!(error, AnalyzeError::SourceMissing { .. }),
        "{error:?}"
    );
    let slot = UploadSlot::new(rig.video_id, "gemini", 1);
    let claimed = claim(&rig.db, &slot, Duration::from_secs(60)).await;
    assert!(
        matches!(claimed, UploadClaim::Claimed { .. }),
        "{claimed:?}"
    );
}

#[tokio::test]
async fn a_film_at_an_http_url_is_streamed_into_the_upload() {
    let rig = rig(1).await;
    let bytes = rig.film_bytes();
    let served = bytes.clone();
    let app = axum::Router::new().route(
        "/films/{name}",
        axum::routing::get(move || {
            let served = served.clone();
            async move { served }
        }),
    );
    let server = FakeServer::start(app);
    let mut request = rig.chunk(2);
    request.source = format!("{}/films/film.mov?signature=secret", server.base_url());
    let reply = rig
        .gemini
        .ask(&request, &question(Duration::from_secs(20)))
        .await
        .expect("an answer");
    assert_eq!(reply.finish, Finish::Complete);
    let upload = &rig.fake.uploads()[0];
    assert_eq!(upload.digest, fake_gemini::fnv1a(&bytes));
    assert_eq!(
        upload.start_headers["x-goog-upload-header-content-type"],
        "video/mov"
    );
}

#[tokio::test]
async fn logs_name_keys_by_number_and_never_show_a_key_even_one_gemini_quotes() {
    let capture = logs::capture();
    let rig = rig(2).await;

    rig.fake.rate_limit_uploads(1, 1, Duration::from_secs(30));
    rig.fake.script_key(2, [Reply::StatusQuotingKey(400)]);
    let error = rig.ask(0).await.expect_err("a 400 on key 2");
    let (message, retryable) = provider_error(&error);
    assert!(
        !retryable && message.contains("INVALID_ARGUMENT"),
        "{message}"
    );
    assert!(message.contains("key 2"), "{message}");

    let logs = capture.text();
    assert!(
        logs.contains("generateContent request"),
        "bodies at trace level"
    );
    assert!(
        logs.contains("API key [key] not valid"),
        "the body, scrubbed"
    );
    assert!(logs.contains("key=1") && logs.contains("key=2"), "{logs}");
    for value in &rig.keys {
        assert!(!logs.contains(value.as_str()), "a key value was logged");
        assert!(!format!("{error} {error:?}").contains(value.as_str()));
    }
    assert!(!logs.contains("AIzaFAKE"), "part of a key was logged");
}

/// The film comes from a presigned URL, whose signature is a credential,
/// and the source breaks while its bytes are sent to Gemini.
#[tokio::test]
async fn a_film_url_that_breaks_mid_upload_shows_its_signature_nowhere() {
    let capture = logs::capture();
    let rig = rig(1).await;
    let app = axum::Router::new().route("/films/{name}", axum::routing::get(broken_film));
    let server = FakeServer::start(app);
    let mut request = rig.chunk(0);
    request.source = format!(
        "{}/films/film.mp4?X-Amz-Credential=AKIAFAKE&X-Amz-Signature=FAKESIGNATURE0123",
        server.base_url()
    );
    let error = rig
        .gemini
        .ask(&request, &question(Duration::from_secs(6)))
        .await
        .expect_err("the source broke");
    assert!(error.is_retryable(), "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("FAKESIGNATURE"), "{shown}");
    let leaked: Vec<String> = capture
        .text()
        .lines()
        .filter(|line| line.contains("FAKESIGNATURE"))
        .map(str::to_string)
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// A film served with a length it never delivers: part of it, then the
/// connection breaks.
async fn broken_film() -> axum::response::Response {
    let stream = futures::stream::unfold(0u32, |step| async move {
        match step {
            0 => Some((Ok(axum::body::Bytes::from(vec![0u8; 64 * 1024])), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Err(std::io::Error::other("storage node went away")), 2))
            }
            _ => None,
        }
    });
    axum::response::Response::builder()
        .header("content-length", (1024 * 1024).to_string())
        .header("content-type", "video/mp4")
        .body(axum::body::Body::from_stream(stream))
        .expect("a valid response")
}

/// Another worker holds the upload claim: the chunk waits a little for it,
/// then goes back to the queue (deferred, not a failed attempt) until about
/// when the claim runs out, and never after its own deadline.
#[tokio::test]
async fn a_chunk_waiting_for_another_workers_upload_is_deferred_for_the_claims_time() {
    let rig = rig(1).await;
    let slot = UploadSlot::new(rig.video_id, "gemini", 1);
    claim_token(&rig.db, &slot, Duration::from_secs(45), "another worker").await;
    let started = Instant::now();
    let error = rig.ask(0).await.expect_err("the other worker uploads");
    let elapsed = started.elapsed();
    let AnalyzeError::Deferred { reason, wait, .. } = &error else {
        panic!("expected deferred, got {error:?}");
    };
    assert!(
        reason.contains("another worker is uploading the film"),
        "{reason}"
    );
    assert!(error.is_retryable() && error.retry_after() == Some(*wait));
    assert!(
        *wait > Duration::from_secs(35) && *wait <= Duration::from_secs(45),
        "{wait:?}"
    );
    // It waited as long as it may, not until its 20 s deadline. Sanity
    // bounds, with room for a busy machine.
    assert!(
        elapsed >= UPLOAD_WAIT - Duration::from_millis(100),
        "{elapsed:?}"
    );
    assert!(
        elapsed < UPLOAD_WAIT + Duration::from_secs(3),
        "{elapsed:?}"
    );

    let within = Duration::from_millis(1500);
    let started = Instant::now();
    let error = rig
        .gemini
        .ask(&rig.chunk(1), &question(within))
        .await
        .expect_err("still uploading");
    assert!(matches!(error, AnalyzeError::Deferred { .. }), "{error:?}");
    assert!(started.elapsed() <= within, "{:?}", started.elapsed());
    let counters = rig.fake.counters();
    assert_eq!(
        (counters.uploads_started, counters.generate_total()),
        (0, 0)
    );
}

/// The film is processing under key 1, which rests: key 2 neither uploads
/// it again nor fails; the chunk is deferred.
#[tokio::test]
async fn a_chunk_waiting_for_gemini_to_process_the_film_under_a_resting_key_is_deferred() {
    let rig = rig(2).await;
    rig.fake.set_processing_polls(1_000);
    let slot = UploadSlot::new(rig.video_id, "gemini", 1);
    let token = claim_token(&rig.db, &slot, Duration::from_secs(60), "the upload").await;
    let file = ProviderFile {
        name: "files/processing1".into(),
        uri: format!("{}/v1beta/files/processing1", rig.fake.base_url()),
        mime_type: "video/mp4".into(),
        expire_time: None,
    };
    assert!(rig
        .db
        .save_upload(&slot, Some(token), &file, false)
        .await
        .unwrap());
    rig.pool.rest(0, Duration::from_secs(60));
    let error = rig.ask(0).await.expect_err("key 1 rests");
    let AnalyzeError::Deferred { reason, .. } = &error else {
        panic!("expected deferred, got {error:?}");
    };
    assert!(reason.contains("processing the film (key 1)"), "{reason}");
    assert_eq!(rig.fake.counters().uploads_started, 0);
}

/// The worker that held the claim died (its deadline is the claim's end):
/// a chunk that may wait past the claim's end takes the upload over.
#[tokio::test]
async fn a_dead_workers_claim_is_taken_over_once_it_runs_out() {
    let rig = rig(1).await;
    let slot = UploadSlot::new(rig.video_id, "gemini", 1);
    claim_token(&rig.db, &slot, Duration::from_secs(1), "a dying worker").await;
    let started = Instant::now();
    rig.ask(0)
        .await
        .expect("taken over after the claim ran out");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rig.fake.counters().uploads_finalized, 1);
}

/// An upload dropped midway (Ctrl-C, a task aborted because another chunk
/// failed) gives its claim back: the next chunk uploads at once rather
/// than waiting out the claim (here a minute).
#[tokio::test]
async fn an_upload_dropped_midway_gives_its_claim_back_at_once() {
    let rig = rig(1).await;
    rig.fake.set_upload_delay(Duration::from_secs(5));
    let (request, long) = (rig.chunk(0), question(Duration::from_secs(60)));
    let first = rig.gemini.ask(&request, &long);
    let dropped = tokio::time::timeout(Duration::from_millis(800), first).await;
    assert!(dropped.is_err(), "the first ask was dropped mid-upload");
    assert_eq!(rig.pool.in_flight(), [0], "the key was given back");
    rig.fake.set_upload_delay(Duration::ZERO);
    let reply = rig
        .gemini
        .ask(&rig.chunk(1), &question(Duration::from_secs(8)))
        .await
        .expect("the next chunk uploads at once");
    assert_eq!(reply.finish, Finish::Complete);
    assert_eq!(rig.fake.counters().uploads_started, 2);
}

/// A file left PROCESSING under a key no longer in the list (shortened or
/// reordered): no key can poll it, so it must not hold the film up.
#[tokio::test]
async fn a_processing_file_under_a_removed_key_does_not_block_the_film() {
    let rig = rig(1).await;
    let removed = UploadSlot::new(rig.video_id, "gemini", 5);
    let token = claim_token(&rig.db, &removed, Duration::from_secs(60), "key 5").await;
    let file = ProviderFile {
        name: "files/old5".into(),
        uri: format!("{}/v1beta/files/old5", rig.fake.base_url()),
        mime_type: "video/mp4".into(),
        expire_time: None,
    };
    assert!(rig
        .db
        .save_upload(&removed, Some(token), &file, false)
        .await
        .unwrap());
    let reply = rig.ask(0).await.expect("key 1 uploads the film itself");
    assert_eq!(reply.finish, Finish::Complete);
    assert_eq!(rig.fake.uploads()[0].key, 1);
}

/// A film that takes longer to send than one chunk's time: the upload must
/// fit in one chunk's deadline (a documented limit), and an attempt that
/// runs out says it was the upload, gives its claim back for the next
/// attempt, and may be tried again.
#[tokio::test]
async fn an_upload_slower_than_the_chunks_time_fails_the_attempt_saying_so() {
    let rig = rig(1).await;
    rig.fake.set_upload_delay(Duration::from_secs(3));
    for attempt in 0..2 {
        let error = rig
            .gemini
            .ask(&rig.chunk(attempt), &question(Duration::from_secs(2)))
            .await
            .expect_err("the upload cannot finish in 2 s");
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains("sending the film"), "{error}");
    }
    assert_eq!(
        rig.fake.counters().uploads_started,
        2,
        "the claim was given back"
    );
    assert_eq!(rig.fake.counters().uploads_finalized, 0);
}

#[tokio::test]
async fn claims_of_one_film_let_exactly_one_worker_upload() {
    let (db, _) = fresh_db().await;
    let video_id = described_film(&db, FILM_FRAMES, "25/1").await;
    let slots: Vec<UploadSlot> = (1..=2)
        .map(|n| UploadSlot::new(video_id, "gemini", n))
        .collect();
    let hold = Duration::from_secs(60);
    let claims = futures::future::join_all((0..10).map(|i| claim(&db, &slots[i % 2], hold))).await;
    let mut claimed = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        match claim {
            UploadClaim::Claimed { token } => claimed.push((i % 2, *token)),
            UploadClaim::Busy { .. } => {}
            other => panic!("unexpected claim {other:?}"),
        }
    }
    assert_eq!(claimed.len(), 1, "{claims:?}");
    let (holder, token) = claimed[0];
    let (mine, other) = (&slots[holder], &slots[1 - holder]);
    let file = ProviderFile {
        name: "files/abc".into(),
        uri: "https://example.invalid/v1beta/files/abc".into(),
        mime_type: "video/mp4".into(),
        expire_time: Some("2099-01-01T00:00:00Z".into()),
    };
    assert!(!db
        .save_upload(mine, Some(Uuid::new_v4()), &file, false)
        .await
        .unwrap());
    assert!(db
        .save_upload(mine, Some(token), &file, false)
        .await
        .unwrap());
    match claim(&db, mine, hold).await {
        UploadClaim::Processing { file: seen, .. } => assert_eq!(
            seen,
            ProviderFile {
                expire_time: None,
                ..file.clone()
            }
        ),
        other => panic!("expected processing, got {other:?}"),
    }
    let busy = claim(&db, other, hold).await;
    assert!(
        matches!(busy, UploadClaim::Busy { wait: None, .. }),
        "{busy:?}"
    );
    assert!(
        db.save_upload(mine, None, &file, true).await.unwrap(),
        "anyone may activate it"
    );
    assert!(matches!(
        claim(&db, mine, hold).await,
        UploadClaim::Ready(_)
    ));
    let accounts = db.upload_accounts(video_id, "gemini").await.unwrap();
    assert_eq!(
        accounts,
        [AccountUpload {
            account: mine.account.clone(),
            state: UploadState::Active
        }]
    );
    // The other account has no file and nothing is under way: it uploads.
    let second = claim_token(&db, other, hold, "the other account may upload now").await;
    assert!(db.release_upload(other, second).await.unwrap());

    assert!(!db.forget_upload(mine, "files/other").await.unwrap());
    assert!(db.forget_upload(mine, "files/abc").await.unwrap());
    assert!(matches!(
        claim(&db, mine, hold).await,
        UploadClaim::Claimed { .. }
    ));
}

#[tokio::test]
async fn expired_files_and_dead_claims_are_taken_over_and_failures_stick() {
    let (db, url) = fresh_db().await;
    let video_id = described_film(&db, FILM_FRAMES, "25/1").await;
    let slot = UploadSlot::new(video_id, "gemini", 1);
    let hold = Duration::from_secs(60);
    let dead = claim_token(&db, &slot, Duration::from_secs(1), "first claim").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = claim_token(&db, &slot, hold, "a dead claim is taken over").await;
    let file = ProviderFile {
        name: "files/x1".into(),
        uri: "u".into(),
        mime_type: "video/mp4".into(),
        expire_time: Some("not a time".into()),
    };
    assert!(!db
        .save_upload(&slot, Some(dead), &file, true)
        .await
        .unwrap());
    assert!(db
        .save_upload(&slot, Some(token), &file, true)
        .await
        .unwrap());

    // Files live 48 h; the record counts 47 from the claim.
    let client = connect(&url).await;
    let hours: f64 = client
        .query_typed_one(
            "SELECT (extract(epoch FROM expires_at - upload_started_at) / 3600)::float8 \
             FROM shotlist.provider_files WHERE video_id = $1",
            &[(&video_id, Type::UUID)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hours, 47.0);
    client
        .execute_typed(
            "UPDATE shotlist.provider_files \
             SET expires_at = now() - interval '1 second' \
             WHERE video_id = $1",
            &[(&video_id, Type::UUID)],
        )
        .await
        .unwrap();
    assert!(db
        .upload_accounts(video_id, "gemini")
        .await
        .unwrap()
        .is_empty());
    let token = claim_token(&db, &slot, hold, "an expired file is uploaded again").await;
    let file = ProviderFile {
        name: "files/x2".into(),
        ..file
    };
    assert!(db
        .save_upload(&slot, Some(token), &file, false)
        .await
        .unwrap());
    assert!(db
        .fail_upload(&slot, None, Some("files/x2"), "bad codec")
        .await
        .unwrap());
    for account in [1, 2] {
        let slot = UploadSlot::new(video_id, "gemini", account);
        let expected = UploadClaim::Failed {
            account: "1".into(),
            error: "bad codec".into(),
        };
        assert_eq!(claim(&db, &slot, hold).await, expected);
    }
}

#[tokio::test]
async fn only_the_service_role_may_touch_provider_files() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let functions = [
        "public.claim_provider_file(uuid, text, text, double precision, text[])",
        "public.save_provider_file(uuid, text, text, uuid, text, text, text, boolean, text)",
        "public.fail_provider_file(uuid, text, text, uuid, text, text)",
        "public.release_provider_file(uuid, text, text, uuid)",
        "public.forget_provider_file(uuid, text, text, text)",
        "public.provider_file_accounts(uuid, text)",
    ];
    let roles = [
        ("service_role", true),
        ("anon", false),
        ("authenticated", false),
    ];
    for function in functions {
        for (role, allowed) in roles {
            let may: bool = client
                .query_typed_one(
                    "SELECT has_function_privilege($1, $2, 'EXECUTE')",
                    &[(&role, Type::TEXT), (&function, Type::TEXT)],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(may, allowed, "{role} on {function}");
        }
    }
    for (role, allowed) in roles {
        let may: bool = client
            .query_typed_one(
                "SELECT has_table_privilege($1, 'shotlist.provider_files', 'SELECT')",
                &[(&role, Type::TEXT)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(may, allowed, "{role} on shotlist.provider_files");
    }
}

#[tokio::test]
async fn the_provider_files_migration_applies_again_over_itself() {
    let (db, url) = fresh_db().await;
    let video_id = described_film(&db, FILM_FRAMES, "25/1").await;
    let slot = UploadSlot::new(video_id, "gemini", 1);
    let first = claim(&db, &slot, Duration::from_secs(60)).await;
    let (_, sql) = MIGRATIONS
        .iter()
        .find(|(name, _)| *name == "0003_provider_files")
        .expect("the migration is listed");
    connect(&url)
        .await
        .batch_execute(sql)
        .await
        .expect("applied again");
    // The row survived, and the claim it holds still counts.
    let again = claim(&db, &slot, Duration::from_secs(60)).await;
    assert!(matches!(first, UploadClaim::Claimed { .. }));
    assert!(matches!(again, UploadClaim::Busy { .. }), "{again:?}");
}
