//! Finalizing a film against a real PostgreSQL: every chunk reports the cuts
//! of a known cut list that fall inside it, as an exact analyzer would, and
//! the merged sheet must give back exactly that cut list.
//!
//! The film is 49 minutes at 25 fps (73 500 frames, 18 chunks). Its cut list
//! has cuts exactly at chunk starts, one frame before seams, exactly at
//! seams, inside overlaps, and shots as short as 12 frames.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::db::{Claim, Db, DbError, Outcome};
use shotlist_shared::model::ChunkAnalysis;
use shotlist_shared::plan::{self, FrameSpan, PlanParams};
use shotlist_shared::probe::MediaInfo;
use shotlist_shared::sheet::{Sheet, SheetStatus};
use shotlist_shared::time::{self, Fps};
use shotlist_shared::worker::{process_chunk, Done, WorkerConfig};
use shotlist_tests::exact::exact_shots;
use shotlist_tests::fixtures;
use shotlist_tests::pg::{connect, fresh_db};
use tokio_postgres::types::Type;
use uuid::Uuid;

const FILM_FRAMES: i64 = 73_500;

/// The shortest shot the analyzers must report, in frames.
const SHORTEST_SHOT: i64 = 12;

fn fps() -> Fps {
    Fps::new(25, 1).expect("25/1 is a valid rate")
}

fn media() -> MediaInfo {
    fixtures::media(FILM_FRAMES, fps())
}

fn spans() -> Vec<FrameSpan> {
    plan::plan_frames(FILM_FRAMES, fps(), PlanParams::default()).expect("a valid plan")
}

/// Deterministic pseudo-random numbers (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The film's cuts (shot starts after frame 0), sorted: shots of 12 frames
/// to 30 s, plus at each chunk boundary in turn a cut exactly at the chunk's
/// start, one frame before the seam, exactly at the seam, or inside the
/// overlap.
fn cut_list() -> Vec<i64> {
    let spans = spans();
    let regions = plan::regions(&spans);
    let mut special = Vec::new();
    for k in 1..spans.len() {
        let seam = regions[k - 1].1;
        special.push(match k % 4 {
            0 => spans[k].start_frame,
            1 => seam - 1,
            2 => seam,
            _ => spans[k].start_frame + 100,
        });
    }
    // A 12-frame shot.
    special.extend([30_000, 30_000 + SHORTEST_SHOT]);
    let mut rng = Rng(49);
    let mut cuts = special.clone();
    let mut at = 0;
    loop {
        at += SHORTEST_SHOT + rng.below(750 - SHORTEST_SHOT as u64) as i64;
        if at >= FILM_FRAMES - SHORTEST_SHOT {
            break;
        }
        if special.iter().all(|s| (s - at).abs() >= SHORTEST_SHOT) {
            cuts.push(at);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

async fn register(db: &Db) -> Uuid {
    let id = Uuid::new_v4();
    let chunks = db
        .register_film(id, "/films/49min.mp4", &media(), PlanParams::default())
        .await
        .expect("registered");
    assert_eq!(chunks, 18);
    id
}

/// Claims and completes chunk `index` with the exact analyzer's shots;
/// returns whether this commit finished the film.
async fn complete(db: &Db, id: Uuid, span: FrameSpan, cuts: &[i64]) -> bool {
    let Claim::Claimed(chunk) = db
        .claim_chunk(id, span.index, std::time::Duration::from_secs(600), 3)
        .await
        .unwrap()
    else {
        panic!("chunk {} not claimed", span.index)
    };
    assert_eq!(
        (chunk.start_frame, chunk.end_frame),
        (span.start_frame, span.end_frame)
    );
    let report = db
        .complete_chunk(id, span.index, chunk.lease_token, &exact_shots(span, cuts))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "chunk {}", span.index);
    report.progress.finished
}

/// A film whose every chunk completed with the exact analyzer's shots.
async fn completed_film(db: &Db, cuts: &[i64]) -> Uuid {
    let id = register(db).await;
    let mut finished = 0;
    for span in spans() {
        finished += u32::from(complete(db, id, span, cuts).await);
    }
    assert_eq!(finished, 1);
    id
}

fn starts(sheet: &Sheet) -> Vec<i64> {
    sheet.shots.iter().map(|s| s.start_frame).collect()
}

/// Shots numbered 1..N, each with its timecodes, each ending where the next
/// starts unless a gap starts there, none inside a gap, the last ending at
/// the film's end or at a gap that runs to it.
fn assert_well_formed(sheet: &Sheet) {
    for (i, shot) in sheet.shots.iter().enumerate() {
        assert_eq!(shot.number as usize, i + 1);
        assert!(shot.start_frame < shot.end_frame, "{shot:?}");
        assert_eq!(shot.start, time::timecode(shot.start_frame, fps()));
        assert_eq!(shot.end, time::timecode(shot.end_frame, fps()));
        for gap in &sheet.gaps {
            let outside = shot.end_frame <= gap.start_frame || shot.start_frame >= gap.end_frame;
            assert!(outside, "shot {} lies in gap {gap:?}", shot.number);
        }
    }
    for w in sheet.shots.windows(2) {
        let gap_between = sheet
            .gaps
            .iter()
            .any(|g| g.start_frame == w[0].end_frame && g.end_frame == w[1].start_frame);
        assert!(
            w[0].end_frame == w[1].start_frame || gap_between,
            "{:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let last_end = sheet.shots.last().expect("shots").end_frame;
    let gap_to_end = sheet
        .gaps
        .iter()
        .any(|g| g.start_frame == last_end && g.end_frame == FILM_FRAMES);
    assert!(
        last_end == FILM_FRAMES || gap_to_end,
        "last shot ends at {last_end}"
    );
}

#[test]
fn the_cut_list_has_cuts_at_chunk_starts_seams_and_overlaps_and_a_12_frame_shot() {
    let cuts = cut_list();
    let spans = spans();
    let regions = plan::regions(&spans);
    let at_start = spans[1..]
        .iter()
        .filter(|s| cuts.contains(&s.start_frame))
        .count();
    let before_seam = regions[..17]
        .iter()
        .filter(|r| cuts.contains(&(r.1 - 1)))
        .count();
    let at_seam = regions[..17].iter().filter(|r| cuts.contains(&r.1)).count();
    assert!(
        at_start >= 4 && before_seam >= 4 && at_seam >= 4,
        "{at_start} {before_seam} {at_seam}"
    );
    assert!(cuts.windows(2).all(|w| w[1] - w[0] >= SHORTEST_SHOT));
    assert!(cuts.windows(2).any(|w| w[1] - w[0] == SHORTEST_SHOT));
    assert!(cuts.len() > 150, "{} cuts", cuts.len());
}

#[tokio::test]
async fn a_film_whose_chunks_all_completed_finalizes_to_exactly_its_cut_list() {
    let (db, _url) = fresh_db().await;
    let cuts = cut_list();
    let id = completed_film(&db, &cuts).await;
    let sheet = db.finalize(id).await.expect("finalized");
    let mut expected = vec![0];
    expected.extend(&cuts);
    assert_eq!(starts(&sheet), expected);
    assert_well_formed(&sheet);
    assert_eq!(sheet.shots.last().unwrap().end_frame, FILM_FRAMES);
    assert_eq!(sheet.status, SheetStatus::Complete);
    assert_eq!(
        (
            sheet.total_chunks,
            sheet.completed_chunks,
            sheet.failed_chunks
        ),
        (18, 18, 0)
    );
    assert_eq!(
        (sheet.fps.as_str(), sheet.duration_frames, sheet.video_id),
        ("25/1", FILM_FRAMES, id)
    );
    assert_eq!(sheet.source.as_deref(), Some("/films/49min.mp4"));
    assert!(sheet.gaps.is_empty());
    assert!(sheet
        .shots
        .iter()
        .skip(1)
        .all(|s| s.description == format!("from {}", s.start_frame)));
    assert_eq!(db.get_sheet(id).await.unwrap(), Some(sheet));
}

#[tokio::test]
async fn finalizing_twice_gives_the_identical_sheet() {
    let (db, _url) = fresh_db().await;
    let id = completed_film(&db, &cut_list()).await;
    let first = db.finalize(id).await.unwrap();
    let second = db.finalize(id).await.unwrap();
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_concurrent_finalizes_give_identical_sheets_and_store_one() {
    let (db, url) = fresh_db().await;
    let id = completed_film(&db, &cut_list()).await;
    let sheets = futures::future::join_all((0..5).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { db.finalize(id).await })
    }))
    .await;
    let sheets: Vec<Sheet> = sheets
        .into_iter()
        .map(|s| s.unwrap().expect("finalized"))
        .collect();
    assert!(sheets.iter().all(|s| *s == sheets[0]));
    let client = connect(&url).await;
    let row = client
        .query_typed_one(
            "SELECT count(*) FROM shotlist.sheets WHERE video_id = $1",
            &[(&id, Type::UUID)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(db.get_sheet(id).await.unwrap().as_ref(), Some(&sheets[0]));
}

#[tokio::test]
async fn finalizing_a_film_with_open_chunks_is_not_ready_and_says_how_many() {
    let (db, _url) = fresh_db().await;
    let cuts = cut_list();
    let id = register(&db).await;
    for span in spans().into_iter().take(15) {
        assert!(!complete(&db, id, span, &cuts).await);
    }
    match db.finalize(id).await {
        Err(DbError::NotReady(message)) => assert!(message.contains("3 of 18"), "{message}"),
        other => panic!("finalized an open film: {other:?}"),
    }
    assert_eq!(db.get_sheet(id).await.unwrap(), None);
}

#[tokio::test]
async fn a_film_with_two_failed_chunks_is_partial_with_their_regions_as_gaps() {
    let (db, _url) = fresh_db().await;
    let cuts = cut_list();
    let spans = spans();
    let regions = plan::regions(&spans);
    let id = register(&db).await;
    let mut finished = 0;
    for span in &spans {
        finished += u32::from(match span.index {
            4 => {
                let Claim::Claimed(c) = db
                    .claim_chunk(id, 4, std::time::Duration::from_secs(600), 3)
                    .await
                    .unwrap()
                else {
                    panic!("chunk 4 not claimed")
                };
                let report = db
                    .fail_chunk(id, 4, c.lease_token, "provider refused the clip", false, 3)
                    .await
                    .unwrap();
                report.progress.finished
            }
            9 => {
                db.update_chunk_status(id, 9, "failed", Some("force-finalized"))
                    .await
                    .unwrap()
                    .finished
            }
            _ => complete(&db, id, *span, &cuts).await,
        });
    }
    assert_eq!(finished, 1);
    let sheet = db.finalize(id).await.unwrap();
    assert_eq!(sheet.status, SheetStatus::Partial);
    assert_eq!((sheet.completed_chunks, sheet.failed_chunks), (16, 2));
    let gaps: Vec<(i64, i64, Vec<u32>, Vec<String>)> = sheet
        .gaps
        .iter()
        .map(|g| {
            (
                g.start_frame,
                g.end_frame,
                g.chunks.clone(),
                g.reasons.clone(),
            )
        })
        .collect();
    assert_eq!(
        gaps,
        [
            (
                regions[4].0,
                regions[4].1,
                vec![4],
                vec!["provider refused the clip".to_string()]
            ),
            (
                regions[9].0,
                regions[9].1,
                vec![9],
                vec!["force-finalized".to_string()]
            ),
        ]
    );
    for gap in &sheet.gaps {
        assert_eq!(gap.start, time::timecode(gap.start_frame, fps()));
        assert_eq!(gap.end, time::timecode(gap.end_frame, fps()));
    }
    assert_well_formed(&sheet);
    let in_gap = |c: i64| {
        sheet
            .gaps
            .iter()
            .any(|g| c >= g.start_frame && c < g.end_frame)
    };
    let mut expected: BTreeSet<i64> = cuts.iter().copied().filter(|&c| !in_gap(c)).collect();
    expected.insert(0);
    expected.extend(sheet.gaps.iter().map(|g| g.end_frame));
    assert_eq!(starts(&sheet), expected.into_iter().collect::<Vec<_>>());
}

/// An exact analyzer of the known cut list, answering in chunk-local frames.
/// Every attempt at `failing_chunk` fails with a retryable error.
struct CutListAnalyzer {
    cuts: Vec<i64>,
    failing_chunk: Option<u32>,
    calls: AtomicU32,
}

impl CutListAnalyzer {
    fn new(failing_chunk: Option<u32>) -> Arc<CutListAnalyzer> {
        Arc::new(CutListAnalyzer {
            cuts: cut_list(),
            failing_chunk,
            calls: AtomicU32::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Analyzer for CutListAnalyzer {
    fn name(&self) -> &'static str {
        "cut-list"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Lets a concurrent delivery of the same chunk run meanwhile.
        tokio::task::yield_now().await;
        if self.failing_chunk == Some(request.chunk_index) {
            return Err(AnalyzeError::Provider {
                chunk_index: request.chunk_index,
                analyzer: "cut-list",
                message: "provider answered 503".to_string(),
                retryable: true,
            });
        }
        let span = FrameSpan {
            index: request.chunk_index,
            start_frame: request.start_frame,
            end_frame: request.end_frame,
        };
        let shots = exact_shots(span, &self.cuts)
            .into_iter()
            .map(|s| s.shifted(-request.start_frame))
            .collect();
        Ok(ChunkAnalysis { shots })
    }
}

/// Delivers chunk `index` to `process_chunk` again and again, as a queue
/// redelivers a message, until the answer is final; returns every answer.
async fn deliver_until_final(
    db: Db,
    analyzer: Arc<CutListAnalyzer>,
    id: Uuid,
    index: u32,
) -> Vec<Done> {
    let mut answers = Vec::new();
    for _ in 0..10 {
        let done = process_chunk(&db, analyzer.as_ref(), id, index, &WorkerConfig::default())
            .await
            .unwrap();
        let again = matches!(done, Done::Retry { .. } | Done::Busy);
        answers.push(done);
        if !again {
            return answers;
        }
        tokio::task::yield_now().await;
    }
    panic!("chunk {index} still open after 10 deliveries: {answers:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_chunk_delivered_twice_at_once_to_the_worker_is_analyzed_once_and_merges_to_the_cut_list(
) {
    let (db, _url) = fresh_db().await;
    let analyzer = CutListAnalyzer::new(None);
    let id = register(&db).await;
    let mut rng = Rng(36);
    let mut deliveries: Vec<u32> = (0..18).chain(0..18).collect();
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let tasks = deliveries.iter().map(|&index| {
        let (db, analyzer) = (db.clone(), analyzer.clone());
        tokio::spawn(async move {
            let done =
                process_chunk(&db, analyzer.as_ref(), id, index, &WorkerConfig::default()).await;
            (index, done.unwrap())
        })
    });
    let answers: Vec<(u32, Done)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    for index in 0..18 {
        let mine: Vec<&Done> = answers
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, d)| d)
            .collect();
        let completed = mine
            .iter()
            .filter(|d| matches!(d, Done::Completed(_)))
            .count();
        assert_eq!(completed, 1, "chunk {index}: {mine:?}");
        let duplicate_ok = mine.iter().all(|d| {
            matches!(d, Done::Completed(_) | Done::Busy)
                || **d
                    == Done::AlreadyTerminal {
                        status: "completed".into(),
                    }
        });
        assert!(duplicate_ok, "chunk {index}: {mine:?}");
    }
    assert_eq!(answers.iter().filter(|(_, d)| d.finished()).count(), 1);
    let busy = answers.iter().filter(|(_, d)| *d == Done::Busy).count();
    println!(
        "36 deliveries: 18 completed, {busy} found the chunk busy, {} found it done",
        18 - busy
    );
    assert_eq!(
        analyzer.calls.load(Ordering::SeqCst),
        18,
        "a chunk was analyzed twice"
    );
    let progress = db.chunk_progress(id).await.unwrap();
    assert_eq!(
        (
            progress["completedChunks"].as_u64(),
            progress["failedChunks"].as_u64()
        ),
        (Some(18), Some(0))
    );
    // A late redelivery of a chunk that was busy finds it done.
    let late = process_chunk(&db, analyzer.as_ref(), id, 0, &WorkerConfig::default())
        .await
        .unwrap();
    assert_eq!(
        late,
        Done::AlreadyTerminal {
            status: "completed".into()
        }
    );

    let sheet = db.finalize(id).await.unwrap();
    let mut expected = vec![0];
    expected.extend(cut_list());
    assert_eq!(starts(&sheet), expected);
    assert_well_formed(&sheet);
    assert_eq!(sheet.status, SheetStatus::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_the_analyzer_always_fails_is_failed_after_3_attempts_and_leaves_a_gap() {
    let (db, _url) = fresh_db().await;
    let analyzer = CutListAnalyzer::new(Some(3));
    let id = register(&db).await;
    let tasks = (0..18)
        .map(|index| tokio::spawn(deliver_until_final(db.clone(), analyzer.clone(), id, index)));
    let answers: Vec<Vec<Done>> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let chunk_3 = &answers[3];
    assert_eq!(chunk_3.len(), 3, "{chunk_3:?}");
    assert!(
        chunk_3[..2].iter().all(|d| matches!(d, Done::Retry { .. })),
        "{chunk_3:?}"
    );
    let Done::Failed { error, .. } = &chunk_3[2] else {
        panic!("chunk 3 not failed: {chunk_3:?}")
    };
    assert!(error.contains("provider answered 503"), "{error}");
    for (index, chunk) in answers.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert!(
            matches!(chunk.as_slice(), [Done::Completed(_)]),
            "chunk {index}: {chunk:?}"
        );
    }
    assert_eq!(answers.iter().flatten().filter(|d| d.finished()).count(), 1);

    let view = db.chunk_progress(id).await.unwrap();
    assert_eq!(
        (
            view["completedChunks"].as_u64(),
            view["failedChunks"].as_u64()
        ),
        (Some(17), Some(1))
    );
    let chunk = &view["chunks"][3];
    assert_eq!(
        (chunk["status"].as_str(), chunk["attempts"].as_u64()),
        (Some("failed"), Some(3))
    );
    let recorded = chunk["error"].as_str().expect("an error is recorded");
    assert!(recorded.contains("provider answered 503"), "{recorded}");

    let sheet = db.finalize(id).await.unwrap();
    let region = plan::regions(&spans())[3];
    assert_eq!(sheet.status, SheetStatus::Partial);
    assert_eq!(sheet.gaps.len(), 1);
    let gap = &sheet.gaps[0];
    assert_eq!(
        (gap.start_frame, gap.end_frame, gap.chunks.as_slice()),
        (region.0, region.1, &[3][..])
    );
    assert_eq!(gap.reasons, [recorded]);
    assert_well_formed(&sheet);
}
