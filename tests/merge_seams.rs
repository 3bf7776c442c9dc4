//! Seams of the merge when neighbouring chunks place a cut a frame apart,
//! and frame rates the timecode rule refuses.

use shotlist_shared::merge::{merge, ChunkOutcome, ChunkResult};
use shotlist_shared::plan::{plan_frames, regions, PlanParams};
use shotlist_shared::time::{self, Fps};
use shotlist_tests::exact::exact_shots;

fn fps() -> Fps {
    Fps::new(25, 1).unwrap()
}

/// Two chunks of a 6 000-frame film; chunk 0 sees the cut at `a`, chunk 1 at `b`.
fn starts_with_cut_seen_at(a: i64, b: i64) -> (i64, Vec<i64>) {
    let duration = 6_000;
    let spans = plan_frames(duration, fps(), PlanParams::default()).unwrap();
    assert_eq!(spans.len(), 2);
    let seam = regions(&spans)[0].1;
    let chunks = vec![
        ChunkOutcome {
            span: spans[0],
            result: ChunkResult::Completed(exact_shots(spans[0], &[seam + a])),
        },
        ChunkOutcome {
            span: spans[1],
            result: ChunkResult::Completed(exact_shots(spans[1], &[seam + b])),
        },
    ];
    let merged = merge(&chunks, duration, fps());
    (seam, merged.shots.iter().map(|s| s.start_frame).collect())
}

/// The case the unit test covers (earlier chunk one frame
/// before the seam, later chunk at the seam) keeps exactly one cut.
#[test]
fn a_seam_cut_seen_at_seam_minus_1_and_seam_is_one_cut() {
    let (seam, starts) = starts_with_cut_seen_at(-1, 0);
    assert_eq!(starts, vec![0, seam - 1]);
}

/// The mirrored disagreement (chunk 0 sees the cut exactly at the seam,
/// chunk 1 one frame earlier) also keeps exactly one cut: chunk 0's report
/// lies outside its region, and chunk 1's, just before its region, still
/// counts as a cut.
#[test]
fn a_seam_cut_seen_at_seam_and_seam_minus_1_is_kept() {
    let (_seam, starts) = starts_with_cut_seen_at(0, -1);
    assert_eq!(starts.len(), 2, "the cut at the seam vanished: {starts:?}");
}

/// A 1/3 fps film (a slideshow or time-lapse) would have a nominal rate of
/// 0: such rates are refused where a frame rate is made, so no timecode is
/// ever computed for one.
#[test]
fn a_rate_below_one_frame_per_second_is_refused() {
    let err = Fps::new(1, 3).unwrap_err().to_string();
    assert!(err.contains("1 to 1000 frames per second"), "{err}");
    assert_eq!(time::timecode(7, Fps::new(1, 1).unwrap()), "00:00:07:00");
}
