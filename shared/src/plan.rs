//! The chunk plan: how a film is cut into overlapping chunks.
//!
//! Chunk `k` covers `[k*(C-O), min(k*(C-O)+C, D))` seconds for chunk length
//! `C`, overlap `O` and duration `D`; there is one chunk when `D <= C`, else
//! `ceil((D-O)/(C-O))`. The last chunk always ends at `D`. The SQL function
//! `register_video` computes the same plan with the same floating-point
//! operations; a test holds the two together.
//!
//! Every part of the film belongs to exactly one chunk's *region*: the seam
//! between chunk `k` and `k+1` is the middle of their overlap, so a chunk owns
//! what lies between the seam before it and the seam after it. The overlap
//! exists so that each region is seen with context on both sides.

use crate::time::Fps;

/// The largest number of chunks one film may have (at 3-minute chunks with
/// 15 s overlap, about 19 days of film). Guards against absurd durations.
pub const MAX_CHUNKS: u32 = 10_000;

/// Slack for floating-point noise when counting chunks: a film whose length
/// is an exact multiple of the step must not get an extra, empty chunk.
const COUNT_EPSILON: f64 = 1e-9;

/// What was wrong with a plan's inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("{name} must be a positive finite number of seconds, got {value}")]
    NotPositive { name: &'static str, value: f64 },
    #[error("overlap_seconds ({overlap}) must be smaller than chunk_seconds ({chunk})")]
    OverlapTooLarge { chunk: f64, overlap: f64 },
    #[error(
        "duration_seconds {duration} gives {chunks} chunks, more than the limit of {MAX_CHUNKS}"
    )]
    TooManyChunks { duration: f64, chunks: f64 },
}

/// Chunk length and overlap, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanParams {
    pub chunk_seconds: f64,
    pub overlap_seconds: f64,
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            chunk_seconds: 180.0,
            overlap_seconds: 15.0,
        }
    }
}

impl PlanParams {
    /// Checks the parameters; errors name the one that is wrong.
    pub fn validate(self) -> Result<PlanParams, PlanError> {
        positive("chunk_seconds", self.chunk_seconds)?;
        positive("overlap_seconds", self.overlap_seconds)?;
        if self.overlap_seconds >= self.chunk_seconds {
            return Err(PlanError::OverlapTooLarge {
                chunk: self.chunk_seconds,
                overlap: self.overlap_seconds,
            });
        }
        Ok(self)
    }

    fn step(self) -> f64 {
        self.chunk_seconds - self.overlap_seconds
    }
}

fn positive(name: &'static str, value: f64) -> Result<(), PlanError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(PlanError::NotPositive { name, value })
    }
}

/// The number of chunks for a film of `duration_seconds`.
pub fn chunk_count(duration_seconds: f64, params: PlanParams) -> Result<u32, PlanError> {
    positive("duration_seconds", duration_seconds)?;
    let params = params.validate()?;
    if duration_seconds <= params.chunk_seconds {
        return Ok(1);
    }
    let chunks =
        ((duration_seconds - params.overlap_seconds) / params.step() - COUNT_EPSILON).ceil();
    if chunks > f64::from(MAX_CHUNKS) {
        return Err(PlanError::TooManyChunks {
            duration: duration_seconds,
            chunks,
        });
    }
    Ok(chunks as u32)
}

/// One chunk of the plan, in seconds and, once the frame rate is known, in
/// frames (`[start_frame, end_frame)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkSpan {
    pub index: u32,
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// The chunks of a film of `duration_seconds`, in order.
pub fn plan(duration_seconds: f64, params: PlanParams) -> Result<Vec<ChunkSpan>, PlanError> {
    let count = chunk_count(duration_seconds, params)?;
    Ok((0..count)
        .map(|k| {
            let start_seconds = f64::from(k) * params.step();
            let end_seconds = if k + 1 == count {
                duration_seconds
            } else {
                (start_seconds + params.chunk_seconds).min(duration_seconds)
            };
            ChunkSpan {
                index: k,
                start_seconds,
                end_seconds,
            }
        })
        .collect())
}

/// A chunk in frames: it is analyzed over `[start_frame, end_frame)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    pub index: u32,
    pub start_frame: i64,
    pub end_frame: i64,
}

impl ChunkSpan {
    /// The chunk in frames of a film of `duration_frames` at `fps`; the last
    /// chunk of a plan ends at `duration_frames` (`is_last`).
    pub fn frames(&self, fps: Fps, duration_frames: i64, is_last: bool) -> FrameSpan {
        let start_frame = fps.frame_at(self.start_seconds).min(duration_frames);
        let end_frame = if is_last {
            duration_frames
        } else {
            fps.frame_at(self.end_seconds).min(duration_frames)
        };
        FrameSpan {
            index: self.index,
            start_frame,
            end_frame,
        }
    }
}

/// The duration in seconds of `duration_frames` frames at `fps`, as the
/// database is given it.
pub fn duration_seconds(duration_frames: i64, fps: Fps) -> f64 {
    duration_frames as f64 * f64::from(fps.den()) / f64::from(fps.num())
}

/// The plan of a film in frames.
pub fn plan_frames(
    duration_frames: i64,
    fps: Fps,
    params: PlanParams,
) -> Result<Vec<FrameSpan>, PlanError> {
    let spans = plan(duration_seconds(duration_frames, fps), params)?;
    let last = spans.len() - 1;
    Ok(spans
        .iter()
        .enumerate()
        .map(|(i, s)| s.frames(fps, duration_frames, i == last))
        .collect())
}

/// The region each chunk owns: `[seam before, seam after)`, where a seam is
/// the middle frame of two neighbours' overlap, the first region starts at
/// frame 0 and the last ends at the last chunk's end.
pub fn regions(chunks: &[FrameSpan]) -> Vec<(i64, i64)> {
    let seams: Vec<i64> = chunks
        .windows(2)
        .map(|w| (w[1].start_frame + w[0].end_frame) / 2)
        .collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let start = if i == 0 { c.start_frame } else { seams[i - 1] };
            let end = if i + 1 == chunks.len() {
                c.end_frame
            } else {
                seams[i]
            };
            (start, end)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_49_minute_film_has_18_chunks_and_a_short_one_has_one() {
        let p = PlanParams::default();
        assert_eq!(chunk_count(2940.0, p), Ok(18));
        assert_eq!(chunk_count(180.0, p), Ok(1));
        assert_eq!(chunk_count(7.6, p), Ok(1));
        assert_eq!(chunk_count(180.04, p), Ok(2));
        // 345 s = two steps plus one overlap: exactly two chunks, no sliver.
        assert_eq!(chunk_count(345.0, p), Ok(2));
        assert_eq!(chunk_count(345.04, p), Ok(3));
    }

    #[test]
    fn chunks_overlap_by_the_overlap_and_the_last_ends_at_the_film_end() {
        let spans = plan(2940.0, PlanParams::default()).unwrap();
        assert_eq!(
            spans[0],
            ChunkSpan {
                index: 0,
                start_seconds: 0.0,
                end_seconds: 180.0
            }
        );
        assert_eq!(spans[1].start_seconds, 165.0);
        assert_eq!(spans[17].start_seconds, 2805.0);
        assert_eq!(spans[17].end_seconds, 2940.0);
        for w in spans.windows(2) {
            assert_eq!(w[0].end_seconds - w[1].start_seconds, 15.0);
        }
    }

    #[test]
    fn bad_parameters_name_the_argument() {
        let p = PlanParams::default();
        let cases = [
            (0.0, p, "duration_seconds"),
            (-1.0, p, "duration_seconds"),
            (f64::NAN, p, "duration_seconds"),
            (f64::INFINITY, p, "duration_seconds"),
            (
                100.0,
                PlanParams {
                    chunk_seconds: 0.0,
                    ..p
                },
                "chunk_seconds",
            ),
            (
                100.0,
                PlanParams {
                    overlap_seconds: -3.0,
                    ..p
                },
                "overlap_seconds",
            ),
            (
                100.0,
                PlanParams {
                    chunk_seconds: 15.0,
                    overlap_seconds: 15.0,
                },
                "overlap_seconds",
            ),
            (1e12, p, "duration_seconds"),
        ];
        for (d, params, name) in cases {
            let err = chunk_count(d, params).unwrap_err().to_string();
            assert!(err.contains(name), "{d} {params:?}: {err}");
        }
    }

    #[test]
    fn regions_tile_the_film_without_gaps() {
        for fps in ["25/1", "24000/1001"] {
            let fps: Fps = fps.parse().unwrap();
            let frames = fps.frame_at(2940.0);
            let chunks = plan_frames(frames, fps, PlanParams::default()).unwrap();
            let regions = regions(&chunks);
            assert_eq!(regions[0].0, 0);
            assert_eq!(regions.last().unwrap().1, frames);
            for (w, c) in regions.windows(2).zip(&chunks) {
                assert_eq!(w[0].1, w[1].0);
                // A region leaves at least 7 s of context inside its chunk.
                assert!(w[0].1 - c.start_frame > 0 && c.end_frame - w[0].1 >= fps.frame_at(7.0));
            }
        }
    }
}
