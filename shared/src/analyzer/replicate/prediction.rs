//! One question asked with one key: the clip is uploaded, predictions are
//! created (again after E6716) and polled until they end, and what is left
//! is cleaned up: a prediction nobody waits for is canceled, the upload
//! deleted, in the background when the question itself is dropped.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::api::{error_text, joined_output, scrub, Prediction, Upload};
use super::{Call, Failure, Replicate, CLEANUP_TIMEOUT};

/// Retries of one call that failed with a 5xx or a connection error.
const TRANSIENT_RETRIES: usize = 4;
/// New predictions after one failed with E6716.
const START_RETRIES: usize = 2;
/// Replicate's code for "Timeout Starting Prediction", which passes.
const START_TIMEOUT_CODE: &str = "E6716";

impl Replicate {
    /// Upload, prediction and cleanup with one key.
    pub(super) async fn ask_with_key(
        &self,
        call: &Call<'_>,
        clip: &Path,
    ) -> Result<String, Failure> {
        let upload = self
            .retry_transient(call, || self.upload(call, clip))
            .await?;
        let leftover = self.leftover_upload(call, &upload);
        let answer = self.predict(call, &upload).await;
        let until = call.budget.deadline.min(Instant::now() + CLEANUP_TIMEOUT);
        self.delete_file(call, &upload, until).await;
        leftover.settle();
        answer
    }

    /// Creates predictions until one does not fail with E6716, and reads
    /// its answer.
    async fn predict(&self, call: &Call<'_>, upload: &Upload) -> Result<String, Failure> {
        (|| self.predict_once(call, upload))
            .retry(self.backoff(Some(START_RETRIES)))
            .when(|f| matches!(f, Failure::NotStarted(_)))
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .notify(|f, _| {
                tracing::debug!(
                    key = call.key(),
                    failure = ?f,
                    "prediction did not start; creating another"
                )
            })
            .await
    }

    async fn predict_once(&self, call: &Call<'_>, upload: &Upload) -> Result<String, Failure> {
        let created = self
            .retry_transient(call, || self.create(call, upload))
            .await?;
        let prediction_id = created.id.clone();
        let leftover = self.leftover_prediction(call, &prediction_id);
        match self.wait_terminal(call, created).await {
            Ok(done) => {
                leftover.settle();
                answer_of(call, done)
            }
            Err(failure) => {
                // Nobody waits for the prediction any more: stop paying for it.
                self.cancel(call, &prediction_id).await;
                leftover.settle();
                Err(match failure {
                    Failure::Throttled(_) => Failure::Transient("polling was rate-limited".into()),
                    other => other,
                })
            }
        }
    }

    /// Polls until the prediction is terminal, or the backoff would pass
    /// the deadline.
    async fn wait_terminal(
        &self,
        call: &Call<'_>,
        created: Prediction,
    ) -> Result<Prediction, Failure> {
        if created.is_terminal() {
            return Ok(created);
        }
        let id = created.id;
        let first = Instant::now() + self.config.poll.initial;
        if first >= call.budget.work_end {
            return Err(Failure::Deadline);
        }
        tokio::time::sleep_until(first).await;
        (|| self.poll(call, &id))
            .retry(self.backoff(None))
            .when(|f| {
                matches!(
                    f,
                    Failure::Running | Failure::Transient(_) | Failure::Throttled(_)
                )
            })
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .await
    }

    /// Runs `step` again after a 5xx or a connection error, a few times and
    /// within the call's work budget.
    async fn retry_transient<T, F, Fut>(&self, call: &Call<'_>, step: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        step.retry(self.backoff(Some(TRANSIENT_RETRIES)))
            .when(|f| matches!(f, Failure::Transient(_)))
            .adjust(|f, d| self.next_delay(f, d, call.budget.work_end))
            .await
    }

    /// The backoff between retries and polls; `times` bounds the retries.
    fn backoff(&self, times: Option<usize>) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.config.poll.initial)
            .with_max_delay(self.config.poll.max)
            .with_jitter();
        match times {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        }
    }

    /// The backoff's next wait: capped at the configured maximum (backon's
    /// jitter may double a wait), at least what a 429 asked for, and `None`
    /// when it would end after `until`.
    fn next_delay(
        &self,
        failure: &Failure,
        proposed: Option<Duration>,
        until: Instant,
    ) -> Option<Duration> {
        let mut delay = proposed?.min(self.config.poll.max);
        if let Failure::Throttled(rest) = failure {
            delay = delay.max(*rest);
        }
        (Instant::now() + delay < until).then_some(delay)
    }
}

/// The joined output of a terminal prediction, or why there is none.
fn answer_of(call: &Call<'_>, done: Prediction) -> Result<String, Failure> {
    let prediction_id = done.id.as_str();
    let key = call.key();
    match done.status.as_str() {
        "succeeded" => {
            let text = joined_output(&done.output).ok_or_else(|| {
                Failure::Permanent(format!(
                    "prediction {prediction_id} succeeded with an output that is neither \
                     text nor a list of texts"
                ))
            })?;
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                chars = text.len(),
                "prediction succeeded"
            );
            Ok(text)
        }
        "failed" => {
            let error = scrub(&error_text(&done.error), call.lease);
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                error = %error,
                "prediction failed"
            );
            let message = format!("prediction {prediction_id} failed: {error}");
            if error.contains(START_TIMEOUT_CODE) {
                Err(Failure::NotStarted(message))
            } else {
                Err(Failure::Permanent(message))
            }
        }
        status => {
            tracing::debug!(
                key,
                prediction_id = %prediction_id,
                status,
                "prediction ended without an answer"
            );
            Err(Failure::Retryable(format!(
                "prediction {prediction_id} was {status} before it answered"
            )))
        }
    }
}
