//! A local stand-in for Lambda's SQS event source mapping.
//!
//! [`EventSourceMapping`] long-polls an SQS queue (real SQS, or a local
//! server such as moto), hands each batch to a handler as the very
//! [`SqsEvent`] Lambda would, and deletes what the handler processed, with
//! Lambda's rules:
//!
//! - the handler returns `Err` (or panics, or runs past the function
//!   timeout): no message of the batch is deleted; they come back after the
//!   queue's visibility timeout, and after `maxReceiveCount` receives the
//!   queue's RedrivePolicy moves them to the dead-letter queue;
//! - the handler returns `Ok(response)`: every message not listed in
//!   `batchItemFailures` is deleted (`ReportBatchItemFailures`), except that
//!   an empty identifier, or one that names no message of the batch, fails
//!   the whole batch;
//! - at most `maximum_concurrency` handler invocations are in flight, as
//!   with `ScalingConfig.MaximumConcurrency`.
//!
//! It does not copy Lambda's batching window, its scaling of pollers, or the
//! rule that the function timeout must fit in the visibility timeout.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::queue::{describe_sdk_error, QueueError};

/// The function behind the mapping: gets one batch, answers like a Lambda
/// handler with `ReportBatchItemFailures` (`Err` fails the whole batch).
pub type BatchHandler =
    Arc<dyn Fn(SqsEvent) -> BoxFuture<'static, Result<SqsBatchResponse, String>> + Send + Sync>;

/// Wraps an async closure as a [`BatchHandler`].
pub fn batch_handler<F, Fut>(f: F) -> BatchHandler
where
    F: Fn(SqsEvent) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<SqsBatchResponse, String>> + Send + 'static,
{
    Arc::new(move |event| f(event).boxed())
}

/// How an [`EventSourceMapping`] polls and invokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingConfig {
    /// The queue to poll.
    pub queue_url: String,
    /// The queue's ARN, given to the handler as each record's
    /// `eventSourceARN`; its region field becomes `awsRegion`.
    pub queue_arn: String,
    /// Most messages per invocation, 1 to 10 (one ReceiveMessage call).
    pub batch_size: i32,
    /// Most handler invocations in flight at once (Lambda: 2 to 1000;
    /// 1 is allowed here, for sequential local runs).
    pub maximum_concurrency: usize,
    /// Long-poll wait of one ReceiveMessage call, 0 to 20 s.
    pub wait_time_seconds: i32,
    /// The function timeout: a handler still running after it is dropped
    /// and its batch failed. `None` lets handlers run as long as they like.
    pub function_timeout: Option<Duration>,
    /// How soon a message the handler failed is visible again. `None`
    /// waits out the queue's visibility timeout, as Lambda does; a local
    /// run whose queue has a long visibility timeout (it must outlast the
    /// function timeout) sets a short one here, through
    /// ChangeMessageVisibility, so retries come quickly.
    pub retry_visibility: Option<Duration>,
}

impl MappingConfig {
    /// Lambda's defaults for `queue_url`/`queue_arn`: batches of 10,
    /// maximum concurrency 5 (shotlist's), 20 s long polls, no timeout.
    pub fn new(queue_url: impl Into<String>, queue_arn: impl Into<String>) -> Self {
        MappingConfig {
            queue_url: queue_url.into(),
            queue_arn: queue_arn.into(),
            batch_size: 10,
            maximum_concurrency: 5,
            wait_time_seconds: 20,
            function_timeout: None,
            retry_visibility: None,
        }
    }

    /// The region named in the queue's ARN (`arn:aws:sqs:REGION:…`), if any.
    pub fn region(&self) -> Option<&str> {
        self.queue_arn
            .split(':')
            .nth(3)
            .filter(|region| !region.is_empty())
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=10).contains(&self.batch_size) {
            return Err(format!("batch size {} is not 1 to 10", self.batch_size));
        }
        if !(1..=1000).contains(&self.maximum_concurrency) {
            return Err(format!(
                "maximum concurrency {} is not 1 to 1000",
                self.maximum_concurrency
            ));
        }
        if !(0..=20).contains(&self.wait_time_seconds) {
            return Err(format!(
                "wait time {} s is not 0 to 20",
                self.wait_time_seconds
            ));
        }
        if self.queue_arn.is_empty() {
            return Err("the queue ARN is empty".to_owned());
        }
        Ok(())
    }
}

/// What a mapping has done so far; shared with its owner, read at any time.
#[derive(Debug, Default)]
pub struct MappingStats {
    invocations: AtomicU64,
    received: AtomicU64,
    deleted: AtomicU64,
    failed_batches: AtomicU64,
    receive_errors: AtomicU64,
    delete_errors: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl MappingStats {
    /// Handler invocations started (one per batch).
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::SeqCst)
    }
    /// Messages received, redeliveries included.
    pub fn messages_received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
    /// Messages deleted after their handler reported them processed.
    pub fn messages_deleted(&self) -> u64 {
        self.deleted.load(Ordering::SeqCst)
    }
    /// Invocations whose whole batch failed: `Err`, panic, timeout, or a
    /// response naming an empty or unknown identifier.
    pub fn failed_batches(&self) -> u64 {
        self.failed_batches.load(Ordering::SeqCst)
    }
    /// ReceiveMessage calls that failed (they are retried with a backoff).
    pub fn receive_errors(&self) -> u64 {
        self.receive_errors.load(Ordering::SeqCst)
    }
    /// Messages that should have been deleted but could not be (they come
    /// back after the visibility timeout).
    pub fn delete_errors(&self) -> u64 {
        self.delete_errors.load(Ordering::SeqCst)
    }
    /// Handler invocations running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// The most handler invocations ever seen running at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts one running invocation for as long as it lives, panics included.
struct InFlight<'a>(&'a MappingStats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a MappingStats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A local Lambda SQS event source mapping: polls one queue and invokes one
/// handler. Start it with [`EventSourceMapping::run`] or
/// [`EventSourceMapping::spawn`].
pub struct EventSourceMapping {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_sqs::Client,
    config: MappingConfig,
    region: Option<String>,
    handler: BatchHandler,
    stats: Arc<MappingStats>,
}

/// A mapping running in a tokio task, from [`EventSourceMapping::spawn`].
pub struct RunningMapping {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<MappingStats>,
}

impl RunningMapping {
    /// The running mapping's counters.
    pub fn stats(&self) -> &Arc<MappingStats> {
        &self.stats
    }

    /// Stops polling, waits for the invocations in flight (and their
    /// deletes), and returns the final counters.
    pub async fn stop(self) -> Arc<MappingStats> {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
        }
        self.stats
    }
}

impl EventSourceMapping {
    /// A mapping of the queue in `config` onto `handler`, polling through
    /// `client`. Refuses a batch size, concurrency or wait time out of range.
    pub fn new(
        client: aws_sdk_sqs::Client,
        config: MappingConfig,
        handler: BatchHandler,
    ) -> Result<Self, QueueError> {
        config.validate().map_err(|detail| QueueError::Other {
            queue: config.queue_url.clone(),
            detail,
        })?;
        let region = config.region().map(str::to_owned);
        Ok(EventSourceMapping {
            inner: Arc::new(Inner {
                client,
                config,
                region,
                handler,
                stats: Arc::default(),
            }),
        })
    }

    /// The mapping's counters, updated while it runs.
    pub fn stats(&self) -> Arc<MappingStats> {
        self.inner.stats.clone()
    }

    /// Runs in a new tokio task until [`RunningMapping::stop`].
    pub fn spawn(self) -> RunningMapping {
        let (stop, shutdown) = watch::channel(false);
        let stats = self.stats();
        let task = tokio::spawn(self.run(shutdown));
        RunningMapping { stop, task, stats }
    }

    /// Polls and invokes until `shutdown` turns `true` (or its sender is
    /// dropped), then waits for the invocations in flight and their deletes.
    /// A long poll still waiting at shutdown is waited for, not dropped: the
    /// server would go on waiting for a reader that is gone and hide the
    /// first message to arrive until its visibility timeout. What it returns
    /// is made visible again at once, for the next reader. That wait is
    /// bounded by `wait_time_seconds` plus [`STOP_GRACE`], because the SQS
    /// client has no operation timeout and a server that stopped answering
    /// would otherwise hold the stop forever; a poll abandoned then costs at
    /// most one batch hidden for the visibility timeout, a delay that
    /// redelivery already covers, never a lost message.
    /// Failed ReceiveMessage calls are logged and retried with a backoff
    /// (up to 10 s), as Lambda keeps polling.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let inner = self.inner;
        let slots = Arc::new(Semaphore::new(inner.config.maximum_concurrency));
        let mut invocations = JoinSet::new();
        let mut backoff = Duration::ZERO;
        loop {
            while let Some(done) = invocations.try_join_next() {
                report_panic(done);
            }
            // A free invocation slot first: no message is taken that could
            // not be handed to the handler at once.
            let slot = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            // A stop asked for while the slot was awaited must not start a
            // long poll that the stop would then have to wait out.
            if *shutdown.borrow() {
                break;
            }
            let receive = inner.receive();
            tokio::pin!(receive);
            // The receive first, so that a batch already received is handled.
            let received = tokio::select! {
                biased;
                received = &mut receive => received,
                _ = stopped(&mut shutdown) => {
                    inner.finish_receive(receive).await;
                    break;
                }
            };
            match received {
                Err(detail) => {
                    inner.stats.receive_errors.fetch_add(1, Ordering::SeqCst);
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
                    tracing::warn!(
                        queue = %inner.config.queue_url,
                        error = %detail,
                        retry_in_ms = backoff.as_millis() as u64,
                        "ReceiveMessage failed"
                    );
                    drop(slot);
                    tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
                Ok(messages) if messages.is_empty() => {
                    backoff = Duration::ZERO;
                    drop(slot);
                    if inner.config.wait_time_seconds == 0 {
                        // Short polling: do not spin on an empty queue.
                        tokio::select! {
                            biased;
                            _ = stopped(&mut shutdown) => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
                Ok(messages) => {
                    backoff = Duration::ZERO;
                    let inner = inner.clone();
                    invocations.spawn(async move {
                        inner.invoke(messages).await;
                        drop(slot);
                    });
                }
            }
        }
        while let Some(done) = invocations.join_next().await {
            report_panic(done);
        }
    }
}

/// How much longer than its `wait_time_seconds` a long poll in flight at
/// shutdown is waited for, and how long the messages it returns may take to
/// be made visible again: room for a round trip to a slow server.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What one ReceiveMessage call gave: the messages, or why it failed.
type ReceiveResult = Result<Vec<Message>, String>;

/// Resolves once shutdown is asked for (or can no longer be asked for).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done {
        if err.is_panic() {
            tracing::error!("an event source mapping invocation task panicked");
        }
    }
}

impl Inner {
    /// Waits, within bounds, for the long poll `receive` that a shutdown
    /// interrupted, and makes what it returns visible again at once (see
    /// [`EventSourceMapping::run`] for why it is not just dropped).
    async fn finish_receive(&self, receive: impl std::future::Future<Output = ReceiveResult>) {
        let seconds = u64::try_from(self.config.wait_time_seconds).unwrap_or(0);
        let bound = Duration::from_secs(seconds) + STOP_GRACE;
        match tokio::time::timeout(bound, receive).await {
            Ok(Ok(messages)) => {
                let messages: Vec<&Message> = messages.iter().collect();
                if tokio::time::timeout(STOP_GRACE, self.make_visible(&messages, 0))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        queue = %self.config.queue_url,
                        messages = messages.len(),
                        "ChangeMessageVisibility did not answer at shutdown; \
                         the messages return after the visibility timeout"
                    );
                }
            }
            // A failed receive took nothing.
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                queue = %self.config.queue_url,
                waited_ms = bound.as_millis() as u64,
                "ReceiveMessage did not answer at shutdown; abandoning it"
            ),
        }
    }

    /// Makes failed messages visible again after `retry_visibility`, when
    /// set. A failure here only means the message waits out the queue's
    /// visibility timeout instead.
    async fn retry_soon(&self, messages: &[&Message]) {
        let Some(after) = self.config.retry_visibility else {
            return;
        };
        let seconds = i32::try_from(after.as_secs()).unwrap_or(i32::MAX);
        self.make_visible(messages, seconds).await;
    }

    /// Makes `messages` visible again `seconds` from now; a failure only
    /// means a message waits out the queue's visibility timeout instead.
    async fn make_visible(&self, messages: &[&Message], seconds: i32) {
        for message in messages {
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            let changed = self
                .client
                .change_message_visibility()
                .queue_url(&self.config.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(seconds)
                .send()
                .await;
            if let Err(e) = changed {
                tracing::warn!(
                    queue = %self.config.queue_url,
                    error = %describe_sdk_error(&e),
                    "could not shorten a message's visibility"
                );
            }
        }
    }

    /// One ReceiveMessage call.
    async fn receive(&self) -> ReceiveResult {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.config.queue_url)
            .max_number_of_messages(self.config.batch_size)
            .wait_time_seconds(self.config.wait_time_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| describe_sdk_error(&e))?;
        let messages = out.messages.unwrap_or_default();
        self.stats
            .received
            .fetch_add(messages.len() as u64, Ordering::SeqCst);
        Ok(messages)
    }

    /// One invocation of the handler with `messages`, then the deletes.
    async fn invoke(&self, messages: Vec<Message>) {
        let event = sqs_event(&messages, &self.config.queue_arn, self.region.as_deref());
        let ids: Vec<&str> = messages
            .iter()
            .map(|m| m.message_id().unwrap_or_default())
            .collect();
        self.stats.invocations.fetch_add(1, Ordering::SeqCst);
        let outcome = {
            let _running = InFlight::enter(&self.stats);
            // Calling the handler may itself panic, before any future exists.
            let call = std::panic::AssertUnwindSafe(|| (self.handler)(event));
            match std::panic::catch_unwind(call) {
                Err(_) => Err("the handler panicked".to_owned()),
                Ok(future) => {
                    let future = std::panic::AssertUnwindSafe(future).catch_unwind();
                    let result = match self.config.function_timeout {
                        None => future.await,
                        Some(limit) => match tokio::time::timeout(limit, future).await {
                            Ok(result) => result,
                            Err(_) => Ok(Err(format!(
                                "the handler timed out after {} ms",
                                limit.as_millis()
                            ))),
                        },
                    };
                    result.unwrap_or_else(|_| Err("the handler panicked".to_owned()))
                }
            }
        };
        let delete = match outcome {
            Err(error) => Err(error),
            Ok(response) => messages_to_delete(&ids, &response),
        };
        match delete {
            Err(error) => {
                self.stats.failed_batches.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    queue = %self.config.queue_url,
                    messages = messages.len(),
                    %error,
                    "batch failed: its messages return after the visibility timeout"
                );
                let all: Vec<&Message> = messages.iter().collect();
                self.retry_soon(&all).await;
            }
            Ok(keep) => {
                let (done, failed): (Vec<_>, Vec<_>) =
                    messages.iter().zip(keep).partition(|(_, delete)| *delete);
                let done: Vec<&Message> = done.into_iter().map(|(m, _)| m).collect();
                let failed: Vec<&Message> = failed.into_iter().map(|(m, _)| m).collect();
                self.delete(&done).await;
                self.retry_soon(&failed).await;
            }
        }
    }

    /// Deletes `messages` with DeleteMessageBatch, retrying failed entries
    /// a few times; what is still not deleted is logged and counted.
    async fn delete(&self, messages: &[&Message]) {
        let mut pending: Vec<(usize, &str)> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.receipt_handle().map(|r| (i, r)))
            .collect();
        let mut last_error = String::new();
        for attempt in 1..=3u32 {
            if pending.is_empty() {
                break;
            }
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let entries = pending
                .iter()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(*receipt)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect::<Vec<_>>();
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.config.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Err(err) => last_error = describe_sdk_error(&err),
                Ok(out) => {
                    let ok: HashSet<&str> = out.successful().iter().map(|s| s.id()).collect();
                    self.stats
                        .deleted
                        .fetch_add(ok.len() as u64, Ordering::SeqCst);
                    if let Some(failed) = out.failed().first() {
                        last_error = format!(
                            "{}: {}",
                            failed.code(),
                            failed.message().unwrap_or("no message")
                        );
                    }
                    // Receipt handles that SQS calls invalid will not get
                    // better: only the others are retried.
                    let retry: HashSet<&str> = out
                        .failed()
                        .iter()
                        .filter(|f| !f.sender_fault())
                        .map(|f| f.id())
                        .collect();
                    let refused = out.failed().len() - retry.len();
                    self.stats
                        .delete_errors
                        .fetch_add(refused as u64, Ordering::SeqCst);
                    pending.retain(|(i, _)| retry.contains(format!("d{i}").as_str()));
                }
            }
        }
        if !pending.is_empty() || !last_error.is_empty() {
            self.stats
                .delete_errors
                .fetch_add(pending.len() as u64, Ordering::SeqCst);
            tracing::warn!(
                queue = %self.config.queue_url,
                not_deleted = pending.len(),
                error = %last_error,
                "DeleteMessageBatch: messages were processed but not deleted; they will be delivered again"
            );
        }
    }
}

/// Which messages of a batch to delete after the handler answered
/// `response`, given the batch's message ids in order: `Ok(flags)` with one
/// flag per message, or `Err` when the response fails the whole batch (an
/// empty or unknown `itemIdentifier`).
pub fn messages_to_delete(ids: &[&str], response: &SqsBatchResponse) -> Result<Vec<bool>, String> {
    let batch: HashSet<&str> = ids.iter().copied().filter(|id| !id.is_empty()).collect();
    let mut failed = HashSet::new();
    for failure in &response.batch_item_failures {
        let id = failure.item_identifier.as_str();
        if id.is_empty() {
            return Err("a batchItemFailure has an empty itemIdentifier".to_owned());
        }
        if !batch.contains(id) {
            return Err(format!(
                "the batchItemFailure {id:?} names no message of the batch"
            ));
        }
        failed.insert(id);
    }
    Ok(ids
        .iter()
        .map(|id| !id.is_empty() && !failed.contains(id))
        .collect())
}

/// The event Lambda would hand a function for `messages` received from the
/// queue `queue_arn` in `region`.
pub fn sqs_event(messages: &[Message], queue_arn: &str, region: Option<&str>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id().map(str::to_owned);
            record.receipt_handle = m.receipt_handle().map(str::to_owned);
            record.body = m.body().map(str::to_owned);
            record.md5_of_body = m.md5_of_body().map(str::to_owned);
            record.md5_of_message_attributes = m.md5_of_message_attributes().map(str::to_owned);
            record.attributes = m
                .attributes()
                .map(|attributes| {
                    attributes
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            record.message_attributes = m
                .message_attributes()
                .map(|attributes| {
                    attributes
                        .iter()
                        .map(|(k, v)| {
                            let mut attribute = SqsMessageAttribute::default();
                            attribute.data_type = Some(v.data_type().to_owned());
                            attribute.string_value = v.string_value().map(str::to_owned);
                            attribute.binary_value =
                                v.binary_value().map(|b| base64_data(b.as_ref()));
                            attribute.string_list_values = v.string_list_values().to_vec();
                            attribute.binary_list_values = v
                                .binary_list_values()
                                .iter()
                                .map(|b| base64_data(b.as_ref()))
                                .collect();
                            (k.clone(), attribute)
                        })
                        .collect::<HashMap<_, _>>()
                })
                .unwrap_or_default();
            record.event_source = Some("aws:sqs".to_owned());
            record.event_source_arn = Some(queue_arn.to_owned());
            record.aws_region = region.map(str::to_owned);
            record
        })
        .collect();
    event
}

/// Bytes as the event's base64 field (`Base64Data` is `#[non_exhaustive]`).
fn base64_data(bytes: &[u8]) -> Base64Data {
    let mut data = Base64Data::default();
    data.extend_from_slice(bytes);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(ids: &[&str]) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        response.set_failures(ids.iter().copied());
        response
    }

    #[test]
    fn an_empty_response_deletes_everything() {
        let flags = messages_to_delete(&["a", "b", "c"], &response(&[])).unwrap();
        assert_eq!(flags, [true, true, true]);
    }

    #[test]
    fn listed_failures_are_kept() {
        let flags = messages_to_delete(&["a", "b", "c"], &response(&["b"])).unwrap();
        assert_eq!(flags, [true, false, true]);
        let flags = messages_to_delete(&["a", "b"], &response(&["a", "b", "a"])).unwrap();
        assert_eq!(flags, [false, false]);
    }

    #[test]
    fn an_empty_or_unknown_identifier_fails_the_batch() {
        assert!(messages_to_delete(&["a", "b"], &response(&[""])).is_err());
        assert!(messages_to_delete(&["a", "b"], &response(&["a", "zzz"])).is_err());
    }

    #[test]
    fn the_config_is_checked() {
        let good = MappingConfig::new("http://q", "arn:aws:sqs:eu-west-3:123456789012:q");
        assert_eq!(good.region(), Some("eu-west-3"));
        assert!(good.validate().is_ok());
        for bad in [
            MappingConfig {
                batch_size: 11,
                ..good.clone()
            },
            MappingConfig {
                batch_size: 0,
                ..good.clone()
            },
            MappingConfig {
                maximum_concurrency: 0,
                ..good.clone()
            },
            MappingConfig {
                wait_time_seconds: 21,
                ..good.clone()
            },
            MappingConfig {
                queue_arn: String::new(),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_event_looks_like_lambdas() {
        let message = Message::builder()
            .message_id("id-1")
            .receipt_handle("rh-1")
            .body("{\"videoId\":1}")
            .md5_of_body("abc")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000000")
            .build();
        let event = sqs_event(
            &[message],
            "arn:aws:sqs:us-east-1:123456789012:chunks",
            Some("us-east-1"),
        );
        let json = serde_json::to_value(&event).unwrap();
        let record = &json["Records"][0];
        assert_eq!(record["messageId"], "id-1");
        assert_eq!(record["receiptHandle"], "rh-1");
        assert_eq!(record["body"], "{\"videoId\":1}");
        assert_eq!(record["md5OfBody"], "abc");
        assert_eq!(record["eventSource"], "aws:sqs");
        assert_eq!(
            record["eventSourceARN"],
            "arn:aws:sqs:us-east-1:123456789012:chunks"
        );
        assert_eq!(record["awsRegion"], "us-east-1");
        assert_eq!(record["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(record["attributes"]["SentTimestamp"], "1700000000000");
        // And it reads back as the event a Lambda handler deserializes.
        let back: SqsEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
