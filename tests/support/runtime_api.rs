//! A fake Lambda Runtime API on 127.0.0.1, for running a compiled function
//! binary as Lambda runs it.
//!
//! It speaks the HTTP protocol `lambda_runtime` speaks (API version
//! `2018-06-01`): `GET /runtime/invocation/next` is a long poll that
//! answers with the next queued event and Lambda's headers (request id,
//! deadline, function ARN, trace id); the function then posts
//! `POST /runtime/invocation/{id}/response` or `/error`, or, when its init
//! failed, `POST /runtime/init/error`.
//!
//! It records everything it sees in a [`Recorded`], behind a watch channel
//! so that a caller can wait for a poll or an answer: when each poll
//! arrived (the first one is when Lambda counts the instance's init as
//! done), the answers by request id, the init errors, and any request it
//! does not know or a second answer to one invocation. It serves one
//! function instance: start one per process.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long each invocation may run, as its deadline header says:
/// process-chunk's timeout in `template.yaml`, the longest of the six.
pub const INVOCATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The function ARN every invocation names.
const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:shotlist-fake";

/// What a function posted back for one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Posted {
    /// `POST /runtime/invocation/{id}/response`: the body, as JSON (or as
    /// a JSON string when it is not JSON).
    Response(Value),
    /// `POST /runtime/invocation/{id}/error`: the error type header and the
    /// body.
    Error {
        error_type: Option<String>,
        body: String,
    },
}

/// Everything the fake Runtime API saw.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Answers by request id, in the order they came.
    pub posted: Vec<(String, Posted)>,
    /// Bodies of `POST /runtime/init/error`.
    pub init_errors: Vec<String>,
    /// When each `GET /runtime/invocation/next` arrived, in order.
    pub polls: Vec<Instant>,
    /// Requests the Runtime API does not know, or a second answer to one
    /// invocation.
    pub unexpected: Vec<String>,
}

impl Recorded {
    /// The answer to invocation `id`, once the function posted it.
    pub fn answer(&self, id: &str) -> Option<&Posted> {
        self.posted.iter().find(|(i, _)| i == id).map(|(_, p)| p)
    }
}

struct Shared {
    /// Events waiting for a `/next` poll: request id and payload.
    pending: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    recorded: watch::Sender<Recorded>,
}

/// A fake Lambda Runtime API for one function instance, served on the
/// caller's tokio runtime until it is dropped.
pub struct RuntimeApi {
    address: String,
    events: mpsc::UnboundedSender<(String, Value)>,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        // Aborted, not shut down gracefully: a pending long poll would
        // otherwise hold the server open for as long as the function lives.
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Serves the Runtime API on a free port of 127.0.0.1; errors when no
    /// port can be bound.
    pub async fn start() -> io::Result<RuntimeApi> {
        let (events, pending) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: tokio::sync::Mutex::new(pending),
            recorded: watch::Sender::new(Recorded::default()),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_event))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(unexpected)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the fake Lambda Runtime API stopped: {e}");
            }
        });
        Ok(RuntimeApi {
            address,
            events,
            shared,
            server,
        })
    }

    /// `HOST:PORT`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The environment Lambda gives an instance of function `name` served
    /// by this API (`AWS_LAMBDA_RUNTIME_API`, the function's name, memory,
    /// version and log names), and what the AWS SDK reads there: fake
    /// credentials, the region, and `AWS_EC2_METADATA_DISABLED`, so that it
    /// finds everything here and looks nowhere else. The function's own
    /// configuration is the caller's.
    pub fn lambda_env(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API", self.address.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", format!("shotlist-{name}")),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/01/01/[$LATEST]0123456789abcdef".into(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/shotlist-{name}"),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ACCESS_KEY_ID", "fake".into()),
            ("AWS_SECRET_ACCESS_KEY", "fake".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Queues `event` for the next poll; returns its request id.
    pub fn queue(&self, event: Value) -> String {
        let id = Uuid::new_v4().to_string();
        // The server's state holds the receiver for as long as `self` lives.
        let _ = self.events.send((id.clone(), event));
        id
    }

    /// A receiver of what was recorded, to wait for a poll or an answer.
    pub fn watch(&self) -> watch::Receiver<Recorded> {
        self.shared.recorded.subscribe()
    }

    /// A copy of what was recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.shared.recorded.borrow().clone()
    }

    /// How many `GET /runtime/invocation/next` calls started.
    pub fn polls(&self) -> usize {
        self.shared.recorded.borrow().polls.len()
    }

    /// The bodies of the init errors posted so far.
    pub fn init_errors(&self) -> Vec<String> {
        self.shared.recorded.borrow().init_errors.clone()
    }
}

/// `GET /runtime/invocation/next`: the next event, waiting for one as long
/// as it takes.
async fn next_event(State(shared): State<Arc<Shared>>) -> Response {
    let now = Instant::now();
    shared.recorded.send_modify(|r| r.polls.push(now));
    let mut pending = shared.pending.lock().await;
    let Some((id, event)) = pending.recv().await else {
        return StatusCode::GONE.into_response();
    };
    let deadline = (SystemTime::now() + INVOCATION_TIMEOUT)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let headers = [
        ("lambda-runtime-aws-request-id", id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        ("lambda-runtime-invoked-function-arn", FUNCTION_ARN.into()),
        (
            "lambda-runtime-trace-id",
            "Root=1-6b1307e0-0f1e2d3c4b5a69788796a5b4;Parent=53995c3f42cd8ad8;Sampled=0".into(),
        ),
    ];
    (headers, Json(event)).into_response()
}

fn record(shared: &Shared, id: String, posted: Posted) {
    shared.recorded.send_modify(|r| {
        if r.answer(&id).is_some() {
            r.unexpected
                .push(format!("a second answer to invocation {id}: {posted:?}"));
        } else {
            r.posted.push((id, posted));
        }
    });
}

/// `POST /runtime/invocation/{id}/response`.
async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    record(&shared, id, Posted::Response(value));
    StatusCode::ACCEPTED
}

/// `POST /runtime/invocation/{id}/error`.
async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = String::from_utf8_lossy(&body).into_owned();
    record(&shared, id, Posted::Error { error_type, body });
    StatusCode::ACCEPTED
}

/// `POST /runtime/init/error`.
async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    shared.recorded.send_modify(|r| r.init_errors.push(body));
    StatusCode::ACCEPTED
}

async fn unexpected(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> StatusCode {
    shared
        .recorded
        .send_modify(|r| r.unexpected.push(format!("{method} {uri}")));
    StatusCode::NOT_FOUND
}
