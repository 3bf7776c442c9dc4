//! The chunk worker: claim a chunk, analyze it, commit the result.
//!
//! The same steps serve the local runner and the Lambda function. A claim
//! gives the worker a lease token; only the holder of the current token can
//! commit, so a worker that was presumed dead and replaced cannot overwrite
//! the new attempt. The shots and the `completed` status are saved in one
//! transaction (`complete_chunk`). A failed analysis is recorded with its
//! error; a retryable one puts the chunk back to pending until its attempts
//! run out.
//!
//! A lease is short (a minute by default) so that a dead worker's chunk
//! comes back soon; while the analysis runs the worker renews it every third
//! of its length, so a live worker keeps its chunk however long the analysis
//! takes. A renewal that finds the chunk taken over stops the analysis at
//! once: its result could not be committed anyway.

use std::ops::RangeInclusive;
use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use crate::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use crate::db::{Claim, ClaimedChunk, Db, DbError, Outcome, Progress, Report};
use crate::model::{storable_text, ChunkAnalysis, Shot};
use crate::probe::MediaInfo;

/// The whole seconds a lease may last (`--lease-seconds`,
/// `SHOTLIST_LEASE_SECONDS`): long enough that a renewal every third of it
/// survives a slow database, short enough that a dead worker's chunk does
/// not wait for long.
pub const LEASE_SECONDS: RangeInclusive<u64> = 3..=3600;

/// Reads a lease length given as whole seconds in [`LEASE_SECONDS`]; the
/// error names `name`, the flag or variable it came from.
pub fn parse_lease(name: &str, text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(s) if LEASE_SECONDS.contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{name} must be a whole number of seconds from {} to {}, got {text:?}",
            LEASE_SECONDS.start(),
            LEASE_SECONDS.end()
        )),
    }
}

/// How a worker treats one chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerConfig {
    /// How long a claim holds the chunk unless renewed: how long the chunk
    /// of a worker that died waits before another worker may take it. The
    /// worker renews it every third of this while it analyzes, so it need
    /// not outlast `chunk_timeout`.
    pub lease: Duration,
    /// The most one analysis may take before it counts as a failed attempt.
    pub chunk_timeout: Duration,
    /// Attempts before a chunk fails for good.
    pub max_attempts: u32,
    /// Whether this is the last time the chunk will be tried whatever its
    /// attempts say (the queue's last delivery of its message): a retryable
    /// failure then fails the chunk for good, with its error.
    pub final_attempt: bool,
    /// How often a chunk may be given back unanalyzed because the provider
    /// could not take it (every key rate-limited) before it fails for good.
    pub max_releases: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease: Duration::from_secs(60),
            chunk_timeout: Duration::from_secs(300),
            max_attempts: 3,
            final_attempt: false,
            max_releases: 40,
        }
    }
}

/// What became of one chunk in one call of [`process_chunk`].
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// This call saved the chunk's shots. `progress.finished` is true when
    /// this commit finished the film: the caller then finalizes it.
    Completed(Progress),
    /// This call failed the chunk for good (`progress.finished` as above).
    Failed { error: String, progress: Progress },
    /// The chunk was already completed or failed: a duplicate delivery.
    AlreadyTerminal { status: String },
    /// Another worker holds a live lease: try again later.
    Busy,
    /// The attempt failed, the chunk is pending again: try again later, not
    /// before `retry_after` when it is given (the provider's keys rest; the
    /// attempt was not counted).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The chunk was taken from this worker (taken over after its lease ran
    /// out, force-finalized) while it analyzed; nothing saved. The analysis
    /// was stopped as soon as a renewal of the lease found out.
    LeaseLost,
}

impl Done {
    /// The film's progress when this call finished the film.
    pub fn finished(&self) -> bool {
        match self {
            Done::Completed(p) | Done::Failed { progress: p, .. } => p.finished,
            _ => false,
        }
    }
}

/// Claims, analyzes and commits chunk `chunk_index` of `video_id`.
///
/// Errors only when the database cannot be reached or refuses the call;
/// analyzer failures are recorded on the chunk and returned as [`Done`].
pub async fn process_chunk(
    db: &Db,
    analyzer: &dyn Analyzer,
    video_id: Uuid,
    chunk_index: u32,
    config: &WorkerConfig,
) -> Result<Done, DbError> {
    let span = tracing::info_span!("chunk", %video_id, chunk_index, analyzer = analyzer.name());
    let job = Job {
        db,
        video_id,
        chunk_index,
        config,
    };
    job.run(analyzer).instrument(span).await
}

/// One chunk being processed.
struct Job<'a> {
    db: &'a Db,
    video_id: Uuid,
    chunk_index: u32,
    config: &'a WorkerConfig,
}

impl Job<'_> {
    async fn run(&self, analyzer: &dyn Analyzer) -> Result<Done, DbError> {
        let (lease, attempts) = (self.config.lease, self.config.max_attempts);
        let claimed = match self
            .db
            .claim_chunk(self.video_id, self.chunk_index, lease, attempts)
            .await?
        {
            Claim::Claimed(c) => c,
            Claim::Busy => return Ok(Done::Busy),
            Claim::Terminal {
                progress: Some(progress),
                ..
            } => {
                let error = "attempts used up".to_string();
                return Ok(Done::Failed { error, progress });
            }
            Claim::Terminal {
                status,
                progress: None,
            } => return Ok(Done::AlreadyTerminal { status }),
        };
        tracing::debug!(attempt = claimed.attempt, "claimed");
        let analysis = analyze(analyzer, self.video_id, &claimed, self.config.chunk_timeout);
        // The analysis comes first: when both are ready, a finished analysis
        // is committed rather than thrown away (the commit checks the lease).
        let result = tokio::select! {
            biased;
            result = analysis => result,
            () = self.hold_lease(claimed.lease_token) => {
                let attempt = claimed.attempt;
                tracing::warn!(attempt, "chunk taken from this worker; analysis stopped");
                return Ok(Done::LeaseLost);
            }
        };
        match result {
            Ok(analysis) => self.commit(&claimed, analysis).await,
            Err(e) => self.fail(&claimed, &e).await,
        }
    }

    /// Renews the lease held with `token` every third of its length, and
    /// returns only when a renewal finds that the token no longer holds the
    /// chunk. A renewal the database fails is tried again at the next tick,
    /// when a third of the lease is still left; a chunk is never failed for
    /// it.
    async fn hold_lease(&self, token: Uuid) {
        let lease = self.config.lease;
        // A zero period would make the interval panic; no real lease is
        // that short (claim_chunk refuses a zero lease).
        let period = (lease / 3).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self
                .db
                .renew_lease(self.video_id, self.chunk_index, token, lease)
                .await
            {
                Ok(true) => tracing::trace!("lease renewed"),
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "cannot renew the lease; trying again soon"),
            }
        }
    }

    async fn commit(
        &self,
        claimed: &ClaimedChunk,
        analysis: ChunkAnalysis,
    ) -> Result<Done, DbError> {
        let mut shots = absolute_shots(analysis, claimed.start_frame, claimed.end_frame);
        shots.iter_mut().for_each(scrub_shot);
        let report = match self
            .db
            .complete_chunk(self.video_id, self.chunk_index, claimed.lease_token, &shots)
            .await
        {
            Ok(report) => report,
            // The database refused what the analyzer said (text it cannot
            // store, a shot it does not accept): a failed attempt, not a
            // database failure, so the chunk is not left held for nothing.
            Err(e) if e.is_refused_data() => {
                let refused = AnalyzeError::BadOutput {
                    chunk_index: self.chunk_index,
                    detail: format!("the database refused the shots: {e}"),
                };
                return self.fail(claimed, &refused).await;
            }
            Err(e) => return Err(e),
        };
        let progress = report.progress;
        Ok(match report.outcome {
            Outcome::Completed => {
                let (completed, total) = (progress.completed_chunks, progress.total_chunks);
                tracing::info!(completed, total, shots = shots.len(), "chunk completed");
                Done::Completed(progress)
            }
            Outcome::AlreadyCompleted => Done::AlreadyTerminal {
                status: "completed".into(),
            },
            Outcome::AlreadyFailed => Done::AlreadyTerminal {
                status: "failed".into(),
            },
            Outcome::LeaseLost | Outcome::Retry | Outcome::Failed | Outcome::Released => {
                Done::LeaseLost
            }
        })
    }

    async fn fail(&self, claimed: &ClaimedChunk, e: &AnalyzeError) -> Result<Done, DbError> {
        // On the queue's last delivery the chunk fails like any other, so
        // that no message is lost with its chunk left pending; the queue
        // handler sends a waiting chunk back as a new message before then.
        if let (Some(wait), false) = (e.retry_after(), self.config.final_attempt) {
            return self.release(claimed, e, wait).await;
        }
        let retryable = e.is_retryable() && !self.config.final_attempt;
        let error = e.to_string();
        tracing::warn!(attempt = claimed.attempt, retryable, error = %e, "analysis failed");
        let (token, attempts) = (claimed.lease_token, self.config.max_attempts);
        let report = self
            .db
            .fail_chunk(
                self.video_id,
                self.chunk_index,
                token,
                &error,
                retryable,
                attempts,
            )
            .await?;
        Ok(settled(report, error, None))
    }

    /// Gives the chunk back without counting the attempt: the analyzer could
    /// not start for reasons outside the chunk (every key rate-limited).
    async fn release(
        &self,
        claimed: &ClaimedChunk,
        e: &AnalyzeError,
        wait: Duration,
    ) -> Result<Done, DbError> {
        let error = e.to_string();
        tracing::info!(retry_in_s = wait.as_secs(), error = %e, "chunk released: provider busy");
        let report = self
            .db
            .release_chunk(
                self.video_id,
                self.chunk_index,
                claimed.lease_token,
                &error,
                self.config.max_releases,
            )
            .await?;
        if report.outcome == Outcome::Failed {
            tracing::warn!(error = %e, "chunk failed: given back too often");
        }
        Ok(settled(report, error, Some(wait)))
    }
}

/// What a `fail_chunk` or `release_chunk` report means for this call;
/// `retry_after` goes with a chunk that is pending again.
fn settled(report: Report, error: String, retry_after: Option<Duration>) -> Done {
    match report.outcome {
        Outcome::Retry | Outcome::Released => Done::Retry { error, retry_after },
        Outcome::Failed => Done::Failed {
            error,
            progress: report.progress,
        },
        Outcome::AlreadyCompleted => Done::AlreadyTerminal {
            status: "completed".into(),
        },
        Outcome::AlreadyFailed => Done::AlreadyTerminal {
            status: "failed".into(),
        },
        Outcome::LeaseLost | Outcome::Completed => Done::LeaseLost,
    }
}

async fn analyze(
    analyzer: &dyn Analyzer,
    video_id: Uuid,
    claimed: &ClaimedChunk,
    timeout: Duration,
) -> Result<ChunkAnalysis, AnalyzeError> {
    let mut request = request_for(video_id, claimed)?;
    request.deadline = Some(tokio::time::Instant::now() + timeout);
    match tokio::time::timeout(timeout, analyzer.analyze(&request)).await {
        Ok(result) => result,
        Err(_) => Err(AnalyzeError::TimedOut {
            chunk_index: claimed.chunk_index,
            seconds: timeout.as_secs_f64(),
        }),
    }
}

fn request_for(video_id: Uuid, claimed: &ClaimedChunk) -> Result<ChunkRequest, AnalyzeError> {
    let bad = |detail: String| AnalyzeError::BadRequest {
        chunk_index: claimed.chunk_index,
        detail,
    };
    let media: MediaInfo = serde_json::from_value(claimed.media.clone()).map_err(|e| {
        bad(format!(
            "the film's stored media description is unreadable: {e}"
        ))
    })?;
    let source = claimed
        .source
        .clone()
        .ok_or_else(|| bad("the film has no source".into()))?;
    Ok(ChunkRequest {
        video_id,
        chunk_index: claimed.chunk_index,
        source,
        media,
        start_frame: claimed.start_frame,
        end_frame: claimed.end_frame,
        deadline: None,
    })
}

/// Removes from a shot's text what cannot be stored ([`is_text_char`]), for
/// every analyzer alike.
fn scrub_shot(shot: &mut Shot) {
    scrub(&mut shot.description);
    for line in &mut shot.dialogue {
        scrub(&mut line.speaker);
        scrub(&mut line.line);
    }
}

fn scrub(text: &mut String) {
    if let std::borrow::Cow::Owned(clean) = storable_text(text) {
        *text = clean;
    }
}

/// Turns an analysis in chunk-local frames into shots in absolute frames,
/// keeping only what lies inside the chunk: shots are clipped to it, sorted
/// by start, trimmed where they overlap the one before, and dropped when
/// nothing is left.
pub fn absolute_shots(analysis: ChunkAnalysis, start_frame: i64, end_frame: i64) -> Vec<Shot> {
    let len = end_frame - start_frame;
    let mut shots: Vec<Shot> = analysis
        .shots
        .into_iter()
        .filter_map(|mut s| {
            s.start_frame = s.start_frame.clamp(0, len);
            s.end_frame = s.end_frame.clamp(0, len);
            (s.start_frame < s.end_frame).then(|| s.shifted(start_frame))
        })
        .collect();
    shots.sort_by_key(|s| s.start_frame);
    let mut previous_end = 0;
    shots.retain_mut(|s| {
        s.start_frame = s.start_frame.max(previous_end);
        previous_end = previous_end.max(s.end_frame);
        s.start_frame < s.end_frame
    });
    shots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_from_3_to_3600_whole_seconds_is_taken() {
        assert_eq!(parse_lease("X", "3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_lease("X", " 3600 "), Ok(Duration::from_secs(3600)));
        assert_eq!(WorkerConfig::default().lease, Duration::from_secs(60));
    }

    #[test]
    fn a_lease_outside_the_range_is_refused_naming_where_it_came_from() {
        for text in ["2", "3601", "0", "-5", "1.5", "", "sixty"] {
            let error = parse_lease("SHOTLIST_LEASE_SECONDS", text).expect_err(text);
            assert!(
                error.starts_with(
                    "SHOTLIST_LEASE_SECONDS must be a whole number of seconds from 3 to 3600"
                ),
                "{error}"
            );
        }
    }
}
