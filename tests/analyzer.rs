//! The local analyzer against ground truth: real footage, and generated films
//! whose cut lists and sound are known to the frame.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::stream::{self, StreamExt};
use shotlist_shared::analyzer::{
    check_analysis, cuts_of, AnalyzeError, Analyzer, ChunkRequest, LocalAnalyzer,
};
use shotlist_shared::model::{ChunkAnalysis, ShotType};
use shotlist_shared::plan::{plan_frames, PlanParams};
use shotlist_shared::probe::{probe, MediaInfo};
use shotlist_shared::time::Fps;
use shotlist_tests::film::{
    cuts_49_minutes, film_dir, make_film, tone_seconds, with_delayed_video, Film,
};

fn city() -> PathBuf {
    shotlist_tests::film::city_footage()
}

fn fps(s: &str) -> Fps {
    s.parse().unwrap()
}

fn request(path: &Path, media: &MediaInfo, chunk_index: u32, start: i64, end: i64) -> ChunkRequest {
    ChunkRequest {
        video_id: uuid::Uuid::nil(),
        chunk_index,
        source: path.display().to_string(),
        media: media.clone(),
        start_frame: start,
        end_frame: end,
        deadline: None,
    }
}

/// Analyzes `[start, end)` of `path`; returns the analysis, checked against
/// the contract, and its cuts in absolute frames.
async fn analyze(
    path: &Path,
    media: &MediaInfo,
    start: i64,
    end: i64,
) -> (ChunkAnalysis, Vec<i64>) {
    let started = Instant::now();
    let analysis = LocalAnalyzer::default()
        .analyze(&request(path, media, 0, start, end))
        .await
        .unwrap();
    check_analysis(end - start, &analysis).unwrap();
    let cuts: Vec<i64> = cuts_of(&analysis).iter().map(|c| c + start).collect();
    eprintln!(
        "[{start}, {end}) of {}: {} cuts in {:.2} s",
        path.display(),
        cuts.len(),
        started.elapsed().as_secs_f64()
    );
    (analysis, cuts)
}

/// A 60-second film with cuts at awkward places: on a keyframe (frame 300 at
/// 25 fps), a 12-frame shot, shots of half a second, and the rest anywhere.
fn minute_film(rate: &str, with_audio: bool) -> Film {
    let fps = fps(rate);
    let seconds = [
        1.48, 5.2, 9.96, 12.0, 17.3, 22.0, 22.5, 30.04, 36.6, 41.0, 47.7, 53.2, 58.9,
    ];
    let mut cuts: Vec<i64> = seconds.iter().map(|&s| fps.frame_at(s)).collect();
    cuts.push(cuts[0] + 12);
    cuts.sort_unstable();
    make_film(&film_dir(), fps, &cuts, fps.frame_at(60.0), with_audio)
}

#[tokio::test]
async fn city_footage_as_one_chunk_has_one_real_cut_at_frame_116() {
    let media = probe(&city()).await.unwrap();
    let (analysis, cuts) = analyze(&city(), &media, 0, 190).await;
    // The footage cuts from one group of towers to another 4.64 s in
    // (frame 116, scene score 0.41); nothing else scores above 0.08.
    assert_eq!(cuts, [116]);
    assert_eq!(analysis.shots[0].description, "no audio track");
    assert_eq!(analysis.shots[1].description, "no audio track");
    assert!(analysis
        .shots
        .iter()
        .all(|s| s.shot_type == ShotType::Other && s.dialogue.is_empty()));
}

#[tokio::test]
async fn city_footage_chunks_starting_between_keyframes_see_the_same_cut() {
    let media = probe(&city()).await.unwrap();
    // Keyframes every 12 frames (..., 108, 120); without the analyzer's
    // pre-roll, ffmpeg's seek in this MPEG program stream would land after
    // the target for most of these starts.
    for start in [1, 50, 100, 103, 109, 113, 114, 115] {
        let (_, cuts) = analyze(&city(), &media, start, 190).await;
        assert_eq!(cuts, [116], "chunk starting at {start}");
    }
    for start in [116, 117, 150] {
        assert_eq!(
            analyze(&city(), &media, start, 190).await.1,
            [] as [i64; 0],
            "start {start}"
        );
    }
    assert_eq!(analyze(&city(), &media, 0, 116).await.1, [] as [i64; 0]);
    assert_eq!(analyze(&city(), &media, 0, 117).await.1, [116]);
}

async fn whole_film_gives_exactly_its_cuts(film: Film) {
    let media = probe(&film.path).await.unwrap();
    let (analysis, cuts) = analyze(&film.path, &media, 0, film.duration_frames).await;
    eprintln!(
        "{} fps: expected {:?}\n found    {cuts:?}",
        film.fps, film.cuts
    );
    assert_eq!(cuts, film.cuts);
    assert_eq!(analysis.shots.len(), film.cuts.len() + 1);
}

#[tokio::test]
async fn a_minute_at_25_fps_as_one_chunk_gives_exactly_its_cuts() {
    whole_film_gives_exactly_its_cuts(minute_film("25/1", false)).await;
}

#[tokio::test]
async fn a_minute_at_23_976_fps_as_one_chunk_gives_exactly_its_cuts() {
    whole_film_gives_exactly_its_cuts(minute_film("24000/1001", false)).await;
}

#[tokio::test]
async fn a_shot_of_12_frames_is_found() {
    let film = minute_film("25/1", false);
    let media = probe(&film.path).await.unwrap();
    let (_, cuts) = analyze(&film.path, &media, 0, 200).await;
    assert_eq!(cuts, [37, 49, 130]);
    assert_eq!(cuts[1] - cuts[0], 12);
}

/// Chunks that start one frame before a cut, on it and one frame after it,
/// none of them on a keyframe, find the same absolute frames as the whole
/// film's pass, restricted to the chunk.
async fn chunks_between_keyframes_agree_with_the_whole_pass(film: Film) {
    let media = probe(&film.path).await.unwrap();
    let (_, whole) = analyze(&film.path, &media, 0, film.duration_frames).await;
    let mut starts = vec![1, 2, 150, 299, 301, 611];
    for &cut in &film.cuts[..6] {
        starts.extend([cut - 1, cut, cut + 1]);
    }
    for start in starts {
        let end = (start + 400).min(film.duration_frames);
        let (_, cuts) = analyze(&film.path, &media, start, end).await;
        let expected: Vec<i64> = whole
            .iter()
            .copied()
            .filter(|&c| c > start && c < end)
            .collect();
        assert_eq!(cuts, expected, "chunk [{start}, {end})");
        assert_eq!(cuts, film.cuts_inside(start, end), "chunk [{start}, {end})");
    }
}

#[tokio::test]
async fn chunks_starting_between_keyframes_find_the_same_frames_at_25_fps() {
    chunks_between_keyframes_agree_with_the_whole_pass(minute_film("25/1", false)).await;
}

#[tokio::test]
async fn chunks_starting_between_keyframes_find_the_same_frames_at_23_976_fps() {
    chunks_between_keyframes_agree_with_the_whole_pass(minute_film("24000/1001", false)).await;
}

/// Every chunk of the 49-minute film, five at a time, finds exactly the
/// cuts inside it, and neighbours agree on the cuts in their overlap.
async fn every_chunk_of_49_minutes_finds_its_cuts(rate: &str) {
    let fps = fps(rate);
    let (cuts, duration) = cuts_49_minutes(fps);
    let film = make_film(&film_dir(), fps, &cuts, duration, false);
    let media = probe(&film.path).await.unwrap();
    let chunks = plan_frames(duration, fps, PlanParams::default()).unwrap();
    assert_eq!(chunks.len(), 18);
    let started = Instant::now();
    let analyzer = LocalAnalyzer::default();
    let found: Vec<(usize, Vec<i64>)> = stream::iter(chunks.iter().enumerate())
        .map(|(k, c)| {
            let request = request(&film.path, &media, c.index, c.start_frame, c.end_frame);
            let analyzer = &analyzer;
            async move {
                let analysis = analyzer.analyze(&request).await.unwrap();
                check_analysis(request.end_frame - request.start_frame, &analysis).unwrap();
                (
                    k,
                    cuts_of(&analysis)
                        .iter()
                        .map(|c| c + request.start_frame)
                        .collect(),
                )
            }
        })
        .buffer_unordered(5)
        .collect()
        .await;
    eprintln!(
        "{rate}: 18 chunks, 5 at a time, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut by_chunk = vec![Vec::new(); chunks.len()];
    for (k, cuts) in found {
        by_chunk[k] = cuts;
    }
    for (c, cuts) in chunks.iter().zip(&by_chunk) {
        assert_eq!(
            cuts,
            &film.cuts_inside(c.start_frame, c.end_frame),
            "chunk {}",
            c.index
        );
    }
    for (pair, cuts) in chunks.windows(2).zip(by_chunk.windows(2)) {
        let (from, to) = (pair[1].start_frame, pair[0].end_frame);
        let overlap = |cuts: &[i64]| {
            cuts.iter()
                .copied()
                .filter(|&c| c > from && c < to)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            overlap(&cuts[0]),
            overlap(&cuts[1]),
            "overlap of chunks {} and {}",
            pair[0].index,
            pair[1].index
        );
    }
    let total: usize = by_chunk.iter().map(Vec::len).sum();
    eprintln!(
        "{rate}: {} cuts in the film, {total} found over all chunks (overlaps twice)",
        film.cuts.len()
    );
}

#[tokio::test]
async fn every_chunk_of_a_49_minute_film_at_25_fps_finds_its_cuts_and_neighbours_agree() {
    every_chunk_of_49_minutes_finds_its_cuts("25/1").await;
}

#[tokio::test]
async fn every_chunk_of_a_49_minute_film_at_23_976_fps_finds_its_cuts_and_neighbours_agree() {
    every_chunk_of_49_minutes_finds_its_cuts("24000/1001").await;
}

#[test]
fn the_49_minute_cut_list_has_the_awkward_cuts_and_no_shot_under_12_frames() {
    for rate in ["25/1", "24000/1001"] {
        let fps = fps(rate);
        let (cuts, duration) = cuts_49_minutes(fps);
        assert_eq!(duration, fps.frame_at(2940.0));
        let chunks = plan_frames(duration, fps, PlanParams::default()).unwrap();
        let seam = |k: usize| (chunks[k + 1].start_frame + chunks[k].end_frame) / 2;
        for must in [
            chunks[2].start_frame,
            seam(4) - 1,
            seam(6),
            chunks[15].start_frame - 1,
            chunks[16].start_frame + 1,
        ] {
            assert!(cuts.contains(&must), "{rate}: {must} missing");
        }
        let mut bounds = vec![0];
        bounds.extend(&cuts);
        bounds.push(duration);
        let lengths: Vec<i64> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            lengths.iter().all(|&l| l >= 12 && l <= fps.frame_at(30.0)),
            "{rate}: {lengths:?}"
        );
        assert!(lengths.contains(&12), "{rate}: a 12-frame shot");
        eprintln!(
            "{rate}: {} shots, shortest {:?}, longest {:?}",
            lengths.len(),
            lengths.iter().min(),
            lengths.iter().max()
        );
    }
}

/// The sound a description of a shot of `length` seconds reports, `None`
/// when it says silent.
fn reported_sound(description: &str, length: f64) -> Option<f64> {
    if description == "sound throughout" {
        return Some(length);
    }
    let (sound, of) = description
        .strip_prefix("sound for ")?
        .split_once(" s of ")?;
    let of: f64 = of.trim_end_matches(" s").parse().ok()?;
    assert!(
        (of - length).abs() < 0.051,
        "{description} for a shot of {length} s"
    );
    sound.parse().ok()
}

async fn sound_matches_the_tone(path: &Path, media: &MediaInfo, start: i64, end: i64) {
    let (analysis, _) = analyze(path, media, start, end).await;
    for shot in &analysis.shots {
        let from = media.fps.seconds_at(start + shot.start_frame);
        let to = media.fps.seconds_at(start + shot.end_frame);
        let expected = tone_seconds(from, to);
        let reported = reported_sound(&shot.description, to - from);
        eprintln!(
            "[{from:.2}, {to:.2}) s: tone {expected:.3} s, {:?}",
            shot.description
        );
        match reported {
            None => assert!(
                expected < 0.05 && shot.description == "silent",
                "{}",
                shot.description
            ),
            Some(sound) => assert!(
                (sound - expected).abs() <= 0.1,
                "{from}: {sound} vs {expected}"
            ),
        }
    }
}

#[tokio::test]
async fn sound_and_silence_are_measured_per_shot() {
    let rate = fps("25/1");
    let cuts = [40, 75, 100, 175, 250, 300, 350, 460, 525, 600];
    let film = make_film(&film_dir(), rate, &cuts, 700, true);
    let media = probe(&film.path).await.unwrap();
    sound_matches_the_tone(&film.path, &media, 0, 700).await;
    sound_matches_the_tone(&film.path, &media, 130, 520).await;
    let (analysis, _) = analyze(&film.path, &media, 0, 700).await;
    let descriptions: Vec<&str> = analysis
        .shots
        .iter()
        .map(|s| s.description.as_str())
        .collect();
    assert_eq!(descriptions[2], "silent", "{descriptions:?}");
    assert_eq!(descriptions[3], "silent", "{descriptions:?}");
    assert_eq!(descriptions[1], "sound throughout", "{descriptions:?}");
}

#[tokio::test]
async fn sound_that_ends_before_the_picture_leaves_the_rest_silent() {
    // 20 s of picture, a tone for the first 8 s only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-sound.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25:duration=20",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=8",
        ])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let media = probe(&path).await.unwrap();
    assert!(media.has_audio);
    let (analysis, _) = analyze(&path, &media, 0, media.duration_frames).await;
    assert_eq!(analysis.shots.len(), 1, "{analysis:?}");
    let length = media.fps.seconds_at(media.duration_frames);
    let sound = reported_sound(&analysis.shots[0].description, length)
        .unwrap_or_else(|| panic!("no sound in {:?}", analysis.shots[0].description));
    assert!(
        (sound - 8.0).abs() <= 0.2,
        "{}",
        analysis.shots[0].description
    );
    // A chunk wholly after the sound's end is silent.
    let (late, _) = analyze(&path, &media, 300, media.duration_frames).await;
    assert_eq!(late.shots[0].description, "silent", "{late:?}");
}

#[tokio::test]
async fn a_transport_stream_whose_video_starts_after_its_sound_keeps_cuts_and_sound_in_place() {
    let film = minute_film("25/1", true);
    let dir = tempfile::tempdir().unwrap();
    let ts = with_delayed_video(&film, dir.path(), 0.5);
    let media = probe(&ts).await.unwrap();
    // Keyframes every 300 frames: a seek to frame 200 in a transport stream
    // decodes nothing before frame 300, so that chunk is read again from the
    // start.
    for (start, end) in [
        (0, film.duration_frames),
        (200, 700),
        (301, 900),
        (611, 1300),
    ] {
        let (_, cuts) = analyze(&ts, &media, start, end).await;
        assert_eq!(cuts, film.cuts_inside(start, end), "chunk [{start}, {end})");
    }
    // The sound now runs 0.5 s ahead of the pictures.
    let (analysis, _) = analyze(&ts, &media, 0, 250).await;
    for shot in &analysis.shots {
        let (from, to) = (
            media.fps.seconds_at(shot.start_frame),
            media.fps.seconds_at(shot.end_frame),
        );
        let sound = reported_sound(&shot.description, to - from).unwrap_or(0.0);
        let expected = tone_seconds(from + 0.5, to + 0.5);
        assert!(
            (sound - expected).abs() <= 0.1,
            "{from}: {sound} vs {expected}: {}",
            shot.description
        );
    }
}

#[tokio::test]
async fn a_source_that_vanished_is_a_permanent_error_naming_chunk_and_file() {
    let film = minute_film("25/1", false);
    let media = probe(&film.path).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.mp4");
    std::fs::copy(&film.path, &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut gone = request(&path, &media, 3, 100, 400);
    let err = LocalAnalyzer::default().analyze(&gone).await.unwrap_err();
    assert!(matches!(err, AnalyzeError::SourceMissing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("chunk 3: source {} is missing", path.display())
    );
    assert!(!err.is_retryable());
    // Replaced by something that is not a film: ffmpeg itself fails.
    std::fs::write(&path, "not a film\n".repeat(100)).unwrap();
    let err = LocalAnalyzer::default().analyze(&gone).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, AnalyzeError::SourceUnreadable { .. }),
        "{text}"
    );
    assert!(
        text.starts_with("chunk 3: cannot read source") && text.contains("gone.mp4"),
        "{text}"
    );
    assert!(
        text.contains("Invalid data found when processing input"),
        "ffmpeg's words: {text}"
    );
    assert!(!err.is_retryable());
    gone.source = film.path.display().to_string();
    assert!(LocalAnalyzer::default().analyze(&gone).await.is_ok());
}

#[tokio::test]
async fn a_missing_ffmpeg_and_a_bad_span_are_permanent_errors() {
    let media = probe(&city()).await.unwrap();
    let analyzer = LocalAnalyzer {
        ffmpeg: "/nonexistent/bin/ffmpeg".into(),
        ..LocalAnalyzer::default()
    };
    let err = analyzer
        .analyze(&request(&city(), &media, 4, 0, 190))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "chunk 4: ffmpeg not found: install ffmpeg");
    assert!(!err.is_retryable());
    let err = LocalAnalyzer::default()
        .analyze(&request(&city(), &media, 5, 100, 191))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("chunk 5: bad request: frame span ends at 191"),
        "{err}"
    );
    assert!(!err.is_retryable());
}
