//! Merging chunks into one sheet.
//!
//! Each chunk saved its shots in absolute frames, but it saw more of the film
//! than it owns: the overlap with each neighbour. The merge keeps from every
//! completed chunk only what lies in its region (see [`crate::plan::regions`]),
//! so each part of the film is described by exactly one chunk. A shot start
//! inside a region is a cut; a region's first piece usually continues the
//! previous region's last shot. A cut reported by both neighbours a frame or
//! two apart, one on each side of the seam, is one cut. The result is a
//! contiguous list of shots from frame 0 to the film's end, interrupted only by
//! the regions of failed chunks, which become gaps.

use crate::model::{DialogueLine, Shot};
use crate::plan::{self, FrameSpan};
use crate::sheet::{Gap, SheetShot};
use crate::time::{self, Fps};

/// Two cuts from neighbouring chunks this close (in frames) are one cut.
pub const SEAM_TOLERANCE_FRAMES: i64 = 2;

/// One chunk as the merge sees it: its frames and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkOutcome {
    pub span: FrameSpan,
    pub result: ChunkResult,
}

/// A completed chunk's shots (absolute frames), or a failed chunk's error.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkResult {
    Completed(Vec<Shot>),
    Failed(String),
}

/// The merged shots and the gaps left by failed chunks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged {
    pub shots: Vec<SheetShot>,
    pub gaps: Vec<Gap>,
}

/// A shot being assembled from the pieces of one or more regions.
struct Draft {
    start: i64,
    end: i64,
    chunk: u32,
    shot: Shot,
}

/// Merges the chunks of a film of `duration_frames` frames at `fps`.
///
/// `chunks` must be the film's whole plan in order; a shot outside its chunk
/// contributes only the part inside the chunk's region.
pub fn merge(chunks: &[ChunkOutcome], duration_frames: i64, fps: Fps) -> Merged {
    let spans: Vec<FrameSpan> = chunks.iter().map(|c| c.span).collect();
    let regions = plan::regions(&spans);
    let mut drafts: Vec<Draft> = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    for (chunk, &(region_start, region_end)) in chunks.iter().zip(&regions) {
        if region_start >= region_end {
            continue;
        }
        match &chunk.result {
            ChunkResult::Completed(shots) => {
                let after_gap = gaps.last().is_some_and(|g| g.end_frame == region_start);
                let pieces =
                    pieces_in_region(shots, chunk.span.start_frame, region_start, region_end);
                add_pieces(&mut drafts, pieces, chunk.span.index, after_gap);
            }
            ChunkResult::Failed(reason) => {
                add_gap(
                    &mut gaps,
                    region_start,
                    region_end,
                    chunk.span.index,
                    reason,
                    fps,
                );
            }
        }
    }
    close_drafts(&mut drafts, &gaps, duration_frames);
    Merged {
        shots: number(drafts, fps),
        gaps,
    }
}

/// The parts of `shots` inside `[start, end)`, clipped to it, with a flag
/// telling whether each begins at a cut: a shot start inside the region, or
/// just before it (the neighbour may place the same cut a frame later, on
/// its own side of the seam). A chunk's first shot begins where the chunk
/// does, which is not a cut unless it is the film's start.
fn pieces_in_region(shots: &[Shot], chunk_start: i64, start: i64, end: i64) -> Vec<(bool, Shot)> {
    let mut pieces: Vec<(bool, Shot)> = shots
        .iter()
        .filter(|s| s.start_frame < end && s.end_frame > start)
        .map(|s| {
            let near_seam =
                s.start_frame >= start - SEAM_TOLERANCE_FRAMES && s.start_frame > chunk_start;
            let is_cut = s.start_frame >= start || near_seam;
            let mut piece = s.clone();
            piece.start_frame = s.start_frame.max(start);
            piece.end_frame = s.end_frame.min(end);
            piece
                .dialogue
                .retain(|l| l.start_frame.is_none_or(|f| f >= start && f < end));
            (is_cut, piece)
        })
        .collect();
    pieces.sort_by_key(|(_, s)| s.start_frame);
    pieces
}

fn add_pieces(drafts: &mut Vec<Draft>, pieces: Vec<(bool, Shot)>, chunk: u32, after_gap: bool) {
    for (is_cut, piece) in pieces {
        let continues =
            !is_cut && !after_gap && drafts.last().is_some_and(|d| d.end == piece.start_frame);
        let same_cut = is_cut
            && drafts.last().is_some_and(|d| {
                d.chunk != chunk && piece.start_frame - d.start <= SEAM_TOLERANCE_FRAMES
            });
        match drafts.last_mut() {
            Some(last) if continues || same_cut => {
                last.end = last.end.max(piece.end_frame);
                if continues && last.chunk != chunk {
                    append_description(&mut last.shot.description, &piece.description);
                }
                append_dialogue(&mut last.shot.dialogue, piece.dialogue);
            }
            _ => drafts.push(Draft {
                start: piece.start_frame,
                end: piece.end_frame,
                chunk,
                shot: piece,
            }),
        }
    }
}

/// Adds what the next chunk saw of a shot that runs on into its region, when
/// it says something the first chunk did not: a shot longer than a chunk is
/// described part by part, "first part; then next part".
fn append_description(description: &mut String, more: &str) {
    if more.is_empty() || description.ends_with(more) {
        return;
    }
    if description.is_empty() {
        description.push_str(more);
    } else {
        description.push_str("; then ");
        description.push_str(more);
    }
}

/// Adds `more` after `lines`, skipping a line the neighbouring chunk already
/// reported: the same speaker and words, with no time or the same time.
fn append_dialogue(lines: &mut Vec<DialogueLine>, more: Vec<DialogueLine>) {
    for line in more {
        let repeated = lines.iter().rev().take(4).any(|l| {
            l.speaker == line.speaker
                && l.line == line.line
                && (l.start_frame.is_none()
                    || line.start_frame.is_none()
                    || l.start_frame == line.start_frame)
        });
        if !repeated {
            lines.push(line);
        }
    }
}

fn add_gap(gaps: &mut Vec<Gap>, start: i64, end: i64, chunk: u32, reason: &str, fps: Fps) {
    match gaps.last_mut() {
        Some(gap) if gap.end_frame == start => {
            gap.end_frame = end;
            gap.end = time::timecode(end, fps);
            gap.chunks.push(chunk);
            gap.reasons.push(reason.to_string());
        }
        _ => gaps.push(Gap {
            start: time::timecode(start, fps),
            end: time::timecode(end, fps),
            start_frame: start,
            end_frame: end,
            chunks: vec![chunk],
            reasons: vec![reason.to_string()],
        }),
    }
}

/// Makes the shots contiguous: each ends where the next starts, unless a gap
/// starts first; the last ends at the film's end or where a gap starts.
fn close_drafts(drafts: &mut [Draft], gaps: &[Gap], duration_frames: i64) {
    let next_starts: Vec<i64> = drafts
        .iter()
        .skip(1)
        .map(|d| d.start)
        .chain([duration_frames])
        .collect();
    for (draft, next) in drafts.iter_mut().zip(next_starts) {
        let gap_start = gaps
            .iter()
            .map(|g| g.start_frame)
            .find(|&g| g >= draft.end && g <= next);
        draft.end = gap_start.unwrap_or(next);
    }
}

fn number(drafts: Vec<Draft>, fps: Fps) -> Vec<SheetShot> {
    drafts
        .into_iter()
        .zip(1..)
        .map(|(d, number)| SheetShot {
            number,
            start: time::timecode(d.start, fps),
            end: time::timecode(d.end, fps),
            start_frame: d.start,
            end_frame: d.end,
            shot_type: d.shot.shot_type,
            description: d.shot.description,
            dialogue: d.shot.dialogue,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ShotType;
    use crate::plan::{plan_frames, PlanParams};

    fn fps() -> Fps {
        Fps::new(25, 1).unwrap()
    }

    fn shot(start: i64, end: i64, description: &str) -> Shot {
        Shot {
            start_frame: start,
            end_frame: end,
            shot_type: ShotType::Other,
            description: description.to_string(),
            dialogue: vec![],
        }
    }

    /// What an exact analyzer reports for chunk `span` of a film with `cuts`.
    fn analyze(span: FrameSpan, cuts: &[i64]) -> Vec<Shot> {
        let mut bounds = vec![span.start_frame];
        bounds.extend(
            cuts.iter()
                .copied()
                .filter(|&c| c > span.start_frame && c < span.end_frame),
        );
        bounds.push(span.end_frame);
        bounds
            .windows(2)
            .map(|w| shot(w[0], w[1], &format!("from {}", w[0])))
            .collect()
    }

    fn film(duration: i64, cuts: &[i64]) -> Vec<ChunkOutcome> {
        plan_frames(duration, fps(), PlanParams::default())
            .unwrap()
            .into_iter()
            .map(|span| ChunkOutcome {
                span,
                result: ChunkResult::Completed(analyze(span, cuts)),
            })
            .collect()
    }

    fn starts(merged: &Merged) -> Vec<i64> {
        merged.shots.iter().map(|s| s.start_frame).collect()
    }

    #[test]
    fn chunked_cuts_equal_the_film_cuts_including_cuts_at_chunk_starts_and_seams() {
        let duration = 73_500;
        let chunks = film(duration, &[]);
        let regions = plan::regions(&chunks.iter().map(|c| c.span).collect::<Vec<_>>());
        let mut cuts = vec![
            50,
            4125,
            4125 + 75,
            regions[2].1 - 1,
            regions[4].1,
            8250 - 1,
            70_000,
        ];
        cuts.sort();
        let merged = merge(&film(duration, &cuts), duration, fps());
        let mut expected = vec![0];
        expected.extend(&cuts);
        assert_eq!(starts(&merged), expected);
        assert_eq!(merged.shots.last().unwrap().end_frame, duration);
        for w in merged.shots.windows(2) {
            assert_eq!(w[0].end_frame, w[1].start_frame);
            assert_eq!(w[1].number, w[0].number + 1);
        }
        assert_eq!(merged.shots[1].description, "from 50");
        assert!(merged.gaps.is_empty());
    }

    #[test]
    fn a_shot_longer_than_a_chunk_stays_one_shot_described_part_by_part() {
        let merged = merge(&film(20_000, &[100, 15_000]), 20_000, fps());
        // The shot from 100 runs through chunks 0 to 3; each later chunk saw
        // it from its own start.
        assert_eq!(
            merged.shots[1].description,
            "from 100; then from 4125; then from 8250; then from 12375"
        );
        assert_eq!(starts(&merged), vec![0, 100, 15_000]);
        assert_eq!(merged.shots[1].end_frame, 15_000);
        assert_eq!(merged.shots[1].end, "00:10:00:00");
    }

    #[test]
    fn a_cut_seen_one_frame_apart_by_two_chunks_is_one_cut() {
        let duration = 10_000;
        let mut chunks = film(duration, &[]);
        let seam = plan::regions(&chunks.iter().map(|c| c.span).collect::<Vec<_>>())[0].1;
        chunks[0].result = ChunkResult::Completed(analyze(chunks[0].span, &[seam - 1]));
        chunks[1].result = ChunkResult::Completed(analyze(chunks[1].span, &[seam]));
        let merged = merge(&chunks, duration, fps());
        assert_eq!(starts(&merged), vec![0, seam - 1]);
    }

    #[test]
    fn failed_chunks_leave_listed_gaps_and_keep_the_rest() {
        let duration = 73_500;
        let mut chunks = film(duration, &[1000, 9000, 20_000]);
        chunks[2].result = ChunkResult::Failed("provider timed out".into());
        chunks[3].result = ChunkResult::Failed("force-finalized".into());
        let regions = plan::regions(&chunks.iter().map(|c| c.span).collect::<Vec<_>>());
        let merged = merge(&chunks, duration, fps());
        assert_eq!(merged.gaps.len(), 1);
        let gap = &merged.gaps[0];
        assert_eq!(
            (gap.start_frame, gap.end_frame),
            (regions[2].0, regions[3].1)
        );
        assert_eq!(gap.chunks, vec![2, 3]);
        assert_eq!(gap.reasons, vec!["provider timed out", "force-finalized"]);
        let before = merged
            .shots
            .iter()
            .find(|s| s.end_frame == gap.start_frame)
            .expect("a shot ends at the gap");
        assert_eq!(before.start_frame, 1000);
        let after = merged
            .shots
            .iter()
            .find(|s| s.start_frame == gap.end_frame)
            .expect("a shot starts after it");
        assert_eq!(after.end_frame, 20_000);
        assert!(merged
            .shots
            .iter()
            .all(|s| s.end_frame <= gap.start_frame || s.start_frame >= gap.end_frame));
    }

    #[test]
    fn timed_dialogue_is_kept_once_and_untimed_repeats_are_dropped() {
        let duration = 6000;
        let mut chunks = film(duration, &[]);
        let line = |who: &str, at: Option<i64>| DialogueLine {
            speaker: who.into(),
            line: "hello".into(),
            offscreen: false,
            start_frame: at,
        };
        let mut a = analyze(chunks[0].span, &[]);
        a[0].dialogue = vec![
            line("Ann", Some(100)),
            line("Bob", Some(4300)),
            line("Cy", None),
        ];
        let mut b = analyze(chunks[1].span, &[]);
        b[0].dialogue = vec![
            line("Bob", Some(4300)),
            line("Cy", None),
            line("Di", Some(5000)),
        ];
        chunks[0].result = ChunkResult::Completed(a);
        chunks[1].result = ChunkResult::Completed(b);
        let merged = merge(&chunks, duration, fps());
        assert_eq!(merged.shots.len(), 1);
        let speakers: Vec<&str> = merged.shots[0]
            .dialogue
            .iter()
            .map(|l| l.speaker.as_str())
            .collect();
        assert_eq!(speakers, vec!["Ann", "Bob", "Cy", "Di"]);
    }
}
