//! Test doubles for the cloud handlers: an analyzer whose behaviour per
//! chunk is scripted and which counts its runs, a queue that records what is
//! sent to it, a redelivery that records what it is asked, real-shaped SQS
//! and HTTP API events, and tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::{json, Value};
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::cloud::auth::{self, Claims};
use shotlist_shared::cloud::chunk::Redelivery;
use shotlist_shared::cloud::queue::{MessageQueue, QueueError};
use shotlist_shared::model::{ChunkAnalysis, Shot, ShotType};
use uuid::Uuid;

/// The JWT secret the tests' API uses.
pub const JWT_SECRET: &str = "shotlist-test-jwt-secret-0123456789abcdef";

/// What the scripted analyzer does with one chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// One shot covering the whole chunk, described as "chunk N".
    Whole,
    /// A retryable provider failure with this message.
    Transient(String),
    /// A permanent failure: the source cannot be read.
    Unreadable,
    /// Waits this long, then answers like `Whole`.
    Slow(Duration),
    /// Every API key rests for this long.
    Throttled(Duration),
    /// Every API key rests for `wait` on the first `runs` runs of the
    /// chunk; then answers like `Whole`.
    ThrottledFor { runs: u32, wait: Duration },
    /// One shot covering the whole chunk, described with this text as the
    /// analyzer got it (a model's words, unchecked).
    Described(String),
}

/// An analyzer that follows a script per chunk (default [`Script::Whole`])
/// and counts its runs per chunk.
#[derive(Default)]
pub struct ScriptedAnalyzer {
    scripts: Mutex<HashMap<u32, Script>>,
    runs: Mutex<HashMap<u32, u32>>,
}

impl ScriptedAnalyzer {
    pub fn new() -> Arc<ScriptedAnalyzer> {
        Arc::new(ScriptedAnalyzer::default())
    }

    /// Sets what chunk `index` does from now on.
    pub fn script(&self, index: u32, script: Script) {
        self.scripts.lock().unwrap().insert(index, script);
    }

    /// How often chunk `index` was analyzed.
    pub fn runs(&self, index: u32) -> u32 {
        self.runs.lock().unwrap().get(&index).copied().unwrap_or(0)
    }

    /// Runs per chunk, for every chunk analyzed at least once.
    pub fn all_runs(&self) -> HashMap<u32, u32> {
        self.runs.lock().unwrap().clone()
    }
}

#[async_trait]
impl Analyzer for ScriptedAnalyzer {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        let index = request.chunk_index;
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let run = runs.entry(index).or_default();
            *run += 1;
            *run
        };
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(&index)
            .cloned()
            .unwrap_or(Script::Whole);
        match script {
            Script::Whole => {}
            Script::Transient(message) => {
                return Err(AnalyzeError::Provider {
                    chunk_index: index,
                    analyzer: "scripted",
                    message,
                    retryable: true,
                })
            }
            Script::ThrottledFor { runs, wait } if run <= runs => {
                return Err(AnalyzeError::Throttled {
                    chunk_index: index,
                    analyzer: "scripted",
                    wait,
                })
            }
            Script::ThrottledFor { .. } => {}
            Script::Throttled(wait) => {
                return Err(AnalyzeError::Throttled {
                    chunk_index: index,
                    analyzer: "scripted",
                    wait,
                })
            }
            Script::Unreadable => {
                return Err(AnalyzeError::SourceUnreadable {
                    chunk_index: index,
                    path: request.source.clone(),
                    detail: "invalid data found when processing input".into(),
                })
            }
            Script::Slow(wait) => tokio::time::sleep(wait).await,
            Script::Described(text) => return Ok(whole_chunk(request, text)),
        }
        Ok(whole_chunk(request, format!("chunk {index}")))
    }
}

/// One wide shot over all of `request`'s chunk.
fn whole_chunk(request: &ChunkRequest, description: String) -> ChunkAnalysis {
    ChunkAnalysis {
        shots: vec![Shot {
            start_frame: 0,
            end_frame: request.end_frame - request.start_frame,
            shot_type: ShotType::Wide,
            description,
            dialogue: vec![],
        }],
    }
}

/// A queue that keeps every body sent to it, or refuses while `failing`.
#[derive(Default)]
pub struct RecordingQueue {
    sent: Mutex<Vec<String>>,
    pub failing: AtomicBool,
}

impl RecordingQueue {
    pub fn new() -> Arc<RecordingQueue> {
        Arc::new(RecordingQueue::default())
    }

    /// The bodies sent so far, parsed.
    pub fn sent(&self) -> Vec<Value> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).expect("bodies are JSON"))
            .collect()
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageQueue for RecordingQueue {
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(QueueError::Other {
                queue: "recording".into(),
                detail: "refusing on purpose".into(),
            });
        }
        self.sent.lock().unwrap().extend(bodies.iter().cloned());
        Ok(())
    }

    fn name(&self) -> &str {
        "recording"
    }
}

/// A [`Redelivery`] that records what the chunk handler asks of it: the
/// delays it sets on messages left for retry, and the bodies it sends again.
#[derive(Default)]
pub struct RecordingRedelivery {
    delayed: Mutex<Vec<(String, Duration)>>,
    sent_again: Mutex<Vec<(String, Duration)>>,
}

impl RecordingRedelivery {
    pub fn new() -> Arc<RecordingRedelivery> {
        Arc::new(RecordingRedelivery::default())
    }

    /// The (receipt handle, delay) pairs asked for since the last call.
    pub fn take_delayed(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut *self.delayed.lock().unwrap())
    }

    /// The (body, delay) pairs sent again since the last call.
    pub fn take_sent_again(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut *self.sent_again.lock().unwrap())
    }
}

#[async_trait]
impl Redelivery for RecordingRedelivery {
    async fn redeliver_after(&self, receipt_handle: &str, delay: Duration) {
        let asked = (receipt_handle.to_string(), delay);
        self.delayed.lock().unwrap().push(asked);
    }

    async fn send_again(&self, body: &str, delay: Duration) -> Result<(), String> {
        self.sent_again
            .lock()
            .unwrap()
            .push((body.to_string(), delay));
        Ok(())
    }
}

/// An SQS record as Lambda delivers it.
pub fn sqs_record(message_id: &str, body: &str, receive_count: u32) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": receive_count.to_string(),
            "SentTimestamp": "1764800000000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1764800000100"
        },
        "messageAttributes": {},
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:shotlist-chunks",
        "awsRegion": "us-east-1"
    })
}

/// An SQS event of `records`, through its JSON form as Lambda sends it.
pub fn sqs_event(records: Vec<Value>) -> SqsEvent {
    serde_json::from_value(json!({ "Records": records })).expect("a valid SQS event")
}

/// One record, for calling a handler's per-record function.
pub fn sqs_message(message_id: &str, body: &str, receive_count: u32) -> SqsMessage {
    serde_json::from_value(sqs_record(message_id, body, receive_count)).expect("a valid record")
}

/// A chunk message body.
pub fn chunk_body(video_id: Uuid, chunk_index: u32) -> String {
    json!({ "videoId": video_id, "chunkIndex": chunk_index }).to_string()
}

/// An API Gateway HTTP API (payload 2.0) event, as lambda_http reads it.
pub fn http_event(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> Value {
    let mut headers = json!({ "content-type": "application/json", "host": "api.example.test" });
    if let Some(a) = authorization {
        headers["authorization"] = json!(a);
    }
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "shotlist",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "shotlist-tests"
            },
            "requestId": Uuid::new_v4().to_string(),
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "04/Dec/2026:12:00:00 +0000",
            "timeEpoch": 1764849600000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// The request lambda_http makes of an HTTP API event.
pub fn http_request(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> lambda_http::Request {
    let event = http_event(method, path, authorization, body);
    lambda_http::request::from_str(&event.to_string()).expect("a valid HTTP API event")
}

/// `Bearer <token>` for the service role.
pub fn service_token() -> String {
    bearer(None, "service_role", 600)
}

/// `Bearer <token>` for a signed-in user.
pub fn user_token(user: Uuid) -> String {
    bearer(Some(user), "authenticated", 600)
}

/// `Bearer <token>` with the given claims, expiring in `seconds` (negative:
/// already expired).
pub fn bearer(sub: Option<Uuid>, role: &str, seconds: i64) -> String {
    let exp = (auth::now_epoch() as i64 + seconds).max(0) as u64;
    let claims = Claims {
        sub: sub.map(|u| u.to_string()),
        role: role.into(),
        exp,
    };
    format!(
        "Bearer {}",
        auth::sign(JWT_SECRET, &claims).expect("signed")
    )
}

/// A response's status and JSON body.
pub fn read_response(response: lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t).expect("a JSON body"),
        lambda_http::Body::Binary(b) => serde_json::from_slice(b).expect("a JSON body"),
        _ => Value::Null,
    };
    (status, body)
}
