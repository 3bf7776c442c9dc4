//! The main job end to end: a generated 49-minute film with a known cut list
//! goes through the local runner (real ffmpeg, real PostgreSQL) and comes out
//! as a sheet with exactly that cut list, at 25 and at 23.976 fps.

use std::sync::atomic::{AtomicU32, Ordering};

use shotlist_shared::plan::{self, PlanParams};
use shotlist_shared::runner::{run_local, RunEvent, RunOptions};
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::{self, Fps};
use shotlist_tests::film::{cuts_49_minutes, film_dir, make_film, Film};
use shotlist_tests::pg::fresh_db;

fn film_49_minutes(fps: Fps) -> Film {
    let (cuts, duration_frames) = cuts_49_minutes(fps);
    make_film(&film_dir(), fps, &cuts, duration_frames, true)
}

async fn run(film: &Film, options: &RunOptions) -> (Sheet, u32) {
    let (db, _) = fresh_db().await;
    let done = AtomicU32::new(0);
    let on_event = |event: RunEvent| {
        if let RunEvent::ChunkDone { .. } = event {
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let sheet = run_local(&db, &film.path, options, &on_event)
        .await
        .expect("the run succeeds");
    (sheet, done.load(Ordering::SeqCst))
}

fn starts(sheet: &Sheet) -> Vec<i64> {
    sheet.shots.iter().map(|s| s.start_frame).collect()
}

/// Every expected cut is found within one frame, and nothing else is.
fn assert_same_cuts(found: &[i64], expected: &[i64]) {
    let missing: Vec<i64> = expected
        .iter()
        .copied()
        .filter(|e| !found.iter().any(|f| (f - e).abs() <= 1))
        .collect();
    let extra: Vec<i64> = found
        .iter()
        .copied()
        .filter(|f| !expected.iter().any(|e| (f - e).abs() <= 1))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing cuts {missing:?}, extra cuts {extra:?}"
    );
    assert_eq!(found.len(), expected.len(), "a cut was doubled");
}

fn assert_contiguous(sheet: &Sheet, fps: Fps) {
    assert_eq!(sheet.shots[0].start, "00:00:00:00");
    assert_eq!(sheet.shots.last().unwrap().end_frame, sheet.duration_frames);
    for (n, shot) in sheet.shots.iter().enumerate() {
        assert_eq!(shot.number as usize, n + 1);
        assert_eq!(
            time::parse_timecode(&shot.start, fps).unwrap(),
            shot.start_frame
        );
        assert_eq!(
            time::parse_timecode(&shot.end, fps).unwrap(),
            shot.end_frame
        );
    }
    for w in sheet.shots.windows(2) {
        assert_eq!(w[0].end_frame, w[1].start_frame);
    }
}

async fn film_gives_its_cut_list(fps: Fps) {
    let film = film_49_minutes(fps);
    let (sheet, done) = run(&film, &RunOptions::default()).await;
    assert_eq!(sheet.total_chunks, 18);
    assert_eq!(
        (sheet.completed_chunks, sheet.failed_chunks, done),
        (18, 0, 18)
    );
    assert_eq!(sheet.status, SheetStatus::Complete);
    assert_eq!(sheet.fps, fps.to_string());
    assert_eq!(sheet.duration_frames, film.duration_frames);
    assert_contiguous(&sheet, fps);
    assert_same_cuts(&starts(&sheet)[1..], &film.cuts);

    // The same analyzer over the whole film in one pass finds the same cuts:
    // chunking adds, drops and moves nothing.
    let whole = PlanParams {
        chunk_seconds: 4000.0,
        overlap_seconds: 15.0,
    };
    let (one_pass, _) = run(
        &film,
        &RunOptions {
            plan: whole,
            ..RunOptions::default()
        },
    )
    .await;
    assert_eq!(one_pass.total_chunks, 1);
    assert_eq!(starts(&one_pass), starts(&sheet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_49_minute_film_at_25_fps_gives_18_chunks_and_exactly_its_cuts() {
    film_gives_its_cut_list(Fps::new(25, 1).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_49_minute_film_at_23_976_fps_gives_18_chunks_and_exactly_its_cuts() {
    film_gives_its_cut_list(Fps::new(24000, 1001).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cut_list_exercises_every_seam_case() {
    // Guards the test film itself: without these cases the tests above would
    // prove less than they claim.
    for fps in [Fps::new(25, 1).unwrap(), Fps::new(24000, 1001).unwrap()] {
        let (cuts, frames) = cuts_49_minutes(fps);
        let chunks = plan::plan_frames(frames, fps, PlanParams::default()).unwrap();
        let regions = plan::regions(&chunks);
        let has = |f: i64| cuts.contains(&f);
        assert!(
            chunks[1..].iter().filter(|c| has(c.start_frame)).count() >= 2,
            "cuts at chunk starts"
        );
        assert!(
            chunks[1..].iter().any(|c| has(c.start_frame - 1)),
            "a cut one frame before a chunk start"
        );
        assert!(
            regions[..17].iter().any(|r| has(r.1 - 1)),
            "a cut one frame before a seam"
        );
        assert!(
            regions[..17].iter().any(|r| has(r.1)),
            "a cut exactly at a seam"
        );
        let in_overlap = |f: i64| {
            chunks
                .windows(2)
                .any(|w| f > w[1].start_frame && f < w[0].end_frame)
        };
        assert!(
            cuts.iter().filter(|&&f| in_overlap(f)).count() >= 5,
            "cuts inside overlaps"
        );
        let shots: Vec<i64> = [0]
            .iter()
            .chain(&cuts)
            .chain([frames].iter())
            .copied()
            .collect::<Vec<_>>();
        for w in shots.windows(2) {
            let seconds = (w[1] - w[0]) as f64 / fps.as_f64();
            assert!((0.45..=30.05).contains(&seconds), "shot of {seconds} s");
        }
    }
}

#[tokio::test]
async fn a_film_that_cannot_be_probed_registers_nothing() {
    let (db, url) = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a film\n").unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.mp4");
    for film in [&text, &empty, &missing] {
        let ignore = |_: RunEvent| {};
        let err = run_local(&db, film, &RunOptions::default(), &ignore)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&film.display().to_string()), "{err}");
    }
    let client = shotlist_tests::pg::connect(&url).await;
    let videos: i64 = client
        .query_one("SELECT count(*) FROM shotlist.videos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(videos, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_with_the_id_of_an_interrupted_one_resumes_it_and_gives_the_same_sheet() {
    use shotlist_shared::analyzer::LocalAnalyzer;
    use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};

    let fps = Fps::new(25, 1).unwrap();
    let cuts = [250, 4100, 4150, 8300, 12_000, 13_500];
    let film = make_film(&film_dir(), fps, &cuts, 15_000, true);
    let (uninterrupted, _) = run(&film, &RunOptions::default()).await;

    // The first run registered the film and finished chunks 0 and 2, then
    // died; the second is given its id.
    let (db, _) = fresh_db().await;
    let video_id = uuid::Uuid::new_v4();
    let media = shotlist_shared::probe::probe(&film.path).await.unwrap();
    let source = film.path.canonicalize().unwrap();
    let total = db
        .register_film(
            video_id,
            &source.to_string_lossy(),
            &media,
            PlanParams::default(),
        )
        .await
        .unwrap();
    assert_eq!(total, 4);
    for index in [0, 2] {
        let done = process_chunk(
            &db,
            &LocalAnalyzer::default(),
            video_id,
            index,
            &WorkerConfig::default(),
        )
        .await
        .unwrap();
        assert!(matches!(done, Done::Completed(_)), "{done:?}");
    }
    let options = RunOptions {
        video_id: Some(video_id),
        ..RunOptions::default()
    };
    let ignore = |_: RunEvent| {};
    let resumed = run_local(&db, &film.path, &options, &ignore).await.unwrap();

    assert_eq!(resumed.video_id, video_id);
    assert_eq!(resumed.shots, uninterrupted.shots);
    assert_eq!(resumed.status, SheetStatus::Complete);
    let progress = db.chunk_progress(video_id).await.unwrap();
    let attempts: Vec<i64> = (0..4)
        .map(|i| progress["chunks"][i]["attempts"].as_i64().unwrap())
        .collect();
    assert_eq!(
        attempts,
        vec![1, 1, 1, 1],
        "finished chunks were not analyzed again"
    );

    // A third run with the same id finds the sheet and returns it unchanged.
    let again = run_local(&db, &film.path, &options, &ignore).await.unwrap();
    assert_eq!(again, resumed);
}
