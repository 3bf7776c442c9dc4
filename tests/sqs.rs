//! The SQS client and the local event source mapping against a real
//! SQS-compatible server: moto in server mode, named by
//! `SHOTLIST_TEST_SQS_URL` (`eval "$(./scripts/moto start)"` starts one and
//! sets it). Without it the tests fail under CI and are skipped elsewhere.
//!
//! Every test makes its own queues (a UUID in the name), so they run in
//! parallel; visibility timeouts of 1-2 s keep redelivery tests short.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::operation::send_message_batch::{SendMessageBatchInput, SendMessageBatchOutput};
use aws_sdk_sqs::types::{BatchResultErrorEntry, MessageSystemAttributeName, QueueAttributeName};
use shotlist_shared::cloud::poller::{batch_handler, EventSourceMapping, MappingConfig};
use shotlist_shared::cloud::queue::{
    ensure_queue_pair, queue_arn, MessageQueue, QueueError, QueuePair, RetryPolicy, SqsQueue,
};

const REGION: &str = "us-east-1";

/// The moto server's URL, or `None` (outside CI) when there is none.
fn moto_url() -> Option<String> {
    match std::env::var("SHOTLIST_TEST_SQS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let message = "SHOTLIST_TEST_SQS_URL is not set: start moto with \
                           `eval \"$(./scripts/moto start)\"`";
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("{message} (CI must run the SQS tests)");
            }
            eprintln!("skipping: {message}");
            None
        }
    }
}

/// A client for moto with dummy credentials and an explicit region: nothing
/// is read from the environment or profile files, and no metadata service
/// is asked.
fn client_with(
    url: &str,
    recorder: Option<Arc<Recorder>>,
    sdk_retries: bool,
) -> aws_sdk_sqs::Client {
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "shotlist-tests",
        ))
        .endpoint_url(url);
    if !sdk_retries {
        config = config.retry_config(RetryConfig::disabled());
    }
    if let Some(recorder) = recorder {
        config = config.interceptor(RecorderHandle(recorder));
    }
    aws_sdk_sqs::Client::from_conf(config.build())
}

fn client(url: &str) -> aws_sdk_sqs::Client {
    client_with(url, None, true)
}

fn unique_name(what: &str) -> String {
    format!("shotlist-test-{what}-{}", uuid::Uuid::new_v4().simple())
}

async fn pair(
    client: &aws_sdk_sqs::Client,
    what: &str,
    visibility: u32,
    max_receives: u32,
) -> QueuePair {
    ensure_queue_pair(client, &unique_name(what), visibility, max_receives)
        .await
        .expect("queues are created")
}

async fn delete_pair(client: &aws_sdk_sqs::Client, pair: &QueuePair) {
    for url in [&pair.url, &pair.dlq_url] {
        let _ = client.delete_queue().queue_url(url).send().await;
    }
}

/// Visible and in-flight message counts of a queue.
async fn counts(client: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attributes = out.attributes().cloned().unwrap_or_default();
    let get = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Receives (and deletes) every message until the queue has given at least
/// `expected` and then one empty answer, or 15 s passed. Returns the bodies.
async fn drain(client: &aws_sdk_sqs::Client, url: &str, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bodies = Vec::new();
    while Instant::now() < deadline {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(if bodies.len() >= expected { 0 } else { 1 })
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() && bodies.len() >= expected {
            break;
        }
        for message in messages {
            bodies.push(message.body().unwrap_or_default().to_owned());
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
    bodies
}

/// Waits until `done()` or `timeout`; says whether `done()` came true.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

// ---------------------------------------------------------------------------
// A client interceptor that records SendMessageBatch calls and can make
// one entry fail, to test the retries against the real server.
// ---------------------------------------------------------------------------

/// One entry to fail: the entry with this body gets an invalid DelaySeconds
/// (901), which the server refuses for that entry alone, reporting it in
/// `Failed` as a sender fault; the interceptor then makes the report say
/// `sender_fault` (false: a transient server-side failure). `times` calls.
#[derive(Debug, Clone)]
struct Injection {
    body: String,
    sender_fault: bool,
    times: usize,
}

#[derive(Debug, Default)]
struct RecorderState {
    /// Each SendMessageBatch call's entries as (id, body), as sent by the
    /// code under test (before any injection).
    calls: Vec<Vec<(String, String)>>,
    injection: Option<Injection>,
    /// Entry ids spoiled in calls in progress (ids are unique across the
    /// calls of one send_all).
    spoiled: HashSet<String>,
    /// Failed entries as the server reported them, before any rewrite.
    reported: Vec<BatchResultErrorEntry>,
}

#[derive(Debug, Default)]
struct Recorder {
    state: Mutex<RecorderState>,
}

impl Recorder {
    fn calls(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().calls.clone()
    }
}

#[derive(Debug)]
struct RecorderHandle(Arc<Recorder>);

impl Intercept for RecorderHandle {
    fn name(&self) -> &'static str {
        "shotlist-test-recorder"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(input) = context.input_mut().downcast_mut::<SendMessageBatchInput>() else {
            return Ok(());
        };
        let mut state = self.0.state.lock().unwrap();
        let entries = input.entries.get_or_insert_with(Vec::new);
        state.calls.push(
            entries
                .iter()
                .map(|e| (e.id().to_owned(), e.message_body().to_owned()))
                .collect(),
        );
        let armed = state
            .injection
            .as_ref()
            .filter(|i| i.times > 0)
            .map(|i| i.body.clone());
        if let Some(body) = armed {
            if let Some(entry) = entries.iter_mut().find(|e| e.message_body() == body) {
                entry.delay_seconds = Some(901);
                let id = entry.id().to_owned();
                state.spoiled.insert(id);
                state.injection.as_mut().unwrap().times -= 1;
            }
        }
        Ok(())
    }

    fn modify_before_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut state = self.0.state.lock().unwrap();
        let Some(Ok(output)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(output) = output.downcast_mut::<SendMessageBatchOutput>() else {
            return Ok(());
        };
        let sender_fault = state.injection.as_ref().is_some_and(|i| i.sender_fault);
        for failed in &mut output.failed {
            state.reported.push(failed.clone());
            if state.spoiled.remove(&failed.id) && !sender_fault {
                failed.sender_fault = false;
                failed.code = "InternalError".to_owned();
                failed.message = Some("made transient by the test".to_owned());
            }
        }
        Ok(())
    }
}

fn bodies(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"test\":\"{tag}\",\"n\":{i}}}"))
        .collect()
}

// ---------------------------------------------------------------------------
// SqsQueue::send_all
// ---------------------------------------------------------------------------

#[tokio::test]
async fn send_all_delivers_25_messages_exactly_once_in_three_batches() {
    let Some(url) = moto_url() else { return };
    let recorder = Arc::new(Recorder::default());
    let client = client_with(&url, Some(recorder.clone()), true);
    let pair = pair(&client, "send", 30, 5).await;
    let sent = bodies(25, "send");

    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .expect("all 25 are sent");

    let calls = recorder.calls();
    let mut sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10], "SendMessageBatch calls: {calls:?}");
    for call in &calls {
        let ids: HashSet<&str> = call.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids.len(),
            call.len(),
            "entry ids repeat within a call: {call:?}"
        );
    }
    let mut received = drain(&client, &pair.url, sent.len()).await;
    received.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(received, expected, "each body arrives exactly once");
    assert_eq!(counts(&client, &pair.url).await, (0, 0));
    // Nothing was sent with nothing to send.
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&[])
        .await
        .unwrap();
    assert_eq!(recorder.calls().len(), 3);
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn send_all_retries_only_the_entries_reported_failed() {
    let Some(url) = moto_url() else { return };
    let recorder = Arc::new(Recorder::default());
    let client = client_with(&url, Some(recorder.clone()), true);
    let pair = pair(&client, "retry", 30, 5).await;
    let sent = bodies(10, "retry");
    recorder.state.lock().unwrap().injection = Some(Injection {
        body: sent[4].clone(),
        sender_fault: false,
        times: 2,
    });

    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .expect("the failed entry is sent on the third try");

    let calls = recorder.calls();
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 1, 1], "calls: {calls:?}");
    assert_eq!(calls[1][0].1, sent[4]);
    assert_eq!(calls[2][0].1, sent[4]);
    // The server itself reported the spoiled entry as failed, twice.
    let id = &calls[0]
        .iter()
        .find(|(_, body)| *body == sent[4])
        .unwrap()
        .0;
    let reported = recorder.state.lock().unwrap().reported.clone();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert!(reported.iter().all(|f| &f.id == id), "{reported:?}");
    let mut received = drain(&client, &pair.url, sent.len()).await;
    received.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(received, expected, "each body arrives exactly once");
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn send_all_names_what_could_not_be_sent() {
    let Some(url) = moto_url() else { return };
    let recorder = Arc::new(Recorder::default());
    let client = client_with(&url, Some(recorder.clone()), true);
    let pair = pair(&client, "refused", 30, 5).await;
    let sent = bodies(6, "refused");
    let fast = RetryPolicy {
        max_tries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };

    // A sender fault is refused for good: no retry.
    recorder.state.lock().unwrap().injection = Some(Injection {
        body: sent[2].clone(),
        sender_fault: true,
        times: usize::MAX,
    });
    let queue = SqsQueue::new(pair.url.clone(), client.clone()).with_retry(fast);
    match queue.send_all(&sent).await {
        Err(QueueError::Send {
            failed,
            total,
            detail,
            ..
        }) => {
            assert_eq!((failed, total), (1, 6));
            assert!(detail.contains("DelaySeconds"), "{detail}");
        }
        other => panic!("expected a send error, got {other:?}"),
    }
    assert_eq!(recorder.calls().len(), 1, "a sender fault is not retried");

    // A server fault is retried, max_tries in all, then given up.
    recorder.state.lock().unwrap().injection = Some(Injection {
        body: sent[3].clone(),
        sender_fault: false,
        times: usize::MAX,
    });
    let err = queue.send_all(&sent[3..4]).await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Send {
                failed: 1,
                total: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1 of 1 messages"), "{err}");
    assert_eq!(recorder.calls().len(), 1 + 3);

    // The five that were not refused arrived.
    let received: HashSet<String> = drain(&client, &pair.url, 5).await.into_iter().collect();
    let expected: HashSet<String> = sent
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(received, expected);
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn send_all_retries_a_call_that_failed_as_a_whole() {
    // A queue on a port where nothing listens (on loopback): every call
    // fails to connect. The SDK's own retries are off, so each of our tries
    // is one call. No moto needed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{port}");
    let recorder = Arc::new(Recorder::default());
    let client = client_with(&dead, Some(recorder.clone()), false);
    let queue =
        SqsQueue::new(format!("{dead}/000000000000/nowhere"), client).with_retry(RetryPolicy {
            max_tries: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        });
    let err = queue.send_all(&bodies(12, "dead")).await.unwrap_err();
    match &err {
        QueueError::Send {
            failed,
            total,
            detail,
            ..
        } => {
            assert_eq!((*failed, *total), (12, 12));
            assert!(!detail.is_empty());
        }
        other => panic!("expected a send error, got {other:?}"),
    }
    // Two groups (10 + 2), four tries each.
    let mut sizes: Vec<usize> = recorder.calls().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [2, 2, 2, 2, 10, 10, 10, 10]);
}

#[tokio::test]
async fn ensure_queue_pair_is_idempotent_and_sets_the_redrive_policy() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let name = unique_name("pair");
    let first = ensure_queue_pair(&client, &name, 30, 5).await.unwrap();
    let second = ensure_queue_pair(&client, &name, 7, 3).await.unwrap();
    assert_eq!(first, second);
    assert!(first.url.ends_with(&name), "{}", first.url);
    assert!(
        first.dlq_url.ends_with(&format!("{name}-dlq")),
        "{}",
        first.dlq_url
    );
    assert_eq!(
        queue_arn(&client, &first.dlq_url).await.unwrap(),
        first.dlq_arn
    );
    assert!(
        first.dlq_arn.starts_with("arn:aws:sqs:"),
        "{}",
        first.dlq_arn
    );

    let out = client
        .get_queue_attributes()
        .queue_url(&first.url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = out.attributes().unwrap();
    assert_eq!(attributes[&QueueAttributeName::VisibilityTimeout], "7");
    let redrive: serde_json::Value =
        serde_json::from_str(&attributes[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], first.dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    delete_pair(&client, &first).await;
}

// ---------------------------------------------------------------------------
// EventSourceMapping
// ---------------------------------------------------------------------------

/// What a test handler saw of one record.
#[derive(Debug, Clone)]
struct Seen {
    invocation: usize,
    at: Instant,
    message_id: String,
    body: String,
    receive_count: u32,
}

fn record_all(event: &SqsEvent, invocation: usize, seen: &Mutex<Vec<Seen>>) {
    let now = Instant::now();
    let mut seen = seen.lock().unwrap();
    for record in &event.records {
        seen.push(Seen {
            invocation,
            at: now,
            message_id: record.message_id.clone().unwrap_or_default(),
            body: record.body.clone().unwrap_or_default(),
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        });
    }
}

async fn mapping_config(client: &aws_sdk_sqs::Client, url: &str) -> MappingConfig {
    let arn = queue_arn(client, url).await.unwrap();
    let mut config = MappingConfig::new(url, arn);
    config.wait_time_seconds = 1;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapping_never_runs_more_than_five_handlers_at_once() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "concurrency", 30, 5).await;
    let sent = bodies(20, "concurrency");
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .unwrap();

    // The handler measures the concurrency itself too.
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (live, peak, seen, calls) = (live.clone(), peak.clone(), seen.clone(), calls.clone());
        batch_handler(move |event: SqsEvent| {
            let (live, peak, seen) = (live.clone(), peak.clone(), seen.clone());
            let invocation = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                record_all(&event, invocation, &seen);
                tokio::time::sleep(Duration::from_millis(300)).await;
                live.fetch_sub(1, Ordering::SeqCst);
                Ok(SqsBatchResponse::default())
            }
        })
    };
    let mut config = mapping_config(&client, &pair.url).await;
    config.batch_size = 1;
    assert_eq!(config.maximum_concurrency, 5, "the default is 5");
    let started = Instant::now();
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    let stats = mapping.stats().clone();
    let all_done = wait_until(Duration::from_secs(20), || stats.messages_deleted() >= 20).await;
    let stats = mapping.stop().await;
    let elapsed = started.elapsed();
    assert!(all_done, "only {} of 20 deleted", stats.messages_deleted());

    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 5, "{peak} handlers ran at once");
    assert!(peak >= 2, "the handlers never overlapped (peak {peak})");
    assert!(
        stats.max_in_flight() <= 5 && stats.max_in_flight() >= 2,
        "{stats:?}"
    );
    assert_eq!(stats.invocations(), 20);
    assert_eq!(stats.messages_deleted(), 20);
    assert_eq!(stats.failed_batches(), 0);
    assert_eq!(stats.in_flight(), 0);
    let seen = seen.lock().unwrap().clone();
    let got: HashSet<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(got, sent.iter().map(String::as_str).collect::<HashSet<_>>());
    assert_eq!(seen.len(), 20, "no message was handled twice");
    // 20 sleeps of 0.3 s, 5 at a time, take at least 1.2 s, and far less
    // than the 6 s they would take one by one.
    assert!(elapsed >= Duration::from_millis(1200), "{elapsed:?}");
    eprintln!("20 messages, batch 1, concurrency 5: {elapsed:?}, peak {peak}");
    assert_eq!(counts(&client, &pair.url).await, (0, 0));
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn a_reported_item_failure_comes_back_and_the_rest_are_deleted() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "partial", 2, 5).await;
    let sent = bodies(3, "partial");
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let events = Arc::new(Mutex::new(Vec::<SqsEvent>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let middle = sent[1].clone();
    let handler = {
        let (seen, events, calls) = (seen.clone(), events.clone(), calls.clone());
        batch_handler(move |event: SqsEvent| {
            let invocation = calls.fetch_add(1, Ordering::SeqCst);
            record_all(&event, invocation, &seen);
            events.lock().unwrap().push(event.clone());
            let mut response = SqsBatchResponse::default();
            if invocation == 0 {
                for record in &event.records {
                    if record.body.as_deref() == Some(middle.as_str()) {
                        response.add_failure(record.message_id.clone().unwrap());
                    }
                }
            }
            async move { Ok(response) }
        })
    };
    let config = mapping_config(&client, &pair.url).await;
    let arn = config.queue_arn.clone();
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    let stats = mapping.stats().clone();
    let all_done = wait_until(Duration::from_secs(15), || stats.messages_deleted() >= 3).await;
    let stats = mapping.stop().await;
    assert!(
        all_done,
        "only {} of 3 deleted: {stats:?}",
        stats.messages_deleted()
    );

    let seen = seen.lock().unwrap().clone();
    let first: Vec<&Seen> = seen.iter().filter(|s| s.invocation == 0).collect();
    assert_eq!(first.len(), 3, "the first batch has all three: {seen:?}");
    let per_body = |body: &str| -> Vec<&Seen> { seen.iter().filter(|s| s.body == body).collect() };
    assert_eq!(per_body(&sent[0]).len(), 1, "{seen:?}");
    assert_eq!(per_body(&sent[2]).len(), 1, "{seen:?}");
    let middle_seen = per_body(&sent[1]);
    assert_eq!(middle_seen.len(), 2, "{seen:?}");
    assert_eq!(middle_seen[0].message_id, middle_seen[1].message_id);
    assert_eq!(
        (middle_seen[0].receive_count, middle_seen[1].receive_count),
        (1, 2)
    );
    let gap = middle_seen[1].at - middle_seen[0].at;
    assert!(
        gap >= Duration::from_millis(1500),
        "back after only {gap:?} (visibility timeout 2 s)"
    );
    eprintln!("a failed item came back after {gap:?} (visibility timeout 2 s)");
    assert_eq!(stats.invocations(), 2);
    assert_eq!(stats.messages_deleted(), 3);
    assert_eq!(stats.failed_batches(), 0);
    assert_eq!(counts(&client, &pair.url).await, (0, 0));

    // The event is the one Lambda sends.
    let events = events.lock().unwrap().clone();
    let record = &events[0].records[0];
    assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(record.event_source_arn.as_deref(), Some(arn.as_str()));
    assert_eq!(record.aws_region.as_deref(), Some(REGION));
    assert!(record
        .receipt_handle
        .as_deref()
        .is_some_and(|r| !r.is_empty()));
    let md5 = record.md5_of_body.as_deref().unwrap_or_default();
    assert!(
        md5.len() == 32 && md5.chars().all(|c| c.is_ascii_hexdigit()),
        "{md5:?}"
    );
    for attribute in [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "ApproximateFirstReceiveTimestamp",
        "SenderId",
    ] {
        assert!(
            record.attributes.contains_key(attribute),
            "no {attribute}: {:?}",
            record.attributes
        );
    }
    let json = serde_json::to_value(&events[0]).unwrap();
    assert!(json["Records"][0]["eventSourceARN"].is_string(), "{json}");
    eprintln!("attributes moto sends: {:?}", record.attributes);
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn a_message_that_always_fails_ends_in_the_dead_letter_queue() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "dlq", 1, 2).await;
    let sent = bodies(1, "dlq");
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (seen, calls) = (seen.clone(), calls.clone());
        batch_handler(move |event: SqsEvent| {
            record_all(&event, calls.fetch_add(1, Ordering::SeqCst), &seen);
            let mut response = SqsBatchResponse::default();
            response.set_failures(event.records.iter().filter_map(|r| r.message_id.clone()));
            async move { Ok(response) }
        })
    };
    let config = mapping_config(&client, &pair.url).await;
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    let started = Instant::now();
    let mut in_dlq = false;
    while !in_dlq && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        in_dlq = counts(&client, &pair.dlq_url).await.0 >= 1;
    }
    let stats = mapping.stop().await;
    assert!(in_dlq, "the message never reached the DLQ: {stats:?}");
    eprintln!(
        "in the DLQ after {:?} (visibility 1 s, maxReceiveCount 2)",
        started.elapsed()
    );

    let seen = seen.lock().unwrap().clone();
    let counts_seen: Vec<u32> = seen.iter().map(|s| s.receive_count).collect();
    assert_eq!(
        counts_seen,
        [1, 2],
        "handled exactly maxReceiveCount times: {seen:?}"
    );
    assert_eq!(stats.messages_deleted(), 0);
    assert_eq!(counts(&client, &pair.url).await, (0, 0));

    let out = client
        .receive_message()
        .queue_url(&pair.dlq_url)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = out.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body(), Some(sent[0].as_str()));
    assert_eq!(messages[0].message_id(), Some(seen[0].message_id.as_str()));
    let attributes: HashMap<&str, &str> = messages[0]
        .attributes()
        .map(|a| a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .unwrap_or_default();
    eprintln!("the message in the DLQ: {attributes:?}");
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn a_handler_error_or_an_unknown_identifier_redelivers_the_whole_batch() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "error", 1, 10).await;
    let sent = bodies(2, "error");
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&sent)
        .await
        .unwrap();

    // By delivery: the first fails with Err, the second names a message
    // that is not in the batch, the third succeeds.
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (seen, calls) = (seen.clone(), calls.clone());
        batch_handler(move |event: SqsEvent| {
            record_all(&event, calls.fetch_add(1, Ordering::SeqCst), &seen);
            let round = event.records[0]
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(0);
            async move {
                match round {
                    1 => Err("the handler failed".to_owned()),
                    2 => {
                        let mut response = SqsBatchResponse::default();
                        response.add_failure("not-a-message-of-this-batch");
                        Ok(response)
                    }
                    _ => Ok(SqsBatchResponse::default()),
                }
            }
        })
    };
    let config = mapping_config(&client, &pair.url).await;
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    let stats = mapping.stats().clone();
    let all_done = wait_until(Duration::from_secs(15), || stats.messages_deleted() >= 2).await;
    let stats = mapping.stop().await;
    assert!(
        all_done,
        "only {} of 2 deleted: {stats:?}",
        stats.messages_deleted()
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| s.invocation == 0).count(),
        2,
        "the first batch has both: {seen:?}"
    );
    for body in &sent {
        let deliveries: Vec<u32> = seen
            .iter()
            .filter(|s| &s.body == body)
            .map(|s| s.receive_count)
            .collect();
        assert_eq!(deliveries, [1, 2, 3], "{body}: {seen:?}");
    }
    assert!(stats.failed_batches() >= 2, "{stats:?}");
    assert_eq!(stats.messages_deleted(), 2);
    assert_eq!(counts(&client, &pair.url).await, (0, 0));
    assert_eq!(counts(&client, &pair.dlq_url).await, (0, 0));
    delete_pair(&client, &pair).await;
}

#[tokio::test]
async fn stopping_waits_for_the_invocation_in_flight() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "stop", 30, 5).await;
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&bodies(1, "stop"))
        .await
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let handler = {
        let started = started.clone();
        batch_handler(move |_event: SqsEvent| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                Ok(SqsBatchResponse::default())
            }
        })
    };
    let config = mapping_config(&client, &pair.url).await;
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || started.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let stats = mapping.stop().await;
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.invocations(), 1);
    assert_eq!(
        stats.messages_deleted(),
        1,
        "the batch in flight was finished and deleted"
    );
    assert_eq!(counts(&client, &pair.url).await, (0, 0));
    delete_pair(&client, &pair).await;
}

/// A stop that dropped the waiting long poll left the server waiting for a
/// reader that was gone: the first message to arrive was taken by nobody and
/// hidden for the whole visibility timeout (found by the pipeline benchmark:
/// a film's chunk waited 5 minutes).
#[tokio::test]
async fn a_message_sent_while_the_mapping_stops_is_left_visible_for_the_next_reader() {
    let Some(url) = moto_url() else { return };
    let client = client(&url);
    let pair = pair(&client, "stop-poll", 300, 5).await;
    let invoked = Arc::new(AtomicUsize::new(0));
    let handler = {
        let invoked = invoked.clone();
        batch_handler(move |_event: SqsEvent| {
            invoked.fetch_add(1, Ordering::SeqCst);
            async { Ok(SqsBatchResponse::default()) }
        })
    };
    let config = mapping_config(&client, &pair.url).await;
    let mapping = EventSourceMapping::new(client.clone(), config, handler)
        .unwrap()
        .spawn();
    // Let its first long poll (1 s) start waiting on the empty queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(mapping.stop());
    tokio::task::yield_now().await;
    SqsQueue::new(pair.url.clone(), client.clone())
        .send_all(&bodies(1, "stop-poll"))
        .await
        .unwrap();
    let stats = stopping.await.unwrap();
    assert_eq!(
        invoked.load(Ordering::SeqCst),
        0,
        "no handler runs after the stop"
    );
    assert_eq!(stats.messages_deleted(), 0);
    let got = client
        .receive_message()
        .queue_url(&pair.url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(
        got.len(),
        1,
        "the message sent during the stop must be visible, not hidden for 300 s"
    );
    delete_pair(&client, &pair).await;
}

/// The SQS client has no operation timeout: a stop that waited for the long
/// poll in flight without a bound hung for as long as a server that stopped
/// answering stayed silent, here for ever.
#[tokio::test]
async fn stopping_a_mapping_whose_server_stopped_answering_still_ends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts every connection and never answers; keeps them open.
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let client = client_with(&endpoint, None, false);
    let handler = batch_handler(|_event: SqsEvent| async { Ok(SqsBatchResponse::default()) });
    let mut config = MappingConfig::new(
        format!("{endpoint}/000000000000/silent"),
        "arn:aws:sqs:us-east-1:000000000000:silent",
    );
    config.wait_time_seconds = 1;
    let mapping = EventSourceMapping::new(client, config, handler)
        .unwrap()
        .spawn();
    // Let its first ReceiveMessage reach the silent server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = tokio::time::timeout(Duration::from_secs(30), mapping.stop())
        .await
        .expect("the stop must give up on a ReceiveMessage that never answers");
    assert_eq!(stats.invocations(), 0);
    silent.abort();
}

#[test]
fn the_mapping_refuses_a_bad_configuration() {
    let client = client_with("http://127.0.0.1:9", None, false);
    let handler = batch_handler(|_event: SqsEvent| async { Ok(SqsBatchResponse::default()) });
    let mut config = MappingConfig::new(
        "http://127.0.0.1:9/000000000000/q",
        "arn:aws:sqs:us-east-1:000000000000:q",
    );
    config.batch_size = 11;
    let err = EventSourceMapping::new(client, config, handler)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("batch size 11"), "{err}");
}
