//! The analyzer interface: one chunk of a film in, its shots out.
//!
//! Every analyzer (the local ffmpeg one, remote models) answers the same
//! [`ChunkRequest`] with the same [`ChunkAnalysis`], so the rest of the system
//! does not know which one ran. Failures are [`AnalyzeError`]s that say
//! whether another attempt may succeed, which decides whether the queue
//! retries the chunk.

mod ffmpeg;
pub mod gemini;
pub mod keys;
pub mod local;
pub mod output;
pub mod provider;
pub mod remote;
pub mod replicate;
pub mod setup;

pub use local::LocalAnalyzer;

use std::time::Duration;

use crate::model::{ChunkAnalysis, Shot, ShotType};
use crate::probe::MediaInfo;

/// One chunk to analyze: frames `[start_frame, end_frame)` of a film.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRequest {
    pub video_id: uuid::Uuid,
    pub chunk_index: u32,
    /// Where the film is: a local path (a URL for remote analyzers).
    pub source: String,
    /// What ffprobe found in the film.
    pub media: MediaInfo,
    pub start_frame: i64,
    pub end_frame: i64,
    /// When the answer must be in (the worker's timeout, itself cut to the
    /// Lambda deadline); remote analyzers end their retries before it.
    pub deadline: Option<tokio::time::Instant>,
}

impl ChunkRequest {
    /// The number of frames in the chunk.
    pub fn len(&self) -> i64 {
        self.end_frame - self.start_frame
    }

    /// Whether the chunk has no frames (a request that [`validate`] refuses).
    ///
    /// [`validate`]: ChunkRequest::validate
    pub fn is_empty(&self) -> bool {
        self.len() <= 0
    }

    /// Checks that the chunk is a non-empty span inside the film.
    pub fn validate(&self) -> Result<(), AnalyzeError> {
        let bad = |detail: String| AnalyzeError::BadRequest {
            chunk_index: self.chunk_index,
            detail,
        };
        if self.start_frame < 0 || self.is_empty() {
            return Err(bad(format!(
                "empty or negative frame span [{}, {})",
                self.start_frame, self.end_frame
            )));
        }
        if self.end_frame > self.media.duration_frames {
            let total = self.media.duration_frames;
            return Err(bad(format!(
                "frame span ends at {} past the film's {total} frames",
                self.end_frame
            )));
        }
        if self.source.is_empty() {
            return Err(bad("empty source".to_string()));
        }
        Ok(())
    }
}

/// Something that finds the shots of a chunk.
#[async_trait::async_trait]
pub trait Analyzer: Send + Sync {
    /// A short name for logs and the database (`local`, `gemini`, ...).
    fn name(&self) -> &'static str;

    /// Analyzes one chunk. The shots are in chunk-local frames, sorted and
    /// contiguous: the first starts at 0, the last ends at `request.len()`.
    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError>;
}

/// Why a chunk could not be analyzed. Each variant is either retryable (the
/// same request may succeed later) or permanent; see [`is_retryable`].
///
/// [`is_retryable`]: AnalyzeError::is_retryable
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// Permanent: the request itself is wrong.
    #[error("chunk {chunk_index}: bad request: {detail}")]
    BadRequest { chunk_index: u32, detail: String },
    /// Permanent: the source file is not there.
    #[error("chunk {chunk_index}: source {path} is missing")]
    SourceMissing { chunk_index: u32, path: String },
    /// Permanent: the source cannot be decoded.
    #[error("chunk {chunk_index}: cannot read source {path}: {detail}")]
    SourceUnreadable {
        chunk_index: u32,
        path: String,
        detail: String,
    },
    /// Permanent: a program the analyzer needs is not installed.
    #[error("chunk {chunk_index}: {tool} not found: install ffmpeg")]
    ToolMissing {
        chunk_index: u32,
        tool: &'static str,
    },
    /// Retryable: a tool failed for a reason that may pass (crash, kill).
    #[error("chunk {chunk_index}: {tool} failed ({status}): {stderr}")]
    ToolFailed {
        chunk_index: u32,
        tool: &'static str,
        status: String,
        stderr: String,
    },
    /// Retryable: the analysis (or a tool it ran) took longer than allowed.
    #[error("chunk {chunk_index}: analysis did not finish within {seconds} s")]
    TimedOut { chunk_index: u32, seconds: f64 },
    /// Retryable: local I/O (temporary files, starting a process) failed.
    #[error("chunk {chunk_index}: {context}: {source}")]
    Io {
        chunk_index: u32,
        context: String,
        source: std::io::Error,
    },
    /// Permanent: the analysis ran but its result breaks the contract.
    #[error("chunk {chunk_index}: unexpected analyzer output: {detail}")]
    BadOutput { chunk_index: u32, detail: String },
    /// Retryable, and not the chunk's fault: every API key is rate-limited
    /// for at least `wait`. The chunk goes back to the queue without using
    /// up an attempt.
    #[error("chunk {chunk_index}: {analyzer}: all API keys are rate-limited for at least {:.1} s", wait.as_secs_f64())]
    Throttled {
        chunk_index: u32,
        analyzer: &'static str,
        wait: Duration,
    },
    /// Retryable, and not the chunk's fault: the analyzer must wait for
    /// something outside the chunk (another worker's upload of the film).
    /// Like [`Throttled`](AnalyzeError::Throttled), the chunk goes back to
    /// the queue without using up an attempt.
    #[error("chunk {chunk_index}: {analyzer}: {reason}; trying again in {:.1} s", wait.as_secs_f64())]
    Deferred {
        chunk_index: u32,
        analyzer: &'static str,
        reason: String,
        wait: Duration,
    },
    /// A remote analyzer's failure, retryable or not as the provider said.
    #[error("chunk {chunk_index}: {analyzer}: {message}")]
    Provider {
        chunk_index: u32,
        analyzer: &'static str,
        message: String,
        retryable: bool,
    },
}

impl AnalyzeError {
    /// Whether another attempt at the same chunk may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AnalyzeError::ToolFailed { .. }
            | AnalyzeError::TimedOut { .. }
            | AnalyzeError::Io { .. }
            | AnalyzeError::Throttled { .. }
            | AnalyzeError::Deferred { .. } => true,
            AnalyzeError::Provider { retryable, .. } => *retryable,
            AnalyzeError::BadRequest { .. }
            | AnalyzeError::SourceMissing { .. }
            | AnalyzeError::SourceUnreadable { .. }
            | AnalyzeError::ToolMissing { .. }
            | AnalyzeError::BadOutput { .. } => false,
        }
    }

    /// The chunk the error is about.
    pub fn chunk_index(&self) -> u32 {
        match self {
            AnalyzeError::BadRequest { chunk_index, .. }
            | AnalyzeError::SourceMissing { chunk_index, .. }
            | AnalyzeError::SourceUnreadable { chunk_index, .. }
            | AnalyzeError::ToolMissing { chunk_index, .. }
            | AnalyzeError::ToolFailed { chunk_index, .. }
            | AnalyzeError::TimedOut { chunk_index, .. }
            | AnalyzeError::Io { chunk_index, .. }
            | AnalyzeError::BadOutput { chunk_index, .. }
            | AnalyzeError::Throttled { chunk_index, .. }
            | AnalyzeError::Deferred { chunk_index, .. }
            | AnalyzeError::Provider { chunk_index, .. } => *chunk_index,
        }
    }

    /// How long to wait before the chunk is worth another try, when the
    /// failure was not the chunk's (every key rate-limited, another worker's
    /// upload): such an attempt is not counted.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AnalyzeError::Throttled { wait, .. } | AnalyzeError::Deferred { wait, .. } => {
                Some(*wait)
            }
            _ => None,
        }
    }
}

/// Contiguous shots over `[0, len)` that start at 0 and at every cut.
///
/// Cuts outside `(0, len)` are ignored and duplicates merged, so the result
/// always honours the [`ChunkAnalysis`] contract. Shots are of type
/// [`ShotType::Other`] with no description or dialogue.
pub fn shots_from_cuts(len: i64, cuts: &[i64]) -> Vec<Shot> {
    if len <= 0 {
        return Vec::new();
    }
    let mut starts: Vec<i64> = cuts.iter().copied().filter(|&c| c > 0 && c < len).collect();
    starts.sort_unstable();
    starts.dedup();
    starts.insert(0, 0);
    let ends = starts.iter().skip(1).copied().chain([len]);
    starts
        .iter()
        .zip(ends)
        .map(|(&start_frame, end_frame)| bare_shot(start_frame, end_frame))
        .collect()
}

fn bare_shot(start_frame: i64, end_frame: i64) -> Shot {
    Shot {
        start_frame,
        end_frame,
        shot_type: ShotType::Other,
        description: String::new(),
        dialogue: Vec::new(),
    }
}

/// The cuts of an analysis: the start of every shot but the first.
pub fn cuts_of(analysis: &ChunkAnalysis) -> Vec<i64> {
    analysis
        .shots
        .iter()
        .skip(1)
        .map(|s| s.start_frame)
        .collect()
}

/// Checks that `analysis` honours the contract for a chunk of `len` frames:
/// shots sorted, non-empty and contiguous from 0 to `len`. The message says
/// which shot breaks it.
pub fn check_analysis(len: i64, analysis: &ChunkAnalysis) -> Result<(), String> {
    let mut expected_start = 0;
    for (i, shot) in analysis.shots.iter().enumerate() {
        if shot.start_frame != expected_start || shot.end_frame <= shot.start_frame {
            return Err(format!(
                "shot {i} spans [{}, {}) but should start at {expected_start} and be non-empty",
                shot.start_frame, shot.end_frame
            ));
        }
        expected_start = shot.end_frame;
    }
    if expected_start != len {
        return Err(format!(
            "shots end at frame {expected_start}, the chunk at {len}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shots_start_at_zero_and_at_each_cut_inside_the_chunk() {
        let shots = shots_from_cuts(100, &[40, 12, 40, 0, 100, -3, 250]);
        let spans: Vec<(i64, i64)> = shots.iter().map(|s| (s.start_frame, s.end_frame)).collect();
        assert_eq!(spans, [(0, 12), (12, 40), (40, 100)]);
        assert!(check_analysis(100, &ChunkAnalysis { shots }).is_ok());
        assert!(shots_from_cuts(0, &[1]).is_empty());
    }

    #[test]
    fn broken_analyses_are_refused_with_the_offending_shot() {
        let gap = ChunkAnalysis {
            shots: vec![bare_shot(0, 10), bare_shot(11, 20)],
        };
        assert!(check_analysis(20, &gap).unwrap_err().contains("shot 1"));
        let short = ChunkAnalysis {
            shots: vec![bare_shot(0, 10)],
        };
        assert!(check_analysis(20, &short)
            .unwrap_err()
            .contains("end at frame 10"));
        assert!(check_analysis(20, &ChunkAnalysis::default()).is_err());
    }

    #[test]
    fn only_passing_failures_are_retryable() {
        let io = std::io::Error::other("disk full");
        assert!(AnalyzeError::Io {
            chunk_index: 1,
            context: "x".into(),
            source: io
        }
        .is_retryable());
        let missing = AnalyzeError::SourceMissing {
            chunk_index: 7,
            path: "/a.mp4".into(),
        };
        assert!(!missing.is_retryable());
        assert_eq!(missing.chunk_index(), 7);
        assert_eq!(missing.to_string(), "chunk 7: source /a.mp4 is missing");
    }
}
