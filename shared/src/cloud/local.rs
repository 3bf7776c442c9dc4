//! The cloud shape on one machine: the same handlers as the Lambda
//! functions, a real SQS-compatible server (moto's server mode, or SQS
//! itself) between them, and [`EventSourceMapping`]s standing in for
//! Lambda's SQS triggers.
//!
//! ```text
//! submit (HTTP API v2 request) ─► chunk queue ─► process-chunk (≤ 5 at once)
//!                                     ▲ retries       │ the commit that finishes the film
//!                                     └───────────────┤
//!                                                     ▼
//!                                              finalize queue ─► finalize ─► sheet
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::analyzer::Analyzer;
use crate::cloud::api::{Api, Endpoint, SourceRoot};
use crate::cloud::auth::{self, Claims, Verifier};
use crate::cloud::chunk::{ChunkHandler, Redelivery, SqsRedelivery};
use crate::cloud::finalize::FinalizeHandler;
use crate::cloud::poller::{batch_handler, EventSourceMapping, MappingConfig, MappingStats};
use crate::cloud::queue::{ensure_queue_pair, queue_arn, sqs_client, QueueError, SqsQueue};
use crate::db::{Db, DbError};
use crate::plan::PlanParams;
use crate::probe::ProbeOptions;
use crate::sheet::{FilmDetails, Sheet};
use crate::worker::WorkerConfig;

/// How the local cloud is laid out.
#[derive(Debug, Clone)]
pub struct LocalCloudOptions {
    /// The SQS-compatible endpoint, e.g. `http://127.0.0.1:5000`.
    pub sqs_endpoint: String,
    /// Queue names are `<prefix>-chunks`, `<prefix>-finalize` and their
    /// `-dlq`s.
    pub queue_prefix: String,
    /// Chunk invocations in flight at most (the mapping's
    /// `ScalingConfig.MaximumConcurrency`).
    pub maximum_concurrency: usize,
    /// The chunk queue's `maxReceiveCount`.
    pub max_receives: u32,
    /// The function timeout each invocation is given as its deadline. The
    /// queues' visibility timeout is this plus half a minute, so a message
    /// never shows again while its invocation still runs.
    pub function_timeout: Duration,
    /// How soon a message the handler listed for retry is delivered again
    /// (the cloud waits out the visibility timeout instead).
    pub retry_delay: Duration,
    pub worker: WorkerConfig,
    pub plan: PlanParams,
    /// The film details submitted with the film (`details` in
    /// `POST /videos`); empty ones are not sent, so a resubmission keeps
    /// what is stored.
    pub details: FilmDetails,
}

impl LocalCloudOptions {
    /// The queues' visibility timeout: the function timeout and half a
    /// minute for the commit and the answer.
    pub fn visibility_timeout_seconds(&self) -> u32 {
        u32::try_from(self.function_timeout.as_secs() + 30).unwrap_or(u32::MAX)
    }
}

impl Default for LocalCloudOptions {
    fn default() -> Self {
        LocalCloudOptions {
            sqs_endpoint: "http://127.0.0.1:5000".into(),
            queue_prefix: "shotlist".into(),
            maximum_concurrency: 5,
            max_receives: 5,
            function_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_secs(2),
            worker: WorkerConfig::default(),
            plan: PlanParams::default(),
            details: FilmDetails::default(),
        }
    }
}

/// Why a local cloud run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalCloudError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot use the SQS endpoint {endpoint} ({detail}); is it running? `./scripts/moto start` starts one and prints its URL")]
    Endpoint { endpoint: String, detail: String },
    #[error("submit refused the film ({status}): {message}")]
    Submit { status: u16, message: String },
    #[error("{0}")]
    Stuck(String),
}

/// What a run did, for reports and tests.
#[derive(Debug)]
pub struct LocalCloudReport {
    pub video_id: Uuid,
    pub sheet: Sheet,
    pub chunk_stats: Arc<MappingStats>,
    pub finalize_stats: Arc<MappingStats>,
}

/// The queues, handlers and API of one local cloud.
pub struct LocalCloud {
    pub db: Db,
    pub api: Api,
    pub chunks: ChunkHandler,
    pub finalize: FinalizeHandler,
    pub client: aws_sdk_sqs::Client,
    pub chunk_queue_url: String,
    pub finalize_queue_url: String,
    options: LocalCloudOptions,
    token: String,
}

impl LocalCloud {
    /// Creates (or finds) the queues and builds the handlers. Films are
    /// submitted as bucket keys under `source_root`.
    pub async fn new(
        db: Db,
        analyzer: Arc<dyn Analyzer>,
        source_root: &Path,
        options: LocalCloudOptions,
    ) -> Result<LocalCloud, LocalCloudError> {
        let client = client_for(&options.sqs_endpoint).await;
        let visibility = options.visibility_timeout_seconds();
        let chunk_pair = ensure_queue_pair(
            &client,
            &format!("{}-chunks", options.queue_prefix),
            visibility,
            options.max_receives,
        )
        .await
        .map_err(|e| LocalCloudError::Endpoint {
            endpoint: options.sqs_endpoint.clone(),
            detail: e.to_string(),
        })?;
        let finalize_pair = ensure_queue_pair(
            &client,
            &format!("{}-finalize", options.queue_prefix),
            visibility,
            options.max_receives,
        )
        .await?;
        // The run plays Supabase: a fresh secret, a service-role token.
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let claims = Claims {
            sub: None,
            role: "service_role".into(),
            exp: auth::now_epoch() + 24 * 3600,
        };
        let token = auth::sign(&secret, &claims).map_err(LocalCloudError::Stuck)?;
        let verifier = Verifier::new(&secret).map_err(LocalCloudError::Stuck)?;
        let api = Api {
            db: db.clone(),
            verifier,
            chunk_queue: Arc::new(SqsQueue::new(chunk_pair.url.clone(), client.clone())),
            source_root: Some(SourceRoot::Folder(source_root.to_path_buf())),
            plan: options.plan,
            probe: ProbeOptions::default(),
            // Films are keys under a local folder; no URL is fetched.
            allow_private_sources: false,
        };
        let chunks = ChunkHandler {
            db: db.clone(),
            analyzer,
            finalize_queue: Arc::new(SqsQueue::new(finalize_pair.url.clone(), client.clone())),
            worker: options.worker,
            max_receives: options.max_receives,
            queue_name: format!("{}-chunks", options.queue_prefix),
            // The mapping brings failed messages back after `retry_delay`;
            // a chunk waiting on rate limits is sent again, as in AWS.
            redelivery: Some(Arc::new(SendAgainOnly(SqsRedelivery {
                client: client.clone(),
                queue_url: chunk_pair.url.clone(),
            }))),
        };
        let finalize = FinalizeHandler {
            db: db.clone(),
            queue_name: format!("{}-finalize", options.queue_prefix),
        };
        Ok(LocalCloud {
            db,
            api,
            chunks,
            finalize,
            client,
            chunk_queue_url: chunk_pair.url,
            finalize_queue_url: finalize_pair.url,
            options,
            token,
        })
    }

    /// `POST /videos` with `body`, as API Gateway would deliver it.
    pub async fn submit(&self, body: &Value) -> Result<Value, LocalCloudError> {
        let event = json!({
            "version": "2.0",
            "routeKey": "POST /videos",
            "rawPath": "/videos",
            "rawQueryString": "",
            "headers": {
                "authorization": format!("Bearer {}", self.token),
                "content-type": "application/json"
            },
            "requestContext": {
                "http": { "method": "POST", "path": "/videos", "protocol": "HTTP/1.1",
                          "sourceIp": "127.0.0.1", "userAgent": "shotlist" },
                "requestId": Uuid::new_v4().to_string(),
                "routeKey": "POST /videos",
                "stage": "$default"
            },
            "body": body.to_string(),
            "isBase64Encoded": false
        });
        let request = lambda_http::request::from_str(&event.to_string())
            .map_err(|e| LocalCloudError::Stuck(format!("cannot build the submit request: {e}")))?;
        let response = self.api.handle(&[Endpoint::Submit], request).await;
        let status = response.status().as_u16();
        let text = match response.body() {
            lambda_http::Body::Text(t) => t.clone(),
            other => String::from_utf8_lossy(other.as_ref()).into_owned(),
        };
        if !(200..300).contains(&status) {
            // The API's error JSON, as a sentence.
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(LocalCloudError::Submit { status, message });
        }
        serde_json::from_str(&text)
            .map_err(|e| LocalCloudError::Stuck(format!("submit answered non-JSON: {e}")))
    }

    /// Starts the two mappings: process-chunk (batch size 1, at most
    /// `maximum_concurrency` at once) and finalize.
    pub async fn start(&self) -> Result<Mappings, LocalCloudError> {
        let chunk_arn = queue_arn(&self.client, &self.chunk_queue_url).await?;
        let finalize_arn = queue_arn(&self.client, &self.finalize_queue_url).await?;
        let timeout = self.options.function_timeout;
        let chunk_config = MappingConfig {
            batch_size: 1,
            maximum_concurrency: self.options.maximum_concurrency,
            wait_time_seconds: 1,
            function_timeout: Some(timeout + Duration::from_secs(5)),
            retry_visibility: Some(self.options.retry_delay),
            ..MappingConfig::new(self.chunk_queue_url.clone(), chunk_arn)
        };
        let handler = self.chunks.clone();
        let chunk_mapping = EventSourceMapping::new(
            self.client.clone(),
            chunk_config,
            batch_handler(move |event| {
                let handler = handler.clone();
                async move {
                    let deadline = SystemTime::now() + timeout;
                    Ok(handler.handle(event, Some(deadline)).await)
                }
            }),
        )?;
        let finalize_config = MappingConfig {
            batch_size: 1,
            maximum_concurrency: 1,
            wait_time_seconds: 1,
            function_timeout: Some(timeout),
            retry_visibility: Some(self.options.retry_delay),
            ..MappingConfig::new(self.finalize_queue_url.clone(), finalize_arn)
        };
        let finalize = self.finalize.clone();
        let finalize_mapping = EventSourceMapping::new(
            self.client.clone(),
            finalize_config,
            batch_handler(move |event| {
                let finalize = finalize.clone();
                async move { Ok(finalize.handle(event).await) }
            }),
        )?;
        Ok(Mappings {
            chunks: chunk_mapping.spawn(),
            finalize: finalize_mapping.spawn(),
        })
    }

    /// Waits until `video_id` has its sheet. Gives up when the queues have
    /// been empty for `idle` while the film still has none: its messages
    /// ended in a dead-letter queue, or were never sent.
    pub async fn wait_for_sheet(
        &self,
        video_id: Uuid,
        idle: Duration,
        on_progress: &(dyn Fn(&Value) + Send + Sync),
    ) -> Result<Sheet, LocalCloudError> {
        let mut empty_since: Option<std::time::Instant> = None;
        let mut last = Value::Null;
        loop {
            if let Some(sheet) = self.db.get_sheet(video_id).await? {
                let progress = self.db.chunk_progress(video_id).await?;
                if progress != last {
                    on_progress(&progress);
                }
                return Ok(sheet);
            }
            let progress = self.db.chunk_progress(video_id).await?;
            if progress != last {
                on_progress(&progress);
                last = progress.clone();
            }
            let pending = self.messages(&self.chunk_queue_url).await?
                + self.messages(&self.finalize_queue_url).await?;
            if pending > 0 {
                empty_since = None;
            } else {
                let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= idle {
                    let open = self.db.unfinished_chunks(video_id).await?;
                    return Err(LocalCloudError::Stuck(format!(
                        "video {video_id} has no sheet and its queues are empty; unfinished chunks {open:?} \
                         (their messages may be in {}-chunks-dlq): force-finalize it",
                        self.options.queue_prefix
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Messages in a queue, visible or in flight.
    async fn messages(&self, url: &str) -> Result<u64, LocalCloudError> {
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| QueueError::Other {
                queue: url.to_string(),
                detail: crate::cloud::queue::describe_sdk_error(&e),
            })?;
        let attributes = answer.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }

    /// Submits `film` (a file under the source root), runs the mappings
    /// until its sheet exists, and stops them.
    pub async fn run(
        &self,
        film_key: &str,
        video_id: Option<Uuid>,
        on_progress: &(dyn Fn(&Value) + Send + Sync),
    ) -> Result<LocalCloudReport, LocalCloudError> {
        let mappings = self.start().await?;
        let mut body = json!({ "source": film_key });
        if let Some(id) = video_id {
            body["videoId"] = json!(id);
        }
        if !self.options.details.is_empty() {
            body["details"] = json!(self.options.details);
        }
        let result = async {
            let answer = self.submit(&body).await?;
            let video_id: Uuid = answer["videoId"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| LocalCloudError::Stuck(format!("submit answered {answer}")))?;
            on_progress(&answer);
            let idle = self.options.retry_delay * 2 + Duration::from_secs(10);
            let sheet = self.wait_for_sheet(video_id, idle, on_progress).await?;
            Ok::<_, LocalCloudError>((video_id, sheet))
        }
        .await;
        let (chunk_stats, finalize_stats) = mappings.stop().await;
        let (video_id, sheet) = result?;
        Ok(LocalCloudReport {
            video_id,
            sheet,
            chunk_stats,
            finalize_stats,
        })
    }
}

/// An SQS client for `endpoint`. A server on this machine (moto) gets fixed
/// test credentials and region, so that nothing looks for real ones (no
/// profile, no instance metadata); any other endpoint uses the usual
/// credential chain.
pub async fn client_for(endpoint: &str) -> aws_sdk_sqs::Client {
    if is_loopback(endpoint) {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "shotlist-local",
            ))
            .endpoint_url(endpoint)
            .build();
        return aws_sdk_sqs::Client::from_conf(config);
    }
    sqs_client(Some(endpoint)).await
}

/// Whether a URL's host is this machine.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(endpoint);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The two running mappings of a local cloud.
pub struct Mappings {
    pub chunks: crate::cloud::poller::RunningMapping,
    pub finalize: crate::cloud::poller::RunningMapping,
}

impl Mappings {
    /// Stops both, letting invocations in flight finish. Both are told at
    /// once, so their long polls and in-flight invocations wind down
    /// together rather than one after the other.
    pub async fn stop(self) -> (Arc<MappingStats>, Arc<MappingStats>) {
        tokio::join!(self.chunks.stop(), self.finalize.stop())
    }
}

/// [`SqsRedelivery`]'s `send_again` without its visibility changes: here the
/// local event source mapping decides when a failed message comes back.
struct SendAgainOnly(SqsRedelivery);

#[async_trait::async_trait]
impl Redelivery for SendAgainOnly {
    async fn redeliver_after(&self, _receipt_handle: &str, _delay: Duration) {}

    async fn send_again(&self, body: &str, delay: Duration) -> Result<(), String> {
        self.0.send_again(body, delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_endpoints_are_recognized() {
        assert!(is_loopback("http://127.0.0.1:5000"));
        assert!(is_loopback("http://localhost:5000/"));
        assert!(is_loopback("http://[::1]:5000"));
        assert!(is_loopback("http://127.8.0.1"));
        assert!(!is_loopback("https://sqs.eu-west-1.amazonaws.com"));
        assert!(!is_loopback("http://10.0.0.1:5000"));
        assert!(!is_loopback("http://127.0.0.1.example.com"));
    }
}
