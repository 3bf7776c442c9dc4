//! The 49-minute generated film through the local runner with the Gemini
//! analyzer, against the fake Gemini server on 127.0.0.1: every chunk is
//! described by the model, the film is uploaded once, and every cut is the
//! frame the local detector measured, though the model's times are off by a
//! few milliseconds.

use std::sync::atomic::{AtomicU32, Ordering};

use shotlist_shared::analyzer::setup::{self, AnalyzerKind, AnalyzerSetup};
use shotlist_shared::model::ShotType;
use shotlist_shared::runner::{run_local, run_with, RunEvent, RunOptions};
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::Fps;
use shotlist_tests::fake_gemini::{keys, FakeGemini};
use shotlist_tests::film::{cuts_49_minutes, film_dir, make_film};
use shotlist_tests::pg::fresh_db;

fn starts(sheet: &Sheet) -> Vec<i64> {
    sheet.shots.iter().map(|s| s.start_frame).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_49_minute_film_through_fake_gemini_keeps_every_cut_and_takes_the_models_words() {
    let fps = Fps::new(25, 1).unwrap();
    let (cuts, frames) = cuts_49_minutes(fps);
    let film = make_film(&film_dir(), fps, &cuts, frames, true);
    let keys = keys(2);
    let fake = FakeGemini::start(keys.clone());
    let (db, _) = fresh_db().await;
    let analyzer = model_analyzer(AnalyzerKind::Gemini, fake.base_url(), &keys, &db);
    let done = AtomicU32::new(0);
    let on_event = |event: RunEvent| {
        if let RunEvent::ChunkDone { .. } = event {
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let options = RunOptions::default();
    let sheet = run_with(&db, &film.path, &options, analyzer, &on_event)
        .await
        .expect("the run succeeds");

    assert_eq!(
        (
            sheet.total_chunks,
            sheet.completed_chunks,
            sheet.failed_chunks
        ),
        (18, 18, 0)
    );
    assert_eq!(done.load(Ordering::SeqCst), 18);
    assert_eq!(sheet.status, SheetStatus::Complete);

    // The model saw the film once and was asked once per chunk.
    let seen = fake.counters();
    assert_eq!(seen.uploads_finalized, 1, "{seen:?}");
    assert_eq!(seen.generate_total(), 18, "{seen:?}");

    // Every shot is described by the model, typed as it said, and the
    // off-screen lines it heard are kept.
    for shot in &sheet.shots {
        assert!(
            shot.description.contains("fake model: shot"),
            "shot {} is not the model's: {:?}",
            shot.number,
            shot.description
        );
        assert_eq!(shot.shot_type, ShotType::Medium, "shot {}", shot.number);
    }
    let lines: Vec<_> = sheet.shots.iter().flat_map(|s| &s.dialogue).collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l.offscreen && l.line.starts_with("fake line")));

    // The cuts are exactly the film's, and exactly what the local analyzer
    // alone finds: the model's jittered times moved none of them.
    let found = &starts(&sheet)[1..];
    assert_eq!(found.len(), film.cuts.len(), "a cut was added or lost");
    for (f, e) in found.iter().zip(&film.cuts) {
        assert!((f - e).abs() <= 1, "cut {e} came out at {f}");
    }
    let (local_db, _) = fresh_db().await;
    let local = run_local(&local_db, &film.path, &options, &|_| {})
        .await
        .expect("the local run succeeds");
    assert_eq!(starts(&sheet), starts(&local));
}

/// A model analyzer for `kind` against a fake at `base_url` with `keys`.
fn model_analyzer(
    kind: AnalyzerKind,
    base_url: &str,
    keys: &[String],
    db: &shotlist_shared::db::Db,
) -> std::sync::Arc<dyn shotlist_shared::analyzer::Analyzer> {
    let (keys_var, url_var) = match kind {
        AnalyzerKind::Gemini => ("GEMINI_API_KEYS", "GEMINI_BASE_URL"),
        _ => ("REPLICATE_API_TOKENS", "REPLICATE_BASE_URL"),
    };
    let vars = [
        (keys_var.to_string(), keys.join(",")),
        (url_var.to_string(), base_url.to_string()),
    ];
    let var = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let setup = AnalyzerSetup {
        kind,
        ..AnalyzerSetup::default()
    };
    setup::build(&setup, &var, db)
        .expect("the analyzer is configured")
        .analyzer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replicate_key_rate_limited_sends_the_chunk_back_without_spending_an_attempt() {
    use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
    use shotlist_tests::fake_replicate::{keys, FakeReplicate};

    let film = shotlist_tests::film::city_footage();
    let media = shotlist_shared::probe::probe(&film).await.expect("probe");
    let (db, _) = fresh_db().await;
    let video_id = uuid::Uuid::new_v4();
    db.register_film(
        video_id,
        &film.to_string_lossy(),
        &media,
        Default::default(),
    )
    .await
    .expect("register");
    let keys = keys(2);
    let limited = FakeReplicate::start(keys.clone());
    limited.throttle(1, 30);
    limited.throttle(2, 30);
    let analyzer = model_analyzer(AnalyzerKind::Replicate, limited.base_url(), &keys, &db);
    let config = WorkerConfig::default();
    for _ in 0..3 {
        let done = process_chunk(&db, analyzer.as_ref(), video_id, 0, &config)
            .await
            .expect("the database answers");
        let Done::Retry {
            error,
            retry_after: Some(wait),
        } = &done
        else {
            panic!("expected a throttled retry, got {done:?}");
        };
        assert!(error.contains("rate-limited"), "{error}");
        assert!(wait.as_secs() >= 20 && wait.as_secs() <= 30, "{wait:?}");
        let chunk = &db.chunk_progress(video_id).await.expect("progress")["chunks"][0];
        assert_eq!(
            (chunk["status"].as_str(), chunk["attempts"].as_i64()),
            (Some("pending"), Some(0))
        );
    }

    // The limit passed: the next attempt is the chunk's first.
    let free = FakeReplicate::start(keys.clone());
    let analyzer = model_analyzer(AnalyzerKind::Replicate, free.base_url(), &keys, &db);
    let done = process_chunk(&db, analyzer.as_ref(), video_id, 0, &config)
        .await
        .expect("the database answers");
    assert!(matches!(done, Done::Completed(_)), "{done:?}");
    let chunk = &db.chunk_progress(video_id).await.expect("progress")["chunks"][0];
    assert_eq!(
        (chunk["status"].as_str(), chunk["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
    let sheet = db.finalize(video_id).await.expect("finalize");
    assert!(
        sheet
            .shots
            .iter()
            .all(|s| s.description.starts_with("fake replicate")),
        "{:?}",
        sheet.shots
    );
}
